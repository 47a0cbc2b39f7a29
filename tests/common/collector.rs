//! A usage collector over real HTTPS on loopback, as a billing system's
//! ingestion endpoint behaves: it takes CloudEvents batches
//! (`application/cloudevents-batch+json`, as OpenMeter does) and Stripe meter
//! event forms, deduplicates on (`source`, `id`) (Stripe: on `identifier`),
//! and sums `data.value` per event type.
//!
//! It can be told to answer a status for the next requests (503 for a while,
//! 400 once), to take a batch and then answer 503 (the acknowledgement lost
//! on the way back) or not answer at all (the sender stuck mid-export), or
//! to be down (listener and connections closed) and up again on the same
//! port. It keeps raw deliveries apart from deduplicated ones, so a test can
//! show both, and checks what it took with the CloudEvents reference SDK.

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// How the collector answers one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// This status, without looking at the body; with `Retry-After` seconds
    /// when given.
    Status(u16, Option<u64>),
    /// Take (and count) the batch, then answer 503: an acknowledgement
    /// lost on its way back.
    TakeThen503,
    /// Take (and count) the batch, then never answer: the sender is stuck
    /// mid-export until it gives up (or dies).
    TakeThenHold,
}

#[derive(Default)]
struct State {
    /// Answers for the next requests, in order; then 200.
    script: VecDeque<Reply>,
    /// Every answer given, in order.
    statuses: Vec<u16>,
    /// Events taken, duplicates included.
    deliveries: usize,
    /// (source, id) taken.
    seen: HashSet<(String, String)>,
    /// Sum of `data.value` per type, over deduplicated events.
    totals: HashMap<String, u64>,
    /// Bodies of the CloudEvents batches taken.
    batches: Vec<Bytes>,
    /// Stripe: `Idempotency-Key` == `identifier` on every request.
    keys_match: bool,
    /// Request headers seen last.
    last_headers: Option<http::HeaderMap>,
    /// Batches taken and never answered.
    held: usize,
}

pub struct Collector {
    pub addr: SocketAddr,
    /// The PEM certificate to trust (the sink's `ca`).
    pub ca: PathBuf,
    _dir: tempfile::TempDir,
    state: Arc<Mutex<State>>,
    acceptor: tokio_rustls::TlsAcceptor,
    /// The accept loop and every connection, aborted together by `down`.
    tasks: Arc<Mutex<JoinSet<()>>>,
}

impl Collector {
    /// A collector on an ephemeral loopback port, up.
    pub async fn start() -> Collector {
        let certified = rcgen::generate_simple_self_signed(vec![
            "127.0.0.1".to_owned(),
            "localhost".to_owned(),
        ])
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("collector-ca.pem");
        std::fs::write(&ca, certified.cert.pem()).unwrap();
        let key =
            rustls_pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let collector = Collector {
            addr: listener.local_addr().unwrap(),
            ca,
            _dir: dir,
            state: Arc::new(Mutex::new(State {
                keys_match: true,
                ..State::default()
            })),
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            tasks: Arc::new(Mutex::new(JoinSet::new())),
        };
        collector.serve(listener);
        collector
    }

    /// The CloudEvents ingestion URL.
    pub fn events_url(&self) -> String {
        format!("https://{}/api/v1/events", self.addr)
    }

    /// The Stripe meter events URL.
    pub fn stripe_url(&self) -> String {
        format!("https://{}/v1/billing/meter_events", self.addr)
    }

    fn serve(&self, listener: TcpListener) {
        let acceptor = self.acceptor.clone();
        let state = Arc::clone(&self.state);
        let tasks = Arc::clone(&self.tasks);
        let connections = Arc::clone(&self.tasks);
        tasks.lock().spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let state = Arc::clone(&state);
                connections.lock().spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(move |request| {
                        let state = Arc::clone(&state);
                        async move { Ok::<_, Infallible>(handle(&state, request).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
    }

    /// Close the listener and every open connection.
    pub fn down(&self) {
        self.tasks.lock().abort_all();
    }

    /// Listen again on the same port.
    pub async fn up(&self) {
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                Err(error) if tries < 100 => {
                    // The aborted listener's socket is released as its task
                    // unwinds; the port is ours again within moments.
                    tries += 1;
                    let _ = error;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(error) => panic!("cannot listen on {} again: {error}", self.addr),
            }
        };
        self.serve(listener);
    }

    /// Answer the next requests with `replies`, in order, then 200 again.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.lock().script.extend(replies);
    }

    /// Forget what is left of the script: 200 from now on.
    pub fn clear_script(&self) {
        self.state.lock().script.clear();
    }

    /// The sum of `data.value` of deduplicated events of `kind`.
    pub fn total(&self, kind: &str) -> u64 {
        self.state.lock().totals.get(kind).copied().unwrap_or(0)
    }

    /// Distinct (source, id) taken.
    pub fn unique(&self) -> usize {
        self.state.lock().seen.len()
    }

    /// Events taken, duplicates included.
    pub fn deliveries(&self) -> usize {
        self.state.lock().deliveries
    }

    /// Every status answered, in order.
    pub fn statuses(&self) -> Vec<u16> {
        self.state.lock().statuses.clone()
    }

    /// The CloudEvents batches taken, as received.
    pub fn batches(&self) -> Vec<Bytes> {
        self.state.lock().batches.clone()
    }

    /// Whether every Stripe request's `Idempotency-Key` was its `identifier`.
    pub fn stripe_keys_match(&self) -> bool {
        self.state.lock().keys_match
    }

    pub fn last_headers(&self) -> Option<http::HeaderMap> {
        self.state.lock().last_headers.clone()
    }

    /// Batches taken and held without an answer ([`Reply::TakeThenHold`]).
    pub fn held(&self) -> usize {
        self.state.lock().held
    }

    /// Check every event taken with the CloudEvents reference SDK (Python
    /// `cloudevents`); the number checked, or `None` when the SDK is not
    /// installed (the test is skipped loudly, or fails under
    /// `LICENSEGATE_REQUIRE_TOOLS=1`).
    pub fn check_with_sdk(&self, dir: &std::path::Path) -> Option<usize> {
        let python = super::tools::tool(
            "python3",
            "LICENSEGATE_PYTHON",
            &["target/ci-tools/bin/python3"],
            "python3 with `pip install cloudevents==1.12.0`",
        )?;
        let has_sdk = std::process::Command::new(&python)
            .args(["-c", "import cloudevents.http"])
            .status()
            .is_ok_and(|s| s.success());
        if !has_sdk {
            super::skip(&format!(
                "the CloudEvents SDK is not installed for {} (pip install cloudevents==1.12.0)",
                python.display()
            ));
            return None;
        }
        let batches = dir.join("batches.json");
        let all: Vec<serde_json::Value> = self
            .batches()
            .iter()
            .map(|b| serde_json::from_slice(b).unwrap())
            .collect();
        std::fs::write(&batches, serde_json::to_vec(&all).unwrap()).unwrap();
        let output = std::process::Command::new(&python)
            .args(["-c", VALIDATE, batches.to_str().unwrap()])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stdout}\n{stderr}");
        let count = stdout
            .trim()
            .strip_suffix(" valid CloudEvents 1.0")
            .and_then(|n| n.parse().ok());
        Some(count.unwrap_or_else(|| panic!("unexpected validator output: {stdout}\n{stderr}")))
    }
}

/// Each event, through the SDK's structured-mode parser (which checks the
/// spec version and the required attributes) and back; `time` must be RFC
/// 3339 and `data` an object.
const VALIDATE: &str = r#"
import json, sys
from datetime import datetime
from cloudevents.http import from_dict, from_http, to_structured
count = 0
for batch in json.load(open(sys.argv[1])):
    for raw in batch:
        event = from_dict(raw)
        assert event["specversion"] == "1.0", raw
        for required in ("id", "source", "type", "subject", "time"):
            assert event[required], (required, raw)
        datetime.fromisoformat(event["time"].replace("Z", "+00:00"))
        assert isinstance(event.data, dict), raw
        headers, body = to_structured(event)
        again = from_http(headers, body)
        assert again["id"] == event["id"] and again.data == event.data, raw
        single = from_http({"content-type": "application/cloudevents+json"}, json.dumps(raw))
        assert single["type"] == raw["type"]
        count += 1
print(f"{count} valid CloudEvents 1.0")
"#;

fn answer(status: u16, retry_after: Option<u64>, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert("retry-after", seconds.to_string().parse().unwrap());
    }
    response
}

async fn handle(state: &Mutex<State>, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return answer(400, None, "unreadable body");
    };
    match take(state, parts, body) {
        Some(response) => response,
        None => std::future::pending().await,
    }
}

/// The answer to one request, or `None` for none at all.
fn take(
    state: &Mutex<State>,
    parts: http::request::Parts,
    body: Bytes,
) -> Option<Response<Full<Bytes>>> {
    let mut state = state.lock();
    state.last_headers = Some(parts.headers.clone());
    let reply = state.script.pop_front();
    if let Some(Reply::Status(status, retry_after)) = reply {
        state.statuses.push(status);
        return Some(answer(
            status,
            retry_after,
            &format!("scripted {status}: try later or not at all"),
        ));
    }
    let content_type = parts
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let taken = match (parts.uri.path(), content_type) {
        ("/api/v1/events", "application/cloudevents-batch+json") => take_batch(&mut state, &body),
        ("/v1/billing/meter_events", "application/x-www-form-urlencoded") => {
            let key = parts
                .headers
                .get("idempotency-key")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let bearer = parts
                .headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("Bearer "));
            if !bearer {
                Err("no bearer token".to_owned())
            } else {
                take_stripe(&mut state, &body, key)
            }
        }
        (path, content_type) => Err(format!("nothing takes {content_type} at {path}")),
    };
    let status = match (taken, reply) {
        (Err(why), _) => {
            state.statuses.push(400);
            return Some(answer(400, None, &why));
        }
        (Ok(()), Some(Reply::TakeThen503)) => 503,
        (Ok(()), Some(Reply::TakeThenHold)) => {
            state.held += 1;
            return None;
        }
        (Ok(()), _) => 200,
    };
    state.statuses.push(status);
    Some(answer(status, None, "{}"))
}

fn take_batch(state: &mut State, body: &Bytes) -> Result<(), String> {
    let events: Vec<serde_json::Value> =
        serde_json::from_slice(body).map_err(|e| format!("not a JSON array: {e}"))?;
    for event in &events {
        for field in ["specversion", "id", "source", "type"] {
            if !event[field].is_string() {
                return Err(format!("an event without `{field}`"));
            }
        }
    }
    for event in events {
        state.deliveries += 1;
        let key = (
            event["source"].as_str().unwrap().to_owned(),
            event["id"].as_str().unwrap().to_owned(),
        );
        if state.seen.insert(key) {
            let value = event["data"]["value"].as_u64().unwrap_or(1);
            *state
                .totals
                .entry(event["type"].as_str().unwrap().to_owned())
                .or_default() += value;
        }
    }
    state.batches.push(body.clone());
    Ok(())
}

fn take_stripe(state: &mut State, body: &Bytes, key: Option<String>) -> Result<(), String> {
    let form: HashMap<String, String> = form_urlencoded::parse(body).into_owned().collect();
    let field = |name: &str| {
        form.get(name)
            .cloned()
            .ok_or_else(|| format!("missing `{name}`"))
    };
    let (event_name, identifier) = (field("event_name")?, field("identifier")?);
    let value: u64 = field("payload[value]")?
        .parse()
        .map_err(|_| "payload[value] is not a number".to_owned())?;
    field("payload[stripe_customer_id]")?;
    field("timestamp")?;
    if key.as_deref() != Some(identifier.as_str()) {
        state.keys_match = false;
    }
    state.deliveries += 1;
    if state.seen.insert(("stripe".to_owned(), identifier)) {
        *state.totals.entry(event_name).or_default() += value;
    }
    Ok(())
}
