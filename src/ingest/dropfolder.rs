//! The embedded default mail source: a local drop folder of `.eml` files (or a Maildir's
//! `new/`). Each file is ingested, then moved to `processed/`, or to `quarantine/` with a
//! `.reason.txt` file beside it when it cannot be taken. Ingestion is idempotent, so a crash
//! between storing and moving a file makes no duplicate on the next scan.
//!
//! Only finished files are taken:
//! - a Maildir's `new/` holds finished messages by its own rule (they are written in `tmp/`,
//!   which is never read, and renamed into `new/`);
//! - at the top level, only names ending `.eml`: a writer should write `name.eml.part` (or any
//!   other name) and rename it when done, which is atomic;
//! - a watching scan ([`run`]) also waits until a `.eml` file has kept its size and time for
//!   [`SETTLE`], for writers that do not rename;
//! - a file that changed while it was being ingested is left for the next scan, not moved.
//!
//! A storage failure (a full disk, a database that is down) leaves the file where it is for
//! the next scan, so the folder drains by itself once the database is back. Only a message
//! that fails [`MAX_STORE_FAILURES`] times while the database takes other writes is set aside.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use tracing::{error, info, warn};

use super::{GROUP_BYTES, GROUP_MESSAGES};
use crate::engine::Engine;

/// What one scan did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ScanSummary {
    pub ingested: usize,
    pub quarantined: usize,
    /// Left in the folder for the next scan: not yet settled, changed while read, or not
    /// stored (the database refused the write).
    pub left: usize,
}

/// How long a watching scan waits for a `.eml` file to stop changing before it takes it.
pub const SETTLE: Duration = Duration::from_secs(5);

/// Times one message may fail to store, while the database accepts other writes, before it
/// is set aside in `quarantine/`.
pub const MAX_STORE_FAILURES: u32 = 5;

/// The largest file the drop folder takes: the same limit as the IMAP source's default.
pub const MAX_MESSAGE_BYTES: usize = crate::config::DEFAULT_MAX_MESSAGE_BYTES;

/// The files waiting in `folder` (finished or not), in name order.
pub fn pending_files(folder: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in [folder.to_path_buf(), folder.join("new")] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if !path.is_file() || entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let is_maildir_file = dir.ends_with("new");
            let is_eml = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("eml"));
            if is_maildir_file || is_eml {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The files set aside in `quarantine/`, each with its reason.
pub fn quarantined_files(folder: &Path) -> Vec<(PathBuf, String)> {
    let Ok(entries) = std::fs::read_dir(folder.join("quarantine")) else {
        return Vec::new();
    };
    let mut files: Vec<(PathBuf, String)> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && !p.to_string_lossy().ends_with(".reason.txt"))
        .map(|p| {
            let reason = std::fs::read_to_string(format!("{}.reason.txt", p.display())).unwrap_or_default();
            (p, reason.trim().to_string())
        })
        .collect();
    files.sort();
    files
}

fn move_into(file: &Path, folder: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(folder).with_context(|| format!("creating {}", folder.display()))?;
    let name = file.file_name().context("a file without a name")?;
    let target = folder.join(name);
    std::fs::rename(file, &target).with_context(|| format!("moving {} to {}", file.display(), folder.display()))?;
    Ok(target)
}

/// Whether `error` is a file that is not there any more: another instance watching the same
/// folder (or a person) took it first. Its message is stored once whoever took it, so for
/// this scan it is simply gone.
fn gone(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::NotFound)
}

/// Moves a file to `quarantine/`, with its reason in a `.reason.txt` beside it; nothing when
/// the file is gone already.
fn quarantine(file: &Path, folder: &Path, why: &str) -> Result<()> {
    let target = match move_into(file, &folder.join("quarantine")) {
        Ok(target) => target,
        Err(error) if gone(&error) => return Ok(()),
        Err(error) => return Err(error),
    };
    let reason = PathBuf::from(format!("{}.reason.txt", target.display()));
    std::fs::write(&reason, format!("{why}\n")).with_context(|| format!("writing {}", reason.display()))?;
    Ok(())
}

/// A file's size and modification time: what "it has not changed" means here.
fn fingerprint(path: &Path) -> Option<(u64, SystemTime)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()?))
}

/// A drop folder and what its scanner remembers between scans.
#[derive(Debug)]
pub struct DropFolder {
    folder: PathBuf,
    max_bytes: usize,
    settle: Duration,
    /// Each waiting file's fingerprint, and since when it has had it.
    seen: HashMap<PathBuf, ((u64, SystemTime), Instant)>,
    /// Store failures per message (by content hash).
    store_failures: HashMap<String, u32>,
    health: super::HealthHandle,
}

impl DropFolder {
    /// A folder scanned by a watching service: files must settle before they are taken.
    pub fn watching(folder: &Path) -> Self {
        Self::new(folder, MAX_MESSAGE_BYTES, SETTLE)
    }

    pub fn new(folder: &Path, max_bytes: usize, settle: Duration) -> Self {
        DropFolder {
            folder: folder.to_path_buf(),
            max_bytes,
            settle,
            seen: HashMap::new(),
            store_failures: HashMap::new(),
            health: super::HealthHandle::default(),
        }
    }

    /// What the scanner is doing, for the health view: files waiting, and the last storage
    /// error (cleared by a scan that stored everything it took).
    pub fn health(&self) -> super::HealthHandle {
        self.health.clone()
    }

    /// Whether `file` is finished: in `new/`, or unchanged for the settle time.
    fn settled(&mut self, file: &Path, now: Instant) -> bool {
        if self.settle.is_zero() || file.parent().is_some_and(|p| p.ends_with("new")) {
            return true;
        }
        let Some(print) = fingerprint(file) else {
            return false;
        };
        match self.seen.get(file) {
            Some((seen, since)) if *seen == print => now.duration_since(*since) >= self.settle,
            _ => {
                self.seen.insert(file.to_path_buf(), (print, now));
                false
            }
        }
    }

    /// Ingests every finished file waiting in the folder once. Files are taken in groups, as
    /// from a mailbox: a group is recorded in one transaction while the next group's files are
    /// read and prepared on other workers.
    pub async fn scan(&mut self, engine: &Engine) -> Result<ScanSummary> {
        let folder = &self.folder;
        std::fs::create_dir_all(folder).with_context(|| format!("creating drop folder {}", folder.display()))?;
        let mut summary = ScanSummary::default();
        let files = pending_files(folder);
        self.seen.retain(|path, _| files.contains(path));
        let now = Instant::now();
        let mut settled = Vec::with_capacity(files.len());
        for file in files {
            if self.settled(&file, now) {
                settled.push(file);
            } else {
                summary.left += 1;
            }
        }
        let mut last_error = None;
        let mut waiting = settled.into_iter().peekable();
        let mut group = self.start_group(engine, &mut waiting).await;
        while !group.is_empty() {
            // The next group is read and being prepared while this one is recorded.
            let next = self.start_group(engine, &mut waiting).await;
            for (file, taken) in self.finish_group(engine, group).await? {
                match taken {
                    Taken::Ingested => summary.ingested += 1,
                    Taken::Quarantined => {
                        summary.quarantined += 1;
                        engine.metrics().message("quarantined");
                    }
                    Taken::Left => summary.left += 1,
                    Taken::NotStored(error) => {
                        summary.left += 1;
                        last_error = Some(error);
                    }
                }
                self.seen.remove(&file);
            }
            group = next;
        }
        let at = engine.now_ms();
        self.health.update(|h| {
            h.state = if last_error.is_some() { "failing" } else { "watching" }.into();
            h.last_poll_at = Some(at);
            if last_error.is_none() {
                h.last_success_at = Some(at);
            }
            h.backlog = summary.left;
            h.ingested += summary.ingested as u64;
            h.quarantined += summary.quarantined as u64;
            h.last_error = last_error;
        });
        Ok(summary)
    }

    /// Reads the next group of files (up to [`GROUP_MESSAGES`], or until [`GROUP_BYTES`] are
    /// read), counts a try at each in one commit, and starts each one's preparation on
    /// another worker.
    async fn start_group(
        &self,
        engine: &Engine,
        files: &mut std::iter::Peekable<std::vec::IntoIter<PathBuf>>,
    ) -> Vec<Pending> {
        /// A file of the group: decided already, or read and waiting for its try to be counted.
        enum Slot {
            Decided(Pending),
            Read {
                file: PathBuf,
                before: Option<(u64, SystemTime)>,
                raw: Vec<u8>,
            },
        }
        let (mut group, mut bytes) = (Vec::new(), 0);
        while group.len() < GROUP_MESSAGES && bytes < GROUP_BYTES {
            let Some(file) = files.next() else { break };
            let before = fingerprint(&file);
            let raw = match std::fs::read(&file) {
                Ok(raw) => raw,
                Err(e) => {
                    error!(file = %file.display(), error = %e, "cannot read a dropped file");
                    group.push(Slot::Decided(Pending::Done(file, Taken::Left)));
                    continue;
                }
            };
            if raw.len() > self.max_bytes {
                let why = format!(
                    "the message is {} bytes, over the limit of {}",
                    raw.len(),
                    self.max_bytes
                );
                group.push(Slot::Decided(Pending::Quarantine(file, why)));
                continue;
            }
            bytes += raw.len();
            group.push(Slot::Read { file, before, raw });
        }
        // A message the service died on before is not read again more than a few times.
        let read: Vec<&[u8]> = group
            .iter()
            .filter_map(|pending| match pending {
                Slot::Read { raw, .. } => Some(raw.as_slice()),
                _ => None,
            })
            .collect();
        let mut guarded = match engine.guard_preparations(&read).await {
            Ok(set_aside) => Ok(set_aside.into_iter()),
            Err(e) => Err(format!("{e:#}")),
        };
        group
            .into_iter()
            .map(|pending| {
                let (file, before, raw) = match pending {
                    Slot::Decided(decided) => return decided,
                    Slot::Read { file, before, raw } => (file, before, raw),
                };
                match &mut guarded {
                    Ok(set_aside) => match set_aside.next().flatten() {
                        Some(why) => {
                            error!(file = %file.display(), reason = %why, "set aside");
                            Pending::Quarantine(file, why)
                        }
                        None => {
                            let sha256 = crate::mail::sha256_hex(&raw);
                            let engine = engine.clone();
                            let preparing = tokio::spawn(async move {
                                let prepared = engine.prepare(&raw).await;
                                (raw, prepared)
                            });
                            Pending::Preparing {
                                file,
                                before,
                                sha256,
                                preparing,
                            }
                        }
                    },
                    // The database takes no writes at all: nothing about this message is wrong.
                    Err(e) => {
                        warn!(file = %file.display(), error = %e, "the database refused a write; leaving the file for the next scan");
                        Pending::Done(file, Taken::NotStored(e.clone()))
                    }
                }
            })
            .collect()
    }

    /// Records a group's prepared files in one transaction (one at a time if that fails), then
    /// moves each file where it belongs: what each file came to, in order.
    async fn finish_group(&mut self, engine: &Engine, group: Vec<Pending>) -> Result<Vec<(PathBuf, Taken)>> {
        let (mut ready, mut prepared, mut readied) = (Vec::new(), Vec::new(), Vec::new());
        let mut done = Vec::with_capacity(group.len());
        for pending in group {
            match pending {
                Pending::Done(file, taken) => done.push((file, taken)),
                Pending::Quarantine(file, why) => {
                    quarantine(&file, &self.folder, &why)?;
                    done.push((file, Taken::Quarantined));
                }
                Pending::Preparing {
                    file,
                    before,
                    sha256,
                    preparing,
                } => match preparing.await {
                    Ok((raw, email)) => {
                        ready.push((raw, format!("drop:{}", file.display())));
                        prepared.push(email);
                        readied.push((file, before, sha256));
                    }
                    Err(crashed) => {
                        let error = crate::engine::EngineError::PreparationFailed(crashed.to_string());
                        let taken = self.store_failed(&file, sha256, &error)?;
                        done.push((file, taken));
                    }
                },
            }
        }
        let results = engine.record_batch(&ready, prepared).await;
        for (((raw, _), (file, before, sha256)), result) in ready.iter().zip(readied).zip(results) {
            let taken = match result {
                Ok(report) => {
                    self.store_failures.remove(&sha256);
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
                    // What is moved to processed/ is exactly what was stored: a file still
                    // being written is taken again, whole, on the next scan.
                    if fingerprint(&file) != before {
                        warn!(file = %file.display(), "the file changed while it was read; leaving it for the next scan");
                        Taken::Left
                    } else {
                        match move_into(&file, &self.folder.join("processed")) {
                            Ok(_) => Taken::Ingested,
                            // Another instance recorded it too (once: the dedup key saw to
                            // that) and moved it first.
                            Err(error) if gone(&error) => Taken::Left,
                            Err(error) => return Err(error),
                        }
                    }
                }
                Err(e) => {
                    // Its preparation did finish, so this try does not count it as poison.
                    let _ = engine.preparation_finished(raw).await;
                    self.store_failed(&file, sha256, &e)?
                }
            };
            done.push((file, taken));
        }
        Ok(done)
    }

    /// Counts a failure to store a file's message (per content, not per file name: a renamed
    /// copy is the same message): left for the next scan, or set aside after too many.
    fn store_failed(&mut self, file: &Path, sha256: String, e: &crate::engine::EngineError) -> Result<Taken> {
        let failures = {
            let count = self.store_failures.entry(sha256.clone()).or_insert(0);
            *count += 1;
            *count
        };
        if failures < MAX_STORE_FAILURES {
            warn!(file = %file.display(), error = %e, failures, "not stored; leaving the file for the next scan");
            return Ok(Taken::NotStored(format!("{e:#}")));
        }
        let why = format!("storing it failed {failures} times: {e:#}");
        self.store_failures.remove(&sha256);
        error!(file = %file.display(), reason = %why, "quarantined");
        quarantine(file, &self.folder, &why)?;
        Ok(Taken::Quarantined)
    }
}

/// A file of a group being taken.
enum Pending {
    /// Nothing more to do with it this scan.
    Done(PathBuf, Taken),
    /// To be set aside in `quarantine/`, for this reason.
    Quarantine(PathBuf, String),
    /// Being prepared (parsed, its PDFs read) on another worker; `before` is its fingerprint
    /// when it was read, `sha256` its content's hash (what store failures are counted by).
    Preparing {
        file: PathBuf,
        before: Option<(u64, SystemTime)>,
        sha256: String,
        preparing: tokio::task::JoinHandle<(Vec<u8>, crate::engine::PreparedEmail)>,
    },
}

enum Taken {
    Ingested,
    Quarantined,
    /// Not taken this time (changed while read, or unreadable for now).
    Left,
    /// The database refused it; the error, for the health view.
    NotStored(String),
}

/// Ingests every file waiting in the folder once (a one-shot run: the files are taken to be
/// finished, as they are when a command is run on a folder already filled).
pub async fn scan_once(engine: &Engine, folder: &Path) -> Result<ScanSummary> {
    scan_once_limited(engine, folder, MAX_MESSAGE_BYTES).await
}

/// [`scan_once`] with a size limit of `max_bytes` per file.
pub async fn scan_once_limited(engine: &Engine, folder: &Path, max_bytes: usize) -> Result<ScanSummary> {
    DropFolder::new(folder, max_bytes, Duration::ZERO).scan(engine).await
}

/// Scans every `interval` until `stop` is set, taking files once they have settled. A file
/// being ingested when the signal comes is finished first.
pub async fn run(
    engine: &Engine,
    mut drop_folder: DropFolder,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<()> {
    println!("watching {} (Ctrl-C to stop)", drop_folder.folder.display());
    while !*stop.borrow() {
        // A scan that fails (a full disk, a folder it may not write to) is reported in the
        // health view and tried again after the interval: it never stops the service.
        match drop_folder.scan(engine).await {
            Ok(summary) if summary.ingested + summary.quarantined > 0 => info!(?summary, "scan done"),
            Ok(_) => {}
            Err(error) => {
                error!(error = %format!("{error:#}"), "scanning the drop folder failed; trying again");
                drop_folder.health.update(|h| {
                    h.state = "failing".into();
                    h.last_error = Some(format!("{error:#}"));
                });
            }
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

#[cfg(test)]
mod tests {
    #[test]
    fn a_file_another_instance_took_is_gone_not_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("taken.eml");
        let error = super::move_into(&missing, &dir.path().join("processed")).unwrap_err();
        assert!(super::gone(&error), "{error:#}");
        assert!(
            super::quarantine(&missing, dir.path(), "why").is_ok(),
            "nothing to set aside"
        );
        let other = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        assert!(!super::gone(&other));
    }
}
