//! `countersign mailbox`: the mail source's health and its quarantine.

use anyhow::Result;
use clap::Subcommand;

use super::build_engine;
use crate::config::Settings;
use crate::storage;

#[derive(Debug, Subcommand)]
pub enum MailboxCommand {
    /// The last poll, the backlog, and messages that could not be ingested.
    Status,
    /// Send quarantined mail back to be ingested again.
    Retry,
}

pub(super) async fn mailbox_command(settings: &Settings, command: MailboxCommand) -> Result<()> {
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
