//! Concurrency: requests in flight per key. A [`Permit`] travels with the
//! response body and frees its slot when the response has been sent (or the
//! client went away).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;

use super::{entry_or_overflow, Checked, Hasher, Limited};

#[derive(Debug)]
pub struct ConcurrencyCounters {
    map: DashMap<Box<str>, Arc<AtomicU64>, Hasher>,
    max_keys: usize,
}

/// One slot in flight; freed on drop.
#[derive(Debug)]
pub struct Permit(Arc<AtomicU64>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ConcurrencyCounters {
    pub fn new(max_keys: usize) -> ConcurrencyCounters {
        ConcurrencyCounters {
            map: DashMap::with_hasher(Hasher::default()),
            max_keys,
        }
    }

    pub fn acquire(&self, key: &str, limit: u64) -> Checked {
        let slot = Arc::clone(&entry_or_overflow(&self.map, key, self.max_keys));
        let before = slot.fetch_add(1, Ordering::AcqRel);
        if before >= limit {
            slot.fetch_sub(1, Ordering::AcqRel);
            return Checked::Limited(Limited {
                // Slots free as responses finish; there is no schedule.
                retry_after: Duration::from_secs(1),
                limit,
                remaining: 0,
                window: None,
            });
        }
        Checked::Held(Permit(slot))
    }

    pub fn sweep(&self) -> usize {
        self.map
            .retain(|_, slot| slot.load(Ordering::Acquire) > 0 || Arc::strong_count(slot) > 1);
        self.map.len()
    }

    pub fn usage(&self) -> Vec<(String, u64)> {
        self.peek(|_| true)
    }

    /// Requests in flight under each key `wanted` accepts.
    pub fn peek(&self, mut wanted: impl FnMut(&str) -> bool) -> Vec<(String, u64)> {
        self.map
            .iter()
            .filter(|e| wanted(e.key()))
            .map(|e| (e.key().to_string(), e.value().load(Ordering::Acquire)))
            .collect()
    }
}
