//! Staff accounts (admins): invite, reset, disable and enable, unlock, change a role.

use axum::Form;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum_csrf::CsrfToken;

use crate::web::auth::{CurrentUser, check_csrf, render};
use crate::web::view::{CsrfForm, base_context};
use crate::web::{Access, AppState, Route, WebError};
use crate::workflow::ActorRole;

pub(in crate::web) fn routes() -> Vec<Route> {
    vec![
        Route::get("/admin/users", Access::Admin, users_page),
        Route::post("/admin/users", Access::Admin, add_user),
        Route::post("/admin/users/{email}/reset", Access::Admin, reset_user),
        Route::post("/admin/users/{email}/disable", Access::Admin, disable_user),
        Route::post("/admin/users/{email}/enable", Access::Admin, enable_user),
        Route::post("/admin/users/{email}/unlock", Access::Admin, unlock_user),
        Route::post("/admin/users/{email}/role", Access::Admin, change_role),
    ]
}

pub async fn users_page(
    State(state): State<AppState>,
    user: CurrentUser,
    token: CsrfToken,
) -> Result<Response, WebError> {
    users_view(&state, &user, token, None).await
}

async fn users_view(
    state: &AppState,
    user: &CurrentUser,
    token: CsrfToken,
    link: Option<(String, String)>,
) -> Result<Response, WebError> {
    users_view_saying(state, user, token, link, None, None).await
}

/// The users page, with a one-time link to hand on, a confirmation or a problem.
async fn users_view_saying(
    state: &AppState,
    user: &CurrentUser,
    token: CsrfToken,
    link: Option<(String, String)>,
    success: Option<String>,
    problem: Option<WebError>,
) -> Result<Response, WebError> {
    let mut conn = state.engine.db().pool.acquire().await?;
    let users = crate::users::list(&mut conn).await?;
    drop(conn);
    let mut context = base_context(user, &token)?;
    context.insert("users", &users);
    context.insert("link", &link);
    context.insert("success", &success);
    let status = match &problem {
        Some(error) => {
            context.insert("problem", &error.to_string());
            error.status()
        }
        None => axum::http::StatusCode::OK,
    };
    Ok((status, token, render(state, "users.html.tera", &context)?).into_response())
}

#[derive(serde::Deserialize)]
pub struct AddUserForm {
    csrf: String,
    email: String,
    display_name: String,
    role: String,
}

pub async fn add_user(
    State(state): State<AppState>,
    user: CurrentUser,
    token: CsrfToken,
    Form(form): Form<AddUserForm>,
) -> Result<Response, WebError> {
    check_csrf(&token, &form.csrf)?;
    let role = ActorRole::parse(&form.role)
        .filter(|r| *r != ActorRole::System)
        .ok_or_else(|| WebError::BadRequest("Choose caseworker, manager or admin.".into()))?;
    if let Err(refused) = crate::users::check_staff_address(
        &form.email,
        &state.engine.config().policy.nhs_domains,
        state.staff_any_domain,
    ) {
        return users_view_saying(&state, &user, token, None, None, Some(refused.into())).await;
    }
    let mut conn = state.engine.db().pool.acquire().await?;
    let (added, secret) =
        crate::users::add(&mut conn, &form.email, &form.display_name, role, state.engine.now_ms()).await?;
    state.staff.forget();
    let link = crate::users::password_link(&state.base_url, &secret);
    drop(conn);
    users_view(&state, &user, token, Some((added.email, link))).await
}

pub async fn reset_user(
    State(state): State<AppState>,
    user: CurrentUser,
    token: CsrfToken,
    Path(email): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, WebError> {
    check_csrf(&token, &form.csrf)?;
    let mut conn = state.engine.db().pool.acquire().await?;
    let target = crate::users::find_by_email(&mut conn, &email)
        .await?
        .ok_or(WebError::NotFound)?;
    let secret = crate::users::issue_password_token(&mut conn, target.id, state.engine.now_ms()).await?;
    let link = crate::users::password_link(&state.base_url, &secret);
    drop(conn);
    users_view(&state, &user, token, Some((target.email, link))).await
}

pub async fn disable_user(
    State(state): State<AppState>,
    user: CurrentUser,
    token: CsrfToken,
    Path(email): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, WebError> {
    check_csrf(&token, &form.csrf)?;
    if email.eq_ignore_ascii_case(&user.0.email) {
        return Err(WebError::BadRequest("You cannot disable your own account.".into()));
    }
    let mut conn = state.engine.db().pool.acquire().await?;
    crate::users::set_disabled(&mut conn, &email, true).await?;
    state.staff.forget();
    Ok(Redirect::to("/admin/users").into_response())
}

/// What the users page can do to one account with one click.
#[derive(Clone, Copy)]
enum AccountAction {
    Enable,
    Unlock,
}

async fn act_on_account(
    state: &AppState,
    user: &CurrentUser,
    token: CsrfToken,
    email: &str,
    csrf: &str,
    action: AccountAction,
) -> Result<Response, WebError> {
    check_csrf(&token, csrf)?;
    let mut conn = state.engine.db().pool.acquire().await?;
    let said = match action {
        AccountAction::Enable => {
            crate::users::set_disabled(&mut conn, email, false).await?;
            state.staff.forget();
            format!("{email} is enabled again. Send them a new set-password link if they need one.")
        }
        AccountAction::Unlock => {
            crate::users::unlock(&mut conn, email).await?;
            format!("{email} may sign in again now.")
        }
    };
    drop(conn);
    users_view_saying(state, user, token, None, Some(said), None).await
}

pub async fn enable_user(
    State(state): State<AppState>,
    user: CurrentUser,
    token: CsrfToken,
    Path(email): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, WebError> {
    act_on_account(&state, &user, token, &email, &form.csrf, AccountAction::Enable).await
}

pub async fn unlock_user(
    State(state): State<AppState>,
    user: CurrentUser,
    token: CsrfToken,
    Path(email): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, WebError> {
    act_on_account(&state, &user, token, &email, &form.csrf, AccountAction::Unlock).await
}

#[derive(serde::Deserialize)]
pub struct RoleForm {
    csrf: String,
    role: String,
}

pub async fn change_role(
    State(state): State<AppState>,
    user: CurrentUser,
    token: CsrfToken,
    Path(email): Path<String>,
    Form(form): Form<RoleForm>,
) -> Result<Response, WebError> {
    check_csrf(&token, &form.csrf)?;
    let Some(role) = ActorRole::parse(&form.role).filter(|r| *r != ActorRole::System) else {
        let problem = WebError::BadRequest("Choose caseworker, manager or admin.".into());
        return users_view_saying(&state, &user, token, None, None, Some(problem)).await;
    };
    if email.eq_ignore_ascii_case(&user.0.email) && role != ActorRole::Admin {
        // The last door out of administration should not be one click on your own row.
        let problem = WebError::BadRequest("You cannot take away your own admin role; ask another admin.".into());
        return users_view_saying(&state, &user, token, None, None, Some(problem)).await;
    }
    let mut conn = state.engine.db().pool.acquire().await?;
    let changed = crate::users::set_role(&mut conn, &email, role).await?;
    drop(conn);
    let said = format!(
        "{} is now {}; their sessions ended, so the new role applies when they next sign in.",
        changed.email,
        role.as_str()
    );
    users_view_saying(&state, &user, token, None, Some(said), None).await
}
