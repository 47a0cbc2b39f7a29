//! `GET /usage` on the admin port and `licensegate usage`, through the real
//! binary: what licenses have used of their quotas, rates and seats after
//! real requests, with their own numbers, from memory and from a real
//! shared `redis-server` across two replicas; bad ids, web pages and an
//! absent proxy refused with clear answers.

mod common;
mod redis;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant, UNIX_EPOCH};

use common::vendor::Vendor;
use common::*;
use http::Request;
use serde_json::{json, Value};

use self::redis::Redis;

const ISSUER: &str = "https://vendor.test";

/// A daily quota and an hourly rate with the license's numbers (a rate slow
/// enough that its burst does not refill while a test looks), seats by
/// `x-user`, and a concurrency limit.
const POLICY: &str = r#"
limits:
  daily: {quota: {limit: lic.limits.daily, default: 5, period: day}}
  hourly: {rate: {limit: 10, per: 1h}}
  users: {seats: {identity: "header:x-user", default: 3, idle: 5m}}
  inflight: {concurrency: {limit: 8}}
routes:
  - {name: api, path: "/api/**", limits: [inflight, hourly, daily, users]}
  - {name: open, path: "/open", access: public}
"#;

struct Setup {
    vendor: Vendor,
}

impl Setup {
    fn new() -> Setup {
        Setup {
            vendor: Vendor::new(POLICY),
        }
    }

    /// A `pro` license `id` with 10 units a day and 4 seats.
    fn token(&self, id: &str) -> String {
        self.vendor.license(json!({
            "iss": ISSUER, "sub": id, "aud": "api",
            "lic": {"plan": "pro", "limits": {"daily": 10}, "seats": 4},
        }))
    }

    /// Header licenses, the policy, and `extra` YAML.
    fn config(&self, upstream: std::net::SocketAddr, extra: &str) -> PathBuf {
        write_file(
            self.vendor.dir(),
            "licensegate.yaml",
            &format!(
                "upstream:\n  url: http://{upstream}\nworkers: 2\nlicense:\n  keys: {}\n  \
                 issuer: {ISSUER}\n  audience: api\n  source: header\npolicy:\n  paths: [{}]\n{extra}",
                self.vendor.keys().display(),
                self.vendor.policy().display(),
            ),
        )
    }
}

/// One request with `token` as `user`; its status.
async fn call(proxy: &Proxy, path: &str, token: &str, user: &str) -> u16 {
    let (parts, body) = send(
        Request::get(proxy.url(path))
            .header("authorization", format!("Bearer {token}"))
            .header("x-user", user)
            .body(empty())
            .unwrap(),
    )
    .await;
    assert!(
        parts.status.is_success(),
        "{path}: {}\n{}",
        parts.status,
        String::from_utf8_lossy(&body)
    );
    parts.status.as_u16()
}

/// `GET /usage{query}` with extra request headers: status, content type, body.
async fn usage(proxy: &Proxy, query: &str, headers: &[(&str, &str)]) -> (u16, String, Value) {
    let mut request = Request::get(proxy.admin_url(&format!("/usage{query}")));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let (parts, body) = send(request.body(empty()).unwrap()).await;
    let kind = parts
        .headers
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    (parts.status.as_u16(), kind, body)
}

/// The answer's entry for `license`.
fn license<'a>(answer: &'a Value, id: &str) -> &'a Value {
    answer["licenses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["license"] == id)
        .unwrap_or_else(|| panic!("no {id} in {answer:#}"))
}

/// The row of limit `name` in a license's entry.
fn limit<'a>(license: &'a Value, name: &str) -> &'a Value {
    license["limits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == name)
        .unwrap_or_else(|| panic!("no limit {name} in {license:#}"))
}

fn unix(rfc3339: &Value) -> u64 {
    humantime::parse_rfc3339(rfc3339.as_str().unwrap())
        .unwrap()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The next UTC midnight after the answer's time, as `/usage` writes it.
fn next_midnight(answer: &Value) -> String {
    let day = unix(&answer["time"]) / 86_400 + 1;
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(day * 86_400)).to_string()
}

#[tokio::test]
async fn usage_shows_what_a_license_used_of_its_quota_rate_and_seats() {
    let setup = Setup::new();
    let proxy = Proxy::with_config(&setup.config(echo_upstream().await, ""));
    let token = setup.token("lic-1");
    for user in ["alice", "bob", "alice", "alice"] {
        call(&proxy, "/api/items", &token, user).await;
    }
    call(&proxy, "/api/items", &setup.token("lic-2"), "carol").await;
    call(&proxy, "/open", &token, "alice").await;

    let (status, kind, answer) = usage(&proxy, "?license=lic-1", &[]).await;
    assert_eq!(
        (status, kind.as_str()),
        (200, "application/json"),
        "{answer:#}"
    );
    assert_eq!(answer["store"], "memory");
    let lic = license(&answer, "lic-1");
    assert_eq!(answer["licenses"].as_array().unwrap().len(), 1);
    assert_eq!(lic["plan"], "pro");
    assert_eq!(lic["entitlement"], "recent");

    // Four requests of the license's 10 a day; the window ends at midnight UTC.
    let daily = limit(lic, "daily");
    assert_eq!(
        (
            &daily["kind"],
            &daily["key"],
            &daily["used"],
            &daily["limit"],
            &daily["remaining"]
        ),
        (
            &json!("quota"),
            &json!("lic-1"),
            &json!(4),
            &json!(10),
            &json!(6)
        ),
        "{daily:#}"
    );
    assert_eq!(daily["reset"], next_midnight(&answer));
    assert_eq!(daily["window_seconds"], 86_400);
    assert_eq!(daily["store"], "memory");

    // Four of a burst of 10 per hour in use; whole again 24 minutes on.
    let hourly = limit(lic, "hourly");
    assert_eq!(
        (
            &hourly["used"],
            &hourly["limit"],
            &hourly["remaining"],
            &hourly["burst"]
        ),
        (&json!(4), &json!(10), &json!(6), &json!(10)),
        "{hourly:#}"
    );
    let refill = unix(&hourly["reset"]) - unix(&answer["time"]);
    assert!((23 * 60..=24 * 60 + 1).contains(&refill), "{refill} s");
    assert_eq!(hourly["window_seconds"], 3600);

    // alice and bob hold two of the license's 4 seats.
    let users = limit(lic, "users");
    assert_eq!(
        (
            &users["used"],
            &users["limit"],
            &users["remaining"],
            &users["window_seconds"]
        ),
        (&json!(2), &json!(4), &json!(2), &json!(300)),
        "{users:#}"
    );
    assert_eq!(users["reset"], Value::Null);
    // Nothing is in flight once the responses are sent.
    let inflight = limit(lic, "inflight");
    assert_eq!(
        (&inflight["used"], &inflight["limit"]),
        (&json!(0), &json!(8))
    );

    // Without `license`: every license with usage on this replica.
    let (status, _, all) = usage(&proxy, "", &[]).await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = all["licenses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["license"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["lic-1", "lic-2"]);
    assert_eq!(all["truncated"], false);
    assert_eq!(limit(license(&all, "lic-2"), "daily")["used"], 1);

    // A license this replica has not seen: an empty list, not an error.
    let (status, _, unseen) = usage(&proxy, "?license=lic-unseen", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(unseen["licenses"], json!([]));
}

#[tokio::test]
async fn usage_refuses_bad_ids_and_web_pages() {
    let setup = Setup::new();
    let proxy = Proxy::with_config(&setup.config(echo_upstream().await, ""));
    call(&proxy, "/api/items", &setup.token("lic-1"), "alice").await;

    for query in [
        "?license=",
        "?license=%7Blic-1%7D",
        "?license=lic%0A1",
        &format!("?license={}", "x".repeat(300)),
        "?license=lic-1&license=lic-2",
        "?tenant=lic-1",
    ] {
        let (status, kind, problem) = usage(&proxy, query, &[]).await;
        assert_eq!(status, 400, "{query}: {problem:#}");
        assert_eq!(kind, "application/problem+json", "{query}");
        assert_eq!(problem["status"], 400);
        assert!(
            problem["detail"].as_str().unwrap().len() > 10,
            "{problem:#}"
        );
    }

    // A page in a browser on this machine must not read customers' usage:
    // cross-site, or same-origin through a rebound DNS name.
    for headers in [
        [("sec-fetch-site", "cross-site")],
        [("sec-fetch-site", "same-site")],
        [("sec-fetch-site", "same-origin")],
        [("origin", "http://evil.example")],
    ] {
        let (status, kind, problem) = usage(&proxy, "?license=lic-1", &headers).await;
        assert_eq!(status, 403, "{headers:?}: {problem:#}");
        assert_eq!(kind, "application/problem+json");
        assert!(
            problem["detail"].as_str().unwrap().contains("web pages"),
            "{problem:#}"
        );
    }
    // A person who typed the address is no web page.
    let (status, _, answer) = usage(&proxy, "?license=lic-1", &[("sec-fetch-site", "none")]).await;
    assert_eq!(status, 200);
    assert_eq!(limit(license(&answer, "lic-1"), "daily")["used"], 1);

    // Per-customer data is never cached.
    let (parts, _) = get(&proxy.admin_url("/usage?license=lic-1")).await;
    assert_eq!(parts.headers["cache-control"], "no-store");
}

#[tokio::test]
async fn a_deployment_license_shows_its_own_numbers() {
    let setup = Setup::new();
    let file = write_file(
        setup.vendor.dir(),
        "license.jwt",
        &setup.token("lic-deploy"),
    );
    let config = write_file(
        setup.vendor.dir(),
        "deployment.yaml",
        &format!(
            "upstream:\n  url: http://{}\nlicense:\n  keys: {}\n  file: {}\npolicy:\n  paths: [{}]\n",
            echo_upstream().await,
            setup.vendor.keys().display(),
            file.display(),
            setup.vendor.policy().display(),
        ),
    );
    let proxy = Proxy::with_config(&config);
    for _ in 0..3 {
        let (parts, _) = send(
            Request::get(proxy.url("/api/x"))
                .header("x-user", "alice")
                .body(empty())
                .unwrap(),
        )
        .await;
        assert_eq!(parts.status, 200);
    }
    // Listed without being asked for: it is the deployment's license.
    let (_, _, answer) = usage(&proxy, "", &[]).await;
    let lic = license(&answer, "lic-deploy");
    assert_eq!(lic["entitlement"], "deployment");
    let daily = limit(lic, "daily");
    assert_eq!(
        (&daily["used"], &daily["limit"], &daily["remaining"]),
        (&json!(3), &json!(10), &json!(7))
    );
}

/// `licensegate usage ARGS`, without the environment's admin address.
async fn cli(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_licensegate"))
            .arg("usage")
            .args(&args)
            .env_remove("LICENSEGATE_ADMIN")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// The words of the table row that starts with `first`.
fn row<'a>(stdout: &'a str, first: &str) -> Vec<&'a str> {
    stdout
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|words| words.first() == Some(&first))
        .unwrap_or_else(|| panic!("no row {first}:\n{stdout}"))
}

#[tokio::test]
async fn the_cli_prints_the_table_or_the_json_and_says_when_nothing_answers() {
    let setup = Setup::new();
    let proxy = Proxy::with_config(&setup.config(echo_upstream().await, ""));
    let token = setup.token("lic-1");
    for user in ["alice", "bob", "alice"] {
        call(&proxy, "/api/items", &token, user).await;
    }
    let admin = proxy.admin.to_string();

    let output = cli(&["--admin", &admin, "--license", "lic-1"]).await;
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.starts_with(
            "license lic-1 (plan pro; numbers from a license this replica saw recently)\n"
        ),
        "{stdout}"
    );
    assert_eq!(
        row(&stdout, "LIMIT"),
        [
            "LIMIT",
            "KIND",
            "USED",
            "LIMIT",
            "REMAINING",
            "RESETS",
            "IN",
            "STORE"
        ]
    );
    let daily = row(&stdout, "daily");
    assert_eq!(daily[..5], ["daily", "quota", "3", "10", "7"], "{stdout}");
    assert_eq!(daily.last(), Some(&"memory"));
    let hourly = row(&stdout, "hourly");
    assert_eq!(hourly[..5], ["hourly", "rate", "3", "10", "7"], "{stdout}");
    // Three of 10 an hour: whole again in about 18 minutes.
    assert!(["17m", "18m"].contains(&hourly[5]), "{stdout}");
    assert_eq!(
        row(&stdout, "users")[..6],
        ["users", "seats", "2", "4", "2", "-"]
    );
    assert_eq!(
        row(&stdout, "inflight")[..5],
        ["inflight", "concurrency", "0", "8", "8"]
    );

    // --json: the admin port's answer as it is.
    let output = cli(&["--admin", &admin, "--license", "lic-1", "--json"]).await;
    assert!(output.status.success());
    let printed: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(limit(license(&printed, "lic-1"), "daily")["used"], 3);

    // Every license, and a license not seen.
    let output = cli(&["--admin", &admin]).await;
    assert!(String::from_utf8(output.stdout)
        .unwrap()
        .starts_with("license lic-1 "));
    let output = cli(&["--admin", &admin, "--license", "lic-unseen"]).await;
    assert!(output.status.success());
    assert!(String::from_utf8(output.stdout)
        .unwrap()
        .starts_with("no usage of license `lic-unseen` on this replica"));

    // A bad id never leaves the command line.
    let output = cli(&["--admin", &admin, "--license", "{lic}"]).await;
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("not a license id"));

    // Nothing on the address: a clear message and EX_UNAVAILABLE.
    let closed = closed_port().to_string();
    let output = cli(&["--admin", &closed]).await;
    assert_eq!(output.status.code(), Some(licensegate::exit::UNAVAILABLE));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains(&format!("nothing answers on {closed}")),
        "{stderr}"
    );
    assert!(output.stdout.is_empty());
}

/// Wait (bounded) for `/readyz` to say 200: the store's first connection
/// attempt has been made.
async fn wait_ready(proxy: &Proxy) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (parts, body) = get(&proxy.admin_url("/readyz")).await;
        if parts.status == 200 && String::from_utf8_lossy(&body).contains("shared counters on") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not ready with the store: {}\n{}",
            String::from_utf8_lossy(&body),
            proxy.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_shared_store_each_replica_reads_the_shared_counts() {
    let Some(redis) = Redis::start() else { return };
    let setup = Setup::new();
    let config = setup.config(
        echo_upstream().await,
        &format!("store:\n  url: {}\n", redis.url()),
    );
    let (a, b) = (Proxy::with_config(&config), Proxy::with_config(&config));
    wait_ready(&a).await;
    wait_ready(&b).await;
    let token = setup.token("lic-1");
    for _ in 0..3 {
        call(&a, "/api/items", &token, "alice").await;
    }
    for _ in 0..2 {
        call(&b, "/api/items", &token, "bob").await;
    }
    // Seen by replica b only.
    call(&b, "/api/items", &setup.token("lic-2"), "carol").await;

    for proxy in [&a, &b] {
        let (status, _, answer) = usage(proxy, "?license=lic-1", &[]).await;
        assert_eq!(status, 200, "{answer:#}");
        assert_eq!(answer["store"], "shared");
        assert_eq!(answer["notes"], json!([]), "{answer:#}");
        let lic = license(&answer, "lic-1");
        for (name, used, limit_number) in [("daily", 5, 10), ("hourly", 5, 10), ("users", 2, 4)] {
            let row = limit(lic, name);
            assert_eq!(
                (
                    &row["used"],
                    &row["limit"],
                    &row["remaining"],
                    &row["store"]
                ),
                (
                    &json!(used),
                    &json!(limit_number),
                    &json!(limit_number - used),
                    &json!("shared")
                ),
                "{name}: {row:#}"
            );
        }
        assert_eq!(limit(lic, "daily")["reset"], next_midnight(&answer));
        // Concurrency is always counted per replica.
        assert_eq!(limit(lic, "inflight")["store"], "memory");
    }

    // Replica a never saw lic-2: the store's counts, but not its numbers.
    let (_, _, answer) = usage(&a, "?license=lic-2", &[]).await;
    let lic = license(&answer, "lic-2");
    assert_eq!(lic["entitlement"], "unknown");
    let daily = limit(lic, "daily");
    assert_eq!(
        (
            &daily["used"],
            &daily["limit"],
            &daily["limit_known"],
            &daily["store"]
        ),
        (&json!(1), &Value::Null, &json!(false), &json!("shared")),
        "{daily:#}"
    );
    // A fixed number is known all the same.
    assert_eq!(limit(lic, "hourly")["limit"], 10);

    // The store gone: each replica's own counts, and a note that says so.
    drop(redis);
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, _, answer) = usage(&a, "?license=lic-1", &[]).await;
        if limit(license(&answer, "lic-1"), "daily")["store"] == "memory" {
            assert!(
                answer["notes"][0]
                    .as_str()
                    .unwrap()
                    .contains("could not be read"),
                "{answer:#}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{answer:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
