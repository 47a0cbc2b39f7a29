use super::*;
use crate::metering::metrics::MeteringMetrics;
use crate::metering::record::UsageBody;
use crate::metrics::Registry;

struct Fixture {
    dir: tempfile::TempDir,
    registry: Registry,
    settings: JournalSettings,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let settings = JournalSettings::new(dir.path().join("journal"));
        Fixture {
            dir,
            registry: Registry::new(),
            settings,
        }
    }

    /// Open the journal as a new process would: a fresh registry each time.
    fn open(&mut self, sinks: usize) -> (Journal, Recovery) {
        self.registry = Registry::new();
        let metrics = MeteringMetrics::new(&self.registry);
        Journal::open(&self.settings, "licensegate/test", sinks, metrics.journal).unwrap()
    }

    fn segment_path(&self, number: u64) -> PathBuf {
        self.settings.dir.join(segment_name(number))
    }

    fn metric(&self, series: &str) -> f64 {
        let page = String::from_utf8(self.registry.render()).unwrap();
        page.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{page}"))
    }
}

fn usage(route: &str, value: u64) -> Body {
    Body::Usage(UsageBody {
        license: "lic-1".into(),
        customer: Some("acme".into()),
        plan: "pro".into(),
        route: route.into(),
        meter: "requests".into(),
        value,
        window_start_ms: 1_700_000_000_000,
        window_end_ms: 1_700_000_010_000,
    })
}

fn values(records: &[Record]) -> Vec<u64> {
    records
        .iter()
        .map(|r| match &r.body {
            Body::Usage(u) => u.value,
            Body::QuotaThreshold(t) => t.used,
        })
        .collect()
}

fn read_all(journal: &Journal, from: Cursor) -> (Vec<Record>, Cursor) {
    journal.read(from, usize::MAX).unwrap()
}

#[test]
fn appended_records_are_numbered_identified_and_read_back() {
    let mut fx = Fixture::new();
    let (journal, recovery) = fx.open(1);
    assert_eq!(recovery.next_seq, 1);
    let outcome = journal
        .append(&[usage("a", 1), usage("b", 2), usage("c", 3)], true)
        .unwrap();
    assert_eq!(
        outcome,
        Appended {
            written: 3,
            dropped: 0
        }
    );
    // One append, one write: writes follow flushes, not records.
    assert_eq!(fx.metric("licensegate_metering_journal_writes_total"), 1.0);

    let (records, next) = read_all(&journal, journal.start());
    assert_eq!(values(&records), [1, 2, 3]);
    assert_eq!(records.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(next.seq, 3);
    assert_eq!(next.position(), journal.committed().end);
    let ids: HashSet<&str> = records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids.len(), 3, "each record has its own id");
    // Reading at the end gives nothing and stays put.
    assert_eq!(read_all(&journal, next), (Vec::new(), next));
}

#[test]
fn ids_and_sequence_survive_a_restart() {
    let mut fx = Fixture::new();
    let first_ids = {
        let (journal, _) = fx.open(1);
        journal
            .append(&[usage("a", 1), usage("b", 2)], true)
            .unwrap();
        let (records, _) = read_all(&journal, journal.start());
        records.into_iter().map(|r| r.id).collect::<Vec<_>>()
    };
    let (journal, recovery) = fx.open(1);
    assert_eq!(recovery.next_seq, 3, "recovered as the last sequence + 1");
    assert_eq!(recovery.records, 2);
    journal.append(&[usage("a", 1)], true).unwrap();
    let (records, _) = read_all(&journal, journal.start());
    // The journalled ids are read back, not recomputed.
    assert_eq!(
        records
            .iter()
            .take(2)
            .map(|r| r.id.clone())
            .collect::<Vec<_>>(),
        first_ids
    );
    // Same key and window as the first record, next sequence: a new id.
    assert_eq!(records[2].seq, 3);
    assert_ne!(records[2].id, records[0].id);
    // The id is the documented hash, with the journal id from the header.
    let head = fs::read(fx.segment_path(1)).unwrap();
    let (journal_id, _) = parse_header(&head).unwrap();
    let Body::Usage(body) = &records[2].body else {
        unreachable!()
    };
    assert_eq!(
        records[2].id,
        record::usage_id("licensegate/test", &journal_id, body, 3)
    );
}

#[test]
fn a_torn_tail_is_truncated_and_earlier_records_survive() {
    let mut fx = Fixture::new();
    let cut_at = {
        let (journal, _) = fx.open(1);
        journal
            .append(&[usage("a", 1), usage("b", 2)], true)
            .unwrap();
        let end_of_two = journal.committed().end.offset;
        journal.append(&[usage("c", 3)], true).unwrap();
        let end = journal.committed().end.offset;
        // Killed in the middle of writing the third record.
        end_of_two + (end - end_of_two) / 2
    };
    let file = OpenOptions::new()
        .write(true)
        .open(fx.segment_path(1))
        .unwrap();
    let before = file.metadata().unwrap().len();
    file.set_len(cut_at).unwrap();
    drop(file);

    let (journal, recovery) = fx.open(1);
    assert_eq!(recovery.records, 2);
    assert!(recovery.truncated_bytes > 0 && recovery.truncated_bytes < before);
    assert_eq!(recovery.next_seq, 3);
    assert_eq!(
        fx.metric("licensegate_metering_dropped_total{reason=\"torn\"}"),
        1.0
    );
    // The torn bytes are gone from the file, so new records follow whole ones.
    assert!(fs::metadata(fx.segment_path(1)).unwrap().len() < cut_at);
    journal.append(&[usage("d", 4)], true).unwrap();
    let (records, _) = read_all(&journal, journal.start());
    assert_eq!(values(&records), [1, 2, 4]);
    assert_eq!(records[2].seq, 3);
}

#[test]
fn a_flipped_byte_in_the_last_record_is_dropped() {
    let mut fx = Fixture::new();
    let third_at = {
        let (journal, _) = fx.open(1);
        journal
            .append(&[usage("a", 1), usage("b", 2)], true)
            .unwrap();
        let at = journal.committed().end.offset;
        journal.append(&[usage("c", 3)], true).unwrap();
        at
    };
    let mut bytes = fs::read(fx.segment_path(1)).unwrap();
    // One bit of the third record's value (3 becomes 2): still well-formed
    // JSON, so only the checksum can tell.
    let value = third_at as usize
        + bytes[third_at as usize..]
            .windows(9)
            .position(|w| w == b"\"value\":3")
            .unwrap()
        + 8;
    bytes[value] ^= 0x01;
    fs::write(fx.segment_path(1), &bytes).unwrap();

    let (journal, recovery) = fx.open(1);
    assert_eq!(recovery.records, 2);
    assert_eq!(recovery.next_seq, 3);
    assert_eq!(
        fx.metric("licensegate_metering_dropped_total{reason=\"corrupt\"}"),
        1.0
    );
    let (records, _) = read_all(&journal, journal.start());
    assert_eq!(values(&records), [1, 2]);
}

#[test]
fn segments_roll_and_only_those_every_sink_passed_are_deleted() {
    let mut fx = Fixture::new();
    fx.settings.segment_bytes = 4096;
    let (journal, _) = fx.open(2);
    for round in 0..10 {
        let bodies: Vec<Body> = (0..10).map(|i| usage("r", round * 10 + i)).collect();
        journal.append(&bodies, false).unwrap();
    }
    let segments = journal.segments();
    assert!(segments.len() >= 5, "{segments:?}");
    let (records, end) = read_all(&journal, journal.start());
    assert_eq!(values(&records), (0..100).collect::<Vec<_>>());

    // Sink 0 is done; sink 1 has not started: nothing may go.
    journal.release(0, end.segment);
    assert_eq!(journal.segments(), segments);
    // Sink 1 reads half.
    let (_, half) = journal.read(journal.start(), 50).unwrap();
    journal.release(1, half.segment);
    let left = journal.segments();
    assert_eq!(left.first(), Some(&half.segment));
    for gone in segments.iter().filter(|s| **s < half.segment) {
        assert!(!fx.segment_path(*gone).exists());
    }
    // What sink 1 still needs is all there.
    let (rest, _) = read_all(&journal, half);
    assert_eq!(values(&rest), (50..100).collect::<Vec<_>>());
    // Everyone at the end: the active segment stays (it holds the sequence).
    journal.release(1, end.segment);
    assert_eq!(journal.segments(), [end.segment]);
    drop(journal);
    let (_, recovery) = fx.open(2);
    assert_eq!(recovery.next_seq, 101);
}

#[test]
fn drop_newest_keeps_what_is_journalled_and_counts_the_rest() {
    let mut fx = Fixture::new();
    fx.settings.segment_bytes = 4096;
    fx.settings.max_bytes = 8192;
    fx.settings.overflow = Overflow::DropNewest;
    let (journal, _) = fx.open(1);
    let bodies: Vec<Body> = (0..100).map(|i| usage("r", i)).collect();
    let outcome = journal.append(&bodies, false).unwrap();
    assert!(outcome.written > 10 && outcome.dropped > 0, "{outcome:?}");
    assert_eq!(outcome.written + outcome.dropped, 100);
    assert_eq!(
        fx.metric("licensegate_metering_dropped_total{reason=\"journal_full\"}"),
        outcome.dropped as f64
    );
    let held = fx.metric("licensegate_metering_journal_bytes");
    assert!(held <= 8192.0 + HEADER_LEN as f64, "{held}");
    // The oldest records are kept, in order, without a gap.
    let (records, _) = read_all(&journal, journal.start());
    assert_eq!(
        values(&records),
        (0..outcome.written as u64).collect::<Vec<_>>()
    );
}

#[test]
fn drop_oldest_evicts_whole_segments_and_readers_step_over_them() {
    let mut fx = Fixture::new();
    fx.settings.segment_bytes = 4096;
    fx.settings.max_bytes = 8192;
    fx.settings.overflow = Overflow::DropOldest;
    let (journal, _) = fx.open(1);
    let reader = journal.start();
    for i in 0..100 {
        assert_eq!(journal.append(&[usage("r", i)], false).unwrap().dropped, 0);
    }
    assert!(fx.metric("licensegate_metering_journal_bytes") <= 8192.0 + HEADER_LEN as f64);
    let evicted = fx.metric("licensegate_metering_dropped_total{reason=\"journal_full\"}");
    assert!(evicted > 0.0);
    assert!(!fx.segment_path(1).exists());
    // A reader left in an evicted segment goes on from the oldest one held;
    // the newest records are all there.
    let (records, _) = read_all(&journal, reader);
    let values = values(&records);
    assert_eq!(values.last(), Some(&99));
    assert_eq!(values.len() as f64 + evicted, 100.0);
}

#[test]
fn a_corrupt_record_in_a_sealed_segment_skips_the_rest_of_it_once() {
    let mut fx = Fixture::new();
    fx.settings.segment_bytes = 4096;
    let (journal, _) = fx.open(2);
    for i in 0..40 {
        journal.append(&[usage("r", i)], false).unwrap();
    }
    assert!(journal.segments().len() >= 2);
    let mut in_first = 0;
    let mut cursor = journal.start();
    loop {
        let (records, next) = journal.read(cursor, 1).unwrap();
        if next.segment != 1 {
            break;
        }
        in_first += records.len();
        cursor = next;
    }
    assert!(in_first > 3);
    // Rot a byte of the third record of segment 1.
    let mut bytes = fs::read(fx.segment_path(1)).unwrap();
    let (_, third) = journal.read(journal.start(), 2).unwrap();
    bytes[third.offset as usize + 12] ^= 0x40;
    fs::write(fx.segment_path(1), &bytes).unwrap();

    for _sink in 0..2 {
        let (records, _) = read_all(&journal, journal.start());
        let values = values(&records);
        // Two before the rot, then everything from segment 2 on.
        assert_eq!(values[..2], [0, 1]);
        assert_eq!(values.len(), 40 - (in_first - 2));
        assert_eq!(values.last(), Some(&39));
    }
    // Counted once, however many sinks met it.
    assert_eq!(
        fx.metric("licensegate_metering_dropped_total{reason=\"corrupt\"}"),
        (in_first - 2) as f64
    );
}

#[test]
fn a_cursor_past_the_end_is_clamped() {
    let mut fx = Fixture::new();
    let (journal, _) = fx.open(1);
    journal.append(&[usage("a", 1)], true).unwrap();
    let end = journal.committed();
    let beyond = Cursor {
        segment: end.end.segment,
        offset: end.end.offset + 500,
        seq: 9,
    };
    assert_eq!(
        journal.clamp(beyond),
        Cursor {
            segment: end.end.segment,
            offset: end.end.offset,
            seq: end.last_seq
        }
    );
    let (records, _) = read_all(&journal, journal.start());
    let behind = journal.start();
    assert_eq!(journal.clamp(behind), behind);
    assert_eq!(records.len(), 1);
}

#[test]
fn a_header_that_is_not_ours_is_set_aside() {
    let mut fx = Fixture::new();
    {
        let (journal, _) = fx.open(1);
        journal.append(&[usage("a", 1)], true).unwrap();
    }
    fs::write(fx.settings.dir.join(segment_name(2)), b"not a segment").unwrap();
    let (journal, recovery) = fx.open(1);
    assert_eq!(recovery.next_seq, 2);
    assert!(fx.settings.dir.join("000000000002.seg.corrupt").exists());
    let (records, _) = read_all(&journal, journal.start());
    assert_eq!(values(&records), [1]);
    drop(fx.dir);
}
