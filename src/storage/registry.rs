//! The organisation registry's rows: imported in bulk, looked up by code.

use sqlx::{AnyConnection, Row};

use super::batch::multi_row_insert;
use super::{QueryContext, StorageError};
use crate::registry::{OrgStatus, RegisteredOrganisation, RegistryLookup};

/// Rows per statement (8 values each).
const ROWS_PER_STATEMENT: usize = 500;

/// Adds or replaces `organisations` (from the file `source`); returns how many.
pub async fn import_registry(
    conn: &mut AnyConnection,
    organisations: &[RegisteredOrganisation],
    source: &str,
    now: i64,
) -> Result<usize, StorageError> {
    for chunk in organisations.chunks(ROWS_PER_STATEMENT) {
        let sql = multi_row_insert(
            super::Backend::of(conn),
            "INSERT INTO ods_registry (ods_code, name, gp_practice, roles, status, closed_on, source, imported_at, region) VALUES",
            9,
            chunk.len(),
            " ON CONFLICT (ods_code) DO UPDATE SET name = EXCLUDED.name, \
              gp_practice = CASE WHEN ods_registry.gp_practice = 1 OR EXCLUDED.gp_practice = 1 THEN 1 ELSE 0 END, \
              roles = EXCLUDED.roles, status = EXCLUDED.status, closed_on = EXCLUDED.closed_on, \
              source = EXCLUDED.source, imported_at = EXCLUDED.imported_at, \
              region = COALESCE(EXCLUDED.region, ods_registry.region)",
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for org in chunk {
            query = query
                .bind(&org.code)
                .bind(&org.name)
                .bind(i64::from(org.gp_practice))
                .bind(org.roles.join(" "))
                .bind(org.status.as_str())
                .bind(org.closed_on.map(|d| d.to_string()))
                .bind(source)
                .bind(now)
                .bind(org.region.as_deref());
        }
        query
            .execute(&mut *conn)
            .await
            .context("importing the organisation registry")?;
    }
    Ok(organisations.len())
}

/// What the registry says about `code` (`NotLoaded` when nothing was ever imported).
pub async fn registry_lookup(conn: &mut AnyConnection, code: &str) -> Result<RegistryLookup, StorageError> {
    Ok(records_of(conn, code).await?.0)
}

/// An organisation from a row whose first six columns are the registry's (code, name,
/// gp_practice, roles, status, closed_on, region).
fn organisation_from(row: &sqlx::any::AnyRow) -> Result<RegisteredOrganisation, StorageError> {
    let decode = |e: sqlx::Error| StorageError::Query {
        context: "decoding an organisation",
        source: e,
    };
    let status: String = row.try_get(4).map_err(decode)?;
    let roles: String = row.try_get(3).map_err(decode)?;
    let closed_on: Option<String> = row.try_get(5).map_err(decode)?;
    Ok(RegisteredOrganisation {
        code: row.try_get(0).map_err(decode)?,
        name: row.try_get(1).map_err(decode)?,
        gp_practice: row.try_get::<i64, _>(2).map_err(decode)? == 1,
        roles: roles.split_whitespace().map(str::to_string).collect(),
        status: OrgStatus::parse(&status).ok_or_else(|| StorageError::Corrupt {
            context: "an organisation's status",
            message: status.clone(),
        })?,
        closed_on: closed_on.and_then(|d| chrono::NaiveDate::parse_from_str(&d, "%Y-%m-%d").ok()),
        region: row.try_get(6).map_err(decode)?,
    })
}

/// How many organisations the registry holds, and how many are GP practices.
pub async fn registry_counts(conn: &mut AnyConnection) -> Result<(i64, i64), StorageError> {
    let row =
        sqlx::query("SELECT COUNT(*), (SELECT COUNT(*) FROM ods_registry WHERE gp_practice = 1) FROM ods_registry")
            .fetch_one(&mut *conn)
            .await
            .context("counting the organisation registry")?;
    Ok((
        row.try_get(0).context("counting the organisation registry")?,
        row.try_get(1).context("counting the organisation registry")?,
    ))
}

/// The registry's word on `code` and the signatory register's rows for it.
pub async fn records_of(
    conn: &mut AnyConnection,
    code: &str,
) -> Result<(RegistryLookup, crate::signatories::RegisterLookup), StorageError> {
    let code = code.trim().to_ascii_uppercase();
    let mut found = records_of_codes(conn, std::slice::from_ref(&code)).await?;
    Ok(found.remove(&code).unwrap_or_default())
}

/// What the registry and the signatory register say of each of `codes` (upper case), in three
/// queries however many codes: whether each is in use at all, the registry's rows, and the
/// register's. A group of mail asks once for all its forms, not twice a form.
pub async fn records_of_codes(
    conn: &mut AnyConnection,
    codes: &[String],
) -> Result<std::collections::HashMap<String, (RegistryLookup, crate::signatories::RegisterLookup)>, StorageError> {
    let mut distinct: Vec<&str> = codes.iter().map(String::as_str).collect();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.is_empty() {
        return Ok(Default::default());
    }
    let probes = sqlx::query(
        "SELECT (SELECT COUNT(*) FROM (SELECT 1 FROM ods_registry LIMIT 1) AS loaded), \
                (SELECT COUNT(*) FROM (SELECT 1 FROM signatories WHERE active = 1 AND source <> 'provisioned' LIMIT 1) AS kept)",
    )
    .fetch_one(&mut *conn)
    .await
    .context("asking whether the registry and the register are in use")?;
    let loaded: i64 = probes.try_get(0).context("decoding the registry's use")?;
    let register_in_use: i64 = probes.try_get(1).context("decoding the register's use")?;
    let mut organisations = std::collections::HashMap::new();
    let mut signatories: std::collections::HashMap<String, Vec<crate::signatories::KnownSignatory>> =
        Default::default();
    for chunk in distinct.chunks(500) {
        let registry_sql = super::in_list(super::queries::ORGANISATION_IN_REGISTRY, chunk.len());
        let mut query = sqlx::query(sqlx::AssertSqlSafe(registry_sql));
        for code in chunk {
            query = query.bind(*code);
        }
        for row in query.fetch_all(&mut *conn).await.context("looking up organisations")? {
            let organisation = organisation_from(&row)?;
            organisations.insert(organisation.code.clone(), organisation);
        }
        for signatory in super::signatories::signatories_of_codes(conn, chunk).await? {
            signatories
                .entry(signatory.ods_code.clone())
                .or_default()
                .push(signatory);
        }
    }
    Ok(distinct
        .into_iter()
        .map(|code| {
            let registry = match organisations.remove(code) {
                Some(organisation) => RegistryLookup::Known(organisation),
                None if loaded > 0 => RegistryLookup::Unknown,
                None => RegistryLookup::NotLoaded,
            };
            let register = crate::signatories::RegisterLookup {
                in_use: register_in_use > 0,
                of_organisation: signatories.remove(code).unwrap_or_default(),
            };
            (code.to_string(), (registry, register))
        })
        .collect())
}

/// Every registered organisation's name and commissioning region, by ODS code: what the
/// lifecycle report groups the account register by.
pub async fn registry_names_and_regions(
    conn: &mut AnyConnection,
) -> Result<std::collections::HashMap<String, (String, Option<String>)>, StorageError> {
    let rows = sqlx::query("SELECT ods_code, name, region FROM ods_registry")
        .fetch_all(&mut *conn)
        .await
        .context("reading the registry's regions")?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, (r.try_get(1)?, r.try_get(2)?))))
        .collect::<Result<_, sqlx::Error>>()
        .context("reading the registry's regions")
}
