//! Metrics of the proxy: requests by outcome and reason, their time,
//! inbound connections and tunnels, and the upstream side.

use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge};

use crate::decision::Reason;
use crate::metrics::{resolve_counters, Registry};

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

/// Every family the proxy counts into.
pub struct ProxyMetrics {
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
}

impl std::fmt::Debug for ProxyMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyMetrics").finish_non_exhaustive()
    }
}

impl ProxyMetrics {
    pub fn new(registry: &Registry) -> Self {
        let requests_total = registry.counter_vec(
            "licensegate_requests_total",
            "Requests handled, by decision and reason.",
            &["decision", "reason"],
        );
        let upstream_errors_total = registry.counter_vec(
            "licensegate_upstream_errors_total",
            "Failures talking to the upstream, by kind.",
            &["kind"],
        );
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
        ProxyMetrics {
            requests,
            requests_total,
            request_duration: registry.histogram(
                "licensegate_request_duration_seconds",
                "Time from request head received to response head sent (proxy + upstream).",
                vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ],
            ),
            upstream_errors: resolve_counters(
                &upstream_errors_total,
                UpstreamErrorKind::ALL.iter().map(|k| k.as_str()),
            ),
            connections_open: registry.gauge(
                "licensegate_connections_open",
                "Inbound connections currently open (a connection that became a tunnel counts until the tunnel ends).",
            ),
            tunnels_open: registry.gauge(
                "licensegate_tunnels_open",
                "WebSocket tunnels currently open.",
            ),
            connections_total: registry.counter(
                "licensegate_connections_total",
                "Inbound connections accepted.",
            ),
            upstream_idle: registry.gauge(
                "licensegate_upstream_idle_connections",
                "Plain HTTP/1.1 upstream connections waiting, unused, in the shared idle list.",
            ),
            upstream_open: registry.gauge(
                "licensegate_upstream_connections_open",
                "Upstream connections open, at most upstream.max_connections.",
            ),
            upstream_queued: registry.gauge(
                "licensegate_upstream_requests_queued",
                "Requests waiting for an upstream connection because upstream.max_connections are in use.",
            ),
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
