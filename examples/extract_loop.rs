//! Extracts one PDF's fields in a loop: a target for profilers (`perf record`, callgrind).

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: extract_loop FILE.pdf [RUNS]");
        std::process::exit(2);
    };
    let runs: usize = std::env::args().nth(2).and_then(|r| r.parse().ok()).unwrap_or(3000);
    let bytes = std::fs::read(&path).expect("readable PDF");
    let ids = vec!["PU-GP-1".to_string(), "PU-ORG-1".to_string(), "AP-1".to_string()];
    for _ in 0..runs {
        countersign::pdf::extract_in_place(&bytes, &ids, Default::default()).expect("extractable PDF");
    }
}
