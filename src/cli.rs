//! The command line: `countersign <command>`. Each command loads settings and workflows the
//! same way, so a bad workflow file stops every command with the same clear error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use crate::app::App;
use crate::config::Settings;
use crate::engine::{Engine, IntakeReport};
use crate::storage;
use crate::workflow::{Actor, ActorRole, WorkflowSet};

#[derive(Debug, Parser)]
#[command(
    name = "countersign",
    version,
    about = "Workflow and approval engine for signed Open Exeter access-request forms"
)]
pub struct Cli {
    /// A TOML config file (default: ./countersign.toml if present).
    #[arg(long, global = true, env = "COUNTERSIGN_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Watch the drop folder and ingest every email put there (the embedded default).
    Serve {
        /// Ingest what is there now, then exit.
        #[arg(long)]
        once: bool,
        /// Seconds between scans of the drop folder.
        #[arg(long, default_value_t = 2)]
        interval: u64,
    },
    /// Ingest .eml files, or folders of them, and print one line per case.
    Ingest {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// List cases.
    Cases {
        #[command(subcommand)]
        command: CasesCommand,
    },
    /// Look at or act on one case.
    Case {
        #[command(subcommand)]
        command: CaseCommand,
    },
    /// Check or show the workflow files.
    Workflows {
        #[command(subcommand)]
        command: WorkflowsCommand,
    },
    /// The blank forms practices fill in.
    Forms {
        #[command(subcommand)]
        command: FormsCommand,
    },
    /// Staff accounts for the web app.
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// Outbound mail: what is waiting, sent, suppressed or failed.
    Outbox {
        #[command(subcommand)]
        command: OutboxCommand,
    },
    /// The mail source: its health, and quarantined mail.
    Mailbox {
        #[command(subcommand)]
        command: MailboxCommand,
    },
    /// Write sample emails (filled forms, good and bad) into a folder, e.g. the drop folder.
    Samples {
        dir: PathBuf,
        #[arg(long, default_value_t = 6)]
        count: usize,
    },
}

#[derive(Debug, Subcommand)]
pub enum CasesCommand {
    List {
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 200)]
        limit: i64,
    },
}

#[derive(Debug, Subcommand)]
pub enum CaseCommand {
    /// The fields, the findings and the event log.
    Show { reference: String },
    /// Move a case to another state, as the workflow allows.
    Transition {
        reference: String,
        to: String,
        #[arg(long)]
        reason: Option<String>,
        /// Who is acting (recorded in the event log).
        /// The staff account acting (its email address): recorded in the event log, with the
        /// account's own role, and held to the same rules as on the web (four-eyes).
        #[arg(long = "as")]
        actor: String,
        /// A value the transition records, e.g. --record open_exeter_user_id=OE12345.
        #[arg(long = "record", value_parser = parse_key_value)]
        recorded: Vec<(String, String)>,
    },
    /// Key fields by hand (a printed or flattened form), then run the rules again.
    Key {
        reference: String,
        /// Put an unclassified case into this workflow.
        #[arg(long)]
        workflow: Option<String>,
        #[arg(long = "field", value_parser = parse_key_value, required = true)]
        fields: Vec<(String, String)>,
        /// The staff account acting (its email address): recorded in the event log, with the
        /// account's own role, and held to the same rules as on the web (four-eyes).
        #[arg(long = "as")]
        actor: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Add a user and print a one-time set-password link (there are no default passwords).
    Add {
        email: String,
        #[arg(long, default_value = "caseworker")]
        role: String,
        #[arg(long)]
        name: Option<String>,
    },
    List,
    /// Print a new one-time set-password link for a user.
    Reset {
        email: String,
    },
    Disable {
        email: String,
    },
    /// Change a user's role; their sessions end.
    Role {
        email: String,
        role: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// List outbound mail, newest first.
    List {
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Send failed mail again.
    Retry,
}

#[derive(Debug, Subcommand)]
pub enum MailboxCommand {
    /// The last poll, the backlog, and messages that could not be ingested.
    Status,
    /// Send quarantined mail back to be ingested again.
    Retry,
}

#[derive(Debug, Subcommand)]
pub enum WorkflowsCommand {
    /// Validate every workflow file.
    Check,
    /// Print a workflow's states, transitions and timers.
    Show { name: String },
}

#[derive(Debug, Subcommand)]
pub enum FormsCommand {
    /// Write the blank fillable PDF of each workflow into DIR.
    Generate { dir: PathBuf },
}

fn parse_key_value(text: &str) -> Result<(String, String), String> {
    let (k, v) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` should be NAME=VALUE"))?;
    Ok((k.trim().to_string(), v.to_string()))
}

/// The staff account named by `--as`: it must exist and be enabled, and it acts with its own
/// role, under the same name the web app records (its email), so four-eyes holds across both.
async fn actor(engine: &Engine, email: &str) -> Result<Actor> {
    let mut conn = engine.db().pool.acquire().await?;
    let user = crate::users::find_by_email(&mut conn, email)
        .await?
        .with_context(|| format!("--as {email}: no staff account has that address (countersign users list)"))?;
    if user.disabled {
        bail!("--as {email}: that account is disabled");
    }
    Ok(Actor {
        name: user.email,
        role: user.role,
    })
}

fn load_workflows(settings: &Settings) -> Result<WorkflowSet> {
    crate::app::load_workflows(settings)
}

/// The engine, built by the composition root.
async fn build_engine(settings: &Settings) -> Result<Engine> {
    Ok(App::build(settings).await?.engine().clone())
}

pub async fn run(cli: Cli) -> Result<()> {
    let settings = Settings::load(cli.config.as_deref())?;
    tracing::debug!(?settings, "settings loaded");
    match cli.command {
        Command::Workflows {
            command: WorkflowsCommand::Check,
        } => {
            let set = load_workflows(&settings)?;
            for w in set.iter() {
                println!(
                    "ok  {:<24} {} ({} states, {} transitions, {} timers)",
                    w.name,
                    w.source.display(),
                    w.states.len(),
                    w.transitions.len(),
                    w.timers.len()
                );
            }
        }
        Command::Workflows {
            command: WorkflowsCommand::Show { name },
        } => {
            let set = load_workflows(&settings)?;
            let w = set.get(&name).with_context(|| format!("no workflow `{name}`"))?;
            print!("{}", describe_workflow(w));
        }
        Command::Forms {
            command: FormsCommand::Generate { dir },
        } => {
            let set = load_workflows(&settings)?;
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for w in set.iter() {
                let path = dir.join(format!("{}.pdf", w.recognise.form_id));
                std::fs::write(&path, crate::pdf::generate::blank_form(w)?)
                    .with_context(|| format!("writing {}", path.display()))?;
                println!("{}", path.display());
            }
        }
        Command::Samples { dir, count } => {
            let set = load_workflows(&settings)?;
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let today = chrono::Local::now().date_naive();
            for (i, email) in crate::samples::sample_emails(&set, count, today, &settings.authserv_id)?
                .into_iter()
                .enumerate()
            {
                let path = dir.join(format!("sample-{i:04}.eml"));
                std::fs::write(&path, email).with_context(|| format!("writing {}", path.display()))?;
                println!("{}", path.display());
            }
        }
        Command::Ingest { paths } => {
            let engine = build_engine(&settings).await?;
            let mut files = Vec::new();
            for path in &paths {
                collect_eml(path, &mut files)?;
            }
            for file in files {
                let raw = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
                let report = engine
                    .intake(&raw, &format!("file:{}", file.display()))
                    .await
                    .with_context(|| format!("ingesting {}", file.display()))?;
                print_report(&report);
            }
            engine.db().close().await;
        }
        Command::Serve { once, interval } => {
            settings.check_mailbox_authserv_id()?;
            let app = App::build(&settings).await?;
            let interval = std::time::Duration::from_secs(interval);
            if once {
                app.run_once().await?;
            } else {
                app.run_until_stopped(interval).await?;
            }
        }
        Command::Mailbox { command } => mailbox_command(&settings, command).await?,
        Command::Outbox { command } => outbox_command(&settings, command).await?,
        Command::Users { command } => users_command(&settings, command).await?,
        Command::Cases {
            command: CasesCommand::List { state, limit },
        } => {
            let engine = build_engine(&settings).await?;
            let mut conn = engine.db().pool.acquire().await?;
            for case in storage::list_cases(&mut conn, state.as_deref(), limit).await? {
                let codes: Vec<&str> = case.findings.iter().map(|f| f.code.as_str()).collect();
                println!(
                    "{}  {:<24} {:<22} {:<8} {}",
                    case.reference,
                    case.workflow.as_deref().unwrap_or("(unclassified)"),
                    case.state,
                    case.org_ods_code.as_deref().unwrap_or("-"),
                    codes.join(",")
                );
            }
        }
        Command::Case { command } => case_command(&settings, command).await?,
    }
    Ok(())
}

async fn case_command(settings: &Settings, command: CaseCommand) -> Result<()> {
    let engine = build_engine(settings).await?;
    match command {
        CaseCommand::Show { reference } => {
            let mut conn = engine.db().pool.acquire().await?;
            let case = storage::case_by_reference(&mut conn, &reference)
                .await?
                .with_context(|| format!("no case {reference}"))?;
            println!(
                "{}  {}  {}",
                case.reference,
                case.workflow.as_deref().unwrap_or("(unclassified)"),
                case.state
            );
            println!("sender: {}", case.sender.as_deref().unwrap_or("-"));
            println!("\nfields:");
            for (k, v) in &case.fields {
                println!("  {k:<24} {v}");
            }
            println!("\nfindings:");
            if case.findings.is_empty() {
                println!("  (none)");
            }
            for f in &case.findings {
                println!("  {:<28} {}", f.code.as_str(), f.message);
            }
            println!("\nevents:");
            for e in storage::events_for_case(&mut conn, case.id).await? {
                let when = chrono::DateTime::from_timestamp_millis(e.at)
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_default();
                let change = match (&e.from_state, &e.to_state) {
                    (Some(f), Some(t)) => format!("{f} -> {t}"),
                    (None, Some(t)) => format!("-> {t}"),
                    _ => String::new(),
                };
                println!(
                    "  {when}  {:<18} {:<12} {:<30} {}",
                    e.kind,
                    e.actor,
                    change,
                    e.reason.or(e.data).unwrap_or_default()
                );
            }
            println!("\ntimers:");
            for t in storage::timers_for_case(&mut conn, case.id).await? {
                let when = chrono::DateTime::from_timestamp_millis(t.due_at)
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_default();
                println!("  {:<22} {:<10} due {when}", t.name, t.status);
            }
            println!("\noutbound mail:");
            for m in storage::outbox_for_case(&mut conn, case.id).await? {
                println!(
                    "  {:<24} to {:<32} {} {}",
                    m.template,
                    m.recipient.unwrap_or_default(),
                    m.status,
                    m.suppressed_reason.unwrap_or_default()
                );
            }
        }
        CaseCommand::Transition {
            reference,
            to,
            reason,
            actor: name,
            recorded,
        } => {
            let actor = actor(&engine, &name).await?;
            let request = crate::workflow::TransitionRequest {
                to,
                reason,
                recorded,
                ..Default::default()
            };
            let case = engine.transition(&reference, &request, &actor).await?;
            println!("{}  {}", case.reference, case.state);
        }
        CaseCommand::Key {
            reference,
            workflow,
            fields,
            actor: name,
        } => {
            let actor = actor(&engine, &name).await?;
            let values: BTreeMap<String, String> = fields.into_iter().collect();
            let case = engine
                .key_fields(&reference, workflow.as_deref(), &values, &actor)
                .await?;
            let codes: Vec<&str> = case.findings.iter().map(|f| f.code.as_str()).collect();
            println!("{}  {}  {}", case.reference, case.state, codes.join(","));
        }
    }
    engine.db().close().await;
    Ok(())
}

/// Runs the mail source, the outbound mail dispatcher and the scheduler side by side until
/// SIGTERM or Ctrl-C; with `once`, does one round of each and returns.
async fn users_command(settings: &Settings, command: UsersCommand) -> Result<()> {
    let engine = build_engine(settings).await?;
    let mut conn = engine.db().pool.acquire().await?;
    let now = engine.now_ms();
    let link = |token: &str| crate::users::password_link(&settings.web_base_url, token);
    match command {
        UsersCommand::Add { email, role, name } => {
            let role = ActorRole::parse(&role)
                .filter(|r| *r != ActorRole::System)
                .with_context(|| format!("unknown role `{role}` (caseworker, manager, admin)"))?;
            let name = name.unwrap_or_else(|| email.split('@').next().unwrap_or(&email).to_string());
            let (user, token) = crate::users::add(&mut conn, &email, &name, role, now).await?;
            println!("added {} ({})", user.email, user.role.as_str());
            println!("one-time set-password link (expires in 24 hours): {}", link(&token));
        }
        UsersCommand::List => {
            for u in crate::users::list(&mut conn).await? {
                println!(
                    "{:<40} {:<12} {}",
                    u.email,
                    u.role.as_str(),
                    if u.disabled { "disabled" } else { "active" }
                );
            }
        }
        UsersCommand::Reset { email } => {
            let user = crate::users::find_by_email(&mut conn, &email)
                .await?
                .with_context(|| format!("no user {email}"))?;
            let token = crate::users::issue_password_token(&mut conn, user.id, now).await?;
            println!(
                "one-time set-password link for {} (expires in 24 hours): {}",
                user.email,
                link(&token)
            );
        }
        UsersCommand::Disable { email } => {
            crate::users::set_disabled(&mut conn, &email, true).await?;
            println!("disabled {email}");
        }
        UsersCommand::Role { email, role } => {
            let role = ActorRole::parse(&role)
                .filter(|r| *r != ActorRole::System)
                .with_context(|| format!("unknown role `{role}` (caseworker, manager, admin)"))?;
            let user = crate::users::set_role(&mut conn, &email, role).await?;
            println!(
                "{} is now {}; their sessions have ended",
                user.email,
                user.role.as_str()
            );
        }
    }
    drop(conn);
    engine.db().close().await;
    Ok(())
}

async fn outbox_command(settings: &Settings, command: OutboxCommand) -> Result<()> {
    let engine = build_engine(settings).await?;
    let mut conn = engine.db().pool.acquire().await?;
    match command {
        OutboxCommand::List { status, limit } => {
            for m in storage::list_outbox(&mut conn, status.as_deref(), limit).await? {
                println!(
                    "{:>6}  {:<15} {:<24} {:<32} {:<10} {:>2}  {}",
                    m.id,
                    m.case_reference.as_deref().unwrap_or("-"),
                    m.template,
                    m.recipient.as_deref().unwrap_or("-"),
                    m.status,
                    m.attempts,
                    m.note
                );
            }
        }
        OutboxCommand::Retry => {
            let queued = storage::retry_failed_mail(&mut conn, engine.now_ms()).await?;
            println!("{queued} failed message(s) queued again");
        }
    }
    drop(conn);
    engine.db().close().await;
    Ok(())
}

async fn mailbox_command(settings: &Settings, command: MailboxCommand) -> Result<()> {
    let engine = build_engine(settings).await?;
    match command {
        MailboxCommand::Status => {
            let mut conn = engine.db().pool.acquire().await?;
            let when = |ms: Option<i64>| {
                ms.and_then(chrono::DateTime::from_timestamp_millis)
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_else(|| "never".into())
            };
            for m in storage::mailbox_health(&mut conn).await? {
                println!("{}", m.mailbox);
                println!("  last poll      {}", when(m.last_poll_at));
                println!("  last success   {}", when(m.last_success_at));
                println!(
                    "  backlog        {}",
                    m.backlog.map(|b| b.to_string()).unwrap_or_else(|| "-".into())
                );
                println!(
                    "  position       UIDVALIDITY {:?}, last UID {:?}",
                    m.uidvalidity, m.last_uid
                );
                println!("  lease          {}", m.lease_holder.as_deref().unwrap_or("free"));
                if let Some(error) = &m.last_error {
                    println!("  last error     {error}");
                }
            }
            if settings.imap.is_none() {
                // The drop folder keeps its state on disk, where it is true even when the
                // database is the thing that is failing.
                let folder = &settings.drop_folder;
                let waiting = crate::ingest::dropfolder::pending_files(folder);
                let quarantined = crate::ingest::dropfolder::quarantined_files(folder);
                println!("drop folder {}", folder.display());
                println!("  waiting        {}", waiting.len());
                println!("  quarantined    {}", quarantined.len());
                for (file, reason) in &quarantined {
                    println!("    {}  {reason}", file.display());
                }
            }
            let errors = storage::open_ingest_errors(&mut conn).await?;
            println!("\n{} message(s) not ingested", errors.len());
            for e in errors {
                println!(
                    "  {}  attempts {}{}  {}",
                    e.source,
                    e.attempts,
                    if e.quarantined { ", quarantined" } else { "" },
                    e.reason
                );
            }
        }
        MailboxCommand::Retry => match &settings.imap {
            Some(imap) => {
                let moved = crate::ingest::imap::retry_quarantined(&engine, imap).await?;
                println!("{moved} quarantined message(s) sent back to {}", imap.mailbox);
            }
            None => {
                let moved = crate::ingest::dropfolder::retry_quarantined(&settings.drop_folder)?;
                println!(
                    "{moved} quarantined file(s) sent back to {}",
                    settings.drop_folder.display()
                );
            }
        },
    }
    engine.db().close().await;
    Ok(())
}

fn print_report(report: &IntakeReport) {
    for case in &report.cases {
        let mut line = format!(
            "{}  {:<24} {:<14} {}",
            case.reference,
            case.workflow.as_deref().unwrap_or("(unclassified)"),
            case.state,
            if case.finding_codes.is_empty() {
                "-".to_string()
            } else {
                case.finding_codes.join(",")
            }
        );
        if report.already_ingested {
            line.push_str("  (already ingested)");
        } else if let Some(original) = &case.duplicate_of {
            line.push_str(&format!("  (duplicate of {original})"));
        }
        println!("{line}");
    }
}

fn collect_eml(path: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("reading folder {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for entry in entries {
            if entry.is_dir() || entry.extension().is_some_and(|e| e.eq_ignore_ascii_case("eml")) {
                collect_eml(&entry, out)?;
            }
        }
    } else if path.exists() {
        out.push(path.to_path_buf());
    } else {
        bail!("{} does not exist", path.display());
    }
    Ok(())
}

/// A workflow's states, transitions and timers as text, for `workflows show`.
pub fn describe_workflow(w: &crate::workflow::WorkflowDef) -> String {
    let mut out = format!(
        "{} ({})\nform {}  organisation: {:?}  SLA {} working days\n\nstates:\n",
        w.title, w.name, w.recognise.form_id, w.organisation_kind, w.sla.target_working_days
    );
    for s in &w.states {
        let marks = [
            (s.initial, "initial"),
            (s.terminal, "terminal"),
            (!s.sla_running, "SLA paused"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, m)| *m)
        .collect::<Vec<_>>()
        .join(", ");
        out.push_str(&format!(
            "  {:<22} {}{}\n",
            s.name,
            s.label,
            if marks.is_empty() {
                String::new()
            } else {
                format!(" [{marks}]")
            }
        ));
    }
    out.push_str("\ntransitions:\n");
    for t in &w.transitions {
        let by: Vec<&str> = t.by.iter().map(|r| r.as_str()).collect();
        out.push_str(&format!(
            "  {:<20} {} -> {}  by {}{}\n",
            t.name,
            t.from.join("|"),
            t.to,
            by.join(", "),
            t.template.as_ref().map(|m| format!("  mails {m}")).unwrap_or_default()
        ));
    }
    out.push_str("\ntimers:\n");
    for t in &w.timers {
        out.push_str(&format!(
            "  {:<22} in {} after {} working days: {:?}\n",
            t.name, t.state, t.after_working_days, t.action
        ));
    }
    out
}
