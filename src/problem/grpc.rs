//! A denial as gRPC clients read one: a trailers-only response (gRPC over
//! HTTP/2, "Responses": HTTP 200 and one HEADERS frame carrying
//! `grpc-status`, `grpc-message` and `grpc-status-details-bin`, with
//! END_STREAM). A gRPC client never reads an HTTP status or a body: a 403
//! becomes "Received http2 header with status: 403", a 429 UNAVAILABLE,
//! which clients and meshes retry — a rate limit would turn into a retry
//! storm.
//!
//! `grpc-status-details-bin` is a `google.rpc.Status` whose details are an
//! `ErrorInfo` (our stable reason) and, when the denial says when to come
//! back, a `RetryInfo`. The few protobuf messages are encoded by hand:
//! four messages do not justify a protobuf code generator.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use http::{Response, StatusCode};
use http_body_util::Full;

use crate::decision::{Denial, Reason};

/// The `domain` of our `ErrorInfo`s.
pub const DOMAIN: &str = "licensegate.io";

/// gRPC status codes (`google.rpc.Code`) that denials use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Code {
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    Unavailable = 14,
    Unauthenticated = 16,
}

impl Code {
    pub const fn as_u8(self) -> u8 {
        self as u8
    }

    /// The name gRPC libraries print (`StatusCode.RESOURCE_EXHAUSTED`).
    pub const fn name(self) -> &'static str {
        match self {
            Code::Unknown => "UNKNOWN",
            Code::InvalidArgument => "INVALID_ARGUMENT",
            Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Code::NotFound => "NOT_FOUND",
            Code::PermissionDenied => "PERMISSION_DENIED",
            Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Code::Unavailable => "UNAVAILABLE",
            Code::Unauthenticated => "UNAUTHENTICATED",
        }
    }
}

/// The gRPC status of a reason: the one mapping table. Exhaustive, so a
/// new reason cannot be left out. RESOURCE_EXHAUSTED rather than
/// UNAVAILABLE for limits: clients retry UNAVAILABLE on their own.
pub const fn grpc_code(reason: Reason) -> Code {
    match reason {
        // Never a denial's reason (metrics only); no success without a
        // response message.
        Reason::Allowed | Reason::CorsPreflight => Code::Unknown,
        Reason::LicenseMissing
        | Reason::LicenseMalformed
        | Reason::LicenseSignatureInvalid
        | Reason::LicenseKeyUnknown
        | Reason::LicenseAlgorithmRejected
        | Reason::LicenseIssuerMismatch
        | Reason::LicenseAudienceMismatch
        | Reason::LicenseExpired
        | Reason::LicenseNotYetValid
        | Reason::LicenseRevoked
        | Reason::UserTokenMissing
        | Reason::UserTokenInvalid
        | Reason::SeatIdentityMissing => Code::Unauthenticated,
        Reason::EnvironmentNotLicensed
        | Reason::FeatureNotLicensed
        | Reason::RouteDenied
        | Reason::RoleMissing
        | Reason::RoleNotLicensed
        | Reason::UpgradeNotAllowed => Code::PermissionDenied,
        // `deny` is a 403, `not_ready` a 503 (see `decision::evaluate`):
        // the same code, so a client's handling does not depend on the
        // deployment's choice.
        Reason::InstanceLimitReached => Code::ResourceExhausted,
        Reason::RateLimited
        | Reason::QuotaExceeded
        | Reason::SeatLimitReached
        | Reason::ConcurrencyLimited
        | Reason::LicenseVerificationThrottled => Code::ResourceExhausted,
        Reason::UpstreamTimeout => Code::DeadlineExceeded,
        Reason::UpstreamUnavailable
        | Reason::UpstreamOverloaded
        | Reason::LimitStoreUnavailable
        | Reason::UserKeysUnavailable => Code::Unavailable,
        Reason::BadRequest | Reason::BadRequestPath => Code::InvalidArgument,
        Reason::RouteNotFound => Code::NotFound,
    }
}

/// Which gRPC framing the client speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// gRPC over HTTP/2.
    Native,
    /// gRPC-Web: its trailers-only form is the headers of an empty response.
    Web,
}

static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
static GRPC_STATUS_DETAILS: HeaderName = HeaderName::from_static("grpc-status-details-bin");

/// The denial as a trailers-only response. The body is empty, so hyper
/// sends the head alone with END_STREAM; the denial's own headers
/// (`Retry-After`, `RateLimit`…) stay for clients that read them.
pub fn render(denial: Denial, flavor: Flavor) -> Response<Full<Bytes>> {
    let code = grpc_code(denial.reason);
    let message = format!("{}: {}", denial.reason.as_str(), denial.detail);
    let retry = retry_delay(&denial);
    let details = status_details(code, &message, &denial, retry);
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static(match flavor {
            Flavor::Native => "application/grpc",
            Flavor::Web => "application/grpc-web+proto",
        }),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        GRPC_STATUS.clone(),
        HeaderValue::from(u16::from(code.as_u8())),
    );
    headers.insert(
        GRPC_MESSAGE.clone(),
        HeaderValue::from_str(&percent_encode(&message))
            .expect("percent-encoded text is visible ASCII"),
    );
    headers.insert(
        GRPC_STATUS_DETAILS.clone(),
        HeaderValue::from_str(&base64_unpadded(&details)).expect("base64 is visible ASCII"),
    );
    headers.extend(denial.headers);
    response
}

/// The delay a denial asks for, from its `Retry-After` (delay-seconds; we
/// never send the HTTP-date form).
fn retry_delay(denial: &Denial) -> Option<u64> {
    denial
        .headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// `google.rpc.Status { code, message, details }` for a denial.
fn status_details(code: Code, message: &str, denial: &Denial, retry: Option<u64>) -> Vec<u8> {
    // Keys in sorted order, as protobuf's own encoders write maps.
    let mut metadata: Vec<(&str, &str)> = Vec::new();
    if let Some(limit) = &denial.limit {
        metadata.push(("limit", limit));
    }
    if let Some(route) = &denial.route {
        metadata.push(("route", route));
    }
    let mut details = vec![any(
        "type.googleapis.com/google.rpc.ErrorInfo",
        &error_info(denial.reason.as_str(), DOMAIN, &metadata),
    )];
    if let Some(seconds) = retry {
        details.push(any(
            "type.googleapis.com/google.rpc.RetryInfo",
            &retry_info(seconds),
        ));
    }
    status(code.as_u8().into(), message, &details)
}

// === protobuf encoding (proto3 wire format) ===

const VARINT: u8 = 0;
const LEN: u8 = 2;

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn tag(out: &mut Vec<u8>, field: u32, wire_type: u8) {
    varint(out, u64::from(field) << 3 | u64::from(wire_type));
}

/// A varint field; proto3 leaves out a field at its default (0).
fn uint_field(out: &mut Vec<u8>, field: u32, value: u64) {
    if value != 0 {
        tag(out, field, VARINT);
        varint(out, value);
    }
}

/// A length-delimited field (string, bytes, message), written even when
/// empty: a message inside a repeated field or a map must be present.
fn bytes_field(out: &mut Vec<u8>, field: u32, value: &[u8]) {
    tag(out, field, LEN);
    varint(out, value.len() as u64);
    out.extend_from_slice(value);
}

/// `google.rpc.Status { int32 code = 1; string message = 2; repeated Any details = 3; }`
pub(super) fn status(code: u64, message: &str, details: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    uint_field(&mut out, 1, code);
    if !message.is_empty() {
        bytes_field(&mut out, 2, message.as_bytes());
    }
    for detail in details {
        bytes_field(&mut out, 3, detail);
    }
    out
}

/// `google.protobuf.Any { string type_url = 1; bytes value = 2; }`
pub(super) fn any(type_url: &str, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    bytes_field(&mut out, 1, type_url.as_bytes());
    if !value.is_empty() {
        bytes_field(&mut out, 2, value);
    }
    out
}

/// `google.rpc.ErrorInfo { string reason = 1; string domain = 2; map<string, string> metadata = 3; }`;
/// each map entry is a message `{ key = 1; value = 2; }`.
pub(super) fn error_info(reason: &str, domain: &str, metadata: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    bytes_field(&mut out, 1, reason.as_bytes());
    bytes_field(&mut out, 2, domain.as_bytes());
    for (key, value) in metadata {
        let mut entry = Vec::new();
        bytes_field(&mut entry, 1, key.as_bytes());
        bytes_field(&mut entry, 2, value.as_bytes());
        bytes_field(&mut out, 3, &entry);
    }
    out
}

/// `google.rpc.RetryInfo { google.protobuf.Duration retry_delay = 1; }`,
/// `Duration { int64 seconds = 1; int32 nanos = 2; }`.
pub(super) fn retry_info(seconds: u64) -> Vec<u8> {
    let mut duration = Vec::new();
    uint_field(&mut duration, 1, seconds);
    let mut out = Vec::new();
    bytes_field(&mut out, 1, &duration);
    out
}

// === header encodings ===

/// gRPC over HTTP/2, "Responses": `grpc-message` is the UTF-8 message
/// with every byte outside visible ASCII (0x20–0x7E), and `%` itself,
/// written as `%XX`.
pub(super) fn percent_encode(text: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(text.len());
    for &byte in text.as_bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
    }
    out
}

/// Binary headers (`-bin`) are base64 without padding (gRPC over HTTP/2,
/// "Custom-Metadata"); receivers accept padded too, senders omit it.
fn base64_unpadded(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes)
}
