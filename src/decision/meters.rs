//! What an allowed request tells the proxy about its meters: the route's
//! meters (precomputed once per policy) and whose usage it is (cached with
//! the license's entitlement), all behind `Arc`s so a decision copies no
//! string. The proxy records them once the response was served.

use std::sync::Arc;

use http::HeaderName;

use crate::limits::OverageUse;
use crate::policy::{MeterSource, Policy, Route};

/// One meter a route feeds: its name, what it counts and, for a `requests`
/// meter, what a request adds (the route's `cost`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeterFeed {
    pub name: Arc<str>,
    pub source: MeterSource,
    pub cost: u64,
}

/// Whose usage a request is: the verified license's id (`sub`), customer
/// and plan.
#[derive(Debug, PartialEq, Eq)]
pub struct LicenseIdentity {
    pub license: Box<str>,
    pub customer: Option<Box<str>>,
    pub plan: Box<str>,
}

/// A route's meters, computed once per policy.
#[derive(Debug, PartialEq, Eq)]
pub struct RouteMeters {
    /// The route's name.
    pub route: Arc<str>,
    pub feeds: Box<[MeterFeed]>,
}

/// The meters an allowed request feeds once served.
#[derive(Clone, Debug)]
pub struct Metered {
    pub meters: Arc<RouteMeters>,
    pub license: Arc<LicenseIdentity>,
    /// Units past 100 % of quotas with `overage`, metered under each
    /// quota's `NAME.overage` meter (empty: no allocation).
    pub overage: Vec<OverageUse>,
}

/// Each route's meters, by route id; `None` for a route with none.
pub(super) fn route_meters(policy: &Policy) -> Vec<Option<Arc<RouteMeters>>> {
    policy
        .routes
        .iter()
        .map(|route: &Route| {
            (!route.meters.is_empty()).then(|| {
                let feeds = route
                    .meters
                    .iter()
                    .map(|used| {
                        let def = &policy.meters[used.meter];
                        MeterFeed {
                            name: Arc::clone(&def.name),
                            source: def.source.clone(),
                            cost: used.cost,
                        }
                    })
                    .collect();
                Arc::new(RouteMeters {
                    route: Arc::clone(&route.name),
                    feeds,
                })
            })
        })
        .collect()
}

/// The policy's usage headers, `None` when it has none.
pub(super) fn usage_headers(policy: &Policy) -> Option<Arc<[HeaderName]>> {
    (!policy.usage_headers.is_empty()).then(|| policy.usage_headers.iter().cloned().collect())
}
