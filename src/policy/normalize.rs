//! Path normalisation, done once per request before any matching.
//!
//! Proxies and backends that read a path differently are how authorization
//! bypasses happen (`/info/../private`, `/admin;x`, `%2e%2e`). The rules:
//!
//! - percent-encoded *unreserved* characters (`A-Z a-z 0-9 - . _ ~`) and
//!   `:` and `@` (allowed raw in a segment, read alike by every server) are
//!   decoded; every other escape is kept, with its hex digits upper-cased;
//! - an encoded `/` (`%2F`), an encoded or raw `\` and an encoded NUL are
//!   rejected: backends disagree on what they mean;
//! - `;` is rejected: some backends strip `;parameters` from segments and
//!   would serve a different path than the one matched;
//! - escapes that decode to invalid UTF-8 are rejected: overlong forms such
//!   as `%C0%AE` (a `.` to lax decoders) would otherwise hide dot segments;
//! - dot segments are removed (RFC 3986 §5.2.4), after decoding, so `%2e%2e`
//!   counts as `..`; a path cannot climb above `/`;
//! - runs of `/` collapse to one;
//! - bytes ≥ 0x80 sent raw (UTF-8 in the target) are percent-encoded with
//!   upper-case hex, in the path and the query, so `/café` raw and
//!   `/caf%C3%A9` are one path to the matcher and reach the upstream alike.
//!
//! Case is kept: paths are case-sensitive, as RFC 3986 says.

use std::borrow::Cow;

/// Why a path was refused (answered with 400).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path is not in origin form (it must start with `/`)")]
    NotOriginForm,
    #[error("malformed percent-encoding at byte {0}")]
    BadEscape(usize),
    #[error("an encoded `/` (%2F) in the path is not accepted")]
    EncodedSlash,
    #[error("a `\\` (raw or encoded) in the path is not accepted")]
    Backslash,
    #[error("an encoded NUL (%00) in the path is not accepted")]
    Nul,
    #[error("`;` in the path is not accepted (path parameters are read differently by different servers)")]
    Semicolon,
    #[error("the percent-encoded path is not valid UTF-8 (overlong or truncated sequences are not accepted)")]
    InvalidUtf8,
}

/// Why a request head was refused before matching (answered with 400/405).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("CONNECT is not forwarded: licensegate is a reverse proxy for one upstream")]
    Connect,
    #[error("more than one Host header")]
    DuplicateHost,
    #[error("an HTTP/1.1 or HTTP/2 request must name its host (Host header or :authority)")]
    MissingHost,
    #[error("the Host header is not a valid host: {0}")]
    BadHost(&'static str),
}

/// Make the host decided on the host the upstream gets: one `Host` header
/// at most, and when the target carries an authority (HTTP/2 `:authority`,
/// an absolute-form HTTP/1.1 target) it is the host (RFC 9112 §3.2.2, RFC
/// 9113 §8.3.1), so a contradicting `Host` header is replaced by it. The
/// host must be a plain `host[:port]` (see [`check_host`]): forms that URL
/// parsers read differently (`x@admin`, `admin,x`, `admin..`) never reach
/// matching or the upstream. HTTP/1.1 requires a host (RFC 9112 §3.2).
pub fn check_request_head(head: &mut http::request::Parts) -> Result<(), HeadError> {
    if head.method == http::Method::CONNECT {
        return Err(HeadError::Connect);
    }
    let mut hosts = head.headers.get_all(http::header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(HeadError::DuplicateHost);
    }
    match (head.uri.authority(), host) {
        (Some(authority), host) => {
            check_host(authority.as_str().as_bytes()).map_err(HeadError::BadHost)?;
            if host.is_none_or(|h| h.as_bytes() != authority.as_str().as_bytes()) {
                let value = http::HeaderValue::from_str(authority.as_str())
                    .map_err(|_| HeadError::BadHost("not a header value"))?;
                head.headers.insert(http::header::HOST, value);
            }
        }
        (None, Some(host)) => check_host(host.as_bytes()).map_err(HeadError::BadHost)?,
        (None, None) if head.version >= http::Version::HTTP_11 => {
            return Err(HeadError::MissingHost)
        }
        (None, None) => {}
    }
    Ok(())
}

/// A host as RFC 3986 §3.2.2 allows it, narrowed to what every server reads
/// alike: a DNS-style name (letters, digits, `-`, `_`, non-empty labels, one
/// optional trailing dot), an IPv4 address, or a bracketed IPv6 address;
/// then an optional port of 1–5 digits up to 65535. No userinfo, no commas,
/// no percent-encoding, no IPvFuture.
pub fn check_host(host: &[u8]) -> Result<(), &'static str> {
    if host.first() == Some(&b'[') {
        return check_bracketed_host(host);
    }
    // One pass over the name (this runs on every request): labels of
    // letters, digits, `-` and `_`, separated by single dots.
    let mut label = 0usize;
    let mut end = host.len();
    for (at, &b) in host.iter().enumerate() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' => label += 1,
            b'.' if label > 0 => label = 0,
            b'.' => {
                return Err(
                    "a host name label is empty (`..`, or a leading or second trailing dot)",
                )
            }
            b':' => {
                end = at;
                break;
            }
            _ => return Err(host_char_error(host)),
        }
    }
    if end == 0 {
        return Err("the host name is empty");
    }
    match host.get(end + 1..) {
        Some(port) => check_port(host, port),
        None => Ok(()),
    }
}

/// `[IPv6]` with an optional `:port`.
#[cold]
fn check_bracketed_host(host: &[u8]) -> Result<(), &'static str> {
    let rest = &host[1..];
    let close = rest
        .iter()
        .position(|&b| b == b']')
        .ok_or("an IPv6 address without its closing `]`")?;
    let literal = std::str::from_utf8(&rest[..close]).map_err(|_| "not ASCII")?;
    literal
        .parse::<std::net::Ipv6Addr>()
        .map_err(|_| "the bracketed part is not an IPv6 address")?;
    match &rest[close + 1..] {
        [] => Ok(()),
        [b':', port @ ..] => check_port(host, port),
        _ => Err("only `:port` may follow a bracketed IPv6 address"),
    }
}

/// 1 to 5 digits, at most 65535.
fn check_port(host: &[u8], port: &[u8]) -> Result<(), &'static str> {
    let mut value = 0u32;
    for &b in port {
        if !b.is_ascii_digit() {
            return Err(host_char_error(host));
        }
        value = value * 10 + u32::from(b - b'0');
        if value > 65_535 {
            break;
        }
    }
    if port.is_empty() || port.len() > 5 || value > 65_535 {
        return Err("the port is not a number from 0 to 65535");
    }
    Ok(())
}

/// What is wrong with a host that holds a character no host may: the
/// forms URL parsers read as another host are named first.
#[cold]
fn host_char_error(host: &[u8]) -> &'static str {
    if host.contains(&b'@') {
        "userinfo (`user@host`) is not accepted"
    } else if host.contains(&b',') {
        "a list of hosts (`,`) is not accepted"
    } else if host.contains(&b'%') {
        "percent-encoding is not accepted in a host"
    } else if host.iter().filter(|&&b| b == b':').count() > 1 {
        "only one `:` (before the port) may appear outside brackets"
    } else {
        "only letters, digits, `-`, `_` and `.` may form a host name, and digits a port"
    }
}

/// Normalise `path` (without the query). Borrows when nothing changes, which
/// is the common case.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotOriginForm);
    }
    // One pass to find out whether any work is needed.
    let mut needs_work = false;
    let mut previous = 0u8;
    for &b in bytes {
        match b {
            b'\\' => return Err(PathError::Backslash),
            b';' => return Err(PathError::Semicolon),
            b'%' | 0x80.. => needs_work = true,
            b'/' if previous == b'/' => needs_work = true,
            b'.' if previous == b'/' => needs_work = true,
            _ => {}
        }
        previous = b;
    }
    if !needs_work {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(bytes)?;
    Ok(Cow::Owned(remove_dot_segments(&decoded)))
}

/// Normalise the request target in place (path only; the query is kept
/// byte for byte). `OPTIONS *` has no path and is left as is. `CONNECT` is
/// refused before this (see [`check_request_head`]).
pub fn normalize_target(head: &mut http::request::Parts) -> Result<(), PathError> {
    if head.uri.path() == "*" && head.method == http::Method::OPTIONS {
        return Ok(());
    }
    let query = head.uri.query().map(encode_high_bytes);
    let normalized = match (normalize(head.uri.path())?, &query) {
        (Cow::Borrowed(_), None | Some(Cow::Borrowed(_))) => return Ok(()),
        (path, _) => path.into_owned(),
    };
    let path_and_query = match query {
        Some(query) => format!("{normalized}?{query}"),
        None => normalized,
    };
    let mut parts = std::mem::take(&mut head.uri).into_parts();
    parts.path_and_query = Some(
        path_and_query
            .parse()
            .expect("a normalised path with the original query is a valid target"),
    );
    head.uri = http::Uri::from_parts(parts).expect("only the path changed");
    Ok(())
}

const UPPER_HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Append `%XX` (upper-case hex) for `byte`.
fn push_escape(out: &mut String, byte: u8) {
    out.push('%');
    out.push(char::from(UPPER_HEX[usize::from(byte >> 4)]));
    out.push(char::from(UPPER_HEX[usize::from(byte & 0xf)]));
}

/// The query with every byte ≥ 0x80 percent-encoded; the rest byte for byte.
fn encode_high_bytes(query: &str) -> Cow<'_, str> {
    if query.is_ascii() {
        return Cow::Borrowed(query);
    }
    let mut out = String::with_capacity(query.len() + 16);
    for &b in query.as_bytes() {
        if b.is_ascii() {
            out.push(char::from(b));
        } else {
            push_escape(&mut out, b);
        }
    }
    Cow::Owned(out)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Decode escapes of unreserved characters; normalise the rest to upper
/// case; percent-encode raw bytes ≥ 0x80. The result is ASCII: bytes are
/// never pushed as chars (a byte ≥ 0x80 as a `char` is two other bytes).
fn decode_unreserved(bytes: &[u8]) -> Result<String, PathError> {
    let mut out = String::with_capacity(bytes.len() + 16);
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            if b.is_ascii() {
                out.push(char::from(b));
            } else {
                push_escape(&mut out, b);
            }
            i += 1;
            continue;
        }
        let (Some(hi), Some(lo)) = (
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) else {
            return Err(PathError::BadEscape(i));
        };
        let value = hi << 4 | lo;
        match value {
            b'/' => return Err(PathError::EncodedSlash),
            b'\\' => return Err(PathError::Backslash),
            0 => return Err(PathError::Nul),
            b';' => return Err(PathError::Semicolon),
            v if is_unreserved(v) || v == b':' || v == b'@' => out.push(char::from(v)),
            v => push_escape(&mut out, v),
        }
        i += 3;
    }
    if !decodes_to_utf8(bytes) {
        return Err(PathError::InvalidUtf8);
    }
    Ok(out)
}

/// Whether the path with every escape decoded is valid UTF-8. Escapes were
/// checked to be well formed by the caller.
fn decodes_to_utf8(bytes: &[u8]) -> bool {
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                decoded.push(hi << 4 | lo);
                i += 3;
            }
            (b, _, _) => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    std::str::from_utf8(&decoded).is_ok()
}

/// RFC 3986 §5.2.4 on an absolute path, also collapsing empty segments.
fn remove_dot_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/').skip(1) {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    // A trailing slash, `.` or `..` names a directory: keep the slash.
    let ends_as_directory = path.ends_with('/') || path.ends_with("/.") || path.ends_with("/..");
    if out.is_empty() || ends_as_directory {
        out.push('/');
    }
    out
}

// The cargo-fuzz harness of `fuzz/fuzz_targets/request_head.rs`, compiled
// into the tests too, so every committed seed runs on every `cargo test`.
#[cfg(test)]
#[path = "../../fuzz/request_head.rs"]
mod request_head_harness;

#[cfg(test)]
#[test]
fn request_head_fuzz_seeds_replay() {
    let seeds = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/request_head");
    let mut paths: Vec<_> = std::fs::read_dir(&seeds)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    paths.sort();
    assert!(paths.len() >= 10, "too few seeds: {paths:?}");
    for path in paths {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let accepted = request_head_harness::request_head(&std::fs::read(&path).unwrap());
        if name.starts_with("ok-") {
            assert_eq!(accepted, Some(true), "{name}");
        } else if name.starts_with("err-") {
            assert_eq!(accepted, Some(false), "{name}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(path: &str) -> String {
        normalize(path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .into_owned()
    }

    #[test]
    fn clean_paths_are_borrowed_unchanged() {
        for path in [
            "/",
            "/api/v1/items",
            "/a-b_c~d/e.txt",
            "/UPPER/case",
            "/%20-not-there",
        ] {
            if !path.contains('%') {
                assert!(
                    matches!(normalize(path).unwrap(), Cow::Borrowed(_)),
                    "{path}"
                );
            }
        }
        assert_eq!(ok("/api/v1/items"), "/api/v1/items");
    }

    #[test]
    fn dot_segments_cannot_escape_or_hide_routes() {
        assert_eq!(ok("/info/../private"), "/private");
        assert_eq!(ok("/a/./b/../../c"), "/c");
        assert_eq!(ok("/../../etc/passwd"), "/etc/passwd");
        assert_eq!(ok("/a/b/.."), "/a/");
        assert_eq!(ok("/a/."), "/a/");
        assert_eq!(ok("/.hidden/file"), "/.hidden/file");
        assert_eq!(ok("/a/..b/c"), "/a/..b/c");
    }

    #[test]
    fn encoded_dots_and_unreserved_are_decoded_before_dot_removal() {
        assert_eq!(ok("/info/%2e%2e/private"), "/private");
        assert_eq!(ok("/info/%2E./private"), "/private");
        assert_eq!(ok("/%61dmin"), "/admin");
        assert_eq!(ok("/caf%c3%a9"), "/caf%C3%A9");
        assert_eq!(ok("/a%20b"), "/a%20b");
    }

    #[test]
    fn duplicate_slashes_collapse() {
        assert_eq!(ok("//admin///users//"), "/admin/users/");
    }

    #[test]
    fn dangerous_encodings_are_rejected() {
        assert_eq!(normalize("/a%2fb").unwrap_err(), PathError::EncodedSlash);
        assert_eq!(normalize("/a%2Fb").unwrap_err(), PathError::EncodedSlash);
        assert_eq!(normalize("/a%5cb").unwrap_err(), PathError::Backslash);
        assert_eq!(normalize("/a\\b").unwrap_err(), PathError::Backslash);
        assert_eq!(normalize("/a%00b").unwrap_err(), PathError::Nul);
        assert_eq!(normalize("/admin;x").unwrap_err(), PathError::Semicolon);
        assert_eq!(normalize("/admin%3bx").unwrap_err(), PathError::Semicolon);
        assert_eq!(normalize("/a%zz").unwrap_err(), PathError::BadEscape(2));
        assert_eq!(normalize("/a%4").unwrap_err(), PathError::BadEscape(2));
        assert_eq!(normalize("*").unwrap_err(), PathError::NotOriginForm);
    }

    #[test]
    fn colon_and_at_have_one_spelling() {
        assert_eq!(ok("/v1/items%3AbatchGet"), "/v1/items:batchGet");
        assert_eq!(ok("/users/%40me"), "/users/@me");
        assert_eq!(ok("/a%3d"), "/a%3D");
    }

    #[test]
    fn the_target_authority_wins_over_a_host_header() {
        let request = |uri: &str, hosts: &[&str]| {
            let mut builder = http::Request::builder().uri(uri);
            for host in hosts {
                builder = builder.header("host", *host);
            }
            builder.body(()).unwrap().into_parts().0
        };
        let mut head = request("http://www.example.com/x", &["admin.example.com"]);
        check_request_head(&mut head).unwrap();
        assert_eq!(head.headers["host"], "www.example.com");
        let mut head = request("/x", &["a.example", "b.example"]);
        assert_eq!(check_request_head(&mut head), Err(HeadError::DuplicateHost));
        let mut head = request("/x", &["a.example"]);
        check_request_head(&mut head).unwrap();
        assert_eq!(head.headers["host"], "a.example");
    }

    #[test]
    fn overlong_and_invalid_utf8_escapes_are_rejected() {
        for path in [
            "/a/%C0%AE%C0%AE/b",
            "/a/%C0%AF",
            "/%E0%80%AE",
            "/a/%FF",
            "/a/%C3",
        ] {
            assert_eq!(normalize(path), Err(PathError::InvalidUtf8), "{path}");
        }
        assert_eq!(ok("/caf%c3%a9"), "/caf%C3%A9");
    }

    #[test]
    fn normalising_twice_changes_nothing() {
        for path in [
            "/info/%2e%2e/private",
            "//a/./b/../c/",
            "/%7euser/x%41",
            "/caf%c3%a9/..",
            "/",
        ] {
            let once = ok(path);
            assert_eq!(ok(&once), once, "{path}");
        }
    }
    #[test]
    fn raw_bytes_above_ascii_are_percent_encoded_like_their_escapes() {
        // `/café` as raw UTF-8 and percent-encoded: one path.
        assert_eq!(ok("/caf\u{e9}/x"), "/caf%C3%A9/x");
        assert_eq!(ok("//caf\u{e9}/x"), "/caf%C3%A9/x");
        assert_eq!(ok("/caf%c3%a9/x"), ok("/caf\u{e9}/x"));
        assert_eq!(ok("/\u{1F600}"), "/%F0%9F%98%80");
        let mut head = http::Request::get("/caf\u{e9}?q=\u{e9}&a=%c3%a9")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        normalize_target(&mut head).unwrap();
        assert_eq!(head.uri.path(), "/caf%C3%A9");
        // The query is kept byte for byte but for the raw bytes.
        assert_eq!(head.uri.query(), Some("q=%C3%A9&a=%c3%a9"));
    }

    #[test]
    fn hosts_urls_read_as_another_host_are_refused() {
        for bad in [
            "x:y@admin.internal",
            "admin.internal@x",
            "admin.internal,x",
            "admin.internal..",
            ".admin.internal",
            "admin..internal",
            "admin.internal:",
            "admin.internal:8080:1",
            "admin.internal:99999",
            "admin.internal:-1",
            "admin.internal:+80",
            "adm%69n.internal",
            "admin internal",
            "[::1",
            "[::1]x",
            "[v1.x]",
            "[admin.internal]",
            "",
            ":80",
        ] {
            assert!(check_host(bad.as_bytes()).is_err(), "{bad:?}");
        }
        for good in [
            "admin.internal",
            "admin.internal.",
            "Admin.Internal:8080",
            "127.0.0.1",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:8443",
            "my_service",
            "xn--caf-dma.example",
        ] {
            assert_eq!(check_host(good.as_bytes()), Ok(()), "{good:?}");
        }
    }

    #[test]
    fn http11_needs_a_host_and_http10_does_not() {
        let head = |version| {
            http::Request::get("/x")
                .version(version)
                .body(())
                .unwrap()
                .into_parts()
                .0
        };
        assert_eq!(
            check_request_head(&mut head(http::Version::HTTP_11)),
            Err(HeadError::MissingHost)
        );
        assert_eq!(
            check_request_head(&mut head(http::Version::HTTP_10)),
            Ok(())
        );
        let mut with_userinfo = http::Request::get("http://u@admin.internal/x")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        assert!(matches!(
            check_request_head(&mut with_userinfo),
            Err(HeadError::BadHost(_))
        ));
    }
}
