//! Live metering and fair counting through the real binary: requests
//! served by a real upstream feed their route's meters, which reach a real
//! HTTPS collector (deduplicating as OpenMeter does) exactly once — through
//! a collector outage, a `kill -9` mid-export, and three replicas sharing a
//! quota in a real Redis — and a request that was not served (a 502, a 504,
//! a 5xx from the upstream, a body cut short, a client gone before the
//! response head) costs no quota unit under `count: served` and no meter.
//!
//! Nothing sleeps to synchronise: tests wait on responses, `/metrics`, log
//! lines, the collector's state or the journal's contents, every wait
//! bounded.

mod common;
mod redis;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::collector::{Collector, Reply};
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use licensegate::license::issue::{sign, SigningKey};
use licensegate::license::validate::unix_now;
use licensegate::license::Algorithm;
use licensegate::metering::record::{self, Body as RecordBody};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, Semaphore};

const ISSUER: &str = "https://vendor.test";

/// The header the upstream reports usage in (a `{header: x-tokens}` meter).
const USAGE: &str = "x-tokens";

// ---------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------

/// The policy: a daily quota of `limit` counted as `count` says, and a
/// route feeding four meters; a route without meters whose responses carry
/// the usage header all the same.
fn policy(limit: u64, count: &str) -> String {
    format!(
        "limits:
  daily:
    quota: {{limit: {limit}, period: day}}
    count: {count}
meters:
  calls: requests
  upload: request_bytes
  download: response_bytes
  tokens: {{header: {USAGE}}}
routes:
  - name: chat
    path: /api/**
    limits: [daily]
    meters: [{{meter: calls, cost: 1}}, upload, download, tokens]
  - {{name: plain, path: /plain/**}}
"
    )
}

/// Keys, licenses and config files in one directory.
struct Bench {
    dir: tempfile::TempDir,
    key: SigningKey,
}

impl Bench {
    fn new() -> Bench {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("keys")).unwrap();
        let key = SigningKey::generate(Algorithm::EdDSA).unwrap();
        std::fs::write(dir.path().join("keys/k1.pem"), key.public_key_pem()).unwrap();
        Bench { dir, key }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// An `Authorization` value for license `sub` of customer `acme`.
    fn auth(&self, sub: &str) -> String {
        let now = unix_now() as i64;
        let token = sign(
            &json!({
                "iss": ISSUER, "sub": sub, "aud": "api",
                "iat": now - 60, "nbf": now - 60, "exp": now + 3600,
                "lic": {"plan": "pro", "customer": "acme"},
            }),
            &self.key,
            "k1",
        );
        format!("Bearer {token}")
    }

    /// `name.yaml`: the upstream, header licenses, `policy` (written
    /// beside it), metering to `collector` with its own journal and source
    /// (both named `name`) in windows of 100 ms, and `extra` top-level YAML.
    fn config(
        &self,
        name: &str,
        upstream: SocketAddr,
        policy: &str,
        collector: &Collector,
        extra: &str,
    ) -> PathBuf {
        self.config_windowed(name, upstream, policy, collector, "100ms", extra)
    }

    /// [`Bench::config`] with metering windows of `window`.
    fn config_windowed(
        &self,
        name: &str,
        upstream: SocketAddr,
        policy: &str,
        collector: &Collector,
        window: &str,
        extra: &str,
    ) -> PathBuf {
        write_file(self.path(), &format!("{name}-policy.yaml"), policy);
        write_file(
            self.path(),
            &format!("{name}.yaml"),
            &format!(
                "upstream:\n  url: http://{upstream}\nworkers: 2\n\
                 timeouts:\n  upstream_response: 500ms\n\
                 license:\n  keys: keys\n  issuer: {ISSUER}\n  audience: api\n  source: header\n\
                 policy:\n  paths: [{name}-policy.yaml]\n\
                 metering:\n  source: licensegate/{name}\n  window: {window}\n  journal: {{dir: {name}-journal}}\n  \
                 sinks:\n    - name: om\n      kind: cloudevents\n      url: {}\n      ca: {}\n      \
                 batch: 4\n      min_backoff: 20ms\n      max_backoff: 200ms\n{extra}",
                collector.events_url(),
                collector.ca.display(),
            ),
        )
    }
}

/// How the test upstream answers, by path:
/// - `/api/slow`: later than `timeouts.upstream_response` (licensegate: 504);
/// - `/api/fail`: 503, with a usage header;
/// - `/api/break`: a first chunk, then the body breaks off;
/// - `/api/hold`: not until the test ends (the arrival is announced);
/// - anything else: the request body read whole, then `x-reply-bytes`
///   bytes, with `x-report` (when sent) as the usage header.
fn answer(
    held: Arc<Semaphore>,
    arrived: mpsc::UnboundedSender<String>,
) -> impl Fn(
    Request<Incoming>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response<Body>> + Send>>
       + Clone
       + Send
       + Sync
       + 'static {
    move |request: Request<Incoming>| {
        let (held, arrived) = (Arc::clone(&held), arrived.clone());
        Box::pin(async move {
            let path = request.uri().path().to_owned();
            let header = |name: &str| {
                request
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let reply_bytes: usize = header("x-reply-bytes").map_or(0, |n| n.parse().unwrap());
            let report = header("x-report");
            let overage = header("x-licensegate-overage");
            let _ = request.into_body().collect().await;
            match path.as_str() {
                "/api/slow" => {
                    // The behaviour under test: slower than licensegate waits.
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    Response::new(full("too late"))
                }
                "/api/fail" => {
                    let mut response = Response::new(full("workload failed"));
                    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                    response.headers_mut().insert(USAGE, "500".parse().unwrap());
                    response
                }
                "/api/break" => {
                    // A first chunk goes out with the head; a moment later
                    // the body breaks off.
                    let frames = futures_util::stream::unfold(0, |step| async move {
                        match step {
                            0 => Some((Ok(Frame::data(Bytes::from_static(b"the first part"))), 1)),
                            1 => {
                                tokio::time::sleep(Duration::from_millis(200)).await;
                                let error: Box<dyn std::error::Error + Send + Sync> =
                                    "the workload broke off".into();
                                Some((Err(error), 2))
                            }
                            _ => None,
                        }
                    });
                    let body = http_body_util::StreamBody::new(frames);
                    let mut response = Response::new(BodyExt::boxed(body));
                    response.headers_mut().insert(USAGE, "7".parse().unwrap());
                    response
                }
                "/api/hold" => {
                    let _ = arrived.send(path);
                    let _ = held.acquire().await;
                    Response::new(full("released"))
                }
                _ => {
                    let mut response = Response::new(full(vec![b'r'; reply_bytes]));
                    // What licensegate told the workload about overage.
                    if let Some(overage) = &overage {
                        response
                            .headers_mut()
                            .insert("x-saw-overage", overage.parse().unwrap());
                    }
                    if let Some(report) = report {
                        response
                            .headers_mut()
                            .insert(USAGE, report.parse().unwrap());
                    }
                    response
                }
            }
        })
    }
}

/// The test upstream on `listener` (or an ephemeral port), and where it
/// announces held requests.
fn start_upstream(
    listener: tokio::net::TcpListener,
) -> (SocketAddr, mpsc::UnboundedReceiver<String>, Arc<Semaphore>) {
    let held = Arc::new(Semaphore::new(0));
    let (arrived_tx, arrived) = mpsc::unbounded_channel();
    let addr = upstream_on(listener, answer(Arc::clone(&held), arrived_tx));
    (addr, arrived, held)
}

async fn bind_any() -> tokio::net::TcpListener {
    tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()
}

/// What one request got: the status and headers, and the body or why it
/// broke off.
struct Got {
    status: u16,
    headers: http::HeaderMap,
    body: Result<Bytes, String>,
}

/// `method path` with `auth`, a body of `upload` bytes and `headers`.
async fn call(
    proxy: &Proxy,
    path: &str,
    auth: &str,
    upload: usize,
    headers: &[(&str, String)],
) -> Got {
    let mut builder = Request::post(proxy.url(path)).header("authorization", auth);
    for (name, value) in headers {
        builder = builder.header(*name, value);
    }
    let request = builder.body(full(vec![b'u'; upload])).unwrap();
    // On a task of its own: the client's futures are large, and the test's
    // future stays small (debug builds, 2 MiB test stacks).
    tokio::spawn(async move {
        let response = tokio::time::timeout(WAIT, client().request(request))
            .await
            .expect("a response within the test bound")
            .expect("a response head");
        let (parts, body) = response.into_parts();
        let body = tokio::time::timeout(WAIT, body.collect())
            .await
            .expect("the body ends within the test bound")
            .map(|b| b.to_bytes())
            .map_err(|e| format!("{e:?}"));
        Got {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        }
    })
    .await
    .unwrap()
}

/// Start `licensegate run --config config` (blocking until it listens,
/// off the runtime's task queue).
fn start(config: &Path) -> Proxy {
    tokio::task::block_in_place(|| Proxy::with_config(config))
}

/// Send `signal` and wait for the process to exit.
fn stop(mut proxy: Proxy, signal: &str) -> std::process::ExitStatus {
    proxy.signal(signal);
    tokio::task::block_in_place(|| proxy.wait_exit())
}

/// One metric from the proxy's `/metrics`, 0 when absent.
async fn metric_of(proxy: &Proxy, series: &str) -> f64 {
    let url = proxy.admin_url("/metrics");
    let page = tokio::spawn(async move { get(&url).await }).await.unwrap();
    metric(&String::from_utf8_lossy(&page.1), series).unwrap_or(0.0)
}

/// Wait (bounded) until `done`, polling every 20 ms: for state no event
/// announces (what a collector has taken, a counter in `/metrics`).
async fn until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done().await {
        assert!(Instant::now() < deadline, "not within {WAIT:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The sum of `meter` in the usage records the journal in `dir` holds,
/// read from its segment files as a crash leaves them (a record cut short
/// at the end is not counted).
fn journalled(dir: &Path, meter: &str) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut segments: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segments.sort();
    let mut total = 0;
    for segment in segments {
        let bytes = std::fs::read(&segment).unwrap();
        let mut at = licensegate::metering::journal::HEADER_LEN as usize;
        while let Ok(Some((record, used))) = record::decode(bytes.get(at..).unwrap_or_default()) {
            if let RecordBody::Usage(usage) = &record.body {
                if usage.meter == meter {
                    total += usage.value;
                }
            }
            at += used;
        }
    }
    total
}

/// Every meter's total at `collector`, in the policy's order.
fn totals(collector: &Collector) -> [u64; 4] {
    ["calls", "upload", "download", "tokens"].map(|meter| collector.total(meter))
}

fn report(test: &str, collector: &Collector) {
    eprintln!(
        "{test}: totals {:?}; raw deliveries {}, after dedupe {}",
        totals(collector),
        collector.deliveries(),
        collector.unique()
    );
}

// ---------------------------------------------------------------------------
// Meters
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_responses_feed_every_meter_exactly_and_the_usage_header_stays_inside() {
    let collector = Collector::start().await;
    let (upstream, _arrived, _held) = start_upstream(bind_any().await);
    let bench = Bench::new();
    let proxy = start(&bench.config("meters", upstream, &policy(1000, "served"), &collector, ""));
    let auth = bench.auth("lic-meters");

    let mut expected = [0u64; 4];
    for i in 0..12u64 {
        let (upload, download) = (100 + i as usize, 50 * i as usize);
        let got = call(
            &proxy,
            &format!("/api/chat/{i}"),
            &auth,
            upload,
            &[
                ("x-reply-bytes", download.to_string()),
                ("x-report", i.to_string()),
            ],
        )
        .await;
        assert_eq!(got.status, 200);
        assert_eq!(got.body.unwrap().len(), download);
        assert!(
            !got.headers.contains_key(USAGE),
            "the usage header reached the client"
        );
        expected[0] += 1;
        expected[1] += upload as u64;
        expected[2] += download as u64;
        expected[3] += i;
    }
    // A usage header that is not a whole number, and one that is absent:
    // served all the same, the meter counts 0 for them.
    for report in [Some("lots"), None] {
        let mut headers = vec![("x-reply-bytes", "9".to_owned())];
        headers.extend(report.map(|r| ("x-report", r.to_owned())));
        let got = call(&proxy, "/api/odd", &auth, 3, &headers).await;
        assert_eq!(got.status, 200);
        assert!(!got.headers.contains_key(USAGE));
        expected[0] += 1;
        expected[1] += 3;
        expected[2] += 9;
    }
    assert_eq!(
        metric_of(&proxy, "licensegate_metering_bad_usage_headers_total").await,
        2.0
    );
    // A route without meters, and a 5xx: the header is removed all the
    // same, and neither is metered.
    let got = call(&proxy, "/plain/x", &auth, 1, &[("x-report", "5".into())]).await;
    assert_eq!(got.status, 200);
    assert!(!got.headers.contains_key(USAGE));
    let got = call(&proxy, "/api/fail", &auth, 1, &[]).await;
    assert_eq!(got.status, 503);
    assert!(!got.headers.contains_key(USAGE));

    until("every meter at the collector", async || {
        totals(&collector) == expected
    })
    .await;
    report("served_responses_feed_every_meter_exactly", &collector);
    // `/usage` shows this month's meters of the license as recorded here.
    let url = proxy.admin_url("/usage?license=lic-meters");
    let (_, body) = tokio::spawn(async move { get(&url).await }).await.unwrap();
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let meters = &answer["licenses"][0]["meters"];
    let used = |name: &str| {
        meters
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["meter"] == name)
            .map(|m| m["used"].as_u64().unwrap())
    };
    assert_eq!(used("calls"), Some(expected[0]), "{answer}");
    assert_eq!(used("download"), Some(expected[2]), "{answer}");
    // A graceful stop journals nothing more: the totals stay.
    assert!(stop(proxy, "TERM").success());
    assert_eq!(totals(&collector), expected);
    assert_eq!(expected[0], 14);
    // The events name the license's customer as their subject.
    let batch: Vec<serde_json::Value> = serde_json::from_slice(&collector.batches()[0]).unwrap();
    assert_eq!(batch[0]["subject"], "acme");
    assert_eq!(batch[0]["source"], "licensegate/meters");
    if let Some(checked) = collector.check_with_sdk(bench.path()) {
        assert_eq!(checked, collector.deliveries());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_waits_out_a_collector_that_is_down() {
    let collector = Collector::start().await;
    collector.down();
    let (upstream, _arrived, _held) = start_upstream(bind_any().await);
    let bench = Bench::new();
    let proxy = start(&bench.config("outage", upstream, &policy(1000, "served"), &collector, ""));
    // Ready while the collector is down: billing never gates traffic.
    let url = proxy.admin_url("/readyz");
    let (parts, _) = tokio::spawn(async move { get(&url).await }).await.unwrap();
    assert_eq!(parts.status, 200);
    let auth = bench.auth("lic-outage");
    for i in 0..10 {
        let got = call(
            &proxy,
            &format!("/api/{i}"),
            &auth,
            10,
            &[("x-report", "2".into())],
        )
        .await;
        assert_eq!(got.status, 200);
    }
    until("an export attempt failed", async || {
        metric_of(
            &proxy,
            r#"licensegate_metering_sink_errors_total{kind="network",sink="om"}"#,
        )
        .await
            >= 1.0
    })
    .await;
    assert_eq!(collector.unique(), 0);
    collector.up().await;
    until("every unit at the collector", async || {
        totals(&collector) == [10, 100, 0, 20]
    })
    .await;
    until("the backlog drained", async || {
        metric_of(&proxy, r#"licensegate_metering_backlog_records{sink="om"}"#).await == 0.0
    })
    .await;
    report("usage_waits_out_a_collector_that_is_down", &collector);
    assert_eq!(totals(&collector), [10, 100, 0, 20]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_mid_export_then_a_restart_loses_nothing_and_bills_nothing_twice() {
    let collector = Collector::start().await;
    // The first batch is taken, and never acknowledged.
    collector.script([Reply::TakeThenHold]);
    let (upstream, _arrived, _held) = start_upstream(bind_any().await);
    let bench = Bench::new();
    let config = bench.config("crash", upstream, &policy(1000, "served"), &collector, "");
    let first = start(&config);
    let auth = bench.auth("lic-crash");
    let journal = bench.path().join("crash-journal");
    // In five windows, so the journal holds more than the held batch.
    const N: u64 = 25;
    for i in 0..N {
        let got = call(
            &first,
            &format!("/api/{i}"),
            &auth,
            4,
            &[("x-reply-bytes", "6".into()), ("x-report", "1".into())],
        )
        .await;
        assert_eq!(got.status, 200);
        if i % 5 == 4 {
            until("the window journalled", async || {
                journalled(&journal, "calls") == i + 1
            })
            .await;
        }
    }
    until("a batch taken and held", async || collector.held() == 1).await;
    assert!(collector.unique() > 0);
    assert!(!stop(first, "KILL").success());
    let taken_before = collector.deliveries();

    let second = start(&config);
    until("every unit at the collector", async || {
        totals(&collector) == [N, 4 * N, 6 * N, N]
    })
    .await;
    until("the backlog drained", async || {
        metric_of(
            &second,
            r#"licensegate_metering_backlog_records{sink="om"}"#,
        )
        .await
            == 0.0
    })
    .await;
    report("a_kill_mid_export", &collector);
    assert!(
        collector.deliveries() > collector.unique(),
        "what the first process had sent but not had acknowledged is sent again ({taken_before} taken before)"
    );
    // Deduplicated: not one unit twice.
    assert_eq!(totals(&collector), [N, 4 * N, 6 * N, N]);
    drop(second);
    if let Some(checked) = collector.check_with_sdk(bench.path()) {
        assert_eq!(checked, collector.deliveries());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_journals_the_open_window() {
    let collector = Collector::start().await;
    collector.down();
    let (upstream, _arrived, _held) = start_upstream(bind_any().await);
    let bench = Bench::new();
    // A window that does not close while the test runs: only the stop
    // journals it.
    let config = bench.config_windowed(
        "stop",
        upstream,
        &policy(1000, "served"),
        &collector,
        "1h",
        "",
    );
    let proxy = start(&config);
    let auth = bench.auth("lic-stop");
    for i in 0..7 {
        assert_eq!(
            call(&proxy, &format!("/api/{i}"), &auth, 1, &[])
                .await
                .status,
            200
        );
    }
    let journal = bench.path().join("stop-journal");
    assert_eq!(journalled(&journal, "calls"), 0);
    assert!(stop(proxy, "TERM").success());
    assert_eq!(journalled(&journal, "calls"), 7);
    // Exported by the next start.
    collector.up().await;
    let _next = start(&config);
    until("the stopped process's usage at the collector", async || {
        collector.total("calls") == 7
    })
    .await;
}

// ---------------------------------------------------------------------------
// Fair counting
// ---------------------------------------------------------------------------

/// Requests that were not served, then served ones until the quota says
/// no, under `count`; returns (served before the 429, collector's `calls`).
async fn unserved_then_served(count: &str) -> (u64, u64, String) {
    const LIMIT: u64 = 10;
    let collector = Collector::start().await;
    let bench = Bench::new();
    // Nothing listens on the upstream's port at first: 502.
    let closed = closed_port();
    let config = bench.config(count, closed, &policy(LIMIT, count), &collector, "");
    let proxy = start(&config);
    let auth = bench.auth("lic-fair");
    for _ in 0..2 {
        let got = call(&proxy, "/api/chat", &auth, 1, &[]).await;
        assert_eq!(got.status, 502, "{:?}", got.body);
    }
    // The upstream comes up on that port.
    let listener = tokio::net::TcpListener::bind(closed).await.unwrap();
    let (_, mut arrived, _held) = start_upstream(listener);
    // Slower than `timeouts.upstream_response`: 504.
    assert_eq!(call(&proxy, "/api/slow", &auth, 1, &[]).await.status, 504);
    // The upstream's own 5xx.
    assert_eq!(call(&proxy, "/api/fail", &auth, 1, &[]).await.status, 503);
    // A body that breaks off.
    let got = call(&proxy, "/api/break", &auth, 1, &[]).await;
    assert_eq!(got.status, 200);
    assert!(got.body.is_err(), "the body was cut short: {:?}", got.body);
    // A client that goes away before the response head.
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(
            format!("GET /api/hold HTTP/1.1\r\nHost: app.local\r\nAuthorization: {auth}\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let path = tokio::time::timeout(WAIT, arrived.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(path, "/api/hold");
    drop(stream);
    if count == "served" {
        until("the client's unit given back", async || {
            metric_of(
                &proxy,
                r#"licensegate_quota_refunds_total{reason="client_gone"}"#,
            )
            .await
                == 1.0
        })
        .await;
    }
    let mut served = 0;
    loop {
        let got = call(&proxy, "/api/chat", &auth, 1, &[("x-report", "1".into())]).await;
        match got.status {
            200 => served += 1,
            429 => break,
            other => panic!("unexpected {other}: {:?}", got.body),
        }
        assert!(served <= LIMIT, "more served than the quota allows");
    }
    until("the served requests at the collector", async || {
        collector.total("calls") == served
    })
    .await;
    let url = proxy.admin_url("/metrics");
    let page = tokio::spawn(async move { get(&url).await })
        .await
        .unwrap()
        .1;
    let page = String::from_utf8_lossy(&page).into_owned();
    let refunds = ["upstream_error", "incomplete", "client_gone"]
        .map(|reason| {
            let series = format!(r#"licensegate_quota_refunds_total{{reason="{reason}"}}"#);
            format!("{reason}={}", metric(&page, &series).unwrap_or(0.0))
        })
        .join(" ");
    (served, collector.total("calls"), refunds)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_count_served_what_was_not_served_costs_no_quota_unit_and_no_meter() {
    let (served, metered, refunds) = unserved_then_served("served").await;
    eprintln!("served: {served} served, {metered} metered; refunds {refunds}");
    // Two 502s, a 504, a 503, a broken body and a client gone: the whole
    // quota is left for requests that are served.
    assert_eq!(served, 10);
    assert_eq!(metered, 10);
    assert_eq!(refunds, "upstream_error=4 incomplete=1 client_gone=1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_count_attempted_every_allowed_request_costs_its_unit() {
    let (served, metered, refunds) = unserved_then_served("attempted").await;
    eprintln!("attempted: {served} served, {metered} metered; refunds {refunds}");
    // The six that were not served took six of the ten units; meters count
    // only what was served, whatever the quota counts.
    assert_eq!(served, 4);
    assert_eq!(metered, 4);
    assert_eq!(refunds, "upstream_error=0 incomplete=0 client_gone=0");
}

// ---------------------------------------------------------------------------
// Replicas
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_sharing_a_quota_in_redis_bill_exactly_what_they_served() {
    if !redis::available() {
        return;
    }
    let Some(redis) = redis::Redis::start() else {
        return;
    };
    const LIMIT: u64 = 30;
    let collector = Collector::start().await;
    let (upstream, _arrived, _held) = start_upstream(bind_any().await);
    let bench = Bench::new();
    let store = format!(
        "store:\n  url: {}\n  timeout: 250ms\n  replicas: 3\n",
        redis.url()
    );
    let replicas: Vec<Proxy> = (0..3)
        .map(|i| {
            start(&bench.config(
                &format!("replica-{i}"),
                upstream,
                &policy(LIMIT, "served"),
                &collector,
                &store,
            ))
        })
        .collect();
    for replica in &replicas {
        tokio::task::block_in_place(|| replica.wait_for_log("shared counter store connected"));
    }
    let auth = bench.auth("lic-shared");
    // The workload fails once behind each replica: those units go back to
    // the store.
    for replica in &replicas {
        assert_eq!(call(replica, "/api/fail", &auth, 1, &[]).await.status, 503);
    }
    let mut served = [0u64; 3];
    let mut refused = 0;
    for n in 0..45 {
        let i = n % 3;
        let got = call(
            &replicas[i],
            &format!("/api/{n}"),
            &auth,
            2,
            &[("x-report", "3".into())],
        )
        .await;
        match got.status {
            200 => served[i] += 1,
            429 => refused += 1,
            other => panic!("unexpected {other}: {:?}", got.body),
        }
    }
    let total: u64 = served.iter().sum();
    eprintln!("served per replica {served:?}, refused {refused}");
    assert_eq!(
        total, LIMIT,
        "the shared quota, with the failed requests' units back"
    );
    assert!(served.iter().all(|&n| n > 0));
    until("what every replica served at the collector", async || {
        totals(&collector) == [total, 2 * total, 0, 3 * total]
    })
    .await;
    report("three_replicas", &collector);
    let sources: std::collections::BTreeSet<String> = collector
        .batches()
        .iter()
        .flat_map(|b| serde_json::from_slice::<Vec<serde_json::Value>>(b).unwrap())
        .map(|event| event["source"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        sources.into_iter().collect::<Vec<_>>(),
        [
            "licensegate/replica-0",
            "licensegate/replica-1",
            "licensegate/replica-2"
        ]
    );
    for replica in replicas {
        assert!(stop(replica, "TERM").success());
    }
    assert_eq!(totals(&collector), [total, 2 * total, 0, 3 * total]);
    if let Some(checked) = collector.check_with_sdk(bench.path()) {
        assert_eq!(checked, collector.deliveries());
    }
}

/// Threshold events (type `licensegate.quota.threshold`) the collector took,
/// deduplicated by id: (limit, percent) per event.
fn thresholds_at(collector: &Collector) -> Vec<(String, u64)> {
    let mut seen = std::collections::BTreeMap::new();
    for batch in collector.batches() {
        let events: Vec<serde_json::Value> = serde_json::from_slice(&batch).unwrap();
        for event in events {
            if event["type"] == "licensegate.quota.threshold" {
                let data = &event["data"];
                seen.insert(
                    event["id"].as_str().unwrap().to_owned(),
                    (
                        data["limit"].as_str().unwrap().to_owned(),
                        data["threshold_percent"].as_u64().unwrap(),
                    ),
                );
            }
        }
    }
    let mut crossings: Vec<(String, u64)> = seen.into_values().collect();
    crossings.sort_by_key(|(_, percent)| *percent);
    crossings
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overage_passes_to_the_soft_ceiling_is_metered_apart_and_thresholds_fire_once() {
    let collector = Collector::start().await;
    let (upstream, _arrived, _held) = start_upstream(bind_any().await);
    let bench = Bench::new();
    // 10 a day, soft to 150 %: 15 pass; announced at 80, 100 and 150 %.
    let policy = "limits:
  daily:
    quota: {limit: 10, period: day}
    overage: 1.5
    thresholds: [80, 100, 150]
meters:
  calls: requests
routes:
  - {name: chat, path: /api/**, limits: [daily], meters: [calls]}
";
    let proxy = start(&bench.config("overage", upstream, policy, &collector, ""));
    let auth = bench.auth("lic-overage");

    let mut overage_seen = Vec::new();
    for i in 1..=7 {
        let got = call(&proxy, &format!("/api/{i}"), &auth, 0, &[]).await;
        assert_eq!(got.status, 200, "request {i}");
        overage_seen.push(got.headers.contains_key("x-saw-overage"));
    }
    // The 8th unit reaches 80 %, but the workload fails: announced, then
    // given back; the next request reaches 80 % again, and is not announced
    // a second time.
    let got = call(&proxy, "/api/fail", &auth, 0, &[]).await;
    assert_eq!(got.status, 503);
    for i in 8..=15 {
        let got = call(&proxy, &format!("/api/{i}"), &auth, 0, &[]).await;
        assert_eq!(got.status, 200, "request {i}: the soft ceiling is 15");
        let saw = got
            .headers
            .get("x-saw-overage")
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(saw.as_deref(), (i > 10).then_some("daily"), "request {i}");
        if i > 10 {
            // The budget stated is the limit's, not the soft ceiling's.
            let state = got.headers.get("ratelimit").unwrap().to_str().unwrap();
            assert!(state.starts_with("\"daily\";r=0;"), "{state}");
        }
    }
    assert!(
        overage_seen.iter().all(|saw| !saw),
        "no overage under 100 %"
    );
    let got = call(&proxy, "/api/16", &auth, 0, &[]).await;
    assert_eq!(got.status, 429, "past the soft ceiling");

    until(
        "15 calls and 5 overage units at the collector",
        async || collector.total("calls") == 15 && collector.total("daily.overage") == 5,
    )
    .await;
    until("three threshold events", async || {
        thresholds_at(&collector).len() >= 3
    })
    .await;
    // Announced once each, the re-crossed 80 % included.
    for percent in [80, 100, 150] {
        let series = format!(
            "licensegate_quota_thresholds_total{{limit=\"daily\",threshold=\"{percent}\"}}"
        );
        assert_eq!(metric_of(&proxy, &series).await, 1.0, "{series}");
    }
    assert!(stop(proxy, "TERM").success());
    assert_eq!(
        thresholds_at(&collector),
        [
            ("daily".to_owned(), 80),
            ("daily".to_owned(), 100),
            ("daily".to_owned(), 150)
        ]
    );
    assert_eq!(collector.total("calls"), 15);
    assert_eq!(collector.total("daily.overage"), 5);
    if let Some(checked) = collector.check_with_sdk(bench.path()) {
        assert_eq!(checked, collector.deliveries());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_threshold_is_announced_once_across_replicas_sharing_the_quota() {
    if !redis::available() {
        return;
    }
    let Some(redis) = redis::Redis::start() else {
        return;
    };
    let collector = Collector::start().await;
    let (upstream, _arrived, _held) = start_upstream(bind_any().await);
    let bench = Bench::new();
    let store = format!(
        "store:\n  url: {}\n  timeout: 250ms\n  replicas: 2\n",
        redis.url()
    );
    // A quota of 10 a day, announced at the default 80 and 100 %.
    let replicas: Vec<Proxy> = (0..2)
        .map(|i| {
            start(&bench.config(
                &format!("crossing-{i}"),
                upstream,
                &policy(10, "served"),
                &collector,
                &store,
            ))
        })
        .collect();
    for replica in &replicas {
        tokio::task::block_in_place(|| replica.wait_for_log("shared counter store connected"));
    }
    let auth = bench.auth("lic-crossing");
    let crossings = async |replica: &Proxy, percent: u16| {
        let series = format!(
            "licensegate_quota_thresholds_total{{limit=\"daily\",threshold=\"{percent}\"}}"
        );
        metric_of(replica, &series).await
    };
    for n in 0..7 {
        assert_eq!(
            call(&replicas[0], &format!("/api/{n}"), &auth, 0, &[])
                .await
                .status,
            200
        );
    }
    // The 8th unit reaches 80 % on replica 0, which announces it; the
    // workload fails, so the unit goes back to the store.
    assert_eq!(
        call(&replicas[0], "/api/fail", &auth, 0, &[]).await.status,
        503
    );
    until("replica 0 announced 80 %", async || {
        crossings(&replicas[0], 80).await == 1.0
    })
    .await;
    // Replica 1 reaches 80 % again: the store says it was announced.
    for n in 7..10 {
        assert_eq!(
            call(&replicas[1], &format!("/api/{n}"), &auth, 0, &[])
                .await
                .status,
            200
        );
    }
    assert_eq!(
        call(&replicas[1], "/api/10", &auth, 0, &[]).await.status,
        429
    );
    until("replica 1 announced 100 %", async || {
        crossings(&replicas[1], 100).await == 1.0
    })
    .await;
    until("two threshold events at the collector", async || {
        thresholds_at(&collector).len() >= 2
    })
    .await;
    assert_eq!(
        crossings(&replicas[1], 80).await,
        0.0,
        "80 % was announced by replica 0"
    );
    assert_eq!(crossings(&replicas[0], 100).await, 0.0);
    for replica in replicas {
        assert!(stop(replica, "TERM").success());
    }
    assert_eq!(
        thresholds_at(&collector),
        [("daily".to_owned(), 80), ("daily".to_owned(), 100)]
    );
}
