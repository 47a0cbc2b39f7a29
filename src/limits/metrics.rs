//! Metrics of the limit counters: usage per limit, and the shared store.

use std::sync::Arc;

use prometheus::{Histogram, IntCounter, IntGauge, IntGaugeVec};

use super::Unserved;
use crate::metrics::Registry;

/// `licensegate_quota_refunds_total{reason}`: served-counted quota charges
/// given back because their request was not served.
pub struct RefundMetrics {
    by_reason: Vec<IntCounter>,
}

impl std::fmt::Debug for RefundMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefundMetrics").finish_non_exhaustive()
    }
}

impl RefundMetrics {
    pub fn new(registry: &Registry) -> RefundMetrics {
        let family = registry.counter_vec(
            "licensegate_quota_refunds_total",
            "Quota charges given back because the request was not served (count: served), by \
             reason (upstream_error: a 5xx; incomplete: the response body did not complete; \
             client_gone: the client left before the response head).",
            &["reason"],
        );
        RefundMetrics {
            by_reason: crate::metrics::resolve_counters(
                &family,
                Unserved::ALL.iter().map(|r| r.as_str()),
            ),
        }
    }

    pub fn refunded(&self, reason: Unserved, charges: u64) {
        let index = Unserved::ALL
            .iter()
            .position(|r| *r == reason)
            .expect("every reason is in ALL");
        self.by_reason[index].inc_by(charges);
    }
}

/// Limit usage, refreshed by the periodic sweep.
pub struct LimitMetrics {
    /// `{limit, key}`: identities holding a seat.
    pub seats_in_use: IntGaugeVec,
    pub seats_limit: IntGaugeVec,
    /// `{limit, key}`: units used this period, and the limit.
    pub quota_used: IntGaugeVec,
    pub quota_limit: IntGaugeVec,
    /// `{limit}`: keys tracked (memory held by counters).
    pub limit_keys: IntGaugeVec,
    /// Served-counted quota charges given back.
    pub refunds: Arc<RefundMetrics>,
}

impl std::fmt::Debug for LimitMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LimitMetrics").finish_non_exhaustive()
    }
}

impl LimitMetrics {
    pub fn new(registry: &Registry) -> Self {
        LimitMetrics {
            seats_in_use: registry.gauge_vec(
                "licensegate_seats_in_use",
                "Identities holding a seat, by limit and key (usually the license id).",
                &["limit", "key"],
            ),
            seats_limit: registry.gauge_vec(
                "licensegate_seats_limit",
                "Seats licensed, by limit and key.",
                &["limit", "key"],
            ),
            quota_used: registry.gauge_vec(
                "licensegate_quota_used",
                "Quota units used in the current period, by limit and key.",
                &["limit", "key"],
            ),
            quota_limit: registry.gauge_vec(
                "licensegate_quota_limit",
                "Quota units allowed per period, by limit and key.",
                &["limit", "key"],
            ),
            limit_keys: registry.gauge_vec(
                "licensegate_limit_keys",
                "Counter keys tracked per limit.",
                &["limit"],
            ),
            refunds: Arc::new(RefundMetrics::new(registry)),
        }
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
    /// Quota units counted locally during outages, merged into the store.
    pub reconciled_units: IntCounter,
}

impl std::fmt::Debug for StoreMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreMetrics").finish_non_exhaustive()
    }
}

impl StoreMetrics {
    pub fn new(registry: &Registry) -> Self {
        let errors = registry.counter_vec(
            "licensegate_store_errors_total",
            "Shared store round trips that failed, by kind (timeout, error).",
            &["kind"],
        );
        StoreMetrics {
            fallback_active: registry.gauge(
                "licensegate_store_fallback_active",
                "1 while the shared store is unavailable and limits are counted locally.",
            ),
            errors_timeout: errors.with_label_values(&["timeout"]),
            errors_error: errors.with_label_values(&["error"]),
            latency: registry.histogram(
                "licensegate_store_latency_seconds",
                "Time of one shared store round trip (one per decision in accurate mode).",
                vec![
                    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1,
                ],
            ),
            round_trips: registry.counter(
                "licensegate_store_round_trips_total",
                "Shared store round trips (compare with licensegate_decisions_total for trips per decision).",
            ),
            lease_grants: registry.counter(
                "licensegate_store_lease_grants_total",
                "Leased mode: budget slices taken from the shared store.",
            ),
            lease_returns: registry.counter(
                "licensegate_store_lease_returns_total",
                "Leased mode: unused slices given back to the shared store.",
            ),
            reconciled_units: registry.counter(
                "licensegate_store_reconciled_units_total",
                "Quota units counted locally while the shared store was away, merged into it once it was back.",
            ),
        }
    }
}
