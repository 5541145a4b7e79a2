//! The caseworkers' web app (axum + tera, server-rendered, no front-end build) and its JSON API.
//!
//! Each module lists its own routes with who may use each ([`Access`]); [`routes`] gathers
//! them, the router is built from that one list, and the access check runs before any
//! handler, so the list is the single place that says who may use what. A test walks it.
//! Every route but sign-in, the set-password and credential links, health and the static files needs a
//! signed-in member of staff. State-changing forms carry a CSRF token (axum_csrf). Sessions
//! live in the database.

mod admin;
pub mod api;
mod assets;
pub mod auth;
mod case;
pub mod credential;
pub mod error;
mod kept;
pub mod oidc;
mod ops;
pub mod queue;
pub mod reports;
mod staff;
mod view;

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRef, FromRequestParts, Request, State};
use axum::handler::Handler;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use axum_csrf::{CsrfConfig, Key};

use crate::engine::Engine;
use crate::workflow::ActorRole;
pub use error::WebError;

/// Who may use a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, signed in or not.
    Public,
    /// Any signed-in member of staff.
    Staff,
    /// Managers (and admins, who may do what a manager may).
    Manager,
    /// Admins only.
    Admin,
}

impl Access {
    /// The roles a route needs beyond being signed in (admins may do what managers may:
    /// `ActorRole::is_among` says so once).
    fn roles(self) -> Option<&'static [ActorRole]> {
        match self {
            Access::Admin => Some(&[ActorRole::Admin]),
            Access::Manager => Some(&[ActorRole::Manager]),
            Access::Public | Access::Staff => None,
        }
    }
}

/// The token of an `Authorization: Bearer …` header, if there is one.
fn bearer_token(headers: &axum::http::HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_string())
}

/// One route: how it is reached, who may use it, and what answers it.
pub struct Route {
    pub method: &'static str,
    /// The path, with `{name}` for each parameter.
    pub path: &'static str,
    pub access: Access,
    handler: MethodRouter<AppState>,
}

impl Route {
    pub(crate) fn get<H, T>(path: &'static str, access: Access, handler: H) -> Route
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        Route {
            method: "GET",
            path,
            access,
            handler: axum::routing::get(handler),
        }
    }

    pub(crate) fn post<H, T>(path: &'static str, access: Access, handler: H) -> Route
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        Route {
            method: "POST",
            path,
            access,
            handler: axum::routing::post(handler),
        }
    }
}

/// Every route of the app, from each module's own list.
pub fn routes() -> Vec<Route> {
    [
        assets::routes(),
        auth::routes(),
        credential::routes(),
        queue::routes(),
        case::routes(),
        admin::routes(),
        reports::routes(),
        api::routes(),
        ops::routes(),
        oidc::routes(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

#[derive(Clone)]
pub struct AppState {
    pub engine: Engine,
    pub pages: Arc<tera::Tera>,
    /// Behind an `Arc`, as everything here that is not `Copy`: the state is cloned for every
    /// request (axum's `State`).
    pub csrf: Arc<CsrfConfig>,
    /// Mark cookies `Secure` and send HSTS: set, or implied by an `https://` base URL.
    pub secure_cookies: bool,
    /// The app's public address, for set-password links.
    pub base_url: Arc<str>,
    /// The mail sources running in this process, by name, as they are now: their last error
    /// shows even while the database (where polls are also recorded) takes no writes.
    pub live_mail_sources: Arc<Vec<(String, crate::ingest::HealthHandle)>>,
    /// Staff accounts may have addresses outside the NHS domains (settings' `staff_any_domain`).
    pub staff_any_domain: bool,
    /// `/readyz` fails when a mail source of this process has not polled successfully for
    /// longer than this (settings' `ready_max_poll_age_secs`).
    pub ready_max_poll_age_ms: i64,
    /// Staff sign-in through an OpenID Connect provider, when one is configured.
    pub oidc: Option<Arc<oidc::OidcSignIn>>,
    /// Whether staff may sign in with a password (settings' `password_sign_in`).
    pub password_sign_in: bool,
    /// How many days before expiry the lifecycle report counts a password as expiring
    /// (settings' `password_warning_days`, as the outreach job tells Primary Users).
    pub password_warning_days: i64,
    /// Reports worked out in the last half-minute, shared by whoever asks for them.
    pub reports: Arc<reports::ReportCache>,
    /// The email templates: a case's correspondence shows our mail as it reads.
    pub mail: Arc<crate::outbox::render::Renderer>,
    /// The queue's counts by state and by finding, with when they were read (see
    /// `queue::COUNTS_FRESH_FOR`).
    pub queue_counts: Arc<kept::Kept<queue::QueueCounts>>,
    /// Held by the one request that counts the queue afresh (see `queue::queue_counts`).
    pub queue_counter: Arc<tokio::sync::Mutex<()>>,
    /// The active staff's addresses for the case page's assignee list (see `staff`).
    pub staff: Arc<staff::StaffList>,
}

impl FromRef<AppState> for CsrfConfig {
    fn from_ref(state: &AppState) -> CsrfConfig {
        (*state.csrf).clone()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WebSetupError {
    #[error("cannot load the page templates from {dir}: {message}")]
    Templates { dir: String, message: String },
    #[error(transparent)]
    Users(#[from] crate::users::UserError),
}

impl AppState {
    pub async fn new(
        engine: Engine,
        templates_dir: &std::path::Path,
        secure_cookies: bool,
        base_url: String,
    ) -> Result<Self, WebSetupError> {
        // Served over HTTPS, a cookie without `Secure` could still leak over plain HTTP.
        let secure_cookies = secure_cookies || base_url.to_ascii_lowercase().starts_with("https://");
        let glob = format!("{}/ui/**/*.tera", templates_dir.display());
        let mut pages = tera::Tera::new(&glob).map_err(|e| WebSetupError::Templates {
            dir: templates_dir.display().to_string(),
            message: format!("{e:?}"),
        })?;
        pages.autoescape_on(vec![".html.tera"]);
        let secret = {
            let mut conn = engine.db().pool.acquire().await.map_err(|e| {
                crate::users::UserError::Storage(crate::storage::StorageError::Query {
                    context: "connecting",
                    source: e,
                })
            })?;
            crate::users::shared_secret(&mut conn, "cookie_key").await?
        };
        // Every instance derives the same key from the shared secret, so any can check a token.
        let key = Key::from(&secret.as_bytes()[..64]);
        let csrf = CsrfConfig::default()
            .with_key(Some(key))
            .with_cookie_name("cs_csrf")
            .with_http_only(true)
            .with_secure(secure_cookies)
            .with_cookie_same_site(axum_csrf::SameSite::Strict)
            .with_salt(secret[..32].to_string());
        Ok(AppState {
            engine,
            pages: Arc::new(pages),
            csrf: Arc::new(csrf),
            secure_cookies,
            base_url: base_url.into(),
            live_mail_sources: Arc::default(),
            staff_any_domain: false,
            ready_max_poll_age_ms: 300_000,
            oidc: None,
            password_sign_in: true,
            password_warning_days: crate::config::SchedulerSettings::default().password_warning_days,
            reports: Arc::default(),
            queue_counts: Arc::default(),
            queue_counter: Arc::default(),
            staff: Arc::default(),
            mail: Arc::new(crate::outbox::render::Renderer::load(templates_dir).map_err(|e| {
                WebSetupError::Templates {
                    dir: templates_dir.display().to_string(),
                    message: e.to_string(),
                }
            })?),
        })
    }
}

/// Security headers for every page; the PDF route sets its own stricter policy.
async fn security_headers(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    if state.secure_cookies {
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000; includeSubDomains"),
        );
    }
    headers.entry(header::CONTENT_SECURITY_POLICY).or_insert(HeaderValue::from_static(
        "default-src 'self'; img-src 'self' data:; frame-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    ));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// The pooled connection the access check read a GET's session (or token) on, lent to the
/// handler through the request's extensions. A handler takes it with [`RequestConnection`];
/// one that does not gives it back to the pool before its body runs (axum drops the request,
/// and its extensions, once the last extractor has run), so no handler ever holds two.
#[derive(Clone)]
struct LentConnection(Arc<std::sync::Mutex<Option<sqlx::pool::PoolConnection<sqlx::Any>>>>);

impl LentConnection {
    fn new(conn: sqlx::pool::PoolConnection<sqlx::Any>) -> Self {
        LentConnection(Arc::new(std::sync::Mutex::new(Some(conn))))
    }
}

/// A read (GET) lends the connection its session or token was read on to its handler, which
/// would otherwise take a second from the pool (a ping and a return, a fifth of a page's
/// database round trips). Anything else gives it back now: a request with a body would hold
/// it while its client sent the body, at whatever pace it liked.
fn lend_to_a_read(parts: &mut axum::http::request::Parts, conn: sqlx::pool::PoolConnection<sqlx::Any>) {
    if parts.method == axum::http::Method::GET {
        parts.extensions.insert(LentConnection::new(conn));
    }
}

/// A handler's one database connection: the one its access check lent it, if there is one,
/// else one from the pool when it asks ([`RequestConnection::acquire`]). The default lends
/// nothing (a POST's page shown again after a refusal).
#[derive(Default)]
pub struct RequestConnection(Option<sqlx::pool::PoolConnection<sqlx::Any>>);

impl FromRequestParts<AppState> for RequestConnection {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let lent = parts
            .extensions
            .remove::<LentConnection>()
            .and_then(|lent| lent.0.lock().ok().and_then(|mut slot| slot.take()));
        Ok(RequestConnection(lent))
    }
}

impl RequestConnection {
    /// The lent connection, or one from the pool.
    pub async fn acquire(self, state: &AppState) -> Result<sqlx::pool::PoolConnection<sqlx::Any>, WebError> {
        match self.0 {
            Some(conn) => Ok(conn),
            None => Ok(state.engine.db().pool.acquire().await?),
        }
    }
}

/// Refuses a request its route's [`Access`] does not allow, before the handler runs: the
/// API with a JSON error, a page by sending the visitor to sign in (or a refusal page). The
/// signed-in user is handed on to the handler, so the session is read once.
async fn enforce(state: AppState, access: Access, request: Request, next: Next) -> Response {
    let api = request.uri().path().starts_with("/api/");
    let refuse = |error: WebError| {
        if api {
            error::ApiError(error).into_response()
        } else {
            error.into_response()
        }
    };
    let (mut parts, body) = request.into_parts();
    // Another system, by bearer token (the API only: pages are for people).
    if api && let Some(presented) = bearer_token(&parts.headers) {
        let mut conn = match state.engine.db().pool.acquire().await {
            Ok(conn) => conn,
            Err(e) => return refuse(WebError::from(e)),
        };
        let token = match crate::tokens::authenticate(&mut conn, &presented, state.engine.now_ms()).await {
            Ok(Ok(token)) => token,
            Ok(Err(refusal)) => {
                tracing::warn!(?refusal, path = %parts.uri.path(), "API call with a refused token");
                return refuse(WebError::SignInRequired);
            }
            Err(e) => return refuse(WebError::from(e)),
        };
        if let Some(needed) = access.roles()
            && let Err(error) = auth::require_role(token.role, needed)
        {
            return refuse(error);
        }
        lend_to_a_read(&mut parts, conn);
        let actor = api::token_actor(&token);
        tracing::info!(actor = %actor.name, method = %parts.method, path = %parts.uri.path(), "API call");
        parts.extensions.insert(api::ApiCaller {
            actor,
            user_id: None,
            by_token: true,
        });
        return next.run(Request::from_parts(parts, body)).await;
    }
    let (user, conn) = match auth::CurrentUser::signed_in(&parts, &state).await {
        Ok(signed_in) => signed_in,
        // A page asked for while signed out is where sign-in goes on to.
        Err(WebError::SignInRequired) if !api && parts.method == axum::http::Method::GET => {
            let asked = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
            let next: String = url::form_urlencoded::byte_serialize(asked.as_bytes()).collect();
            return axum::response::Redirect::to(&format!("/sign-in?next={next}")).into_response();
        }
        Err(error) => return refuse(error),
    };
    if let Some(needed) = access.roles()
        && let Err(error) = user.require(needed)
    {
        return refuse(error);
    }
    lend_to_a_read(&mut parts, conn);
    if api {
        parts.extensions.insert(api::ApiCaller {
            actor: api::staff_actor(&user.0),
            user_id: Some(user.0.id),
            by_token: false,
        });
    }
    parts.extensions.insert(user);
    next.run(Request::from_parts(parts, body)).await
}

/// Any address no route answers: a page in the app's layout (JSON under `/api/`).
async fn not_found(uri: axum::http::Uri) -> Response {
    if uri.path().starts_with("/api/") {
        error::ApiError(WebError::NotFound).into_response()
    } else {
        WebError::NotFound.into_response()
    }
}

/// The whole app, from [`routes`].
pub fn router(state: AppState) -> Router {
    let mut router = Router::new();
    for route in routes() {
        let access = route.access;
        let handler = match access {
            Access::Public => route.handler,
            Access::Staff | Access::Manager | Access::Admin => {
                let guard = move |State(state): State<AppState>, request: Request, next: Next| {
                    enforce(state, access, request, next)
                };
                route
                    .handler
                    .route_layer(axum::middleware::from_fn_with_state(state.clone(), guard))
            }
        };
        router = router.route(route.path, handler);
    }
    router
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), ops::measure))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), security_headers))
        .with_state(state)
}

/// Serves the app until `stop` is set.
pub async fn serve(state: AppState, bind: &str, stop: tokio::sync::watch::Receiver<bool>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(bind).await?;
    println!("web app on http://{}", listener.local_addr()?);
    serve_on(state, listener, stop).await
}

/// Serves the app on a listener already bound (tests bind port 0 and read the port).
pub async fn serve_on(
    state: AppState,
    listener: tokio::net::TcpListener,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    // The client's address reaches the handlers, to throttle sign-in by client as well as by
    // account.
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        let _ = stop.changed().await;
    })
    .await
}
