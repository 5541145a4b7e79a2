//! Countersign: a workflow and approval engine for signed Open Exeter access-request forms.
//!
//! Read the modules in the order data flows through them:

/// Working days: weekends and England and Wales bank holidays.
pub mod calendar;
/// The command line.
pub mod cli;
/// Settings: built-in defaults < optional config file < environment variables.
pub mod config;
/// Validated domain types: ODS codes, email addresses, NHS domains, case references.
pub mod domain;
/// Intake and transitions: where the pure parts meet storage, one transaction per change.
pub mod engine;
/// Mail sources: an IMAP mailbox taken exactly once, or a local drop folder.
pub mod ingest;
/// Reading one email: headers, sender authentication, PDF attachments (also when forwarded).
pub mod mail;
/// Outbound mail: the transactional outbox's dispatcher, templates, retries and rate limits.
pub mod outbox;
/// AcroForm extraction from PDFs, bounded in size and time; and the blank forms we hand out.
pub mod pdf;
/// The rules: facts in, findings out. Pure.
pub mod policy;
/// Recording that an account was provisioned; an interface an automated provisioner can fill.
pub mod provision;
/// Replies: whether mail that names a case may change it, and what its forms do. Pure.
pub mod replies;
/// Sample emails with filled forms, for trying it out and for benchmarks.
pub mod samples;
/// Durable timers on a working-day calendar, and scheduled jobs (digest, housekeeping).
pub mod scheduler;
/// SQLite and PostgreSQL: pools, migrations, and the queries the engine needs.
pub mod storage;
/// Staff accounts: password hashes, lockout, one-time links, sessions.
pub mod users;
/// The caseworkers' web app and the JSON API.
pub mod web;
/// Workflow definitions (data) and the state machine (pure).
pub mod workflow;
