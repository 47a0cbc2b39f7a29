//! A warm decision allocates nothing: the request path's decision (route
//! match, header license from the verification cache, entitlement cache,
//! features, a seat and a rate limit with its budget for the response's
//! `RateLimit` fields, a served-counted quota's ticket, settled either way,
//! and the route's meters with the license's identity) is counted with a
//! counting global allocator in this test binary only.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use licensegate::config::{FileConfig, Settings};
use licensegate::decision::{BodyState, Decision, DecisionEngine, EngineSettings, Peer};
use licensegate::gateway::Metrics;
use licensegate::license::issue::{sign, SigningKey};
use licensegate::license::{Algorithm, LicenseGate};
use licensegate::limits::{Clock, MemoryStore};
use licensegate::policy::Policy;

struct Counting;

thread_local! {
    // Per thread, so the test harness's other threads do not count.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards every call to the system allocator; only counts.
#[expect(unsafe_code, reason = "a global allocator is an unsafe trait")]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const POLICY: &str = "
plans:
  pro:
    features: [reports]
    limits: {rpm: 1000000000}
limits:
  api_rate:
    rate: {limit: lic.limits.rpm, default: 20, per: 1m}
  users:
    seats: {identity: 'header:x-user', default: 3}
  monthly:
    quota: {limit: 1000000000, period: month}
meters:
  calls: requests
  tokens: {header: x-tokens}
routes:
  - {name: health, path: /healthz, access: public}
  - name: reports
    path: /api/reports/**
    features: [reports]
    limits: [users, api_rate, monthly]
    meters: [calls, tokens]
  - {name: api, path: /api/**, limits: [users, api_rate]}
";

fn decide_now(engine: &DecisionEngine, head: &http::request::Parts, peer: &Peer) -> Decision {
    let future = pin!(engine.decide(head, peer, BodyState::Empty));
    match future.poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(decision) => decision,
        Poll::Pending => panic!("the memory store never suspends"),
    }
}

/// A deployment with per-request licenses: a fresh vendor key, a license
/// of `plan` signed with it, and settings from that and `extra` YAML (more
/// `license` lines first, then other sections).
struct Deployment {
    _dir: tempfile::TempDir,
    license: String,
    settings: Settings,
    metrics: Arc<Metrics>,
    gate: Arc<LicenseGate>,
}

fn deployment(plan: &str, extra: &str) -> Deployment {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate(Algorithm::EdDSA).unwrap();
    std::fs::write(dir.path().join("k1.pem"), key.public_key_pem()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let license = sign(
        &serde_json::json!({"sub": "lic-1", "exp": now + 3600, "lic": {"plan": plan, "seats": 10}}),
        &key,
        "k1",
    );
    let yaml = format!(
        "listen: 127.0.0.1:0\nupstream: {{url: 'http://127.0.0.1:1'}}\nlicense:\n  keys: {}\n  source: header\n{extra}",
        dir.path().join("k1.pem").display()
    );
    let settings = Settings::resolve(
        FileConfig::parse(Path::new("t.yaml"), &yaml).unwrap(),
        Default::default(),
    )
    .unwrap();
    let metrics = Arc::new(Metrics::new());
    let gate = Arc::new(
        LicenseGate::new(
            settings.license.as_ref().unwrap(),
            Arc::clone(&metrics.license),
        )
        .unwrap(),
    );
    Deployment {
        _dir: dir,
        license,
        settings,
        metrics,
        gate,
    }
}

fn memory_store() -> Arc<MemoryStore> {
    Arc::new(MemoryStore::new(
        Clock::system(),
        MemoryStore::DEFAULT_MAX_KEYS,
    ))
}

#[test]
fn a_warm_enforcing_decision_allocates_nothing() {
    let deployment = deployment("pro", "");
    let token = &deployment.license;
    let policy = Policy::compile(vec![("p.yaml".into(), POLICY.into())]).unwrap();
    let engine = DecisionEngine::new(
        Some(Arc::clone(&deployment.gate)),
        memory_store(),
        &EngineSettings::default(),
        Arc::clone(&deployment.metrics.decision),
    )
    .with_policy(policy)
    .unwrap();
    let head = http::Request::get("/api/reports/q3")
        .header("host", "app.local")
        .header("authorization", format!("Bearer {token}"))
        .header("x-user", "alice")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    let peer = Peer {
        addr: SocketAddr::from(([127, 0, 0, 1], 40000)),
        tls: false,
    };
    // Warm: the token verified and cached, the entitlement and counters made.
    for _ in 0..3 {
        assert!(matches!(
            decide_now(&engine, &head, &peer),
            Decision::Allow(_)
        ));
    }
    let before = ALLOCATIONS.with(Cell::get);
    for n in 0..1000 {
        let Decision::Allow(mut allowed) = decide_now(&engine, &head, &peer) else {
            panic!("allowed");
        };
        // Stating the rate's budget (keyed by the license: on by default)
        // is part of the warm path, and so are the quota's ticket and the
        // route's meters.
        assert!(!allowed.budgets.is_empty());
        assert_eq!(allowed.tickets.len(), 1);
        assert!(allowed.metered.is_some());
        // Served (the unit stays), or not (dropped: the unit goes back).
        if n % 2 == 0 {
            std::mem::take(&mut allowed.tickets).served();
        }
    }
    let allocations = ALLOCATIONS.with(Cell::get) - before;
    assert_eq!(
        allocations, 0,
        "{allocations} heap allocations in 1,000 warm decisions"
    );
}

#[test]
fn a_cached_user_token_check_allocates_nothing() {
    use licensegate::license::BudgetSettings;
    use licensegate::metrics::Registry;
    use licensegate::user::settings::UserForwarding;
    use licensegate::user::{
        ClaimPath, IssuerSettings, JwksSource, TokenLocation, UserAlgorithm, UserKeyring,
        UserMetrics, UserSettings, UserVerifier,
    };

    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/users");
    let jwks = std::fs::read(fixtures.join("jwks.json")).unwrap();
    let token = std::fs::read_to_string(fixtures.join("keycloak-rs256.jwt")).unwrap();
    let settings = UserSettings {
        issuers: vec![IssuerSettings {
            issuer: "https://idp.example.test/realms/acme".into(),
            audiences: vec!["licensegate".into()],
            jwks: JwksSource::File(fixtures.join("jwks.json")),
            algorithms: UserAlgorithm::ALL.to_vec(),
            subject_claim: ClaimPath::sub(),
            roles_claim: ClaimPath::parse("realm_access.roles"),
        }],
        token: TokenLocation::Bearer,
        leeway: std::time::Duration::from_secs(60),
        cache_capacity: 100,
        forward: UserForwarding::default(),
        state_file: None,
        failed_verifications: BudgetSettings::default(),
    };
    let verifier = UserVerifier::new(settings, Arc::new(UserMetrics::new(&Registry::new())));
    let keyring = UserKeyring::from_jwks_slice(&jwks, "jwks.json").unwrap();
    assert!(verifier.replace_keys(0, Arc::new(keyring)));
    let head = http::Request::get("/api/reports/q3")
        .header("host", "app.local")
        .header("authorization", format!("Bearer {}", token.trim()))
        .body(())
        .unwrap()
        .into_parts()
        .0;
    let client = || std::net::IpAddr::from([127, 0, 0, 1]);
    let now = 1_700_000_000;
    verifier.check(&head.headers, now, client).unwrap();

    let before = ALLOCATIONS.with(Cell::get);
    for _ in 0..1000 {
        let user = verifier.check(&head.headers, now, client).unwrap();
        assert!(user.has_role("analyst"));
    }
    let allocations = ALLOCATIONS.with(Cell::get) - before;
    assert_eq!(
        allocations, 0,
        "{allocations} heap allocations in 1,000 cached user checks"
    );
}

/// A warm decision on a route that needs a verified user: the license from
/// its header, the user token from `Authorization` (both cached), a role
/// checked against the license's plan, a seat held by the user and a rate
/// keyed by license and user, and the user's headers for the workload.
#[test]
fn a_warm_decision_with_a_verified_user_roles_and_a_seat_allocates_nothing() {
    use licensegate::user::Users;

    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/users");
    let user_token = std::fs::read_to_string(fixtures.join("keycloak-rs256.jwt")).unwrap();
    let deployment = deployment(
        "team",
        &format!(
            "  header: x-license\n\
             users:\n  issuers:\n    - issuer: https://idp.example.test/realms/acme\n      audience: licensegate\n      \
             jwks_file: {}\n      roles_claim: realm_access.roles\n",
            fixtures.join("jwks.json").display()
        ),
    );
    let (settings, metrics, license) = (
        &deployment.settings,
        &deployment.metrics,
        &deployment.license,
    );
    let users = Users::new(settings.users.as_ref().unwrap(), &metrics.registry, None).unwrap();
    let policy = Policy::compile(vec![(
        "p.yaml".into(),
        "plans:\n  team: {roles: [analyst, viewer]}\n\
         limits:\n  named: {seats: {identity: user, limit: lic.seats, default: 3}}\n  \
         per_user: {rate: {limit: 1000000000, per: 1m, key: user}}\n\
         routes:\n  - {name: reports, path: /api/reports/**, roles: [analyst, admin], limits: [per_user, named]}\n"
            .into(),
    )])
    .unwrap();
    let engine = DecisionEngine::new(
        Some(Arc::clone(&deployment.gate)),
        memory_store(),
        &EngineSettings::default(),
        Arc::clone(&metrics.decision),
    )
    .with_users(Arc::clone(&users.verifier))
    .with_policy(policy)
    .unwrap();
    let head = http::Request::get("/api/reports/q3")
        .header("host", "app.local")
        .header("x-license", license)
        .header("authorization", format!("Bearer {}", user_token.trim()))
        .body(())
        .unwrap()
        .into_parts()
        .0;
    let peer = Peer {
        addr: SocketAddr::from(([127, 0, 0, 1], 40000)),
        tls: false,
    };
    for _ in 0..3 {
        assert!(matches!(
            decide_now(&engine, &head, &peer),
            Decision::Allow(_)
        ));
    }
    let before = ALLOCATIONS.with(Cell::get);
    for _ in 0..1000 {
        let Decision::Allow(allowed) = decide_now(&engine, &head, &peer) else {
            panic!("allowed");
        };
        let user = allowed.user.as_ref().expect("the verified user is told");
        assert_eq!(
            user.roles.as_ref().map(|r| r.as_bytes()),
            Some(&b"analyst"[..])
        );
    }
    let allocations = ALLOCATIONS.with(Cell::get) - before;
    assert_eq!(
        allocations, 0,
        "{allocations} heap allocations in 1,000 warm decisions with a verified user"
    );
}
