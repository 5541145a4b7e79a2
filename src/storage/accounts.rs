//! The Open Exeter account register's rows (`oe_accounts`).

use std::collections::HashMap;

use chrono::NaiveDate;
use sqlx::{AnyConnection, Row};

use super::{QueryContext, StorageError};
use crate::accounts::{AccountStatus, OeAccount};

/// `SELECT <account columns> FROM oe_accounts <rest>`, as a static string.
macro_rules! select_accounts {
    ($rest:literal) => {
        concat!(
            "SELECT user_id, ods_code, name, email, primary_user, password_changed_on, last_sign_in_on, status FROM oe_accounts ",
            $rest
        )
    };
}

fn account(r: &sqlx::any::AnyRow) -> Result<OeAccount, StorageError> {
    let date = |at: usize| -> Result<Option<NaiveDate>, StorageError> {
        let text: Option<String> = r.try_get(at).context("reading an account")?;
        text.map(|t| {
            NaiveDate::parse_from_str(&t, "%Y-%m-%d").map_err(|_| StorageError::Corrupt {
                context: "reading an account",
                message: format!("date `{t}` is not YYYY-MM-DD"),
            })
        })
        .transpose()
    };
    let status: String = r.try_get(7).context("reading an account")?;
    Ok(OeAccount {
        user_id: r.try_get(0).context("reading an account")?,
        ods_code: r.try_get(1).context("reading an account")?,
        name: r.try_get(2).context("reading an account")?,
        email: r.try_get(3).context("reading an account")?,
        primary_user: r.try_get::<i64, _>(4).context("reading an account")? != 0,
        password_changed_on: date(5)?,
        last_sign_in_on: date(6)?,
        status: AccountStatus::parse(&status).ok_or_else(|| StorageError::Corrupt {
            context: "reading an account",
            message: format!("status `{status}`"),
        })?,
    })
}

/// The accounts held with any of `user_ids`, by user ID (looked up a chunk at a time).
pub async fn accounts_by_ids(
    conn: &mut AnyConnection,
    user_ids: &[&str],
) -> Result<HashMap<String, OeAccount>, StorageError> {
    let mut found = HashMap::new();
    for chunk in user_ids.chunks(500) {
        let sql = super::in_list(select_accounts!("WHERE user_id IN ($1)"), chunk.len());
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for id in chunk {
            query = query.bind(*id);
        }
        for row in query.fetch_all(&mut *conn).await.context("reading accounts")? {
            let account = account(&row)?;
            found.insert(account.user_id.clone(), account);
        }
    }
    Ok(found)
}

/// Every account of one organisation, or of all, by organisation and user ID.
pub async fn list_accounts(conn: &mut AnyConnection, ods_code: Option<&str>) -> Result<Vec<OeAccount>, StorageError> {
    let rows = match ods_code {
        Some(code) => {
            sqlx::query(select_accounts!("WHERE ods_code = $1 ORDER BY ods_code, user_id"))
                .bind(code)
                .fetch_all(&mut *conn)
                .await
        }
        None => {
            sqlx::query(select_accounts!("ORDER BY ods_code, user_id"))
                .fetch_all(&mut *conn)
                .await
        }
    }
    .context("listing accounts")?;
    rows.iter().map(account).collect()
}

/// Adds or replaces accounts by user ID (in the caller's transaction); `source` says where
/// they came from (`import`, or a case's reference).
pub async fn upsert_accounts(
    conn: &mut AnyConnection,
    accounts: &[OeAccount],
    source: &str,
    now: i64,
) -> Result<(), StorageError> {
    for a in accounts {
        sqlx::query(
            "INSERT INTO oe_accounts (user_id, ods_code, name, email, primary_user, password_changed_on, last_sign_in_on, status, source, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (user_id) DO UPDATE SET ods_code = excluded.ods_code, name = excluded.name, email = excluded.email, \
             primary_user = excluded.primary_user, password_changed_on = excluded.password_changed_on, \
             last_sign_in_on = excluded.last_sign_in_on, status = excluded.status, source = excluded.source, updated_at = excluded.updated_at",
        )
        .bind(&a.user_id)
        .bind(&a.ods_code)
        .bind(&a.name)
        .bind(a.email.as_deref())
        .bind(i64::from(a.primary_user))
        .bind(a.password_changed_on.map(|d| d.to_string()))
        .bind(a.last_sign_in_on.map(|d| d.to_string()))
        .bind(a.status.as_str())
        .bind(source)
        .bind(now)
        .execute(&mut *conn)
        .await
        .context("saving an account")?;
    }
    Ok(())
}

/// Records that the notice `key` is being sent (in the caller's transaction, beside its mail):
/// false when it was sent before, by this instance or another.
pub async fn claim_notice(conn: &mut AnyConnection, key: &str, user_id: &str, now: i64) -> Result<bool, StorageError> {
    let done = sqlx::query("INSERT INTO outreach_sent (notice_key, user_id, sent_at) VALUES ($1, $2, $3) ON CONFLICT (notice_key) DO NOTHING")
        .bind(key)
        .bind(user_id)
        .bind(now)
        .execute(&mut *conn)
        .await
        .context("recording a notice")?;
    Ok(done.rows_affected() == 1)
}
