//! Metrics of the policy in force and its reloads.

use prometheus::{IntCounter, IntGauge};

use crate::metrics::Registry;

/// The policy in force and its reloads.
pub struct PolicyMetrics {
    pub reloads_ok: IntCounter,
    pub reloads_failed: IntCounter,
    /// 1 while a policy is in force; 0 runs as a plain (license-only) proxy.
    pub loaded: IntGauge,
    pub routes: IntGauge,
    pub generation: IntGauge,
}

impl std::fmt::Debug for PolicyMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyMetrics").finish_non_exhaustive()
    }
}

impl PolicyMetrics {
    pub fn new(registry: &Registry) -> Self {
        let reloads = registry.counter_vec(
            "licensegate_policy_reloads_total",
            "Policy reloads, by result (ok, error).",
            &["result"],
        );
        PolicyMetrics {
            reloads_ok: reloads.with_label_values(&["ok"]),
            reloads_failed: reloads.with_label_values(&["error"]),
            loaded: registry.gauge(
                "licensegate_policy_loaded",
                "1 while a policy is in force; 0 when running without one (pass-through).",
            ),
            routes: registry.gauge(
                "licensegate_policy_routes",
                "Routes in the policy in force.",
            ),
            generation: registry.gauge(
                "licensegate_policy_generation",
                "Generation of the policy in force; changes on every successful reload.",
            ),
        }
    }
}
