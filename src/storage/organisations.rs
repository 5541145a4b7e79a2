//! Organisations named on forms.

use sqlx::AnyConnection;

use super::{QueryContext, StorageError};

/// Records the organisation a case names, creating it on first sight.
pub async fn upsert_organisation(
    conn: &mut AnyConnection,
    ods_code: &str,
    name: &str,
    kind: &str,
    now: i64,
) -> Result<i64, StorageError> {
    sqlx::query_scalar(
        "INSERT INTO organisations (ods_code, name, kind, created_at, updated_at) VALUES ($1, $2, $3, $4, $4)
         ON CONFLICT (ods_code) DO UPDATE SET updated_at = $4 RETURNING id",
    )
    .bind(ods_code)
    .bind(name)
    .bind(kind)
    .bind(now)
    .fetch_one(&mut *conn)
    .await
    .context("recording an organisation")
}
