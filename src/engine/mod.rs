//! The engine: where mail, PDFs, rules and the state machine meet storage.
//!
//! Every change to a case (its state, its event-log entry, its timers and its outbound mail)
//! commits in one transaction, so a crash leaves either all of it or none of it.

use std::sync::Arc;

use chrono::{DateTime, Local, NaiveDate};

use crate::calendar::WorkingCalendar;
use crate::mail::MailSettings;
use crate::pdf::{self, ExtractLimits};
use crate::policy::PolicySettings;
use crate::storage::{Db, StorageError};
use crate::workflow::{TransitionError, WorkflowDef, WorkflowSet};

/// The Open Exeter account register, imported from its CSV.
pub mod accounts;
/// The change path: commands planned (pure) into one changeset, written in one transaction.
pub mod change;
/// What a PDF attachment is: which workflow's form, its fields, and what the rules find. Pure.
pub mod classify;
pub mod credentials;
/// An email in: stored once, its cases opened (or found again), in one transaction.
pub mod intake;
/// The mail a change sends, composed as data. Pure.
pub mod notify;
pub mod opened;
/// Mail that names a case: noted, its forms replacing or classifying the case's.
pub mod replies;
/// Checking again a sender whose DKIM key could not be fetched when the email came.
pub mod sender_recheck;
/// The SLA clock: at-risk and breach timers, paused while the sender has the ball. Pure.
pub mod sla;
/// Firing a due timer: its mail or its transition, through the change path.
pub mod timers;

pub use change::Origin;
pub use classify::map_fields;
pub use intake::{CaseOutcome, IntakeReport, PreparedEmail};
pub use notify::Notification;
pub use sla::{SLA_AT_RISK, SLA_BREACHED};
pub use timers::{FiredTimer, TimerRecipients};

/// How many times a message may be found half-prepared (the service died or hung on it)
/// before it is set aside.
pub const MAX_PREPARE_ATTEMPTS: i64 = 3;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Storage(StorageError),
    #[error("the database reported a commit, but only {found} of its {expected} message(s) can be read back")]
    NotDurable { expected: usize, found: usize },
    #[error("no case {0}")]
    CaseNotFound(String),
    #[error("preparing a message failed: {0}")]
    PreparationFailed(String),
    #[error(transparent)]
    AccountFile(#[from] crate::accounts::AccountFileError),
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
    #[error("A case cannot be a duplicate of itself: give the reference of the earlier case ({0} is this one)")]
    DuplicateOfItself(String),
    #[error("no workflow named `{0}`")]
    UnknownWorkflow(String),
    #[error(
        "case {reference} has no workflow yet, so it can only be {allowed}; key its fields against a workflow first"
    )]
    Unclassified { reference: String, allowed: String },
    #[error("case {reference} already has its form (or is closed): there is no form to ask for")]
    NoFormToAskFor { reference: String },
    #[error("case {reference} is {state}; fields can only be keyed while it is received or needs review")]
    NotKeyable { reference: String, state: String },
    #[error(
        "case {reference} has no problem chosen, so there is no reply to send: choose the problem first (or write the reply as a note and close the case)"
    )]
    NoReplyChosen { reference: String },
    #[error("workflow `{workflow}` has no field `{field}`")]
    UnknownField { workflow: String, field: String },
    #[error(
        "Say how you verified the signatory (for example: phoned the practice on its listed number and spoke to them)"
    )]
    VerificationUnexplained,
    #[error("case {reference} names no signatory to verify (it has no form, or the form names no signatory and role)")]
    NoSignatoryToVerify { reference: String },
    /// The credential cannot be delivered as its workflow requires: nothing is issued.
    #[error("case {reference}: no password can be issued: {why}")]
    CredentialUndeliverable { reference: String, why: String },
    #[error(transparent)]
    CredentialIssue(#[from] crate::credentials::IssueError),
    #[error("an issued credential cannot be opened: {0}")]
    CredentialKey(#[from] crate::credentials::KeyError),
    #[error("case {reference} has issued no password to replace (its workflow issues one on reaching {state})")]
    NoCredentialToReplace { reference: String, state: String },
    #[error("Say why the password is replaced (for example: the link expired before the user opened it)")]
    ReplacementUnexplained,
}

impl From<StorageError> for EngineError {
    /// A lost race at the version-checked write is the engine's conflict, not a storage fault.
    fn from(error: StorageError) -> Self {
        match error {
            StorageError::Conflict(reference) => EngineError::Conflict(reference),
            other => EngineError::Storage(other),
        }
    }
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
    /// Our own check of each email's sender (DKIM, ARC, the Exchange marker).
    pub sender_checker: crate::dkim::SenderChecker,
    /// The keys issued credentials are fingerprinted and sealed under (a file outside the
    /// database).
    pub credential_keys: Arc<crate::credentials::CredentialKeys>,
}

/// The engine: the database, the workflows, the calendar, its settings and its clock. Built
/// once by the composition root and shared (cheaply cloned) by every part of the service.
#[derive(Clone)]
pub struct Engine {
    db: Db,
    workflows: Arc<WorkflowSet>,
    calendar: Arc<WorkingCalendar>,
    /// Behind an `Arc`: the engine is cloned for every web request (axum's `State`).
    config: Arc<EngineConfig>,
    clock: Arc<dyn Clock>,
    /// Wakes this instance's timer and outbox workers when a commit gives them work.
    wakers: Wakers,
    /// What this process counts as it works, for `/metrics`.
    metrics: Arc<crate::metrics::Metrics>,
    /// Held while past report days are worked out and kept (see
    /// [`crate::reports::keep_past_days`]): one keeper at a time.
    report_keeper: Arc<tokio::sync::Mutex<()>>,
}

impl Engine {
    /// An engine on the system clock.
    pub fn new(db: Db, workflows: WorkflowSet, calendar: WorkingCalendar, config: EngineConfig) -> Engine {
        Engine {
            db,
            workflows: Arc::new(workflows),
            calendar: Arc::new(calendar),
            config: Arc::new(config),
            clock: Arc::new(SystemClock),
            wakers: Wakers::default(),
            metrics: crate::metrics::Metrics::shared(),
            report_keeper: Arc::default(),
        }
    }

    /// What this process counts as it works, for `/metrics`.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }

    /// The same engine on another clock (tests and benchmarks set the time).
    /// Taken by whoever works out and keeps past report days, for as long as it does.
    pub fn report_keeper(&self) -> &tokio::sync::Mutex<()> {
        &self.report_keeper
    }

    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Engine {
        self.clock = clock;
        self
    }

    /// The same engine reading PDFs elsewhere (in process, or in worker processes).
    pub fn with_pdf_reader(mut self, reader: pdf::PdfReader) -> Engine {
        Arc::make_mut(&mut self.config).pdf_reader = reader;
        self
    }

    /// The same engine with other limits on the PDFs it reads.
    pub fn with_limits(mut self, limits: ExtractLimits) -> Engine {
        Arc::make_mut(&mut self.config).limits = limits;
        self
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub fn workflows(&self) -> &WorkflowSet {
        &self.workflows
    }

    pub fn calendar(&self) -> &WorkingCalendar {
        &self.calendar
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub fn clock(&self) -> &dyn Clock {
        self.clock.as_ref()
    }

    pub fn wakers(&self) -> &Wakers {
        &self.wakers
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now().timestamp_millis()
    }

    /// Today in England, by the engine's clock.
    pub fn today(&self) -> NaiveDate {
        self.clock.now().date_naive()
    }

    /// `days` working days from now, at the same time of day.
    pub fn working_days_from_now(&self, days: u32) -> i64 {
        self.when().working_days_later(days)
    }

    /// The settings that decide whether mail may go.
    fn mail_policy(&self) -> notify::MailPolicy<'_> {
        notify::MailPolicy {
            our_addresses: &self.config.mail.our_addresses,
            nhs_domains: &self.config.policy.nhs_domains,
        }
    }

    /// The workflow a case or form names; an unknown (or missing) name is an error.
    fn workflow_named(&self, name: Option<&str>) -> Result<&WorkflowDef, EngineError> {
        let name = name.unwrap_or_default();
        self.workflows
            .get(name)
            .ok_or_else(|| EngineError::UnknownWorkflow(name.to_string()))
    }
}
