//! Sign-in, sign-out and set-password pages; the `CurrentUser` extractor that every staff route
//! takes.

use axum::Form;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum_csrf::CsrfToken;
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};

use super::{Access, AppState, Route, WebError};
use crate::users::{self, SignInRefusal, User};
use crate::workflow::ActorRole;

pub const SESSION_COOKIE: &str = "cs_session";

pub(super) fn routes() -> Vec<Route> {
    vec![
        Route::get("/sign-in", Access::Public, sign_in_page),
        Route::post("/sign-in", Access::Public, sign_in),
        Route::get("/set-password/{token}", Access::Public, set_password_page),
        Route::post("/set-password/{token}", Access::Public, set_password),
        Route::post("/sign-out", Access::Staff, sign_out),
    ]
}

/// The signed-in member of staff.
#[derive(Clone)]
pub struct CurrentUser(pub User);

impl FromRequestParts<AppState> for CurrentUser {
    type Rejection = WebError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        // The route's access check has read the session already.
        if let Some(user) = parts.extensions.get::<CurrentUser>() {
            return Ok(user.clone());
        }
        CurrentUser::signed_in(parts, state).await.map(|(user, _)| user)
    }
}

/// The session cookie's token, if the request carries one.
fn session_token(parts: &Parts) -> Option<String> {
    CookieJar::from_headers(&parts.headers)
        .get(SESSION_COOKIE)
        .map(|c| c.value().to_string())
}

impl CurrentUser {
    /// The member of staff whose session the request's cookie names, with the connection the
    /// session was read on (for the access check to lend to a read's handler). A request with
    /// no session cookie takes no connection.
    pub async fn signed_in(
        parts: &Parts,
        state: &AppState,
    ) -> Result<(Self, sqlx::pool::PoolConnection<sqlx::Any>), WebError> {
        let Some(token) = session_token(parts) else {
            return Err(WebError::SignInRequired);
        };
        let mut conn = state.engine.db().pool.acquire().await?;
        match users::session_user(&mut conn, &token, state.engine.now_ms()).await? {
            Some(user) => Ok((CurrentUser(user), conn)),
            None => Err(WebError::SignInRequired),
        }
    }
}

/// Refuses `role` unless it is one of `roles` (admins may do what managers may): for staff and
/// for API tokens alike.
pub fn require_role(role: ActorRole, roles: &[ActorRole]) -> Result<(), WebError> {
    if role.is_among(roles) {
        Ok(())
    } else {
        Err(WebError::Forbidden(format!(
            "this needs the {} role",
            roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(" or ")
        )))
    }
}

impl CurrentUser {
    /// Refuses unless the user has one of `roles` (admins may do what managers may).
    pub fn require(&self, roles: &[ActorRole]) -> Result<(), WebError> {
        require_role(self.0.role, roles)
    }

    pub fn actor(&self) -> crate::workflow::Actor {
        crate::workflow::Actor {
            name: self.0.email.clone(),
            role: self.0.role,
        }
    }
}

/// Checks the form's CSRF token against the cookie.
pub fn check_csrf(token: &CsrfToken, submitted: &str) -> Result<(), WebError> {
    token.verify(submitted).map_err(|_| {
        WebError::Forbidden(
            "This form has expired or did not come from Countersign. Go back, reload the page and try again.".into(),
        )
    })
}

pub fn render(state: &AppState, template: &str, context: &tera::Context) -> Result<Html<String>, WebError> {
    state
        .pages
        .render(template, context)
        .map(Html)
        .map_err(|e| WebError::internal(format!("template {template}: {e:?}")))
}

pub(super) fn csrf_value(token: &CsrfToken) -> Result<String, WebError> {
    token.authenticity_token().map_err(WebError::internal)
}

/// Where sign-in goes on to, and what the page says first.
#[derive(serde::Deserialize, Default)]
pub struct SignInQuery {
    /// The page the visitor asked for before signing in.
    #[serde(default)]
    next: String,
    /// `password`: they have just set their password.
    #[serde(default)]
    done: String,
}

/// `next` when it is a page of this app (a path, never another site), else None.
pub fn local_path(next: &str) -> Option<&str> {
    let ok =
        next.starts_with('/') && !next.starts_with("//") && !next.starts_with("/\\") && !next.contains(['\r', '\n']);
    ok.then_some(next)
}

/// The sign-in page's context: the CSRF token, where to go on to, and, on a fresh
/// installation with no staff accounts, how to create the first admin.
async fn sign_in_context(state: &AppState, token: &CsrfToken, next: &str) -> Result<tera::Context, WebError> {
    let mut context = tera::Context::new();
    context.insert("csrf", &csrf_value(token)?);
    context.insert("next", local_path(next).unwrap_or(""));
    let mut conn = state.engine.db().pool.acquire().await?;
    context.insert("first_run", &users::list(&mut conn).await?.is_empty());
    context.insert("password_sign_in", &state.password_sign_in);
    if let Some(oidc) = &state.oidc {
        context.insert("oidc_label", oidc.label());
    }
    Ok(context)
}

/// Starts `user`'s session (however they proved who they are) and sends them back to the page
/// they asked for (`next`), else managers to their dashboard and everyone else to the queue.
pub async fn signed_in(
    state: &AppState,
    conn: &mut sqlx::AnyConnection,
    jar: CookieJar,
    user: &User,
    next: &str,
) -> Result<Response, WebError> {
    let session = users::start_session(conn, user.id, state.engine.now_ms()).await?;
    let cookie = Cookie::build((SESSION_COOKIE, session))
        .path("/")
        .http_only(true)
        .secure(state.secure_cookies)
        .same_site(SameSite::Lax)
        .build();
    let landing = match local_path(next) {
        Some(next) => next.to_string(),
        None if user.role.is_among(&[crate::workflow::ActorRole::Manager]) => "/reports".to_string(),
        None => "/".to_string(),
    };
    Ok((jar.add(cookie), Redirect::to(&landing)).into_response())
}

/// The sign-in page again, saying why signing in did not work.
pub async fn sign_in_refused(state: &AppState, token: &CsrfToken, why: &str) -> Result<Html<String>, WebError> {
    let mut context = sign_in_context(state, token, "").await?;
    context.insert("error", why);
    render(state, "sign_in.html.tera", &context)
}

pub async fn sign_in_page(
    State(state): State<AppState>,
    token: CsrfToken,
    Query(query): Query<SignInQuery>,
) -> Result<Response, WebError> {
    let mut context = sign_in_context(&state, &token, &query.next).await?;
    if query.done == "password" {
        context.insert("success", "Your password is set. Sign in with it.");
    }
    Ok((token, render(&state, "sign_in.html.tera", &context)?).into_response())
}

#[derive(serde::Deserialize)]
pub struct SignInForm {
    csrf: String,
    email: String,
    password: String,
    #[serde(default)]
    next: String,
}

/// The network address a request came from, for throttling sign-in by client. Requests that
/// did not come over a socket (router tests) share one address.
pub struct ClientAddress(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientAddress {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        let address = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|info| info.0.ip().to_string())
            .unwrap_or_else(|| "local".into());
        Ok(ClientAddress(address))
    }
}

pub async fn sign_in(
    State(state): State<AppState>,
    jar: CookieJar,
    token: CsrfToken,
    client: ClientAddress,
    Form(form): Form<SignInForm>,
) -> Result<Response, WebError> {
    if !state.password_sign_in {
        return Err(WebError::Forbidden(
            "Signing in with a password is switched off here: use the sign-in service.".into(),
        ));
    }
    check_csrf(&token, &form.csrf)?;
    let now = state.engine.now_ms();
    let mut conn = state.engine.db().pool.acquire().await?;
    let refusal = match users::authenticate(&mut conn, &form.email, &form.password, &client.0, now).await? {
        Ok(user) => return signed_in(&state, &mut conn, jar, &user, &form.next).await,
        Err(refusal) => refusal,
    };
    // One pooled connection at a time per request: the page below takes its own.
    drop(conn);
    let message = match refusal {
        SignInRefusal::WrongCredentials => "That email address and password do not match an account.".to_string(),
        SignInRefusal::TooSoon { until } => {
            let seconds = (until - now + 999) / 1000;
            format!(
                "That was too soon after a failed attempt: wait {seconds} second{} and try again.",
                if seconds == 1 { "" } else { "s" }
            )
        }
        SignInRefusal::Locked { until } => {
            let when = chrono::DateTime::from_timestamp_millis(until)
                .map(|t| t.with_timezone(&chrono::Local).format("%H:%M").to_string())
                .unwrap_or_default();
            format!(
                "Too many failed attempts: signing in from here is locked until {when}. Ask an admin if you need in sooner."
            )
        }
    };
    let mut context = sign_in_context(&state, &token, &form.next).await?;
    context.insert("error", &message);
    context.insert("email", &form.email);
    Ok((
        axum::http::StatusCode::UNAUTHORIZED,
        token,
        render(&state, "sign_in.html.tera", &context)?,
    )
        .into_response())
}

#[derive(serde::Deserialize)]
pub struct CsrfOnly {
    pub(super) csrf: String,
}

pub async fn sign_out(
    State(state): State<AppState>,
    _user: CurrentUser,
    jar: CookieJar,
    token: CsrfToken,
    Form(form): Form<CsrfOnly>,
) -> Result<Response, WebError> {
    check_csrf(&token, &form.csrf)?;
    if let Some(session) = jar.get(SESSION_COOKIE) {
        let mut conn = state.engine.db().pool.acquire().await?;
        users::end_session(&mut conn, session.value()).await?;
    }
    Ok((
        jar.remove(Cookie::build(SESSION_COOKIE).path("/")),
        Redirect::to("/sign-in"),
    )
        .into_response())
}

pub async fn set_password_page(
    State(state): State<AppState>,
    Path(link): Path<String>,
    token: CsrfToken,
) -> Result<Response, WebError> {
    let mut conn = state.engine.db().pool.acquire().await?;
    let user = users::user_for_password_token(&mut conn, &link, state.engine.now_ms()).await?;
    let mut context = tera::Context::new();
    context.insert("csrf", &csrf_value(&token)?);
    context.insert("email", &user.email);
    Ok((token, render(&state, "set_password.html.tera", &context)?).into_response())
}

#[derive(serde::Deserialize)]
pub struct SetPasswordForm {
    csrf: String,
    password: String,
    confirm: String,
}

pub async fn set_password(
    State(state): State<AppState>,
    Path(link): Path<String>,
    token: CsrfToken,
    Form(form): Form<SetPasswordForm>,
) -> Result<Response, WebError> {
    check_csrf(&token, &form.csrf)?;
    let mut conn = state.engine.db().pool.acquire().await?;
    let problem = if form.password != form.confirm {
        Some("The two passwords do not match.".to_string())
    } else {
        match users::set_password_with_token(&mut conn, &link, &form.password, state.engine.now_ms()).await {
            Ok(_) => return Ok(Redirect::to("/sign-in?done=password").into_response()),
            Err(users::UserError::WeakPassword(why)) => Some(why),
            Err(other) => return Err(other.into()),
        }
    };
    let user = users::user_for_password_token(&mut conn, &link, state.engine.now_ms()).await?;
    let mut context = tera::Context::new();
    context.insert("csrf", &csrf_value(&token)?);
    context.insert("email", &user.email);
    context.insert("error", &problem);
    Ok((
        axum::http::StatusCode::BAD_REQUEST,
        token,
        render(&state, "set_password.html.tera", &context)?,
    )
        .into_response())
}
