//! Cases Countersign opens itself, not from an email: an organisation in the Open Exeter
//! account register none of whose Primary Users can sign in gets a case in the workflow that
//! declares `opened_by = "coverage_check"`, for PCSE to restore access before its staff are
//! locked out.
//!
//! The case needs an email to stand on (every case has one): Countersign writes a note of
//! what it found, stored as a message from itself (source `system`, never read from a
//! mailbox, so nobody can send one). The occurrence is claimed, the note stored, the case
//! opened with its finding, events and timers, in one transaction: the same gap opens one case
//! however often the job runs, on however many instances.

use std::collections::BTreeMap;

use super::change::Origin;
use super::{Engine, EngineError, sla};
use crate::accounts::CoverageGap;
use crate::domain::{EventKind, OdsCode};
use crate::mail::SenderAuth;
use crate::policy::{Finding, FindingCode};
use crate::storage::{self, CaseEvent, CaseRecord, QueryContext};
use crate::workflow::{OpenedBy, wellknown};

/// How Countersign's own notes name their sender's check on the case page.
const OUR_OWN: &str = "written by Countersign itself";

impl Engine {
    /// Opens a coverage case for `gap`, unless its occurrence opened one before (or no
    /// workflow takes such cases): the case, or None.
    pub async fn open_coverage_case(&self, gap: &CoverageGap) -> Result<Option<CaseRecord>, EngineError> {
        let Some(workflow) = self
            .workflows()
            .iter()
            .find(|w| w.recognise.opened_by == Some(OpenedBy::CoverageCheck))
        else {
            return Ok(None);
        };
        let now = self.now_ms();
        let mut tx = self.db.begin_write().await.context("starting a coverage case")?;
        if !storage::claim_notice(&mut tx, &gap.key, &gap.ods_code, now).await? {
            return Ok(None);
        }
        let who: Vec<String> = gap
            .primary_users
            .iter()
            .map(|(id, why)| format!("{id} ({why})"))
            .collect();
        let subject = format!("No Primary User of {} can sign in to Open Exeter", gap.ods_code);
        let body = format!(
            "By the Open Exeter account register, none of the Primary Users of organisation {} can sign in:\r\n\r\n{}\r\n\r\nNobody there can manage their colleagues' accounts. Restore access before its staff are locked out.\r\n",
            gap.ods_code,
            who.iter().map(|w| format!("- {w}\r\n")).collect::<String>()
        );
        let from = self.config.mail.our_addresses.first().cloned().unwrap_or_default();
        let raw = format!(
            "From: Countersign <{from}>\r\nTo: {from}\r\nSubject: {subject}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}"
        );
        let sender_auth = SenderAuth::Pass { method: OUR_OWN.into() };
        let auth_json = serde_json::to_string(&sender_auth).unwrap_or_default();
        let dedup = format!("system:{}", gap.key);
        let sha256 = crate::mail::sha256_hex(raw.as_bytes());
        let message_id = storage::insert_raw_message(
            &mut tx,
            &storage::NewRawMessage {
                dedup_key: &dedup,
                message_id: None,
                sha256: &sha256,
                source: "system",
                received_at: now,
                from_address: Some(&from),
                subject: Some(&subject),
                sent_at: Some(now),
                sender_auth_json: &auth_json,
                sender_recheck_at: None,
                automatic: None,
                raw: raw.as_bytes(),
            },
        )
        .await?
        .ok_or_else(|| EngineError::PreparationFailed(format!("the note {dedup} was stored before")))?;

        let fields: BTreeMap<String, String> = [
            ("org_ods_code".to_string(), gap.ods_code.clone()),
            ("primary_users".to_string(), who.join("; ")),
            ("contact".to_string(), gap.contact.clone().unwrap_or_default()),
        ]
        .into_iter()
        .filter(|(name, value)| workflow.field(name).is_some() && !value.is_empty())
        .collect();
        let findings = vec![Finding::on_field(
            FindingCode::PrimaryUsersLapsed,
            "org_ods_code",
            format!(
                "None of the {} Primary User(s) of {} can sign in.",
                who.len(),
                gap.ods_code
            ),
        )];
        let reference = {
            let year = chrono::Datelike::year(&self.clock.now());
            crate::domain::CaseRef::new(year, storage::next_case_number(&mut tx, year).await?)
        };
        let initial = workflow.initial_state().name.clone();
        let ods = OdsCode::parse(&gap.ods_code);
        let new_case = storage::NewCase {
            reference: reference.as_str(),
            workflow: Some(&workflow.name),
            state: &initial,
            fields: &fields,
            extraction_json: None,
            findings: &findings,
            org_ods_code: ods.as_ref().map(OdsCode::as_str),
            org_name: None,
            organisation: None,
            // Mail a caseworker sends from the case goes to a Primary User, who can still read it.
            sender: gap.contact.as_deref(),
            origin_message_id: message_id,
            form_attachment_id: None,
            form_sha256: None,
            related_case_id: None,
            now,
            due_at: Some(self.working_days_from_now(workflow.sla.target_working_days)),
            version: 1,
        };
        let case = new_case.record(storage::take_case_id(&mut tx).await?);
        storage::store_cases(&mut tx, &[new_case.to_store(case.clone())]).await?;
        let origin = Origin {
            message_id: None,
            automatic: None,
            sender_auth,
        };
        let mut opened = self.plan_system_move(
            &case,
            workflow,
            wellknown::NEEDS_REVIEW,
            &format!("opened by the account register check: {}", who.join("; ")),
            &origin,
        )?;
        opened.cancel_timers = storage::CancelTimers::default();
        opened.link_messages.push((message_id, "origin"));
        opened.events.insert(
            0,
            CaseEvent {
                to_state: Some(initial),
                reason: Some(subject),
                ..CaseEvent::system(EventKind::Created, now)
            },
        );
        opened
            .arm_timers
            .extend(sla::timers(self.when(), workflow, workflow.sla.target_working_days));
        let case = self.apply(&mut tx, &case, opened).await?;
        tx.commit().await.context("committing a coverage case")?;
        self.wakers.wake_all();
        Ok(Some(case))
    }
}
