//! The edge as an attacker tries it: tunnels, header spellings, hosts and
//! paths the upstream reads differently, smuggling. Every case asserts what
//! the upstream *received* (a recording upstream that answers 101 to any
//! upgrade and keeps reading inside the tunnel), not only licensegate's
//! answer.
//!
//! Nothing here sleeps to synchronise: tests wait on the upstream's record,
//! on responses or end of stream, and every wait is bounded.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;

use common::recording::{Answer101, RecordingUpstream};
use common::vendor::Vendor;
use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ISSUER: &str = "https://vendor.test";

/// A policy like the demo's: a public health route, a licensed API with
/// `reports` and `export`, a denied literal route with a non-ASCII name
/// and a denied host.
const POLICY: &str = r#"
unmatched: licensed
plans:
  pro:
    features: [reports]
routes:
  - name: health
    path: /healthz
    methods: [GET]
    access: public
  - name: cafe
    path: /café/**
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
"#;

struct Edge {
    vendor: Vendor,
}

impl Edge {
    fn new() -> Edge {
        Edge {
            vendor: Vendor::new(POLICY),
        }
    }

    /// A `pro` license (feature `reports`, not `export`).
    fn token(&self) -> String {
        self.vendor.license(json!({
            "iss": ISSUER, "sub": "cust-1", "aud": "api", "lic": {"plan": "pro"},
        }))
    }

    /// A config with the header license and the policy, plus `extra` YAML.
    fn config(&self, upstream: &RecordingUpstream, extra: &str) -> PathBuf {
        write_file(
            self.vendor.dir(),
            "licensegate.yaml",
            &format!(
                "upstream:\n  url: {}\nworkers: 2\nlicense:\n  keys: {}\n  issuer: {ISSUER}\n  \
                 audience: api\n  source: header\npolicy:\n  paths: [{}]\n{extra}",
                upstream.url(),
                self.vendor.keys().display(),
                self.vendor.policy().display(),
            ),
        )
    }

    fn proxy(&self, upstream: &RecordingUpstream, extra: &str) -> Proxy {
        Proxy::with_config(&self.config(upstream, extra))
    }
}

/// A plain proxy (no license, no policy) in front of `upstream`.
fn plain_proxy(upstream: &RecordingUpstream, extra: &str) -> (tempfile::TempDir, Proxy) {
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(
        dir.path(),
        "licensegate.yaml",
        &format!("upstream:\n  url: {}\nworkers: 2\n{extra}", upstream.url()),
    );
    let proxy = Proxy::with_config(&config);
    (dir, proxy)
}

/// Write `bytes` on a fresh connection and read until the proxy closes it.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    read_to_end(&mut stream).await
}

async fn read_to_end(stream: &mut TcpStream) -> String {
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .expect("the proxy answers and closes within the bound")
        .ok();
    String::from_utf8_lossy(&response).into_owned()
}

/// Read one response head (up to the blank line) from `stream`.
async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, stream.read(&mut byte))
            .await
            .expect("a response head within the bound")
            .unwrap();
        assert!(n == 1, "closed before a response head: {head:?}");
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// Status codes of every response in `text`, in order.
fn statuses(text: &str) -> Vec<u16> {
    text.match_indices("HTTP/1.1 ")
        .filter_map(|(at, _)| text.get(at + 9..at + 12)?.parse().ok())
        .collect()
}

/// A well-formed WebSocket handshake for `target` (RFC 6455's example key).
fn websocket_handshake(target: &str, extra: &str) -> String {
    format!(
        "GET {target} HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// Send a WebSocket handshake for `target` on a fresh connection; returns
/// the connection and the response head.
async fn handshake(addr: SocketAddr, target: &str, extra: &str) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(websocket_handshake(target, extra).as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    (stream, head)
}

/// The next request through the proxy, on its own connection, reaches the
/// upstream: everything sent before it has been decided.
async fn barrier(proxy: &Proxy, upstream: &RecordingUpstream, n: usize) {
    let target = format!("/healthz?barrier={n}");
    let reply = exchange(
        proxy.addr,
        format!("GET {target} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(statuses(&reply), [200], "{reply}");
    upstream.wait_for_target(&target).await;
}

// ---------------------------------------------------------------------------
// Tunnels
// ---------------------------------------------------------------------------

#[tokio::test]
async fn h2c_and_other_upgrades_are_stripped_and_never_become_tunnels() {
    let upstream = RecordingUpstream::start(Answer101::Genuine).await;
    let edge = Edge::new();
    let proxy = edge.proxy(&upstream, "");
    for (n, upgrade) in [
        "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
        "Connection: Upgrade\r\nUpgrade: foo/1\r\n",
        "Connection: upgrade\r\nUpgrade: h2c, websocket/7\r\n",
    ]
    .iter()
    .enumerate()
    {
        let target = format!("/healthz?case={n}");
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        stream
            .write_all(format!("GET {target} HTTP/1.1\r\nHost: app.test\r\n{upgrade}\r\n").as_bytes())
            .await
            .unwrap();
        let head = read_head(&mut stream).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{upgrade}: {head}");
        // What a client speaks after an h2c upgrade: the HTTP/2 preface and
        // a request for a licensed route with a forged entitlement.
        stream
            .write_all(
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nGET /api/export/all HTTP/1.1\r\nHost: app.test\r\n\
                  x-license-features: export\r\n\r\n",
            )
            .await
            .unwrap();
        let rest = read_to_end(&mut stream).await;
        assert!(!rest.contains("101"), "{rest}");
        let seen = upstream.requests();
        let request = seen.iter().find(|r| r.target() == target).unwrap();
        for header in ["upgrade", "http2-settings", "connection"] {
            assert_eq!(request.header(header), None, "{upgrade}: {request:?}");
        }
    }
    barrier(&proxy, &upstream, 0).await;
    assert_eq!(upstream.switched(), 0);
    assert!(upstream.tunnel_bytes().is_empty());
    let received = upstream.received();
    assert!(!received.contains("PRI *"), "{received}");
    assert!(!received.contains("/api/export"), "{received}");
}

#[tokio::test]
async fn websocket_tunnels_open_only_where_a_route_allows_them_after_the_decision() {
    let upstream = RecordingUpstream::start(Answer101::Genuine).await;
    let edge = Edge::new();
    let proxy = edge.proxy(&upstream, "");
    let auth = format!("Authorization: Bearer {}\r\n", edge.token());
    // The handshake is decided like any request: no license, no tunnel.
    let reply = exchange(
        proxy.addr,
        websocket_handshake("/live/feed", "")
            .replace("Connection: Upgrade", "Connection: Upgrade, close")
            .as_bytes(),
    )
    .await;
    assert_eq!(statuses(&reply), [401], "{reply}");
    let (mut stream, head) = handshake(proxy.addr, "/live/feed", &auth).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    tokio::time::timeout(WAIT, stream.read_exact(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echo, b"ping");
    let seen = upstream.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].target(), "/live/feed");
    assert_eq!(seen[0].header("upgrade"), Some("websocket"));
    assert_eq!(
        seen[0].header("authorization"),
        None,
        "the token stays at the edge"
    );
    assert_eq!(upstream.tunnel_bytes(), b"ping");
}

#[tokio::test]
async fn websocket_on_a_route_that_does_not_allow_it_is_refused() {
    let upstream = RecordingUpstream::start(Answer101::Genuine).await;
    let edge = Edge::new();
    let proxy = edge.proxy(&upstream, "");
    let reply = exchange(
        proxy.addr,
        websocket_handshake("/healthz", "")
            .replace("Connection: Upgrade", "Connection: Upgrade, close")
            .as_bytes(),
    )
    .await;
    assert_eq!(statuses(&reply), [403], "{reply}");
    assert!(reply.contains("upgrade_not_allowed"), "{reply}");
    barrier(&proxy, &upstream, 0).await;
    assert_eq!(upstream.requests().len(), 1, "only the barrier arrived");
    assert_eq!(upstream.switched(), 0);
}

#[tokio::test]
async fn malformed_websocket_handshakes_are_refused() {
    let upstream = RecordingUpstream::start(Answer101::Genuine).await;
    let (_dir, proxy) = plain_proxy(&upstream, "");
    let cases = [
        (
            "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n",
            400,
        ),
        (
            "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Key: c2hvcnQ=\r\nSec-WebSocket-Version: 13\r\n\r\n",
            400,
        ),
        (
            "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
            426,
        ),
        (
            "POST /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Content-Length: 0\r\n\r\n",
            400,
        ),
    ];
    for (request, status) in cases {
        let request = request.replace("Connection: Upgrade", "Connection: Upgrade, close");
        let reply = exchange(proxy.addr, request.as_bytes()).await;
        assert_eq!(statuses(&reply), [status], "{request}: {reply}");
    }
    barrier(&proxy, &upstream, 0).await;
    assert_eq!(upstream.requests().len(), 1, "only the barrier arrived");
}

#[tokio::test]
async fn a_websocket_tunnel_relays_and_holds_its_connection_slot() {
    let upstream = RecordingUpstream::start(Answer101::Genuine).await;
    let (_dir, proxy) = plain_proxy(&upstream, "limits:\n  max_connections: 2\n");
    let (mut first, head) = handshake(proxy.addr, "/ws", "").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "the upstream's accept is passed on: {head}"
    );
    first.write_all(b"hello through the tunnel").await.unwrap();
    let mut echo = [0u8; 24];
    tokio::time::timeout(WAIT, first.read_exact(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echo, b"hello through the tunnel");
    assert_eq!(upstream.tunnel_bytes(), b"hello through the tunnel");

    // The tunnel is counted: as a tunnel, and as an open connection.
    let page = metrics(&proxy).await;
    assert_eq!(
        metric(&page, "licensegate_tunnels_open"),
        Some(1.0),
        "{page}"
    );
    assert_eq!(metric(&page, "licensegate_connections_open"), Some(1.0));

    // A second tunnel takes the second slot; a third connection waits
    // until a tunnel ends.
    let (second, head) = handshake(proxy.addr, "/ws", "").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let page = metrics(&proxy).await;
    assert_eq!(
        metric(&page, "licensegate_connections_open"),
        Some(2.0),
        "{page}"
    );
    let third = tokio::spawn(exchange(
        proxy.addr,
        b"GET /third HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    ));
    drop(first);
    let reply = tokio::time::timeout(WAIT, third).await.unwrap().unwrap();
    assert_eq!(statuses(&reply), [200], "{reply}");
    drop(second);
}

#[tokio::test]
async fn a_tunnel_keeps_its_upstream_connection_slot() {
    let upstream = RecordingUpstream::start(Answer101::Genuine).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(
        dir.path(),
        "licensegate.yaml",
        &format!(
            "upstream:\n  url: {}\n  max_connections: 1\ntimeouts:\n  upstream_queue: 0s\n",
            upstream.url()
        ),
    );
    let proxy = Proxy::with_config(&config);
    let (tunnel, head) = handshake(proxy.addr, "/ws", "").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // The tunnel's upstream connection is the one the cap allows.
    let reply = exchange(
        proxy.addr,
        b"GET /while-tunnelled HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&reply), [503], "{reply}");
    assert!(reply.contains("upstream_overloaded"), "{reply}");
    assert_eq!(
        metric(
            &metrics(&proxy).await,
            "licensegate_upstream_connections_open"
        ),
        Some(1.0)
    );
    drop(tunnel);
    upstream
        .wait_until("the tunnel closed", |u| u.closed_connections() >= 1)
        .await;
    let freed = eventually(async || {
        metric(
            &metrics(&proxy).await,
            "licensegate_upstream_connections_open",
        ) == Some(0.0)
    })
    .await;
    assert!(freed, "the tunnel's upstream slot was given back");
    let reply = exchange(
        proxy.addr,
        b"GET /after-tunnel HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&reply), [200], "{reply}");
    assert!(upstream
        .requests()
        .iter()
        .all(|r| r.target() != "/while-tunnelled"));
}

#[tokio::test]
async fn a_101_that_does_not_answer_the_handshake_is_refused() {
    let upstream = RecordingUpstream::start(Answer101::WrongAccept).await;
    let (_dir, proxy) = plain_proxy(&upstream, "");
    let (mut stream, head) = handshake(proxy.addr, "/ws", "").await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    stream
        .write_all(b"GET /smuggled HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    read_to_end(&mut stream).await;
    assert_eq!(upstream.switched(), 1);
    // The upstream switched, but no byte the client sent afterwards
    // reached it through that connection.
    assert!(
        upstream.tunnel_bytes().is_empty(),
        "{:?}",
        upstream.tunnel_bytes()
    );
    assert!(upstream.requests().iter().all(|r| !r.in_tunnel));
}

#[tokio::test]
async fn an_unasked_101_is_refused() {
    let upstream = RecordingUpstream::start(Answer101::Always).await;
    let (_dir, proxy) = plain_proxy(&upstream, "");
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET /plain HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    stream
        .write_all(b"GET /after HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    read_to_end(&mut stream).await;
    assert!(
        upstream.tunnel_bytes().is_empty(),
        "{:?}",
        upstream.tunnel_bytes()
    );
}

#[tokio::test]
async fn idle_tunnels_close_after_the_tunnel_idle_timeout() {
    let upstream = RecordingUpstream::start(Answer101::Genuine).await;
    let (_dir, proxy) = plain_proxy(&upstream, "timeouts:\n  tunnel_idle: 300ms\n");
    let (mut stream, head) = handshake(proxy.addr, "/ws", "").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // Nothing more is sent: the proxy closes both sides.
    let rest = read_to_end(&mut stream).await;
    assert!(rest.is_empty(), "{rest}");
    upstream
        .wait_until("the tunnel closed", |u| u.closed_connections() >= 1)
        .await;
    let page = metrics(&proxy).await;
    assert_eq!(metric(&page, "licensegate_tunnels_open"), Some(0.0));
    assert_eq!(metric(&page, "licensegate_connections_open"), Some(0.0));
}

#[tokio::test]
async fn tunnels_end_when_the_proxy_drains() {
    let upstream = RecordingUpstream::start(Answer101::Genuine).await;
    let (_dir, mut proxy) = plain_proxy(&upstream, "");
    let (mut stream, head) = handshake(proxy.addr, "/ws", "").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    proxy.signal("TERM");
    read_to_end(&mut stream).await;
    assert!(proxy.wait_exit().success());
    upstream
        .wait_until("the tunnel closed", |u| u.closed_connections() >= 1)
        .await;
}

// ---------------------------------------------------------------------------
// Headers, hosts, paths
// ---------------------------------------------------------------------------

const IMPERSONATIONS: &str = "x_license_features: export\r\nX_License_Id: forged\r\n\
    X_LICENSE_PLAN: enterprise\r\nX-Forwarded_For: 10.1.2.3\r\nx_forwarded_host: admin.internal\r\n\
    x-licensegate-shadow-deny: none\r\nx-licensegate-anything: 1\r\nx_licensegate_other: 1\r\n\
    Transfer_Encoding: chunked\r\nx_custom: kept-or-not\r\n";

#[tokio::test]
async fn protected_headers_in_any_spelling_never_reach_the_upstream() {
    let upstream = RecordingUpstream::start(Answer101::Genuine).await;
    let edge = Edge::new();
    let token = edge.token();
    for (n, extra) in ["", "headers:\n  underscores: keep\n"].iter().enumerate() {
        let proxy = edge.proxy(&upstream, extra);
        for target in [format!("/healthz?n={n}"), format!("/api/reports/q?n={n}")] {
            let reply = exchange(
                proxy.addr,
                format!(
                    "GET {target} HTTP/1.1\r\nHost: app.test\r\nAuthorization: Bearer {token}\r\n\
                     Connection: close\r\n{IMPERSONATIONS}\r\n"
                )
                .as_bytes(),
            )
            .await;
            assert_eq!(statuses(&reply), [200], "{reply}");
            upstream.wait_for_target(&target).await;
            let seen = upstream.requests();
            let request = seen.iter().find(|r| r.target() == target).unwrap();
            for name in [
                "x-license-features",
                "x-license-id",
                "x-license-plan",
                "x-forwarded-host",
                "x-licensegate-shadow-deny",
                "x-licensegate-anything",
                "x-licensegate-other",
                "transfer-encoding",
            ] {
                let spelled: Vec<_> = request
                    .headers
                    .iter()
                    .filter(|(h, _)| h.to_ascii_lowercase().replace('_', "-") == name)
                    .collect();
                // licensegate's own values may be there, spelled its way.
                assert!(
                    spelled.iter().all(|(h, v)| !h.contains('_')
                        && ![
                            "export",
                            "forged",
                            "enterprise",
                            "admin.internal",
                            "none",
                            "1"
                        ]
                        .contains(&v.as_str())),
                    "{name}: {request:?}"
                );
            }
            assert_ne!(request.header("x-forwarded-for"), Some("10.1.2.3"));
            assert!(!request
                .headers
                .iter()
                .any(|(h, _)| h.eq_ignore_ascii_case("x-forwarded_for")));
            // Any other underscored name: dropped by default, kept on request.
            assert_eq!(request.has_header_like("x-custom"), n == 1, "{request:?}");
        }
    }
}

#[tokio::test]
async fn raw_utf8_paths_match_and_travel_like_their_escapes() {
    let upstream = RecordingUpstream::start(Answer101::Genuine).await;
    let edge = Edge::new();
    let token = edge.token();
    let proxy = edge.proxy(&upstream, "");
    let request = |target: &[u8]| {
        let mut bytes = b"GET ".to_vec();
        bytes.extend_from_slice(target);
        bytes.extend_from_slice(
            format!(
                " HTTP/1.1\r\nHost: app.test\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        );
        bytes
    };
    for target in [
        &b"/caf\xc3\xa9/x"[..],
        b"//caf\xc3\xa9/x",
        b"/caf%C3%A9/x",
        b"/caf%c3%a9/x",
        b"/x/../caf\xc3\xa9/",
    ] {
        let reply = exchange(proxy.addr, &request(target)).await;
        assert_eq!(
            statuses(&reply),
            [403],
            "{}: {reply}",
            String::from_utf8_lossy(target)
        );
        assert!(reply.contains("route_denied"), "{reply}");
    }
    // Allowed raw and encoded spellings reach the upstream as one path.
    for (n, target) in [&b"/api/reports/caf\xc3\xa9"[..], b"/api/reports/caf%c3%a9"]
        .iter()
        .enumerate()
    {
        let mut target = target.to_vec();
        target.extend_from_slice(format!("?n={n}").as_bytes());
        let reply = exchange(proxy.addr, &request(&target)).await;
        assert_eq!(statuses(&reply), [200], "{reply}");
        upstream
            .wait_for_target(&format!("/api/reports/caf%C3%A9?n={n}"))
            .await;
    }
    barrier(&proxy, &upstream, 0).await;
    let received = upstream.received();
    assert!(
        !received.contains("caf\u{e9}"),
        "raw bytes reached the upstream"
    );
    assert!(!received.contains("/caf%C3%A9/x"), "{received}");
    assert!(
        !received.contains("\u{c3}\u{83}"),
        "mangled bytes: {received}"
    );
}

#[tokio::test]
async fn hosts_the_upstream_could_read_differently_are_refused() {
    let upstream = RecordingUpstream::start(Answer101::Genuine).await;
    let edge = Edge::new();
    let token = edge.token();
    let proxy = edge.proxy(&upstream, "");
    let auth = format!("Authorization: Bearer {token}\r\n");
    for host in [
        "x:y@admin.internal",
        "admin.internal@x",
        "admin.internal,x",
        "admin.internal..",
        "admin..internal",
        ".admin.internal",
        "admin.internal:80:80",
        "admin.internal:http",
        "[::1",
        "admin%2einternal",
    ] {
        let reply = exchange(
            proxy.addr,
            format!(
                "GET /api/reports/h HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        assert_eq!(statuses(&reply), [400], "{host}: {reply}");
    }
    // The host deny route covers its host, spelled as DNS allows.
    for host in ["admin.internal", "ADMIN.internal.", "admin.internal:8080"] {
        let reply = exchange(
            proxy.addr,
            format!("GET /other HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
        assert_eq!(statuses(&reply), [403], "{host}: {reply}");
    }
    // Userinfo in an absolute-form target, and HTTP/1.1 without a host.
    for request in [
        format!("GET http://x@admin.internal/other HTTP/1.1\r\nHost: admin.internal\r\n{auth}Connection: close\r\n\r\n"),
        format!("GET /api/reports/none HTTP/1.1\r\n{auth}Connection: close\r\n\r\n"),
    ] {
        let reply = exchange(proxy.addr, request.as_bytes()).await;
        assert_eq!(statuses(&reply), [400], "{request}: {reply}");
    }
    // HTTP/1.0 may omit the host.
    let reply = exchange(
        proxy.addr,
        format!("GET /api/reports/http10 HTTP/1.0\r\n{auth}\r\n").as_bytes(),
    )
    .await;
    assert!(
        reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200"),
        "{reply}"
    );
    upstream.wait_for_target("/api/reports/http10").await;
    barrier(&proxy, &upstream, 0).await;
    let targets: Vec<String> = upstream
        .requests()
        .iter()
        .map(|r| r.target().to_owned())
        .collect();
    assert_eq!(
        targets,
        ["/api/reports/http10", "/healthz?barrier=0"],
        "nothing else reached the upstream"
    );
}

// ---------------------------------------------------------------------------
// Smuggling
// ---------------------------------------------------------------------------

#[tokio::test]
async fn smuggling_classics_never_reach_a_denied_route() {
    let upstream = RecordingUpstream::start(Answer101::Genuine).await;
    let edge = Edge::new();
    let token = edge.token();
    let proxy = edge.proxy(&upstream, "timeouts:\n  request_header: 2s\n  idle: 2s\n");
    let auth = format!("Authorization: Bearer {token}\r\n");
    let smuggled = "GET /api/export/all HTTP/1.1\r\nHost: app.test\r\n\r\n";
    let front = |framing: &str, body: &str| {
        format!("POST /api/reports/front HTTP/1.1\r\nHost: app.test\r\n{auth}{framing}\r\n{body}")
    };
    let cases = [
        // CL.TE and TE.CL
        front(
            "Content-Length: 6\r\nTransfer-Encoding: chunked\r\n",
            &format!("0\r\n\r\n{smuggled}"),
        ),
        front(
            "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
            &format!("{:x}\r\n{smuggled}\r\n0\r\n\r\n", smuggled.len()),
        ),
        // TE obfuscations
        front(
            "Transfer-Encoding: xchunked\r\nContent-Length: 4\r\n",
            &format!("0\r\n\r\n{smuggled}"),
        ),
        front(
            "Transfer-Encoding : chunked\r\n",
            &format!("0\r\n\r\n{smuggled}"),
        ),
        front(
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
            &format!("0\r\n\r\n{smuggled}"),
        ),
        front(
            "Transfer-Encoding: chunked, identity\r\n",
            &format!("0\r\n\r\n{smuggled}"),
        ),
        front(
            "Transfer-Encoding:\tchunked\r\nContent-Length: 3\r\n",
            &format!("0\r\n\r\n{smuggled}"),
        ),
        front(
            "Transfer-Encoding: chunked\r\n",
            &format!("0x1\r\nA\r\n0\r\n\r\n{smuggled}"),
        ),
        // Duplicate, differing Content-Length
        front("Content-Length: 0\r\nContent-Length: 50\r\n", smuggled),
        // obs-fold hiding a header, and bare LF line endings
        front(
            "X-Fold: a\r\n Transfer-Encoding: chunked\r\nContent-Length: 0\r\n",
            smuggled,
        ),
        format!(
            "POST /api/reports/front HTTP/1.1\nHost: app.test\n{}Content-Length: 0\n\n{smuggled}",
            auth.replace("\r\n", "\n")
        ),
        // Pipelining a denied request behind an allowed one
        format!(
            "GET /api/reports/first HTTP/1.1\r\nHost: app.test\r\n{auth}\r\n\
             GET /api/export/all HTTP/1.1\r\nHost: app.test\r\n{auth}Connection: close\r\n\r\n"
        ),
    ];
    for case in &cases {
        let reply = exchange(proxy.addr, case.as_bytes()).await;
        assert!(
            !statuses(&reply).is_empty() || reply.is_empty(),
            "{case}: {reply}"
        );
    }
    barrier(&proxy, &upstream, 0).await;
    // A smuggled head may legitimately travel as body bytes (chunk data);
    // what must never happen is the upstream reading it as a request.
    let seen = upstream.requests();
    assert!(
        seen.iter().all(|r| !r.target().starts_with("/api/export")),
        "a denied route reached the upstream:\n{}",
        upstream.received()
    );
    assert!(seen.iter().any(|r| r.target() == "/api/reports/first"));
}

#[tokio::test]
async fn a_malformed_chunked_request_body_is_the_clients_error() {
    let upstream = RecordingUpstream::start(Answer101::Genuine).await;
    let (_dir, proxy) = plain_proxy(&upstream, "");
    let reply = exchange(
        proxy.addr,
        b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\nzz\r\nbroken\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&reply), [400], "{reply}");
    assert!(reply.contains("bad_request"), "{reply}");
    let page = metrics(&proxy).await;
    for kind in ["connect", "protocol", "timeout"] {
        assert_eq!(
            metric(
                &page,
                &format!("licensegate_upstream_errors_total{{kind=\"{kind}\"}}")
            ),
            Some(0.0),
            "{page}"
        );
    }
    assert_eq!(
        metric(
            &page,
            "licensegate_requests_total{decision=\"error\",reason=\"bad_request\"}"
        ),
        Some(1.0),
        "{page}"
    );
}

#[tokio::test]
async fn admin_shutdown_accepts_ipv4_loopback_on_a_dual_stack_listener() {
    let upstream = RecordingUpstream::start(Answer101::Genuine).await;
    let mut proxy = Proxy::spawn(&[
        "run",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "[::]:0",
        "--upstream",
        &upstream.url(),
    ])
    .expect("licensegate starts");
    let admin = SocketAddr::from(([127, 0, 0, 1], proxy.admin.port()));
    let reply = exchange(
        admin,
        b"POST /shutdown HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&reply), [202], "{reply}");
    assert!(proxy.wait_exit().success());
}

// ---------------------------------------------------------------------------
// The same classes over HTTP/2
// ---------------------------------------------------------------------------

/// Send one HTTP/2 (h2c prior knowledge) request with `headers`; returns
/// the status, or `None` when the stream was reset.
async fn h2_request(
    addr: SocketAddr,
    uri: &str,
    headers: &[(&str, &str)],
) -> Option<http::StatusCode> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = h2::client::handshake(stream).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut request = http::Request::get(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let (response, _) = sender.send_request(request.body(()).unwrap(), true).ok()?;
    let response = tokio::time::timeout(WAIT, response).await.unwrap().ok()?;
    Some(response.status())
}

#[tokio::test]
async fn http2_requests_meet_the_same_edge() {
    let upstream = RecordingUpstream::start(Answer101::Genuine).await;
    let edge = Edge::new();
    let token = edge.token();
    let auth = format!("Bearer {token}");
    let proxy = edge.proxy(&upstream, "");
    let base = format!("http://app.test:{}", proxy.addr.port());
    // :authority forms that name another host, or none at all.
    for uri in [
        format!(
            "http://x@admin.internal:{}/api/reports/a",
            proxy.addr.port()
        ),
        format!(
            "http://admin.internal..:{}/api/reports/b",
            proxy.addr.port()
        ),
    ] {
        let status = h2_request(proxy.addr, &uri, &[("authorization", &auth)]).await;
        assert!(
            status.is_none() || status == Some(http::StatusCode::BAD_REQUEST),
            "{uri}: {status:?}"
        );
    }
    // A Host header that contradicts :authority is replaced by it.
    let status = h2_request(
        proxy.addr,
        &format!("http://admin.internal:{}/other", proxy.addr.port()),
        &[("authorization", &auth), ("host", "app.test")],
    )
    .await;
    assert_eq!(status, Some(http::StatusCode::FORBIDDEN));
    // Impersonated headers and raw UTF-8 paths, as over HTTP/1.1.
    let status = h2_request(
        proxy.addr,
        &format!("{base}/api/reports/caf\u{e9}?h2=1"),
        &[
            ("authorization", &auth),
            ("x_license_features", "export"),
            ("x-forwarded_for", "10.1.2.3"),
            ("x-licensegate-shadow-deny", "none"),
        ],
    )
    .await;
    assert_eq!(status, Some(http::StatusCode::OK));
    upstream
        .wait_for_target("/api/reports/caf%C3%A9?h2=1")
        .await;
    let status = h2_request(
        proxy.addr,
        &format!("{base}/caf\u{e9}/x"),
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(status, Some(http::StatusCode::FORBIDDEN));
    barrier(&proxy, &upstream, 0).await;
    let seen = upstream.requests();
    assert_eq!(seen.len(), 2, "{seen:?}");
    let request = &seen[0];
    let authority = format!("app.test:{}", proxy.addr.port());
    assert_eq!(request.header("host"), Some(authority.as_str()));
    for name in [
        "x-license-features",
        "x-forwarded-for",
        "x-licensegate-shadow-deny",
    ] {
        assert!(
            request
                .headers
                .iter()
                .filter(|(h, _)| h.to_ascii_lowercase().replace('_', "-") == name)
                .all(|(h, v)| !h.contains('_') && v != "export" && v != "10.1.2.3" && v != "none"),
            "{name}: {request:?}"
        );
    }
    assert_eq!(request.header("authorization"), None);
}
