//! Metrics of metering: the journal (bytes, writes, drops) and each sink's
//! export (backlog, age of the oldest unexported record, errors).

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec};

use crate::metrics::Registry;

/// Why records were lost before any sink could have them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The journal was at `max_bytes` (overflow `drop_newest`), or its
    /// oldest unexported segment was evicted (`drop_oldest`).
    JournalFull,
    /// The journal could not be written (disk full, I/O error) for longer
    /// than the flusher keeps records waiting.
    WriteError,
    /// A record cut short by a crash mid-write, removed at recovery.
    Torn,
    /// A record whose checksum does not match, skipped.
    Corrupt,
}

impl DropReason {
    pub const ALL: [DropReason; 4] = [
        DropReason::JournalFull,
        DropReason::WriteError,
        DropReason::Torn,
        DropReason::Corrupt,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::JournalFull => "journal_full",
            DropReason::WriteError => "write_error",
            DropReason::Torn => "torn",
            DropReason::Corrupt => "corrupt",
        }
    }
}

/// What went wrong in one export attempt, as `sink_errors_total{kind}` counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// No response: connect, TLS or protocol failure.
    Network,
    /// No response within the sink's timeout, or a 408.
    Timeout,
    /// 429: the sink asks to slow down.
    Throttled,
    /// 5xx.
    Server,
    /// Any other status: the batch went to the dead-letter file.
    Rejected,
    /// Writing a file (the jsonl sink, a cursor, the dead-letter file).
    Io,
    /// Reading the journal.
    Journal,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 7] = [
        ErrorKind::Network,
        ErrorKind::Timeout,
        ErrorKind::Throttled,
        ErrorKind::Server,
        ErrorKind::Rejected,
        ErrorKind::Io,
        ErrorKind::Journal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Network => "network",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Throttled => "throttled",
            ErrorKind::Server => "server",
            ErrorKind::Rejected => "rejected",
            ErrorKind::Io => "io",
            ErrorKind::Journal => "journal",
        }
    }
}

/// The journal's metrics, shared by the flusher and the exporters.
#[derive(Clone)]
pub struct JournalMetrics {
    dropped: Vec<IntCounter>,
    /// Bytes of segment files on disk.
    pub bytes: IntGauge,
    /// Appends to the journal (one per flushed window, one per event):
    /// disk writes follow the window, not the request rate.
    pub writes: IntCounter,
    /// Served responses whose usage header (a `{header: NAME}` meter) was
    /// absent or not a whole number: counted as 0.
    pub bad_usage_headers: IntCounter,
}

impl std::fmt::Debug for JournalMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournalMetrics").finish_non_exhaustive()
    }
}

impl JournalMetrics {
    pub fn dropped(&self, reason: DropReason, records: u64) {
        let index = DropReason::ALL
            .iter()
            .position(|r| *r == reason)
            .expect("every reason is in ALL");
        self.dropped[index].inc_by(records);
    }
}

/// One sink's export metrics, resolved once.
#[derive(Clone)]
pub struct SinkMetrics {
    pub backlog: IntGauge,
    pub oldest_unexported: IntGauge,
    pub exported: IntCounter,
    pub dead_letters: IntCounter,
    errors: Vec<IntCounter>,
}

impl std::fmt::Debug for SinkMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkMetrics").finish_non_exhaustive()
    }
}

impl SinkMetrics {
    pub fn error(&self, kind: ErrorKind) {
        let index = ErrorKind::ALL
            .iter()
            .position(|k| *k == kind)
            .expect("every kind is in ALL");
        self.errors[index].inc();
    }
}

/// Every metering family, registered once per registry.
pub struct MeteringMetrics {
    pub journal: JournalMetrics,
    backlog: IntGaugeVec,
    oldest_unexported: IntGaugeVec,
    exported: IntCounterVec,
    dead_letters: IntCounterVec,
    errors: IntCounterVec,
}

impl std::fmt::Debug for MeteringMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeteringMetrics").finish_non_exhaustive()
    }
}

impl MeteringMetrics {
    pub fn new(registry: &Registry) -> MeteringMetrics {
        let dropped = registry.counter_vec(
            "licensegate_metering_dropped_total",
            "Usage records lost before export, by reason (journal_full, write_error, torn, corrupt).",
            &["reason"],
        );
        MeteringMetrics {
            journal: JournalMetrics {
                dropped: crate::metrics::resolve_counters(
                    &dropped,
                    DropReason::ALL.iter().map(|r| r.as_str()),
                ),
                bytes: registry.gauge(
                    "licensegate_metering_journal_bytes",
                    "Bytes of metering journal segments on disk.",
                ),
                writes: registry.counter(
                    "licensegate_metering_journal_writes_total",
                    "Appends to the metering journal: one per flushed window and one per event, \
                     whatever the request rate.",
                ),
                bad_usage_headers: registry.counter(
                    "licensegate_metering_bad_usage_headers_total",
                    "Served responses whose usage header (a `{header: NAME}` meter) was absent or \
                     not a whole number; the meter counted 0 for them.",
                ),
            },
            backlog: registry.gauge_vec(
                "licensegate_metering_backlog_records",
                "Journalled records a sink has not acknowledged yet.",
                &["sink"],
            ),
            oldest_unexported: registry.gauge_vec(
                "licensegate_metering_oldest_unexported_seconds",
                "Age of the oldest record a sink has not acknowledged (0 when caught up).",
                &["sink"],
            ),
            exported: registry.counter_vec(
                "licensegate_metering_exported_total",
                "Records a sink acknowledged.",
                &["sink"],
            ),
            dead_letters: registry.counter_vec(
                "licensegate_metering_dead_letters_total",
                "Records a sink rejected, written to the dead-letter file instead.",
                &["sink"],
            ),
            errors: registry.counter_vec(
                "licensegate_metering_sink_errors_total",
                "Failed export attempts, by sink and kind (network, timeout, throttled, server, \
                 rejected, io, journal).",
                &["sink", "kind"],
            ),
        }
    }

    /// The handles of sink `name`; its series exist (as zeros) from now on.
    pub fn sink(&self, name: &str) -> SinkMetrics {
        SinkMetrics {
            backlog: self.backlog.with_label_values(&[name]),
            oldest_unexported: self.oldest_unexported.with_label_values(&[name]),
            exported: self.exported.with_label_values(&[name]),
            dead_letters: self.dead_letters.with_label_values(&[name]),
            errors: ErrorKind::ALL
                .iter()
                .map(|kind| self.errors.with_label_values(&[name, kind.as_str()]))
                .collect(),
        }
    }
}
