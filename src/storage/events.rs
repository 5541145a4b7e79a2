//! The case event log (append-only) and caseworkers' notes.

use sqlx::{AnyConnection, Row};

use super::queries::*;
use super::{QueryContext, StorageError, stored_word};
use crate::domain::EventKind;

// ---- Event log -----------------------------------------------------------------------------

#[derive(Debug, Clone, serde::Serialize)]
pub struct CaseEvent {
    pub at: i64,
    pub actor: String,
    pub actor_role: String,
    pub kind: EventKind,
    pub transition: Option<String>,
    pub from_state: Option<String>,
    pub to_state: Option<String>,
    pub reason: Option<String>,
    pub data: Option<String>,
}

impl CaseEvent {
    /// An event the engine records itself; set the other fields with `..CaseEvent::system(…)`.
    pub fn system(kind: EventKind, at: i64) -> Self {
        CaseEvent {
            at,
            actor: "system".into(),
            actor_role: "system".into(),
            kind,
            transition: None,
            from_state: None,
            to_state: None,
            reason: None,
            data: None,
        }
    }

    /// An event a member of staff caused; set the other fields with `..CaseEvent::by(…)`.
    pub fn by(actor: &str, actor_role: &str, kind: EventKind, at: i64) -> Self {
        CaseEvent {
            actor: actor.into(),
            actor_role: actor_role.into(),
            ..CaseEvent::system(kind, at)
        }
    }
}

pub async fn events_for_case(conn: &mut AnyConnection, case_id: i64) -> Result<Vec<CaseEvent>, StorageError> {
    let rows = sqlx::query(EVENTS_FOR_CASE)
        .bind(case_id)
        .fetch_all(&mut *conn)
        .await
        .context("reading the event log")?;
    rows.iter()
        .map(|r| {
            Ok(CaseEvent {
                at: r.try_get(0)?,
                actor: r.try_get(1)?,
                actor_role: r.try_get(2)?,
                kind: stored_word(r, 3, EventKind::parse)?,
                transition: r.try_get(4)?,
                from_state: r.try_get(5)?,
                to_state: r.try_get(6)?,
                reason: r.try_get(7)?,
                data: r.try_get(8)?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .context("decoding the event log")
}

#[derive(Debug, Clone)]
pub struct CaseNote {
    pub author: String,
    pub body: String,
    pub created_at: i64,
}

pub async fn notes_for_case(conn: &mut AnyConnection, case_id: i64) -> Result<Vec<CaseNote>, StorageError> {
    let rows = sqlx::query(NOTES_FOR_CASE)
        .bind(case_id)
        .fetch_all(&mut *conn)
        .await
        .context("reading a case's notes")?;
    rows.iter()
        .map(|r| {
            Ok(CaseNote {
                author: r.try_get(0)?,
                body: r.try_get(1)?,
                created_at: r.try_get(2)?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .context("decoding notes")
}

/// Adds a caseworker's note to a case.
pub async fn add_note(
    conn: &mut AnyConnection,
    case_id: i64,
    author: &str,
    body: &str,
    now: i64,
) -> Result<(), StorageError> {
    sqlx::query("INSERT INTO case_notes (case_id, author, body, created_at) VALUES ($1, $2, $3, $4)")
        .bind(case_id)
        .bind(author)
        .bind(body)
        .bind(now)
        .execute(&mut *conn)
        .await
        .context("adding a note")?;
    Ok(())
}
