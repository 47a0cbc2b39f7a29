//! Live counters behind the policy's limits: rates (GCRA), quotas per
//! calendar period or rolling window, seats (distinct identities active
//! within an idle window) and concurrency (requests in flight).
//!
//! Definitions are data ([`crate::policy::LimitDef`]); counters are found by
//! limit *name*, so a policy reload that keeps a limit keeps its counts.
//! Counters never block: a check is a map lookup and an atomic update (a
//! short mutex for quotas and seats).
//!
//! A quota that counts served requests (`count: served`, the default) takes
//! its units when the request is decided and hands out a [`Ticket`] that
//! gives them back if the response turns out not to be served (see
//! `ticket.rs`).

mod budget;
mod clock;
mod concurrency;
pub mod instances;
mod limiter;
mod metrics;
mod outage;
pub mod persist;
mod quota;
mod rate;
mod seats;
mod settings;
pub mod shared;
mod threshold;
mod ticket;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

pub use budget::{Budget, Budgets, Left, MAX_BUDGETS};
pub use clock::Clock;
pub use concurrency::Permit;
pub use limiter::{Charge, Held, Limiter, OverageUse, Refusal};
pub use metrics::{LimitMetrics, RefundMetrics, StoreMetrics};
pub use outage::{OutageLedger, Unmerged, WindowKey};
pub use quota::window as quota_window;
pub use quota::QuotaHold;
pub use settings::{StoreMode, StoreNodes, StoreSettings, DEFAULT_HEARTBEAT};
pub use threshold::{crossed, Crossing, ThresholdLedger};
pub use ticket::{SharedTicket, Ticket, Tickets, Unserved};

use crate::policy::{Count, LimitDef, LimitKind};
use concurrency::ConcurrencyCounters;
use parking_lot::Mutex;
use quota::QuotaCounters;
use rate::RateCounters;
use seats::SeatCounters;

/// A limit said no.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limited {
    /// The earliest time the same request could pass.
    pub retry_after: Duration,
    /// The limit that applied (requests, units, seats or requests in flight).
    pub limit: u64,
    /// What is left now (0 unless the request's cost exceeds it).
    pub remaining: u64,
    /// The window the limit counts over, for `RateLimit-Policy` (`w`).
    pub window: Option<Duration>,
}

/// What a check gave.
#[derive(Debug)]
pub enum Checked {
    /// Counted; for rates and quotas, what is left.
    Allowed(Option<Left>),
    /// A concurrency slot, held until the response is sent.
    Held(Permit),
    /// Counted by a served-counted quota (`count: served`): what is left,
    /// and what gives the units back if the request is not served.
    Ticketed(Left, QuotaHold),
    Limited(Limited),
}

/// What one key's counter holds, read without counting (`/usage`), from
/// this replica's memory or from the shared store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reading {
    /// Units counted against the quota in its current window (for a
    /// rolling window, with the previous window's share).
    Quota { used: u64 },
    /// How far the rate's theoretical arrival time is ahead of now: the
    /// burst in use, as time (zero: the whole burst is available).
    Rate { ahead: Duration },
    /// Identities holding a seat.
    Seats { active: u64 },
    /// Requests in flight.
    Concurrency { in_flight: u64 },
}

/// One limit's counters, of the limit's kind.
#[derive(Debug)]
pub enum Counters {
    Rate(RateCounters),
    Quota(QuotaCounters),
    Seats(SeatCounters),
    Concurrency(ConcurrencyCounters),
}

impl Counters {
    fn new(def: &LimitDef, max_keys: usize) -> Counters {
        match def.kind {
            LimitKind::Rate { .. } => Counters::Rate(RateCounters::new(max_keys)),
            LimitKind::Quota { .. } => Counters::Quota(QuotaCounters::new(max_keys)),
            LimitKind::Seats { .. } => Counters::Seats(SeatCounters::new(max_keys)),
            LimitKind::Concurrency => Counters::Concurrency(ConcurrencyCounters::new(max_keys)),
        }
    }

    /// Check and count one request under `key`. `identity` is the seat
    /// holder (seats only).
    pub fn check(
        &self,
        def: &LimitDef,
        key: &str,
        identity: &str,
        amount: u64,
        cost: u64,
        clock: &Clock,
    ) -> Checked {
        let result = match (self, &def.kind) {
            (Counters::Rate(c), LimitKind::Rate { window, burst }) => c
                .check(
                    key,
                    amount,
                    *window,
                    burst.unwrap_or(amount),
                    cost,
                    clock.mono_nanos(),
                )
                .map(Some),
            (Counters::Quota(c), LimitKind::Quota { period }) if def.count == Count::Served => {
                return match c.check_held(key, amount, *period, cost, clock.unix_nanos()) {
                    Ok((left, hold)) => Checked::Ticketed(left, hold),
                    Err(limited) => Checked::Limited(limited),
                };
            }
            (Counters::Quota(c), LimitKind::Quota { period }) => c
                .check(key, amount, *period, cost, clock.unix_nanos())
                .map(Some),
            (Counters::Seats(c), LimitKind::Seats { idle, .. }) => c
                .check(key, identity, amount, *idle, clock.mono_nanos())
                .map(|()| None),
            (Counters::Concurrency(c), LimitKind::Concurrency) => return c.acquire(key, amount),
            _ => unreachable!("counters are created for their definition's kind"),
        };
        match result {
            Ok(left) => Checked::Allowed(left),
            Err(limited) => Checked::Limited(limited),
        }
    }

    /// Give back what a request counted when a later limit refused it.
    pub fn refund(&self, def: &LimitDef, key: &str, amount: u64, cost: u64, clock: &Clock) {
        match (self, &def.kind) {
            (Counters::Quota(c), LimitKind::Quota { period }) => {
                c.refund(key, *period, cost, clock.unix_nanos())
            }
            (Counters::Rate(c), LimitKind::Rate { window, .. }) => {
                c.refund(key, amount, *window, cost)
            }
            _ => {}
        }
    }

    /// Drop entries that no longer hold anything (expired windows, idle
    /// seats, zero in flight). Returns the entries kept.
    pub fn sweep(&self, def: &LimitDef, clock: &Clock) -> usize {
        match (self, &def.kind) {
            (Counters::Rate(c), _) => c.sweep(clock.mono_nanos()),
            (Counters::Quota(c), LimitKind::Quota { period }) => {
                c.sweep(*period, clock.unix_nanos())
            }
            (Counters::Seats(c), LimitKind::Seats { idle, .. }) => {
                c.sweep(*idle, clock.mono_nanos())
            }
            (Counters::Concurrency(c), _) => c.sweep(),
            _ => 0,
        }
    }

    /// Usage per key for gauges: (key, used). Quotas: units this period;
    /// seats: identities active.
    pub fn usage(&self, def: &LimitDef, clock: &Clock) -> Vec<(String, u64)> {
        match (self, &def.kind) {
            (Counters::Quota(c), LimitKind::Quota { period }) => {
                c.usage(*period, clock.unix_nanos())
            }
            (Counters::Seats(c), LimitKind::Seats { idle, .. }) => {
                c.usage(*idle, clock.mono_nanos())
            }
            (Counters::Concurrency(c), _) => c.usage(),
            _ => Vec::new(),
        }
    }

    /// What each key `wanted` accepts holds now, read without counting
    /// (`/usage`). One pass over the limit's keys; the [`OVERFLOW_KEY`]
    /// entry is offered to `wanted` like any other.
    pub fn peek(
        &self,
        def: &LimitDef,
        clock: &Clock,
        wanted: impl FnMut(&str) -> bool,
    ) -> Vec<(String, Reading)> {
        fn each<T>(
            found: Vec<(String, T)>,
            reading: impl Fn(T) -> Reading,
        ) -> Vec<(String, Reading)> {
            found.into_iter().map(|(k, v)| (k, reading(v))).collect()
        }
        match (self, &def.kind) {
            (Counters::Quota(c), LimitKind::Quota { period }) => {
                each(c.peek(*period, clock.unix_nanos(), wanted), |used| {
                    Reading::Quota { used }
                })
            }
            (Counters::Rate(c), _) => each(c.peek(clock.mono_nanos(), wanted), |ahead| {
                Reading::Rate { ahead }
            }),
            (Counters::Seats(c), LimitKind::Seats { idle, .. }) => {
                each(c.peek(*idle, clock.mono_nanos(), wanted), |active| {
                    Reading::Seats { active }
                })
            }
            (Counters::Concurrency(c), _) => each(c.peek(wanted), |in_flight| {
                Reading::Concurrency { in_flight }
            }),
            _ => Vec::new(),
        }
    }

    pub fn as_quota(&self) -> Option<&QuotaCounters> {
        match self {
            Counters::Quota(c) => Some(c),
            _ => None,
        }
    }
}

/// Counter maps hash short, attacker-chosen keys: foldhash (randomly
/// seeded per process, so keys cannot be chosen to collide) is several
/// times faster than SipHash here.
pub(crate) type Hasher = hashbrown::DefaultHashBuilder;

/// Keys that do not fit under a limit's `max_keys` share this one counter:
/// bounded memory without letting a flood of new keys through.
pub const OVERFLOW_KEY: &str = "\u{0}overflow";

/// Counters are found by limit name and kind.
type CounterId = (Arc<str>, &'static str);

/// The entry for `key`, created on first use; once a map holds `max_keys`
/// keys, new keys share the [`OVERFLOW_KEY`] entry. The entry is returned
/// from the insertion itself, so a concurrent sweep cannot remove it between
/// insert and use.
fn entry_or_overflow<'a, V: Default>(
    map: &'a dashmap::DashMap<Box<str>, V, Hasher>,
    key: &str,
    max_keys: usize,
) -> dashmap::mapref::one::Ref<'a, Box<str>, V> {
    if let Some(entry) = map.get(key) {
        return entry;
    }
    let key = if map.len() >= max_keys {
        OVERFLOW_KEY
    } else {
        key
    };
    map.entry(key.into()).or_default().downgrade()
}

/// The in-memory counter store: one [`Counters`] per limit name and kind,
/// kept across policy reloads.
#[derive(Debug)]
pub struct MemoryStore {
    registry: Mutex<HashMap<CounterId, Arc<Counters>>>,
    max_keys: usize,
    clock: Clock,
}

impl MemoryStore {
    /// Keys tracked per limit unless configured.
    pub const DEFAULT_MAX_KEYS: usize = 100_000;

    pub fn new(clock: Clock, max_keys: usize) -> MemoryStore {
        MemoryStore {
            registry: Mutex::new(HashMap::new()),
            max_keys: max_keys.max(1),
            clock,
        }
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The counters for `def`, created on first use. Same name and kind as a
    /// previous policy: the same counters.
    pub fn counters(&self, def: &LimitDef) -> Arc<Counters> {
        let mut registry = self.registry.lock();
        Arc::clone(
            registry
                .entry((Arc::clone(&def.name), def.kind.as_str()))
                .or_insert_with(|| Arc::new(Counters::new(def, self.max_keys))),
        )
    }

    /// Every quota's counters by limit name (for the state file).
    pub fn quotas(&self) -> Vec<(Arc<str>, Arc<Counters>)> {
        let registry = self.registry.lock();
        registry
            .iter()
            .filter(|((_, kind), _)| *kind == "quota")
            .map(|((name, _), counters)| (Arc::clone(name), Arc::clone(counters)))
            .collect()
    }

    /// The quota counters named `name`, created if absent (restoring state
    /// before the policy that uses them is known).
    pub fn quota_named(&self, name: &str) -> Arc<Counters> {
        let mut registry = self.registry.lock();
        Arc::clone(
            registry
                .entry((Arc::from(name), "quota"))
                .or_insert_with(|| Arc::new(Counters::Quota(QuotaCounters::new(self.max_keys)))),
        )
    }
}

/// Whole seconds for `Retry-After`, never earlier than `delay`, plus up to
/// 10 % (at least one second) of jitter so throttled clients spread out.
pub fn retry_after_secs(delay: Duration, clock: &Clock) -> u64 {
    let base = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
    let base = base.max(1);
    let spread = (base / 10).max(1);
    // Sub-second clock bits are entropy enough for jitter.
    base + clock.mono_nanos() % (spread + 1)
}

#[cfg(test)]
mod tests;
