//! Instance limits end to end: real `licensegate` replicas with one
//! deployment license each, sharing a real `redis-server`, in front of a
//! recording upstream. Replicas are stopped with SIGTERM and SIGKILL, the
//! store is killed and restarted, and what each replica's `/readyz`,
//! `/license` and `/metrics` say, what it answers, and what the upstream
//! received are checked.
//!
//! Nothing sleeps to synchronise: readiness has no change notification on
//! the admin port, so waits poll it, bounded by [`WAIT`].

mod common;
mod redis;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use self::redis::Redis;
use common::recording::{Answer101, RecordingUpstream};
use common::*;
use licensegate::license::issue::{sign, SigningKey};
use licensegate::license::validate::unix_now;
use licensegate::license::Algorithm;
use serde_json::{json, Value};

const ISSUER: &str = "https://vendor.test";

/// The replicas' heartbeat: a slot's lease lapses after three.
const HEARTBEAT: Duration = Duration::from_millis(200);
const LEASE: Duration = Duration::from_millis(600);

/// For the stop tests: a lease (3 s) longer than the second a graceful
/// stop has to hand its slot on, so only giving it back can be that fast.
const SLOW_HEARTBEAT: Duration = Duration::from_secs(1);

/// Keys, licenses, policies and configs for replicas of one workload.
struct Deployment {
    dir: tempfile::TempDir,
    key: SigningKey,
    upstream: RecordingUpstream,
}

impl Deployment {
    async fn new() -> Deployment {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("keys")).unwrap();
        let key = SigningKey::generate(Algorithm::EdDSA).unwrap();
        std::fs::write(dir.path().join("keys/k1.pem"), key.public_key_pem()).unwrap();
        Deployment {
            dir,
            key,
            upstream: RecordingUpstream::start(Answer101::Genuine).await,
        }
    }

    /// A license file `sub.jwt` with `lic` as its `lic` claim.
    fn license(&self, sub: &str, lic: Value) -> PathBuf {
        let now = unix_now() as i64;
        let token = sign(
            &json!({
                "iss": ISSUER, "sub": sub, "aud": "app",
                "iat": now - 60, "nbf": now - 60, "exp": now + 3600,
                "lic": lic,
            }),
            &self.key,
            "k1",
        );
        write_file(self.dir.path(), &format!("{sub}.jwt"), &token)
    }

    /// A policy: everything licensed but `/public/**`, with `instances`.
    fn policy(&self, name: &str, instances: &str) -> PathBuf {
        write_file(
            self.dir.path(),
            &format!("{name}.yaml"),
            &format!(
                "unmatched: licensed\ninstances: {instances}\n\
                 routes:\n  - {{name: public, path: /public/**, access: public}}\n"
            ),
        )
    }

    /// A config reading `license` under `policy`, with `store` (the YAML
    /// section, or empty for none).
    fn config(&self, name: &str, license: &Path, policy: &Path, store: &str) -> PathBuf {
        write_file(
            self.dir.path(),
            &format!("{name}.config.yaml"),
            &format!(
                "upstream:\n  url: {}\nworkers: 1\n\
                 license:\n  keys: {}\n  issuer: {ISSUER}\n  audience: app\n  source: file\n  file: {}\n\
                 policy:\n  paths: [{}]\n{store}",
                self.upstream.url(),
                self.dir.path().join("keys").display(),
                license.display(),
                policy.display(),
            ),
        )
    }
}

/// A `store` section on `redis` under `prefix`, with the test heartbeat.
fn store(redis: &Redis, prefix: &str) -> String {
    store_beating(redis, prefix, HEARTBEAT)
}

fn store_beating(redis: &Redis, prefix: &str, heartbeat: Duration) -> String {
    format!(
        "store:\n  url: {}\n  key_prefix: {prefix}\n  heartbeat: {}ms\n",
        redis.url(),
        heartbeat.as_millis()
    )
}

fn start(config: &Path, n: usize) -> Vec<Proxy> {
    (0..n).map(|_| Proxy::with_config(config)).collect()
}

async fn json_of(url: &str) -> (u16, Value) {
    let (parts, body) = get(url).await;
    let value = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{url}: {e}: {}", String::from_utf8_lossy(&body)));
    (parts.status.as_u16(), value)
}

async fn readyz(proxy: &Proxy) -> (u16, Value) {
    json_of(&proxy.admin_url("/readyz")).await
}

/// The `instances` object of `/license`.
async fn slot(proxy: &Proxy) -> Value {
    json_of(&proxy.admin_url("/license")).await.1["instances"].clone()
}

async fn ready(proxy: &Proxy) -> bool {
    readyz(proxy).await.0 == 200
}

/// Poll until exactly `holders` of `proxies` hold a slot and every other
/// one waits; returns which hold. Fails with every replica's `/license`.
async fn until_settled(proxies: &[Proxy], holders: usize) -> Vec<bool> {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut states = Vec::new();
        for proxy in proxies {
            states.push(slot(proxy).await["state"].as_str().unwrap_or("").to_owned());
        }
        let held = states.iter().filter(|s| *s == "held").count();
        let waiting = states.iter().filter(|s| *s == "waiting").count();
        if held == holders && held + waiting == proxies.len() {
            return states.iter().map(|s| s == "held").collect();
        }
        if Instant::now() > deadline {
            let mut report = String::new();
            for proxy in proxies {
                report.push_str(&format!("{}\n{}\n", slot(proxy).await, proxy.logs()));
            }
            panic!("never {holders} holders: {states:?}\n{report}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Poll until one of `proxies` is ready; which one, and how long it took.
async fn until_one_ready(proxies: &[&Proxy]) -> (usize, Duration) {
    let started = Instant::now();
    loop {
        for (i, proxy) in proxies.iter().enumerate() {
            if ready(proxy).await {
                return (i, started.elapsed());
            }
        }
        assert!(started.elapsed() < WAIT, "no replica became ready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The members of a slot set in the store, in the order they took them.
fn slot_members(redis: &Redis, prefix: &str, key: &str) -> Vec<String> {
    redis
        .cli(&[
            "ZRANGE",
            &format!("{prefix}:{{{key}}}:instances:order"),
            "0",
            "-1",
        ])
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

fn split(proxies: Vec<Proxy>, held: &[bool]) -> (Vec<Proxy>, Vec<Proxy>) {
    let (mut holders, mut waiters) = (Vec::new(), Vec::new());
    for (proxy, held) in proxies.into_iter().zip(held) {
        if *held {
            holders.push(proxy);
        } else {
            waiters.push(proxy);
        }
    }
    (holders, waiters)
}

/// `n` replicas of one deployment under a license of `instances`, with
/// the policy's `instances` section `section`, sharing one Redis (key
/// prefix `p`), settled into the ones that hold a slot and the ones that
/// wait. `None` when Redis is not installed. Bind `redis` to the end of
/// the test (`redis: _redis`): dropping it stops the server.
struct Fleet {
    redis: Redis,
    deployment: Deployment,
    holders: Vec<Proxy>,
    waiters: Vec<Proxy>,
}

async fn fleet(instances: u64, section: &str, n: usize, heartbeat: Duration) -> Option<Fleet> {
    let redis = Redis::start()?;
    let deployment = Deployment::new().await;
    let license = deployment.license(
        "lic-1",
        json!({"plan": "pro", "limits": {"instances": instances}}),
    );
    let policy = deployment.policy("policy", section);
    let store = store_beating(&redis, "p", heartbeat);
    let proxies = start(&deployment.config("a", &license, &policy, &store), n);
    let held = until_settled(&proxies, (instances as usize).min(n)).await;
    let (holders, waiters) = split(proxies, &held);
    Some(Fleet {
        redis,
        deployment,
        holders,
        waiters,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_of_four_replicas_serve_under_a_two_instance_license_and_a_stopped_one_hands_its_slot_on(
) {
    let Some(Fleet {
        redis,
        deployment,
        mut holders,
        waiters,
    }) = fleet(2, "{}", 4, SLOW_HEARTBEAT).await
    else {
        return skip("redis-server is not installed");
    };

    // Readiness carries it: the waiters say why, the holders are ready.
    for holder in &holders {
        assert!(ready(holder).await, "{}", readyz(holder).await.1);
    }
    let mut names = Vec::new();
    for holder in &holders {
        names.push(slot(holder).await["instance"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        slot_members(&redis, "p", "lic-1"),
        names,
        "the store holds exactly the two"
    );
    for waiter in &waiters {
        // A waiter reads the holders each time it asks, four times a
        // heartbeat: the second holder may be new to it.
        let names_both = async || {
            let why = readyz(waiter).await.1["checks"]["instance"].clone();
            let why = why.as_str().unwrap_or_default().to_owned();
            names.iter().all(|name| why.contains(name.as_str()))
        };
        assert!(eventually(names_both).await);
        let (status, report) = readyz(waiter).await;
        assert_eq!(status, 503);
        let why = report["checks"]["instance"].as_str().unwrap();
        assert!(
            why.contains("waiting for an instance slot: license lic-1 allows 2 instances"),
            "{why}"
        );
        for name in &names {
            assert!(why.contains(name.as_str()), "{why} names the holders");
        }
        let slot = slot(waiter).await;
        assert_eq!(slot["limit"], 2);
        assert_eq!(slot["on_limit"], "not_ready");
        assert_eq!(slot["counted"], "shared");
        let page = metrics(waiter).await;
        assert_eq!(metric(&page, "licensegate_instance_waiting"), Some(1.0));
        assert_eq!(metric(&page, "licensegate_instances_held"), Some(2.0));
    }
    let page = metrics(&holders[0]).await;
    assert_eq!(metric(&page, "licensegate_instance_waiting"), Some(0.0));
    // A holder reads the holders as it renews, once a heartbeat.
    assert!(
        eventually(
            async || metric(&metrics(&holders[1]).await, "licensegate_instances_held") == Some(2.0)
        )
        .await
    );

    // A request that reaches a waiting replica anyway is refused before
    // the upstream; public routes still answer; holders serve.
    let (parts, body) = get(&waiters[0].url("/reports/waiter")).await;
    assert_eq!(parts.status, 503);
    let problem: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(problem["reason"], "instance_limit_reached", "{problem}");
    assert_eq!(get(&waiters[0].url("/public/x")).await.0.status, 200);
    assert_eq!(get(&holders[0].url("/reports/holder")).await.0.status, 200);
    let targets: Vec<String> = deployment
        .upstream
        .requests()
        .iter()
        .map(|r| r.target().to_owned())
        .collect();
    assert_eq!(targets, ["/public/x", "/reports/holder"]);

    // SIGTERM: the holder gives its slot back as it starts draining, and a
    // waiter takes it within a second.
    let mut stopped = holders.remove(0);
    stopped.signal("TERM");
    let (_, took) = until_one_ready(&waiters.iter().collect::<Vec<_>>()).await;
    assert!(took < Duration::from_secs(1), "a waiter took {took:?}");
    assert!(stopped.wait_exit().success());
    let held = until_settled(&waiters, 1).await;
    let (mut new_holders, still_waiting) = split(waiters, &held);
    holders.append(&mut new_holders);

    // SIGKILL: nothing is given back; the slot frees when its lease
    // lapses, two to three heartbeats after the kill.
    let killed = holders.remove(0);
    killed.signal("KILL");
    drop(killed);
    let (_, took) = until_one_ready(&still_waiting.iter().collect::<Vec<_>>()).await;
    let lease = SLOW_HEARTBEAT * 3;
    assert!(
        took + Duration::from_millis(200) > SLOW_HEARTBEAT * 2 && took < lease + SLOW_HEARTBEAT,
        "the last waiter took {took:?}, the lease is {lease:?}"
    );
    assert_eq!(slot_members(&redis, "p", "lic-1").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_deny_the_extra_replica_stays_ready_and_refuses_licensed_requests() {
    let Some(Fleet {
        redis: _redis,
        deployment,
        waiters,
        ..
    }) = fleet(1, "{on_limit: deny}", 2, HEARTBEAT).await
    else {
        return skip("redis-server is not installed");
    };
    let extra = &waiters[0];
    assert!(ready(extra).await, "deny keeps the replica ready");
    let (_, report) = readyz(extra).await;
    let note = report["notes"]["instance"].as_str().unwrap();
    assert!(note.contains("on_limit: deny"), "{note}");
    let (parts, body) = get(&extra.url("/reports/q3")).await;
    assert_eq!(parts.status, 403);
    assert_eq!(
        parts.headers["content-type"], "application/problem+json",
        "{parts:?}"
    );
    let problem: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(problem["reason"], "instance_limit_reached");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("license `lic-1` allows 1 instance at once"),
        "{problem}"
    );
    let page = metrics(extra).await;
    assert_eq!(
        metric(
            &page,
            "licensegate_decisions_total{decision=\"deny\",reason=\"instance_limit_reached\",route=\"(unmatched)\"}"
        ),
        Some(1.0),
        "{page}"
    );
    assert_eq!(get(&extra.url("/public/x")).await.0.status, 200);
    let targets: Vec<String> = deployment
        .upstream
        .requests()
        .iter()
        .map(|r| r.target().to_owned())
        .collect();
    assert_eq!(
        targets,
        ["/public/x"],
        "no licensed request reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_shadow_the_extra_replica_serves_and_flags_it() {
    let Some(Fleet {
        redis: _redis,
        deployment,
        waiters,
        ..
    }) = fleet(1, "{on_limit: shadow}", 2, HEARTBEAT).await
    else {
        return skip("redis-server is not installed");
    };
    let extra = &waiters[0];
    assert!(ready(extra).await);
    let (parts, _) = get(&extra.url("/reports/shadowed")).await;
    assert_eq!(parts.status, 200);
    let seen = deployment.upstream.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].target(), "/reports/shadowed");
    assert_eq!(
        seen[0].header("x-licensegate-shadow-deny"),
        Some("instance_limit_reached")
    );
    extra.wait_for_log("instance_limit_reached");
    let page = metrics(extra).await;
    assert_eq!(
        metric(
            &page,
            "licensegate_shadow_denials_total{reason=\"instance_limit_reached\",route=\"(unmatched)\"}"
        ),
        Some(1.0),
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_keeps_the_holders_serving_and_the_waiter_out_and_admits_no_third_after() {
    let Some(Fleet {
        mut redis,
        deployment,
        holders,
        waiters,
    }) = fleet(2, "{}", 3, HEARTBEAT).await
    else {
        return skip("redis-server is not installed");
    };
    let waiter = &waiters[0];

    redis.kill();
    for holder in &holders {
        let deadline = Instant::now() + WAIT;
        while slot(holder).await["store_error"].is_null() {
            assert!(Instant::now() < deadline, "the holder never saw the outage");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Well past a lease with the store away: the holders serve on their
    // leases, the waiter stays out.
    let outage = Instant::now();
    let mut served = 0;
    while outage.elapsed() < LEASE * 3 {
        for holder in &holders {
            assert!(ready(holder).await, "{}", readyz(holder).await.1);
            assert_eq!(get(&holder.url("/reports/outage")).await.0.status, 200);
            served += 1;
        }
        assert_eq!(readyz(waiter).await.0, 503);
        assert_eq!(get(&waiter.url("/reports/outage")).await.0.status, 503);
    }
    assert_eq!(
        deployment.upstream.requests().len(),
        served,
        "every request the holders served reached the upstream, none of the waiter's"
    );

    // The store comes back empty: the holders re-assert their slots, and
    // the waiter is not admitted in between or after.
    redis.restart();
    let deadline = Instant::now() + WAIT;
    loop {
        let mut reasserted = 0;
        for holder in &holders {
            let slot = slot(holder).await;
            if slot["store_error"].is_null() && slot["state"] == "held" {
                reasserted += 1;
            }
        }
        if reasserted == holders.len() {
            break;
        }
        assert!(Instant::now() < deadline, "the holders never re-asserted");
        assert_eq!(
            readyz(waiter).await.0,
            503,
            "admitted before the holders re-asserted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let back = Instant::now();
    while back.elapsed() < LEASE * 3 {
        assert_eq!(readyz(waiter).await.0, 503, "a third replica admitted");
        assert_eq!(slot_members(&redis, "p", "lic-1").len(), 2);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for holder in &holders {
        assert!(ready(holder).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn licenses_do_not_share_slots_a_customer_key_does_and_the_key_prefix_isolates_deployments() {
    let Some(redis) = Redis::start() else {
        return skip("redis-server is not installed");
    };
    let deployment = Deployment::new().await;
    let one = |sub: &str| {
        deployment.license(
            sub,
            json!({"plan": "pro", "customer": "ACME", "limits": {"instances": 1}}),
        )
    };
    let (a, b) = (one("lic-a"), one("lic-b"));
    let per_license = deployment.policy("per-license", "{}");
    let per_customer = deployment.policy("per-customer", "{key: 'claim:customer'}");

    // Two licenses of one customer, counted per license: one slot each.
    let both = [
        Proxy::with_config(&deployment.config("a", &a, &per_license, &store(&redis, "p"))),
        Proxy::with_config(&deployment.config("b", &b, &per_license, &store(&redis, "p"))),
    ];
    until_settled(&both, 2).await;
    // Another deployment (key prefix) of license a: its own slot.
    let other = [Proxy::with_config(&deployment.config(
        "a2",
        &a,
        &per_license,
        &store(&redis, "q"),
    ))];
    until_settled(&other, 1).await;
    assert_eq!(slot_members(&redis, "p", "lic-a").len(), 1);
    assert_eq!(slot_members(&redis, "q", "lic-a").len(), 1);

    // Counted per customer, the two licenses share one slot.
    let shared = [
        Proxy::with_config(&deployment.config("ca", &a, &per_customer, &store(&redis, "c"))),
        Proxy::with_config(&deployment.config("cb", &b, &per_customer, &store(&redis, "c"))),
    ];
    until_settled(&shared, 1).await;
    assert_eq!(slot_members(&redis, "c", "customer=ACME").len(), 1);
    for proxy in &shared {
        let slot = slot(proxy).await;
        assert_eq!(slot["holder"], "customer ACME", "{slot}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_shared_store_a_replica_counts_as_the_one_instance() {
    let deployment = Deployment::new().await;
    let policy = deployment.policy("policy", "{}");
    let two = deployment.license("lic-2", json!({"plan": "pro", "limits": {"instances": 2}}));
    let alone = Proxy::with_config(&deployment.config("two", &two, &policy, ""));
    until_settled(std::slice::from_ref(&alone), 1).await;
    alone.wait_for_log("no shared store");
    let (status, report) = readyz(&alone).await;
    assert_eq!(status, 200);
    let note = report["notes"]["instance"].as_str().unwrap();
    assert!(note.contains("no shared store"), "{note}");
    assert_eq!(get(&alone.url("/reports/x")).await.0.status, 200);

    // A limit of 0 still refuses.
    let zero = deployment.license("lic-0", json!({"plan": "pro", "limits": {"instances": 0}}));
    let refused = Proxy::with_config(&deployment.config("zero", &zero, &policy, ""));
    until_settled(std::slice::from_ref(&refused), 0).await;
    assert_eq!(readyz(&refused).await.0, 503);
    assert_eq!(get(&refused.url("/reports/y")).await.0.status, 503);
    let targets: Vec<String> = deployment
        .upstream
        .requests()
        .iter()
        .map(|r| r.target().to_owned())
        .collect();
    assert_eq!(targets, ["/reports/x"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_lists_the_holders_of_the_license() {
    let Some(Fleet {
        redis: _redis,
        holders,
        waiters,
        ..
    }) = fleet(2, "{}", 3, HEARTBEAT).await
    else {
        return skip("redis-server is not installed");
    };
    let admin = waiters[0].admin.to_string();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_licensegate"))
            .args(["usage", "--admin", &admin])
            .env_remove("LICENSEGATE_ADMIN")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        text.contains("instances of license lic-1: 2 of 2 held"),
        "{text}\n{}",
        waiters[0].logs()
    );
    for holder in &holders {
        let name = slot(holder).await["instance"].as_str().unwrap().to_owned();
        assert!(text.contains(&name), "{name} not in\n{text}");
    }
    assert!(text.contains("waits for a slot"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_is_named_by_pod_name_and_a_restarted_pod_finds_its_own_slot() {
    let Some(redis) = Redis::start() else {
        return skip("redis-server is not installed");
    };
    let deployment = Deployment::new().await;
    let license = deployment.license("lic-1", json!({"plan": "pro", "limits": {"instances": 1}}));
    let policy = deployment.policy("policy", "{}");
    // A slow heartbeat: the killed pod's lease outlives its restart.
    let store = store_beating(&redis, "p", SLOW_HEARTBEAT);
    let config = deployment.config("a", &license, &policy, &store);
    let pod = |name: &str| {
        Proxy::try_with_config_env(&config, &[], &[("POD_NAME", name)]).expect("licensegate starts")
    };
    let first = pod("web-7d9c-abcde");
    until_settled(std::slice::from_ref(&first), 1).await;
    assert_eq!(slot(&first).await["instance"], "web-7d9c-abcde");
    let mut both = vec![first, pod("web-7d9c-fghij")];
    until_settled(&both, 1).await;
    let other = both.pop().unwrap();
    assert_eq!(slot(&other).await["state"], "waiting");

    // The holder's container is killed and restarted under the same pod
    // name, well within its lease: it is the holder, not a newcomer, while
    // the other pod still waits.
    let first = both.pop().unwrap();
    first.signal("KILL");
    drop(first);
    let holder_restarted = pod("web-7d9c-abcde");
    let (status, _) = readyz(&holder_restarted).await;
    let deadline = Instant::now() + WAIT;
    let mut status = status;
    while status != 200 {
        assert!(Instant::now() < deadline, "the restarted pod never served");
        tokio::time::sleep(Duration::from_millis(20)).await;
        status = readyz(&holder_restarted).await.0;
    }
    assert_eq!(slot_members(&redis, "p", "lic-1"), ["web-7d9c-abcde"]);
    assert_eq!(slot(&other).await["state"], "waiting");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_license_with_fewer_instances_sends_the_newest_holders_back_to_waiting() {
    let Some(redis) = Redis::start() else {
        return skip("redis-server is not installed");
    };
    let deployment = Deployment::new().await;
    let license = deployment.license("lic-1", json!({"plan": "pro", "limits": {"instances": 2}}));
    let policy = deployment.policy("policy", "{}");
    let config = deployment.config("a", &license, &policy, &store(&redis, "p"));
    let first = Proxy::with_config(&config);
    until_settled(std::slice::from_ref(&first), 1).await;
    let proxies = [first, Proxy::with_config(&config)];
    until_settled(&proxies, 2).await;
    let oldest = slot_members(&redis, "p", "lic-1").remove(0);
    assert_eq!(slot(&proxies[0]).await["instance"], oldest.as_str());

    // The vendor renews the license with one instance: the file is
    // replaced, each replica reloads it, and the slot taken last goes.
    deployment.license("lic-1", json!({"plan": "pro", "limits": {"instances": 1}}));
    let held = until_settled(&proxies, 1).await;
    assert_eq!(held, [true, false], "the oldest holder keeps its slot");
    assert_eq!(slot_members(&redis, "p", "lic-1"), [oldest]);
    assert_eq!(readyz(&proxies[1]).await.0, 503);
    proxies[1].wait_for_log("lost the instance slot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_under_one_name_are_told_they_share_a_slot() {
    let Some(redis) = Redis::start() else {
        return skip("redis-server is not installed");
    };
    let deployment = Deployment::new().await;
    let license = deployment.license("lic-1", json!({"plan": "pro", "limits": {"instances": 1}}));
    let policy = deployment.policy("policy", "{}");
    let config = deployment.config("a", &license, &policy, &store(&redis, "p"));
    let twin = || {
        Proxy::try_with_config_env(&config, &[], &[("POD_NAME", "web-0")])
            .expect("licensegate starts")
    };
    let twins = [twin(), twin()];
    // Both hold "the" slot: one name is one instance to the store.
    until_settled(&twins, 2).await;
    assert_eq!(slot_members(&redis, "p", "lic-1"), ["web-0"]);
    // Each renewal finds the other's process under the name.
    for proxy in &twins {
        proxy.wait_for_log("another replica runs as `web-0`");
        assert!(
            eventually(async || slot(proxy).await["name_shared"] == true).await,
            "{}",
            slot(proxy).await
        );
        let note = readyz(proxy).await.1["notes"]["instance"].clone();
        assert!(
            note.as_str().unwrap().contains("shares this slot"),
            "{note}"
        );
    }
}
