//! `countersign workflows` and `forms`: the workflow files checked and shown, blank forms made.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;

use super::load_workflows;
use crate::config::Settings;

#[derive(Debug, Subcommand)]
pub enum WorkflowsCommand {
    /// Validate every workflow file.
    Check,
    /// Print a workflow's states, transitions and timers.
    Show { name: String },
    /// Run a labelled set of plain emails (TOML: `[[message]]` with expected, from, subject,
    /// body) through a workflow's recogniser and classifier, and print precision and recall
    /// per class.
    Evaluate {
        file: PathBuf,
        #[arg(long, default_value = "support")]
        workflow: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum FormsCommand {
    /// Write the blank fillable PDF of each workflow into DIR.
    Generate { dir: PathBuf },
}

/// A workflow's states, transitions and timers as text, for `workflows show`.
pub fn describe_workflow(w: &crate::workflow::WorkflowDef) -> String {
    let mut out = format!(
        "{} ({})\nform {}  organisation: {:?}  SLA {} working days\n\nstates:\n",
        w.title,
        w.name,
        w.form_id().unwrap_or("none (plain emails)"),
        w.organisation_kind,
        w.sla.target_working_days
    );
    for s in &w.states {
        let marks = [
            (s.initial, "initial"),
            (s.terminal, "terminal"),
            (!s.sla_running, "SLA paused"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, m)| *m)
        .collect::<Vec<_>>()
        .join(", ");
        out.push_str(&format!(
            "  {:<22} {}{}\n",
            s.name,
            s.label,
            if marks.is_empty() {
                String::new()
            } else {
                format!(" [{marks}]")
            }
        ));
    }
    out.push_str("\ntransitions:\n");
    for t in &w.transitions {
        let by: Vec<&str> = t.by.iter().map(|r| r.as_str()).collect();
        out.push_str(&format!(
            "  {:<20} {} -> {}  by {}{}\n",
            t.name,
            t.from.join("|"),
            t.to,
            by.join(", "),
            t.template.as_ref().map(|m| format!("  mails {m}")).unwrap_or_default()
        ));
    }
    out.push_str("\ntimers:\n");
    for t in &w.timers {
        out.push_str(&format!(
            "  {:<22} in {} after {} working days: {:?}\n",
            t.name, t.state, t.after_working_days, t.action
        ));
    }
    out
}

pub(super) fn workflows_command(settings: &Settings, command: WorkflowsCommand) -> Result<()> {
    let set = load_workflows(settings)?;
    match command {
        WorkflowsCommand::Check => {
            for w in set.iter() {
                println!(
                    "ok  {:<24} {} ({} states, {} transitions, {} timers)",
                    w.name,
                    w.source.display(),
                    w.states.len(),
                    w.transitions.len(),
                    w.timers.len()
                );
            }
        }
        WorkflowsCommand::Show { name } => {
            let w = set.get(&name).with_context(|| format!("no workflow `{name}`"))?;
            print!("{}", describe_workflow(w));
        }
        WorkflowsCommand::Evaluate { file, workflow } => {
            let w = set
                .get(&workflow)
                .with_context(|| format!("no workflow `{workflow}`"))?;
            let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            let labelled: crate::workflow::evaluate::LabelledSet =
                toml::from_str(&text).with_context(|| format!("{}: not a labelled set", file.display()))?;
            let evaluation = crate::workflow::evaluate::evaluate(w, &labelled)?;
            print!("{}", evaluation.report());
        }
    }
    Ok(())
}

pub(super) fn forms_command(settings: &Settings, command: FormsCommand) -> Result<()> {
    let FormsCommand::Generate { dir } = command;
    let set = load_workflows(settings)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for w in set.form_workflows() {
        let path = dir.join(format!("{}.pdf", w.form_id().unwrap_or_default()));
        std::fs::write(&path, crate::pdf::generate::blank_form(w)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("{}", path.display());
    }
    Ok(())
}

/// Sample emails with filled forms, for trying it out.
pub(super) fn samples_command(settings: &Settings, dir: &Path, count: usize) -> Result<()> {
    let set = load_workflows(settings)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let today = chrono::Local::now().date_naive();
    for (i, email) in crate::samples::sample_emails(&set, count, today, &settings.authserv_id)?
        .into_iter()
        .enumerate()
    {
        let path = dir.join(format!("sample-{i:04}.eml"));
        std::fs::write(&path, email).with_context(|| format!("writing {}", path.display()))?;
        println!("{}", path.display());
    }
    Ok(())
}
