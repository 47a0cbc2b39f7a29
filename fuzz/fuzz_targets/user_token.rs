//! Arbitrary bytes as a user token, or as claims signed by the identity
//! provider's fixture key, verified against its fixture JWKS. See
//! `fuzz/user_harness.rs`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use licensegate::{license, user};

#[path = "../user_harness.rs"]
mod user_harness;

fuzz_target!(|data: &[u8]| {
    let _ = user_harness::user_token(data);
});
