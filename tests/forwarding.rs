//! Forwarding through the real binary: methods, statuses, headers, bodies,
//! hop-by-hop stripping, X-Forwarded-*, HTTP/2 and upstream failures.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use licensegate::demo::EchoReport;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn report(body: &Bytes) -> EchoReport {
    serde_json::from_slice(body).unwrap_or_else(|e| panic!("echo report: {e}: {body:?}"))
}

fn header<'a>(report: &'a EchoReport, name: &str) -> Option<&'a [String]> {
    report.headers.get(name).map(Vec::as_slice)
}

#[tokio::test]
async fn methods_statuses_headers_and_bodies_pass_through() {
    // The upstream answers with the status named in the path and reflects
    // method, a request header and the body.
    let upstream = upstream(|request: Request<hyper::body::Incoming>| async move {
        let status: u16 = request
            .uri()
            .path()
            .trim_start_matches('/')
            .parse()
            .unwrap_or(200);
        let method = request.method().to_string();
        let marker = request.headers().get("x-marker").cloned();
        let body = request.into_body().collect().await.unwrap().to_bytes();
        let mut response = Response::new(full(body));
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        response
            .headers_mut()
            .insert("x-method", method.parse().unwrap());
        if let Some(marker) = marker {
            response.headers_mut().insert("x-marker-seen", marker);
        }
        response
            .headers_mut()
            .append("set-cookie", "a=1".parse().unwrap());
        response
            .headers_mut()
            .append("set-cookie", "b=2".parse().unwrap());
        response
    })
    .await;
    let proxy = Proxy::run(&format!("http://{upstream}"), &[]);

    for (method, status, body) in [
        (Method::GET, 200, ""),
        (Method::POST, 201, "created"),
        (Method::PUT, 200, "replaced"),
        (Method::PATCH, 202, "patched"),
        (Method::DELETE, 204, ""),
        (Method::OPTIONS, 200, ""),
        (Method::GET, 404, ""),
        (Method::POST, 418, "teapot"),
        (Method::GET, 503, ""),
    ] {
        let request = Request::builder()
            .method(method.clone())
            .uri(proxy.url(&format!("/{status}")))
            .header("x-marker", "m-1")
            .body(full(body))
            .unwrap();
        let (parts, received) = send(request).await;
        assert_eq!(parts.status.as_u16(), status, "{method} /{status}");
        assert_eq!(parts.headers["x-method"], method.as_str());
        assert_eq!(parts.headers["x-marker-seen"], "m-1");
        let cookies: Vec<_> = parts.headers.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"], "repeated headers keep their order");
        if status != 204 {
            assert_eq!(received, body.as_bytes(), "{method} body");
        }
    }

    // HEAD has no body but keeps the headers.
    let (parts, received) = send(Request::head(proxy.url("/200")).body(empty()).unwrap()).await;
    assert_eq!(parts.status, 200);
    assert!(received.is_empty());
}

#[tokio::test]
async fn path_and_query_reach_the_upstream_unchanged() {
    let proxy = Proxy::run(&format!("http://{}", echo_upstream().await), &[]);
    let (parts, body) = get(&proxy.url("/api/v1/items?limit=10&cursor=a%20b")).await;
    assert_eq!(parts.status, 200);
    assert_eq!(report(&body).path, "/api/v1/items?limit=10&cursor=a%20b");
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_both_ways() {
    // Raw sockets on both sides, so nothing in between hides what was sent.
    let upstream_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = upstream_listener.local_addr().unwrap();
    let upstream_task = tokio::spawn(async move {
        let (mut stream, _) = upstream_listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "request head incomplete");
            head.extend_from_slice(&buf[..n]);
        }
        stream
            .write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: x-upstream-private\r\n\
                  X-Upstream-Private: secret\r\nKeep-Alive: timeout=5\r\n\
                  Proxy-Authenticate: Basic\r\nX-Upstream-Public: yes\r\n\r\nok",
            )
            .await
            .unwrap();
        String::from_utf8(head).unwrap().to_ascii_lowercase()
    });
    let proxy = Proxy::run(&format!("http://{upstream_addr}"), &[]);

    let mut client = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    client
        .write_all(
            b"GET /h HTTP/1.1\r\nHost: app.test\r\nConnection: keep-alive, x-client-private\r\n\
              X-Client-Private: 1\r\nKeep-Alive: timeout=9\r\nTE: gzip\r\n\
              Proxy-Authorization: Basic Zm9vOmJhcg==\r\nProxy-Connection: keep-alive\r\n\
              Upgrade: h2c\r\nX-Client-Public: 1\r\n\r\n",
        )
        .await
        .unwrap();
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    while !(response.windows(4).any(|w| w == b"\r\n\r\n") && response.ends_with(b"ok")) {
        let n = tokio::time::timeout(WAIT, client.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(
            n > 0,
            "response incomplete: {:?}",
            String::from_utf8_lossy(&response)
        );
        response.extend_from_slice(&buf[..n]);
    }
    let response = String::from_utf8(response).unwrap().to_ascii_lowercase();
    let upstream_saw = upstream_task.await.unwrap();

    for gone in [
        "x-client-private:",
        "keep-alive:",
        "te:",
        "proxy-authorization:",
        "proxy-connection:",
        "upgrade:",
    ] {
        assert!(
            !upstream_saw.contains(gone),
            "upstream saw {gone}\n{upstream_saw}"
        );
    }
    assert!(
        upstream_saw.contains("x-client-public: 1"),
        "{upstream_saw}"
    );
    assert!(upstream_saw.contains("host: app.test"), "{upstream_saw}");
    for gone in ["x-upstream-private:", "keep-alive:", "proxy-authenticate:"] {
        assert!(!response.contains(gone), "client saw {gone}\n{response}");
    }
    assert!(response.contains("x-upstream-public: yes"), "{response}");
}

#[tokio::test]
async fn forwarded_headers_replace_client_claims_by_default() {
    let proxy = Proxy::run(&format!("http://{}", echo_upstream().await), &[]);
    let request = Request::get(proxy.url("/who"))
        .header("host", "shop.example")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "evil.example")
        .header("forwarded", "for=203.0.113.9")
        .body(empty())
        .unwrap();
    let (_, body) = send(request).await;
    let seen = report(&body);
    assert_eq!(
        header(&seen, "x-forwarded-for"),
        Some(&["127.0.0.1".to_owned()][..])
    );
    assert_eq!(
        header(&seen, "x-forwarded-proto"),
        Some(&["http".to_owned()][..])
    );
    assert_eq!(
        header(&seen, "x-forwarded-host"),
        Some(&["shop.example".to_owned()][..])
    );
    assert_eq!(
        header(&seen, "host"),
        Some(&["shop.example".to_owned()][..])
    );
    assert_eq!(header(&seen, "forwarded"), None);
}

#[tokio::test]
async fn forwarded_headers_are_extended_when_trusted() {
    let proxy = Proxy::run(
        &format!("http://{}", echo_upstream().await),
        &["--trust-forwarded", "true"],
    );
    let request = Request::get(proxy.url("/who"))
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-proto", "https")
        .body(empty())
        .unwrap();
    let (_, body) = send(request).await;
    let seen = report(&body);
    assert_eq!(
        header(&seen, "x-forwarded-for"),
        Some(&["203.0.113.9, 127.0.0.1".to_owned()][..])
    );
    assert_eq!(
        header(&seen, "x-forwarded-proto"),
        Some(&["https".to_owned()][..])
    );
}

#[tokio::test]
async fn h2c_prior_knowledge_is_served_on_the_same_port() {
    let proxy = Proxy::run(&format!("http://{}", echo_upstream().await), &[]);
    let stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("HTTP/2 handshake with prior knowledge");
    tokio::spawn(connection);

    let request = Request::get(format!("http://app.test:{}/over-h2", proxy.addr.port()))
        .body(empty())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let seen = report(&response.into_body().collect().await.unwrap().to_bytes());
    assert_eq!(seen.path, "/over-h2");
    assert_eq!(
        seen.version, "HTTP/1.1",
        "the upstream is spoken to in HTTP/1.1"
    );
    assert_eq!(
        header(&seen, "host"),
        Some(&[format!("app.test:{}", proxy.addr.port())][..]),
        ":authority becomes Host for the HTTP/1.1 upstream"
    );

    // Concurrent streams on the one connection.
    let mut streams = Vec::new();
    for i in 0..20 {
        let mut sender = sender.clone();
        let uri = format!("http://app.test/stream/{i}");
        streams.push(tokio::spawn(async move {
            let response = sender
                .send_request(Request::get(uri).body(empty()).unwrap())
                .await
                .unwrap();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (i, report(&body).path)
        }));
    }
    for stream in streams {
        let (i, path) = stream.await.unwrap();
        assert_eq!(path, format!("/stream/{i}"));
    }
}

#[tokio::test]
async fn refused_upstream_is_a_502_problem() {
    let proxy = Proxy::run(&format!("http://{}", closed_port()), &[]);
    let (parts, body) = get(&proxy.url("/x")).await;
    assert_eq!(parts.status, StatusCode::BAD_GATEWAY);
    assert_eq!(parts.headers["content-type"], "application/problem+json");
    let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(problem["status"], 502);
    assert_eq!(problem["reason"], "upstream_unavailable");
    assert_eq!(
        problem["type"],
        "https://licensegate.io/problems/upstream-unavailable"
    );
    assert!(
        problem["detail"].as_str().unwrap().contains("onnect"),
        "{problem}"
    );

    let page = metrics(&proxy).await;
    assert_eq!(
        metric(&page, "licensegate_upstream_errors_total{kind=\"connect\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &page,
            "licensegate_requests_total{decision=\"error\",reason=\"upstream_unavailable\"}"
        ),
        Some(1.0)
    );
}

/// A loopback listener that never accepts, with its backlog full: the
/// kernel drops further SYNs, so a connect to it hangs, as to a host that
/// is down, instead of being refused.
struct Blackhole {
    addr: SocketAddr,
    _listener: tokio::net::TcpListener,
    _queued: Vec<tokio::net::TcpStream>,
}

async fn blackhole() -> Blackhole {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    // Fill the accept queue until a connect no longer completes (Linux
    // queues one connection for a backlog of 0).
    let mut queued = Vec::new();
    for _ in 0..16 {
        let connect = tokio::net::TcpStream::connect(addr);
        match tokio::time::timeout(std::time::Duration::from_millis(200), connect).await {
            Ok(Ok(stream)) => queued.push(stream),
            Ok(Err(error)) => panic!("connect to {addr}: {error}"),
            Err(_) => {
                return Blackhole {
                    addr,
                    _listener: listener,
                    _queued: queued,
                }
            }
        }
    }
    panic!("the accept queue of {addr} never filled");
}

#[tokio::test]
async fn an_upstream_that_never_accepts_is_given_up_after_the_connect_timeout() {
    let hole = blackhole().await;
    let dir = tempfile::tempdir().unwrap();
    // The HTTP/1 pool and the HTTP/2 client each connect on their own.
    for protocol in ["http1", "http2"] {
        let config = write_file(
            dir.path(),
            &format!("{protocol}.yaml"),
            &format!(
                "upstream:\n  url: http://{}\n  protocol: {protocol}\n\
                 timeouts:\n  upstream_connect: 300ms\n",
                hole.addr
            ),
        );
        let proxy = Proxy::with_config(&config);
        let started = std::time::Instant::now();
        let (parts, body) = get(&proxy.url("/x")).await;
        let took = started.elapsed();
        let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            parts.status,
            StatusCode::BAD_GATEWAY,
            "{protocol}: {problem}"
        );
        assert_eq!(
            problem["detail"],
            format!(
                "the upstream at {} did not accept a connection within 300ms",
                hole.addr
            ),
            "{protocol}"
        );
        // Given up at the configured 300 ms, not at the 2 s default.
        assert!(
            took >= std::time::Duration::from_millis(300)
                && took < std::time::Duration::from_millis(1500),
            "{protocol}: answered after {took:?} with upstream_connect: 300ms"
        );
        let page = metrics(&proxy).await;
        assert_eq!(
            metric(&page, "licensegate_upstream_errors_total{kind=\"connect\"}"),
            Some(1.0),
            "{protocol}"
        );
    }
}

#[tokio::test]
async fn upstream_protocol_decides_what_the_upstream_hears() {
    // The echo upstream serves HTTP/1.1 and h2c, and reports what it got.
    let echo = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    for (protocol, heard) in [
        ("http2", "HTTP/2.0"),
        ("http1", "HTTP/1.1"),
        ("auto", "HTTP/1.1"),
    ] {
        let config = write_file(
            dir.path(),
            &format!("{protocol}.yaml"),
            &format!("upstream:\n  url: http://{echo}\n  protocol: {protocol}\n"),
        );
        let proxy = Proxy::with_config(&config);
        let (parts, body) = get(&proxy.url("/which")).await;
        assert_eq!(parts.status, 200, "{protocol}");
        assert_eq!(
            report(&body).version,
            heard,
            "upstream.protocol: {protocol} (the client spoke HTTP/1.1)"
        );
    }
}

#[tokio::test]
async fn slow_upstream_is_a_504_problem() {
    // The upstream takes the request and never answers.
    let (hold_tx, hold_rx) = tokio::sync::watch::channel(());
    let upstream = upstream(move |_request| {
        let mut hold = hold_rx.clone();
        async move {
            let _ = hold.changed().await;
            Response::new(empty())
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(
        dir.path(),
        "licensegate.yaml",
        &format!("upstream:\n  url: http://{upstream}\ntimeouts:\n  upstream_response: 300ms\n"),
    );
    let proxy = Proxy::with_config(&config);
    let (parts, body) = get(&proxy.url("/slow")).await;
    assert_eq!(parts.status, StatusCode::GATEWAY_TIMEOUT);
    let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(problem["reason"], "upstream_timeout");
    assert!(
        problem["detail"].as_str().unwrap().contains("300ms"),
        "{problem}"
    );
    let page = metrics(&proxy).await;
    assert_eq!(
        metric(&page, "licensegate_upstream_errors_total{kind=\"timeout\"}"),
        Some(1.0)
    );
    drop(hold_tx);
}

#[tokio::test]
async fn metrics_count_what_happened() {
    let proxy = Proxy::run(&format!("http://{}", echo_upstream().await), &[]);
    for _ in 0..7 {
        let (parts, _) = get(&proxy.url("/counted")).await;
        assert_eq!(parts.status, 200);
    }
    let page = metrics(&proxy).await;
    assert_eq!(
        metric(
            &page,
            "licensegate_requests_total{decision=\"allow\",reason=\"allowed\"}"
        ),
        Some(7.0)
    );
    assert_eq!(
        metric(&page, "licensegate_request_duration_seconds_count"),
        Some(7.0)
    );
    assert_eq!(
        metric(&page, "licensegate_upstream_errors_total{kind=\"connect\"}"),
        Some(0.0)
    );
    assert_eq!(
        metric(
            &page,
            &format!(
                "licensegate_build_info{{version=\"{}\"}}",
                licensegate::VERSION
            )
        ),
        Some(1.0)
    );
    assert!(metric(&page, "licensegate_connections_total").unwrap() >= 1.0);
    assert!(metric(&page, "licensegate_connections_open").is_some());
}

#[tokio::test]
async fn oversized_request_head_is_rejected_with_431() {
    let proxy = Proxy::run(&format!("http://{}", echo_upstream().await), &[]);
    let mut client = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let big = "a".repeat(100 * 1024);
    let request = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
    // The proxy may answer and close before reading everything.
    let _ = client.write_all(request.as_bytes()).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(WAIT, client.read_to_end(&mut response))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
}

#[test]
fn admin_answers_health_and_readiness() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let proxy = Proxy::run(&format!("http://{}", echo_upstream().await), &[]);
        let (parts, body) = get(&proxy.admin_url("/healthz")).await;
        assert_eq!(parts.status, 200);
        assert_eq!(body, "ok\n");
        let (parts, body) = get(&proxy.admin_url("/readyz")).await;
        assert_eq!(parts.status, 200);
        let report: BTreeMap<String, serde_json::Value> = serde_json::from_slice(&body).unwrap();
        assert_eq!(report["ready"], true);
        let (parts, _) = get(&proxy.admin_url("/nope")).await;
        assert_eq!(parts.status, 404);
    });
}

#[tokio::test]
async fn upstream_closing_connections_after_each_response_is_harmless() {
    let upstream = upstream(|_request| async {
        let mut response = Response::new(full("bye"));
        response
            .headers_mut()
            .insert("connection", "close".parse().unwrap());
        response
    })
    .await;
    let proxy = Proxy::run(&format!("http://{upstream}"), &[]);
    // One client connection, many requests: each needs a fresh upstream connection.
    let client = client();
    for i in 0..25 {
        let response = client
            .request(
                Request::get(proxy.url(&format!("/{i}")))
                    .body(empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "request {i}");
        assert!(
            response.headers().get("connection").is_none(),
            "hop-by-hop leaked"
        );
        assert_eq!(
            response.into_body().collect().await.unwrap().to_bytes(),
            "bye"
        );
    }
    let page = metrics(&proxy).await;
    assert_eq!(
        metric(&page, "licensegate_connections_total"),
        Some(1.0),
        "the client kept one connection"
    );
    assert_eq!(
        metric(
            &page,
            "licensegate_requests_total{decision=\"allow\",reason=\"allowed\"}"
        ),
        Some(25.0)
    );
}

/// Send one raw HTTP/1.1 request line and return the whole response.
async fn raw_get(addr: std::net::SocketAddr, target: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {target} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test]
async fn the_upstream_receives_the_normalised_path() {
    let proxy = Proxy::run(&format!("http://{}", echo_upstream().await), &[]);
    for (sent, served) in [
        ("/info/../private", "/private"),
        ("/info/%2e%2e/private?x=%2e%2e", "/private?x=%2e%2e"),
        ("//admin//users/./", "/admin/users/"),
        ("/%61dmin", "/admin"),
        ("/caf%c3%a9", "/caf%C3%A9"),
    ] {
        let response = raw_get(proxy.addr, sent).await;
        assert!(response.starts_with("HTTP/1.1 200"), "{sent}: {response}");
        let body = &response[response.find("\r\n\r\n").unwrap() + 4..];
        assert_eq!(report(&Bytes::from(body.to_owned())).path, served, "{sent}");
    }
}

#[tokio::test]
async fn path_tricks_are_rejected_before_the_upstream() {
    let proxy = Proxy::run(&format!("http://{}", closed_port()), &[]);
    for target in [
        "/a%2fb",
        "/a%5Cb",
        "/a\\b",
        "/admin;jsessionid=1",
        "/x%00",
        "/bad%zz",
    ] {
        let response = raw_get(proxy.addr, target).await;
        assert!(response.starts_with("HTTP/1.1 400"), "{target}: {response}");
        assert!(
            response.contains("\"reason\":\"bad_request_path\""),
            "{target}: {response}"
        );
    }
    let page = metrics(&proxy).await;
    assert_eq!(
        metric(&page, "licensegate_upstream_errors_total{kind=\"connect\"}"),
        Some(0.0),
        "never forwarded"
    );
}

/// An upstream that counts the TCP connections it accepted and saw closed.
struct CountingUpstream {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
}

async fn counting_upstream() -> CountingUpstream {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicUsize::new(0));
    let (on_accept, on_close) = (Arc::clone(&accepted), Arc::clone(&closed));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            on_accept.fetch_add(1, Ordering::SeqCst);
            let on_close = Arc::clone(&on_close);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_request| async {
                    Ok::<_, std::convert::Infallible>(Response::new(full("ok")))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
                on_close.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    CountingUpstream {
        addr,
        accepted,
        closed,
    }
}

async fn idle_upstream_connections(proxy: &Proxy) -> Option<f64> {
    metric(
        &metrics(proxy).await,
        "licensegate_upstream_idle_connections",
    )
}

/// A proxy whose watchdog checks every 100 ms (half the head timeout).
fn quick_watchdog_proxy(dir: &std::path::Path, upstream: SocketAddr, extra: &str) -> Proxy {
    let config = write_file(
        dir,
        "lg.yaml",
        &format!(
            "upstream: {{url: 'http://{upstream}'}}\ntimeouts: {{request_header: 200ms{extra}}}\n"
        ),
    );
    Proxy::with_config(&config)
}

/// One keep-alive request on a new raw connection, left open afterwards.
async fn request_and_hold(addr: SocketAddr) -> tokio::net::TcpStream {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    request_ok(&mut stream).await;
    stream
}

/// One keep-alive GET on `stream`, answered 200 `ok` by the counting upstream.
async fn request_ok(stream: &mut tokio::net::TcpStream) {
    stream
        .write_all(b"GET /held HTTP/1.1\r\nhost: app\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    let mut chunk = [0u8; 1024];
    while !response.ends_with(b"ok") {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the proxy closed the connection");
        response.extend_from_slice(&chunk[..n]);
    }
    assert!(response.starts_with(b"HTTP/1.1 200"), "{response:?}");
}

#[tokio::test]
async fn quiet_client_connections_give_their_upstream_connection_back() {
    let upstream = counting_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = quick_watchdog_proxy(dir.path(), upstream.addr, "");

    let first = request_and_hold(proxy.addr).await;
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 1);
    // The first client stays connected but quiet: its upstream connection
    // goes back to the shared idle list.
    assert!(
        eventually(async || idle_upstream_connections(&proxy).await == Some(1.0)).await,
        "the quiet connection kept its upstream connection"
    );

    // A second client reuses it instead of opening another.
    let second = request_and_hold(proxy.addr).await;
    assert_eq!(
        upstream.accepted.load(Ordering::SeqCst),
        1,
        "a second upstream connection was opened"
    );
    let page = metrics(&proxy).await;
    assert_eq!(metric(&page, "licensegate_connections_open"), Some(2.0));
    drop((first, second));
}

#[tokio::test]
async fn unused_upstream_connections_are_closed_after_the_upstream_idle_timeout() {
    let upstream = counting_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = quick_watchdog_proxy(dir.path(), upstream.addr, ", upstream_idle: 400ms");

    let mut client = request_and_hold(proxy.addr).await;
    assert!(
        eventually(async || idle_upstream_connections(&proxy).await == Some(1.0)).await,
        "the quiet connection kept its upstream connection"
    );
    // Unused for `upstream_idle`: the proxy closes it, not the upstream.
    assert!(
        eventually(async || idle_upstream_connections(&proxy).await == Some(0.0)).await,
        "the idle upstream connection was kept past upstream_idle"
    );
    assert!(
        eventually(async || upstream.closed.load(Ordering::SeqCst) == 1).await,
        "the upstream saw no close"
    );

    // The client's own connection is untouched and gets a fresh upstream one.
    request_ok(&mut client).await;
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn http2_streams_reuse_upstream_connections() {
    let upstream = counting_upstream().await;
    let accepted = &upstream.accepted;
    let proxy = Proxy::run(&format!("http://{}", upstream.addr), &[]);
    let stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("HTTP/2 handshake with prior knowledge");
    tokio::spawn(connection);
    let get = |mut sender: hyper::client::conn::http2::SendRequest<Body>, i: usize| async move {
        let response = sender
            .send_request(
                Request::get(format!("http://app.test/{i}"))
                    .body(empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.into_body().collect().await.unwrap().to_bytes()
    };

    // Eight streams at once need at most eight upstream connections...
    let concurrent: Vec<_> = (0..8)
        .map(|i| tokio::spawn(get(sender.clone(), i)))
        .collect();
    for stream in concurrent {
        assert_eq!(stream.await.unwrap(), "ok");
    }
    let opened = accepted.load(Ordering::SeqCst);
    assert!((1..=8).contains(&opened), "{opened} upstream connections");
    // ...and later streams reuse them: each response's end gives its
    // connection back before the client sees that end.
    for i in 0..30 {
        assert_eq!(get(sender.clone(), i).await, "ok");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        opened,
        "sequential streams opened new upstream connections"
    );
    let page = metrics(&proxy).await;
    assert!(metric(&page, "licensegate_upstream_idle_connections").unwrap() >= 1.0);
}
