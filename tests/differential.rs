//! The same raw HTTP/1 bytes through both HTTP/1 engines (`http1: hyper`
//! and `http1: relay`), each proxy in front of its own recording upstream,
//! and what each side understood compared: the status codes the client got
//! and the bytes the upstream received. Owning HTTP/1 framing is where
//! request smuggling lives; a difference between two parsers fed the same
//! bytes is where it shows (the HTTP Garden approach).
//!
//! Every case also has to hold, on both engines, what no engine may break:
//! nothing of a denied route's request reaches the upstream as a request,
//! every request the upstream parsed was answered to the client (no hidden
//! request), no forged entitlement header arrives, a tunnel opens only on
//! the route that allows it, and no upstream connection is left holding
//! half a request once the client has gone.
//!
//! Where the engines legitimately differ, the case is listed in
//! [`DIFFERENCES`] with what each engine answers and why.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::recording::{Answer101, RecordingUpstream, Seen};
use common::vendor::Vendor;
use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ISSUER: &str = "https://vendor.test";

/// An allowed licensed route, two denied ones (a `deny` route and a feature
/// the license lacks), a denied host, a WebSocket route, a public route with
/// a small limit, and a public health route for the barriers.
const POLICY: &str = r#"
unmatched: licensed
plans:
  pro:
    features: [reports]
limits:
  metered_rate:
    rate: {limit: 2, per: 1h, key: client_ip}
routes:
  - name: health
    path: /healthz
    access: public
  - name: admin
    path: /admin/**
    access: deny
  - name: admin-host
    host: admin.internal
    path: /**
    access: deny
  - name: export
    path: /api/export/**
    features: [export]
  - name: reports
    path: /api/reports/**
    features: [reports]
  - name: live
    path: /live/**
    features: [reports]
    websocket: true
  - name: metered
    path: /metered/**
    access: public
    limits: [metered_rate]
"#;

/// Short proxy timers, so a connection the client leaves open ends by the
/// proxy's own idle or head timeout rather than by the test's bound.
const TIMEOUTS: &str = "timeouts:\n  request_header: 1s\n  idle: 1s\n  tunnel_idle: 1s\n";

/// How long a case's client waits for the proxy to end the connection.
/// Well above the proxy's timers (at most 1.5 s); reaching it is recorded.
const CASE_BOUND: Duration = Duration::from_secs(5);

/// The value every forged header carries in the corpus.
const FORGED: &str = "FORGED";

// ---------------------------------------------------------------------------
// Where the engines are expected to differ
// ---------------------------------------------------------------------------

/// A case the engines answer differently on purpose.
struct Difference {
    case: &'static str,
    /// The statuses the client gets from each engine.
    hyper: &'static [u16],
    relay: &'static [u16],
    /// Why both answers are acceptable (or which one is the reference).
    why: &'static str,
}

/// Every case where `relay` and `hyper` legitimately differ. For a listed
/// case the statuses must be the ones stated and the invariants must hold
/// on both engines; the upstream's bytes are not compared (they differ by
/// definition when one engine refuses what the other forwards). An entry
/// whose case no longer differs fails the test: the table stays true.
///
/// An entry reads, for instance:
/// `Difference { case: "bare-lf", hyper: &[200], relay: &[400], why: "RFC 9112 §2.2
/// lets a recipient refuse a bare LF; the relay does, hyper accepts it" }`.
const DIFFERENCES: &[Difference] = &[
    Difference {
        case: "chunked-missing-crlf-after-data",
        hyper: &[400],
        relay: &[400],
        why: "both refuse the malformed chunk; hyper has sent the upstream the head and the chunks before it, the relay checks the body it holds before contacting the upstream and sends nothing",
    },
    Difference {
        case: "chunked-data-longer-than-size",
        hyper: &[400],
        relay: &[400],
        why: "both refuse the malformed chunk; hyper has sent the upstream the head and the chunks before it, the relay checks the body it holds before contacting the upstream and sends nothing",
    },
    Difference {
        case: "post-no-length",
        hyper: &[200],
        relay: &[200],
        why: "the relay sends `content-length: 0` with a POST that has no body, as RFC 9110 §8.6 asks of a sender (some origins answer 411 without it); hyper sends no length",
    },
    Difference {
        case: "post-body-short",
        hyper: &[],
        relay: &[],
        why: "both forward the head and the ten bytes and wait for the rest of the body; the upstream's unfinished bytes differ only in header order (the relay writes its one framing header last)",
    },
    Difference {
        case: "chunked-size-space",
        hyper: &[200],
        relay: &[400],
        why: "RFC 9112 §7.1.1 allows whitespace after a chunk size only before `;`: the relay refuses `5 \r\n`, hyper reads it",
    },
    Difference {
        case: "expect-100-continue",
        hyper: &[100, 200],
        relay: &[200],
        why: "the body came with the head: RFC 9110 §10.1.1 lets a server omit `100 Continue` once content has arrived, and the relay does",
    },
    Difference {
        case: "version-1-2",
        hyper: &[400],
        relay: &[505],
        why: "both refuse; the relay says why with 505 HTTP Version Not Supported",
    },
    Difference {
        case: "version-2-0-in-h1",
        hyper: &[400],
        relay: &[505],
        why: "both refuse; the relay says why with 505 HTTP Version Not Supported",
    },
    Difference {
        case: "cl-te",
        hyper: &[200],
        relay: &[400],
        why: "Transfer-Encoding beside Content-Length, the smuggling classic: RFC 9112 §6.3 lets a server refuse it, and the relay does; hyper forwards it as chunked",
    },
    Difference {
        case: "te-cl",
        hyper: &[200],
        relay: &[400],
        why: "Transfer-Encoding beside Content-Length: refused by the relay (RFC 9112 §6.3); hyper forwards the hidden request as chunked body data",
    },
    Difference {
        case: "te-tab",
        hyper: &[200],
        relay: &[400],
        why: "Transfer-Encoding beside Content-Length: refused by the relay (RFC 9112 §6.3)",
    },
    Difference {
        case: "te-and-cl-on-get",
        hyper: &[200],
        relay: &[400],
        why: "Transfer-Encoding beside Content-Length: refused by the relay (RFC 9112 §6.3)",
    },
    Difference {
        case: "te-chunked-identity",
        hyper: &[400],
        relay: &[501],
        why: "both refuse; a transfer coding other than chunked is 501 Not Implemented (RFC 9112 §6.1)",
    },
    Difference {
        case: "te-two-lines",
        hyper: &[400],
        relay: &[501],
        why: "both refuse; a transfer coding other than chunked is 501 Not Implemented (RFC 9112 §6.1)",
    },
    Difference {
        case: "te-quoted",
        hyper: &[400],
        relay: &[501],
        why: "both refuse; `\"chunked\"` is not the chunked coding, so 501 Not Implemented (RFC 9112 §6.1)",
    },
    Difference {
        case: "te-chunked-params",
        hyper: &[400],
        relay: &[501],
        why: "both refuse; a coding with parameters is not the bare chunked coding, so 501 Not Implemented",
    },
    Difference {
        case: "te-identity-chunked",
        hyper: &[200, 403],
        relay: &[501],
        why: "the relay decodes no coding but chunked, so it refuses `identity, chunked` (501); hyper reads it as chunked and refuses the hidden request",
    },
    Difference {
        case: "te-two-lines-chunked-last",
        hyper: &[200, 403],
        relay: &[501],
        why: "the relay decodes no coding but chunked, so it refuses a second coding on another line (501); hyper reads it as chunked",
    },
    Difference {
        case: "te-gzip-chunked",
        hyper: &[200],
        relay: &[501],
        why: "hyper forwards a gzip-coded body as if it were plain (the coding is lost on the way); the relay refuses codings it does not decode (501)",
    },
    Difference {
        case: "te-after-bare-lf",
        hyper: &[200],
        relay: &[400],
        why: "RFC 9112 §2.2 lets a recipient refuse a bare LF in the head; the relay does, hyper accepts it",
    },
    Difference {
        case: "bare-lf",
        hyper: &[200],
        relay: &[400],
        why: "RFC 9112 §2.2 lets a recipient refuse a bare LF in the head; the relay does, hyper accepts it",
    },
    Difference {
        case: "bare-lf-one-header",
        hyper: &[200, 403],
        relay: &[400],
        why: "RFC 9112 §2.2 lets a recipient refuse a bare LF in the head; the relay does, hyper accepts it",
    },
    Difference {
        case: "cl-list-equal",
        hyper: &[400],
        relay: &[200],
        why: "RFC 9110 §8.6 lets a recipient read a list of identical Content-Length values as one; the relay does and forwards `content-length: 5`, hyper refuses",
    },
    Difference {
        case: "cl-leading-zero",
        hyper: &[200],
        relay: &[200],
        why: "the relay writes its own framing header: `Content-Length: 05` reaches the upstream as `5`",
    },
    Difference {
        case: "h2c-upgrade",
        hyper: &[200],
        relay: &[200, 505],
        why: "the HTTP/2 preface after an h2c upgrade that was stripped: hyper closes the connection, the relay answers 505; neither forwards it",
    },
];

// ---------------------------------------------------------------------------
// The corpus
// ---------------------------------------------------------------------------

/// One raw exchange, sent on a fresh connection.
struct Case {
    name: &'static str,
    bytes: Vec<u8>,
}

/// The corpus. In the text, `{auth}` stands for a valid `Authorization`
/// line (a `pro` license: feature `reports`, not `export`).
// One case per line reads as a table; rustfmt would split it.
#[rustfmt::skip]
fn corpus(auth: &str) -> Vec<Case> {
    // A request for a `deny` route and one for a feature the license lacks:
    // what the smuggling cases try to hide behind an allowed request.
    let deny = "GET /admin/secret HTTP/1.1\r\nHost: app.test\r\n\r\n";
    let export = "GET /api/export/all HTTP/1.1\r\nHost: app.test\r\n{auth}\r\n";
    let export_len = export.replace("{auth}", auth).len();
    let post = "POST /api/reports/front HTTP/1.1\r\nHost: app.test\r\n{auth}";
    let ws = "Connection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";
    let long = "a".repeat(70 * 1024);
    let many: String = (0..150).map(|n| format!("X-H{n}: v\r\n")).collect();

    let text: Vec<(&'static str, String)> = vec![
        // --- Plain requests -------------------------------------------------
        ("get-public", "GET /healthz HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n".into()),
        ("get-licensed", "GET /api/reports/q?x=1&y=%20 HTTP/1.1\r\nHost: app.test\r\n{auth}Connection: close\r\n\r\n".into()),
        ("get-no-license", "GET /api/reports/q HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n".into()),
        ("get-deny-route", "GET /admin/secret HTTP/1.1\r\nHost: app.test\r\n{auth}Connection: close\r\n\r\n".into()),
        ("get-missing-feature", "GET /api/export/all HTTP/1.1\r\nHost: app.test\r\n{auth}Connection: close\r\n\r\n".into()),
        ("get-keep-alive-left-open", "GET /api/reports/open HTTP/1.1\r\nHost: app.test\r\n{auth}\r\n".into()),
        ("head-licensed", "HEAD /api/reports/h HTTP/1.1\r\nHost: app.test\r\n{auth}Connection: close\r\n\r\n".into()),
        ("head-then-get", "HEAD /api/reports/h1 HTTP/1.1\r\nHost: app.test\r\n{auth}\r\n\
          GET /api/reports/h2 HTTP/1.1\r\nHost: app.test\r\n{auth}Connection: close\r\n\r\n".into()),
        ("post-content-length", format!("{post}Content-Length: 5\r\nConnection: close\r\n\r\nhello")),
        ("post-empty", format!("{post}Content-Length: 0\r\nConnection: close\r\n\r\n")),
        ("post-no-length", format!("{post}Connection: close\r\n\r\n")),
        ("post-body-short", format!("{post}Content-Length: 50\r\n\r\nonly ten b")),
        ("post-body-long", format!("{post}Content-Length: 3\r\n\r\nabcdef")),
        ("get-with-body", "GET /api/reports/gb HTTP/1.1\r\nHost: app.test\r\n{auth}Content-Length: 4\r\nConnection: close\r\n\r\nabcd".into()),
        ("head-with-body", "HEAD /api/reports/hb HTTP/1.1\r\nHost: app.test\r\n{auth}Content-Length: 3\r\nConnection: close\r\n\r\nabc".into()),
        ("lowercase-method", "get /healthz HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n".into()),
        ("unknown-method", "PURGE /api/reports/p HTTP/1.1\r\nHost: app.test\r\n{auth}Connection: close\r\n\r\n".into()),
        ("fragment-in-target", "GET /healthz#frag HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n".into()),
        ("dot-segments-to-deny", "GET /api/reports/../../admin/secret HTTP/1.1\r\nHost: app.test\r\n{auth}Connection: close\r\n\r\n".into()),
        ("encoded-deny", "GET /%61dmin/secret HTTP/1.1\r\nHost: app.test\r\n{auth}Connection: close\r\n\r\n".into()),

        // --- Chunked bodies -------------------------------------------------
        ("chunked", format!("{post}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n")),
        ("chunked-extensions", format!("{post}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n5;name=value\r\nhello\r\n6;q=\"a b\"\r\n world\r\n0;last\r\n\r\n")),
        ("chunked-trailers", format!("{post}Transfer-Encoding: chunked\r\nTrailer: X-Checksum\r\nTE: trailers\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\nX-Checksum: abc\r\n\r\n")),
        ("chunked-forged-trailer", format!("{post}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\nx-license-features: {FORGED}\r\n\r\n")),
        ("chunked-uppercase-hex", format!("{post}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\nA\r\n0123456789\r\n0\r\n\r\n")),
        ("chunked-leading-zeros", format!("{post}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n0005\r\nhello\r\n0000\r\n\r\n")),
        ("chunked-size-0x", format!("{post}Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n{deny}")),
        ("chunked-size-overflow", format!("{post}Transfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nhello\r\n0\r\n\r\n{deny}")),
        ("chunked-size-space", format!("{post}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n5 \r\nhello\r\n0\r\n\r\n")),
        ("chunked-size-negative", format!("{post}Transfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n{deny}")),
        ("chunked-missing-crlf-after-data", format!("{post}Transfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n{deny}")),
        ("chunked-data-longer-than-size", format!("{post}Transfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n{deny}")),
        ("chunked-bare-lf", format!("{post}Transfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n{deny}")),
        ("chunked-no-last-chunk", format!("{post}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")),
        ("chunked-smuggle-in-data", format!("{post}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n{export_len:x}\r\n{export}\r\n0\r\n\r\n")),

        // --- Pipelines ------------------------------------------------------
        ("pipeline-allowed-allowed", "GET /api/reports/p1 HTTP/1.1\r\nHost: app.test\r\n{auth}\r\n\
          GET /api/reports/p2 HTTP/1.1\r\nHost: app.test\r\n{auth}Connection: close\r\n\r\n".into()),
        ("pipeline-allowed-denied", format!("GET /api/reports/p1 HTTP/1.1\r\nHost: app.test\r\n{{auth}}\r\n{deny}")),
        ("pipeline-allowed-missing-feature", format!("GET /api/reports/p1 HTTP/1.1\r\nHost: app.test\r\n{{auth}}\r\n{export}")),
        ("pipeline-denied-allowed", format!("{deny}GET /api/reports/p2 HTTP/1.1\r\nHost: app.test\r\n{{auth}}Connection: close\r\n\r\n")),
        ("pipeline-post-get", format!("{post}Content-Length: 5\r\n\r\nhelloGET /api/reports/p2 HTTP/1.1\r\nHost: app.test\r\n{{auth}}Connection: close\r\n\r\n")),
        ("pipeline-limited", "GET /metered/a HTTP/1.1\r\nHost: app.test\r\n\r\n\
          GET /metered/b HTTP/1.1\r\nHost: app.test\r\n\r\n\
          GET /metered/c HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n".into()),
        ("pipeline-after-close", format!("GET /api/reports/p1 HTTP/1.1\r\nHost: app.test\r\n{{auth}}Connection: close\r\n\r\n{export}")),

        // --- Expect ---------------------------------------------------------
        ("expect-100-continue", format!("{post}Content-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\nhello")),
        ("expect-100-continue-denied", "POST /admin/upload HTTP/1.1\r\nHost: app.test\r\n{auth}Content-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\nhello".into()),
        ("expect-unknown", format!("{post}Content-Length: 5\r\nExpect: 200-ok\r\nConnection: close\r\n\r\nhello")),

        // --- HTTP/1.0 -------------------------------------------------------
        ("http10", "GET /api/reports/ten HTTP/1.0\r\n{auth}\r\n".into()),
        ("http10-keep-alive-pipeline", "GET /api/reports/ten1 HTTP/1.0\r\nConnection: keep-alive\r\n{auth}\r\n\
          GET /api/reports/ten2 HTTP/1.0\r\n{auth}\r\n".into()),
        ("http10-no-keep-alive-pipeline", format!("GET /api/reports/ten1 HTTP/1.0\r\n{{auth}}\r\n{deny}")),
        ("http10-chunked", format!("POST /api/reports/ten HTTP/1.0\r\n{{auth}}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n{deny}")),
        ("http09", "GET /healthz\r\n\r\n".into()),
        ("version-1-2", "GET /healthz HTTP/1.2\r\nHost: app.test\r\nConnection: close\r\n\r\n".into()),
        ("version-2-0-in-h1", "GET /healthz HTTP/2.0\r\nHost: app.test\r\nConnection: close\r\n\r\n".into()),
        ("request-line-double-space", "GET  /healthz HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n".into()),
        ("request-line-tab", "GET\t/healthz\tHTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n".into()),

        // --- Request targets ------------------------------------------------
        ("absolute-form", "GET http://app.test/api/reports/abs HTTP/1.1\r\nHost: app.test\r\n{auth}Connection: close\r\n\r\n".into()),
        ("absolute-form-denied-host", "GET http://admin.internal/api/reports/abs HTTP/1.1\r\nHost: app.test\r\n{auth}Connection: close\r\n\r\n".into()),
        ("absolute-form-host-header-denied", "GET http://app.test/api/reports/abs HTTP/1.1\r\nHost: admin.internal\r\n{auth}Connection: close\r\n\r\n".into()),
        ("absolute-form-https", "GET https://app.test/api/reports/abs HTTP/1.1\r\nHost: app.test\r\n{auth}Connection: close\r\n\r\n".into()),
        ("asterisk-options", "OPTIONS * HTTP/1.1\r\nHost: app.test\r\n{auth}Connection: close\r\n\r\n".into()),
        ("asterisk-get", "GET * HTTP/1.1\r\nHost: app.test\r\n{auth}Connection: close\r\n\r\n".into()),
        ("connect", "CONNECT admin.internal:443 HTTP/1.1\r\nHost: admin.internal:443\r\n{auth}\r\n".into()),

        // --- Content-Length / Transfer-Encoding conflicts (CL.TE, TE.CL, TE.TE)
        ("cl-te", format!("{post}Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{deny}")),
        ("te-cl", format!("{post}Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n{export_len:x}\r\n{export}\r\n0\r\n\r\n")),
        ("te-xchunked", format!("{post}Transfer-Encoding: xchunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n{deny}")),
        ("te-folded-line", format!("{post}Content-Length: 4\r\nX-Pad: a\r\n Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n{deny}")),
        ("te-leading-space-line", format!("{post} Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n{deny}")),
        ("te-chunked-identity", format!("{post}Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{deny}")),
        ("te-identity-chunked", format!("{post}Transfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n{deny}")),
        ("te-gzip-chunked", format!("{post}Transfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n")),
        ("te-two-lines", format!("{post}Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n{deny}")),
        ("te-two-lines-chunked-last", format!("{post}Transfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{deny}")),
        ("te-space-before-colon", format!("{post}Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n{deny}")),
        ("te-tab", format!("{post}Transfer-Encoding:\tchunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n{deny}")),
        ("te-uppercase", format!("{post}Transfer-Encoding: CHUNKED\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n")),
        ("te-quoted", format!("{post}Transfer-Encoding: \"chunked\"\r\n\r\n0\r\n\r\n{deny}")),
        ("te-trailing-comma", format!("{post}Transfer-Encoding: chunked,\r\n\r\n0\r\n\r\n{deny}")),
        ("te-vertical-tab", format!("{post}Transfer-Encoding: chunked\x0b\r\n\r\n0\r\n\r\n{deny}")),
        ("te-underscore-name", format!("{post}Transfer_Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{deny}")),
        ("te-tab-around-colon", format!("{post}Transfer-Encoding\t:\tchunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n{deny}")),
        ("te-chunked-params", format!("{post}Transfer-Encoding: chunked;ext=val\r\n\r\n0\r\n\r\n{deny}")),
        ("te-form-feed", format!("{post}Transfer-Encoding:\x0cchunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n{deny}")),
        ("te-folded-value", format!("{post}Transfer-Encoding:\r\n chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n{deny}")),
        ("te-after-bare-lf", format!("{post}X-Pad: a\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n{deny}")),
        ("te-and-cl-on-get", "GET /api/reports/g HTTP/1.1\r\nHost: app.test\r\n{auth}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin/secret HTTP/1.1\r\nHost: app.test\r\n\r\n".into()),
        ("cl-duplicate-equal", format!("{post}Content-Length: 5\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")),
        ("cl-duplicate-unequal", format!("{post}Content-Length: 0\r\nContent-Length: 50\r\n\r\n{deny}")),
        ("cl-list-equal", format!("{post}Content-Length: 5, 5\r\nConnection: close\r\n\r\nhello")),
        ("cl-list-unequal", format!("{post}Content-Length: 0, 50\r\n\r\n{deny}")),
        ("cl-plus", format!("{post}Content-Length: +5\r\n\r\nhello{deny}")),
        ("cl-leading-zero", format!("{post}Content-Length: 05\r\nConnection: close\r\n\r\nhello")),
        ("cl-negative", format!("{post}Content-Length: -1\r\n\r\n{deny}")),
        ("cl-hex", format!("{post}Content-Length: 0x5\r\n\r\nhello{deny}")),
        ("cl-overflow", format!("{post}Content-Length: 99999999999999999999\r\n\r\n{deny}")),
        ("cl-space-before-colon", format!("{post}Content-Length : 5\r\n\r\nhello{deny}")),

        // --- Line endings and bytes in the head -----------------------------
        ("bare-lf", "GET /api/reports/lf HTTP/1.1\nHost: app.test\n{auth}Connection: close\n\n".into()),
        ("bare-lf-one-header", format!("{post}Content-Length: 0\nX-Pad: a\r\n\r\n{deny}")),
        ("cr-only", "GET /api/reports/cr HTTP/1.1\rHost: app.test\r{auth}\r".into()),
        ("bare-cr-in-value", "GET /api/reports/cr HTTP/1.1\r\nHost: app.test\r\n{auth}X-A: a\rb\r\nConnection: close\r\n\r\n".into()),
        ("obs-fold", "GET /api/reports/fold HTTP/1.1\r\nHost: app.test\r\n{auth}X-Fold: a\r\n b\r\nConnection: close\r\n\r\n".into()),
        ("nul-in-value", "GET /api/reports/nul HTTP/1.1\r\nHost: app.test\r\n{auth}X-A: a\0b\r\nConnection: close\r\n\r\n".into()),
        ("del-in-value", "GET /api/reports/del HTTP/1.1\r\nHost: app.test\r\n{auth}X-A: a\x7fb\r\nConnection: close\r\n\r\n".into()),
        ("utf8-in-value", "GET /api/reports/utf8 HTTP/1.1\r\nHost: app.test\r\n{auth}X-A: café\r\nConnection: close\r\n\r\n".into()),
        ("space-in-name", "GET /api/reports/sp HTTP/1.1\r\nHost: app.test\r\n{auth}X A: b\r\nConnection: close\r\n\r\n".into()),
        ("no-colon", "GET /api/reports/nc HTTP/1.1\r\nHost: app.test\r\n{auth}X-A b\r\nConnection: close\r\n\r\n".into()),
        ("empty-name", "GET /api/reports/en HTTP/1.1\r\nHost: app.test\r\n{auth}: b\r\nConnection: close\r\n\r\n".into()),
        ("oversize-head", format!("GET /api/reports/big HTTP/1.1\r\nHost: app.test\r\n{{auth}}X-Big: {long}\r\nConnection: close\r\n\r\n")),
        ("oversize-request-line", format!("GET /api/reports/{long} HTTP/1.1\r\nHost: app.test\r\n{{auth}}Connection: close\r\n\r\n")),
        ("many-headers", format!("GET /api/reports/many HTTP/1.1\r\nHost: app.test\r\n{{auth}}{many}Connection: close\r\n\r\n")),

        // --- Headers the proxy owns -----------------------------------------
        ("impersonate-underscore", format!("GET /api/reports/imp HTTP/1.1\r\nHost: app.test\r\n{{auth}}x_license_features: {FORGED}\r\nX_License_Plan: {FORGED}\r\nX-Forwarded_For: {FORGED}\r\nConnection: close\r\n\r\n")),
        ("impersonate-dash", format!("GET /api/reports/imp HTTP/1.1\r\nHost: app.test\r\n{{auth}}x-license-features: {FORGED}\r\nx-license-id: {FORGED}\r\nx-licensegate-shadow-deny: {FORGED}\r\nConnection: close\r\n\r\n")),
        ("connection-nominates-license-header", "GET /api/reports/cn HTTP/1.1\r\nHost: app.test\r\n{auth}Connection: close, x-license-plan\r\n\r\n".into()),
        ("connection-nominates-authorization", "GET /api/reports/cn HTTP/1.1\r\nHost: app.test\r\n{auth}Connection: close, authorization\r\n\r\n".into()),
        ("connection-nominates-host", "GET /api/reports/cn HTTP/1.1\r\nHost: app.test\r\n{auth}Connection: close, host\r\n\r\n".into()),
        ("host-duplicate-equal", "GET /api/reports/hd HTTP/1.1\r\nHost: app.test\r\nHost: app.test\r\n{auth}Connection: close\r\n\r\n".into()),
        ("host-duplicate-denied-second", "GET /api/reports/hd HTTP/1.1\r\nHost: app.test\r\nHost: admin.internal\r\n{auth}Connection: close\r\n\r\n".into()),
        ("host-duplicate-denied-first", "GET /api/reports/hd HTTP/1.1\r\nHost: admin.internal\r\nHost: app.test\r\n{auth}Connection: close\r\n\r\n".into()),
        ("host-missing", "GET /api/reports/hm HTTP/1.1\r\n{auth}Connection: close\r\n\r\n".into()),
        ("host-empty", "GET /api/reports/he HTTP/1.1\r\nHost: \r\n{auth}Connection: close\r\n\r\n".into()),
        ("host-with-port", "GET /api/reports/hp HTTP/1.1\r\nHost: app.test:8080\r\n{auth}Connection: close\r\n\r\n".into()),

        // --- Upgrades -------------------------------------------------------
        ("h2c-upgrade", format!("GET /healthz HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n{export}")),
        ("websocket-allowed", format!("GET /live/feed HTTP/1.1\r\nHost: app.test\r\n{{auth}}{ws}\r\nping{deny}")),
        ("websocket-no-license", format!("GET /live/feed HTTP/1.1\r\nHost: app.test\r\n{ws}\r\n{deny}")),
        ("websocket-route-without-websocket", format!("GET /api/reports/ws HTTP/1.1\r\nHost: app.test\r\n{{auth}}{ws}\r\n{deny}")),
        ("websocket-deny-route", format!("GET /admin/ws HTTP/1.1\r\nHost: app.test\r\n{{auth}}{ws}\r\n{deny}")),
        ("upgrade-without-connection-token", "GET /api/reports/up HTTP/1.1\r\nHost: app.test\r\n{auth}Upgrade: websocket\r\nConnection: close\r\n\r\n".into()),
        ("websocket-with-body", format!("GET /live/feed HTTP/1.1\r\nHost: app.test\r\n{{auth}}{ws}Content-Length: {}\r\n\r\n{deny}", deny.len())),
    ];
    text.into_iter()
        .map(|(name, text)| Case {
            name,
            bytes: text.replace("{auth}", auth).into_bytes(),
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The two sides
// ---------------------------------------------------------------------------

/// One engine's proxy in front of its own recording upstream.
struct Side {
    /// What reports call this side.
    label: &'static str,
    engine: &'static str,
    upstream: RecordingUpstream,
    proxy: Proxy,
}

impl Side {
    async fn start(
        vendor: &Vendor,
        label: &'static str,
        engine: &'static str,
        extra: &str,
    ) -> Side {
        let upstream = RecordingUpstream::start(Answer101::Genuine).await;
        let config = config(vendor, label, engine, &upstream, extra);
        let proxy = Proxy::with_config(&config);
        Side {
            label,
            engine,
            upstream,
            proxy,
        }
    }
}

/// The config both sides share, but for `http1` (and `extra`), in a file
/// of its own per side.
fn config(
    vendor: &Vendor,
    label: &str,
    engine: &str,
    upstream: &RecordingUpstream,
    extra: &str,
) -> PathBuf {
    write_file(
        vendor.dir(),
        &format!("licensegate-{label}.yaml"),
        &format!(
            "http1: {engine}\nupstream:\n  url: {}\nworkers: 2\nlicense:\n  keys: {}\n  \
             issuer: {ISSUER}\n  audience: api\n  source: header\npolicy:\n  paths: [{}]\n\
             {TIMEOUTS}{extra}",
            upstream.url(),
            vendor.keys().display(),
            vendor.policy().display(),
        ),
    )
}

fn license(vendor: &Vendor) -> String {
    vendor.license(json!({
        "iss": ISSUER, "sub": "cust-1", "aud": "api", "lic": {"plan": "pro"},
    }))
}

// ---------------------------------------------------------------------------
// One exchange, observed
// ---------------------------------------------------------------------------

/// What one case did on one engine.
struct Observation {
    /// Status codes the client read, in order (interim ones included).
    statuses: Vec<u16>,
    /// How the client's connection ended.
    client_end: &'static str,
    /// What the upstream received, normalised (see [`normalise`]).
    upstream: Vec<String>,
    /// Requests the upstream parsed outside tunnels (barrier excluded).
    forwarded: Vec<Seen>,
    /// Targets of the requests that opened a tunnel.
    tunnels: Vec<String>,
    /// Upstream connections still holding half a request after the bound.
    unsettled: usize,
    response: String,
    received: String,
}

const BARRIER: &str = "/healthz?barrier=";

/// Send `case` on a fresh connection, read the answer (until the proxy
/// closes, bounded), then let the proxy finish with the upstream: a
/// barrier request must reach the upstream, and every upstream connection
/// must hold only complete requests, or have ended.
async fn observe(side: &Side, case: &Case, n: usize) -> Observation {
    let upstream = &side.upstream;
    let first_request = upstream.requests().len();
    let before: Vec<usize> = upstream
        .connection_records()
        .iter()
        .map(|c| c.bytes.len())
        .collect();

    let (response, client_end) = exchange(side.proxy.addr, &case.bytes).await;

    let target = format!("{BARRIER}{n}");
    let (reply, _) = exchange(
        side.proxy.addr,
        format!("GET {target} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(
        statuses(&reply),
        [200],
        "{}: the barrier after {}: {reply}",
        side.label,
        case.name
    );
    upstream.wait_for_target(&target).await;
    let settled =
        eventually(async || upstream.connection_records().iter().all(|c| c.settled())).await;

    let connections = upstream.connection_records();
    let requests = upstream.requests();
    let mut forwarded = Vec::new();
    let mut lines = Vec::new();
    let mut tunnels = Vec::new();
    for seen in &requests[first_request..] {
        if seen.target().starts_with(BARRIER) || seen.in_tunnel {
            continue;
        }
        let bytes = &connections[seen.connection].bytes[seen.span.clone()];
        lines.extend(normalise(bytes, seen));
        if connections[seen.connection].tunnel_from == Some(seen.span.end) {
            tunnels.push(seen.target().to_owned());
        }
        forwarded.push(seen.clone());
    }
    let mut received = Vec::new();
    for (id, connection) in connections.iter().enumerate() {
        let from = before.get(id).copied().unwrap_or(0);
        if connection.bytes.len() > from {
            received.push(format!(
                "[connection {id}] {}",
                escape(&connection.bytes[from..])
            ));
        }
        // What follows the last complete request: a tunnel's bytes, or
        // bytes the upstream could not (yet) read as a request.
        let (label, start) = match connection.tunnel_from {
            Some(at) => ("tunnel", at),
            None => ("unparsed", connection.parsed),
        };
        let start = start.max(from);
        if connection.bytes.len() > start {
            lines.push(format!(
                "{label}{}: {}",
                if connection.closed { " (closed)" } else { "" },
                escape(&connection.bytes[start..])
            ));
        }
    }
    let unsettled = if settled {
        0
    } else {
        connections.iter().filter(|c| !c.settled()).count()
    };
    Observation {
        statuses: statuses(&response),
        client_end,
        upstream: lines,
        forwarded,
        tunnels,
        unsettled,
        response: escape(response.as_bytes()),
        received: received.join("\n"),
    }
}

/// Write `bytes` on a fresh connection and read until the proxy ends it or
/// [`CASE_BOUND`] passes. A write the proxy refuses midway (it answered
/// and closed) is part of the exchange, not a failure.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> (String, &'static str) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = stream.split();
    let mut response = Vec::new();
    let write = async {
        let _ = writer.write_all(bytes).await;
    };
    let read = async {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match reader.read(&mut chunk).await {
                Ok(0) => return "closed by the proxy",
                Ok(n) => response.extend_from_slice(&chunk[..n]),
                Err(_) => return "reset by the proxy",
            }
        }
    };
    let (_, end) = tokio::join!(write, async {
        tokio::time::timeout(CASE_BOUND, read)
            .await
            .unwrap_or("left open by the proxy")
    });
    (String::from_utf8_lossy(&response).into_owned(), end)
}

/// The status codes of the responses in `text`, read in sequence: each
/// head, then its body by `Content-Length` or chunked framing. After a
/// 101 the rest is tunnel data.
fn statuses(text: &str) -> Vec<u16> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(line) = rest.strip_prefix("HTTP/1.") {
        let Some(status) = line.get(2..5).and_then(|s| s.parse::<u16>().ok()) else {
            break;
        };
        found.push(status);
        let Some(head_end) = rest.find("\r\n\r\n") else {
            break;
        };
        let head = rest[..head_end].to_ascii_lowercase();
        rest = &rest[head_end + 4..];
        if status == 101 {
            break;
        }
        if (100..200).contains(&status) || status == 204 || status == 304 {
            continue;
        }
        let field = |name: &str| {
            head.split("\r\n")
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        if field("transfer-encoding").is_some_and(|te| te.ends_with("chunked")) {
            rest = skip_chunks(rest);
        } else if let Some(length) = field("content-length").and_then(|l| l.parse().ok()) {
            // The answer to a HEAD has a length and no body.
            if !rest.starts_with("HTTP/1.") {
                rest = rest.get(length..).unwrap_or("");
            }
        } else {
            break;
        }
    }
    found
}

fn skip_chunks(mut rest: &str) -> &str {
    loop {
        let Some(line_end) = rest.find("\r\n") else {
            return "";
        };
        let size = usize::from_str_radix(rest[..line_end].split(';').next().unwrap_or(""), 16);
        rest = &rest[line_end + 2..];
        match size {
            Ok(0) => return rest.find("\r\n\r\n").map_or("", |at| &rest[at + 4..]),
            Ok(size) => rest = rest.get(size + 2..).unwrap_or(""),
            Err(_) => return "",
        }
    }
}

/// One request the upstream received, as lines that compare across
/// engines. Normalised away, as legitimately engine-specific: the order of
/// header fields, the case of their names, whitespace around values,
/// `date`, and chunk boundaries and extensions (the body is shown decoded,
/// with its framing named). Everything else is as received.
fn normalise(bytes: &[u8], seen: &Seen) -> Vec<String> {
    let head_end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(bytes.len());
    let head = &bytes[..head_end];
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let mut out = vec![format!("request: {}", escape(lines.next().unwrap_or(b"")))];
    let mut fields: Vec<String> = lines
        .map(|line| {
            let at = line.iter().position(|&b| b == b':').unwrap_or(line.len());
            let name = String::from_utf8_lossy(&line[..at]).to_ascii_lowercase();
            let value = escape(line.get(at + 1..).unwrap_or(b"")).trim().to_owned();
            let value = if name == "date" {
                "<date>".into()
            } else {
                value
            };
            format!("  {name}: {value}")
        })
        .collect();
    fields.sort();
    out.extend(fields);
    let chunked = seen
        .header("transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
    let framing = if chunked {
        "chunked"
    } else if seen.header("content-length").is_some() {
        "content-length"
    } else {
        "none"
    };
    out.push(format!("  body ({framing}): {}", escape(&seen.body)));
    for (name, value) in &seen.trailers {
        out.push(format!("  trailer {}: {value}", name.to_ascii_lowercase()));
    }
    out
}

/// Bytes as readable text: printable ASCII as is, the rest escaped.
fn escape(bytes: &[u8]) -> String {
    let mut text = String::new();
    for &b in bytes {
        match b {
            b'\r' => text.push_str("\\r"),
            b'\n' => text.push_str("\\n"),
            b'\t' => text.push_str("\\t"),
            b'\\' => text.push_str("\\\\"),
            0x20..=0x7e => text.push(b as char),
            _ => text.push_str(&format!("\\x{b:02x}")),
        }
    }
    text
}

// ---------------------------------------------------------------------------
// What must hold on every engine
// ---------------------------------------------------------------------------

/// The path of a request target, absolute-form included, without query.
fn target_path(target: &str) -> &str {
    let path = match target.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |at| &rest[at..]),
        None => target,
    };
    path.split(['?', '#']).next().unwrap_or("")
}

/// The host a request names: its absolute-form authority, else its `Host`.
fn request_host(seen: &Seen) -> String {
    let target = seen.target();
    let authority = match target.split_once("://") {
        Some((_, rest)) => rest.split('/').next().unwrap_or(""),
        None => seen.header("host").unwrap_or(""),
    };
    let host = authority.rsplit('@').next().unwrap_or("");
    let host = host.split(':').next().unwrap_or("");
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// The engine-independent invariants; a list of violations.
fn violations(observation: &Observation) -> Vec<String> {
    let mut found = Vec::new();
    for seen in &observation.forwarded {
        let path = target_path(seen.target()).to_ascii_lowercase();
        if path.starts_with("/admin") || path.starts_with("/api/export") {
            found.push(format!(
                "a denied route reached the upstream: {}",
                seen.line
            ));
        }
        if request_host(seen) == "admin.internal"
            || seen
                .headers
                .iter()
                .any(|(n, v)| n.eq_ignore_ascii_case("host") && v.contains("admin.internal"))
        {
            found.push(format!("a denied host reached the upstream: {seen:?}"));
        }
        if let Some((name, _)) = seen
            .headers
            .iter()
            .chain(&seen.trailers)
            .find(|(_, v)| v.contains(FORGED))
        {
            found.push(format!(
                "a forged `{name}` reached the upstream: {}",
                seen.line
            ));
        }
    }
    // Every request the upstream read was answered by the upstream: its
    // answers are the only 200s and 101s a client sees here.
    let answered = observation
        .statuses
        .iter()
        .filter(|s| matches!(s, 200 | 101))
        .count();
    if observation.forwarded.len() > answered {
        found.push(format!(
            "hidden request: the upstream read {} request(s), the client got {answered} answer(s) from it: {:?}",
            observation.forwarded.len(),
            observation.forwarded.iter().map(|s| &s.line).collect::<Vec<_>>()
        ));
    }
    for target in &observation.tunnels {
        if !target_path(target).starts_with("/live/") {
            found.push(format!("a tunnel opened for {target}"));
        }
    }
    if observation.unsettled > 0 {
        found.push(format!(
            "{} upstream connection(s) left holding half a request after the client left",
            observation.unsettled
        ));
    }
    found
}

// ---------------------------------------------------------------------------
// Comparison
// ---------------------------------------------------------------------------

/// A line diff of `a` (marked `-`) against `b` (marked `+`).
fn diff(a: &[String], b: &[String]) -> String {
    // Longest common subsequence; cases are a few dozen lines.
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out.push_str(&format!("      {}\n", a[i]));
            (i, j) = (i + 1, j + 1);
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push_str(&format!("    + {}\n", b[j]));
            j += 1;
        } else {
            out.push_str(&format!("    - {}\n", a[i]));
            i += 1;
        }
    }
    out
}

/// How two observations of one case differ; `None` when they agree.
fn compare(name: &str, a: (&str, &Observation), b: (&str, &Observation)) -> Option<String> {
    let (a_engine, a) = a;
    let (b_engine, b) = b;
    if a.statuses == b.statuses && a.upstream == b.upstream {
        return None;
    }
    Some(format!(
        "case `{name}`:\n  statuses: {a_engine} {:?} ({}), {b_engine} {:?} ({})\n  \
         upstream received (normalised; - {a_engine}, + {b_engine}):\n{}  \
         {a_engine} response: {}\n  {b_engine} response: {}\n  \
         {a_engine} upstream bytes: {}\n  {b_engine} upstream bytes: {}\n",
        a.statuses,
        a.client_end,
        b.statuses,
        b.client_end,
        diff(&a.upstream, &b.upstream),
        a.response,
        b.response,
        a.received,
        b.received,
    ))
}

/// Run every case through both sides (concurrently, one case at a time)
/// and return the mismatches not in `expected`, the invariant violations,
/// and stale expectations, as readable reports.
async fn run(
    a: &Side,
    b: &Side,
    cases: &[Case],
    expected: &[Difference],
) -> (Vec<String>, Vec<String>) {
    let mut mismatches = Vec::new();
    let mut broken = Vec::new();
    for (n, case) in cases.iter().enumerate() {
        let (seen_a, seen_b) = tokio::join!(observe(a, case, n), observe(b, case, n));
        // The whole table, for `--nocapture` readers.
        println!(
            "{:<40} {} {:?} ({}) | {} {:?} ({})\n    {}",
            case.name,
            a.label,
            seen_a.statuses,
            seen_a.client_end,
            b.label,
            seen_b.statuses,
            seen_b.client_end,
            seen_a.upstream.join("\n    ")
        );
        for (side, seen) in [(a, &seen_a), (b, &seen_b)] {
            for violation in violations(seen) {
                broken.push(format!(
                    "case `{}` on {}: {violation}\n  response: {}\n  upstream bytes: {}",
                    case.name, side.label, seen.response, seen.received
                ));
            }
        }
        let difference = compare(case.name, (a.label, &seen_a), (b.label, &seen_b));
        match expected.iter().find(|d| d.case == case.name) {
            None => mismatches.extend(difference),
            Some(listed) => {
                let statuses = |engine: &str| match engine {
                    "hyper" => listed.hyper,
                    _ => listed.relay,
                };
                for (side, seen) in [(a, &seen_a), (b, &seen_b)] {
                    if seen.statuses != statuses(side.engine) {
                        mismatches.push(format!(
                            "case `{}` on {}: the expectation table says {:?} ({}), got {:?}: {}",
                            case.name,
                            side.label,
                            statuses(side.engine),
                            listed.why,
                            seen.statuses,
                            seen.response
                        ));
                    }
                }
                if difference.is_none() {
                    mismatches.push(format!(
                        "case `{}` is listed in DIFFERENCES but both engines now agree: remove it",
                        case.name
                    ));
                }
            }
        }
    }
    for listed in expected {
        assert!(
            cases.iter().any(|c| c.name == listed.case),
            "DIFFERENCES names a case the corpus lacks: {}",
            listed.case
        );
    }
    (mismatches, broken)
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[tokio::test]
async fn both_http1_engines_deliver_the_same_bytes_for_the_corpus() {
    let vendor = Vendor::new(POLICY);
    let auth = format!("Authorization: Bearer {}\r\n", license(&vendor));
    let cases = corpus(&auth);
    assert!(cases.len() >= 60, "{} cases", cases.len());
    let mut names: Vec<_> = cases.iter().map(|c| c.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), cases.len(), "case names are unique");

    let hyper = Side::start(&vendor, "hyper", "hyper", "").await;
    let relay = Side::start(&vendor, "relay", "relay", "").await;
    let (mismatches, broken) = run(&hyper, &relay, &cases, DIFFERENCES).await;
    assert!(
        broken.is_empty() && mismatches.is_empty(),
        "\n{} invariant violation(s):\n\n{}\n\n{} difference(s) between the engines not in DIFFERENCES:\n\n{}",
        broken.len(),
        broken.join("\n\n"),
        mismatches.len(),
        mismatches.join("\n")
    );
}

/// The comparison is not blind: two proxies that differ in one setting
/// (underscored header names kept on one side) differ on the case that
/// uses one, and only there; and an expectation for a case where both
/// agree is reported as stale.
#[tokio::test]
async fn the_comparison_reports_a_difference_in_what_reaches_the_upstream() {
    let vendor = Vendor::new(POLICY);
    let auth = format!("Authorization: Bearer {}\r\n", license(&vendor));
    let cases = corpus(&auth)
        .into_iter()
        .filter(|c| ["get-licensed", "space-in-name"].contains(&c.name))
        .chain([Case {
            name: "underscored-name",
            bytes: format!(
                "GET /api/reports/u HTTP/1.1\r\nHost: app.test\r\n{auth}x_custom: 1\r\n\
                 Connection: close\r\n\r\n"
            )
            .into_bytes(),
        }])
        .collect::<Vec<_>>();
    let stale = [Difference {
        case: "get-licensed",
        hyper: &[200],
        relay: &[200],
        why: "no difference at all",
    }];
    let dropping = Side::start(&vendor, "dropping", "hyper", "").await;
    let keeping = Side::start(
        &vendor,
        "keeping",
        "hyper",
        "headers:\n  underscores: keep\n",
    )
    .await;
    let (mismatches, broken) = run(&dropping, &keeping, &cases, &stale).await;
    assert!(broken.is_empty(), "{broken:?}");
    assert_eq!(mismatches.len(), 2, "{mismatches:#?}");
    assert!(
        mismatches[0].starts_with("case `get-licensed` is listed in DIFFERENCES"),
        "{}",
        mismatches[0]
    );
    assert!(
        mismatches[1].starts_with("case `underscored-name`")
            && mismatches[1].contains("    +   x_custom: 1"),
        "{}",
        mismatches[1]
    );
}

/// The invariants are not blind either: a request the upstream read but
/// the client never got an upstream answer for is a hidden request.
#[test]
fn a_request_the_client_saw_no_answer_for_is_a_hidden_request() {
    let seen = |line: &str| Seen {
        line: line.to_owned(),
        headers: vec![("Host".to_owned(), "app.test".to_owned())],
        body: Vec::new(),
        trailers: Vec::new(),
        in_tunnel: false,
        connection: 0,
        span: 0..0,
    };
    let observation = Observation {
        statuses: vec![200, 403],
        client_end: "closed by the proxy",
        upstream: Vec::new(),
        forwarded: vec![
            seen("POST /api/reports/front HTTP/1.1"),
            seen("GET /api/reports/hidden HTTP/1.1"),
        ],
        tunnels: Vec::new(),
        unsettled: 0,
        response: String::new(),
        received: String::new(),
    };
    let found = violations(&observation);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with("hidden request"), "{found:?}");
}
