//! `countersign dev …`: tools for developers and demos, never needed in production.

use anyhow::{Context, Result};
use clap::Subcommand;

use super::build_engine;
use crate::config::Settings;

#[derive(Debug, Subcommand)]
pub enum DevCommand {
    /// Fill the database with synthetic cases and their state moves across years, for the
    /// managers' reports (their benchmark, and a demo). Adds to what is there.
    Seed {
        #[arg(long, default_value_t = 10_000)]
        cases: usize,
        /// How many years back the cases reach.
        #[arg(long, default_value_t = 4)]
        years: u32,
    },
}

/// Cases written per transaction.
const CASES_PER_TRANSACTION: usize = 10_000;

pub(super) async fn dev_command(settings: &Settings, command: DevCommand) -> Result<()> {
    let engine = build_engine(settings).await?;
    match command {
        DevCommand::Seed { cases, years } => {
            let started = std::time::Instant::now();
            let now = engine.now_ms();
            let mut conn = engine.db().pool.acquire().await?;
            let origin = crate::storage::seed_origin_message(&mut conn, now).await?;
            let mut number = crate::storage::seeded_count(&mut conn).await? as u64 + 1;
            drop(conn);
            let mut written = 0;
            while written < cases {
                let batch = CASES_PER_TRANSACTION.min(cases - written);
                let made = crate::seed::cases(batch, number, now, years, number);
                let mut tx = engine.db().begin_write().await.context("starting a transaction")?;
                crate::storage::insert_seeded(&mut tx, &made, origin).await?;
                tx.commit().await.context("committing synthetic cases")?;
                written += batch;
                number += batch as u64;
                eprintln!("{written} of {cases} synthetic cases written");
            }
            // A bulk load leaves the planner's statistics stale until autovacuum comes round.
            let mut conn = engine.db().pool.acquire().await?;
            crate::storage::refresh_statistics(&mut conn).await?;
            drop(conn);
            println!(
                "seeded {cases} cases over {years} years in {:.1} s",
                started.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}
