//! `countersign ingest`, `cases` and `case`: mail in by hand, and cases listed, shown and moved.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Subcommand;

use super::{actor, build_engine};
use crate::config::Settings;
use crate::engine::IntakeReport;
use crate::storage;

#[derive(Debug, Subcommand)]
pub enum CasesCommand {
    List {
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 200)]
        limit: i64,
    },
}

#[derive(Debug, Subcommand)]
pub enum CaseCommand {
    /// The fields, the findings and the event log.
    Show { reference: String },
    /// Move a case to another state, as the workflow allows.
    Transition {
        reference: String,
        to: String,
        #[arg(long)]
        reason: Option<String>,
        /// Who is acting (recorded in the event log).
        /// The staff account acting (its email address): recorded in the event log, with the
        /// account's own role, and held to the same rules as on the web (four-eyes).
        #[arg(long = "as")]
        actor: String,
        /// A value the transition records, e.g. --record open_exeter_user_id=OE12345.
        #[arg(long = "record", value_parser = super::parse_key_value)]
        recorded: Vec<(String, String)>,
    },
    /// Key fields by hand (a printed or flattened form), then run the rules again.
    Key {
        reference: String,
        /// Put an unclassified case into this workflow.
        #[arg(long)]
        workflow: Option<String>,
        #[arg(long = "field", value_parser = super::parse_key_value, required = true)]
        fields: Vec<(String, String)>,
        /// The staff account acting (its email address): recorded in the event log, with the
        /// account's own role, and held to the same rules as on the web (four-eyes).
        #[arg(long = "as")]
        actor: String,
    },
}

pub(super) async fn case_command(settings: &Settings, command: CaseCommand) -> Result<()> {
    let engine = build_engine(settings).await?;
    match command {
        CaseCommand::Show { reference } => {
            let mut conn = engine.db().pool.acquire().await?;
            let case = storage::case_by_reference(&mut conn, &reference)
                .await?
                .with_context(|| format!("no case {reference}"))?;
            println!(
                "{}  {}  {}",
                case.reference,
                case.workflow.as_deref().unwrap_or("(unclassified)"),
                case.state
            );
            println!("sender: {}", case.sender.as_deref().unwrap_or("-"));
            println!("\nfields:");
            for (k, v) in &case.fields {
                println!("  {k:<24} {v}");
            }
            println!("\nfindings:");
            if case.findings.is_empty() {
                println!("  (none)");
            }
            for f in &case.findings {
                println!("  {:<28} {}", f.code.as_str(), f.message);
            }
            println!("\nevents:");
            for e in storage::events_for_case(&mut conn, case.id).await? {
                let when = chrono::DateTime::from_timestamp_millis(e.at)
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_default();
                let change = match (&e.from_state, &e.to_state) {
                    (Some(f), Some(t)) => format!("{f} -> {t}"),
                    (None, Some(t)) => format!("-> {t}"),
                    _ => String::new(),
                };
                println!(
                    "  {when}  {:<18} {:<12} {:<30} {}",
                    e.kind,
                    e.actor,
                    change,
                    e.reason.or(e.data).unwrap_or_default()
                );
            }
            println!("\ntimers:");
            for t in storage::timers_for_case(&mut conn, case.id).await? {
                let when = chrono::DateTime::from_timestamp_millis(t.due_at)
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_default();
                println!("  {:<22} {:<10} due {when}", t.name, t.status);
            }
            println!("\noutbound mail:");
            for m in storage::outbox_for_case(&mut conn, case.id).await? {
                println!(
                    "  {:<24} to {:<32} {} {}",
                    m.template,
                    m.recipient.unwrap_or_default(),
                    m.status,
                    m.suppressed_reason.unwrap_or_default()
                );
            }
        }
        CaseCommand::Transition {
            reference,
            to,
            reason,
            actor: name,
            recorded,
        } => {
            let actor = actor(&engine, &name).await?;
            let request = crate::workflow::TransitionRequest {
                to,
                reason,
                recorded,
                ..Default::default()
            };
            let case = engine.transition(&reference, &request, &actor).await?;
            println!("{}  {}", case.reference, case.state);
        }
        CaseCommand::Key {
            reference,
            workflow,
            fields,
            actor: name,
        } => {
            let actor = actor(&engine, &name).await?;
            let values: BTreeMap<String, String> = fields.into_iter().collect();
            let case = engine
                .key_fields(&reference, workflow.as_deref(), &values, &actor)
                .await?;
            let codes: Vec<&str> = case.findings.iter().map(|f| f.code.as_str()).collect();
            println!("{}  {}  {}", case.reference, case.state, codes.join(","));
        }
    }
    engine.db().close().await;
    Ok(())
}

pub(super) fn print_report(report: &IntakeReport) {
    for case in &report.cases {
        let mut line = format!(
            "{}  {:<24} {:<14} {}",
            case.reference,
            case.workflow.as_deref().unwrap_or("(unclassified)"),
            case.state,
            if case.finding_codes.is_empty() {
                "-".to_string()
            } else {
                case.finding_codes.join(",")
            }
        );
        if report.already_ingested {
            line.push_str("  (already ingested)");
        } else if let Some(original) = &case.duplicate_of {
            line.push_str(&format!("  (duplicate of {original})"));
        }
        println!("{line}");
    }
}

pub(super) fn collect_eml(path: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("reading folder {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for entry in entries {
            if entry.is_dir() || entry.extension().is_some_and(|e| e.eq_ignore_ascii_case("eml")) {
                collect_eml(&entry, out)?;
            }
        }
    } else if path.exists() {
        out.push(path.to_path_buf());
    } else {
        bail!("{} does not exist", path.display());
    }
    Ok(())
}

/// `countersign ingest`: `.eml` files (or folders of them) in, once each.
pub(super) async fn ingest_command(settings: &Settings, paths: &[PathBuf]) -> Result<()> {
    let engine = build_engine(settings).await?;
    let mut files = Vec::new();
    for path in paths {
        collect_eml(path, &mut files)?;
    }
    for file in files {
        let raw = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
        let report = engine
            .intake(&raw, &format!("file:{}", file.display()))
            .await
            .with_context(|| format!("ingesting {}", file.display()))?;
        print_report(&report);
    }
    engine.db().close().await;
    Ok(())
}

pub(super) async fn cases_command(settings: &Settings, command: CasesCommand) -> Result<()> {
    let CasesCommand::List { state, limit } = command;
    let engine = build_engine(settings).await?;
    let mut conn = engine.db().pool.acquire().await?;
    for case in storage::list_cases(&mut conn, state.as_deref(), limit).await? {
        let codes: Vec<&str> = case.findings.iter().map(|f| f.code.as_str()).collect();
        println!(
            "{}  {:<24} {:<22} {:<8} {}",
            case.reference,
            case.workflow.as_deref().unwrap_or("(unclassified)"),
            case.state,
            case.org_ods_code.as_deref().unwrap_or("-"),
            codes.join(",")
        );
    }
    Ok(())
}
