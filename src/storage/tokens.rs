//! API tokens for service accounts: the queries only. Making, checking and revoking them is
//! [`crate::tokens`].

use sqlx::{AnyConnection, Row};

use super::{QueryContext, StorageError};
use crate::workflow::ActorRole;

/// A service account's token, as stored (its SHA-256, never the token).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ApiToken {
    pub id: i64,
    pub name: String,
    pub role: ActorRole,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
}

const TOKEN_COLUMNS: &str = "id, name, role, created_at, expires_at, revoked_at, last_used_at";

fn token_from_row(row: &sqlx::any::AnyRow) -> Result<ApiToken, StorageError> {
    let decode = |e| StorageError::Query {
        context: "decoding an API token",
        source: e,
    };
    let role: String = row.try_get(2).map_err(decode)?;
    Ok(ApiToken {
        id: row.try_get(0).map_err(decode)?,
        name: row.try_get(1).map_err(decode)?,
        role: ActorRole::parse(&role).ok_or(StorageError::Corrupt {
            context: "an API token's role",
            message: role.clone(),
        })?,
        created_at: row.try_get(3).map_err(decode)?,
        expires_at: row.try_get(4).map_err(decode)?,
        revoked_at: row.try_get(5).map_err(decode)?,
        last_used_at: row.try_get(6).map_err(decode)?,
    })
}

pub async fn insert_api_token(
    conn: &mut AnyConnection,
    name: &str,
    role: ActorRole,
    token_sha256: &str,
    expires_at: Option<i64>,
    now: i64,
) -> Result<(), StorageError> {
    sqlx::query(
        "INSERT INTO api_tokens (name, role, token_sha256, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(name)
    .bind(role.as_str())
    .bind(token_sha256)
    .bind(now)
    .bind(expires_at)
    .execute(&mut *conn)
    .await
    .context("adding an API token")?;
    Ok(())
}

pub async fn api_token_by_name(conn: &mut AnyConnection, name: &str) -> Result<Option<ApiToken>, StorageError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE name = $1"
    )))
    .bind(name)
    .fetch_optional(&mut *conn)
    .await
    .context("reading an API token")?;
    row.as_ref().map(token_from_row).transpose()
}

/// The token with this SHA-256, revoked, expired or not.
pub async fn api_token_by_hash(conn: &mut AnyConnection, token_sha256: &str) -> Result<Option<ApiToken>, StorageError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE token_sha256 = $1"
    )))
    .bind(token_sha256)
    .fetch_optional(&mut *conn)
    .await
    .context("reading an API token")?;
    row.as_ref().map(token_from_row).transpose()
}

pub async fn list_api_tokens(conn: &mut AnyConnection) -> Result<Vec<ApiToken>, StorageError> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY name"
    )))
    .fetch_all(&mut *conn)
    .await
    .context("listing API tokens")?;
    rows.iter().map(token_from_row).collect()
}

/// Revokes a token by name; false if there is no such token or it was revoked already.
pub async fn revoke_api_token(conn: &mut AnyConnection, name: &str, now: i64) -> Result<bool, StorageError> {
    let done = sqlx::query("UPDATE api_tokens SET revoked_at = $1 WHERE name = $2 AND revoked_at IS NULL")
        .bind(now)
        .bind(name)
        .execute(&mut *conn)
        .await
        .context("revoking an API token")?;
    Ok(done.rows_affected() == 1)
}

/// Records a use of a token, at most once a minute (a busy client must not write on every
/// call).
pub async fn touch_api_token(conn: &mut AnyConnection, id: i64, now: i64) -> Result<(), StorageError> {
    sqlx::query(
        "UPDATE api_tokens SET last_used_at = $1 WHERE id = $2 AND (last_used_at IS NULL OR last_used_at < $3)",
    )
    .bind(now)
    .bind(id)
    .bind(now - 60_000)
    .execute(&mut *conn)
    .await
    .context("recording a token's use")?;
    Ok(())
}
