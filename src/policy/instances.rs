//! The instance limit: how many replicas may serve under one license at
//! once (policy section `instances`, number `lic.limits.instances`). The
//! policy says whose slots they are and what a replica without one does;
//! the license (or its plan) says how many there are. Counting them across
//! the fleet is the shared store's (see `limits::instances`).

use super::compile::{Amount, Claim, LicenseAmount, Plan};
use crate::license::Claims;

/// The number a license states when the policy names no other.
pub const INSTANCES_LIMIT: &str = "instances";

/// The policy's `instances` section, compiled; the default applies without
/// one (and without a policy): `lic.limits.instances` per license, unlimited
/// when neither the license nor its plan sets it, `not_ready` past it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstancesDef {
    pub amount: Amount,
    pub key: InstanceKey,
    pub on_limit: OnInstanceLimit,
}

impl Default for InstancesDef {
    fn default() -> Self {
        InstancesDef {
            amount: Amount::License {
                source: LicenseAmount::Limit(INSTANCES_LIMIT.to_owned()),
                default: None,
            },
            key: InstanceKey::License,
            on_limit: OnInstanceLimit::NotReady,
        }
    }
}

/// Whose instance slots: one license's, or every license sharing a claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstanceKey {
    License,
    Claim(Claim),
}

/// What a replica that holds no instance slot does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnInstanceLimit {
    /// Not ready (`/readyz` 503), so the orchestrator sends it no traffic;
    /// a licensed request that reaches it anyway gets 503.
    #[default]
    NotReady,
    /// Ready, and licensed requests get 403 `instance_limit_reached`.
    Deny,
    /// Serves, flagged in metrics, logs and the decision header.
    Shadow,
}

impl OnInstanceLimit {
    pub const fn as_str(self) -> &'static str {
        match self {
            OnInstanceLimit::NotReady => "not_ready",
            OnInstanceLimit::Deny => "deny",
            OnInstanceLimit::Shadow => "shadow",
        }
    }
}

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
