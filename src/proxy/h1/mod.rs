//! licensegate's own HTTP/1.1 codec: pure functions and state machines,
//! bytes in and typed values out, with no I/O. The relay frames requests
//! and responses with it in the inbound connection's task.
//!
//! - [`head`]: request and response heads and their body framing;
//! - [`chunked`]: the chunked transfer coding, decoded incrementally;
//! - [`write`]: heads and chunk framing written back out.

pub mod chunked;
pub mod head;
pub mod write;

pub use chunked::{ChunkedDecoder, ChunkedError, Decoded};
pub use head::{
    parse_request, parse_response, BodyFraming, HeadError, RequestHead, ResponseFraming,
    ResponseHead, MAX_HEADERS,
};
pub use write::{
    http_date, write_chunk_header, write_request_head, write_response_head, ResponseOut, CHUNK_END,
    LAST_CHUNK,
};

// The fuzz harnesses (`fuzz/h1_request.rs`, `fuzz/h1_chunked.rs`) are
// compiled into the tests too, so every committed seed runs on every
// `cargo test` with the harness's invariants.
#[cfg(test)]
#[path = "../../../fuzz/h1_chunked.rs"]
mod h1_chunked_harness;
#[cfg(test)]
#[path = "../../../fuzz/h1_request.rs"]
mod h1_request_harness;

#[cfg(test)]
#[test]
fn h1_fuzz_seeds_replay() {
    type Harness = fn(&[u8]) -> Option<bool>;
    let targets: [(&str, Harness); 2] = [
        ("h1_request", h1_request_harness::h1_request),
        ("h1_chunked", h1_chunked_harness::h1_chunked),
    ];
    for (target, run) in targets {
        let seeds = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/seeds")
            .join(target);
        let mut paths: Vec<_> = std::fs::read_dir(&seeds)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .collect();
        paths.sort();
        assert!(paths.len() >= 10, "{target}: too few seeds: {paths:?}");
        for path in paths {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            // A panic inside `run` is the failure a fuzzer would report.
            let outcome = run(&std::fs::read(&path).unwrap());
            if name.starts_with("ok-") {
                assert_eq!(outcome, Some(true), "{target}/{name}");
            } else if name.starts_with("err-") {
                assert_eq!(outcome, Some(false), "{target}/{name}");
            }
        }
    }
}
