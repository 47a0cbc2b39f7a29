//! Background upkeep of the policy in force: hot reload on file change or
//! SIGHUP, counter sweeps and usage gauges, and the counters file.
//!
//! A reload reads and compiles on a blocking thread, off the runtime that
//! serves requests, and swaps the new policy in atomically; requests in flight finish under the policy they started
//! with. A policy that fails to compile changes nothing: the last good one
//! keeps serving, the error is logged with file:line:column, counted, and
//! shown in `/readyz` notes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::lifecycle::Lifecycle;
use crate::limits::persist::CounterFile;
use crate::policy::Policy;
use crate::proxy::Shared;
use crate::watch::{dir_of, settle, spawn_sighup, watch_dirs, Trigger};

/// The `/readyz` note about the policy.
pub const POLICY_NOTE: &str = "policy";

/// How often counters are swept and usage gauges refreshed.
const MAINTAIN_INTERVAL: Duration = Duration::from_secs(5);

/// Watches on the policy paths plus SIGHUP, created before the proxy
/// announces itself so no change made after start is missed.
pub struct PolicyWatch {
    reloader: Reloader,
    events: mpsc::UnboundedReceiver<Trigger>,
    _watcher: Option<notify::RecommendedWatcher>,
}

/// What a reload needs, moved to a blocking thread and back for each one:
/// reading, parsing and compiling cost time in proportion to the files (a
/// deeply nested 120 KB document took seconds), and on the proxy runtime
/// that time is taken from requests (all of them, with `workers: 1`).
struct Reloader {
    shared: Arc<Shared>,
    paths: Arc<[PathBuf]>,
    /// The texts the policy in force was compiled from.
    current: Vec<(PathBuf, String)>,
    /// What the last pass read (or why it could not): a pass that reads the
    /// same again does nothing, so files that stay broken are reported once,
    /// not on every event in their directories.
    last_read: Option<Result<Vec<(PathBuf, String)>, String>>,
    /// Whether the last reload failed (and `/readyz` says so).
    failed: bool,
}

impl PolicyWatch {
    pub fn start(shared: Arc<Shared>, paths: Vec<PathBuf>) -> PolicyWatch {
        let (tx, events) = mpsc::unbounded_channel();
        let mut dirs: Vec<PathBuf> = paths.iter().map(|p| dir_of(p)).collect();
        dirs.sort();
        dirs.dedup();
        let watcher = watch_dirs(&dirs, tx.clone());
        spawn_sighup(tx.clone(), "policy");
        // Compare against what is in force, so a reload of unchanged files
        // (a neighbour in the directory changed) is a no-op.
        let read = Policy::read(&paths).map_err(|e| e.to_string());
        let current = read.clone().unwrap_or_default();
        // Anything that changed between the first load and the watch.
        let _ = tx.send(Trigger::Files);
        PolicyWatch {
            reloader: Reloader {
                shared,
                paths: paths.into(),
                current,
                last_read: Some(read),
                failed: false,
            },
            events,
            _watcher: watcher,
        }
    }

    /// Reload on change (file events and SIGHUP alike) until the task is
    /// dropped; one reload at a time, each on a blocking thread.
    pub async fn run(self, lifecycle: Arc<Lifecycle>) {
        let PolicyWatch {
            mut reloader,
            mut events,
            _watcher,
        } = self;
        while let Some(first) = events.recv().await {
            let trigger = settle(&mut events, first).await;
            let shared = Arc::clone(&reloader.shared);
            let paths = Arc::clone(&reloader.paths);
            let on_thread = Arc::clone(&lifecycle);
            reloader = match tokio::task::spawn_blocking(move || {
                reloader.reload(&on_thread, trigger);
                reloader
            })
            .await
            {
                Ok(reloader) => reloader,
                Err(error) => {
                    // A bug, not a bad file; the policy in force stays, and
                    // the next change is compiled from scratch.
                    let mut fresh = Reloader {
                        shared,
                        paths,
                        current: Vec::new(),
                        last_read: None,
                        failed: false,
                    };
                    fresh.failed(&lifecycle, &format!("the reload stopped: {error}"));
                    fresh
                }
            };
        }
    }
}

impl Reloader {
    /// Read, compare, compile and install; blocking. For
    /// [`Trigger::Files`], files that read as at the last pass are skipped;
    /// SIGHUP reads and checks them again.
    fn reload(&mut self, lifecycle: &Lifecycle, trigger: Trigger) {
        let metrics = &self.shared.engine.metrics().policy;
        let read = Policy::read(&self.paths).map_err(|e| e.to_string());
        if trigger == Trigger::Files && self.last_read.as_ref() == Some(&read) {
            tracing::debug!("policy files unchanged since the last reload pass");
            return;
        }
        self.last_read = Some(read.clone());
        let files = match read {
            Ok(files) => files,
            Err(error) => return self.failed(lifecycle, &error),
        };
        if files == self.current {
            let summary = self.shared.engine.with_current_policy(summary);
            if self.failed {
                // The broken edit was undone: what is in force is on disk
                // again, a successful reload without a compile.
                self.failed = false;
                metrics.reloads_ok.inc();
                if let Some(summary) = summary {
                    tracing::info!("policy files match the policy in force again: {summary}");
                    lifecycle.note(POLICY_NOTE, summary);
                }
            } else if let Some(summary) = summary {
                tracing::info!("policy files unchanged; in force: {summary}");
            }
            return;
        }
        tracing::info!("policy files changed; compiling off the proxy threads");
        let result = Policy::compile(files.clone()).and_then(|policy| {
            for warning in &policy.warnings {
                tracing::warn!("policy: {warning}");
            }
            let summary = summary(&policy);
            self.shared.engine.install(policy).map(|()| summary)
        });
        match result {
            Ok(summary) => {
                self.current = files;
                self.failed = false;
                metrics.reloads_ok.inc();
                tracing::info!("policy reloaded: {summary}");
                lifecycle.note(POLICY_NOTE, summary);
            }
            Err(error) => self.failed(lifecycle, &error.to_string()),
        }
    }

    fn failed(&mut self, lifecycle: &Lifecycle, error: &str) {
        self.failed = true;
        self.shared.engine.metrics().policy.reloads_failed.inc();
        for line in error.lines() {
            tracing::error!("policy reload failed, keeping the policy in force: {line}");
        }
        let current = self
            .shared
            .engine
            .with_current_policy(summary)
            .unwrap_or_default();
        lifecycle.note(
            POLICY_NOTE,
            format!(
                "{current}; last reload failed: {}",
                error.lines().next().unwrap_or("")
            ),
        );
    }
}

/// One line about a policy for logs and `/readyz`.
pub fn summary(policy: &Policy) -> String {
    let files: Vec<String> = policy
        .sources
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    format!(
        "generation {}: {} routes, {} limits, {} plans from {}",
        policy.generation,
        policy.routes.len(),
        policy.limits.len(),
        policy.plans.len(),
        files.join(", ")
    )
}

/// Sweep counters, refresh gauges and write the counters file on schedule.
pub async fn maintain(
    shared: Arc<Shared>,
    counters_file: Option<CounterFile>,
    persist_interval: Duration,
) {
    let mut sweep = tokio::time::interval(MAINTAIN_INTERVAL);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut persist = tokio::time::interval(persist_interval);
    persist.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    persist.tick().await;
    loop {
        tokio::select! {
            _ = sweep.tick() => shared.engine.maintain(),
            _ = persist.tick() => {
                if let Some(file) = &counters_file {
                    save_counters(&shared, file);
                }
            }
        }
    }
}

/// Write the counters file now (also after draining on shutdown).
pub fn save_counters(shared: &Shared, file: &CounterFile) {
    if let Err(error) = file.save(shared.engine.store()) {
        tracing::error!(path = %file.path().display(), %error, "cannot write the counters file");
    }
}
