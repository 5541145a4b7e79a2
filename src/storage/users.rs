//! Staff accounts, set-password links, sessions, the sign-in throttle and shared secrets: the
//! queries only. The rules (hashing, password rules, lockout) are in [`crate::users`].

use sqlx::{AnyConnection, Row};

use super::{QueryContext, StorageError};
use crate::workflow::ActorRole;

/// A signed-in (or signing-in) member of staff.
#[derive(Debug, Clone, serde::Serialize)]
pub struct User {
    pub id: i64,
    pub email: String,
    pub display_name: String,
    pub role: ActorRole,
    pub disabled: bool,
}

fn user_from_row(row: &sqlx::any::AnyRow) -> Result<User, StorageError> {
    let get = |e| StorageError::Query {
        context: "decoding a user",
        source: e,
    };
    let role: String = row.try_get("role").map_err(get)?;
    Ok(User {
        id: row.try_get("id").map_err(get)?,
        email: row.try_get("email").map_err(get)?,
        display_name: row.try_get("display_name").map_err(get)?,
        role: ActorRole::parse(&role).unwrap_or(ActorRole::Caseworker),
        disabled: row.try_get::<i64, _>("disabled").map_err(get)? != 0,
    })
}

/// The account with this (already normalised) address.
pub async fn user_by_email(conn: &mut AnyConnection, email: &str) -> Result<Option<User>, StorageError> {
    let row = sqlx::query("SELECT id, email, display_name, role, disabled FROM users WHERE email = $1")
        .bind(email)
        .fetch_optional(&mut *conn)
        .await
        .context("finding a user")?;
    row.as_ref().map(user_from_row).transpose()
}

/// The account with this address and its password hash (none until a password is set).
pub async fn user_with_password_hash(
    conn: &mut AnyConnection,
    email: &str,
) -> Result<Option<(User, Option<String>)>, StorageError> {
    let row = sqlx::query("SELECT id, email, display_name, role, disabled, password_hash FROM users WHERE email = $1")
        .bind(email)
        .fetch_optional(&mut *conn)
        .await
        .context("signing in")?;
    match &row {
        Some(row) => Ok(Some((
            user_from_row(row)?,
            row.try_get("password_hash").context("decoding a user")?,
        ))),
        None => Ok(None),
    }
}

/// The account with this id, for showing who a case is assigned to.
pub async fn user_email_by_id(conn: &mut AnyConnection, id: i64) -> Result<Option<String>, StorageError> {
    sqlx::query_scalar("SELECT email FROM users WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .context("finding a user")
}

pub async fn list_users(conn: &mut AnyConnection) -> Result<Vec<User>, StorageError> {
    let rows = sqlx::query("SELECT id, email, display_name, role, disabled FROM users ORDER BY email")
        .fetch_all(&mut *conn)
        .await
        .context("listing users")?;
    rows.iter().map(user_from_row).collect()
}

/// Adds an account with no password.
pub async fn insert_user(
    conn: &mut AnyConnection,
    email: &str,
    display_name: &str,
    role: ActorRole,
    now: i64,
) -> Result<(), StorageError> {
    sqlx::query("INSERT INTO users (email, display_name, role, password_hash, disabled, created_at) VALUES ($1, $2, $3, NULL, 0, $4)")
        .bind(email)
        .bind(display_name)
        .bind(role.as_str())
        .bind(now)
        .execute(&mut *conn)
        .await
        .context("adding a user")?;
    Ok(())
}

/// Whether the account is disabled (`None`: no such account).
pub async fn user_disabled(conn: &mut AnyConnection, user_id: i64) -> Result<Option<bool>, StorageError> {
    let disabled: Option<i64> = sqlx::query_scalar("SELECT disabled FROM users WHERE id = $1")
        .bind(user_id)
        .fetch_optional(&mut *conn)
        .await
        .context("checking a user")?;
    Ok(disabled.map(|d| d != 0))
}

/// Issues a set-password link (stored by its hash), retiring the user's earlier unused ones.
pub async fn replace_password_token(
    conn: &mut AnyConnection,
    user_id: i64,
    token_hash: &str,
    now: i64,
    expires_at: i64,
) -> Result<(), StorageError> {
    sqlx::query("UPDATE password_tokens SET used_at = $1 WHERE user_id = $2 AND used_at IS NULL")
        .bind(now)
        .bind(user_id)
        .execute(&mut *conn)
        .await
        .context("retiring old set-password links")?;
    sqlx::query("INSERT INTO password_tokens (token_hash, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4)")
        .bind(token_hash)
        .bind(user_id)
        .bind(now)
        .bind(expires_at)
        .execute(&mut *conn)
        .await
        .context("issuing a set-password link")?;
    Ok(())
}

/// The enabled user an unused, unexpired set-password link is for.
pub async fn user_for_password_token_hash(
    conn: &mut AnyConnection,
    token_hash: &str,
    now: i64,
) -> Result<Option<User>, StorageError> {
    let row = sqlx::query(
        "SELECT u.id, u.email, u.display_name, u.role, u.disabled FROM password_tokens t JOIN users u ON u.id = t.user_id
         WHERE t.token_hash = $1 AND t.used_at IS NULL AND t.expires_at > $2 AND u.disabled = 0",
    )
    .bind(token_hash)
    .bind(now)
    .fetch_optional(&mut *conn)
    .await
    .context("checking a set-password link")?;
    row.as_ref().map(user_from_row).transpose()
}

/// Spends a set-password link; false when it was already spent (by a racing request).
pub async fn spend_password_token(conn: &mut AnyConnection, token_hash: &str, now: i64) -> Result<bool, StorageError> {
    let spent = sqlx::query("UPDATE password_tokens SET used_at = $1 WHERE token_hash = $2 AND used_at IS NULL")
        .bind(now)
        .bind(token_hash)
        .execute(&mut *conn)
        .await
        .context("spending a set-password link")?;
    Ok(spent.rows_affected() == 1)
}

/// Sets a new password hash; the account's failure count starts again.
pub async fn set_password_hash(conn: &mut AnyConnection, user_id: i64, hash: &str) -> Result<(), StorageError> {
    sqlx::query("UPDATE users SET password_hash = $1, failed_attempts = 0, locked_until = NULL WHERE id = $2")
        .bind(hash)
        .bind(user_id)
        .execute(&mut *conn)
        .await
        .context("setting a password")?;
    Ok(())
}

/// Disables or enables an account; false when there is no such account. A disabled account's
/// sessions end and its set-password links stop working.
pub async fn set_user_disabled(conn: &mut AnyConnection, email: &str, disabled: bool) -> Result<bool, StorageError> {
    let done = sqlx::query("UPDATE users SET disabled = $1 WHERE email = $2")
        .bind(i64::from(disabled))
        .bind(email)
        .execute(&mut *conn)
        .await
        .context("disabling a user")?;
    if done.rows_affected() == 0 {
        return Ok(false);
    }
    if disabled {
        sqlx::query("DELETE FROM sessions WHERE user_id IN (SELECT id FROM users WHERE email = $1)")
            .bind(email)
            .execute(&mut *conn)
            .await
            .context("ending a disabled user's sessions")?;
        sqlx::query(
            "UPDATE password_tokens SET used_at = created_at WHERE used_at IS NULL AND user_id IN (SELECT id FROM users WHERE email = $1)",
        )
        .bind(email)
        .execute(&mut *conn)
        .await
        .context("retiring a disabled user's set-password links")?;
    }
    Ok(true)
}

pub async fn set_user_role(conn: &mut AnyConnection, user_id: i64, role: ActorRole) -> Result<(), StorageError> {
    sqlx::query("UPDATE users SET role = $1 WHERE id = $2")
        .bind(role.as_str())
        .bind(user_id)
        .execute(&mut *conn)
        .await
        .context("changing a role")?;
    Ok(())
}

// ---- Sign-in throttle --------------------------------------------------------------------------

/// A throttle key's count of failures and the time before which it refuses attempts (the key
/// is created, clear, on first sight).
pub async fn throttle_state(conn: &mut AnyConnection, key: &str) -> Result<(i64, i64), StorageError> {
    sqlx::query(
        "INSERT INTO sign_in_throttle (key, failed, blocked_until) VALUES ($1, 0, 0) ON CONFLICT (key) DO NOTHING",
    )
    .bind(key)
    .execute(&mut *conn)
    .await
    .context("throttling sign-in")?;
    let row = sqlx::query("SELECT failed, blocked_until FROM sign_in_throttle WHERE key = $1")
        .bind(key)
        .fetch_one(&mut *conn)
        .await
        .context("throttling sign-in")?;
    Ok((
        row.try_get(0).context("throttling sign-in")?,
        row.try_get(1).context("throttling sign-in")?,
    ))
}

/// Compare-and-swap on a throttle key: sets the new state only if the key still holds the one
/// read. False when another attempt changed it first.
pub async fn swap_throttle(
    conn: &mut AnyConnection,
    key: &str,
    seen: (i64, i64),
    new: (i64, i64),
) -> Result<bool, StorageError> {
    let swapped = sqlx::query(
        "UPDATE sign_in_throttle SET failed = $1, blocked_until = $2 WHERE key = $3 AND failed = $4 AND blocked_until = $5",
    )
    .bind(new.0)
    .bind(new.1)
    .bind(key)
    .bind(seen.0)
    .bind(seen.1)
    .execute(&mut *conn)
    .await
    .context("throttling sign-in")?;
    Ok(swapped.rows_affected() == 1)
}

pub async fn clear_throttle(conn: &mut AnyConnection, key: &str) -> Result<(), StorageError> {
    sqlx::query("UPDATE sign_in_throttle SET failed = 0, blocked_until = 0 WHERE key = $1")
        .bind(key)
        .execute(&mut *conn)
        .await
        .context("clearing a sign-in throttle")?;
    Ok(())
}

/// Takes back one claimed attempt on a throttle key (a sign-in that succeeded), and the lock
/// that claim set, if it set one (`claimed_until`) and no later claim has set another.
pub async fn release_throttle_claim(
    conn: &mut AnyConnection,
    key: &str,
    claimed_until: i64,
) -> Result<(), StorageError> {
    sqlx::query(
        "UPDATE sign_in_throttle SET failed = failed - 1,
                blocked_until = CASE WHEN blocked_until = $2 THEN 0 ELSE blocked_until END
         WHERE key = $1 AND failed > 0",
    )
    .bind(key)
    .bind(claimed_until)
    .execute(&mut *conn)
    .await
    .context("taking back a sign-in's claim")?;
    Ok(())
}

/// Forgets every throttle key of an account (after a new password).
pub async fn clear_account_throttles(conn: &mut AnyConnection, email: &str) -> Result<(), StorageError> {
    sqlx::query("DELETE FROM sign_in_throttle WHERE key LIKE $1")
        .bind(format!("account:{email}%"))
        .execute(&mut *conn)
        .await
        .context("clearing the sign-in throttle")?;
    Ok(())
}

// ---- Sessions and secrets ----------------------------------------------------------------------

pub async fn insert_session(
    conn: &mut AnyConnection,
    token_hash: &str,
    user_id: i64,
    now: i64,
    expires_at: i64,
) -> Result<(), StorageError> {
    sqlx::query("INSERT INTO sessions (token_hash, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4)")
        .bind(token_hash)
        .bind(user_id)
        .bind(now)
        .bind(expires_at)
        .execute(&mut *conn)
        .await
        .context("starting a session")?;
    Ok(())
}

/// The enabled user of an unexpired session.
pub async fn session_user_by_hash(
    conn: &mut AnyConnection,
    token_hash: &str,
    now: i64,
) -> Result<Option<User>, StorageError> {
    let row = sqlx::query(
        "SELECT u.id, u.email, u.display_name, u.role, u.disabled FROM sessions s JOIN users u ON u.id = s.user_id
         WHERE s.token_hash = $1 AND s.expires_at > $2 AND u.disabled = 0",
    )
    .bind(token_hash)
    .bind(now)
    .fetch_optional(&mut *conn)
    .await
    .context("reading a session")?;
    row.as_ref().map(user_from_row).transpose()
}

pub async fn delete_session(conn: &mut AnyConnection, token_hash: &str) -> Result<(), StorageError> {
    sqlx::query("DELETE FROM sessions WHERE token_hash = $1")
        .bind(token_hash)
        .execute(&mut *conn)
        .await
        .context("ending a session")?;
    Ok(())
}

pub async fn delete_user_sessions(conn: &mut AnyConnection, user_id: i64) -> Result<(), StorageError> {
    sqlx::query("DELETE FROM sessions WHERE user_id = $1")
        .bind(user_id)
        .execute(&mut *conn)
        .await
        .context("ending a user's sessions")?;
    Ok(())
}

/// The secret stored under `name`; the first caller's `candidate` becomes it.
pub async fn shared_secret(conn: &mut AnyConnection, name: &str, candidate: &str) -> Result<String, StorageError> {
    sqlx::query("INSERT INTO secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
        .bind(name)
        .bind(candidate)
        .execute(&mut *conn)
        .await
        .context("creating a secret")?;
    sqlx::query_scalar("SELECT value FROM secrets WHERE name = $1")
        .bind(name)
        .fetch_one(&mut *conn)
        .await
        .context("reading a secret")
}

// ---- Sign-in through an OpenID Connect provider --------------------------------------------

/// Remembers a sign-in that has left for the provider, and forgets those left over an hour.
pub async fn insert_oidc_login(
    conn: &mut AnyConnection,
    state: &str,
    nonce: &str,
    pkce_verifier: &str,
    next: &str,
    now: i64,
) -> Result<(), StorageError> {
    sqlx::query("DELETE FROM oidc_logins WHERE created_at < $1")
        .bind(now - 3_600_000)
        .execute(&mut *conn)
        .await
        .context("forgetting abandoned sign-ins")?;
    sqlx::query("INSERT INTO oidc_logins (state, nonce, pkce_verifier, next, created_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(state)
        .bind(nonce)
        .bind(pkce_verifier)
        .bind(next)
        .bind(now)
        .execute(&mut *conn)
        .await
        .context("remembering a sign-in")?;
    Ok(())
}

/// A sign-in coming back from the provider: takes its record (so a replayed `state` finds
/// nothing) if it left no earlier than `not_before`. Its nonce, PKCE verifier and `next`.
pub async fn take_oidc_login(
    conn: &mut AnyConnection,
    state: &str,
    not_before: i64,
) -> Result<Option<(String, String, String)>, StorageError> {
    let row = sqlx::query("DELETE FROM oidc_logins WHERE state = $1 RETURNING nonce, pkce_verifier, next, created_at")
        .bind(state)
        .fetch_optional(&mut *conn)
        .await
        .context("taking a sign-in")?;
    let Some(row) = row else { return Ok(None) };
    let created_at: i64 = row.try_get(3).context("reading a sign-in")?;
    if created_at < not_before {
        return Ok(None);
    }
    Ok(Some((
        row.try_get(0).context("reading a sign-in")?,
        row.try_get(1).context("reading a sign-in")?,
        row.try_get(2).context("reading a sign-in")?,
    )))
}

/// The account matched to this provider subject.
pub async fn user_by_oidc_subject(conn: &mut AnyConnection, subject: &str) -> Result<Option<User>, StorageError> {
    let row = sqlx::query("SELECT id, email, display_name, role, disabled FROM users WHERE oidc_subject = $1")
        .bind(subject)
        .fetch_optional(&mut *conn)
        .await
        .context("finding a user by subject")?;
    row.as_ref().map(user_from_row).transpose()
}

/// Matches an account to a provider subject; false when there is no such account.
pub async fn set_oidc_subject(
    conn: &mut AnyConnection,
    email: &str,
    subject: Option<&str>,
) -> Result<bool, StorageError> {
    let done = sqlx::query("UPDATE users SET oidc_subject = $1 WHERE email = $2")
        .bind(subject)
        .bind(email)
        .execute(&mut *conn)
        .await
        .context("matching an account to a subject")?;
    Ok(done.rows_affected() == 1)
}
