//! The outage ledger: quota units a replica counted locally while the shared
//! store was away, so they can be merged into the store once it is back.
//!
//! Without it every outage under-counts quotas: Redis resumes from what it
//! held before, and what the replicas served meanwhile is forgotten. Only
//! quotas are recorded. Rates are instantaneous: a rate's state is one
//! arrival time that catches up with the clock within a window, so what was
//! served during an outage weighs nothing once it is over (replaying it
//! would only hold back the requests after it). Seats are re-announced by
//! their holders' next request. Neither has anything to merge.
//!
//! Each drain starts a new *epoch*: what is recorded after it (a request
//! that was already counting locally when the store came back) goes into
//! the next drain, under its own epoch. The store marks each merged entry
//! with (this replica, epoch, limit, key, window) in the same script call,
//! so a merge retried after a timeout is never counted twice.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use super::quota::window;
use crate::policy::Period;

/// Entries one ledger holds at most (each a limit, key and window): bounded
/// memory however many keys an outage sees; beyond, units are not recorded
/// (the store under-counts them, as it did before there was a ledger).
pub const MAX_ENTRIES: usize = 100_000;

/// One quota window of one key, as the shared store keys it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WindowKey {
    /// The request's hash tag in the store (the license id).
    pub tag: Box<str>,
    pub limit: Arc<str>,
    pub key: Box<str>,
    /// Start of the window (unix seconds).
    pub start: u64,
}

impl WindowKey {
    /// The window of `period` containing `now` (unix seconds).
    pub(crate) fn new(
        tag: &str,
        limit: &Arc<str>,
        key: &str,
        period: Period,
        now: u64,
    ) -> WindowKey {
        WindowKey {
            tag: tag.into(),
            limit: Arc::clone(limit),
            key: key.into(),
            start: window(period, now).0,
        }
    }
}

/// Units recorded and not yet confirmed merged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unmerged {
    pub epoch: u64,
    pub window: WindowKey,
    pub period: Period,
    pub units: u64,
}

#[derive(Debug, Default)]
struct Inner {
    epoch: u64,
    /// This epoch's entries: units net of give-backs.
    entries: HashMap<WindowKey, (Period, u64)>,
    /// Drained in an earlier epoch, merge not confirmed (the store failed
    /// again): retried with their own epoch.
    pending: Vec<Unmerged>,
    /// Units not recorded because the ledger was full.
    dropped: u64,
}

#[derive(Debug, Default)]
pub struct OutageLedger {
    inner: Mutex<Inner>,
}

impl OutageLedger {
    /// `units` of the quota `limit` counted locally under `key` at `now`
    /// (unix seconds). Returns false when the ledger is full.
    pub fn record(
        &self,
        tag: &str,
        limit: &Arc<str>,
        key: &str,
        period: Period,
        now: u64,
        units: u64,
    ) -> bool {
        let at = WindowKey::new(tag, limit, key, period, now);
        let mut inner = self.inner.lock();
        let full = inner.entries.len() >= MAX_ENTRIES;
        match inner.entries.get_mut(&at) {
            Some((_, recorded)) => *recorded += units,
            None if full => {
                inner.dropped += units;
                return false;
            }
            None => {
                inner.entries.insert(at, (period, units));
            }
        }
        true
    }

    /// A later limit refused the request: what [`OutageLedger::record`]
    /// recorded for it was not served. (Drained in between, it stays
    /// merged: counted once too often rather than missed.)
    pub fn give_back(
        &self,
        tag: &str,
        limit: &Arc<str>,
        key: &str,
        period: Period,
        now: u64,
        units: u64,
    ) {
        let at = WindowKey::new(tag, limit, key, period, now);
        let mut inner = self.inner.lock();
        if let Some((_, recorded)) = inner.entries.get_mut(&at) {
            *recorded = recorded.saturating_sub(units);
            if *recorded == 0 {
                inner.entries.remove(&at);
            }
        }
    }

    /// Everything to merge now: this epoch's entries (a new epoch starts)
    /// and any whose merge failed before.
    pub fn drain(&self) -> Vec<Unmerged> {
        let mut inner = self.inner.lock();
        let epoch = inner.epoch;
        inner.epoch += 1;
        let mut out = std::mem::take(&mut inner.pending);
        out.extend(
            inner
                .entries
                .drain()
                .map(|(window, (period, units))| Unmerged {
                    epoch,
                    window,
                    period,
                    units,
                }),
        );
        if inner.dropped > 0 {
            tracing::warn!(
                units = inner.dropped,
                "the outage ledger was full: {} quota units counted locally are not merged",
                inner.dropped
            );
            inner.dropped = 0;
        }
        out
    }

    /// Entries whose merge was not confirmed: retried on the next drain,
    /// with the same epoch (a merge that did land is not repeated).
    pub fn restore(&self, unmerged: impl IntoIterator<Item = Unmerged>) {
        self.inner.lock().pending.extend(unmerged);
    }

    /// Whether anything waits to be merged.
    pub fn is_empty(&self) -> bool {
        let inner = self.inner.lock();
        inner.entries.is_empty() && inner.pending.is_empty()
    }
}
