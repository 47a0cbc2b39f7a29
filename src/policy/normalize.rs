//! Path normalisation, done once per request before any matching.
//!
//! Proxies and backends that read a path differently are how authorization
//! bypasses happen (`/info/../private`, `/admin;x`, `%2e%2e`). The rules:
//!
//! - percent-encoded *unreserved* characters (`A-Z a-z 0-9 - . _ ~`) are
//!   decoded; every other escape is kept, with its hex digits upper-cased;
//! - an encoded `/` (`%2F`), an encoded or raw `\` and an encoded NUL are
//!   rejected: backends disagree on what they mean;
//! - `;` is rejected: some backends strip `;parameters` from segments and
//!   would serve a different path than the one matched;
//! - escapes that decode to invalid UTF-8 are rejected: overlong forms such
//!   as `%C0%AE` (a `.` to lax decoders) would otherwise hide dot segments;
//! - dot segments are removed (RFC 3986 §5.2.4), after decoding, so `%2e%2e`
//!   counts as `..`; a path cannot climb above `/`;
//! - runs of `/` collapse to one.
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
            b'%' => needs_work = true,
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
/// byte for byte). `OPTIONS *` and `CONNECT` have no path and are left as is.
pub fn normalize_target(head: &mut http::request::Parts) -> Result<(), PathError> {
    if head.method == http::Method::CONNECT || head.uri.path() == "*" {
        return Ok(());
    }
    let normalized = match normalize(head.uri.path())? {
        Cow::Borrowed(_) => return Ok(()),
        Cow::Owned(normalized) => normalized,
    };
    let path_and_query = match head.uri.query() {
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

/// Decode escapes of unreserved characters; normalise the rest to upper case.
fn decode_unreserved(bytes: &[u8]) -> Result<String, PathError> {
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            out.push(b as char);
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
            v if is_unreserved(v) => out.push(v as char),
            v => {
                out.push('%');
                out.push(char::from(b"0123456789ABCDEF"[usize::from(v >> 4)]));
                out.push(char::from(b"0123456789ABCDEF"[usize::from(v & 0xf)]));
            }
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
}
