//! Everything the case page shows about one case, read on one connection: the case, the email
//! that opened it and its attachments, its events, mail, timers, notes and credentials, who it is assigned
//! to, and the cases it is linked with. Every query here is keyed by the case and indexed
//! (`tests/it/query_plans.rs`).

use sqlx::AnyConnection;

use super::{AttachmentSummary, CaseNote, CaseRecord, OutboxRecord, StorageError, StoredMessage, TimerRecord};

/// One case and everything recorded about it.
pub struct CaseFile {
    pub case: CaseRecord,
    pub message: StoredMessage,
    pub attachments: Vec<AttachmentSummary>,
    /// Its events as its hash chain stores them: read once for both the timeline and the
    /// chain's check.
    pub chain: super::CaseChain,
    pub mail: Vec<OutboxRecord>,
    pub timers: Vec<TimerRecord>,
    pub notes: Vec<CaseNote>,
    /// The assignee's address.
    pub assignee: Option<String>,
    /// The case this one's email named but was not allowed to change.
    pub named_case: Option<String>,
    /// Cases opened by mail that named this one but was not allowed to change it.
    pub related: Vec<CaseRecord>,
    /// Every email linked to the case, oldest first, with its attachments.
    pub messages: Vec<super::CaseMessage>,
    /// The form's digital signatures and what was found of them.
    pub signatures: Vec<crate::pdf::SignatureInfo>,
    /// Credentials issued on the case (never their secrets).
    pub credentials: Vec<super::CredentialRecord>,
}

/// The case file of `reference`, if there is such a case.
pub async fn case_file(conn: &mut AnyConnection, reference: &str) -> Result<Option<CaseFile>, StorageError> {
    let Some(super::cases::CaseForPage {
        case,
        chain_length: recorded_length,
        signatures,
        assignee,
        named_case,
    }) = super::cases::case_for_page(conn, reference).await?
    else {
        return Ok(None);
    };
    let messages = super::messages_of_case(conn, case.id).await?;
    // The email that opened the case is one of its emails (linked as its origin): taken from
    // them, not read a second time.
    let (message, attachments) = match messages.iter().find(|m| m.id == case.origin_message_id) {
        Some(origin) => (
            StoredMessage {
                from_address: origin.from_address.clone(),
                subject: origin.subject.clone(),
                sent_at: origin.sent_at,
                received_at: origin.received_at,
                sender_auth_json: origin.sender_auth_json.clone(),
                raw: origin.raw.clone(),
            },
            origin.attachments.clone(),
        ),
        None => (
            super::stored_message(conn, case.origin_message_id).await?,
            super::attachments_of_message(conn, case.origin_message_id).await?,
        ),
    };
    let chain = super::CaseChain {
        events: super::chain_of(conn, case.id).await?,
        recorded_length,
    };
    let mail = super::outbox_for_case(conn, case.id).await?;
    let timers = super::timers_for_case(conn, case.id).await?;
    let notes = super::notes_for_case(conn, case.id).await?;
    let related = super::related_cases(conn, case.id).await?;
    let credentials = super::credentials_for_case(conn, case.id).await?;
    Ok(Some(CaseFile {
        case,
        message,
        attachments,
        chain,
        mail,
        timers,
        notes,
        assignee,
        named_case,
        related,
        messages,
        signatures,
        credentials,
    }))
}
