//! The instance limit of one license: how many replicas may serve under it
//! at once (policy section `instances`, compiled to [`InstancesDef`]; number
//! `lic.limits.instances`). The policy says whose slots they are and what a
//! replica without one does; the license (or its plan) says how many there
//! are. Counting them across the fleet is the shared store's (see
//! `limits::instances`).

use super::compile::{Claim, InstanceKey, InstancesDef, OnInstanceLimit, Plan, Policy};
use crate::license::Claims;

/// One license's instance limit under a policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceLimit {
    /// Whose slots, as the store keys them: the license id, or
    /// `customer=NAME` (another claim likewise).
    pub key: String,
    /// Whose slots, for people: `license lic-1`, `customer ACME`.
    pub holder: String,
    /// How many replicas may hold one at once.
    pub limit: u64,
    pub on_limit: OnInstanceLimit,
}

impl Policy {
    /// The instance limit of the license `claims`; `None`: unlimited.
    pub fn instance_limit(&self, claims: &Claims) -> Option<InstanceLimit> {
        let plan = self.plans.get(&claims.lic.plan);
        self.instances.limit_for(claims, plan)
    }
}

impl InstancesDef {
    /// The instance limit of the license `claims` (of plan `plan`); `None`:
    /// unlimited. A license without the claim its key names has slots of
    /// its own.
    pub fn limit_for(&self, claims: &Claims, plan: Option<&Plan>) -> Option<InstanceLimit> {
        let limit = self.amount.resolve(&claims.lic, plan)?;
        let claim = match self.key {
            InstanceKey::License | InstanceKey::Claim(Claim::Sub) => None,
            InstanceKey::Claim(Claim::Plan) => Some(("plan", Some(claims.lic.plan.as_str()))),
            InstanceKey::Claim(Claim::Customer) => {
                Some(("customer", claims.lic.customer.as_deref()))
            }
            InstanceKey::Claim(Claim::Issuer) => Some(("issuer", claims.iss.as_deref())),
        };
        let (key, holder) = match claim {
            Some((name, Some(value))) if !value.is_empty() => {
                (format!("{name}={value}"), format!("{name} {value}"))
            }
            _ => (claims.sub.clone(), format!("license {}", claims.sub)),
        };
        Some(InstanceLimit {
            key,
            holder,
            limit,
            on_limit: self.on_limit,
        })
    }
}
