//! The per-case queries by name: each is keyed by one case (or its message) and must use an
//! index, which `tests/it/query_plans.rs` checks on both backends.

pub(crate) const CASE_BY_REFERENCE: &str = select_cases!("WHERE reference = $1");
/// The case page's case row: the case, its chain's length as recorded, its form's reading, its
/// assignee's address and the reference of the case its email named, in one read (the page
/// read each of the last four by id, one round trip each).
pub(crate) const CASE_FILE_ROW: &str = select_cases!(
    ", chain_seq, extraction,
     (SELECT u.email FROM users u WHERE u.id = cases.assignee_id) AS assignee_email,
     (SELECT named.reference FROM cases named WHERE named.id = cases.related_case_id) AS named_reference",
    "WHERE reference = $1"
);
pub(crate) const CASE_BY_ID: &str = select_cases!("WHERE id = $1");
pub(crate) const CASE_BY_FORM: &str = select_cases!("WHERE form_sha256 = $1 ORDER BY id LIMIT 1");
pub(crate) const CASES_FOR_MESSAGE: &str =
    select_cases!("WHERE id IN (SELECT case_id FROM case_messages WHERE raw_message_id = $1) ORDER BY id");
pub(crate) const RELATED_CASES: &str = select_cases!("WHERE related_case_id = $1 ORDER BY id LIMIT 100");
pub(crate) const EVENTS_FOR_CASE: &str = "SELECT at, actor, actor_role, kind, transition, from_state, to_state, reason, data FROM case_events WHERE case_id = $1 ORDER BY id";
pub(crate) const TIMERS_FOR_CASE: &str =
    "SELECT name, state, due_at, status FROM timers WHERE case_id = $1 ORDER BY id";
pub(crate) const OUTBOX_FOR_CASE: &str = "SELECT template, recipient, status, suppressed_reason, in_reply_to, created_at, last_error, context FROM outbox WHERE case_id = $1 ORDER BY id";
pub(crate) const MESSAGES_OF_CASE: &str = "SELECT m.id, cm.relation, m.from_address, m.subject, m.sent_at, m.received_at, m.raw, m.sender_auth, m.sha256 \
     FROM case_messages cm JOIN raw_messages m ON m.id = cm.raw_message_id WHERE cm.case_id = $1 ORDER BY m.received_at, m.id";
pub(crate) const CREDENTIALS_OF_CASE: &str = "SELECT name, sent_to, issued_at, expires_at, link_expires_at, shown_at,
        CAST(CASE WHEN sealed IS NULL THEN 0 ELSE 1 END AS BIGINT)
 FROM credentials WHERE case_id = $1 ORDER BY id";
pub(crate) const NOTES_FOR_CASE: &str =
    "SELECT author, body, created_at FROM case_notes WHERE case_id = $1 ORDER BY id";
pub(crate) const ORIGIN_MESSAGE: &str =
    "SELECT from_address, subject, sent_at, received_at, sender_auth, raw FROM raw_messages WHERE id = $1";
pub(crate) const EVENT_CHAIN_OF_CASE: &str = concat!(
    "SELECT ",
    stored_event_columns!(),
    " FROM case_events WHERE case_id = $1 ORDER BY id"
);
pub(crate) const CHAIN_LENGTH_OF_CASE: &str = "SELECT chain_seq FROM cases WHERE id = $1";
/// The lookups a group of forms makes (`records_of_codes`), in their one-code form: the code
/// widens `IN ($1)` to the group's codes (`in_list`), so the query checked is the query run.
pub(crate) const ORGANISATION_IN_REGISTRY: &str =
    "SELECT ods_code, name, gp_practice, roles, status, closed_on, region FROM ods_registry WHERE ods_code IN ($1)";
pub(crate) const SIGNATORIES_OF_ORGANISATION: &str = concat!(
    "SELECT ",
    signatory_columns!(),
    " FROM signatories WHERE active = 1 AND ods_code IN ($1) ORDER BY ods_code, role, name"
);
pub(crate) const FORM_READING_OF_CASE: &str = "SELECT extraction FROM cases WHERE id = $1";
pub(crate) const ATTACHMENTS_OF_MESSAGE: &str = "SELECT id, filename, claimed_type, detected_type, size_bytes FROM attachments WHERE raw_message_id = $1 ORDER BY id";
/// The attachments of every email of a case, in one read (a case page lists them all).
pub(crate) const ATTACHMENTS_OF_CASE: &str = "SELECT a.id, a.filename, a.claimed_type, a.detected_type, a.size_bytes, a.raw_message_id \
     FROM case_messages cm JOIN attachments a ON a.raw_message_id = cm.raw_message_id WHERE cm.case_id = $1 ORDER BY a.id";

/// What a per-case query is keyed by, so that a check can bind a sample key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaseKey {
    /// A row id (a case's, or its message's).
    Id,
    /// A case reference or a form's hash.
    Text,
}

/// Every query that reads one case's rows, by name. Each must find its rows through an index,
/// never by scanning a table that grows with the service's age (the outbox, the event log):
/// `tests/it/query_plans.rs` runs `EXPLAIN` on each, on both backends.
pub const PER_CASE_QUERIES: &[(&str, &str, CaseKey)] = &[
    ("case by reference", CASE_BY_REFERENCE, CaseKey::Text),
    ("case page's case row", CASE_FILE_ROW, CaseKey::Text),
    ("case by id", CASE_BY_ID, CaseKey::Id),
    ("case by form", CASE_BY_FORM, CaseKey::Text),
    ("cases of a message", CASES_FOR_MESSAGE, CaseKey::Id),
    ("related cases", RELATED_CASES, CaseKey::Id),
    ("events of a case", EVENTS_FOR_CASE, CaseKey::Id),
    ("timers of a case", TIMERS_FOR_CASE, CaseKey::Id),
    ("outbox of a case", OUTBOX_FOR_CASE, CaseKey::Id),
    ("messages of a case", MESSAGES_OF_CASE, CaseKey::Id),
    ("notes of a case", NOTES_FOR_CASE, CaseKey::Id),
    ("credentials of a case", CREDENTIALS_OF_CASE, CaseKey::Id),
    ("what was read from a case's form", FORM_READING_OF_CASE, CaseKey::Id),
    ("a case's event chain", EVENT_CHAIN_OF_CASE, CaseKey::Id),
    ("a case's chain length", CHAIN_LENGTH_OF_CASE, CaseKey::Id),
    (
        "a form's organisation in the registry",
        ORGANISATION_IN_REGISTRY,
        CaseKey::Text,
    ),
    (
        "signatories of a form's organisation",
        SIGNATORIES_OF_ORGANISATION,
        CaseKey::Text,
    ),
    ("a case's message", ORIGIN_MESSAGE, CaseKey::Id),
    ("attachments of a message", ATTACHMENTS_OF_MESSAGE, CaseKey::Id),
    ("attachments of a case's emails", ATTACHMENTS_OF_CASE, CaseKey::Id),
];
