//! Organisations named on forms.

use std::collections::BTreeMap;

use sqlx::{AnyConnection, Row};

use super::{QueryContext, StorageError};

/// An organisation a new case names: created on first sight when the case is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrganisation {
    pub ods_code: String,
    pub name: String,
    /// `gp_practice` or `other`.
    pub kind: &'static str,
}

/// Records the organisations new cases name (creating those seen for the first time) with one
/// statement per chunk; returns each one's id by ODS code. The first name given for a code is
/// the one a new organisation takes.
pub(super) async fn upsert_organisations(
    conn: &mut AnyConnection,
    organisations: &[&NewOrganisation],
    now: i64,
) -> Result<BTreeMap<String, i64>, StorageError> {
    let mut distinct: Vec<&NewOrganisation> = Vec::with_capacity(organisations.len());
    for organisation in organisations {
        // One statement may not upsert one row twice (PostgreSQL refuses it).
        if !distinct.iter().any(|d| d.ods_code == organisation.ods_code) {
            distinct.push(organisation);
        }
    }
    let mut ids = BTreeMap::new();
    for chunk in distinct.chunks(super::batch::ROWS_PER_STATEMENT) {
        let sql = super::batch::multi_row_insert(
            super::Backend::of(conn),
            "INSERT INTO organisations (ods_code, name, kind, created_at, updated_at) VALUES",
            5,
            chunk.len(),
            " ON CONFLICT (ods_code) DO UPDATE SET updated_at = excluded.updated_at RETURNING ods_code, id",
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for organisation in chunk {
            query = query
                .bind(&organisation.ods_code)
                .bind(&organisation.name)
                .bind(organisation.kind)
                .bind(now)
                .bind(now);
        }
        for row in query.fetch_all(&mut *conn).await.context("recording organisations")? {
            ids.insert(
                row.try_get(0).context("recording organisations")?,
                row.try_get(1).context("recording organisations")?,
            );
        }
    }
    Ok(ids)
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
