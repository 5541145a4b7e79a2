//! Workflow file loading: any text is a workflow or a clear error, never a panic.
#![no_main]

use std::collections::BTreeSet;
use std::path::Path;

use countersign::workflow::definition::WorkflowDef;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let templates: BTreeSet<String> = ["acknowledgement", "request_for_correction", "reminder", "rejection", "provisioned", "final_notice", "escalation", "team_nudge"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let _ = WorkflowDef::parse(Path::new("fuzz.toml"), text, &templates);
});
