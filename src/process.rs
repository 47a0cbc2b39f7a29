//! The process around the servers: its Tokio runtime and the termination
//! signals. Shared by `run`, `demo`, `dev` and the injection webhook, so
//! they start and stop alike.

use std::sync::Arc;

use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::exit;
use crate::lifecycle::Lifecycle;

/// How long tasks still running after `block_on` returns (tunnels, pooled
/// upstream connections, admin connections) get before the runtime drops them.
pub const RUNTIME_GRACE: std::time::Duration = std::time::Duration::from_millis(100);

/// A runtime with `workers` threads.
pub fn build_runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    // One worker runs on a current-thread runtime: no work stealing, no
    // cross-thread wake-ups, the cheapest way to spend one core.
    if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
    }
}

/// SIGTERM and SIGINT, caught from the moment [`Signals::install`] returns:
/// install them before announcing the ports, so a signal sent as soon as
/// they are known is not lost (it would kill the process instead).
pub struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    /// Catch both signals; must run inside a Tokio runtime.
    pub fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves on the first signal. Later ones are caught and ignored once
    /// `self` is dropped.
    pub async fn first(mut self, doing: &str) {
        tokio::select! {
            _ = self.term.recv() => tracing::info!("SIGTERM received; {doing}"),
            _ = self.int.recv() => tracing::info!("SIGINT received; {doing}"),
        }
    }
}

/// The first signal starts draining; a second one exits at once with
/// [`exit::SECOND_SIGNAL`]. Runs until dropped. A free function, not a
/// method: clippy's `exit` lint looks at free functions only.
#[expect(
    clippy::exit,
    reason = "the one exit outside `main`: a second signal must not wait for the drain"
)]
pub async fn drain_on_signal(mut signals: Signals, lifecycle: Arc<Lifecycle>) {
    tokio::select! {
        _ = signals.term.recv() => tracing::info!("SIGTERM received; draining"),
        _ = signals.int.recv() => tracing::info!("SIGINT received; draining"),
    }
    lifecycle.drain();
    tokio::select! {
        _ = signals.term.recv() => {},
        _ = signals.int.recv() => {},
    }
    tracing::warn!("second signal received; exiting without waiting for the drain");
    std::process::exit(exit::SECOND_SIGNAL);
}
