//! What the service logs, as one test sees it. One subscriber serves the whole test binary
//! (tracing's per-thread defaults race with callsites other tests register first); it writes
//! a line to a test's buffer only while that test's thread is capturing, so tests running at
//! once never see each other's lines. A `#[tokio::test]` runs its tasks (a server, a
//! dispatcher) on its own thread, so they are captured with it.

use std::cell::RefCell;
use std::sync::{Arc, Mutex, Once};

use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;

thread_local! {
    static CAPTURE: RefCell<Option<Arc<Mutex<Vec<u8>>>>> = const { RefCell::new(None) };
}

/// Installs the binary's subscriber (once): every level into a capturing test's buffer, and
/// INFO and above to the test harness's output, shown when a test fails.
pub fn install() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        let captured = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(|| ThreadBuffer)
            .with_filter(tracing_subscriber::filter::filter_fn(|_| {
                CAPTURE.with(|c| c.borrow().is_some())
            }));
        let harness = tracing_subscriber::fmt::layer()
            .with_test_writer()
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO);
        let subscriber = tracing_subscriber::registry().with(captured).with(harness);
        let _ = tracing::subscriber::set_global_default(subscriber);
    });
}

/// Every log line, at every level, from this thread until the result is dropped.
pub fn capture() -> Captured {
    install();
    let buffer = Arc::new(Mutex::new(Vec::new()));
    CAPTURE.with(|c| *c.borrow_mut() = Some(buffer.clone()));
    Captured(buffer)
}

pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Drop for Captured {
    fn drop(&mut self) {
        CAPTURE.with(|c| *c.borrow_mut() = None);
    }
}

struct ThreadBuffer;

impl std::io::Write for ThreadBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        CAPTURE.with(|c| {
            if let Some(buffer) = &*c.borrow() {
                buffer.lock().unwrap().extend_from_slice(bytes);
            }
        });
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
