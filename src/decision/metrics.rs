//! Metrics of the decisions: by decision, reason and route, their time, the
//! shadow-mode refusals. The engine also drives the policy and limit-usage
//! families, so it holds them here, each registered by its own subsystem.

use prometheus::{Histogram, IntCounter, IntCounterVec};

use super::Reason;
use crate::limits::LimitMetrics;
use crate::metrics::Registry;
use crate::policy::PolicyMetrics;

/// Every family the decision engine counts into.
pub struct DecisionMetrics {
    /// `{decision, reason, route}`; routes are the policy's route names.
    decisions: IntCounterVec,
    pub decision_duration: Histogram,
    shadow_denials: IntCounterVec,
    pub decision_logs_suppressed: IntCounter,
    pub policy: PolicyMetrics,
    pub limits: LimitMetrics,
}

impl std::fmt::Debug for DecisionMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionMetrics").finish_non_exhaustive()
    }
}

impl DecisionMetrics {
    /// Register the decision families, and the policy and limit ones the
    /// engine drives, on `registry`.
    pub fn new(registry: &Registry) -> Self {
        DecisionMetrics {
            decisions: registry.counter_vec(
                "licensegate_decisions_total",
                "Policy decisions, by decision (allow, deny, shadow_deny), reason and route.",
                &["decision", "reason", "route"],
            ),
            decision_duration: registry.histogram(
                "licensegate_decision_duration_seconds",
                "Time to decide one request (match, license, limits), excluding the upstream.",
                vec![
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
                ],
            ),
            shadow_denials: registry.counter_vec(
                "licensegate_shadow_denials_total",
                "Requests a shadow-mode rule would have denied (forwarded anyway), by reason and route.",
                &["reason", "route"],
            ),
            decision_logs_suppressed: registry.counter(
                "licensegate_decision_logs_suppressed_total",
                "Denial log lines dropped by the log rate limit.",
            ),
            policy: PolicyMetrics::new(registry),
            limits: LimitMetrics::new(registry),
        }
    }

    /// `decisions_total{allow, allowed, route}`, resolved once per route
    /// when a policy is bound: the allow path is the hot one.
    pub fn allowed(&self, route: &str) -> IntCounter {
        self.decisions
            .with_label_values(&["allow", Reason::Allowed.as_str(), route])
    }

    /// Count an allowed CORS preflight. Rare enough to resolve the label
    /// here rather than keep a second pre-resolved counter per route.
    pub fn preflight(&self, route: &str) {
        self.decisions
            .with_label_values(&["allow", Reason::CorsPreflight.as_str(), route])
            .inc();
    }

    /// Count a denial, or with `shadow` one a shadow-mode rule would have
    /// made (forwarded anyway).
    pub fn denied(&self, reason: Reason, route: &str, shadow: bool) {
        if shadow {
            self.shadow_denials
                .with_label_values(&[reason.as_str(), route])
                .inc();
        }
        let decision = if shadow { "shadow_deny" } else { "deny" };
        self.decisions
            .with_label_values(&[decision, reason.as_str(), route])
            .inc();
    }
}
