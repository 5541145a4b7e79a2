//! The embedded default mail source: a local drop folder of `.eml` files (or a Maildir's
//! `new/`). Each file is ingested, then moved to `processed/`, or to `quarantine/` with a
//! `.reason` file beside it when it could not be stored. Ingestion is idempotent, so a crash
//! between storing and moving a file makes no duplicate on the next scan.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use tracing::{error, info};

use crate::engine::Engine;

/// What one scan did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ScanSummary {
    pub ingested: usize,
    pub quarantined: usize,
}

fn pending_files(folder: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for dir in [folder.to_path_buf(), folder.join("new")] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let is_maildir_file = dir.ends_with("new") && path.is_file();
            let is_eml = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("eml")) && path.is_file();
            if is_maildir_file || is_eml {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

fn move_into(file: &Path, folder: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(folder).with_context(|| format!("creating {}", folder.display()))?;
    let name = file.file_name().context("a file without a name")?;
    let target = folder.join(name);
    std::fs::rename(file, &target).with_context(|| format!("moving {} to {}", file.display(), folder.display()))?;
    Ok(target)
}

/// Moves a file to `quarantine/`, with its reason in a `.reason.txt` beside it.
fn quarantine(file: &Path, folder: &Path, why: &str) -> Result<()> {
    let target = move_into(file, &folder.join("quarantine"))?;
    let reason = PathBuf::from(format!("{}.reason.txt", target.display()));
    std::fs::write(&reason, format!("{why}\n")).with_context(|| format!("writing {}", reason.display()))?;
    Ok(())
}

/// The largest file the drop folder takes: the same limit as the IMAP source's default.
pub const MAX_MESSAGE_BYTES: usize = crate::config::DEFAULT_MAX_MESSAGE_BYTES;

/// Ingests every file waiting in the folder once.
pub async fn scan_once(engine: &Engine, folder: &Path) -> Result<ScanSummary> {
    scan_once_limited(engine, folder, MAX_MESSAGE_BYTES).await
}

/// [`scan_once`] with a size limit of `max_bytes` per file.
pub async fn scan_once_limited(engine: &Engine, folder: &Path, max_bytes: usize) -> Result<ScanSummary> {
    std::fs::create_dir_all(folder).with_context(|| format!("creating drop folder {}", folder.display()))?;
    let mut summary = ScanSummary::default();
    for file in pending_files(folder)? {
        let raw = match std::fs::read(&file) {
            Ok(raw) => raw,
            Err(e) => {
                error!(file = %file.display(), error = %e, "cannot read a dropped file");
                continue;
            }
        };
        if raw.len() > max_bytes {
            let why = format!("the message is {} bytes, over the limit of {max_bytes}", raw.len());
            quarantine(&file, folder, &why)?;
            summary.quarantined += 1;
            continue;
        }
        // A message the service died on before is not read again more than a few times.
        match engine.guard_preparation(&raw).await {
            Ok(None) => {}
            Ok(Some(why)) => {
                error!(file = %file.display(), reason = %why, "set aside");
                quarantine(&file, folder, &why)?;
                summary.quarantined += 1;
                continue;
            }
            Err(e) => {
                error!(file = %file.display(), error = %e, "cannot count the attempt; leaving it for the next scan");
                continue;
            }
        }
        match engine.intake(&raw, &format!("drop:{}", file.display())).await {
            Ok(report) => {
                for case in &report.cases {
                    info!(file = %file.display(), reference = %case.reference, state = %case.state, "ingested");
                    println!(
                        "{}  {:<24} {:<14} {}",
                        case.reference,
                        case.workflow.as_deref().unwrap_or("(unclassified)"),
                        case.state,
                        case.finding_codes.join(",")
                    );
                }
                move_into(&file, &folder.join("processed"))?;
                summary.ingested += 1;
            }
            Err(e) => {
                // Storage failed: keep the message, with its reason, for a retry on request.
                // Its preparation did finish, so this try does not count it as poison.
                let _ = engine.preparation_finished(&raw).await;
                error!(file = %file.display(), error = %e, "quarantined");
                quarantine(&file, folder, &format!("{e:#}"))?;
                summary.quarantined += 1;
            }
        }
    }
    Ok(summary)
}

/// Scans every `interval` until `stop` is set. A file being ingested when the signal comes
/// is finished first.
pub async fn run(
    engine: &Engine,
    folder: &Path,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<()> {
    println!("watching {} (Ctrl-C to stop)", folder.display());
    while !*stop.borrow() {
        let summary = scan_once(engine, folder).await?;
        if summary.ingested + summary.quarantined > 0 {
            info!(?summary, "scan done");
        }
        tokio::select! {
            _ = stop.changed() => {}
            _ = tokio::time::sleep(interval) => {}
        }
    }
    Ok(())
}

/// Moves quarantined files back into the drop folder for another try; returns how many.
pub fn retry_quarantined(folder: &Path) -> Result<usize> {
    let quarantine = folder.join("quarantine");
    let Ok(entries) = std::fs::read_dir(&quarantine) else {
        return Ok(0);
    };
    let mut moved = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "txt") {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        } else if path.is_file() {
            move_into(&path, folder)?;
            moved += 1;
        }
    }
    Ok(moved)
}
