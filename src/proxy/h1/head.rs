//! Request and response heads: bytes in, typed heads and body framing out.
//!
//! `httparse` reads the syntax (default strictness: no obs-fold, no space
//! before a colon, single spaces in the request line); this file decides
//! the body framing (RFC 9112 §6) and persistence (§9.3). It mirrors hyper
//! 1.12 (`proto/h1/role.rs`) except where hyper is laxer, and each such
//! place says so in a `Deviation from hyper` comment: owning the framing is
//! where request smuggling lives, so every ambiguity is an error here.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};

/// Header field lines in one head; more is [`HeadError::TooManyHeaders`]
/// (hyper's default, `DEFAULT_MAX_HEADERS`).
pub const MAX_HEADERS: usize = 100;

/// Longest request target, as hyper (`MAX_URI_LEN`) and the `http` crate
/// (which refuses longer URIs anyway) have it.
const MAX_URI_LEN: usize = (u16::MAX - 1) as usize;

/// How a request body is delimited (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body: neither header, or `Content-Length: 0`.
    Empty,
    /// Exactly this many bytes (never 0).
    Length(u64),
    /// `Transfer-Encoding: chunked`; see [`super::ChunkedDecoder`].
    Chunked,
}

/// A parsed request head.
#[derive(Debug)]
pub struct RequestHead {
    /// Method, target, version (`HTTP_10` or `HTTP_11`) and every header
    /// field line in order, duplicates kept (framing headers included).
    pub parts: http::request::Parts,
    pub framing: BodyFraming,
    /// HTTP/1.1 unless a `Connection` token `close`; HTTP/1.0 only with a
    /// `keep-alive` token (and no `close`).
    pub keep_alive: bool,
    /// HTTP/1.1 and `Expect: 100-continue` (case-insensitive). RFC 9110
    /// §10.1.1: a server ignores it in an HTTP/1.0 request.
    pub expect_continue: bool,
}

/// How a response body is delimited (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseFraming {
    /// No body: a response to HEAD, a 1xx, 204 or 304, or a 2xx to CONNECT.
    Empty,
    /// Exactly this many bytes (0 included).
    Length(u64),
    Chunked,
    /// The body runs until the upstream closes the connection.
    UntilClose,
}

/// A parsed response head.
#[derive(Debug)]
pub struct ResponseHead {
    /// Status, version and headers. The reason phrase is dropped: the
    /// writer sends the canonical one, as hyper's server does.
    pub parts: http::response::Parts,
    pub framing: ResponseFraming,
    /// Whether the connection may carry another exchange after this one.
    /// Always false for `UntilClose`, a 101 and a 2xx to CONNECT (the
    /// connection stops being HTTP).
    pub keep_alive: bool,
}

/// Why a head was refused. `Display` is short and meant for a client (it
/// becomes a problem+json detail); [`HeadError::status`] is the answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("the head is larger than the proxy accepts")]
    TooLarge,
    #[error("more than {MAX_HEADERS} header fields")]
    TooManyHeaders,
    #[error("invalid method")]
    Method,
    #[error("invalid request target")]
    Target,
    #[error("request target too long")]
    UriTooLong,
    #[error("malformed HTTP version")]
    Version,
    #[error("HTTP version not supported (only HTTP/1.0 and HTTP/1.1)")]
    UnsupportedVersion,
    #[error("invalid status code")]
    Status,
    #[error("invalid header field name")]
    HeaderName,
    #[error("invalid header field value")]
    HeaderValue,
    #[error("obsolete line folding in a header field")]
    ObsFold,
    #[error("a line does not end in CRLF")]
    NewLine,
    #[error("a line ends in a bare LF instead of CRLF")]
    BareLf,
    #[error("Transfer-Encoding in an HTTP/1.0 message")]
    TransferEncodingInHttp10,
    #[error("Transfer-Encoding with an empty or malformed coding list")]
    TransferEncodingMalformed,
    #[error("transfer coding `chunked` applied more than once")]
    ChunkedTwice,
    #[error("unsupported transfer coding (only `chunked` is accepted)")]
    UnsupportedTransferCoding,
    #[error("both Transfer-Encoding and Content-Length")]
    TransferEncodingAndContentLength,
    #[error("invalid Content-Length")]
    ContentLength,
    #[error("conflicting Content-Length values")]
    ContentLengthConflict,
}

impl HeadError {
    /// The status a server answers with (for a response head from the
    /// upstream the caller answers 502 instead).
    pub fn status(&self) -> StatusCode {
        match self {
            HeadError::TooLarge | HeadError::TooManyHeaders => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            HeadError::UriTooLong => StatusCode::URI_TOO_LONG,
            HeadError::UnsupportedVersion => StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            HeadError::UnsupportedTransferCoding => StatusCode::NOT_IMPLEMENTED,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// Parse a request head from the front of `buf`. `Ok(None)`: incomplete,
/// read more. Otherwise the head and its length in bytes (empty lines
/// before the request line and the final CRLF CRLF included); the body,
/// if any, starts at that offset.
pub fn parse_request(buf: &[u8]) -> Result<Option<(RequestHead, usize)>, HeadError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    // httparse skips any number of empty lines before the request line
    // (RFC 9112 §2.2 asks to skip at least one), as hyper does; the
    // caller's head limit bounds them.
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            check_line_ends(buf)?;
            return Ok(None);
        }
        Err(httparse::Error::Token) => {
            // As hyper: a bad token before the method is known is the
            // method's, after it the target's (httparse also refuses a
            // target that is not UTF-8 this way).
            return Err(if req.method.is_none() {
                HeadError::Method
            } else {
                HeadError::Target
            });
        }
        Err(httparse::Error::Version) => return Err(version_error(request_version(buf))),
        Err(e) => return Err(syntax_error(e, buf)),
    };
    check_line_ends(&buf[..len])?;

    let method = Method::from_bytes(req.method.unwrap_or_default().as_bytes())
        .map_err(|_| HeadError::Method)?;
    let target = req.path.unwrap_or_default();
    if target.len() > MAX_URI_LEN {
        return Err(HeadError::UriTooLong);
    }
    // Raw bytes >= 0x80 (valid UTF-8, or httparse refused them above) stay
    // as they are: the `http` crate accepts them in a path, as with hyper,
    // and the policy layer percent-encodes them before matching. A
    // `#fragment` is dropped by the `http` crate, as under hyper, so the
    // path decided on is the path forwarded.
    let uri = http::Uri::from_maybe_shared(Bytes::copy_from_slice(target.as_bytes()))
        .map_err(|_| HeadError::Target)?;
    let version = if req.version == Some(1) {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    let headers = header_map(req.headers)?;

    let mut keep_alive = version == Version::HTTP_11;
    apply_connection(&headers, &mut keep_alive);
    let expect_continue = version == Version::HTTP_11
        && headers
            .get_all(header::EXPECT)
            .iter()
            .any(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));

    let has_te = headers.contains_key(header::TRANSFER_ENCODING);
    let framing = if has_te {
        if version == Version::HTTP_10 {
            // RFC 9112 §6.1: a 1.0 recipient may not understand chunked.
            return Err(HeadError::TransferEncodingInHttp10);
        }
        // Deviation from hyper: hyper drops the Content-Length and closes
        // after the exchange; RFC 9112 §6.3 lets a server refuse instead,
        // and refusing leaves no doubt about where this body ends.
        if headers.contains_key(header::CONTENT_LENGTH) {
            return Err(HeadError::TransferEncodingAndContentLength);
        }
        // Deviation from hyper: hyper reads `gzip, chunked` as chunked and
        // hands the gzip bytes on; nothing here decodes other codings, so
        // anything but exactly one `chunked` is refused (501, RFC 9112 §6.1).
        match transfer_codings(&headers)? {
            Codings::Chunked => BodyFraming::Chunked,
            Codings::ChunkedNotLast | Codings::Other => {
                return Err(HeadError::UnsupportedTransferCoding)
            }
        }
    } else {
        match content_length(&headers)? {
            None | Some(0) => BodyFraming::Empty,
            Some(n) => BodyFraming::Length(n),
        }
    };

    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.version = version;
    parts.headers = headers;
    Ok(Some((
        RequestHead {
            parts,
            framing,
            keep_alive,
            expect_continue,
        },
        len,
    )))
}

/// Parse a response head from the front of `buf`, for a request with
/// `method`. `Ok(None)`: incomplete. A 1xx head is returned like any other
/// (framing `Empty`); the caller skips 100 and 103 and handles 101.
pub fn parse_response(
    buf: &[u8],
    method: &Method,
) -> Result<Option<(ResponseHead, usize)>, HeadError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut slots);
    let len = match res.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            check_line_ends(buf)?;
            return Ok(None);
        }
        Err(httparse::Error::Version) => {
            return Err(version_error(buf.get(..8).unwrap_or(buf)));
        }
        Err(e) => return Err(syntax_error(e, buf)),
    };
    check_line_ends(&buf[..len])?;

    let status =
        StatusCode::from_u16(res.code.unwrap_or_default()).map_err(|_| HeadError::Status)?;
    let version = if res.version == Some(1) {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    let headers = header_map(res.headers)?;
    let mut keep_alive = version == Version::HTTP_11;
    apply_connection(&headers, &mut keep_alive);

    // Deviation from hyper: hyper does not look at Content-Length when the
    // response has no body; it is checked here all the same, because a
    // bodiless response keeps its Content-Length on the way to the client.
    let length = content_length(&headers)?;
    let code = status.as_u16();
    // RFC 9112 §6.3, in its order.
    let framing =
        if *method == Method::HEAD || status.is_informational() || code == 204 || code == 304 {
            ResponseFraming::Empty
        } else if *method == Method::CONNECT && status.is_success() {
            // The connection becomes a tunnel right after the head.
            keep_alive = false;
            ResponseFraming::Empty
        } else if headers.contains_key(header::TRANSFER_ENCODING) {
            if version == Version::HTTP_10 {
                // As hyper (RFC 9112 §6.1: the framing is faulty).
                return Err(HeadError::TransferEncodingInHttp10);
            }
            if length.is_some() {
                // Transfer-Encoding wins (§6.3 item 3), but such a message
                // "ought to be handled as an error": never reuse the connection.
                keep_alive = false;
            }
            match transfer_codings(&headers)? {
                Codings::Chunked => ResponseFraming::Chunked,
                // A response may end its codings in something else: it is then
                // delimited by the close (§6.3 item 4).
                Codings::ChunkedNotLast | Codings::Other => ResponseFraming::UntilClose,
            }
        } else if let Some(n) = length {
            ResponseFraming::Length(n)
        } else {
            ResponseFraming::UntilClose
        };
    if framing == ResponseFraming::UntilClose || code == 101 {
        keep_alive = false;
    }

    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = status;
    parts.version = version;
    parts.headers = headers;
    Ok(Some((
        ResponseHead {
            parts,
            framing,
            keep_alive,
        },
        len,
    )))
}

/// Deviation from hyper (and httparse), which take a bare LF as a line
/// end: every line of a head must end in CRLF here. RFC 9112 §2.2 only
/// allows the leniency, and a parser that splits lines where the one in
/// front of it does not is how a hidden header gets through.
fn check_line_ends(head: &[u8]) -> Result<(), HeadError> {
    // Every head is scanned: find the line ends with memchr's vector search
    // rather than looking at each byte (a byte loop was 2.5 % of an
    // enforcing proxy's CPU under load).
    for at in memchr::memchr_iter(b'\n', head) {
        if at == 0 || head[at - 1] != b'\r' {
            return Err(HeadError::BareLf);
        }
    }
    Ok(())
}

/// The error for an httparse failure other than a token or version one.
fn syntax_error(e: httparse::Error, buf: &[u8]) -> HeadError {
    if let Err(lf) = check_line_ends(buf) {
        return lf;
    }
    match e {
        httparse::Error::TooManyHeaders => HeadError::TooManyHeaders,
        // httparse reports a continuation line as a bad name; say what it is.
        httparse::Error::HeaderName if has_obs_fold(buf) => HeadError::ObsFold,
        httparse::Error::HeaderName => HeadError::HeaderName,
        httparse::Error::HeaderValue => HeadError::HeaderValue,
        httparse::Error::Status => HeadError::Status,
        httparse::Error::Token => HeadError::Target,
        httparse::Error::Version => HeadError::Version,
        httparse::Error::NewLine => HeadError::NewLine,
    }
}

/// Whether a line of the head (before its end) starts with SP or HTAB.
fn has_obs_fold(buf: &[u8]) -> bool {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(buf.len());
    buf[..end]
        .windows(3)
        .any(|w| w[0] == b'\r' && w[1] == b'\n' && (w[2] == b' ' || w[2] == b'\t'))
}

/// The version token of a request line: its last space-separated word.
fn request_version(buf: &[u8]) -> &[u8] {
    let start = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len());
    let line = &buf[start..];
    let line = &line[..line
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(line.len())];
    line.rsplit(|&b| b == b' ').next().unwrap_or(line)
}

/// `HTTP/x.y` with other digits is a version we do not speak (505);
/// anything else is a malformed one (400).
fn version_error(token: &[u8]) -> HeadError {
    match token {
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            HeadError::UnsupportedVersion
        }
        _ => HeadError::Version,
    }
}

/// The header fields as a map, in order, duplicates kept. httparse has
/// already checked the bytes, and the `http` crate accepts all it accepts
/// (obs-text included); the conversion still returns an error rather than
/// trusting that.
fn header_map(fields: &[httparse::Header<'_>]) -> Result<HeaderMap, HeadError> {
    let mut map = HeaderMap::with_capacity(fields.len());
    for field in fields {
        let name =
            HeaderName::from_bytes(field.name.as_bytes()).map_err(|_| HeadError::HeaderName)?;
        let value = HeaderValue::from_bytes(field.value).map_err(|_| HeadError::HeaderValue)?;
        map.append(name, value);
    }
    Ok(map)
}

/// Update `keep_alive` from every `Connection` field line: any `close`
/// token wins (as hyper: a later `keep-alive` cannot undo it); otherwise a
/// `keep-alive` token turns on an HTTP/1.0 connection.
fn apply_connection(headers: &HeaderMap, keep_alive: &mut bool) {
    let mut close = false;
    let mut keep = false;
    for value in headers.get_all(header::CONNECTION) {
        for token in list_elements(value.as_bytes()) {
            close |= token.eq_ignore_ascii_case(b"close");
            keep |= token.eq_ignore_ascii_case(b"keep-alive");
        }
    }
    if close {
        *keep_alive = false;
    } else if keep {
        *keep_alive = true;
    }
}

/// The elements of a comma-separated list, each trimmed of OWS.
fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(trim_ows)
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// What the `Transfer-Encoding` field lines, taken together, list.
enum Codings {
    /// Exactly one coding, `chunked`.
    Chunked,
    /// `chunked` (once) followed by other codings.
    ChunkedNotLast,
    /// Other codings, possibly ending in `chunked`.
    Other,
}

/// Read every `Transfer-Encoding` line as one list. Empty elements and
/// `chunked` twice are errors (hyper would take `chunked, chunked` as
/// chunked and miss a doubly-chunked body); coding names compare without
/// case; `chunked` with parameters counts as another coding.
fn transfer_codings(headers: &HeaderMap) -> Result<Codings, HeadError> {
    let mut chunked = false;
    let mut last_chunked = false;
    let mut other = false;
    for value in headers.get_all(header::TRANSFER_ENCODING) {
        for coding in list_elements(value.as_bytes()) {
            if coding.is_empty() {
                return Err(HeadError::TransferEncodingMalformed);
            }
            if coding.eq_ignore_ascii_case(b"chunked") {
                if chunked {
                    return Err(HeadError::ChunkedTwice);
                }
                chunked = true;
                last_chunked = true;
            } else {
                other = true;
                last_chunked = false;
            }
        }
    }
    Ok(match (other, chunked, last_chunked) {
        (false, true, _) => Codings::Chunked,
        (true, true, false) => Codings::ChunkedNotLast,
        _ => Codings::Other,
    })
}

/// The value of every `Content-Length` field line and list element, which
/// must each be 1*DIGIT, fit a u64, and agree (RFC 9112 §6.3 item 5, as
/// hyper's `content_length_parse_all`; no sign, no spaces inside, no hex).
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, HeadError> {
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for element in list_elements(value.as_bytes()) {
            let n = digits(element).ok_or(HeadError::ContentLength)?;
            if length.is_some_and(|prev| prev != n) {
                return Err(HeadError::ContentLengthConflict);
            }
            length = Some(n);
        }
    }
    Ok(length)
}

fn digits(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0u64, |n, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(bytes: &[u8]) -> RequestHead {
        let (head, len) = parse_request(bytes)
            .unwrap_or_else(|e| panic!("{:?}: {e:?}", String::from_utf8_lossy(bytes)))
            .unwrap_or_else(|| panic!("{:?}: incomplete", String::from_utf8_lossy(bytes)));
        assert_eq!(len, bytes.len(), "the whole input is the head");
        head
    }

    fn req_err(bytes: &[u8]) -> HeadError {
        match parse_request(bytes) {
            Err(e) => e,
            Ok(ok) => panic!("{:?} accepted: {ok:?}", String::from_utf8_lossy(bytes)),
        }
    }

    /// A POST head with `fields` (CRLF-terminated lines) between a Host
    /// line and the blank line.
    fn post(fields: &str) -> Vec<u8> {
        format!("POST /upload HTTP/1.1\r\nHost: a\r\n{fields}\r\n").into_bytes()
    }

    fn res(bytes: &[u8], method: &Method) -> ResponseHead {
        let (head, len) = parse_response(bytes, method).unwrap().unwrap();
        assert_eq!(len, bytes.len());
        head
    }

    fn res_err(bytes: &[u8]) -> HeadError {
        parse_response(bytes, &Method::GET).unwrap_err()
    }

    #[test]
    fn a_simple_get_is_empty_and_persistent() {
        let head = req(b"GET /a?b=c HTTP/1.1\r\nHost: app.test\r\nX-A: 1\r\nx-a: 2\r\n\r\n");
        assert_eq!(head.parts.method, Method::GET);
        assert_eq!(head.parts.uri, "/a?b=c");
        assert_eq!(head.parts.version, Version::HTTP_11);
        assert_eq!(head.framing, BodyFraming::Empty);
        assert!(head.keep_alive && !head.expect_continue);
        let values: Vec<_> = head.parts.headers.get_all("x-a").iter().collect();
        assert_eq!(values, ["1", "2"], "duplicates kept in order");
        let names: Vec<_> = head.parts.headers.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["host", "x-a"]);
    }

    #[test]
    fn the_head_length_excludes_the_body_and_incomplete_heads_ask_for_more() {
        let bytes = b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
        let (head, len) = parse_request(bytes).unwrap().unwrap();
        assert_eq!(len, bytes.len() - 5);
        assert_eq!(head.framing, BodyFraming::Length(5));
        for end in 0..len {
            assert_eq!(
                parse_request(&bytes[..end]).unwrap().map(|(_, n)| n),
                None,
                "{end}"
            );
        }
    }

    #[test]
    fn empty_lines_before_the_request_line_are_skipped_and_counted() {
        let bytes = b"\r\n\r\nGET / HTTP/1.1\r\n\r\n";
        let (head, len) = parse_request(bytes).unwrap().unwrap();
        assert_eq!((head.parts.uri.path(), len), ("/", bytes.len()));
        assert_eq!(req_err(b"\nGET / HTTP/1.1\r\n\r\n"), HeadError::BareLf);
    }

    #[test]
    fn every_target_form_is_read() {
        let form = |target: &str| {
            let head = req(format!("OPTIONS {target} HTTP/1.1\r\n\r\n").as_bytes());
            head.parts.uri
        };
        assert_eq!(form("/p?q").path(), "/p");
        let absolute = form("http://example.test:8080/p?q");
        assert_eq!(absolute.scheme_str(), Some("http"));
        assert_eq!(absolute.authority().unwrap().as_str(), "example.test:8080");
        assert_eq!(form("*").path(), "*");
        let authority = form("example.test:443");
        assert_eq!(authority.authority().unwrap().as_str(), "example.test:443");
        assert_eq!(authority.path_and_query(), None);
    }

    #[test]
    fn targets_the_uri_parser_refuses_are_bad_requests() {
        for target in ["http://[::1/", "http://", "a:b:c"] {
            let bytes = format!("GET {target} HTTP/1.1\r\n\r\n");
            let e = req_err(bytes.as_bytes());
            assert_eq!(
                (target, e.status()),
                (target, StatusCode::BAD_REQUEST),
                "{e:?}"
            );
        }
        // As hyper: the `http` crate drops a fragment, so the proxy decides
        // on and forwards the same path.
        assert_eq!(req(b"GET /a#/admin HTTP/1.1\r\n\r\n").parts.uri, "/a");
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_URI_LEN));
        assert_eq!(req_err(long.as_bytes()), HeadError::UriTooLong);
        assert_eq!(HeadError::UriTooLong.status(), StatusCode::URI_TOO_LONG);
    }

    #[test]
    fn raw_utf8_in_the_target_is_kept_as_hyper_keeps_it() {
        let head = req(b"GET /caf\xc3\xa9/x?q=\xc3\xa9 HTTP/1.1\r\n\r\n");
        assert_eq!(head.parts.uri.path(), "/caf\u{e9}/x");
        assert_eq!(head.parts.uri.query(), Some("q=\u{e9}"));
        // Not UTF-8: httparse refuses it, as under hyper.
        assert_eq!(req_err(b"GET /caf\xe9 HTTP/1.1\r\n\r\n"), HeadError::Target);
        // Controls and spaces never make a target.
        assert_eq!(req_err(b"GET /a\x7fb HTTP/1.1\r\n\r\n"), HeadError::Target);
    }

    #[test]
    fn methods_are_tokens() {
        assert_eq!(
            req(b"PURGE / HTTP/1.1\r\n\r\n").parts.method.as_str(),
            "PURGE"
        );
        assert_eq!(req_err(b"G(T / HTTP/1.1\r\n\r\n"), HeadError::Method);
        assert_eq!(req_err(b" GET / HTTP/1.1\r\n\r\n"), HeadError::Method);
    }

    #[test]
    fn versions_other_than_1_0_and_1_1_are_refused() {
        assert_eq!(
            req(b"GET / HTTP/1.0\r\n\r\n").parts.version,
            Version::HTTP_10
        );
        for (bytes, e) in [
            (
                &b"GET / HTTP/2.0\r\n\r\n"[..],
                HeadError::UnsupportedVersion,
            ),
            (b"GET / HTTP/1.2\r\n\r\n", HeadError::UnsupportedVersion),
            (b"GET / HTTP/0.9\r\n\r\n", HeadError::UnsupportedVersion),
            (b"GET / HTTX/1.1\r\n\r\n", HeadError::Version),
            (b"GET / http/1.1\r\n\r\n", HeadError::Version),
            (b"GET /\r\n\r\n", HeadError::Target),
        ] {
            assert_eq!(req_err(bytes), e, "{:?}", String::from_utf8_lossy(bytes));
        }
        assert_eq!(
            HeadError::UnsupportedVersion.status(),
            StatusCode::HTTP_VERSION_NOT_SUPPORTED
        );
    }

    #[test]
    fn the_request_line_takes_single_spaces() {
        assert!(parse_request(b"GET  / HTTP/1.1\r\n\r\n").is_err());
        assert!(parse_request(b"GET / HTTP/1.1 \r\n\r\n").is_err());
        assert!(parse_request(b"GET\t/ HTTP/1.1\r\n\r\n").is_err());
    }

    #[test]
    fn keep_alive_follows_version_and_connection_tokens() {
        let keep = |bytes: &[u8]| req(bytes).keep_alive;
        assert!(keep(b"GET / HTTP/1.1\r\n\r\n"));
        assert!(!keep(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"));
        assert!(!keep(
            b"GET / HTTP/1.1\r\nConnection: Upgrade, CLOSE\r\n\r\n"
        ));
        assert!(!keep(
            b"GET / HTTP/1.1\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n"
        ));
        assert!(keep(b"GET / HTTP/1.1\r\nConnection: closed\r\n\r\n"));
        assert!(!keep(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(keep(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
        assert!(!keep(
            b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n"
        ));
        assert!(!keep(b"GET / HTTP/1.0\r\nConnection: keep-alivf\r\n\r\n"));
    }

    #[test]
    fn expect_continue_needs_http_1_1_and_the_exact_token() {
        let expect = |bytes: &[u8]| req(bytes).expect_continue;
        assert!(expect(&post(
            "Expect: 100-continue\r\nContent-Length: 1\r\n"
        )));
        assert!(expect(&post(
            "Expect: 100-Continue\r\nContent-Length: 1\r\n"
        )));
        assert!(!expect(&post(
            "Expect: 100-continued\r\nContent-Length: 1\r\n"
        )));
        assert!(!expect(
            b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n"
        ));
    }

    #[test]
    fn content_length_values_must_be_digits_that_agree() {
        let framing = |fields: &str| req(&post(fields)).framing;
        assert_eq!(framing(""), BodyFraming::Empty);
        assert_eq!(framing("Content-Length: 0\r\n"), BodyFraming::Empty);
        assert_eq!(framing("Content-Length: 005\r\n"), BodyFraming::Length(5));
        assert_eq!(
            framing("Content-Length: 5\r\nContent-Length: 5\r\n"),
            BodyFraming::Length(5)
        );
        assert_eq!(framing("Content-Length: 5, 5\r\n"), BodyFraming::Length(5));
        assert_eq!(framing("Content-Length:\t7 \r\n"), BodyFraming::Length(7));
        assert_eq!(
            framing("Content-Length: 18446744073709551615\r\n"),
            BodyFraming::Length(u64::MAX)
        );
        for (fields, e) in [
            (
                "Content-Length: 5\r\nContent-Length: 6\r\n",
                HeadError::ContentLengthConflict,
            ),
            ("Content-Length: 5, 6\r\n", HeadError::ContentLengthConflict),
            ("Content-Length: +5\r\n", HeadError::ContentLength),
            ("Content-Length: -5\r\n", HeadError::ContentLength),
            ("Content-Length: 5 5\r\n", HeadError::ContentLength),
            ("Content-Length: 0x5\r\n", HeadError::ContentLength),
            ("Content-Length: 5,\r\n", HeadError::ContentLength),
            ("Content-Length: \r\n", HeadError::ContentLength),
            ("Content-Length: 5.0\r\n", HeadError::ContentLength),
            (
                "Content-Length: 18446744073709551616\r\n",
                HeadError::ContentLength,
            ),
            // ARABIC-INDIC DIGIT FIVE, which some number parsers take.
            ("Content-Length: \u{665}\r\n", HeadError::ContentLength),
        ] {
            assert_eq!(req_err(&post(fields)), e, "{fields:?}");
            assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn transfer_encoding_must_be_exactly_chunked() {
        let framing = |fields: &str| req(&post(fields)).framing;
        assert_eq!(
            framing("Transfer-Encoding: chunked\r\n"),
            BodyFraming::Chunked
        );
        assert_eq!(
            framing("Transfer-Encoding: CHUNKED\r\n"),
            BodyFraming::Chunked
        );
        // OWS after the colon is valid, so this is plain chunked.
        assert_eq!(
            framing("Transfer-Encoding:\tchunked\r\n"),
            BodyFraming::Chunked
        );
        for (fields, e) in [
            (
                "Transfer-Encoding: xchunked\r\n",
                HeadError::UnsupportedTransferCoding,
            ),
            (
                "Transfer-Encoding: chunked, identity\r\n",
                HeadError::UnsupportedTransferCoding,
            ),
            (
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
                HeadError::UnsupportedTransferCoding,
            ),
            (
                "Transfer-Encoding: gzip, chunked\r\n",
                HeadError::UnsupportedTransferCoding,
            ),
            (
                "Transfer-Encoding: gzip\r\n",
                HeadError::UnsupportedTransferCoding,
            ),
            (
                "Transfer-Encoding: chunked;q=1\r\n",
                HeadError::UnsupportedTransferCoding,
            ),
            (
                "Transfer-Encoding: chunked, chunked\r\n",
                HeadError::ChunkedTwice,
            ),
            (
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                HeadError::ChunkedTwice,
            ),
            (
                "Transfer-Encoding: chunked,\r\n",
                HeadError::TransferEncodingMalformed,
            ),
            (
                "Transfer-Encoding: \r\n",
                HeadError::TransferEncodingMalformed,
            ),
        ] {
            assert_eq!(req_err(&post(fields)), e, "{fields:?}");
        }
        assert_eq!(
            HeadError::UnsupportedTransferCoding.status(),
            StatusCode::NOT_IMPLEMENTED
        );
    }

    #[test]
    fn smuggling_classics_are_refused() {
        // CL.TE and TE.CL: both framing headers, in either order.
        for fields in [
            "Content-Length: 6\r\nTransfer-Encoding: chunked\r\n",
            "Transfer-Encoding: chunked\r\nContent-Length: 6\r\n",
            "Transfer-Encoding: chunked\r\nContent-Length: 0\r\n",
        ] {
            assert_eq!(
                req_err(&post(fields)),
                HeadError::TransferEncodingAndContentLength,
                "{fields:?}"
            );
        }
        // Obfuscated names and values.
        assert_eq!(
            req_err(&post("Transfer-Encoding : chunked\r\n")),
            HeadError::HeaderName
        );
        assert_eq!(
            req_err(&post(
                "Transfer-Encoding: xchunked\r\nContent-Length: 4\r\n"
            )),
            HeadError::TransferEncodingAndContentLength
        );
        assert_eq!(
            req_err(&post("X-Fold: a\r\n Transfer-Encoding: chunked\r\n")),
            HeadError::ObsFold
        );
        assert_eq!(req_err(&post("X-Fold: a\r\n\tb\r\n")), HeadError::ObsFold);
        assert_eq!(
            req_err(b"POST / HTTP/1.1\nHost: a\nContent-Length: 0\n\n"),
            HeadError::BareLf
        );
        assert_eq!(
            req_err(b"POST / HTTP/1.1\r\nHost: a\nContent-Length: 0\r\n\r\n"),
            HeadError::BareLf
        );
        // ... caught before the head is complete, too.
        assert_eq!(req_err(b"POST / HTTP/1.1\nHost: a"), HeadError::BareLf);
        assert_eq!(
            req_err(b"POST / HTTP/1.1\r\nHost: a\rContent-Length: 0\r\n\r\n"),
            HeadError::HeaderValue
        );
        assert_eq!(req_err(&post("X-A: a\0b\r\n")), HeadError::HeaderValue);
        assert_eq!(req_err(&post("X\0A: b\r\n")), HeadError::HeaderName);
        assert_eq!(req_err(&post(": b\r\n")), HeadError::HeaderName);
        assert_eq!(
            req_err(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            HeadError::TransferEncodingInHttp10
        );
    }

    #[test]
    fn obs_text_in_values_is_accepted_as_httparse_accepts_it() {
        let head = req(b"GET / HTTP/1.1\r\nX-Latin: caf\xe9 \xff\r\n\r\n");
        assert_eq!(head.parts.headers["x-latin"].as_bytes(), b"caf\xe9 \xff");
    }

    #[test]
    fn values_lose_surrounding_whitespace() {
        let head = req(&post("X-A: \t a b \t\r\nX-B:\r\n"));
        assert_eq!(head.parts.headers["x-a"], "a b");
        assert_eq!(head.parts.headers["x-b"], "");
    }

    #[test]
    fn more_than_max_headers_is_431() {
        let fields = |n: usize| (0..n).map(|i| format!("X-{i}: v\r\n")).collect::<String>();
        let head = req(format!("GET / HTTP/1.1\r\n{}\r\n", fields(MAX_HEADERS)).as_bytes());
        assert_eq!(head.parts.headers.len(), MAX_HEADERS);
        let e = req_err(format!("GET / HTTP/1.1\r\n{}\r\n", fields(MAX_HEADERS + 1)).as_bytes());
        assert_eq!(e, HeadError::TooManyHeaders);
        assert_eq!(e.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        assert_eq!(
            HeadError::TooLarge.status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
    }

    #[test]
    fn errors_read_as_short_sentences() {
        assert_eq!(
            HeadError::TransferEncodingAndContentLength.to_string(),
            "both Transfer-Encoding and Content-Length"
        );
        assert_eq!(
            HeadError::TooManyHeaders.to_string(),
            "more than 100 header fields"
        );
    }

    #[test]
    fn responses_are_framed_in_rfc_9112_order() {
        let framing = |bytes: &[u8], method: &Method| res(bytes, method).framing;
        let cl_te = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        // HEAD, 1xx, 204, 304 and a 2xx to CONNECT have no body at all.
        assert_eq!(framing(cl_te, &Method::HEAD), ResponseFraming::Empty);
        for status in [
            "100 Continue",
            "103 Early Hints",
            "204 No Content",
            "304 Not Modified",
        ] {
            let bytes = format!("HTTP/1.1 {status}\r\nContent-Length: 5\r\n\r\n");
            assert_eq!(
                framing(bytes.as_bytes(), &Method::GET),
                ResponseFraming::Empty
            );
        }
        let tunnel = res(b"HTTP/1.1 200 OK\r\n\r\n", &Method::CONNECT);
        assert_eq!(
            (tunnel.framing, tunnel.keep_alive),
            (ResponseFraming::Empty, false)
        );
        let upgrade = res(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: ws\r\n\r\n",
            &Method::GET,
        );
        assert_eq!(
            (upgrade.framing, upgrade.keep_alive),
            (ResponseFraming::Empty, false)
        );
        // Transfer-Encoding wins over Content-Length, but the connection is
        // not reused after such a response.
        let both = res(cl_te, &Method::GET);
        assert_eq!(
            (both.framing, both.keep_alive),
            (ResponseFraming::Chunked, false)
        );
        let chunked = res(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            &Method::GET,
        );
        assert_eq!(
            (chunked.framing, chunked.keep_alive),
            (ResponseFraming::Chunked, true)
        );
        let gzip = res(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            &Method::GET,
        );
        assert_eq!(
            (gzip.framing, gzip.keep_alive),
            (ResponseFraming::UntilClose, false)
        );
        let sized = res(
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            &Method::POST,
        );
        assert_eq!(
            (sized.framing, sized.keep_alive),
            (ResponseFraming::Length(0), true)
        );
        let open = res(b"HTTP/1.1 200 OK\r\n\r\n", &Method::GET);
        assert_eq!(
            (open.framing, open.keep_alive),
            (ResponseFraming::UntilClose, false)
        );
    }

    #[test]
    fn response_heads_keep_status_version_and_headers() {
        let head = res(
            b"HTTP/1.0 404 Nope\r\nConnection: keep-alive\r\nContent-Length: 3\r\nX: \xe9\r\n\r\n",
            &Method::GET,
        );
        assert_eq!(head.parts.status, StatusCode::NOT_FOUND);
        assert_eq!(head.parts.version, Version::HTTP_10);
        assert_eq!(head.parts.headers["x"].as_bytes(), b"\xe9");
        assert_eq!(
            (head.framing, head.keep_alive),
            (ResponseFraming::Length(3), true)
        );
        let closing = res(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 3\r\n\r\n",
            &Method::GET,
        );
        assert!(!closing.keep_alive);
        let no_reason = res(b"HTTP/1.1 599 \r\nContent-Length: 0\r\n\r\n", &Method::GET);
        assert_eq!(no_reason.parts.status.as_u16(), 599);
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\n", &Method::GET)
                .unwrap()
                .map(|h| h.1),
            None
        );
    }

    #[test]
    fn bad_response_heads_are_errors() {
        for (bytes, e) in [
            (
                &b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"[..],
                HeadError::ContentLengthConflict,
            ),
            (
                b"HTTP/1.1 204 No Content\r\nContent-Length: x\r\n\r\n",
                HeadError::ContentLength,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
                HeadError::ChunkedTwice,
            ),
            (
                b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                HeadError::TransferEncodingInHttp10,
            ),
            (b"HTTP/1.1 20 OK\r\n\r\n", HeadError::Status),
            (b"HTTP/1.1 099 OK\r\n\r\n", HeadError::Status),
            (b"HTTP/2.0 200 OK\r\n\r\n", HeadError::UnsupportedVersion),
            (b"HTTQ/1.1 200 OK\r\n\r\n", HeadError::Version),
            (b"HTTP/1.1 200 OK\nContent-Length: 0\n\n", HeadError::BareLf),
            (b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", HeadError::ObsFold),
            (b"HTTP/1.1 200 OK\r\nX : a\r\n\r\n", HeadError::HeaderName),
        ] {
            assert_eq!(res_err(bytes), e, "{:?}", String::from_utf8_lossy(bytes));
        }
    }
}
