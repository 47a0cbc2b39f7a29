//! The HTTP/1 head harness: arbitrary bytes as a request head and as a
//! response head, through the proxy's own codec (`proxy::h1`). Shared by
//! the cargo-fuzz target `h1_request` and the seed replay in
//! `src/proxy/h1/mod.rs` (it names the library only as `crate::proxy`).
//!
//! Besides "never panic", an accepted head must hold these invariants:
//!
//! - its length is within the input, and every shorter prefix of the head
//!   is "incomplete", never an error (a head split across reads parses);
//! - written back by `write_request_head` and parsed again, it has the same
//!   method, URI, headers (the framing ones aside) and framing, the version
//!   HTTP/1.1, and for an HTTP/1.1 request the same persistence and
//!   `Expect: 100-continue`;
//! - a response head (read for GET and for HEAD) written back by
//!   `write_response_head` parses to the same status, framing,
//!   persistence and headers (framing, `connection` and an added `date`
//!   aside).

#![allow(dead_code)]

use crate::proxy::h1::{
    parse_request, parse_response, write_request_head, write_response_head, HeadError, RequestHead,
    ResponseFraming, ResponseOut,
};
use http::header::{self, HeaderMap};
use http::{Method, Version};

/// Prefixes checked one by one up to this head length; longer heads are
/// checked at a sample of cut points to keep executions fast.
const ALL_PREFIXES: usize = 512;

/// Run one input; `Some(true)` when it parsed as a request head,
/// `Some(false)` when refused, `None` when incomplete.
pub fn h1_request(data: &[u8]) -> Option<bool> {
    for method in [Method::GET, Method::HEAD] {
        response(data, &method);
    }
    match parse_request(data) {
        Ok(None) => None,
        Err(e) => {
            check_error(&e);
            Some(false)
        }
        Ok(Some((head, len))) => {
            assert!(len > 0 && len <= data.len());
            prefixes_are_incomplete(&data[..len]);
            round_trip(&head);
            Some(true)
        }
    }
}

fn check_error(e: &HeadError) {
    let status = e.status().as_u16();
    assert!(
        [400, 414, 431, 501, 505].contains(&status),
        "{e:?}: {status}"
    );
    let detail = e.to_string();
    assert!(!detail.is_empty() && detail.len() < 120 && !detail.contains('\n'));
}

fn prefixes_are_incomplete(head: &[u8]) {
    let step = (head.len() / ALL_PREFIXES).max(1);
    for end in (0..head.len()).step_by(step) {
        match parse_request(&head[..end]) {
            Ok(None) => {}
            other => panic!(
                "prefix of {end} bytes of an accepted head: {:?}",
                other.map(|o| o.map(|(_, n)| n))
            ),
        }
    }
    let (_, len) = parse_request(head)
        .expect("the head alone parses")
        .expect("the head alone is complete");
    assert_eq!(len, head.len());
}

fn without_framing(headers: &HeaderMap) -> HeaderMap {
    let mut headers = headers.clone();
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::TRANSFER_ENCODING);
    headers
}

fn round_trip(first: &RequestHead) {
    let mut out = Vec::new();
    write_request_head(&mut out, &first.parts, first.framing);
    let why = String::from_utf8_lossy(&out);
    let (second, len) = match parse_request(&out) {
        Ok(Some(parsed)) => parsed,
        other => panic!("written head does not parse: {why:?}: {other:?}"),
    };
    assert_eq!(len, out.len(), "{why:?}");
    assert_eq!(second.parts.method, first.parts.method, "{why:?}");
    assert_eq!(second.parts.uri, first.parts.uri, "{why:?}");
    assert_eq!(second.parts.version, Version::HTTP_11, "{why:?}");
    assert_eq!(second.framing, first.framing, "{why:?}");
    assert_eq!(
        without_framing(&second.parts.headers),
        without_framing(&first.parts.headers),
        "{why:?}"
    );
    if first.parts.version == Version::HTTP_11 {
        assert_eq!(second.keep_alive, first.keep_alive, "{why:?}");
        assert_eq!(second.expect_continue, first.expect_continue, "{why:?}");
    }
}

fn response(data: &[u8], method: &Method) {
    let first = match parse_response(data, method) {
        Ok(Some((head, len))) => {
            assert!(len > 0 && len <= data.len());
            head
        }
        Ok(None) => return,
        Err(e) => {
            check_error(&e);
            return;
        }
    };
    let out = match first.framing {
        ResponseFraming::Empty => ResponseOut::NoBody,
        ResponseFraming::Length(n) => ResponseOut::Length(n),
        ResponseFraming::Chunked => ResponseOut::Chunked,
        ResponseFraming::UntilClose => ResponseOut::Close,
    };
    let mut written = Vec::new();
    write_response_head(
        &mut written,
        first.parts.status,
        &first.parts.headers,
        out,
        !first.keep_alive,
    );
    let why = String::from_utf8_lossy(&written);
    let (second, len) = match parse_response(&written, method) {
        Ok(Some(parsed)) => parsed,
        other => panic!("written response head does not parse: {why:?}: {other:?}"),
    };
    assert_eq!(len, written.len());
    assert_eq!(second.parts.status, first.parts.status, "{why:?}");
    assert_eq!(second.framing, first.framing, "{why:?}");
    assert_eq!(second.keep_alive, first.keep_alive, "{why:?}");
    let mut a = without_framing(&first.parts.headers);
    let mut b = without_framing(&second.parts.headers);
    if out == ResponseOut::NoBody {
        // A bodiless response keeps its Content-Length.
        assert_eq!(
            second
                .parts
                .headers
                .get_all(header::CONTENT_LENGTH)
                .iter()
                .count(),
            first
                .parts
                .headers
                .get_all(header::CONTENT_LENGTH)
                .iter()
                .count(),
            "{why:?}"
        );
    }
    if !a.contains_key(header::DATE) {
        b.remove(header::DATE);
    }
    a.remove(header::CONNECTION);
    b.remove(header::CONNECTION);
    assert_eq!(a, b, "{why:?}");
}
