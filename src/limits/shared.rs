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

use super::quota::window;
use super::settings::{StoreMode, StoreNodes, StoreSettings};
use super::{Clock, Hasher, Limited};
use crate::limits::StoreMetrics;
use crate::policy::{LimitDef, LimitKind, Period};

const SCRIPT: &str = include_str!("shared.lua");

/// Timeouts in a row before the store is treated as down (one slow answer
/// is noise; three are an outage).
const TIMEOUTS_TO_TRIP: u32 = 3;

/// How often a replica announces itself in the store's replica set.
const HEARTBEAT: Duration = Duration::from_secs(2);

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// One limit of one request, for the store.
#[derive(Debug)]
pub struct SharedCheck<'a> {
    pub def: &'a LimitDef,
    pub amount: u64,
    pub cost: u64,
    pub key: &'a str,
    /// Seats: who holds the seat.
    pub identity: &'a str,
}

/// What the store said about a request's limits.
#[derive(Debug)]
pub enum SharedOutcome {
    Allowed,
    /// `checks[position]` refused.
    Limited {
        position: usize,
        limited: Limited,
    },
    /// No answer in time (or an error): the caller falls back.
    Unavailable,
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
}

pub struct SharedStore {
    settings: StoreSettings,
    connection: ArcSwapOption<Connection>,
    script: redis::Script,
    degraded: AtomicBool,
    timeouts_in_a_row: AtomicU32,
    wake: tokio::sync::Notify,
    metrics: Arc<StoreMetrics>,
    leases: DashMap<Box<str>, Mutex<Lease>, Hasher>,
    /// Leased mode: seat holders confirmed recently, by seat key and identity.
    seats_seen: DashMap<Box<str>, u64, Hasher>,
    clock: Clock,
    /// This process, in the store's set of live replicas.
    instance: String,
    /// Live replicas last seen in the store (including this one).
    observed_replicas: AtomicU32,
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
            degraded: AtomicBool::new(true),
            timeouts_in_a_row: AtomicU32::new(0),
            wake: tokio::sync::Notify::new(),
            metrics,
            leases: DashMap::with_hasher(Hasher::default()),
            seats_seen: DashMap::with_hasher(Hasher::default()),
            clock,
            instance: instance_id(),
            observed_replicas: AtomicU32::new(1),
        }
    }

    pub fn settings(&self) -> &StoreSettings {
        &self.settings
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
    pub async fn check(&self, tag: &str, checks: &[SharedCheck<'_>]) -> SharedOutcome {
        let leased = self.settings.mode == StoreMode::Leased;
        let now = self.clock.mono_nanos();
        let unix_nanos = self.clock.unix_nanos();
        let mut call = Call::default();
        // Leased units spent locally by this request, to give back if a
        // later limit refuses.
        let mut spent_locally: Vec<(Box<str>, u64)> = Vec::new();
        // Per operation sent: the check position (usize::MAX for give-backs)
        // and, for leases, (lease key, store key).
        let mut lease_ops: Vec<(usize, Option<LeaseKeys>)> = Vec::new();
        for (position, check) in checks.iter().enumerate() {
            let base = format!("{}:{{{tag}}}:{}", self.settings.key_prefix, check.def.name);
            match &check.def.kind {
                LimitKind::Rate { window: w, burst } => {
                    let window_us = w.as_micros().max(1) as f64;
                    let emission = window_us / check.amount.max(1) as f64;
                    let tolerance = emission * burst.unwrap_or(check.amount) as f64;
                    let key = format!("{base}:r:{}", check.key);
                    if check.amount == 0 {
                        return SharedOutcome::Limited {
                            position,
                            limited: Limited {
                                retry_after: *w,
                                limit: 0,
                                remaining: 0,
                                window: Some(*w),
                            },
                        };
                    }
                    let slice = if leased {
                        match self.spend_lease(&key, check.cost, now) {
                            Spend::Done => {
                                spent_locally.push((key.into(), check.cost));
                                continue;
                            }
                            Spend::Renew { slice, give_back } => {
                                if let Some((units, _)) = give_back {
                                    call.op(
                                        &[&key],
                                        [
                                            "R",
                                            &emission.to_string(),
                                            &units.to_string(),
                                            "-",
                                            "-",
                                            "-",
                                        ],
                                    );
                                    lease_ops.push((usize::MAX, None));
                                }
                                slice
                            }
                        }
                    } else {
                        0
                    };
                    call.op(
                        &[&key],
                        [
                            "r",
                            &format!("{emission:.6}"),
                            &format!("{tolerance:.6}"),
                            &check.cost.to_string(),
                            &slice.to_string(),
                            "-",
                        ],
                    );
                    lease_ops.push((
                        position,
                        leased.then(|| (key.as_str().into(), key.clone(), Some(emission))),
                    ));
                }
                LimitKind::Quota { period } => {
                    let now_secs = unix_nanos / 1_000_000_000;
                    let (start, length) = window(*period, now_secs);
                    let key = format!("{base}:q:{}:{start}", check.key);
                    let previous =
                        format!("{base}:q:{}:{}", check.key, start.saturating_sub(length));
                    let (weight, keep) = match period {
                        Period::Rolling(_) => {
                            let elapsed = unix_nanos.saturating_sub(start * 1_000_000_000);
                            let window = length * 1_000_000_000;
                            let left = window.saturating_sub(elapsed);
                            (
                                (u128::from(left) * 1_000_000 / u128::from(window)) as u64,
                                length,
                            )
                        }
                        _ => (0, 86_400),
                    };
                    let ttl_ms = (start + length + keep).saturating_sub(now_secs) * 1000;
                    let lease_key = format!("{base}:q:{}", check.key);
                    let slice = if leased {
                        match self.spend_lease(&lease_key, check.cost, now) {
                            Spend::Done => {
                                spent_locally.push((lease_key.into(), check.cost));
                                continue;
                            }
                            Spend::Renew { slice, give_back } => {
                                if let Some((units, old_key)) = give_back {
                                    call.op(
                                        &[&old_key],
                                        ["Q", &units.to_string(), "-", "-", "-", "-"],
                                    );
                                    lease_ops.push((usize::MAX, None));
                                }
                                slice
                            }
                        }
                    } else {
                        0
                    };
                    call.op(
                        &[&key, &previous],
                        [
                            "q",
                            &check.amount.to_string(),
                            &check.cost.to_string(),
                            &ttl_ms.max(1000).to_string(),
                            &weight.to_string(),
                            &slice.to_string(),
                        ],
                    );
                    lease_ops.push((
                        position,
                        leased.then(|| (lease_key.into(), key.clone(), None)),
                    ));
                    call.quota_windows.push((position, start, length));
                }
                LimitKind::Seats { idle, .. } => {
                    let key = format!("{base}:s:{}", check.key);
                    if leased {
                        let seen_key = format!("{key}\u{1f}{}", check.identity);
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
                    call.op(
                        &[&key],
                        [
                            "s",
                            check.identity,
                            &check.amount.to_string(),
                            &idle.as_micros().to_string(),
                            "-",
                            "-",
                        ],
                    );
                    lease_ops.push((position, None));
                }
                LimitKind::Concurrency => {}
            }
        }
        if call.ops == 0 {
            return SharedOutcome::Allowed;
        }
        let reply = match self.invoke(&call).await {
            Some(reply) => reply,
            None => {
                self.give_back_local(&spent_locally);
                return SharedOutcome::Unavailable;
            }
        };
        match reply.first().copied() {
            Some(0) => {
                for ((position, lease), granted) in lease_ops.iter().zip(reply.iter().skip(1)) {
                    if let (Some((lease_key, store_key, emission)), true) =
                        (lease, *position != usize::MAX)
                    {
                        let cost = checks[*position].cost;
                        let granted = (*granted).max(0) as u64;
                        self.install_lease(
                            lease_key,
                            store_key.clone(),
                            *emission,
                            granted,
                            cost,
                            now,
                        );
                    }
                }
                for (seen_key, until) in call.seen {
                    self.seats_seen.insert(seen_key.into(), until);
                }
                SharedOutcome::Allowed
            }
            Some(op) if op > 0 => {
                self.give_back_local(&spent_locally);
                let Some(&(position, _)) = lease_ops.get(op as usize - 1) else {
                    return SharedOutcome::Unavailable;
                };
                if position == usize::MAX {
                    return SharedOutcome::Unavailable;
                }
                let check = &checks[position];
                let retry_us = reply.get(1).copied().unwrap_or(0);
                let remaining = reply.get(2).copied().unwrap_or(0).max(0) as u64;
                let retry_after = match &check.def.kind {
                    LimitKind::Quota { period } => {
                        let (start, length) = call
                            .quota_windows
                            .iter()
                            .find(|(p, _, _)| *p == position)
                            .map(|(_, s, l)| (*s, *l))
                            .unwrap_or((0, 0));
                        let end = (start + length) * 1_000_000_000;
                        let to_end = Duration::from_nanos(end.saturating_sub(unix_nanos));
                        match period {
                            // Never early: one window after this one ends,
                            // nothing of today's count is carried any more.
                            Period::Rolling(w) => to_end + *w,
                            _ => to_end,
                        }
                    }
                    _ => Duration::from_micros(retry_us.max(0) as u64),
                };
                let window = match &check.def.kind {
                    LimitKind::Rate { window, .. } => Some(*window),
                    LimitKind::Quota { .. } => call
                        .quota_windows
                        .iter()
                        .find(|(p, _, _)| *p == position)
                        .map(|(_, _, l)| Duration::from_secs(*l)),
                    LimitKind::Seats { idle, .. } => Some(*idle),
                    LimitKind::Concurrency => None,
                };
                SharedOutcome::Limited {
                    position,
                    limited: Limited {
                        retry_after,
                        limit: check.amount,
                        remaining,
                        window,
                    },
                }
            }
            _ => {
                self.give_back_local(&spent_locally);
                SharedOutcome::Unavailable
            }
        }
    }

    /// One round trip, bounded by the timeout. `None` on any failure.
    async fn invoke(&self, call: &Call) -> Option<Vec<i64>> {
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
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
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

    /// Announce this replica and count the live ones (seen within three
    /// heartbeats). Returns whether the count changed.
    async fn heartbeat(&self) -> bool {
        let Some(connection) = self.connection.load_full() else {
            return false;
        };
        let key = format!("{}:{{replicas}}", self.settings.key_prefix);
        let now_ms = self.clock.unix_nanos() / 1_000_000;
        let horizon = now_ms.saturating_sub(3 * HEARTBEAT.as_millis() as u64);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .zadd(&key, &self.instance, now_ms)
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
        for (key, units, emission) in returns {
            let mut call = Call::default();
            match emission {
                Some(emission) => call.op(
                    &[&key],
                    [
                        "R",
                        &format!("{emission:.6}"),
                        &units.to_string(),
                        "-",
                        "-",
                        "-",
                    ],
                ),
                None => call.op(&[&key], ["Q", &units.to_string(), "-", "-", "-", "-"]),
            }
            if self.invoke(&call).await.is_some() {
                self.metrics.lease_returns.inc();
            }
        }
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
            return Spend::Done;
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

    fn install_lease(
        &self,
        key: &str,
        store_key: String,
        emission: Option<f64>,
        granted: u64,
        cost: u64,
        now: u64,
    ) {
        self.metrics.lease_grants.inc();
        let period = self.settings.lease_period.as_nanos() as u64;
        let entry = self.leases.entry(key.into()).or_default();
        let mut lease = entry.lock();
        if lease.slice == 0 {
            lease.slice = self.initial_slice();
        }
        // Add, never overwrite: concurrent requests may each have taken a
        // slice; none of it may be lost.
        lease.remaining += granted.saturating_sub(cost);
        if lease.key != store_key {
            lease.spent = 0;
        }
        lease.spent += cost;
        lease.expires_at = now + period;
        lease.key = store_key;
        lease.emission = emission;
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

/// A random id for this process among the replicas.
fn instance_id() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    format!("{}-{:016x}", std::process::id(), u64::from_be_bytes(bytes))
}

/// A lease's own key and the store key its units come from.
type LeaseKeys = (Box<str>, String, Option<f64>);

enum Spend {
    Done,
    Renew {
        slice: u64,
        /// Unused units of an expired lease, and the store key they came from.
        give_back: Option<(u64, String)>,
    },
}

/// One script call being assembled.
#[derive(Default)]
struct Call {
    keys: Vec<String>,
    args: Vec<String>,
    ops: usize,
    quota_windows: Vec<(usize, u64, u64)>,
    seen: Vec<(String, u64)>,
}

impl Call {
    fn op(&mut self, keys: &[&str], args: [&str; 6]) {
        self.keys.extend(keys.iter().map(|k| (*k).to_owned()));
        self.args.extend(args.iter().map(|a| (*a).to_owned()));
        self.ops += 1;
    }
}
