//! An email in: parsed, its forms read and checked (before any write), then stored once and
//! its cases opened, found again, or changed, in one transaction. A mailbox drain prepares
//! the next email while it records this one, and records groups of emails in one commit.

use crate::domain::EventKind;
use std::collections::BTreeMap;

use chrono::Datelike;
use sqlx::AnyConnection;
use tracing::{info, instrument, warn};

use super::change::{self, Origin};
use super::classify::{FormAnalysis, PlainEmailAnalysis, Reading, checks_summary};
use super::{Engine, EngineError, MAX_PREPARE_ATTEMPTS, sla};
use crate::domain::{CaseRef, OdsCode};
use crate::mail::{self, ParsedEmail};
use crate::policy::{Finding, FindingCode};
use crate::replies;
use crate::storage::{self, CaseEvent, CaseRecord, QueryContext};
use crate::workflow::wellknown::{self, unclassified};

/// The write transaction of a group of emails, with the rows it holds back until the end
/// (see [`storage::Deferred`]): new cases' events, links, timers and mail.
pub(super) struct Recording<'t> {
    conn: &'t mut AnyConnection,
    deferred: storage::Deferred,
    /// The forms this transaction holds the lock of (see [`storage::lock_form`]).
    locked_forms: std::collections::BTreeSet<String>,
    /// The case each of the group's forms already has (or `None`), looked up once for the
    /// group and kept up to date as the group opens cases.
    form_cases: BTreeMap<String, Option<CaseRecord>>,
    /// Case numbers taken for the group and not yet used: (year, next, last).
    numbers: Option<(i32, i64, i64)>,
    /// Ids taken for the group's new cases and not yet used.
    case_ids: std::collections::VecDeque<i64>,
}

impl<'t> Recording<'t> {
    fn new(conn: &'t mut AnyConnection) -> Self {
        Recording {
            conn,
            deferred: storage::Deferred::default(),
            locked_forms: Default::default(),
            form_cases: BTreeMap::new(),
            numbers: None,
            case_ids: Default::default(),
        }
    }

    /// The case that already has this form, if any: from the group's lookup, else read.
    async fn case_with_form(&mut self, sha256: &str) -> Result<Option<CaseRecord>, EngineError> {
        if let Some(known) = self.form_cases.get(sha256) {
            return Ok(known.clone());
        }
        Ok(storage::case_by_form_sha256(self.conn, sha256).await?)
    }

    /// The next case number for `year`: from the group's reserve while it lasts.
    async fn next_case_number(&mut self, year: i32) -> Result<i64, EngineError> {
        if let Some((reserved_year, next, last)) = self.numbers
            && reserved_year == year
            && next <= last
        {
            self.numbers = Some((year, next + 1, last));
            return Ok(next);
        }
        Ok(storage::next_case_number(self.conn, year).await?)
    }

    /// Takes ids for `count` new cases at once.
    async fn reserve_case_ids(&mut self, count: usize) -> Result<(), EngineError> {
        self.case_ids.extend(storage::take_case_ids(self.conn, count).await?);
        Ok(())
    }

    /// The id of the next new case: from the group's reserve while it lasts. SQLite gives ids
    /// after the highest stored, so the cases held back are written before more are taken.
    async fn next_case_id(&mut self) -> Result<i64, EngineError> {
        if let Some(id) = self.case_ids.pop_front() {
            return Ok(id);
        }
        self.flushed().await?;
        Ok(storage::take_case_id(self.conn).await?)
    }

    /// Holds a new case back, to be stored with the group's others in one statement.
    fn hold_case(&mut self, case: storage::CaseToStore) {
        self.deferred.hold_case(case);
    }

    /// The transaction, for a reply: everything held is written, and the group's knowledge of
    /// which forms have cases is dropped (a reply's form can become its case's form).
    async fn for_reply(&mut self) -> Result<&mut AnyConnection, EngineError> {
        self.form_cases.clear();
        self.flushed().await
    }

    /// Takes `count` case numbers for the group at once.
    async fn reserve_case_numbers(&mut self, year: i32, count: i64) -> Result<(), EngineError> {
        if count > 1 {
            let last = storage::take_case_numbers(self.conn, year, count).await?;
            self.numbers = Some((year, last - count + 1, last));
        }
        Ok(())
    }

    /// Writes what is held and gives back the case numbers the group did not use: the
    /// transaction can commit.
    async fn finish(&mut self) -> Result<(), EngineError> {
        if let Some((year, next, last)) = self.numbers.take()
            && next <= last
        {
            storage::return_case_numbers(self.conn, year, next - 1).await?;
        }
        self.flushed().await?;
        Ok(())
    }

    /// Takes the locks of several forms' writers in one statement, once per transaction.
    async fn lock_forms(&mut self, sha256s: &[&str]) -> Result<(), EngineError> {
        let new: Vec<&str> = sha256s
            .iter()
            .copied()
            .filter(|sha256| !self.locked_forms.contains(*sha256))
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        storage::lock_forms(self.conn, &new).await?;
        self.locked_forms.extend(new.into_iter().map(str::to_string));
        Ok(())
    }

    /// Takes the lock of a form's writers, once per transaction.
    async fn lock_form(&mut self, sha256: &str) -> Result<(), EngineError> {
        self.lock_forms(&[sha256]).await
    }

    /// The transaction, for reads and writes that do not depend on the rows held back.
    fn conn(&mut self) -> &mut AnyConnection {
        self.conn
    }

    /// The transaction, with every row held back written: for what reads them.
    async fn flushed(&mut self) -> Result<&mut AnyConnection, EngineError> {
        storage::flush(self.conn, &mut self.deferred).await?;
        Ok(self.conn)
    }
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
    /// The workflow that took it as a plain email (no form), if one did.
    plain: Option<PlainEmailAnalysis>,
    /// The case the email names (by its headers, a bounce's returned message, or a reference
    /// in its subject), looked up before the write transaction.
    thread: Option<i64>,
    /// Its Message-ID was stored before, with other bytes: it is kept under a key of its own.
    message_id_reused: bool,
    /// Who sent it, as the receiving server's header and our own check decide together.
    sender_verdict: crate::dkim::SenderVerdict,
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

/// What the registry and the signatory register hold for the organisation `fields` name.
pub(crate) async fn records_for(
    conn: &mut AnyConnection,
    fields: &BTreeMap<String, String>,
) -> Result<(crate::registry::RegistryLookup, crate::signatories::RegisterLookup), EngineError> {
    match form_ods_code(fields) {
        Some(code) => Ok(storage::records_of(conn, &code).await?),
        None => Ok(Default::default()),
    }
}

/// The form's ODS code, when it names a well-formed one (upper case).
fn form_ods_code(fields: &BTreeMap<String, String>) -> Option<String> {
    fields
        .get("org_ods_code")
        .and_then(|c| crate::domain::OdsCode::parse(c))
        .map(|c| c.as_str().to_string())
}

/// How soon a sender whose DKIM key could not be fetched is checked again.
pub(crate) const SENDER_RECHECK_AFTER_MS: i64 = 10 * 60 * 1000;

impl PreparedEmail {
    /// The row that stores the message.
    fn new_raw_message<'a>(
        &'a self,
        raw: &'a [u8],
        source: &'a str,
        sender_auth_json: &'a str,
        now: i64,
    ) -> storage::NewRawMessage<'a> {
        let parsed = &self.parsed;
        storage::NewRawMessage {
            dedup_key: &self.dedup_key,
            message_id: parsed.message_id.as_deref(),
            sha256: &self.sha256,
            source,
            received_at: now,
            from_address: parsed.from_address.as_deref(),
            subject: parsed.subject.as_deref(),
            sent_at: parsed.date_ms,
            sender_auth_json,
            sender_recheck_at: matches!(self.sender_verdict.auth, mail::SenderAuth::Temporary { .. })
                .then_some(now + SENDER_RECHECK_AFTER_MS),
            automatic: parsed.automatic.as_deref(),
            raw,
        }
    }

    /// The rows that store its attachments, under the message's id.
    fn new_attachments(&self, raw_message_id: i64) -> Vec<storage::NewAttachment<'_>> {
        self.parsed
            .attachments
            .iter()
            .map(|attachment| storage::NewAttachment {
                raw_message_id,
                filename: attachment.filename.as_deref(),
                claimed_type: &attachment.claimed_type,
                detected_type: attachment.detected_type.as_deref(),
                sha256: &attachment.sha256,
                forwarded: attachment.forwarded,
                size_bytes: attachment.bytes.len(),
            })
            .collect()
    }
}

impl Engine {
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
                self.metrics.message("duplicate");
                return self.already_ingested(&mut conn, id).await;
            }
        }
        self.check_sender(raw, &mut prepared).await;
        prepared.analyses = self.analyse_attachments(&prepared.parsed).await;
        prepared.plain = self.analyse_plain_email(&prepared.parsed, &prepared.analyses);
        self.record(raw, prepared, source).await
    }

    /// Counts an attempt at preparing each of `raws`, before any starts, in one commit; says,
    /// for each, why it should be set aside instead, when earlier attempts never finished (the
    /// service died or hung on it) [`MAX_PREPARE_ATTEMPTS`] times. The transaction that
    /// records a message clears its count. One commit for a group, not one a message: on
    /// SQLite each would wait for the group being recorded beside it, and on PostgreSQL each
    /// is a flush of the write-ahead log.
    pub async fn guard_preparations(&self, raws: &[&[u8]]) -> Result<Vec<Option<String>>, EngineError> {
        let hashes: Vec<String> = raws.iter().map(|raw| mail::sha256_hex(raw)).collect();
        let mut distinct: Vec<&str> = hashes.iter().map(String::as_str).collect();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.db.begin_write().await.context("starting a transaction")?;
        let attempts = storage::note_prepare_attempts(&mut tx, &distinct, self.now_ms()).await?;
        let set_aside: Vec<&str> = distinct
            .iter()
            .copied()
            .filter(|sha256| attempts.get(*sha256).copied().unwrap_or(0) > MAX_PREPARE_ATTEMPTS)
            .collect();
        storage::clear_prepare_attempts_of(&mut tx, &set_aside).await?;
        tx.commit().await.context("committing the attempt counts")?;
        Ok(hashes
            .iter()
            .map(|sha256| {
                let tried = attempts.get(sha256).copied().unwrap_or(0);
                (tried > MAX_PREPARE_ATTEMPTS).then(|| {
                    format!(
                        "reading this message stopped the service {} times (a crash or a hang), so it was set aside rather than tried again",
                        tried - 1
                    )
                })
            })
            .collect())
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
        self.check_sender(raw, &mut prepared).await;
        prepared.analyses = self.analyse_attachments(&prepared.parsed).await;
        prepared.plain = self.analyse_plain_email(&prepared.parsed, &prepared.analyses);
        prepared
    }

    /// Our own check of the sender, on the bytes as they will be stored, put together with the
    /// receiving server's verdict; the email is then classified on the result.
    async fn check_sender(&self, raw: &[u8], prepared: &mut PreparedEmail) {
        let parsed = &prepared.parsed;
        let own = self
            .config
            .sender_checker
            .check(raw, parsed.from_domain.as_deref(), parsed.exchange_internal)
            .await;
        let verdict = crate::dkim::decide(&parsed.sender_auth, own, parsed.malformed.is_some());
        prepared.parsed.sender_auth = verdict.auth.clone();
        prepared.sender_verdict = verdict;
    }

    /// The parsed email, its SHA-256 and the key it is deduplicated by (its Message-ID, or its
    /// hash when it has none), with no forms read yet.
    fn digest(&self, raw: &[u8]) -> PreparedEmail {
        let parsed = mail::parse(raw, &self.config.mail);
        let (parsed_auth, parsed_malformed) = (parsed.sender_auth.clone(), parsed.malformed.is_some());
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
            plain: None,
            thread: None,
            message_id_reused: false,
            sender_verdict: crate::dkim::decide(&parsed_auth, crate::dkim::OwnCheck::default(), parsed_malformed),
        }
    }

    /// The second half of [`Engine::intake`]: stores the raw message (`raw` is what `prepared`
    /// was made from) and makes or updates its cases, in one transaction. A message already
    /// stored makes nothing new.
    pub async fn record(&self, raw: &[u8], prepared: PreparedEmail, source: &str) -> Result<IntakeReport, EngineError> {
        let mut reports = self.record_group(vec![(raw, prepared, source)]).await?;
        reports.pop().ok_or(EngineError::NotDurable { expected: 1, found: 0 })
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
            self.check_records_of_group(&mut conn, &mut emails).await?;
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
        let mut writes = Recording::new(&mut tx);
        writes.lock_forms(&forms).await?;
        // With the forms locked, which of them already have a case, in one query.
        writes.form_cases = forms.iter().map(|f| (f.to_string(), None)).collect();
        for (form, case) in storage::cases_by_form_sha256s(writes.conn(), &forms).await? {
            if let Some(slot @ None) = writes.form_cases.get_mut(&form) {
                *slot = Some(case);
            }
        }
        // At most one case per form, or one for an email without any: numbered in one go.
        let cases_at_most: usize = emails.iter().map(|(_, p, _)| p.analyses.len().max(1)).sum();
        writes
            .reserve_case_numbers(self.clock.now().year(), cases_at_most as i64)
            .await?;
        writes.reserve_case_ids(cases_at_most).await?;
        let mut reports = Vec::with_capacity(emails.len());
        let stored = self.store_messages(&mut writes, &emails).await?;
        for ((raw, prepared, source), stored) in emails.into_iter().zip(stored) {
            reports.push(self.record_in(&mut writes, raw, prepared, source, stored).await?);
        }
        writes.finish().await?;
        tx.commit().await.context("committing ingested messages")?;
        self.db.checkpoint_soon();
        self.confirm_stored(&reports).await?;
        self.recorded(&reports);
        Ok(reports)
    }

    /// Records prepared messages (`ready` holds each one's raw bytes and source) in one
    /// transaction or, if that fails, one at a time, so that one bad message holds up no other:
    /// one result per message, in order. The one-at-a-time path prepares each message again,
    /// because the failed transaction consumed the prepared forms (a rare path).
    pub async fn record_batch(
        &self,
        ready: &[(Vec<u8>, String)],
        prepared: Vec<PreparedEmail>,
    ) -> Vec<Result<IntakeReport, EngineError>> {
        if ready.is_empty() {
            return Vec::new();
        }
        let group = ready
            .iter()
            .zip(prepared)
            .map(|((raw, source), email)| (raw.as_slice(), email, source.as_str()))
            .collect();
        match self.record_group(group).await {
            Ok(reports) => reports.into_iter().map(Ok).collect(),
            Err(error) => {
                warn!(error = %error, messages = ready.len(), "recording a group failed: recording its messages one at a time");
                let mut one_by_one = Vec::with_capacity(ready.len());
                for (raw, source) in ready {
                    let email = self.prepare(raw).await;
                    one_by_one.push(self.record(raw, email, source).await);
                }
                one_by_one
            }
        }
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
        for report in reports {
            self.metrics.message(if report.already_ingested {
                "duplicate"
            } else {
                "ingested"
            });
        }
        for report in reports.iter().filter(|r| !r.already_ingested) {
            for outcome in &report.cases {
                info!(reference = %outcome.reference, raw_message_id = report.raw_message_id, state = %outcome.state, findings = ?outcome.finding_codes, "case recorded");
            }
        }
    }

    /// Records one prepared email inside the caller's transaction `tx` (which commits it).
    /// Stores a group's messages and their attachments with one statement per table: for
    /// each message, in order, its id and its attachments' ids, or `None` when its dedup key
    /// is taken (a redelivery, or a reused Message-ID), which [`Engine::record_in`] looks at
    /// closer. Their prepare attempts are cleared first: recorded (or found already recorded),
    /// they no longer count as tries that never ended.
    async fn store_messages(
        &self,
        w: &mut Recording<'_>,
        emails: &[(&[u8], PreparedEmail, &str)],
    ) -> Result<Vec<Option<(i64, Vec<i64>)>>, EngineError> {
        let hashes: Vec<&str> = emails.iter().map(|(_, p, _)| p.sha256.as_str()).collect();
        storage::clear_prepare_attempts_of(w.conn(), &hashes).await?;
        let now = self.now_ms();
        let auth: Vec<String> = emails.iter().map(|(_, p, _)| p.sender_verdict.to_json()).collect();
        let messages: Vec<storage::NewRawMessage<'_>> = emails
            .iter()
            .zip(&auth)
            .map(|((raw, prepared, source), auth_json)| prepared.new_raw_message(raw, source, auth_json, now))
            .collect();
        let ids = storage::insert_raw_messages(w.conn(), &messages).await?;
        let attachments: Vec<storage::NewAttachment<'_>> = emails
            .iter()
            .zip(&ids)
            .filter_map(|((_, prepared, _), id)| id.map(|id| prepared.new_attachments(id)))
            .flatten()
            .collect();
        let mut attachment_ids = storage::insert_attachments(w.conn(), &attachments).await?.into_iter();
        Ok(emails
            .iter()
            .zip(ids)
            .map(|((_, prepared, _), id)| {
                id.map(|id| {
                    let count = prepared.parsed.attachments.len();
                    (id, attachment_ids.by_ref().take(count).collect())
                })
            })
            .collect())
    }

    /// Records one prepared email inside the group's transaction: `stored` is what
    /// [`Engine::store_messages`] stored of it. Every log line while it does carries the
    /// message's Message-ID and where it came from.
    #[instrument(skip_all, fields(message_id = prepared.parsed.message_id.as_deref().unwrap_or("-"), source = %source))]
    async fn record_in(
        &self,
        w: &mut Recording<'_>,
        raw: &[u8],
        mut prepared: PreparedEmail,
        source: &str,
        stored: Option<(i64, Vec<i64>)>,
    ) -> Result<IntakeReport, EngineError> {
        if let Some((raw_message_id, attachment_ids)) = stored {
            return self.open_cases(w, raw_message_id, attachment_ids, prepared).await;
        }
        let now = self.now_ms();
        let auth_json = prepared.sender_verdict.to_json();
        // The key was taken: a redelivery, or a reused Message-ID with other bytes, kept under
        // a key of its own.
        let raw_message_id = loop {
            let key_before = prepared.dedup_key.clone();
            match Self::stored_before(w.conn(), &mut prepared).await? {
                Some(id) => return self.already_ingested(w.flushed().await?, id).await,
                // The key changed (a reused Message-ID): insert under the new one.
                None if prepared.dedup_key != key_before => {}
                None => return Err(EngineError::CaseNotFound(key_before)),
            }
            let new_message = prepared.new_raw_message(raw, source, &auth_json, now);
            if let Some(id) = storage::insert_raw_message(w.conn(), &new_message).await? {
                break id;
            }
        };
        let attachments = prepared.new_attachments(raw_message_id);
        let attachment_ids = storage::insert_attachments(w.conn(), &attachments).await?;
        self.open_cases(w, raw_message_id, attachment_ids, prepared).await
    }

    /// Opens, finds or changes the cases of a stored message.
    async fn open_cases(
        &self,
        w: &mut Recording<'_>,
        raw_message_id: i64,
        attachment_ids: Vec<i64>,
        prepared: PreparedEmail,
    ) -> Result<IntakeReport, EngineError> {
        let now = self.now_ms();
        let PreparedEmail {
            parsed,
            sha256: _,
            dedup_key: _,
            analyses,
            plain,
            thread,
            message_id_reused,
            sender_verdict: _,
        } = prepared;

        if let Some(why) = &parsed.bounce {
            let outcome = self.record_bounce(w, thread, &parsed, raw_message_id, why, now).await?;
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
            Some(id) => storage::case_by_id(w.conn(), id).await?,
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
                        .attach_reply(
                            w.for_reply().await?,
                            case,
                            &parsed,
                            raw_message_id,
                            analyses,
                            &attachment_ids,
                            now,
                        )
                        .await?;
                    outcomes.push(outcome);
                    for (form, why) in leftovers {
                        let related = Related {
                            case_id,
                            reference: reference.clone(),
                            why,
                        };
                        outcomes.push(
                            self.open_form_case(w, &parsed, raw_message_id, &attachment_ids, form, Some(&related), now)
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
        if let Some(plain) = plain.filter(|_| forms.is_empty() && others.is_empty()) {
            // A plain email a workflow takes (a support request): a case of that workflow.
            let mut findings = plain.findings;
            findings.extend(about_the_email.iter().cloned());
            findings.extend(related.as_ref().and_then(Related::finding));
            let why = plain.classification.as_ref().map(|c| match &c.class {
                Some(class) => format!("sorted as {class} ({})", c.evidence.join("; ")),
                None if c.evidence.is_empty() => "it fits none of the known problems".to_string(),
                None => format!("no single problem fits best ({})", c.evidence.join("; ")),
            });
            let email = Reading {
                workflow: Some(plain.workflow),
                fields: plain.fields,
                extraction: None,
                findings,
            };
            outcomes.push(
                self.create_form_case(w, &parsed, raw_message_id, None, email, related.as_ref(), why, now)
                    .await?,
            );
        } else if forms.is_empty() {
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
                unclassified::CLOSED
            } else {
                unclassified::STATE
            };
            let form_attachment = others.first().map(|a| a.attachment_index);
            let outcome = self
                .create_unclassified_case(
                    w,
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
                    self.open_form_case(w, &parsed, raw_message_id, &attachment_ids, form, related.as_ref(), now)
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
        w: &mut Recording<'_>,
        thread: Option<i64>,
        parsed: &ParsedEmail,
        raw_message_id: i64,
        why: &str,
        now: i64,
    ) -> Result<CaseOutcome, EngineError> {
        let case = match thread {
            Some(id) => storage::case_by_id(w.conn(), id).await?,
            None => None,
        };
        if let Some(case) = case {
            let mut noted = change::changeset(&case, now);
            noted.link_messages.push((raw_message_id, "bounce"));
            noted.events.push(CaseEvent {
                reason: Some(why.to_string()),
                data: Some(serde_json::json!({ "raw_message_id": raw_message_id }).to_string()),
                ..CaseEvent::by(
                    parsed.from_address.as_deref().unwrap_or("a mail system"),
                    "sender",
                    EventKind::DeliveryReportReceived,
                    now,
                )
            });
            self.apply_deferred(w, &case, noted).await?;
            return Ok(self.outcome(&case, None));
        }
        let finding = Finding::new(
            FindingCode::DeliveryReport,
            format!("A bounce or delivery report ({why}) that matched none of our cases. It needs no action."),
        );
        self.create_unclassified_case(
            w,
            parsed,
            raw_message_id,
            None,
            vec![finding],
            unclassified::CLOSED,
            None,
            now,
        )
        .await
    }

    /// A new case for one form: linked to the case that already has this exact PDF, or made.
    #[allow(clippy::too_many_arguments)]
    async fn open_form_case(
        &self,
        w: &mut Recording<'_>,
        parsed: &ParsedEmail,
        raw_message_id: i64,
        attachment_ids: &[i64],
        mut form: FormAnalysis,
        related: Option<&Related>,
        now: i64,
    ) -> Result<CaseOutcome, EngineError> {
        let attachment = &parsed.attachments[form.attachment_index];
        let attachment_id = attachment_ids[form.attachment_index];
        w.lock_form(&attachment.sha256).await?;
        if let Some(original) = w.case_with_form(&attachment.sha256).await? {
            return self.link_duplicate(w, &original, raw_message_id, now).await;
        }
        form.findings.extend(related.and_then(Related::finding));
        self.create_form_case(
            w,
            parsed,
            raw_message_id,
            Some((attachment_id, &attachment.sha256)),
            form.into(),
            related,
            None,
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

    /// [`Engine::apply`], holding back the rows nothing in the group reads.
    async fn apply_deferred(
        &self,
        w: &mut Recording<'_>,
        case: &CaseRecord,
        change: storage::CaseChangeset,
    ) -> Result<CaseRecord, EngineError> {
        let change = self.closing_clears_due_time(change);
        let after = change::after(case, &change);
        storage::apply_change_deferred(w.conn, change, &mut w.deferred).await?;
        Ok(after)
    }

    pub(super) fn outcome(&self, case: &CaseRecord, duplicate_of: Option<String>) -> CaseOutcome {
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
        let form_ids: Vec<String> = self
            .workflows
            .form_workflows()
            .filter_map(|w| w.form_id().map(str::to_string))
            .collect();
        for (index, attachment) in parsed
            .attachments
            .iter()
            .enumerate()
            .filter(|(_, a)| a.looks_like_pdf())
        {
            let started = std::time::Instant::now();
            let result = self
                .config
                .pdf_reader
                .extract(attachment.bytes.clone(), form_ids.clone(), self.config.limits)
                .await;
            self.metrics
                .extraction(started.elapsed().as_secs_f64(), result.is_err());
            let filename = attachment
                .filename
                .clone()
                .unwrap_or_else(|| "unnamed attachment".into());
            analyses.push(self.analyse_form(index, &filename, result, parsed));
        }
        analyses
    }

    /// Our records' word on every classified form of a group: the organisation registry on
    /// its organisation, the signatory register on its signatory, looked up for the whole group
    /// in three queries. A lookup that fails fails the group (its mail is kept and tried
    /// again): no form is judged without them.
    async fn check_records_of_group(
        &self,
        conn: &mut AnyConnection,
        emails: &mut [(&[u8], PreparedEmail, &str)],
    ) -> Result<(), EngineError> {
        let codes: Vec<String> = emails
            .iter()
            .flat_map(|(_, p, _)| p.analyses.iter())
            .filter(|a| a.workflow.is_some())
            .map(|a| &a.fields)
            .chain(
                emails
                    .iter()
                    .filter_map(|(_, p, _)| p.plain.as_ref().map(|plain| &plain.fields)),
            )
            .filter_map(form_ods_code)
            .collect();
        let found = storage::records_of_codes(conn, &codes).await?;
        for prepared in emails.iter_mut().map(|(_, p, _)| p) {
            let sender = prepared.parsed.from_address.clone();
            let Some(plain) = prepared.plain.as_mut() else {
                continue;
            };
            let Some(workflow) = self.workflows.get(&plain.workflow) else {
                continue;
            };
            let (registry, register) = form_ods_code(&plain.fields)
                .and_then(|code| found.get(&code).cloned())
                .unwrap_or_default();
            // A request by email from a signatory we know: the case names them as its form would.
            if workflow.email_checks.sender_is_signatory
                && let Some(known) = crate::policy::sender_in_register(sender.as_deref(), &register)
            {
                let s = &workflow.signatories;
                plain.fields.insert(s.name_field.clone(), known.name.clone());
                plain.fields.insert(s.role_field.clone(), known.role.clone());
                plain
                    .fields
                    .insert(s.email_field.clone(), sender.clone().unwrap_or_default());
            }
            crate::policy::check_plain_email_against_records(
                workflow,
                &plain.fields,
                sender.as_deref(),
                &registry,
                &register,
                self.today(),
                &mut plain.findings,
            );
        }
        for analysis in emails.iter_mut().flat_map(|(_, p, _)| p.analyses.iter_mut()) {
            let Some(workflow) = analysis.workflow.as_deref().and_then(|w| self.workflows.get(w)) else {
                continue;
            };
            let (registry, register) = form_ods_code(&analysis.fields)
                .and_then(|code| found.get(&code).cloned())
                .unwrap_or_default();
            crate::policy::check_against_registry(
                workflow,
                &analysis.fields,
                &registry,
                self.today(),
                &mut analysis.findings,
            );
            crate::policy::check_against_register(workflow, &analysis.fields, &register, &mut analysis.findings);
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn create_unclassified_case(
        &self,
        w: &mut Recording<'_>,
        parsed: &ParsedEmail,
        raw_message_id: i64,
        attachment_id: Option<i64>,
        findings: Vec<Finding>,
        state: &str,
        related: Option<&Related>,
        now: i64,
    ) -> Result<CaseOutcome, EngineError> {
        let reference = self.next_reference(w).await?;
        let fields = BTreeMap::new();
        // A case that starts closed (a bounce with no case) asks for no work and has no SLA.
        let open = state == unclassified::STATE;
        let id = w.next_case_id().await?;
        let new_case = storage::NewCase {
            organisation: None,
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
            version: 1,
        };
        let case = new_case.record(id);
        w.hold_case(new_case.to_store(case.clone()));
        let codes: Vec<&str> = findings.iter().map(|f| f.code.as_str()).collect();
        let mut opened = change::changeset(&case, now);
        opened.link_messages.push((raw_message_id, "origin"));
        opened.events.push(CaseEvent {
            to_state: Some(state.into()),
            reason: Some(format!(
                "no workflow could be found for this email ({})",
                codes.join(", ")
            )),
            ..CaseEvent::system(EventKind::Created, now)
        });
        self.apply_deferred(w, &case, opened).await?;
        Ok(CaseOutcome {
            reference: reference.to_string(),
            workflow: None,
            state: state.into(),
            finding_codes: codes.into_iter().map(str::to_string).collect(),
            duplicate_of: None,
        })
    }

    async fn next_reference(&self, w: &mut Recording<'_>) -> Result<CaseRef, EngineError> {
        let year = self.clock.now().year();
        let number = w.next_case_number(year).await?;
        Ok(CaseRef::new(year, number))
    }

    #[allow(clippy::too_many_arguments)]
    async fn create_form_case(
        &self,
        w: &mut Recording<'_>,
        parsed: &ParsedEmail,
        raw_message_id: i64,
        form_file: Option<(i64, &str)>,
        form: Reading,
        related: Option<&Related>,
        sorted: Option<String>,
        now: i64,
    ) -> Result<CaseOutcome, EngineError> {
        let workflow = self.workflow_named(form.workflow.as_deref())?;
        let reference = self.next_reference(w).await?;
        let ods = form.fields.get("org_ods_code").and_then(|c| OdsCode::parse(c));
        let org_name = form
            .fields
            .get("org_name")
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty());
        let extraction_json = form.extraction.as_ref().and_then(|e| serde_json::to_string(e).ok());
        let initial = workflow.initial_state().name.clone();
        let organisation = match (&ods, &org_name) {
            (Some(ods), Some(name)) => Some(storage::NewOrganisation {
                ods_code: ods.as_str().to_string(),
                name: name.clone(),
                kind: if ods.is_gp_practice() { "gp_practice" } else { "other" },
            }),
            _ => None,
        };
        let new_case = storage::NewCase {
            reference: reference.as_str(),
            workflow: Some(&workflow.name),
            state: &initial,
            fields: &form.fields,
            extraction_json: extraction_json.as_deref(),
            findings: &form.findings,
            org_ods_code: ods.as_ref().map(OdsCode::as_str),
            org_name: org_name.as_deref(),
            organisation,
            sender: parsed.from_address.as_deref(),
            origin_message_id: raw_message_id,
            form_attachment_id: form_file.map(|(id, _)| id),
            form_sha256: form_file.map(|(_, sha256)| sha256),
            related_case_id: related.map(|r| r.case_id),
            now,
            due_at: Some(self.working_days_from_now(workflow.sla.target_working_days)),
            version: 1,
        };
        // Checks passed: validated. Findings: held for a caseworker. The opening, the move and
        // the SLA timers are one change, planned before the case is stored so that it is
        // stored in the state the checks put it in.
        let origin = Origin {
            message_id: parsed.message_id.clone(),
            automatic: parsed.automatic.clone(),
            sender_auth: parsed.sender_auth.clone(),
        };
        let to = wellknown::state_after_checks(!form.findings.is_empty());
        let arrived = new_case.record(w.next_case_id().await?);
        let mut opened = self.plan_system_move(&arrived, workflow, to, &checks_summary(&form.findings), &origin)?;
        // The case is new: it has no timers to cancel yet.
        opened.cancel_timers = storage::CancelTimers::default();
        opened.link_messages.push((raw_message_id, "origin"));
        opened.events.insert(
            0,
            CaseEvent {
                to_state: Some(initial.clone()),
                reason: Some({
                    let sender = parsed.from_address.as_deref().unwrap_or("an unknown sender");
                    // What arrived, not what the workflow could take: a form workflow's request
                    // may come by plain email.
                    match (form_file, workflow.form_id(), sorted) {
                        (Some(_), Some(form_id), _) => format!("form {form_id} received from {sender}"),
                        (_, _, Some(sorted)) => format!("email received from {sender}; {sorted}"),
                        _ => format!("email received from {sender}"),
                    }
                }),
                ..CaseEvent::system(EventKind::Created, now)
            },
        );
        // The SLA timers belong to the case, not to a state: they run until it is closed,
        // pausing while the sender has the ball.
        opened
            .arm_timers
            .extend(sla::timers(self.when(), workflow, workflow.sla.target_working_days));
        // The case is stored as the move leaves it (one row written, no update after), with
        // the move's events, timers and mail held beside it.
        let mut opened = self.closing_clears_due_time(opened);
        let case = change::after(&arrived, &opened);
        opened.columns = storage::CaseColumns::default();
        w.hold_case(new_case.to_store(case.clone()));
        if let Some((_, form_sha256)) = form_file {
            w.form_cases.insert(form_sha256.to_string(), Some(case.clone()));
        }
        let case = self.apply_deferred(w, &case, opened).await?;
        Ok(self.outcome(&case, None))
    }

    async fn link_duplicate(
        &self,
        w: &mut Recording<'_>,
        original: &CaseRecord,
        raw_message_id: i64,
        now: i64,
    ) -> Result<CaseOutcome, EngineError> {
        let mut noted = change::changeset(original, now);
        noted.link_messages.push((raw_message_id, "duplicate"));
        noted.events.push(CaseEvent {
            reason: Some("the same PDF arrived again in another email".into()),
            data: Some(serde_json::json!({ "raw_message_id": raw_message_id }).to_string()),
            ..CaseEvent::system(EventKind::DuplicateReceived, now)
        });
        self.apply_deferred(w, original, noted).await?;
        Ok(self.outcome(original, Some(original.reference.clone())))
    }
}
