//! Quota thresholds: a license's usage crossing 80 % or 100 % (a quota's
//! `thresholds`) of its quota is news the billing system wants once — one
//! notification per threshold, per period, per key.
//!
//! A crossing is read from the count itself: the request that moved the
//! count from below `p %` of the limit to at least `p %` crossed `p`. Counts
//! can go down again (a refund of an unserved request) and be crossed a
//! second time, and several replicas can each see a crossing of the shared
//! count (leased slices): the [`ThresholdLedger`] remembers which crossings
//! were already announced on this replica, and with a shared store a marker
//! in the store decides across replicas (see `SharedStore::claim_threshold`).

use std::sync::Arc;

use dashmap::DashMap;

use super::Hasher;

/// The thresholds (percent of the limit) a count moving from `before` to
/// `after` units of `limit` crossed, lowest first.
pub fn crossed(
    thresholds: &[u16],
    limit: u64,
    before: u64,
    after: u64,
) -> impl Iterator<Item = u16> + '_ {
    // p % of the limit is reached when used × 100 ≥ p × limit (u128: no
    // overflow for any u64 count).
    let reached = move |used: u64, percent: u16| {
        u128::from(used) * 100 >= u128::from(percent) * u128::from(limit)
    };
    thresholds
        .iter()
        .copied()
        .filter(move |&p| limit > 0 && !reached(before, p) && reached(after, p))
}

/// A quota count that crossed a threshold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Crossing {
    /// The quota's name.
    pub limit: Arc<str>,
    /// The counter key (the license id for quotas keyed by `license`).
    pub key: String,
    pub threshold_percent: u16,
    /// Start of the quota window (unix seconds), and its length.
    pub window_start: u64,
    pub window_seconds: u64,
    /// Units used after the crossing request, and the limit.
    pub used: u64,
    pub limit_amount: u64,
}

impl Crossing {
    /// Unix seconds at which the crossing stops mattering: the end of its
    /// window.
    pub fn expires_at(&self) -> u64 {
        self.window_start.saturating_add(self.window_seconds)
    }
}

/// One crossing: limit, key, window start, threshold.
type CrossingId = (Arc<str>, Box<str>, u64, u16);

/// Crossings announced by this replica, until their window ends.
#[derive(Debug, Default)]
pub struct ThresholdLedger {
    /// Crossing → the end of its window (unix seconds).
    announced: DashMap<CrossingId, u64, Hasher>,
}

impl ThresholdLedger {
    /// Whether `crossing` is the first of its kind (limit, key, window,
    /// threshold) on this replica; it is remembered either way.
    pub fn first(&self, crossing: &Crossing) -> bool {
        let id = (
            Arc::clone(&crossing.limit),
            Box::from(crossing.key.as_str()),
            crossing.window_start,
            crossing.threshold_percent,
        );
        let mut first = false;
        self.announced.entry(id).or_insert_with(|| {
            first = true;
            crossing.expires_at()
        });
        first
    }

    /// Forget crossings whose window ended before `now` (unix seconds).
    pub fn sweep(&self, now: u64) {
        self.announced.retain(|_, expires| *expires > now);
    }

    pub fn len(&self) -> usize {
        self.announced.len()
    }

    pub fn is_empty(&self) -> bool {
        self.announced.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(thresholds: &[u16], limit: u64, before: u64, after: u64) -> Vec<u16> {
        crossed(thresholds, limit, before, after).collect()
    }

    #[test]
    fn a_threshold_is_crossed_by_the_request_that_reaches_it() {
        let t = [80, 100];
        assert_eq!(all(&t, 10, 7, 8), [80]);
        assert_eq!(all(&t, 10, 8, 9), [] as [u16; 0]);
        assert_eq!(all(&t, 10, 9, 10), [100]);
        // One expensive request can cross both.
        assert_eq!(all(&t, 10, 0, 10), [80, 100]);
        // Not reached: 79.9 % is below 80 %.
        assert_eq!(all(&t, 1000, 0, 799), [] as [u16; 0]);
        assert_eq!(all(&t, 1000, 799, 800), [80]);
        // Overage past 100 % crosses a 125 % threshold.
        assert_eq!(all(&[100, 125], 100, 120, 125), [125]);
        // A limit of 0 has no thresholds to cross.
        assert_eq!(all(&t, 0, 0, 1), [] as [u16; 0]);
        // Huge counts do not overflow.
        assert_eq!(all(&t, u64::MAX, 0, u64::MAX), [80, 100]);
    }

    #[test]
    fn the_ledger_announces_each_crossing_once_per_window() {
        let ledger = ThresholdLedger::default();
        let crossing = Crossing {
            limit: "monthly".into(),
            key: "lic-1".into(),
            threshold_percent: 80,
            window_start: 1_000,
            window_seconds: 100,
            used: 8,
            limit_amount: 10,
        };
        assert!(ledger.first(&crossing));
        assert!(!ledger.first(&crossing), "crossed again after a refund");
        let other_key = Crossing {
            key: "lic-2".into(),
            ..crossing.clone()
        };
        assert!(ledger.first(&other_key));
        let next_window = Crossing {
            window_start: 1_100,
            ..crossing.clone()
        };
        assert!(ledger.first(&next_window));
        // The first window's entries go when it ends; the next one's stay.
        ledger.sweep(1_100);
        assert_eq!(ledger.len(), 1);
        assert!(!ledger.first(&next_window));
    }
}
