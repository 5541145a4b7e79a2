//! The security review's hostile PDFs (tests/fixtures/make_hostile.py): each one is read to an
//! answer in bounded time and memory, in process and in the worker processes the service uses;
//! a worker that dies or overruns is reported as a finding, never a crash; and sixteen of them
//! through intake at once leave the service up and under its memory ceiling.
//!
//! Kept in a binary of its own, so that the peak memory it measures is its own.

#[path = "it/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use countersign::engine::Engine;
use countersign::pdf::worker::{WorkerPool, WorkerSettings};
use countersign::pdf::{ExtractLimits, PdfError, PdfReader, extract};

const HOSTILE: &[&str] = &[
    "self_referencing_array.pdf",
    "double_flate.pdf",
    "object_stream_of_integers.pdf",
    "nested_50000.pdf",
    "parent_cycle.pdf",
    "xref_ten_million.pdf",
    "kids_5000_deep.pdf",
    "forty_object_streams.pdf",
];

/// The memory the service may use while sixteen hostile PDFs are read at once.
const RSS_CEILING_BYTES: u64 = 512 * 1024 * 1024;

fn hostile(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/pdf/hostile")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn form_ids() -> Vec<String> {
    ["PU-GP-1", "PU-ORG-1", "AP-1"].map(String::from).to_vec()
}

fn worker_program() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_countersign"))
}

fn pool(change: impl FnOnce(&mut WorkerSettings)) -> Arc<WorkerPool> {
    let mut settings = WorkerSettings::new(worker_program());
    change(&mut settings);
    Arc::new(WorkerPool::new(settings))
}

/// Peak resident memory of this test process (VmHWM), in bytes.
fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM");
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("a number");
    kb * 1024
}

#[test]
fn a_value_array_that_contains_itself_is_read_without_overflowing_the_stack() {
    // Before the depth bound this aborted the process ("has overflowed its stack").
    let form = extract(
        &hostile("self_referencing_array.pdf"),
        &form_ids(),
        ExtractLimits::default(),
    )
    .expect("the file is a readable PDF");
    let field = form.get("org_name").expect("the field is still listed");
    assert_eq!(field.value, None, "a value that is only itself has no text");
}

#[test]
fn a_doubly_compressed_value_stream_is_not_inflated_past_its_cap() {
    let started = Instant::now();
    let form = extract(&hostile("double_flate.pdf"), &form_ids(), ExtractLimits::default()).expect("readable");
    assert_eq!(form.get("org_name").and_then(|f| f.value.clone()), None);
    // 1 GiB of zeros would take far longer than this to inflate and decode.
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn every_hostile_pdf_gets_an_answer_in_process() {
    for name in HOSTILE {
        let result = extract(&hostile(name), &form_ids(), ExtractLimits::default());
        // Either answer is fine; what matters is that there is one, and no abort.
        if let Err(error) = &result {
            assert!(
                !matches!(error, PdfError::TimedOut(_)),
                "{name}: took longer than the limit in process: {error}"
            );
        }
    }
}

#[tokio::test]
async fn every_hostile_pdf_gets_an_answer_from_a_worker() {
    let pool = pool(|_| {});
    for name in HOSTILE {
        let result = pool
            .extract(&hostile(name), &form_ids(), ExtractLimits::default())
            .await;
        if let Err(error) = &result {
            assert!(
                !matches!(error, PdfError::ReaderCrashed(_) | PdfError::TimedOut(_)),
                "{name}: the worker should have answered: {error}"
            );
        }
    }
    // The pool still works for a real form afterwards.
    let good = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pdf/pdftk_gp.pdf")).unwrap();
    let form = pool
        .extract(&good, &form_ids(), ExtractLimits::default())
        .await
        .expect("a good form");
    assert_eq!(
        form.get("org_ods_code").and_then(|f| f.value.as_deref()),
        Some("A81001")
    );
}

#[tokio::test]
async fn a_worker_that_runs_out_of_memory_is_a_reader_failure_not_a_crash() {
    // With the per-stream cap raised past the object stream's 30 MB, its 15 million integers
    // need far more than 256 MiB of address space.
    let pool = pool(|s| s.max_address_space_bytes = 256 * 1024 * 1024);
    // The time limit is generous too: this is about memory, and an unoptimised worker on a
    // busy machine can take more than the default 10 s to reach its limit.
    let generous = ExtractLimits {
        max_decompressed_bytes: 64 * 1024 * 1024,
        timeout: std::time::Duration::from_secs(180),
        ..ExtractLimits::default()
    };
    let result = pool
        .extract(&hostile("object_stream_of_integers.pdf"), &form_ids(), generous)
        .await;
    match result {
        Err(PdfError::ReaderCrashed(why)) => assert!(why.contains("PDF reader"), "{why}"),
        other => panic!("expected the worker to die under its memory limit, got {other:?}"),
    }
    // The next PDF gets a fresh worker.
    let result = pool
        .extract(&hostile("parent_cycle.pdf"), &form_ids(), ExtractLimits::default())
        .await;
    assert!(!matches!(result, Err(PdfError::ReaderCrashed(_))), "{result:?}");
}

#[tokio::test]
async fn a_worker_that_overruns_its_time_is_killed_and_replaced() {
    let pool = pool(|_| {});
    let limits = ExtractLimits {
        timeout: Duration::from_millis(1),
        ..ExtractLimits::default()
    };
    let result = pool
        .extract(&hostile("object_stream_of_integers.pdf"), &form_ids(), limits)
        .await;
    assert_eq!(result, Err(PdfError::TimedOut(Duration::from_millis(1))));
    let result = pool
        .extract(&hostile("parent_cycle.pdf"), &form_ids(), ExtractLimits::default())
        .await;
    assert!(!matches!(result, Err(PdfError::TimedOut(_))), "{result:?}");
}

async fn engine_with_workers(database_url: &str) -> Engine {
    common::engine_on(database_url)
        .await
        .with_pdf_reader(PdfReader::Workers(pool(|_| {})))
}

#[tokio::test]
async fn sixteen_hostile_pdfs_through_intake_at_once_leave_the_service_up_and_under_its_ceiling() {
    let database = common::TestDatabase::create(countersign::storage::Backend::Sqlite).await;
    let engine = engine_with_workers(&database.url).await;
    let emails: Vec<Vec<u8>> = (0..16)
        .map(|i| {
            let name = HOSTILE[i % HOSTILE.len()];
            countersign::samples::email_with_form(
                "practice.manager@nhs.net",
                common::AUTHSERV_ID,
                &format!("hostile-{i}@nhs.net"),
                "Primary User form",
                Some((name, hostile(name))),
            )
            .expect("an email")
        })
        .collect();
    let intakes = emails.iter().map(|raw| engine.intake(raw, "test"));
    let reports = futures::future::join_all(intakes).await;
    for (i, report) in reports.into_iter().enumerate() {
        let report = report.unwrap_or_else(|e| panic!("email {i}: {e}"));
        assert_eq!(report.cases.len(), 1, "email {i}: one visible case");
    }
    let peak = peak_rss_bytes();
    eprintln!("peak RSS with sixteen hostile PDFs: {} MiB", peak / 1024 / 1024);
    assert!(
        peak < RSS_CEILING_BYTES,
        "peak RSS {} MiB is over the {} MiB ceiling",
        peak / 1024 / 1024,
        RSS_CEILING_BYTES / 1024 / 1024
    );
    // Still serving: a good form after the storm becomes a validated case.
    let workflows = common::workflows();
    let good = common::form_email(
        workflows.get("primary_user_gp").unwrap(),
        1,
        &[],
        "practice.manager@nhs.net",
        "good-after-storm@nhs.net",
        "form",
    );
    let report = engine.intake(&good, "test").await.expect("intake");
    assert_eq!(report.cases[0].state, "validated", "{:?}", report.cases[0]);
}

#[test]
fn many_object_streams_share_one_decompression_budget() {
    // Forty object streams of 1 MiB each: each under the per-stream cap, together over the
    // per-PDF budget, so the PDF is refused rather than inflated.
    let result = extract(
        &hostile("forty_object_streams.pdf"),
        &form_ids(),
        ExtractLimits::default(),
    );
    assert!(matches!(result, Err(PdfError::Malformed(_))), "{result:?}");
    // With a budget big enough for all of them, the same file reads: the budget is what stopped it.
    let roomy = ExtractLimits {
        max_total_decompressed_bytes: 64 * 1024 * 1024,
        ..ExtractLimits::default()
    };
    let form = extract(&hostile("forty_object_streams.pdf"), &form_ids(), roomy).expect("readable");
    assert_eq!(
        form.get("org_name").and_then(|f| f.value.clone()).as_deref(),
        Some("found")
    );
}
