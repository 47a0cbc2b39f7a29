//! Quotas: units counted per calendar period (UTC hour, day, month) or per
//! rolling window. A rolling window is counted as two fixed windows, the
//! previous one weighted by how much of it still overlaps (the sliding
//! window estimate): constant memory per key, exact at window edges and
//! never below the true count by more than the previous window's share.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use parking_lot::Mutex;
use time::OffsetDateTime;

use super::{entry_or_overflow, Hasher, Left, Limited, OVERFLOW_KEY};
use crate::policy::Period;

const NANOS: u64 = 1_000_000_000;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuotaState {
    /// Start of the counted window (unix seconds).
    pub window_start: u64,
    pub used: u64,
    /// Rolling windows: the count of the window before.
    pub previous: u64,
}

/// One key's count. Shared (an `Arc`) so that a served-counted request's
/// [`Ticket`](super::Ticket) gives its units back to the very slot it took
/// them from, without a key (a `String`) on the decision path.
pub type QuotaSlot = Arc<Mutex<QuotaState>>;

#[derive(Debug)]
pub struct QuotaCounters {
    map: DashMap<Box<str>, QuotaSlot, Hasher>,
    max_keys: usize,
}

/// What a served-counted quota charge took: the slot, the window (start and
/// length, seconds) and the units, to give back if the request is not served.
#[derive(Debug)]
pub struct QuotaHold {
    pub slot: QuotaSlot,
    pub window_start: u64,
    pub length: u64,
    pub rolling: bool,
    pub units: u64,
}

impl QuotaHold {
    /// Give the units back: to the window they were counted in, or, for a
    /// rolling quota that has moved on by one window since, to the previous
    /// window's count it now carries. Older windows count no more.
    pub fn give_back(&self) {
        let mut state = self.slot.lock();
        if state.window_start == self.window_start {
            state.used = state.used.saturating_sub(self.units);
        } else if self.rolling && state.window_start == self.window_start + self.length {
            state.previous = state.previous.saturating_sub(self.units);
        }
    }
}

/// The window containing `now` (unix seconds): (start, length in seconds).
pub fn window(period: Period, now: u64) -> (u64, u64) {
    match period {
        Period::Hour => (now - now % 3600, 3600),
        Period::Day => (now - now % 86_400, 86_400),
        Period::Rolling(w) => {
            let w = w.as_secs().max(1);
            (now - now % w, w)
        }
        Period::Month => {
            let at = OffsetDateTime::from_unix_timestamp(now as i64)
                .unwrap_or(OffsetDateTime::UNIX_EPOCH);
            let first = at
                .date()
                .replace_day(1)
                .expect("day 1 exists")
                .midnight()
                .assume_utc();
            let (year, month) = (first.year(), first.month());
            let next = if month == time::Month::December {
                first
                    .replace_year(year + 1)
                    .and_then(|d| d.replace_month(time::Month::January))
            } else {
                first.replace_month(month.next())
            }
            .expect("the first of a month exists");
            let start = first.unix_timestamp() as u64;
            (start, next.unix_timestamp() as u64 - start)
        }
    }
}

impl QuotaState {
    /// Bring the state to the window containing `now`.
    fn roll(&mut self, period: Period, start: u64, length: u64) {
        if self.window_start == start {
            return;
        }
        let adjacent = self.window_start + length == start;
        self.previous = if matches!(period, Period::Rolling(_)) && adjacent {
            self.used
        } else {
            0
        };
        self.used = 0;
        self.window_start = start;
    }

    /// Units counted against the limit at `now_nanos`.
    fn estimate(&self, period: Period, length: u64, now_nanos: u64) -> u64 {
        match period {
            Period::Rolling(_) if self.previous > 0 => {
                let elapsed = now_nanos.saturating_sub(self.window_start * NANOS);
                let window = length * NANOS;
                let overlap = window.saturating_sub(elapsed);
                let carried =
                    (u128::from(self.previous) * u128::from(overlap)).div_ceil(u128::from(window));
                self.used + carried as u64
            }
            _ => self.used,
        }
    }
}

impl QuotaState {
    /// Rolling windows: how long until `cost` more units fit under the
    /// sliding estimate, as the previous window's share decays (and, if the
    /// current window alone is too full, once it has become the previous).
    fn rolling_wait(&self, amount: u64, cost: u64, length: u64, now_nanos: u64) -> u64 {
        let window = u128::from(length * NANOS);
        let elapsed = u128::from(now_nanos.saturating_sub(self.window_start * NANOS)).min(window);
        let to_edge = window - elapsed;
        // The time t (from now) at which ceil(share * (W - e - t) / W) <= room.
        let decay = |share: u64, room: u64, from_elapsed: u128| -> u128 {
            if share == 0 {
                return 0;
            }
            let allowed = u128::from(room) * window / u128::from(share);
            (window - from_elapsed).saturating_sub(allowed)
        };
        let wait = if self.used.saturating_add(cost) <= amount {
            decay(self.previous, amount - self.used - cost, elapsed)
        } else if cost > amount {
            window
        } else {
            to_edge + decay(self.used, amount - cost, 0)
        };
        // A millisecond of margin for the estimate's rounding up.
        (wait + 1_000_000).min(u128::from(u64::MAX)) as u64
    }
}

impl QuotaCounters {
    pub fn new(max_keys: usize) -> QuotaCounters {
        QuotaCounters {
            map: DashMap::with_hasher(Hasher::default()),
            max_keys,
        }
    }

    /// Count `cost` units under `key`: what is left (the reset is the end of
    /// the current window; for a rolling one the previous window may still
    /// weigh then), or the refusal.
    pub fn check(
        &self,
        key: &str,
        amount: u64,
        period: Period,
        cost: u64,
        now_nanos: u64,
    ) -> Result<Left, Limited> {
        self.count(key, amount, period, cost, now_nanos, false)
            .map(|(left, _)| left)
    }

    /// [`QuotaCounters::check`], holding what was counted so that it can be
    /// given back (`count: served`).
    pub fn check_held(
        &self,
        key: &str,
        amount: u64,
        period: Period,
        cost: u64,
        now_nanos: u64,
    ) -> Result<(Left, QuotaHold), Limited> {
        self.count(key, amount, period, cost, now_nanos, true)
            .map(|(left, hold)| (left, hold.expect("asked for")))
    }

    fn count(
        &self,
        key: &str,
        amount: u64,
        period: Period,
        cost: u64,
        now_nanos: u64,
        hold: bool,
    ) -> Result<(Left, Option<QuotaHold>), Limited> {
        let now = now_nanos / NANOS;
        let (start, length) = window(period, now);
        let entry = entry_or_overflow(&self.map, key, self.max_keys);
        let mut state = entry.lock();
        state.roll(period, start, length);
        let used = state.estimate(period, length, now_nanos);
        let end = (start + length) * NANOS;
        if used.saturating_add(cost) > amount {
            let wait = match period {
                Period::Rolling(_) => state.rolling_wait(amount, cost, length, now_nanos),
                _ => end.saturating_sub(now_nanos),
            };
            return Err(Limited {
                retry_after: Duration::from_nanos(wait),
                limit: amount,
                remaining: amount.saturating_sub(used),
                window: Some(Duration::from_secs(length)),
            });
        }
        state.used += cost;
        drop(state);
        let left = Left {
            remaining: amount - used - cost,
            reset: Duration::from_nanos(end.saturating_sub(now_nanos)),
            window: Duration::from_secs(length),
        };
        let hold = hold.then(|| QuotaHold {
            slot: Arc::clone(&entry),
            window_start: start,
            length,
            rolling: matches!(period, Period::Rolling(_)),
            units: cost,
        });
        Ok((left, hold))
    }

    pub fn refund(&self, key: &str, period: Period, cost: u64, now_nanos: u64) {
        let (start, _) = window(period, now_nanos / NANOS);
        // A key that was never stored was counted on the overflow key.
        if let Some(entry) = self.map.get(key).or_else(|| self.map.get(OVERFLOW_KEY)) {
            let mut state = entry.lock();
            if state.window_start == start {
                state.used = state.used.saturating_sub(cost);
            }
        }
    }

    /// Drop keys whose counts have expired.
    pub fn sweep(&self, period: Period, now_nanos: u64) -> usize {
        let (start, length) = window(period, now_nanos / NANOS);
        self.map.retain(|_, state| {
            let state = state.lock();
            state.window_start == start || state.window_start + length == start && state.used > 0
        });
        self.map.len()
    }

    pub fn usage(&self, period: Period, now_nanos: u64) -> Vec<(String, u64)> {
        let (start, length) = window(period, now_nanos / NANOS);
        self.map
            .iter()
            .map(|entry| {
                let mut state = *entry.value().lock();
                state.roll(period, start, length);
                (
                    entry.key().to_string(),
                    state.estimate(period, length, now_nanos),
                )
            })
            .collect()
    }

    /// Units counted in the window containing `now_nanos` under each key
    /// `wanted` accepts, without counting (`/usage`): one pass over the
    /// keys, whatever `wanted` asks for.
    pub fn peek(
        &self,
        period: Period,
        now_nanos: u64,
        mut wanted: impl FnMut(&str) -> bool,
    ) -> Vec<(String, u64)> {
        let (start, length) = window(period, now_nanos / NANOS);
        self.map
            .iter()
            .filter(|entry| wanted(entry.key()))
            .map(|entry| {
                let mut state = *entry.value().lock();
                state.roll(period, start, length);
                (
                    entry.key().to_string(),
                    state.estimate(period, length, now_nanos),
                )
            })
            .collect()
    }

    /// Every key's state (for the state file).
    pub fn snapshot(&self) -> Vec<(String, QuotaState)> {
        self.map
            .iter()
            .map(|entry| {
                let state = *entry.value().lock();
                (entry.key().to_string(), state)
            })
            .filter(|(_, state)| state.used > 0 || state.previous > 0)
            .collect()
    }

    /// Restore a key's state, keeping whichever count is higher if the key
    /// has been counted since start (never forget units already used).
    pub fn restore(&self, key: &str, restored: QuotaState) {
        let entry = self.map.entry(key.into()).or_default();
        let mut state = entry.lock();
        if state.window_start < restored.window_start
            || state.window_start == restored.window_start && state.used < restored.used
        {
            *state = restored;
        }
    }
}
