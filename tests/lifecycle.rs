//! Start-up, shutdown and connection timeouts of the real binary.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::*;
use http::{Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An upstream that holds every request until the test releases it, and
/// says when one arrives.
async fn held_upstream() -> (
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<()>,
    tokio::sync::watch::Sender<bool>,
) {
    let (arrived_tx, arrived_rx) = tokio::sync::mpsc::unbounded_channel();
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let addr = upstream(move |_request| {
        let arrived = arrived_tx.clone();
        let mut release = release_rx.clone();
        async move {
            let _ = arrived.send(());
            let _ = release.wait_for(|go| *go).await;
            Response::new(full("finished"))
        }
    })
    .await;
    (addr, arrived_rx, release_tx)
}

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish_and_refuses_new_connections() {
    let (upstream, mut arrived_rx, release_tx) = held_upstream().await;
    let mut proxy = Proxy::run(&format!("http://{upstream}"), &[]);
    let url = proxy.url("/long");
    let in_flight = tokio::spawn(async move { get(&url).await });
    tokio::time::timeout(WAIT, arrived_rx.recv())
        .await
        .unwrap()
        .unwrap();

    proxy.signal("TERM");
    proxy.wait_for_log("listener closed");

    // Readiness reports the drain while the admin port is still up.
    let (parts, body) = get(&proxy.admin_url("/readyz")).await;
    assert_eq!(parts.status, 503);
    assert!(String::from_utf8_lossy(&body).contains("\"draining\": true"));

    let refused = tokio::net::TcpStream::connect(proxy.addr).await;
    assert!(
        refused.is_err(),
        "new connections must be refused while draining"
    );

    release_tx.send(true).unwrap();
    let (parts, body) = in_flight.await.unwrap();
    assert_eq!(parts.status, 200);
    assert_eq!(body, "finished");
    let status = proxy.wait_exit();
    assert_eq!(status.code(), Some(0), "logs:\n{}", proxy.logs());
}

#[tokio::test]
async fn a_second_signal_exits_at_once_with_130() {
    let (upstream, mut arrived_rx, _release) = held_upstream().await;
    let mut proxy = Proxy::run(&format!("http://{upstream}"), &[]);
    let url = proxy.url("/held");
    let in_flight = tokio::spawn(async move {
        client()
            .request(Request::get(url).body(empty()).unwrap())
            .await
    });
    tokio::time::timeout(WAIT, arrived_rx.recv())
        .await
        .unwrap()
        .unwrap();

    // The first signal drains: with the request held, it would wait out
    // `timeouts.drain` (25 s, longer than WAIT).
    proxy.signal("TERM");
    proxy.wait_for_log("listener closed");
    proxy.signal("TERM");
    let status = proxy.wait_exit();
    assert_eq!(status.code(), Some(130), "logs:\n{}", proxy.logs());
    proxy.wait_for_log("second signal received; exiting without waiting for the drain");
    let cut = tokio::time::timeout(WAIT, in_flight)
        .await
        .unwrap()
        .unwrap();
    assert!(cut.is_err(), "the held request was cut off: {cut:?}");
}

/// A global address of this machine (`ip addr`), if it has one.
fn non_loopback_address() -> Option<IpAddr> {
    let output = std::process::Command::new("ip")
        .args(["-o", "addr", "show", "scope", "global"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            words.find(|w| *w == "inet" || *w == "inet6")?;
            words.next()?.split('/').next()?.parse::<IpAddr>().ok()
        })
        .find(|ip| !ip.is_loopback())
}

/// `POST /shutdown` to the admin port on loopback, sent from `source`;
/// the status line.
async fn post_shutdown_from(source: IpAddr, admin_port: u16) -> String {
    let (socket, loopback) = match source {
        IpAddr::V4(_) => (
            tokio::net::TcpSocket::new_v4().unwrap(),
            IpAddr::from([127, 0, 0, 1]),
        ),
        IpAddr::V6(_) => (
            tokio::net::TcpSocket::new_v6().unwrap(),
            IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        ),
    };
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    let mut stream = socket
        .connect(SocketAddr::new(loopback, admin_port))
        .await
        .unwrap_or_else(|e| panic!("connect from {source}: {e}"));
    stream
        .write_all(
            b"POST /shutdown HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut reply))
        .await
        .unwrap()
        .unwrap();
    let reply = String::from_utf8_lossy(&reply).into_owned();
    reply.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn shutdown_is_refused_to_a_peer_that_is_not_loopback() {
    // The peer's address decides, not the listener's: the admin port
    // listens on every address, as in a pod, and the request is sent to
    // 127.0.0.1 from one of this machine's own global addresses, so nothing
    // leaves the machine.
    let Some(source) = non_loopback_address() else {
        skip("this machine has no global address to send from (`ip -o addr show scope global`)");
        return;
    };
    let wildcard = if source.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let mut proxy = Proxy::spawn(&[
        "run",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        wildcard,
        "--upstream",
        &format!("http://{}", echo_upstream().await),
    ])
    .expect("licensegate starts");
    let port = proxy.admin.port();

    let status = post_shutdown_from(source, port).await;
    assert_eq!(status, "HTTP/1.1 403 Forbidden", "from {source}");
    proxy.wait_for_log("shutdown refused: from loopback");
    let (parts, _) = get(&proxy.url("/still-up")).await;
    assert_eq!(parts.status, 200, "a refused shutdown must not drain");

    let loopback = match source {
        IpAddr::V4(_) => IpAddr::from([127, 0, 0, 1]),
        IpAddr::V6(_) => IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
    };
    let status = post_shutdown_from(loopback, port).await;
    assert_eq!(status, "HTTP/1.1 202 Accepted");
    assert_eq!(proxy.wait_exit().code(), Some(0));
}

#[tokio::test]
async fn post_shutdown_on_the_admin_port_drains_and_exits_zero() {
    let mut proxy = Proxy::run(&format!("http://{}", echo_upstream().await), &[]);
    let (parts, _) = get(&proxy.url("/before")).await;
    assert_eq!(parts.status, 200);
    let (parts, body) = send(
        Request::post(proxy.admin_url("/shutdown"))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(parts.status, 202);
    assert_eq!(body, "draining\n");
    assert_eq!(proxy.wait_exit().code(), Some(0));
}

#[tokio::test]
async fn shutdown_requires_post() {
    let proxy = Proxy::run(&format!("http://{}", echo_upstream().await), &[]);
    let (parts, _) = get(&proxy.admin_url("/shutdown")).await;
    assert_eq!(parts.status, 405);
    let (parts, _) = get(&proxy.admin_url("/readyz")).await;
    assert_eq!(parts.status, 200, "a GET must not start draining");
}

#[test]
fn bad_config_file_names_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(
        dir.path(),
        "lg.yaml",
        "listen: 127.0.0.1:0\nupstream:\n  url: http://127.0.0.1:1\ntimeouts:\n  upstream_response: forever\n",
    );
    let (status, stderr) = Proxy::spawn(&["run", "--config", config.to_str().unwrap()])
        .err()
        .expect("must not start");
    assert_eq!(status.code(), Some(64), "{stderr}");
    let expected = format!("{}:5:3: timeouts.upstream_response", config.display());
    assert!(
        stderr.contains(&expected),
        "expected {expected:?} in:\n{stderr}"
    );
    assert!(stderr.contains("not a duration"), "{stderr}");
}

#[test]
fn unknown_setting_is_named_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(
        dir.path(),
        "lg.yaml",
        "listen: 127.0.0.1:0\nupstreams: http://x\n",
    );
    let (status, stderr) = Proxy::spawn(&["run", "--config", config.to_str().unwrap()])
        .err()
        .expect("must not start");
    assert_eq!(status.code(), Some(64));
    assert!(
        stderr.contains(":2:1: upstreams: unknown field `upstreams`"),
        "{stderr}"
    );
}

#[test]
fn bad_flag_value_is_rejected_before_binding() {
    let (status, stderr) =
        Proxy::spawn(&["run", "--listen", "127.0.0.1:0", "--upstream", "ftp://x"])
            .err()
            .expect("must not start");
    assert_ne!(status.code(), Some(0));
    assert!(stderr.contains("--upstream"), "{stderr}");
    assert!(stderr.contains("ftp"), "{stderr}");
}

#[test]
fn missing_upstream_is_a_config_error() {
    let (status, stderr) = Proxy::spawn(&["run", "--listen", "127.0.0.1:0"])
        .err()
        .expect("must not start");
    assert_eq!(status.code(), Some(64));
    assert!(stderr.contains("upstream.url: required"), "{stderr}");
}

#[test]
fn taken_port_is_reported() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (status, stderr) = Proxy::spawn(&[
        "run",
        "--listen",
        &addr,
        "--admin",
        "127.0.0.1:0",
        "--upstream",
        "http://127.0.0.1:1",
    ])
    .err()
    .expect("must not start");
    assert_eq!(status.code(), Some(71));
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_client_sending_headers_too_slowly_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = echo_upstream().await;
    let config = write_file(
        dir.path(),
        "lg.yaml",
        &format!("upstream:\n  url: http://{upstream}\ntimeouts:\n  request_header: 300ms\n"),
    );
    let proxy = Proxy::with_config(&config);
    let started = Instant::now();
    let mut client = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    // Half a request head, then silence.
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(WAIT, client.read_to_end(&mut rest)).await;
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&rest);
    assert!(read.is_ok(), "the connection was not closed");
    assert!(!text.contains("200 OK"), "{text}");
    // Cut off after the configured 300 ms (checks make it up to 1.5×), never
    // before it, and well before the 10 s default.
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(5),
        "closed after {took:?} with request_header: 300ms"
    );

    // A prompt client on a fresh connection is unaffected.
    let (parts, _) = get(&proxy.url("/")).await;
    assert_eq!(parts.status, 200);
}

#[tokio::test]
async fn connections_beyond_max_connections_wait_for_a_free_slot() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = echo_upstream().await;
    let config = write_file(
        dir.path(),
        "lg.yaml",
        &format!("upstream:\n  url: http://{upstream}\nlimits:\n  max_connections: 2\n"),
    );
    let proxy = Proxy::with_config(&config);
    let connect = keep_alive;
    let ask = |sender, path| ask_on(sender, path, &[]);
    // Two keep-alive connections, each answered, hold both slots.
    let (first, status) = ask(connect(proxy.addr).await, "/first").await;
    assert_eq!(status, 200);
    let (second, status) = ask(connect(proxy.addr).await, "/second").await;
    assert_eq!(status, 200);
    let page = metrics(&proxy).await;
    assert_eq!(metric(&page, "licensegate_connections_open"), Some(2.0));

    // The kernel completes a third connection, but the proxy does not
    // serve it while both slots are taken: no answer within a second is
    // the assertion.
    let third = connect(proxy.addr).await;
    let mut waiting = tokio::spawn(async move { ask(third, "/third").await.1 });
    assert!(
        tokio::time::timeout(Duration::from_secs(1), &mut waiting)
            .await
            .is_err(),
        "a third connection was served with limits.max_connections: 2"
    );
    drop(first);
    let status = tokio::time::timeout(WAIT, waiting).await.unwrap().unwrap();
    assert_eq!(status, 200, "served once a slot was free");
    drop(second);
}

#[tokio::test]
async fn idle_http2_connections_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = echo_upstream().await;
    let config = write_file(
        dir.path(),
        "lg.yaml",
        &format!("upstream:\n  url: http://{upstream}\ntimeouts:\n  idle: 200ms\n"),
    );
    let proxy = Proxy::with_config(&config);
    let stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    let connection = tokio::spawn(connection);
    let response = sender
        .send_request(Request::get("http://x/").body(empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    drop(response);
    // The server ends the connection (GOAWAY, then close) on its own.
    let ended = tokio::time::timeout(WAIT, connection).await;
    assert!(ended.is_ok(), "idle connection was not closed");
}

#[tokio::test]
async fn the_shipped_example_config_is_valid() {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/licensegate.yaml");
    let upstream = format!("http://{}", echo_upstream().await);
    let proxy = Proxy::spawn(&[
        "run",
        "--config",
        config,
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--upstream",
        &upstream,
    ])
    .expect("the example config starts");
    let (parts, _) = get(&proxy.url("/")).await;
    assert_eq!(parts.status, 200);
}

#[tokio::test]
async fn demo_runs_with_zero_setup() {
    let proxy = Proxy::spawn(&["demo", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .expect("demo starts");
    let token = proxy.wait_for_stdout("TOKEN=");
    let (parts, _) = get(&proxy.url("/hello")).await;
    assert_eq!(parts.status, 401, "the demo enforces its license");
    let request = Request::get(proxy.url("/hello"))
        .header("authorization", format!("Bearer {token}"))
        .body(empty())
        .unwrap();
    let (parts, body) = send(request).await;
    assert_eq!(parts.status, 200);
    let seen: licensegate::demo::EchoReport = serde_json::from_slice(&body).unwrap();
    assert_eq!(seen.path, "/hello");
    let (parts, _) = get(&proxy.admin_url("/readyz")).await;
    assert_eq!(parts.status, 200);
}

fn short_head_timeout_config(
    dir: &std::path::Path,
    upstream: std::net::SocketAddr,
) -> std::path::PathBuf {
    write_file(
        dir,
        "lg.yaml",
        &format!("upstream:\n  url: http://{upstream}\ntimeouts:\n  request_header: 200ms\n  idle: 10s\n"),
    )
}

// Time passing is the stimulus in the next two tests: they wait longer than
// the head timeout on purpose, and assert the connection survives.

#[tokio::test]
async fn an_idle_keep_alive_connection_outlives_the_head_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::with_config(&short_head_timeout_config(
        dir.path(),
        echo_upstream().await,
    ));
    let client = client();
    let (parts, _) = get(&proxy.url("/warm")).await;
    assert_eq!(parts.status, 200);
    for i in 0..2 {
        let response = client
            .request(
                Request::get(proxy.url(&format!("/{i}")))
                    .body(empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    }
    let response = client
        .request(Request::get(proxy.url("/last")).body(empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let page = metrics(&proxy).await;
    // One connection for /warm, one reused for the three client requests.
    assert_eq!(metric(&page, "licensegate_connections_total"), Some(2.0));
}

#[tokio::test]
async fn a_slow_upload_after_the_response_head_is_not_cut_off() {
    use http_body_util::BodyExt;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::with_config(&short_head_timeout_config(
        dir.path(),
        echo_upstream().await,
    ));
    let stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let (body_tx, body_rx) = tokio::sync::mpsc::channel::<
        Result<http_body::Frame<bytes::Bytes>, std::convert::Infallible>,
    >(1);
    let body = http_body_util::StreamBody::new(tokio_stream_from(body_rx));
    let request = Request::post("/upload")
        .header("host", "x")
        .header("content-type", "text/plain")
        .body(body)
        .unwrap();
    body_tx
        .send(Ok(http_body::Frame::data("first ".into())))
        .await
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut echoed = response.into_body();
    let first = echoed.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "first ");
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    body_tx
        .send(Ok(http_body::Frame::data("second".into())))
        .await
        .unwrap();
    drop(body_tx);
    let rest = echoed
        .collect()
        .await
        .expect("the upload was not cut off")
        .to_bytes();
    assert_eq!(rest, "second");
}

/// An mpsc receiver as a `Stream`, without pulling in tokio-stream.
fn tokio_stream_from<T>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
