//! The policy engine end to end, through the real binary: routes, features,
//! plans, every kind of limit, shadow mode, path normalisation against
//! bypasses, quota persistence, hot reload, start-up errors, the decision
//! log and the demo.
//!
//! Nothing here sleeps to synchronise: tests wait on log lines, `/metrics`
//! values or responses, and every loop is bounded.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use common::*;
use http::{HeaderMap, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use licensegate::demo::EchoReport;
use licensegate::license::issue::{sign, SigningKey};
use licensegate::license::validate::unix_now;
use licensegate::license::Algorithm;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ISSUER: &str = "https://vendor.test";

// ---------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------

/// A temporary directory with a vendor key (`keys/k1.pem`), a policy
/// directory and room for a config file.
struct Setup {
    dir: tempfile::TempDir,
    key: SigningKey,
}

/// Where the proxy gets its license from.
enum Source<'a> {
    /// No `license` section.
    None,
    /// A token per request in `Authorization`.
    Header,
    /// One deployment license in a file (the token).
    File(&'a str),
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("keys")).unwrap();
        std::fs::create_dir(dir.path().join("policy")).unwrap();
        let key = SigningKey::generate(Algorithm::EdDSA).unwrap();
        std::fs::write(dir.path().join("keys/k1.pem"), key.public_key_pem()).unwrap();
        Setup { dir, key }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The policy file, alone in its directory (the directory is watched).
    fn policy_path(&self) -> PathBuf {
        self.path("policy/policy.yaml")
    }

    fn write_policy(&self, text: &str) -> PathBuf {
        let path = self.policy_path();
        std::fs::write(&path, text).unwrap();
        path
    }

    /// A license valid for an hour, for subject `sub`, with `lic` claims.
    fn token(&self, sub: &str, lic: Value) -> String {
        let now = unix_now() as i64;
        sign(
            &json!({
                "iss": ISSUER, "sub": sub, "aud": "api",
                "iat": now - 60, "nbf": now - 60, "exp": now + 3600,
                "lic": lic,
            }),
            &self.key,
            "k1",
        )
    }

    /// A config file for `upstream`, the policy file, a license `source`,
    /// extra `policy:` settings (indented two spaces) and extra top-level YAML.
    fn config(
        &self,
        upstream: SocketAddr,
        source: Source<'_>,
        policy_settings: &str,
        extra: &str,
    ) -> PathBuf {
        let license = match source {
            Source::None => String::new(),
            Source::Header => format!(
                "license:\n  keys: {}\n  issuer: {ISSUER}\n  audience: api\n  source: header\n",
                self.path("keys").display()
            ),
            Source::File(token) => {
                let file = self.path("license.jwt");
                std::fs::write(&file, token).unwrap();
                format!(
                    "license:\n  keys: {}\n  issuer: {ISSUER}\n  audience: api\n  file: {}\n",
                    self.path("keys").display(),
                    file.display()
                )
            }
        };
        write_file(
            self.dir.path(),
            "licensegate.yaml",
            &format!(
                "upstream:\n  url: http://{upstream}\nworkers: 2\n{license}policy:\n  paths: [{}]\n{policy_settings}{extra}",
                self.policy_path().display()
            ),
        )
    }

    /// Write `policy`, then start a proxy in front of `upstream`.
    fn start(&self, upstream: SocketAddr, source: Source<'_>, policy: &str) -> Proxy {
        self.write_policy(policy);
        Proxy::with_config(&self.config(upstream, source, "", ""))
    }
}

/// Replace the policy file the way a ConfigMap update does: write a
/// temporary file next to it and rename it over the original.
fn swap_policy(path: &Path, text: &str) {
    let temp = path.with_file_name(".policy.yaml.swap");
    std::fs::write(&temp, text).unwrap();
    std::fs::rename(&temp, path).unwrap();
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A response, whole.
struct Reply {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The problem+json `reason`, or "" when the body is not a problem.
    fn reason(&self) -> String {
        serde_json::from_slice::<Value>(&self.body)
            .ok()
            .and_then(|v| v["reason"].as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    fn detail(&self) -> String {
        serde_json::from_slice::<Value>(&self.body)
            .ok()
            .and_then(|v| v["detail"].as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// What the echo upstream saw.
    fn echo(&self) -> EchoReport {
        assert_eq!(self.status, 200, "not forwarded: {}", self.text());
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("echo report: {e}: {}", self.text()))
    }

    /// Assert a problem+json denial with `status` and `reason`.
    #[track_caller]
    fn assert_denied(&self, status: u16, reason: &str) {
        assert_eq!(
            (self.status, self.reason().as_str()),
            (status, reason),
            "{}",
            self.text()
        );
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json")
        );
    }

    fn retry_after(&self) -> u64 {
        self.header("retry-after")
            .expect("Retry-After")
            .parse()
            .expect("Retry-After in seconds")
    }
}

/// Values the upstream received under `name` (echo upstream).
fn seen<'a>(report: &'a EchoReport, name: &str) -> Vec<&'a str> {
    report
        .headers
        .get(name)
        .map(|values| values.iter().map(String::as_str).collect())
        .unwrap_or_default()
}

/// One request through hyper's client.
async fn call(proxy: &Proxy, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut request = Request::builder().method(method).uri(proxy.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let (parts, body) = send(request.body(empty()).unwrap()).await;
    Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    }
}

/// One HTTP/1.1 request written byte for byte on a fresh connection (for
/// targets hyper's client would refuse or rewrite), optionally from a
/// given local address.
async fn raw_from(local: Option<IpAddr>, addr: SocketAddr, head: &str) -> Reply {
    let mut stream = match local {
        None => tokio::net::TcpStream::connect(addr).await.unwrap(),
        Some(ip) => {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(SocketAddr::new(ip, 0)).unwrap();
            socket.connect(addr).await.unwrap()
        }
    };
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .expect("the proxy answers and closes")
        .unwrap();
    parse_response(&response)
}

async fn raw(addr: SocketAddr, head: &str) -> Reply {
    raw_from(None, addr, head).await
}

/// A request head for `raw`: `Host: app.test`, `Connection: close`, plus
/// `extra` header lines (each ending in CRLF).
fn head(method: &str, target: &str, extra: &str) -> String {
    format!("{method} {target} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n{extra}\r\n")
}

fn parse_response(bytes: &[u8]) -> Reply {
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head: {:?}", String::from_utf8_lossy(bytes)));
    let text = String::from_utf8_lossy(&bytes[..end]).into_owned();
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line: {text}"));
    let mut headers = HeaderMap::new();
    for line in lines {
        let (name, value) = line.split_once(':').unwrap();
        headers.append(
            http::HeaderName::from_bytes(name.trim().as_bytes()).unwrap(),
            value.trim().parse().unwrap(),
        );
    }
    Reply {
        status,
        headers,
        body: Bytes::copy_from_slice(&bytes[end + 4..]),
    }
}

/// What one request looked like when it reached the recording upstream.
#[derive(Clone, Debug)]
struct Arrival {
    method: String,
    target: String,
    hosts: Vec<String>,
}

/// An upstream that records every request it receives and answers 200 "ok"
/// (405 to CONNECT, so nothing becomes a tunnel).
async fn recording_upstream() -> (SocketAddr, Arc<Mutex<Vec<Arrival>>>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&log);
    let addr = upstream(move |request: Request<Incoming>| {
        let sink = Arc::clone(&sink);
        async move {
            let arrival = Arrival {
                method: request.method().to_string(),
                target: request.uri().to_string(),
                hosts: request
                    .headers()
                    .get_all("host")
                    .iter()
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                    .collect(),
            };
            let connect = request.method() == http::Method::CONNECT;
            sink.lock().push(arrival);
            let mut response = Response::new(full("ok"));
            if connect {
                *response.status_mut() = http::StatusCode::METHOD_NOT_ALLOWED;
            }
            response
        }
    })
    .await;
    (addr, log)
}

/// The route a `deny` route's problem detail names.
fn denied_route(reply: &Reply) -> String {
    if reply.status == 404 {
        return "(unmatched)".into();
    }
    assert_eq!(reply.reason(), "route_denied", "{}", reply.text());
    let detail = reply.detail();
    detail
        .strip_prefix("route `")
        .and_then(|rest| rest.split('`').next())
        .unwrap_or_else(|| panic!("detail names no route: {detail}"))
        .to_owned()
}

fn metric_value(page: &str, series: &str) -> f64 {
    metric(page, series).unwrap_or(0.0)
}

async fn readyz(proxy: &Proxy) -> (u16, Value) {
    let (parts, body) = get(&proxy.admin_url("/readyz")).await;
    (
        parts.status.as_u16(),
        serde_json::from_slice(&body).unwrap(),
    )
}

/// Seconds from now to the next UTC midnight (a daily quota's reset).
fn seconds_to_midnight() -> u64 {
    86_400 - unix_now() % 86_400
}

// ---------------------------------------------------------------------------
// 1. Every schema feature end to end
// ---------------------------------------------------------------------------

#[tokio::test]
async fn public_licensed_denied_and_unmatched_routes() {
    let setup = Setup::new();
    let proxy = setup.start(
        echo_upstream().await,
        Source::Header,
        r#"
routes:
  - name: health
    path: /health
    access: public
  - name: reports
    path: /reports/**
    features: [reports]
  - name: export
    path: /export/**
    features: [export]
  - name: admin
    path: /admin/**
    access: deny
  - name: open
    path: /open/**
"#,
    );
    let token = setup.token(
        "lic-a",
        json!({"plan": "pro", "features": ["reports", "beta"]}),
    );
    let auth = bearer(&token);
    let forged: &[(&str, &str)] = &[
        ("x-license-id", "forged-1"),
        ("x-license-id", "forged-2"),
        ("x-license-plan", "enterprise"),
        ("x-license-features", "export,everything"),
        ("x-licensegate-shadow-deny", "nothing"),
    ];

    // Public: no license needed, and forged entitlement headers never pass.
    let reply = call(&proxy, "GET", "/health", forged).await;
    let report = reply.echo();
    for name in [
        "x-license-id",
        "x-license-plan",
        "x-license-features",
        "x-licensegate-shadow-deny",
    ] {
        assert!(seen(&report, name).is_empty(), "{name} passed through");
    }

    // Licensed with the feature: forwarded with the verified values only.
    let reply = call(&proxy, "GET", "/reports/q3", &[("authorization", &auth)]).await;
    let report = reply.echo();
    assert_eq!(report.path, "/reports/q3");
    assert_eq!(seen(&report, "x-license-id"), ["lic-a"]);
    assert_eq!(seen(&report, "x-license-plan"), ["pro"]);
    assert_eq!(seen(&report, "x-license-features"), ["beta,reports"]);
    let mut with_forgeries = forged.to_vec();
    with_forgeries.push(("authorization", &auth));
    let report = call(&proxy, "GET", "/reports/q3", &with_forgeries)
        .await
        .echo();
    assert_eq!(seen(&report, "x-license-id"), ["lic-a"]);
    assert_eq!(seen(&report, "x-license-plan"), ["pro"]);
    assert_eq!(seen(&report, "x-license-features"), ["beta,reports"]);
    assert!(seen(&report, "x-licensegate-shadow-deny").is_empty());

    // Licensed without a license: 401.
    call(&proxy, "GET", "/reports/q3", &[])
        .await
        .assert_denied(401, "license_missing");
    // A licensed route without features needs only the license.
    assert_eq!(
        call(&proxy, "GET", "/open/x", &[("authorization", &auth)])
            .await
            .status,
        200
    );

    // Feature missing.
    let reply = call(&proxy, "GET", "/export/csv", &[("authorization", &auth)]).await;
    reply.assert_denied(403, "feature_not_licensed");
    assert!(reply.detail().contains("`export`"), "{}", reply.detail());
    assert_eq!(reply.header("cache-control"), Some("no-store"));

    // `access: deny` comes before the license check.
    for headers in [&[("authorization", auth.as_str())][..], &[]] {
        let reply = call(&proxy, "GET", "/admin/users", headers).await;
        reply.assert_denied(403, "route_denied");
        assert_eq!(denied_route(&reply), "admin");
        // Unmatched, with the default `unmatched: deny`.
        call(&proxy, "GET", "/nowhere", headers)
            .await
            .assert_denied(404, "route_not_found");
    }

    let page = metrics(&proxy).await;
    assert_eq!(
        metric(
            &page,
            r#"licensegate_decisions_total{decision="deny",reason="feature_not_licensed",route="export"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &page,
            r#"licensegate_decisions_total{decision="deny",reason="route_not_found",route="(unmatched)"}"#
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &page,
            r#"licensegate_decisions_total{decision="allow",reason="allowed",route="reports"}"#
        ),
        Some(2.0)
    );
    assert_eq!(metric(&page, "licensegate_policy_loaded"), Some(1.0));
    assert_eq!(metric(&page, "licensegate_policy_routes"), Some(5.0));
}

#[tokio::test]
async fn routes_are_chosen_by_documented_precedence() {
    let setup = Setup::new();
    // Every route denies, so the problem detail names the route chosen.
    let proxy = setup.start(
        echo_upstream().await,
        Source::None,
        r#"
routes:
  - {name: p-rest, path: "/p/**", access: deny}
  - {name: p-param, path: "/p/{id}", access: deny}
  - {name: p-star-x, path: "/p/*/x", access: deny}
  - {name: p-literal, path: /p/literal, access: deny}
  - {name: m-any, path: /m, access: deny}
  - {name: m-write, path: /m, methods: [post, PUT], access: deny}
  - {name: b-param, path: "/b/{x}", access: deny}
  - {name: b-literal-post, path: /b/literal, methods: [POST], access: deny}
  - {name: h-any, path: /h, access: deny}
  - {name: h-wild, path: /h, host: "*.example.com", access: deny}
  - {name: h-exact, path: /h, host: api.example.com, access: deny}
  - {name: hm-get, path: /hm, methods: [GET], access: deny}
  - {name: hm-host, path: /hm, host: "*.example.com", access: deny}
  - {name: hd-none, path: /hd, access: deny}
  - {name: hd-gold, path: /hd, headers: {x-tier: gold}, access: deny}
  - name: hd-gold-beta
    path: /hd
    headers: {x-tier: {equals: gold}, x-beta: {present: true}}
    access: deny
  - {name: hd-v2, path: /hd, headers: {x-version: {prefix: v2}}, access: deny}
  - {name: hp-any, path: /hp, access: deny}
  - {name: hp-no-beta, path: /hp, headers: {x-beta: {present: false}}, access: deny}
  - {name: c-literal, path: /c/literal, access: deny}
  - {name: c-param-host, path: "/c/{id}", host: api.example.com, methods: [GET], access: deny}
"#,
    );
    type Case<'a> = (
        &'a str,
        &'a str,
        Option<&'a str>,
        &'a [(&'a str, &'a str)],
        &'a str,
    );
    let cases: &[Case<'_>] = &[
        // Path: literal beats {param}/* beats **; a deeper match beats `**`.
        ("GET", "/p/literal", None, &[], "p-literal"),
        ("GET", "/p/literal/", None, &[], "p-literal"),
        ("GET", "/p/other", None, &[], "p-param"),
        ("GET", "/p/a/x", None, &[], "p-star-x"),
        ("GET", "/p/a/y", None, &[], "p-rest"),
        ("GET", "/p/a/x/z", None, &[], "p-rest"),
        ("GET", "/p", None, &[], "p-rest"),
        // Methods (written in any case) beat no methods.
        ("POST", "/m", None, &[], "m-write"),
        ("PUT", "/m", None, &[], "m-write"),
        ("GET", "/m", None, &[], "m-any"),
        // A literal route that refuses the method: the walk backtracks.
        ("GET", "/b/literal", None, &[], "b-param"),
        ("POST", "/b/literal", None, &[], "b-literal-post"),
        // Exact host beats `*.example.com` beats none; case and port ignored.
        ("GET", "/h", Some("api.example.com"), &[], "h-exact"),
        ("GET", "/h", Some("API.Example.COM:8443"), &[], "h-exact"),
        ("GET", "/h", Some("x.example.com"), &[], "h-wild"),
        ("GET", "/h", Some("a.b.example.com"), &[], "h-wild"),
        ("GET", "/h", Some("example.com"), &[], "h-any"),
        ("GET", "/h", Some("notexample.com"), &[], "h-any"),
        // A host condition outranks a method condition.
        ("GET", "/hm", Some("a.example.com"), &[], "hm-host"),
        ("GET", "/hm", Some("other.test"), &[], "hm-get"),
        ("POST", "/hm", Some("other.test"), &[], "(unmatched)"),
        // More header conditions beat fewer; equal counts go by file order.
        (
            "GET",
            "/hd",
            None,
            &[("x-tier", "gold"), ("x-beta", "1")],
            "hd-gold-beta",
        ),
        ("GET", "/hd", None, &[("x-tier", "gold")], "hd-gold"),
        ("GET", "/hd", None, &[("x-tier", "Gold")], "hd-none"),
        ("GET", "/hd", None, &[("x-tier", "silver")], "hd-none"),
        ("GET", "/hd", None, &[("x-version", "v2.1")], "hd-v2"),
        ("GET", "/hd", None, &[("x-version", "v1")], "hd-none"),
        (
            "GET",
            "/hd",
            None,
            &[("x-tier", "gold"), ("x-version", "v2")],
            "hd-gold",
        ),
        ("GET", "/hp", None, &[], "hp-no-beta"),
        ("GET", "/hp", None, &[("x-beta", "")], "hp-any"),
        // The host decides first: a parameter route for the host beats a
        // host-less literal, which serves other hosts.
        (
            "GET",
            "/c/literal",
            Some("api.example.com"),
            &[],
            "c-param-host",
        ),
        ("GET", "/c/literal", Some("other.test"), &[], "c-literal"),
        // A host route that refuses the method: the host-less one serves.
        (
            "POST",
            "/c/literal",
            Some("api.example.com"),
            &[],
            "c-literal",
        ),
        (
            "GET",
            "/c/other",
            Some("api.example.com"),
            &[],
            "c-param-host",
        ),
        ("GET", "/c/other", None, &[], "(unmatched)"),
        ("GET", "/zzz", None, &[], "(unmatched)"),
    ];
    for (method, path, host, headers, expected) in cases {
        let mut all = headers.to_vec();
        if let Some(host) = host {
            all.push(("host", host));
        }
        let reply = call(&proxy, method, path, &all).await;
        assert_eq!(
            denied_route(&reply),
            *expected,
            "{method} {path} host={host:?} headers={headers:?}: {}",
            reply.text()
        );
    }
}

#[tokio::test]
async fn plans_supply_features_and_limits_and_the_license_overrides_them() {
    let setup = Setup::new();
    let proxy = setup.start(
        echo_upstream().await,
        Source::Header,
        r#"
plans:
  gold:
    features: [reports]
    limits: {calls: 2}
limits:
  calls:
    rate: {limit: lic.limits.calls, default: 1, per: 1h}
routes:
  - {name: reports, path: "/reports/**", features: [reports], limits: [calls]}
  - {name: export, path: "/export/**", features: [export]}
"#,
    );
    // Until the (N+1)th request: how many passed, and the refusal.
    async fn until_refused(proxy: &Proxy, token: &str) -> (usize, Reply) {
        let auth = bearer(token);
        for passed in 0..10 {
            let reply = call(proxy, "GET", "/reports/x", &[("authorization", &auth)]).await;
            if reply.status != 200 {
                return (passed, reply);
            }
        }
        panic!("never limited");
    }

    // Only `plan: gold`: the plan's feature and its limit of 2.
    let plan_only = setup.token("lic-plan", json!({"plan": "gold"}));
    let report = call(
        &proxy,
        "GET",
        "/reports/x",
        &[("authorization", &bearer(&plan_only))],
    )
    .await
    .echo();
    assert_eq!(seen(&report, "x-license-plan"), ["gold"]);
    assert_eq!(seen(&report, "x-license-features"), ["reports"]);
    let (passed, refusal) = until_refused(&proxy, &plan_only).await;
    assert_eq!(passed + 1, 2, "the plan's limit");
    refusal.assert_denied(429, "rate_limited");
    assert_eq!(
        refusal.header("ratelimit-policy"),
        Some("\"calls\";q=2;w=3600")
    );
    let reply = call(
        &proxy,
        "GET",
        "/export/x",
        &[("authorization", &bearer(&plan_only))],
    )
    .await;
    reply.assert_denied(403, "feature_not_licensed");
    assert!(reply.detail().contains("plan `gold`"), "{}", reply.detail());

    // `lic.limits.calls` beats the plan.
    let own_limit = setup.token("lic-own", json!({"plan": "gold", "limits": {"calls": 4}}));
    let (passed, refusal) = until_refused(&proxy, &own_limit).await;
    assert_eq!(passed, 4, "the license's own limit");
    assert_eq!(
        refusal.header("ratelimit-policy"),
        Some("\"calls\";q=4;w=3600")
    );

    // A plan the policy does not define: the limit's default, the license's features.
    let unknown_plan = setup.token(
        "lic-basic",
        json!({"plan": "basic", "features": ["reports"]}),
    );
    let (passed, refusal) = until_refused(&proxy, &unknown_plan).await;
    assert_eq!(passed, 1, "the limit's default");
    assert_eq!(
        refusal.header("ratelimit-policy"),
        Some("\"calls\";q=1;w=3600")
    );

    // License features add to the plan's.
    let plus_export = setup.token("lic-plus", json!({"plan": "gold", "features": ["export"]}));
    let report = call(
        &proxy,
        "GET",
        "/export/x",
        &[("authorization", &bearer(&plus_export))],
    )
    .await
    .echo();
    assert_eq!(seen(&report, "x-license-features"), ["export,reports"]);
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after_and_ratelimit_fields() {
    let setup = Setup::new();
    let proxy = setup.start(
        echo_upstream().await,
        Source::Header,
        r#"
limits:
  per_hour: {rate: {limit: 3, per: 1h}}
  units: {rate: {limit: 10, per: 1h}}
routes:
  - {name: rated, path: /rated, limits: [per_hour]}
  - {name: heavy, path: /heavy, limits: [{limit: units, cost: 5}]}
  - {name: light, path: /light, limits: [units]}
"#,
    );
    let auth = bearer(&setup.token("lic-rate", json!({"plan": "pro"})));
    let headers = [("authorization", auth.as_str())];
    for i in 0..3 {
        assert_eq!(
            call(&proxy, "GET", "/rated", &headers).await.status,
            200,
            "request {i}"
        );
    }
    let refusal = call(&proxy, "GET", "/rated", &headers).await;
    refusal.assert_denied(429, "rate_limited");
    // 3 per hour: the next request is allowed 20 minutes after the first,
    // so the true wait is at most 1200 s; Retry-After never says less, and
    // adds at most 10 % jitter.
    let retry = refusal.retry_after();
    assert!(
        (1200..=1200 + 120 + 1).contains(&retry),
        "Retry-After {retry}"
    );
    assert_eq!(
        refusal.header("ratelimit-policy"),
        Some("\"per_hour\";q=3;w=3600")
    );
    assert_eq!(
        refusal.header("ratelimit"),
        Some(format!("\"per_hour\";r=0;t={retry}").as_str())
    );

    // Another license has its own counter.
    let other = bearer(&setup.token("lic-other", json!({"plan": "pro"})));
    assert_eq!(
        call(&proxy, "GET", "/rated", &[("authorization", &other)])
            .await
            .status,
        200
    );

    // Weighted: 10 units an hour, 5 per heavy request.
    for _ in 0..2 {
        assert_eq!(call(&proxy, "GET", "/heavy", &headers).await.status, 200);
    }
    let refusal = call(&proxy, "GET", "/heavy", &headers).await;
    refusal.assert_denied(429, "rate_limited");
    assert_eq!(
        refusal.header("ratelimit-policy"),
        Some("\"units\";q=10;w=3600")
    );
    // Five units take 5 × 360 s to come back.
    assert!(refusal.retry_after() >= 1800, "{:?}", refusal.headers);
    // The heavy requests used the units a light request needs too.
    let refusal = call(&proxy, "GET", "/light", &headers).await;
    refusal.assert_denied(429, "rate_limited");
    assert!(refusal.retry_after() >= 360, "{:?}", refusal.headers);
}

/// The members of a `RateLimit-Policy` or `RateLimit` list, over all its
/// field lines: (name, parameter → value).
fn members(reply: &Reply, field: &str) -> Vec<(String, Vec<(String, u64)>)> {
    reply
        .headers
        .get_all(field)
        .iter()
        .flat_map(|line| line.to_str().unwrap().split(','))
        .map(|member| {
            let mut parts = member.trim().split(';');
            let name = parts.next().unwrap().trim_matches('"').to_owned();
            let params = parts
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap();
                    (k.to_owned(), v.parse().unwrap())
                })
                .collect();
            (name, params)
        })
        .collect()
}

/// The parameter `param` of the member `name` of `field`.
fn param(reply: &Reply, field: &str, name: &str, param: &str) -> Option<u64> {
    members(reply, field)
        .into_iter()
        .find(|(n, _)| n == name)?
        .1
        .into_iter()
        .find(|(p, _)| p == param)
        .map(|(_, v)| v)
}

#[tokio::test]
async fn allowed_responses_state_what_is_left_of_rates_and_quotas() {
    let setup = Setup::new();
    // An upstream that states a budget of its own on /own.
    let upstream = upstream(|request: Request<Incoming>| async move {
        let mut response = Response::new(full("ok"));
        if request.uri().path() == "/own" {
            let headers = response.headers_mut();
            headers.insert("ratelimit-policy", "\"backend\";q=50;w=1".parse().unwrap());
            headers.insert("ratelimit", "\"backend\";r=49;t=1".parse().unwrap());
        }
        response
    })
    .await;
    let proxy = setup.start(
        upstream,
        Source::Header,
        r#"
limits:
  per_minute: {rate: {limit: 10, per: 1m}}
  daily: {quota: {limit: 100, period: day}}
  by_ip: {rate: {limit: 100, per: 1m, key: client_ip}}
  quiet:
    quota: {limit: 100, period: day}
    headers: false
  users: {seats: {identity: "header:x-user", limit: 5}}
routes:
  - {name: metered, path: /metered, limits: [per_minute, daily]}
  - {name: own, path: /own, limits: [daily]}
  - {name: by-ip, path: /by-ip, access: public, limits: [by_ip]}
  - {name: quiet, path: /quiet, limits: [quiet, users]}
  - {name: free, path: /free}
"#,
    );
    let auth = bearer(&setup.token("lic-budget", json!({"plan": "pro"})));
    let headers = [("authorization", auth.as_str()), ("x-user", "alice")];
    let day = unix_now() / 86_400;

    for n in 1..=3u64 {
        let before = seconds_to_midnight();
        let reply = call(&proxy, "GET", "/metered", &headers).await;
        assert_eq!(reply.status, 200, "request {n}: {}", reply.text());
        assert_eq!(
            reply.header("ratelimit-policy"),
            Some("\"per_minute\";q=10;w=60, \"daily\";q=100;w=86400"),
            "request {n}"
        );
        // 10 a minute: one slot every 6 s, so n requests take the rate
        // n × 6 s from whole again.
        let rate = |p| param(&reply, "ratelimit", "per_minute", p);
        assert_eq!(rate("r"), Some(10 - n), "request {n}: {:?}", reply.headers);
        let reset = rate("t").unwrap();
        assert!(
            (6 * n - 1..=6 * n).contains(&reset),
            "request {n}: t={reset}"
        );
        let quota = |p| param(&reply, "ratelimit", "daily", p);
        assert_eq!(
            quota("r"),
            Some(100 - n),
            "request {n}: {:?}",
            reply.headers
        );
        // The day's quota resets at midnight UTC.
        if unix_now() / 86_400 == day {
            let reset = quota("t").unwrap();
            let after = seconds_to_midnight();
            assert!(
                (after..=before).contains(&reset),
                "t={reset}, midnight in {after}..{before} s"
            );
        }
    }

    // The upstream's own policies are kept; ours are further list members.
    let reply = call(&proxy, "GET", "/own", &headers).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let names: Vec<String> = members(&reply, "ratelimit-policy")
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    assert_eq!(names, ["backend", "daily"], "{:?}", reply.headers);
    assert_eq!(param(&reply, "ratelimit", "backend", "r"), Some(49));
    // The same quota as /metered: 3 used there, 1 here.
    assert_eq!(param(&reply, "ratelimit", "daily", "r"), Some(96));

    // Off: by choice, by default for a key that is not the license (a
    // client address may be shared), and for limits with no budget to
    // state (seats); a route without limits states nothing.
    for path in ["/quiet", "/by-ip", "/free"] {
        let reply = call(&proxy, "GET", path, &headers).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.text());
        assert_eq!(reply.header("ratelimit-policy"), None, "{path}");
        assert_eq!(reply.header("ratelimit"), None, "{path}");
    }
}

#[tokio::test]
async fn quotas_count_only_requests_that_every_limit_allowed() {
    let setup = Setup::new();
    let proxy = setup.start(
        echo_upstream().await,
        Source::Header,
        r#"
limits:
  burst: {rate: {limit: 2, per: 1h}}
  daily: {quota: {limit: 4, period: day}}
  small_daily: {quota: {limit: 2, period: day}}
  monthly: {quota: {limit: 1, period: month}}
routes:
  - {name: rated-and-billed, path: /a, limits: [daily, burst]}
  - {name: billed, path: /b, limits: [daily]}
  - {name: weighted, path: /w, limits: [{limit: daily, cost: 3}]}
  - {name: two-quotas, path: /dm, limits: [small_daily, monthly]}
  - {name: small, path: /d, limits: [small_daily]}
"#,
    );
    let day = unix_now() / 86_400;

    // A request the rate refuses is not billed against the quota.
    let auth = bearer(&setup.token("lic-q1", json!({"plan": "pro"})));
    let headers = [("authorization", auth.as_str())];
    for _ in 0..2 {
        assert_eq!(call(&proxy, "GET", "/a", &headers).await.status, 200);
    }
    call(&proxy, "GET", "/a", &headers)
        .await
        .assert_denied(429, "rate_limited");
    for unit in 3..=4 {
        assert_eq!(
            call(&proxy, "GET", "/b", &headers).await.status,
            200,
            "unit {unit} of 4"
        );
    }
    let before = seconds_to_midnight();
    let refusal = call(&proxy, "GET", "/b", &headers).await;
    refusal.assert_denied(429, "quota_exceeded");
    assert_eq!(
        refusal.header("ratelimit-policy"),
        Some("\"daily\";q=4;w=86400")
    );
    assert!(
        refusal
            .header("ratelimit")
            .is_some_and(|v| v.starts_with("\"daily\";r=0;t=")),
        "{:?}",
        refusal.headers
    );
    // Retry-After: until the UTC day ends (plus jitter).
    let retry = refusal.retry_after();
    let after = seconds_to_midnight();
    if unix_now() / 86_400 == day {
        assert!(
            retry >= after && retry <= before + before / 10 + 2,
            "Retry-After {retry}, midnight in {after}..{before} s"
        );
    }

    // A request the quota refuses gives back what the rate counted: the rate
    // (2 an hour) never runs out however often the quota says no.
    let auth = bearer(&setup.token("lic-q2", json!({"plan": "pro"})));
    let headers = [("authorization", auth.as_str())];
    for _ in 0..4 {
        assert_eq!(call(&proxy, "GET", "/b", &headers).await.status, 200);
    }
    for attempt in 0..4 {
        let reply = call(&proxy, "GET", "/a", &headers).await;
        assert_eq!(reply.reason(), "quota_exceeded", "attempt {attempt}");
    }

    // A weighted request needs all of its units.
    let auth = bearer(&setup.token("lic-q3", json!({"plan": "pro"})));
    let headers = [("authorization", auth.as_str())];
    assert_eq!(call(&proxy, "GET", "/w", &headers).await.status, 200);
    let refusal = call(&proxy, "GET", "/w", &headers).await;
    refusal.assert_denied(429, "quota_exceeded");
    assert!(
        refusal
            .header("ratelimit")
            .is_some_and(|v| v.starts_with("\"daily\";r=1;")),
        "one unit left: {:?}",
        refusal.headers
    );
    assert_eq!(call(&proxy, "GET", "/b", &headers).await.status, 200);
    call(&proxy, "GET", "/b", &headers)
        .await
        .assert_denied(429, "quota_exceeded");

    // One quota refusing gives back what another quota counted.
    let auth = bearer(&setup.token("lic-q4", json!({"plan": "pro"})));
    let headers = [("authorization", auth.as_str())];
    assert_eq!(call(&proxy, "GET", "/dm", &headers).await.status, 200);
    for _ in 0..3 {
        let refusal = call(&proxy, "GET", "/dm", &headers).await;
        refusal.assert_denied(429, "quota_exceeded");
        let policy = refusal.header("ratelimit-policy").unwrap_or("");
        assert!(
            policy.starts_with("\"monthly\";q=1;w="),
            "refused by the monthly quota, not the daily one: {policy}"
        );
    }
    // small_daily holds 1 of 2.
    assert_eq!(call(&proxy, "GET", "/d", &headers).await.status, 200);
    call(&proxy, "GET", "/d", &headers)
        .await
        .assert_denied(429, "quota_exceeded");
}

#[tokio::test]
async fn seats_count_distinct_identities_per_license() {
    let setup = Setup::new();
    let proxy = setup.start(
        echo_upstream().await,
        Source::Header,
        r#"
plans:
  team: {seats: 2}
limits:
  users:
    seats: {identity: "header:x-user", limit: lic.seats, default: 1}
routes:
  - {name: app, path: "/app/**", limits: [users]}
"#,
    );
    let auth = bearer(&setup.token("lic-seats", json!({"plan": "pro", "seats": 3})));
    let as_user = |user: &'static str| [("authorization", auth.clone()), ("x-user", user.into())];
    async fn go(proxy: &Proxy, headers: &[(&str, String)]) -> Reply {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        call(proxy, "GET", "/app/x", &headers).await
    }
    for user in ["alice", "bob", "carol"] {
        assert_eq!(go(&proxy, &as_user(user)).await.status, 200, "{user}");
    }
    let refusal = go(&proxy, &as_user("dave")).await;
    refusal.assert_denied(429, "seat_limit_reached");
    // A seat frees after 30 minutes idle (the default).
    let retry = refusal.retry_after();
    assert!(
        (1799..=1800 + 180 + 1).contains(&retry),
        "Retry-After {retry}"
    );
    assert!(refusal.header("ratelimit-policy").is_none());
    // Seat holders keep passing.
    for user in ["carol", "alice", "bob"] {
        assert_eq!(go(&proxy, &as_user(user)).await.status, 200, "{user}");
    }
    // Without the identity: 403.
    go(&proxy, &[("authorization", auth.clone())])
        .await
        .assert_denied(403, "seat_identity_missing");
    go(&proxy, &as_user(""))
        .await
        .assert_denied(403, "seat_identity_missing");

    // The plan's seats when the license names none.
    let team = bearer(&setup.token("lic-team", json!({"plan": "team"})));
    for (user, status) in [("u1", 200), ("u2", 200), ("u3", 429)] {
        let reply = go(
            &proxy,
            &[("authorization", team.clone()), ("x-user", user.into())],
        )
        .await;
        assert_eq!(reply.status, status, "{user}: {}", reply.text());
    }
    // Seats are per license: dave has one elsewhere.
    let other = bearer(&setup.token("lic-seats-2", json!({"plan": "pro", "seats": 3})));
    let reply = go(
        &proxy,
        &[("authorization", other), ("x-user", "dave".into())],
    )
    .await;
    assert_eq!(reply.status, 200);
}

/// An upstream that holds every response until the test releases it (one
/// semaphore permit per response); each arriving path is reported.
async fn held_upstream() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<String>,
    Arc<tokio::sync::Semaphore>,
) {
    let (arrived_tx, arrived) = tokio::sync::mpsc::unbounded_channel::<String>();
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let gate = Arc::clone(&release);
    let addr = upstream(move |request: Request<Incoming>| {
        let arrived_tx = arrived_tx.clone();
        let gate = Arc::clone(&gate);
        async move {
            let _ = arrived_tx.send(request.uri().path().to_owned());
            gate.acquire().await.unwrap().forget();
            Response::new(full("done"))
        }
    })
    .await;
    (addr, arrived, release)
}

#[tokio::test]
async fn concurrency_limit_frees_the_slot_when_the_response_completes() {
    let (upstream_addr, mut arrived, release) = held_upstream().await;
    let setup = Setup::new();
    let proxy = setup.start(
        upstream_addr,
        Source::Header,
        r#"
limits:
  inflight: {concurrency: {limit: 2}}
routes:
  - {name: slow, path: "/slow/**", limits: [inflight]}
"#,
    );
    let auth = bearer(&setup.token("lic-c1", json!({"plan": "pro"})));
    let request = |path: &str, auth: &str| {
        send(
            Request::get(proxy.url(path))
                .header("authorization", auth)
                .body(empty())
                .unwrap(),
        )
    };
    async fn next_arrival(arrived: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> String {
        tokio::time::timeout(WAIT, arrived.recv())
            .await
            .expect("a request reaches the upstream")
            .unwrap()
    }

    let mut first = tokio::spawn(request("/slow/1", &auth));
    let mut second = tokio::spawn(request("/slow/2", &auth));
    let mut held = vec![
        next_arrival(&mut arrived).await,
        next_arrival(&mut arrived).await,
    ];
    held.sort();
    assert_eq!(held, ["/slow/1", "/slow/2"]);

    // Both slots taken: refused at once, without reaching the upstream.
    let refusal = call(&proxy, "GET", "/slow/3", &[("authorization", &auth)]).await;
    refusal.assert_denied(429, "concurrency_limited");
    assert!((1..=2).contains(&refusal.retry_after()));
    assert!(
        arrived.try_recv().is_err(),
        "the refused request was forwarded"
    );

    // Another license has its own slots.
    let other = bearer(&setup.token("lic-c2", json!({"plan": "pro"})));
    let third = tokio::spawn(request("/slow/4", &other));
    assert_eq!(next_arrival(&mut arrived).await, "/slow/4");

    // Release one response; once it has completed its slot is free again.
    release.add_permits(1);
    let (still_held, (parts, body)) = tokio::select! {
        done = &mut first => (second, done.unwrap()),
        done = &mut second => (first, done.unwrap()),
    };
    assert_eq!((parts.status.as_u16(), &body[..]), (200, &b"done"[..]));
    let mut fourth = tokio::spawn(request("/slow/5", &auth));
    tokio::select! {
        path = next_arrival(&mut arrived) => assert_eq!(path, "/slow/5"),
        done = &mut fourth => panic!("the freed slot was not reused: {:?}", done.unwrap().0.status),
    }

    release.add_permits(10);
    for task in [still_held, third, fourth] {
        let (parts, body) = task.await.unwrap();
        assert_eq!((parts.status.as_u16(), &body[..]), (200, &b"done"[..]));
    }
    let page = metrics(&proxy).await;
    assert_eq!(
        metric(
            &page,
            r#"licensegate_decisions_total{decision="deny",reason="concurrency_limited",route="slow"}"#
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_client_that_goes_away_frees_its_concurrency_slot() {
    let (upstream_addr, mut arrived, release) = held_upstream().await;
    let setup = Setup::new();
    let proxy = setup.start(
        upstream_addr,
        Source::Header,
        r#"
limits:
  inflight: {concurrency: {limit: 1}}
routes:
  - {name: slow, path: "/slow/**", limits: [inflight]}
"#,
    );
    let auth = bearer(&setup.token("lic-gone", json!({"plan": "pro"})));
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(head("GET", "/slow/1", &format!("Authorization: {auth}\r\n")).as_bytes())
        .await
        .unwrap();
    let path = tokio::time::timeout(WAIT, arrived.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(path, "/slow/1");
    call(&proxy, "GET", "/slow/2", &[("authorization", &auth)])
        .await
        .assert_denied(429, "concurrency_limited");
    drop(stream);
    // The proxy notices the closed connection asynchronously: ask again
    // (bounded) until the slot is free.
    let mut refused = 0;
    let mut next = tokio::spawn(send(
        Request::get(proxy.url("/slow/3"))
            .header("authorization", &auth)
            .body(empty())
            .unwrap(),
    ));
    loop {
        tokio::select! {
            path = arrived.recv() => {
                assert_eq!(path.as_deref(), Some("/slow/3"));
                break;
            }
            done = &mut next => {
                let (parts, _) = done.unwrap();
                assert_eq!(parts.status, 429);
                refused += 1;
                assert!(refused < 500, "the slot stayed taken after the client left");
                next = tokio::spawn(send(
                    Request::get(proxy.url("/slow/3"))
                        .header("authorization", &auth)
                        .body(empty())
                        .unwrap(),
                ));
            }
        }
    }
    eprintln!("{refused} requests refused before the slot was freed");
    release.add_permits(10);
    let (parts, body) = next.await.unwrap();
    assert_eq!((parts.status.as_u16(), &body[..]), (200, &b"done"[..]));
}

#[tokio::test]
async fn rates_key_by_header_and_by_client_address() {
    let setup = Setup::new();
    let proxy = setup.start(
        echo_upstream().await,
        Source::None,
        r#"
limits:
  per_tenant: {rate: {limit: 1, per: 1h, key: "header:x-tenant"}}
  per_ip: {rate: {limit: 2, per: 1h, key: client_ip}}
routes:
  - {name: tenant, path: /tenant, access: public, limits: [per_tenant]}
  - {name: ip, path: /ip, access: public, limits: [per_ip]}
"#,
    );
    for (tenant, status) in [
        (Some("a"), 200),
        (Some("a"), 429),
        (Some("b"), 200),
        (Some("A"), 200),
        // Without the header, requests share one (empty) key.
        (None, 200),
        (None, 429),
    ] {
        let headers: Vec<(&str, &str)> = tenant.iter().map(|t| ("x-tenant", *t)).collect();
        let reply = call(&proxy, "GET", "/tenant", &headers).await;
        assert_eq!(reply.status, status, "tenant {tenant:?}: {}", reply.text());
    }

    // By the connection's address; X-Forwarded-For is not trusted.
    let local: IpAddr = "127.0.0.1".parse().unwrap();
    let other: IpAddr = "127.0.0.2".parse().unwrap();
    for (from, forwarded_for, status) in [
        (local, "", 200),
        (local, "", 200),
        (local, "X-Forwarded-For: 10.1.2.3\r\n", 429),
        (other, "", 200),
        (other, "", 200),
        (other, "", 429),
    ] {
        let reply = raw_from(Some(from), proxy.addr, &head("GET", "/ip", forwarded_for)).await;
        assert_eq!(reply.status, status, "from {from}: {}", reply.text());
        if status == 429 {
            reply.assert_denied(429, "rate_limited");
        }
    }
}

#[tokio::test]
async fn shadow_mode_forwards_would_be_denials_with_a_header() {
    let setup = Setup::new();
    let auth = bearer(&setup.token("lic-shadow", json!({"plan": "pro"})));
    let headers = [("authorization", auth.as_str())];

    // Policy-wide shadow mode, one route enforcing.
    let proxy = setup.start(
        echo_upstream().await,
        Source::Header,
        r#"
mode: shadow
limits:
  one: {rate: {limit: 1, per: 1h}}
routes:
  - {name: export, path: "/export/**", features: [export]}
  - {name: limited, path: /limited, limits: [one]}
  - {name: closed, path: /closed, access: deny}
  - {name: enforced, path: "/enforced/**", features: [export], mode: enforce}
"#,
    );
    let shadow_of = |reply: &Reply| {
        let report = reply.echo();
        seen(&report, "x-licensegate-shadow-deny")
            .first()
            .map(|s| s.to_string())
    };
    let reply = call(&proxy, "GET", "/export/x", &headers).await;
    assert_eq!(shadow_of(&reply).as_deref(), Some("feature_not_licensed"));
    assert_eq!(seen(&reply.echo(), "x-license-id"), ["lic-shadow"]);
    let reply = call(&proxy, "GET", "/limited", &headers).await;
    assert_eq!(shadow_of(&reply), None);
    let reply = call(&proxy, "GET", "/limited", &headers).await;
    assert_eq!(shadow_of(&reply).as_deref(), Some("rate_limited"));
    let reply = call(&proxy, "GET", "/closed", &[]).await;
    assert_eq!(shadow_of(&reply).as_deref(), Some("route_denied"));
    let reply = call(&proxy, "GET", "/nowhere", &[]).await;
    assert_eq!(shadow_of(&reply).as_deref(), Some("route_not_found"));
    let reply = call(&proxy, "GET", "/export/x", &[]).await;
    assert_eq!(shadow_of(&reply).as_deref(), Some("license_missing"));
    call(&proxy, "GET", "/enforced/x", &headers)
        .await
        .assert_denied(403, "feature_not_licensed");
    let page = metrics(&proxy).await;
    for (reason, route) in [
        ("feature_not_licensed", "export"),
        ("rate_limited", "limited"),
        ("route_denied", "closed"),
        ("route_not_found", "(unmatched)"),
        ("license_missing", "export"),
    ] {
        assert_eq!(
            metric(
                &page,
                &format!(
                    "licensegate_shadow_denials_total{{reason=\"{reason}\",route=\"{route}\"}}"
                )
            ),
            Some(1.0),
            "{reason} {route}"
        );
        assert_eq!(
            metric(
                &page,
                &format!(
                    "licensegate_decisions_total{{decision=\"shadow_deny\",reason=\"{reason}\",route=\"{route}\"}}"
                )
            ),
            Some(1.0),
            "{reason} {route}"
        );
    }
    drop(proxy);

    // Enforcing policy, one route in shadow mode.
    let setup = Setup::new();
    let auth = bearer(&setup.token("lic-shadow", json!({"plan": "pro"})));
    let headers = [("authorization", auth.as_str())];
    let proxy = setup.start(
        echo_upstream().await,
        Source::Header,
        r#"
routes:
  - {name: trial, path: "/trial/**", features: [export], mode: shadow}
  - {name: export, path: "/export/**", features: [export]}
  - {name: reports, path: "/reports/**"}
"#,
    );
    let reply = call(&proxy, "GET", "/trial/x", &headers).await;
    assert_eq!(shadow_of(&reply).as_deref(), Some("feature_not_licensed"));
    call(&proxy, "GET", "/export/x", &headers)
        .await
        .assert_denied(403, "feature_not_licensed");
    call(&proxy, "GET", "/nowhere", &headers)
        .await
        .assert_denied(404, "route_not_found");
    // A client cannot plant the header on an allowed request.
    let mut forged = headers.to_vec();
    forged.push(("x-licensegate-shadow-deny", "rate_limited"));
    let reply = call(&proxy, "GET", "/reports/x", &forged).await;
    assert_eq!(shadow_of(&reply), None);
    let page = metrics(&proxy).await;
    assert_eq!(
        metric(
            &page,
            r#"licensegate_shadow_denials_total{reason="feature_not_licensed",route="trial"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric_value(
            &page,
            r#"licensegate_shadow_denials_total{reason="feature_not_licensed",route="export"}"#
        ),
        0.0
    );
}

#[tokio::test]
async fn a_file_license_applies_to_every_request_under_configured_header_names() {
    let setup = Setup::new();
    let token = setup.token(
        "lic-file",
        json!({"plan": "gold", "features": ["reports"], "limits": {"calls": 2}}),
    );
    setup.write_policy(
        r#"
limits:
  calls: {rate: {limit: lic.limits.calls, default: 100, per: 1h}}
routes:
  - {name: reports, path: "/reports/**", features: [reports], limits: [calls]}
  - {name: export, path: "/export/**", features: [export]}
"#,
    );
    let config = setup.config(
        echo_upstream().await,
        Source::File(&token),
        "",
        "upstream_headers:\n  id: x-customer-license\n  plan: x-customer-plan\n  features: x-customer-features\n",
    );
    let proxy = Proxy::with_config(&config);
    // No credentials on the request: the deployment license applies.
    let report = call(
        &proxy,
        "GET",
        "/reports/x",
        &[
            ("x-customer-license", "forged"),
            ("x-customer-features", "export"),
        ],
    )
    .await
    .echo();
    assert_eq!(seen(&report, "x-customer-license"), ["lic-file"]);
    assert_eq!(seen(&report, "x-customer-plan"), ["gold"]);
    assert_eq!(seen(&report, "x-customer-features"), ["reports"]);
    assert!(seen(&report, "x-license-id").is_empty());
    // The license's own limit, counted for the deployment.
    assert_eq!(call(&proxy, "GET", "/reports/y", &[]).await.status, 200);
    call(&proxy, "GET", "/reports/z", &[])
        .await
        .assert_denied(429, "rate_limited");
    call(&proxy, "GET", "/export/x", &[])
        .await
        .assert_denied(403, "feature_not_licensed");
}

// ---------------------------------------------------------------------------
// 2. Path normalisation: a bypass corpus
// ---------------------------------------------------------------------------

/// How a lax server might read a forwarded path: every escape decoded once
/// (overlong `.`/`/` included), `\` as `/`, `;params` dropped, dot segments
/// resolved, empty segments dropped; optionally case-folded.
fn lax_segments(target: &str, fold_case: bool) -> Vec<String> {
    let path = match target.find("://") {
        // Absolute form: skip the scheme and authority.
        Some(i) => {
            let rest = &target[i + 3..];
            &rest[rest.find('/').unwrap_or(rest.len())..]
        }
        None => target,
    };
    let path = path.split(['?', '#']).next().unwrap_or("");
    let bytes = path.as_bytes();
    let mut decoded = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes.get(i + 1), bytes.get(i + 2)) {
            (Some(&h), Some(&l)) if bytes[i] == b'%' && hex(h).is_some() && hex(l).is_some() => {
                decoded.push((hex(h).unwrap() * 16 + hex(l).unwrap()) as u8);
                i += 3;
            }
            _ => {
                decoded.push(bytes[i]);
                i += 1;
            }
        }
    }
    let mut text = String::new();
    let mut j = 0;
    while j < decoded.len() {
        match &decoded[j..] {
            [0xC0, 0xAE, ..] | [0xE0, 0x80, 0xAE, ..] => {
                text.push('.');
                j += if decoded[j] == 0xC0 { 2 } else { 3 };
            }
            [0xC0, 0xAF, ..] => {
                text.push('/');
                j += 2;
            }
            [b, ..] => {
                text.push(if *b == b'\\' { '/' } else { *b as char });
                j += 1;
            }
            [] => unreachable!(),
        }
    }
    let mut segments: Vec<String> = Vec::new();
    for segment in text.split('/') {
        let segment = segment.split(';').next().unwrap_or("");
        // C string handling stops at a NUL.
        let segment = segment.split('\0').next().unwrap_or("");
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s if fold_case => segments.push(s.to_lowercase()),
            s => segments.push(s.to_owned()),
        }
    }
    segments
}

fn reads_as_export(target: &str, fold_case: bool) -> bool {
    let segments = lax_segments(target, fold_case);
    segments.len() >= 2 && segments[0] == "api" && segments[1] == "export"
}

const EXPORT_POLICY: &str = r#"
routes:
  - {name: export, path: "/api/export/**", features: [export]}
  - {name: api, path: "/api/**"}
"#;

/// Targets a lax server could read as `/api/export/...`, and what the proxy
/// must answer: 403 (normalised onto the export route) or 400 (refused).
const BYPASS_CORPUS: &[(&str, u16)] = &[
    ("/api/export/x", 403),
    ("/api/%65xport/x", 403),
    ("/api/%65%78%70%6f%72%74/x", 403),
    ("/%61pi/export/x", 403),
    ("/api/./export/x", 403),
    ("/api/%2E/export/x", 403),
    ("/api/%2e/export/x", 403),
    ("/api/x/../export/x", 403),
    ("/api/x/%2e%2e/export/x", 403),
    ("/api/x/%2E%2E/export/x", 403),
    ("/api/x/.%2E/export/x", 403),
    ("/api/x/y/../../export/x", 403),
    ("/api/export/../export/x", 403),
    ("/../api/export/x", 403),
    ("/api/%2e%2e/api/export/x", 403),
    ("//api//export/x", 403),
    ("/api//export//x", 403),
    ("///api/export/x", 403),
    ("/api/export/", 403),
    ("/api/export", 403),
    ("/api/export/.", 403),
    ("/api/export/x/..", 403),
    ("/api/export/x?next=/api/reports", 403),
    ("http://app.test/api/x/../export/x", 403),
    ("/api/export;jsessionid=1/x", 400),
    ("/api/export/x;jsessionid=1", 400),
    ("/api;jsessionid=1/export/x", 400),
    ("/api/export%3bx/y", 400),
    ("/api/x/%C0%AE%C0%AE/export/x", 400),
    ("/api/%C0%AE/export/x", 400),
    ("/api/x/%E0%80%AE%E0%80%AE/export/x", 400),
    ("/api/export%00/x", 400),
    ("/api/x%00/../export/x", 400),
    ("/api%2Fexport/x", 400),
    ("/api%2fexport/x", 400),
    ("/api/x%2F..%2Fexport/x", 400),
    ("/api%5Cexport/x", 400),
    ("/api/x%5c..%5cexport/x", 400),
    ("/api\\export/x", 400),
    ("/api/x\\..\\export/x", 400),
    ("/api/%zz/../export/x", 400),
];

/// Send every target of the corpus plus `extra` (raw HTTP/1.1, and a few
/// over h2c), check each answer, then check that nothing the upstream
/// received reads as the export route.
async fn run_corpus(
    proxy: &Proxy,
    auth: &str,
    arrivals: &Arc<Mutex<Vec<Arrival>>>,
    extra: &[(&str, u16)],
    fold_case: bool,
) {
    let authorization = format!("Authorization: {auth}\r\n");
    for (target, expected) in BYPASS_CORPUS.iter().chain(extra) {
        let reply = raw(proxy.addr, &head("GET", target, &authorization)).await;
        let reason = match expected {
            403 => "feature_not_licensed",
            400 => "bad_request_path",
            _ => unreachable!(),
        };
        assert_eq!(
            (reply.status, reply.reason().as_str()),
            (*expected, reason),
            "{target}: {}",
            reply.text()
        );
    }
    // The same over HTTP/2 (h2c), where the path travels in `:path`.
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Body>();
    for target in ["/api/%65xport/x", "/api/x/../export/x", "//api/export/x"] {
        let response = h2
            .request(
                Request::get(proxy.url(target))
                    .header("authorization", auth)
                    .body(empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.version(), http::Version::HTTP_2);
        assert_eq!(response.status(), 403, "h2 {target}");
    }
    let arrivals = arrivals.lock();
    for arrival in arrivals.iter() {
        assert!(
            !reads_as_export(&arrival.target, fold_case),
            "the upstream received {} {}",
            arrival.method,
            arrival.target
        );
    }
}

#[tokio::test]
async fn no_spelling_of_a_path_reaches_a_route_it_normalises_to() {
    // The corpus check itself: these read as export, these do not.
    assert!(reads_as_export("/api/x/%C0%AE%C0%AE/export", false));
    assert!(reads_as_export("/api\\export;x", false));
    assert!(reads_as_export("/API/Export", true));
    assert!(!reads_as_export("/API/Export", false));
    assert!(!reads_as_export("/api/exports/x", false));

    let (upstream_addr, arrivals) = recording_upstream().await;
    let setup = Setup::new();
    let proxy = setup.start(upstream_addr, Source::Header, EXPORT_POLICY);
    let auth = bearer(&setup.token("lic-n", json!({"plan": "pro", "features": ["reports"]})));
    run_corpus(&proxy, &auth, &arrivals, &[], false).await;

    // Controls: near misses are served, with the path as normalised.
    let authorization = format!("Authorization: {auth}\r\n");
    for (target, forwarded) in [
        ("/api/reports/x", "/api/reports/x"),
        ("/api/exports/x", "/api/exports/x"),
        ("/api/x/export", "/api/x/export"),
        // Paths are case-sensitive by default: a different resource, and
        // the upstream gets it exactly as spelled, never lower-cased.
        ("/api/EXPORT/x", "/api/EXPORT/x"),
        ("/api/%45xport/x", "/api/Export/x"),
        // One decoding, as the upstream should do: `%2565` stays `%2565`.
        ("/api/%2565xport/x", "/api/%2565xport/x"),
    ] {
        arrivals.lock().clear();
        let reply = raw(proxy.addr, &head("GET", target, &authorization)).await;
        assert_eq!(reply.status, 200, "{target}: {}", reply.text());
        let arrivals = arrivals.lock();
        assert_eq!(arrivals.len(), 1);
        assert_eq!(arrivals[0].target, forwarded, "{target}");
    }
    let page = metrics(&proxy).await;
    assert_eq!(
        metric(
            &page,
            r#"licensegate_decisions_total{decision="allow",reason="allowed",route="export"}"#
        ),
        Some(0.0),
        "nothing was allowed on the export route"
    );
}

#[tokio::test]
async fn case_insensitive_policies_fold_ascii_case_before_matching() {
    let (upstream_addr, arrivals) = recording_upstream().await;
    let setup = Setup::new();
    let proxy = setup.start(
        upstream_addr,
        Source::Header,
        &format!("paths: {{case: insensitive}}\n{EXPORT_POLICY}"),
    );
    let auth = bearer(&setup.token("lic-i", json!({"plan": "pro", "features": ["reports"]})));
    let folded = [
        ("/api/EXPORT/x", 403),
        ("/API/Export/x", 403),
        ("/Api/eXpOrT", 403),
        ("/api/%45xport/x", 403),
        ("/api/%45XPORT;x", 400),
        ("/api/x/../EXPORT/x", 403),
    ];
    run_corpus(&proxy, &auth, &arrivals, &folded, true).await;
    let reply = raw(
        proxy.addr,
        &head(
            "GET",
            "/API/Reports/x",
            &format!("Authorization: {auth}\r\n"),
        ),
    )
    .await;
    assert_eq!(reply.status, 200);
    // Case is folded for matching only: the upstream gets the path as sent.
    assert_eq!(arrivals.lock().last().unwrap().target, "/API/Reports/x");
}

#[tokio::test]
async fn connect_requests_cannot_skip_path_normalisation() {
    let (upstream_addr, arrivals) = recording_upstream().await;
    let setup = Setup::new();
    let proxy = setup.start(upstream_addr, Source::Header, EXPORT_POLICY);
    let auth = bearer(&setup.token("lic-c", json!({"plan": "pro", "features": ["reports"]})));
    for target in ["/api/x/../export/x", "/api/%65xport/x", "/api%2Fexport/x"] {
        let reply = raw(
            proxy.addr,
            &head("CONNECT", target, &format!("Authorization: {auth}\r\n")),
        )
        .await;
        assert!(
            matches!(reply.status, 400 | 403 | 404 | 405),
            "CONNECT {target}: {} {}",
            reply.status,
            reply.text()
        );
    }
    let arrivals = arrivals.lock();
    assert!(
        arrivals.iter().all(|a| !reads_as_export(&a.target, false)),
        "the upstream received {arrivals:?}"
    );
}

// ---------------------------------------------------------------------------
// Host conditions the client can spell differently
// ---------------------------------------------------------------------------

const ADMIN_HOST_POLICY: &str = r#"
routes:
  - {name: admin-host, path: "/**", host: admin.example.com, access: deny}
  - {name: everything, path: "/**", access: public}
"#;

fn names_admin_host(host: &str) -> bool {
    let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
    host.trim_end_matches('.')
        .eq_ignore_ascii_case("admin.example.com")
}

#[tokio::test]
async fn the_host_decided_on_is_the_host_the_upstream_gets() {
    let (upstream_addr, arrivals) = recording_upstream().await;
    let setup = Setup::new();
    let proxy = setup.start(upstream_addr, Source::None, ADMIN_HOST_POLICY);
    // The plain spelling is denied.
    let reply = raw(
        proxy.addr,
        "GET /x HTTP/1.1\r\nHost: admin.example.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    reply.assert_denied(403, "route_denied");
    let mut served = Vec::new();
    for head in [
        // RFC 9112 §3.2.2: the target's authority is the host; a proxy
        // forwards that, not a contradicting Host header.
        "GET http://www.example.com/x HTTP/1.1\r\nHost: admin.example.com\r\nConnection: close\r\n\r\n",
        // RFC 9112 §3.2: more than one Host header is a 400.
        "GET /x HTTP/1.1\r\nHost: www.example.com\r\nHost: admin.example.com\r\nConnection: close\r\n\r\n",
    ] {
        let reply = raw(proxy.addr, head).await;
        if reply.status == 200 {
            served.push(head);
        }
    }
    // HTTP/2 (h2c): `:authority` names one host, a `host` header another.
    let stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let response = sender
        .send_request(
            Request::get("http://www.example.com/x")
                .header("host", "admin.example.com")
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    if response.status() == 200 {
        served.push("h2 :authority www.example.com, host: admin.example.com");
    }
    // Whatever the spelling, the host decided on is the host forwarded: a
    // target authority replaces a contradicting Host header (so those are
    // served as www.example.com), and two Host headers are refused.
    let arrivals = arrivals.lock();
    assert!(
        arrivals
            .iter()
            .all(|a| !a.hosts.iter().any(|h| names_admin_host(h))),
        "served: {served:?}; the upstream received {arrivals:?}"
    );
    assert!(
        !served
            .iter()
            .any(|h| h.contains("Host: www.example.com\r\nHost:")),
        "two Host headers must be refused: {served:?}"
    );
}

#[tokio::test]
async fn a_host_scoped_deny_covers_the_whole_host() {
    let (upstream_addr, arrivals) = recording_upstream().await;
    let setup = Setup::new();
    let proxy = setup.start(
        upstream_addr,
        Source::Header,
        r#"
routes:
  - {name: internal, host: internal.example.com, path: "/**", access: deny}
  - {name: reports, path: "/v1/reports/**", features: [reports]}
"#,
    );
    let token = setup.token("lic-r", json!({"plan": "pro", "features": ["reports"]}));
    let auth = bearer(&token);
    // A license with `reports` does not open a longer path on the denied host.
    for host in [
        "internal.example.com",
        "Internal.Example.COM:8443",
        "internal.example.com.",
    ] {
        let reply = call(
            &proxy,
            "GET",
            "/v1/reports/q3",
            &[("host", host), ("authorization", &auth)],
        )
        .await;
        reply.assert_denied(403, "route_denied");
        assert_eq!(denied_route(&reply), "internal", "host {host}");
    }
    assert!(
        arrivals.lock().is_empty(),
        "the upstream received {:?}",
        arrivals.lock()
    );
    // Any other host: the host-less route serves, licensed as before.
    let reply = call(
        &proxy,
        "GET",
        "/v1/reports/q3",
        &[("host", "app.example.com"), ("authorization", &auth)],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    call(
        &proxy,
        "GET",
        "/v1/reports/q3",
        &[("host", "app.example.com")],
    )
    .await
    .assert_denied(401, "license_missing");
    let arrivals = arrivals.lock();
    assert_eq!(arrivals.len(), 1, "{arrivals:?}");
    assert_eq!(arrivals[0].target, "/v1/reports/q3");
    assert_eq!(arrivals[0].hosts, ["app.example.com"]);
}

#[tokio::test]
async fn a_trailing_dot_host_matches_its_host_route() {
    let (upstream_addr, arrivals) = recording_upstream().await;
    let setup = Setup::new();
    let proxy = setup.start(upstream_addr, Source::None, ADMIN_HOST_POLICY);
    for host in ["admin.example.com.", "ADMIN.example.com.:8080"] {
        let reply = raw(
            proxy.addr,
            &format!("GET /x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        )
        .await;
        reply.assert_denied(403, "route_denied");
    }
    assert!(arrivals.lock().is_empty());
}

#[tokio::test]
async fn a_request_refused_by_a_rate_limit_takes_no_seat() {
    let setup = Setup::new();
    let proxy = setup.start(
        echo_upstream().await,
        Source::Header,
        r#"
limits:
  users: {seats: {identity: "header:x-user", limit: 2}}
  one: {rate: {limit: 1, per: 1h}}
routes:
  - {name: app, path: /app, limits: [users, one]}
"#,
    );
    let auth = bearer(&setup.token("lic-s", json!({"plan": "pro"})));
    async fn go(proxy: &Proxy, auth: &str, user: &str) -> Reply {
        call(
            proxy,
            "GET",
            "/app",
            &[("authorization", auth), ("x-user", user)],
        )
        .await
    }
    assert_eq!(go(&proxy, &auth, "alice").await.status, 200);
    go(&proxy, &auth, "bob")
        .await
        .assert_denied(429, "rate_limited");
    // Bob was never served, so one seat is still free: carol is refused by
    // the rate limit, not by seats.
    go(&proxy, &auth, "carol")
        .await
        .assert_denied(429, "rate_limited");
}

#[tokio::test]
async fn a_rolling_quota_admits_the_request_retried_after_retry_after() {
    let setup = Setup::new();
    let proxy = setup.start(
        echo_upstream().await,
        Source::Header,
        r#"
limits:
  rolling: {quota: {limit: 2, rolling: 2s}}
routes:
  - {name: rolling, path: /r, limits: [rolling]}
"#,
    );
    let auth = bearer(&setup.token("lic-roll", json!({"plan": "pro"})));
    let headers = [("authorization", auth.as_str())];
    for _ in 0..2 {
        assert_eq!(call(&proxy, "GET", "/r", &headers).await.status, 200);
    }
    let refusal = call(&proxy, "GET", "/r", &headers).await;
    refusal.assert_denied(429, "quota_exceeded");
    let retry = refusal.retry_after();
    // At most: to the end of this sub-window, then until the full count's
    // carried share has decayed enough (under one more window), plus jitter.
    assert!(retry <= 5, "Retry-After {retry}");
    // Time passing is the stimulus here: wait as told, then retry.
    tokio::time::sleep(std::time::Duration::from_secs(retry)).await;
    let reply = call(&proxy, "GET", "/r", &headers).await;
    assert_eq!(
        reply.status,
        200,
        "refused again after Retry-After {retry}: {} {:?}",
        reply.text(),
        reply.headers.get("retry-after")
    );
}

// ---------------------------------------------------------------------------
// 3. Quota persistence
// ---------------------------------------------------------------------------

#[tokio::test]
async fn quota_counts_survive_a_graceful_restart() {
    let setup = Setup::new();
    let start_day = unix_now() / 86_400;
    setup.write_policy(
        r#"
limits:
  daily: {quota: {limit: 5, period: day}}
  monthly: {quota: {limit: 10, period: month}}
routes:
  - {name: day, path: /day, limits: [daily]}
  - {name: month, path: /month, limits: [{limit: monthly, cost: 3}]}
"#,
    );
    let counters = setup.path("counters.json");
    let config = setup.config(
        echo_upstream().await,
        Source::Header,
        &format!(
            "  counters_file: {}\n  persist_interval: 1h\n",
            counters.display()
        ),
        "",
    );
    let auth = bearer(&setup.token("lic-persist", json!({"plan": "pro"})));
    let headers = [("authorization", auth.as_str())];

    let mut proxy = Proxy::with_config(&config);
    for _ in 0..3 {
        assert_eq!(call(&proxy, "GET", "/day", &headers).await.status, 200);
    }
    for _ in 0..2 {
        assert_eq!(call(&proxy, "GET", "/month", &headers).await.status, 200);
    }
    // With a 1h interval nothing has been written yet: only shutdown saves.
    assert!(!counters.exists(), "written before the interval");
    proxy.signal("TERM");
    assert!(proxy.wait_exit().success(), "graceful exit 0");
    proxy.wait_for_log("quota counters saved");
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&counters).unwrap()).unwrap();
    assert_eq!(
        saved["quotas"]["daily"]["lic-persist"]["used"], 3,
        "{saved}"
    );
    assert_eq!(
        saved["quotas"]["monthly"]["lic-persist"]["used"], 6,
        "{saved}"
    );

    let proxy = Proxy::with_config(&config);
    let restored = proxy.wait_for_log("quota counters restored");
    assert!(restored.contains("restored=2"), "{restored}");
    if unix_now() / 86_400 != start_day {
        eprintln!("a UTC day ended during the test; the quotas reset legitimately");
        return;
    }
    for _ in 0..2 {
        assert_eq!(call(&proxy, "GET", "/day", &headers).await.status, 200);
    }
    let refusal = call(&proxy, "GET", "/day", &headers).await;
    refusal.assert_denied(429, "quota_exceeded");
    assert!(
        refusal
            .header("ratelimit")
            .is_some_and(|v| v.starts_with("\"daily\";r=0;")),
        "{:?}",
        refusal.headers
    );
    assert_eq!(call(&proxy, "GET", "/month", &headers).await.status, 200);
    let refusal = call(&proxy, "GET", "/month", &headers).await;
    refusal.assert_denied(429, "quota_exceeded");
    assert!(
        refusal
            .header("ratelimit")
            .is_some_and(|v| v.starts_with("\"monthly\";r=1;")),
        "{:?}",
        refusal.headers
    );
}

// ---------------------------------------------------------------------------
// 4. Hot reload
// ---------------------------------------------------------------------------

const GATE_OPEN: &str = r#"
routes:
  - {name: gate, path: /gate, access: public}
  - {name: load, path: /load, access: public}
"#;

const GATE_CLOSED: &str = r#"
routes:
  - {name: gate, path: /gate, access: deny}
  - {name: load, path: /load, access: public}
"#;

#[tokio::test]
async fn a_swapped_policy_applies_and_a_broken_one_keeps_the_old() {
    let setup = Setup::new();
    let proxy = setup.start(echo_upstream().await, Source::None, GATE_OPEN);
    let path = setup.policy_path();
    let generation = |page: &str| metric(page, "licensegate_policy_generation").unwrap();
    let first = generation(&metrics(&proxy).await);
    assert_eq!(call(&proxy, "GET", "/gate", &[]).await.status, 200);

    swap_policy(&path, GATE_CLOSED);
    proxy.wait_for_log_count("policy reloaded:", 1);
    call(&proxy, "GET", "/gate", &[])
        .await
        .assert_denied(403, "route_denied");
    let page = metrics(&proxy).await;
    assert!(generation(&page) > first);
    assert_eq!(
        metric(&page, r#"licensegate_policy_reloads_total{result="ok"}"#),
        Some(1.0)
    );

    // A YAML error: the old policy keeps serving.
    swap_policy(
        &path,
        "routes:\n  - name: gate\n    path: /gate\n    acces: public\n",
    );
    let line = proxy.wait_for_log("policy reload failed");
    let expected = format!("{}:4:5: ", path.display());
    assert!(line.contains(&expected), "{line}");
    call(&proxy, "GET", "/gate", &[])
        .await
        .assert_denied(403, "route_denied");
    let page = metrics(&proxy).await;
    assert_eq!(
        metric(&page, r#"licensegate_policy_reloads_total{result="error"}"#),
        Some(1.0)
    );
    let (status, report) = readyz(&proxy).await;
    assert_eq!(status, 200, "{report}");
    let note = report["notes"]["policy"].as_str().unwrap();
    assert!(note.contains("last reload failed"), "{note}");
    assert!(note.contains(&expected), "{note}");

    // A semantic error (an unknown limit), also located.
    swap_policy(
        &path,
        "routes:\n  - name: gate\n    path: /gate\n    access: public\n    limits: [nope]\n",
    );
    let line = proxy.wait_for_log("no limit named `nope`");
    assert!(
        line.contains(&format!("{}:5:14: ", path.display())),
        "{line}"
    );
    call(&proxy, "GET", "/gate", &[])
        .await
        .assert_denied(403, "route_denied");
    let page = metrics(&proxy).await;
    assert_eq!(
        metric(&page, r#"licensegate_policy_reloads_total{result="error"}"#),
        Some(2.0)
    );
    let (status, report) = readyz(&proxy).await;
    assert_eq!(status, 200);
    assert!(report["notes"]["policy"]
        .as_str()
        .unwrap()
        .contains("no limit named `nope`"));

    // A good policy again: applied, and the failure is no longer reported.
    swap_policy(&path, GATE_OPEN);
    proxy.wait_for_log_count("policy reloaded:", 2);
    assert_eq!(call(&proxy, "GET", "/gate", &[]).await.status, 200);
    let (_, report) = readyz(&proxy).await;
    let note = report["notes"]["policy"].as_str().unwrap();
    assert!(!note.contains("failed"), "{note}");
    assert!(note.contains("2 routes"), "{note}");
}

#[tokio::test]
async fn sighup_reloads_the_policy() {
    // The policy path is a symlink into a directory the proxy does not
    // watch, so editing the target in place is seen only on SIGHUP.
    let setup = Setup::new();
    let elsewhere = tempfile::tempdir().unwrap();
    let target = write_file(elsewhere.path(), "real.yaml", GATE_OPEN);
    std::os::unix::fs::symlink(&target, setup.policy_path()).unwrap();
    let proxy = Proxy::with_config(&setup.config(echo_upstream().await, Source::None, "", ""));
    assert_eq!(call(&proxy, "GET", "/gate", &[]).await.status, 200);

    std::fs::write(&target, GATE_CLOSED).unwrap();
    proxy.signal("HUP");
    proxy.wait_for_log("SIGHUP received; reloading policy");
    proxy.wait_for_log("policy reloaded:");
    call(&proxy, "GET", "/gate", &[])
        .await
        .assert_denied(403, "route_denied");
    let page = metrics(&proxy).await;
    assert_eq!(
        metric(&page, r#"licensegate_policy_reloads_total{result="ok"}"#),
        Some(1.0)
    );
}

/// A valid policy that takes a while to compile by its size alone (about
/// 90 bytes a route), under which `/ping` is denied.
fn large_policy(routes: usize) -> String {
    let mut text =
        String::from("unmatched: public\nroutes:\n  - {name: ping, path: /ping, access: deny}\n");
    for i in 0..routes {
        text.push_str(&format!(
            "  - {{name: r{i}, path: \"/svc{}/v1/items{i}/{{id}}\", methods: [GET], access: public}}\n",
            i % 100
        ));
    }
    text
}

#[tokio::test]
async fn a_reload_compiles_off_the_proxy_runtime() {
    // One worker: a compile on the runtime would stall every request.
    let (upstream_addr, arrivals) = recording_upstream().await;
    let setup = Setup::new();
    // Behind a symlink the directory watch cannot see: SIGHUP triggers.
    let elsewhere = tempfile::tempdir().unwrap();
    let target = write_file(
        elsewhere.path(),
        "real.yaml",
        "unmatched: public\nroutes:\n  - {name: ping, path: /ping, access: public}\n",
    );
    std::os::unix::fs::symlink(&target, setup.policy_path()).unwrap();
    let config = setup.config(upstream_addr, Source::None, "", "");
    let proxy = Proxy::try_with_config(&config, &["--workers", "1"]).expect("licensegate starts");
    assert_eq!(call(&proxy, "GET", "/ping", &[]).await.status, 200);

    std::fs::write(&target, large_policy(10_000)).unwrap();
    proxy.signal("HUP");
    proxy.wait_for_log("policy files changed; compiling");
    // Until the reload is logged, the old policy answers, and at once.
    let mut served_meanwhile = 0;
    let deadline = Instant::now() + WAIT;
    while !proxy.logs().contains("policy reloaded:") {
        assert!(
            Instant::now() < deadline,
            "no reload; logs:\n{}",
            proxy.logs()
        );
        let reply = call(&proxy, "GET", "/ping", &[]).await;
        if reply.status == 200 {
            served_meanwhile += 1;
        }
    }
    assert!(
        served_meanwhile >= 3,
        "only {served_meanwhile} requests answered while the policy compiled"
    );
    let reached = arrivals
        .lock()
        .iter()
        .filter(|a| a.target == "/ping")
        .count();
    assert_eq!(
        reached,
        served_meanwhile + 1,
        "the upstream saw each answered request"
    );
    // The large policy is in force.
    call(&proxy, "GET", "/ping", &[])
        .await
        .assert_denied(403, "route_denied");
    assert_eq!(arrivals.lock().len(), reached);

    // 120 KB of nested brackets: a located error, the large policy stays.
    std::fs::write(
        &target,
        format!("{}{}\n", "[".repeat(60_000), "]".repeat(60_000)),
    )
    .unwrap();
    proxy.signal("HUP");
    let line = proxy.wait_for_log("policy reload failed");
    let expected = format!("{}:1:65: ", setup.policy_path().display());
    assert!(line.contains(&expected), "{line}");
    call(&proxy, "GET", "/ping", &[])
        .await
        .assert_denied(403, "route_denied");
    assert_eq!(arrivals.lock().len(), reached);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_swaps_under_load_drop_no_request() {
    let setup = Setup::new();
    let proxy = setup.start(echo_upstream().await, Source::None, GATE_OPEN);
    let path = setup.policy_path();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    const TASKS: usize = 3;
    const MAX_PER_TASK: usize = 20_000;
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let url = proxy.url("/load");
        let stop = Arc::clone(&stop);
        let done = Arc::clone(&done);
        tasks.push(tokio::spawn(async move {
            // One keep-alive connection per task.
            let client = client();
            let mut failures = Vec::new();
            for _ in 0..MAX_PER_TASK {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let request = Request::get(&url).body(empty()).unwrap();
                match tokio::time::timeout(WAIT, client.request(request)).await {
                    Ok(Ok(response)) => {
                        let status = response.status();
                        match response.into_body().collect().await {
                            Ok(_) if status == 200 => {}
                            Ok(_) => failures.push(format!("status {status}")),
                            Err(e) => failures.push(format!("body: {e}")),
                        }
                    }
                    Ok(Err(e)) => failures.push(format!("request: {e:?}")),
                    Err(_) => failures.push("timed out".into()),
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            failures
        }));
    }
    // Let the load get going before the first swap.
    let started = Instant::now();
    while done.load(Ordering::Relaxed) < 50 {
        assert!(started.elapsed() < WAIT, "no load");
        tokio::task::yield_now().await;
    }
    let before = done.load(Ordering::Relaxed);
    const SWAPS: usize = 5;
    for n in 1..=SWAPS {
        swap_policy(&path, if n % 2 == 1 { GATE_CLOSED } else { GATE_OPEN });
        tokio::task::block_in_place(|| proxy.wait_for_log_count("policy reloaded:", n));
    }
    let during = done.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Relaxed);
    let mut total_failures = Vec::new();
    for task in tasks {
        total_failures.extend(task.await.unwrap());
    }
    assert!(
        total_failures.is_empty(),
        "{} of {} requests failed: {:?}",
        total_failures.len(),
        done.load(Ordering::Relaxed),
        &total_failures[..total_failures.len().min(5)]
    );
    eprintln!(
        "{} requests, {during} while the policy was swapped {SWAPS} times",
        done.load(Ordering::Relaxed)
    );
    assert!(during > 0, "no request ran while the policy was swapped");
    // The last swap (closed) is in force.
    call(&proxy, "GET", "/gate", &[])
        .await
        .assert_denied(403, "route_denied");
    let page = metrics(&proxy).await;
    assert_eq!(
        metric(&page, r#"licensegate_policy_reloads_total{result="ok"}"#),
        Some(SWAPS as f64)
    );
    assert_eq!(
        metric_value(
            &page,
            r#"licensegate_requests_total{decision="error",reason="upstream_unavailable"}"#
        ),
        0.0
    );
}

#[tokio::test]
async fn restoring_the_policy_in_force_clears_the_failure_note() {
    let setup = Setup::new();
    let proxy = setup.start(echo_upstream().await, Source::None, GATE_OPEN);
    let path = setup.policy_path();
    swap_policy(&path, "routes: [");
    proxy.wait_for_log("policy reload failed");
    swap_policy(&path, GATE_OPEN);
    proxy.signal("HUP");
    proxy.wait_for_log("SIGHUP received; reloading policy");
    // Nothing is logged when the restored text equals the policy in force,
    // so poll readiness (bounded) until the note no longer reports failure.
    let deadline = Instant::now() + std::time::Duration::from_secs(3);
    loop {
        let (_, report) = readyz(&proxy).await;
        let note = report["notes"]["policy"].as_str().unwrap().to_owned();
        if !note.contains("failed") {
            break;
        }
        assert!(Instant::now() < deadline, "still reported: {note}");
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

// ---------------------------------------------------------------------------
// 5. Start-up
// ---------------------------------------------------------------------------

#[tokio::test]
async fn an_invalid_policy_stops_start_up_with_exit_64_and_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = format!("http://{}", closed_port());
    for (text, position, message) in [
        (
            "routes:\n  - name: a\n    path: /a\n    acces: public\n",
            "4:5: ",
            "acces",
        ),
        (
            "routes:\n  - name: a\n    path: /a\n    access: public\n    limits: [nope]\n",
            "5:14: ",
            "no limit named `nope`",
        ),
        (
            "routes:\n  - path: /a\n    methods: []\n",
            "3:14: ",
            "methods",
        ),
    ] {
        let file = write_file(dir.path(), "bad.yaml", text);
        let started = Proxy::spawn(&[
            "run",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--upstream",
            &upstream,
            "--policy",
            file.to_str().unwrap(),
        ]);
        let Err((status, stderr)) = started else {
            panic!("started with an invalid policy: {text}");
        };
        assert_eq!(status.code(), Some(64), "{stderr}");
        let located = format!("{}:{position}", file.display());
        assert!(stderr.contains(&located), "want {located}: {stderr}");
        assert!(stderr.contains(message), "{stderr}");
        assert!(!stderr.contains("licensegate started"), "{stderr}");
    }
}

#[tokio::test]
async fn without_a_policy_the_proxy_says_so() {
    let proxy = Proxy::run(&format!("http://{}", echo_upstream().await), &[]);
    proxy.wait_for_log("no policy and no license configured");
    let (status, report) = readyz(&proxy).await;
    assert_eq!(status, 200);
    assert!(
        report["notes"]["policy"]
            .as_str()
            .unwrap()
            .contains("no policy"),
        "{report}"
    );
    let page = metrics(&proxy).await;
    assert_eq!(metric(&page, "licensegate_policy_loaded"), Some(0.0));
    // Everything passes through.
    assert_eq!(call(&proxy, "GET", "/anything", &[]).await.status, 200);
}

// ---------------------------------------------------------------------------
// 6. Decision log
// ---------------------------------------------------------------------------

#[tokio::test]
async fn denials_are_logged_as_json_without_the_token() {
    let setup = Setup::new();
    let proxy = setup.start(echo_upstream().await, Source::Header, EXPORT_POLICY);
    let token = setup.token("lic-log", json!({"plan": "pro", "features": ["reports"]}));
    let signature = token.rsplit('.').next().unwrap().to_owned();
    call(
        &proxy,
        "GET",
        "/api/export/x?api_key=SECRET123",
        &[("authorization", &bearer(&token))],
    )
    .await
    .assert_denied(403, "feature_not_licensed");
    // The same token with the first signature character changed.
    let cut = token.rfind('.').unwrap() + 1;
    let flipped = if token[cut..].starts_with('A') {
        "B"
    } else {
        "A"
    };
    let tampered = format!("{}{flipped}{}", &token[..cut], &token[cut + 1..]);
    call(
        &proxy,
        "GET",
        "/api/reports/x",
        &[("authorization", &bearer(&tampered))],
    )
    .await
    .assert_denied(401, "license_signature_invalid");

    let line = proxy.wait_for_log("\"reason\":\"feature_not_licensed\"");
    let entry: Value = serde_json::from_str(&line[line.find('{').unwrap()..]).unwrap();
    assert_eq!(entry["decision"], "deny");
    assert_eq!(entry["reason"], "feature_not_licensed");
    assert_eq!(entry["route"], "export");
    assert_eq!(entry["status"], 403);
    assert_eq!(entry["method"], "GET");
    assert_eq!(entry["path"], "/api/export/x");
    assert_eq!(entry["license"], "lic-log");
    assert_eq!(entry["client"], "127.0.0.1");
    let line = proxy.wait_for_log("\"reason\":\"license_signature_invalid\"");
    let entry: Value = serde_json::from_str(&line[line.find('{').unwrap()..]).unwrap();
    assert_eq!(entry["route"], "api");
    assert_eq!(entry["status"], 401);
    for line in proxy.logs().lines() {
        assert!(!line.contains(&signature), "token in the log: {line}");
        assert!(!line.contains("SECRET123"), "query in the log: {line}");
    }
}

// ---------------------------------------------------------------------------
// 7. The demo
// ---------------------------------------------------------------------------

#[tokio::test]
async fn the_demo_does_what_its_curl_lines_say() {
    let mut proxy = Proxy::spawn(&["demo", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .expect("demo starts");
    let token = proxy.wait_for_stdout("TOKEN=");
    let curl = proxy.wait_for_stdout("  curl -i http://");
    assert!(
        curl.ends_with("/healthz") || curl.contains("/healthz "),
        "{curl}"
    );
    let auth = bearer(&token);
    let user = |name: &'static str| [("authorization", auth.clone()), ("x-user", name.to_owned())];
    async fn go(proxy: &Proxy, path: &str, headers: &[(&str, String)]) -> Reply {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        call(proxy, "GET", path, &headers).await
    }

    assert_eq!(go(&proxy, "/healthz", &[]).await.status, 200);
    let started = Instant::now();
    let report = go(&proxy, "/api/reports/q3", &user("alice")).await.echo();
    assert_eq!(seen(&report, "x-license-id"), ["demo-license"]);
    assert_eq!(seen(&report, "x-license-plan"), ["pro"]);
    go(&proxy, "/api/export/q3", &user("alice"))
        .await
        .assert_denied(403, "feature_not_licensed");
    for name in ["bob", "carol"] {
        assert_eq!(go(&proxy, "/api/items", &user(name)).await.status, 200);
    }
    go(&proxy, "/api/items", &user("dave"))
        .await
        .assert_denied(429, "seat_limit_reached");

    // 20 a minute for the license: three used above, so alice gets 17 more
    // (plus one per 3 s that has passed) and then a 429.
    let mut passed = 3;
    let refusal = loop {
        let reply = go(&proxy, "/api/items", &user("alice")).await;
        if reply.status != 200 {
            break reply;
        }
        passed += 1;
        assert!(passed <= 40, "never rate limited");
    };
    let refilled = started.elapsed().as_secs() / 3 + 1;
    assert!(
        (20..=20 + refilled).contains(&passed),
        "{passed} requests passed"
    );
    refusal.assert_denied(429, "rate_limited");
    assert!(
        (1..=4).contains(&refusal.retry_after()),
        "{:?}",
        refusal.headers
    );
    assert_eq!(
        refusal.header("ratelimit-policy"),
        Some("\"api_rate\";q=20;w=60")
    );

    // Stop it gracefully so it removes its temporary files.
    proxy.signal("TERM");
    assert!(proxy.wait_exit().success());
}
