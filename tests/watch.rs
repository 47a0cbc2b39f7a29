//! What the license, keyring and policy watchers reload, through the real
//! binary: nothing while nothing changes, each real change once however it
//! is published (in place, by rename, by a kubelet symlink swap), a file
//! that stays broken reported once rather than on every event, and SIGHUP
//! to check everything again.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::mount::{How, Mount};
use common::*;
use licensegate::license::issue::{jwks, sign, SigningKey};
use licensegate::license::validate::unix_now;
use licensegate::license::Algorithm;
use serde_json::{json, Value};

const ISSUER: &str = "https://vendor.test";

const POLICY_OPEN: &str = "routes:\n  - {name: gate, path: /gate, access: public}\n";
const POLICY_CLOSED: &str = "routes:\n  - {name: gate, path: /gate, access: deny}\n";
const POLICY_BROKEN: &str = "routes:\n  - {name: gate, path: /gate, acces: public}\n";

fn token(sub: &str, key: &SigningKey, kid: &str) -> String {
    let now = unix_now() as i64;
    sign(
        &json!({
            "iss": ISSUER, "sub": sub, "iat": now - 60, "nbf": now - 60, "exp": now + 3600,
            "lic": {"plan": "pro"},
        }),
        key,
        kid,
    )
}

fn keys_json(keys: &[(&SigningKey, &str)]) -> String {
    let public: Vec<_> = keys
        .iter()
        .map(|(key, kid)| key.verifying_key(kid).unwrap())
        .collect();
    jwks(&public).to_string()
}

/// A pod's view: the license and its keys in one Secret mount, the policy
/// in a ConfigMap mount, each published `how`.
struct Pod {
    root: tempfile::TempDir,
    secret: Mount,
    config: Mount,
    k1: SigningKey,
}

impl Pod {
    fn new(how: How, license: Option<&str>, policy: &str) -> Pod {
        let root = tempfile::tempdir().unwrap();
        let k1 = SigningKey::generate(Algorithm::EdDSA).unwrap();
        let license = license.map_or_else(|| token("lic-1", &k1, "k1"), str::to_owned);
        let secret = Mount::new(
            root.path().join("secret"),
            how,
            &[
                ("license.jwt", &license),
                ("keys.json", &keys_json(&[(&k1, "k1")])),
            ],
        );
        let config = Mount::new(root.path().join("config"), how, &[("policy.yaml", policy)]);
        Pod {
            root,
            secret,
            config,
            k1,
        }
    }

    fn config_file(&self, upstream: SocketAddr) -> PathBuf {
        write_file(
            self.root.path(),
            "licensegate.yaml",
            &format!(
                "upstream:\n  url: http://{upstream}\nlicense:\n  issuer: {ISSUER}\n  keys: {}\n  file: {}\n\
                 policy:\n  paths: [{}]\n",
                self.secret.path("keys.json").display(),
                self.secret.path("license.jwt").display(),
                self.config.path("policy.yaml").display(),
            ),
        )
    }

    async fn start(&self) -> Proxy {
        Proxy::with_config(&self.config_file(echo_upstream().await))
    }
}

/// The reload counters, as (license ok, license error, policy ok, policy error).
async fn reloads(proxy: &Proxy) -> [f64; 4] {
    let page = metrics(proxy).await;
    let count = |series: &str| metric(&page, series).unwrap_or(0.0);
    [
        count("licensegate_license_reloads_total{result=\"ok\"}"),
        count("licensegate_license_reloads_total{result=\"error\"}"),
        count("licensegate_policy_reloads_total{result=\"ok\"}"),
        count("licensegate_policy_reloads_total{result=\"error\"}"),
    ]
}

/// Poll until the counters are `expected`; panics with what they were.
async fn expect_reloads(proxy: &Proxy, expected: [f64; 4], after: &str) {
    let mut seen = [0.0; 4];
    let reached = eventually(async || {
        seen = reloads(proxy).await;
        seen == expected
    })
    .await;
    assert!(
        reached,
        "after {after}: reloads (license ok, error, policy ok, error) are {seen:?}, expected {expected:?}; logs:\n{}",
        proxy.logs()
    );
}

/// Sample the counters for `window` (a bounded wait that is itself the
/// assertion: nothing happens while nothing changes).
async fn reloads_over(proxy: &Proxy, window: Duration) -> Vec<[f64; 4]> {
    let until = Instant::now() + window;
    let mut seen = Vec::new();
    while Instant::now() < until {
        seen.push(reloads(proxy).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    seen
}

fn count_logs(proxy: &Proxy, needle: &str) -> usize {
    proxy.logs().matches(needle).count()
}

async fn license_status(proxy: &Proxy) -> Value {
    let (parts, body) = get(&proxy.admin_url("/license")).await;
    assert_eq!(parts.status, 200);
    serde_json::from_slice(&body).unwrap()
}

async fn kids(proxy: &Proxy) -> Vec<String> {
    serde_json::from_value(license_status(proxy).await["keyring"]["kids"].clone()).unwrap()
}

#[tokio::test]
async fn an_idle_proxy_reloads_nothing() {
    // Plain files (their reads are events in the watched directories) and
    // a Secret-style mount (the files live in a subdirectory), side by side.
    let pods = [
        Pod::new(How::Rename, None, POLICY_OPEN),
        Pod::new(How::SecretSwap, None, POLICY_OPEN),
    ];
    let mut proxies = Vec::new();
    for pod in &pods {
        let proxy = pod.start().await;
        assert_eq!(get(&proxy.url("/gate")).await.0.status, 200);
        // The pass each watcher makes once it watches (for changes made
        // while the proxy started) finds everything as loaded.
        for what in ["license file", "keyring files", "policy files"] {
            proxy.wait_for_log(&format!("{what} unchanged since the last reload pass"));
        }
        let passes = count_logs(&proxy, "unchanged since the last reload pass");
        let at_start = reloads(&proxy).await;
        proxies.push((proxy, passes, at_start));
    }
    // The reloads' own reads of the license, the keys, the policy and the
    // symlinks must not trigger further passes: idle means none at all.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        for (proxy, passes, at_start) in &proxies {
            assert_eq!(reloads(proxy).await, *at_start, "an idle proxy reloaded");
            assert_eq!(
                count_logs(proxy, "unchanged since the last reload pass"),
                *passes,
                "an idle proxy made reload passes; logs:\n{}",
                proxy.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (proxy, _, _) in &proxies {
        for (needle, expected) in [
            ("license loaded", 1),
            ("keyring reloaded", 0),
            ("policy reloaded", 0),
            ("policy files unchanged; in force", 0),
        ] {
            let logged = count_logs(proxy, needle);
            assert_eq!(logged, expected, "{needle:?}; logs:\n{}", proxy.logs());
        }
    }
}

/// Every kind of change, published `how`, reloads once; a pass that reads
/// what the last one read (the rest of a Secret swapped along with a
/// changed file, the events after the first of a burst) counts nothing.
async fn each_change_reloads_once(how: How) {
    let mut pod = Pod::new(how, None, POLICY_OPEN);
    let proxy = pod.start().await;
    let [ok, error, _, _] = reloads(&proxy).await;
    let mut expected = [ok, error, 0.0, 0.0];

    // A new license: one license reload, the unchanged keys count nothing.
    pod.secret
        .publish("license.jwt", &token("lic-2", &pod.k1, "k1"));
    proxy.wait_for_log("license=lic-2");
    expected[0] += 1.0;
    expect_reloads(&proxy, expected, "a new license").await;

    // A second key: one keyring reload; the license in force stays.
    let k2 = SigningKey::generate(Algorithm::ES256).unwrap();
    pod.secret
        .publish("keys.json", &keys_json(&[(&pod.k1, "k1"), (&k2, "k2")]));
    assert!(
        eventually(async || kids(&proxy).await == ["k1", "k2"]).await,
        "the keyring never listed k1 and k2: {}",
        proxy.logs()
    );
    expected[0] += 1.0;
    expect_reloads(&proxy, expected, "a new key").await;

    // A license signed by the new key.
    let signed_by_k2 = token("lic-3", &k2, "k2");
    pod.secret.publish("license.jwt", &signed_by_k2);
    proxy.wait_for_log("license=lic-3");
    expected[0] += 1.0;
    expect_reloads(&proxy, expected, "a license signed by the new key").await;

    // A broken license: refused once, the previous one stays in force...
    pod.secret.publish("license.jwt", "garbage");
    proxy.wait_for_log("new license rejected");
    expected[1] += 1.0;
    expect_reloads(&proxy, expected, "a broken license").await;
    assert_eq!(license_status(&proxy).await["last_reload"]["ok"], false);
    // ...and going back to it is a change too: counted, and the failure cleared.
    pod.secret.publish("license.jwt", &signed_by_k2);
    proxy.wait_for_log_count("license=lic-3", 2);
    expected[0] += 1.0;
    expect_reloads(&proxy, expected, "the license in force published again").await;
    assert_eq!(license_status(&proxy).await["last_reload"]["ok"], true);

    // The policy: a change applies once.
    pod.config.publish("policy.yaml", POLICY_CLOSED);
    proxy.wait_for_log("policy reloaded:");
    expected[2] += 1.0;
    expect_reloads(&proxy, expected, "a new policy").await;
    assert_eq!(get(&proxy.url("/gate")).await.0.status, 403);
    // A broken one fails once; going back to the policy in force counts.
    pod.config.publish("policy.yaml", POLICY_BROKEN);
    proxy.wait_for_log("policy reload failed");
    expected[3] += 1.0;
    expect_reloads(&proxy, expected, "a broken policy").await;
    pod.config.publish("policy.yaml", POLICY_CLOSED);
    proxy.wait_for_log("policy files match the policy in force again");
    expected[2] += 1.0;
    expect_reloads(&proxy, expected, "the policy in force published again").await;
    assert_eq!(get(&proxy.url("/gate")).await.0.status, 403);

    // And then nothing more.
    let quiet = reloads_over(&proxy, Duration::from_secs(1)).await;
    assert!(
        quiet.iter().all(|counts| *counts == expected),
        "expected {expected:?} throughout, saw {quiet:?}"
    );
    assert_eq!(
        count_logs(&proxy, "keyring reloaded"),
        1,
        "{}",
        proxy.logs()
    );
}

#[tokio::test]
async fn changes_edited_in_place_reload_once() {
    each_change_reloads_once(How::InPlace).await;
}

#[tokio::test]
async fn changes_renamed_over_reload_once() {
    each_change_reloads_once(How::Rename).await;
}

#[tokio::test]
async fn changes_swapped_in_like_a_kubernetes_secret_reload_once() {
    each_change_reloads_once(How::SecretSwap).await;
}

/// Write a file next to the watched ones: an event in each watched
/// directory that changes nothing the proxy reads.
fn touch_neighbours(pod: &Pod, generation: u32) {
    for dir in [pod.secret.dir(), pod.config.dir()] {
        write_file(dir, "notes.txt", &format!("edit {generation}"));
    }
}

#[tokio::test]
async fn a_broken_file_is_reported_once_not_on_every_event_and_again_on_sighup() {
    let mut pod = Pod::new(How::Rename, Some("garbage"), POLICY_OPEN);
    let proxy = pod.start().await;
    proxy.wait_for_log("no valid license loaded");
    pod.config.publish("policy.yaml", POLICY_BROKEN);
    proxy.wait_for_log("policy reload failed");
    let license_errors = count_logs(&proxy, "no valid license loaded");
    let policy_errors = count_logs(&proxy, "policy reload failed");
    let counts = reloads(&proxy).await;
    assert_eq!(license_errors, 1, "{}", proxy.logs());
    assert_eq!(counts[3], 1.0);

    // Neighbours change: each watcher makes a pass, finds its files as
    // they were, and says so only at debug level.
    let passes: Vec<(String, usize)> = ["license file", "keyring files", "policy files"]
        .iter()
        .map(|what| {
            let needle = format!("{what} unchanged since the last reload pass");
            let seen = count_logs(&proxy, &needle);
            (needle, seen)
        })
        .collect();
    touch_neighbours(&pod, 1);
    for (needle, seen) in &passes {
        proxy.wait_for_log_count(needle, seen + 1);
    }
    touch_neighbours(&pod, 2);
    let window = reloads_over(&proxy, Duration::from_millis(1500)).await;
    assert!(
        window.iter().all(|seen| *seen == counts),
        "expected {counts:?} throughout, saw {window:?}"
    );
    assert_eq!(
        count_logs(&proxy, "no valid license loaded"),
        license_errors
    );
    assert_eq!(count_logs(&proxy, "policy reload failed"), policy_errors);
    assert_eq!(count_logs(&proxy, "ERROR"), license_errors + policy_errors);

    // SIGHUP checks everything again: what is still broken is reported
    // (and counted) again; the keyring in force is unchanged, so quiet.
    proxy.signal("HUP");
    proxy.wait_for_log_count("no valid license loaded", license_errors + 1);
    proxy.wait_for_log_count("policy reload failed", 2 * policy_errors);
    expect_reloads(
        &proxy,
        [counts[0], counts[1] + 1.0, counts[2], counts[3] + 1.0],
        "SIGHUP",
    )
    .await;
    assert_eq!(count_logs(&proxy, "keyring reloaded"), 0);

    // Fixing both is picked up as usual.
    pod.secret
        .publish("license.jwt", &token("lic-1", &pod.k1, "k1"));
    pod.config.publish("policy.yaml", POLICY_OPEN);
    proxy.wait_for_log("license=lic-1");
    proxy.wait_for_log("policy files match the policy in force again");
    assert_eq!(get(&proxy.url("/gate")).await.0.status, 200);
}
