//! Process lifecycle: readiness conditions and the drain signal shared by the
//! proxy listener, the admin port and signal handlers.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use tokio::sync::watch;

/// Readiness is the conjunction of named conditions (listener bound,
/// license loaded, policy loaded …) and "not draining".
#[derive(Debug)]
pub struct Lifecycle {
    conditions: Mutex<BTreeMap<&'static str, Result<(), String>>>,
    /// Facts shown with readiness that do not gate it.
    notes: Mutex<BTreeMap<&'static str, String>>,
    draining: AtomicBool,
    drain_tx: watch::Sender<bool>,
}

/// What `/readyz` reports.
#[derive(Debug, serde::Serialize)]
pub struct ReadinessReport {
    pub ready: bool,
    pub draining: bool,
    /// Condition name → `"ok"` or why it does not hold.
    pub checks: BTreeMap<&'static str, String>,
    /// Facts worth knowing that do not gate readiness (e.g. no policy).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub notes: BTreeMap<&'static str, String>,
}

impl Lifecycle {
    pub fn new() -> Self {
        Lifecycle {
            conditions: Mutex::new(BTreeMap::new()),
            notes: Mutex::new(BTreeMap::new()),
            draining: AtomicBool::new(false),
            drain_tx: watch::Sender::new(false),
        }
    }

    /// Declare a condition that must hold before the process is ready.
    pub fn require(&self, name: &'static str, why_not: impl Into<String>) {
        self.conditions.lock().insert(name, Err(why_not.into()));
    }

    /// Record that a condition holds, or why it stopped holding.
    pub fn set(&self, name: &'static str, state: Result<(), String>) {
        self.conditions.lock().insert(name, state);
    }

    /// Show `text` under `notes` in the readiness report.
    pub fn note(&self, name: &'static str, text: impl Into<String>) {
        self.notes.lock().insert(name, text.into());
    }

    pub fn is_ready(&self) -> bool {
        !self.is_draining() && self.conditions.lock().values().all(Result::is_ok)
    }

    pub fn report(&self) -> ReadinessReport {
        let conditions = self.conditions.lock();
        let draining = self.is_draining();
        ReadinessReport {
            ready: !draining && conditions.values().all(Result::is_ok),
            draining,
            checks: conditions
                .iter()
                .map(|(name, state)| {
                    let text = match state {
                        Ok(()) => "ok".to_owned(),
                        Err(why) => why.clone(),
                    };
                    (*name, text)
                })
                .collect(),
            notes: self.notes.lock().clone(),
        }
    }

    /// Start draining: readiness turns false and every listener stops
    /// accepting. Idempotent.
    pub fn drain(&self) {
        if !self.draining.swap(true, Ordering::SeqCst) {
            self.drain_tx.send_replace(true);
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Resolves once draining has begun.
    pub async fn drained(&self) {
        let mut rx = self.drain_tx.subscribe();
        // The sender lives in `self`, so `wait_for` cannot fail while we borrow it.
        let _ = rx.wait_for(|draining| *draining).await;
    }
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new()
    }
}
