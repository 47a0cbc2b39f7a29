//! The crash-safe journal: where usage waits, on disk, until every sink has
//! acknowledged it.
//!
//! Records are appended to numbered segment files in one directory
//! (`000000000001.seg`, …), each starting with a header (magic, the
//! journal's random id, the sequence number of its first record, a
//! checksum) and then record frames (see [`record`](super::record)). A
//! segment is created complete (header written and synced under a temporary
//! name, then renamed), so only the last one can end in a torn write.
//!
//! Recovery at startup reads the headers of every segment and every record
//! of the last one; at the first record that is cut short or fails its
//! checksum the segment is truncated there, and the next sequence number is
//! the last good record's plus one. Each exporter reads from its own cursor
//! up to the *committed* end: what has been written (and synced, as the
//! fsync policy says) as a whole. A segment is deleted once every sink's
//! cursor has passed it; the last one never is, so the sequence and the
//! journal id survive even an empty journal.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::metrics::{DropReason, JournalMetrics};
use super::record::{self, Bad, Body, Record};
use super::settings::{Fsync, JournalSettings, Overflow};

#[cfg(test)]
mod tests;

const MAGIC: &[u8; 8] = b"LGMETER1";
/// Magic, journal id, first sequence number, checksum.
pub const HEADER_LEN: u64 = 8 + 16 + 8 + 4;
/// How much of a segment a reader loads at once: at least one whole frame.
const READ_CHUNK: u64 = 2 * (record::MAX_PAYLOAD as u64 + record::FRAME_HEADER as u64);

/// A place in the journal: a segment and a byte offset in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

/// How far the journal holds whole, readable records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Committed {
    pub end: Position,
    /// The sequence number of the last record written (0 for none yet).
    pub last_seq: u64,
}

/// Where a reader is: the next record's position, and the sequence number
/// of the last record it has passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub segment: u64,
    pub offset: u64,
    pub seq: u64,
}

impl Cursor {
    pub fn position(&self) -> Position {
        Position {
            segment: self.segment,
            offset: self.offset,
        }
    }
}

/// A journal file that could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("metering journal {}: {what}: {source}", path.display())]
pub struct JournalError {
    pub path: PathBuf,
    pub what: &'static str,
    #[source]
    pub source: io::Error,
}

fn failed<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(io::Error) -> JournalError + 'a {
    move |source| JournalError {
        path: path.to_owned(),
        what,
        source,
    }
}

/// What recovery found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    pub segments: usize,
    /// Records in the last segment that survived.
    pub records: usize,
    /// Bytes cut off the end of the last segment.
    pub truncated_bytes: u64,
    pub next_seq: u64,
}

/// What one append did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Appended {
    pub written: usize,
    /// Dropped for lack of room (overflow `drop_newest`).
    pub dropped: usize,
}

#[derive(Debug)]
struct Segment {
    first_seq: u64,
    bytes: u64,
}

#[derive(Debug)]
struct Writer {
    /// The last segment, open for appending.
    file: File,
    active: u64,
    segments: BTreeMap<u64, Segment>,
    total_bytes: u64,
    next_seq: u64,
    journal_id: [u8; 16],
    /// Per sink: the oldest segment its cursor still needs.
    needed: Vec<u64>,
    /// A failed write could not be undone: start a new segment before the
    /// next one.
    broken: bool,
}

/// See the module comment. Shared by the flusher (and event callers), who
/// append, and the exporters, who read and release.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    settings: JournalSettings,
    source: String,
    writer: Mutex<Writer>,
    committed: watch::Sender<Committed>,
    metrics: JournalMetrics,
    /// Corrupt spots already logged and counted, so that each sink meeting
    /// one does not count it again.
    reported: Mutex<HashSet<Position>>,
}

pub fn segment_name(number: u64) -> String {
    format!("{number:012}.seg")
}

fn header(journal_id: &[u8; 16], first_seq: u64) -> [u8; HEADER_LEN as usize] {
    let mut out = [0u8; HEADER_LEN as usize];
    out[..8].copy_from_slice(MAGIC);
    out[8..24].copy_from_slice(journal_id);
    out[24..32].copy_from_slice(&first_seq.to_le_bytes());
    let crc = crc32fast::hash(&out[..32]);
    out[32..].copy_from_slice(&crc.to_le_bytes());
    out
}

/// The journal id and first sequence number in a segment's header.
fn parse_header(bytes: &[u8]) -> Option<([u8; 16], u64)> {
    let bytes = bytes.get(..HEADER_LEN as usize)?;
    if &bytes[..8] != MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(bytes[32..36].try_into().ok()?);
    if crc32fast::hash(&bytes[..32]) != crc {
        return None;
    }
    let id = bytes[8..24].try_into().ok()?;
    let first_seq = u64::from_le_bytes(bytes[24..32].try_into().ok()?);
    Some((id, first_seq))
}

fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(failed(dir, "syncing the directory"))
}

/// Create segment `number` whole: header synced under a temporary name,
/// renamed, directory synced. Returns it open for appending.
fn create_segment(
    dir: &Path,
    number: u64,
    journal_id: &[u8; 16],
    first_seq: u64,
) -> Result<File, JournalError> {
    let path = dir.join(segment_name(number));
    let tmp = dir.join(format!("{}.tmp", segment_name(number)));
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&tmp)
        .map_err(failed(&tmp, "creating a segment"))?;
    file.write_all(&header(journal_id, first_seq))
        .and_then(|()| file.sync_all())
        .map_err(failed(&tmp, "writing a segment header"))?;
    fs::rename(&tmp, &path).map_err(failed(&path, "naming a new segment"))?;
    sync_dir(dir)?;
    drop(file);
    OpenOptions::new()
        .append(true)
        .open(&path)
        .map_err(failed(&path, "opening a segment"))
}

/// The numbers of the segment files in `dir`, sorted; stray temporary files
/// (a crash while creating a segment) are removed.
fn list_segments(dir: &Path) -> Result<Vec<u64>, JournalError> {
    let mut numbers = Vec::new();
    for entry in fs::read_dir(dir).map_err(failed(dir, "listing"))? {
        let entry = entry.map_err(failed(dir, "listing"))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".seg.tmp") {
            let _ = fs::remove_file(entry.path());
            continue;
        }
        let Some(stem) = name.strip_suffix(".seg") else {
            continue;
        };
        if stem.len() == 12 && stem.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(number) = stem.parse() {
                numbers.push(number);
            }
        }
    }
    numbers.sort_unstable();
    Ok(numbers)
}

fn read_file(path: &Path) -> Result<Vec<u8>, JournalError> {
    fs::read(path).map_err(failed(path, "reading a segment"))
}

/// Set a segment that cannot be read aside, keeping it for inspection.
fn set_aside(path: &Path, why: &str) {
    let aside = path.with_extension("seg.corrupt");
    tracing::error!(
        segment = %path.display(),
        aside = %aside.display(),
        "metering journal: {why}; the segment is set aside and its records are not exported"
    );
    if let Err(error) = fs::rename(path, &aside) {
        tracing::error!(%error, segment = %path.display(), "could not set the segment aside");
    }
}

/// The end of what `writer` has written.
fn snapshot(writer: &Writer) -> Committed {
    Committed {
        end: Position {
            segment: writer.active,
            offset: writer.segments[&writer.active].bytes,
        },
        last_seq: writer.next_seq - 1,
    }
}

fn now_ms() -> u64 {
    super::unix_ms(std::time::SystemTime::now())
}

impl Journal {
    /// Open (or create) the journal in `settings.dir` and recover it; for
    /// `sinks` exporters, each of which must [`release`](Self::release)
    /// before any segment is deleted.
    pub fn open(
        settings: &JournalSettings,
        source: &str,
        sinks: usize,
        metrics: JournalMetrics,
    ) -> Result<(Journal, Recovery), JournalError> {
        let dir = settings.dir.clone();
        fs::create_dir_all(&dir).map_err(failed(&dir, "creating the directory"))?;
        let mut numbers = list_segments(&dir)?;
        let mut segments = BTreeMap::new();
        let mut recovery = Recovery::default();

        // The last segment with a readable header is the active one; any
        // other unreadable one is set aside.
        let mut last = None;
        while let Some(number) = numbers.pop() {
            let path = dir.join(segment_name(number));
            let bytes = read_file(&path)?;
            match parse_header(&bytes) {
                Some((id, first_seq)) => {
                    last = Some((number, id, first_seq, bytes));
                    break;
                }
                None => set_aside(&path, "the last segment has no valid header"),
            }
        }
        for number in numbers {
            let path = dir.join(segment_name(number));
            let mut head = [0u8; HEADER_LEN as usize];
            let read = File::open(&path).and_then(|mut f| {
                f.read_exact(&mut head)?;
                f.metadata()
            });
            match read.ok().zip(parse_header(&head)) {
                Some((meta, (_, first_seq))) => {
                    segments.insert(
                        number,
                        Segment {
                            first_seq,
                            bytes: meta.len(),
                        },
                    );
                }
                None => set_aside(&path, "a segment has no valid header"),
            }
        }

        let (active, journal_id, next_seq, file) = match last {
            Some((number, id, first_seq, bytes)) => {
                let path = dir.join(segment_name(number));
                let mut offset = HEADER_LEN as usize;
                let mut last_seq = first_seq.saturating_sub(1);
                let mut bad = None;
                loop {
                    match record::decode(&bytes[offset..]) {
                        Ok(None) => break,
                        Ok(Some((record, used))) => {
                            last_seq = record.seq;
                            offset += used;
                            recovery.records += 1;
                        }
                        Err(why) => {
                            bad = Some(why);
                            break;
                        }
                    }
                }
                if let Some(why) = bad {
                    let cut = bytes.len() - offset;
                    let (reason, what) = match &why {
                        Bad::Torn => (DropReason::Torn, "a record cut short".to_owned()),
                        Bad::Corrupt(what) => (DropReason::Corrupt, what.clone()),
                    };
                    tracing::warn!(
                        segment = %path.display(),
                        offset,
                        bytes = cut,
                        "metering journal: {what} at the end of the last segment \
                         (a crash mid-write); truncated, {} earlier records kept",
                        recovery.records
                    );
                    metrics.dropped(reason, 1);
                    let file = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(failed(&path, "opening the last segment"))?;
                    file.set_len(offset as u64)
                        .and_then(|()| file.sync_all())
                        .map_err(failed(&path, "truncating a torn record"))?;
                    recovery.truncated_bytes = cut as u64;
                }
                segments.insert(
                    number,
                    Segment {
                        first_seq,
                        bytes: offset as u64,
                    },
                );
                let file = OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .map_err(failed(&path, "opening the last segment"))?;
                (number, id, last_seq + 1, file)
            }
            None => {
                // A new journal (or every segment unreadable): a fresh id,
                // so its records never share ids with an older journal's.
                // Any segments still listed belong to that older journal.
                let mut id = [0u8; 16];
                SystemRandom::new()
                    .fill(&mut id)
                    .map_err(|_| JournalError {
                        path: dir.clone(),
                        what: "drawing a journal id",
                        source: io::Error::other("no system randomness"),
                    })?;
                let number = segments.keys().next_back().map_or(1, |n| n + 1);
                let next_seq = segments
                    .values()
                    .next_back()
                    .map_or(1, |s: &Segment| s.first_seq.max(1));
                let file = create_segment(&dir, number, &id, next_seq)?;
                segments.insert(
                    number,
                    Segment {
                        first_seq: next_seq,
                        bytes: HEADER_LEN,
                    },
                );
                (number, id, next_seq, file)
            }
        };
        let total_bytes = segments.values().map(|s| s.bytes).sum();
        metrics
            .bytes
            .set(i64::try_from(total_bytes).unwrap_or(i64::MAX));
        recovery.segments = segments.len();
        recovery.next_seq = next_seq;
        let end = Position {
            segment: active,
            offset: segments[&active].bytes,
        };
        let journal = Journal {
            dir,
            settings: settings.clone(),
            source: source.to_owned(),
            writer: Mutex::new(Writer {
                file,
                active,
                segments,
                total_bytes,
                next_seq,
                journal_id,
                needed: vec![0; sinks],
                broken: false,
            }),
            committed: watch::Sender::new(Committed {
                end,
                last_seq: next_seq - 1,
            }),
            metrics,
            reported: Mutex::new(HashSet::new()),
        };
        Ok((journal, recovery))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn committed(&self) -> Committed {
        *self.committed.borrow()
    }

    /// Told each time the committed end moves.
    pub fn subscribe(&self) -> watch::Receiver<Committed> {
        self.committed.subscribe()
    }

    /// Where a reader with no cursor starts: the oldest record held.
    pub fn start(&self) -> Cursor {
        let writer = self.writer.lock();
        let (&segment, first) = writer
            .segments
            .iter()
            .next()
            .expect("the active segment is always listed");
        Cursor {
            segment,
            offset: HEADER_LEN,
            seq: first.first_seq.saturating_sub(1),
        }
    }

    /// `cursor`, or the committed end if it points past it (records lost
    /// with the machine under `fsync: never` were written again since).
    pub fn clamp(&self, cursor: Cursor) -> Cursor {
        let committed = self.committed();
        if cursor.position() > committed.end {
            Cursor {
                segment: committed.end.segment,
                offset: committed.end.offset,
                seq: committed.last_seq,
            }
        } else {
            cursor
        }
    }

    /// Journal `bodies`, numbering them and giving each its id. `sync`
    /// forces them to disk (whatever the policy says; see [`Fsync`]).
    /// On an error, the records before the failed write are journalled and
    /// counted in the error's `written`; the caller keeps the rest.
    pub fn append(&self, bodies: &[Body], sync: bool) -> Result<Appended, (usize, JournalError)> {
        if bodies.is_empty() {
            return Ok(Appended::default());
        }
        let (outcome, committed, to_sync) = {
            let mut writer = self.writer.lock();
            let outcome = self.append_locked(&mut writer, bodies)?;
            // Synced once the lock is released: an event appended
            // meanwhile waits for no disk.
            let to_sync = sync.then(|| {
                (
                    writer.file.try_clone(),
                    self.dir.join(segment_name(writer.active)),
                )
            });
            (outcome, snapshot(&writer), to_sync)
        };
        if let Some((file, path)) = to_sync {
            if let Err(error) = file.and_then(|file| file.sync_data()) {
                // Written, so a crash of the process keeps them; only the
                // machine going down could lose them now. Not retried: that
                // would journal them again, under new ids.
                tracing::error!(%error, segment = %path.display(), "metering journal: fsync failed");
            }
        }
        self.publish(committed);
        Ok(outcome)
    }

    fn append_locked(
        &self,
        writer: &mut Writer,
        bodies: &[Body],
    ) -> Result<Appended, (usize, JournalError)> {
        let journaled_ms = now_ms();
        let mut outcome = Appended::default();
        let mut buf = Vec::with_capacity(bodies.len() * 320);
        // Records in `buf`, not yet written.
        let mut buffered = 0;
        if writer.broken {
            self.roll(writer, &mut buf, &mut buffered, &mut outcome)
                .map_err(|e| (0, e))?;
        }
        let mut frame = Vec::with_capacity(512);
        for (index, body) in bodies.iter().enumerate() {
            let seq = writer.next_seq + buffered as u64;
            let id = match body {
                Body::Usage(usage) => {
                    record::usage_id(&self.source, &writer.journal_id, usage, seq)
                }
                Body::QuotaThreshold(threshold) => record::threshold_id(&self.source, threshold),
            };
            let record = Record {
                seq,
                id,
                source: self.source.clone(),
                journaled_ms,
                body: body.clone(),
            };
            frame.clear();
            let len = record::encode(&record, &mut frame) as u64;

            if !self.make_room(writer, buf.len() as u64 + len) {
                outcome.dropped = bodies.len() - index;
                break;
            }
            let active_len = writer.segments[&writer.active].bytes + buf.len() as u64;
            if active_len + len > self.settings.segment_bytes && active_len > HEADER_LEN {
                self.roll(writer, &mut buf, &mut buffered, &mut outcome)
                    .map_err(|e| (outcome.written, e))?;
            }
            buf.extend_from_slice(&frame);
            buffered += 1;
        }
        if outcome.dropped > 0 {
            self.metrics
                .dropped(DropReason::JournalFull, outcome.dropped as u64);
        }
        self.write(writer, &mut buf, &mut buffered, &mut outcome)
            .map_err(|e| (outcome.written, e))?;
        Ok(outcome)
    }

    /// Whether `more` bytes fit under `max_bytes`, evicting the oldest
    /// segments first under `drop_oldest`.
    fn make_room(&self, writer: &mut Writer, more: u64) -> bool {
        let max = self.settings.max_bytes;
        while writer.total_bytes + more > max {
            if self.settings.overflow == Overflow::DropNewest {
                return false;
            }
            let Some((&oldest, segment)) = writer.segments.iter().next() else {
                return false;
            };
            if oldest == writer.active {
                return false;
            }
            let next_first = writer
                .segments
                .range(oldest + 1..)
                .next()
                .map_or(writer.next_seq, |(_, s)| s.first_seq);
            let records = next_first.saturating_sub(segment.first_seq);
            tracing::warn!(
                segment = segment_name(oldest),
                records,
                "metering journal full ({max} bytes): evicting its oldest segment \
                 before every sink exported it (overflow: drop_oldest)"
            );
            self.metrics.dropped(DropReason::JournalFull, records);
            self.delete(writer, oldest);
        }
        true
    }

    /// Write what is buffered to the active segment.
    fn write(
        &self,
        writer: &mut Writer,
        buf: &mut Vec<u8>,
        buffered: &mut usize,
        outcome: &mut Appended,
    ) -> Result<(), JournalError> {
        if buf.is_empty() {
            return Ok(());
        }
        let path = self.dir.join(segment_name(writer.active));
        let before = writer.segments[&writer.active].bytes;
        if let Err(error) = writer.file.write_all(buf) {
            // Cut off what part of the write landed, so the next record
            // does not follow a torn one; if even that fails, the next
            // append starts a new segment.
            if writer.file.set_len(before).is_err() {
                writer.broken = true;
            }
            buf.clear();
            *buffered = 0;
            return Err(failed(&path, "appending")(error));
        }
        self.metrics.writes.inc();
        let len = buf.len() as u64;
        writer
            .segments
            .get_mut(&writer.active)
            .expect("the active segment is listed")
            .bytes += len;
        writer.total_bytes += len;
        writer.next_seq += *buffered as u64;
        outcome.written += *buffered;
        buf.clear();
        *buffered = 0;
        self.metrics
            .bytes
            .set(i64::try_from(writer.total_bytes).unwrap_or(i64::MAX));
        Ok(())
    }

    /// Write what is buffered, close the active segment and start the next.
    fn roll(
        &self,
        writer: &mut Writer,
        buf: &mut Vec<u8>,
        buffered: &mut usize,
        outcome: &mut Appended,
    ) -> Result<(), JournalError> {
        self.write(writer, buf, buffered, outcome)?;
        if self.settings.fsync != Fsync::Never && !writer.broken {
            let path = self.dir.join(segment_name(writer.active));
            writer
                .file
                .sync_data()
                .map_err(failed(&path, "syncing a full segment"))?;
        }
        let number = writer.active + 1;
        writer.file = create_segment(&self.dir, number, &writer.journal_id, writer.next_seq)?;
        writer.segments.insert(
            number,
            Segment {
                first_seq: writer.next_seq,
                bytes: HEADER_LEN,
            },
        );
        writer.active = number;
        writer.broken = false;
        writer.total_bytes += HEADER_LEN;
        // Readers may move on to the new segment.
        self.publish(snapshot(writer));
        Ok(())
    }

    /// Let readers go up to `committed`. Appends publish in any order once
    /// their lock is released; the end only moves forward (a later end
    /// covers an earlier append's records, and its sync their bytes).
    fn publish(&self, committed: Committed) {
        self.committed.send_if_modified(|current| {
            let moved = committed.end > current.end;
            if moved {
                *current = committed;
            }
            moved
        });
    }

    fn delete(&self, writer: &mut Writer, number: u64) {
        let Some(segment) = writer.segments.remove(&number) else {
            return;
        };
        writer.total_bytes -= segment.bytes;
        let path = self.dir.join(segment_name(number));
        if let Err(error) = fs::remove_file(&path) {
            if error.kind() != io::ErrorKind::NotFound {
                tracing::warn!(%error, segment = %path.display(), "could not delete an exported segment");
            }
        }
        self.metrics
            .bytes
            .set(i64::try_from(writer.total_bytes).unwrap_or(i64::MAX));
    }

    /// Sink `sink` no longer needs segments before `segment`; delete those
    /// no sink needs (never the active one).
    pub fn release(&self, sink: usize, segment: u64) {
        let mut writer = self.writer.lock();
        writer.needed[sink] = segment;
        let needed = writer.needed.iter().copied().min().unwrap_or(0);
        let done: Vec<u64> = writer
            .segments
            .range(..needed.min(writer.active))
            .map(|(&n, _)| n)
            .collect();
        for number in done {
            self.delete(&mut writer, number);
        }
    }

    /// Segment numbers held, oldest first (for tests and status).
    pub fn segments(&self) -> Vec<u64> {
        self.writer.lock().segments.keys().copied().collect()
    }

    /// Up to `max` records from `cursor`, no further than the committed
    /// end, and the cursor after them. Segments deleted meanwhile (evicted)
    /// are stepped over; a corrupt record (bit rot) ends its segment.
    pub fn read(&self, cursor: Cursor, max: usize) -> Result<(Vec<Record>, Cursor), JournalError> {
        let committed = self.committed();
        let mut records = Vec::new();
        let mut at = cursor;
        while records.len() < max && at.position() < committed.end {
            // The segment's readable end, or the next segment to go to.
            let limit = {
                let writer = self.writer.lock();
                match writer.segments.get(&at.segment) {
                    Some(_) if at.segment == committed.end.segment => Some(committed.end.offset),
                    Some(segment) => Some(segment.bytes),
                    None => None,
                }
            };
            let Some(limit) = limit.filter(|&limit| at.offset < limit) else {
                match self.next_segment(at.segment) {
                    Some((segment, first_seq)) if segment <= committed.end.segment => {
                        at = Cursor {
                            segment,
                            offset: HEADER_LEN,
                            seq: at.seq.max(first_seq.saturating_sub(1)),
                        };
                        continue;
                    }
                    _ => break,
                }
            };
            let path = self.dir.join(segment_name(at.segment));
            let want = (limit - at.offset).min(READ_CHUNK);
            let mut bytes = vec![0u8; want as usize];
            let read = File::open(&path).and_then(|mut file| {
                file.seek(SeekFrom::Start(at.offset))?;
                file.read_exact(&mut bytes)
            });
            match read {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::NotFound => {
                    // Evicted between the look-up and the open.
                    continue;
                }
                Err(error) => return Err(failed(&path, "reading a segment")(error)),
            }
            let mut used = 0;
            while records.len() < max {
                match record::decode(&bytes[used..]) {
                    Ok(None) => break,
                    Ok(Some((record, len))) => {
                        used += len;
                        at.offset += len as u64;
                        at.seq = record.seq;
                        records.push(record);
                    }
                    Err(Bad::Torn) if want < limit - (at.offset - used as u64) => {
                        // The chunk ended mid-frame: read on from here.
                        break;
                    }
                    Err(bad) => {
                        let what = match bad {
                            Bad::Torn => "a record cut short".to_owned(),
                            Bad::Corrupt(what) => what,
                        };
                        at = self.skip_corrupt(at, &what);
                        break;
                    }
                }
            }
        }
        Ok((records, at))
    }

    /// The first segment after `number` and its first sequence number.
    fn next_segment(&self, number: u64) -> Option<(u64, u64)> {
        let writer = self.writer.lock();
        writer
            .segments
            .range(number + 1..)
            .next()
            .map(|(&n, s)| (n, s.first_seq))
    }

    /// Step over the rest of a segment at a corrupt record; log and count
    /// it once, whichever sink meets it first.
    fn skip_corrupt(&self, at: Cursor, what: &str) -> Cursor {
        {
            // New records must not go on after the corruption.
            let mut writer = self.writer.lock();
            if writer.active == at.segment {
                let (mut buf, mut buffered, mut outcome) = (Vec::new(), 0, Appended::default());
                if let Err(error) = self.roll(&mut writer, &mut buf, &mut buffered, &mut outcome) {
                    writer.broken = true;
                    tracing::error!(%error, "metering journal: could not start a new segment");
                }
            }
        }
        let next = self.next_segment(at.segment);
        let next_seq = next.map_or_else(|| self.committed().last_seq + 1, |(_, first)| first);
        let lost = next_seq.saturating_sub(at.seq + 1);
        if self.reported.lock().insert(at.position()) {
            tracing::error!(
                segment = segment_name(at.segment),
                offset = at.offset,
                records = lost,
                "metering journal: {what}; the rest of the segment is skipped"
            );
            self.metrics.dropped(DropReason::Corrupt, lost);
        }
        match next {
            Some((segment, first_seq)) => Cursor {
                segment,
                offset: HEADER_LEN,
                seq: first_seq.saturating_sub(1).max(at.seq),
            },
            None => {
                let committed = self.committed();
                Cursor {
                    segment: committed.end.segment,
                    offset: committed.end.offset,
                    seq: committed.last_seq,
                }
            }
        }
    }
}
