//! `countersign organisations`: the organisation registry, imported from the NHS ODS files.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Subcommand;

use super::build_engine;
use crate::config::Settings;
use crate::registry::{self, RegistryLookup};

#[derive(Debug, Subcommand)]
pub enum OrganisationsCommand {
    /// Import (add or replace) organisations from the GP practice file (`epraccur.csv`) and/or
    /// an organisation file with roles. A file with one bad row imports nothing.
    Import {
        #[arg(long)]
        gp_practices: Option<PathBuf>,
        #[arg(long)]
        organisations: Option<PathBuf>,
    },
    /// What the registry says about one ODS code.
    Show { code: String },
    /// Organisations with fewer than two active Primary Users (none first), and those whose
    /// only one is being replaced.
    Coverage,
}

pub(super) async fn organisations_command(settings: &Settings, command: OrganisationsCommand) -> Result<()> {
    let engine = build_engine(settings).await?;
    match command {
        OrganisationsCommand::Import {
            gp_practices,
            organisations,
        } => {
            if gp_practices.is_none() && organisations.is_none() {
                bail!("give --gp-practices FILE, --organisations FILE, or both");
            }
            // Read and check every file before writing anything.
            let mut files = Vec::new();
            if let Some(path) = &gp_practices {
                let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                files.push((
                    "epraccur",
                    registry::parse_gp_practices(&bytes, &path.display().to_string())?,
                ));
            }
            if let Some(path) = &organisations {
                let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                files.push((
                    "organisations",
                    registry::parse_organisations(&bytes, &path.display().to_string())?,
                ));
            }
            let mut tx = engine.db().begin_write().await.context("starting the import")?;
            for (source, organisations) in &files {
                let count = crate::storage::import_registry(&mut tx, organisations, source, engine.now_ms()).await?;
                println!("{source}: {count} organisation(s)");
            }
            tx.commit().await.context("committing the import")?;
            let (total, practices) = crate::storage::registry_counts(&mut *engine.db().pool.acquire().await?).await?;
            println!("the registry holds {total} organisation(s), {practices} of them GP practices");
        }
        OrganisationsCommand::Coverage => {
            let mut conn = engine.db().pool.acquire().await?;
            let open = engine.workflows().open_states();
            let mut short = crate::storage::primary_user_coverage(&mut conn, open).await?;
            short.sort_by_key(|c| (c.primary_users, c.ods_code.clone()));
            for c in &short {
                let replacing = c
                    .replacing
                    .as_deref()
                    .map(|r| format!(", being replaced ({r})"))
                    .unwrap_or_default();
                println!(
                    "{:<8} {:<40} {} Primary User(s){replacing}",
                    c.ods_code,
                    c.name.as_deref().unwrap_or("-"),
                    c.primary_users
                );
            }
            println!("{} organisation(s) with fewer than two Primary Users", short.len());
        }
        OrganisationsCommand::Show { code } => {
            let mut conn = engine.db().pool.acquire().await?;
            match crate::storage::registry_lookup(&mut conn, &code).await? {
                RegistryLookup::NotLoaded => {
                    println!("no registry has been imported (countersign organisations import)")
                }
                RegistryLookup::Unknown => println!("{code}: not in the registry"),
                RegistryLookup::Known(org) => {
                    let today = engine.clock().now().date_naive();
                    println!(
                        "{} {}: {}, {}{}, roles {}",
                        org.code,
                        org.name,
                        if org.gp_practice {
                            "GP practice"
                        } else {
                            "not a GP practice"
                        },
                        if org.is_open(today) {
                            "open"
                        } else {
                            org.status.as_str()
                        },
                        org.closed_on.map(|d| format!(" (closed {d})")).unwrap_or_default(),
                        org.roles.join(" ")
                    );
                }
            }
        }
    }
    Ok(())
}
