//! Mail sources. Each takes every message exactly once: the message and its cases commit in
//! one transaction (deduplicated by Message-ID and content hash), and only then does the
//! source act on the message (move it to the processed folder). A crash in between makes no
//! duplicate: the next run finds the message already ingested and just moves it.

pub mod dropfolder;
pub mod imap;

use std::sync::{Arc, Mutex};

/// Messages recorded in one transaction, at most, by either source: one commit for many is
/// most of the gain, and a failed group is redone one message at a time
/// ([`crate::engine::Engine::record_batch`]).
pub const GROUP_MESSAGES: usize = 32;
/// A group stops growing once this much mail is read for it (a 20 MB message is alone).
pub const GROUP_BYTES: usize = 8 * 1024 * 1024;

/// What a poller is doing, for the health view and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PollerHealth {
    pub state: String,
    pub last_poll_at: Option<i64>,
    pub last_success_at: Option<i64>,
    /// Messages waiting in the mailbox at the last poll.
    pub backlog: usize,
    pub ingested: u64,
    pub quarantined: u64,
    pub last_error: Option<String>,
}

/// A shared, cheaply cloned view of a poller's health.
#[derive(Debug, Clone, Default)]
pub struct HealthHandle(Arc<Mutex<PollerHealth>>);

impl HealthHandle {
    pub fn snapshot(&self) -> PollerHealth {
        self.0.lock().map(|h| h.clone()).unwrap_or_default()
    }

    pub fn update(&self, change: impl FnOnce(&mut PollerHealth)) {
        if let Ok(mut health) = self.0.lock() {
            change(&mut health);
        }
    }
}

/// A stop signal shared by the workers `serve` runs: Ctrl-C or SIGTERM flips it.
pub fn shutdown_channel() -> (tokio::sync::watch::Sender<bool>, tokio::sync::watch::Receiver<bool>) {
    tokio::sync::watch::channel(false)
}

/// Resolves when SIGTERM or Ctrl-C arrives.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
