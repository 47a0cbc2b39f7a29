//! Prometheus metrics. Label handles are resolved once at start so the hot
//! path only touches atomics.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::decision::Reason;

/// Which way a request went, the `decision` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Allowed and answered by the upstream.
    Allow,
    /// Rejected by the decision engine.
    Deny,
    /// Allowed, but the proxy could not get an answer from the upstream.
    Error,
}

impl Outcome {
    const ALL: [Outcome; 3] = [Outcome::Allow, Outcome::Deny, Outcome::Error];

    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::Deny => "deny",
            Outcome::Error => "error",
        }
    }
}

/// Kinds of upstream failure, the `kind` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    Connect,
    Timeout,
    Protocol,
    /// `upstream.max_connections` stayed in use for `timeouts.upstream_queue`.
    Overloaded,
}

impl UpstreamErrorKind {
    const ALL: [UpstreamErrorKind; 4] = [
        UpstreamErrorKind::Connect,
        UpstreamErrorKind::Timeout,
        UpstreamErrorKind::Protocol,
        UpstreamErrorKind::Overloaded,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::Protocol => "protocol",
            UpstreamErrorKind::Overloaded => "overloaded",
        }
    }
}

/// All metrics of one process, registered in their own registry.
pub struct Metrics {
    registry: Registry,
    requests_total: IntCounterVec,
    /// `[outcome][reason]`, pre-resolved for the pairs that can occur.
    requests: Vec<Vec<Option<IntCounter>>>,
    pub request_duration: Histogram,
    upstream_errors: Vec<IntCounter>,
    pub connections_open: IntGauge,
    /// WebSocket tunnels open now.
    pub tunnels_open: IntGauge,
    pub connections_total: IntCounter,
    /// Plain HTTP/1.1 upstream connections in the shared idle list.
    pub upstream_idle: IntGauge,
    /// Upstream connections open (`upstream.max_connections` at most).
    pub upstream_open: IntGauge,
    /// Requests waiting for an upstream connection (or request slot).
    pub upstream_queued: IntGauge,
    pub license: LicenseMetrics,
    pub policy: PolicyMetrics,
    pub store: std::sync::Arc<StoreMetrics>,
}

/// License states, the `state` label of `licensegate_license_state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LicenseState {
    Valid,
    Grace,
    Expired,
    Invalid,
    Missing,
}

impl LicenseState {
    const ALL: [LicenseState; 5] = [
        LicenseState::Valid,
        LicenseState::Grace,
        LicenseState::Expired,
        LicenseState::Invalid,
        LicenseState::Missing,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            LicenseState::Valid => "valid",
            LicenseState::Grace => "grace",
            LicenseState::Expired => "expired",
            LicenseState::Invalid => "invalid",
            LicenseState::Missing => "missing",
        }
    }
}

/// Metrics of license checking and loading.
pub struct LicenseMetrics {
    pub expiry_timestamp: IntGauge,
    state: Vec<IntGauge>,
    /// `[valid, grace, <each LicenseError reason>]`.
    verifications: Vec<IntCounter>,
    pub cache_hits: IntCounter,
    pub cache_misses: IntCounter,
    /// Tokens refused from the negative cache, without a signature check.
    pub negative_cache_hits: IntCounter,
    /// Signature checks run (`ring`), whatever their result.
    pub signature_checks: IntCounter,
    pub reloads_ok: IntCounter,
    pub reloads_failed: IntCounter,
    pub grace_requests: IntCounter,
}

impl LicenseMetrics {
    fn new(registry: &Registry) -> Self {
        let expiry_timestamp = IntGauge::new(
            "licensegate_license_expiry_timestamp_seconds",
            "Expiry (exp) of the deployment license, unix seconds; 0 when none is loaded.",
        )
        .expect("valid metric");
        let state = IntGaugeVec::new(
            Opts::new(
                "licensegate_license_state",
                "1 for the deployment license's current state, 0 for the others.",
            ),
            &["state"],
        )
        .expect("valid metric");
        let verifications = IntCounterVec::new(
            Opts::new(
                "licensegate_token_verifications_total",
                "License token checks, by result (valid, grace, or the failure reason).",
            ),
            &["result"],
        )
        .expect("valid metric");
        let cache_hits = IntCounter::new(
            "licensegate_license_cache_hits_total",
            "Token checks answered from the verification cache.",
        )
        .expect("valid metric");
        let cache_misses = IntCounter::new(
            "licensegate_license_cache_misses_total",
            "Token checks answered by neither cache (parsed, then verified if well-formed).",
        )
        .expect("valid metric");
        let negative_cache_hits = IntCounter::new(
            "licensegate_license_negative_cache_hits_total",
            "Token checks refused from the cache of tokens that failed before, without a signature check.",
        )
        .expect("valid metric");
        let signature_checks = IntCounter::new(
            "licensegate_license_signature_checks_total",
            "Signature verifications run, whatever their result.",
        )
        .expect("valid metric");
        let reloads = IntCounterVec::new(
            Opts::new(
                "licensegate_license_reloads_total",
                "Reloads of the license or keyring, by result.",
            ),
            &["result"],
        )
        .expect("valid metric");
        let grace_requests = IntCounter::new(
            "licensegate_license_grace_requests_total",
            "Requests allowed on a license inside its grace period.",
        )
        .expect("valid metric");
        for collector in [
            Box::new(expiry_timestamp.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(state.clone()),
            Box::new(verifications.clone()),
            Box::new(cache_hits.clone()),
            Box::new(cache_misses.clone()),
            Box::new(negative_cache_hits.clone()),
            Box::new(signature_checks.clone()),
            Box::new(reloads.clone()),
            Box::new(grace_requests.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        let results = ["valid", "grace"]
            .into_iter()
            .chain(crate::license::LicenseError::REASONS);
        LicenseMetrics {
            expiry_timestamp,
            state: LicenseState::ALL
                .iter()
                .map(|s| state.with_label_values(&[s.as_str()]))
                .collect(),
            verifications: results
                .map(|r| verifications.with_label_values(&[r]))
                .collect(),
            cache_hits,
            cache_misses,
            negative_cache_hits,
            signature_checks,
            reloads_ok: reloads.with_label_values(&["ok"]),
            reloads_failed: reloads.with_label_values(&["error"]),
            grace_requests,
        }
    }

    /// Make `current` the one state reported as 1.
    pub fn set_state(&self, current: LicenseState) {
        for (state, gauge) in LicenseState::ALL.iter().zip(&self.state) {
            gauge.set(i64::from(*state == current));
        }
    }

    /// Count one token check.
    pub fn verification(&self, result: Result<bool, &crate::license::LicenseError>) {
        let index = match result {
            Ok(false) => 0,
            Ok(true) => 1,
            Err(error) => {
                2 + crate::license::LicenseError::REASONS
                    .iter()
                    .position(|r| *r == error.reason())
                    .expect("every reason is listed")
            }
        };
        self.verifications[index].inc();
    }
}

/// Metrics of the shared counter store (Redis).
pub struct StoreMetrics {
    /// 1 while limits are counted locally because the store is unavailable.
    pub fallback_active: IntGauge,
    pub errors_timeout: IntCounter,
    pub errors_error: IntCounter,
    pub latency: Histogram,
    pub round_trips: IntCounter,
    pub lease_grants: IntCounter,
    pub lease_returns: IntCounter,
}

impl StoreMetrics {
    fn new(registry: &Registry) -> Self {
        let fallback_active = IntGauge::new(
            "licensegate_store_fallback_active",
            "1 while the shared store is unavailable and limits are counted locally.",
        )
        .expect("valid metric");
        let errors = IntCounterVec::new(
            Opts::new(
                "licensegate_store_errors_total",
                "Shared store round trips that failed, by kind (timeout, error).",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let latency = Histogram::with_opts(
            HistogramOpts::new(
                "licensegate_store_latency_seconds",
                "Time of one shared store round trip (one per decision in accurate mode).",
            )
            .buckets(vec![
                0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1,
            ]),
        )
        .expect("valid metric");
        let round_trips = IntCounter::new(
            "licensegate_store_round_trips_total",
            "Shared store round trips (compare with licensegate_decisions_total for trips per decision).",
        )
        .expect("valid metric");
        let lease_grants = IntCounter::new(
            "licensegate_store_lease_grants_total",
            "Leased mode: budget slices taken from the shared store.",
        )
        .expect("valid metric");
        let lease_returns = IntCounter::new(
            "licensegate_store_lease_returns_total",
            "Leased mode: unused slices given back to the shared store.",
        )
        .expect("valid metric");
        for collector in [
            Box::new(fallback_active.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(errors.clone()),
            Box::new(latency.clone()),
            Box::new(round_trips.clone()),
            Box::new(lease_grants.clone()),
            Box::new(lease_returns.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        StoreMetrics {
            fallback_active,
            errors_timeout: errors.with_label_values(&["timeout"]),
            errors_error: errors.with_label_values(&["error"]),
            latency,
            round_trips,
            lease_grants,
            lease_returns,
        }
    }
}

/// Metrics of policy decisions, reloads and limit usage.
pub struct PolicyMetrics {
    /// `{decision, reason, route}`; routes are the policy's route names.
    pub decisions: IntCounterVec,
    pub decision_duration: Histogram,
    pub shadow_denials: IntCounterVec,
    pub reloads_ok: IntCounter,
    pub reloads_failed: IntCounter,
    /// 1 while a policy is in force; 0 runs as a plain (license-only) proxy.
    pub loaded: IntGauge,
    pub routes: IntGauge,
    pub generation: IntGauge,
    /// `{limit, key}`: identities holding a seat.
    pub seats_in_use: IntGaugeVec,
    pub seats_limit: IntGaugeVec,
    /// `{limit, key}`: units used this period, and the limit.
    pub quota_used: IntGaugeVec,
    pub quota_limit: IntGaugeVec,
    /// `{limit}`: keys tracked (memory held by counters).
    pub limit_keys: IntGaugeVec,
    pub decision_logs_suppressed: IntCounter,
}

impl PolicyMetrics {
    fn new(registry: &Registry) -> Self {
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric")
        };
        let decisions = counter_vec(
            "licensegate_decisions_total",
            "Policy decisions, by decision (allow, deny, shadow_deny), reason and route.",
            &["decision", "reason", "route"],
        );
        let decision_duration = Histogram::with_opts(
            HistogramOpts::new(
                "licensegate_decision_duration_seconds",
                "Time to decide one request (match, license, limits), excluding the upstream.",
            )
            .buckets(vec![
                0.000_000_5,
                0.000_001,
                0.000_002_5,
                0.000_005,
                0.000_01,
                0.000_025,
                0.000_05,
                0.000_1,
                0.000_25,
                0.000_5,
                0.001,
                0.005,
                0.01,
                0.05,
            ]),
        )
        .expect("valid metric");
        let shadow_denials = counter_vec(
            "licensegate_shadow_denials_total",
            "Requests a shadow-mode rule would have denied (forwarded anyway), by reason and route.",
            &["reason", "route"],
        );
        let reloads = counter_vec(
            "licensegate_policy_reloads_total",
            "Policy reloads, by result (ok, error).",
            &["result"],
        );
        let loaded = IntGauge::new(
            "licensegate_policy_loaded",
            "1 while a policy is in force; 0 when running without one (pass-through).",
        )
        .expect("valid metric");
        let routes = IntGauge::new(
            "licensegate_policy_routes",
            "Routes in the policy in force.",
        )
        .expect("valid metric");
        let generation = IntGauge::new(
            "licensegate_policy_generation",
            "Generation of the policy in force; changes on every successful reload.",
        )
        .expect("valid metric");
        let seats_in_use = gauge_vec(
            "licensegate_seats_in_use",
            "Identities holding a seat, by limit and key (usually the license id).",
            &["limit", "key"],
        );
        let seats_limit = gauge_vec(
            "licensegate_seats_limit",
            "Seats licensed, by limit and key.",
            &["limit", "key"],
        );
        let quota_used = gauge_vec(
            "licensegate_quota_used",
            "Quota units used in the current period, by limit and key.",
            &["limit", "key"],
        );
        let quota_limit = gauge_vec(
            "licensegate_quota_limit",
            "Quota units allowed per period, by limit and key.",
            &["limit", "key"],
        );
        let limit_keys = gauge_vec(
            "licensegate_limit_keys",
            "Counter keys tracked per limit.",
            &["limit"],
        );
        let decision_logs_suppressed = IntCounter::new(
            "licensegate_decision_logs_suppressed_total",
            "Denial log lines dropped by the log rate limit.",
        )
        .expect("valid metric");
        for collector in [
            Box::new(decisions.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(decision_duration.clone()),
            Box::new(shadow_denials.clone()),
            Box::new(reloads.clone()),
            Box::new(loaded.clone()),
            Box::new(routes.clone()),
            Box::new(generation.clone()),
            Box::new(seats_in_use.clone()),
            Box::new(seats_limit.clone()),
            Box::new(quota_used.clone()),
            Box::new(quota_limit.clone()),
            Box::new(limit_keys.clone()),
            Box::new(decision_logs_suppressed.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        PolicyMetrics {
            decisions,
            decision_duration,
            shadow_denials,
            reloads_ok: reloads.with_label_values(&["ok"]),
            reloads_failed: reloads.with_label_values(&["error"]),
            loaded,
            routes,
            generation,
            seats_in_use,
            seats_limit,
            quota_used,
            quota_limit,
            limit_keys,
            decision_logs_suppressed,
        }
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests_total = IntCounterVec::new(
            Opts::new(
                "licensegate_requests_total",
                "Requests handled, by decision and reason.",
            ),
            &["decision", "reason"],
        )
        .expect("valid metric");
        let request_duration = Histogram::with_opts(
            HistogramOpts::new(
                "licensegate_request_duration_seconds",
                "Time from request head received to response head sent (proxy + upstream).",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
        )
        .expect("valid metric");
        let upstream_errors_total = IntCounterVec::new(
            Opts::new(
                "licensegate_upstream_errors_total",
                "Failures talking to the upstream, by kind.",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let connections_open = IntGauge::new(
            "licensegate_connections_open",
            "Inbound connections currently open (a connection that became a tunnel counts until the tunnel ends).",
        )
        .expect("valid metric");
        let tunnels_open = IntGauge::new(
            "licensegate_tunnels_open",
            "WebSocket tunnels currently open.",
        )
        .expect("valid metric");
        let upstream_idle = IntGauge::new(
            "licensegate_upstream_idle_connections",
            "Plain HTTP/1.1 upstream connections waiting, unused, in the shared idle list.",
        )
        .expect("valid metric");
        let upstream_open = IntGauge::new(
            "licensegate_upstream_connections_open",
            "Upstream connections open, at most upstream.max_connections.",
        )
        .expect("valid metric");
        let upstream_queued = IntGauge::new(
            "licensegate_upstream_requests_queued",
            "Requests waiting for an upstream connection because upstream.max_connections are in use.",
        )
        .expect("valid metric");
        let connections_total = IntCounter::new(
            "licensegate_connections_total",
            "Inbound connections accepted.",
        )
        .expect("valid metric");
        let build_info = IntGaugeVec::new(
            Opts::new("licensegate_build_info", "Build information; always 1."),
            &["version"],
        )
        .expect("valid metric");
        build_info.with_label_values(&[crate::VERSION]).set(1);

        for collector in [
            Box::new(requests_total.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(request_duration.clone()),
            Box::new(upstream_errors_total.clone()),
            Box::new(connections_open.clone()),
            Box::new(tunnels_open.clone()),
            Box::new(connections_total.clone()),
            Box::new(upstream_idle.clone()),
            Box::new(upstream_open.clone()),
            Box::new(upstream_queued.clone()),
            Box::new(build_info),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }

        // Pairs that can occur are created up front, so a scrape shows
        // zeros for them instead of nothing.
        let requests = Outcome::ALL
            .iter()
            .map(|&outcome| {
                Reason::ALL
                    .iter()
                    .map(|&reason| {
                        plausible(outcome, reason).then(|| {
                            requests_total.with_label_values(&[outcome.as_str(), reason.as_str()])
                        })
                    })
                    .collect()
            })
            .collect();
        let upstream_errors = UpstreamErrorKind::ALL
            .iter()
            .map(|kind| upstream_errors_total.with_label_values(&[kind.as_str()]))
            .collect();

        let license = LicenseMetrics::new(&registry);
        let policy = PolicyMetrics::new(&registry);
        let store = std::sync::Arc::new(StoreMetrics::new(&registry));
        Metrics {
            store,
            license,
            policy,
            registry,
            requests_total,
            requests,
            request_duration,
            upstream_errors,
            connections_open,
            tunnels_open,
            connections_total,
            upstream_idle,
            upstream_open,
            upstream_queued,
        }
    }

    /// Count one finished request.
    #[inline]
    pub fn request(&self, outcome: Outcome, reason: Reason) {
        match &self.requests[outcome as usize][reason.index()] {
            Some(counter) => counter.inc(),
            None => self
                .requests_total
                .with_label_values(&[outcome.as_str(), reason.as_str()])
                .inc(),
        }
    }

    #[inline]
    pub fn upstream_error(&self, kind: UpstreamErrorKind) {
        self.upstream_errors[kind as usize].inc();
    }

    /// The registry, for subsystems that register their own metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 * 1024);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into a Vec cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn plausible(outcome: Outcome, reason: Reason) -> bool {
    match outcome {
        Outcome::Allow => matches!(reason, Reason::Allowed | Reason::CorsPreflight),
        Outcome::Error => matches!(
            reason,
            Reason::UpstreamUnavailable
                | Reason::UpstreamTimeout
                | Reason::UpstreamOverloaded
                | Reason::BadRequest
        ),
        Outcome::Deny => !matches!(
            reason,
            Reason::Allowed
                | Reason::CorsPreflight
                | Reason::UpstreamUnavailable
                | Reason::UpstreamTimeout
                | Reason::UpstreamOverloaded
        ),
    }
}
