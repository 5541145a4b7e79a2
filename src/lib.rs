//! Countersign: a workflow and approval engine for signed Open Exeter access-request forms.
//!
//! `rustfmt` sorts the `mod` lines below; read them in the order data flows instead:
//!
//! 1. [`config`] → [`app`]: settings in; the composition root builds the service.
//! 2. [`ingest`]: mail arrives (an IMAP mailbox taken exactly once, or a drop folder).
//! 3. [`mail`] → [`dkim`] → [`pdf`]: one email read, its sender checked (our own DKIM check
//!    beside the receiving server's verdict), its PDF forms extracted under limits.
//! 4. [`engine`]: forms classified ([`policy`] checks them, [`replies`] decides what mail that
//!    names a case may do), then every case change planned and written through one path
//!    ([`engine::change`]) into [`storage`], following the [`workflow`] files.
//! 5. [`scheduler`] fires durable timers; [`outbox`] sends the mail changes queued.
//! 6. [`web`]: caseworkers and managers work the queue; [`users`] are its accounts; managers
//!    read [`reports`] worked out from the event log; other systems use the JSON API with
//!    [`tokens`].
//!
//! Beside them: the Open Exeter account register ([`accounts`]), the hash-chained event log's [`audit`], [`domain`] types, the working-day [`calendar`], [`metrics`] for operators, [`provision`] (the seam for
//! an automated provisioner), [`credentials`] it issues, [`samples`] for demos and benchmarks, and the [`cli`].

/// The Open Exeter account register: parsed from its CSV, compared with what is held.
pub mod accounts;
/// The composition root: `App::build(&Settings)`, shared by main and the command line.
pub mod app;
/// The tamper-evident event log: per-case hash chains, daily anchors, `audit verify`.
pub mod audit;
/// Working days: weekends and England and Wales bank holidays.
pub mod calendar;
/// The command line.
pub mod cli;
/// Settings: built-in defaults < optional config file < environment variables.
pub mod config;
/// Credentials we issue: CSPRNG-made, weak patterns refused, never the same twice, never kept.
pub mod credentials;
/// Our own check of an email's sender: DKIM (mail-auth), ARC, the Exchange Online marker.
pub mod dkim;
/// Validated domain types: ODS codes, email addresses, NHS domains, case references.
pub mod domain;
/// Intake, replies, timers and every case change: pure planners, one write path.
pub mod engine;
/// A case's evidence pack: its emails, forms, verdicts and chained event log, with a manifest.
pub mod evidence;
/// Mail sources: an IMAP mailbox taken exactly once, or a local drop folder.
pub mod ingest;
/// Reading one email: headers, sender authentication, PDF attachments (also when forwarded).
pub mod mail;
/// The service's own measurements, for `/metrics`.
pub mod metrics;
/// Outbound mail: the transactional outbox's dispatcher, templates, retries and rate limits.
pub mod outbox;
/// AcroForm extraction from PDFs, bounded in size and time; and the blank forms we hand out.
pub mod pdf;
/// The rules: facts in, findings out. Pure.
pub mod policy;
/// Recording that an account was provisioned; an interface an automated provisioner can fill.
pub mod provision;
/// The organisation registry: NHS ODS files read (GP practices, organisations and roles).
pub mod registry;
/// Replies: whether mail that names a case may change it, and what its forms do. Pure.
pub mod replies;
/// The managers' SLA reports, from the event log on the working-day calendar. Pure.
pub mod reports;
/// Sample emails with filled forms, for trying it out and for benchmarks.
pub mod samples;
/// Durable timers on a working-day calendar, and scheduled jobs (digest, housekeeping).
pub mod scheduler;
/// Synthetic years of cases for the reports' benchmark and demos (`countersign dev seed`).
pub mod seed;
/// The signatory register: who may sign for an organisation, and what it says of a form's signatory.
pub mod signatories;
/// SQLite and PostgreSQL: pools, migrations, and every query the service runs.
pub mod storage;
/// Bearer tokens for service accounts that use the JSON API.
pub mod tokens;
/// Staff accounts: password hashes, lockout, one-time links, sessions.
pub mod users;
/// The caseworkers' web app and the JSON API.
pub mod web;
/// Workflow definitions (data), the states the engine names, and the state machine (pure).
pub mod workflow;
