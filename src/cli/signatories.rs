//! `countersign signatories`: the signatory register (who may sign for an organisation).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;

use super::build_engine;
use crate::config::Settings;

#[derive(Debug, Subcommand)]
pub enum SignatoriesCommand {
    /// Add the signatories in a CSV file (header row: ods_code, role, name, email), such as the
    /// Caldicott Guardian register. A file with one bad row adds nothing.
    Import { file: PathBuf },
    /// The known signatories, of one organisation or of all.
    List {
        #[arg(long)]
        ods: Option<String>,
    },
}

pub(super) async fn signatories_command(settings: &Settings, command: SignatoriesCommand) -> Result<()> {
    let engine = build_engine(settings).await?;
    match command {
        SignatoriesCommand::Import { file } => {
            let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let read = crate::signatories::parse_csv(&bytes, &file.display().to_string())?;
            let note = format!("imported from {}", file.display());
            let new: Vec<crate::storage::NewSignatory> = read
                .into_iter()
                .map(|signatory| crate::storage::NewSignatory {
                    signatory,
                    verified_by: None,
                    note: Some(note.clone()),
                    case_reference: None,
                })
                .collect();
            let mut tx = engine.db().begin_write().await.context("starting the import")?;
            crate::storage::add_signatories(&mut tx, &new, engine.now_ms()).await?;
            tx.commit().await.context("committing the import")?;
            println!("{} signatory(ies) added", new.len());
        }
        SignatoriesCommand::List { ods } => {
            let mut conn = engine.db().pool.acquire().await?;
            let ods = ods.map(|o| o.trim().to_ascii_uppercase());
            for s in crate::storage::list_signatories(&mut conn, ods.as_deref()).await? {
                println!(
                    "{:<8} {:<34} {:<30} {:<32} {}",
                    s.ods_code,
                    s.role,
                    s.name,
                    s.email.as_deref().unwrap_or("-"),
                    s.source
                );
            }
        }
    }
    Ok(())
}
