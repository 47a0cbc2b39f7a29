//! The static part of a decision, cached: what a verified license is
//! entitled to under the policy in force (feature bits, resolved limit
//! numbers) and the entitlement headers sent upstream.
//!
//! Keyed by (license, policy generation) rather than by (license, route,
//! generation): once a license's entitlement is known, a route's check is a
//! bit-set test, cheaper than another map lookup, and the cache stays as
//! small as the number of licenses. Counters are never cached.
//!
//! A license is identified by its `Arc` address; each entry holds a clone of
//! that `Arc`, so the address cannot be reused by another license while the
//! entry exists.

use std::sync::Arc;

use dashmap::DashMap;
use http::HeaderValue;

use super::meters::LicenseIdentity;
use crate::license::VerifiedLicense;
use crate::policy::{Entitlement, Policy};

/// Names of the entitlement headers: the verified license id, plan and
/// features sent to the upstream. Client-sent copies are always removed.
#[derive(Clone, Debug)]
pub struct LicenseHeaderNames {
    pub id: http::HeaderName,
    pub plan: http::HeaderName,
    pub features: http::HeaderName,
}

impl Default for LicenseHeaderNames {
    fn default() -> Self {
        LicenseHeaderNames {
            id: http::HeaderName::from_static("x-license-id"),
            plan: http::HeaderName::from_static("x-license-plan"),
            features: http::HeaderName::from_static("x-license-features"),
        }
    }
}

/// Values of the entitlement headers for one license.
#[derive(Debug, Default)]
pub struct LicenseHeaders {
    pub id: Option<HeaderValue>,
    pub plan: Option<HeaderValue>,
    /// Comma-separated effective features (the license's and its plan's).
    pub features: Option<HeaderValue>,
}

/// A license resolved against one policy generation.
#[derive(Debug)]
pub struct Entitled {
    /// `None` when running without a policy.
    pub entitlement: Option<Entitlement>,
    pub headers: Arc<LicenseHeaders>,
    /// Whose usage its requests are, for the meters.
    pub identity: Arc<LicenseIdentity>,
    /// The user roles the license includes (its `lic.roles` and its
    /// plan's), when either lists them; `None`: roles are not capped.
    pub roles: Option<RoleCap>,
}

/// The user roles a license includes, by name, with an id that differs
/// between different sets (a user's told roles are remembered by it).
#[derive(Debug)]
pub struct RoleCap {
    /// Sorted, no duplicates.
    pub names: Box<[String]>,
    pub id: u64,
}

impl RoleCap {
    fn of(license: &[String], plan: &[String]) -> RoleCap {
        let mut names: Vec<String> = license.iter().chain(plan).cloned().collect();
        names.sort_unstable();
        names.dedup();
        let mut hasher = std::hash::BuildHasher::build_hasher(&*CAP_SEED);
        std::hash::Hash::hash(&names, &mut hasher);
        RoleCap {
            id: std::hash::Hasher::finish(&hasher),
            names: names.into_boxed_slice(),
        }
    }

    pub fn admits(&self, role: &str) -> bool {
        self.names
            .binary_search_by(|name| name.as_str().cmp(role))
            .is_ok()
    }
}

/// One random seed per process: cap ids are not guessable from names.
static CAP_SEED: std::sync::LazyLock<hashbrown::DefaultHashBuilder> =
    std::sync::LazyLock::new(hashbrown::DefaultHashBuilder::default);

struct Entry {
    /// Pins the address the map is keyed by; `/usage` finds licenses by id
    /// through it.
    license: Arc<VerifiedLicense>,
    generation: u64,
    value: Arc<Entitled>,
}

pub struct EntitlementCache {
    map: DashMap<usize, Entry, hashbrown::DefaultHashBuilder>,
    capacity: usize,
}

impl std::fmt::Debug for EntitlementCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntitlementCache")
            .field("len", &self.map.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl EntitlementCache {
    pub fn new(capacity: usize) -> EntitlementCache {
        EntitlementCache {
            map: DashMap::with_hasher(hashbrown::DefaultHashBuilder::default()),
            capacity: capacity.max(1),
        }
    }

    /// The entitlement of `license` under `policy` (generation 0: none).
    pub fn get(&self, license: &Arc<VerifiedLicense>, policy: Option<&Policy>) -> Arc<Entitled> {
        let id = Arc::as_ptr(license) as usize;
        let generation = policy.map_or(0, |p| p.generation);
        if let Some(entry) = self.map.get(&id) {
            if entry.generation == generation {
                return Arc::clone(&entry.value);
            }
        }
        let value = Arc::new(entitle(license, policy));
        if self.map.len() >= self.capacity {
            // Licenses are few; a full cache means churn (header tokens
            // rotating). Starting over keeps memory bounded and is cheap.
            self.map.clear();
        }
        self.map.insert(
            id,
            Entry {
                license: Arc::clone(license),
                generation,
                value: Arc::clone(&value),
            },
        );
        value
    }
}

impl EntitlementCache {
    /// The remembered license with id `id` (`/usage`); of several tokens
    /// for one id, the most recently issued. A scan: the cache is small,
    /// and this is never on the request path.
    pub fn find(&self, id: &str) -> Option<Arc<VerifiedLicense>> {
        self.map
            .iter()
            .filter(|entry| entry.license.claims.sub == id)
            .max_by_key(|entry| {
                let claims = &entry.license.claims;
                (claims.iat.map(|d| d.0), claims.exp.0)
            })
            .map(|entry| Arc::clone(&entry.license))
    }

    /// Give `visit` the id of every remembered license (repeats possible).
    pub fn ids(&self, mut visit: impl FnMut(&str)) {
        for entry in self.map.iter() {
            visit(&entry.license.claims.sub);
        }
    }
}

fn entitle(license: &VerifiedLicense, policy: Option<&Policy>) -> Entitled {
    let lic = &license.claims.lic;
    let mut features: Vec<&str> = lic.features.iter().map(String::as_str).collect();
    if let Some(plan) = policy.and_then(|p| p.plans.get(&lic.plan)) {
        features.extend(plan.features.iter().map(String::as_str));
    }
    features.sort_unstable();
    features.dedup();
    let value = |text: &str| HeaderValue::from_str(text).ok();
    let plan_roles = policy
        .and_then(|p| p.plans.get(&lic.plan))
        .and_then(|plan| plan.roles.as_deref());
    let roles = (plan_roles.is_some() || lic.roles.is_some()).then(|| {
        RoleCap::of(
            lic.roles.as_deref().unwrap_or_default(),
            plan_roles.unwrap_or_default(),
        )
    });
    Entitled {
        roles,
        entitlement: policy.map(|p| p.entitle(lic)),
        headers: Arc::new(LicenseHeaders {
            id: value(&license.claims.sub),
            plan: (!lic.plan.is_empty()).then(|| value(&lic.plan)).flatten(),
            features: value(&features.join(",")),
        }),
        identity: Arc::new(LicenseIdentity {
            license: license.claims.sub.as_str().into(),
            customer: lic.customer.as_deref().map(Into::into),
            plan: lic.plan.as_str().into(),
        }),
    }
}
