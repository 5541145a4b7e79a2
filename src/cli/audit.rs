//! `countersign audit`: check the hash-chained event log, and anchor it now.

use anyhow::{Result, bail};
use clap::Subcommand;

use super::build_engine;
use crate::config::Settings;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check every case's event chain and the daily anchors; say where anything was edited,
    /// deleted or reordered. Exits 1 when something was.
    Verify {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Anchor every chain that grew since the last anchor now (the nightly housekeeping does
    /// this too), and print the anchor's hash: keep a copy outside the database.
    Anchor,
}

pub(super) async fn audit_command(settings: &Settings, command: AuditCommand) -> Result<()> {
    let engine = build_engine(settings).await?;
    match command {
        AuditCommand::Verify { json } => {
            let report = crate::audit::verify(engine.db()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                for finding in &report.findings {
                    println!("{}: {}", finding.place, finding.problem);
                }
                println!(
                    "checked {} case(s), {} event(s), {} anchor(s); latest anchor {}",
                    report.cases,
                    report.events,
                    report.anchors,
                    report.latest_anchor.as_deref().unwrap_or("(none yet)")
                );
            }
            if !report.intact() {
                bail!(
                    "the event log has been tampered with: {} problem(s) found",
                    report.findings.len()
                );
            }
            if !json {
                println!("the event log is intact");
            }
        }
        AuditCommand::Anchor => {
            let anchor = crate::audit::write_anchor(engine.db(), engine.now_ms()).await?;
            let heads = serde_json::from_str::<Vec<serde_json::Value>>(&anchor.heads_json).map_or(0, |h| h.len());
            println!("anchor #{} covers {heads} chain(s): {}", anchor.id, anchor.hash);
        }
    }
    Ok(())
}
