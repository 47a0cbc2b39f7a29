//! Verified users through the real binary: an identity provider simulated
//! by a local JWKS server over HTTPS (keys rotated mid-run, taken down),
//! user tokens signed by it, and a recording upstream that witnesses what
//! the workload is told. Seats counted by `identity: user` cannot be taken
//! or shared with a header a client types; roles allow and deny as
//! written, capped by the license's plan; every forged or stale token is
//! refused with its reason; a restart while the IdP is away verifies with
//! the last good JWKS from the state file, and without one says not ready.
//!
//! Nothing sleeps to synchronise: tests wait on responses, `/metrics`,
//! `/ready` and the JWKS server's fetch count, every wait bounded.

mod common;

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::jwks::JwksServer;
use common::recording::{Answer101, RecordingUpstream};
use common::*;
use http::{Request, StatusCode};
use licensegate::license::issue::{jwks, sign, sign_parts, SigningKey};
use licensegate::license::validate::unix_now;
use licensegate::license::Algorithm;
use serde_json::{json, Value};

const VENDOR: &str = "https://vendor.test";
const IDP: &str = "https://idp.test/realms/acme";
const AUDIENCE: &str = "licensegate";

const POLICY: &str = "\
plans:
  team: {roles: [viewer, analyst]}
limits:
  named:
    seats: {identity: user, limit: 2}
routes:
  - {name: health, path: /healthz, access: public}
  - {name: reports, path: /reports/**, roles: [analyst, admin]}
  - {name: admin, path: /admin/**, roles: {all_of: [admin]}}
  - {name: seated, path: /app/**, limits: [named]}
  - {name: plain, path: /plain/**}
";

/// The vendor's key and license, the identity provider's keys and JWKS
/// server, and config files, in one directory.
struct Idp {
    dir: tempfile::TempDir,
    /// Signs user tokens, published as kid `idp-1`.
    key: SigningKey,
    server: JwksServer,
}

impl Idp {
    async fn start() -> Idp {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("keys")).unwrap();
        let vendor = SigningKey::generate(Algorithm::EdDSA).unwrap();
        std::fs::write(dir.path().join("keys/v1.pem"), vendor.public_key_pem()).unwrap();
        let now = unix_now();
        let license = sign(
            &json!({
                "iss": VENDOR, "sub": "lic-acme", "exp": now + 86_400,
                "lic": {"plan": "team", "customer": "acme"},
            }),
            &vendor,
            "v1",
        );
        std::fs::write(dir.path().join("license.jwt"), license).unwrap();
        let key = SigningKey::generate(Algorithm::EdDSA).unwrap();
        let server = JwksServer::start(&published(&[(&key, "idp-1")])).await;
        Idp { dir, key, server }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A token for `sub` with `roles`, valid for an hour, signed by `key`.
    fn token_by(&self, key: &SigningKey, kid: &str, sub: &str, roles: &[&str]) -> String {
        sign(&claims(sub, roles), key, kid)
    }

    fn token(&self, sub: &str, roles: &[&str]) -> String {
        self.token_by(&self.key, "idp-1", sub, roles)
    }

    /// `name.yaml`: the upstream, the deployment license, the policy, and
    /// users from the JWKS server with `state` as the state file.
    fn config(&self, name: &str, upstream: &str, state: &str, issuer_extra: &str) -> PathBuf {
        write_file(self.path(), "policy.yaml", POLICY);
        write_file(
            self.path(),
            &format!("{name}.yaml"),
            &format!(
                "upstream:\n  url: {upstream}\nworkers: 2\n\
                 license:\n  keys: keys\n  file: license.jwt\n  issuer: {VENDOR}\n\
                 policy:\n  paths: [policy.yaml]\n\
                 users:\n  state_file: {state}\n  issuers:\n    - issuer: {IDP}\n      audience: {AUDIENCE}\n      \
                 jwks_url: {}\n      ca: {}\n      roles_claim: realm_access.roles\n      min_refresh: 200ms\n{issuer_extra}",
                self.server.url(),
                self.server.ca_path(),
            ),
        )
    }
}

/// A JWKS publishing `keys` under their kids.
fn published(keys: &[(&SigningKey, &str)]) -> String {
    let keys: Vec<_> = keys
        .iter()
        .map(|(key, kid)| key.verifying_key(kid).unwrap())
        .collect();
    jwks(&keys).to_string()
}

fn claims(sub: &str, roles: &[&str]) -> Value {
    let now = unix_now();
    json!({
        "iss": IDP, "aud": [AUDIENCE, "account"], "sub": sub,
        "iat": now - 10, "exp": now + 3600,
        "preferred_username": sub,
        "realm_access": {"roles": roles},
    })
}

/// GET `path` with `headers`; the status, the problem's `reason` (if any)
/// and `detail`.
async fn call(proxy: &Proxy, path: &str, headers: &[(&str, &str)]) -> (StatusCode, String, String) {
    let mut request = Request::get(proxy.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let (parts, body) = send(request.body(empty()).unwrap()).await;
    let problem: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let text = |field: &str| problem[field].as_str().unwrap_or("").to_owned();
    (parts.status, text("reason"), text("detail"))
}

/// Wait until the proxy is ready: its identity provider's keys are in force.
async fn ready(proxy: &Proxy) {
    let url = proxy.admin_url("/ready");
    assert!(
        eventually(async || get(&url).await.0.status == StatusCode::OK).await,
        "never ready: {}",
        String::from_utf8_lossy(&get(&url).await.1)
    );
}

/// [`Proxy::with_config`], once ready.
async fn started(config: &Path) -> Proxy {
    let proxy = Proxy::with_config(config);
    ready(&proxy).await;
    proxy
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// What the upstream was told about the user in its last request to `path`.
fn told(upstream: &RecordingUpstream, path: &str) -> (Option<String>, Option<String>) {
    let seen = upstream
        .requests()
        .into_iter()
        .rev()
        .find(|seen| seen.target() == path)
        .unwrap_or_else(|| panic!("the upstream never saw {path}"));
    (
        seen.header("x-user-id").map(str::to_owned),
        seen.header("x-user-roles").map(str::to_owned),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seats_follow_the_verified_user_not_a_header_anyone_can_type() {
    let idp = Idp::start().await;
    let upstream = RecordingUpstream::start(Answer101::Genuine).await;
    let proxy = started(&idp.config("seats", &upstream.url(), "state.json", "")).await;
    let (alice, bob, carol) = (
        bearer(&idp.token("alice", &[])),
        bearer(&idp.token("bob", &[])),
        bearer(&idp.token("carol", &[])),
    );

    // The whole company sends one `x-user`: each verified user still takes
    // a seat of their own, and the third finds none.
    for (who, auth) in [("alice", &alice), ("bob", &bob)] {
        let path = format!("/app/{who}");
        let (status, reason, _) = call(
            &proxy,
            &path,
            &[("authorization", auth), ("x-user", "shared")],
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{who}: {reason}");
        assert_eq!(told(&upstream, &path).0.as_deref(), Some(who));
    }
    let (status, reason, _) = call(
        &proxy,
        "/app/carol",
        &[("authorization", &carol), ("x-user", "shared")],
    )
    .await;
    assert_eq!(
        (status, reason.as_str()),
        (StatusCode::TOO_MANY_REQUESTS, "seat_limit_reached")
    );

    // Claiming to be a seat holder takes nothing: without a token it is
    // refused before any seat, with carol's token it is carol.
    let (status, reason, _) = call(
        &proxy,
        "/app/spoof",
        &[("x-user", "alice"), ("x-user-id", "alice")],
    )
    .await;
    assert_eq!(
        (status, reason.as_str()),
        (StatusCode::UNAUTHORIZED, "user_token_missing")
    );
    let (status, reason, _) = call(
        &proxy,
        "/app/carol",
        &[("authorization", &carol), ("x-user-id", "alice")],
    )
    .await;
    assert_eq!(
        (status, reason.as_str()),
        (StatusCode::TOO_MANY_REQUESTS, "seat_limit_reached")
    );

    // A competitor sending a fresh identity per request locks nobody out.
    for n in 0..20 {
        let fresh = format!("intruder-{n}");
        let (status, reason, _) = call(
            &proxy,
            "/app/x",
            &[("x-user", &fresh), ("x-user-id", &fresh)],
        )
        .await;
        assert_eq!(
            (status, reason.as_str()),
            (StatusCode::UNAUTHORIZED, "user_token_missing")
        );
    }
    let (status, _, _) = call(&proxy, "/app/alice-again", &[("authorization", &alice)]).await;
    assert_eq!(status, StatusCode::OK);

    // What the workload is told comes from the token, whatever the client
    // wrote under those names, in any spelling.
    let (status, _, _) = call(
        &proxy,
        "/app/alice-spoofing",
        &[
            ("authorization", &alice),
            ("x-user-id", "admin"),
            ("x_user_id", "admin"),
            ("x-user-roles", "admin"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let seen = upstream
        .requests()
        .into_iter()
        .find(|s| s.target() == "/app/alice-spoofing")
        .unwrap();
    let ids: Vec<_> = seen
        .headers
        .iter()
        .filter(|(name, _)| {
            name.eq_ignore_ascii_case("x-user-id") || name.eq_ignore_ascii_case("x_user_id")
        })
        .map(|(_, value)| value.as_str())
        .collect();
    assert_eq!(ids, ["alice"], "{:?}", seen.headers);
    assert!(
        !seen.has_header_like("x-user-roles"),
        "alice has no roles: {:?}",
        seen.headers
    );
    // No request without a verified user carried a user header upstream.
    for seen in upstream.requests() {
        if let Some(id) = seen.header("x-user-id") {
            assert!(["alice", "bob"].contains(&id), "{} told {id}", seen.line);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_allow_and_deny_as_written_and_the_license_caps_them() {
    let idp = Idp::start().await;
    let upstream = RecordingUpstream::start(Answer101::Genuine).await;
    let proxy = started(&idp.config("roles", &upstream.url(), "state.json", "")).await;
    let user = |roles: &[&str]| bearer(&idp.token("dana", roles));

    // Any of: `analyst` is held and the plan includes it.
    let (status, reason, _) = call(
        &proxy,
        "/reports/q3",
        &[(
            "authorization",
            &user(&["analyst", "viewer", "offline_access"]),
        )],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{reason}");
    // The workload hears of the licensed roles only.
    assert_eq!(
        told(&upstream, "/reports/q3"),
        (Some("dana".into()), Some("analyst,viewer".into()))
    );
    // `admin` is granted by the IdP but not in plan `team`.
    let (status, reason, detail) = call(
        &proxy,
        "/reports/q4",
        &[("authorization", &user(&["admin"]))],
    )
    .await;
    assert_eq!(
        (status, reason.as_str()),
        (StatusCode::FORBIDDEN, "role_not_licensed"),
        "{detail}"
    );
    assert!(
        detail.contains("`admin`") && detail.contains("lic-acme"),
        "{detail}"
    );
    // Neither role held.
    let (status, reason, detail) = call(
        &proxy,
        "/reports/q4",
        &[("authorization", &user(&["viewer"]))],
    )
    .await;
    assert_eq!(
        (status, reason.as_str()),
        (StatusCode::FORBIDDEN, "role_missing"),
        "{detail}"
    );
    assert!(detail.contains("`analyst`, `admin`"), "{detail}");
    // All of: `admin`, which no plan of this license includes.
    let (status, reason, _) = call(
        &proxy,
        "/admin/users",
        &[("authorization", &user(&["admin", "analyst"]))],
    )
    .await;
    assert_eq!(
        (status, reason.as_str()),
        (StatusCode::FORBIDDEN, "role_not_licensed")
    );
    // A route without roles needs no user; a token that verifies is told.
    let (status, _, _) = call(&proxy, "/plain/a", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(told(&upstream, "/plain/a"), (None, None));
    let (status, _, _) = call(&proxy, "/plain/b", &[("authorization", &user(&["viewer"]))]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        told(&upstream, "/plain/b"),
        (Some("dana".into()), Some("viewer".into()))
    );
    // Nothing refused reached the workload.
    assert!(upstream
        .requests()
        .iter()
        .all(|s| !s.target().starts_with("/admin") && s.target() != "/reports/q4"));

    let page = metrics(&proxy).await;
    let decisions = |reason: &str, route: &str| {
        metric(&page, &format!("licensegate_decisions_total{{decision=\"deny\",reason=\"{reason}\",route=\"{route}\"}}"))
    };
    assert_eq!(decisions("role_not_licensed", "reports"), Some(1.0));
    assert_eq!(decisions("role_missing", "reports"), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_stale_user_tokens_are_refused_each_with_its_reason() {
    let idp = Idp::start().await;
    let upstream = RecordingUpstream::start(Answer101::Genuine).await;
    let proxy = started(&idp.config("refusals", &upstream.url(), "state.json", "")).await;
    let now = unix_now();
    let with = |change: &dyn Fn(&mut Value)| {
        let mut claims = claims("eve", &["analyst"]);
        change(&mut claims);
        sign(&claims, &idp.key, "idp-1")
    };
    let stranger = SigningKey::generate(Algorithm::EdDSA).unwrap();
    let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
    let payload = claims("eve", &["analyst"]).to_string();
    // HS256 keyed with what the JWKS publishes: the classic confusion.
    let published_key = published(&[(&idp.key, "idp-1")]);
    let hs256 = {
        let signing_input = format!(
            "{}.{}",
            b64(br#"{"alg":"HS256","kid":"idp-1","typ":"JWT"}"#),
            b64(payload.as_bytes())
        );
        let jwk: Value = serde_json::from_str(&published_key).unwrap();
        let secret = jwk["keys"][0]["x"].as_str().unwrap().to_owned();
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
        let tag = ring::hmac::sign(&key, signing_input.as_bytes());
        format!("{signing_input}.{}", b64(tag.as_ref()))
    };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "another issuer",
            with(&|c| c["iss"] = json!("https://evil.test/realms/acme")),
            "issuer",
        ),
        (
            "another audience",
            with(&|c| c["aud"] = json!("another-app")),
            "audience",
        ),
        (
            "expired",
            with(&|c| c["exp"] = json!(now - 3600)),
            "expired",
        ),
        (
            "not yet valid",
            with(&|c| c["nbf"] = json!(now + 3600)),
            "not valid before",
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(br#"{"alg":"none","kid":"idp-1"}"#),
                b64(payload.as_bytes())
            ),
            "algorithm",
        ),
        ("HS256 keyed with the JWKS", hs256, "algorithm"),
        (
            "unknown kid",
            sign(&claims("eve", &["analyst"]), &stranger, "idp-9"),
            "unknown key",
        ),
        (
            "signed by another key under a known kid",
            sign(&claims("eve", &["analyst"]), &stranger, "idp-1"),
            "signature",
        ),
        (
            "its own key in the header",
            sign_parts(
                json!({"alg": "EdDSA", "kid": "idp-1", "jwk": {"kty": "OKP"}})
                    .to_string()
                    .as_bytes(),
                payload.as_bytes(),
                &idp.key,
            ),
            "jwk",
        ),
    ];
    for (what, token, detail_has) in &cases {
        let (status, reason, detail) =
            call(&proxy, "/reports/x", &[("authorization", &bearer(token))]).await;
        assert_eq!(
            (status, reason.as_str()),
            (StatusCode::UNAUTHORIZED, "user_token_invalid"),
            "{what}: {detail}"
        );
        assert!(
            detail.to_lowercase().contains(detail_has),
            "{what}: {detail}"
        );
    }
    assert!(
        upstream.requests().is_empty(),
        "a refused token reached the workload"
    );
    // The good token passes, and each refusal was counted by its result.
    let (status, _, _) = call(
        &proxy,
        "/reports/x",
        &[("authorization", &bearer(&with(&|_| ())))],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let page = metrics(&proxy).await;
    let result = |r: &str| {
        metric(
            &page,
            &format!("licensegate_user_token_verifications_total{{result=\"{r}\"}}"),
        )
        .unwrap_or(0.0)
    };
    for (r, n) in [
        ("issuer_mismatch", 1.0),
        ("audience_mismatch", 1.0),
        ("expired", 1.0),
        ("not_yet_valid", 1.0),
        ("algorithm_rejected", 2.0),
        ("key_unknown", 1.0),
        ("signature_invalid", 1.0),
        ("malformed", 1.0),
        ("verified", 1.0),
    ] {
        assert_eq!(result(r), n, "result {r}:\n{page}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotated_mid_run_are_picked_up_and_retired_keys_stop_verifying() {
    let idp = Idp::start().await;
    let upstream = RecordingUpstream::start(Answer101::Genuine).await;
    let proxy = started(&idp.config(
        "rotation",
        &upstream.url(),
        "state.json",
        "      refresh: 1s\n",
    ))
    .await;
    let old = bearer(&idp.token("olga", &["analyst"]));
    assert_eq!(
        call(&proxy, "/reports/1", &[("authorization", &old)])
            .await
            .0,
        StatusCode::OK
    );

    // The IdP publishes a second key and starts signing with it.
    let next = SigningKey::generate(Algorithm::ES256).unwrap();
    idp.server
        .set(&published(&[(&idp.key, "idp-1"), (&next, "idp-2")]));
    let new = bearer(&idp.token_by(&next, "idp-2", "nina", &["analyst"]));
    assert!(
        eventually(
            async || call(&proxy, "/reports/2", &[("authorization", &new)])
                .await
                .0
                == StatusCode::OK
        )
        .await,
        "a token under the new kid never verified"
    );
    // The old key is retired: its tokens stop verifying once the JWKS is
    // fetched again (a cached verification is not kept past a key change).
    idp.server.set(&published(&[(&next, "idp-2")]));
    assert!(
        eventually(async || {
            let (status, reason, _) = call(&proxy, "/reports/3", &[("authorization", &old)]).await;
            status == StatusCode::UNAUTHORIZED && reason == "user_token_invalid"
        })
        .await,
        "the retired key kept verifying"
    );
    assert_eq!(
        call(&proxy, "/reports/4", &[("authorization", &new)])
            .await
            .0,
        StatusCode::OK
    );

    // Made-up kids ask for fetches, but at most one per `min_refresh`.
    let before = idp.server.fetches();
    let started = std::time::Instant::now();
    for n in 0..40 {
        let forged = bearer(&sign(&claims("x", &[]), &next, &format!("made-up-{n}")));
        call(&proxy, "/reports/5", &[("authorization", &forged)]).await;
    }
    let windows = started.elapsed().as_millis() / 200 + 2;
    // Scheduled refreshes (every 1 s) count too.
    let scheduled = started.elapsed().as_secs() as usize + 1;
    assert!(
        idp.server.fetches() - before <= windows as usize + scheduled,
        "{} fetches for 40 unknown kids in {:?}",
        idp.server.fetches() - before,
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_idp_at_start_uses_the_last_good_jwks_or_is_not_ready() {
    let idp = Idp::start().await;
    let upstream = RecordingUpstream::start(Answer101::Genuine).await;
    let config = idp.config("restart", &upstream.url(), "state.json", "");
    let token = bearer(&idp.token("alice", &["analyst"]));
    {
        let proxy = started(&config).await;
        assert_eq!(
            call(&proxy, "/reports/a", &[("authorization", &token)])
                .await
                .0,
            StatusCode::OK
        );
        // Written after the keys are in use: wait for it.
        let state = idp.path().join("state.json");
        assert!(
            eventually(async || state.exists()).await,
            "no state file written"
        );
    }
    idp.server.stop().await;

    // Restarted while the IdP is away: the state file's copy verifies.
    let proxy = started(&config).await;
    let (ready, body) = get(&proxy.admin_url("/ready")).await;
    assert_eq!(
        ready.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&body)
    );
    // `/users` says where the keys in force came from, and what failed.
    let (_, body) = get(&proxy.admin_url("/users")).await;
    let users: Value = serde_json::from_slice(&body).unwrap();
    let issuer = &users["issuers"][0];
    assert_eq!(issuer["issuer"], IDP, "{users}");
    assert_eq!(issuer["loaded"], true, "{users}");
    assert_eq!(issuer["source"], "state", "{users}");
    assert_eq!(
        call(&proxy, "/reports/b", &[("authorization", &token)])
            .await
            .0,
        StatusCode::OK
    );
    drop(proxy);

    // No copy: not ready, naming the issuer; routes that need a user say
    // why; routes that do not are served.
    let config = idp.config("fresh", &upstream.url(), "fresh-state.json", "");
    let proxy = Proxy::with_config(&config);
    let (ready, body) = get(&proxy.admin_url("/ready")).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains(IDP), "{body}");
    let (status, reason, _) = call(&proxy, "/reports/c", &[("authorization", &token)]).await;
    assert_eq!(
        (status, reason.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "user_keys_unavailable")
    );
    assert_eq!(call(&proxy, "/plain/ok", &[]).await.0, StatusCode::OK);
    assert_eq!(call(&proxy, "/healthz", &[]).await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_made_by_pyjwt_verify_through_the_proxy() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/users");
    let server =
        JwksServer::start(&std::fs::read_to_string(fixtures.join("jwks.json")).unwrap()).await;
    let upstream = RecordingUpstream::start(Answer101::Genuine).await;
    let dir = tempfile::tempdir().unwrap();
    write_file(
        dir.path(),
        "policy.yaml",
        "routes:\n  - {path: /reports/**, access: public, roles: [analyst]}\n",
    );
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures.join("expected.json")).unwrap())
            .unwrap();
    let claims = &expected["keycloak"];
    let config = write_file(
        dir.path(),
        "lg.yaml",
        &format!(
            "upstream:\n  url: {}\npolicy:\n  paths: [policy.yaml]\n\
             users:\n  issuers:\n    - issuer: {}\n      audience: licensegate\n      jwks_url: {}\n      ca: {}\n      \
             roles_claim: realm_access.roles\n      subject_claim: preferred_username\n",
            upstream.url(),
            claims["issuer"].as_str().unwrap(),
            server.url(),
            server.ca_path()
        ),
    );
    let proxy = started(&config).await;
    for alg in ["rs256", "es256", "eddsa"] {
        let token = std::fs::read_to_string(fixtures.join(format!("keycloak-{alg}.jwt"))).unwrap();
        let path = format!("/reports/{alg}");
        let (status, reason, detail) =
            call(&proxy, &path, &[("authorization", &bearer(token.trim()))]).await;
        assert_eq!(status, StatusCode::OK, "{alg}: {reason} {detail}");
        assert_eq!(
            told(&upstream, &path).0.as_deref(),
            claims["preferred_username"].as_str(),
            "{alg}"
        );
    }
}

#[test]
fn a_user_token_may_not_share_the_license_header() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("keys")).unwrap();
    let vendor = SigningKey::generate(Algorithm::EdDSA).unwrap();
    std::fs::write(dir.path().join("keys/v1.pem"), vendor.public_key_pem()).unwrap();
    write_file(dir.path(), "jwks.json", &published(&[(&vendor, "idp-1")]));
    let config = write_file(
        dir.path(),
        "lg.yaml",
        "upstream:\n  url: http://127.0.0.1:1\nlicense:\n  keys: keys\n  source: header\n\
         users:\n  issuers:\n    - {issuer: https://idp.test, audience: app, jwks_file: jwks.json}\n",
    );
    let (status, stderr) = Proxy::try_with_config(&config, &[]).err().expect("refused");
    assert!(!status.success());
    assert!(
        stderr.contains("users.token") && stderr.contains("license.header"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_shows_the_user_and_the_role_checks() {
    let idp = Idp::start().await;
    let config = idp.config("explain", "http://127.0.0.1:1", "state.json", "");
    let explain = |token: String| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_licensegate"))
            .args(["policy", "explain", "--config"])
            .arg(&config)
            .args(["--path", "/reports/q3", "--user", &token])
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };
    let (code, out) = explain(idp.token("alice", &["analyst"]));
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("user       `alice` from https://idp.test/realms/acme, roles [analyst]"),
        "{out}"
    );
    assert!(
        out.contains("roles      needs one of `analyst`, `admin`: held, and licensed"),
        "{out}"
    );
    let (code, out) = explain(idp.token("mallory", &["admin"]));
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("held, but not licensed"), "{out}");
    assert!(out.contains("deny 403 role_not_licensed"), "{out}");
}
