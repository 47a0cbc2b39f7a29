//! TLS on both sides, WebSocket upgrades and large streamed bodies, through
//! the real binary.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use hyper_util::rt::{TokioExecutor, TokioIo};
use licensegate::demo::EchoReport;
use rustls_pki_types::ServerName;
use tokio_tungstenite::tungstenite::Message;

async fn tls_connect(
    cert: &TestCert,
    addr: std::net::SocketAddr,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cert.client_config(alpn)));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    connector
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .expect("TLS handshake with the proxy")
}

#[tokio::test]
async fn inbound_tls_negotiates_h2_with_alpn() {
    let cert = TestCert::new();
    let proxy = Proxy::run(
        &format!("http://{}", echo_upstream().await),
        &[
            "--tls-cert",
            &cert.cert_path(),
            "--tls-key",
            &cert.key_path(),
        ],
    );
    let tls = tls_connect(&cert, proxy.addr, &[b"h2", b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(connection);
    let response = sender
        .send_request(
            Request::get("https://127.0.0.1/secure")
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let seen: EchoReport = serde_json::from_slice(&body).unwrap();
    assert_eq!(seen.path, "/secure");
    assert_eq!(seen.headers["x-forwarded-proto"], ["https"]);
}

#[tokio::test]
async fn inbound_tls_serves_http1_when_that_is_all_the_client_offers() {
    let cert = TestCert::new();
    let proxy = Proxy::run(
        &format!("http://{}", echo_upstream().await),
        &[
            "--tls-cert",
            &cert.cert_path(),
            "--tls-key",
            &cert.key_path(),
        ],
    );
    let tls = tls_connect(&cert, proxy.addr, &[b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(connection);
    let response = sender
        .send_request(
            Request::get("/one")
                .header("host", "127.0.0.1")
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.version(), http::Version::HTTP_11);
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn bad_tls_key_is_a_config_error() {
    let cert = TestCert::new();
    let dir = tempfile::tempdir().unwrap();
    let bogus = write_file(dir.path(), "bogus.pem", "not a key\n");
    let (status, stderr) = Proxy::spawn(&[
        "run",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--upstream",
        "http://127.0.0.1:1",
        "--tls-cert",
        &cert.cert_path(),
        "--tls-key",
        bogus.to_str().unwrap(),
    ])
    .err()
    .expect("must not start");
    assert_eq!(status.code(), Some(64));
    assert!(stderr.contains("tls.key"), "{stderr}");
    assert!(stderr.contains("bogus.pem"), "{stderr}");
}

#[tokio::test]
async fn https_upstream_is_verified_against_the_given_ca() {
    let cert = TestCert::new();
    // A TLS upstream on loopback using the same self-signed certificate.
    let upstream_addr = tls_upstream(
        &cert,
        |request: Request<hyper::body::Incoming>| async move {
            let h2 = request.version() == http::Version::HTTP_2;
            Response::new(full(if h2 { "secure h2" } else { "secure h1" }))
        },
    )
    .await;

    let verified = Proxy::run(
        &format!("https://{upstream_addr}"),
        &["--upstream-ca", &cert.cert_path()],
    );
    let (parts, body) = get(&verified.url("/")).await;
    assert_eq!(parts.status, 200);
    assert_eq!(
        body, "secure h2",
        "ALPN picks h2 towards an h2-capable upstream"
    );

    // Without the CA the upstream's certificate is not trusted: 502, not a silent pass.
    let unverified = Proxy::run(&format!("https://{upstream_addr}"), &[]);
    let (parts, body) = get(&unverified.url("/")).await;
    assert_eq!(parts.status, 502, "{body:?}");
}

#[tokio::test]
async fn websocket_upgrade_is_tunnelled() {
    // A WebSocket echo server as the upstream.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
                while let Some(Ok(message)) = ws.next().await {
                    if message.is_close() {
                        break;
                    }
                    ws.send(message).await.unwrap();
                }
            });
        }
    });
    let proxy = Proxy::run(&format!("http://{upstream_addr}"), &[]);

    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut ws, response) =
        tokio_tungstenite::client_async(format!("ws://{}/socket", proxy.addr), tcp)
            .await
            .expect("WebSocket handshake through the proxy");
    assert_eq!(response.status(), 101);
    for i in 0..50 {
        let text = format!("message {i}");
        ws.send(Message::text(text.clone())).await.unwrap();
        let echoed = tokio::time::timeout(WAIT, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echoed, Message::text(text));
    }
    let binary = vec![7u8; 200_000];
    ws.send(Message::binary(binary.clone())).await.unwrap();
    let echoed = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echoed.into_data().as_ref(), &binary[..]);
    ws.close(None).await.unwrap();
}

/// A deterministic pattern, so corruption or reordering is caught cheaply.
fn pattern() -> Bytes {
    Bytes::from((0..64 * 1024).map(|i| (i % 251) as u8).collect::<Vec<u8>>())
}

#[tokio::test]
async fn a_gibibyte_streams_up_and_down_with_flat_memory() {
    const CHUNKS: usize = 16 * 1024; // × 64 KiB = 1 GiB
    let proxy = Proxy::run(&format!("http://{}", echo_upstream().await), &[]);
    let rss_before = proxy.rss_kib();

    let chunk = pattern();
    let upload = StreamBody::new(futures_util::stream::iter((0..CHUNKS).map(move |_| {
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(chunk.clone()))
    })));
    let request = Request::post(proxy.url("/big"))
        .header("content-type", "application/octet-stream")
        .body(BodyExt::boxed(upload))
        .unwrap();
    let response = client().request(request).await.unwrap();
    assert_eq!(response.status(), 200);

    // Check every byte against the pattern as it streams back.
    let expected = pattern();
    let mut body = response.into_body();
    let mut offset = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap();
        let Some(mut data) = frame.data_ref().map(|d| &d[..]) else {
            continue;
        };
        while !data.is_empty() {
            let at = offset % expected.len();
            let n = data.len().min(expected.len() - at);
            assert!(
                data[..n] == expected[at..at + n],
                "corrupt data at byte {offset}"
            );
            data = &data[n..];
            offset += n;
        }
    }
    assert_eq!(offset, CHUNKS * 64 * 1024);

    let peak = proxy.peak_rss_kib();
    assert!(
        peak < rss_before + 48 * 1024,
        "memory grew with the body: {rss_before} KiB idle, {peak} KiB peak"
    );
}
