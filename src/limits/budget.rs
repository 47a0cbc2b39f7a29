//! What an allowed request leaves of its rates and quotas, for the IETF
//! `RateLimit-Policy` and `RateLimit` fields (draft-ietf-httpapi-ratelimit-headers)
//! of the response, so clients slow down before they are refused.
//!
//! Carried from the limiter to the response inline: a decision allocates
//! nothing (`tests/allocations.rs`), so there is no list here, only a few
//! slots kept for the limits closest to running out.

use std::sync::Arc;
use std::time::Duration;

/// What a rate or quota has left once a request has been counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Left {
    /// Units that could still be taken now (a rate: at once).
    pub remaining: u64,
    /// Until the limit is whole again: a rate's full burst back, a quota's
    /// (fixed) window over.
    pub reset: Duration,
    /// The window the limit counts over.
    pub window: Duration,
}

/// One limit's budget as the response states it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Budget {
    pub name: Arc<str>,
    /// `q`: the number this replica enforced (divided among the replicas
    /// while a shared store is away, as in a refusal's fields).
    pub limit: u64,
    /// `w`: the window, whole seconds (at least 1).
    pub window: u64,
    /// `r`
    pub remaining: u64,
    /// `t`: whole seconds until the limit is whole again, rounded up.
    pub reset: u64,
}

impl Budget {
    pub fn new(name: &Arc<str>, limit: u64, left: &Left) -> Budget {
        Budget {
            name: Arc::clone(name),
            limit,
            window: left.window.as_secs().max(1),
            remaining: left.remaining,
            reset: left.reset.as_secs() + u64::from(left.reset.subsec_nanos() > 0),
        }
    }

    /// This budget as a member of the `RateLimit-Policy` list:
    /// `"name";q=100;w=60`. (Limit names need no escaping in a string.)
    pub fn policy_member(&self) -> String {
        let mut member = String::new();
        self.write_policy_member(&mut member);
        member
    }

    /// As a member of the `RateLimit` list: `"name";r=42;t=17`.
    pub fn state_member(&self) -> String {
        let mut member = String::new();
        self.write_state_member(&mut member);
        member
    }

    /// [`Budget::policy_member`], appended to `to`.
    pub fn write_policy_member(&self, to: &mut String) {
        use std::fmt::Write;
        let _ = write!(to, "\"{}\";q={};w={}", self.name, self.limit, self.window);
    }

    /// [`Budget::state_member`], appended to `to`.
    pub fn write_state_member(&self, to: &mut String) {
        use std::fmt::Write;
        let _ = write!(
            to,
            "\"{}\";r={};t={}",
            self.name, self.remaining, self.reset
        );
    }

    /// Whether `self` is closer to running out than `other`: less left as a
    /// share of the limit (then less left).
    fn tighter_than(&self, other: &Budget) -> bool {
        let mine = u128::from(self.remaining) * u128::from(other.limit.max(1));
        let theirs = u128::from(other.remaining) * u128::from(self.limit.max(1));
        (mine, self.remaining) < (theirs, other.remaining)
    }
}

/// Budgets a response states at most: a route rarely has more than a rate
/// and a quota; beyond, the ones closest to running out are kept.
pub const MAX_BUDGETS: usize = 2;

/// The budgets of one allowed request, in the route's order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Budgets {
    slots: [Option<Budget>; MAX_BUDGETS],
}

impl Budgets {
    /// Keep `budget` if there is room, or in place of the loosest one kept
    /// when it is tighter.
    pub fn offer(&mut self, budget: Budget) {
        if let Some(free) = self.slots.iter_mut().find(|slot| slot.is_none()) {
            *free = Some(budget);
            return;
        }
        let loosest = self
            .slots
            .iter_mut()
            .flatten()
            .reduce(|a, b| if a.tighter_than(b) { b } else { a });
        if let Some(loosest) = loosest {
            if budget.tighter_than(loosest) {
                *loosest = budget;
            }
        }
    }

    pub fn clear(&mut self) {
        self.slots = Default::default();
    }

    pub fn is_empty(&self) -> bool {
        self.slots.iter().all(Option::is_none)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Budget> {
        self.slots.iter().flatten()
    }
}
