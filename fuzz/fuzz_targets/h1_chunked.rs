//! Arbitrary bytes as a chunked body, through the proxy's own decoder,
//! split and re-encoded. See `fuzz/h1_chunked.rs`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use licensegate::proxy;

#[path = "../h1_chunked.rs"]
mod h1_chunked;

fuzz_target!(|data: &[u8]| {
    h1_chunked::h1_chunked(data);
});
