//! `licensegate dev` through the real binary: a dev server behind the
//! proxy with a development license from a file, hot-reload WebSockets, and
//! plan switches while the same process keeps serving.

mod common;

use std::net::SocketAddr;
use std::path::Path;

use common::*;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use licensegate::license::issue::{sign, SigningKey};
use licensegate::license::validate::unix_now;
use licensegate::license::Algorithm;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// `licensegate dev` on ephemeral loopback ports in front of `upstream`.
fn dev(upstream: SocketAddr, args: &[&str]) -> Proxy {
    let upstream = format!("http://{upstream}");
    let mut all = vec![
        "dev",
        "--upstream",
        &upstream,
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
    ];
    all.extend_from_slice(args);
    Proxy::spawn(&all).expect("licensegate dev starts")
}

/// Stop gracefully, so the dev directory (key, license) is removed.
fn stop(mut proxy: Proxy) {
    proxy.signal("TERM");
    assert!(proxy.wait_exit().success());
}

/// A dev server like Vite's: pages over HTTP and, on the same port, a
/// WebSocket that echoes every message (the hot-reload channel).
async fn dev_server() -> SocketAddr {
    upstream(|mut request: Request<Incoming>| async move {
        let Some(key) = request.headers().get("sec-websocket-key") else {
            return Response::new(full(format!("page {}", request.uri().path())));
        };
        let accept = derive_accept_key(key.as_bytes());
        let upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            let upgraded = upgrade.await.expect("the 101 upgrades the connection");
            let mut ws =
                WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
            while let Some(Ok(message)) = ws.next().await {
                if message.is_close() {
                    break;
                }
                ws.send(message).await.unwrap();
            }
        });
        Response::builder()
            .status(101)
            .header("upgrade", "websocket")
            .header("connection", "upgrade")
            .header("sec-websocket-accept", accept)
            .body(empty())
            .unwrap()
    })
    .await
}

/// GET `path` through the proxy without any Authorization header.
async fn plain_get(proxy: &Proxy, path: &str) -> (u16, Value) {
    let (parts, body) = get(&proxy.url(path)).await;
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (parts.status.as_u16(), json)
}

async fn post_dev_license(proxy: &Proxy, body: &str) -> (http::response::Parts, Value) {
    let (parts, body) = send(
        Request::post(proxy.admin_url("/dev/license"))
            .header("content-type", "application/json")
            .body(full(body.to_owned()))
            .unwrap(),
    )
    .await;
    let json =
        serde_json::from_slice(&body).unwrap_or_else(|e| panic!("JSON answer: {e}: {body:?}"));
    (parts, json)
}

/// Run `licensegate dev switch --admin ADMIN ARGS`; exit status, stdout, stderr.
async fn switch(proxy: &Proxy, args: &[&str]) -> (i32, String, String) {
    let mut all = vec![
        "dev".to_owned(),
        "switch".to_owned(),
        "--admin".to_owned(),
        proxy.admin.to_string(),
    ];
    all.extend(args.iter().map(|a| (*a).to_owned()));
    tokio::task::spawn_blocking(move || {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_licensegate"))
            .args(&all)
            .output()
            .unwrap();
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn hot_reload_websockets_and_pages_pass_without_an_authorization_header() {
    let dir = tempfile::tempdir().unwrap();
    // Licensed routes, none of them with `websocket: true`.
    let policy = write_file(
        dir.path(),
        "app.yaml",
        "unmatched: licensed\n\
         routes:\n  \
           - {name: admin, path: /admin/**, access: deny}\n  \
           - {name: app, path: /app/**}\n",
    );
    let proxy = dev(dev_server().await, &["--policy", policy.to_str().unwrap()]);

    let (status, _) = plain_get(&proxy, "/app/index.html").await;
    assert_eq!(
        status, 200,
        "the license comes from the file, not the browser"
    );

    // Vite opens its socket on `/` (unmatched here), Next on a path of its own.
    for path in ["/", "/app/_next/webpack-hmr"] {
        let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        let (mut ws, response) =
            tokio_tungstenite::client_async(format!("ws://{}{path}", proxy.addr), tcp)
                .await
                .unwrap_or_else(|e| panic!("WebSocket handshake on {path}: {e}"));
        assert_eq!(response.status(), 101);
        ws.send(Message::text("update main.js")).await.unwrap();
        let echoed = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("an echo within the test bound")
            .unwrap()
            .unwrap();
        assert_eq!(echoed, Message::text("update main.js"));
        ws.close(None).await.unwrap();
    }

    // Tunnels widen nothing else: a route the policy denies stays denied.
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    match tokio_tungstenite::client_async(format!("ws://{}/admin/ws", proxy.addr), tcp).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403)
        }
        other => panic!("a denied route upgraded: {other:?}"),
    }
    stop(proxy);
}

/// Routes: `/reports/**` needs feature `reports`, which only plan `pro` has.
fn plans_policy(dir: &Path) -> std::path::PathBuf {
    write_file(
        dir,
        "plans.yaml",
        "unmatched: licensed\n\
         plans:\n  \
           free: {features: []}\n  \
           pro: {features: [reports]}\n\
         routes:\n  \
           - {name: reports, path: /reports/**, features: [reports]}\n",
    )
}

#[tokio::test]
async fn switching_plans_applies_at_once_in_the_same_process() {
    let dir = tempfile::tempdir().unwrap();
    let policy = plans_policy(dir.path());
    let proxy = dev(
        echo_upstream().await,
        &["--policy", policy.to_str().unwrap(), "--plan", "pro"],
    );
    let pid = proxy.pid();

    let (status, seen) = plain_get(&proxy, "/reports/q3").await;
    assert_eq!(status, 200);
    assert_eq!(seen["headers"]["x-license-plan"], json!(["pro"]), "{seen}");

    let (code, stdout, stderr) = switch(&proxy, &["--plan", "free"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("plan `free`"), "{stdout}");
    // The switch answered once the new license was in force: no waiting.
    let (status, problem) = plain_get(&proxy, "/reports/q3").await;
    assert_eq!(status, 403, "{problem}");
    assert_eq!(problem["reason"], "feature_not_licensed");

    // Features of its own still open the route on plan `free`.
    let (code, _, stderr) = switch(&proxy, &["--features", "reports"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(plain_get(&proxy, "/reports/q3").await.0, 200);

    let (code, _, stderr) = switch(&proxy, &["--plan", "pro", "--features", ""]).await;
    assert_eq!(code, 0, "{stderr}");
    let (status, seen) = plain_get(&proxy, "/reports/q3").await;
    assert_eq!(status, 200);
    assert_eq!(seen["headers"]["x-license-plan"], json!(["pro"]), "{seen}");

    // The file holds what is in force, and the admin port says so.
    let (parts, body) = get(&proxy.admin_url("/dev/license")).await;
    assert_eq!(parts.status, 200);
    let current: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(current["plan"], "pro");
    assert_eq!(current["features"], json!([]));
    assert_eq!(current["switchable"], true);
    let file = current["license_file"].as_str().unwrap();
    let token = std::fs::read_to_string(file).unwrap();
    assert_eq!(token.split('.').count(), 3, "{token}");

    // A plan the policy does not define is refused, naming the ones it does.
    let (code, _, stderr) = switch(&proxy, &["--plan", "porr"]).await;
    assert_eq!(code, 1);
    assert!(stderr.contains("free, pro"), "{stderr}");
    assert_eq!(plain_get(&proxy, "/reports/q3").await.0, 200);

    assert_eq!(proxy.pid(), pid);
    stop(proxy);
}

#[tokio::test]
async fn the_switch_endpoint_refuses_unknown_fields_and_exists_only_in_dev_mode() {
    let dir = tempfile::tempdir().unwrap();
    let policy = plans_policy(dir.path());
    let proxy = dev(
        echo_upstream().await,
        &["--policy", policy.to_str().unwrap(), "--plan", "pro"],
    );
    let (parts, problem) = post_dev_license(&proxy, r#"{"plan": "free", "seats": 9}"#).await;
    assert_eq!(parts.status, 400, "{problem}");
    assert_eq!(
        parts.headers["content-type"], "application/problem+json",
        "{problem}"
    );
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains("unknown field `seats`"), "{detail}");
    // Nothing changed.
    assert_eq!(plain_get(&proxy, "/reports/q3").await.0, 200);

    let (parts, problem) = post_dev_license(&proxy, r#"{"features": ["a,b"]}"#).await;
    assert_eq!(parts.status, 400, "{problem}");

    // A web page open in the developer's browser can reach the loopback
    // admin port; its requests carry `Origin` and are refused.
    for (name, value) in [
        ("origin", "http://evil.example"),
        ("sec-fetch-site", "cross-site"),
    ] {
        let (parts, _) = send(
            Request::post(proxy.admin_url("/dev/license"))
                .header(name, value)
                .body(full(r#"{"plan": "free"}"#))
                .unwrap(),
        )
        .await;
        assert_eq!(parts.status, 403, "{name}");
        let (parts, _) = send(
            Request::post(proxy.admin_url("/shutdown"))
                .header(name, value)
                .body(full(""))
                .unwrap(),
        )
        .await;
        assert_eq!(parts.status, 403, "{name}");
    }
    assert_eq!(plain_get(&proxy, "/reports/q3").await.0, 200);

    let (parts, answer) = post_dev_license(&proxy, r#"{"plan": "free"}"#).await;
    assert_eq!(parts.status, 200, "{answer}");
    assert_eq!(answer["plan"], "free");
    assert!(
        answer["exp"].as_u64().unwrap() > unix_now() + 3600,
        "{answer}"
    );
    stop(proxy);

    // `licensegate run` has no dev license to switch.
    let run = Proxy::run(&format!("http://{}", echo_upstream().await), &[]);
    let (parts, _) = send(
        Request::post(run.admin_url("/dev/license"))
            .body(full(r#"{"plan": "free"}"#))
            .unwrap(),
    )
    .await;
    assert_eq!(parts.status, 404);
}

#[tokio::test]
async fn it_refuses_to_listen_beyond_loopback_unless_told() {
    let upstream = format!("http://{}", closed_port());
    for (flag, other) in [("--listen", "--admin"), ("--admin", "--listen")] {
        let args = [
            "dev",
            "--upstream",
            &upstream,
            flag,
            "0.0.0.0:0",
            other,
            "127.0.0.1:0",
        ];
        let Err((status, stderr)) = Proxy::spawn(&args) else {
            panic!("licensegate dev started on {flag} 0.0.0.0:0");
        };
        assert_eq!(status.code(), Some(64), "{stderr}");
        assert!(stderr.contains("development tool"), "{stderr}");
        assert!(stderr.contains("--allow-non-loopback"), "{stderr}");
        assert!(stderr.contains(flag), "{stderr}");
    }
}

#[tokio::test]
async fn with_its_own_license_file_it_serves_but_refuses_to_switch() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate(Algorithm::EdDSA).unwrap();
    let keys = write_file(dir.path(), "vendor-1.pem", &key.public_key_pem());
    let now = unix_now();
    let claims = json!({
        "iss": "https://vendor.test", "sub": "acme-dev", "iat": now, "nbf": now,
        "exp": now + 3600, "lic": {"plan": "pro", "features": []},
    });
    let license = write_file(dir.path(), "license.jwt", &sign(&claims, &key, "vendor-1"));
    let policy = plans_policy(dir.path());
    let proxy = dev(
        echo_upstream().await,
        &[
            "--policy",
            policy.to_str().unwrap(),
            "--license",
            license.to_str().unwrap(),
            "--keys",
            keys.to_str().unwrap(),
        ],
    );
    let (status, seen) = plain_get(&proxy, "/reports/q3").await;
    assert_eq!(status, 200);
    assert_eq!(
        seen["headers"]["x-license-id"],
        json!(["acme-dev"]),
        "{seen}"
    );

    let (parts, problem) = post_dev_license(&proxy, r#"{"plan": "free"}"#).await;
    assert_eq!(parts.status, 409, "{problem}");
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains("--license"), "{detail}");
    assert!(detail.contains("cannot re-sign"), "{detail}");

    let (code, _, stderr) = switch(&proxy, &["--plan", "free"]).await;
    assert_eq!(code, 1);
    assert!(stderr.contains("cannot re-sign"), "{stderr}");
    // Still the developer's license, plan `pro`.
    assert_eq!(plain_get(&proxy, "/reports/q3").await.0, 200);
    let (_, body) = get(&proxy.admin_url("/dev/license")).await;
    let current: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(current["switchable"], false);
    assert_eq!(current["plan"], "pro");
    stop(proxy);
}

#[tokio::test]
async fn switch_says_when_no_dev_proxy_is_running() {
    let admin = closed_port();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_licensegate"))
        .args([
            "dev",
            "switch",
            "--admin",
            &admin.to_string(),
            "--plan",
            "free",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(69), "EX_UNAVAILABLE: {stderr}");
    assert!(
        stderr.contains(&format!("no licensegate dev running on {admin}")),
        "{stderr}"
    );
}
