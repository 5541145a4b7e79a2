//! The command line: `countersign <command>`. Each command loads settings and workflows the
//! same way, so a bad workflow file stops every command with the same clear error.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

mod accounts;
mod audit;
mod cases;
mod dev;
mod mailbox;
mod organisations;
mod outbox;
mod signatories;
mod tokens;
mod users;
mod workflows;

pub use cases::{CaseCommand, CasesCommand};
pub use mailbox::MailboxCommand;
pub use outbox::OutboxCommand;
pub use users::UsersCommand;
pub use workflows::{FormsCommand, WorkflowsCommand, describe_workflow};

use crate::app::App;
use crate::config::Settings;
use crate::engine::Engine;
use crate::workflow::{Actor, WorkflowSet};

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
    /// The organisation registry (NHS ODS files): `organisations import`, `organisations show`.
    Organisations {
        #[command(subcommand)]
        command: organisations::OrganisationsCommand,
    },
    /// The Open Exeter account register: `accounts import FILE`, `accounts list [--ods CODE]`.
    Accounts {
        #[command(subcommand)]
        command: accounts::AccountsCommand,
    },
    /// The signatory register: `signatories import FILE`, `signatories list [--ods CODE]`.
    Signatories {
        #[command(subcommand)]
        command: signatories::SignatoriesCommand,
    },
    /// The tamper-evident event log: `audit verify`, `audit anchor`.
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
    /// Bearer tokens for service accounts that use the JSON API.
    Tokens {
        #[command(subcommand)]
        command: tokens::TokensCommand,
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
    /// Developer tools: `dev seed --cases N` fills the database with synthetic history.
    Dev {
        #[command(subcommand)]
        command: dev::DevCommand,
    },
    /// Write sample emails (filled forms, good and bad) into a folder, e.g. the drop folder.
    Samples {
        dir: PathBuf,
        #[arg(long, default_value_t = 6)]
        count: usize,
    },
}

/// A command whose output is piped into `head` stops quietly when the pipe closes, as other
/// command-line tools do, rather than panicking in `println!`. Not for `serve`: there a closed
/// socket must be an error to handle, never the end of the process.
fn quiet_on_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of one signal, before any thread that
    // could be writing to a pipe exists beyond the runtime's idle workers.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// An error and its causes on one line, each said once: an error that already quotes its
/// cause (`storage failed: disk full`) is not followed by the cause again.
pub fn describe(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let said = cause.to_string();
        if text.contains(&said) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&said);
    }
    text
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
    Ok(App::build(settings).await?.into_engine())
}

pub async fn run(cli: Cli) -> Result<()> {
    if !matches!(cli.command, Command::Serve { .. }) {
        quiet_on_closed_pipe();
    }
    let settings = Settings::load(cli.config.as_deref())?;
    tracing::debug!(?settings, "settings loaded");
    match cli.command {
        Command::Workflows { command } => workflows::workflows_command(&settings, command)?,
        Command::Forms { command } => workflows::forms_command(&settings, command)?,
        Command::Dev { command } => dev::dev_command(&settings, command).await?,
        Command::Samples { dir, count } => workflows::samples_command(&settings, &dir, count)?,
        Command::Ingest { paths } => cases::ingest_command(&settings, &paths).await?,
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
        Command::Mailbox { command } => mailbox::mailbox_command(&settings, command).await?,
        Command::Outbox { command } => outbox::outbox_command(&settings, command).await?,
        Command::Users { command } => users::users_command(&settings, command).await?,
        Command::Tokens { command } => tokens::tokens_command(&settings, command).await?,
        Command::Audit { command } => audit::audit_command(&settings, command).await?,
        Command::Signatories { command } => signatories::signatories_command(&settings, command).await?,
        Command::Accounts { command } => accounts::accounts_command(&settings, command).await?,
        Command::Organisations { command } => organisations::organisations_command(&settings, command).await?,
        Command::Cases { command } => cases::cases_command(&settings, command).await?,
        Command::Case { command } => cases::case_command(&settings, command).await?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("storage failed: {0}")]
    struct Quoting(#[source] std::io::Error);

    #[test]
    fn an_error_that_quotes_its_cause_is_said_once() {
        let inner = std::io::Error::other("disk full");
        let error = anyhow::Error::new(Quoting(inner)).context("ingesting mail");
        assert_eq!(super::describe(&error), "ingesting mail: storage failed: disk full");
        let plain = anyhow::anyhow!("no such case").context("showing CS-2026-000001");
        assert_eq!(super::describe(&plain), "showing CS-2026-000001: no such case");
    }
}
