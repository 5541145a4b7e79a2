//! PDF extraction alone, in process: any bytes must give an answer (a form or a typed error),
//! never a panic, an abort, or a loop without end.
#![no_main]

use countersign::pdf::{ExtractLimits, extract_in_place};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let ids = ["PU-GP-1".to_string(), "PU-ORG-1".to_string(), "AP-1".to_string()];
    let _ = extract_in_place(data, &ids, ExtractLimits::default());
});
