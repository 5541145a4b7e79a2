//! API tokens for service accounts (other systems that read and drive cases): made at random,
//! shown once, kept only as their SHA-256, each with a role, an optional expiry, revocation
//! and a record of its last use. The queries are in [`crate::storage`].
//!
//! A token is 32 random bytes, so a plain SHA-256 is enough to keep it (there is nothing to
//! guess, unlike a password), and a lookup by hash answers in one indexed read.

use sqlx::AnyConnection;

use crate::mail::sha256_hex;
use crate::storage::{self, ApiToken, StorageError};
use crate::workflow::ActorRole;

/// Every token starts so, to be recognised in a leaked log or a secret scanner.
pub const TOKEN_PREFIX: &str = "cs_";

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("a token named `{0}` exists already (names are never reused, so that logs stay unambiguous)")]
    NameTaken(String),
    #[error("a token's name is 1 to 64 letters, digits, dots, dashes or underscores: `{0}` is not")]
    BadName(String),
    #[error("a token cannot have the system's role")]
    SystemRole,
    #[error("no token named `{0}`, or it is revoked already")]
    NoSuchToken(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// The name the API logs and the event log record a token's calls under.
pub fn actor_name(token: &ApiToken) -> String {
    format!("token:{}", token.name)
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// Makes a token; returns it as stored and the token itself, which is never shown again.
pub async fn issue(
    conn: &mut AnyConnection,
    name: &str,
    role: ActorRole,
    expires_at: Option<i64>,
    now: i64,
) -> Result<(ApiToken, String), TokenError> {
    if !valid_name(name) {
        return Err(TokenError::BadName(name.to_string()));
    }
    if role == ActorRole::System {
        return Err(TokenError::SystemRole);
    }
    if storage::api_token_by_name(conn, name).await?.is_some() {
        return Err(TokenError::NameTaken(name.to_string()));
    }
    let secret = format!("{TOKEN_PREFIX}{}", crate::users::random_token());
    storage::insert_api_token(conn, name, role, &sha256_hex(secret.as_bytes()), expires_at, now).await?;
    let token = storage::api_token_by_name(conn, name)
        .await?
        .ok_or_else(|| TokenError::NoSuchToken(name.to_string()))?;
    Ok((token, secret))
}

/// Why a presented token is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Unknown,
    Revoked,
    Expired,
}

/// The token `presented` is, if it is live (known, not revoked, not expired); its use is
/// recorded.
pub async fn authenticate(
    conn: &mut AnyConnection,
    presented: &str,
    now: i64,
) -> Result<Result<ApiToken, Refusal>, StorageError> {
    if !presented.starts_with(TOKEN_PREFIX) {
        return Ok(Err(Refusal::Unknown));
    }
    let Some(token) = storage::api_token_by_hash(conn, &sha256_hex(presented.as_bytes())).await? else {
        return Ok(Err(Refusal::Unknown));
    };
    if token.revoked_at.is_some() {
        return Ok(Err(Refusal::Revoked));
    }
    if token.expires_at.is_some_and(|at| at <= now) {
        return Ok(Err(Refusal::Expired));
    }
    storage::touch_api_token(conn, token.id, now).await?;
    Ok(Ok(token))
}

/// Revokes a token by name: calls with it are refused from now on.
pub async fn revoke(conn: &mut AnyConnection, name: &str, now: i64) -> Result<(), TokenError> {
    if storage::revoke_api_token(conn, name, now).await? {
        Ok(())
    } else {
        Err(TokenError::NoSuchToken(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain_and_short() {
        assert!(valid_name("pcse-reporting.v2"));
        assert!(!valid_name(""));
        assert!(!valid_name("with space"));
        assert!(!valid_name("semi;colon"));
        assert!(!valid_name(&"x".repeat(65)));
    }
}
