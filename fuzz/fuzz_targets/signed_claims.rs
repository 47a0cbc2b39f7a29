//! Arbitrary bytes as a token's payload (and optionally its header, before
//! a NUL byte), signed with a fixed key and verified: drives the claims and
//! strict-JSON parsers with signature-valid input. See `fuzz/harness.rs`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use licensegate::license;

#[path = "../harness.rs"]
mod harness;

fuzz_target!(|data: &[u8]| {
    // Signing makes an execution ~50x dearer than a parse, so bound the
    // input: `verify` turns away anything over 16 KiB without parsing it.
    if data.len() <= license::MAX_TOKEN_BYTES {
        let _ = harness::signed_claims(data);
    }
});
