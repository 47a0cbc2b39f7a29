//! The proxy as a browser meets it, through the real binary: denials as a
//! page for navigations (problem+json for everything else), upstream
//! failures said plainly, and CORS preflights that reach the upstream
//! without a license. Requests on the upstream side are asserted on a
//! recording upstream: what it received, not only what the client got.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;

use common::recording::{Answer101, RecordingUpstream};
use common::vendor::Vendor;
use common::*;
use http::{Request, StatusCode};
use licensegate::license::validate::unix_now;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What Firefox and Chrome send for a navigation.
const BROWSER: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";

const POLICY: &str = r#"
plans:
  pro:
    features: [reports]
limits:
  orders_rate:
    rate: {limit: 1, per: 1m, key: client_ip}
  status_rate:
    rate: {limit: 1, per: 1m, key: client_ip}
routes:
  - name: health
    path: /healthz
    access: public
  - name: reports
    path: /api/reports/**
    features: [reports]
  - name: export
    path: /api/export/**
    features: [export]
  - name: orders
    path: /api/orders/**
    limits: [orders_rate]
  - name: status
    path: /status/**
    access: public
    limits: [status_rate]
  - name: strict
    path: /strict/**
    preflight: decide
  - name: closed
    path: /closed/**
    access: deny
"#;

struct Fixture {
    vendor: Vendor,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture {
            vendor: Vendor::new(POLICY),
        }
    }

    /// A `pro` license: feature `reports`, not `export`.
    fn token(&self) -> String {
        self.vendor
            .license(json!({"sub": "cust-1", "lic": {"plan": "pro"}}))
    }

    /// Header licenses (`Authorization`), and the policy unless `policy`
    /// is false.
    fn config(&self, upstream: &str, policy: bool, extra: &str) -> PathBuf {
        let policy = if policy {
            format!("policy:\n  paths: [{}]\n", self.vendor.policy().display())
        } else {
            String::new()
        };
        write_file(
            self.vendor.dir(),
            "licensegate.yaml",
            &format!(
                "upstream:\n  url: {upstream}\nworkers: 2\nlicense:\n  keys: {}\n  source: header\n{policy}{extra}",
                self.vendor.keys().display(),
            ),
        )
    }

    fn proxy(&self, upstream: &str) -> Proxy {
        Proxy::with_config(&self.config(upstream, true, ""))
    }
}

/// `GET url` with `accept` (none when `None`) and extra headers.
async fn get_with(
    url: &str,
    accept: Option<&str>,
    headers: &[(&str, &str)],
) -> (http::response::Parts, String) {
    let mut request = Request::get(url);
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let (parts, body) = send(request.body(empty()).unwrap()).await;
    (parts, String::from_utf8(body.to_vec()).unwrap())
}

#[track_caller]
fn assert_page(parts: &http::response::Parts, page: &str) {
    let headers = &parts.headers;
    assert_eq!(
        headers["content-type"], "text/html; charset=utf-8",
        "{page}"
    );
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["vary"], "accept");
    let policy = headers["content-security-policy"].to_str().unwrap();
    assert!(policy.starts_with("default-src 'none'"), "{policy}");
    assert!(!policy.contains("script-src"), "{policy}");
    assert!(page.starts_with("<!DOCTYPE html>"), "{page}");
    assert!(!page.contains("<script"), "{page}");
}

#[track_caller]
fn problem_of(parts: &http::response::Parts, body: &str) -> serde_json::Value {
    assert_eq!(
        parts.headers["content-type"], "application/problem+json",
        "{body}"
    );
    serde_json::from_str(body).unwrap()
}

/// Write `bytes` on a fresh connection and read until the proxy closes it.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .expect("the proxy answers and closes within the bound")
        .ok();
    String::from_utf8_lossy(&response).into_owned()
}

// ---------------------------------------------------------------------------
// A page for browsers, problem+json for everything else
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_browser_gets_a_page_an_api_client_gets_problem_json() {
    let upstream = RecordingUpstream::start(Answer101::Genuine).await;
    let fixture = Fixture::new();
    let proxy = fixture.proxy(&upstream.url());
    let url = proxy.url("/api/reports/q3");

    let (parts, page) = get_with(&url, Some(BROWSER), &[]).await;
    assert_eq!(parts.status, StatusCode::UNAUTHORIZED);
    assert_page(&parts, &page);
    // The challenge the JSON form carries, on the page too.
    assert_eq!(
        parts.headers["www-authenticate"],
        "Bearer realm=\"licensegate\""
    );
    assert!(page.contains("<h1>License missing</h1>"), "{page}");
    assert!(page.contains("<code>license_missing</code>"), "{page}");
    assert!(
        page.contains("<dt>Route</dt><dd><code>reports</code></dd>"),
        "{page}"
    );
    assert!(
        page.contains("<code>Authorization: Bearer &lt;license token&gt;</code>"),
        "{page}"
    );

    for accept in [
        None,
        Some("*/*"),
        Some("application/json"),
        Some("application/problem+json"),
        Some("text/html, application/json"),
        Some("text/html;q=0, */*"),
    ] {
        let (parts, body) = get_with(&url, accept, &[]).await;
        assert_eq!(parts.status, StatusCode::UNAUTHORIZED, "{accept:?}");
        let problem = problem_of(&parts, &body);
        assert_eq!(problem["reason"], "license_missing", "{accept:?}");
        assert_eq!(parts.headers["vary"], "accept", "{accept:?}");
        assert_eq!(
            parts.headers["www-authenticate"],
            "Bearer realm=\"licensegate\""
        );
    }

    // A feature the plan lacks: which feature, which plan.
    let auth = format!("Bearer {}", fixture.token());
    let (parts, page) = get_with(
        &proxy.url("/api/export/all"),
        Some(BROWSER),
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(parts.status, StatusCode::FORBIDDEN);
    assert_page(&parts, &page);
    assert!(
        page.contains(
            "needs the feature <code>export</code>, which license <code>cust-1</code> does not include: its plan, <code>pro</code>, lacks it"
        ),
        "{page}"
    );

    // HEAD: no page (and no body at all); gRPC: problem+json whatever it accepts.
    let (parts, body) = send(
        Request::head(&url)
            .header("accept", BROWSER)
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(parts.status, StatusCode::UNAUTHORIZED);
    assert_eq!(parts.headers["content-type"], "application/problem+json");
    assert!(body.is_empty());
    let (parts, body) = send(
        Request::post(&url)
            .header("accept", BROWSER)
            .header("content-type", "application/grpc")
            .body(full("\0\0\0\0\0"))
            .unwrap(),
    )
    .await;
    // A gRPC call gets a gRPC status, whatever it accepts.
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(parts.headers["content-type"], "application/grpc");
    assert_eq!(parts.headers["grpc-status"], "16");
    assert!(body.is_empty());
    assert!(!parts.headers.contains_key("vary"));
    // Nothing reached the workload.
    assert!(upstream.requests().is_empty(), "{:?}", upstream.requests());
}

/// The page of a `route_not_found` for `target`, sent raw.
async fn page_for_target(proxy: &Proxy, target: &str) -> (String, String) {
    let reply = exchange(
        proxy.addr,
        format!(
            "GET {target} HTTP/1.1\r\nHost: app.test\r\nAccept: {BROWSER}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    let (head, page) = reply.split_once("\r\n\r\n").expect("a response");
    (head.to_owned(), page.to_owned())
}

#[tokio::test]
async fn a_script_in_the_path_comes_out_escaped() {
    let upstream = RecordingUpstream::start(Answer101::Genuine).await;
    let fixture = Fixture::new();
    let proxy = fixture.proxy(&upstream.url());

    // A raw `<` never gets past the HTTP layer: a 400 that says why and
    // echoes nothing of the target.
    let (head, page) = page_for_target(&proxy, "/nowhere/<script>alert(1)</script>").await;
    assert!(head.starts_with("HTTP/1.1 400 "), "{head}");
    assert!(
        !page.contains("script") && !page.contains("nowhere"),
        "{page}"
    );
    assert!(page.contains("\"reason\":\"bad_request\""), "{page}");

    // Encoded, it stays encoded; quotes and `&` travel raw and are escaped.
    let (head, page) = page_for_target(
        &proxy,
        "/nowhere/%3Cscript%3Ealert(1)%3C/script%3E/\"onmouseover='alert(1)'&x",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 404 "), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/html; charset=utf-8"),
        "{head}"
    );
    assert!(page.contains("<code>route_not_found</code>"), "{page}");
    assert!(
        page.contains(
            "<p>No route matches GET /nowhere/%3Cscript%3Ealert(1)%3C/script%3E/&quot;onmouseover=&#39;alert(1)&#39;&amp;x.</p>"
        ),
        "{page}"
    );
    assert!(!page.contains("<script"), "{page}");
    assert!(!page.contains("\"onmouseover"), "{page}");

    // Details quote what a client sent elsewhere too: a token's key id.
    use base64::Engine as _;
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let token = format!(
        "{}.{}.AAAA",
        b64(json!({"alg": "EdDSA", "kid": "<script>alert(1)</script>"})),
        b64(json!({"sub": "x", "exp": unix_now() + 60, "lic": {}}))
    );
    let (parts, page) = get_with(
        &proxy.url("/api/reports/q3"),
        Some(BROWSER),
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(parts.status, StatusCode::UNAUTHORIZED);
    assert_page(&parts, &page);
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{page}"
    );
}

#[tokio::test]
async fn a_rate_limited_page_says_when_to_retry_and_keeps_the_headers() {
    let upstream = RecordingUpstream::start(Answer101::Genuine).await;
    let fixture = Fixture::new();
    let proxy = fixture.proxy(&upstream.url());
    let url = proxy.url("/status/now");
    let (parts, _) = get_with(&url, Some(BROWSER), &[]).await;
    assert_eq!(parts.status, StatusCode::OK);
    let (parts, page) = get_with(&url, Some(BROWSER), &[]).await;
    assert_eq!(parts.status, StatusCode::TOO_MANY_REQUESTS);
    assert_page(&parts, &page);
    let retry: u64 = parts.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // The window, plus the jitter that keeps clients from returning together.
    assert!((1..=120).contains(&retry), "{retry}");
    assert!(parts.headers.contains_key("ratelimit-policy"));
    assert!(parts.headers.contains_key("ratelimit"));
    let wait = humantime::format_duration(std::time::Duration::from_secs(retry));
    assert!(
        page.contains(&format!(
            "Too many requests in a short time. Try again in {wait}."
        )),
        "{page}"
    );
    // The JSON form carries the same headers.
    let (parts, body) = get_with(&url, Some("*/*"), &[]).await;
    assert_eq!(parts.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(problem_of(&parts, &body)["reason"], "rate_limited");
    assert!(parts.headers.contains_key("retry-after"));
    assert!(parts.headers.contains_key("ratelimit"));
}

// ---------------------------------------------------------------------------
// Upstream failures, said plainly
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_refused_connection_names_the_local_upstream_in_both_forms() {
    let closed = closed_port();
    let proxy = Proxy::run(&format!("http://{closed}"), &[]);
    let expected = format!("the upstream at {closed} refused the connection");

    let (parts, body) = get_with(&proxy.url("/x"), Some("*/*"), &[]).await;
    assert_eq!(parts.status, StatusCode::BAD_GATEWAY);
    let problem = problem_of(&parts, &body);
    assert_eq!(problem["reason"], "upstream_unavailable");
    assert_eq!(problem["detail"], expected.as_str());

    let (parts, page) = get_with(&proxy.url("/x"), Some(BROWSER), &[]).await;
    assert_eq!(parts.status, StatusCode::BAD_GATEWAY);
    assert_page(&parts, &page);
    assert!(
        page.contains(&format!(
            "<p>The upstream at {closed} refused the connection.</p>"
        )),
        "{page}"
    );
    assert!(page.contains("is down or not listening"), "{page}");

    // The same words over the pooled client (an HTTP/2 upstream).
    let proxy = Proxy::run(
        &format!("http://{closed}"),
        &["--upstream-protocol", "http2"],
    );
    let (parts, body) = get_with(&proxy.url("/x"), None, &[]).await;
    assert_eq!(parts.status, StatusCode::BAD_GATEWAY);
    assert_eq!(problem_of(&parts, &body)["detail"], expected.as_str());

    // `localhost` is local too; the name is kept as configured.
    let proxy = Proxy::run(&format!("http://localhost:{}", closed.port()), &[]);
    let (parts, body) = get_with(&proxy.url("/x"), None, &[]).await;
    assert_eq!(parts.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        problem_of(&parts, &body)["detail"],
        format!(
            "the upstream at localhost:{} refused the connection",
            closed.port()
        )
        .as_str()
    );
}

#[tokio::test]
async fn an_upstream_that_hangs_up_or_stalls_is_said_to() {
    // Reads the request, then closes without a word.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hang_up = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buffer = [0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buffer[..n]),
                    }
                }
            });
        }
    });
    let proxy = Proxy::run(&format!("http://{hang_up}"), &[]);
    let (parts, body) = get_with(&proxy.url("/x"), None, &[]).await;
    assert_eq!(parts.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        problem_of(&parts, &body)["detail"],
        format!("the upstream at {hang_up} closed the connection before answering").as_str()
    );

    // Takes the request and never answers.
    let (hold_tx, hold_rx) = tokio::sync::watch::channel(());
    let stall = upstream(move |_request| {
        let mut hold = hold_rx.clone();
        async move {
            let _ = hold.changed().await;
            http::Response::new(empty())
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(
        dir.path(),
        "licensegate.yaml",
        &format!("upstream:\n  url: http://{stall}\ntimeouts:\n  upstream_response: 300ms\n"),
    );
    let proxy = Proxy::with_config(&config);
    let (parts, page) = get_with(&proxy.url("/slow"), Some(BROWSER), &[]).await;
    assert_eq!(parts.status, StatusCode::GATEWAY_TIMEOUT);
    assert_page(&parts, &page);
    assert!(
        page.contains(&format!(
            "<p>The upstream at {stall} did not answer within 300ms.</p>"
        )),
        "{page}"
    );
    assert!(page.contains("is slow or stuck"), "{page}");
    drop(hold_tx);
}

// ---------------------------------------------------------------------------
// CORS preflights
// ---------------------------------------------------------------------------

fn preflight(url: &str) -> http::request::Builder {
    Request::builder()
        .method("OPTIONS")
        .uri(url)
        .header("origin", "http://localhost:5173")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
}

/// The next request through the proxy reaches the upstream: everything
/// sent before it has been decided.
async fn barrier(proxy: &Proxy, upstream: &RecordingUpstream, n: usize) {
    let target = format!("/healthz?barrier={n}");
    let (parts, _) = get(&proxy.url(&target)).await;
    assert_eq!(parts.status, StatusCode::OK);
    upstream.wait_for_target(&target).await;
}

#[tokio::test]
async fn a_preflight_reaches_the_upstream_without_a_license_and_its_answer_comes_back() {
    let upstream = RecordingUpstream::start(Answer101::Genuine).await;
    let fixture = Fixture::new();
    let proxy = fixture.proxy(&upstream.url());

    let (parts, body) = send(
        preflight(&proxy.url("/api/reports/q3"))
            // The edge still applies: no client entitlement or token
            // header gets through.
            .header("x-license-plan", "enterprise")
            .header("authorization", "Bearer not-a-license")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(&body[..], b"ok");
    upstream.wait_for_target("/api/reports/q3").await;
    let seen = &upstream.requests()[0];
    assert_eq!(seen.line, "OPTIONS /api/reports/q3 HTTP/1.1");
    assert_eq!(seen.header("origin"), Some("http://localhost:5173"));
    assert_eq!(seen.header("access-control-request-method"), Some("POST"));
    assert_eq!(
        seen.header("access-control-request-headers"),
        Some("authorization, content-type")
    );
    assert_eq!(seen.header("x-license-plan"), None, "{seen:?}");
    assert_eq!(seen.header("x-license-id"), None, "{seen:?}");
    assert_eq!(seen.header("authorization"), None, "{seen:?}");
    assert!(seen.body.is_empty());

    // The real request after it still needs the license, and never arrives.
    let (parts, _) = send(
        Request::post(proxy.url("/api/reports/q3"))
            .header("origin", "http://localhost:5173")
            .header("content-type", "application/json")
            .body(full("{}"))
            .unwrap(),
    )
    .await;
    assert_eq!(parts.status, StatusCode::UNAUTHORIZED);
    barrier(&proxy, &upstream, 0).await;
    let targets: Vec<String> = upstream.requests().iter().map(|r| r.line.clone()).collect();
    assert_eq!(
        targets,
        [
            "OPTIONS /api/reports/q3 HTTP/1.1",
            "GET /healthz?barrier=0 HTTP/1.1"
        ]
    );

    let page = metrics(&proxy).await;
    assert_eq!(
        metric(
            &page,
            r#"licensegate_decisions_total{decision="allow",reason="cors_preflight",route="reports"}"#
        ),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        metric(
            &page,
            r#"licensegate_requests_total{decision="allow",reason="cors_preflight"}"#
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn requests_that_only_look_like_preflights_are_decided_as_today() {
    let upstream = RecordingUpstream::start(Answer101::Genuine).await;
    let fixture = Fixture::new();
    let proxy = fixture.proxy(&upstream.url());
    // A body (by length, or chunked) makes it a request.
    let (parts, _) = send(
        preflight(&proxy.url("/api/reports/with-body"))
            .body(full("hello"))
            .unwrap(),
    )
    .await;
    assert_eq!(parts.status, StatusCode::UNAUTHORIZED);
    let reply = exchange(
        proxy.addr,
        b"OPTIONS /api/reports/chunked HTTP/1.1\r\nHost: app.test\r\n\
          Origin: http://localhost:5173\r\nAccess-Control-Request-Method: POST\r\n\
          Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 401 "), "{reply}");
    // Without Origin or without Access-Control-Request-Method.
    for (name, value) in [
        ("origin", "http://localhost:5173"),
        ("access-control-request-method", "POST"),
    ] {
        let (parts, _) = send(
            Request::builder()
                .method("OPTIONS")
                .uri(proxy.url("/api/reports/half"))
                .header(name, value)
                .body(empty())
                .unwrap(),
        )
        .await;
        assert_eq!(parts.status, StatusCode::UNAUTHORIZED, "{name}");
    }
    // `preflight: decide` refuses it without a license; a `deny` route and
    // `unmatched: deny` refuse it outright.
    for (path, status) in [
        ("/strict/x", StatusCode::UNAUTHORIZED),
        ("/closed/x", StatusCode::FORBIDDEN),
        ("/nowhere", StatusCode::NOT_FOUND),
    ] {
        let (parts, _) = send(preflight(&proxy.url(path)).body(empty()).unwrap()).await;
        assert_eq!(parts.status, status, "{path}");
    }
    barrier(&proxy, &upstream, 0).await;
    assert_eq!(upstream.requests().len(), 1, "{:?}", upstream.requests());
}

#[tokio::test]
async fn preflights_spend_no_limit() {
    let upstream = RecordingUpstream::start(Answer101::Genuine).await;
    let fixture = Fixture::new();
    let proxy = fixture.proxy(&upstream.url());
    let auth = format!("Bearer {}", fixture.token());
    // Both routes allow one request a minute per client address.
    for path in ["/api/orders/1", "/status/now"] {
        for _ in 0..3 {
            let (parts, body) = send(preflight(&proxy.url(path)).body(empty()).unwrap()).await;
            assert_eq!(parts.status, StatusCode::OK, "{path}");
            assert_eq!(&body[..], b"ok");
        }
        let (parts, _) = get_with(&proxy.url(path), None, &[("authorization", &auth)]).await;
        assert_eq!(parts.status, StatusCode::OK, "{path}");
        // The limit is live: the next request is over it.
        let (parts, _) = get_with(&proxy.url(path), None, &[("authorization", &auth)]).await;
        assert_eq!(parts.status, StatusCode::TOO_MANY_REQUESTS, "{path}");
    }
}

#[tokio::test]
async fn an_http2_preflight_is_one_whose_stream_ends_with_its_headers() {
    let upstream = RecordingUpstream::start(Answer101::Genuine).await;
    let fixture = Fixture::new();
    let proxy = fixture.proxy(&upstream.url());
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (sender, connection) = h2::client::handshake(stream).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = || {
        preflight(&format!(
            "http://app.test:{}/api/reports/h2",
            proxy.addr.port()
        ))
        .body(())
        .unwrap()
    };
    let mut sender = sender.ready().await.unwrap();
    let (response, _) = sender.send_request(request(), true).unwrap();
    let response = tokio::time::timeout(WAIT, response).await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    upstream.wait_for_target("/api/reports/h2").await;

    // The same head with a DATA frame after it is a request.
    let mut sender = sender.ready().await.unwrap();
    let (response, mut body) = sender.send_request(request(), false).unwrap();
    body.send_data(bytes::Bytes::from_static(b"{}"), true)
        .unwrap();
    let response = tokio::time::timeout(WAIT, response).await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    barrier(&proxy, &upstream, 0).await;
    assert_eq!(upstream.requests().len(), 2, "{:?}", upstream.requests());
}

#[tokio::test]
async fn without_a_policy_preflights_pass_and_requests_need_the_license() {
    let upstream = RecordingUpstream::start(Answer101::Genuine).await;
    let fixture = Fixture::new();
    let proxy = Proxy::with_config(&fixture.config(&upstream.url(), false, ""));
    let (parts, _) = send(preflight(&proxy.url("/any")).body(empty()).unwrap()).await;
    assert_eq!(parts.status, StatusCode::OK);
    upstream.wait_for_target("/any").await;
    let (parts, _) = get(&proxy.url("/any/real")).await;
    assert_eq!(parts.status, StatusCode::UNAUTHORIZED);
    assert_eq!(upstream.requests().len(), 1);
}
