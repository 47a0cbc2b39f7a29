//! Arbitrary bytes as an HTTP/1 request head and response head, through
//! the proxy's own codec. See `fuzz/h1_request.rs`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use licensegate::proxy;

#[path = "../h1_request.rs"]
mod h1_request;

fuzz_target!(|data: &[u8]| {
    h1_request::h1_request(data);
});
