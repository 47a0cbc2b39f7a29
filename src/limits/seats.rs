//! Seats: distinct identities (per license, or whatever the key is) seen
//! within an idle window. A known identity always passes and refreshes its
//! seat; a new one passes only while a seat is free. Tables hold at most the
//! seat count (idle holders are pruned before a new one is refused), so an
//! attacker inventing identities cannot grow them.

use std::time::Duration;

use dashmap::DashMap;
use parking_lot::Mutex;

use super::{entry_or_overflow, Hasher, Limited};

#[derive(Debug, Default)]
struct SeatTable {
    /// Identity → last request (monotonic nanoseconds).
    holders: hashbrown::HashMap<Box<str>, u64>,
}

#[derive(Debug)]
pub struct SeatCounters {
    map: DashMap<Box<str>, Mutex<SeatTable>, Hasher>,
    max_keys: usize,
}

impl SeatCounters {
    pub fn new(max_keys: usize) -> SeatCounters {
        SeatCounters {
            map: DashMap::with_hasher(Hasher::default()),
            max_keys,
        }
    }

    pub fn check(
        &self,
        key: &str,
        identity: &str,
        seats: u64,
        idle: Duration,
        now: u64,
    ) -> Result<(), Limited> {
        let idle_nanos = idle.as_nanos().min(u128::from(u64::MAX)) as u64;
        let entry = entry_or_overflow(&self.map, key, self.max_keys);
        let mut table = entry.lock();
        let active = |last: u64| now.saturating_sub(last) < idle_nanos;
        if let Some(last) = table.holders.get_mut(identity) {
            if active(*last) {
                *last = now;
                return Ok(());
            }
        }
        table.holders.retain(|_, last| active(*last));
        if (table.holders.len() as u64) < seats {
            table.holders.insert(identity.into(), now);
            return Ok(());
        }
        let oldest = table.holders.values().copied().min().unwrap_or(now);
        Err(Limited {
            retry_after: Duration::from_nanos((oldest + idle_nanos).saturating_sub(now)),
            limit: seats,
            remaining: 0,
            window: Some(idle),
        })
    }

    pub fn sweep(&self, idle: Duration, now: u64) -> usize {
        let idle_nanos = idle.as_nanos().min(u128::from(u64::MAX)) as u64;
        self.map.retain(|_, table| {
            let table = table.get_mut();
            table
                .holders
                .retain(|_, last| now.saturating_sub(*last) < idle_nanos);
            !table.holders.is_empty()
        });
        self.map.len()
    }

    /// Active identities per key.
    pub fn usage(&self, idle: Duration, now: u64) -> Vec<(String, u64)> {
        self.peek(idle, now, |_| true)
    }

    /// Active identities under each key `wanted` accepts.
    pub fn peek(
        &self,
        idle: Duration,
        now: u64,
        mut wanted: impl FnMut(&str) -> bool,
    ) -> Vec<(String, u64)> {
        let idle_nanos = idle.as_nanos().min(u128::from(u64::MAX)) as u64;
        self.map
            .iter()
            .filter(|entry| wanted(entry.key()))
            .map(|entry| {
                let table = entry.value().lock();
                let active = table
                    .holders
                    .values()
                    .filter(|last| now.saturating_sub(**last) < idle_nanos)
                    .count();
                (entry.key().to_string(), active as u64)
            })
            .collect()
    }
}
