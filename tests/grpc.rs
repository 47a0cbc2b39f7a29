//! gRPC through the real binary, with the real gRPC implementation most
//! clients use (grpcio): a gRPC server behind `licensegate run
//! --upstream-protocol http2`, a gRPC client in front. Allowed calls reach
//! the server; every denial is a gRPC status the client reads (code,
//! message, `ErrorInfo`, `RetryInfo`), and never reaches the server.
//!
//! One Python process per test serves and calls: it prints its server's
//! port, reads the calls to make as one JSON line, makes them and prints
//! one JSON line per call, then the methods its server saw.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use common::*;
use licensegate::license::issue::{sign, SigningKey};
use licensegate::license::validate::unix_now;
use licensegate::license::Algorithm;
use serde_json::{json, Value};

const ISSUER: &str = "https://vendor.test";

/// The server answers every method: unary calls echo the request with a
/// prefix, server-streaming ones (methods named `Stream…`) send three
/// messages. Messages are raw bytes (no serializers): no generated code,
/// no protoc.
const SCRIPT: &str = r#"
import json, sys, threading
from concurrent import futures
import grpc
from grpc_status import rpc_status
from google.rpc import error_details_pb2

seen, lock = [], threading.Lock()

def unary(request, context):
    return b"answer:" + request

def stream(request, context):
    for i in range(3):
        yield b"part%d:" % i + request

class Handler(grpc.GenericRpcHandler):
    def service(self, details):
        with lock:
            seen.append(details.method)
        name = details.method.rsplit("/", 1)[-1]
        if name.startswith("Stream"):
            return grpc.unary_stream_rpc_method_handler(stream)
        return grpc.unary_unary_rpc_method_handler(unary)

server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
server.add_generic_rpc_handlers((Handler(),))
port = server.add_insecure_port("127.0.0.1:0")
server.start()
print(json.dumps({"port": port}), flush=True)

calls = json.loads(sys.stdin.readline())
channels = {}
for call in calls:
    target = call["target"]
    channel = channels.get(target) or channels.setdefault(target, grpc.insecure_channel(target))
    metadata = [tuple(pair) for pair in call.get("metadata", [])]
    out = {"name": call["name"]}
    try:
        if call["method"].rsplit("/", 1)[-1].startswith("Stream"):
            rpc = channel.unary_stream(call["method"])
            out["responses"] = [r.decode() for r in rpc(b"hi", metadata=metadata, timeout=10)]
        else:
            rpc = channel.unary_unary(call["method"])
            out["responses"] = [rpc(b"hi", metadata=metadata, timeout=10).decode()]
        out["code"] = "OK"
    except grpc.RpcError as error:
        out["code"] = error.code().name
        out["message"] = error.details()
        status = rpc_status.from_call(error)
        if status is not None:
            out["status_code"] = status.code
            for detail in status.details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    out["error_info"] = {"reason": info.reason, "domain": info.domain,
                                         "metadata": dict(info.metadata)}
                elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                    retry = error_details_pb2.RetryInfo()
                    detail.Unpack(retry)
                    out["retry_delay"] = retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
                else:
                    out.setdefault("other_details", []).append(detail.type_url)
    print(json.dumps(out), flush=True)

server.stop(None)
with lock:
    print(json.dumps({"seen": seen}), flush=True)
"#;

/// The Python with grpcio, or `None` (skipped loudly; a failure under
/// `LICENSEGATE_REQUIRE_TOOLS=1`).
fn python() -> Option<PathBuf> {
    let python = tools::tool(
        "python3",
        "LICENSEGATE_PYTHON",
        &["target/ci-tools/bin/python3"],
        "python3 with `pip install grpcio grpcio-status`",
    )?;
    let ready = Command::new(&python)
        .args(["-c", "import grpc, grpc_status"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ready {
        skip(&format!(
            "grpcio is not installed for {} (pip install grpcio grpcio-status); .ci/run installs it",
            python.display()
        ));
        return None;
    }
    Some(python)
}

/// The Python gRPC server, started, waiting for its calls.
struct Grpc {
    child: Child,
    port: u16,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Grpc {
    fn start(python: &PathBuf) -> Grpc {
        let mut child = Command::new(python)
            .args(["-c", SCRIPT])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        let port = first["port"].as_u64().expect("the server's port") as u16;
        Grpc { child, port, lines }
    }

    fn upstream(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Make `calls`; each call's outcome by name, and the methods the
    /// server saw.
    fn call(mut self, calls: Value) -> (Vec<Value>, Vec<String>) {
        let count = calls.as_array().unwrap().len();
        let mut stdin = self.child.stdin.take().unwrap();
        writeln!(stdin, "{calls}").unwrap();
        drop(stdin);
        let mut outcomes = Vec::new();
        for _ in 0..count {
            let line = self.lines.next().expect("an outcome per call").unwrap();
            outcomes.push(serde_json::from_str(&line).unwrap());
        }
        let last: Value = serde_json::from_str(&self.lines.next().unwrap().unwrap()).unwrap();
        let seen = last["seen"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_str().unwrap().to_owned())
            .collect();
        assert!(self.child.wait().unwrap().success());
        (outcomes, seen)
    }
}

impl Drop for Grpc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Setup {
    dir: tempfile::TempDir,
    key: SigningKey,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("keys")).unwrap();
        let key = SigningKey::generate(Algorithm::EdDSA).unwrap();
        std::fs::write(dir.path().join("keys/k1.pem"), key.public_key_pem()).unwrap();
        Setup { dir, key }
    }

    fn token(&self, features: &[&str]) -> String {
        let now = unix_now() as i64;
        sign(
            &json!({
                "iss": ISSUER, "sub": "tenant-1", "aud": "api",
                "iat": now - 60, "nbf": now - 60, "exp": now + 3600,
                "lic": {"plan": "custom", "features": features},
            }),
            &self.key,
            "k1",
        )
    }

    /// A proxy in front of the gRPC server at `upstream` (HTTP/2 cleartext).
    fn proxy(&self, upstream: &str, policy: &str) -> Proxy {
        let policy = write_file(self.dir.path(), "policy.yaml", policy);
        let config = write_file(
            self.dir.path(),
            "licensegate.yaml",
            &format!(
                "upstream:\n  url: http://{upstream}\nworkers: 2\n\
                 license:\n  keys: {}\n  issuer: {ISSUER}\n  audience: api\n  source: header\n\
                 policy:\n  paths: [{}]\n",
                self.dir.path().join("keys").display(),
                policy.display()
            ),
        );
        Proxy::try_with_config(&config, &["--upstream-protocol", "http2"])
            .unwrap_or_else(|(status, logs)| panic!("licensegate did not start ({status}): {logs}"))
    }
}

/// Routes named by gRPC service and method.
const POLICY: &str = r#"
limits:
  one_per_hour: {rate: {limit: 1, per: 1h}}
routes:
  - {name: reports, grpc: {service: shop.v1.Reports}, features: [reports]}
  - {name: export, grpc: {service: shop.v1.Export, method: Run}, features: [export]}
  - {name: limited, grpc: {service: shop.v1.Limited}, limits: [one_per_hour]}
"#;

fn by_name<'a>(outcomes: &'a [Value], name: &str) -> &'a Value {
    outcomes
        .iter()
        .find(|o| o["name"] == name)
        .unwrap_or_else(|| panic!("no outcome {name}: {outcomes:?}"))
}

#[test]
fn grpc_calls_pass_or_get_grpc_statuses_and_denials_never_reach_the_server() {
    let Some(python) = python() else { return };
    let setup = Setup::new();
    let server = Grpc::start(&python);
    let proxy = setup.proxy(&server.upstream(), POLICY);
    let target = proxy.addr.to_string();
    let auth = format!("Bearer {}", setup.token(&["reports"]));
    let call = |name: &str, method: &str, auth: Option<&str>| {
        let metadata = match auth {
            Some(auth) => json!([["authorization", auth]]),
            None => json!([]),
        };
        json!({"name": name, "target": target, "method": method, "metadata": metadata})
    };
    let (outcomes, seen) = server.call(json!([
        call("unary", "/shop.v1.Reports/Get", Some(&auth)),
        call("stream", "/shop.v1.Reports/StreamRows", Some(&auth)),
        call("no_license", "/shop.v1.Reports/Get", None),
        call(
            "bad_license",
            "/shop.v1.Reports/Get",
            Some("Bearer not.a.token")
        ),
        call("feature", "/shop.v1.Export/Run", Some(&auth)),
        call("first", "/shop.v1.Limited/Get", Some(&auth)),
        call("limited", "/shop.v1.Limited/Get", Some(&auth)),
    ]));

    // Allowed calls pass, unary and server streaming, answered upstream.
    assert_eq!(by_name(&outcomes, "unary")["code"], "OK", "{outcomes:?}");
    assert_eq!(
        by_name(&outcomes, "unary")["responses"],
        json!(["answer:hi"])
    );
    assert_eq!(
        by_name(&outcomes, "stream")["responses"],
        json!(["part0:hi", "part1:hi", "part2:hi"]),
        "{outcomes:?}"
    );
    assert_eq!(by_name(&outcomes, "first")["code"], "OK", "{outcomes:?}");

    // License failures: UNAUTHENTICATED, with our reason.
    let missing = by_name(&outcomes, "no_license");
    assert_eq!(missing["code"], "UNAUTHENTICATED", "{missing}");
    assert!(
        missing["message"]
            .as_str()
            .unwrap()
            .starts_with("license_missing: "),
        "{missing}"
    );
    assert_eq!(missing["status_code"], 16);
    assert_eq!(missing["error_info"]["reason"], "license_missing");
    assert_eq!(missing["error_info"]["domain"], "licensegate.io");
    assert_eq!(missing["error_info"]["metadata"]["route"], "reports");
    assert!(missing.get("retry_delay").is_none(), "{missing}");
    let malformed = by_name(&outcomes, "bad_license");
    assert_eq!(malformed["code"], "UNAUTHENTICATED", "{malformed}");
    assert_eq!(malformed["error_info"]["reason"], "license_malformed");

    // A feature the license lacks: PERMISSION_DENIED.
    let feature = by_name(&outcomes, "feature");
    assert_eq!(feature["code"], "PERMISSION_DENIED", "{feature}");
    assert_eq!(feature["error_info"]["reason"], "feature_not_licensed");
    assert_eq!(feature["error_info"]["metadata"]["route"], "export");
    assert!(
        feature["message"].as_str().unwrap().contains("export"),
        "{feature}"
    );

    // A rate limit: RESOURCE_EXHAUSTED (not UNAVAILABLE, which clients
    // retry), naming the limit and when to come back.
    let limited = by_name(&outcomes, "limited");
    assert_eq!(limited["code"], "RESOURCE_EXHAUSTED", "{limited}");
    assert_eq!(limited["status_code"], 8);
    assert_eq!(
        limited["error_info"],
        json!({"reason": "rate_limited", "domain": "licensegate.io",
               "metadata": {"route": "limited", "limit": "one_per_hour"}})
    );
    // RetryInfo says what Retry-After and the message say.
    let delay = limited["retry_delay"].as_f64().expect("RetryInfo");
    assert!(delay >= 1.0, "{limited}");
    assert!(
        limited["message"]
            .as_str()
            .unwrap()
            .ends_with(&format!("retry in {delay} s")),
        "{limited}"
    );
    assert!(limited.get("other_details").is_none(), "{limited}");

    // Only the allowed calls reached the server.
    assert_eq!(
        seen,
        [
            "/shop.v1.Reports/Get",
            "/shop.v1.Reports/StreamRows",
            "/shop.v1.Limited/Get"
        ]
    );
}

#[test]
fn an_unreachable_upstream_is_unavailable_to_grpc_clients_and_uses_no_quota() {
    let Some(python) = python() else { return };
    let setup = Setup::new();
    let server = Grpc::start(&python);
    let policy = "
limits:
  one_a_day: {quota: {limit: 1, period: day}}
routes:
  - {name: reports, grpc: {service: shop.v1.Reports}, limits: [one_a_day]}
";
    let proxy = setup.proxy(&closed_port().to_string(), policy);
    let auth = format!("Bearer {}", setup.token(&[]));
    let call = |name: &str| {
        json!({"name": name, "target": proxy.addr.to_string(),
               "method": "/shop.v1.Reports/Get", "metadata": [["authorization", auth]]})
    };
    let (outcomes, seen) = server.call(json!([call("down"), call("again")]));
    for down in &outcomes {
        assert_eq!(down["code"], "UNAVAILABLE", "{down}");
        assert_eq!(down["error_info"]["reason"], "upstream_unavailable");
        assert_eq!(down["error_info"]["metadata"]["route"], "reports");
        assert!(
            down["message"]
                .as_str()
                .unwrap()
                .contains("refused the connection"),
            "{down}"
        );
    }
    // The first call served nothing, so its quota unit came back: the
    // second is not RESOURCE_EXHAUSTED although the answer was an HTTP 200.
    assert!(seen.is_empty());
}

#[tokio::test]
async fn grpc_web_gets_the_status_in_the_headers_of_an_empty_response() {
    let setup = Setup::new();
    let proxy = setup.proxy(&closed_port().to_string(), POLICY);
    let (parts, body) = send(
        http::Request::post(proxy.url("/shop.v1.Reports/Get"))
            .header("content-type", "application/grpc-web+proto")
            .header("x-grpc-web", "1")
            .body(full("\0\0\0\0\0"))
            .unwrap(),
    )
    .await;
    assert_eq!(parts.status, 200);
    assert!(body.is_empty());
    assert_eq!(parts.headers["content-type"], "application/grpc-web+proto");
    assert_eq!(parts.headers["grpc-status"], "16");
    let message = parts.headers["grpc-message"].to_str().unwrap();
    assert!(message.starts_with("license_missing: "), "{message}");
    assert!(parts.headers.contains_key("grpc-status-details-bin"));
    // The denial's own headers stay.
    assert!(parts.headers.contains_key("www-authenticate"));
}
