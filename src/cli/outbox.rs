//! `countersign outbox`: outbound mail.

use anyhow::Result;
use clap::Subcommand;

use super::build_engine;
use crate::config::Settings;
use crate::domain::OutboxStatus;
use crate::storage;

#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// List outbound mail, newest first.
    List {
        /// pending, sent, failed or suppressed
        #[arg(long, value_parser = outbox_status)]
        status: Option<OutboxStatus>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Send failed mail again.
    Retry,
}

pub(super) async fn outbox_command(settings: &Settings, command: OutboxCommand) -> Result<()> {
    let engine = build_engine(settings).await?;
    let mut conn = engine.db().pool.acquire().await?;
    match command {
        OutboxCommand::List { status, limit } => {
            for m in storage::list_outbox(&mut conn, status, limit).await? {
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

fn outbox_status(word: &str) -> Result<OutboxStatus, String> {
    OutboxStatus::parse(word).ok_or_else(|| {
        let words: Vec<&str> = OutboxStatus::ALL.iter().map(|s| s.as_str()).collect();
        format!("not an outbox status; one of {}", words.join(", "))
    })
}
