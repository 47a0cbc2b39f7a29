//! Process lifecycle: readiness conditions, and the one shutdown signal: the
//! phase the process is in. Signals, `POST /shutdown` and a failed essential
//! task start the drain; the composition root moves the phase on from there,
//! and every task stops when the phase reaches its own.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use tokio::sync::{watch, Notify};

/// Readiness is the conjunction of named conditions (listener bound,
/// license loaded, policy loaded …) and "not draining".
#[derive(Debug)]
pub struct Lifecycle {
    conditions: Mutex<BTreeMap<&'static str, Result<(), String>>>,
    /// Facts shown with readiness that do not gate it.
    notes: Mutex<BTreeMap<&'static str, String>>,
    /// `phase >= Draining`, read on the request path without the channel's lock.
    draining: AtomicBool,
    phase: watch::Sender<Phase>,
    /// Wakes the waiters of [`Lifecycle::drain_signal`] when draining begins.
    drain_signal: Notify,
}

/// Where the process is on its way out; it only moves forward. One watch
/// channel carries it, so a task cannot be told to stop out of order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Serving traffic.
    Serving,
    /// Readiness is false; the proxy stops accepting and finishes open
    /// connections. Everything else still runs.
    Draining,
    /// The proxy has drained: background upkeep stops, then the last writes
    /// happen (counters file, leases returned to the shared store).
    Stopping,
    /// The admin port, kept up so probes could watch, closes last.
    Closing,
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
            phase: watch::Sender::new(Phase::Serving),
            drain_signal: Notify::new(),
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

    /// Remove the note `name`, if shown.
    pub fn forget_note(&self, name: &'static str) {
        self.notes.lock().remove(name);
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

    /// Start draining: readiness turns false and the proxy stops accepting.
    /// Idempotent; the way to ask the process to stop.
    pub fn drain(&self) {
        self.advance(Phase::Draining);
    }

    /// Move on to `phase` if the process is not there yet; never back.
    pub fn advance(&self, phase: Phase) {
        if phase >= Phase::Draining && !self.draining.swap(true, Ordering::SeqCst) {
            self.drain_signal.notify_waiters();
        }
        self.phase.send_if_modified(|current| {
            let forward = phase > *current;
            if forward {
                *current = phase;
            }
            forward
        });
    }

    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Woken when draining begins: a waiter a fraction of the size of
    /// [`Lifecycle::drained`]'s, for what every idle connection holds.
    /// Pin it, call `enable`, then check [`Lifecycle::is_draining`]: a
    /// drain that began before `enable` does not wake it.
    pub fn drain_signal(&self) -> tokio::sync::futures::Notified<'_> {
        self.drain_signal.notified()
    }

    /// Resolves once draining has begun.
    pub async fn drained(&self) {
        self.reached(Phase::Draining).await;
    }

    /// Resolves once the process is at `phase` or past it.
    pub async fn reached(&self, phase: Phase) {
        let mut rx = self.phase.subscribe();
        // The sender lives in `self`, so `wait_for` cannot fail while we borrow it.
        let _ = rx.wait_for(|current| *current >= phase).await;
    }
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new()
    }
}
