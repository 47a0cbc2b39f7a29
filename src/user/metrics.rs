//! Metrics of user-token checking, registered by the user subsystem itself.

use prometheus::{IntCounter, IntGauge, IntGaugeVec};

use super::UserError;
use crate::license::Answered;
use crate::metrics::{resolve_counters, Registry};

/// Metrics of user-token checking.
pub struct UserMetrics {
    /// `[cached, verified, <each UserError::RESULTS>]`.
    verifications: Vec<IntCounter>,
    /// Signature checks run (`ring`), whatever their result.
    pub signature_checks: IntCounter,
    keys: IntGaugeVec,
}

impl UserMetrics {
    /// Register the user-token families on `registry`.
    pub fn new(registry: &Registry) -> UserMetrics {
        let verifications = registry.counter_vec(
            "licensegate_user_token_verifications_total",
            "User token checks, by result: cached, verified, or why the token was refused.",
            &["result"],
        );
        let signature_checks = registry.counter(
            "licensegate_user_token_signature_checks_total",
            "User token signature verifications run, whatever their result.",
        );
        let keys = registry.gauge_vec(
            "licensegate_user_keys",
            "Signing keys loaded per identity provider (by its issuer).",
            &["issuer"],
        );
        let results = ["cached", "verified"].into_iter().chain(UserError::RESULTS);
        UserMetrics {
            verifications: resolve_counters(&verifications, results),
            signature_checks,
            keys,
        }
    }

    /// The `licensegate_user_keys` gauge of `issuer`, to resolve once.
    pub fn keys(&self, issuer: &str) -> IntGauge {
        self.keys.with_label_values(&[issuer])
    }

    /// Count one check, answered as `answered`.
    pub fn verification(&self, result: Result<(), &UserError>, answered: Answered) {
        let index = match result {
            Ok(()) if answered == Answered::Cache => 0,
            Ok(()) => 1,
            Err(error) => {
                2 + UserError::RESULTS
                    .iter()
                    .position(|r| *r == error.result())
                    .expect("every result is listed")
            }
        };
        self.verifications[index].inc();
    }
}

impl std::fmt::Debug for UserMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserMetrics").finish_non_exhaustive()
    }
}
