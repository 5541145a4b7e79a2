//! The caseworkers' web app (axum + tera, server-rendered, no front-end build) and its JSON API.
//!
//! Every route but sign-in, the set-password link, health and the stylesheet needs a signed-in
//! member of staff; `ROUTES` lists them all, with who may use each, and a test walks it.
//! State-changing forms carry a CSRF token (axum_csrf). Sessions live in the database.

pub mod admin;
pub mod api;
pub mod auth;
pub mod error;
pub mod ui;

use std::sync::Arc;

use axum::Router;
use axum::extract::FromRef;
use axum::http::{HeaderValue, header};
use axum::routing::{get, post};
use axum_csrf::{CsrfConfig, Key};

use crate::engine::Engine;
pub use error::WebError;

/// Who may use a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, signed in or not.
    Public,
    /// Any signed-in member of staff.
    Staff,
    /// Admins only.
    Admin,
}

/// Every route: method, path (with a sample value for each parameter) and access.
pub const ROUTES: &[(&str, &str, Access)] = &[
    ("GET", "/health", Access::Public),
    ("GET", "/static/app.css", Access::Public),
    ("GET", "/sign-in", Access::Public),
    ("POST", "/sign-in", Access::Public),
    ("GET", "/set-password/{token}", Access::Public),
    ("POST", "/set-password/{token}", Access::Public),
    ("POST", "/sign-out", Access::Staff),
    ("GET", "/", Access::Staff),
    ("GET", "/cases/{reference}", Access::Staff),
    ("GET", "/cases/{reference}/form.pdf", Access::Staff),
    ("POST", "/cases/{reference}/transition", Access::Staff),
    ("POST", "/cases/{reference}/claim", Access::Staff),
    ("POST", "/cases/{reference}/notes", Access::Staff),
    ("GET", "/admin/users", Access::Admin),
    ("POST", "/admin/users", Access::Admin),
    ("POST", "/admin/users/{email}/reset", Access::Admin),
    ("POST", "/admin/users/{email}/disable", Access::Admin),
    ("GET", "/api/cases", Access::Staff),
    ("GET", "/api/cases/{reference}", Access::Staff),
    ("GET", "/static/app.js", Access::Public),
    ("POST", "/cases/{reference}/key", Access::Staff),
    ("POST", "/cases/{reference}/assign", Access::Staff),
    ("POST", "/cases/bulk", Access::Staff),
    ("GET", "/admin/organisations", Access::Admin),
    ("POST", "/admin/organisations/{ods}", Access::Admin),
    ("GET", "/admin/workflows", Access::Admin),
    ("GET", "/api/health", Access::Staff),
];

#[derive(Clone)]
pub struct AppState {
    pub engine: Engine,
    pub pages: Arc<tera::Tera>,
    pub csrf: CsrfConfig,
    /// Mark cookies `Secure` and send HSTS: set, or implied by an `https://` base URL.
    pub secure_cookies: bool,
    /// The app's public address, for set-password links.
    pub base_url: String,
    /// The mail sources running in this process, by name, as they are now: their last error
    /// shows even while the database (where polls are also recorded) takes no writes.
    pub live_mail_sources: Vec<(String, crate::ingest::HealthHandle)>,
}

impl FromRef<AppState> for CsrfConfig {
    fn from_ref(state: &AppState) -> CsrfConfig {
        state.csrf.clone()
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
            csrf,
            secure_cookies,
            base_url,
            live_mail_sources: Vec::new(),
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

/// The whole app.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(ui::health))
        .route("/static/app.css", get(ui::stylesheet))
        .route("/sign-in", get(auth::sign_in_page).post(auth::sign_in))
        .route(
            "/set-password/{token}",
            get(auth::set_password_page).post(auth::set_password),
        )
        .route("/sign-out", post(auth::sign_out))
        .route("/", get(ui::queue))
        .route("/cases/{reference}", get(ui::case_page))
        .route("/cases/{reference}/form.pdf", get(ui::form_pdf))
        .route("/cases/{reference}/transition", post(ui::transition))
        .route("/cases/{reference}/claim", post(ui::claim))
        .route("/cases/{reference}/notes", post(ui::add_note))
        .route("/admin/users", get(ui::users_page).post(ui::add_user))
        .route("/admin/users/{email}/reset", post(ui::reset_user))
        .route("/admin/users/{email}/disable", post(ui::disable_user))
        .route("/api/cases", get(api::list_cases))
        .route("/api/cases/{reference}", get(api::show_case))
        .route("/static/app.js", get(ui::script))
        .route("/cases/{reference}/key", post(ui::key_fields))
        .route("/cases/{reference}/assign", post(ui::assign))
        .route("/cases/bulk", post(ui::bulk))
        .route("/admin/organisations", get(admin::organisations))
        .route("/admin/organisations/{ods}", post(admin::edit_organisation))
        .route("/admin/workflows", get(admin::workflows))
        .route("/api/health", get(api::health))
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
