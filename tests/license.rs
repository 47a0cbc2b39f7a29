//! License enforcement through the real binary: header and file sources,
//! reloads (including Kubernetes-style symlink swaps), key rotation, grace,
//! and the `license` CLI. What watchers do and do not reload: tests/watch.rs.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use common::mount::{How, Mount};
use common::*;
use http::{HeaderMap, Request, Response};
use hyper::body::Incoming;
use licensegate::license::issue::{sign, SigningKey};
use licensegate::license::validate::unix_now;
use licensegate::license::Algorithm;
use parking_lot::Mutex;
use serde_json::{json, Value};

const ISSUER: &str = "https://vendor.test";

/// A vendor signing key whose public half is written to `dir/<kid>.pem`.
fn vendor_key(dir: &Path, kid: &str, alg: Algorithm) -> SigningKey {
    let key = SigningKey::generate(alg).unwrap();
    std::fs::write(dir.join(format!("{kid}.pem")), key.public_key_pem()).unwrap();
    key
}

fn claims(sub: &str, plan: &str, exp_from_now: i64) -> Value {
    let now = unix_now() as i64;
    json!({
        "iss": ISSUER,
        "sub": sub,
        "aud": "shop-api",
        "iat": now - 120,
        "nbf": now - 120,
        "exp": now + exp_from_now,
        "lic": {"plan": plan, "features": ["reports"], "limits": {"rpm": 100}, "seats": 3,
                "customer": "Acme", "env": {"namespaces": ["shop"]}},
    })
}

fn config(dir: &Path, upstream: std::net::SocketAddr, license: &str) -> PathBuf {
    write_file(
        dir,
        "licensegate.yaml",
        &format!(
            "upstream:\n  url: http://{upstream}\nlicense:\n  issuer: {ISSUER}\n  audience: shop-api\n  \
             environment:\n    namespace: shop\n{license}"
        ),
    )
}

async fn get_with_token(proxy: &Proxy, token: &str) -> (http::response::Parts, bytes::Bytes) {
    send(
        Request::get(proxy.url("/api"))
            .header("authorization", format!("Bearer {token}"))
            .body(empty())
            .unwrap(),
    )
    .await
}

fn problem(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|e| panic!("problem+json: {e}: {body:?}"))
}

#[tokio::test]
async fn header_tokens_are_verified_per_request() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    let ed = vendor_key(&keys, "ed-1", Algorithm::EdDSA);
    let es = vendor_key(&keys, "es-1", Algorithm::ES256);
    let rogue = SigningKey::generate(Algorithm::EdDSA).unwrap();
    let config = config(
        dir.path(),
        echo_upstream().await,
        &format!("  keys: {}\n  source: header\n", keys.display()),
    );
    let proxy = Proxy::with_config(&config);

    // No token: 401 with a Bearer challenge.
    let (parts, body) = get(&proxy.url("/api")).await;
    assert_eq!(parts.status, 401);
    assert_eq!(
        parts.headers["www-authenticate"],
        "Bearer realm=\"licensegate\""
    );
    assert_eq!(problem(&body)["reason"], "license_missing");

    // Valid tokens under both algorithms.
    for (key, kid) in [(&ed, "ed-1"), (&es, "es-1")] {
        let token = sign(&claims("lic-1", "pro", 3600), key, kid);
        let (parts, _) = get_with_token(&proxy, &token).await;
        assert_eq!(parts.status, 200, "{kid}");
        // A repeat is served from the verification cache.
        let (parts, _) = get_with_token(&proxy, &token).await;
        assert_eq!(parts.status, 200);
    }

    let cases = [
        (
            sign(&claims("lic-1", "pro", 3600), &rogue, "ed-1"),
            401,
            "license_signature_invalid",
        ),
        (
            sign(&claims("lic-1", "pro", 3600), &ed, "nobody"),
            401,
            "license_key_unknown",
        ),
        (
            sign(&claims("lic-1", "pro", 3600), &ed, "es-1"),
            401,
            "license_algorithm_rejected",
        ),
        (
            sign(&claims("lic-1", "pro", -3600), &ed, "ed-1"),
            401,
            "license_expired",
        ),
        (
            sign(
                &claims("lic-1", "pro", 3600).tap(|c| c["iss"] = json!("https://evil.test")),
                &ed,
                "ed-1",
            ),
            401,
            "license_issuer_mismatch",
        ),
        (
            sign(
                &claims("lic-1", "pro", 3600).tap(|c| c["aud"] = json!("other")),
                &ed,
                "ed-1",
            ),
            401,
            "license_audience_mismatch",
        ),
        (
            sign(
                &claims("lic-1", "pro", 3600)
                    .tap(|c| c["lic"]["env"] = json!({"namespaces": ["billing"]})),
                &ed,
                "ed-1",
            ),
            403,
            "environment_not_licensed",
        ),
        ("not.a.token".to_owned(), 401, "license_malformed"),
    ];
    for (token, status, reason) in cases {
        let (parts, body) = get_with_token(&proxy, &token).await;
        assert_eq!(parts.status, status, "{reason}");
        assert_eq!(problem(&body)["reason"], reason);
    }
    // Tampering with a valid token's payload breaks its signature.
    let good = sign(&claims("lic-1", "pro", 3600), &ed, "ed-1");
    let mut parts: Vec<&str> = good.split('.').collect();
    let forged_payload =
        base64_url(&serde_json::to_vec(&claims("lic-1", "enterprise", 3600)).unwrap());
    parts[1] = &forged_payload;
    let (response, body) = get_with_token(&proxy, &parts.join(".")).await;
    assert_eq!(response.status, 401);
    assert_eq!(problem(&body)["reason"], "license_signature_invalid");

    let page = metrics(&proxy).await;
    assert_eq!(
        metric(
            &page,
            "licensegate_token_verifications_total{result=\"valid\"}"
        ),
        Some(4.0)
    );
    assert!(metric(&page, "licensegate_license_cache_hits_total").unwrap() >= 2.0);
    assert_eq!(
        metric(
            &page,
            "licensegate_requests_total{decision=\"deny\",reason=\"license_expired\"}"
        ),
        Some(1.0)
    );
}

/// An upstream that keeps the path and headers of every request it
/// receives and answers 200.
async fn recording_upstream() -> (SocketAddr, Arc<Mutex<Vec<(String, HeaderMap)>>>) {
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&arrivals);
    let addr = upstream(move |request: Request<Incoming>| {
        let sink = Arc::clone(&sink);
        async move {
            sink.lock()
                .push((request.uri().path().to_owned(), request.headers().clone()));
            Response::new(full("ok"))
        }
    })
    .await;
    (addr, arrivals)
}

/// A policy with a public route and a licensed one.
fn public_and_licensed_policy(dir: &Path) -> PathBuf {
    write_file(
        dir,
        "policy.yaml",
        "routes:\n  - {name: health, path: /health, access: public}\n  - {name: api, path: /api/**}\n",
    )
}

#[tokio::test]
async fn the_license_header_is_removed_before_forwarding_unless_kept() {
    let dir = tempfile::tempdir().unwrap();
    let key = vendor_key(dir.path(), "vendor", Algorithm::EdDSA);
    let token = sign(&claims("lic-1", "pro", 3600), &key, "vendor");
    let bearer = format!("Bearer {token}");
    let policy = public_and_licensed_policy(dir.path());
    let keys = dir.path().join("vendor.pem");
    let (upstream_addr, arrivals) = recording_upstream().await;
    let start = |license: String| {
        let config = config(
            dir.path(),
            upstream_addr,
            &format!(
                "  keys: {}\n{license}policy:\n  paths: [{}]\n",
                keys.display(),
                policy.display()
            ),
        );
        Proxy::with_config(&config)
    };
    let send_with = |proxy: &Proxy, path: &str, headers: &[(&str, &str)]| {
        let mut request = Request::get(proxy.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        send(request.body(empty()).unwrap())
    };
    let last_arrival = || arrivals.lock().pop().expect("the upstream got it");

    // Default: the token is the proxy's business, not the workload's, on
    // licensed and public routes alike.
    let proxy = start("  source: header\n".into());
    let (parts, _) = send_with(&proxy, "/api/x", &[("authorization", &bearer)]).await;
    assert_eq!(parts.status, 200);
    let (path, headers) = last_arrival();
    assert_eq!(path, "/api/x");
    assert_eq!(headers["x-license-id"], "lic-1");
    assert!(headers.get("authorization").is_none(), "{headers:?}");
    let (parts, _) = send_with(&proxy, "/health", &[("authorization", &bearer)]).await;
    assert_eq!(parts.status, 200);
    let (path, headers) = last_arrival();
    assert_eq!(path, "/health");
    assert!(headers.get("authorization").is_none(), "{headers:?}");
    drop(proxy);

    // A token in its own header: that header goes, the client's own
    // `Authorization` (credentials for the workload) stays.
    let proxy = start("  source: header\n  header: x-license-token\n".into());
    let (parts, _) = send_with(
        &proxy,
        "/api/x",
        &[
            ("x-license-token", &token),
            ("authorization", "Basic dXNlcjpwdw=="),
        ],
    )
    .await;
    assert_eq!(parts.status, 200);
    let (_, headers) = last_arrival();
    assert!(headers.get("x-license-token").is_none(), "{headers:?}");
    assert_eq!(headers["authorization"], "Basic dXNlcjpwdw==");
    drop(proxy);

    // A deployment license: `Authorization` is the client's, untouched.
    let file = write_file(dir.path(), "license.jwt", &token);
    let proxy = start(format!("  file: {}\n", file.display()));
    let (parts, _) = send_with(
        &proxy,
        "/api/x",
        &[("authorization", "Bearer user-session")],
    )
    .await;
    assert_eq!(parts.status, 200);
    let (_, headers) = last_arrival();
    assert_eq!(headers["authorization"], "Bearer user-session");
    drop(proxy);

    // `forward_token: true` keeps it for workloads that read it.
    let proxy = start("  source: header\n  forward_token: true\n".into());
    let (parts, _) = send_with(&proxy, "/api/x", &[("authorization", &bearer)]).await;
    assert_eq!(parts.status, 200);
    let (_, headers) = last_arrival();
    assert_eq!(headers["authorization"], bearer.as_str());
    assert!(arrivals.lock().is_empty());
}

#[tokio::test]
async fn forged_tokens_are_throttled_per_client_and_never_reach_the_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let key = vendor_key(dir.path(), "vendor", Algorithm::EdDSA);
    let (upstream_addr, arrivals) = recording_upstream().await;
    // Five failures, then one per hour: nothing refills while the test runs.
    let config = config(
        dir.path(),
        upstream_addr,
        &format!(
            "  keys: {}\n  source: header\n  failed_verifications: {{limit: 1, per: 1h, burst: 5}}\n",
            dir.path().join("vendor.pem").display()
        ),
    );
    let proxy = Proxy::with_config(&config);
    let signature_checks = |page: &str| {
        metric(page, "licensegate_license_signature_checks_total").expect("the metric exists")
    };

    let valid = sign(&claims("lic-1", "pro", 3600), &key, "vendor");
    assert_eq!(get_with_token(&proxy, &valid).await.0.status, 200);
    assert_eq!(signature_checks(&metrics(&proxy).await), 1.0);

    // Forgeries name the vendor's `kid`, so each new one needs `ring`.
    let forged: Vec<String> = (0..16)
        .map(|n| {
            let rogue = SigningKey::generate(Algorithm::EdDSA).unwrap();
            sign(
                &claims(&format!("lic-forged-{n}"), "enterprise", 3600),
                &rogue,
                "vendor",
            )
        })
        .collect();
    for token in &forged[..5] {
        let (parts, body) = get_with_token(&proxy, token).await;
        assert_eq!(parts.status, 401);
        assert_eq!(problem(&body)["reason"], "license_signature_invalid");
    }
    assert_eq!(signature_checks(&metrics(&proxy).await), 6.0);
    for token in &forged[5..] {
        let (parts, body) = get_with_token(&proxy, token).await;
        assert_eq!(parts.status, 429);
        assert_eq!(problem(&body)["reason"], "license_verification_throttled");
        let retry_after: u64 = parts.headers["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(retry_after >= 1, "{retry_after}");
    }
    let page = metrics(&proxy).await;
    assert_eq!(
        signature_checks(&page),
        6.0,
        "no signature checked once throttled"
    );
    assert_eq!(
        metric(
            &page,
            "licensegate_token_verifications_total{result=\"license_verification_throttled\"}"
        ),
        Some(11.0)
    );

    // A forgery seen before keeps its reason, from the negative cache.
    let (parts, body) = get_with_token(&proxy, &forged[0]).await;
    assert_eq!(parts.status, 401);
    assert_eq!(problem(&body)["reason"], "license_signature_invalid");
    // The valid license from the same address still passes.
    let (parts, _) = get_with_token(&proxy, &valid).await;
    assert_eq!(parts.status, 200);
    let page = metrics(&proxy).await;
    assert_eq!(signature_checks(&page), 6.0);
    assert_eq!(
        metric(&page, "licensegate_license_negative_cache_hits_total"),
        Some(1.0)
    );

    // The upstream saw the two valid requests and nothing else.
    let arrivals = arrivals.lock();
    let licenses: Vec<&str> = arrivals
        .iter()
        .map(|(_, headers)| headers["x-license-id"].to_str().unwrap())
        .collect();
    assert_eq!(licenses, ["lic-1", "lic-1"]);
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

trait Tap: Sized {
    fn tap(self, f: impl FnOnce(&mut Self)) -> Self;
}

impl Tap for Value {
    fn tap(mut self, f: impl FnOnce(&mut Self)) -> Self {
        f(&mut self);
        self
    }
}

/// A proxy whose deployment license (`lic-pro`, plan `pro`) sits in a
/// Secret-style mount under `dir`, signed by the vendor key `vendor`.
async fn secret_license_proxy(dir: &Path) -> (SigningKey, Mount, Proxy) {
    let key = vendor_key(dir, "vendor", Algorithm::EdDSA);
    let secret = Mount::new(
        dir.join("secret"),
        How::SecretSwap,
        &[(
            "license.jwt",
            &sign(&claims("lic-pro", "pro", 3600), &key, "vendor"),
        )],
    );
    let config = config(
        dir,
        echo_upstream().await,
        &format!(
            "  keys: {}\n  file: {}\n",
            dir.join("vendor.pem").display(),
            secret.path("license.jwt").display()
        ),
    );
    let proxy = Proxy::with_config(&config);
    (key, secret, proxy)
}

#[tokio::test]
async fn a_secret_swap_reloads_the_license_and_a_bad_one_keeps_the_old() {
    let dir = tempfile::tempdir().unwrap();
    let (key, mut secret, proxy) = secret_license_proxy(dir.path()).await;

    let (parts, _) = get(&proxy.url("/")).await;
    assert_eq!(
        parts.status, 200,
        "the deployment license admits requests without a token"
    );
    let status = license_status(&proxy).await;
    assert_eq!(status["state"], "valid");
    assert_eq!(status["license"]["plan"], "pro");
    assert!(
        status
            .to_string()
            .find(&secret_token_prefix(&secret))
            .is_none(),
        "the token is never shown"
    );

    // The vendor ships an upgrade: Kubernetes swaps the ..data symlink.
    secret.publish(
        "license.jwt",
        &sign(&claims("lic-ent", "enterprise", 7200), &key, "vendor"),
    );
    proxy.wait_for_log("license=lic-ent");
    assert_eq!(
        license_status(&proxy).await["license"]["plan"],
        "enterprise"
    );

    // A broken replacement is rejected and the enterprise license stays.
    secret.publish("license.jwt", "garbage");
    proxy.wait_for_log("new license rejected");
    let (parts, _) = get(&proxy.url("/")).await;
    assert_eq!(parts.status, 200);
    let status = license_status(&proxy).await;
    assert_eq!(status["license"]["plan"], "enterprise");
    assert_eq!(status["last_reload"]["ok"], false);

    let page = metrics(&proxy).await;
    assert_eq!(
        metric(&page, "licensegate_license_state{state=\"valid\"}"),
        Some(1.0)
    );
    assert!(
        metric(&page, "licensegate_license_expiry_timestamp_seconds").unwrap() > unix_now() as f64
    );
    assert!(metric(&page, "licensegate_license_reloads_total{result=\"error\"}").unwrap() >= 1.0);
}

fn secret_token_prefix(secret: &Mount) -> String {
    std::fs::read_to_string(secret.path("license.jwt")).unwrap()[..40].to_owned()
}

async fn license_status(proxy: &Proxy) -> Value {
    let (parts, body) = get(&proxy.admin_url("/license")).await;
    assert_eq!(parts.status, 200);
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test]
async fn without_a_license_file_requests_are_denied_and_readiness_waits() {
    let dir = tempfile::tempdir().unwrap();
    let key = vendor_key(dir.path(), "vendor", Algorithm::ES256);
    let file = dir.path().join("license.jwt");
    let config = config(
        dir.path(),
        echo_upstream().await,
        &format!(
            "  keys: {}\n  file: {}\n",
            dir.path().join("vendor.pem").display(),
            file.display()
        ),
    );
    let proxy = Proxy::with_config(&config);
    let (parts, body) = get(&proxy.url("/")).await;
    assert_eq!(parts.status, 403);
    assert_eq!(problem(&body)["reason"], "license_missing");
    let (parts, body) = get(&proxy.admin_url("/readyz")).await;
    assert_eq!(parts.status, 503);
    assert!(String::from_utf8_lossy(&body).contains("license missing"));

    std::fs::write(
        &file,
        sign(&claims("lic-late", "pro", 3600), &key, "vendor"),
    )
    .unwrap();
    proxy.wait_for_log("license=lic-late");
    let (parts, _) = get(&proxy.url("/")).await;
    assert_eq!(parts.status, 200);
    let (parts, _) = get(&proxy.admin_url("/readyz")).await;
    assert_eq!(parts.status, 200);
}

#[tokio::test]
async fn an_expired_license_in_grace_is_allowed_and_flagged() {
    let dir = tempfile::tempdir().unwrap();
    let key = vendor_key(dir.path(), "vendor", Algorithm::EdDSA);
    let file = write_file(
        dir.path(),
        "license.jwt",
        &sign(&claims("lic-late-payer", "pro", -600), &key, "vendor"),
    );
    let config = config(
        dir.path(),
        echo_upstream().await,
        &format!(
            "  keys: {}\n  file: {}\n  grace: 1h\n",
            dir.path().join("vendor.pem").display(),
            file.display()
        ),
    );
    let proxy = Proxy::with_config(&config);
    let (parts, _) = get(&proxy.url("/")).await;
    assert_eq!(parts.status, 200);
    let status = license_status(&proxy).await;
    assert_eq!(status["state"], "grace");
    assert_eq!(status["license"]["in_grace"], true);
    let page = metrics(&proxy).await;
    assert_eq!(
        metric(&page, "licensegate_license_state{state=\"grace\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(&page, "licensegate_license_grace_requests_total"),
        Some(1.0)
    );
}

#[tokio::test]
async fn rotating_keys_overlap_and_removing_a_key_revokes_its_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    let old = vendor_key(&keys, "2026-01", Algorithm::EdDSA);
    let config = config(
        dir.path(),
        echo_upstream().await,
        &format!("  keys: {}\n  source: header\n", keys.display()),
    );
    let proxy = Proxy::with_config(&config);
    let old_token = sign(&claims("lic-1", "pro", 3600), &old, "2026-01");
    assert_eq!(get_with_token(&proxy, &old_token).await.0.status, 200);

    // The new key ships first; both verify during the overlap.
    let new = vendor_key(&keys, "2026-02", Algorithm::EdDSA);
    wait_for_kids(&proxy, &["2026-01", "2026-02"]).await;
    let new_token = sign(&claims("lic-1", "pro", 3600), &new, "2026-02");
    assert_eq!(get_with_token(&proxy, &new_token).await.0.status, 200);
    assert_eq!(get_with_token(&proxy, &old_token).await.0.status, 200);

    // Retiring the old key rejects what it signed, even though it was cached.
    std::fs::remove_file(keys.join("2026-01.pem")).unwrap();
    wait_for_kids(&proxy, &["2026-02"]).await;
    let (parts, body) = get_with_token(&proxy, &old_token).await;
    assert_eq!(parts.status, 401);
    assert_eq!(problem(&body)["reason"], "license_key_unknown");
    assert_eq!(get_with_token(&proxy, &new_token).await.0.status, 200);

    // A broken key file keeps the current keyring.
    std::fs::write(
        keys.join("broken.pem"),
        "-----BEGIN PUBLIC KEY-----\nnope\n",
    )
    .unwrap();
    proxy.wait_for_log("keyring reload failed");
    assert_eq!(get_with_token(&proxy, &new_token).await.0.status, 200);
}

/// Each keyring change logs "keyring reloaded"; wait for the reload that
/// makes /license list exactly `kids` (a file write can arrive as two events).
async fn wait_for_kids(proxy: &Proxy, kids: &[&str]) {
    let already = proxy.logs().matches("keyring reloaded").count();
    for extra in 1..=3 {
        let status = license_status(proxy).await;
        let listed: Vec<String> =
            serde_json::from_value(status["keyring"]["kids"].clone()).unwrap();
        if listed == kids {
            return;
        }
        proxy.wait_for_log_count("keyring reloaded", already + extra);
    }
    panic!("keyring never became {kids:?}: {}", proxy.logs());
}

fn cli(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_licensegate"))
        .args(args)
        .env("LICENSEGATE_LOG", "warn")
        .output()
        .unwrap();
    (
        output.status.code().unwrap(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[test]
fn cli_keygen_issue_and_inspect_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    for alg in ["ed25519", "es256"] {
        let (code, _, stderr) = cli(&[
            "license",
            "keygen",
            "--alg",
            alg,
            "--kid",
            "k1",
            "--private",
            &path("k1.key"),
            "--public",
            &path("k1.pem"),
            "--jwks",
            &path("jwks.json"),
            // The second algorithm replaces the first one's files.
            "--force",
        ]);
        assert_eq!(code, 0, "{stderr}");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(path("k1.key")).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "the private key is private");

        write_file(
            dir.path(),
            "claims.yaml",
            "sub: lic-42\nlic:\n  plan: team\n  features: [export]\n  seats: 10\n",
        );
        let (code, token, stderr) = cli(&[
            "license",
            "issue",
            "--key",
            &path("k1.key"),
            "--kid",
            "k1",
            "--claims",
            &path("claims.yaml"),
            "--ttl",
            "7d",
            "--iss",
            ISSUER,
        ]);
        assert_eq!(code, 0, "{stderr}");
        let token = token.trim();
        write_file(dir.path(), "token.jwt", token);

        for keys in [path("k1.pem"), path("jwks.json")] {
            let (code, out, _) = cli(&[
                "license",
                "inspect",
                "--keys",
                &keys,
                "--iss",
                ISSUER,
                &format!("@{}", path("token.jwt")),
            ]);
            assert_eq!(code, 0, "{out}");
            let report: Value = serde_json::from_str(&out).unwrap();
            assert_eq!(report["valid"], true);
            assert_eq!(report["claims"]["lic"]["plan"], "team");
            assert_eq!(
                report["header"]["alg"],
                if alg == "ed25519" { "EdDSA" } else { "ES256" }
            );
            let expires_in = report["expires_in_seconds"].as_i64().unwrap();
            assert!(
                (7 * 86400 - 60..=7 * 86400).contains(&expires_in),
                "{expires_in}"
            );
        }

        // Wrong issuer expected: not valid, exit 1, with the reason.
        let (code, out, _) = cli(&[
            "license",
            "inspect",
            "--keys",
            &path("k1.pem"),
            "--iss",
            "https://other.test",
            token,
        ]);
        assert_eq!(code, 1);
        let report: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(report["reason"], "license_issuer_mismatch");
    }

    // Claims that cannot make a license are refused at issue time.
    write_file(dir.path(), "bad.yaml", "sub: lic-43\n");
    let (code, _, stderr) = cli(&[
        "license",
        "issue",
        "--key",
        &path("k1.key"),
        "--kid",
        "k1",
        "--claims",
        &path("bad.yaml"),
    ]);
    assert_eq!(code, 1);
    assert!(stderr.contains("bad.yaml"), "{stderr}");
    assert!(stderr.contains("lic"), "{stderr}");
}

/// `license keygen --private <dir>/<private> --public <dir>/<public>`, plus `extra`.
fn keygen(dir: &Path, private: &str, public: &str, extra: &[&str]) -> (i32, String) {
    let private = dir.join(private);
    let public = dir.join(public);
    let mut args = vec![
        "license",
        "keygen",
        "--kid",
        "k1",
        "--private",
        private.to_str().unwrap(),
        "--public",
        public.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let (code, _, stderr) = cli(&args);
    (code, stderr)
}

#[test]
fn keygen_refuses_to_overwrite_key_files_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).ok();
    let (code, stderr) = keygen(dir.path(), "k.key", "k.pem", &[]);
    assert_eq!(code, 0, "{stderr}");
    let (private, public) = (read("k.key").unwrap(), read("k.pem").unwrap());

    // Again over the same pair: refused, the file and the flag named,
    // nothing touched.
    let (code, stderr) = keygen(dir.path(), "k.key", "k.pem", &[]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains(&format!("{}: exists", dir.path().join("k.key").display())),
        "{stderr}"
    );
    assert!(stderr.contains("--force"), "{stderr}");
    assert_eq!(
        (read("k.key").unwrap(), read("k.pem").unwrap()),
        (private.clone(), public.clone())
    );

    // Any one existing file stops the whole pair: no half is written.
    let (code, stderr) = keygen(dir.path(), "new.key", "k.pem", &[]);
    assert_ne!(code, 0);
    assert!(stderr.contains("k.pem: exists"), "{stderr}");
    assert_eq!(read("new.key"), None, "the private half was written");
    let (code, stderr) = keygen(dir.path(), "k.key", "new.pem", &[]);
    assert_ne!(code, 0);
    assert!(stderr.contains("k.key: exists"), "{stderr}");
    assert_eq!(read("new.pem"), None, "the public half was written");
    let jwks = dir.path().join("k.json");
    write_file(dir.path(), "k.json", "{}");
    let (code, stderr) = keygen(
        dir.path(),
        "new.key",
        "new.pem",
        &["--jwks", jwks.to_str().unwrap()],
    );
    assert_ne!(code, 0);
    assert!(stderr.contains("k.json: exists"), "{stderr}");
    assert_eq!((read("new.key"), read("new.pem")), (None, None));
    assert_eq!(read("k.json").unwrap(), "{}");

    // A write that fails takes back what this run created.
    let (code, stderr) = keygen(dir.path(), "new.key", "missing/new.pem", &[]);
    assert_ne!(code, 0);
    assert!(stderr.contains("missing/new.pem"), "{stderr}");
    assert_eq!(read("new.key"), None, "half a pair was left behind");

    // --force replaces the pair, and the private key is private again even
    // if the file it overwrote was not.
    std::fs::set_permissions(
        dir.path().join("k.key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let (code, stderr) = keygen(dir.path(), "k.key", "k.pem", &["--force"]);
    assert_eq!(code, 0, "{stderr}");
    assert_ne!(read("k.key").unwrap(), private);
    assert_ne!(read("k.pem").unwrap(), public);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.path().join("k.key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn issue_refuses_tokens_valid_at_no_time_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stderr) = keygen(dir.path(), "k1.key", "k1.pem", &[]);
    assert_eq!(code, 0, "{stderr}");
    let now = unix_now();
    let issue = |claims: &str, extra: &[&str]| {
        let claims = write_file(dir.path(), "claims.yaml", claims);
        let key = dir.path().join("k1.key");
        let mut args = vec![
            "license",
            "issue",
            "--key",
            key.to_str().unwrap(),
            "--kid",
            "k1",
            "--claims",
            claims.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        cli(&args)
    };
    let plain = "sub: lic-1\nlic: {plan: pro}\n";
    let expired = format!("sub: lic-1\nexp: {}\nlic: {{plan: pro}}\n", now - 3600);
    let backwards = format!(
        "sub: lic-1\nnbf: {}\nexp: {}\nlic: {{plan: pro}}\n",
        now + 7200,
        now + 3600
    );
    for (claims, extra, expected) in [
        (plain, &["--ttl", "0s"][..], "expired when issued"),
        (&expired, &[][..], "expired when issued"),
        (&backwards, &[][..], "never be valid"),
    ] {
        let (code, token, stderr) = issue(claims, extra);
        assert_ne!(code, 0, "signed: {claims} {extra:?}");
        assert!(token.is_empty(), "{token}");
        assert!(stderr.contains(expected), "{stderr}");
        assert!(stderr.contains("--allow-expired"), "{stderr}");

        // The escape hatch for tests of expiry handling signs it, and says so.
        let mut allowed = extra.to_vec();
        allowed.push("--allow-expired");
        let (code, token, stderr) = issue(claims, &allowed);
        assert_eq!(code, 0, "{stderr}");
        assert!(
            stderr.contains("signed because of --allow-expired"),
            "{stderr}"
        );
        // What was signed is what was asked for (`inspect` allows a
        // minute of leeway, so a token expiring now still passes it).
        let keys = dir.path().join("k1.pem");
        let (_, report, _) = cli(&[
            "license",
            "inspect",
            "--keys",
            keys.to_str().unwrap(),
            token.trim(),
        ]);
        let report: Value = serde_json::from_str(&report).unwrap();
        let time = |name: &str| report["claims"][name].as_u64().unwrap();
        assert!(
            time("exp") <= unix_now() || time("nbf") >= time("exp"),
            "{report}"
        );
        // And it verifies: only its times can be wrong.
        assert!(
            [
                Value::Null,
                json!("license_expired"),
                json!("license_not_yet_valid")
            ]
            .contains(&report["reason"]),
            "{report}"
        );
    }
    // A lifetime of a second is a lifetime.
    let (code, _, stderr) = issue(plain, &["--ttl", "1s"]);
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn an_unreadable_keyring_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(
        dir.path(),
        "lg.yaml",
        &format!("upstream:\n  url: http://127.0.0.1:1\nlicense:\n  keys: {}/missing.pem\n  source: header\n", dir.path().display()),
    );
    let (status, stderr) = Proxy::try_with_config(&config, &[])
        .err()
        .expect("must not start");
    assert_eq!(status.code(), Some(64));
    assert!(stderr.contains("license.keys"), "{stderr}");
    assert!(stderr.contains("missing.pem"), "{stderr}");
}

/// A vendor token endpoint over HTTPS on loopback: serves whatever token is
/// set, or 503 when none is.
struct Vendor {
    addr: std::net::SocketAddr,
    token: std::sync::Arc<parking_lot::Mutex<Option<String>>>,
    ca: PathBuf,
    _cert: TestCert,
}

impl Vendor {
    async fn start() -> Vendor {
        let cert = TestCert::new();
        let token: std::sync::Arc<parking_lot::Mutex<Option<String>>> = Default::default();
        let served = std::sync::Arc::clone(&token);
        let addr = tls_upstream(&cert, move |_request| {
            let current = served.lock().clone();
            async move {
                let mut response =
                    http::Response::new(full(current.clone().unwrap_or_else(|| "down".into())));
                if current.is_none() {
                    *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                }
                response
            }
        })
        .await;
        Vendor {
            addr,
            token,
            ca: PathBuf::from(cert.cert_path()),
            _cert: cert,
        }
    }

    fn serve(&self, token: Option<String>) {
        *self.token.lock() = token;
    }
}

// Multi-threaded: the vendor server keeps running while the test thread
// blocks waiting for the proxy's log lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refreshed_licenses_survive_a_restart_while_the_vendor_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let key = vendor_key(dir.path(), "vendor", Algorithm::EdDSA);
    let vendor = Vendor::start().await;
    vendor.serve(Some(sign(
        &claims("lic-fetched", "pro", 3600),
        &key,
        "vendor",
    )));
    let state = dir.path().join("state.json");
    let config = config(
        dir.path(),
        echo_upstream().await,
        &format!(
            "  keys: {}\n  source: refresh\n  refresh:\n    url: https://{}/token\n    ca: {}\n    min_backoff: 50ms\n    max_backoff: 200ms\n    refresh_at: 0.02\n  state_file: {}\n",
            dir.path().join("vendor.pem").display(),
            vendor.addr,
            vendor.ca.display(),
            state.display()
        ),
    );

    let mut first = Proxy::with_config(&config);
    first.wait_for_log("license=lic-fetched");
    assert_eq!(get(&first.url("/")).await.0.status, 200);
    let status = license_status(&first).await;
    assert_eq!(status["source"], "refresh");
    assert_eq!(status["license"]["id"], "lic-fetched");
    first.signal("TERM");
    assert_eq!(first.wait_exit().code(), Some(0));

    // The vendor goes down; a restart serves from the persisted token
    // (`refresh_at` is low, so the restarted proxy tries the vendor at once).
    vendor.serve(None);
    let second = Proxy::with_config(&config);
    second.wait_for_log("license restored from the state file");
    assert_eq!(get(&second.url("/")).await.0.status, 200);
    second.wait_for_log("license refresh failed");
    let status = license_status(&second).await;
    assert_eq!(status["license"]["id"], "lic-fetched");
    assert_eq!(status["last_reload"]["ok"], false);
    assert!(
        status["last_reload"]["error"]
            .as_str()
            .unwrap()
            .contains("503"),
        "{status}"
    );
    let (parts, _) = get(&second.admin_url("/readyz")).await;
    assert_eq!(
        parts.status, 200,
        "a valid persisted license keeps the pod ready"
    );

    // Without the state file there is nothing to serve until the vendor answers.
    std::fs::remove_file(&state).unwrap();
    let third = Proxy::with_config(&config);
    third.wait_for_log("license refresh failed");
    let (parts, body) = get(&third.url("/")).await;
    assert_eq!(parts.status, 403);
    assert_eq!(problem(&body)["reason"], "license_missing");
    vendor.serve(Some(sign(&claims("lic-back", "pro", 3600), &key, "vendor")));
    third.wait_for_log("license=lic-back");
    assert_eq!(get(&third.url("/")).await.0.status, 200);
}

// === Revocation lists ===

fn revocations(key: &SigningKey, seq: u64, jti: &[&str], sub: &[&str]) -> String {
    let claims = json!({"iss": ISSUER, "iat": unix_now() - 10, "seq": seq, "jti": jti, "sub": sub});
    licensegate::license::issue::sign_revocations(&claims, key, "vendor")
}

fn with_jti(mut claims: Value, jti: &str) -> Value {
    claims["jti"] = json!(jti);
    claims
}

/// Polls `/api` with `token` until it is answered with `status`.
async fn until_status(proxy: &Proxy, token: &str, status: u16) -> bool {
    eventually(async || get_with_token(proxy, token).await.0.status == status).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_revocation_list_file_refuses_cached_tokens_and_older_or_forged_lists_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let key = vendor_key(dir.path(), "vendor", Algorithm::EdDSA);
    let lists = dir.path().join("lists");
    std::fs::create_dir(&lists).unwrap();
    write_file(&lists, "revocations.jwt", &revocations(&key, 1, &[], &[]));
    let state = dir.path().join("state.json");
    let config = config(
        dir.path(),
        echo_upstream().await,
        &format!(
            "  keys: {}\n  source: header\n  state_file: {}\n  revocations:\n    file: {}\n",
            dir.path().join("vendor.pem").display(),
            state.display(),
            lists.join("revocations.jwt").display()
        ),
    );
    let proxy = Proxy::with_config(&config);
    let leaked = sign(
        &with_jti(claims("lic-a", "pro", 3600), "tok-leaked"),
        &key,
        "vendor",
    );
    let refunded = sign(&claims("lic-refunded", "pro", 3600), &key, "vendor");
    let kept = sign(
        &with_jti(claims("lic-a", "pro", 3600), "tok-kept"),
        &key,
        "vendor",
    );
    for token in [&leaked, &refunded, &kept] {
        // Twice: the second is a verification-cache hit.
        assert_eq!(get_with_token(&proxy, token).await.0.status, 200);
        assert_eq!(get_with_token(&proxy, token).await.0.status, 200);
    }

    // Revoke one token by `jti` and a whole license by `sub`.
    write_file(
        &lists,
        "revocations.jwt",
        &revocations(&key, 2, &["tok-leaked"], &["lic-refunded"]),
    );
    assert!(
        until_status(&proxy, &leaked, 401).await,
        "the cached token is refused"
    );
    let (parts, body) = get_with_token(&proxy, &leaked).await;
    assert_eq!(parts.status, 401);
    let problem = problem(&body);
    assert_eq!(problem["reason"], "license_revoked");
    assert!(
        problem["detail"].as_str().unwrap().contains("tok-leaked"),
        "{problem}"
    );
    let (parts, body) = get_with_token(&proxy, &refunded).await;
    assert_eq!(parts.status, 401);
    assert_eq!(self::problem(&body)["reason"], "license_revoked");
    assert_eq!(get_with_token(&proxy, &kept).await.0.status, 200);
    proxy.wait_for_log("revocation list in force");

    // An older list (a rollback) and a forged one are ignored, logged and counted.
    write_file(&lists, "revocations.jwt", &revocations(&key, 1, &[], &[]));
    proxy.wait_for_log("older than seq 2 in force");
    let newer = revocations(&key, 3, &[], &[]);
    let mut parts: Vec<&str> = newer.split('.').collect();
    let mut signature = parts[2].to_owned().into_bytes();
    signature[0] = if signature[0] == b'A' { b'B' } else { b'A' };
    let signature = String::from_utf8(signature).unwrap();
    parts[2] = &signature;
    write_file(&lists, "revocations.jwt", &parts.join("."));
    proxy.wait_for_log("license signature is invalid");
    assert_eq!(
        get_with_token(&proxy, &leaked).await.0.status,
        401,
        "seq 2 stays in force"
    );
    let page = metrics(&proxy).await;
    for (result, at_least) in [("ok", 2.0), ("rollback", 1.0), ("invalid", 1.0)] {
        let series = format!("licensegate_license_revocation_updates_total{{result=\"{result}\"}}");
        assert!(
            metric(&page, &series).unwrap() >= at_least,
            "{series}\n{page}"
        );
    }
    assert_eq!(
        metric(&page, "licensegate_license_revocation_seq"),
        Some(2.0)
    );
    let age = metric(&page, "licensegate_license_revocation_age_seconds").unwrap();
    assert!((10.0..120.0).contains(&age), "{age}");
    let status = license_status(&proxy).await;
    let list = &status["revocations"]["list"];
    assert_eq!(list["seq"], 2, "{status}");
    assert_eq!(
        (list["revoked_jti"].clone(), list["revoked_sub"].clone()),
        (json!(1), json!(1))
    );
    assert_eq!(status["revocations"]["source"], "file");
    assert_eq!(status["revocations"]["last_update"]["ok"], false);

    // A restart without the list file keeps the list from the state file.
    drop(proxy);
    std::fs::remove_file(lists.join("revocations.jwt")).unwrap();
    let restarted = Proxy::with_config(&config);
    restarted.wait_for_log("from=\"the state file\"");
    assert_eq!(get_with_token(&restarted, &leaked).await.0.status, 401);
    assert_eq!(get_with_token(&restarted, &kept).await.0.status, 200);
}

#[tokio::test]
async fn a_revoked_deployment_license_is_403_and_the_status_says_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let key = vendor_key(dir.path(), "vendor", Algorithm::EdDSA);
    let lists = dir.path().join("lists");
    std::fs::create_dir(&lists).unwrap();
    let license = write_file(
        dir.path(),
        "license.jwt",
        &sign(&claims("lic-pro", "pro", 3600), &key, "vendor"),
    );
    let config = config(
        dir.path(),
        echo_upstream().await,
        &format!(
            "  keys: {}\n  file: {}\n  revocations:\n    file: {}\n",
            dir.path().join("vendor.pem").display(),
            license.display(),
            lists.join("revocations.jwt").display()
        ),
    );
    let proxy = Proxy::with_config(&config);
    assert_eq!(get(&proxy.url("/")).await.0.status, 200);

    write_file(
        &lists,
        "revocations.jwt",
        &revocations(&key, 1, &[], &["lic-pro"]),
    );
    assert!(eventually(async || get(&proxy.url("/")).await.0.status == 403).await);
    let (_, body) = get(&proxy.url("/")).await;
    assert_eq!(problem(&body)["reason"], "license_revoked");
    let status = license_status(&proxy).await;
    assert_eq!(status["state"], "invalid", "{status}");
    assert_eq!(status["revoked"], true);
    assert_eq!(status["error"]["reason"], "license_revoked");
    let page = metrics(&proxy).await;
    assert_eq!(
        metric(&page, "licensegate_license_state{state=\"invalid\"}"),
        Some(1.0)
    );
    let (parts, _) = get(&proxy.admin_url("/readyz")).await;
    assert_eq!(
        parts.status, 503,
        "a revoked deployment license is not ready"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_lists_are_polled_and_survive_a_restart_while_the_vendor_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let key = vendor_key(dir.path(), "vendor", Algorithm::EdDSA);
    let vendor = Vendor::start().await;
    vendor.serve(Some(revocations(&key, 1, &[], &[])));
    let config = config(
        dir.path(),
        echo_upstream().await,
        &format!(
            "  keys: {}\n  source: header\n  revocations:\n    url: https://{}/revocations\n    ca: {}\n    interval: 100ms\n    min_backoff: 50ms\n    max_backoff: 200ms\n    state_file: {}\n    max_age: 1h\n",
            dir.path().join("vendor.pem").display(),
            vendor.addr,
            vendor.ca.display(),
            dir.path().join("revocations-state.json").display(),
        ),
    );
    let token = sign(
        &with_jti(claims("lic-a", "pro", 3600), "tok-1"),
        &key,
        "vendor",
    );
    let mut first = Proxy::with_config(&config);
    first.wait_for_log("revocation list in force");
    assert_eq!(get_with_token(&first, &token).await.0.status, 200);

    vendor.serve(Some(revocations(&key, 2, &["tok-1"], &[])));
    assert!(until_status(&first, &token, 401).await);
    let page = metrics(&first).await;
    assert_eq!(
        metric(&page, "licensegate_license_revocation_seq"),
        Some(2.0)
    );
    assert_eq!(
        metric(&page, "licensegate_license_revocation_max_age_seconds"),
        Some(3600.0)
    );
    assert_eq!(license_status(&first).await["revocations"]["source"], "url");
    first.signal("TERM");
    assert_eq!(first.wait_exit().code(), Some(0));

    vendor.serve(None);
    let second = Proxy::with_config(&config);
    second.wait_for_log("revocation list fetch failed");
    assert_eq!(get_with_token(&second, &token).await.0.status, 401);
    let page = metrics(&second).await;
    assert_eq!(
        metric(&page, "licensegate_license_revocation_seq"),
        Some(2.0)
    );
    assert!(
        metric(
            &page,
            "licensegate_license_revocation_updates_total{result=\"fetch_error\"}"
        )
        .unwrap()
            >= 1.0
    );
}

#[test]
fn cli_revoke_signs_a_list_and_inspect_says_whether_a_token_is_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let (code, _, stderr) = cli(&[
        "license",
        "keygen",
        "--kid",
        "vendor",
        "--private",
        &path("k.pem"),
        "--public",
        &path("vendor.pem"),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let key = SigningKey::from_pkcs8_pem_file(Path::new(&path("k.pem"))).unwrap();
    let revoked = sign(
        &with_jti(claims("lic-a", "pro", 3600), "tok-1"),
        &key,
        "vendor",
    );
    let fine = sign(
        &with_jti(claims("lic-b", "pro", 3600), "tok-2"),
        &key,
        "vendor",
    );
    std::fs::write(path("revoked.jwt"), &revoked).unwrap();
    std::fs::write(path("fine.jwt"), &fine).unwrap();

    let (code, stdout, stderr) = cli(&[
        "license",
        "revoke",
        "--key",
        &path("k.pem"),
        "--kid",
        "vendor",
        "--seq",
        "4",
        "--jti",
        "tok-1",
        "--sub",
        "lic-x",
        "--iat",
        "1800000000",
        "--out",
        &path("list.jwt"),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.is_empty() && stderr.contains("seq 4 (1 jti, 1 sub)"),
        "{stderr}"
    );
    let list = std::fs::read_to_string(path("list.jwt")).unwrap();
    let keyring = licensegate::license::Keyring::load(Path::new(&path("vendor.pem"))).unwrap();
    let parsed = licensegate::license::RevocationList::verify(&list, &keyring, None).unwrap();
    assert_eq!((parsed.seq, parsed.iat), (4, 1_800_000_000));

    let inspect = |token: &str| {
        let (code, stdout, stderr) = cli(&[
            "license",
            "inspect",
            "--keys",
            &path("vendor.pem"),
            "--revocations",
            &format!("@{}", path("list.jwt")),
            &format!("@{}", path(token)),
        ]);
        (
            code,
            serde_json::from_str::<Value>(&stdout)
                .unwrap_or_else(|e| panic!("{e}: {stdout}{stderr}")),
        )
    };
    let (code, report) = inspect("revoked.jwt");
    assert_eq!(code, 1, "{report}");
    assert_eq!(report["reason"], "license_revoked");
    assert_eq!(report["revocations"]["revoked"], true);
    assert_eq!(report["revocations"]["seq"], 4);
    let (code, report) = inspect("fine.jwt");
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["revocations"]["revoked"], false);

    // A license token is not a list.
    let (code, stdout, _) = cli(&[
        "license",
        "inspect",
        "--keys",
        &path("vendor.pem"),
        "--revocations",
        &format!("@{}", path("fine.jwt")),
        &format!("@{}", path("fine.jwt")),
    ]);
    assert_eq!(code, 1);
    assert!(stdout.contains("revocations_invalid"), "{stdout}");
}
