//! Shared counters on Redis, end to end: several real `licensegate`
//! processes in front of one echo upstream, counting against real
//! `redis-server` processes (standalone and, where one can be formed here,
//! a cluster) that the tests kill, restart, pause and slow down.
//!
//! Nothing here sleeps to synchronise: tests wait on log lines, `/metrics`
//! values, responses or process exits, and every loop is bounded.

mod common;
mod redis;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use self::redis::{Cluster, Redis};
use common::*;
use http::Request;
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use licensegate::license::issue::{sign, SigningKey};
use licensegate::license::validate::unix_now;
use licensegate::license::Algorithm;
use serde_json::{json, Value};

const ISSUER: &str = "https://vendor.test";

// ---------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------

/// Keys, a policy and a config for a fleet of proxies in front of one echo
/// upstream, with licenses in the `Authorization` header.
struct Fleet {
    dir: tempfile::TempDir,
    key: SigningKey,
    upstream: SocketAddr,
}

impl Fleet {
    async fn new(policy: &str) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("keys")).unwrap();
        std::fs::create_dir(dir.path().join("policy")).unwrap();
        let key = SigningKey::generate(Algorithm::EdDSA).unwrap();
        std::fs::write(dir.path().join("keys/k1.pem"), key.public_key_pem()).unwrap();
        std::fs::write(dir.path().join("policy/policy.yaml"), policy).unwrap();
        Fleet {
            dir,
            key,
            upstream: echo_upstream().await,
        }
    }

    /// `Authorization` headers for license `sub`, valid for an hour.
    fn auth(&self, sub: &str) -> Vec<(String, String)> {
        let now = unix_now() as i64;
        let token = sign(
            &json!({
                "iss": ISSUER, "sub": sub, "aud": "api",
                "iat": now - 60, "nbf": now - 60, "exp": now + 3600,
                "lic": {"plan": "pro"},
            }),
            &self.key,
            "k1",
        );
        vec![("authorization".into(), format!("Bearer {token}"))]
    }

    /// The config file: the policy, header licenses and `store` (the
    /// section's YAML, top level).
    fn config(&self, store: &str) -> PathBuf {
        let dir = self.dir.path();
        write_file(
            dir,
            "licensegate.yaml",
            &format!(
                "upstream:\n  url: http://{}\nworkers: 2\n\
                 license:\n  keys: {}\n  issuer: {ISSUER}\n  audience: api\n  source: header\n\
                 policy:\n  paths: [{}]\n{store}",
                self.upstream,
                dir.join("keys").display(),
                dir.join("policy/policy.yaml").display(),
            ),
        )
    }
}

/// A `store` section for a standalone server at `url` plus `extra`
/// settings (YAML lines indented two spaces).
fn store(url: &str, extra: &str) -> String {
    format!("store:\n  url: {url}\n{extra}")
}

/// Start `n` proxies with `config`, in parallel, and wait until each is
/// ready (as a load balancer would: before that, requests may be counted
/// before the first connection to the store); a start-up failure fails the
/// test with the process's stderr.
async fn start(config: &Path, n: usize) -> Vec<Proxy> {
    let proxies = spawn(config, n);
    for proxy in &proxies {
        wait_ready(proxy).await;
    }
    proxies
}

/// Wait (bounded) for `/readyz` to say 200. Readiness has no change
/// notification on the admin port, so this polls.
async fn wait_ready(proxy: &Proxy) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, report) = readyz(proxy).await;
        if status == 200 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never ready: {report}; logs:\n{}",
            proxy.logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn spawn(config: &Path, n: usize) -> Vec<Proxy> {
    let config = config.to_str().unwrap();
    tokio::task::block_in_place(|| {
        std::thread::scope(|scope| {
            let starting: Vec<_> = (0..n)
                .map(|_| {
                    scope.spawn(|| {
                        Proxy::spawn(&[
                            "run",
                            "--config",
                            config,
                            "--listen",
                            "127.0.0.1:0",
                            "--admin",
                            "127.0.0.1:0",
                        ])
                    })
                })
                .collect();
            starting
                .into_iter()
                .map(|handle| match handle.join().unwrap() {
                    Ok(proxy) => proxy,
                    Err((status, stderr)) => {
                        panic!("licensegate did not start ({status}):\n{stderr}")
                    }
                })
                .collect()
        })
    })
}

fn wait_log(proxy: &Proxy, needle: &str) -> String {
    tokio::task::block_in_place(|| proxy.wait_for_log(needle))
}

/// What one request got.
#[derive(Clone, Debug)]
struct Outcome {
    status: u16,
    /// The problem+json `reason`, or the client error (status 0).
    reason: String,
    elapsed: Duration,
}

impl Outcome {
    fn is(&self, status: u16, reason: &str) -> bool {
        self.status == status && self.reason == reason
    }
}

type HttpClient = Client<HttpConnector, Body>;

/// One request on `client` (a keep-alive connection per client).
async fn request(client: &HttpClient, url: &str, headers: &[(String, String)]) -> Outcome {
    let mut builder = Request::get(url);
    for (name, value) in headers {
        builder = builder.header(name, value);
    }
    let started = Instant::now();
    let sent = tokio::time::timeout(WAIT, client.request(builder.body(empty()).unwrap())).await;
    let response = match sent {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => {
            return Outcome {
                status: 0,
                reason: format!("request failed: {e:?}"),
                elapsed: started.elapsed(),
            }
        }
        Err(_) => {
            return Outcome {
                status: 0,
                reason: "no response within the test bound".into(),
                elapsed: started.elapsed(),
            }
        }
    };
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or("").to_owned());
    let body = match response.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => {
            return Outcome {
                status: 0,
                reason: format!("body failed: {e}"),
                elapsed: started.elapsed(),
            }
        }
    };
    let elapsed = started.elapsed();
    let reason = if content_type.as_deref() == Some("application/problem+json") {
        serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["reason"].as_str().map(str::to_owned))
            .unwrap_or_default()
    } else {
        String::new()
    };
    Outcome {
        status,
        reason,
        elapsed,
    }
}

/// One request to `proxy` on a fresh client.
async fn call(proxy: &Proxy, path: &str, headers: &[(String, String)]) -> Outcome {
    request(&client(), &proxy.url(path), headers).await
}

/// `total` requests for `path`, request i to proxy i mod n, each proxy
/// served by `conns` concurrent keep-alive connections.
async fn burst(
    proxies: &[Proxy],
    total: usize,
    conns: usize,
    path: &str,
    headers: &[(String, String)],
) -> Vec<Outcome> {
    let n = proxies.len();
    let mut tasks = Vec::new();
    for (p, proxy) in proxies.iter().enumerate() {
        for c in 0..conns {
            let url = proxy.url(path);
            let headers = headers.to_vec();
            let count = (0..total)
                .filter(|i| i % n == p && (i / n) % conns == c)
                .count();
            tasks.push(tokio::spawn(async move {
                let client = client();
                let mut outcomes = Vec::with_capacity(count);
                for _ in 0..count {
                    outcomes.push(request(&client, &url, &headers).await);
                }
                outcomes
            }));
        }
    }
    let mut outcomes = Vec::with_capacity(total);
    for task in tasks {
        outcomes.extend(task.await.unwrap());
    }
    outcomes
}

/// How many requests got each (status, reason).
fn tally(outcomes: &[Outcome]) -> BTreeMap<(u16, String), usize> {
    let mut counts = BTreeMap::new();
    for o in outcomes {
        *counts.entry((o.status, o.reason.clone())).or_default() += 1;
    }
    counts
}

fn allowed(outcomes: &[Outcome]) -> usize {
    outcomes.iter().filter(|o| o.status == 200).count()
}

fn max_latency(outcomes: &[Outcome]) -> Duration {
    outcomes.iter().map(|o| o.elapsed).max().unwrap_or_default()
}

fn mean_latency(outcomes: &[Outcome]) -> Duration {
    let total: Duration = outcomes.iter().map(|o| o.elapsed).sum();
    total / outcomes.len().max(1) as u32
}

/// The most one request may take while the store does not answer in time:
/// the store `timeout` plus three times the slowest request of the same
/// test with a healthy store (at least 180 ms), so a loaded machine
/// stretches the bound as it stretches every request. A request that waits
/// on the store itself (a pause, a `DEBUG SLEEP`, a reconnect with back-off)
/// takes far longer.
fn slow_bound(timeout: Duration, healthy: &[Outcome]) -> Duration {
    timeout + (max_latency(healthy) * 3).max(Duration::from_millis(180))
}

/// A metric sample on `proxy` (0 when absent).
async fn sample(proxy: &Proxy, series: &str) -> f64 {
    metric(&metrics(proxy).await, series).unwrap_or(0.0)
}

/// The sum of a metric over the fleet.
async fn fleet_sum(proxies: &[Proxy], series: &str) -> f64 {
    let mut sum = 0.0;
    for proxy in proxies {
        sum += sample(proxy, series).await;
    }
    sum
}

/// Both kinds of store errors.
async fn store_errors(proxy: &Proxy) -> f64 {
    let page = metrics(proxy).await;
    ["timeout", "error"]
        .iter()
        .map(|kind| {
            metric(
                &page,
                &format!("licensegate_store_errors_total{{kind=\"{kind}\"}}"),
            )
            .unwrap_or(0.0)
        })
        .sum()
}

const FALLBACK: &str = "licensegate_store_fallback_active";

/// Wait (bounded) until `series` on `proxy` reads `want`. The metric has no
/// change notification, so this polls.
async fn wait_metric(proxy: &Proxy, series: &str, want: f64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let page = metrics(proxy).await;
        let value = metric(&page, series);
        if value == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} is {value:?}, not {want}; logs:\n{}",
            proxy.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn readyz(proxy: &Proxy) -> (u16, Value) {
    let (parts, body) = get(&proxy.admin_url("/readyz")).await;
    (
        parts.status.as_u16(),
        serde_json::from_slice(&body).unwrap(),
    )
}

/// `/readyz` is 200 and its `notes.store` mentions `fallback` (or not).
#[track_caller]
fn assert_store_note(ready: &(u16, Value), fallback: bool) {
    let (status, report) = ready;
    assert_eq!(*status, 200, "ready in every store state: {report}");
    let note = report["notes"]["store"].as_str().unwrap_or_default();
    assert_eq!(
        note.contains("fallback"),
        fallback,
        "notes.store should{} mention fallback: {report}",
        if fallback { "" } else { " not" }
    );
}

/// A request of a [`Load`] and the test phases it started and ended in.
#[derive(Clone, Debug)]
struct Timed {
    started_in: usize,
    ended_in: usize,
    outcome: Outcome,
}

/// Requests from concurrent keep-alive clients until stopped; counts
/// finished requests so a test can wait for progress.
struct Load {
    stop: Arc<AtomicBool>,
    /// The phase the test is in, recorded when a request starts and ends.
    phase: Arc<AtomicUsize>,
    done: tokio::sync::watch::Receiver<usize>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Timed>>>,
}

impl Load {
    fn start(proxies: &[Proxy], conns: usize, path: &str, headers: &[(String, String)]) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let phase = Arc::new(AtomicUsize::new(0));
        let (done_tx, done) = tokio::sync::watch::channel(0usize);
        let done_tx = Arc::new(done_tx);
        let mut tasks = Vec::new();
        for proxy in proxies {
            for _ in 0..conns {
                let url = proxy.url(path);
                let headers = headers.to_vec();
                let (stop, phase, done_tx) =
                    (Arc::clone(&stop), Arc::clone(&phase), Arc::clone(&done_tx));
                tasks.push(tokio::spawn(async move {
                    let client = client();
                    let mut outcomes = Vec::new();
                    // Bounded: a test that never stops the load still ends.
                    while !stop.load(Ordering::Relaxed) && outcomes.len() < 100_000 {
                        let started_in = phase.load(Ordering::Relaxed);
                        let outcome = request(&client, &url, &headers).await;
                        outcomes.push(Timed {
                            started_in,
                            ended_in: phase.load(Ordering::Relaxed),
                            outcome,
                        });
                        done_tx.send_modify(|n| *n += 1);
                    }
                    outcomes
                }));
            }
        }
        Load {
            stop,
            phase,
            done,
            tasks,
        }
    }

    fn done(&self) -> usize {
        *self.done.borrow()
    }

    /// Wait until `more` further requests have finished.
    async fn progress(&mut self, more: usize) {
        let target = self.done() + more;
        tokio::time::timeout(WAIT, self.done.wait_for(|n| *n >= target))
            .await
            .unwrap_or_else(|_| panic!("the load stalled below {target} requests"))
            .unwrap();
    }

    fn enter(&self, phase: usize) {
        self.phase.store(phase, Ordering::Relaxed);
    }

    async fn finish(self) -> Vec<Timed> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for task in self.tasks {
            all.extend(task.await.unwrap());
        }
        all
    }
}

/// Seconds from now to the next UTC midnight (a daily quota's reset).
fn seconds_to_midnight() -> u64 {
    86_400 - unix_now() % 86_400
}

// ---------------------------------------------------------------------------
// 1. Accurate mode: one limit, three replicas
// ---------------------------------------------------------------------------

const RATE_300: &str = r#"
limits:
  shared_rate: {rate: {limit: 300, per: 1h}}
routes:
  - {name: api, path: "/api/**", limits: [shared_rate]}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_one_rate_limit_exactly() {
    let Some(redis) = Redis::start() else { return };
    let fleet = Fleet::new(RATE_300).await;
    // A generous timeout: this test is about accuracy, and a CPU-starved
    // round trip falling back would blur it.
    let config = fleet.config(&store(
        &redis.url(),
        "  mode: accurate\n  timeout: 500ms\n  replicas: 3\n",
    ));
    let proxies = start(&config, 3).await;
    let auth = fleet.auth("lic-burst");

    let started = Instant::now();
    let outcomes = burst(&proxies, 900, 4, "/api/x", &auth).await;
    let took = started.elapsed();
    let counts = tally(&outcomes);
    let ok = allowed(&outcomes);
    let mut errors = Vec::new();
    for proxy in &proxies {
        errors.push(store_errors(proxy).await);
    }
    eprintln!("900 requests across 3 replicas in {took:?}: {counts:?}; store errors {errors:?}");
    assert!(
        (297..=303).contains(&ok),
        "allowed {ok} of a shared limit of 300 (within 1 %): {counts:?}; store errors {errors:?}"
    );
    assert_eq!(
        ok + counts
            .get(&(429, "rate_limited".to_owned()))
            .copied()
            .unwrap_or(0),
        900,
        "everything else is 429 rate_limited: {counts:?}"
    );
    // Every decision went to Redis: one round trip each (not two, not a
    // cached answer), each timed. Nothing else in accurate mode is a round
    // trip: the start-up probe and the heartbeats are not counted.
    let trips = fleet_sum(&proxies, "licensegate_store_round_trips_total").await;
    assert_eq!(trips, 900.0, "round trips for 900 decisions");
    let timed = fleet_sum(&proxies, "licensegate_store_latency_seconds_count").await;
    assert_eq!(timed, 900.0, "round trips timed");
    for proxy in &proxies {
        assert_eq!(sample(proxy, FALLBACK).await, 0.0);
        assert_store_note(&readyz(proxy).await, false);
    }
    // Counters are hash-tagged by license, under the default prefix.
    let keys = counter_keys(redis.keys());
    assert!(!keys.is_empty(), "no keys in Redis");
    for key in &keys {
        assert!(
            key.starts_with("licensegate") && key.contains("{lic-burst}"),
            "key {key:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// 2. Leased mode
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leased_mode_stays_within_replicas_times_slice() {
    const LIMIT: usize = 300;
    const REPLICAS: usize = 3;
    const SLICE: usize = 20;
    let Some(redis) = Redis::start() else { return };
    let fleet = Fleet::new(RATE_300).await;
    let config = fleet.config(&store(
        &redis.url(),
        &format!(
            "  mode: leased\n  timeout: 500ms\n  replicas: {REPLICAS}\n  \
             lease: {{max_slice: {SLICE}, period: 1s}}\n"
        ),
    ));
    let proxies = start(&config, REPLICAS).await;
    let auth = fleet.auth("lic-leased");

    // Well inside the budget, requests are served from leases: far fewer
    // round trips than requests.
    let first = burst(&proxies, 150, 2, "/api/x", &auth).await;
    assert_eq!(allowed(&first), 150, "{:?}", tally(&first));
    let trips = fleet_sum(&proxies, "licensegate_store_round_trips_total").await;
    assert!(
        trips <= 150.0 / 3.0,
        "{trips} round trips for 150 requests with slices of {SLICE}"
    );

    let rest = burst(&proxies, 750, 4, "/api/x", &auth).await;
    let ok = 150 + allowed(&rest);
    let counts = tally(&rest);
    let grants = fleet_sum(&proxies, "licensegate_store_lease_grants_total").await;
    let returns = fleet_sum(&proxies, "licensegate_store_lease_returns_total").await;
    eprintln!("leased: {ok} of {LIMIT} allowed; {counts:?}; {grants} grants, {returns} returns");
    let bound = REPLICAS * SLICE;
    assert!(
        (LIMIT - bound..=LIMIT + bound).contains(&ok),
        "allowed {ok}, documented bound {LIMIT} ± {bound}: {counts:?}"
    );
    assert_eq!(
        allowed(&rest)
            + counts
                .get(&(429, "rate_limited".to_owned()))
                .copied()
                .unwrap_or(0),
        750,
        "everything else is 429 rate_limited: {counts:?}"
    );
    // Every allowed request was paid from a granted slice of at most SLICE.
    assert!(
        grants * SLICE as f64 >= ok as f64,
        "{grants} grants of at most {SLICE} cannot cover {ok} requests"
    );
    for proxy in &proxies {
        assert_eq!(store_errors(proxy).await, 0.0, "{}", proxy.logs());
    }
}

// ---------------------------------------------------------------------------
// 3. Seats across replicas
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seats_are_shared_across_replicas() {
    let Some(redis) = Redis::start() else { return };
    let fleet = Fleet::new(
        r#"
limits:
  users: {seats: {identity: "header:x-user", limit: 3}}
routes:
  - {name: app, path: "/app/**", limits: [users]}
"#,
    )
    .await;
    let config = fleet.config(&store(&redis.url(), "  timeout: 500ms\n  replicas: 3\n"));
    let proxies = start(&config, 3).await;
    let auth = fleet.auth("lic-seats");
    let as_user = |user: &str| {
        let mut headers = auth.clone();
        headers.push(("x-user".into(), user.into()));
        headers
    };

    for (p, user) in ["a", "b", "c"].into_iter().enumerate() {
        let reply = call(&proxies[p], "/app/x", &as_user(user)).await;
        assert_eq!(reply.status, 200, "{user} on replica {p}: {reply:?}");
    }
    for (p, proxy) in proxies.iter().enumerate() {
        let reply = call(proxy, "/app/x", &as_user("d")).await;
        assert!(
            reply.is(429, "seat_limit_reached"),
            "d on replica {p}: {reply:?}"
        );
    }
    // Holders pass on any replica.
    for (p, user) in [(1, "a"), (2, "b"), (0, "c"), (2, "a")] {
        let reply = call(&proxies[p], "/app/x", &as_user(user)).await;
        assert_eq!(reply.status, 200, "{user} on replica {p}: {reply:?}");
    }
    for proxy in &proxies {
        assert_eq!(store_errors(proxy).await, 0.0);
    }
}

// ---------------------------------------------------------------------------
// 4. Quotas survive restarting every proxy
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_survives_restarting_every_proxy() {
    const QUOTA: usize = 10;
    const USED: usize = 6;
    let Some(redis) = Redis::start() else { return };
    let fleet = Fleet::new(&daily_quota_policy(QUOTA)).await;
    let config = fleet.config(&store(
        &redis.url(),
        "  timeout: 500ms\n  replicas: 3\n  key_prefix: lgtest\n",
    ));
    let start_day = unix_now() / 86_400;
    let auth = fleet.auth("lic-quota");

    let first = start(&config, 3).await;
    for i in 0..USED {
        let reply = call(&first[i % 3], "/billed", &auth).await;
        assert_eq!(reply.status, 200, "unit {i}: {reply:?}");
    }
    stop_gracefully(first);

    // The counters live in Redis, with an expiry past the period's end.
    let keys = counter_keys(redis.keys());
    assert!(!keys.is_empty(), "no quota keys in Redis");
    let to_midnight = seconds_to_midnight() as i64;
    let mut longest = 0;
    for key in &keys {
        assert!(
            key.starts_with("lgtest") && key.contains("{lic-quota}"),
            "key {key:?} (prefix lgtest, tagged by license)"
        );
        let ttl = redis.ttl(key);
        assert!(ttl > 0, "key {key:?} has TTL {ttl}: it would live forever");
        longest = longest.max(ttl);
    }
    assert!(
        longest >= to_midnight - 5,
        "the quota key expires in {longest} s, before the day ends in {to_midnight} s"
    );

    let second = start(&config, 3).await;
    if unix_now() / 86_400 != start_day {
        eprintln!("a UTC day ended during the test; the quota reset legitimately");
        return;
    }
    for i in USED..QUOTA {
        let reply = call(&second[i % 3], "/billed", &auth).await;
        assert_eq!(reply.status, 200, "unit {} of {QUOTA}: {reply:?}", i + 1);
    }
    for (p, proxy) in second.iter().enumerate() {
        let reply = call(proxy, "/billed", &auth).await;
        assert!(
            reply.is(429, "quota_exceeded"),
            "unit {} on replica {p}: {reply:?}",
            QUOTA + 1
        );
    }
}

// ---------------------------------------------------------------------------
// 5. Redis dies under load, and comes back
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_redis_under_load_falls_back_and_recovers() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let fleet = Fleet::new(
        r#"
limits:
  high_rate: {rate: {limit: 1000000, per: 1h}}
  high_quota: {quota: {limit: 1000000, period: day}}
  shared: {rate: {limit: 30, per: 1h}}
routes:
  - {name: load, path: /load, limits: [high_rate, high_quota]}
  - {name: shared, path: /shared, limits: [shared]}
"#,
    )
    .await;
    // A killed server refuses at once; the timeout only bounds the rest (and
    // is generous enough that a busy machine never trips it by accident).
    let config = fleet.config(&store(&redis.url(), "  timeout: 100ms\n  replicas: 3\n"));
    let proxies = start(&config, 3).await;
    let auth = fleet.auth("lic-load");

    let mut load = Load::start(&proxies, 2, "/load", &auth);
    load.progress(60).await;
    for proxy in &proxies {
        assert_eq!(sample(proxy, FALLBACK).await, 0.0, "{}", proxy.logs());
    }

    // Outage.
    load.enter(1);
    redis.kill();
    for proxy in &proxies {
        wait_log(proxy, "store unavailable; counting locally");
        wait_metric(proxy, FALLBACK, 1.0).await;
        assert_store_note(&readyz(proxy).await, true);
    }
    load.progress(300).await;

    // Back, empty, on the same port.
    load.enter(2);
    redis.restart();
    for proxy in &proxies {
        wait_log(proxy, "store reachable again; shared counting resumed");
        wait_metric(proxy, FALLBACK, 0.0).await;
        assert_store_note(&readyz(proxy).await, false);
    }
    load.progress(60).await;
    let outcomes = load.finish().await;

    let failures: Vec<_> = outcomes
        .iter()
        .filter(|t| t.outcome.status != 200)
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} requests not 200 (phase 0 before, 1 during, 2 after the outage): {:?}",
        failures.len(),
        outcomes.len(),
        &failures[..failures.len().min(5)]
    );
    let within = |keep: &dyn Fn(&Timed) -> bool| -> Vec<Outcome> {
        outcomes
            .iter()
            .filter(|t| keep(t))
            .map(|t| t.outcome.clone())
            .collect()
    };
    // A request in flight when Redis died belongs to the outage, not to
    // the healthy baseline.
    let before = within(&|t| t.ended_in == 0);
    let during = within(&|t| t.started_in <= 1 && t.ended_in >= 1);
    let after = within(&|t| t.started_in == 2);
    eprintln!(
        "requests before/during/after the outage: {}/{}/{}; max latency {:?}/{:?}/{:?}",
        before.len(),
        during.len(),
        after.len(),
        max_latency(&before),
        max_latency(&during),
        max_latency(&after)
    );
    let bound = slow_bound(Duration::from_millis(100), &before);
    assert!(
        max_latency(&during) < bound,
        "a request took {:?} during the outage (timeout 100ms, bound {bound:?} from {:?} before)",
        max_latency(&during),
        max_latency(&before)
    );
    for proxy in &proxies {
        assert!(store_errors(proxy).await >= 1.0, "no store error counted");
    }

    // Shared again: one replica may use the whole limit (a local fallback
    // would allow a third), and then the others refuse.
    let fresh = fleet.auth("lic-fresh");
    let client = client();
    for i in 0..30 {
        let reply = request(&client, &proxies[0].url("/shared"), &fresh).await;
        assert_eq!(
            reply.status, 200,
            "request {i} of 30 on replica 0: {reply:?}"
        );
    }
    for (p, proxy) in proxies.iter().enumerate().skip(1) {
        let reply = call(proxy, "/shared", &fresh).await;
        assert!(reply.is(429, "rate_limited"), "replica {p}: {reply:?}");
    }
}

// ---------------------------------------------------------------------------
// 6. on_store_error: deny and allow
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_store_error_deny_answers_503_and_allow_passes() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let fleet = Fleet::new(
        r#"
limits:
  strict:
    rate: {limit: 1000, per: 1h}
    on_store_error: deny
  lenient:
    rate: {limit: 2, per: 1h}
    on_store_error: allow
  local:
    rate: {limit: 2, per: 1h}
    on_store_error: fallback
routes:
  - {name: strict, path: /strict, limits: [strict]}
  - {name: lenient, path: /lenient, limits: [lenient]}
  - {name: local, path: /local, limits: [local]}
"#,
    )
    .await;
    let config = fleet.config(&store(&redis.url(), "  timeout: 100ms\n"));
    let proxy = start(&config, 1).await.pop().unwrap();
    let auth = fleet.auth("lic-modes");

    assert_eq!(call(&proxy, "/strict", &auth).await.status, 200);
    for _ in 0..2 {
        assert_eq!(call(&proxy, "/lenient", &auth).await.status, 200);
    }
    let reply = call(&proxy, "/lenient", &auth).await;
    assert!(reply.is(429, "rate_limited"), "{reply:?}");

    redis.kill();
    for attempt in 0..3 {
        let reply = call(&proxy, "/strict", &auth).await;
        assert!(
            reply.is(503, "limit_store_unavailable"),
            "deny, attempt {attempt}: {reply:?}"
        );
    }
    // `allow` skips the limit while the store is away, even a used-up one.
    for attempt in 0..5 {
        let reply = call(&proxy, "/lenient", &auth).await;
        assert_eq!(reply.status, 200, "allow, attempt {attempt}: {reply:?}");
    }
    // `fallback` counts locally (limit / replicas = 2 here).
    for attempt in 0..2 {
        let reply = call(&proxy, "/local", &auth).await;
        assert_eq!(reply.status, 200, "fallback, attempt {attempt}: {reply:?}");
    }
    let reply = call(&proxy, "/local", &auth).await;
    assert!(reply.is(429, "rate_limited"), "local count: {reply:?}");
    assert!(store_errors(&proxy).await >= 1.0);
    assert_eq!(sample(&proxy, FALLBACK).await, 1.0);

    redis.restart();
    wait_log(&proxy, "store reachable again; shared counting resumed");
    assert_eq!(call(&proxy, "/strict", &auth).await.status, 200);
}

// ---------------------------------------------------------------------------
// 7. Slow Redis
// ---------------------------------------------------------------------------

const HIGH_RATE: &str = r#"
limits:
  high_rate: {rate: {limit: 1000000, per: 1h}}
routes:
  - {name: api, path: "/api/**", limits: [high_rate]}
"#;

/// The store timeout of the slow-Redis tests.
const TIMEOUT: Duration = Duration::from_millis(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_redis_costs_each_request_at_most_the_timeout() {
    const REQUESTS: usize = 100;
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let fleet = Fleet::new(HIGH_RATE).await;
    let config = fleet.config(&store(
        &redis.url(),
        &format!("  timeout: {}ms\n", TIMEOUT.as_millis()),
    ));
    let proxy = start(&config, 1).await.pop().unwrap();
    let auth = fleet.auth("lic-slow");
    let client = client();
    let mut healthy = Vec::new();
    for _ in 0..20 {
        healthy.push(request(&client, &proxy.url("/api/x"), &auth).await);
    }
    assert_eq!(allowed(&healthy), 20, "{:?}", tally(&healthy));
    assert_eq!(sample(&proxy, FALLBACK).await, 0.0);
    let timeouts_before = sample(&proxy, r#"licensegate_store_errors_total{kind="timeout"}"#).await;

    redis.pause();
    let started = Instant::now();
    let mut outcomes = Vec::new();
    for _ in 0..REQUESTS {
        outcomes.push(request(&client, &proxy.url("/api/x"), &auth).await);
    }
    let took = started.elapsed();
    let timeouts = sample(&proxy, r#"licensegate_store_errors_total{kind="timeout"}"#).await;
    let fallback = sample(&proxy, FALLBACK).await;
    redis.resume();

    eprintln!(
        "{REQUESTS} requests against a paused Redis in {took:?}, max {:?}; {timeouts} timeouts",
        max_latency(&outcomes)
    );
    assert_eq!(allowed(&outcomes), REQUESTS, "{:?}", tally(&outcomes));
    let bound = slow_bound(TIMEOUT, &healthy);
    assert!(
        max_latency(&outcomes) < bound,
        "a request took {:?} (timeout 20ms, bound {bound:?} from {:?} with Redis healthy)",
        max_latency(&outcomes),
        max_latency(&healthy)
    );
    assert_eq!(fallback, 1.0, "not in fallback while Redis was paused");
    // The circuit opens after 3 timeouts in a row (fewer if the warm-up
    // ended on one): the other requests do not each wait for the timeout.
    // Counted, which no machine's load can blur; and timed, against the
    // healthy requests of this test: waiting out the timeout on each would
    // add 100 × 20 ms.
    let new_timeouts = timeouts - timeouts_before;
    assert!(
        (1.0..=3.0).contains(&new_timeouts),
        "{new_timeouts} requests waited for the timeout while Redis was paused (the circuit opens after 3)"
    );
    let beyond_healthy = took.saturating_sub(mean_latency(&healthy) * REQUESTS as u32);
    assert!(
        beyond_healthy < TIMEOUT * REQUESTS as u32 / 2,
        "{REQUESTS} requests took {took:?}, {beyond_healthy:?} more than at the healthy pace: \
         most waited for the 20ms timeout"
    );
    wait_log(&proxy, "store unavailable; counting locally");
    wait_log(&proxy, "store reachable again; shared counting resumed");
    wait_metric(&proxy, FALLBACK, 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_busy_in_debug_sleep_costs_each_request_at_most_the_timeout() {
    let Some(redis) = Redis::start() else { return };
    let fleet = Fleet::new(HIGH_RATE).await;
    let config = fleet.config(&store(
        &redis.url(),
        &format!("  timeout: {}ms\n", TIMEOUT.as_millis()),
    ));
    let proxy = start(&config, 1).await.pop().unwrap();
    let auth = fleet.auth("lic-sleep");
    let client = client();
    let mut healthy = Vec::new();
    for _ in 0..20 {
        healthy.push(request(&client, &proxy.url("/api/x"), &auth).await);
    }
    assert_eq!(allowed(&healthy), 20, "{:?}", tally(&healthy));

    // Requests for as long as Redis sleeps (redis-cli returns when it wakes).
    let mut sleeper = redis.cli_spawn(&["DEBUG", "SLEEP", "1"]);
    let deadline = Instant::now() + WAIT;
    let mut outcomes = Vec::new();
    while sleeper.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "DEBUG SLEEP 1 never returned");
        outcomes.push(request(&client, &proxy.url("/api/x"), &auth).await);
    }
    assert!(sleeper.wait().unwrap().success(), "redis-cli DEBUG SLEEP 1");
    let timeouts = sample(&proxy, r#"licensegate_store_errors_total{kind="timeout"}"#).await;
    eprintln!(
        "{} requests while Redis slept 1 s, max {:?}; {timeouts} timeouts",
        outcomes.len(),
        max_latency(&outcomes)
    );
    assert_eq!(allowed(&outcomes), outcomes.len(), "{:?}", tally(&outcomes));
    // At most 600 ms whatever the load: the first request of the sleep
    // would wait most of its second if the timeout did not hold.
    let bound = slow_bound(TIMEOUT, &healthy).min(Duration::from_millis(600));
    assert!(
        max_latency(&outcomes) < bound,
        "a request took {:?} (timeout 20ms, Redis asleep for 1 s; bound {bound:?} from {:?} with Redis healthy)",
        max_latency(&outcomes),
        max_latency(&healthy)
    );
    assert!(timeouts >= 1.0, "no timeout counted while Redis slept");
    wait_log(&proxy, "store reachable again; shared counting resumed");
    wait_metric(&proxy, FALLBACK, 0.0).await;
}

// ---------------------------------------------------------------------------
// 8. Starting without Redis
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_without_redis_and_shares_once_it_appears() {
    if !redis::available() {
        return;
    }
    let port = redis::free_port();
    let fleet = Fleet::new(
        r#"
limits:
  four: {rate: {limit: 4, per: 1h}}
routes:
  - {name: api, path: "/api/**", limits: [four]}
"#,
    )
    .await;
    let config = fleet.config(&store(
        &format!("redis://127.0.0.1:{port}"),
        "  timeout: 100ms\n  replicas: 2\n",
    ));
    let proxies = start(&config, 2).await;
    for proxy in &proxies {
        wait_log(proxy, "store unavailable; counting locally");
        assert_store_note(&readyz(proxy).await, true);
        assert_eq!(sample(proxy, FALLBACK).await, 1.0);
    }
    // Counting locally: each replica allows 4 / 2.
    let local = fleet.auth("lic-local");
    for i in 0..2 {
        let reply = call(&proxies[0], "/api/x", &local).await;
        assert_eq!(reply.status, 200, "request {i}: {reply:?}");
    }
    let reply = call(&proxies[0], "/api/x", &local).await;
    assert!(reply.is(429, "rate_limited"), "{reply:?}");

    let redis = Redis::start_on(port).expect("checked above");
    for proxy in &proxies {
        wait_log(proxy, "store reachable again; shared counting resumed");
        wait_metric(proxy, FALLBACK, 0.0).await;
        assert_store_note(&readyz(proxy).await, false);
    }
    // Shared: replica 0 may use all 4, then replica 1 refuses.
    let shared = fleet.auth("lic-shared");
    for i in 0..4 {
        let reply = call(&proxies[0], "/api/x", &shared).await;
        assert_eq!(reply.status, 200, "request {i}: {reply:?}");
    }
    let reply = call(&proxies[1], "/api/x", &shared).await;
    assert!(reply.is(429, "rate_limited"), "{reply:?}");
    assert!(
        redis.keys().iter().any(|k| k.contains("{lic-shared}")),
        "no counter in Redis: {:?}",
        redis.keys()
    );
}

// ---------------------------------------------------------------------------
// 9. Redis Cluster
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_shares_limits_across_replicas() {
    const LICENSES: usize = 6;
    const RATE: usize = 40;
    let cluster = match tokio::task::block_in_place(|| Cluster::start(3)) {
        Ok(Some(cluster)) => cluster,
        Ok(None) => return,
        Err(why) => {
            skip(&format!("no local Redis Cluster could be formed: {why}"));
            return;
        }
    };
    // Every kind of limit in one script: all of a license's keys must land
    // in one hash slot, or the cluster refuses the script (CROSSSLOT).
    let fleet = Fleet::new(&format!(
        r#"
limits:
  rate: {{rate: {{limit: {RATE}, per: 1h}}}}
  daily: {{quota: {{limit: 100000, period: day}}}}
  users: {{seats: {{identity: "header:x-user", limit: 5}}}}
routes:
  - {{name: api, path: "/api/**", limits: [rate, daily, users]}}
"#
    ))
    .await;
    let urls = cluster.urls().join(", ");
    let config = fleet.config(&format!(
        "store:\n  cluster: [{urls}]\n  timeout: 500ms\n  replicas: 2\n"
    ));
    let proxies = start(&config, 2).await;

    let headers: Vec<_> = (0..LICENSES)
        .map(|l| {
            let mut headers = fleet.auth(&format!("lic-c{l}"));
            headers.push(("x-user".into(), format!("user-{}", l % 3)));
            headers
        })
        .collect();
    let bursts = headers
        .iter()
        .map(|headers| burst(&proxies, RATE * 2, 2, "/api/x", headers));
    let results = futures_util::future::join_all(bursts).await;
    for (l, outcomes) in results.iter().enumerate() {
        let counts = tally(outcomes);
        assert_eq!(
            allowed(outcomes),
            RATE,
            "license lic-c{l}: {counts:?}; logs:\n{}",
            proxies[0].logs()
        );
    }
    for proxy in &proxies {
        assert_eq!(store_errors(proxy).await, 0.0, "{}", proxy.logs());
        assert_eq!(sample(proxy, FALLBACK).await, 0.0);
    }
    // The licenses' counters spread over the shards, each license's on one.
    let mut shards_used = 0;
    let mut home: BTreeMap<String, u16> = BTreeMap::new();
    for node in &cluster.nodes {
        let keys = counter_keys(node.keys());
        if !keys.is_empty() {
            shards_used += 1;
        }
        for key in keys {
            let tag = key
                .split_once('{')
                .and_then(|(_, rest)| rest.split_once('}'))
                .map(|(tag, _)| tag.to_owned())
                .unwrap_or_else(|| panic!("key {key:?} has no hash tag"));
            let previous = home.insert(tag.clone(), node.port());
            assert!(
                previous.is_none_or(|p| p == node.port()),
                "{tag}'s keys are on two shards"
            );
        }
    }
    eprintln!("cluster: {LICENSES} licenses' keys on {shards_used} of 3 shards: {home:?}");
    assert_eq!(home.len(), LICENSES, "tags: {home:?}");
    assert!(shards_used >= 2, "all keys on one shard: {home:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leased_quota_units_go_back_on_shutdown() {
    const QUOTA: usize = 100;
    let Some(redis) = Redis::start() else { return };
    let fleet = Fleet::new(&daily_quota_policy(QUOTA)).await;
    let config = fleet.config(&store(
        &redis.url(),
        "  mode: leased\n  timeout: 500ms\n  lease: {max_slice: 20, period: 1h}\n",
    ));
    let start_day = unix_now() / 86_400;
    let auth = fleet.auth("lic-lease-back");
    let first = start(&config, 1).await;
    for i in 0..3 {
        let reply = call(&first[0], "/billed", &auth).await;
        assert_eq!(reply.status, 200, "unit {i}: {reply:?}");
    }
    // The proxy holds a slice larger than what it spent...
    let held = quota_units(&redis);
    assert!(held > 3, "the lease took {held} units for 3 requests");
    // ...and gives the rest back when it stops.
    stop_gracefully(first);
    if unix_now() / 86_400 != start_day {
        eprintln!("a UTC day ended during the test; the quota reset legitimately");
        return;
    }
    assert_eq!(
        quota_units(&redis),
        3,
        "after shutdown the store counts exactly what was served"
    );
}

/// A policy with one route billed against a daily quota of `quota` units.
fn daily_quota_policy(quota: usize) -> String {
    format!(
        r#"
limits:
  daily: {{quota: {{limit: {quota}, period: day}}}}
routes:
  - {{name: billed, path: "/billed", limits: [daily]}}
"#
    )
}

/// Quota units counted in Redis, over every quota key.
fn quota_units(redis: &Redis) -> i64 {
    redis
        .keys()
        .iter()
        .filter(|k| k.contains(":q:"))
        .map(|k| redis.cli(&["GET", k]).trim().parse::<i64>().unwrap_or(0))
        .sum()
}

/// SIGTERM every proxy and require a clean exit.
fn stop_gracefully(mut proxies: Vec<Proxy>) {
    for proxy in &proxies {
        proxy.signal("TERM");
    }
    for proxy in &mut proxies {
        let status = tokio::task::block_in_place(|| proxy.wait_exit());
        assert!(status.success(), "graceful exit: {status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_divides_by_the_replicas_seen_in_the_store() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let fleet = Fleet::new(
        r#"
limits:
  four: {rate: {limit: 4, per: 1h}}
routes:
  - {name: api, path: "/api/**", limits: [four]}
"#,
    )
    .await;
    // No `replicas` configured: the count comes from the replicas' heartbeats.
    let config = fleet.config(&store(&redis.url(), "  timeout: 100ms\n"));
    let proxies = start(&config, 2).await;
    for proxy in &proxies {
        wait_log(proxy, "replicas sharing the store: 2");
        let (_, report) = readyz(proxy).await;
        let note = report["notes"]["store"].as_str().unwrap_or("");
        assert!(note.contains("2 replicas seen"), "readyz note: {note}");
    }
    redis.kill();
    let local = fleet.auth("lic-observed");
    for proxy in &proxies {
        // The first call may be the one that finds Redis gone; it counts locally too.
        for i in 0..2 {
            let reply = call(proxy, "/api/x", &local).await;
            assert_eq!(reply.status, 200, "request {i}: {reply:?}");
        }
        let reply = call(proxy, "/api/x", &local).await;
        assert!(
            reply.is(429, "rate_limited"),
            "4 / 2 replicas seen: {reply:?}"
        );
    }
}

/// The counter keys among `keys`: without the replicas' heartbeat set.
fn counter_keys(keys: Vec<String>) -> Vec<String> {
    keys.into_iter()
        .filter(|k| !k.ends_with(":{replicas}"))
        .collect()
}

// ---------------------------------------------------------------------------
// 10. Outages: quota units served locally are merged back
// ---------------------------------------------------------------------------

/// The store key of the `daily` quota window of license `sub` on `day`
/// (`key_prefix: lgtest`, keyed by the license).
fn daily_key(sub: &str, day: u64) -> String {
    format!("lgtest:{{{sub}}}:daily:q:{sub}:{}", day * 86_400)
}

/// The units counted under `key`, 0 when absent.
fn units(redis: &Redis, key: &str) -> i64 {
    redis.cli(&["GET", key]).parse().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_units_served_during_an_outage_are_merged_once_redis_is_back() {
    const QUOTA: usize = 20;
    const BEFORE: usize = 4;
    const DURING: usize = 3; // per replica
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let fleet = Fleet::new(&format!(
        r#"
limits:
  daily: {{quota: {{limit: {QUOTA}, period: day}}}}
  high_rate: {{rate: {{limit: 1000000, per: 1h}}}}
routes:
  - {{name: billed, path: "/billed", limits: [daily]}}
  - {{name: probe, path: "/probe", limits: [high_rate]}}
"#
    ))
    .await;
    let config = fleet.config(&store(
        &redis.url(),
        "  timeout: 100ms\n  replicas: 2\n  key_prefix: lgtest\n",
    ));
    let proxies = start(&config, 2).await;
    let day = unix_now() / 86_400;
    let key = daily_key("lic-outage", day);
    let auth = fleet.auth("lic-outage");
    for i in 0..BEFORE {
        let reply = call(&proxies[i % 2], "/billed", &auth).await;
        assert_eq!(reply.status, 200, "unit {i}: {reply:?}");
    }
    assert_eq!(units(&redis, &key), BEFORE as i64);

    // Redis stops answering but keeps its data. Requests to another limit
    // open each replica's circuit (their round trips time out; Redis
    // applies them when it resumes, to a rate key the quota does not share),
    // so no quota request is ever sent to the paused server.
    redis.pause();
    for (p, proxy) in proxies.iter().enumerate() {
        for _ in 0..10 {
            if sample(proxy, FALLBACK).await == 1.0 {
                break;
            }
            let reply = call(proxy, "/probe", &auth).await;
            assert_eq!(reply.status, 200, "replica {p}: {reply:?}");
        }
        wait_metric(proxy, FALLBACK, 1.0).await;
    }
    // Served locally: each replica allows 20 / 2 meanwhile.
    for (p, proxy) in proxies.iter().enumerate() {
        for i in 0..DURING {
            let reply = call(proxy, "/billed", &auth).await;
            assert_eq!(
                reply.status, 200,
                "replica {p}, unit {i} in the outage: {reply:?}"
            );
        }
    }

    redis.resume();
    for proxy in &proxies {
        wait_log(proxy, "store reachable again; shared counting resumed");
        wait_metric(
            proxy,
            "licensegate_store_reconciled_units_total",
            DURING as f64,
        )
        .await;
    }
    if unix_now() / 86_400 != day {
        eprintln!("a UTC day ended during the test; the quota reset legitimately");
        return;
    }
    // Redis counts every unit served, before and during the outage.
    let served = BEFORE + 2 * DURING;
    assert_eq!(
        units(&redis, &key),
        served as i64,
        "keys: {:?}",
        redis.keys()
    );
    // And the proxies refuse at the quota, not later.
    for i in served..QUOTA {
        let reply = call(&proxies[i % 2], "/billed", &auth).await;
        assert_eq!(reply.status, 200, "unit {} of {QUOTA}: {reply:?}", i + 1);
    }
    for (p, proxy) in proxies.iter().enumerate() {
        let reply = call(proxy, "/billed", &auth).await;
        assert!(
            reply.is(429, "quota_exceeded"),
            "unit {} on replica {p}: {reply:?}",
            QUOTA + 1
        );
    }
    assert_eq!(units(&redis, &key), QUOTA as i64);
}

/// The merge operation of `shared.lua`, run twice as a retry after a lost
/// answer would: the units land once.
#[test]
fn a_merge_retried_after_a_lost_answer_counts_once() {
    let Some(redis) = Redis::start() else { return };
    let script = include_str!("../src/limits/shared.lua");
    let key = "lgtest:{lic-m}:daily:q:lic-m:0";
    let marker = "lgtest:{lic-m}:daily:m:lic-m:0:replica-1:7";
    let merge = || {
        redis.cli(&[
            "EVAL", script, "2", key, marker, "1", "M", "5", "60000", "-", "-", "-",
        ])
    };
    // {0, merged now, remaining (none), reset (none)}.
    assert_eq!(
        merge().split_whitespace().collect::<Vec<_>>(),
        ["0", "1", "0", "-1"]
    );
    assert_eq!(
        merge().split_whitespace().collect::<Vec<_>>(),
        ["0", "0", "0", "-1"]
    );
    assert_eq!(units(&redis, key), 5);
    // Both keys expire with the window.
    for key in [key, marker] {
        let ttl = redis.ttl(key);
        assert!((1..=60).contains(&ttl), "{key}: TTL {ttl}");
    }
}

// ---------------------------------------------------------------------------
// 11. Allowed responses state the shared budget
// ---------------------------------------------------------------------------

/// One request: the status and the `RateLimit` field's `r` per limit.
async fn remaining(proxy: &Proxy, auth: &[(String, String)]) -> (u16, BTreeMap<String, u64>) {
    let mut builder = Request::get(proxy.url("/api/x"));
    for (name, value) in auth {
        builder = builder.header(name, value);
    }
    let (parts, _) = send(builder.body(empty()).unwrap()).await;
    let mut left = BTreeMap::new();
    for line in parts.headers.get_all("ratelimit") {
        for member in line.to_str().unwrap().split(',') {
            let mut params = member.trim().split(';');
            let name = params.next().unwrap().trim_matches('"').to_owned();
            for param in params {
                if let Some(r) = param.strip_prefix("r=") {
                    left.insert(name.clone(), r.parse().unwrap());
                }
            }
        }
    }
    (parts.status.as_u16(), left)
}

const BUDGETED: &str = r#"
limits:
  hourly: {rate: {limit: 30, per: 1h}}
  daily: {quota: {limit: 10, period: day}}
routes:
  - {name: api, path: "/api/**", limits: [hourly, daily]}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_responses_state_the_shared_budget_in_both_modes() {
    let Some(redis) = Redis::start() else { return };
    let day = unix_now() / 86_400;

    // Accurate: what the store has left, whichever replica answers.
    let fleet = Fleet::new(BUDGETED).await;
    let config = fleet.config(&store(&redis.url(), "  timeout: 500ms\n  replicas: 2\n"));
    let proxies = start(&config, 2).await;
    let auth = fleet.auth("lic-stated");
    for n in 1..=4u64 {
        let (status, left) = remaining(&proxies[n as usize % 2], &auth).await;
        assert_eq!(status, 200, "request {n}");
        let expected =
            BTreeMap::from([("daily".to_owned(), 10 - n), ("hourly".to_owned(), 30 - n)]);
        if unix_now() / 86_400 == day {
            assert_eq!(left, expected, "request {n}");
        }
    }

    // Leased: the store's rest as of this replica's last renewal, less what
    // it spent since; with one replica, exactly what is left.
    let fleet = Fleet::new(BUDGETED).await;
    let config = fleet.config(&store(
        &redis.url(),
        "  mode: leased\n  timeout: 500ms\n  key_prefix: leased\n  lease: {max_slice: 4, period: 1h}\n",
    ));
    let proxy = start(&config, 1).await.pop().unwrap();
    let auth = fleet.auth("lic-leased");
    for n in 1..=10u64 {
        let (status, left) = remaining(&proxy, &auth).await;
        assert_eq!(status, 200, "request {n}");
        let expected =
            BTreeMap::from([("daily".to_owned(), 10 - n), ("hourly".to_owned(), 30 - n)]);
        if unix_now() / 86_400 == day {
            assert_eq!(left, expected, "request {n}");
        }
    }
    let (status, _) = remaining(&proxy, &auth).await;
    assert_eq!(status, 429);
}
