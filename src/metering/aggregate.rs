//! Usage summed in memory per (license, meter, route, window start) until
//! the flusher journals it.
//!
//! The table is sharded by key hash; each shard a `RwLock<HashTable>`
//! looked up with the caller's borrowed strings, so recording into an
//! aggregate that exists is a hash, a shared lock and one atomic add: no
//! allocation, no owned key. The add happens while the shard's read lock
//! is held and the flusher removes aggregates under the write lock, so an
//! add lands either in an aggregate the flusher has not drained yet or in a
//! new one it drains next time: never in one already journalled.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

use hashbrown::HashTable;
use parking_lot::RwLock;

use super::record::UsageBody;
use super::Usage;

/// Shards: enough that cores recording different keys rarely share a lock.
const SHARDS: usize = 64;

type Hasher = hashbrown::DefaultHashBuilder;

/// One (license, meter, route, window) and its running sum.
#[derive(Debug)]
struct Aggregate {
    hash: u64,
    window_start_ms: u64,
    license: Box<str>,
    meter: Box<str>,
    route: Box<str>,
    /// Remembered from the first usage of the window: a license's customer
    /// and plan do not change within a window in practice, and a change is
    /// picked up at the next one.
    customer: Option<Box<str>>,
    plan: Box<str>,
    value: AtomicU64,
}

impl Aggregate {
    fn is(&self, window_start_ms: u64, usage: &Usage<'_>) -> bool {
        self.window_start_ms == window_start_ms
            && *self.license == *usage.license
            && *self.meter == *usage.meter
            && *self.route == *usage.route
    }
}

#[derive(Debug)]
pub struct Aggregates {
    shards: Box<[RwLock<HashTable<Aggregate>>]>,
    hasher: Hasher,
}

impl Default for Aggregates {
    fn default() -> Self {
        Aggregates {
            shards: (0..SHARDS).map(|_| RwLock::new(HashTable::new())).collect(),
            hasher: Hasher::default(),
        }
    }
}

impl Aggregates {
    fn hash(&self, window_start_ms: u64, license: &str, meter: &str, route: &str) -> u64 {
        self.hasher
            .hash_one((window_start_ms, license, meter, route))
    }

    fn shard(&self, hash: u64) -> &RwLock<HashTable<Aggregate>> {
        // The top bits: the table itself uses the low ones.
        &self.shards[(hash >> 58) as usize % SHARDS]
    }

    /// Add `usage.value` to its aggregate in the window starting at
    /// `window_start_ms`.
    pub fn add(&self, window_start_ms: u64, usage: &Usage<'_>) {
        let hash = self.hash(window_start_ms, usage.license, usage.meter, usage.route);
        let shard = self.shard(hash);
        {
            let table = shard.read();
            if let Some(aggregate) = table.find(hash, |a| a.is(window_start_ms, usage)) {
                aggregate.value.fetch_add(usage.value, Ordering::Relaxed);
                return;
            }
        }
        let mut table = shard.write();
        // Another thread may have added it between the two locks.
        if let Some(aggregate) = table.find(hash, |a| a.is(window_start_ms, usage)) {
            aggregate.value.fetch_add(usage.value, Ordering::Relaxed);
            return;
        }
        table.insert_unique(
            hash,
            Aggregate {
                hash,
                window_start_ms,
                license: usage.license.into(),
                meter: usage.meter.into(),
                route: usage.route.into(),
                customer: usage.customer.map(Into::into),
                plan: usage.plan.into(),
                value: AtomicU64::new(usage.value),
            },
            |a| a.hash,
        );
    }

    /// Remove the aggregates of windows that started before `before` (all
    /// of them for `None`) and return them as usage records, each window
    /// ending at its nominal end or `now_ms`, whichever is earlier.
    pub fn drain(&self, before: Option<u64>, window_ms: u64, now_ms: u64) -> Vec<UsageBody> {
        let mut drained = Vec::new();
        for shard in self.shards.iter() {
            let mut table = shard.write();
            if table.is_empty() {
                continue;
            }
            let closed =
                table.extract_if(|a| before.is_none_or(|before| a.window_start_ms < before));
            for aggregate in closed {
                let value = aggregate.value.into_inner();
                if value == 0 {
                    continue;
                }
                let end = aggregate
                    .window_start_ms
                    .saturating_add(window_ms)
                    .min(now_ms.max(aggregate.window_start_ms));
                drained.push(UsageBody {
                    license: aggregate.license.into(),
                    customer: aggregate.customer.map(Into::into),
                    plan: aggregate.plan.into(),
                    route: aggregate.route.into(),
                    meter: aggregate.meter.into(),
                    value,
                    window_start_ms: aggregate.window_start_ms,
                    window_end_ms: end,
                });
            }
        }
        // A stable order: journal records in window, then key order.
        drained.sort_unstable_by(|a, b| {
            (a.window_start_ms, &a.license, &a.meter, &a.route).cmp(&(
                b.window_start_ms,
                &b.license,
                &b.meter,
                &b.route,
            ))
        });
        drained
    }

    /// Aggregates held (for tests and sizing).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage<'a>(license: &'a str, route: &'a str, value: u64) -> Usage<'a> {
        Usage {
            license,
            customer: Some("acme"),
            plan: "pro",
            route,
            meter: "requests",
            value,
        }
    }

    #[test]
    fn sums_per_key_and_window_and_drains_closed_windows_only() {
        let table = Aggregates::default();
        for _ in 0..3 {
            table.add(0, &usage("a", "r1", 2));
        }
        table.add(0, &usage("a", "r2", 5));
        table.add(0, &usage("b", "r1", 7));
        table.add(1000, &usage("a", "r1", 11));
        assert_eq!(table.len(), 4);

        let closed = table.drain(Some(1000), 1000, 1500);
        let summary: Vec<_> = closed
            .iter()
            .map(|u| {
                (
                    u.license.as_str(),
                    u.route.as_str(),
                    u.value,
                    u.window_end_ms,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("a", "r1", 6, 1000),
                ("a", "r2", 5, 1000),
                ("b", "r1", 7, 1000)
            ]
        );
        assert_eq!(closed[0].customer.as_deref(), Some("acme"));
        assert_eq!(table.len(), 1);
        // The open window, drained early (shutdown), ends now.
        let open = table.drain(None, 1000, 1500);
        assert_eq!(open.len(), 1);
        assert_eq!((open[0].value, open[0].window_end_ms), (11, 1500));
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn concurrent_adds_racing_drains_lose_nothing() {
        let table = std::sync::Arc::new(Aggregates::default());
        let threads = 4;
        let per_thread = 20_000u64;
        let adders: Vec<_> = (0..threads)
            .map(|t| {
                let table = table.clone();
                std::thread::spawn(move || {
                    let route = format!("r{}", t % 2);
                    for i in 0..per_thread {
                        // Windows move on while the drainer runs.
                        table.add(i / 1000, &usage("a", &route, 1));
                    }
                })
            })
            .collect();
        let mut total = 0;
        while adders.iter().any(|a| !a.is_finished()) {
            total += table
                .drain(None, 1, u64::MAX)
                .iter()
                .map(|u| u.value)
                .sum::<u64>();
        }
        for adder in adders {
            adder.join().unwrap();
        }
        total += table
            .drain(None, 1, u64::MAX)
            .iter()
            .map(|u| u.value)
            .sum::<u64>();
        assert_eq!(total, threads * per_thread);
    }
}
