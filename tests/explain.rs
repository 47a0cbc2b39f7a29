//! `policy explain` against the proxy itself: one corpus of requests is
//! sent through the real proxy (in front of a recording upstream) and
//! given, as flags, to `licensegate policy explain --config` with the same
//! config; both must reach the same decision for the same reason on the
//! same route. Nothing is expected per request: the proxy's side is read
//! from its `licensegate_decisions_total` series, its response and what the
//! upstream received; explain's from its output and exit status.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use common::recording::{Answer101, RecordingUpstream};
use common::*;
use licensegate::license::issue::{sign, SigningKey};
use licensegate::license::validate::unix_now;
use licensegate::license::Algorithm;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ISSUER: &str = "https://vendor.test";

/// Every route kind and setting the evaluator distinguishes; `unmatched`
/// is filled in per run.
const POLICY: &str = "\
plans:
  pro: {features: [reports]}
  basic: {features: []}
limits:
  nothing:
    rate: {limit: 0, per: 1m, key: client_ip}
  users:
    seats: {identity: 'header:x-user', default: 5}
routes:
  - {name: admin-host, host: admin.example.com, path: /**, access: deny}
  - {name: health, path: /healthz, access: public}
  - {name: reports, path: /api/reports/**, features: [reports]}
  - {name: team, path: /api/team/**, limits: [users]}
  - {name: live, path: /live/**, websocket: true}
  - {name: closed, path: /internal/**, access: deny}
  - {name: strict, path: /strict/**, preflight: decide}
  - {name: exhausted, path: /exhausted, access: public, limits: [nothing]}
  - {name: trial, path: /trial/**, mode: shadow, features: [reports]}
  - {name: api, path: /api/**}
";

/// Every reason the corpus must provoke, over all runs: a corpus that
/// stopped exercising one would compare nothing about it.
const REASONS: [&str; 18] = [
    "allowed",
    "cors_preflight",
    "bad_request_path",
    "route_denied",
    "route_not_found",
    "upgrade_not_allowed",
    "license_missing",
    "license_malformed",
    "license_signature_invalid",
    "license_key_unknown",
    "license_issuer_mismatch",
    "license_audience_mismatch",
    "license_expired",
    "license_not_yet_valid",
    "environment_not_licensed",
    "feature_not_licensed",
    "seat_identity_missing",
    "rate_limited",
];

struct Fixture {
    dir: tempfile::TempDir,
    key: SigningKey,
    /// A key the proxy does not trust.
    stranger: SigningKey,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::generate(Algorithm::EdDSA).unwrap();
        std::fs::write(dir.path().join("k1.pem"), key.public_key_pem()).unwrap();
        Fixture {
            dir,
            key,
            stranger: SigningKey::generate(Algorithm::EdDSA).unwrap(),
        }
    }

    /// A config for `upstream` with `unmatched` as the policy's default,
    /// per-request licenses in `Authorization` and a deployment in
    /// namespace `prod`.
    fn config(&self, upstream: SocketAddr, unmatched: &str) -> std::path::PathBuf {
        let policy = write_file(
            self.dir.path(),
            &format!("policy-{unmatched}.yaml"),
            &format!("unmatched: {unmatched}\n{POLICY}"),
        );
        write_file(
            self.dir.path(),
            &format!("config-{unmatched}.yaml"),
            &format!(
                "upstream: {{url: 'http://{upstream}'}}\nworkers: 2\n\
                 license:\n  keys: {}\n  issuer: {ISSUER}\n  audience: api\n  source: header\n  \
                 environment: {{namespace: prod}}\n\
                 policy:\n  paths: [{}]\n",
                self.dir.path().join("k1.pem").display(),
                policy.display()
            ),
        )
    }

    /// A token valid for an hour unless `changes` say otherwise (claims
    /// merged over the defaults), signed by `key` as `kid`.
    fn token_with(&self, key: &SigningKey, kid: &str, changes: Value) -> String {
        let now = unix_now() as i64;
        let mut claims = json!({
            "iss": ISSUER, "sub": "lic-1", "aud": "api",
            "iat": now - 60, "exp": now + 3600,
            "lic": {"plan": "pro"},
        });
        for (name, value) in changes.as_object().unwrap() {
            claims[name] = value.clone();
        }
        sign(&claims, key, kid)
    }

    fn token(&self, changes: Value) -> String {
        self.token_with(&self.key, "k1", changes)
    }
}

/// One request of the corpus.
struct Case {
    method: &'static str,
    path: &'static str,
    host: Option<&'static str>,
    headers: Vec<(&'static str, String)>,
    /// Body bytes (sent with their `Content-Length`).
    body: usize,
}

fn corpus(f: &Fixture) -> Vec<Case> {
    let now = unix_now() as i64;
    let bearer = |token: String| ("authorization", format!("Bearer {token}"));
    let pro = || bearer(f.token(json!({})));
    let basic = || bearer(f.token(json!({"lic": {"plan": "basic"}})));
    let websocket = || {
        vec![
            ("connection", "Upgrade".to_owned()),
            ("upgrade", "websocket".to_owned()),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==".to_owned()),
            ("sec-websocket-version", "13".to_owned()),
        ]
    };
    let preflight = || {
        vec![
            ("origin", "http://localhost:5173".to_owned()),
            ("access-control-request-method", "POST".to_owned()),
        ]
    };
    let with = |mut headers: Vec<(&'static str, String)>, more: (&'static str, String)| {
        headers.push(more);
        headers
    };
    let case = |method, path, headers| Case {
        method,
        path,
        host: None,
        headers,
        body: 0,
    };
    vec![
        case("GET", "/healthz", vec![]),
        case("GET", "/api/reports/q3", vec![pro()]),
        case("GET", "/api/x/../reports/q3", vec![pro()]),
        case("GET", "/api/%2Freports", vec![pro()]),
        case("POST", "/api/orders", vec![pro()]),
        case("GET", "/api/reports/q3", vec![basic()]),
        case("GET", "/api/reports/q3", vec![]),
        case(
            "GET",
            "/api/reports/q3",
            vec![("authorization", "Bearer not-a-token".to_owned())],
        ),
        case(
            "GET",
            "/api/reports/q3",
            vec![bearer(f.token_with(&f.stranger, "k1", json!({})))],
        ),
        case(
            "GET",
            "/api/reports/q3",
            vec![bearer(f.token_with(&f.key, "k9", json!({})))],
        ),
        case(
            "GET",
            "/api/reports/q3",
            vec![bearer(f.token(json!({"iss": "https://other.test"})))],
        ),
        case(
            "GET",
            "/api/reports/q3",
            vec![bearer(f.token(json!({"aud": "other"})))],
        ),
        case(
            "GET",
            "/api/reports/q3",
            vec![bearer(
                f.token(json!({"iat": now - 7200, "exp": now - 3600})),
            )],
        ),
        case(
            "GET",
            "/api/reports/q3",
            vec![bearer(f.token(json!({"nbf": now + 3600})))],
        ),
        case(
            "GET",
            "/api/reports/q3",
            vec![bearer(f.token(
                json!({"lic": {"plan": "pro", "env": {"namespaces": ["staging"]}}}),
            ))],
        ),
        case(
            "GET",
            "/api/reports/q3",
            vec![bearer(f.token(
                json!({"lic": {"plan": "pro", "env": {"namespaces": ["prod"]}}}),
            ))],
        ),
        case("GET", "/api/team/board", vec![pro()]),
        case(
            "GET",
            "/api/team/board",
            vec![pro(), ("x-user", "alice".to_owned())],
        ),
        case("GET", "/internal/metrics", vec![pro()]),
        Case {
            host: Some("admin.example.com"),
            ..case("GET", "/healthz", vec![])
        },
        Case {
            host: Some("app.example.com"),
            ..case("GET", "/healthz", vec![])
        },
        case("GET", "/nowhere", vec![]),
        case("GET", "/nowhere", vec![pro()]),
        case("GET", "/exhausted", vec![]),
        case("GET", "/trial/x", vec![basic()]),
        case("GET", "/trial/x", vec![pro()]),
        case("GET", "/api/reports/live", with(websocket(), pro())),
        case("GET", "/live/feed", with(websocket(), pro())),
        case("GET", "/live/feed", websocket()),
        case("GET", "/nowhere", with(websocket(), pro())),
        case("OPTIONS", "/api/orders", preflight()),
        case("OPTIONS", "/strict/x", preflight()),
        case("OPTIONS", "/internal/x", preflight()),
        case("OPTIONS", "/nowhere", preflight()),
        Case {
            body: 5,
            ..case(
                "OPTIONS",
                "/api/orders",
                with(preflight(), ("content-length", "5".to_owned())),
            )
        },
    ]
}

/// What one side decided.
#[derive(Debug, PartialEq, Eq)]
struct Decided {
    /// `allow`, `deny` or `shadow_deny`.
    decision: String,
    reason: String,
    /// The route name, `(unmatched)` or `(rejected)` (refused before
    /// matching).
    route: String,
    /// The status of a denial.
    status: Option<u16>,
}

/// `licensegate_decisions_total` series by their labels.
fn decision_counts(page: &str) -> HashMap<String, f64> {
    page.lines()
        .filter_map(|line| line.strip_prefix("licensegate_decisions_total{"))
        .filter_map(|rest| {
            let (labels, value) = rest.split_once("} ")?;
            Some((labels.to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

fn label(labels: &str, name: &str) -> String {
    labels
        .split(',')
        .find_map(|pair| pair.strip_prefix(&format!("{name}=\"")))
        .and_then(|value| value.strip_suffix('"'))
        .unwrap_or_else(|| panic!("no label {name} in {labels}"))
        .to_owned()
}

/// A response as the raw bytes tell it: status and body (none after a 101).
async fn exchange(proxy: &Proxy, case: &Case, host: &str, marker: usize) -> (u16, String) {
    let mut head = format!("{} {} HTTP/1.1\r\nhost: {host}\r\n", case.method, case.path);
    for (name, value) in &case.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("x-corpus: {marker}\r\n\r\n"));
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&vec![b'x'; case.body]).await.unwrap();
    let mut received = Vec::new();
    let read = async {
        loop {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.unwrap();
            received.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&received);
            if let Some(end) = text.find("\r\n\r\n") {
                let status: u16 = text[9..12].parse().unwrap();
                let length = text[..end]
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if status == 101 || received.len() >= end + 4 + length {
                    let body = String::from_utf8_lossy(&received[end + 4..]).into_owned();
                    return (status, body);
                }
            }
            assert!(n > 0, "the connection closed mid-response: {text}");
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("a response within the test bound")
}

/// What the proxy decided for `case`, from the one decision series that
/// moved, its response and its upstream.
async fn through_proxy(
    proxy: &Proxy,
    upstream: &RecordingUpstream,
    case: &Case,
    marker: usize,
) -> Decided {
    let host = case
        .host
        .map_or_else(|| proxy.addr.to_string(), str::to_owned);
    let before = decision_counts(&metrics(proxy).await);
    let (status, body) = exchange(proxy, case, &host, marker).await;
    let after = decision_counts(&metrics(proxy).await);
    let moved: Vec<&String> = after
        .iter()
        .filter(|(labels, value)| before.get(*labels).copied().unwrap_or(0.0) != **value)
        .map(|(labels, _)| labels)
        .collect();
    let [labels] = moved[..] else {
        panic!(
            "{} {}: decision series moved: {moved:?}",
            case.method, case.path
        )
    };
    let decided = Decided {
        decision: label(labels, "decision"),
        reason: label(labels, "reason"),
        route: label(labels, "route"),
        status: (label(labels, "decision") == "deny").then_some(status),
    };
    // The upstream saw the request exactly when it was let through.
    let forwarded = upstream
        .requests()
        .iter()
        .any(|seen| seen.header("x-corpus") == Some(&marker.to_string()));
    assert_eq!(
        forwarded,
        decided.decision != "deny",
        "{} {}: {decided:?}",
        case.method,
        case.path
    );
    if decided.decision == "deny" {
        let problem: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        assert_eq!(problem["reason"], decided.reason.as_str(), "{body}");
    }
    decided
}

/// What `policy explain --config` decides for `case`.
fn explained(config: &Path, case: &Case, host: &str, marker: usize) -> (Decided, String) {
    let mut args = vec![
        "policy".to_owned(),
        "explain".to_owned(),
        "--config".to_owned(),
        config.display().to_string(),
        "--method".to_owned(),
        case.method.to_owned(),
        "--path".to_owned(),
        case.path.to_owned(),
        "--host".to_owned(),
        host.to_owned(),
    ];
    for (name, value) in &case.headers {
        args.push("-H".to_owned());
        args.push(format!("{name}: {value}"));
    }
    args.push("-H".to_owned());
    args.push(format!("x-corpus: {marker}"));
    let out = Command::new(env!("CARGO_BIN_EXE_licensegate"))
        .args(&args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.code() == Some(0) || out.status.code() == Some(1),
        "{}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |label: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{label:<10} ")))
            .map(str::to_owned)
    };
    let route = match field("route") {
        None => "(rejected)".to_owned(),
        Some(route) if route.starts_with("no route") => "(unmatched)".to_owned(),
        Some(route) => route.split('`').nth(1).unwrap().to_owned(),
    };
    let decision = field("decision").unwrap_or_else(|| panic!("no decision:\n{text}"));
    let shadow = text.contains("(shadow mode: forwarded");
    let decided = match decision.split_whitespace().collect::<Vec<_>>()[..] {
        ["allow"] => Decided {
            decision: "allow".into(),
            reason: "allowed".into(),
            route,
            status: None,
        },
        ["allow", reason] => Decided {
            decision: "allow".into(),
            reason: reason.into(),
            route,
            status: None,
        },
        ["deny", status, reason, ..] => Decided {
            decision: if shadow { "shadow_deny" } else { "deny" }.into(),
            reason: reason.trim_end_matches(':').into(),
            route,
            status: (!shadow).then(|| status.parse().unwrap()),
        },
        _ => panic!("unreadable decision `{decision}`:\n{text}"),
    };
    // The exit status says the same: 0 when the request is forwarded.
    assert_eq!(
        out.status.code() == Some(0),
        decided.decision != "deny",
        "{text}"
    );
    (decided, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_decides_every_request_of_the_corpus_as_the_proxy_does() {
    let fixture = Fixture::new();
    let upstream = RecordingUpstream::start(Answer101::Genuine).await;
    let mut seen = BTreeSet::new();
    let mut marker = 0;
    for unmatched in ["deny", "public", "licensed"] {
        let config = fixture.config(upstream.addr, unmatched);
        let proxy = Proxy::with_config(&config);
        for case in corpus(&fixture) {
            marker += 1;
            let host = case
                .host
                .map_or_else(|| proxy.addr.to_string(), str::to_owned);
            let proxied = through_proxy(&proxy, &upstream, &case, marker).await;
            let (explained, text) = explained(&config, &case, &host, marker);
            assert_eq!(
                proxied, explained,
                "unmatched: {unmatched}; {} {} {:?}; explain said:\n{text}",
                case.method, case.path, case.headers
            );
            seen.insert(format!("{}/{}", proxied.decision, proxied.reason));
            seen.insert(proxied.reason);
        }
    }
    let missing: Vec<&str> = REASONS
        .iter()
        .copied()
        .filter(|reason| !seen.contains(*reason))
        .collect();
    assert!(
        missing.is_empty(),
        "never provoked: {missing:?}; saw {seen:?}"
    );
    assert!(
        seen.iter().any(|s| s.starts_with("shadow_deny/")),
        "no shadow-mode denial: {seen:?}"
    );
}
