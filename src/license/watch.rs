//! Keeping the license and keyring current: directory watches (so Kubernetes
//! Secret and ConfigMap symlink swaps are seen), SIGHUP, and a periodic
//! state refresh so expiry and grace show up in metrics and readiness
//! without any reload.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::LicenseGate;
use crate::license::LicenseState;
use crate::lifecycle::Lifecycle;
use crate::watch::{dir_of, settle, spawn_sighup, watch_dirs, Trigger};

/// Readiness condition name for the deployment license.
pub const LICENSE_READY: &str = "license";

/// How often state gauges and readiness are recomputed from the clock.
const STATE_INTERVAL: Duration = Duration::from_secs(5);

/// Watches on the license file's and the keyring's directories, plus SIGHUP.
/// Created before the proxy announces itself, so no change made after start
/// can be missed.
pub struct LicenseWatch {
    gate: Arc<LicenseGate>,
    events: mpsc::UnboundedReceiver<Trigger>,
    _watcher: Option<notify::RecommendedWatcher>,
}

impl LicenseWatch {
    /// Start watching (inside a Tokio runtime, for the signal handler).
    pub fn start(gate: Arc<LicenseGate>) -> LicenseWatch {
        let (tx, events) = mpsc::unbounded_channel();
        let watcher = watch_dirs(&watched_dirs(&gate), tx.clone());
        spawn_sighup(tx, "license and keys");
        // Anything that changed between the first load and the watch.
        gate.reload_files(Trigger::Files);
        LicenseWatch {
            gate,
            events,
            _watcher: watcher,
        }
    }

    /// Reload on change or SIGHUP and keep readiness in step with the
    /// license state. Runs until the task is dropped.
    pub async fn run(mut self, lifecycle: Arc<Lifecycle>) {
        let gate = self.gate;
        update_readiness(&gate, &lifecycle, gate.refresh_state());
        let mut state_tick = tokio::time::interval(STATE_INTERVAL);
        state_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = self.events.recv() => {
                    let Some(first) = event else {
                        return;
                    };
                    let trigger = settle(&mut self.events, first).await;
                    gate.reload_files(trigger);
                    update_readiness(&gate, &lifecycle, gate.refresh_state());
                }
                _ = state_tick.tick() => {
                    update_readiness(&gate, &lifecycle, gate.refresh_state());
                    gate.persist_if_due();
                }
            }
        }
    }
}

/// Readiness follows the deployment license: ready while valid or in grace.
pub fn update_readiness(gate: &LicenseGate, lifecycle: &Lifecycle, state: LicenseState) {
    if gate.is_per_request() {
        return;
    }
    let condition = match state {
        LicenseState::Valid | LicenseState::Grace => Ok(()),
        other => Err(format!("license {}", other.as_str())),
    };
    lifecycle.set(LICENSE_READY, condition);
}

fn watched_dirs(gate: &LicenseGate) -> Vec<PathBuf> {
    let mut dirs = vec![dir_of(gate.keys_path())];
    for file in [gate.file_path(), gate.revocation_file()]
        .into_iter()
        .flatten()
    {
        dirs.push(dir_of(file));
    }
    dirs.sort();
    dirs.dedup();
    dirs
}
