//! The states the engine itself moves cases between, named once. Every workflow file must
//! declare them (checked when it loads); everything else about a workflow is its own data.

/// A form has arrived and is being checked (the engine moves it on at once).
pub const RECEIVED: &str = "received";
/// Held for a caseworker: the checks found something, or the sender replied.
pub const NEEDS_REVIEW: &str = "needs_review";
/// The checks passed (or a caseworker accepted the case).
pub const VALIDATED: &str = "validated";
/// A caseworker asked the sender for something; a reply brings the case back for review.
pub const AWAITING_INFORMATION: &str = "awaiting_information";
/// Authorised: past this point a form never changes by mail.
pub const AUTHORISED: &str = "authorised";
/// The account exists.
pub const PROVISIONED: &str = "provisioned";
/// A case that repeats another: moving to it links the two (the form asks for the other's
/// reference). Optional: a workflow without it has no duplicates.
pub const DUPLICATE: &str = "duplicate";
/// Refused: its action is drawn as the warning it is. Optional, like `DUPLICATE`.
pub const REJECTED: &str = "rejected";

/// The states every workflow file must declare.
pub const REQUIRED_STATES: &[&str] = &[RECEIVED, VALIDATED, NEEDS_REVIEW, AUTHORISED, PROVISIONED];

/// The states every workflow of plain emails must declare: it is checked on arrival and
/// then held for a caseworker or passed.
pub const REQUIRED_EMAIL_STATES: &[&str] = &[RECEIVED, VALIDATED, NEEDS_REVIEW];

/// The states every workflow Countersign opens itself must declare: opened, then held for a
/// caseworker with what the job found.
pub const REQUIRED_OPENED_STATES: &[&str] = &[RECEIVED, NEEDS_REVIEW];

/// The states in which a caseworker may key or correct a case's fields by hand.
pub const KEYABLE_STATES: &[&str] = &[RECEIVED, NEEDS_REVIEW];

/// The state a freshly checked case moves to: validated when nothing was found, else held
/// for a caseworker.
pub fn state_after_checks(has_findings: bool) -> &'static str {
    if has_findings { NEEDS_REVIEW } else { VALIDATED }
}

/// Mail no workflow could take (no form, an unreadable one, an unknown one) opens an
/// unclassified case. It waits in [`NEEDS_REVIEW`] until a caseworker keys it into a workflow
/// or sends it to one of these final states, with a reason.
pub mod unclassified {
    use crate::workflow::ActorRole;

    /// Where an unclassified case waits.
    pub const STATE: &str = super::NEEDS_REVIEW;
    /// Where an unclassified case that asks for no work starts (a stray bounce or auto-reply).
    pub const CLOSED: &str = "closed";
    /// The final states a caseworker may send it to, with the labels the case page shows.
    pub const EXITS: &[(&str, &str)] = &[
        ("rejected", "Reject"),
        ("withdrawn", "Withdraw"),
        ("duplicate", "Attach to another case (a duplicate of it)"),
        (CLOSED, "Close"),
    ];
    /// Who may send it there.
    pub const BY: &[ActorRole] = &[ActorRole::Caseworker, ActorRole::Manager];

    /// The exit's state names, for messages.
    pub fn exit_names() -> String {
        EXITS.iter().map(|(state, _)| *state).collect::<Vec<_>>().join(", ")
    }
}
