//! Rate limits with GCRA (the generic cell rate algorithm): one timestamp
//! per key, the "theoretical arrival time", updated with a compare-and-swap.
//! `amount` requests per `window` at a steady pace, up to `burst` at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;

use super::{entry_or_overflow, Hasher, Left, Limited, OVERFLOW_KEY};

#[derive(Debug)]
pub struct RateCounters {
    /// Key → theoretical arrival time (monotonic nanoseconds).
    tat: DashMap<Box<str>, AtomicU64, Hasher>,
    max_keys: usize,
}

impl RateCounters {
    pub fn new(max_keys: usize) -> RateCounters {
        RateCounters {
            tat: DashMap::with_hasher(Hasher::default()),
            max_keys,
        }
    }

    /// Count `cost` under `key`: what is left (requests that could pass at
    /// once now, and the time until the full burst is back), or the refusal.
    pub fn check(
        &self,
        key: &str,
        amount: u64,
        window: Duration,
        burst: u64,
        cost: u64,
        now: u64,
    ) -> Result<Left, Limited> {
        let window_nanos = window.as_nanos().min(u128::from(u64::MAX)) as u64;
        let limited = |retry: u64| Limited {
            retry_after: Duration::from_nanos(retry),
            limit: amount,
            remaining: 0,
            window: Some(window),
        };
        if amount == 0 || cost > burst {
            return Err(limited(window_nanos));
        }
        let emission = (window_nanos / amount).max(1);
        let tolerance = emission.saturating_mul(burst);
        let increment = emission.saturating_mul(cost);
        let entry = entry_or_overflow(&self.tat, key, self.max_keys);
        let mut tat = entry.load(Ordering::Acquire);
        loop {
            let next = tat.max(now).saturating_add(increment);
            let allow_at = next.saturating_sub(tolerance);
            if allow_at > now {
                return Err(limited(allow_at - now));
            }
            match entry.compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    return Ok(Left {
                        remaining: now.saturating_add(tolerance).saturating_sub(next) / emission,
                        reset: Duration::from_nanos(next - now),
                        window,
                    })
                }
                Err(current) => tat = current,
            }
        }
    }

    /// Undo one counted request (a later limit refused it).
    pub fn refund(&self, key: &str, amount: u64, window: Duration, cost: u64) {
        if amount == 0 {
            return;
        }
        let emission = (window.as_nanos().min(u128::from(u64::MAX)) as u64 / amount).max(1);
        // A key that was never stored was counted on the overflow key.
        if let Some(entry) = self.tat.get(key).or_else(|| self.tat.get(OVERFLOW_KEY)) {
            let _ = entry.fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| {
                Some(tat.saturating_sub(emission.saturating_mul(cost)))
            });
        }
    }

    /// How far ahead of `now` each key `wanted` accepts has run (its
    /// theoretical arrival time minus now; zero when its burst is whole),
    /// without counting (`/usage`).
    pub fn peek(&self, now: u64, mut wanted: impl FnMut(&str) -> bool) -> Vec<(String, Duration)> {
        self.tat
            .iter()
            .filter(|entry| wanted(entry.key()))
            .map(|entry| {
                let ahead = entry.value().load(Ordering::Acquire).saturating_sub(now);
                (entry.key().to_string(), Duration::from_nanos(ahead))
            })
            .collect()
    }

    /// A key whose arrival time has passed is as good as new: drop it.
    pub fn sweep(&self, now: u64) -> usize {
        self.tat.retain(|_, tat| tat.load(Ordering::Acquire) > now);
        self.tat.len()
    }
}
