//! The one seam every limit is counted through: a request's limits in the
//! route's order, on this replica's memory store or on the shared store,
//! with the shared store's fallback and the give-backs of a refusal.
//!
//! The caller (the decision engine) says *what* to count — each limit's
//! key, seat holder and number for this request, as [`Charge`]s; this module
//! decides *where* and *how*: which store counts which kind, what a replica
//! counts while the shared store is away (each limit's `on_store_error`, its
//! number divided by the replicas), what a refusal gives back, and the
//! [`Ticket`]s that give back a served-counted quota's units when the
//! request turns out not to be served.

use std::borrow::Cow;
use std::sync::Arc;

use super::outage::WindowKey;
use super::shared::{SharedOutcome, SharedStore};
use super::ticket::{OutageNote, SharedTicket};
use super::{crossed, Crossing};
use super::{
    Budget, Budgets, Checked, Clock, Counters, Left, Limited, MemoryStore, Permit, RefundMetrics,
    Ticket, Tickets,
};
use crate::policy::{LimitDef, LimitKind, OnStoreError};

/// One limit as one request counts it.
#[derive(Clone, Debug)]
pub struct Charge<'a> {
    pub def: &'a LimitDef,
    /// This replica's counters for `def`.
    pub counters: &'a Counters,
    /// The limit's number for this request (unlimited ones are not charged).
    pub amount: u64,
    /// Units this request costs.
    pub cost: u64,
    pub key: Cow<'a, str>,
    /// Seats: who holds the seat (`""` for other kinds).
    pub identity: Cow<'a, str>,
}

/// Why a request's limits refused it. Whatever it counted before the
/// refusal has been given back, and its permits released.
#[derive(Debug)]
pub enum Refusal<'a> {
    /// `def` is reached.
    Limited { def: &'a LimitDef, limited: Limited },
    /// `def` is counted in the shared store, which is away, and its
    /// `on_store_error` is `deny`.
    StoreUnavailable { def: &'a LimitDef },
}

/// Counts requests' limits: in memory, or in a shared store with the memory
/// store as its fallback (concurrency is always counted here).
#[derive(Debug)]
pub struct Limiter {
    memory: Arc<MemoryStore>,
    shared: Option<Arc<SharedStore>>,
    refunds: Arc<RefundMetrics>,
}

/// What an allowed request holds once counted, until its response ends.
#[derive(Debug, Default)]
pub struct Held {
    /// Concurrency slots.
    pub permits: Vec<Permit>,
    /// What the rates and quotas that state it have left.
    pub budgets: Budgets,
    /// Served-counted quota charges, settled when the response ends.
    pub tickets: Tickets,
    /// Quotas with `overage` this request went past 100 % of (rare: a
    /// `Vec` allocates only then).
    pub overage: Vec<OverageUse>,
    /// Quota thresholds this request's units crossed, to be announced.
    pub crossings: Vec<Crossing>,
}

/// A request's units past 100 % of a quota with `overage`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverageUse {
    /// The quota's name.
    pub limit: Arc<str>,
    /// The meter overage units feed (`NAME.overage`).
    pub meter: Arc<str>,
    pub units: u64,
}

impl Held {
    /// A refusal: the slots go, the units were given back already.
    fn refused(&mut self) {
        self.permits.clear();
        self.budgets.clear();
        self.tickets.forget();
        self.overage.clear();
        self.crossings.clear();
    }
}

/// What this replica counts of a request's limits.
#[derive(Clone, Copy, Debug)]
enum Share<'t> {
    /// Every limit (no shared store).
    All,
    /// Concurrency only: the shared store counts the rest.
    Concurrency,
    /// The shared store is away: each limit's `on_store_error`, numbers
    /// divided among the replicas. Concurrency was counted already. Quota
    /// units counted go into the store's outage ledger under `tag`, to be
    /// merged when it is back.
    Fallback { replicas: u32, tag: &'t str },
}

/// What [`Share`] says about one limit.
enum Portion {
    Skip,
    Deny,
    /// Count with the number divided by this.
    Divided(u64),
}

impl Share<'_> {
    fn portion(self, def: &LimitDef) -> Portion {
        let concurrency = matches!(def.kind, LimitKind::Concurrency);
        match self {
            Share::All => Portion::Divided(1),
            Share::Concurrency if concurrency => Portion::Divided(1),
            Share::Concurrency => Portion::Skip,
            Share::Fallback { .. } if concurrency => Portion::Skip,
            Share::Fallback { replicas, .. } => match def.on_store_error {
                OnStoreError::Allow => Portion::Skip,
                OnStoreError::Deny => Portion::Deny,
                OnStoreError::Fallback => Portion::Divided(u64::from(replicas.max(1))),
            },
        }
    }
}

/// This replica's part of `amount` (at least 1 of a non-zero limit).
fn divided(amount: u64, by: u64) -> u64 {
    if by > 1 {
        (amount / by).max(u64::from(amount > 0))
    } else {
        amount
    }
}

/// Keep what `charge` has left for the response, if its limit states it.
fn offer(budgets: &mut Budgets, charge: &Charge<'_>, limit: u64, left: Option<Left>) {
    if let (true, Some(left)) = (charge.def.headers, left) {
        budgets.offer(Budget::new(&charge.def.name, limit, &left));
    }
}

/// What a quota charge that passed says besides: its budget against the
/// limit (not the soft ceiling above it), the units past 100 % of a quota
/// with `overage`, and, when `announce` (the count is the quota's whole
/// count, not a replica's share of it), the thresholds it crossed.
fn after_quota(
    held: &mut Held,
    charge: &Charge<'_>,
    amount: u64,
    left: Left,
    announce: bool,
    clock: &Clock,
) {
    let LimitKind::Quota { period } = charge.def.kind else {
        offer(&mut held.budgets, charge, amount, Some(left));
        return;
    };
    let ceiling = charge.def.ceiling(amount);
    let headroom = ceiling - amount;
    let used = ceiling.saturating_sub(left.remaining);
    let stated = Left {
        remaining: left.remaining.saturating_sub(headroom),
        ..left
    };
    offer(&mut held.budgets, charge, amount, Some(stated));
    if let (Some(overage), true) = (&charge.def.overage, used > amount) {
        held.overage.push(OverageUse {
            limit: Arc::clone(&charge.def.name),
            meter: Arc::clone(&overage.meter),
            units: charge.cost.min(used - amount),
        });
    }
    if !announce || charge.def.thresholds.is_empty() {
        return;
    }
    let before = used.saturating_sub(charge.cost);
    let mut crossed = crossed(&charge.def.thresholds, amount, before, used).peekable();
    if crossed.peek().is_none() {
        return;
    }
    let (window_start, window_seconds) =
        super::quota_window(period, clock.unix_nanos() / 1_000_000_000);
    for threshold_percent in crossed {
        held.crossings.push(Crossing {
            limit: Arc::clone(&charge.def.name),
            key: charge.key.to_string(),
            threshold_percent,
            window_start,
            window_seconds,
            used,
            limit_amount: amount,
        });
    }
}

impl Limiter {
    pub fn new(
        memory: Arc<MemoryStore>,
        shared: Option<Arc<SharedStore>>,
        refunds: Arc<RefundMetrics>,
    ) -> Limiter {
        Limiter {
            memory,
            shared,
            refunds,
        }
    }

    /// Where served-counted quota charges given back are counted.
    pub fn refunds(&self) -> &Arc<RefundMetrics> {
        &self.refunds
    }

    /// The in-memory store: this replica's counters, and the state file's.
    pub fn memory(&self) -> &Arc<MemoryStore> {
        &self.memory
    }

    pub fn shared(&self) -> Option<&Arc<SharedStore>> {
        self.shared.as_ref()
    }

    pub fn clock(&self) -> &Clock {
        self.memory.clock()
    }

    /// Count `charges` in memory, in order; never suspends. Concurrency
    /// slots, budgets and tickets go to `held`. Without a shared store this
    /// is the whole count; with one, use [`Limiter::count`].
    pub fn count_in_memory<'a, I>(&self, charges: I, held: &mut Held) -> Result<(), Refusal<'a>>
    where
        I: Iterator<Item = Charge<'a>> + Clone,
    {
        self.count_here(charges, Share::All, held)
    }

    /// Count `charges`: in the shared store when there is one (one round
    /// trip; concurrency here), else in memory. `tag` keeps a request's
    /// shared keys on one shard (the license id; the first key without one).
    pub async fn count<'a, I>(
        &self,
        tag: Option<&str>,
        charges: I,
        held: &mut Held,
    ) -> Result<(), Refusal<'a>>
    where
        I: Iterator<Item = Charge<'a>> + Clone,
    {
        let Some(shared) = &self.shared else {
            return self.count_here(charges, Share::All, held);
        };
        self.count_here(charges.clone(), Share::Concurrency, held)?;
        let is_remote = |charge: &Charge<'_>| !matches!(charge.def.kind, LimitKind::Concurrency);
        let first_key = charges.clone().find(is_remote).map(|charge| charge.key);
        let tag = tag.or(first_key.as_deref()).unwrap_or_default();
        let fallback = Share::Fallback {
            replicas: shared.replicas(),
            tag,
        };
        if !shared.is_available() {
            return self.count_here(charges, fallback, held);
        }
        let remote: Vec<Charge<'a>> = charges.clone().filter(is_remote).collect();
        if remote.is_empty() {
            return Ok(());
        }
        match shared.check(tag, &remote).await {
            SharedOutcome::Allowed { left, refunds } => {
                for (position, left) in left {
                    let charge = &remote[position];
                    after_quota(held, charge, charge.amount, left, true, self.clock());
                }
                for refund in refunds {
                    let ticket = Ticket::Shared(Box::new(SharedTicket {
                        store: Arc::clone(shared),
                        lease_key: refund.lease_key,
                        key: refund.key,
                        units: refund.units,
                    }));
                    held.tickets.push(ticket, &self.refunds);
                }
                Ok(())
            }
            SharedOutcome::Limited { position, limited } => {
                held.refused();
                Err(Refusal::Limited {
                    def: remote[position].def,
                    limited,
                })
            }
            SharedOutcome::Unavailable => self.count_here(charges, fallback, held),
        }
    }

    /// Count this replica's `share` of `charges` in memory. A refusal gives
    /// back what the charges before it counted and releases the permits.
    fn count_here<'a, I>(
        &self,
        charges: I,
        share: Share<'_>,
        held: &mut Held,
    ) -> Result<(), Refusal<'a>>
    where
        I: Iterator<Item = Charge<'a>> + Clone,
    {
        let clock = self.memory.clock();
        for (counted, charge) in charges.clone().enumerate() {
            let by = match share.portion(charge.def) {
                Portion::Skip => continue,
                Portion::Divided(by) => by,
                Portion::Deny => {
                    self.give_back(charges.take(counted), share);
                    held.refused();
                    return Err(Refusal::StoreUnavailable { def: charge.def });
                }
            };
            let amount = divided(charge.amount, by);
            // A replica's share is not the quota's count: no thresholds.
            let whole = by == 1;
            let checked = charge.counters.check(
                charge.def,
                &charge.key,
                &charge.identity,
                charge.def.ceiling(amount),
                charge.cost,
                clock,
            );
            match checked {
                Checked::Allowed(left) => {
                    match left {
                        Some(left) => after_quota(held, &charge, amount, left, whole, clock),
                        None => offer(&mut held.budgets, &charge, amount, None),
                    }
                    self.record_outage(&charge, share, false);
                }
                Checked::Ticketed(left, hold) => {
                    after_quota(held, &charge, amount, left, whole, clock);
                    let outage = self.record_outage(&charge, share, false);
                    held.tickets
                        .push(Ticket::Memory { hold, outage }, &self.refunds);
                }
                Checked::Held(permit) => held.permits.push(permit),
                Checked::Limited(limited) => {
                    self.give_back(charges.take(counted), share);
                    held.refused();
                    return Err(Refusal::Limited {
                        def: charge.def,
                        limited,
                    });
                }
            }
        }
        Ok(())
    }

    /// Give back what `charges` counted under `share` (every one of them
    /// passed: counting stops at the first refusal).
    fn give_back<'a>(&self, charges: impl Iterator<Item = Charge<'a>>, share: Share<'_>) {
        let clock = self.memory.clock();
        for charge in charges {
            if let Portion::Divided(by) = share.portion(charge.def) {
                charge.counters.refund(
                    charge.def,
                    &charge.key,
                    divided(charge.amount, by),
                    charge.cost,
                    clock,
                );
                self.record_outage(&charge, share, true);
            }
        }
    }

    /// In fallback, note a quota's units counted here (or, `given_back`,
    /// no longer) in the outage ledger, to be merged into the shared store
    /// when it is back. Rates and seats have nothing to merge (see
    /// [`super::outage`]). Where it was noted, for a served-counted
    /// quota's ticket to take it out again (fallback only, so allocating
    /// here is no cost on the usual path).
    fn record_outage(
        &self,
        charge: &Charge<'_>,
        share: Share<'_>,
        given_back: bool,
    ) -> Option<Box<OutageNote>> {
        let (Share::Fallback { tag, .. }, LimitKind::Quota { period }, Some(shared)) =
            (share, &charge.def.kind, &self.shared)
        else {
            return None;
        };
        let ledger = shared.outage();
        let now = self.memory.clock().unix_nanos() / 1_000_000_000;
        let (name, key) = (&charge.def.name, &*charge.key);
        if given_back {
            ledger.give_back(tag, name, key, *period, now, charge.cost);
            return None;
        }
        ledger.record(tag, name, key, *period, now, charge.cost);
        (charge.def.count == crate::policy::Count::Served).then(|| {
            Box::new(OutageNote {
                store: Arc::clone(shared),
                window: WindowKey::new(tag, name, key, *period, now),
                period: *period,
            })
        })
    }
}

#[cfg(test)]
mod tests;
