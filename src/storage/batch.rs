//! Rows a group of changes writes that nothing later in the group reads (new cases, under ids
//! taken for them, and their links, events, timers and mail): held back, then written with one
//! multi-row statement per table just before the group commits. A mailbox drain records up to
//! 32 emails in one transaction; one statement per table instead of one per row is most of
//! what it costs.

use std::collections::BTreeMap;

use sqlx::AnyConnection;

use super::{CaseChangeset, CaseEvent, NewMail, NewTimer, QueryContext, StorageError};
use crate::domain::{OutboxStatus, TimerStatus};

/// The rows held back, in the order they were planned (so that events keep their order).
#[derive(Debug, Default)]
pub struct Deferred {
    /// New cases, under ids taken for them: written first, since everything else names them.
    cases: Vec<super::CaseToStore>,
    links: Vec<(i64, i64, &'static str)>,
    events: Vec<(i64, CaseEvent)>,
    timers: Vec<(i64, NewTimer, i64)>,
    mail: Vec<(Option<i64>, NewMail, i64)>,
    signatories: Vec<(super::NewSignatory, i64)>,
    /// Accounts for the register, with the case reference they came from.
    accounts: Vec<(crate::accounts::OeAccount, String, i64)>,
    /// Credentials issued, by case.
    credentials: Vec<(i64, super::NewCredential, i64)>,
}

impl Deferred {
    /// Holds a new case (see [`super::take_case_ids`]) until the group's rows are written.
    pub fn hold_case(&mut self, case: super::CaseToStore) {
        self.cases.push(case);
    }

    /// Whether the case with this id is new and not written yet.
    fn holds_case(&self, case_id: i64) -> bool {
        self.cases.iter().any(|c| c.case.id == case_id)
    }

    /// Holds the rows of a change (its links, events, new timers and mail), not its columns.
    fn hold(&mut self, change: CaseChangeset) {
        let CaseChangeset {
            case_id,
            at,
            events,
            arm_timers,
            mail,
            link_messages,
            add_signatories,
            add_accounts,
            issue_credentials,
            reference,
            ..
        } = change;
        self.credentials
            .extend(issue_credentials.into_iter().map(|c| (case_id, c, at)));
        self.signatories.extend(add_signatories.into_iter().map(|s| (s, at)));
        self.accounts
            .extend(add_accounts.into_iter().map(|a| (a, reference.clone(), at)));
        self.links.extend(
            link_messages
                .into_iter()
                .map(|(message, relation)| (case_id, message, relation)),
        );
        self.events.extend(events.into_iter().map(|e| (case_id, e)));
        self.timers.extend(arm_timers.into_iter().map(|t| (case_id, t, at)));
        self.mail.extend(mail.into_iter().map(|m| (Some(case_id), m, at)));
    }
}

/// Writes a change's rows (links, events, new timers, mail) now.
pub(super) async fn write_rows(conn: &mut AnyConnection, change: CaseChangeset) -> Result<(), StorageError> {
    let mut rows = Deferred::default();
    rows.hold(change);
    flush(conn, &mut rows).await
}

/// Queues a message that belongs to no case (the daily digest).
pub async fn enqueue_mail(conn: &mut AnyConnection, mail: NewMail, now: i64) -> Result<(), StorageError> {
    let mut rows = Deferred::default();
    rows.mail.push((None, mail, now));
    flush(conn, &mut rows).await
}

/// Like [`super::apply_change`], with the rows that nothing reads back (message links,
/// events, new timers, mail) held in `deferred` until [`flush`]. The version-checked update
/// of the case runs now. A change that cancels timers writes everything held first, so it
/// cancels timers armed earlier in the group too.
pub async fn apply_change_deferred(
    conn: &mut AnyConnection,
    change: CaseChangeset,
    deferred: &mut Deferred,
) -> Result<(), StorageError> {
    // A change to a new case's columns updates its row, so the row must be there.
    if change.cancel_timers != super::CancelTimers::default()
        || (change.columns.any() && deferred.holds_case(change.case_id))
    {
        flush(conn, deferred).await?;
    }
    super::apply_columns(conn, &change).await?;
    deferred.hold(change);
    Ok(())
}

/// Links messages to cases, `(case, message, relation)`, a multi-row statement per
/// [`ROWS_PER_STATEMENT`] links; a link already made stays as it is.
pub(super) async fn link_messages(
    conn: &mut AnyConnection,
    links: &[(i64, i64, &'static str)],
) -> Result<(), StorageError> {
    for chunk in links.chunks(ROWS_PER_STATEMENT) {
        let sql = multi_row_insert(
            super::Backend::of(conn),
            "INSERT INTO case_messages (case_id, raw_message_id, relation) VALUES",
            3,
            chunk.len(),
            " ON CONFLICT DO NOTHING",
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (case_id, message, relation) in chunk {
            query = query.bind(*case_id).bind(*message).bind(*relation);
        }
        query.execute(&mut *conn).await.context("linking messages to cases")?;
    }
    Ok(())
}

/// Writes everything held, one multi-row statement per table (in chunks that keep within
/// both databases' limits on bound values).
pub async fn flush(conn: &mut AnyConnection, deferred: &mut Deferred) -> Result<(), StorageError> {
    let held = std::mem::take(deferred);
    // A new case's event chain starts with the events held for it: its row is written with
    // their count, so that appending them has no chain to advance or head to read.
    let mut chains: BTreeMap<i64, (i64, i64)> = held.cases.iter().map(|c| (c.case.id, (0, 0))).collect();
    for (case_id, event) in &held.events {
        if let Some((count, last_at)) = chains.get_mut(case_id) {
            *count += 1;
            *last_at = (*last_at).max(event.at);
        }
    }
    chains.retain(|_, (count, _)| *count > 0);
    super::cases::insert_cases(conn, &held.cases, &chains).await?;
    link_messages(conn, &held.links).await?;
    super::audit::append_events(conn, held.events, &chains).await?;
    for (signatory, at) in &held.signatories {
        super::add_signatories(conn, std::slice::from_ref(signatory), *at).await?;
    }
    for (account, reference, at) in &held.accounts {
        super::upsert_accounts(conn, std::slice::from_ref(account), reference, *at).await?;
    }
    for (case_id, credential, at) in &held.credentials {
        super::insert_credentials(conn, *case_id, std::slice::from_ref(credential), *at).await?;
    }
    for chunk in held.timers.chunks(ROWS_PER_STATEMENT) {
        let sql = multi_row_insert(
            super::Backend::of(conn),
            "INSERT INTO timers (case_id, name, state, due_at, status, created_at) VALUES",
            6,
            chunk.len(),
            "",
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (case_id, timer, now) in chunk {
            query = query
                .bind(*case_id)
                .bind(&timer.name)
                .bind(&timer.state)
                .bind(timer.due_at)
                .bind(TimerStatus::Pending.as_str())
                .bind(*now);
        }
        query.execute(&mut *conn).await.context("arming timers")?;
    }
    for chunk in held.mail.chunks(ROWS_PER_STATEMENT) {
        let sql = multi_row_insert(
            super::Backend::of(conn),
            "INSERT INTO outbox (case_id, template, recipient, context, message_id, in_reply_to, status, suppressed_reason, next_attempt_at, created_at, automatic) VALUES",
            11,
            chunk.len(),
            "",
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (case_id, m, now) in chunk {
            let status = if m.suppressed_reason.is_some() {
                OutboxStatus::Suppressed
            } else {
                OutboxStatus::Pending
            };
            query = query
                .bind(*case_id)
                .bind(&m.template)
                .bind(&m.recipient)
                .bind(&m.context_json)
                .bind(&m.message_id)
                .bind(&m.in_reply_to)
                .bind(status.as_str())
                .bind(&m.suppressed_reason)
                .bind(*now)
                .bind(*now)
                .bind(i64::from(m.automatic));
        }
        query.execute(&mut *conn).await.context("queueing email")?;
    }
    Ok(())
}

/// Rows per multi-row statement: 11 columns × 200 rows stays far inside SQLite's 32,766 and
/// PostgreSQL's 65,535 bound values.
pub(super) const ROWS_PER_STATEMENT: usize = 200;

/// `head ($1, …, $n), (…), … tail`, for `rows` rows of `columns` values. Only placeholders
/// are written into the text; every value is bound. SQLite gets anonymous `?` placeholders,
/// bound in order: it looks a numbered one up by walking the statement's list of names, so a
/// statement of a thousand `$n` took a million steps to bind (a sixth of its ingest time).
pub(super) fn multi_row_insert(backend: super::Backend, head: &str, columns: usize, rows: usize, tail: &str) -> String {
    let mut sql = String::with_capacity(head.len() + rows * columns * 5 + tail.len());
    sql.push_str(head);
    for row in 0..rows {
        sql.push_str(if row == 0 { " (" } else { ", (" });
        for column in 0..columns {
            if column > 0 {
                sql.push_str(", ");
            }
            match backend {
                super::Backend::Sqlite => sql.push('?'),
                super::Backend::Postgres => {
                    sql.push('$');
                    sql.push_str(&(row * columns + column + 1).to_string());
                }
            }
        }
        sql.push(')');
    }
    sql.push_str(tail);
    sql
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_multi_row_insert_numbers_its_placeholders_row_by_row() {
        assert_eq!(
            super::multi_row_insert(
                crate::storage::Backend::Postgres,
                "INSERT INTO t (a, b) VALUES",
                2,
                3,
                " ON CONFLICT DO NOTHING"
            ),
            "INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4), ($5, $6) ON CONFLICT DO NOTHING"
        );
    }

    #[test]
    fn a_multi_row_insert_on_sqlite_binds_its_values_in_order() {
        assert_eq!(
            super::multi_row_insert(crate::storage::Backend::Sqlite, "INSERT INTO t (a, b) VALUES", 2, 2, ""),
            "INSERT INTO t (a, b) VALUES (?, ?), (?, ?)"
        );
    }
}
