//! `countersign outbox`: outbound mail.

use anyhow::Result;
use clap::Subcommand;

use super::build_engine;
use crate::config::Settings;
use crate::storage;

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

pub(super) async fn outbox_command(settings: &Settings, command: OutboxCommand) -> Result<()> {
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
