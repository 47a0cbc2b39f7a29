//! Metrics of license checking and loading, registered by the license
//! subsystem itself.

use prometheus::{IntCounter, IntGauge};

use crate::license::LicenseError;
use crate::metrics::{resolve_counters, resolve_gauges, Registry};

/// License states, the `state` label of `licensegate_license_state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LicenseState {
    /// Loaded and within its validity.
    Valid,
    /// Past `exp`, inside the grace period.
    Grace,
    /// Past `exp` and its grace period.
    Expired,
    /// Loaded but refused (signature, claims, environment).
    Invalid,
    /// None loaded.
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

    /// The label value.
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
    /// `exp` of the deployment license, unix seconds.
    pub expiry_timestamp: IntGauge,
    state: Vec<IntGauge>,
    /// `[valid, grace, <each LicenseError reason>]`.
    verifications: Vec<IntCounter>,
    /// Checks answered from the verification cache.
    pub cache_hits: IntCounter,
    /// Checks answered by neither cache.
    pub cache_misses: IntCounter,
    /// Tokens refused from the negative cache, without a signature check.
    pub negative_cache_hits: IntCounter,
    /// Signature checks run (`ring`), whatever their result.
    pub signature_checks: IntCounter,
    /// Successful license or keyring reloads.
    pub reloads_ok: IntCounter,
    /// Failed license or keyring reloads.
    pub reloads_failed: IntCounter,
    /// Requests allowed on a license in grace.
    pub grace_requests: IntCounter,
    /// `seq` of the revocation list in force; 0 when none.
    pub revocation_seq: IntGauge,
    /// Seconds since the revocation list in force was issued (`iat`).
    pub revocation_age: IntGauge,
    /// The configured bound on that age (0: no revocation source).
    pub revocation_max_age: IntGauge,
    /// `[ok, invalid, rollback, conflict, fetch_error]`.
    revocation_updates: Vec<IntCounter>,
}

/// The `result` labels of `licensegate_license_revocation_updates_total`.
pub const REVOCATION_RESULTS: [&str; 5] = ["ok", "invalid", "rollback", "conflict", "fetch_error"];

impl std::fmt::Debug for LicenseMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LicenseMetrics").finish_non_exhaustive()
    }
}

impl LicenseMetrics {
    /// Register the license families on `registry`.
    pub fn new(registry: &Registry) -> Self {
        let expiry_timestamp = registry.gauge(
            "licensegate_license_expiry_timestamp_seconds",
            "Expiry (exp) of the deployment license, unix seconds; 0 when none is loaded.",
        );
        let state = registry.gauge_vec(
            "licensegate_license_state",
            "1 for the deployment license's current state, 0 for the others.",
            &["state"],
        );
        let verifications = registry.counter_vec(
            "licensegate_token_verifications_total",
            "License token checks, by result (valid, grace, or the failure reason).",
            &["result"],
        );
        let cache_hits = registry.counter(
            "licensegate_license_cache_hits_total",
            "Token checks answered from the verification cache.",
        );
        let cache_misses = registry.counter(
            "licensegate_license_cache_misses_total",
            "Token checks answered by neither cache (parsed, then verified if well-formed).",
        );
        let negative_cache_hits = registry.counter(
            "licensegate_license_negative_cache_hits_total",
            "Token checks refused from the cache of tokens that failed before, without a signature check.",
        );
        let signature_checks = registry.counter(
            "licensegate_license_signature_checks_total",
            "Signature verifications run, whatever their result.",
        );
        let reloads = registry.counter_vec(
            "licensegate_license_reloads_total",
            "Reloads of the license or keyring, by result.",
            &["result"],
        );
        let grace_requests = registry.counter(
            "licensegate_license_grace_requests_total",
            "Requests allowed on a license inside its grace period.",
        );
        let revocation_seq = registry.gauge(
            "licensegate_license_revocation_seq",
            "seq of the signed revocation list in force; 0 when none is.",
        );
        let revocation_age = registry.gauge(
            "licensegate_license_revocation_age_seconds",
            "Seconds since the revocation list in force was issued (its iat); seconds since the epoch when a source is configured but no list is in force.",
        );
        let revocation_max_age = registry.gauge(
            "licensegate_license_revocation_max_age_seconds",
            "license.revocations.max_age: the age past which the list counts as stale; 0 without a revocation source.",
        );
        let revocation_updates = registry.counter_vec(
            "licensegate_license_revocation_updates_total",
            "Revocation lists offered by the file or URL, by result (ok, invalid, rollback, conflict, fetch_error).",
            &["result"],
        );
        let results = ["valid", "grace"].into_iter().chain(LicenseError::REASONS);
        LicenseMetrics {
            expiry_timestamp,
            state: resolve_gauges(&state, LicenseState::ALL.iter().map(|s| s.as_str())),
            verifications: resolve_counters(&verifications, results),
            cache_hits,
            cache_misses,
            negative_cache_hits,
            signature_checks,
            reloads_ok: reloads.with_label_values(&["ok"]),
            reloads_failed: reloads.with_label_values(&["error"]),
            grace_requests,
            revocation_seq,
            revocation_age,
            revocation_max_age,
            revocation_updates: resolve_counters(&revocation_updates, REVOCATION_RESULTS),
        }
    }

    /// Count one revocation list update by its `result` label (one of
    /// [`REVOCATION_RESULTS`]).
    pub fn revocation_update(&self, result: &str) {
        if let Some(i) = REVOCATION_RESULTS.iter().position(|r| *r == result) {
            self.revocation_updates[i].inc();
        }
    }

    /// Make `current` the one state reported as 1.
    pub fn set_state(&self, current: LicenseState) {
        for (state, gauge) in LicenseState::ALL.iter().zip(&self.state) {
            gauge.set(i64::from(*state == current));
        }
    }

    /// Count one token check.
    pub fn verification(&self, result: Result<bool, &LicenseError>) {
        let index = match result {
            Ok(false) => 0,
            Ok(true) => 1,
            Err(error) => {
                2 + LicenseError::REASONS
                    .iter()
                    .position(|r| *r == error.reason())
                    .expect("every reason is listed")
            }
        };
        self.verifications[index].inc();
    }
}
