//! Decision costs: `cargo bench --bench policy`.
//!
//! - `match/{10,10000}_routes`: route lookup alone (`Policy::find`);
//! - `decide/{10,10000}_routes`: a whole cached decision — match, header
//!   license from the verification cache, entitlement cache, feature bits,
//!   a seat check and a rate limit that does not trigger (no I/O);
//! - `decide/user_roles_seat`: a cached decision on a route that needs a
//!   verified user: the license from its header and an RS256 user token
//!   from `Authorization` (both from their caches), a role checked against
//!   the license's plan, a per-user rate and a seat held by the user, and
//!   the user's headers for the workload;
//! - `decide/10_routes_instance_slot`: `decide/10_routes` with an instance
//!   slot that holds (what a licensed request under an instance limit adds:
//!   one atomic load);
//! - `rate_limit/check`: one GCRA update on a warm key;
//! - `request/{plain,enforcing}`: one HTTP/1.1 keep-alive request through
//!   the in-process proxy to an in-process upstream, without and with the
//!   policy (loopback sockets, so noisier than the rest).
//!
//! Allocations per warm decision are printed too (a counting allocator
//! wraps the system one in this benchmark only).

use std::alloc::{GlobalAlloc, Layout, System};
use std::future::Future;
use std::hint::black_box;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use licensegate::config::{FileConfig, Settings};
use licensegate::decision::{BodyState, Decision, DecisionEngine, EngineSettings, Peer};
use licensegate::gateway::Gateway;
use licensegate::gateway::Metrics;
use licensegate::license::issue::{sign, SigningKey};
use licensegate::license::{Algorithm, LicenseGate};
use licensegate::limits::instances::InstanceSlot;
use licensegate::limits::{Clock, MemoryStore};
use licensegate::policy::Policy;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator; only counts.
#[expect(unsafe_code, reason = "a global allocator is an unsafe trait")]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A policy of `routes` routes: `filler` routes spread over 100 top-level
/// prefixes, plus the demo-like routes the benchmark requests hit.
fn policy_text(routes: usize) -> String {
    let mut text = String::from(
        "plans:\n  pro:\n    features: [reports]\n    limits: {rpm: 1000000000}\n    seats: 1000\n\
         limits:\n  api_rate:\n    rate: {limit: lic.limits.rpm, default: 20, per: 1m}\n  \
         users:\n    seats: {identity: 'header:x-user', default: 3}\n\
         routes:\n  - name: health\n    path: /healthz\n    access: public\n  \
         - name: reports\n    path: /api/reports/**\n    features: [reports]\n    limits: [users, api_rate]\n  \
         - name: api\n    path: /api/**\n    limits: [users, api_rate]\n",
    );
    for i in 0..routes.saturating_sub(3) {
        text.push_str(&format!(
            "  - name: r{i}\n    path: /svc{}/v1/items{i}/{{id}}\n    methods: [GET]\n",
            i % 100
        ));
    }
    text
}

fn compile(routes: usize) -> Policy {
    Policy::compile(vec![("bench.yaml".into(), policy_text(routes))])
        .expect("bench policy compiles")
}

struct Licensed {
    _dir: tempfile::TempDir,
    gate: Arc<LicenseGate>,
    token: String,
    config_dir: std::path::PathBuf,
}

fn licensed() -> Licensed {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate(Algorithm::EdDSA).unwrap();
    std::fs::write(dir.path().join("k1.pem"), key.public_key_pem()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "sub": "lic-bench", "exp": now + 3600,
        "lic": {"plan": "pro", "features": ["reports"], "seats": 1000},
    });
    let token = sign(&claims, &key, "k1");
    let settings = license_settings(dir.path());
    let gate = Arc::new(LicenseGate::new(&settings, Arc::clone(&Metrics::new().license)).unwrap());
    Licensed {
        config_dir: dir.path().to_owned(),
        _dir: dir,
        gate,
        token,
    }
}

fn license_settings(dir: &Path) -> licensegate::license::LicenseSettings {
    let yaml = format!(
        "listen: 127.0.0.1:0\nupstream: {{url: 'http://127.0.0.1:1'}}\nlicense:\n  keys: {}\n  source: header\n",
        dir.join("k1.pem").display()
    );
    let file = FileConfig::parse(Path::new("bench.yaml"), &yaml).unwrap();
    Settings::resolve(file, Default::default())
        .unwrap()
        .license
        .unwrap()
}

fn engine(licensed: &Licensed, routes: usize) -> DecisionEngine {
    let store = Arc::new(MemoryStore::new(
        Clock::system(),
        MemoryStore::DEFAULT_MAX_KEYS,
    ));
    DecisionEngine::new(
        Some(Arc::clone(&licensed.gate)),
        store,
        &EngineSettings::default(),
        Arc::clone(&Metrics::new().decision),
    )
    .with_policy(compile(routes))
    .unwrap()
}

fn request(token: &str, path: &str) -> http::request::Parts {
    let (parts, ()) = http::Request::get(path)
        .header("host", "app.local")
        .header("authorization", format!("Bearer {token}"))
        .header("x-user", "alice")
        .body(())
        .unwrap()
        .into_parts();
    parts
}

/// `decide` never suspends with the memory store: poll it once.
fn decide_now(engine: &DecisionEngine, head: &http::request::Parts, peer: &Peer) -> Decision {
    let future = pin!(engine.decide(head, peer, BodyState::Empty));
    match future.poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(decision) => decision,
        Poll::Pending => panic!("the memory store never suspends"),
    }
}

fn bench(c: &mut Criterion) {
    let licensed = licensed();
    let peer = Peer {
        addr: SocketAddr::from(([127, 0, 0, 1], 40000)),
        tls: false,
    };
    let head = request(&licensed.token, "/api/reports/q3");
    for routes in [10, 10_000] {
        let policy = compile(routes);
        let get = http::Method::GET;
        let headers = http::HeaderMap::new();
        c.bench_function(&format!("match/{routes}_routes"), |b| {
            b.iter(|| {
                policy
                    .find(
                        &get,
                        Some("app.local"),
                        black_box("/svc5/v1/items5/7"),
                        &headers,
                    )
                    .unwrap()
            })
        });
        let engine = engine(&licensed, routes);
        assert!(matches!(
            decide_now(&engine, &head, &peer),
            Decision::Allow(_)
        ));
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        const WARM: u64 = 1000;
        for _ in 0..WARM {
            black_box(decide_now(&engine, &head, &peer));
        }
        let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
        println!(
            "decide/{routes}_routes: {:.2} heap allocations per warm decision",
            allocations as f64 / WARM as f64
        );
        c.bench_function(&format!("decide/{routes}_routes"), |b| {
            b.iter(|| decide_now(&engine, black_box(&head), &peer))
        });
    }

    let slot = Arc::new(InstanceSlot::new(
        "bench-replica".into(),
        true,
        Duration::from_secs(2),
        &licensegate::metrics::Registry::new(),
    ));
    let engine = engine(&licensed, 10).with_instance_slot(slot);
    assert!(matches!(
        decide_now(&engine, &head, &peer),
        Decision::Allow(_)
    ));
    c.bench_function("decide/10_routes_instance_slot", |b| {
        b.iter(|| decide_now(&engine, black_box(&head), &peer))
    });

    user_bench(c, &peer);

    let def = compile(10).limits[0].clone();
    let store = MemoryStore::new(Clock::system(), MemoryStore::DEFAULT_MAX_KEYS);
    let counters = store.counters(&def);
    let clock = store.clock().clone();
    c.bench_function("rate_limit/check", |b| {
        b.iter(|| counters.check(&def, black_box("lic-bench"), "", 1_000_000_000, 1, &clock))
    });

    request_benches(c, &licensed);
}

/// `decide/user_roles_seat`: see the module docs.
fn user_bench(c: &mut Criterion, peer: &Peer) {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/users");
    let user_token = std::fs::read_to_string(fixtures.join("keycloak-rs256.jwt")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate(Algorithm::EdDSA).unwrap();
    std::fs::write(dir.path().join("k1.pem"), key.public_key_pem()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let license = sign(
        &serde_json::json!({"sub": "lic-bench", "exp": now + 3600, "lic": {"plan": "team", "seats": 1000}}),
        &key,
        "k1",
    );
    let yaml = format!(
        "listen: 127.0.0.1:0\nupstream: {{url: 'http://127.0.0.1:1'}}\n\
         license:\n  keys: {}\n  source: header\n  header: x-license\n\
         users:\n  issuers:\n    - issuer: https://idp.example.test/realms/acme\n      audience: licensegate\n      \
         jwks_file: {}\n      roles_claim: realm_access.roles\n",
        dir.path().join("k1.pem").display(),
        fixtures.join("jwks.json").display()
    );
    let settings = Settings::resolve(
        FileConfig::parse(Path::new("bench.yaml"), &yaml).unwrap(),
        Default::default(),
    )
    .unwrap();
    let metrics = Metrics::new();
    let gate = Arc::new(
        LicenseGate::new(
            settings.license.as_ref().unwrap(),
            Arc::clone(&metrics.license),
        )
        .unwrap(),
    );
    let users =
        licensegate::user::Users::new(settings.users.as_ref().unwrap(), &metrics.registry, None)
            .unwrap();
    let policy = Policy::compile(vec![(
        "bench.yaml".into(),
        "plans:\n  team: {roles: [analyst, viewer]}\n\
         limits:\n  named: {seats: {identity: user, limit: lic.seats, default: 3}}\n  \
         per_user: {rate: {limit: 1000000000, per: 1m, key: user}}\n\
         routes:\n  - {name: health, path: /healthz, access: public}\n  \
         - {name: reports, path: /api/reports/**, roles: [analyst, admin], limits: [per_user, named]}\n"
            .into(),
    )])
    .unwrap();
    let engine = DecisionEngine::new(
        Some(gate),
        Arc::new(MemoryStore::new(
            Clock::system(),
            MemoryStore::DEFAULT_MAX_KEYS,
        )),
        &EngineSettings::default(),
        Arc::clone(&metrics.decision),
    )
    .with_users(Arc::clone(&users.verifier))
    .with_policy(policy)
    .unwrap();
    let (head, ()) = http::Request::get("/api/reports/q3")
        .header("host", "app.local")
        .header("x-license", license)
        .header("authorization", format!("Bearer {}", user_token.trim()))
        .header("accept", "application/json")
        .header("user-agent", "bench")
        .body(())
        .unwrap()
        .into_parts();
    let Decision::Allow(allowed) = decide_now(&engine, &head, peer) else {
        panic!("the bench request is allowed");
    };
    assert!(allowed.user.is_some(), "the verified user is told");
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    const WARM: u64 = 1000;
    for _ in 0..WARM {
        black_box(decide_now(&engine, &head, peer));
    }
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    println!(
        "decide/user_roles_seat: {:.2} heap allocations per warm decision",
        allocations as f64 / WARM as f64
    );
    c.bench_function("decide/user_roles_seat", |b| {
        b.iter(|| decide_now(&engine, black_box(&head), peer))
    });
}

fn request_benches(c: &mut Criterion, licensed: &Licensed) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let policy_file = licensed.config_dir.join("policy.yaml");
    std::fs::write(&policy_file, policy_text(10)).unwrap();
    for (name, policy) in [("plain", None), ("enforcing", Some(&policy_file))] {
        let (client, url, _gateway) = runtime.block_on(async {
            let upstream = licensegate::demo::EchoUpstream::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
                .await
                .unwrap();
            let upstream_addr = upstream.local_addr();
            tokio::spawn(upstream.serve());
            let mut yaml = format!(
                "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\nupstream: {{url: 'http://{upstream_addr}'}}\n"
            );
            if let Some(policy) = policy {
                yaml.push_str(&format!(
                    "license:\n  keys: {}\n  source: header\npolicy:\n  paths: [{}]\n",
                    licensed.config_dir.join("k1.pem").display(),
                    policy.display()
                ));
            }
            let file = FileConfig::parse(Path::new("bench.yaml"), &yaml).unwrap();
            let settings = Settings::resolve(file, Default::default()).unwrap();
            let gateway = Gateway::bind(&settings).unwrap();
            let url = format!("http://{}/api/reports/q3", gateway.proxy_addr());
            let lifecycle = gateway.lifecycle();
            tokio::spawn(gateway.run());
            let client = hyper_util::client::legacy::Client::builder(
                hyper_util::rt::TokioExecutor::new(),
            )
            .build_http::<http_body_util::Empty<bytes::Bytes>>();
            (client, url, lifecycle)
        });
        let token = format!("Bearer {}", licensed.token);
        c.bench_function(&format!("request/{name}"), |b| {
            b.iter_custom(|iters| {
                runtime.block_on(async {
                    let started = Instant::now();
                    for _ in 0..iters {
                        let request = http::Request::get(&url)
                            .header("authorization", &token)
                            .header("x-user", "alice")
                            .body(http_body_util::Empty::new())
                            .unwrap();
                        let response = client.request(request).await.unwrap();
                        assert_eq!(response.status(), 200);
                        use http_body_util::BodyExt;
                        response.into_body().collect().await.unwrap();
                    }
                    started.elapsed()
                })
            })
        });
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
