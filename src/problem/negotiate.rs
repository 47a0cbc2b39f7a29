//! Which form a denial takes for one request: a gRPC status for a gRPC
//! request (whatever it accepts: gRPC clients read no HTTP status or
//! body), else problem+json (the default, for every API client) or an HTML
//! page (for a browser navigation, which prefers `text/html` over JSON).
//!
//! `Accept` is read as RFC 9110 §12.5.1 says: each of our two forms gets the
//! weight of the most specific media range that matches it (`text/html`
//! before `text/*` before `*/*`), `q=0` means "not acceptable", and HTML is
//! chosen only when its weight is strictly greater than JSON's, so `*/*`,
//! equal weights and anything unreadable keep problem+json. One pass over
//! the header's bytes, no allocation.

use http::header::{ACCEPT, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method};

/// How a denial is written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// RFC 9457 `application/problem+json`, as `Accept` (or its absence)
    /// chose.
    #[default]
    Problem,
    /// A small self-contained HTML page, as `Accept` chose.
    Html,
    /// A gRPC trailers-only response: a gRPC request.
    Grpc,
    /// The same in gRPC-Web's framing: a gRPC-Web request.
    GrpcWeb,
}

/// What a request says about the form of a denial, kept when its head is
/// forwarded (the head is gone by the time the upstream fails).
#[derive(Clone, Debug, Default)]
pub struct Asked {
    /// The first `Accept` value (a request that sends several lines is
    /// read by its first here; a denial, decided with the head at hand,
    /// reads them all).
    pub accept: Option<HeaderValue>,
    /// A gRPC request's form ([`grpc_format`] of its `content-type`).
    pub grpc: Option<Format>,
    /// A `HEAD` request: it gets no body, so no page.
    pub head: bool,
}

impl Asked {
    /// gRPC always gets a gRPC status; `HEAD` problem+json, as it gets no
    /// body (its headers still vary with `Accept`, as the `GET`'s would).
    pub fn format(&self) -> Format {
        if let Some(grpc) = self.grpc {
            return grpc;
        }
        match &self.accept {
            Some(accept) if !self.head => negotiate([accept]),
            _ => Format::Problem,
        }
    }
}

/// The gRPC form for a `content-type` value that is gRPC's:
/// `application/grpc`, `application/grpc+proto`… ([`Format::Grpc`]) or
/// `application/grpc-web`, `application/grpc-web-text+proto`…
/// ([`Format::GrpcWeb`]). `None` for anything else (`application/grpcx`).
pub fn grpc_format(content_type: &HeaderValue) -> Option<Format> {
    let rest = strip_prefix_ignore_case(content_type.as_bytes(), b"application/grpc")?;
    let (format, rest) = match strip_prefix_ignore_case(rest, b"-web") {
        Some(web) => (
            Format::GrpcWeb,
            strip_prefix_ignore_case(web, b"-text").unwrap_or(web),
        ),
        None => (Format::Grpc, rest),
    };
    // A subtype suffix (`+proto`), parameters, or nothing.
    match rest.first() {
        None | Some(b'+' | b';' | b' ' | b'\t') => Some(format),
        Some(_) => None,
    }
}

fn strip_prefix_ignore_case<'a>(bytes: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    let head = bytes.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &bytes[prefix.len()..])
}

/// The form of a denial for a request head (the deny path, head at hand).
pub fn format_for(method: &Method, headers: &HeaderMap) -> Format {
    if let Some(grpc) = headers.get(CONTENT_TYPE).and_then(grpc_format) {
        return grpc;
    }
    if method == Method::HEAD {
        return Format::Problem;
    }
    negotiate(headers.get_all(ACCEPT))
}

/// Whether the request's `Accept` values prefer HTML over JSON.
pub fn negotiate<'a>(values: impl IntoIterator<Item = &'a HeaderValue>) -> Format {
    let mut html = Weight::default();
    let mut problem = Weight::default();
    let mut json = Weight::default();
    for value in values {
        for element in value.as_bytes().split(|&b| b == b',') {
            let Some(range) = MediaRange::parse(element) else {
                continue;
            };
            html.consider(&range, Offer::HTML);
            problem.consider(&range, Offer::PROBLEM_JSON);
            json.consider(&range, Offer::JSON);
        }
    }
    // We send problem+json, which a client asking for plain JSON reads too.
    if html.q() > problem.q().max(json.q()) {
        Format::Html
    } else {
        Format::Problem
    }
}

/// A media type we can send, as `type/subtype`.
#[derive(Clone, Copy)]
struct Offer {
    kind: &'static [u8],
    subtype: &'static [u8],
}

impl Offer {
    const HTML: Offer = Offer {
        kind: b"text",
        subtype: b"html",
    };
    const PROBLEM_JSON: Offer = Offer {
        kind: b"application",
        subtype: b"problem+json",
    };
    const JSON: Offer = Offer {
        kind: b"application",
        subtype: b"json",
    };
}

/// The best match so far for one form: the most specific matching range
/// (RFC 9110 §12.5.1), and its weight in thousandths.
#[derive(Default)]
struct Weight {
    /// 0 = nothing matched yet; 1 `*/*`, 2 `type/*`, 3 `type/subtype`,
    /// 4 `type/subtype` with a parameter that applies to us.
    specificity: u8,
    q: u16,
}

impl Weight {
    fn consider(&mut self, range: &MediaRange<'_>, offer: Offer) {
        let Some(specificity) = range.specificity_for(offer) else {
            return;
        };
        // Equally specific ranges: the first stands (a client that lists the
        // same range twice is unclear; keep the earlier word).
        if specificity > self.specificity {
            self.specificity = specificity;
            self.q = range.q;
        }
    }

    /// Unmatched means not acceptable (weight 0), for HTML and JSON alike.
    fn q(&self) -> u16 {
        if self.specificity == 0 {
            0
        } else {
            self.q
        }
    }
}

/// One element of `Accept`: `type/subtype` with its parameters and weight.
struct MediaRange<'a> {
    kind: &'a [u8],
    subtype: &'a [u8],
    /// Thousandths, 0..=1000.
    q: u16,
    /// A media-type parameter other than `charset=utf-8`: the range is about
    /// a variant we do not have (e.g. `text/html;level=1`).
    foreign_parameter: bool,
    /// `charset=utf-8`, which our forms carry.
    charset: bool,
}

impl<'a> MediaRange<'a> {
    /// `None` for an element that is empty or not a media range, and for a
    /// malformed weight: an unreadable preference is ignored, not guessed.
    fn parse(element: &'a [u8]) -> Option<MediaRange<'a>> {
        let mut parts = element.split(|&b| b == b';');
        let media = parts.next()?.trim_ascii();
        if media.is_empty() {
            return None;
        }
        let slash = media.iter().position(|&b| b == b'/')?;
        let (kind, subtype) = (&media[..slash], &media[slash + 1..]);
        if kind.is_empty() || subtype.is_empty() || (kind == b"*" && subtype != b"*") {
            return None;
        }
        let mut range = MediaRange {
            kind,
            subtype,
            q: 1000,
            foreign_parameter: false,
            charset: false,
        };
        for parameter in parts {
            let parameter = parameter.trim_ascii();
            if parameter.is_empty() {
                continue;
            }
            let (name, value) = match parameter.iter().position(|&b| b == b'=') {
                Some(eq) => (
                    parameter[..eq].trim_ascii(),
                    parameter[eq + 1..].trim_ascii(),
                ),
                None => (parameter, &b""[..]),
            };
            if name.eq_ignore_ascii_case(b"q") {
                range.q = parse_q(value)?;
                // The weight ends the media type's parameters; what follows
                // are accept extensions (obsolete), ignored.
                break;
            }
            let value = value
                .strip_prefix(b"\"")
                .and_then(|v| v.strip_suffix(b"\""))
                .unwrap_or(value);
            if name.eq_ignore_ascii_case(b"charset")
                && (value.eq_ignore_ascii_case(b"utf-8") || value.eq_ignore_ascii_case(b"utf8"))
            {
                range.charset = true;
            } else {
                range.foreign_parameter = true;
            }
        }
        Some(range)
    }

    /// How specifically this range matches `offer`; `None` if it does not.
    fn specificity_for(&self, offer: Offer) -> Option<u8> {
        if self.foreign_parameter {
            return None;
        }
        if self.kind == b"*" {
            return Some(1);
        }
        if !self.kind.eq_ignore_ascii_case(offer.kind) {
            return None;
        }
        if self.subtype == b"*" {
            return Some(2);
        }
        if !self.subtype.eq_ignore_ascii_case(offer.subtype) {
            return None;
        }
        Some(if self.charset { 4 } else { 3 })
    }
}

/// RFC 9110 §12.4.2: `qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )`,
/// in thousandths.
fn parse_q(value: &[u8]) -> Option<u16> {
    let (whole, fraction) = match value.iter().position(|&b| b == b'.') {
        Some(dot) => (&value[..dot], &value[dot + 1..]),
        None => (value, &b""[..]),
    };
    if fraction.len() > 3 || !fraction.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut thousandths = 0u16;
    for (i, digit) in fraction.iter().enumerate() {
        thousandths += u16::from(digit - b'0') * [100, 10, 1][i];
    }
    match whole {
        b"0" => Some(thousandths),
        b"1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

#[cfg(test)]
pub(super) fn q_of(value: &str) -> Option<u16> {
    parse_q(value.as_bytes())
}
