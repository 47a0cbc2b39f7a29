//! Heads and chunk framing written out, into a caller's `Vec<u8>`.
//!
//! The writers own the framing headers: `Content-Length` and
//! `Transfer-Encoding` from the caller's headers are never copied, exactly
//! one framing header is written from the framing the caller chose, so a
//! head that leaves here cannot disagree with the body that follows it.
//! Names go out lower-case (as the `http` crate keeps them, and as hyper
//! writes them by default); values byte for byte.

use std::cell::RefCell;
use std::io::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};

use super::head::BodyFraming;

/// Ends every chunk's data.
pub const CHUNK_END: &[u8] = b"\r\n";
/// The last chunk and an empty trailer section.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// How a response body written by the proxy is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseOut {
    /// No body: `content-length: 0`.
    Empty,
    /// `content-length: N`.
    Length(u64),
    /// `transfer-encoding: chunked`.
    Chunked,
    /// No framing header; the body runs until the connection closes (the
    /// caller closes it, and should pass `close`).
    Close,
    /// A response that has no body by its nature (1xx, 204, 304, or an
    /// answer to HEAD): a `content-length` the headers carry is kept (it
    /// describes the representation, RFC 9110 §8.6), none is added.
    NoBody,
}

/// `METHOD TARGET HTTP/1.1`, the headers but the framing ones, then exactly
/// one framing header for `framing`.
///
/// The target is the URI's path and query (origin-form); the whole URI
/// when it has a scheme (absolute-form); `*` stays `*`; an authority alone
/// (CONNECT) is written as is. The version is always HTTP/1.1: the proxy
/// speaks 1.1 to its upstreams whatever the client spoke (framing already
/// refuses chunked from a 1.0 client).
///
/// An `Empty` POST, PUT or PATCH gets `content-length: 0`, as RFC 9110
/// §8.6 asks of a user agent ("SHOULD send Content-Length ... when the
/// method defines a meaning for enclosed content"). hyper's client writes
/// no length at all for an empty body unless the caller's headers carry
/// one; some origins answer 411 to a POST without it.
pub fn write_request_head(out: &mut Vec<u8>, parts: &http::request::Parts, framing: BodyFraming) {
    out.reserve(64 + parts.headers.len() * 32);
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let uri = &parts.uri;
    if uri.scheme().is_some() {
        // `Display` writes scheme, authority, path and query, no fragment.
        let _ = write!(out, "{uri}");
    } else if let Some(path_and_query) = uri.path_and_query() {
        out.extend_from_slice(path_and_query.as_str().as_bytes());
    } else if let Some(authority) = uri.authority() {
        out.extend_from_slice(authority.as_str().as_bytes());
    } else {
        out.push(b'/');
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    write_fields(out, &parts.headers, false);
    match framing {
        BodyFraming::Empty => {
            if matches!(parts.method, Method::POST | Method::PUT | Method::PATCH) {
                out.extend_from_slice(b"content-length: 0\r\n");
            }
        }
        BodyFraming::Length(n) => write_content_length(out, n),
        BodyFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// `HTTP/1.1 CODE REASON` (the canonical reason; empty for codes without
/// one), the headers but the framing ones, the framing header `framing`
/// calls for, `connection: close` when `close` and no `close` token is
/// there yet, and `date` when the headers have none (not on a 1xx, which
/// hyper never writes itself; RFC 9110 §6.6.1 leaves it optional there).
pub fn write_response_head(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    framing: ResponseOut,
    close: bool,
) {
    out.reserve(64 + headers.len() * 32);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    write_fields(out, headers, framing == ResponseOut::NoBody);
    match framing {
        ResponseOut::Empty => write_content_length(out, 0),
        ResponseOut::Length(n) => write_content_length(out, n),
        ResponseOut::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        ResponseOut::Close | ResponseOut::NoBody => {}
    }
    if close && !has_close_token(headers) {
        out.extend_from_slice(b"connection: close\r\n");
    }
    if !status.is_informational() && !headers.contains_key(header::DATE) {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(http_date().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// A chunk's size line: `{len:x}\r\n`. Follow the data with [`CHUNK_END`]
/// and the body with [`LAST_CHUNK`]; a zero `len` is the last chunk's line,
/// so never write an empty chunk this way.
pub fn write_chunk_header(out: &mut Vec<u8>, len: usize) {
    let _ = write!(out, "{len:x}\r\n");
}

thread_local! {
    /// The formatted date and the second it is for: formatting costs about
    /// as much as writing the rest of a small head, and hyper caches it the
    /// same way.
    static DATE: RefCell<Option<(u64, HeaderValue)>> = const { RefCell::new(None) };
}

/// The current time as an HTTP-date (RFC 9110 §5.6.7), formatted once per
/// second per thread.
pub fn http_date() -> HeaderValue {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with(|cached| {
        let mut cached = cached.borrow_mut();
        match &*cached {
            Some((at, value)) if *at == secs => value.clone(),
            _ => {
                let text = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs));
                let value = HeaderValue::try_from(text).expect("an HTTP-date is visible ASCII");
                *cached = Some((secs, value.clone()));
                value
            }
        }
    })
}

/// Every header as `name: value\r\n`, except `transfer-encoding` and,
/// unless `keep_length`, `content-length`.
fn write_fields(out: &mut Vec<u8>, headers: &HeaderMap, keep_length: bool) {
    for (name, value) in headers {
        if *name == header::TRANSFER_ENCODING || (*name == header::CONTENT_LENGTH && !keep_length) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

fn write_content_length(out: &mut Vec<u8>, n: u64) {
    let _ = write!(out, "content-length: {n}\r\n");
}

fn has_close_token(headers: &HeaderMap) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|value| {
        value
            .as_bytes()
            .split(|&b| b == b',')
            .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::h1::head::{parse_request, parse_response, ResponseFraming};

    fn request(method: &str, uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut builder = http::Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    fn written_request(parts: &http::request::Parts, framing: BodyFraming) -> String {
        let mut out = Vec::new();
        write_request_head(&mut out, parts, framing);
        String::from_utf8(out).unwrap()
    }

    fn written_response(
        status: u16,
        headers: &[(&str, &str)],
        framing: ResponseOut,
        close: bool,
    ) -> String {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        let mut out = Vec::new();
        write_response_head(
            &mut out,
            StatusCode::from_u16(status).unwrap(),
            &map,
            framing,
            close,
        );
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn request_heads_carry_exactly_one_framing_header() {
        let parts = request(
            "POST",
            "/upload?x=1",
            &[
                ("Host", "app.test"),
                ("Content-Length", "99"),
                ("Transfer-Encoding", "gzip"),
                ("X-A", "1"),
                ("X-A", "2"),
            ],
        );
        assert_eq!(
            written_request(&parts, BodyFraming::Length(5)),
            "POST /upload?x=1 HTTP/1.1\r\nhost: app.test\r\nx-a: 1\r\nx-a: 2\r\ncontent-length: 5\r\n\r\n"
        );
        assert_eq!(
            written_request(&parts, BodyFraming::Chunked),
            "POST /upload?x=1 HTTP/1.1\r\nhost: app.test\r\nx-a: 1\r\nx-a: 2\r\ntransfer-encoding: chunked\r\n\r\n"
        );
    }

    #[test]
    fn empty_bodies_of_methods_with_content_semantics_say_length_0() {
        for method in ["POST", "PUT", "PATCH"] {
            assert_eq!(
                written_request(&request(method, "/", &[]), BodyFraming::Empty),
                format!("{method} / HTTP/1.1\r\ncontent-length: 0\r\n\r\n")
            );
        }
        for method in ["GET", "HEAD", "DELETE", "OPTIONS"] {
            let parts = request(method, "/", &[("Content-Length", "0")]);
            assert_eq!(
                written_request(&parts, BodyFraming::Empty),
                format!("{method} / HTTP/1.1\r\n\r\n")
            );
        }
    }

    #[test]
    fn targets_keep_their_form_and_the_version_is_1_1() {
        let target = |method: &str, uri: &str| {
            let mut parts = request(method, uri, &[]);
            parts.version = http::Version::HTTP_10;
            let head = written_request(&parts, BodyFraming::Empty);
            head.strip_prefix(&format!("{method} "))
                .unwrap()
                .split(" HTTP/1.1\r\n")
                .next()
                .unwrap()
                .to_owned()
        };
        assert_eq!(target("GET", "/a/b?c=d&e"), "/a/b?c=d&e");
        assert_eq!(
            target("GET", "http://example.test:8080/p?q"),
            "http://example.test:8080/p?q"
        );
        assert_eq!(target("GET", "http://example.test"), "http://example.test/");
        assert_eq!(target("OPTIONS", "*"), "*");
        assert_eq!(target("CONNECT", "example.test:443"), "example.test:443");
    }

    #[test]
    fn raw_bytes_travel_unchanged() {
        let (head, _) = parse_request(b"GET /caf\xc3\xa9 HTTP/1.1\r\nX: \xe9\r\n\r\n")
            .unwrap()
            .unwrap();
        let mut out = Vec::new();
        write_request_head(&mut out, &head.parts, head.framing);
        assert_eq!(out, b"GET /caf\xc3\xa9 HTTP/1.1\r\nx: \xe9\r\n\r\n");
    }

    #[test]
    fn response_heads_frame_as_asked() {
        let date = ("Date", "Sun, 06 Nov 1994 08:49:37 GMT");
        let with = |framing, close| {
            written_response(
                200,
                &[("Content-Length", "7"), ("X", "y"), date],
                framing,
                close,
            )
        };
        assert_eq!(
            with(ResponseOut::Length(3), false),
            "HTTP/1.1 200 OK\r\nx: y\r\ndate: Sun, 06 Nov 1994 08:49:37 GMT\r\ncontent-length: 3\r\n\r\n"
        );
        assert_eq!(
            with(ResponseOut::Empty, false),
            "HTTP/1.1 200 OK\r\nx: y\r\ndate: Sun, 06 Nov 1994 08:49:37 GMT\r\ncontent-length: 0\r\n\r\n"
        );
        assert_eq!(
            with(ResponseOut::Chunked, false),
            "HTTP/1.1 200 OK\r\nx: y\r\ndate: Sun, 06 Nov 1994 08:49:37 GMT\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        assert_eq!(
            with(ResponseOut::Close, true),
            "HTTP/1.1 200 OK\r\nx: y\r\ndate: Sun, 06 Nov 1994 08:49:37 GMT\r\nconnection: close\r\n\r\n"
        );
        assert_eq!(
            written_response(304, &[("Content-Length", "7"), ("Transfer-Encoding", "chunked"), date], ResponseOut::NoBody, false),
            "HTTP/1.1 304 Not Modified\r\ncontent-length: 7\r\ndate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\n"
        );
        assert_eq!(
            written_response(599, &[date, ("Connection", "Close")], ResponseOut::Empty, true),
            "HTTP/1.1 599 \r\ndate: Sun, 06 Nov 1994 08:49:37 GMT\r\nconnection: Close\r\ncontent-length: 0\r\n\r\n"
        );
        assert_eq!(
            written_response(100, &[], ResponseOut::NoBody, false),
            "HTTP/1.1 100 Continue\r\n\r\n"
        );
    }

    #[test]
    fn a_date_is_added_when_missing() {
        let head = written_response(204, &[], ResponseOut::NoBody, false);
        let date = head
            .strip_prefix("HTTP/1.1 204 No Content\r\ndate: ")
            .and_then(|rest| rest.strip_suffix("\r\n\r\n"))
            .unwrap_or_else(|| panic!("{head:?}"));
        let at = httpdate::parse_http_date(date).unwrap();
        let now = SystemTime::now();
        let skew = now.duration_since(at).unwrap_or_else(|e| e.duration());
        assert!(skew < Duration::from_secs(5), "{date} is not now");
        assert_eq!(http_date().to_str().unwrap().len(), 29);
    }

    #[test]
    fn chunk_framing_is_lower_hex() {
        let mut out = Vec::new();
        write_chunk_header(&mut out, 255);
        write_chunk_header(&mut out, 1);
        write_chunk_header(&mut out, 0x10000);
        assert_eq!(out, b"ff\r\n1\r\n10000\r\n");
        assert_eq!((CHUNK_END, LAST_CHUNK), (&b"\r\n"[..], &b"0\r\n\r\n"[..]));
    }

    #[test]
    fn written_requests_parse_back_to_the_same_head() {
        for bytes in [
            &b"GET /a?b HTTP/1.1\r\nHost: a\r\nX: 1\r\nx: 2\r\n\r\n"[..],
            b"POST http://a.test/x HTTP/1.1\r\nHost: a.test\r\nContent-Length: 12\r\n\r\n",
            b"PUT /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
            b"POST /x HTTP/1.0\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\n\r\n",
            b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n",
        ] {
            let (first, _) = parse_request(bytes).unwrap().unwrap();
            let mut out = Vec::new();
            write_request_head(&mut out, &first.parts, first.framing);
            let (second, len) = parse_request(&out).unwrap().unwrap();
            assert_eq!(len, out.len());
            let why = String::from_utf8_lossy(&out);
            assert_eq!(second.parts.method, first.parts.method, "{why}");
            assert_eq!(second.parts.uri, first.parts.uri, "{why}");
            assert_eq!(second.parts.version, http::Version::HTTP_11, "{why}");
            assert_eq!(second.framing, first.framing, "{why}");
            let mut a = first.parts.headers.clone();
            let mut b = second.parts.headers.clone();
            for map in [&mut a, &mut b] {
                map.remove(header::CONTENT_LENGTH);
                map.remove(header::TRANSFER_ENCODING);
            }
            assert_eq!(a, b, "{why}");
        }
    }

    #[test]
    fn written_responses_parse_back_to_the_same_head() {
        for (bytes, method, out) in [
            (
                &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX: a\r\n\r\n"[..],
                Method::GET,
                ResponseOut::Length(5),
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                Method::GET,
                ResponseOut::Chunked,
            ),
            (b"HTTP/1.0 200 OK\r\n\r\n", Method::GET, ResponseOut::Close),
            (
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
                Method::GET,
                ResponseOut::NoBody,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                Method::HEAD,
                ResponseOut::NoBody,
            ),
        ] {
            let (first, _) = parse_response(bytes, &method).unwrap().unwrap();
            let mut written = Vec::new();
            write_response_head(
                &mut written,
                first.parts.status,
                &first.parts.headers,
                out,
                !first.keep_alive,
            );
            let (second, _) = parse_response(&written, &method).unwrap().unwrap();
            let why = String::from_utf8_lossy(&written);
            assert_eq!(second.parts.status, first.parts.status, "{why}");
            assert_eq!(second.framing, first.framing, "{why}");
            assert_eq!(second.keep_alive, first.keep_alive, "{why}");
            assert_eq!(
                first.framing == ResponseFraming::UntilClose,
                out == ResponseOut::Close
            );
        }
    }
}
