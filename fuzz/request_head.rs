//! The request-head harness: arbitrary bytes as a request target and a
//! `Host` value, through the checks every request passes before matching
//! (`check_request_head`, `normalize_target`). Shared by the cargo-fuzz
//! target `request_head` and the seed replay in `src/policy/normalize.rs`,
//! like `harness.rs` (it names the library only as `crate::policy`).
//!
//! Input: `target NUL host`; without a NUL, the whole input is the target
//! and the host is `app.test`. Besides "never panic", an accepted head must
//! hold these invariants:
//!
//! - the host is the one the `http` crate's own authority parser reads: the
//!   same host (ignoring case and a trailing dot) and port, no userinfo, no
//!   comma — a differential check against a second parser;
//! - the path and query are ASCII (raw bytes ≥ 0x80 were percent-encoded);
//! - the path is a fixed point of normalisation (normalising it again
//!   changes nothing), starts with `/`, has no `//`, no `.` or `..`
//!   segment and no `;` or `\`.

#![allow(dead_code)]

use crate::policy::normalize::{check_host, check_request_head, normalize, normalize_target};

/// Split an input into (target, host).
fn split(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == 0) {
        Some(nul) => (&data[..nul], &data[nul + 1..]),
        None => (data, b"app.test"),
    }
}

/// Run one input; `Some(true)` when the head was accepted, `Some(false)`
/// when refused, `None` when the bytes are not even a request hyper would
/// hand over (not a URI or not a header value).
pub fn request_head(data: &[u8]) -> Option<bool> {
    let (target, host) = split(data);
    let uri = http::Uri::try_from(target).ok()?;
    let host_value = http::HeaderValue::from_bytes(host).ok()?;
    let mut head = http::Request::get(uri)
        .header(http::header::HOST, host_value)
        .body(())
        .ok()?
        .into_parts()
        .0;
    if check_request_head(&mut head).is_err() || normalize_target(&mut head).is_err() {
        return Some(false);
    }
    let host = head.headers[http::header::HOST].as_bytes();
    assert!(
        check_host(host).is_ok(),
        "accepted host fails its own check"
    );
    assert!(!host.contains(&b'@') && !host.contains(&b','), "{host:?}");
    let authority: http::uri::Authority = std::str::from_utf8(host)
        .expect("an accepted host is ASCII")
        .parse()
        .unwrap_or_else(|e| panic!("accepted host {host:?} is not an authority to http: {e}"));
    let ours = std::str::from_utf8(host).unwrap();
    let (our_host, our_port) = match ours.strip_prefix('[') {
        Some(rest) => {
            let (literal, after) = rest.split_once(']').unwrap();
            (literal, after.strip_prefix(':'))
        }
        None => match ours.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (ours, None),
        },
    };
    let theirs = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    assert!(
        our_host
            .trim_end_matches('.')
            .eq_ignore_ascii_case(theirs.trim_end_matches('.')),
        "host read as {our_host:?} here and {theirs:?} by http"
    );
    assert_eq!(
        our_port.map(|p| p.parse::<u16>().unwrap()),
        authority.port_u16(),
        "port of {ours:?}"
    );

    let path = head.uri.path();
    assert!(path.is_ascii(), "{path:?}");
    assert!(head.uri.query().is_none_or(str::is_ascii));
    if path != "*" {
        assert!(path.starts_with('/'), "{path:?}");
        assert_eq!(
            normalize(path).as_deref(),
            Ok(path),
            "not a fixed point of normalisation"
        );
        assert!(!path.contains("//") && !path.contains(';') && !path.contains('\\'));
        assert!(
            path.split('/')
                .all(|segment| segment != "." && segment != ".."),
            "{path:?}"
        );
    }
    Some(true)
}
