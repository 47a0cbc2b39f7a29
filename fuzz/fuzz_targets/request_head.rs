//! Arbitrary bytes as a request target and `Host`, through the checks every
//! request passes before matching. See `fuzz/request_head.rs`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use licensegate::policy;

#[path = "../request_head.rs"]
mod request_head;

fuzz_target!(|data: &[u8]| {
    request_head::request_head(data);
});
