//! PDF extraction in worker processes, so that no PDF can hurt the service.
//!
//! The limits in [`super::extract_in_place`] bound every loop and recursion we know of. A
//! worker process is for the ones we do not know of: a parser bug, a stack overflow (which
//! aborts a process; `catch_unwind` cannot catch it), an allocation storm or a runaway loop.
//! Each worker is the service's own binary started with a hidden argument ([`WORKER_ARG`]),
//! under OS limits on address space and CPU time, and it reads one PDF at a time from a pipe.
//! If one dies or overruns its time, it is killed and replaced, and the form gets a
//! `pdf_unreadable` finding that says why. A small pool of them is kept warm, so the boundary
//! costs a pipe round trip, not a process start, per PDF.
//!
//! The protocol is length-prefixed frames on stdin and stdout: a JSON request header, the PDF's
//! bytes, then a JSON `Result<ExtractedForm, PdfError>` back. The worker writes nothing else on
//! stdout.

use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use super::{ExtractLimits, ExtractedForm, PdfError};

/// The hidden first argument that turns the binary into a PDF worker.
pub const WORKER_ARG: &str = "__pdf-worker";

/// How the pool starts and bounds its workers.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// The program to start: the service's own binary.
    pub program: PathBuf,
    /// Workers kept at once; extraction beyond this waits for one to be free.
    pub workers: usize,
    /// `RLIMIT_AS` of each worker: an allocation past it fails, and the worker aborts.
    pub max_address_space_bytes: u64,
    /// `RLIMIT_CPU` of each worker over its whole life: a backstop behind the per-PDF timeout.
    pub max_cpu_secs: u64,
    /// A worker is replaced after this many PDFs, so that the CPU limit stays far off and no
    /// state (a slow leak in a parser) builds up.
    pub jobs_per_worker: u32,
}

impl WorkerSettings {
    /// Workers running `program`, sized for this machine.
    pub fn new(program: PathBuf) -> Self {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        WorkerSettings {
            program,
            workers: cores.clamp(2, 8),
            max_address_space_bytes: 1024 * 1024 * 1024,
            max_cpu_secs: 600,
            jobs_per_worker: 1000,
        }
    }

    /// Workers running the current executable (the service itself).
    pub fn current_exe() -> std::io::Result<Self> {
        Ok(Self::new(std::env::current_exe()?))
    }
}

/// What the service sends with each PDF.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Request {
    form_ids: Vec<String>,
    limits: ExtractLimits,
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
    jobs: u32,
}

/// A pool of PDF worker processes.
pub struct WorkerPool {
    settings: WorkerSettings,
    idle: std::sync::Mutex<Vec<Worker>>,
    permits: tokio::sync::Semaphore,
}

impl std::fmt::Debug for WorkerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerPool").field("settings", &self.settings).finish()
    }
}

/// The largest response frame we accept from a worker: a form's fields, never megabytes.
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

impl WorkerPool {
    pub fn new(settings: WorkerSettings) -> Self {
        let permits = tokio::sync::Semaphore::new(settings.workers.max(1));
        WorkerPool {
            settings,
            idle: std::sync::Mutex::new(Vec::new()),
            permits,
        }
    }

    /// Extracts one PDF in a worker. The checks that need no parsing are made here first.
    pub async fn extract(
        &self,
        bytes: &[u8],
        known_form_ids: &[String],
        limits: ExtractLimits,
    ) -> Result<ExtractedForm, PdfError> {
        super::precheck(bytes, limits)?;
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| PdfError::ReaderCrashed("the PDF workers were shut down".into()))?;
        let idle = self.idle.lock().map(|mut idle| idle.pop()).unwrap_or(None);
        let mut worker = match idle {
            Some(worker) => worker,
            None => self.spawn()?,
        };
        let request = Request {
            form_ids: known_form_ids.to_vec(),
            limits,
        };
        let outcome = tokio::time::timeout(limits.timeout, worker.round_trip(&request, bytes)).await;
        match outcome {
            Ok(Ok(result)) => {
                worker.jobs += 1;
                if worker.jobs < self.settings.jobs_per_worker
                    && let Ok(mut idle) = self.idle.lock()
                {
                    idle.push(worker);
                }
                result
            }
            Ok(Err(_broken_pipe)) => Err(PdfError::ReaderCrashed(worker.death().await)),
            Err(_elapsed) => {
                let _ = worker.child.kill().await;
                Err(PdfError::TimedOut(limits.timeout))
            }
        }
    }

    fn spawn(&self) -> Result<Worker, PdfError> {
        let mut command = Command::new(&self.settings.program);
        command
            .arg(WORKER_ARG)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            // One thread parses; glibc need not reserve an arena per core under the limit.
            .env("MALLOC_ARENA_MAX", "1")
            .kill_on_drop(true);
        let address_space = self.settings.max_address_space_bytes;
        let cpu = self.settings.max_cpu_secs;
        // SAFETY: between fork and exec only async-signal-safe calls are made: setrlimit.
        unsafe {
            command.pre_exec(move || {
                set_limit(libc::RLIMIT_AS, address_space)?;
                set_limit(libc::RLIMIT_CPU, cpu)?;
                // A worker that dies must not leave a core file per hostile PDF.
                set_limit(libc::RLIMIT_CORE, 0)?;
                Ok(())
            });
        }
        let mut child = command.spawn().map_err(|e| {
            PdfError::ReaderCrashed(format!(
                "could not start a PDF worker ({}): {e}",
                self.settings.program.display()
            ))
        })?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(PdfError::ReaderCrashed("a PDF worker has no pipes".into()));
        };
        Ok(Worker {
            child,
            stdin,
            stdout,
            jobs: 0,
        })
    }
}

fn set_limit(resource: libc::__rlimit_resource_t, value: u64) -> std::io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: setrlimit reads the struct we pass and nothing else.
    if unsafe { libc::setrlimit(resource, &limit) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl Worker {
    async fn round_trip(&mut self, request: &Request, pdf: &[u8]) -> std::io::Result<Result<ExtractedForm, PdfError>> {
        // Both frames in one write: one syscall, one wake-up of the worker.
        let header = serde_json::to_vec(request).map_err(std::io::Error::other)?;
        let mut frames = Vec::with_capacity(8 + header.len() + pdf.len());
        push_frame(&mut frames, &header)?;
        push_frame(&mut frames, pdf)?;
        self.stdin.write_all(&frames).await?;
        self.stdin.flush().await?;
        let mut length = [0u8; 4];
        self.stdout.read_exact(&mut length).await?;
        let length = u32::from_le_bytes(length) as usize;
        if length > MAX_RESPONSE_BYTES {
            return Err(std::io::Error::other("the worker's answer is too large"));
        }
        let mut body = vec![0u8; length];
        self.stdout.read_exact(&mut body).await?;
        serde_json::from_slice(&body).map_err(std::io::Error::other)
    }

    /// Why a worker stopped answering, for the finding.
    async fn death(mut self) -> String {
        let _ = self.child.start_kill();
        match tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await {
            Ok(Ok(status)) => describe_exit(status),
            _ => "the PDF reader stopped answering".into(),
        }
    }
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    match status.signal() {
        Some(libc::SIGKILL) => "the PDF reader was stopped: it went over its memory or time limit".into(),
        Some(libc::SIGXCPU) => "the PDF reader went over its CPU time limit".into(),
        Some(libc::SIGSEGV) | Some(libc::SIGBUS) => {
            "the PDF reader crashed (a stack overflow or a fault in the parser)".into()
        }
        Some(libc::SIGABRT) => "the PDF reader aborted (it ran out of memory, or its stack overflowed)".into(),
        Some(signal) => format!("the PDF reader was killed by signal {signal}"),
        None => format!("the PDF reader exited unexpectedly ({status})"),
    }
}

fn push_frame(out: &mut Vec<u8>, bytes: &[u8]) -> std::io::Result<()> {
    let length = u32::try_from(bytes.len()).map_err(std::io::Error::other)?;
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

/// Reads one frame; `None` at a clean end of input.
fn read_frame(input: &mut impl Read, max: usize) -> std::io::Result<Option<Vec<u8>>> {
    let mut length = [0u8; 4];
    match input.read_exact(&mut length) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let length = u32::from_le_bytes(length) as usize;
    if length > max {
        return Err(std::io::Error::other(format!(
            "a frame of {length} bytes is over {max}"
        )));
    }
    let mut body = vec![0u8; length];
    input.read_exact(&mut body)?;
    Ok(Some(body))
}

fn write_frame(out: &mut impl Write, bytes: &[u8]) -> std::io::Result<()> {
    let mut frame = Vec::with_capacity(4 + bytes.len());
    push_frame(&mut frame, bytes)?;
    out.write_all(&frame)?;
    out.flush()
}

/// The worker's side: read PDFs from stdin until it closes, answer each on stdout. Called by
/// `main` before anything else starts (no runtime, no logging to stdout).
pub fn run_worker() -> std::process::ExitCode {
    // lopdf's parser recurses up to its own nesting limit; give it room on a thread of our own.
    let worker = std::thread::Builder::new()
        .name("pdf-worker".into())
        .stack_size(16 * 1024 * 1024)
        .spawn(serve_requests);
    match worker.map(|w| w.join()) {
        Ok(Ok(Ok(()))) => std::process::ExitCode::SUCCESS,
        _ => std::process::ExitCode::FAILURE,
    }
}

fn serve_requests() -> std::io::Result<()> {
    let mut input = std::io::BufReader::new(std::io::stdin().lock());
    // Not the line-buffered stdout: an answer is one write.
    let mut output = std::io::BufWriter::new(std::io::stdout().lock());
    loop {
        let Some(header) = read_frame(&mut input, 1024 * 1024)? else {
            return Ok(());
        };
        let request: Request = serde_json::from_slice(&header).map_err(std::io::Error::other)?;
        let max = request.limits.max_bytes.saturating_add(1);
        let Some(pdf) = read_frame(&mut input, max)? else {
            return Ok(());
        };
        let result = std::panic::catch_unwind(|| super::extract_in_place(&pdf, &request.form_ids, request.limits))
            .unwrap_or_else(|panic| Err(PdfError::ReaderCrashed(super::panic_message(&panic))));
        let answer = serde_json::to_vec(&result).map_err(std::io::Error::other)?;
        write_frame(&mut output, &answer)?;
    }
}
