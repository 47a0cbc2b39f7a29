//! Every background task of the gateway in one place: a `JoinSet` of named
//! tasks, each told to stop by the lifecycle's [`Phase`], stopped phase by
//! phase within a bound, and reported by name when one ends before its time.
//!
//! What an early end (or any panic) means depends on the kind of task:
//! - essential (the proxy, the admin server, the signal handler): without it
//!   the process is half-alive (serving with no probes, metrics or
//!   `/shutdown`, or probed while nothing serves), so it drains instead and
//!   exits with [`exit::SOFTWARE`](crate::exit::SOFTWARE), for the
//!   orchestrator to start a whole one;
//! - upkeep (reloads, sweeps, refresh): requests go on being decided with
//!   what is in force (the policy and license last loaded, counters in
//!   memory), so the failure is logged and shown in the `/readyz` notes,
//!   and the process serves on.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::{Id, JoinError, JoinSet};

use crate::lifecycle::{Lifecycle, Phase};

#[cfg(test)]
mod tests;

/// The `/readyz` note that names the upkeep tasks that stopped early.
pub const TASKS_NOTE: &str = "tasks";

/// A task's name, its kind and how it stops.
#[derive(Clone, Copy, Debug)]
pub struct Task {
    name: &'static str,
    essential: bool,
    stops_at: Phase,
    /// Watches the lifecycle itself and is awaited to finish its work, rather
    /// than dropped at its next `.await` once `stops_at` is reached.
    awaited: bool,
}

impl Task {
    /// A task the process must not run without; dropped once the process
    /// reaches `stops_at`.
    pub const fn essential(name: &'static str, stops_at: Phase) -> Task {
        Task {
            name,
            essential: true,
            stops_at,
            awaited: false,
        }
    }

    /// Upkeep: dropped at [`Phase::Stopping`], once the proxy has drained.
    pub const fn upkeep(name: &'static str) -> Task {
        Task {
            name,
            essential: false,
            stops_at: Phase::Stopping,
            awaited: false,
        }
    }

    /// Upkeep that runs on until `stops_at`, past [`Phase::Stopping`]:
    /// metering's exporters, which send what the last flush journalled
    /// while the last writes happen.
    pub const fn upkeep_until(name: &'static str, stops_at: Phase) -> Task {
        Task {
            name,
            essential: false,
            stops_at,
            awaited: false,
        }
    }

    /// The task watches the lifecycle itself and, once its phase comes, is
    /// awaited (up to that phase's bound) while it finishes: the proxy
    /// letting open connections end.
    pub const fn awaited(mut self) -> Task {
        self.awaited = true;
        self
    }
}

/// The tasks of one gateway; see the module comment.
pub struct Tasks {
    set: JoinSet<()>,
    running: HashMap<Id, Running>,
    lifecycle: Arc<Lifecycle>,
    /// Essential tasks that failed.
    failed: Vec<&'static str>,
    /// Upkeep that stopped early, as `/readyz` shows it.
    stopped_early: Vec<String>,
}

struct Running {
    task: Task,
    /// Outlived the bound of its phase; no longer waited for.
    overdue: bool,
}

impl Tasks {
    pub fn new(lifecycle: Arc<Lifecycle>) -> Tasks {
        Tasks {
            set: JoinSet::new(),
            running: HashMap::new(),
            lifecycle,
            failed: Vec::new(),
            stopped_early: Vec::new(),
        }
    }

    /// Start `future` as `task`.
    pub fn spawn(&mut self, task: Task, future: impl Future<Output = ()> + Send + 'static) {
        let handle = if task.awaited {
            self.set.spawn(future)
        } else {
            let lifecycle = Arc::clone(&self.lifecycle);
            self.set.spawn(async move {
                tokio::select! {
                    biased;
                    () = lifecycle.reached(task.stops_at) => {}
                    () = future => {}
                }
            })
        };
        self.running.insert(
            handle.id(),
            Running {
                task,
                overdue: false,
            },
        );
    }

    /// Wait for the drain to begin, reporting any task that ends before.
    pub async fn until_drained(&mut self) {
        let lifecycle = Arc::clone(&self.lifecycle);
        let drained = lifecycle.drained();
        tokio::pin!(drained);
        loop {
            tokio::select! {
                biased;
                () = &mut drained => return,
                Some(joined) = self.set.join_next_with_id() => self.ended(joined),
            }
        }
    }

    /// Move the process on to `phase` and wait, for at most `bound`, until
    /// every task that stops at it (or earlier) has ended. Those still
    /// running then are logged by name and left to end with the runtime.
    pub async fn stop(&mut self, phase: Phase, bound: Duration) {
        self.lifecycle.advance(phase);
        let deadline = tokio::time::sleep(bound);
        tokio::pin!(deadline);
        while self.waiting_for(phase) {
            tokio::select! {
                biased;
                Some(joined) = self.set.join_next_with_id() => self.ended(joined),
                () = &mut deadline => {
                    for running in self.running.values_mut() {
                        if running.task.stops_at <= phase && !running.overdue {
                            running.overdue = true;
                            tracing::error!(
                                task = running.task.name,
                                "`{}` did not stop within {bound:?}; left to end with the runtime",
                                running.task.name
                            );
                        }
                    }
                }
            }
        }
    }

    /// The essential tasks that failed, in the order they did; tasks still
    /// running (overdue, or stopping at a later phase) are left to the
    /// runtime.
    pub fn finish(mut self) -> Vec<&'static str> {
        self.set.detach_all();
        self.failed
    }

    fn waiting_for(&self, phase: Phase) -> bool {
        self.running
            .values()
            .any(|running| running.task.stops_at <= phase && !running.overdue)
    }

    /// Account for a task that ended: as told, late, early, or in a panic.
    fn ended(&mut self, joined: Result<(Id, ()), JoinError>) {
        let (id, panic) = match joined {
            Ok((id, ())) => (id, None),
            Err(error) => (error.id(), Some(describe(error))),
        };
        let Some(Running { task, overdue }) = self.running.remove(&id) else {
            return;
        };
        let name = task.name;
        let told = self.lifecycle.phase() >= task.stops_at;
        let what = match (panic, told) {
            (Some(panic), _) => panic,
            (None, false) => "ended before it was told to stop".to_owned(),
            (None, true) => {
                if overdue {
                    tracing::info!(task = name, "`{name}` stopped late");
                } else {
                    tracing::debug!(task = name, "`{name}` stopped");
                }
                return;
            }
        };
        if task.essential {
            tracing::error!(
                task = name,
                "`{name}` {what}; the process must not run without it: draining"
            );
            self.failed.push(name);
            self.lifecycle.drain();
        } else {
            tracing::error!(
                task = name,
                "background task `{name}` {what}; requests are still decided with what is in force"
            );
            self.stopped_early.push(format!("{name} {what}"));
            self.lifecycle
                .note(TASKS_NOTE, self.stopped_early.join("; "));
        }
    }
}

/// `panicked: <message>` for a task that panicked.
fn describe(error: JoinError) -> String {
    if !error.is_panic() {
        // Only the runtime cancels these tasks, and then no one is joining.
        return "was cancelled".to_owned();
    }
    let payload = error.into_panic();
    let message = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    format!("panicked: {message}")
}
