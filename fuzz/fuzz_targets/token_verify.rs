//! Arbitrary bytes as a license token, verified against a fixed keyring of
//! one Ed25519 and one ES256 key. See `fuzz/harness.rs`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use licensegate::license;

#[path = "../harness.rs"]
mod harness;

fuzz_target!(|data: &[u8]| {
    harness::token_verify(data);
});
