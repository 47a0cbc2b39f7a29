//! Served counting (`count: served`, the default for quotas): a quota unit
//! is taken when a request is decided, so concurrent requests can never
//! overshoot the quota, and given back when the request turns out not to
//! have been served.
//!
//! The limiter hands out a [`Ticket`] with each such charge, as it hands out
//! a concurrency [`Permit`](super::Permit): what is needed to give the units
//! back where they were taken, and nothing to look up again. In memory that
//! is the key's slot (an `Arc`), the window and the units: the decision path
//! allocates nothing. In the shared store it is the window's key in Redis,
//! or the local lease the units were spent from.
//!
//! The request carries its [`Tickets`] to the end of its response, where
//! the proxy settles them: [`Tickets::served`] keeps the units,
//! [`Tickets::unserved`] gives them back. Dropped unsettled (the client went
//! away before the response head, and the request's future with it), they
//! give the units back as [`Unserved::ClientGone`].

use std::sync::Arc;

use super::metrics::RefundMetrics;
use super::outage::WindowKey;
use super::quota::QuotaHold;
use super::shared::SharedStore;
use crate::policy::Period;

/// Why a request was not served, as `licensegate_quota_refunds_total`
/// labels it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unserved {
    /// A 5xx answer: the upstream's, or licensegate's own 502 and 504.
    UpstreamError,
    /// The response body did not complete (the upstream broke off, or the
    /// client left mid-body).
    Incomplete,
    /// The client went away before the response head.
    ClientGone,
}

impl Unserved {
    pub const ALL: [Unserved; 3] = [
        Unserved::UpstreamError,
        Unserved::Incomplete,
        Unserved::ClientGone,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Unserved::UpstreamError => "upstream_error",
            Unserved::Incomplete => "incomplete",
            Unserved::ClientGone => "client_gone",
        }
    }
}

/// One served-counted quota charge: where its units go back to.
#[derive(Debug)]
pub enum Ticket {
    /// Counted in this replica's memory.
    Memory {
        hold: QuotaHold,
        /// Counted in fallback while the shared store was away: also noted
        /// in its outage ledger, to be taken out there too.
        outage: Option<Box<OutageNote>>,
    },
    /// Counted in the shared store. Boxed: that path allocates anyway, and
    /// the memory store's tickets stay small.
    Shared(Box<SharedTicket>),
}

/// Where a shared quota's units go back to.
#[derive(Debug)]
pub struct SharedTicket {
    pub store: Arc<SharedStore>,
    /// Leased mode: the local lease they were spent from (or taken with).
    pub lease_key: Option<Box<str>>,
    /// The quota window's key in the store.
    pub key: String,
    pub units: u64,
}

/// Where fallback counting noted a quota's units in the outage ledger.
#[derive(Debug)]
pub struct OutageNote {
    pub store: Arc<SharedStore>,
    pub window: WindowKey,
    pub period: Period,
}

impl Ticket {
    /// Give the units back.
    fn give_back(self) {
        match self {
            Ticket::Memory { hold, outage } => {
                hold.give_back();
                if let Some(note) = outage {
                    let at = &note.window;
                    note.store.outage().give_back(
                        &at.tag,
                        &at.limit,
                        &at.key,
                        note.period,
                        at.start,
                        hold.units,
                    );
                }
            }
            Ticket::Shared(ticket) => {
                let SharedTicket {
                    store,
                    lease_key,
                    key,
                    units,
                } = *ticket;
                // Into the lease while it spends from the same window;
                // otherwise (accurate mode, or the lease has moved on to
                // another window or was returned) to the window's key.
                let leased = lease_key
                    .is_some_and(|lease_key| store.give_back_to_lease(&lease_key, &key, units));
                if !leased {
                    return_to_store(store, key, units);
                }
            }
        }
    }
}

/// Give `units` back to the shared store's `key`, off the request path: the
/// response does not wait on Redis.
fn return_to_store(store: Arc<SharedStore>, key: String, units: u64) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn(async move { store.return_quota(key, units).await });
        }
        Err(_) => tracing::debug!(
            key,
            units,
            "no runtime to give quota units back to the shared store"
        ),
    }
}

/// The tickets of one request. See the module comment.
///
/// One is held inline: a route rarely has more than one quota, and the
/// decision allocates nothing; a route with more keeps the rest in a list
/// (allocated then, and only then).
#[derive(Debug, Default)]
pub struct Tickets {
    first: Option<Ticket>,
    more: Vec<Ticket>,
    metrics: Option<Arc<RefundMetrics>>,
}

impl Tickets {
    pub fn is_empty(&self) -> bool {
        self.first.is_none() && self.more.is_empty()
    }

    pub fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.more.len()
    }

    pub(crate) fn push(&mut self, ticket: Ticket, metrics: &Arc<RefundMetrics>) {
        if self.metrics.is_none() {
            self.metrics = Some(Arc::clone(metrics));
        }
        if self.first.is_none() {
            self.first = Some(ticket);
        } else {
            self.more.push(ticket);
        }
    }

    /// The request was served: every unit stays counted.
    pub fn served(mut self) {
        self.forget();
    }

    /// The request was not served: every unit goes back, counted under
    /// `reason`.
    pub fn unserved(mut self, reason: Unserved) {
        self.give_back(reason);
    }

    /// Let go of the tickets without giving anything back (a refusal has
    /// given the units back already).
    pub(crate) fn forget(&mut self) {
        self.first = None;
        self.more.clear();
    }

    fn give_back(&mut self, reason: Unserved) {
        let mut given = 0;
        for ticket in self.first.take().into_iter().chain(self.more.drain(..)) {
            ticket.give_back();
            given += 1;
        }
        if given > 0 {
            if let Some(metrics) = &self.metrics {
                metrics.refunded(reason, given);
            }
        }
    }
}

impl Drop for Tickets {
    /// Unsettled: the request's future was dropped before its response
    /// head, which happens when the client goes away.
    fn drop(&mut self) {
        self.give_back(Unserved::ClientGone);
    }
}
