//! `countersign accounts`: the Open Exeter account register, imported from its CSV.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;

use super::build_engine;
use crate::config::Settings;

#[derive(Debug, Subcommand)]
pub enum AccountsCommand {
    /// Add or update the accounts in an Open Exeter CSV (header row: user_id, ods_code, name,
    /// email, primary_user, password_changed, last_sign_in, status). Run it as often as the
    /// file comes: it prints what changed; bad rows are listed with their line numbers and
    /// skipped, and stop nothing else.
    Import { file: PathBuf },
    /// The accounts held, of one organisation or of all.
    List {
        #[arg(long)]
        ods: Option<String>,
    },
}

pub(super) async fn accounts_command(settings: &Settings, command: AccountsCommand) -> Result<()> {
    let engine = build_engine(settings).await?;
    match command {
        AccountsCommand::Import { file } => {
            let name = file.display().to_string();
            let bytes = std::fs::read(&file).with_context(|| format!("reading {name}"))?;
            let summary = engine.import_accounts(&bytes, &name).await?;
            print!("{}", summary.report(&name));
        }
        AccountsCommand::List { ods } => {
            let mut conn = engine.db().pool.acquire().await?;
            let ods = ods.map(|o| o.trim().to_ascii_uppercase());
            for a in crate::storage::list_accounts(&mut conn, ods.as_deref()).await? {
                let date = |d: Option<chrono::NaiveDate>| d.map(|d| d.to_string()).unwrap_or_else(|| "never".into());
                println!(
                    "{:<10} {:<8} {:<28} {:<32} {:<8} password {:<10} signed in {:<10} {}",
                    a.user_id,
                    a.ods_code,
                    a.name,
                    a.email.as_deref().unwrap_or("-"),
                    if a.primary_user { "primary" } else { "" },
                    date(a.password_changed_on),
                    date(a.last_sign_in_on),
                    a.status.as_str()
                );
            }
        }
    }
    Ok(())
}
