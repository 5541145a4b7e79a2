//! The engine: where mail, PDFs, rules and the state machine meet storage.
//!
//! Every change to a case (its state, its event-log entry, its timers and its outbound mail)
//! commits in one transaction, so a crash leaves either all of it or none of it.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Datelike, Local, NaiveDate, TimeZone};
use sqlx::AnyConnection;
use tracing::{info, instrument};

use crate::calendar::WorkingCalendar;
use crate::domain::{CaseRef, OdsCode};
use crate::mail::{self, MailSettings, ParsedEmail, SenderAuth};
use crate::pdf::{self, ExtractLimits, ExtractedForm, PdfError};
use crate::policy::{self, Facts, Finding, FindingCode, PolicySettings};
use crate::replies;
use crate::storage::{self, CaseEvent, CaseRecord, Db, QueryContext, StorageError};
use crate::workflow::{
    Actor, ActorRole, CaseHistory, TransitionError, TransitionPlan, TransitionRequest, WorkflowDef, WorkflowSet,
    machine,
};

/// The case-wide timers that tell managers a case's SLA is at risk, then breached.
pub const SLA_AT_RISK: &str = "sla_at_risk";
pub const SLA_BREACHED: &str = "sla_breached";

/// How many times a message may be found half-prepared (the service died or hung on it)
/// before it is set aside.
pub const MAX_PREPARE_ATTEMPTS: i64 = 3;

/// The state of a case no workflow could be found for; it waits for a caseworker.
pub const UNCLASSIFIED_STATE: &str = "needs_review";
/// Where an unclassified case can go, and who may send it there. A case is classified by
/// keying its fields against a workflow, after which that workflow's machine applies.
const UNCLASSIFIED_EXITS: &[&str] = &["rejected", "withdrawn", "duplicate", "closed"];

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("the database reported a commit, but only {found} of its {expected} message(s) can be read back")]
    NotDurable { expected: usize, found: usize },
    #[error("no case {0}")]
    CaseNotFound(String),
    #[error("case {reference}: {source}")]
    Transition { reference: String, source: TransitionError },
    #[error("case {0} was changed by someone else at the same time; reload it and try again")]
    Conflict(String),
    #[error(
        "Someone else changed {reference} while you were looking at it (it is now {state}). Reload the page to see what changed."
    )]
    Stale { reference: String, state: String },
    #[error("Give the reference of the case this one duplicates (no case “{0}”)")]
    NoSuchOriginal(String),
    #[error("no workflow named `{0}`")]
    UnknownWorkflow(String),
    #[error(
        "case {reference} has no workflow yet, so it can only be {allowed}; key its fields against a workflow first"
    )]
    Unclassified { reference: String, allowed: String },
    #[error("case {reference} is {state}; fields can only be keyed while it is received or needs review")]
    NotKeyable { reference: String, state: String },
    #[error("workflow `{workflow}` has no field `{field}`")]
    UnknownField { workflow: String, field: String },
}

/// Where time comes from, so tests can set it.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Local>;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Local> {
        Local::now()
    }
}

/// A clock that always says the same time (tests and benchmarks).
pub struct FixedClock(pub DateTime<Local>);

impl Clock for FixedClock {
    fn now(&self) -> DateTime<Local> {
        self.0
    }
}

/// A message the engine queues about a case.
pub struct Notification<'a> {
    pub template: &'a str,
    pub recipient: Option<&'a str>,
    pub reason: Option<&'a str>,
    /// Sent by the system itself (not on a person's decision).
    pub automatic: bool,
    /// The Message-ID of the practice's email, for threading.
    pub in_reply_to: Option<&'a str>,
    /// Set when the case's mail came from a machine (auto-reply, bounce, list, our own).
    pub suppress_because: Option<&'a str>,
}

/// Wakes the background workers early when a transaction has queued work for them.
#[derive(Clone, Default)]
pub struct Wakers {
    pub timers: Arc<tokio::sync::Notify>,
    pub outbox: Arc<tokio::sync::Notify>,
}

impl Wakers {
    /// Call after a commit that may have armed timers or queued mail.
    pub fn wake_all(&self) {
        self.timers.notify_one();
        self.outbox.notify_one();
    }
}

/// What the engine needs besides the database.
#[derive(Clone)]
pub struct EngineConfig {
    pub policy: PolicySettings,
    pub mail: MailSettings,
    pub limits: ExtractLimits,
    /// Where PDFs are read: worker processes in the service, in process in fast tests.
    pub pdf_reader: pdf::PdfReader,
}

#[derive(Clone)]
pub struct Engine {
    pub db: Db,
    pub workflows: Arc<WorkflowSet>,
    pub calendar: Arc<WorkingCalendar>,
    pub config: EngineConfig,
    pub clock: Arc<dyn Clock>,
    pub wakers: Wakers,
}

/// One line of `countersign ingest`: a case made, or found again.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CaseOutcome {
    pub reference: String,
    pub workflow: Option<String>,
    pub state: String,
    pub finding_codes: Vec<String>,
    /// Set when the form was a copy of one already received: the case it was linked to.
    pub duplicate_of: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct IntakeReport {
    pub raw_message_id: i64,
    /// The same message (by Message-ID, or by content when it has none) was already stored.
    pub already_ingested: bool,
    pub cases: Vec<CaseOutcome>,
}

/// An email parsed, with its forms read and checked, ready for [`Engine::record`].
#[derive(Debug)]
pub struct PreparedEmail {
    parsed: ParsedEmail,
    sha256: String,
    dedup_key: String,
    analyses: Vec<FormAnalysis>,
    /// The case the email names (by its headers, a bounce's returned message, or a reference
    /// in its subject), looked up before the write transaction.
    thread: Option<i64>,
    /// Its Message-ID was stored before, with other bytes: it is kept under a key of its own.
    message_id_reused: bool,
}

/// The case an email named but may not change, and why (no reason: a separate request from
/// a trusted sender, such as another workflow's form).
#[derive(Debug, Clone)]
struct Related {
    case_id: i64,
    reference: String,
    why: Option<String>,
}

impl Related {
    fn finding(&self) -> Option<Finding> {
        self.why.as_ref().map(|why| {
            Finding::new(
                FindingCode::RefersToCase,
                format!(
                    "This email refers to case {} but was not added to it: {why}. A caseworker should look at both.",
                    self.reference
                ),
            )
        })
    }
}

/// What one PDF attachment turned out to be.
#[derive(Debug)]
struct FormAnalysis {
    attachment_index: usize,
    workflow: Option<String>,
    fields: BTreeMap<String, String>,
    extraction: Option<ExtractedForm>,
    findings: Vec<Finding>,
}

fn finding_for_pdf_error(error: &PdfError, filename: &str) -> Finding {
    let code = match error {
        PdfError::PasswordProtected => FindingCode::PdfPasswordProtected,
        PdfError::TooLarge { .. } => FindingCode::PdfTooLarge,
        _ => FindingCode::PdfUnreadable,
    };
    Finding::new(
        code,
        format!(
            "The attachment “{filename}” could not be read: {error}. Please send the form again as a normal, unprotected PDF."
        ),
    )
}

impl Engine {
    pub fn now_ms(&self) -> i64 {
        self.clock.now().timestamp_millis()
    }

    fn today(&self) -> NaiveDate {
        self.clock.now().date_naive()
    }

    /// `days` working days from now, at the same time of day.
    pub fn working_days_from_now(&self, days: u32) -> i64 {
        let now = self.clock.now();
        let date = self.calendar.add_working_days(now.date_naive(), days);
        let at = date.and_time(now.time());
        Local
            .from_local_datetime(&at)
            .earliest()
            .map(|t| t.timestamp_millis())
            .unwrap_or_else(|| now.timestamp_millis())
    }

    /// Takes one email (raw RFC 5322 bytes) and makes its cases. Calling it twice with the
    /// same message makes no second case.
    #[instrument(skip(self, raw), fields(source = %source, bytes = raw.len()))]
    pub async fn intake(&self, raw: &[u8], source: &str) -> Result<IntakeReport, EngineError> {
        let mut prepared = self.digest(raw);
        {
            // Cheap early exit for redelivery, before reading any PDF; the unique key in
            // `record` is what actually decides.
            let mut conn = self.db.pool.acquire().await.context("connecting")?;
            if let Some(id) = Self::stored_before(&mut conn, &mut prepared).await? {
                storage::clear_prepare_attempts(&mut conn, &prepared.sha256).await?;
                return self.already_ingested(&mut conn, id).await;
            }
            prepared.thread = self.thread_case(&mut conn, &prepared.parsed).await?;
        }
        prepared.analyses = self.analyse_attachments(&prepared.parsed).await;
        let mut tx = self.db.begin_write().await.context("starting a transaction")?;
        let report = self.record_in(&mut tx, raw, prepared, source).await?;
        tx.commit().await.context("committing an ingested message")?;
        self.confirm_stored(std::slice::from_ref(&report)).await?;
        self.recorded(std::slice::from_ref(&report));
        Ok(report)
    }

    /// Counts an attempt at preparing `raw`, before it starts; returns why the message should
    /// be set aside instead, when earlier attempts never finished (the service died or hung
    /// on it) [`MAX_PREPARE_ATTEMPTS`] times. The transaction that records the message clears
    /// the count.
    pub async fn guard_preparation(&self, raw: &[u8]) -> Result<Option<String>, EngineError> {
        let sha256 = mail::sha256_hex(raw);
        let mut conn = self.db.pool.acquire().await.context("connecting")?;
        let attempts = storage::note_prepare_attempt(&mut conn, &sha256, self.now_ms()).await?;
        if attempts <= MAX_PREPARE_ATTEMPTS {
            return Ok(None);
        }
        storage::clear_prepare_attempts(&mut conn, &sha256).await?;
        Ok(Some(format!(
            "reading this message stopped the service {} times (a crash or a hang), so it was set aside rather than tried again",
            attempts - 1
        )))
    }

    /// Preparation of `raw` finished, though recording it failed (storage, not the message):
    /// its try no longer counts toward setting it aside. The mail source's own retry limit
    /// deals with the failure.
    pub async fn preparation_finished(&self, raw: &[u8]) -> Result<(), EngineError> {
        let mut conn = self.db.pool.acquire().await.context("connecting")?;
        storage::clear_prepare_attempts(&mut conn, &mail::sha256_hex(raw)).await?;
        Ok(())
    }

    /// The stored message this one is a redelivery of, if any. A Message-ID we have stored with
    /// different bytes is not a redelivery: anyone can reuse a predictable Message-ID to have
    /// a genuine email dropped. Such a message is kept under a key of its own, and flagged.
    async fn stored_before(conn: &mut AnyConnection, prepared: &mut PreparedEmail) -> Result<Option<i64>, EngineError> {
        let Some((id, sha256)) = storage::raw_message_by_dedup_key(conn, &prepared.dedup_key).await? else {
            return Ok(None);
        };
        if sha256 == prepared.sha256 || !prepared.dedup_key.starts_with("mid:") {
            return Ok(Some(id));
        }
        prepared.dedup_key = format!("{}#sha256:{}", prepared.dedup_key, prepared.sha256);
        prepared.message_id_reused = true;
        Ok(storage::raw_message_by_dedup_key(conn, &prepared.dedup_key)
            .await?
            .map(|(id, _)| id))
    }

    /// The first, database-free half of [`Engine::intake`]: parses the email and reads and
    /// checks its forms. A mailbox drain prepares the next email while it records this one.
    pub async fn prepare(&self, raw: &[u8]) -> PreparedEmail {
        let mut prepared = self.digest(raw);
        prepared.analyses = self.analyse_attachments(&prepared.parsed).await;
        prepared
    }

    /// The parsed email, its SHA-256 and the key it is deduplicated by (its Message-ID, or its
    /// hash when it has none), with no forms read yet.
    fn digest(&self, raw: &[u8]) -> PreparedEmail {
        let parsed = mail::parse(raw, &self.config.mail);
        let sha256 = mail::sha256_hex(raw);
        let dedup_key = match &parsed.message_id {
            Some(id) => format!("mid:{id}"),
            None => format!("sha256:{sha256}"),
        };
        PreparedEmail {
            parsed,
            sha256,
            dedup_key,
            analyses: Vec::new(),
            thread: None,
            message_id_reused: false,
        }
    }

    /// The second half of [`Engine::intake`]: stores the raw message (`raw` is what `prepared`
    /// was made from) and makes or updates its cases, in one transaction. A message already
    /// stored makes nothing new.
    pub async fn record(
        &self,
        raw: &[u8],
        mut prepared: PreparedEmail,
        source: &str,
    ) -> Result<IntakeReport, EngineError> {
        {
            let mut conn = self.db.pool.acquire().await.context("connecting")?;
            prepared.thread = self.thread_case(&mut conn, &prepared.parsed).await?;
        }
        let mut tx = self.db.begin_write().await.context("starting a transaction")?;
        let report = self.record_in(&mut tx, raw, prepared, source).await?;
        tx.commit().await.context("committing an ingested message")?;
        self.confirm_stored(std::slice::from_ref(&report)).await?;
        self.recorded(std::slice::from_ref(&report));
        Ok(report)
    }

    /// Records several emails in one transaction: all or none. A mailbox drain uses it to
    /// spend one commit on a group of messages rather than one each; if it fails, the drain
    /// records the group's messages one at a time, so that one bad message holds up no other.
    pub async fn record_group(
        &self,
        mut emails: Vec<(&[u8], PreparedEmail, &str)>,
    ) -> Result<Vec<IntakeReport>, EngineError> {
        // Threading reads happen before the write transaction, so that it holds its lock only
        // for the writes.
        {
            let mut conn = self.db.pool.acquire().await.context("connecting")?;
            for (_, prepared, _) in &mut emails {
                prepared.thread = self.thread_case(&mut conn, &prepared.parsed).await?;
            }
        }
        let mut tx = self.db.begin_write().await.context("starting a transaction")?;
        // Every form of the group is locked up front, in one order, so that two writers of
        // overlapping groups wait for each other rather than deadlock.
        let mut forms: Vec<&str> = emails
            .iter()
            .flat_map(|(_, prepared, _)| {
                prepared
                    .analyses
                    .iter()
                    .filter_map(|a| prepared.parsed.attachments.get(a.attachment_index))
                    .map(|attachment| attachment.sha256.as_str())
            })
            .collect();
        forms.sort_unstable();
        forms.dedup();
        for sha256 in forms {
            storage::lock_form(&mut tx, sha256).await?;
        }
        let mut reports = Vec::with_capacity(emails.len());
        for (raw, prepared, source) in emails {
            reports.push(self.record_in(&mut tx, raw, prepared, source).await?);
        }
        tx.commit().await.context("committing a group of ingested messages")?;
        self.confirm_stored(&reports).await?;
        self.recorded(&reports);
        Ok(reports)
    }

    /// Reads the messages of a commit back on another connection, so that a mail source marks
    /// mail done only after a commit that really happened. (A connection whose transaction
    /// state was in doubt once turned "commit" into releasing a savepoint inside a transaction
    /// that was never committed; those connections are now closed, and this proves it.)
    async fn confirm_stored(&self, reports: &[IntakeReport]) -> Result<(), EngineError> {
        let mut ids: Vec<i64> = reports.iter().map(|r| r.raw_message_id).collect();
        // A group may hold one message twice (the repeat is found already stored).
        ids.sort_unstable();
        ids.dedup();
        let mut conn = self.db.pool.acquire().await.context("connecting")?;
        let found = storage::count_raw_messages(&mut conn, &ids).await?;
        if found != ids.len() {
            return Err(EngineError::NotDurable {
                expected: ids.len(),
                found,
            });
        }
        Ok(())
    }

    /// After a commit: wake the workers that act on new cases (mail, timers), and log them.
    fn recorded(&self, reports: &[IntakeReport]) {
        if reports.iter().any(|r| !r.already_ingested) {
            self.wakers.wake_all();
        }
        for outcome in reports.iter().filter(|r| !r.already_ingested).flat_map(|r| &r.cases) {
            info!(reference = %outcome.reference, state = %outcome.state, findings = ?outcome.finding_codes, "case recorded");
        }
    }

    /// Records one prepared email inside the caller's transaction `tx` (which commits it).
    async fn record_in(
        &self,
        tx: &mut AnyConnection,
        raw: &[u8],
        mut prepared: PreparedEmail,
        source: &str,
    ) -> Result<IntakeReport, EngineError> {
        // Recorded (or found already recorded): it no longer counts as a try that never ended.
        // A write first, so that on SQLite the transaction takes the write lock before it reads
        // (a read first would pin a snapshot that a concurrent commit makes stale).
        storage::clear_prepare_attempts(tx, &prepared.sha256).await?;
        let now = self.now_ms();
        let auth_json = serde_json::to_string(&prepared.parsed.sender_auth).unwrap_or_default();
        // The insert is the dedup check; only when it finds the key taken do we look closer
        // (a redelivery, or a reused Message-ID with other bytes, kept under a key of its own).
        let raw_message_id = loop {
            let parsed = &prepared.parsed;
            let new_message = storage::NewRawMessage {
                dedup_key: &prepared.dedup_key,
                message_id: parsed.message_id.as_deref(),
                sha256: &prepared.sha256,
                source,
                received_at: now,
                from_address: parsed.from_address.as_deref(),
                subject: parsed.subject.as_deref(),
                sent_at: parsed.date_ms,
                sender_auth_json: &auth_json,
                automatic: parsed.automatic.as_deref(),
                raw,
            };
            if let Some(id) = storage::insert_raw_message(tx, &new_message).await? {
                break id;
            }
            let key_before = prepared.dedup_key.clone();
            match Self::stored_before(tx, &mut prepared).await? {
                Some(id) => return self.already_ingested(tx, id).await,
                // The key changed (a reused Message-ID): insert under the new one.
                None if prepared.dedup_key != key_before => continue,
                None => return Err(EngineError::CaseNotFound(key_before)),
            }
        };
        let PreparedEmail {
            parsed,
            sha256: _,
            dedup_key: _,
            analyses,
            thread,
            message_id_reused,
        } = prepared;
        let mut attachment_ids = Vec::with_capacity(parsed.attachments.len());
        for attachment in &parsed.attachments {
            let id = storage::insert_attachment(
                tx,
                &storage::NewAttachment {
                    raw_message_id,
                    filename: attachment.filename.as_deref(),
                    claimed_type: &attachment.claimed_type,
                    detected_type: attachment.detected_type.as_deref(),
                    sha256: &attachment.sha256,
                    forwarded: attachment.forwarded,
                    content: &attachment.bytes,
                },
            )
            .await?;
            attachment_ids.push(id);
        }

        if let Some(why) = &parsed.bounce {
            let outcome = self
                .record_bounce(tx, thread, &parsed, raw_message_id, why, now)
                .await?;
            return Ok(IntakeReport {
                raw_message_id,
                already_ingested: false,
                cases: vec![outcome],
            });
        }
        // Mail that names a case changes it only when it is authenticated and comes from the
        // case's own sender or signatory; anything else opens a case of its own, linked.
        let mut related = None;
        let mut analyses = analyses;
        let mut outcomes = Vec::new();
        if let Some(case) = match thread {
            Some(id) => storage::case_by_id(tx, id).await?,
            None => None,
        } {
            let signatory = case
                .workflow
                .as_deref()
                .and_then(|w| self.workflows.get(w))
                .and_then(|w| case.fields.get(&w.signatories.email_field))
                .map(String::as_str);
            let sender = replies::ReplySender {
                address: parsed.from_address.as_deref(),
                authenticated: parsed.sender_auth.passed() && parsed.malformed.is_none(),
            };
            let parties = replies::CaseParties {
                sender: case.sender.as_deref(),
                signatory,
            };
            match replies::may_change(sender, parties) {
                Err(why) => {
                    related = Some(Related {
                        case_id: case.id,
                        reference: case.reference.clone(),
                        why: Some(why),
                    })
                }
                Ok(()) => {
                    let reference = case.reference.clone();
                    let case_id = case.id;
                    let (outcome, leftovers) = self
                        .attach_reply(tx, case, &parsed, raw_message_id, analyses, &attachment_ids, now)
                        .await?;
                    outcomes.push(outcome);
                    for (form, why) in leftovers {
                        let related = Related {
                            case_id,
                            reference: reference.clone(),
                            why,
                        };
                        outcomes.push(
                            self.open_form_case(
                                tx,
                                &parsed,
                                raw_message_id,
                                &attachment_ids,
                                form,
                                Some(&related),
                                now,
                            )
                            .await?,
                        );
                    }
                    return Ok(IntakeReport {
                        raw_message_id,
                        already_ingested: false,
                        cases: outcomes,
                    });
                }
            }
        }
        let analyses = std::mem::take(&mut analyses);
        let (forms, others): (Vec<FormAnalysis>, Vec<FormAnalysis>) =
            analyses.into_iter().partition(|a| a.workflow.is_some());
        let mut about_the_email = Vec::new();
        if message_id_reused {
            about_the_email.push(Finding::new(
                FindingCode::MessageIdReused,
                format!(
                    "An email with the same Message-ID ({}) but different content arrived before. Both are kept: check that this one is genuine.",
                    parsed.message_id.as_deref().unwrap_or_default()
                ),
            ));
        }
        if parsed.attachments_dropped > 0 {
            about_the_email.push(Finding::new(
                FindingCode::TooManyAttachments,
                format!(
                    "The email has {} more attachments than the {} we read; they are kept with the email but were not opened.",
                    parsed.attachments_dropped,
                    mail::MAX_ATTACHMENTS
                ),
            ));
        }
        if forms.is_empty() {
            // Nothing we can put in a workflow: one case, so that nothing is lost.
            let mut findings: Vec<Finding> = parsed
                .malformed
                .iter()
                .map(|why| {
                    Finding::new(
                        FindingCode::MessageMalformed,
                        format!("The email could not be read: {why}."),
                    )
                })
                .collect();
            findings.extend(others.iter().flat_map(|a| a.findings.clone()));
            findings.extend(about_the_email.iter().cloned());
            if findings.is_empty() {
                findings.push(Finding::new(
                    FindingCode::NoFormFound,
                    "No access-request form was attached. Please attach the completed PDF form to your email.",
                ));
            }
            findings.extend(related.as_ref().and_then(Related::finding));
            // An auto-reply that names a case it may not join asks for no work either.
            let state = if related.is_some() && parsed.automatic.is_some() {
                "closed"
            } else {
                UNCLASSIFIED_STATE
            };
            let form_attachment = others.first().map(|a| a.attachment_index);
            let outcome = self
                .create_unclassified_case(
                    tx,
                    &parsed,
                    raw_message_id,
                    form_attachment.map(|i| attachment_ids[i]),
                    findings,
                    state,
                    related.as_ref(),
                    now,
                )
                .await?;
            outcomes.push(outcome);
        } else {
            // Unreadable PDFs beside a real form are mentioned on the first case; a covering
            // letter without fields is just an attachment.
            let extra: Vec<Finding> = others
                .iter()
                .flat_map(|a| {
                    a.findings
                        .iter()
                        .filter(|f| f.code != FindingCode::FormHasNoFields && f.code != FindingCode::FormNotRecognised)
                        .cloned()
                })
                .chain(about_the_email.iter().cloned())
                .collect();
            for (i, mut form) in forms.into_iter().enumerate() {
                if i == 0 {
                    form.findings.extend(extra.iter().cloned());
                }
                if let Some(why) = &parsed.malformed {
                    form.findings.push(Finding::new(
                        FindingCode::MessageMalformed,
                        format!("The email could not be trusted as written: {why}."),
                    ));
                }
                outcomes.push(
                    self.open_form_case(
                        tx,
                        &parsed,
                        raw_message_id,
                        &attachment_ids,
                        form,
                        related.as_ref(),
                        now,
                    )
                    .await?,
                );
            }
        }
        Ok(IntakeReport {
            raw_message_id,
            already_ingested: false,
            cases: outcomes,
        })
    }

    /// The case an email names: by In-Reply-To, the latest References, or the Message-ID of the
    /// message a bounce returns (our mail, or the practice's earlier email), else by a case
    /// reference in the subject. Naming a case is not permission to change it: see
    /// [`replies::may_change`]. At most [`storage::MAX_THREAD_IDS`] ids are looked up, in one
    /// query, whatever the email carries.
    async fn thread_case(&self, conn: &mut AnyConnection, parsed: &ParsedEmail) -> Result<Option<i64>, EngineError> {
        let clean = |id: &String| id.trim().trim_start_matches('<').trim_end_matches('>').to_string();
        let mut ids: Vec<String> = parsed.in_reply_to.iter().take(4).map(clean).collect();
        ids.extend(parsed.returned_message_ids.iter().take(4).map(clean));
        // The References header lists the thread oldest first; the latest are the ones that
        // matter, and a hostile email may carry hundreds of thousands.
        let room = storage::MAX_THREAD_IDS.saturating_sub(ids.len());
        ids.extend(parsed.references.iter().rev().take(room).map(clean));
        ids.retain(|id| !id.is_empty() && id.len() <= 998);
        ids.dedup();
        if let Some(case_id) = storage::case_for_message_ids(conn, &ids).await? {
            return Ok(Some(case_id));
        }
        let Some(reference) = parsed.subject.as_deref().and_then(CaseRef::find_in) else {
            return Ok(None);
        };
        Ok(storage::case_by_reference(conn, reference.as_str())
            .await?
            .map(|c| c.id))
    }

    /// Records a bounce or delivery report against the case of the message it returns. It
    /// changes nothing and asks for no work; with no case to go to, it is kept as a closed case
    /// so that nothing is lost.
    async fn record_bounce(
        &self,
        conn: &mut AnyConnection,
        thread: Option<i64>,
        parsed: &ParsedEmail,
        raw_message_id: i64,
        why: &str,
        now: i64,
    ) -> Result<CaseOutcome, EngineError> {
        let case = match thread {
            Some(id) => storage::case_by_id(conn, id).await?,
            None => None,
        };
        if let Some(case) = case {
            storage::link_message(conn, case.id, raw_message_id, "bounce").await?;
            storage::append_event(
                conn,
                case.id,
                &CaseEvent {
                    at: now,
                    actor: parsed.from_address.clone().unwrap_or_else(|| "a mail system".into()),
                    actor_role: "sender".into(),
                    kind: "delivery_report_received".into(),
                    transition: None,
                    from_state: None,
                    to_state: None,
                    reason: Some(why.to_string()),
                    data: Some(serde_json::json!({ "raw_message_id": raw_message_id }).to_string()),
                },
            )
            .await?;
            return Ok(self.outcome(&case, None));
        }
        let finding = Finding::new(
            FindingCode::DeliveryReport,
            format!("A bounce or delivery report ({why}) that matched none of our cases. It needs no action."),
        );
        self.create_unclassified_case(conn, parsed, raw_message_id, None, vec![finding], "closed", None, now)
            .await
    }

    /// Records a trusted reply on its case (see [`replies::may_change`]). An automatic reply
    /// is only noted. A form of the case's workflow replaces the case's form while the workflow
    /// allows it; a form arriving for a case that had none classifies it. Every other form is
    /// returned, with the reason it may not land here (if any), to open a case of its own.
    #[allow(clippy::too_many_arguments)]
    async fn attach_reply(
        &self,
        conn: &mut AnyConnection,
        mut case: CaseRecord,
        parsed: &ParsedEmail,
        raw_message_id: i64,
        analyses: Vec<FormAnalysis>,
        attachment_ids: &[i64],
        now: i64,
    ) -> Result<(CaseOutcome, Vec<(FormAnalysis, Option<String>)>), EngineError> {
        let automatic = parsed.automatic.is_some();
        storage::link_message(
            conn,
            case.id,
            raw_message_id,
            if automatic { "auto_reply" } else { "reply" },
        )
        .await?;
        storage::append_event(
            conn,
            case.id,
            &CaseEvent {
                at: now,
                actor: parsed.from_address.clone().unwrap_or_else(|| "unknown sender".into()),
                actor_role: "sender".into(),
                kind: if automatic {
                    "auto_reply_received"
                } else {
                    "reply_received"
                }
                .into(),
                transition: None,
                from_state: None,
                to_state: None,
                reason: parsed.automatic.clone().or_else(|| parsed.subject.clone()),
                data: Some(serde_json::json!({ "raw_message_id": raw_message_id }).to_string()),
            },
        )
        .await?;
        if automatic {
            return Ok((self.outcome(&case, None), vec![]));
        }
        let mut leftovers = Vec::new();
        let mut taken = false;
        for form in analyses.into_iter().filter(|a| a.workflow.is_some()) {
            // A PDF that already has a case (this one's own form sent again, or another's) is
            // a copy of that case's form, never a replacement: one case per form.
            let sha256 = &parsed.attachments[form.attachment_index].sha256;
            storage::lock_form(conn, sha256).await?;
            if storage::case_by_form_sha256(conn, sha256).await?.is_some() {
                leftovers.push((form, None));
                continue;
            }
            let form_workflow = form.workflow.clone().unwrap_or_default();
            let replaceable_in = case
                .workflow
                .as_deref()
                .and_then(|w| self.workflows.get(w))
                .map(|w| w.replies.replace_form_in.as_slice())
                .unwrap_or(&[]);
            let target = replies::ReplyTarget {
                workflow: case.workflow.as_deref(),
                state: &case.state,
                replaceable_in,
            };
            match replies::form_fate(target, &form_workflow, taken) {
                replies::FormFate::Replace => {
                    case = self.replace_form(conn, case, form, parsed, attachment_ids, now).await?;
                    taken = true;
                }
                replies::FormFate::Classify => {
                    case = self.classify(conn, case, form, parsed, attachment_ids, now).await?;
                    taken = true;
                }
                replies::FormFate::Separate => leftovers.push((form, None)),
                replies::FormFate::Refused { why } => leftovers.push((form, Some(why))),
            }
        }
        let workflow = case.workflow.as_deref().and_then(|w| self.workflows.get(w));
        if let Some(workflow) = workflow
            && !taken
            && case.state == "awaiting_information"
        {
            case = self
                .move_as_system(
                    conn,
                    &case,
                    workflow,
                    "needs_review",
                    "the sender replied",
                    parsed.message_id.as_deref(),
                    now,
                )
                .await?;
        }
        Ok((self.outcome(&case, None), leftovers))
    }

    /// Moves a case as the system (a reply, a replacement form), by the workflow's system
    /// transition from its state to `to`, inside the caller's transaction.
    #[allow(clippy::too_many_arguments)]
    async fn move_as_system(
        &self,
        conn: &mut AnyConnection,
        case: &CaseRecord,
        workflow: &WorkflowDef,
        to: &str,
        reason: &str,
        in_reply_to: Option<&str>,
        now: i64,
    ) -> Result<CaseRecord, EngineError> {
        let request = TransitionRequest {
            to: to.into(),
            ..TransitionRequest::default()
        };
        let plan = Self::plan_as_system(workflow, &case.state, &request, &case.reference)?;
        self.apply_plan(
            conn,
            case,
            workflow,
            &plan,
            &Actor::system(),
            Some(reason),
            &[],
            None,
            in_reply_to,
            now,
        )
        .await
    }

    /// The workflow a case or form names; an unknown (or missing) name is an error.
    fn workflow_named(&self, name: Option<&str>) -> Result<&WorkflowDef, EngineError> {
        let name = name.unwrap_or_default();
        self.workflows
            .get(name)
            .ok_or_else(|| EngineError::UnknownWorkflow(name.to_string()))
    }

    /// A replacement form from the case's own sender or signatory: the fields and findings are
    /// replaced, earlier accept and authorise decisions on the old form are void (and logged as
    /// such), and the checks decide the state again: findings send the case to needs review
    /// (also from validated), a clean form in needs review is validated, and a case awaiting
    /// information goes back to the caseworker who asked.
    async fn replace_form(
        &self,
        conn: &mut AnyConnection,
        mut case: CaseRecord,
        form: FormAnalysis,
        parsed: &ParsedEmail,
        attachment_ids: &[i64],
        now: i64,
    ) -> Result<CaseRecord, EngineError> {
        let workflow = self.workflow_named(case.workflow.as_deref())?;
        let voided = decisions_since_last_form(&storage::events_for_case(conn, case.id).await?);
        self.store_form(conn, &mut case, workflow, &form, parsed, attachment_ids, now)
            .await?;
        storage::append_event(
            conn,
            case.id,
            &CaseEvent {
                reason: Some(checks_summary(&form.findings)),
                data: Some(serde_json::json!({ "from": parsed.from_address }).to_string()),
                ..CaseEvent::system("form_resubmitted", now)
            },
        )
        .await?;
        if !voided.is_empty() {
            storage::append_event(
                conn,
                case.id,
                &CaseEvent {
                    reason: Some(format!(
                        "a replacement form arrived, so these decisions on the old form no longer stand: {}",
                        voided.join("; ")
                    )),
                    ..CaseEvent::system("decisions_voided", now)
                },
            )
            .await?;
        }
        let to = match case.state.as_str() {
            "awaiting_information" => Some("needs_review"),
            state => Some(machine::state_after_checks(!form.findings.is_empty())).filter(|to| *to != state),
        };
        if let Some(to) = to {
            let reason = "a replacement form was checked";
            case = self
                .move_as_system(conn, &case, workflow, to, reason, parsed.message_id.as_deref(), now)
                .await?;
        }
        Ok(case)
    }

    /// A form arriving for a case that had none ("sorry, now attached"): the case joins the
    /// form's workflow and is checked as if the form had come first.
    async fn classify(
        &self,
        conn: &mut AnyConnection,
        mut case: CaseRecord,
        form: FormAnalysis,
        parsed: &ParsedEmail,
        attachment_ids: &[i64],
        now: i64,
    ) -> Result<CaseRecord, EngineError> {
        let workflow = self.workflow_named(form.workflow.as_deref())?;
        self.store_form(conn, &mut case, workflow, &form, parsed, attachment_ids, now)
            .await?;
        storage::append_event(
            conn,
            case.id,
            &CaseEvent {
                reason: Some(format!(
                    "form {} arrived in reply; {}",
                    workflow.recognise.form_id,
                    checks_summary(&form.findings)
                )),
                ..CaseEvent::system("classified", now)
            },
        )
        .await?;
        let validated = machine::state_after_checks(false);
        if form.findings.is_empty() && case.state != validated {
            case = self
                .move_as_system(
                    conn,
                    &case,
                    workflow,
                    validated,
                    "all checks passed",
                    parsed.message_id.as_deref(),
                    now,
                )
                .await?;
        } else {
            for timer in workflow.timers.iter().filter(|t| t.state == case.state) {
                storage::arm_timer(
                    conn,
                    case.id,
                    &timer.name,
                    &case.state,
                    self.working_days_from_now(timer.after_working_days),
                    now,
                )
                .await?;
            }
        }
        // The SLA counts from when the email first arrived, as if the form had come with it.
        let created = chrono::DateTime::from_timestamp_millis(case.created_at)
            .map(|t| t.with_timezone(&Local).date_naive())
            .unwrap_or_else(|| self.today());
        let elapsed = self.calendar.working_days_between(created, self.today()).max(0) as u32;
        let remaining = workflow.sla.target_working_days.saturating_sub(elapsed);
        self.arm_sla_timers(conn, case.id, workflow, remaining, now).await?;
        Ok(case)
    }

    /// Writes a form's fields, findings and attachment onto `case` (version-checked), and
    /// updates `case` to match.
    #[allow(clippy::too_many_arguments)]
    async fn store_form(
        &self,
        conn: &mut AnyConnection,
        case: &mut CaseRecord,
        workflow: &WorkflowDef,
        form: &FormAnalysis,
        parsed: &ParsedEmail,
        attachment_ids: &[i64],
        now: i64,
    ) -> Result<(), EngineError> {
        let ods = form.fields.get("org_ods_code").and_then(|c| OdsCode::parse(c));
        let org_name = form
            .fields
            .get("org_name")
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty());
        let updated = storage::update_case_fields(
            conn,
            case.id,
            case.version,
            Some(&workflow.name),
            &form.fields,
            &form.findings,
            ods.as_ref().map(OdsCode::as_str),
            org_name.as_deref(),
            now,
        )
        .await?;
        if !updated {
            return Err(EngineError::Conflict(case.reference.clone()));
        }
        let attachment = &parsed.attachments[form.attachment_index];
        storage::replace_case_form(conn, case.id, attachment_ids[form.attachment_index], &attachment.sha256).await?;
        case.version += 1;
        case.workflow = Some(workflow.name.clone());
        case.fields = form.fields.clone();
        case.findings = form.findings.clone();
        case.org_ods_code = ods.map(|o| o.as_str().to_string());
        case.org_name = org_name;
        case.updated_at = now;
        Ok(())
    }

    /// A new case for one form: linked to the case that already has this exact PDF, or made.
    #[allow(clippy::too_many_arguments)]
    async fn open_form_case(
        &self,
        conn: &mut AnyConnection,
        parsed: &ParsedEmail,
        raw_message_id: i64,
        attachment_ids: &[i64],
        mut form: FormAnalysis,
        related: Option<&Related>,
        now: i64,
    ) -> Result<CaseOutcome, EngineError> {
        let attachment = &parsed.attachments[form.attachment_index];
        let attachment_id = attachment_ids[form.attachment_index];
        storage::lock_form(conn, &attachment.sha256).await?;
        if let Some(original) = storage::case_by_form_sha256(conn, &attachment.sha256).await? {
            return self.link_duplicate(conn, &original, raw_message_id, now).await;
        }
        form.findings.extend(related.and_then(Related::finding));
        self.create_form_case(
            conn,
            parsed,
            raw_message_id,
            attachment_id,
            &attachment.sha256,
            form,
            related,
            now,
        )
        .await
    }

    async fn already_ingested(
        &self,
        conn: &mut AnyConnection,
        raw_message_id: i64,
    ) -> Result<IntakeReport, EngineError> {
        let cases = storage::cases_for_message(conn, raw_message_id).await?;
        Ok(IntakeReport {
            raw_message_id,
            already_ingested: true,
            cases: cases.iter().map(|c| self.outcome(c, None)).collect(),
        })
    }

    fn outcome(&self, case: &CaseRecord, duplicate_of: Option<String>) -> CaseOutcome {
        CaseOutcome {
            reference: case.reference.clone(),
            workflow: case.workflow.clone(),
            state: case.state.clone(),
            finding_codes: case.findings.iter().map(|f| f.code.as_str().to_string()).collect(),
            duplicate_of,
        }
    }

    /// Extracts every PDF through the configured reader (worker processes in the service).
    async fn analyse_attachments(&self, parsed: &ParsedEmail) -> Vec<FormAnalysis> {
        let mut analyses = Vec::new();
        let form_ids: Vec<String> = self.workflows.iter().map(|w| w.recognise.form_id.clone()).collect();
        for (index, attachment) in parsed
            .attachments
            .iter()
            .enumerate()
            .filter(|(_, a)| a.looks_like_pdf())
        {
            let result = self
                .config
                .pdf_reader
                .extract(attachment.bytes.clone(), form_ids.clone(), self.config.limits)
                .await;
            let filename = attachment
                .filename
                .clone()
                .unwrap_or_else(|| "unnamed attachment".into());
            analyses.push(self.analyse_form(index, &filename, result, parsed));
        }
        analyses
    }

    fn analyse_form(
        &self,
        index: usize,
        filename: &str,
        result: Result<ExtractedForm, PdfError>,
        parsed: &ParsedEmail,
    ) -> FormAnalysis {
        let mut analysis = FormAnalysis {
            attachment_index: index,
            workflow: None,
            fields: BTreeMap::new(),
            extraction: None,
            findings: vec![],
        };
        let extracted = match result {
            Ok(extracted) => extracted,
            Err(error) => {
                analysis.findings.push(finding_for_pdf_error(&error, filename));
                return analysis;
            }
        };
        if !extracted.has_fields() {
            // Printed, flattened or scanned: wait for a caseworker to key it in.
            analysis.workflow = extracted
                .printed_form_id
                .as_deref()
                .and_then(|id| self.workflows.by_form_id(id))
                .map(|w| w.name.clone());
            analysis.findings.push(Finding::new(
                FindingCode::FormHasNoFields,
                format!("“{filename}” has no fillable fields (it was printed, flattened or scanned), so a caseworker will key it in by hand."),
            ));
            analysis.extraction = Some(extracted);
            return analysis;
        }
        let form_id = extracted
            .get("form_id")
            .and_then(|f| f.value.clone())
            .filter(|v| !v.trim().is_empty());
        let workflow = match &form_id {
            Some(id) => self.workflows.by_form_id(id),
            None => None,
        }
        .or_else(|| self.recognise_by_fields(&extracted));
        let Some(workflow) = workflow else {
            analysis.findings.push(Finding::new(
                FindingCode::FormNotRecognised,
                format!("“{filename}” has form fields, but it is not one of our access-request forms. Please use the current form."),
            ));
            analysis.extraction = Some(extracted);
            return analysis;
        };
        analysis.fields = map_fields(workflow, &extracted);
        let facts = Facts {
            workflow,
            fields: &analysis.fields,
            sender: parsed.from_address.as_deref(),
            sender_auth: &parsed.sender_auth,
            today: self.today(),
        };
        if form_id.is_none() {
            analysis.findings.push(Finding::new(
                FindingCode::FormIdMissing,
                format!("“{filename}” does not say which form it is, so it was matched by its fields to “{}”. A caseworker will confirm.", workflow.title),
            ));
        }
        analysis.findings.extend(policy::check(&facts, &self.config.policy));
        analysis.workflow = Some(workflow.name.clone());
        analysis.extraction = Some(extracted);
        analysis
    }

    /// A form without a `form_id` belongs to the workflow all of whose recognition fields it
    /// has; ties go to the higher priority.
    fn recognise_by_fields(&self, extracted: &ExtractedForm) -> Option<&WorkflowDef> {
        self.workflows
            .iter()
            .filter(|w| {
                w.recognise
                    .fields
                    .iter()
                    .all(|name| lookup(w, extracted, name).is_some())
            })
            .max_by_key(|w| (w.recognise.priority, w.recognise.fields.len()))
    }

    #[allow(clippy::too_many_arguments)]
    async fn create_unclassified_case(
        &self,
        conn: &mut AnyConnection,
        parsed: &ParsedEmail,
        raw_message_id: i64,
        attachment_id: Option<i64>,
        findings: Vec<Finding>,
        state: &str,
        related: Option<&Related>,
        now: i64,
    ) -> Result<CaseOutcome, EngineError> {
        let reference = self.next_reference(conn).await?;
        let fields = BTreeMap::new();
        // A case that starts closed (a bounce with no case) asks for no work and has no SLA.
        let open = state == UNCLASSIFIED_STATE;
        let case_id = storage::insert_case(
            conn,
            &storage::NewCase {
                organisation_id: None,
                reference: reference.as_str(),
                workflow: None,
                state,
                fields: &fields,
                extraction_json: None,
                findings: &findings,
                org_ods_code: None,
                org_name: None,
                sender: parsed.from_address.as_deref(),
                origin_message_id: raw_message_id,
                form_attachment_id: attachment_id,
                form_sha256: None,
                related_case_id: related.map(|r| r.case_id),
                now,
                due_at: open.then(|| self.working_days_from_now(5)),
            },
        )
        .await?
        .id;
        storage::link_message(conn, case_id, raw_message_id, "origin").await?;
        let codes: Vec<&str> = findings.iter().map(|f| f.code.as_str()).collect();
        storage::append_event(
            conn,
            case_id,
            &CaseEvent {
                to_state: Some(state.into()),
                reason: Some(format!(
                    "no workflow could be found for this email ({})",
                    codes.join(", ")
                )),
                ..CaseEvent::system("created", now)
            },
        )
        .await?;
        Ok(CaseOutcome {
            reference: reference.to_string(),
            workflow: None,
            state: state.into(),
            finding_codes: codes.into_iter().map(str::to_string).collect(),
            duplicate_of: None,
        })
    }

    async fn next_reference(&self, conn: &mut AnyConnection) -> Result<CaseRef, EngineError> {
        let year = self.clock.now().year();
        let number = storage::next_case_number(conn, year).await?;
        Ok(CaseRef::new(year, number))
    }

    #[allow(clippy::too_many_arguments)]
    async fn create_form_case(
        &self,
        conn: &mut AnyConnection,
        parsed: &ParsedEmail,
        raw_message_id: i64,
        attachment_id: i64,
        form_sha256: &str,
        form: FormAnalysis,
        related: Option<&Related>,
        now: i64,
    ) -> Result<CaseOutcome, EngineError> {
        let workflow = self.workflow_named(form.workflow.as_deref())?;
        let reference = self.next_reference(conn).await?;
        let ods = form.fields.get("org_ods_code").and_then(|c| OdsCode::parse(c));
        let org_name = form
            .fields
            .get("org_name")
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty());
        let extraction_json = form.extraction.as_ref().and_then(|e| serde_json::to_string(e).ok());
        let initial = workflow.initial_state().name.clone();
        let organisation_id = match (&ods, &org_name) {
            (Some(ods), Some(name)) => {
                let kind = if ods.is_gp_practice() { "gp_practice" } else { "other" };
                Some(storage::upsert_organisation(conn, ods.as_str(), name, kind, now).await?)
            }
            _ => None,
        };
        let case = storage::insert_case(
            conn,
            &storage::NewCase {
                reference: reference.as_str(),
                workflow: Some(&workflow.name),
                state: &initial,
                fields: &form.fields,
                extraction_json: extraction_json.as_deref(),
                findings: &form.findings,
                org_ods_code: ods.as_ref().map(OdsCode::as_str),
                org_name: org_name.as_deref(),
                organisation_id,
                sender: parsed.from_address.as_deref(),
                origin_message_id: raw_message_id,
                form_attachment_id: Some(attachment_id),
                form_sha256: Some(form_sha256),
                related_case_id: related.map(|r| r.case_id),
                now,
                due_at: Some(self.working_days_from_now(workflow.sla.target_working_days)),
            },
        )
        .await?;
        let case_id = case.id;
        storage::link_message(conn, case_id, raw_message_id, "origin").await?;
        storage::append_event(
            conn,
            case_id,
            &CaseEvent {
                to_state: Some(initial.clone()),
                reason: Some(format!(
                    "form {} received from {}",
                    workflow.recognise.form_id,
                    parsed.from_address.as_deref().unwrap_or("an unknown sender")
                )),
                ..CaseEvent::system("created", now)
            },
        )
        .await?;

        // Checks passed: validated. Findings: held for a caseworker.
        let request = TransitionRequest {
            to: machine::state_after_checks(!form.findings.is_empty()).to_string(),
            ..TransitionRequest::default()
        };
        let mut plan = Self::plan_as_system(workflow, &initial, &request, reference.as_str())?;
        // The case was created in this transaction: it has no timers to cancel yet.
        plan.cancel_pending_timers = false;
        let reason = checks_summary(&form.findings);
        let loop_guard = parsed.automatic.clone();
        let case = self
            .apply_plan(
                conn,
                &case,
                workflow,
                &plan,
                &Actor::system(),
                Some(&reason),
                &[],
                loop_guard.as_deref(),
                parsed.message_id.as_deref(),
                now,
            )
            .await?;
        // The SLA timers belong to the case, not to a state: they run until it is closed,
        // pausing while the sender has the ball.
        self.arm_sla_timers(conn, case.id, workflow, workflow.sla.target_working_days, now)
            .await?;
        Ok(self.outcome(&case, None))
    }

    async fn link_duplicate(
        &self,
        conn: &mut AnyConnection,
        original: &CaseRecord,
        raw_message_id: i64,
        now: i64,
    ) -> Result<CaseOutcome, EngineError> {
        storage::link_message(conn, original.id, raw_message_id, "duplicate").await?;
        storage::append_event(
            conn,
            original.id,
            &CaseEvent {
                reason: Some("the same PDF arrived again in another email".into()),
                data: Some(serde_json::json!({ "raw_message_id": raw_message_id }).to_string()),
                ..CaseEvent::system("duplicate_received", now)
            },
        )
        .await?;
        Ok(self.outcome(original, Some(original.reference.clone())))
    }

    /// Applies an allowed transition: state, event, timers and mail, on `conn` (inside the
    /// caller's transaction).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn apply_plan(
        &self,
        conn: &mut AnyConnection,
        case: &CaseRecord,
        workflow: &WorkflowDef,
        plan: &TransitionPlan<'_>,
        actor: &Actor,
        reason: Option<&str>,
        recorded: &[(String, String)],
        suppress_mail_because: Option<&str>,
        in_reply_to: Option<&str>,
        now: i64,
    ) -> Result<CaseRecord, EngineError> {
        let mut all_recorded = case.recorded.clone();
        all_recorded.extend(recorded.iter().cloned());
        if !storage::update_case_state(conn, case.id, case.version, &plan.to, &all_recorded, now).await? {
            return Err(EngineError::Conflict(case.reference.clone()));
        }
        storage::append_event(
            conn,
            case.id,
            &CaseEvent {
                at: now,
                actor: actor.name.clone(),
                actor_role: actor.role.as_str().into(),
                kind: "transition".into(),
                transition: Some(plan.transition.name.clone()),
                from_state: Some(plan.from.clone()),
                to_state: Some(plan.to.clone()),
                reason: reason.map(str::to_string),
                data: (!recorded.is_empty()).then(|| {
                    serde_json::to_string(&recorded.iter().cloned().collect::<BTreeMap<_, _>>()).unwrap_or_default()
                }),
            },
        )
        .await?;
        let terminal = workflow.state(&plan.to).is_some_and(|s| s.terminal);
        if plan.cancel_pending_timers {
            storage::cancel_pending_timers(conn, case.id, now, terminal).await?;
        }
        let mut due_at = case.due_at;
        if !terminal {
            let running = |state: &str| workflow.state(state).is_none_or(|s| s.sla_running);
            match (running(&plan.from), running(&plan.to)) {
                (true, false) => self.pause_sla(conn, case.id, now).await?,
                (false, true) => due_at = self.resume_sla(conn, case, workflow, now).await?,
                _ => {}
            }
        }
        for timer in &plan.arm_timers {
            storage::arm_timer(
                conn,
                case.id,
                &timer.name,
                &plan.to,
                self.working_days_from_now(timer.after_working_days),
                now,
            )
            .await?;
        }
        if let Some(template) = plan.notify_template {
            let mut snapshot = case.clone();
            snapshot.state = plan.to.clone();
            snapshot.recorded = all_recorded.clone();
            let mail = Notification {
                template,
                recipient: case.sender.as_deref(),
                reason,
                automatic: actor.role == ActorRole::System,
                in_reply_to,
                suppress_because: suppress_mail_because,
            };
            self.notify(conn, &snapshot, workflow, &mail, now).await?;
        }
        let mut updated = case.clone();
        updated.due_at = due_at;
        updated.state = plan.to.clone();
        updated.version += 1;
        updated.recorded = all_recorded;
        updated.updated_at = now;
        Ok(updated)
    }

    /// Plans a transition the engine makes itself (checks, replies, timers).
    pub(crate) fn plan_as_system<'w>(
        workflow: &'w WorkflowDef,
        from: &str,
        request: &TransitionRequest,
        reference: &str,
    ) -> Result<TransitionPlan<'w>, EngineError> {
        machine::plan_transition(workflow, from, request, &Actor::system(), &CaseHistory::default()).map_err(|source| {
            EngineError::Transition {
                reference: reference.to_string(),
                source,
            }
        })
    }

    /// Arms the case-wide SLA timers: at risk, then breached.
    async fn arm_sla_timers(
        &self,
        conn: &mut AnyConnection,
        case_id: i64,
        workflow: &WorkflowDef,
        remaining_days: u32,
        now: i64,
    ) -> Result<(), EngineError> {
        if workflow.sla.escalation_template.is_none() {
            return Ok(());
        }
        let at_risk = remaining_days.saturating_sub(workflow.sla.at_risk_working_days);
        storage::arm_timer(
            conn,
            case_id,
            SLA_AT_RISK,
            storage::ANY_STATE,
            self.working_days_from_now(at_risk),
            now,
        )
        .await?;
        storage::arm_timer(
            conn,
            case_id,
            SLA_BREACHED,
            storage::ANY_STATE,
            self.working_days_from_now(remaining_days),
            now,
        )
        .await?;
        Ok(())
    }

    /// Stops the SLA clock: the sender has the ball.
    async fn pause_sla(&self, conn: &mut AnyConnection, case_id: i64, now: i64) -> Result<(), EngineError> {
        sqlx::query("UPDATE timers SET status = 'cancelled', finished_at = $1 WHERE case_id = $2 AND status = 'pending' AND state = '*'")
            .bind(now)
            .bind(case_id)
            .execute(&mut *conn)
            .await
            .context("pausing the SLA timers")?;
        sqlx::query("UPDATE cases SET sla_paused_at = $1 WHERE id = $2")
            .bind(now)
            .bind(case_id)
            .execute(&mut *conn)
            .await
            .context("pausing the SLA")?;
        Ok(())
    }

    /// Restarts the SLA clock with the working days that were left when it stopped; returns
    /// the new due time.
    async fn resume_sla(
        &self,
        conn: &mut AnyConnection,
        case: &CaseRecord,
        workflow: &WorkflowDef,
        now: i64,
    ) -> Result<Option<i64>, EngineError> {
        let paused_at: Option<i64> = sqlx::query_scalar("SELECT sla_paused_at FROM cases WHERE id = $1")
            .bind(case.id)
            .fetch_one(&mut *conn)
            .await
            .context("reading the SLA pause")?;
        let (Some(paused_at), Some(due_at)) = (paused_at, case.due_at) else {
            return Ok(case.due_at);
        };
        let date = |ms: i64| chrono::DateTime::from_timestamp_millis(ms).map(|t| t.with_timezone(&Local).date_naive());
        let (Some(paused_on), Some(due_on)) = (date(paused_at), date(due_at)) else {
            return Ok(case.due_at);
        };
        let remaining = self.calendar.working_days_between(paused_on, due_on).max(0) as u32;
        let new_due = self.working_days_from_now(remaining);
        sqlx::query("UPDATE cases SET due_at = $1, sla_paused_at = NULL WHERE id = $2")
            .bind(new_due)
            .bind(case.id)
            .execute(&mut *conn)
            .await
            .context("resuming the SLA")?;
        self.arm_sla_timers(conn, case.id, workflow, remaining, now).await?;
        Ok(Some(new_due))
    }

    /// Queues a templated email about `case` (inside the caller's transaction). Mail that would
    /// answer a machine, or that has nobody to go to, is recorded as suppressed, not dropped.
    pub async fn notify(
        &self,
        conn: &mut AnyConnection,
        case: &CaseRecord,
        workflow: &WorkflowDef,
        mail: &Notification<'_>,
        now: i64,
    ) -> Result<(), EngineError> {
        let our_own = mail
            .recipient
            .is_some_and(|r| self.config.mail.our_addresses.iter().any(|o| o.eq_ignore_ascii_case(r)));
        let suppressed = match (mail.suppress_because, mail.recipient) {
            (Some(why), _) if mail.automatic => Some(format!("not answering an automatic message ({why})")),
            (_, None) => Some("there is no address to send it to".to_string()),
            _ if our_own => Some("it would go to our own address".to_string()),
            _ => None,
        };
        // Mail to the practice that nobody decided to send goes only to an NHS address whose
        // sender we authenticated: anyone can put any address in From, and an acknowledgement
        // from pcse.openexeter@nhs.net is worth forging one for. A caseworker can still write.
        let to_sender = mail.recipient.is_some() && mail.recipient == case.sender.as_deref();
        let suppressed = match suppressed {
            None if mail.automatic && to_sender => {
                let (auth, _) = self.origin_sender(conn, case.origin_message_id).await?;
                let nhs = mail
                    .recipient
                    .and_then(crate::domain::EmailAddress::parse)
                    .is_some_and(|a| self.config.policy.nhs_domains.contains(&a));
                if !auth.passed() {
                    Some("the sender was not authenticated, so nothing is sent automatically; a caseworker can still write".to_string())
                } else if !nhs {
                    Some("the sender is not an NHS address, so nothing is sent automatically; a caseworker can still write".to_string())
                } else {
                    None
                }
            }
            other => other,
        };
        let when = |ms: Option<i64>| {
            ms.and_then(chrono::DateTime::from_timestamp_millis)
                .map(|t| t.with_timezone(&Local).format("%d/%m/%Y %H:%M").to_string())
        };
        // Mail quotes no free text from the form or the email: findings in our own words, the
        // ODS code only when it is well formed, and no organisation name.
        let findings: Vec<serde_json::Value> = case
            .findings
            .iter()
            .map(|f| {
                serde_json::json!({
                    "code": f.code.as_str(),
                    "field": f.field.as_deref().and_then(|name| workflow.field(name)).map(|d| d.label.as_str()),
                    "message": f.code.guidance(),
                })
            })
            .collect();
        let checked_ods = case
            .org_ods_code
            .as_deref()
            .and_then(OdsCode::parse)
            .map(|o| o.as_str().to_string());
        let context = serde_json::json!({
            "reason": mail.reason,
            "recorded": case.recorded,
            "findings": findings,
            "workflow": { "name": workflow.name, "title": workflow.title },
            "case": {
                "reference": case.reference,
                "state": case.state,
                "state_label": workflow.state(&case.state).map(|s| s.label.as_str()).unwrap_or(&case.state),
                "org_ods_code": checked_ods,
                "due_at": when(case.due_at),
                "updated_at": when(Some(case.updated_at)),
                "created_at": when(Some(case.created_at)),
            },
        });
        let message_id = format!("<{}@countersign>", uuid::Uuid::new_v4());
        storage::enqueue_mail(
            conn,
            &storage::NewOutboxMessage {
                case_id: Some(case.id),
                template: mail.template,
                recipient: mail.recipient,
                context_json: &context.to_string(),
                message_id: &message_id,
                in_reply_to: mail.in_reply_to,
                suppressed_reason: suppressed.as_deref(),
                automatic: mail.automatic,
                now,
            },
        )
        .await?;
        Ok(())
    }

    /// Moves a case to `request.to` on behalf of `actor`, if the workflow allows it.
    #[instrument(skip(self, request), fields(to = %request.to))]
    pub async fn transition(
        &self,
        reference: &str,
        request: &TransitionRequest,
        actor: &Actor,
    ) -> Result<CaseRecord, EngineError> {
        let mut tx = self.db.begin_write().await.context("starting a transaction")?;
        let case = storage::case_by_reference(&mut tx, reference)
            .await?
            .ok_or_else(|| EngineError::CaseNotFound(reference.to_string()))?;
        // The version the actor saw is checked here, inside the transaction that writes: a
        // check before it raced with another writer between the read and the write.
        if request.expected_version.is_some_and(|seen| seen != case.version) {
            return Err(EngineError::Stale {
                reference: case.reference.clone(),
                state: case.state.clone(),
            });
        }
        let original = match &request.duplicate_of {
            Some(wanted) => {
                let wanted = wanted.trim().to_uppercase();
                let original = storage::case_by_reference(&mut tx, &wanted)
                    .await?
                    .filter(|o| o.id != case.id)
                    .ok_or(EngineError::NoSuchOriginal(wanted))?;
                Some(original)
            }
            None => None,
        };
        let reason = match &original {
            Some(original) => Some(
                format!(
                    "duplicate of {}. {}",
                    original.reference,
                    request.reason.as_deref().unwrap_or_default()
                )
                .trim()
                .to_string(),
            ),
            None => request.reason.clone(),
        };
        let request = &TransitionRequest {
            reason,
            ..request.clone()
        };
        let now = self.now_ms();
        let updated = match case.workflow.as_deref() {
            None => {
                self.transition_unclassified(&mut tx, &case, request, actor, now)
                    .await?
            }
            Some(name) => {
                let workflow = self
                    .workflows
                    .get(name)
                    .ok_or_else(|| EngineError::UnknownWorkflow(name.to_string()))?;
                let history = self.history(&mut tx, case.id).await?;
                let plan =
                    machine::plan_transition(workflow, &case.state, request, actor, &history).map_err(|source| {
                        EngineError::Transition {
                            reference: case.reference.clone(),
                            source,
                        }
                    })?;
                let origin = self.origin_message(&mut tx, case.origin_message_id).await?;
                self.apply_plan(
                    &mut tx,
                    &case,
                    workflow,
                    &plan,
                    actor,
                    request.reason.as_deref(),
                    &request.recorded,
                    origin.1.as_deref(),
                    origin.0.as_deref(),
                    now,
                )
                .await?
            }
        };
        if let Some(original) = &original {
            storage::set_duplicate_of(&mut tx, case.id, original.id).await?;
        }
        tx.commit().await.context("committing a transition")?;
        self.wakers.wake_all();
        Ok(updated)
    }

    /// Gives a case to a member of staff (`assignee`: their id and address), or to no one: the
    /// version-checked update and its event in one transaction, like every case change.
    pub async fn assign(
        &self,
        reference: &str,
        assignee: Option<(i64, &str)>,
        actor: &Actor,
    ) -> Result<CaseRecord, EngineError> {
        let mut tx = self.db.begin_write().await.context("starting a transaction")?;
        let mut case = storage::case_by_reference(&mut tx, reference)
            .await?
            .ok_or_else(|| EngineError::CaseNotFound(reference.to_string()))?;
        let now = self.now_ms();
        let assignee_id = assignee.map(|(id, _)| id);
        if !storage::update_case_assignee(&mut tx, case.id, case.version, assignee_id, now).await? {
            return Err(EngineError::Conflict(case.reference.clone()));
        }
        let claimed = assignee.is_some_and(|(_, email)| email.eq_ignore_ascii_case(&actor.name));
        storage::append_event(
            &mut tx,
            case.id,
            &CaseEvent {
                reason: Some(
                    assignee
                        .map(|(_, email)| format!("to {email}"))
                        .unwrap_or_else(|| "unassigned".into()),
                ),
                ..CaseEvent::by(
                    &actor.name,
                    actor.role.as_str(),
                    if claimed { "claimed" } else { "assigned" },
                    now,
                )
            },
        )
        .await?;
        tx.commit().await.context("committing an assignment")?;
        case.assignee_id = assignee_id;
        case.version += 1;
        case.updated_at = now;
        Ok(case)
    }

    /// The Message-ID and automatic-mail marker of a case's first message, for threading and
    /// loop safety of the mail a transition sends.
    pub(crate) async fn origin_message(
        &self,
        conn: &mut AnyConnection,
        raw_message_id: i64,
    ) -> Result<(Option<String>, Option<String>), EngineError> {
        use sqlx::Row;
        let row = sqlx::query("SELECT message_id, automatic FROM raw_messages WHERE id = $1")
            .bind(raw_message_id)
            .fetch_optional(&mut *conn)
            .await
            .context("reading a case's first message")?;
        Ok(match row {
            Some(r) => (
                r.try_get(0).context("decoding a message")?,
                r.try_get(1).context("decoding a message")?,
            ),
            None => (None, None),
        })
    }

    async fn history(&self, conn: &mut AnyConnection, case_id: i64) -> Result<CaseHistory, EngineError> {
        let events = storage::events_for_case(conn, case_id).await?;
        Ok(CaseHistory {
            accepted_or_keyed_by: events
                .into_iter()
                .filter(|e| {
                    e.actor_role != "system" && (e.transition.as_deref() == Some("accept") || e.kind == "field_keyed")
                })
                .map(|e| e.actor)
                .collect(),
        })
    }

    async fn transition_unclassified(
        &self,
        conn: &mut AnyConnection,
        case: &CaseRecord,
        request: &TransitionRequest,
        actor: &Actor,
        now: i64,
    ) -> Result<CaseRecord, EngineError> {
        let allowed = || UNCLASSIFIED_EXITS.join(", ");
        if case.state != UNCLASSIFIED_STATE || !UNCLASSIFIED_EXITS.contains(&request.to.as_str()) {
            return Err(EngineError::Unclassified {
                reference: case.reference.clone(),
                allowed: allowed(),
            });
        }
        if !matches!(
            actor.role,
            ActorRole::Caseworker | ActorRole::Manager | ActorRole::Admin
        ) {
            return Err(EngineError::Transition {
                reference: case.reference.clone(),
                source: TransitionError::RoleNotAllowed {
                    role: actor.role.as_str().into(),
                    from: case.state.clone(),
                    to: request.to.clone(),
                    allowed_roles: "caseworker, manager".into(),
                },
            });
        }
        if request.reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
            return Err(EngineError::Transition {
                reference: case.reference.clone(),
                source: TransitionError::ReasonRequired { to: request.to.clone() },
            });
        }
        if !storage::update_case_state(conn, case.id, case.version, &request.to, &case.recorded, now).await? {
            return Err(EngineError::Conflict(case.reference.clone()));
        }
        storage::append_event(
            conn,
            case.id,
            &CaseEvent {
                at: now,
                actor: actor.name.clone(),
                actor_role: actor.role.as_str().into(),
                kind: "transition".into(),
                transition: Some(request.to.clone()),
                from_state: Some(case.state.clone()),
                to_state: Some(request.to.clone()),
                reason: request.reason.clone(),
                data: None,
            },
        )
        .await?;
        storage::cancel_pending_timers(conn, case.id, now, true).await?;
        storage::case_by_id(conn, case.id)
            .await?
            .ok_or_else(|| EngineError::CaseNotFound(case.reference.clone()))
    }

    /// Keys fields by hand (a printed or flattened form, or a correction), optionally putting
    /// an unclassified case into a workflow. Every changed field is logged with its old and new
    /// value, and the rules run again over the result.
    pub async fn key_fields(
        &self,
        reference: &str,
        workflow_name: Option<&str>,
        values: &BTreeMap<String, String>,
        actor: &Actor,
    ) -> Result<CaseRecord, EngineError> {
        let mut tx = self.db.begin_write().await.context("starting a transaction")?;
        let case = storage::case_by_reference(&mut tx, reference)
            .await?
            .ok_or_else(|| EngineError::CaseNotFound(reference.to_string()))?;
        if !["received", "needs_review"].contains(&case.state.as_str()) {
            return Err(EngineError::NotKeyable {
                reference: case.reference.clone(),
                state: case.state.clone(),
            });
        }
        let name = workflow_name
            .or(case.workflow.as_deref())
            .ok_or_else(|| EngineError::Unclassified {
                reference: case.reference.clone(),
                allowed: UNCLASSIFIED_EXITS.join(", "),
            })?;
        let workflow = self
            .workflows
            .get(name)
            .ok_or_else(|| EngineError::UnknownWorkflow(name.to_string()))?;
        for field in values.keys() {
            if workflow.field(field).is_none() {
                return Err(EngineError::UnknownField {
                    workflow: workflow.name.clone(),
                    field: field.clone(),
                });
            }
        }
        let now = self.now_ms();
        if case.workflow.as_deref() != Some(workflow.name.as_str()) {
            // Classifying (or re-classifying) a case changes which rules and roles apply to it:
            // a decision, so it is in the log like any other.
            storage::append_event(
                &mut tx,
                case.id,
                &CaseEvent {
                    reason: Some(format!(
                        "put into workflow {} (was {})",
                        workflow.name,
                        case.workflow.as_deref().unwrap_or("none")
                    )),
                    data: Some(serde_json::json!({ "old": case.workflow, "new": workflow.name }).to_string()),
                    ..CaseEvent::by(&actor.name, actor.role.as_str(), "workflow_changed", now)
                },
            )
            .await?;
        }
        let mut fields = case.fields.clone();
        for (field, new) in values {
            let old = fields.insert(field.clone(), new.clone());
            if old.as_deref() != Some(new.as_str()) {
                storage::append_event(
                    &mut tx,
                    case.id,
                    &CaseEvent {
                        at: now,
                        actor: actor.name.clone(),
                        actor_role: actor.role.as_str().into(),
                        kind: "field_keyed".into(),
                        transition: None,
                        from_state: None,
                        to_state: None,
                        reason: None,
                        data: Some(serde_json::json!({ "field": field, "old": old, "new": new }).to_string()),
                    },
                )
                .await?;
            }
        }
        let (sender_auth, sender) = self.origin_sender(&mut tx, case.origin_message_id).await?;
        let facts = Facts {
            workflow,
            fields: &fields,
            sender: sender.as_deref(),
            sender_auth: &sender_auth,
            today: self.today(),
        };
        let findings = policy::check(&facts, &self.config.policy);
        let ods = fields.get("org_ods_code").and_then(|c| OdsCode::parse(c));
        let org_name = fields.get("org_name").cloned();
        if !storage::update_case_fields(
            &mut tx,
            case.id,
            case.version,
            Some(&workflow.name),
            &fields,
            &findings,
            ods.as_ref().map(OdsCode::as_str),
            org_name.as_deref(),
            now,
        )
        .await?
        {
            return Err(EngineError::Conflict(case.reference.clone()));
        }
        tx.commit().await.context("committing keyed fields")?;
        let mut conn = self.db.pool.acquire().await.context("connecting")?;
        storage::case_by_id(&mut conn, case.id)
            .await?
            .ok_or_else(|| EngineError::CaseNotFound(case.reference.clone()))
    }

    async fn origin_sender(
        &self,
        conn: &mut AnyConnection,
        raw_message_id: i64,
    ) -> Result<(SenderAuth, Option<String>), EngineError> {
        use sqlx::Row;
        let row = sqlx::query("SELECT sender_auth, from_address FROM raw_messages WHERE id = $1")
            .bind(raw_message_id)
            .fetch_one(&mut *conn)
            .await
            .context("reading a case's first message")?;
        let auth_json: String = row.try_get(0).context("decoding a message")?;
        let auth = serde_json::from_str(&auth_json).unwrap_or(SenderAuth::Missing {
            reason: "no verdict stored".into(),
        });
        Ok((auth, row.try_get(1).context("decoding a message")?))
    }
}

/// "all checks passed", or the codes of what they found.
fn checks_summary(findings: &[Finding]) -> String {
    if findings.is_empty() {
        "all checks passed".to_string()
    } else {
        let codes: Vec<&str> = findings.iter().map(|f| f.code.as_str()).collect();
        format!("checks found: {}", codes.join(", "))
    }
}

/// The accept and authorise decisions people took since the case's current form arrived: a
/// replacement form makes them void.
fn decisions_since_last_form(events: &[CaseEvent]) -> Vec<String> {
    let since = events
        .iter()
        .rposition(|e| matches!(e.kind.as_str(), "created" | "form_resubmitted" | "classified"))
        .map(|i| i + 1)
        .unwrap_or(0);
    events[since..]
        .iter()
        .filter(|e| e.actor_role != "system" && matches!(e.transition.as_deref(), Some("accept" | "authorise")))
        .map(|e| {
            format!(
                "{} by {} ({})",
                e.transition.as_deref().unwrap_or_default(),
                e.actor,
                e.reason.as_deref().unwrap_or("no reason given")
            )
        })
        .collect()
}

/// Finds a workflow field in an extracted form: by its name (full, then last component), then
/// by each alias.
fn lookup<'f>(workflow: &WorkflowDef, extracted: &'f ExtractedForm, name: &str) -> Option<&'f pdf::PdfField> {
    let def = workflow.field(name)?;
    std::iter::once(&def.name)
        .chain(def.aliases.iter())
        .find_map(|n| extracted.get(n))
}

/// The workflow's fields, by their canonical names, from an extracted form.
pub fn map_fields(workflow: &WorkflowDef, extracted: &ExtractedForm) -> BTreeMap<String, String> {
    workflow
        .fields
        .iter()
        .filter_map(|def| {
            // A caseworker must see what is really there: a bidi override in a name or an
            // address is shown, not obeyed.
            let value = lookup(workflow, extracted, &def.name)?.value.as_deref()?;
            Some((def.name.clone(), crate::domain::reveal_hidden_characters(value)))
        })
        .collect()
}
