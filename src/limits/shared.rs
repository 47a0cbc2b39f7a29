//! Shared counters on Redis, so one limit holds across many replicas.
//!
//! - **accurate**: every decision is one round trip — one `EVALSHA` of
//!   [`shared.lua`](shared.lua) that evaluates all of a request's rate,
//!   quota and seat limits atomically (and undoes its own work when one
//!   refuses). Keys carry the license id as a hash tag, `{lic-1}`, so a
//!   license's counters live on one Redis Cluster shard.
//! - **leased**: rates and quotas are spent from local leases, slices of the
//!   shared budget taken atomically by the same script; a replica asks again
//!   only when its slice runs out or its lease period ends (the unused rest
//!   is given back then). Slices follow each replica's own traffic, so idle
//!   replicas hold little. Overshoot is bounded by `replicas × max_slice`.
//!
//! A store that errors or answers later than `timeout` is never waited on
//! again until a background probe finds it healthy: the engine counts
//! locally meanwhile (see `on_store_error`). Concurrency limits are always
//! counted per replica.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use dashmap::DashMap;
use parking_lot::Mutex;

use super::outage::{OutageLedger, Unmerged};
use super::quota::window;
use super::settings::{StoreMode, StoreNodes, StoreSettings};
use super::{Charge, Clock, Hasher, Left, Limited, Reading};
use crate::limits::StoreMetrics;
use crate::policy::{Count, LimitKind, Period};

const SCRIPT: &str = include_str!("shared.lua");

/// Reads counters for `/usage` without changing them.
const READ_SCRIPT: &str = include_str!("shared_read.lua");

/// Timeouts in a row before the store is treated as down (one slow answer
/// is noise; three are an outage).
const TIMEOUTS_TO_TRIP: u32 = 3;

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// One counter [`SharedStore::read`] reads: limit `limit`'s key `key`
/// (the license's own keys: all under its hash tag).
#[derive(Clone, Copy, Debug)]
pub struct SharedRead<'a> {
    pub limit: &'a str,
    pub kind: &'a LimitKind,
    pub key: &'a str,
}

/// What the store said about a request's limits.
#[derive(Debug)]
pub enum SharedOutcome {
    /// Counted; what the rates and quotas at these positions have left,
    /// and where the units of served-counted quotas go back to if the
    /// request is not served.
    Allowed {
        left: Vec<(usize, Left)>,
        refunds: Vec<SharedRefund>,
    },
    /// `checks[position]` refused.
    Limited { position: usize, limited: Limited },
    /// No answer in time (or an error): the caller falls back.
    Unavailable,
}

/// Where a served-counted quota's units go back to (see
/// [`super::Ticket`]).
#[derive(Debug, PartialEq, Eq)]
pub struct SharedRefund {
    /// Leased mode: the local lease they were spent from (or taken with).
    pub lease_key: Option<Box<str>>,
    /// The quota window's key in the store.
    pub key: String,
    pub units: u64,
}

#[derive(Clone)]
enum Connection {
    Single(redis::aio::ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

/// A local slice of a shared rate or quota budget (leased mode).
#[derive(Debug, Default)]
struct Lease {
    remaining: u64,
    /// Monotonic nanoseconds; spent only before this.
    expires_at: u64,
    /// Units spent from the current lease, to size the next one.
    spent: u64,
    /// The next slice to ask for.
    slice: u64,
    /// The store key the lease was taken from (a quota window's key).
    key: String,
    /// Rate leases: microseconds of arrival time per unit (to give units
    /// back); `None` for quotas.
    emission: Option<f64>,
    /// What the store had left after the last renewal (beyond this lease).
    stated: u64,
    /// Rate leases: when the store's rate is whole again, as of the last
    /// renewal (monotonic nanoseconds).
    full_at: u64,
}

pub struct SharedStore {
    settings: StoreSettings,
    connection: ArcSwapOption<Connection>,
    script: redis::Script,
    read_script: redis::Script,
    slots_script: redis::Script,
    degraded: AtomicBool,
    timeouts_in_a_row: AtomicU32,
    wake: tokio::sync::Notify,
    metrics: Arc<StoreMetrics>,
    leases: DashMap<Box<str>, Mutex<Lease>, Hasher>,
    /// Leased mode: seat holders confirmed recently, by seat key and identity.
    seats_seen: DashMap<Box<str>, u64, Hasher>,
    clock: Clock,
    /// This process, unique per start: it marks outage merges (an epoch
    /// counts from 0 each start, so a restart under the same instance name
    /// must not find its predecessor's markers).
    process: String,
    /// Live replicas last seen in the store (including this one).
    observed_replicas: AtomicU32,
    /// Quota units counted locally while the store was away, to merge.
    outage: OutageLedger,
}

impl std::fmt::Debug for SharedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedStore")
            .field("nodes", &self.settings.nodes.describe())
            .field("degraded", &self.degraded.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl SharedStore {
    /// A store that is down until [`SharedStore::maintain`] has connected.
    pub fn new(settings: StoreSettings, metrics: Arc<StoreMetrics>, clock: Clock) -> SharedStore {
        metrics.fallback_active.set(1);
        SharedStore {
            settings,
            connection: ArcSwapOption::empty(),
            script: redis::Script::new(SCRIPT),
            read_script: redis::Script::new(READ_SCRIPT),
            slots_script: slots::script(),
            degraded: AtomicBool::new(true),
            timeouts_in_a_row: AtomicU32::new(0),
            wake: tokio::sync::Notify::new(),
            metrics,
            leases: DashMap::with_hasher(Hasher::default()),
            seats_seen: DashMap::with_hasher(Hasher::default()),
            clock,
            process: process_id(),
            observed_replicas: AtomicU32::new(1),
            outage: OutageLedger::default(),
        }
    }

    pub fn settings(&self) -> &StoreSettings {
        &self.settings
    }

    /// Where the limiter notes quota units it counts while the store is away.
    pub fn outage(&self) -> &OutageLedger {
        &self.outage
    }

    /// The store key of a quota window (`start`: unix seconds).
    fn quota_key(&self, tag: &str, limit: &str, key: &str, start: u64) -> String {
        format!(
            "{}:{{{tag}}}:{limit}:q:{key}:{start}",
            self.settings.key_prefix
        )
    }

    /// Whether requests should ask the store now.
    pub fn is_available(&self) -> bool {
        !self.degraded.load(Ordering::Relaxed)
    }

    /// The `/readyz` note.
    pub fn describe(&self) -> String {
        let nodes = self.settings.nodes.describe();
        if self.is_available() {
            let mode = match self.settings.mode {
                StoreMode::Accurate => "accurate",
                StoreMode::Leased => "leased",
            };
            let seen = self.observed_replicas.load(Ordering::Relaxed);
            format!("shared counters on {nodes} ({mode} mode, {seen} replicas seen)")
        } else {
            format!(
                "fallback: {nodes} unreachable; counting locally, limits divided by {}",
                self.replicas()
            )
        }
    }

    /// Check and count one request's limits. All keys share `tag` (the
    /// license id), so they live on one shard.
    pub async fn check(&self, tag: &str, charges: &[Charge<'_>]) -> SharedOutcome {
        let now = self.clock.mono_nanos();
        let unix_nanos = self.clock.unix_nanos();
        let call = match self.plan(tag, charges, now, unix_nanos) {
            Ok(call) => call,
            Err(refused) => return refused,
        };
        if call.ops.is_empty() {
            return SharedOutcome::Allowed {
                left: call.left,
                refunds: call.refunds,
            };
        }
        let reply = self.invoke(&call.encode()).await;
        let reply = reply.and_then(|reply| Reply::parse(&reply, call.ops.len()));
        self.settle(call, reply, charges, now, unix_nanos)
    }

    /// The operations that count `charges`; leased units are spent here and
    /// need none. `Err` when a limit refuses without asking (a rate of 0).
    fn plan<'c>(
        &self,
        tag: &str,
        charges: &'c [Charge<'_>],
        now: u64,
        unix_nanos: u64,
    ) -> Result<Call<'c>, SharedOutcome> {
        let leased = self.settings.mode == StoreMode::Leased;
        let mut call = Call::default();
        for (position, charge) in charges.iter().enumerate() {
            let base = format!("{}:{{{tag}}}:{}", self.settings.key_prefix, charge.def.name);
            match &charge.def.kind {
                LimitKind::Rate { window: w, burst } => {
                    if charge.amount == 0 {
                        self.give_back_local(&call.spent_locally);
                        return Err(SharedOutcome::Limited {
                            position,
                            limited: Limited {
                                retry_after: *w,
                                limit: 0,
                                remaining: 0,
                                window: Some(*w),
                            },
                        });
                    }
                    let window_us = w.as_micros().max(1) as f64;
                    let emission_us = window_us / charge.amount as f64;
                    let tolerance_us = emission_us * burst.unwrap_or(charge.amount) as f64;
                    let key = format!("{base}:r:{}", charge.key);
                    let slice = if leased {
                        match self.spend_lease(&key, charge.cost, now) {
                            Spend::Done { remaining, full_at } => {
                                call.spent_locally.push((key.into(), charge.cost));
                                let reset = Duration::from_nanos(full_at.saturating_sub(now));
                                let left = Left {
                                    remaining,
                                    reset,
                                    window: *w,
                                };
                                call.left.push((position, left));
                                continue;
                            }
                            Spend::Renew { slice, give_back } => {
                                if let Some((units, _)) = give_back {
                                    let op = Op::ReturnRate {
                                        key: key.clone(),
                                        emission_us,
                                        units,
                                    };
                                    call.ops.push((op, Purpose::Return));
                                }
                                slice
                            }
                        }
                    } else {
                        0
                    };
                    let lease = leased.then(|| LeaseTarget {
                        lease_key: key.as_str().into(),
                        store_key: key.clone(),
                        emission_us: Some(emission_us),
                    });
                    let op = Op::Rate {
                        key,
                        emission_us,
                        tolerance_us,
                        cost: charge.cost,
                        slice,
                    };
                    call.ops.push((
                        op,
                        Purpose::Count {
                            position,
                            lease,
                            quota_window: None,
                        },
                    ));
                }
                LimitKind::Quota { period } => {
                    let now_secs = unix_nanos / 1_000_000_000;
                    let (start, length) = window(*period, now_secs);
                    let name = &*charge.def.name;
                    let key = self.quota_key(tag, name, &charge.key, start);
                    let previous =
                        self.quota_key(tag, name, &charge.key, start.saturating_sub(length));
                    let weight_ppm = previous_weight_ppm(*period, start, length, unix_nanos);
                    let keep = kept_after(*period, length);
                    let ttl_ms =
                        ((start + length + keep).saturating_sub(now_secs) * 1000).max(1000);
                    let lease_key = format!("{base}:q:{}", charge.key);
                    let slice = if leased {
                        match self.spend_lease(&lease_key, charge.cost, now) {
                            Spend::Done { remaining, .. } => {
                                if charge.def.count == Count::Served {
                                    call.refunds.push(SharedRefund {
                                        lease_key: Some(lease_key.as_str().into()),
                                        key,
                                        units: charge.cost,
                                    });
                                }
                                call.spent_locally.push((lease_key.into(), charge.cost));
                                let end = (start + length) * 1_000_000_000;
                                let left = Left {
                                    remaining,
                                    reset: Duration::from_nanos(end.saturating_sub(unix_nanos)),
                                    window: Duration::from_secs(length),
                                };
                                call.left.push((position, left));
                                continue;
                            }
                            Spend::Renew { slice, give_back } => {
                                if let Some((units, old_key)) = give_back {
                                    let op = Op::ReturnQuota {
                                        key: old_key,
                                        units,
                                    };
                                    call.ops.push((op, Purpose::Return));
                                }
                                slice
                            }
                        }
                    } else {
                        0
                    };
                    let lease = leased.then(|| LeaseTarget {
                        lease_key: lease_key.into(),
                        store_key: key.clone(),
                        emission_us: None,
                    });
                    let op = Op::Quota {
                        key,
                        previous,
                        // Counted against the soft ceiling (`overage`).
                        amount: charge.def.ceiling(charge.amount),
                        cost: charge.cost,
                        ttl_ms,
                        weight_ppm,
                        slice,
                    };
                    call.ops.push((
                        op,
                        Purpose::Count {
                            position,
                            lease,
                            quota_window: Some((start, length)),
                        },
                    ));
                }
                LimitKind::Seats { idle, .. } => {
                    let key = format!("{base}:s:{}", charge.key);
                    if leased {
                        let seen_key = format!("{key}\u{1f}{}", charge.identity);
                        let fresh = self
                            .seats_seen
                            .get(seen_key.as_str())
                            .is_some_and(|until| *until > now);
                        if fresh {
                            continue;
                        }
                        // Confirmed holders skip the store for a tenth of the
                        // idle window (at most one lease period).
                        let ttl = (*idle / 10).min(self.settings.lease_period);
                        call.seen.push((seen_key, now + ttl.as_nanos() as u64));
                    }
                    let op = Op::Seat {
                        key,
                        identity: &charge.identity,
                        seats: charge.amount,
                        idle_us: idle.as_micros(),
                    };
                    call.ops.push((
                        op,
                        Purpose::Count {
                            position,
                            lease: None,
                            quota_window: None,
                        },
                    ));
                }
                LimitKind::Concurrency => {}
            }
        }
        Ok(call)
    }

    /// What the store's answer means for the request, and the leases and
    /// seat confirmations it brings. `None`: no (usable) answer.
    fn settle(
        &self,
        call: Call<'_>,
        reply: Option<Reply>,
        charges: &[Charge<'_>],
        now: u64,
        unix_nanos: u64,
    ) -> SharedOutcome {
        let (op, retry_us, remaining) = match reply {
            Some(Reply::Passed(passed)) => {
                let mut left = call.left;
                let mut refunds = call.refunds;
                for ((op, purpose), passed) in call.ops.iter().zip(passed) {
                    let Purpose::Count {
                        position,
                        lease,
                        quota_window,
                    } = purpose
                    else {
                        continue;
                    };
                    let charge = &charges[*position];
                    if let (Op::Quota { key, .. }, Count::Served) = (op, charge.def.count) {
                        refunds.push(match lease {
                            // Taken with a new lease: back into it.
                            Some(lease) => SharedRefund {
                                lease_key: Some(lease.lease_key.clone()),
                                key: lease.store_key.clone(),
                                units: charge.cost,
                            },
                            None => SharedRefund {
                                lease_key: None,
                                key: key.clone(),
                                units: charge.cost,
                            },
                        });
                    }
                    let remaining = match lease {
                        Some(lease) => self.install_lease(lease, &passed, charge.cost, now),
                        None => passed.remaining,
                    };
                    let (reset, window) = match (&charge.def.kind, quota_window) {
                        (LimitKind::Quota { .. }, Some((start, length))) => {
                            let end = (start + length) * 1_000_000_000;
                            (
                                Duration::from_nanos(end.saturating_sub(unix_nanos)),
                                Duration::from_secs(*length),
                            )
                        }
                        (LimitKind::Rate { window, .. }, _) => {
                            (Duration::from_micros(passed.reset_us.unwrap_or(0)), *window)
                        }
                        // Seats state no budget.
                        _ => continue,
                    };
                    left.push((
                        *position,
                        Left {
                            remaining,
                            reset,
                            window,
                        },
                    ));
                }
                for (seen_key, until) in call.seen {
                    self.seats_seen.insert(seen_key.into(), until);
                }
                return SharedOutcome::Allowed { left, refunds };
            }
            Some(Reply::Refused {
                op,
                retry_us,
                remaining,
            }) => (op, retry_us, remaining),
            None => {
                self.give_back_local(&call.spent_locally);
                return SharedOutcome::Unavailable;
            }
        };
        self.give_back_local(&call.spent_locally);
        let Purpose::Count {
            position,
            quota_window,
            ..
        } = &call.ops[op].1
        else {
            // Returning units cannot refuse: the store is not answering
            // the script's protocol.
            return SharedOutcome::Unavailable;
        };
        let charge = &charges[*position];
        let (retry_after, window) = match (&charge.def.kind, quota_window) {
            (LimitKind::Quota { period }, Some((start, length))) => {
                let end = (start + length) * 1_000_000_000;
                let to_end = Duration::from_nanos(end.saturating_sub(unix_nanos));
                let retry_after = match period {
                    // Never early: one window after this one ends,
                    // nothing of today's count is carried any more.
                    Period::Rolling(w) => to_end + *w,
                    _ => to_end,
                };
                (retry_after, Some(Duration::from_secs(*length)))
            }
            (LimitKind::Rate { window, .. }, _) => (Duration::from_micros(retry_us), Some(*window)),
            (LimitKind::Seats { idle, .. }, _) => (Duration::from_micros(retry_us), Some(*idle)),
            _ => (Duration::from_micros(retry_us), None),
        };
        SharedOutcome::Limited {
            position: *position,
            limited: Limited {
                retry_after,
                limit: charge.def.ceiling(charge.amount),
                remaining,
                window,
            },
        }
    }

    /// Read what one license's counters hold (`/usage`): `tag` is the
    /// license id, the hash tag its keys were counted under. One round
    /// trip bounded by the store's timeout, never taken while the store is
    /// away; `None` then, or on any failure. A failed read is no evidence
    /// about the request path, so it trips nothing and counts in no metric.
    ///
    /// In leased mode a quota's or rate's count includes units leased to
    /// replicas and not spent yet.
    pub async fn read(&self, tag: &str, reads: &[SharedRead<'_>]) -> Option<Vec<Option<Reading>>> {
        if reads.is_empty() {
            return Some(Vec::new());
        }
        if !self.is_available() {
            return None;
        }
        let connection = self.connection.load_full()?;
        let unix_nanos = self.clock.unix_nanos();
        let mut invocation = self.read_script.prepare_invoke();
        let mut args: Vec<String> = vec![reads.len().to_string()];
        for read in reads {
            let base = format!("{}:{{{tag}}}:{}", self.settings.key_prefix, read.limit);
            match read.kind {
                LimitKind::Quota { period } => {
                    let (start, length) = window(*period, unix_nanos / 1_000_000_000);
                    let current = self.quota_key(tag, read.limit, read.key, start);
                    let previous =
                        self.quota_key(tag, read.limit, read.key, start.saturating_sub(length));
                    invocation.key(current).key(previous);
                    let weight = previous_weight_ppm(*period, start, length, unix_nanos);
                    args.extend(["q".to_owned(), weight.to_string()]);
                }
                LimitKind::Rate { .. } => {
                    invocation.key(format!("{base}:r:{}", read.key));
                    args.extend(["r".to_owned(), NONE.to_owned()]);
                }
                LimitKind::Seats { idle, .. } => {
                    invocation.key(format!("{base}:s:{}", read.key));
                    args.extend(["s".to_owned(), idle.as_micros().to_string()]);
                }
                // Concurrency is counted per replica, never in the store.
                LimitKind::Concurrency => return None,
            }
        }
        for arg in &args {
            invocation.arg(arg);
        }
        let reply = tokio::time::timeout(self.settings.timeout, async {
            match &*connection {
                Connection::Single(c) => invocation.invoke_async::<Vec<i64>>(&mut c.clone()).await,
                Connection::Cluster(c) => invocation.invoke_async::<Vec<i64>>(&mut c.clone()).await,
            }
        })
        .await;
        let reply = match reply {
            Ok(Ok(reply)) if reply.len() == reads.len() * 2 => reply,
            Ok(Ok(_)) => return None,
            Ok(Err(error)) => {
                tracing::debug!(%error, "usage read from the store failed");
                return None;
            }
            Err(_) => {
                tracing::debug!("usage read from the store timed out");
                return None;
            }
        };
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        Some(
            reads
                .iter()
                .zip(reply.chunks_exact(2))
                .map(|(read, pair)| {
                    (pair[0] == 1).then(|| match read.kind {
                        LimitKind::Quota { .. } => Reading::Quota {
                            used: count(pair[1]),
                        },
                        LimitKind::Rate { .. } => Reading::Rate {
                            ahead: Duration::from_micros(count(pair[1])),
                        },
                        LimitKind::Seats { .. } => Reading::Seats {
                            active: count(pair[1]),
                        },
                        LimitKind::Concurrency => Reading::Concurrency { in_flight: 0 },
                    })
                })
                .collect(),
        )
    }

    /// One round trip, bounded by the timeout. `None` on any failure.
    async fn invoke(&self, call: &Encoded) -> Option<Vec<i64>> {
        let connection = self.connection.load_full()?;
        let mut invocation = self.script.prepare_invoke();
        for key in &call.keys {
            invocation.key(key);
        }
        invocation.arg(call.ops);
        for arg in &call.args {
            invocation.arg(arg);
        }
        let started = Instant::now();
        let result = tokio::time::timeout(self.settings.timeout, async {
            match &*connection {
                Connection::Single(c) => invocation.invoke_async::<Vec<i64>>(&mut c.clone()).await,
                Connection::Cluster(c) => invocation.invoke_async::<Vec<i64>>(&mut c.clone()).await,
            }
        })
        .await;
        self.metrics
            .latency
            .observe(started.elapsed().as_secs_f64());
        self.metrics.round_trips.inc();
        match result {
            Ok(Ok(reply)) => {
                self.timeouts_in_a_row.store(0, Ordering::Relaxed);
                Some(reply)
            }
            Ok(Err(error)) => {
                self.metrics.errors_error.inc();
                self.trip(&format!("{error}"));
                None
            }
            Err(_) => {
                self.metrics.errors_timeout.inc();
                let in_a_row = self.timeouts_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
                if in_a_row >= TIMEOUTS_TO_TRIP {
                    self.trip(&format!(
                        "{in_a_row} answers in a row slower than {:?}",
                        self.settings.timeout
                    ));
                }
                None
            }
        }
    }

    fn trip(&self, why: &str) {
        if !self.degraded.swap(true, Ordering::AcqRel) {
            self.metrics.fallback_active.set(1);
            tracing::warn!(store = %self.settings.nodes.describe(), reason = why, "store unavailable; counting locally");
            self.wake.notify_one();
        }
    }

    /// Connect, and while the store is down, probe it with back-off until it
    /// answers; then shared counting resumes. `report` runs after every
    /// change of state and after the first connection attempt, whatever its
    /// result (readiness waits for that attempt, never longer).
    pub async fn maintain(self: Arc<Self>, report: impl Fn(&SharedStore) + Send) {
        let mut backoff = MIN_BACKOFF;
        let mut first = true;
        let mut heartbeat = tokio::time::interval(self.settings.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut lease_tick = tokio::time::interval(self.settings.lease_period);
        lease_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let leased = self.settings.mode == StoreMode::Leased;
        loop {
            if self.is_available() {
                tokio::select! {
                    // A trip wakes this loop at once.
                    _ = self.wake.notified() => {
                        backoff = MIN_BACKOFF;
                        report(&self);
                    }
                    _ = heartbeat.tick() => {
                        if self.heartbeat().await {
                            report(&self);
                            let seen = self.observed_replicas.load(Ordering::Relaxed);
                            tracing::info!(replicas = seen, "replicas sharing the store: {seen}");
                        }
                        // A merge that failed after the last outage, or
                        // units of requests that were counting locally
                        // when the store came back.
                        if !self.outage.is_empty() {
                            self.reconcile().await;
                        }
                    }
                    // Leased mode: expired leases of keys that went quiet go
                    // back every lease period.
                    _ = lease_tick.tick(), if leased => {
                        self.return_leases(false).await;
                        self.forget_expired();
                    }
                }
                continue;
            }
            match self.probe().await {
                Ok(()) => {
                    self.timeouts_in_a_row.store(0, Ordering::Relaxed);
                    // Leases and seat confirmations from before the outage
                    // may be stale; start clean.
                    self.leases.clear();
                    self.seats_seen.clear();
                    self.degraded.store(false, Ordering::Release);
                    self.metrics.fallback_active.set(0);
                    self.heartbeat().await;
                    if first {
                        tracing::info!(store = %self.settings.nodes.describe(), "shared counter store connected");
                    } else {
                        tracing::info!(store = %self.settings.nodes.describe(), "store reachable again; shared counting resumed");
                    }
                    report(&self);
                    let seen = self.observed_replicas.load(Ordering::Relaxed);
                    tracing::info!(replicas = seen, "replicas sharing the store: {seen}");
                    self.reconcile().await;
                }
                Err(error) => {
                    if first {
                        tracing::warn!(store = %self.settings.nodes.describe(), %error, "store unavailable; counting locally");
                        report(&self);
                    } else {
                        tracing::debug!(%error, "store probe failed");
                    }
                }
            }
            first = false;
            if !self.is_available() {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    /// Announce this replica (by its instance name) and count the live ones
    /// (seen within three heartbeats). Returns whether the count changed.
    async fn heartbeat(&self) -> bool {
        let Some(connection) = self.connection.load_full() else {
            return false;
        };
        let key = format!("{}:{{replicas}}", self.settings.key_prefix);
        let now_ms = self.clock.unix_nanos() / 1_000_000;
        let horizon = now_ms.saturating_sub(3 * self.settings.heartbeat.as_millis() as u64);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .zadd(&key, &self.settings.instance, now_ms)
            .ignore()
            .zrembyscore(&key, "-inf", horizon)
            .ignore()
            .zcard(&key)
            .pexpire(&key, 60_000)
            .ignore();
        let patience = self.settings.timeout.max(Duration::from_millis(250));
        let seen = tokio::time::timeout(patience, async {
            match &*connection {
                Connection::Single(c) => pipe.query_async::<(u32,)>(&mut c.clone()).await,
                Connection::Cluster(c) => pipe.query_async::<(u32,)>(&mut c.clone()).await,
            }
        })
        .await;
        let Ok(Ok((seen,))) = seen else {
            return false;
        };
        let seen = seen.max(1);
        self.observed_replicas.swap(seen, Ordering::Relaxed) != seen
    }

    /// The replica count fallback counting divides by: the configured one,
    /// or more if more replicas were seen sharing the store.
    pub fn replicas(&self) -> u32 {
        self.settings
            .replicas
            .max(self.observed_replicas.load(Ordering::Relaxed))
    }

    async fn probe(&self) -> Result<(), String> {
        let patience = self.settings.timeout.max(Duration::from_millis(250));
        if self.connection.load().is_none() {
            let connection = tokio::time::timeout(patience * 4, self.connect())
                .await
                .map_err(|_| "connect timed out".to_owned())??;
            self.connection.store(Some(Arc::new(connection)));
        }
        let connection = self.connection.load_full().ok_or("no connection")?;
        let ping = redis::cmd("PING");
        let load = redis::cmd("SCRIPT").arg("LOAD").arg(SCRIPT).to_owned();
        let result = tokio::time::timeout(patience, async {
            match &*connection {
                Connection::Single(c) => {
                    let mut c = c.clone();
                    ping.query_async::<String>(&mut c).await?;
                    load.query_async::<String>(&mut c).await
                }
                Connection::Cluster(c) => {
                    // Scripts load on demand per shard (EVALSHA falls back).
                    ping.query_async::<String>(&mut c.clone()).await
                }
            }
        })
        .await;
        match result {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err("probe timed out".into()),
        }
    }

    async fn connect(&self) -> Result<Connection, String> {
        let patience = self.settings.timeout.max(Duration::from_millis(250));
        match &self.settings.nodes {
            StoreNodes::Standalone(url) => {
                let client = redis::Client::open(url.as_str()).map_err(|e| e.to_string())?;
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(patience))
                    .set_response_timeout(None)
                    .set_number_of_retries(1)
                    .set_max_delay(MAX_BACKOFF);
                redis::aio::ConnectionManager::new_lazy_with_config(client, config)
                    .map(Connection::Single)
                    .map_err(|e| e.to_string())
            }
            StoreNodes::Cluster(urls) => {
                let client =
                    redis::cluster::ClusterClient::builder(urls.iter().map(String::as_str))
                        .connection_timeout(patience)
                        .response_timeout(patience)
                        .retries(1)
                        .build()
                        .map_err(|e| e.to_string())?;
                client
                    .get_async_connection()
                    .await
                    .map(Connection::Cluster)
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// Give unused lease units back to the store: every lease (on shutdown,
    /// so a rolling deploy loses nothing) or only expired ones (leases of
    /// keys that stopped seeing traffic). One call per lease: each has its
    /// own hash tag, which a cluster routes on its own.
    pub async fn return_leases(&self, all: bool) {
        if self.settings.mode != StoreMode::Leased || !self.is_available() {
            return;
        }
        let now = self.clock.mono_nanos();
        let mut returns: Vec<(String, u64, Option<f64>)> = Vec::new();
        for entry in self.leases.iter() {
            let mut lease = entry.value().lock();
            if lease.remaining > 0 && (all || now >= lease.expires_at) {
                let units = std::mem::take(&mut lease.remaining);
                returns.push((lease.key.clone(), units, lease.emission));
            }
        }
        for (key, units, emission_us) in returns {
            let op = match emission_us {
                Some(emission_us) => Op::ReturnRate {
                    key,
                    emission_us,
                    units,
                },
                None => Op::ReturnQuota { key, units },
            };
            let call = Call {
                ops: vec![(op, Purpose::Return)],
                ..Call::default()
            };
            if self.invoke(&call.encode()).await.is_some() {
                self.metrics.lease_returns.inc();
            }
        }
    }

    /// Merge the quota units this replica counted locally while the store
    /// was away (see [`OutageLedger`]) into the store's window keys: one
    /// script call per entry, which adds the units and sets the entry's
    /// marker (replica, epoch, limit, key, window) in one step, so a merge
    /// retried after a timeout is never counted twice. Entries whose merge
    /// fails wait for the next try (every heartbeat, and the next recovery).
    ///
    /// A window that has ended is still merged into its key while the store
    /// keeps that key (a rolling window is read as the previous one during
    /// the next, so its count still matters); an entry whose key has
    /// expired is dropped, since nothing would read it.
    pub async fn reconcile(&self) {
        if self.outage.is_empty() || !self.is_available() {
            return;
        }
        let now = self.clock.unix_nanos() / 1_000_000_000;
        let (mut merged, mut expired) = (0u64, 0u64);
        let mut entries = self.outage.drain().into_iter();
        while let Some(entry) = entries.next() {
            if !self.is_available() {
                // Away again: the rest waits for the next recovery.
                self.outage.restore(std::iter::once(entry).chain(entries));
                break;
            }
            let Some(op) = self.merge_op(&entry, now) else {
                expired += entry.units;
                continue;
            };
            let call = Call {
                ops: vec![(op, Purpose::Merge)],
                ..Call::default()
            };
            let reply = self.invoke(&call.encode()).await;
            match reply.and_then(|reply| Reply::parse(&reply, 1)) {
                Some(Reply::Passed(passed)) => {
                    if passed.first().is_some_and(|p| p.granted == 0) {
                        // An earlier try landed, its answer did not.
                        tracing::debug!(limit = %entry.window.limit, "outage units were merged already");
                    }
                    merged += entry.units;
                    self.metrics.reconciled_units.inc_by(entry.units);
                }
                _ => self.outage.restore([entry]),
            }
        }
        if merged > 0 || expired > 0 {
            tracing::info!(
                units = merged,
                expired,
                "merged {merged} quota units counted locally while the store was away"
            );
        }
    }

    /// The merge of `entry` at `now` (unix seconds); `None` when its
    /// window's key is no longer kept.
    fn merge_op(&self, entry: &Unmerged, now: u64) -> Option<Op<'static>> {
        let (start, length) = window(entry.period, entry.window.start);
        let until = start + length + kept_after(entry.period, length);
        if until <= now {
            return None;
        }
        let at = &entry.window;
        let key = self.quota_key(&at.tag, &at.limit, &at.key, start);
        // Beside the window's key (same hash tag, so the same shard), under
        // its own kind, `m`.
        let marker = format!(
            "{}:{{{}}}:{}:m:{}:{start}:{}:{}",
            self.settings.key_prefix, at.tag, at.limit, at.key, self.process, entry.epoch
        );
        Some(Op::Merge {
            key,
            marker,
            units: entry.units,
            ttl_ms: (until - now) * 1000,
        })
    }

    /// Drop spent, expired leases and stale seat confirmations, so the maps
    /// hold only keys with recent traffic.
    fn forget_expired(&self) {
        let now = self.clock.mono_nanos();
        self.leases.retain(|_, lease| {
            let lease = lease.get_mut();
            lease.remaining > 0 || now < lease.expires_at
        });
        self.seats_seen.retain(|_, until| *until > now);
    }

    /// Spend `cost` from the local lease for `key`, or say what to ask for.
    fn spend_lease(&self, key: &str, cost: u64, now: u64) -> Spend {
        let Some(entry) = self.leases.get(key) else {
            return Spend::Renew {
                slice: self.initial_slice().max(cost),
                give_back: None,
            };
        };
        let mut lease = entry.lock();
        if now < lease.expires_at && lease.remaining >= cost {
            lease.remaining -= cost;
            lease.spent += cost;
            return Spend::Done {
                remaining: lease.stated.saturating_add(lease.remaining),
                full_at: lease.full_at,
            };
        }
        // Size the next slice by what this replica spent from the last one.
        let wanted = if now < lease.expires_at {
            lease.slice.saturating_mul(2) // ran out early: demand is higher
        } else {
            lease.spent.saturating_add(cost)
        };
        lease.slice = wanted.clamp(1, self.settings.lease_max_slice).max(cost);
        let give_back = (now >= lease.expires_at && lease.remaining > 0).then(|| {
            self.metrics.lease_returns.inc();
            (std::mem::take(&mut lease.remaining), lease.key.clone())
        });
        Spend::Renew {
            slice: lease.slice,
            give_back,
        }
    }

    fn initial_slice(&self) -> u64 {
        (self.settings.lease_max_slice / 10).max(1)
    }

    /// Keep the units a renewal granted (less what this request spent), and
    /// what the store said it had left. Returns what this replica now
    /// states as left: the store's rest plus its own lease.
    fn install_lease(&self, target: &LeaseTarget, passed: &Passed, cost: u64, now: u64) -> u64 {
        let granted = passed.granted;
        self.metrics.lease_grants.inc();
        let period = self.settings.lease_period.as_nanos() as u64;
        let entry = self.leases.entry(target.lease_key.clone()).or_default();
        let mut lease = entry.lock();
        if lease.slice == 0 {
            lease.slice = self.initial_slice();
        }
        // Add, never overwrite: concurrent requests may each have taken a
        // slice; none of it may be lost.
        lease.remaining += granted.saturating_sub(cost);
        if lease.key != target.store_key {
            lease.spent = 0;
        }
        lease.spent += cost;
        lease.expires_at = now + period;
        lease.key.clone_from(&target.store_key);
        lease.emission = target.emission_us;
        lease.stated = passed.remaining;
        lease.full_at = now + passed.reset_us.unwrap_or(0).saturating_mul(1000);
        lease.stated.saturating_add(lease.remaining)
    }

    /// A served-counted request that was not served gives its `units`
    /// back to the lease `lease_key` they were spent from, if it still
    /// spends from the same window (`store_key`); `false` otherwise (then
    /// they go back to the store: [`SharedStore::return_quota`]).
    pub(crate) fn give_back_to_lease(&self, lease_key: &str, store_key: &str, units: u64) -> bool {
        let Some(entry) = self.leases.get(lease_key) else {
            return false;
        };
        let mut lease = entry.lock();
        if lease.key != store_key {
            return false;
        }
        lease.remaining += units;
        lease.spent = lease.spent.saturating_sub(units);
        true
    }

    /// Give `units` back to the quota window `key`: a served-counted
    /// request that was not served. Lost (the quota over-counts) when the
    /// store cannot take them.
    pub async fn return_quota(&self, key: String, units: u64) {
        if !self.is_available() {
            tracing::debug!(key, units, "store away: quota units not given back");
            return;
        }
        let call = Call {
            ops: vec![(Op::ReturnQuota { key, units }, Purpose::Return)],
            ..Call::default()
        };
        if self.invoke(&call.encode()).await.is_none() {
            tracing::debug!(units, "quota units could not be given back to the store");
        }
    }

    fn give_back_local(&self, spent: &[(Box<str>, u64)]) {
        for (key, units) in spent {
            if let Some(entry) = self.leases.get(key) {
                let mut lease = entry.lock();
                lease.remaining += units;
                lease.spent = lease.spent.saturating_sub(*units);
            }
        }
    }
}

/// The share (parts per million) of the previous window a rolling quota
/// still counts at `unix_nanos`; 0 for calendar periods.
fn previous_weight_ppm(period: Period, start: u64, length: u64, unix_nanos: u64) -> u64 {
    match period {
        Period::Rolling(_) => {
            let elapsed = unix_nanos.saturating_sub(start * 1_000_000_000);
            let window = length * 1_000_000_000;
            let left = window.saturating_sub(elapsed);
            (u128::from(left) * 1_000_000 / u128::from(window)) as u64
        }
        _ => 0,
    }
}

/// How long a quota window's key is kept after the window ends: a rolling
/// window is read as the previous one during the next; a calendar period's
/// key stays a day for whoever inspects it.
fn kept_after(period: Period, length: u64) -> u64 {
    match period {
        Period::Rolling(_) => length,
        _ => 86_400,
    }
}

/// A random id for this process.
fn process_id() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    format!("{}-{:016x}", std::process::id(), u64::from_be_bytes(bytes))
}

enum Spend {
    /// Spent from the lease: the store's rest as of the last renewal plus
    /// what is left of the lease, and when a rate is whole again.
    Done { remaining: u64, full_at: u64 },
    Renew {
        slice: u64,
        /// Unused units of an expired lease, and the store key they came from.
        give_back: Option<(u64, String)>,
    },
}

/// One operation of [`shared.lua`](shared.lua), typed. [`Op::encode`] is
/// the only place that knows its wire form.
#[derive(Debug, PartialEq)]
enum Op<'a> {
    /// GCRA: take `cost` units, or with `slice > 0` a lease of up to
    /// `slice` (at least `cost`).
    Rate {
        key: String,
        emission_us: f64,
        tolerance_us: f64,
        cost: u64,
        slice: u64,
    },
    /// A quota window, with the `previous` window's count carried at
    /// `weight_ppm` (rolling periods; 0 for calendar ones).
    Quota {
        key: String,
        previous: String,
        amount: u64,
        cost: u64,
        ttl_ms: u64,
        weight_ppm: u64,
        slice: u64,
    },
    /// Hold (or refresh) `identity`'s seat among `seats`.
    Seat {
        key: String,
        identity: &'a str,
        seats: u64,
        idle_us: u128,
    },
    /// Give back `units` of an expired rate lease.
    ReturnRate {
        key: String,
        emission_us: f64,
        units: u64,
    },
    /// Give back `units` of an expired quota lease.
    ReturnQuota { key: String, units: u64 },
    /// Add `units` counted locally during an outage to a quota window's
    /// `key`, unless `marker` says this merge was made already; the marker
    /// is set in the same step.
    Merge {
        key: String,
        marker: String,
        units: u64,
        ttl_ms: u64,
    },
}

/// Operations take this many arguments (kind and five parameters).
const OP_ARGS: usize = 6;

/// A passed call answers this many numbers per operation.
const PASSED_FIELDS: usize = 3;

/// An unused parameter.
const NONE: &str = "-";

impl Op<'_> {
    fn encode(&self, keys: &mut Vec<String>, args: &mut Vec<String>) {
        let fields: [String; OP_ARGS] = match self {
            Op::Rate {
                key,
                emission_us,
                tolerance_us,
                cost,
                slice,
            } => {
                keys.push(key.clone());
                [
                    "r".into(),
                    format!("{emission_us:.6}"),
                    format!("{tolerance_us:.6}"),
                    cost.to_string(),
                    slice.to_string(),
                    NONE.into(),
                ]
            }
            Op::Quota {
                key,
                previous,
                amount,
                cost,
                ttl_ms,
                weight_ppm,
                slice,
            } => {
                keys.extend([key.clone(), previous.clone()]);
                [
                    "q".into(),
                    amount.to_string(),
                    cost.to_string(),
                    ttl_ms.to_string(),
                    weight_ppm.to_string(),
                    slice.to_string(),
                ]
            }
            Op::Seat {
                key,
                identity,
                seats,
                idle_us,
            } => {
                keys.push(key.clone());
                [
                    "s".into(),
                    (*identity).into(),
                    seats.to_string(),
                    idle_us.to_string(),
                    NONE.into(),
                    NONE.into(),
                ]
            }
            Op::ReturnRate {
                key,
                emission_us,
                units,
            } => {
                keys.push(key.clone());
                [
                    "R".into(),
                    format!("{emission_us:.6}"),
                    units.to_string(),
                    NONE.into(),
                    NONE.into(),
                    NONE.into(),
                ]
            }
            Op::ReturnQuota { key, units } => {
                keys.push(key.clone());
                [
                    "Q".into(),
                    units.to_string(),
                    NONE.into(),
                    NONE.into(),
                    NONE.into(),
                    NONE.into(),
                ]
            }
            Op::Merge {
                key,
                marker,
                units,
                ttl_ms,
            } => {
                keys.extend([key.clone(), marker.clone()]);
                [
                    "M".into(),
                    units.to_string(),
                    ttl_ms.to_string(),
                    NONE.into(),
                    NONE.into(),
                    NONE.into(),
                ]
            }
        };
        args.extend(fields);
    }
}

/// Why an operation is in a call.
#[derive(Debug, PartialEq)]
enum Purpose {
    /// Counts `charges[position]`.
    Count {
        position: usize,
        /// Leased mode: where the units granted go.
        lease: Option<LeaseTarget>,
        /// Quotas: the window counted (start, length; seconds).
        quota_window: Option<(u64, u64)>,
    },
    /// Gives back an expired lease's units; the request does not wait on it.
    Return,
    /// Merges units counted during an outage (no request waits on it).
    Merge,
}

/// A lease a renewal fills: its own key, and the store key (a quota
/// window's) its units come from.
#[derive(Debug, PartialEq)]
struct LeaseTarget {
    lease_key: Box<str>,
    store_key: String,
    /// Rate leases: microseconds of arrival time per unit.
    emission_us: Option<f64>,
}

/// One script call being assembled.
#[derive(Debug, Default)]
struct Call<'a> {
    ops: Vec<(Op<'a>, Purpose)>,
    /// Leased mode: seat holders to remember once the call passes.
    seen: Vec<(String, u64)>,
    /// Leased mode: units this request spent locally, given back unless
    /// the call passes.
    spent_locally: Vec<(Box<str>, u64)>,
    /// Leased mode: what the limits spent locally have left, by position.
    left: Vec<(usize, Left)>,
    /// Where served-counted quotas' units go back to (see [`SharedRefund`]).
    refunds: Vec<SharedRefund>,
}

/// A call as the script takes it.
#[derive(Debug, PartialEq)]
struct Encoded {
    keys: Vec<String>,
    ops: usize,
    args: Vec<String>,
}

impl Call<'_> {
    fn encode(&self) -> Encoded {
        let mut keys = Vec::with_capacity(self.ops.len() + 1);
        let mut args = Vec::with_capacity(self.ops.len() * OP_ARGS);
        for (op, _) in &self.ops {
            op.encode(&mut keys, &mut args);
        }
        Encoded {
            keys,
            ops: self.ops.len(),
            args,
        }
    }
}

/// One operation's part of a passed call.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Passed {
    /// Units taken (a lease's slice; a merge: 1 if made now, 0 if made
    /// before).
    granted: u64,
    /// Rates and quotas: what the store has left after this operation
    /// (0 for the others).
    remaining: u64,
    /// Rates: microseconds until the rate is whole again.
    reset_us: Option<u64>,
}

/// The script's answer.
#[derive(Debug, PartialEq)]
enum Reply {
    /// Every operation passed.
    Passed(Vec<Passed>),
    /// Operation `op` (from 0) refused; nothing the call did was kept.
    Refused {
        op: usize,
        retry_us: u64,
        remaining: u64,
    },
}

impl Reply {
    /// `{0, granted, remaining, reset_us, …}` (three per operation; reset
    /// -1 for none) or `{i, retry_us, remaining}` (`i` from 1) for a call of
    /// `ops` operations; `None` for anything else.
    fn parse(reply: &[i64], ops: usize) -> Option<Reply> {
        let (&first, rest) = reply.split_first()?;
        let non_negative = |n: i64| u64::try_from(n).unwrap_or(0);
        match usize::try_from(first).ok()? {
            0 if rest.len() == ops * PASSED_FIELDS => rest
                .chunks_exact(PASSED_FIELDS)
                .map(|op| {
                    Some(Passed {
                        granted: u64::try_from(op[0]).ok()?,
                        remaining: u64::try_from(op[1]).ok()?,
                        reset_us: match op[2] {
                            -1 => None,
                            reset => Some(u64::try_from(reset).ok()?),
                        },
                    })
                })
                .collect::<Option<Vec<_>>>()
                .map(Reply::Passed),
            op @ 1.. if op <= ops && rest.len() == 2 => Some(Reply::Refused {
                op: op - 1,
                retry_us: non_negative(rest[0]),
                remaining: non_negative(rest[1]),
            }),
            _ => None,
        }
    }
}

#[path = "shared/claim.rs"]
mod claim;

#[path = "shared/slots.rs"]
mod slots;
pub use slots::{SlotHolder, SlotOp, SlotReply};

#[cfg(test)]
#[path = "shared/tests.rs"]
mod tests;
