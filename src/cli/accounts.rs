//! `countersign accounts`: the Open Exeter account register, imported from its CSV.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;

use super::build_engine;
use crate::accounts::{ImportSummary, OeAccount, changes, parse_csv};
use crate::config::Settings;
use crate::engine::Engine;

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
            let summary = import_accounts(&engine, &bytes, &name).await?;
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

/// Reads a register CSV and upserts what is new or changed, in one transaction: importing the
/// same file twice changes nothing the second time.
pub async fn import_accounts(engine: &Engine, bytes: &[u8], file: &str) -> Result<ImportSummary> {
    let (accounts, bad_rows) = parse_csv(bytes, file)?;
    let mut tx = engine.db().begin_write().await.context("starting the import")?;
    let ids: Vec<&str> = accounts.iter().map(|a| a.user_id.as_str()).collect();
    let held = crate::storage::accounts_by_ids(&mut tx, &ids).await?;
    let mut summary = ImportSummary {
        bad_rows,
        ..ImportSummary::default()
    };
    let mut to_write: Vec<OeAccount> = Vec::new();
    for account in accounts {
        match held.get(&account.user_id) {
            None => {
                summary.added.push(account.user_id.clone());
                to_write.push(account);
            }
            Some(before) => {
                let what = changes(before, &account);
                if what.is_empty() {
                    summary.unchanged += 1;
                } else {
                    summary.changed.push((account.user_id.clone(), what));
                    to_write.push(account);
                }
            }
        }
    }
    crate::storage::upsert_accounts(&mut tx, &to_write, "import", engine.now_ms()).await?;
    tx.commit().await.context("committing the import")?;
    Ok(summary)
}
