//! `Authentication-Results` parsing and the verdict built on it: any text, no panic; and a pass
//! only ever for our own authserv-id with a matching From domain.
#![no_main]

use countersign::mail::{SenderAuth, auth_results, sender_auth};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let parsed = auth_results::parse(text);
    let verdict = sender_auth(&[text], Some("nhs.net"), "mx.countersign.test");
    if let SenderAuth::Pass { .. } = verdict {
        let parsed = parsed.expect("a pass comes only from a header that parses");
        assert_eq!(parsed.authserv_id, "mx.countersign.test", "a pass only from our own server");
    }
});
