//! Unit tests of the decision engine with a real compiled policy and the
//! in-memory counter store.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use super::{BodyState, Decision, DecisionEngine, EngineSettings, Peer, Reason, WebSocketScope};
use crate::decision::DecisionMetrics;
use crate::limits::{Clock, MemoryStore};
use crate::metrics::Registry;
use crate::policy::Policy;

/// An engine enforcing `policy` (public routes only: no license gate).
fn engine(policy: &str) -> DecisionEngine {
    engine_with(policy, &EngineSettings::default())
}

fn engine_with(policy: &str, settings: &EngineSettings) -> DecisionEngine {
    let policy = Policy::compile(vec![(PathBuf::from("p.yaml"), policy.to_owned())])
        .unwrap_or_else(|error| panic!("{error}"));
    let store = Arc::new(MemoryStore::new(
        Clock::system(),
        MemoryStore::DEFAULT_MAX_KEYS,
    ));
    DecisionEngine::new(
        None,
        store,
        settings,
        Arc::new(DecisionMetrics::new(&Registry::new())),
    )
    .with_policy(policy)
    .unwrap()
}

async fn decide(engine: &DecisionEngine, path: &str) -> Decision {
    let head = http::Request::get(path)
        .header("host", "app.test")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    let peer = Peer {
        addr: SocketAddr::from(([127, 0, 0, 1], 40000)),
        tls: false,
    };
    engine.decide(&head, &peer, BodyState::Empty).await
}

/// Whether an allowed request may become a WebSocket tunnel, and any
/// shadow-mode reason; panics on a denial.
async fn websocket(engine: &DecisionEngine, path: &str) -> (bool, Option<Reason>) {
    match decide(engine, path).await {
        Decision::Allow(allowed) => (allowed.websocket, allowed.shadow),
        Decision::Deny(denial) => panic!("{path} denied: {}", denial.reason.as_str()),
    }
}

#[tokio::test]
async fn only_a_route_with_websocket_true_allows_a_tunnel() {
    let engine = engine(
        "\
unmatched: public
limits:
  nothing:
    rate: {limit: 0, per: 1m, key: client_ip}
routes:
  - {name: live, path: /live/**, access: public, websocket: true}
  - {name: plain, path: /plain, access: public}
  - name: trial
    path: /trial
    access: public
    websocket: true
    mode: shadow
    limits: [nothing]
",
    );
    assert_eq!(websocket(&engine, "/live/feed").await, (true, None));
    assert_eq!(websocket(&engine, "/plain").await, (false, None));
    // `unmatched: public` admits requests, not tunnels.
    assert_eq!(websocket(&engine, "/elsewhere").await, (false, None));
    // A shadow-mode denial forwards the request as its route says.
    assert_eq!(
        websocket(&engine, "/trial").await,
        (true, Some(Reason::RateLimited))
    );
}

#[tokio::test]
async fn the_any_route_scope_lets_every_allowed_request_become_a_tunnel() {
    let policy = "\
unmatched: public
routes:
  - {name: plain, path: /plain, access: public}
  - {name: closed, path: /closed, access: deny}
";
    let settings = EngineSettings {
        websocket: WebSocketScope::AnyRoute,
        ..EngineSettings::default()
    };
    let engine = engine_with(policy, &settings);
    assert_eq!(websocket(&engine, "/plain").await, (true, None));
    assert_eq!(websocket(&engine, "/elsewhere").await, (true, None));
    // Allowing tunnels allows no request a route refuses.
    assert!(matches!(
        decide(&engine, "/closed").await,
        Decision::Deny(denial) if denial.reason == Reason::RouteDenied
    ));
}

#[tokio::test]
async fn a_refused_upgrade_is_decided_before_the_limits_and_spends_nothing() {
    let engine = engine(
        "\
unmatched: public
limits:
  once:
    rate: {limit: 1, per: 1h, key: client_ip}
  live_once:
    rate: {limit: 1, per: 1h, key: client_ip}
routes:
  - {name: plain, path: /plain/**, access: public, limits: [once]}
  - {name: live, path: /live/**, access: public, websocket: true, limits: [live_once]}
",
    );
    let handshake = |path: &str| {
        http::Request::get(path)
            .header("host", "app.test")
            .header("connection", "keep-alive, Upgrade")
            .header("upgrade", "websocket")
            .body(())
            .unwrap()
            .into_parts()
            .0
    };
    let peer = Peer {
        addr: SocketAddr::from(([127, 0, 0, 1], 40000)),
        tls: false,
    };
    for _ in 0..3 {
        match engine
            .decide(&handshake("/plain/x"), &peer, BodyState::Empty)
            .await
        {
            Decision::Deny(denial) => {
                assert_eq!(denial.reason, Reason::UpgradeNotAllowed);
                assert_eq!(denial.status, 403);
            }
            Decision::Allow(_) => panic!("an upgrade on a route without websocket was allowed"),
        }
    }
    // The refusals spent none of the route's one request.
    assert!(matches!(
        decide(&engine, "/plain/x").await,
        Decision::Allow(_)
    ));
    match engine
        .decide(&handshake("/live/x"), &peer, BodyState::Empty)
        .await
    {
        Decision::Allow(allowed) => assert!(allowed.websocket),
        Decision::Deny(denial) => panic!("denied: {}", denial.reason.as_str()),
    }
    // No route: `unmatched: public` admits requests, not tunnels.
    assert!(matches!(
        engine.decide(&handshake("/elsewhere"), &peer, BodyState::Empty).await,
        Decision::Deny(denial) if denial.reason == Reason::UpgradeNotAllowed
    ));
}

fn preflight_head(path: &str) -> http::request::Parts {
    http::Request::builder()
        .method("OPTIONS")
        .uri(path)
        .header("host", "app.test")
        .header("origin", "http://localhost:5173")
        .header("access-control-request-method", "POST")
        .body(())
        .unwrap()
        .into_parts()
        .0
}

#[test]
fn a_preflight_is_options_with_origin_and_a_requested_method_and_no_body() {
    use super::is_cors_preflight;
    let head = preflight_head("/x");
    let (method, headers) = (&head.method, &head.headers);
    assert!(is_cors_preflight(method, headers, BodyState::Empty));
    assert!(!is_cors_preflight(method, headers, BodyState::Follows));
    assert!(!is_cors_preflight(
        &http::Method::POST,
        headers,
        BodyState::Empty
    ));
    for (name, value) in [
        ("content-length", "0"),
        ("content-length", " 0 "),
        ("x-other", "1"),
    ] {
        let mut with = headers.clone();
        with.insert(
            http::HeaderName::from_static(name),
            http::HeaderValue::from_static(value),
        );
        assert!(is_cors_preflight(method, &with, BodyState::Empty), "{name}");
    }
    for (name, value) in [
        ("content-length", "5"),
        ("content-length", "00x"),
        ("transfer-encoding", "chunked"),
    ] {
        let mut with = headers.clone();
        with.insert(
            http::HeaderName::from_static(name),
            http::HeaderValue::from_static(value),
        );
        assert!(
            !is_cors_preflight(method, &with, BodyState::Empty),
            "{name}"
        );
    }
    for missing in ["origin", "access-control-request-method"] {
        let mut without = headers.clone();
        without.remove(missing);
        assert!(
            !is_cors_preflight(method, &without, BodyState::Empty),
            "{missing}"
        );
    }
}

#[tokio::test]
async fn preflights_are_forwarded_uncounted_unless_the_route_decides_or_denies() {
    let engine = engine(
        "\
unmatched: public
limits:
  once:
    rate: {limit: 1, per: 1h, key: client_ip}
  strict_once:
    rate: {limit: 1, per: 1h, key: client_ip}
routes:
  - {name: api, path: /api/**, access: public, limits: [once]}
  - {name: strict, path: /strict/**, access: public, limits: [strict_once], preflight: decide}
  - {name: closed, path: /closed/**, access: deny}
",
    );
    let peer = Peer {
        addr: SocketAddr::from(([127, 0, 0, 1], 40000)),
        tls: false,
    };
    let decide_preflight = |path: &'static str, body| {
        let engine = &engine;
        async move { engine.decide(&preflight_head(path), &peer, body).await }
    };
    for _ in 0..3 {
        match decide_preflight("/api/x", BodyState::Empty).await {
            Decision::Allow(allowed) => assert!(allowed.preflight),
            Decision::Deny(denial) => panic!("preflight denied: {}", denial.reason.as_str()),
        }
    }
    // The preflights spent none of the route's one request.
    assert!(matches!(decide(&engine, "/api/x").await, Decision::Allow(a) if !a.preflight));
    assert!(matches!(
        decide(&engine, "/api/x").await,
        Decision::Deny(d) if d.reason == Reason::RateLimited
    ));
    // `preflight: decide`: counted like any request.
    assert!(matches!(
        decide_preflight("/strict/x", BodyState::Empty).await,
        Decision::Allow(a) if !a.preflight
    ));
    assert!(matches!(
        decide_preflight("/strict/x", BodyState::Empty).await,
        Decision::Deny(d) if d.reason == Reason::RateLimited
    ));
    // With a body it is a request, not a preflight.
    assert!(matches!(
        decide_preflight("/elsewhere", BodyState::Follows).await,
        Decision::Allow(a) if !a.preflight
    ));
    // A `deny` route denies preflights, naming the route.
    match decide_preflight("/closed/x", BodyState::Empty).await {
        Decision::Deny(denial) => {
            assert_eq!(denial.reason, Reason::RouteDenied);
            assert_eq!(denial.route.as_deref(), Some("closed"));
        }
        Decision::Allow(_) => panic!("a preflight reached a deny route"),
    }
}

#[tokio::test]
async fn a_request_without_its_seat_identity_is_refused_for_that_whatever_the_counters_say() {
    // Seats are checked before anything is counted, as the shared store
    // path does: the reason does not depend on the counter backend or on
    // how far earlier limits are spent.
    let engine = engine(
        "\
limits:
  once:
    rate: {limit: 1, per: 1h, key: client_ip}
  users:
    seats: {identity: 'header:x-user', limit: 5, key: route}
routes:
  - {name: team, path: /team/**, access: public, limits: [once, users]}
",
    );
    let peer = Peer {
        addr: SocketAddr::from(([127, 0, 0, 1], 40000)),
        tls: false,
    };
    let head = |user: Option<&str>| {
        let mut request = http::Request::get("/team/board").header("host", "app.test");
        if let Some(user) = user {
            request = request.header("x-user", user);
        }
        request.body(()).unwrap().into_parts().0
    };
    let reason = |decision: Decision| match decision {
        Decision::Allow(_) => None,
        Decision::Deny(denial) => Some(denial.reason),
    };
    // Refused without counting: the route's one request is still there.
    assert_eq!(
        reason(engine.decide(&head(None), &peer, BodyState::Empty).await),
        Some(Reason::SeatIdentityMissing)
    );
    assert_eq!(
        reason(
            engine
                .decide(&head(Some("alice")), &peer, BodyState::Empty)
                .await
        ),
        None
    );
    // The rate is spent now; a request without identity is still told why
    // it could never pass.
    assert_eq!(
        reason(engine.decide(&head(None), &peer, BodyState::Empty).await),
        Some(Reason::SeatIdentityMissing)
    );
    assert_eq!(
        reason(
            engine
                .decide(&head(Some("alice")), &peer, BodyState::Empty)
                .await
        ),
        Some(Reason::RateLimited)
    );
}
