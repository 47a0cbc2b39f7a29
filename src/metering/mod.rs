//! Live metering: usage served is summed in memory per (license, meter,
//! route, window), journalled to disk once per window, and exported to
//! billing systems (a CloudEvents collector such as OpenMeter, Stripe meter
//! events, JSON lines) exactly once from the collector's point of view.
//!
//! The guarantees, and where each comes from:
//! - **At least once**: a record leaves the journal's care only when a sink
//!   has acknowledged it (the sink's cursor is persisted after the
//!   acknowledgement, never before); a crash re-sends what was in flight.
//! - **Deduplicated**: every record's id is computed once, when it is
//!   journalled, from its source, key, window and sequence number, and
//!   stored in it; a re-sent record carries the same id and a collector
//!   deduplicating on (`source`, `id`) counts it once.
//! - **Bounded loss on a crash**: usage of the window still open in memory
//!   (at most [`MeteringSettings::window`]) is what a `kill -9` loses; a
//!   graceful stop journals it first. Disk writes follow the window, not the
//!   request rate.
//!
//! The request path calls [`Metering::record`] (a hash, a shared lock and an
//! atomic add once the aggregate exists) and, rarely, [`Metering::event`].
//! The composition root runs the [`MeteringTasks`].

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::metrics::Registry;

mod aggregate;
pub mod export;
pub mod journal;
pub mod metrics;
mod month;
pub mod record;
pub mod settings;
pub mod sink;

#[cfg(test)]
mod tests;

use aggregate::Aggregates;
use export::{Backoff, Exporter, ExporterParts};
use journal::{Journal, JournalError, Recovery};
use metrics::{DropReason, MeteringMetrics};
use month::MonthTotals;
use record::{Body, ThresholdBody};
pub use settings::{
    Fsync, HttpTarget, JournalSettings, JsonlTarget, MeteringFile, MeteringSettings,
    MeteringSettingsError, Overflow, SinkSettings, SinkTarget,
};
use sink::{Sink, SinkError};

/// Usage of one served response (or any unit a meter counts).
#[derive(Clone, Copy, Debug)]
pub struct Usage<'a> {
    pub license: &'a str,
    /// The license's customer, when it names one; events are about it.
    pub customer: Option<&'a str>,
    pub plan: &'a str,
    /// The policy route that served it.
    pub route: &'a str,
    /// The meter: the CloudEvents `type`, Stripe's `event_name`.
    pub meter: &'a str,
    pub value: u64,
}

/// Something other than usage worth telling the billing system at once.
#[derive(Clone, Copy, Debug)]
pub enum Event<'a> {
    /// CloudEvents type `licensegate.quota.threshold`.
    QuotaThreshold(QuotaThreshold<'a>),
}

/// A quota reached `threshold_percent` (say 80 or 100) of its limit.
#[derive(Clone, Copy, Debug)]
pub struct QuotaThreshold<'a> {
    pub license: &'a str,
    pub customer: Option<&'a str>,
    /// The limit's name in the policy.
    pub limit: &'a str,
    pub threshold_percent: u32,
    /// Start of the quota period, unix seconds.
    pub period_start: u64,
    pub used: u64,
    pub limit_amount: u64,
}

/// Metering could not start.
#[derive(Debug, thiserror::Error)]
pub enum MeteringError {
    #[error(transparent)]
    Settings(#[from] MeteringSettingsError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Sink(#[from] SinkError),
}

pub(crate) fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

struct Inner {
    aggregates: Aggregates,
    /// This replica's totals this UTC month, for `/usage`.
    month: MonthTotals,
    journal: Arc<Journal>,
    window_ms: u64,
    fsync: Fsync,
    metrics: metrics::JournalMetrics,
}

/// The handle the request path records through. Cheap to clone.
#[derive(Clone)]
pub struct Metering {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Metering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metering")
            .field("window_ms", &self.inner.window_ms)
            .field("journal", &self.inner.journal.dir())
            .finish_non_exhaustive()
    }
}

/// The background work of metering, for the composition root to spawn:
/// the flusher and one exporter per sink. Each takes the future that says
/// when to stop.
#[derive(Debug)]
pub struct MeteringTasks {
    /// Journals each closed window; on shutdown, the open one too. Spawn it
    /// so that it is awaited (not dropped) at shutdown, after the proxy has
    /// drained, e.g. `Task::upkeep("metering flush").awaited()` with
    /// `lifecycle.reached(Phase::Stopping)`.
    pub flusher: Flusher,
    /// One per sink, in the order of the settings.
    pub exporters: Vec<Exporter>,
    /// What recovery found in the journal.
    pub recovery: Recovery,
}

impl Metering {
    /// Open (and recover) the journal, set up the sinks and register the
    /// metrics on `registry` (once per registry).
    pub fn start(
        settings: MeteringSettings,
        registry: &Registry,
    ) -> Result<(Metering, MeteringTasks), MeteringError> {
        settings.validate()?;
        let metrics = MeteringMetrics::new(registry);
        let mut sinks = Vec::with_capacity(settings.sinks.len());
        for sink in &settings.sinks {
            sinks.push(Sink::new(sink, settings.journal.fsync)?);
        }
        let (journal, recovery) = Journal::open(
            &settings.journal,
            &settings.source,
            settings.sinks.len(),
            metrics.journal.clone(),
        )?;
        tracing::info!(
            dir = %settings.journal.dir.display(),
            segments = recovery.segments,
            next_seq = recovery.next_seq,
            truncated_bytes = recovery.truncated_bytes,
            sinks = settings.sinks.len(),
            "metering journal open"
        );
        let journal = Arc::new(journal);
        let exporters = settings
            .sinks
            .iter()
            .zip(sinks)
            .enumerate()
            .map(|(index, (config, sink))| {
                Exporter::new(ExporterParts {
                    name: config.name.clone(),
                    index,
                    sink,
                    journal: Arc::clone(&journal),
                    batch: config.batch,
                    backoff: Backoff::new(config.min_backoff, config.max_backoff),
                    metrics: metrics.sink(&config.name),
                })
            })
            .collect();
        let window_ms = u64::try_from(settings.window.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let inner = Arc::new(Inner {
            aggregates: Aggregates::default(),
            month: MonthTotals::new(unix_ms(SystemTime::now())),
            journal,
            window_ms,
            fsync: settings.journal.fsync,
            metrics: metrics.journal.clone(),
        });
        let flusher = Flusher {
            inner: Arc::clone(&inner),
            pending: Vec::new(),
        };
        Ok((
            Metering { inner },
            MeteringTasks {
                flusher,
                exporters,
                recovery,
            },
        ))
    }

    /// Count `usage`. Allocation-free once its aggregate exists in the
    /// current window.
    pub fn record(&self, usage: Usage<'_>) {
        if usage.value == 0 {
            return;
        }
        let now = unix_ms(SystemTime::now());
        let window_start = now - now % self.inner.window_ms;
        self.inner.aggregates.add(window_start, &usage);
        self.inner
            .month
            .add(now, usage.license, usage.meter, usage.value);
    }

    /// What this replica has recorded for `license` this UTC month, by
    /// meter, and since when (unix milliseconds: the month's start, or when
    /// metering started if later). A view for `/usage`, not persisted: what
    /// is billed is what the sinks received.
    pub fn month_to_date(&self, license: &str) -> (Vec<(String, u64)>, u64) {
        self.inner.month.of(unix_ms(SystemTime::now()), license)
    }

    /// Licenses this replica has recorded usage for this UTC month.
    pub fn month_to_date_licenses(&self) -> Vec<String> {
        self.inner.month.licenses(unix_ms(SystemTime::now()))
    }

    /// Journal `event` now (it is rare), synced when the policy is
    /// `always`. A journal that cannot be written is logged and counted.
    pub fn event(&self, event: Event<'_>) {
        let body = match event {
            Event::QuotaThreshold(threshold) => Body::QuotaThreshold(ThresholdBody {
                license: threshold.license.to_owned(),
                customer: threshold.customer.map(str::to_owned),
                limit: threshold.limit.to_owned(),
                threshold_percent: threshold.threshold_percent,
                period_start: threshold.period_start,
                used: threshold.used,
                limit_amount: threshold.limit_amount,
            }),
        };
        let sync = self.inner.fsync == Fsync::Always;
        if let Err((_, error)) = self.inner.journal.append(&[body], sync) {
            self.inner.metrics.dropped(DropReason::WriteError, 1);
            tracing::error!(%error, "metering: an event could not be journalled and is lost");
        }
    }

    /// A served response lacked its usage header (a `{header: NAME}`
    /// meter), or it was not a whole number: counted, and the meter took 0.
    pub fn bad_usage_header(&self) {
        self.inner.metrics.bad_usage_headers.inc();
    }

    /// Journal every open aggregate now, whatever its window. For tests
    /// and tools; the flusher does this on its own.
    pub async fn flush(&self) {
        let mut flusher = Flusher {
            inner: Arc::clone(&self.inner),
            pending: Vec::new(),
        };
        flusher.flush(None).await;
    }

    /// Aggregates held in memory.
    pub fn open_aggregates(&self) -> usize {
        self.inner.aggregates.len()
    }

    /// The journal's directory.
    pub fn journal_dir(&self) -> &std::path::Path {
        self.inner.journal.dir()
    }
}

/// Records the flusher keeps for the next window while the journal cannot
/// be written; beyond this the oldest are dropped and counted.
const MAX_PENDING: usize = 100_000;

/// Journals closed windows; see [`MeteringTasks::flusher`].
pub struct Flusher {
    inner: Arc<Inner>,
    /// Drained but not yet journalled (the journal failed).
    pending: Vec<Body>,
}

impl std::fmt::Debug for Flusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flusher")
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl Flusher {
    /// At each window boundary, journal the windows that closed; when
    /// `shutdown` resolves, journal the open one too and return.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let window = self.inner.window_ms;
        loop {
            let now = unix_ms(SystemTime::now());
            let next = (now / window + 1) * window;
            let sleep = tokio::time::sleep(Duration::from_millis(next - now));
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                () = sleep => {}
            }
            let now = unix_ms(SystemTime::now());
            self.flush(Some(now - now % window)).await;
        }
        self.flush(None).await;
        if !self.pending.is_empty() {
            self.inner
                .metrics
                .dropped(DropReason::WriteError, self.pending.len() as u64);
            tracing::error!(
                records = self.pending.len(),
                "metering: stopping with records the journal could not take; they are lost"
            );
        }
    }

    /// Journal the aggregates of windows before `before` (all, for `None`)
    /// with what is pending from earlier failures.
    async fn flush(&mut self, before: Option<u64>) {
        let inner = Arc::clone(&self.inner);
        let mut bodies = std::mem::take(&mut self.pending);
        // Off the runtime's threads: a write and an fsync.
        let result = tokio::task::spawn_blocking(move || {
            let now = unix_ms(SystemTime::now());
            bodies.extend(
                inner
                    .aggregates
                    .drain(before, inner.window_ms, now)
                    .into_iter()
                    .map(Body::Usage),
            );
            let sync = inner.fsync != Fsync::Never;
            let outcome = inner.journal.append(&bodies, sync);
            (bodies, outcome)
        })
        .await;
        let (mut bodies, outcome) = match result {
            Ok(result) => result,
            Err(error) => {
                tracing::error!(%error, "metering: the flush task failed");
                return;
            }
        };
        if let Err((written, error)) = outcome {
            bodies.drain(..written);
            tracing::error!(
                %error,
                waiting = bodies.len(),
                "metering: cannot write the journal; the records wait for the next window"
            );
            if bodies.len() > MAX_PENDING {
                let excess = bodies.len() - MAX_PENDING;
                bodies.drain(..excess);
                self.inner
                    .metrics
                    .dropped(DropReason::WriteError, excess as u64);
            }
            self.pending = bodies;
        }
    }
}
