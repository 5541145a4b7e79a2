//! The signatory register's rows, and the Primary User coverage of organisations.

use sqlx::{AnyConnection, Row};

use super::{QueryContext, StorageError};
use crate::signatories::{KnownSignatory, PRIMARY_USER};

/// A signatory to add, and how we know them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSignatory {
    pub signatory: KnownSignatory,
    /// Who verified them (a caseworker's address), when someone did.
    pub verified_by: Option<String>,
    /// How they were verified, or where they came from.
    pub note: Option<String>,
    pub case_reference: Option<String>,
}

/// Adds signatories (in the caller's transaction).
pub async fn add_signatories(conn: &mut AnyConnection, new: &[NewSignatory], now: i64) -> Result<(), StorageError> {
    for entry in new {
        let s = &entry.signatory;
        sqlx::query(
            "INSERT INTO signatories (ods_code, role, name, email, source, verified_by, note, case_reference, active, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 1, $9, $9)",
        )
        .bind(&s.ods_code)
        .bind(&s.role)
        .bind(&s.name)
        .bind(s.email.as_deref())
        .bind(&s.source)
        .bind(entry.verified_by.as_deref())
        .bind(entry.note.as_deref())
        .bind(entry.case_reference.as_deref())
        .bind(now)
        .execute(&mut *conn)
        .await
        .context("adding a signatory")?;
    }
    Ok(())
}

const SIGNATORY_COLUMNS: &str = signatory_columns!();

fn signatory(r: &sqlx::any::AnyRow) -> Result<KnownSignatory, sqlx::Error> {
    Ok(KnownSignatory {
        ods_code: r.try_get(0)?,
        role: r.try_get(1)?,
        name: r.try_get(2)?,
        email: r.try_get(3)?,
        source: r.try_get(4)?,
    })
}

/// Every active signatory of any of `codes` (at most a few hundred), by organisation.
pub(crate) async fn signatories_of_codes(
    conn: &mut AnyConnection,
    codes: &[&str],
) -> Result<Vec<KnownSignatory>, StorageError> {
    let sql = super::in_list(super::queries::SIGNATORIES_OF_ORGANISATION, codes.len());
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for code in codes {
        query = query.bind(*code);
    }
    let rows = query
        .fetch_all(&mut *conn)
        .await
        .context("reading organisations' signatories")?;
    rows.iter()
        .map(signatory)
        .collect::<Result<_, sqlx::Error>>()
        .context("decoding signatories")
}

/// Every active signatory of `ods_code` (or of every organisation).
pub async fn list_signatories(
    conn: &mut AnyConnection,
    ods_code: Option<&str>,
) -> Result<Vec<KnownSignatory>, StorageError> {
    let sql = format!(
        "SELECT {SIGNATORY_COLUMNS} FROM signatories WHERE active = 1 AND ($1 IS NULL OR ods_code = $1) ORDER BY ods_code, role, name"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(ods_code)
        .fetch_all(&mut *conn)
        .await
        .context("listing signatories")?;
    rows.iter()
        .map(signatory)
        .collect::<Result<_, sqlx::Error>>()
        .context("decoding signatories")
}

/// An organisation short of Primary Users.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Coverage {
    pub ods_code: String,
    pub name: Option<String>,
    pub primary_users: i64,
    /// An open request to replace a Primary User, when the organisation has only one.
    pub replacing: Option<String>,
}

/// Organisations we have dealt with (a case named them) or that the register knows, with
/// fewer than two active Primary Users; each with an open replacement request when there is
/// one. Only cases in `open_states` are read for those (through the state index): years of
/// closed cases are not.
pub async fn primary_user_coverage(
    conn: &mut AnyConnection,
    open_states: &[String],
) -> Result<Vec<Coverage>, StorageError> {
    let rows = sqlx::query(
        "SELECT o.ods_code, MAX(o.name), \
                (SELECT COUNT(*) FROM signatories s WHERE s.ods_code = o.ods_code AND s.active = 1 AND s.role = $1) \
           FROM (SELECT ods_code, name FROM organisations UNION SELECT DISTINCT ods_code, NULL FROM signatories) o \
          GROUP BY o.ods_code ORDER BY o.ods_code",
    )
    .bind(PRIMARY_USER)
    .fetch_all(&mut *conn)
    .await
    .context("counting Primary Users")?;
    let mut short = Vec::new();
    for row in &rows {
        let primary_users: i64 = row.try_get(2).context("counting Primary Users")?;
        if primary_users >= 2 {
            continue;
        }
        let ods_code: String = row.try_get(0).context("counting Primary Users")?;
        short.push(Coverage {
            name: row.try_get(1).context("counting Primary Users")?,
            primary_users,
            replacing: None,
            ods_code,
        });
    }
    // Open replacement requests, for the organisations with exactly one.
    if open_states.is_empty() || !short.iter().any(|c| c.primary_users == 1) {
        return Ok(short);
    }
    let states: Vec<&str> = open_states.iter().map(String::as_str).collect();
    let sql = format!(
        "SELECT reference, org_ods_code, fields FROM cases WHERE state IN ({}) AND org_ods_code IS NOT NULL AND fields LIKE '%Replacement%'",
        super::numbered(states.len(), |i| format!("${i}"))
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for state in &states {
        query = query.bind(*state);
    }
    let open = query
        .fetch_all(&mut *conn)
        .await
        .context("finding replacement requests")?;
    for row in &open {
        let fields: String = row.try_get(2).context("finding replacement requests")?;
        let replacing = serde_json::from_str::<std::collections::BTreeMap<String, String>>(&fields)
            .ok()
            .and_then(|f| f.get("request_kind").cloned())
            .is_some_and(|k| k == "Replacement");
        if !replacing {
            continue;
        }
        let code: String = row.try_get(1).context("finding replacement requests")?;
        if let Some(entry) = short.iter_mut().find(|c| c.ods_code == code && c.primary_users == 1) {
            entry.replacing = Some(row.try_get(0).context("finding replacement requests")?);
        }
    }
    Ok(short)
}

/// A register row as the admin page lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RegisterRow {
    pub id: i64,
    pub signatory: KnownSignatory,
    pub verified_by: Option<String>,
    pub note: Option<String>,
    pub case_reference: Option<String>,
}

/// The active register rows of one organisation (or the first `limit` of all), for admins.
pub async fn register_rows(
    conn: &mut AnyConnection,
    ods_code: Option<&str>,
    limit: i64,
) -> Result<Vec<RegisterRow>, StorageError> {
    let rows = sqlx::query(
        "SELECT ods_code, role, name, email, source, id, verified_by, note, case_reference FROM signatories \
         WHERE active = 1 AND ($1 IS NULL OR ods_code = $1) ORDER BY ods_code, role, name LIMIT $2",
    )
    .bind(ods_code)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await
    .context("listing the signatory register")?;
    rows.iter()
        .map(|r| {
            Ok(RegisterRow {
                signatory: signatory(r)?,
                id: r.try_get(5)?,
                verified_by: r.try_get(6)?,
                note: r.try_get(7)?,
                case_reference: r.try_get(8)?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .context("decoding the signatory register")
}

/// Takes a signatory off the register (the row stays, inactive, for the record); false when
/// there is no such active row.
pub async fn deactivate_signatory(conn: &mut AnyConnection, id: i64, now: i64) -> Result<bool, StorageError> {
    let done = sqlx::query("UPDATE signatories SET active = 0, updated_at = $1 WHERE id = $2 AND active = 1")
        .bind(now)
        .bind(id)
        .execute(&mut *conn)
        .await
        .context("removing a signatory")?;
    Ok(done.rows_affected() == 1)
}
