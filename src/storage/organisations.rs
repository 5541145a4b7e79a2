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

/// An organisation as the admin pages list it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OrganisationSummary {
    pub ods: String,
    pub name: String,
    pub kind: String,
    pub cases: i64,
}

/// Organisations whose code or name contains `text` (any case), by name, with how many
/// cases each has.
pub async fn search_organisations(
    conn: &mut AnyConnection,
    text: &str,
    limit: i64,
) -> Result<Vec<OrganisationSummary>, StorageError> {
    use sqlx::Row;
    let rows = sqlx::query(
        "SELECT o.ods_code, o.name, o.kind, (SELECT COUNT(*) FROM cases c WHERE c.organisation_id = o.id) FROM organisations o
         WHERE LOWER(o.ods_code) LIKE $1 OR LOWER(o.name) LIKE $1 ORDER BY o.name LIMIT $2",
    )
    .bind(format!("%{}%", text.trim().to_lowercase()))
    .bind(limit)
    .fetch_all(&mut *conn)
    .await
    .context("searching organisations")?;
    rows.iter()
        .map(|r| {
            Ok(OrganisationSummary {
                ods: r.try_get(0)?,
                name: r.try_get(1)?,
                kind: r.try_get(2)?,
                cases: r.try_get(3)?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .context("decoding organisations")
}

/// Renames an organisation; false when there is none with that code.
pub async fn rename_organisation(
    conn: &mut AnyConnection,
    ods_code: &str,
    name: &str,
    now: i64,
) -> Result<bool, StorageError> {
    let done = sqlx::query("UPDATE organisations SET name = $1, updated_at = $2 WHERE ods_code = $3")
        .bind(name)
        .bind(now)
        .bind(ods_code)
        .execute(&mut *conn)
        .await
        .context("renaming an organisation")?;
    Ok(done.rows_affected() == 1)
}
