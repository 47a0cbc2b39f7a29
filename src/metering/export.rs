//! One exporter per sink: read the journal from the sink's cursor, deliver
//! a batch, and only once the sink has acknowledged it move the cursor on
//! and persist it (write a temporary file, sync, rename, sync the
//! directory). A crash at any point therefore re-sends what was not
//! acknowledged, with the same ids, and never skips what was not.
//!
//! Failures the sink may recover from (no connection, timeouts, 408, 429,
//! 5xx) are retried after a jittered, growing delay, or what `Retry-After`
//! asks. A refusal (any other status) is final: those records go to the
//! dead-letter file (`dead-letter/<sink>.jsonl`, one line per refusal, with
//! the status and the sink's answer), and the cursor moves on, so one bad
//! batch never stalls the rest.

use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

#[cfg(test)]
use crate::backoff::backoff_delay;
pub use crate::backoff::Backoff;
use serde::Serialize;

use super::journal::{Cursor, Journal};
use super::metrics::{ErrorKind, SinkMetrics};
use super::record::Record;
use super::sink::{cloudevents, Rejection, Retry, Sink};

#[cfg(test)]
mod tests;

/// Where an exporter keeps its cursor: `<dir>/cursors/<sink>.json`.
pub fn cursor_path(dir: &Path, sink: &str) -> PathBuf {
    dir.join("cursors").join(format!("{sink}.json"))
}

/// Where refused records go: `<dir>/dead-letter/<sink>.jsonl`.
pub fn dead_letter_path(dir: &Path, sink: &str) -> PathBuf {
    dir.join("dead-letter").join(format!("{sink}.jsonl"))
}

/// The persisted cursor, or `None` when there is none (a new sink) or it
/// cannot be read (then everything held is sent again: collectors dedupe,
/// and re-sending is safe where skipping is not).
pub fn load_cursor(path: &Path) -> Option<Cursor> {
    let text = match fs::read(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return None,
        Err(error) => {
            tracing::warn!(%error, cursor = %path.display(), "metering: cannot read the export cursor; exporting everything the journal holds");
            return None;
        }
    };
    match serde_json::from_slice(&text) {
        Ok(cursor) => Some(cursor),
        Err(error) => {
            tracing::warn!(%error, cursor = %path.display(), "metering: the export cursor is not valid; exporting everything the journal holds");
            None
        }
    }
}

/// Persist `cursor` atomically: a reader (or a crash) sees the old cursor
/// or the new one, never a mix.
pub fn store_cursor(path: &Path, cursor: &Cursor) -> std::io::Result<()> {
    let dir = path.parent().expect("a cursor path has a directory");
    let tmp = path.with_extension("json.tmp");
    let mut file = File::create(&tmp)?;
    file.write_all(&serde_json::to_vec(cursor).expect("a cursor serializes"))?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

/// One dead-letter line.
#[derive(Serialize)]
struct DeadLetter<'a> {
    time: String,
    sink: &'a str,
    status: u16,
    answer: &'a str,
    events: Vec<cloudevents::CloudEvent<'a>>,
}

fn append_dead_letter(
    path: &Path,
    sink: &str,
    rejection: &Rejection,
    batch: &[Record],
) -> std::io::Result<()> {
    let line = DeadLetter {
        time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        sink,
        status: rejection.status,
        answer: &rejection.answer,
        events: rejection
            .records
            .iter()
            .filter_map(|&i| batch.get(i))
            .map(cloudevents::event)
            .collect(),
    };
    let mut bytes = serde_json::to_vec(&line).expect("a dead letter serializes");
    bytes.push(b'\n');
    fs::create_dir_all(path.parent().expect("a dead-letter path has a directory"))?;
    let mut file = OpenOptions::new().create(true).append(true).open(path)?;
    file.write_all(&bytes)?;
    file.sync_data()
}

/// Sleep `delay`; `true` when told to stop first.
async fn pause<S: Future<Output = ()>>(
    delay: Duration,
    shutdown: &mut std::pin::Pin<&mut S>,
) -> bool {
    tokio::select! {
        biased;
        () = shutdown.as_mut() => true,
        () = tokio::time::sleep(delay) => false,
    }
}

/// Exports the journal to one sink until told to stop.
pub struct Exporter {
    name: String,
    index: usize,
    sink: Sink,
    journal: Arc<Journal>,
    cursor: Cursor,
    cursor_path: PathBuf,
    dead_letter_path: PathBuf,
    batch: usize,
    backoff: Backoff,
    metrics: SinkMetrics,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter")
            .field("sink", &self.name)
            .field("cursor", &self.cursor)
            .finish_non_exhaustive()
    }
}

/// What one exporter needs, gathered by `Metering::start`.
pub struct ExporterParts {
    pub name: String,
    pub index: usize,
    pub sink: Sink,
    pub journal: Arc<Journal>,
    pub batch: usize,
    pub backoff: Backoff,
    pub metrics: SinkMetrics,
}

impl Exporter {
    /// The exporter, its cursor loaded (or at the journal's start) and the
    /// segments before it released.
    pub fn new(parts: ExporterParts) -> Exporter {
        let dir = parts.journal.dir();
        let cursor_path = cursor_path(dir, &parts.name);
        let cursor = match load_cursor(&cursor_path) {
            Some(cursor) => {
                let clamped = parts.journal.clamp(cursor);
                if clamped != cursor {
                    tracing::warn!(
                        sink = parts.name,
                        "metering: the export cursor is past the end of the journal \
                         (records lost with the machine under `fsync: never`); \
                         going on from the end"
                    );
                }
                clamped
            }
            None => parts.journal.start(),
        };
        parts.journal.release(parts.index, cursor.segment);
        let exporter = Exporter {
            cursor_path,
            dead_letter_path: dead_letter_path(dir, &parts.name),
            name: parts.name,
            index: parts.index,
            sink: parts.sink,
            journal: parts.journal,
            cursor,
            batch: parts.batch,
            backoff: parts.backoff,
            metrics: parts.metrics,
        };
        exporter.update_backlog();
        exporter
    }

    /// The sink's name.
    pub fn sink(&self) -> &str {
        &self.name
    }

    fn update_backlog(&self) {
        let backlog = self
            .journal
            .committed()
            .last_seq
            .saturating_sub(self.cursor.seq);
        self.metrics
            .backlog
            .set(i64::try_from(backlog).unwrap_or(i64::MAX));
    }

    fn update_age(&self, oldest: Option<&Record>) {
        let age = oldest.map_or(0, |record| {
            super::unix_ms(SystemTime::now()).saturating_sub(record.journaled_ms) / 1000
        });
        self.metrics
            .oldest_unexported
            .set(i64::try_from(age).unwrap_or(i64::MAX));
    }

    /// Export until `shutdown` resolves. What is in flight then is dropped
    /// unacknowledged, and sent again by the next process.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut committed = self.journal.subscribe();
        loop {
            committed.borrow_and_update();
            let journal = Arc::clone(&self.journal);
            let (cursor, batch) = (self.cursor, self.batch);
            let read = tokio::task::spawn_blocking(move || journal.read(cursor, batch));
            let (records, next) = match read.await {
                Ok(Ok(read)) => read,
                Ok(Err(error)) => {
                    self.metrics.error(ErrorKind::Journal);
                    let delay = self.backoff.next_delay();
                    tracing::error!(sink = self.name, %error, retry_in = ?delay, "metering: cannot read the journal");
                    if pause(delay, &mut shutdown).await {
                        return;
                    }
                    continue;
                }
                Err(error) => {
                    tracing::error!(sink = self.name, %error, "metering: the journal read task failed");
                    if pause(self.backoff.next_delay(), &mut shutdown).await {
                        return;
                    }
                    continue;
                }
            };
            if records.is_empty() {
                if next != self.cursor {
                    // Stepped over evicted or corrupt segments.
                    self.advance(next).await;
                }
                self.update_backlog();
                self.update_age(None);
                tokio::select! {
                    biased;
                    () = &mut shutdown => return,
                    changed = committed.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                }
                continue;
            }
            self.update_backlog();
            self.update_age(records.first());
            if self.deliver(&records, &mut shutdown).await {
                return;
            }
            self.advance(next).await;
        }
    }

    /// Deliver `records` until the sink takes (or refuses) them; `true`
    /// when told to stop first.
    async fn deliver<S: Future<Output = ()>>(
        &mut self,
        records: &[Record],
        shutdown: &mut std::pin::Pin<&mut S>,
    ) -> bool {
        loop {
            let outcome = tokio::select! {
                biased;
                () = shutdown.as_mut() => return true,
                outcome = self.sink.deliver(records) => outcome,
            };
            match outcome {
                Ok(rejections) => {
                    let refused: usize = rejections.iter().map(|r| r.records.len()).sum();
                    for rejection in &rejections {
                        self.dead_letter(rejection, records).await;
                    }
                    self.metrics
                        .exported
                        .inc_by((records.len() - refused.min(records.len())) as u64);
                    self.backoff.reset();
                    return false;
                }
                Err(Retry {
                    kind,
                    after,
                    detail,
                }) => {
                    self.metrics.error(kind);
                    let delay = after.unwrap_or_else(|| self.backoff.next_delay());
                    tracing::warn!(
                        sink = self.name,
                        kind = kind.as_str(),
                        records = records.len(),
                        retry_in = %humantime::format_duration(delay),
                        "metering export failed: {detail}"
                    );
                    self.update_age(records.first());
                    if pause(delay, shutdown).await {
                        return true;
                    }
                }
            }
        }
    }

    async fn dead_letter(&self, rejection: &Rejection, records: &[Record]) {
        self.metrics.error(ErrorKind::Rejected);
        self.metrics
            .dead_letters
            .inc_by(rejection.records.len() as u64);
        tracing::warn!(
            sink = self.name,
            status = rejection.status,
            records = rejection.records.len(),
            dead_letter = %self.dead_letter_path.display(),
            "metering: the sink refused records; they are in the dead-letter file and \
             export goes on: {}",
            rejection.answer
        );
        let path = self.dead_letter_path.clone();
        let name = self.name.clone();
        let rejection = rejection.clone();
        let refused: Vec<Record> = rejection
            .records
            .iter()
            .filter_map(|&i| records.get(i).cloned())
            .collect();
        let rejection = Rejection {
            records: (0..refused.len()).collect(),
            ..rejection
        };
        let written = tokio::task::spawn_blocking(move || {
            append_dead_letter(&path, &name, &rejection, &refused)
        })
        .await;
        if !matches!(written, Ok(Ok(()))) {
            self.metrics.error(ErrorKind::Io);
            tracing::error!(
                sink = self.name,
                dead_letter = %self.dead_letter_path.display(),
                "metering: could not write the dead-letter file; the refused records are \
                 only in this log: {:?}",
                written
            );
        }
    }

    /// Move the cursor to `next` and persist it, then let the journal
    /// delete what no sink needs any more.
    async fn advance(&mut self, next: Cursor) {
        let passed = next.seq.saturating_sub(self.cursor.seq);
        let path = self.cursor_path.clone();
        let stored = tokio::task::spawn_blocking(move || {
            fs::create_dir_all(path.parent().expect("a cursor path has a directory"))?;
            store_cursor(&path, &next)
        })
        .await;
        match stored {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                // Kept in memory: exports go on, and after a crash the
                // records since the last stored cursor are sent again.
                self.metrics.error(ErrorKind::Io);
                tracing::error!(sink = self.name, %error, cursor = %self.cursor_path.display(), "metering: cannot persist the export cursor");
            }
            Err(error) => {
                self.metrics.error(ErrorKind::Io);
                tracing::error!(sink = self.name, %error, "metering: the cursor task failed");
            }
        }
        self.cursor = next;
        self.journal.release(self.index, next.segment);
        self.update_backlog();
        tracing::debug!(sink = self.name, records = passed, "metering: exported");
    }
}
