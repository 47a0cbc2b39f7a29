//! What the admin port and Prometheus see of the issuers' keys: a status
//! per issuer on one shared board (which also keeps the `user keys`
//! readiness condition), and the fetch counters.

use std::sync::Arc;

use parking_lot::Mutex;
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec};
use serde::Serialize;

use crate::lifecycle::Lifecycle;
use crate::metrics::Registry;

/// The readiness condition: every issuer has keys.
pub const USER_KEYS_READY: &str = "user keys";

/// Where the keys in force came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JwksOrigin {
    /// The state file, written after an earlier run's fetch.
    State,
    /// The identity provider's JWKS URL.
    Fetch,
    /// A JWKS file.
    File,
}

/// One issuer's keys as last seen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct JwksStatusSnapshot {
    /// The issuer (`iss`).
    pub issuer: String,
    /// The JWKS URL (query redacted) or file path.
    pub location: String,
    /// Keys are in force.
    pub loaded: bool,
    /// Where the keys in force came from.
    pub source: Option<JwksOrigin>,
    /// When the keys in force were last fetched (or confirmed unchanged, or
    /// read from the file), unix seconds; for keys from the state file,
    /// when that run fetched them.
    pub last_success: Option<u64>,
    /// Fetches (or reads) that failed or were refused since the last success.
    pub consecutive_failures: u32,
    /// Why the last one failed, if it did.
    pub last_error: Option<String>,
}

/// The statuses of every issuer, and the readiness they add up to.
/// Cheap to clone.
#[derive(Clone, Debug)]
pub struct JwksBoard {
    inner: Arc<Board>,
}

#[derive(Debug)]
struct Board {
    issuers: Mutex<Vec<JwksStatusSnapshot>>,
    lifecycle: Option<Arc<Lifecycle>>,
}

impl JwksBoard {
    /// An empty board; with a `lifecycle`, it keeps [`USER_KEYS_READY`]
    /// there in step with the issuers.
    pub fn new(lifecycle: Option<Arc<Lifecycle>>) -> JwksBoard {
        JwksBoard {
            inner: Arc::new(Board {
                issuers: Mutex::new(Vec::new()),
                lifecycle,
            }),
        }
    }

    /// Add an issuer, not loaded yet, whose keys come from `location`.
    pub fn register(&self, issuer: &str, location: &str) -> JwksStatus {
        let index = {
            let mut issuers = self.inner.issuers.lock();
            issuers.push(JwksStatusSnapshot {
                issuer: issuer.to_owned(),
                location: location.to_owned(),
                loaded: false,
                source: None,
                last_success: None,
                consecutive_failures: 0,
                last_error: None,
            });
            issuers.len() - 1
        };
        self.inner.publish();
        JwksStatus {
            board: Arc::clone(&self.inner),
            index,
        }
    }

    /// Every issuer's status, in registration order.
    pub fn snapshots(&self) -> Vec<JwksStatusSnapshot> {
        self.inner.issuers.lock().clone()
    }

    /// Ready when every issuer has keys; else which have none, and why.
    pub fn readiness(&self) -> Result<(), String> {
        readiness(&self.inner.issuers.lock())
    }

    /// What `/status` shows: the statuses as a JSON array.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self.snapshots()).unwrap_or_default()
    }
}

impl Board {
    fn publish(&self) {
        if let Some(lifecycle) = &self.lifecycle {
            lifecycle.set(USER_KEYS_READY, readiness(&self.issuers.lock()));
        }
    }
}

fn readiness(issuers: &[JwksStatusSnapshot]) -> Result<(), String> {
    let missing: Vec<String> = issuers
        .iter()
        .filter(|status| !status.loaded)
        .map(|status| match &status.last_error {
            Some(error) => format!("no keys for issuer {}: {error}", status.issuer),
            None => format!("no keys for issuer {} yet", status.issuer),
        })
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(missing.join("; "))
    }
}

/// One issuer's entry on the [`JwksBoard`]. Cheap to clone; updated by
/// the issuer's source, read by the admin port.
#[derive(Clone, Debug)]
pub struct JwksStatus {
    board: Arc<Board>,
    index: usize,
}

impl JwksStatus {
    /// The status now.
    pub fn snapshot(&self) -> JwksStatusSnapshot {
        self.board.issuers.lock()[self.index].clone()
    }

    /// Whether keys are in force.
    pub fn is_loaded(&self) -> bool {
        self.board.issuers.lock()[self.index].loaded
    }

    fn update(&self, change: impl FnOnce(&mut JwksStatusSnapshot)) {
        let readiness_changes = {
            let mut issuers = self.board.issuers.lock();
            let status = &mut issuers[self.index];
            let was_loaded = status.loaded;
            change(status);
            // Once keys are in force, failures do not change readiness:
            // requests go on verifying with the last good keys.
            was_loaded != status.loaded || !status.loaded
        };
        if readiness_changes {
            self.board.publish();
        }
    }

    /// Keys from `source` are in force (or were confirmed) as of `at`.
    pub(super) fn succeeded(&self, source: JwksOrigin, at: u64) {
        self.update(|status| {
            status.loaded = true;
            status.source = Some(source);
            status.last_success = Some(at);
            status.consecutive_failures = 0;
            status.last_error = None;
        });
    }

    /// A fetch or read failed, or what it brought was refused.
    pub(super) fn failed(&self, error: String) {
        self.update(|status| {
            status.consecutive_failures = status.consecutive_failures.saturating_add(1);
            status.last_error = Some(error);
        });
    }
}

/// What became of one fetch (or file read): the `result` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FetchResult {
    /// New keys put in force.
    Changed,
    /// A document that holds the keys already in force.
    Unchanged,
    /// `304 Not Modified`: the keys in force are current.
    NotModified,
    /// No document: network, TLS, status, size, timeout, missing file.
    Error,
    /// A document that does not parse as a JWKS; the last good keys stay.
    Invalid,
}

impl FetchResult {
    const ALL: [FetchResult; 5] = [
        FetchResult::Changed,
        FetchResult::Unchanged,
        FetchResult::NotModified,
        FetchResult::Error,
        FetchResult::Invalid,
    ];

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            FetchResult::Changed => "changed",
            FetchResult::Unchanged => "unchanged",
            FetchResult::NotModified => "not_modified",
            FetchResult::Error => "error",
            FetchResult::Invalid => "invalid",
        }
    }
}

/// The JWKS families, registered once.
pub struct JwksMetrics {
    fetches: IntCounterVec,
    last_success: IntGaugeVec,
}

impl std::fmt::Debug for JwksMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksMetrics").finish_non_exhaustive()
    }
}

impl JwksMetrics {
    /// Register the families on `registry`.
    pub fn new(registry: &Registry) -> JwksMetrics {
        JwksMetrics {
            fetches: registry.counter_vec(
                "licensegate_user_jwks_fetches_total",
                "Fetches of an identity provider's JWKS (reads, for a JWKS file), by issuer and \
                 result: changed, unchanged, not_modified, error, invalid.",
                &["issuer", "result"],
            ),
            last_success: registry.gauge_vec(
                "licensegate_user_jwks_last_success_timestamp_seconds",
                "When the issuer's keys in force were last fetched, confirmed or read, unix \
                 seconds; 0 before any.",
                &["issuer"],
            ),
        }
    }

    /// The handles of one issuer, resolved once (the series exist, as
    /// zeros, from the start).
    pub fn issuer(&self, issuer: &str) -> IssuerJwksMetrics {
        let results: Vec<IntCounter> = FetchResult::ALL
            .iter()
            .map(|result| self.fetches.with_label_values(&[issuer, result.as_str()]))
            .collect();
        IssuerJwksMetrics {
            results,
            last_success: self.last_success.with_label_values(&[issuer]),
        }
    }
}

/// One issuer's JWKS metrics.
#[derive(Clone, Debug)]
pub struct IssuerJwksMetrics {
    /// Indexed like [`FetchResult::ALL`].
    results: Vec<IntCounter>,
    last_success: IntGauge,
}

impl IssuerJwksMetrics {
    /// Count one fetch.
    pub(super) fn count(&self, result: FetchResult) {
        let index = FetchResult::ALL
            .iter()
            .position(|r| *r == result)
            .expect("every result is listed");
        self.results[index].inc();
    }

    /// The keys in force date from `at` (unix seconds).
    pub(super) fn succeeded_at(&self, at: u64) {
        self.last_success.set(i64::try_from(at).unwrap_or(i64::MAX));
    }
}
