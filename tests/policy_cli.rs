//! `licensegate policy check` and `policy explain`, run as the real binary.

use std::path::Path;
use std::process::{Command, Output};

use licensegate::license::issue::{sign, SigningKey};
use licensegate::license::Algorithm;

fn licensegate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_licensegate"))
        .args(args)
        .output()
        .expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

const POLICY: &str = "\
plans:
  pro:
    features: [reports]
    limits: {calls_per_minute: 30}
limits:
  calls:
    rate: {limit: lic.limits.calls_per_minute, default: 10, per: 1m}
routes:
  - name: health
    path: /healthz
    access: public
  - name: reports
    path: /api/reports/**
    features: [reports]
    limits: [calls]
  - name: internal
    path: /internal/**
    access: deny
";

#[test]
fn check_accepts_a_valid_policy_and_reports_its_size() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yaml");
    std::fs::write(&path, POLICY).unwrap();
    let out = licensegate(&["policy", "check", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).trim(),
        "ok: 3 routes, 1 limits, 1 plans, 1 features; 0 warning(s)"
    );
}

#[test]
fn check_locates_errors_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "routes:\n  - path: /a\n    limits: [missing]\n  - path: /b/**/c\n",
    )
    .unwrap();
    let out = licensegate(&["policy", "check", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    let file = path.display();
    assert!(
        stderr.contains(&format!(
            "{file}:3:14: error: routes[0].limits[0]: no limit named `missing`"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{file}:4:11: error: routes[1].path: `**` must be the last segment"
        )),
        "{stderr}"
    );
}

#[test]
fn check_warns_on_shadowed_routes_and_strict_fails_on_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shadow.yaml");
    std::fs::write(
        &path,
        "routes:\n  - name: first\n    path: /a/{id}\n  - name: second\n    path: /a/*\n",
    )
    .unwrap();
    let file = path.to_str().unwrap();
    let out = licensegate(&["policy", "check", file]);
    assert!(out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{file}:4:5: warning: routes[1]: route `second` can never match"
        )),
        "{stderr}"
    );
    assert_eq!(
        licensegate(&["policy", "check", "--strict", file])
            .status
            .code(),
        Some(1)
    );
}

struct Fixture {
    _dir: tempfile::TempDir,
    policy: String,
    keys: String,
    token: String,
}

fn fixture(features: &[&str]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("p.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let key = SigningKey::generate(Algorithm::EdDSA).unwrap();
    let keys = dir.path().join("k1.pem");
    std::fs::write(&keys, key.public_key_pem()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "sub": "lic-7", "exp": now + 600,
        "lic": {"plan": "pro", "features": features},
    });
    let token = dir.path().join("token");
    std::fs::write(&token, sign(&claims, &key, "k1")).unwrap();
    let path = |p: &Path| p.to_str().unwrap().to_owned();
    Fixture {
        policy: path(&policy),
        keys: path(&keys),
        token: format!("@{}", path(&token)),
        _dir: dir,
    }
}

fn explain(f: &Fixture, path: &str) -> (Option<i32>, String) {
    let out = licensegate(&[
        "policy",
        "explain",
        "--policy",
        &f.policy,
        "--license",
        &f.token,
        "--keys",
        &f.keys,
        "--path",
        path,
    ]);
    (out.status.code(), text(&out.stdout))
}

#[test]
fn explain_walks_the_checks_of_an_allowed_request() {
    let f = fixture(&[]);
    let (code, out) = explain(&f, "/api/x/../reports/q3");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("normalised to /api/reports/q3"), "{out}");
    assert!(out.contains("route      `reports`"), "{out}");
    // `reports` comes from the plan, the rate from the plan's limits.
    assert!(out.contains("needs [reports]: licensed"), "{out}");
    assert!(out.contains("`calls`: rate 30 per 1m"), "{out}");
    assert!(
        out.trim_end().lines().any(|l| l == "decision   allow"),
        "{out}"
    );
}

#[test]
fn explain_names_the_reason_of_a_denial() {
    let f = fixture(&[]);
    let (code, out) = explain(&f, "/internal/metrics");
    assert_eq!(code, Some(1));
    assert!(out.contains("decision   deny 403 route_denied"), "{out}");
    let (code, out) = explain(&f, "/nowhere");
    assert_eq!(code, Some(1));
    assert!(out.contains("deny 404 route_not_found"), "{out}");
    let (code, out) = explain(&f, "/api/%2Freports");
    assert_eq!(code, Some(1));
    assert!(out.contains("deny 400 bad_request_path"), "{out}");

    let out = licensegate(&[
        "policy",
        "explain",
        "--policy",
        &f.policy,
        "--path",
        "/api/reports/q3",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains("deny 403 license_missing"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn the_benchmark_policy_checks_clean() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/enforcing-policy.yaml");
    let out = licensegate(&["policy", "check", "--strict", path]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

const HOSTS: &str = "\
routes:
  - name: internal
    host: internal.example.com
    path: /**
    access: deny
  - name: reports
    path: /v1/reports/**
    websocket: true
";

#[test]
fn check_warns_where_a_host_route_overrides_a_host_less_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hosts.yaml");
    std::fs::write(&path, HOSTS).unwrap();
    let file = path.to_str().unwrap();
    let out = licensegate(&["policy", "check", file]);
    assert!(out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{file}:6:5: warning: routes[1]: route `reports` overlaps host-scoped routes, which decide there instead: for host `internal.example.com` route `internal` (routes[0])"
        )),
        "{stderr}"
    );
    assert!(text(&out.stdout).contains("1 warning(s)"));
}

#[test]
fn explain_shows_the_host_group_that_decided_and_the_websocket_setting() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hosts.yaml");
    std::fs::write(&path, HOSTS).unwrap();
    let explain_for = |host: &str| {
        let out = licensegate(&[
            "policy",
            "explain",
            "--policy",
            path.to_str().unwrap(),
            "--path",
            "/v1/reports/q3",
            "--host",
            host,
        ]);
        text(&out.stdout)
    };
    let out = explain_for("internal.example.com");
    assert!(out.contains("route      `internal`"), "{out}");
    assert!(
        out.contains("host       exact host `internal.example.com`"),
        "{out}"
    );
    assert!(out.contains("decision   deny 403 route_denied"), "{out}");
    let out = explain_for("app.example.com");
    assert!(out.contains("route      `reports`"), "{out}");
    assert!(out.contains("host       any host"), "{out}");
    assert!(
        out.contains("websocket  a WebSocket upgrade may become a tunnel"),
        "{out}"
    );
}

const PREFLIGHTS: &str = "\
routes:
  - name: api
    path: /api/**
  - name: strict
    path: /strict/**
    preflight: decide
  - name: internal
    path: /internal/**
    access: deny
";

#[test]
fn check_locates_a_bad_preflight_setting() {
    let dir = tempfile::tempdir().unwrap();
    // A value that is not a setting stops the file at parsing; a setting
    // that contradicts the route is found when it is compiled.
    for (text, expected) in [
        (
            "routes:\n  - name: api\n    path: /api/**\n    preflight: allow\n",
            "4:16: error: routes[0].preflight: unknown variant `allow`, expected `forward` or `decide`",
        ),
        (
            "routes:\n  - name: closed\n    path: /closed\n    access: deny\n    preflight: forward\n",
            "5:16: error: routes[0].preflight: a `deny` route forwards nothing, preflights included",
        ),
    ] {
        let path = dir.path().join("p.yaml");
        std::fs::write(&path, text).unwrap();
        let out = licensegate(&["policy", "check", path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("{}:{expected}", path.display())),
            "{stderr}"
        );
    }
}

#[test]
fn check_locates_a_bad_headers_setting() {
    let dir = tempfile::tempdir().unwrap();
    for (text, expected) in [
        (
            "limits:\n  api:\n    rate: {limit: 5, per: 1m}\n    headers: maybe\n",
            "4:14: error: limits.api.headers: invalid type: string \"maybe\", expected a boolean",
        ),
        (
            "limits:\n  users:\n    seats: {identity: 'header:x-user', limit: 3}\n    headers: true\n",
            "4:14: error: limits.users.headers: only rates and quotas state a budget in headers, not seats",
        ),
    ] {
        let path = dir.path().join("p.yaml");
        std::fs::write(&path, text).unwrap();
        let out = licensegate(&["policy", "check", path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("{}:{expected}", path.display())),
            "{stderr}"
        );
    }
}

#[test]
fn explain_shows_what_a_cors_preflight_gets() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yaml");
    std::fs::write(&path, PREFLIGHTS).unwrap();
    let explain_for = |method: &str, target: &str, extra: &[&str]| {
        let mut args = vec![
            "policy",
            "explain",
            "--policy",
            path.to_str().unwrap(),
            "--method",
            method,
            "--path",
            target,
            "-H",
            "Origin: http://localhost:5173",
            "-H",
            "Access-Control-Request-Method: POST",
        ];
        args.extend_from_slice(extra);
        let out = licensegate(&args);
        (out.status.code(), text(&out.stdout))
    };
    // No license given: a preflight passes all the same.
    let (code, out) = explain_for("OPTIONS", "/api/orders", &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("preflight  a CORS preflight (OPTIONS with Origin and Access-Control-Request-Method, no body): forwarded to the upstream"),
        "{out}"
    );
    assert!(
        out.trim_end().ends_with("decision   allow cors_preflight"),
        "{out}"
    );
    // The real request, a body, `preflight: decide`, a deny route.
    for (method, target, extra, reason) in [
        ("POST", "/api/orders", &[][..], "deny 403 license_missing"),
        (
            "OPTIONS",
            "/api/orders",
            &["-H", "Content-Length: 5"][..],
            "deny 403 license_missing",
        ),
        ("OPTIONS", "/strict/x", &[][..], "deny 403 license_missing"),
        ("OPTIONS", "/internal/x", &[][..], "deny 403 route_denied"),
    ] {
        let (code, out) = explain_for(method, target, extra);
        assert_eq!(code, Some(1), "{method} {target} {extra:?}: {out}");
        assert!(out.contains(reason), "{method} {target} {extra:?}: {out}");
        assert!(!out.contains("cors_preflight"), "{out}");
    }
    let (_, out) = explain_for("OPTIONS", "/strict/x", &[]);
    assert!(
        out.contains("preflight  a CORS preflight, decided like any request (the route says `preflight: decide`)"),
        "{out}"
    );
    let (_, out) = explain_for("OPTIONS", "/internal/x", &[]);
    assert!(out.contains("nothing reaches a `deny` route"), "{out}");
}

#[test]
fn explain_with_the_proxys_config_checks_its_deployment_license() {
    let f = fixture(&["reports"]);
    let dir = Path::new(&f.policy).parent().unwrap();
    let token = f.token.trim_start_matches('@');
    let config = dir.join("licensegate.yaml");
    std::fs::write(
        &config,
        format!(
            "upstream: {{url: 'http://127.0.0.1:1'}}\nlicense:\n  keys: {}\n  file: {token}\n  environment: {{namespace: prod}}\npolicy:\n  paths: [{}]\n",
            f.keys, f.policy
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let out = licensegate(&[
        "policy",
        "explain",
        "--config",
        config,
        "--path",
        "/api/reports/q3",
    ]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("license    `lic-7` plan `pro`"), "{stdout}");
    assert!(
        stdout.contains("env        admitted: `lic.env` includes this deployment"),
        "{stdout}"
    );
    // The file is the license: another token, or other keys, would not be
    // what the proxy checks.
    for (extra, expected) in [
        (
            ["--license", f.token.as_str()],
            "--license is for `source: header`",
        ),
        (
            ["--keys", f.keys.as_str()],
            "--keys, --iss and --aud come from the `license` section of --config",
        ),
    ] {
        let mut args = vec![
            "policy",
            "explain",
            "--config",
            config,
            "--path",
            "/api/reports/q3",
        ];
        args.extend_from_slice(&extra);
        let out = licensegate(&args);
        assert_eq!(out.status.code(), Some(2));
        assert!(
            text(&out.stderr).contains(expected),
            "{}",
            text(&out.stderr)
        );
    }
}

#[test]
fn check_and_explain_understand_grpc_routes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("grpc.yaml");
    std::fs::write(
        &path,
        "routes:\n  - name: export\n    grpc: {service: shop.v1.Reports, method: Export}\n    \
         features: [export]\n  - grpc: {service: shop.v1.Reports}\n    access: public\n",
    )
    .unwrap();
    let file = path.to_str().unwrap();
    let out = licensegate(&["policy", "check", "--strict", file]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let explain_for = |method: &str, target: &str, extra: &[&str]| {
        let mut args = vec![
            "policy", "explain", "--policy", file, "--method", method, "--path", target,
        ];
        args.extend_from_slice(extra);
        let out = licensegate(&args);
        (out.status.code(), text(&out.stdout))
    };
    let grpc = ["-H", "content-type: application/grpc"];
    let (code, out) = explain_for("POST", "/shop.v1.Reports/Export", &grpc);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("grpc       gRPC method shop.v1.Reports/Export"),
        "{out}"
    );
    assert!(out.contains("path /shop.v1.Reports/Export"), "{out}");
    assert!(out.contains("deny 403 license_missing"), "{out}");
    assert!(
        out.contains("a gRPC call: HTTP 200 with grpc-status: 16 (UNAUTHENTICATED)"),
        "{out}"
    );
    // Not a gRPC request: no gRPC status.
    let (_, out) = explain_for("POST", "/shop.v1.Reports/Export", &[]);
    assert!(!out.contains("grpc-status"), "{out}");
    let (code, out) = explain_for("POST", "/shop.v1.Reports/List", &grpc);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("grpc       gRPC method shop.v1.Reports/* (every method)"),
        "{out}"
    );
    // gRPC routes are POST only.
    let (_, out) = explain_for("GET", "/shop.v1.Reports/List", &[]);
    assert!(out.contains("no route matches"), "{out}");

    std::fs::write(
        &path,
        "routes:\n  - path: /x\n    grpc: {service: shop.v1.Reports}\n",
    )
    .unwrap();
    let out = licensegate(&["policy", "check", file]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{file}:3:11: error: routes[0].grpc: `path` and `grpc` are exclusive"
        )),
        "{stderr}"
    );
}
