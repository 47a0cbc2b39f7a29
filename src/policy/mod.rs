//! Policies: YAML files that map routes to licensed features and limits,
//! compiled into an immutable [`Policy`] the decision engine consults.
//!
//! - [`schema`]: the file format, as written;
//! - [`compile`]: names resolved, patterns into a trie, errors located;
//! - [`matcher`]: the route trie and its precedence rules;
//! - [`normalize`]: the one path normalisation every request goes through
//!   before matching, so the route decided is the route served;
//! - [`PolicySettings`]: where policies come from and how their counters are kept.

pub mod compile;
mod instances;
pub mod locate;
pub mod matcher;
mod metrics;
pub mod normalize;
pub mod schema;
mod settings;

pub use compile::{
    Access, Amount, Claim, Count, Diagnostic, Entitlement, GrpcMethod, InstanceKey, InstancesDef,
    KeyPart, LicenseAmount, LimitDef, LimitKind, LimitUse, MeterDef, MeterSource, MeterUse, Mode,
    NameSet, OnInstanceLimit, OnStoreError, Overage, Period, Policy, PolicyError, Preflight,
    RoleRule, Route, DEFAULT_THRESHOLDS, INSTANCES_LIMIT,
};
pub use instances::InstanceLimit;
pub use metrics::PolicyMetrics;
pub use settings::{PolicySettings, WebSocketScope};

#[cfg(test)]
mod tests;
