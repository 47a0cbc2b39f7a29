//! This replica's instance slot: whether it may serve under its license
//! when the license limits how many replicas serve at once (see
//! [`crate::policy::InstanceLimit`]).
//!
//! With a shared store the slots are leases in it, renewed every heartbeat
//! and lapsing after three, taken atomically while fewer than the limit are
//! held (see `instances.lua`). A replica without one asks again every
//! quarter heartbeat (at most every half second), so it takes a slot soon
//! after one frees: at once when a holder stops gracefully (it gives its
//! slot back when draining begins), within a lease when a holder dies.
//!
//! A store that cannot answer changes nothing: a holder keeps serving on
//! its lease until the store answers again (then re-asserts it before the
//! store admits anyone new), and a replica without a slot stays without
//! one. Without a shared store the fleet cannot be counted: the replica
//! counts itself as the one instance (so a limit of 0 still refuses).
//!
//! What a replica without a slot does is the policy's choice
//! ([`OnInstanceLimit`]); the decision engine reads [`InstanceSlot::refusal`]
//! per request, one atomic load.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;
use prometheus::IntGauge;
use tokio::sync::Notify;

use super::shared::{SharedStore, SlotHolder, SlotOp};
use crate::metrics::Registry;
use crate::policy::{InstanceLimit, OnInstanceLimit};

/// `licensegate_instances_held` and `licensegate_instance_waiting`.
pub struct InstanceMetrics {
    held: IntGauge,
    waiting: IntGauge,
}

impl std::fmt::Debug for InstanceMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceMetrics").finish_non_exhaustive()
    }
}

impl InstanceMetrics {
    pub fn new(registry: &Registry) -> InstanceMetrics {
        InstanceMetrics {
            held: registry.gauge(
                "licensegate_instances_held",
                "Instance slots of this replica's license held across the fleet, as this \
                 replica last read them (0 when the license sets no instance limit).",
            ),
            waiting: registry.gauge(
                "licensegate_instance_waiting",
                "1 while this replica waits for an instance slot: the license's instance limit \
                 is reached by other replicas.",
            ),
        }
    }
}

/// Where this replica stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SlotState {
    /// No license is loaded: nothing to hold (readiness waits on the
    /// license itself).
    Unlicensed,
    /// Not decided yet: the store's first answer is not in.
    Pending,
    /// The license sets no instance limit.
    Unlimited,
    /// This replica holds a slot.
    Held,
    /// Every slot is held by others; this replica waits for one.
    Waiting,
    /// Given back: the replica is draining.
    Released,
}

impl SlotState {
    pub const fn as_str(self) -> &'static str {
        match self {
            SlotState::Unlicensed => "unlicensed",
            SlotState::Pending => "pending",
            SlotState::Unlimited => "unlimited",
            SlotState::Held => "held",
            SlotState::Waiting => "waiting",
            SlotState::Released => "released",
        }
    }
}

/// What `/license` shows of the slot, and what readiness reports.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SlotStatus {
    /// This replica's name among the replicas.
    pub instance: String,
    pub state: SlotState,
    /// The slots' key in the store (the license id, `customer=ACME`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Whose slots (`license lic-1`, `customer ACME`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "on_limit_text"
    )]
    pub on_limit: Option<OnInstanceLimit>,
    /// `shared` (counted across the fleet) or `local` (no shared store:
    /// this replica counts as the one instance).
    pub counted: &'static str,
    /// Holders seen, in the order they took their slots.
    pub holders: Vec<SlotHolder>,
    /// The store is settling after a gap: holders re-assert, nobody new
    /// is admitted.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub settling: bool,
    /// Why the last call to the store failed, while it fails.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_error: Option<String>,
    /// Another process runs under this replica's name: the two share one
    /// slot, and the fleet is undercounted.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub name_shared: bool,
    /// Renewals in a row that found no other process since `name_shared`
    /// was set (two processes need not alternate strictly).
    #[serde(skip)]
    clean_renewals: u8,
}

impl SlotStatus {
    /// Whether a replica configured `not_ready` past its limit is ready.
    pub fn ready(&self) -> Result<(), String> {
        match (self.state, self.on_limit) {
            (SlotState::Pending, _) => Err("instance slot not checked yet".to_owned()),
            (SlotState::Waiting, Some(OnInstanceLimit::NotReady)) => Err(self.describe()),
            _ => Ok(()),
        }
    }

    /// One line for logs and `/readyz`.
    pub fn describe(&self) -> String {
        let holder = self.holder.as_deref().unwrap_or("the license");
        let limit = self.limit.unwrap_or(0);
        let counted = match self.counted {
            "local" => " (no shared store: this replica counts as the one instance)",
            _ => "",
        };
        let names = || {
            let names: Vec<&str> = self.holders.iter().map(|h| h.instance.as_str()).collect();
            if names.is_empty() {
                String::new()
            } else {
                format!(": {}", names.join(", "))
            }
        };
        match self.state {
            SlotState::Pending => "instance slot not checked yet".to_owned(),
            SlotState::Unlicensed => "no license loaded: no instance slot to hold".to_owned(),
            SlotState::Unlimited => "no instance limit".to_owned(),
            SlotState::Released => "instance slot given back (draining)".to_owned(),
            SlotState::Held => format!(
                "holds an instance slot of {holder} ({} of {limit} held{}){counted}{}",
                self.holders.len().max(1),
                names(),
                if self.name_shared {
                    format!("; another replica runs as `{}` too and shares this slot: give each replica its own name (POD_NAME, or store.instance)", self.instance)
                } else {
                    String::new()
                }
            ),
            SlotState::Waiting => {
                let why = match (&self.store_error, self.settling) {
                    (Some(error), _) => format!("; the store cannot answer ({error})"),
                    (None, true) => "; the store is settling after a gap".to_owned(),
                    (None, false) => String::new(),
                };
                format!(
                    "waiting for an instance slot: {holder} allows {limit} instance{} at once, held by others{}{why}{counted} (on_limit: {})",
                    if limit == 1 { "" } else { "s" },
                    names(),
                    self.on_limit.unwrap_or_default().as_str()
                )
            }
        }
    }
}

fn on_limit_text<S: serde::Serializer>(
    on_limit: &Option<OnInstanceLimit>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(on_limit.unwrap_or_default().as_str())
}

/// What the decision engine needs of a replica without a slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceRefusal {
    pub on_limit: OnInstanceLimit,
    pub limit: u64,
    /// Whose slots (`license lic-1`).
    pub holder: String,
}

/// This replica's instance slot; see the module docs.
pub struct InstanceSlot {
    /// Set while the replica holds no slot it needs: read per request.
    refusal: ArcSwapOption<InstanceRefusal>,
    status: Mutex<SlotStatus>,
    metrics: InstanceMetrics,
    heartbeat: Duration,
}

impl std::fmt::Debug for InstanceSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceSlot")
            .field("status", &*self.status.lock())
            .finish_non_exhaustive()
    }
}

/// The limit in force: `Err(())` while no license is loaded.
pub type CurrentLimit = Result<Option<InstanceLimit>, ()>;

impl InstanceSlot {
    /// A slot for replica `instance`, counted in `store` when there is one
    /// (`heartbeat`: the store's).
    pub fn new(
        instance: String,
        shared: bool,
        heartbeat: Duration,
        registry: &Registry,
    ) -> InstanceSlot {
        InstanceSlot {
            refusal: ArcSwapOption::empty(),
            status: Mutex::new(SlotStatus {
                instance,
                state: SlotState::Pending,
                key: None,
                holder: None,
                limit: None,
                on_limit: None,
                counted: if shared { "shared" } else { "local" },
                holders: Vec::new(),
                settling: false,
                store_error: None,
                name_shared: false,
                clean_renewals: 0,
            }),
            metrics: InstanceMetrics::new(registry),
            heartbeat,
        }
    }

    /// Why this replica may not serve licensed requests as it would, if so.
    #[inline]
    pub fn refusal(&self) -> Option<Arc<InstanceRefusal>> {
        // Nearly always empty: a load that finds `None` takes no reference.
        if self.refusal.load().is_none() {
            return None;
        }
        self.refusal.load_full()
    }

    pub fn status(&self) -> SlotStatus {
        self.status.lock().clone()
    }

    /// How often a replica without a slot asks again.
    fn poll(&self) -> Duration {
        (self.heartbeat / 4).clamp(Duration::from_millis(50), Duration::from_millis(500))
    }

    /// Hold a slot while `current` says there is a limit, until `stop`
    /// resolves (draining began): then give it back and wait to be dropped.
    /// `changed` wakes it when the license changes; `report` runs after
    /// every pass with the status (readiness).
    pub async fn run(
        self: Arc<Self>,
        store: Option<Arc<SharedStore>>,
        current: impl Fn() -> CurrentLimit + Send,
        changed: Arc<Notify>,
        stop: impl Future<Output = ()> + Send,
        report: impl Fn(&SlotStatus) + Send,
    ) {
        let mut stop = std::pin::pin!(stop);
        // The key of the slot held in the store, if any.
        let mut held_key: Option<String> = None;
        loop {
            let pause = self.pass(store.as_deref(), &current, &mut held_key).await;
            report(&self.status());
            tokio::select! {
                () = &mut stop => break,
                () = tokio::time::sleep(pause) => {}
                // A new license (or none): its limit is read at once.
                () = changed.notified() => {}
            }
        }
        if let (Some(store), Some(key)) = (&store, held_key.take()) {
            match store.instance_slot(&key, SlotOp::Release, 0).await {
                Ok(_) => tracing::info!("instance slot given back"),
                Err(error) => {
                    tracing::warn!(%error, "could not give the instance slot back; it lapses with its lease")
                }
            }
        }
        {
            let mut status = self.status.lock();
            if status.state == SlotState::Held {
                status.state = SlotState::Released;
            }
        }
        // A draining replica finishes what it has, slot or not.
        self.refusal.store(None);
        report(&self.status());
        std::future::pending::<()>().await;
    }

    /// One look at the limit and the store; returns how long to wait for
    /// the next.
    async fn pass(
        &self,
        store: Option<&SharedStore>,
        current: &(impl Fn() -> CurrentLimit + Send),
        held_key: &mut Option<String>,
    ) -> Duration {
        let limit = current();
        let wanted = match &limit {
            Ok(Some(limit)) => Some(limit.key.as_str()),
            _ => None,
        };
        // The license (or its key) changed: the old slot goes back.
        if let (Some(store), Some(key)) = (store, held_key.as_deref()) {
            if wanted != Some(key) {
                if let Err(error) = store.instance_slot(key, SlotOp::Release, 0).await {
                    tracing::warn!(%error, "could not give back the previous license's instance slot; it lapses with its lease");
                }
                *held_key = None;
            }
        }
        let limit = match limit {
            Err(()) => {
                self.settle(SlotState::Unlicensed, None, Vec::new(), false, None);
                return self.poll();
            }
            Ok(None) => {
                self.settle(SlotState::Unlimited, None, Vec::new(), false, None);
                return self.poll();
            }
            Ok(Some(limit)) => limit,
        };
        let Some(store) = store else {
            let state = if limit.limit >= 1 {
                SlotState::Held
            } else {
                SlotState::Waiting
            };
            self.settle(state, Some(&limit), Vec::new(), false, None);
            return self.poll();
        };
        if !store.is_connected() && self.status.lock().state == SlotState::Pending {
            // Starting: the store's first connection is on its way.
            return self.poll();
        }
        let op = if held_key.is_some() {
            SlotOp::Renew
        } else {
            SlotOp::Take
        };
        match store.instance_slot(&limit.key, op, limit.limit).await {
            Ok(reply) => {
                self.name_shared(reply.name_shared);
                *held_key = reply.held.then(|| limit.key.clone());
                let state = if reply.held {
                    SlotState::Held
                } else {
                    SlotState::Waiting
                };
                self.settle(state, Some(&limit), reply.holders, reply.settling, None);
                if reply.held {
                    self.heartbeat
                } else {
                    self.poll()
                }
            }
            Err(error) => {
                // Nothing changes hands while the store is away: a holder
                // serves on, a replica without a slot stays without.
                let (state, holders) = {
                    let status = self.status.lock();
                    let state = match status.state {
                        SlotState::Held if held_key.is_some() => SlotState::Held,
                        _ => SlotState::Waiting,
                    };
                    (state, status.holders.clone())
                };
                self.settle(state, Some(&limit), holders, false, Some(error));
                self.poll()
            }
        }
    }

    /// Note whether another process renewed under this replica's name;
    /// said in the log when it starts, cleared after three clean renewals.
    fn name_shared(&self, shared: bool) {
        let mut status = self.status.lock();
        if shared {
            if !status.name_shared {
                tracing::error!(
                    instance = %status.instance,
                    "another replica runs as `{}` and renews the same instance slot: the two count as one instance; give each replica its own name (POD_NAME, or store.instance)",
                    status.instance
                );
            }
            status.name_shared = true;
            status.clean_renewals = 0;
        } else if status.name_shared {
            status.clean_renewals += 1;
            if status.clean_renewals >= 3 {
                status.name_shared = false;
            }
        }
    }

    /// Record where the replica stands; log and count what changed.
    fn settle(
        &self,
        state: SlotState,
        limit: Option<&InstanceLimit>,
        holders: Vec<SlotHolder>,
        settling: bool,
        store_error: Option<String>,
    ) {
        let mut status = self.status.lock();
        let before = status.state;
        let error_before = status.store_error.is_some();
        status.state = state;
        status.key = limit.map(|l| l.key.clone());
        status.holder = limit.map(|l| l.holder.clone());
        status.limit = limit.map(|l| l.limit);
        status.on_limit = limit.map(|l| l.on_limit);
        status.holders = holders;
        status.settling = settling;
        let error_now = store_error.is_some();
        status.store_error = store_error;
        let held = match (state, status.counted) {
            (SlotState::Held | SlotState::Waiting, "shared") => status.holders.len(),
            (SlotState::Held, _) => 1,
            _ => 0,
        };
        self.metrics
            .held
            .set(i64::try_from(held).unwrap_or(i64::MAX));
        self.metrics
            .waiting
            .set(i64::from(state == SlotState::Waiting));
        let refusal = match (state, limit) {
            (SlotState::Waiting, Some(limit)) => Some(InstanceRefusal {
                on_limit: limit.on_limit,
                limit: limit.limit,
                holder: limit.holder.clone(),
            }),
            _ => None,
        };
        if self.refusal.load().as_deref() != refusal.as_ref() {
            self.refusal.store(refusal.map(Arc::new));
        }
        match (before, state) {
            (SlotState::Held, SlotState::Waiting) => {
                tracing::warn!(instance = %status.instance, "lost the instance slot: {}", status.describe());
            }
            (b, SlotState::Waiting) if b != SlotState::Waiting => {
                tracing::warn!(instance = %status.instance, "{}", status.describe());
            }
            (b, SlotState::Held) if b != SlotState::Held && status.counted == "local" => {
                // Said at start: the limit is not enforced across the fleet.
                tracing::warn!(instance = %status.instance, "{}", status.describe());
            }
            (b, SlotState::Held) if b != SlotState::Held => {
                tracing::info!(instance = %status.instance, "{}", status.describe());
            }
            _ => {}
        }
        if error_now && !error_before {
            tracing::warn!(
                error = status.store_error.as_deref().unwrap_or_default(),
                "instance slot: the store cannot answer; {}",
                if state == SlotState::Held {
                    "serving on the slot held"
                } else {
                    "no slot is taken until it answers"
                }
            );
        } else if error_before && !error_now {
            tracing::info!("instance slot: the store answers again");
        }
    }
}
