//! A running total per (license, meter) for the current UTC month, for
//! `/usage`: what this replica has recorded since the month began or since
//! it started, whichever is later. Not persisted, and not what is billed
//! (the journal and the sinks are): a replica's own view, reset at the
//! month boundary and on restart.
//!
//! Recording adds to a total that exists with a hash, a shared lock and
//! one atomic add, as the window aggregates do; the month is checked
//! against two cached bounds, so the calendar is consulted once a month.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use hashbrown::HashTable;
use parking_lot::RwLock;
use time::OffsetDateTime;

/// Shards: as for the window aggregates.
const SHARDS: usize = 16;

/// (license, meter) pairs tracked at most; beyond, new pairs are not
/// shown by `/usage` (their usage is metered and exported as ever).
pub const MAX_TOTALS: usize = 100_000;

type Hasher = hashbrown::DefaultHashBuilder;

#[derive(Debug)]
struct Total {
    hash: u64,
    /// Start of the month counted (unix milliseconds).
    month_ms: u64,
    license: Box<str>,
    meter: Box<str>,
    value: AtomicU64,
}

/// The UTC month containing `unix_ms`: (start, end) in unix milliseconds.
pub fn month_bounds(unix_ms: u64) -> (u64, u64) {
    let at = OffsetDateTime::from_unix_timestamp((unix_ms / 1000) as i64)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let first = at
        .date()
        .replace_day(1)
        .expect("day 1 exists")
        .midnight()
        .assume_utc();
    let next = if first.month() == time::Month::December {
        first
            .replace_year(first.year() + 1)
            .and_then(|d| d.replace_month(time::Month::January))
    } else {
        first.replace_month(first.month().next())
    }
    .expect("the first of a month exists");
    let ms = |d: OffsetDateTime| (d.unix_timestamp() as u64) * 1000;
    (ms(first), ms(next))
}

#[derive(Debug)]
pub struct MonthTotals {
    shards: Box<[RwLock<HashTable<Total>>]>,
    hasher: Hasher,
    /// The month being counted, `[start, end)` in unix milliseconds.
    start_ms: AtomicU64,
    end_ms: AtomicU64,
    /// When counting began (unix milliseconds).
    started_ms: u64,
    len: AtomicUsize,
}

impl MonthTotals {
    pub fn new(now_ms: u64) -> MonthTotals {
        let (start, end) = month_bounds(now_ms);
        MonthTotals {
            shards: (0..SHARDS).map(|_| RwLock::new(HashTable::new())).collect(),
            hasher: Hasher::default(),
            start_ms: AtomicU64::new(start),
            end_ms: AtomicU64::new(end),
            started_ms: now_ms,
            len: AtomicUsize::new(0),
        }
    }

    /// The start of the month containing `now_ms`; the first call in a new
    /// month forgets the last one's totals.
    fn month(&self, now_ms: u64) -> u64 {
        let (start, end) = (
            self.start_ms.load(Ordering::Acquire),
            self.end_ms.load(Ordering::Acquire),
        );
        if (start..end).contains(&now_ms) {
            return start;
        }
        let (start, end) = month_bounds(now_ms);
        if now_ms >= self.end_ms.load(Ordering::Acquire) {
            self.start_ms.store(start, Ordering::Release);
            self.end_ms.store(end, Ordering::Release);
            for shard in self.shards.iter() {
                let mut table = shard.write();
                let before = table.len();
                table.retain(|total| total.month_ms >= start);
                self.len.fetch_sub(before - table.len(), Ordering::Relaxed);
            }
        }
        start
    }

    /// Add `value` to `license`'s total of `meter` this month.
    pub fn add(&self, now_ms: u64, license: &str, meter: &str, value: u64) {
        let month = self.month(now_ms);
        let hash = self.hasher.hash_one((month, license, meter));
        let shard = &self.shards[(hash >> 60) as usize % SHARDS];
        let is = |t: &Total| t.month_ms == month && *t.license == *license && *t.meter == *meter;
        {
            let table = shard.read();
            if let Some(total) = table.find(hash, is) {
                total.value.fetch_add(value, Ordering::Relaxed);
                return;
            }
        }
        let mut table = shard.write();
        if let Some(total) = table.find(hash, is) {
            total.value.fetch_add(value, Ordering::Relaxed);
            return;
        }
        if self.len.load(Ordering::Relaxed) >= MAX_TOTALS {
            return;
        }
        self.len.fetch_add(1, Ordering::Relaxed);
        table.insert_unique(
            hash,
            Total {
                hash,
                month_ms: month,
                license: license.into(),
                meter: meter.into(),
                value: AtomicU64::new(value),
            },
            |t| t.hash,
        );
    }

    /// `license`'s totals this month by meter name, and since when they
    /// count (unix milliseconds).
    pub fn of(&self, now_ms: u64, license: &str) -> (Vec<(String, u64)>, u64) {
        let month = self.month(now_ms);
        let mut totals: Vec<(String, u64)> = self
            .shards
            .iter()
            .flat_map(|shard| {
                let table = shard.read();
                table
                    .iter()
                    .filter(|t| t.month_ms == month && *t.license == *license)
                    .map(|t| (t.meter.to_string(), t.value.load(Ordering::Relaxed)))
                    .collect::<Vec<_>>()
            })
            .collect();
        totals.sort();
        (totals, month.max(self.started_ms))
    }

    /// Licenses with a total this month.
    pub fn licenses(&self, now_ms: u64) -> Vec<String> {
        let month = self.month(now_ms);
        let mut licenses: Vec<String> = self
            .shards
            .iter()
            .flat_map(|shard| {
                let table = shard.read();
                table
                    .iter()
                    .filter(|t| t.month_ms == month)
                    .map(|t| t.license.to_string())
                    .collect::<Vec<_>>()
            })
            .collect();
        licenses.sort();
        licenses.dedup();
        licenses
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-01-31T23:59:59Z and the next second.
    const LAST_SECOND_OF_JANUARY_MS: u64 = 1_769_903_999_000;
    const FEBRUARY_MS: u64 = 1_769_904_000_000;

    #[test]
    fn months_follow_the_calendar() {
        assert_eq!(
            month_bounds(LAST_SECOND_OF_JANUARY_MS),
            (1_767_225_600_000, FEBRUARY_MS)
        );
        assert_eq!(month_bounds(FEBRUARY_MS).0, FEBRUARY_MS);
        // December rolls into the next year.
        let december = 1_764_547_200_000; // 2025-12-01
        assert_eq!(month_bounds(december + 1), (december, 1_767_225_600_000));
    }

    #[test]
    fn totals_add_up_per_license_and_meter_and_reset_with_the_month() {
        let started = LAST_SECOND_OF_JANUARY_MS - 60_000;
        let totals = MonthTotals::new(started);
        for _ in 0..3 {
            totals.add(LAST_SECOND_OF_JANUARY_MS, "lic-a", "requests", 2);
        }
        totals.add(LAST_SECOND_OF_JANUARY_MS, "lic-a", "bytes", 100);
        totals.add(LAST_SECOND_OF_JANUARY_MS, "lic-b", "requests", 1);
        let (a, since) = totals.of(LAST_SECOND_OF_JANUARY_MS, "lic-a");
        assert_eq!(a, [("bytes".to_owned(), 100), ("requests".to_owned(), 6)]);
        // Counted since start, later than the month's beginning.
        assert_eq!(since, started);
        assert_eq!(
            totals.licenses(LAST_SECOND_OF_JANUARY_MS),
            ["lic-a", "lic-b"]
        );

        // February: January's totals are gone; counting restarts.
        assert_eq!(totals.of(FEBRUARY_MS, "lic-a"), (vec![], FEBRUARY_MS));
        totals.add(FEBRUARY_MS + 1, "lic-a", "requests", 5);
        assert_eq!(
            totals.of(FEBRUARY_MS + 2, "lic-a").0,
            [("requests".to_owned(), 5)]
        );
        assert_eq!(totals.licenses(FEBRUARY_MS), ["lic-a"]);
        assert_eq!(totals.len.load(Ordering::Relaxed), 1);
    }
}
