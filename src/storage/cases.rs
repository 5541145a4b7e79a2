//! Cases: creating them, reading them, and the one write path every change takes.

use std::collections::BTreeMap;

use sqlx::{AnyConnection, Row};

use super::queries::*;
use super::{Backend, CaseEvent, QueryContext, StorageError, json_column};
use crate::policy::Finding;

/// Hands out the next case number for `year`; runs inside the case's transaction, so a rolled
/// back case gives its number back.
pub async fn next_case_number(conn: &mut AnyConnection, year: i32) -> Result<i64, StorageError> {
    sqlx::query_scalar(
        "INSERT INTO reference_counters (year, last_number) VALUES ($1, 1)
         ON CONFLICT (year) DO UPDATE SET last_number = reference_counters.last_number + 1
         RETURNING last_number",
    )
    .bind(i64::from(year))
    .fetch_one(&mut *conn)
    .await
    .context("numbering a case")
}

/// Takes the next `count` case numbers for `year` at once (a group of mail); returns the
/// last. Numbers a group did not use go back with [`return_case_numbers`] before it commits:
/// the counter's row stays locked by this transaction until then, so no one else can take a
/// number in between and no gap is left.
pub async fn take_case_numbers(conn: &mut AnyConnection, year: i32, count: i64) -> Result<i64, StorageError> {
    sqlx::query_scalar(
        "INSERT INTO reference_counters (year, last_number) VALUES ($1, $2)
         ON CONFLICT (year) DO UPDATE SET last_number = reference_counters.last_number + $2
         RETURNING last_number",
    )
    .bind(i64::from(year))
    .bind(count)
    .fetch_one(&mut *conn)
    .await
    .context("numbering cases")
}

/// Sets `year`'s counter back to `last_used`, giving back the numbers taken and not used.
pub async fn return_case_numbers(conn: &mut AnyConnection, year: i32, last_used: i64) -> Result<(), StorageError> {
    sqlx::query("UPDATE reference_counters SET last_number = $1 WHERE year = $2")
        .bind(last_used)
        .bind(i64::from(year))
        .execute(&mut *conn)
        .await
        .context("giving back case numbers")?;
    Ok(())
}

/// The cases that first received any of these PDFs, each with its form's hash.
pub async fn cases_by_form_sha256s(
    conn: &mut AnyConnection,
    sha256s: &[&str],
) -> Result<Vec<(String, CaseRecord)>, StorageError> {
    let mut cases = Vec::new();
    for chunk in sha256s.chunks(500) {
        let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "{}WHERE form_sha256 IN ({}) ORDER BY id",
            select_cases!("").replacen("SELECT ", "SELECT form_sha256, ", 1),
            placeholders.join(", ")
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for sha256 in chunk {
            query = query.bind(*sha256);
        }
        let rows = query
            .fetch_all(&mut *conn)
            .await
            .context("looking for earlier copies of forms")?;
        for row in &rows {
            let form: String = row.try_get("form_sha256").context("decoding a case")?;
            cases.push((form, case_from_row(row)?));
        }
    }
    Ok(cases)
}

pub struct NewCase<'a> {
    pub reference: &'a str,
    pub workflow: Option<&'a str>,
    pub state: &'a str,
    pub fields: &'a BTreeMap<String, String>,
    pub extraction_json: Option<&'a str>,
    pub findings: &'a [Finding],
    pub org_ods_code: Option<&'a str>,
    pub org_name: Option<&'a str>,
    pub sender: Option<&'a str>,
    pub origin_message_id: i64,
    pub form_attachment_id: Option<i64>,
    pub form_sha256: Option<&'a str>,
    /// The organisation it names, recorded when the case is stored.
    pub organisation: Option<super::NewOrganisation>,
    /// The case this email named but was not allowed to change.
    pub related_case_id: Option<i64>,
    pub now: i64,
    pub due_at: Option<i64>,
    /// 1 for a case stored as it arrived; more when its first changes were planned before it
    /// was stored (intake writes a checked case in its checked state at once).
    pub version: i64,
}

impl NewCase<'_> {
    /// The case as it will be stored, under `id`.
    pub fn record(&self, id: i64) -> CaseRecord {
        CaseRecord {
            id,
            reference: self.reference.to_string(),
            workflow: self.workflow.map(str::to_string),
            state: self.state.to_string(),
            version: self.version,
            fields: self.fields.clone(),
            findings: self.findings.to_vec(),
            org_ods_code: self.org_ods_code.map(str::to_string),
            org_name: self.org_name.map(str::to_string),
            sender: self.sender.map(str::to_string),
            origin_message_id: self.origin_message_id,
            form_attachment_id: self.form_attachment_id,
            duplicate_of: None,
            related_case_id: self.related_case_id,
            assignee_id: None,
            recorded: BTreeMap::new(),
            created_at: self.now,
            updated_at: self.now,
            due_at: self.due_at,
            sla_paused_at: None,
        }
    }
}

impl NewCase<'_> {
    /// The row that stores this case under `id` (taken with [`take_case_ids`]), as `stored`:
    /// the case after the changes planned for it before it was stored (see [`NewCase::record`]).
    pub fn to_store(&self, stored: CaseRecord) -> CaseToStore {
        CaseToStore {
            case: stored,
            extraction_json: self.extraction_json.map(str::to_string),
            form_sha256: self.form_sha256.map(str::to_string),
            organisation: self.organisation.clone(),
        }
    }
}

/// A new case as it will be stored, under an id taken for it ahead of the write: a group of
/// mail holds its new cases back and stores them with one statement (see [`super::Deferred`]).
#[derive(Debug, Clone)]
pub struct CaseToStore {
    pub case: CaseRecord,
    pub extraction_json: Option<String>,
    pub form_sha256: Option<String>,
    pub organisation: Option<super::NewOrganisation>,
}

/// Takes ids for `count` new cases, in the caller's write transaction. PostgreSQL hands them
/// out from the table's sequence (an id taken and not used is a gap, as a rolled-back insert
/// leaves); SQLite, whose writers take turns, gives the ids after the highest ever used.
/// Taken twice in one SQLite transaction, the second call must follow a write of the
/// first's cases: it reads the table.
pub async fn take_case_ids(conn: &mut AnyConnection, count: usize) -> Result<Vec<i64>, StorageError> {
    if count == 0 {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = match Backend::of(conn) {
        Backend::Postgres => sqlx::query_scalar(
            "SELECT nextval(pg_get_serial_sequence('cases', 'id')) FROM generate_series(1, $1::BIGINT)",
        )
        .bind(count as i64)
        .fetch_all(&mut *conn)
        .await
        .context("taking ids for new cases")?,
        Backend::Sqlite => {
            // AUTOINCREMENT: never an id a deleted case had.
            let last: i64 = sqlx::query_scalar(
                "SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'cases'), 0),
                            COALESCE((SELECT MAX(id) FROM cases), 0))",
            )
            .fetch_one(&mut *conn)
            .await
            .context("taking ids for new cases")?;
            (1..=count as i64).map(|n| last + n).collect()
        }
    };
    if ids.len() != count {
        return Err(StorageError::Corrupt {
            context: "taking ids for new cases",
            message: format!("asked for {count} ids, given {}", ids.len()),
        });
    }
    Ok(ids)
}

/// Takes the id of one new case (see [`take_case_ids`]).
pub async fn take_case_id(conn: &mut AnyConnection) -> Result<i64, StorageError> {
    let ids = take_case_ids(conn, 1).await?;
    ids.first().copied().ok_or(StorageError::Corrupt {
        context: "taking an id for a new case",
        message: "no id given".into(),
    })
}

/// Stores new cases now (organisations first), each with an empty event chain.
pub async fn store_cases(conn: &mut AnyConnection, cases: &[CaseToStore]) -> Result<(), StorageError> {
    insert_cases(conn, cases, &BTreeMap::new()).await
}

/// Stores new cases with one statement per chunk, after recording the organisations they name.
/// `chains` gives, by case id, the length of the event chain each starts with and when its
/// last event happened: their events are written next, numbered from one.
pub(super) async fn insert_cases(
    conn: &mut AnyConnection,
    cases: &[CaseToStore],
    chains: &BTreeMap<i64, (i64, i64)>,
) -> Result<(), StorageError> {
    let Some(first) = cases.first() else {
        return Ok(());
    };
    let organisations: Vec<&super::NewOrganisation> = cases.iter().filter_map(|c| c.organisation.as_ref()).collect();
    let organisation_ids = super::upsert_organisations(conn, &organisations, first.case.created_at).await?;
    for chunk in cases.chunks(super::batch::ROWS_PER_STATEMENT) {
        let sql = super::batch::multi_row_insert(
            super::Backend::of(conn),
            "INSERT INTO cases (id, reference, workflow, state, version, fields, extraction, findings, org_ods_code, org_name, sender,
                                origin_message_id, form_attachment_id, form_sha256, created_at, updated_at, due_at, organisation_id,
                                related_case_id, duplicate_of, assignee_id, recorded, sla_paused_at, chain_seq, chain_at) VALUES",
            25,
            chunk.len(),
            "",
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for stored in chunk {
            let c = &stored.case;
            let (chain_seq, chain_at) = chains.get(&c.id).map_or((0, None), |&(n, at)| (n, Some(at)));
            let organisation_id = stored
                .organisation
                .as_ref()
                .and_then(|o| organisation_ids.get(&o.ods_code).copied());
            query = query
                .bind(c.id)
                .bind(&c.reference)
                .bind(c.workflow.as_deref())
                .bind(&c.state)
                .bind(c.version)
                .bind(json_text(&c.fields))
                .bind(stored.extraction_json.as_deref())
                .bind(json_text(&c.findings))
                .bind(c.org_ods_code.as_deref())
                .bind(c.org_name.as_deref())
                .bind(c.sender.as_deref())
                .bind(c.origin_message_id)
                .bind(c.form_attachment_id)
                .bind(stored.form_sha256.as_deref())
                .bind(c.created_at)
                .bind(c.updated_at)
                .bind(c.due_at)
                .bind(organisation_id)
                .bind(c.related_case_id)
                .bind(c.duplicate_of)
                .bind(c.assignee_id)
                .bind(json_text(&c.recorded))
                .bind(c.sla_paused_at)
                .bind(chain_seq)
                .bind(chain_at);
        }
        query.execute(&mut *conn).await.context("creating cases")?;
    }
    Ok(())
}

/// A case as stored.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CaseRecord {
    pub id: i64,
    pub reference: String,
    pub workflow: Option<String>,
    pub state: String,
    pub version: i64,
    pub fields: BTreeMap<String, String>,
    pub findings: Vec<Finding>,
    pub org_ods_code: Option<String>,
    pub org_name: Option<String>,
    pub sender: Option<String>,
    pub origin_message_id: i64,
    pub form_attachment_id: Option<i64>,
    pub duplicate_of: Option<i64>,
    /// The case this one's email named, when it was not allowed to change that case.
    pub related_case_id: Option<i64>,
    pub assignee_id: Option<i64>,
    pub recorded: BTreeMap<String, String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub due_at: Option<i64>,
    /// When the SLA clock stopped (the sender has the ball), if it is stopped.
    pub sla_paused_at: Option<i64>,
}

fn case_from_row(row: &sqlx::any::AnyRow) -> Result<CaseRecord, StorageError> {
    let get = |e: sqlx::Error| StorageError::Query {
        context: "decoding a case",
        source: e,
    };
    Ok(CaseRecord {
        id: row.try_get("id").map_err(get)?,
        reference: row.try_get("reference").map_err(get)?,
        workflow: row.try_get("workflow").map_err(get)?,
        state: row.try_get("state").map_err(get)?,
        version: row.try_get("version").map_err(get)?,
        fields: json_column(&row.try_get::<String, _>("fields").map_err(get)?, "case fields")?,
        findings: json_column(&row.try_get::<String, _>("findings").map_err(get)?, "case findings")?,
        org_ods_code: row.try_get("org_ods_code").map_err(get)?,
        org_name: row.try_get("org_name").map_err(get)?,
        sender: row.try_get("sender").map_err(get)?,
        origin_message_id: row.try_get("origin_message_id").map_err(get)?,
        form_attachment_id: row.try_get("form_attachment_id").map_err(get)?,
        duplicate_of: row.try_get("duplicate_of").map_err(get)?,
        related_case_id: row.try_get("related_case_id").map_err(get)?,
        assignee_id: row.try_get("assignee_id").map_err(get)?,
        recorded: json_column(
            &row.try_get::<String, _>("recorded").map_err(get)?,
            "case recorded values",
        )?,
        created_at: row.try_get("created_at").map_err(get)?,
        updated_at: row.try_get("updated_at").map_err(get)?,
        due_at: row.try_get("due_at").map_err(get)?,
        sla_paused_at: row.try_get("sla_paused_at").map_err(get)?,
    })
}

pub async fn case_by_reference(conn: &mut AnyConnection, reference: &str) -> Result<Option<CaseRecord>, StorageError> {
    let row = sqlx::query(CASE_BY_REFERENCE)
        .bind(reference)
        .fetch_optional(&mut *conn)
        .await
        .context("reading a case")?;
    row.as_ref().map(case_from_row).transpose()
}

pub async fn case_by_id(conn: &mut AnyConnection, id: i64) -> Result<Option<CaseRecord>, StorageError> {
    let row = sqlx::query(CASE_BY_ID)
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .context("reading a case")?;
    row.as_ref().map(case_from_row).transpose()
}

/// The digital signatures read from the case's form, with their checks (none for a case
/// without a PDF, or whose PDF has no signature field).
pub async fn form_signatures(
    conn: &mut AnyConnection,
    case_id: i64,
) -> Result<Vec<crate::pdf::SignatureInfo>, StorageError> {
    let json: Option<Option<String>> = sqlx::query_scalar(super::queries::FORM_READING_OF_CASE)
        .bind(case_id)
        .fetch_optional(&mut *conn)
        .await
        .context("reading what was read from a case's form")?;
    signatures_of_reading(json.flatten())
}

/// The signatures a stored form reading (its `extraction` JSON) found; none without one.
fn signatures_of_reading(json: Option<String>) -> Result<Vec<crate::pdf::SignatureInfo>, StorageError> {
    match json {
        Some(text) => Ok(super::json_column::<crate::pdf::ExtractedForm>(&text, "a case's form reading")?.signatures),
        None => Ok(Vec::new()),
    }
}

/// The case page's first read ([`super::queries::CASE_FILE_ROW`]): the case and what is read
/// beside it.
pub struct CaseForPage {
    pub case: CaseRecord,
    /// Its event chain's length as recorded.
    pub chain_length: i64,
    /// Its form's digital signatures.
    pub signatures: Vec<crate::pdf::SignatureInfo>,
    /// The assignee's address.
    pub assignee: Option<String>,
    /// The reference of the case its email named but was not allowed to change.
    pub named_case: Option<String>,
}

/// The case `reference` with what its page shows beside it, in one read.
pub async fn case_for_page(conn: &mut AnyConnection, reference: &str) -> Result<Option<CaseForPage>, StorageError> {
    let Some(row) = sqlx::query(super::queries::CASE_FILE_ROW)
        .bind(reference)
        .fetch_optional(&mut *conn)
        .await
        .context("reading a case for its page")?
    else {
        return Ok(None);
    };
    let case = case_from_row(&row)?;
    let chain_length: i64 = row.try_get("chain_seq").context("reading a case's chain length")?;
    let reading: Option<String> = row.try_get("extraction").context("reading a case's form reading")?;
    Ok(Some(CaseForPage {
        case,
        chain_length,
        signatures: signatures_of_reading(reading)?,
        assignee: row.try_get("assignee_email").context("reading a case's assignee")?,
        named_case: row
            .try_get("named_reference")
            .context("reading the case a case named")?,
    }))
}

/// Serialises the writers of one form until the transaction ends: on PostgreSQL, a
/// transaction-scoped advisory lock on the form's hash, so that a second writer of the same
/// PDF waits for the first, then finds its case and links to it rather than making another.
/// (SQLite has one writer at a time already.) The unique index `cases_one_per_form` is the
/// backstop: a writer that skipped the lock fails rather than make a second case.
pub async fn lock_form(conn: &mut AnyConnection, sha256: &str) -> Result<(), StorageError> {
    lock_forms(conn, &[sha256]).await
}

/// Serialises the writers of these forms until the transaction ends, in one statement, each
/// lock taken in the order of the hashes (sorted here), so that two writers of overlapping
/// groups wait rather than deadlock. See [`lock_form`] for why.
pub async fn lock_forms(conn: &mut AnyConnection, sha256s: &[&str]) -> Result<(), StorageError> {
    if Backend::of(conn) != Backend::Postgres || sha256s.is_empty() {
        return Ok(());
    }
    let mut sorted = sha256s.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    // The ordered subquery makes the locks' order the hashes' order.
    super::execute_in_chunks(
        conn,
        &sorted,
        |n| {
            format!(
                "SELECT pg_advisory_xact_lock(hashtextextended(f.k, 0)) FROM (SELECT k FROM (VALUES {}) AS v(k) ORDER BY k) AS f",
                super::numbered(n, |i| format!("(${i})"))
            )
        },
        "waiting for other writers of the same forms",
    )
    .await
}

/// The case that first received this exact PDF, if any.
pub async fn case_by_form_sha256(conn: &mut AnyConnection, sha256: &str) -> Result<Option<CaseRecord>, StorageError> {
    let row = sqlx::query(CASE_BY_FORM)
        .bind(sha256)
        .fetch_optional(&mut *conn)
        .await
        .context("looking for an earlier copy of a form")?;
    row.as_ref().map(case_from_row).transpose()
}

/// The cases a stored message opened or was linked to.
pub async fn cases_for_message(conn: &mut AnyConnection, raw_message_id: i64) -> Result<Vec<CaseRecord>, StorageError> {
    let rows = sqlx::query(CASES_FOR_MESSAGE)
        .bind(raw_message_id)
        .fetch_all(&mut *conn)
        .await
        .context("listing a message's cases")?;
    rows.iter().map(case_from_row).collect()
}

pub async fn list_cases(
    conn: &mut AnyConnection,
    state: Option<&str>,
    limit: i64,
) -> Result<Vec<CaseRecord>, StorageError> {
    let rows = match state {
        Some(state) => {
            sqlx::query(select_cases!("WHERE state = $1 ORDER BY id LIMIT $2"))
                .bind(state)
                .bind(limit)
                .fetch_all(&mut *conn)
                .await
        }
        None => {
            sqlx::query(select_cases!("ORDER BY id LIMIT $1"))
                .bind(limit)
                .fetch_all(&mut *conn)
                .await
        }
    }
    .context("listing cases")?;
    rows.iter().map(case_from_row).collect()
}

/// Cases opened by mail that named `case_id` but was not allowed to change it.
pub async fn related_cases(conn: &mut AnyConnection, case_id: i64) -> Result<Vec<CaseRecord>, StorageError> {
    let rows = sqlx::query(RELATED_CASES)
        .bind(case_id)
        .fetch_all(&mut *conn)
        .await
        .context("listing related cases")?;
    rows.iter().map(case_from_row).collect()
}

// ---- The one write path --------------------------------------------------------------------

/// Everything one change to a case writes: its columns, its events, its timers and its mail.
/// The engine's pure planner (`engine::change`) builds it; [`apply_change`] writes all of it
/// inside the caller's transaction, so the change commits whole or not at all.
#[derive(Debug, Clone, Default)]
pub struct CaseChangeset {
    pub case_id: i64,
    /// For the error a lost race reports.
    pub reference: String,
    /// The version the change was planned against: the write is refused when the case has
    /// moved on since (someone else changed it in between).
    pub version: i64,
    pub at: i64,
    pub columns: CaseColumns,
    pub events: Vec<CaseEvent>,
    pub cancel_timers: CancelTimers,
    pub arm_timers: Vec<NewTimer>,
    pub mail: Vec<NewMail>,
    /// Messages to file on the case, with how they relate to it (`reply`, `bounce`, …).
    pub link_messages: Vec<(i64, &'static str)>,
    /// Signatories the change adds to the register (a verified signatory, a new Primary User).
    pub add_signatories: Vec<super::NewSignatory>,
    /// Accounts the change puts in the Open Exeter account register (a provisioned case's).
    pub add_accounts: Vec<crate::accounts::OeAccount>,
    /// Credentials the change issues (sealed; see `storage::credentials`).
    pub issue_credentials: Vec<super::NewCredential>,
}

/// The case's own columns a change sets; `None` leaves one as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CaseColumns {
    pub state: Option<String>,
    pub recorded: Option<BTreeMap<String, String>>,
    pub form: Option<FormColumns>,
    /// A newly received copy of the form: its attachment and hash.
    pub form_attachment: Option<(i64, String)>,
    pub assignee_id: Option<Option<i64>>,
    pub duplicate_of: Option<i64>,
    pub due_at: Option<Option<i64>>,
    pub sla_paused_at: Option<Option<i64>>,
}

impl CaseColumns {
    /// Whether the change touches the case row at all (and so takes a new version).
    pub fn any(&self) -> bool {
        *self != CaseColumns::default()
    }
}

/// What a form (read, replaced or keyed) sets on its case.
#[derive(Debug, Clone, PartialEq)]
pub struct FormColumns {
    pub workflow: String,
    pub fields: BTreeMap<String, String>,
    pub findings: Vec<Finding>,
    pub org_ods_code: Option<String>,
    pub org_name: Option<String>,
}

/// Which of a case's pending timers a change cancels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CancelTimers {
    /// The timers of the state it leaves.
    pub of_state: bool,
    /// The case-wide (SLA) timers.
    pub case_wide: bool,
}

/// A timer to arm: `state` is the state it belongs to, or [`super::ANY_STATE`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTimer {
    pub name: String,
    pub state: String,
    pub due_at: i64,
}

/// A message to queue in the outbox with the change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMail {
    pub template: String,
    pub recipient: Option<String>,
    pub context_json: String,
    pub message_id: String,
    pub in_reply_to: Option<String>,
    /// Why the message must not be sent (loop safety), if it must not.
    pub suppressed_reason: Option<String>,
    /// Sent by the system rather than on a person's decision: marked `Auto-Submitted` and
    /// rate-limited per recipient.
    pub automatic: bool,
}

/// Writes a planned change inside the caller's transaction. The version check is the update
/// itself (`WHERE version = $expected`), so of two writers that planned against one version
/// exactly one lands; the other gets [`StorageError::Conflict`] and its transaction must roll
/// back. This is the only statement in the service that updates a case.
pub async fn apply_change(conn: &mut AnyConnection, change: CaseChangeset) -> Result<(), StorageError> {
    apply_columns(conn, &change).await?;
    super::batch::write_rows(conn, change).await
}

/// The version-checked update of a change's columns, then its timer cancellations: the part
/// of a change that cannot wait (the rows it adds can; see [`super::Deferred`]).
pub(super) async fn apply_columns(conn: &mut AnyConnection, change: &CaseChangeset) -> Result<(), StorageError> {
    let c = &change.columns;
    if c.any() {
        let set = |present: bool| i64::from(present);
        let form = c.form.as_ref();
        let updated = sqlx::query(
            "UPDATE cases SET version = version + 1, updated_at = $1,
                state = COALESCE($2, state),
                recorded = COALESCE($3, recorded),
                workflow = COALESCE($4, workflow),
                fields = COALESCE($5, fields),
                findings = COALESCE($6, findings),
                org_ods_code = CASE WHEN $7 = 1 THEN $8 ELSE org_ods_code END,
                org_name = CASE WHEN $7 = 1 THEN $9 ELSE org_name END,
                form_attachment_id = COALESCE($10, form_attachment_id),
                form_sha256 = COALESCE($11, form_sha256),
                assignee_id = CASE WHEN $12 = 1 THEN $13 ELSE assignee_id END,
                duplicate_of = COALESCE($14, duplicate_of),
                due_at = CASE WHEN $15 = 1 THEN $16 ELSE due_at END,
                sla_paused_at = CASE WHEN $17 = 1 THEN $18 ELSE sla_paused_at END
             WHERE id = $19 AND version = $20",
        )
        .bind(change.at)
        .bind(c.state.as_deref())
        .bind(c.recorded.as_ref().map(json_text))
        .bind(form.map(|f| f.workflow.as_str()))
        .bind(form.map(|f| json_text(&f.fields)))
        .bind(form.map(|f| json_text(&f.findings)))
        .bind(set(form.is_some()))
        .bind(form.and_then(|f| f.org_ods_code.as_deref()))
        .bind(form.and_then(|f| f.org_name.as_deref()))
        .bind(c.form_attachment.as_ref().map(|(id, _)| *id))
        .bind(c.form_attachment.as_ref().map(|(_, sha256)| sha256.as_str()))
        .bind(set(c.assignee_id.is_some()))
        .bind(c.assignee_id.flatten())
        .bind(c.duplicate_of)
        .bind(set(c.due_at.is_some()))
        .bind(c.due_at.flatten())
        .bind(set(c.sla_paused_at.is_some()))
        .bind(c.sla_paused_at.flatten())
        .bind(change.case_id)
        .bind(change.version)
        .execute(&mut *conn)
        .await
        .context("changing a case")?;
        if updated.rows_affected() != 1 {
            return Err(StorageError::Conflict(change.reference.clone()));
        }
    }
    super::cancel_pending_timers(conn, change.case_id, change.at, change.cancel_timers).await?;
    Ok(())
}

/// JSON text for a column (maps and lists of our own types always serialise).
fn json_text<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}
