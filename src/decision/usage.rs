//! `/usage`: how much of each limit a license has used this period, read
//! from the counters without counting, next to the numbers its entitlement
//! gives it. The admin port serves it; `licensegate usage` prints it.
//!
//! Where each number comes from:
//! - **Limit numbers**: the license's entitlement under the policy in
//!   force, as the engine resolves it for requests: for a deployment
//!   license, the license loaded; for per-request licenses, the most
//!   recently issued token with that id among those this replica verified
//!   recently (the entitlement cache). For a license this replica has not
//!   seen since it started (or has forgotten), numbers that come from the
//!   license are unknown (`limit_known: false`); fixed numbers are shown.
//! - **Counts**: this replica's memory (`store: memory`) or, with a shared
//!   store, the store itself for rates, quotas and seats (`store: shared`):
//!   one read-only script per license, bounded by the store's timeout.
//!   Concurrency is always counted per replica. When the store cannot be
//!   read, the replica's fallback counts are shown and a note says so.
//!
//! Which limits a license sees: those keyed by the license and its claims
//! (`license`, `claim:*`), one row each, and those keyed by the license
//! together with something else (a header, the client address, the route),
//! one row per key counted on this replica. With a shared store the latter
//! cannot be listed without scanning the store, and are left out with a
//! note. Limits keyed by nothing of the license (a header or client address
//! alone) are nobody's in particular and are not shown.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::keys::{key_label, KEY_SEPARATOR};
use crate::license::VerifiedLicense;
use crate::limits::shared::{SharedRead, SharedStore};
use crate::limits::{quota_window, Clock, Counters, Reading, OVERFLOW_KEY};
use crate::policy::{Amount, Claim, KeyPart, LimitDef, LimitKind, Policy};

/// Licenses one answer lists at most; more are cut (`truncated`), in id
/// order.
pub const MAX_LICENSES: usize = 1000;

/// Rows one limit gives one license at most, for limits keyed by the
/// license and something else (one row per key).
pub const MAX_KEYS_PER_LIMIT: usize = 100;

/// The longest license id `/usage` takes.
pub const MAX_LICENSE_ID: usize = 256;

/// Licenses whose shared counters are read at once; and how long the reads
/// of one answer may take altogether before the rest are shown from memory.
const SHARED_READS_AT_ONCE: usize = 32;
const SHARED_READ_BUDGET: Duration = Duration::from_secs(2);

/// Whether `text` can be a license id: 1 to [`MAX_LICENSE_ID`] bytes, no
/// control characters (which no id needs, and which would match inside
/// compound counter keys) and no braces (which would break out of the
/// store's hash tags).
pub fn is_license_id(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_LICENSE_ID
        && !text.chars().any(|c| c.is_control() || c == '{' || c == '}')
}

/// Where a count was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Store {
    /// This replica's counters.
    Memory,
    /// The shared store.
    Shared,
}

impl Store {
    pub fn as_str(self) -> &'static str {
        match self {
            Store::Memory => "memory",
            Store::Shared => "shared",
        }
    }
}

/// Where a license's limit numbers come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Entitlement {
    /// The deployment license in force.
    Deployment,
    /// A per-request token with this id that this replica verified recently.
    Recent,
    /// Not seen by this replica since it started (or forgotten): numbers
    /// that come from the license are unknown.
    Unknown,
}

/// The `/usage` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageReport {
    /// When it was read (RFC 3339, milliseconds).
    pub time: String,
    /// Where rates, quotas and seats are counted.
    pub store: Store,
    pub licenses: Vec<LicenseUsage>,
    /// More licenses have usage than [`MAX_LICENSES`]; the first, by id,
    /// are listed.
    pub truncated: bool,
    /// What a reader needs to know to trust the numbers.
    pub notes: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LicenseUsage {
    pub license: String,
    /// The license's plan, when its claims are known.
    pub plan: Option<String>,
    pub entitlement: Entitlement,
    pub limits: Vec<LimitUsage>,
    /// Metered usage this replica recorded this UTC month.
    pub meters: Vec<MeterUsage>,
    /// The deployment license's instance slots, when it limits them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<InstanceUsage>,
}

/// Who holds the instance slots of a license.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceUsage {
    /// Whose slots: `license lic-1`, `customer ACME`.
    pub holder: String,
    pub limit: u64,
    /// `not_ready`, `deny` or `shadow`.
    pub on_limit: String,
    /// `shared` (the fleet, in the shared store) or `local` (this replica
    /// only: no shared store).
    pub counted: String,
    /// The replica that answered, and where it stands (`held`, `waiting`).
    pub instance: String,
    pub state: String,
    /// In the order they took their slots.
    pub holders: Vec<InstanceHolder>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceHolder {
    pub instance: String,
    /// How long its lease runs without a renewal.
    pub lease_left_ms: i64,
}

/// One limit's current period for one key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitUsage {
    /// The limit's name in the policy.
    pub name: String,
    /// `quota`, `rate`, `seats` or `concurrency`.
    pub kind: String,
    /// The counter key (compound keys joined with `/`); `(overflow)` for
    /// the counter keys share beyond `max_keys_per_limit`.
    pub key: String,
    /// Quotas: units this period; rates: the burst in use; seats:
    /// identities active; concurrency: requests in flight. `null` only for
    /// a rate whose number is unknown.
    pub used: Option<u64>,
    /// The limit's number; `null` is unlimited when `limit_known`.
    pub limit: Option<u64>,
    /// Rates: at most this many at once (the number unless set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    /// `false` when the number comes from a license this replica has not
    /// seen: `limit` and `remaining` are then `null`.
    pub limit_known: bool,
    /// What is left now (a rate: what could pass at once); `null` when
    /// unlimited or unknown.
    pub remaining: Option<u64>,
    /// Quotas: when the window ends; rates: when the whole burst is back
    /// (RFC 3339; a rate's to the millisecond, rounded up). `null` for
    /// seats and concurrency.
    pub reset: Option<String>,
    /// Quotas: the window; rates: the window the number is per; seats: the
    /// idle time after which a seat frees. `null` for concurrency.
    pub window_seconds: Option<u64>,
    /// Where the count was read.
    pub store: Store,
}

/// Usage one meter recorded for a license on this replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeterUsage {
    pub meter: String,
    pub used: u64,
    /// Counted since (RFC 3339): the start of the UTC month, or when this
    /// replica started metering if later. Not persisted across restarts.
    pub since: String,
}

/// What `/usage` is asked.
#[derive(Clone, Debug, Default)]
pub struct UsageRequest {
    /// One license; `None` for every license with usage on this replica.
    pub license: Option<String>,
    /// Licenses with usage recorded elsewhere (meters): listed even without
    /// counters or a known entitlement.
    pub also: Vec<String>,
}

/// A license as the report sees it.
pub(crate) struct Subject {
    pub id: String,
    pub license: Option<Arc<VerifiedLicense>>,
    pub entitlement: Entitlement,
}

/// One limit of the policy in force with this replica's counters for it.
pub(crate) struct Bound<'a> {
    pub def: &'a LimitDef,
    /// Index in [`Policy::limits`] (and in an entitlement's amounts).
    pub index: usize,
    pub counters: &'a Counters,
}

/// How a limit's keys relate to licenses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scope {
    /// Made of the license and its claims: one key per license.
    Claims,
    /// The license (at `position` of `parts`) and something else.
    Compound { position: usize, parts: usize },
    /// Nothing of the license.
    Nobody,
}

fn scope(def: &LimitDef) -> Scope {
    let is_id = |part: &KeyPart| matches!(part, KeyPart::License | KeyPart::Claim(Claim::Sub));
    if def
        .key
        .iter()
        .all(|part| matches!(part, KeyPart::License | KeyPart::Claim(_)))
    {
        return Scope::Claims;
    }
    match def.key.iter().position(is_id) {
        Some(position) => Scope::Compound {
            position,
            parts: def.key.len(),
        },
        None => Scope::Nobody,
    }
}

/// The license id in `key` (a counter key of a limit scoped `scope`), if
/// the key has one.
fn license_part<'k>(scope: Scope, def: &LimitDef, key: &'k str) -> Option<&'k str> {
    let (position, parts) = match scope {
        Scope::Claims => (
            def.key
                .iter()
                .position(|part| matches!(part, KeyPart::License | KeyPart::Claim(Claim::Sub)))?,
            def.key.len(),
        ),
        Scope::Compound { position, parts } => (position, parts),
        Scope::Nobody => return None,
    };
    if key == OVERFLOW_KEY {
        return None;
    }
    let id = if parts == 1 {
        key
    } else {
        let mut split = key.split(KEY_SEPARATOR);
        if split.clone().count() != parts {
            return None;
        }
        split.nth(position)?
    };
    (!id.is_empty()).then_some(id)
}

/// The key a limit scoped [`Scope::Claims`] counts `subject` under, as the
/// engine builds it; `None` when it needs claims that are not known.
fn claims_key(def: &LimitDef, subject: &Subject) -> Option<String> {
    let claims = subject.license.as_ref().map(|l| &l.claims);
    let part = |part: &KeyPart| -> Option<String> {
        Some(match part {
            KeyPart::License | KeyPart::Claim(Claim::Sub) => subject.id.clone(),
            KeyPart::Claim(Claim::Plan) => claims?.lic.plan.clone(),
            KeyPart::Claim(Claim::Customer) => claims?.lic.customer.clone().unwrap_or_default(),
            KeyPart::Claim(Claim::Issuer) => claims?.iss.clone().unwrap_or_default(),
            _ => return None,
        })
    };
    let parts = def.key.iter().map(part).collect::<Option<Vec<_>>>()?;
    Some(parts.join(&KEY_SEPARATOR.to_string()))
}

/// Ids of the licenses with counters under `limits` on this replica.
pub(crate) fn counted_licenses(limits: &[Bound<'_>], clock: &Clock, ids: &mut BTreeSet<String>) {
    for bound in limits {
        let scope = scope(bound.def);
        if scope == Scope::Nobody {
            continue;
        }
        bound.counters.peek(bound.def, clock, |key| {
            if let Some(id) = license_part(scope, bound.def, key) {
                if !ids.contains(id) {
                    ids.insert(id.to_owned());
                }
            }
            false
        });
    }
}

/// What the report is built from.
pub(crate) struct Sources<'a> {
    pub policy: Option<&'a Policy>,
    pub limits: Vec<Bound<'a>>,
    pub clock: &'a Clock,
    pub shared: Option<&'a SharedStore>,
    /// Licenses to list even with nothing counted and no entitlement.
    pub keep: HashSet<String>,
}

/// A limit's number for one license.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Number {
    Known(Option<u64>),
    Unknown,
}

/// The report for `subjects`, in their order; a subject with no
/// entitlement, nothing counted and not in `keep` is left out.
pub(crate) async fn report(
    sources: Sources<'_>,
    subjects: Vec<Subject>,
    truncated: bool,
) -> UsageReport {
    let clock = sources.clock;
    let now_nanos = clock.unix_nanos();
    let mut notes = Vec::new();
    if truncated {
        notes.push(format!(
            "more than {MAX_LICENSES} licenses have usage on this replica; the first \
             {MAX_LICENSES} by id are listed: ask for one with ?license=ID"
        ));
    }
    let ids: HashSet<&str> = subjects.iter().map(|s| s.id.as_str()).collect();
    let scopes: Vec<Scope> = sources.limits.iter().map(|b| scope(b.def)).collect();
    let shared_kind =
        |def: &LimitDef| sources.shared.is_some() && !matches!(def.kind, LimitKind::Concurrency);

    // This replica's counters: one pass per limit over its keys.
    let mut memory: Vec<HashMap<String, Reading>> = Vec::with_capacity(sources.limits.len());
    for (bound, scope) in sources.limits.iter().zip(&scopes) {
        let exact: HashSet<String> = match scope {
            Scope::Claims => subjects
                .iter()
                .filter_map(|s| claims_key(bound.def, s))
                .collect(),
            _ => HashSet::new(),
        };
        let found = match scope {
            Scope::Nobody => Vec::new(),
            Scope::Claims => bound.counters.peek(bound.def, clock, |key| {
                key == OVERFLOW_KEY || exact.contains(key)
            }),
            Scope::Compound { .. } => bound.counters.peek(bound.def, clock, |key| {
                license_part(*scope, bound.def, key).is_some_and(|id| ids.contains(id))
            }),
        };
        memory.push(found.into_iter().collect());
    }

    // The shared store's counters for limits keyed by license and claims.
    let mut shared: HashMap<&str, Vec<Option<Reading>>> = HashMap::new();
    let mut shared_failed = false;
    if let Some(store) = sources.shared {
        let keys: Vec<Vec<Option<String>>> = subjects
            .iter()
            .map(|subject| {
                sources
                    .limits
                    .iter()
                    .zip(&scopes)
                    .map(|(bound, scope)| {
                        (*scope == Scope::Claims && shared_kind(bound.def))
                            .then(|| claims_key(bound.def, subject))
                            .flatten()
                    })
                    .collect()
            })
            .collect();
        let deadline = tokio::time::Instant::now() + SHARED_READ_BUDGET;
        let pending: Vec<(usize, Vec<SharedRead<'_>>)> = keys
            .iter()
            .enumerate()
            .map(|(at, keys)| {
                let reads = sources
                    .limits
                    .iter()
                    .zip(keys)
                    .filter_map(|(bound, key)| {
                        Some(SharedRead {
                            limit: &bound.def.name,
                            kind: &bound.def.kind,
                            key: key.as_deref()?,
                        })
                    })
                    .collect();
                (at, reads)
            })
            .collect();
        for chunk in pending.chunks(SHARED_READS_AT_ONCE) {
            let subjects = &subjects;
            let reads = chunk.iter().map(|(at, reads)| async move {
                (*at, store.read(&subjects[*at].id, reads).await)
            });
            let Ok(answers) =
                tokio::time::timeout_at(deadline, futures_util::future::join_all(reads)).await
            else {
                shared_failed = true;
                break;
            };
            for (at, answer) in answers {
                match answer {
                    Some(readings) => {
                        // Back in the order of the limits.
                        let mut readings = readings.into_iter();
                        let by_limit = keys[at]
                            .iter()
                            .map(|key| key.as_ref().and_then(|_| readings.next().flatten()))
                            .collect();
                        shared.insert(subjects[at].id.as_str(), by_limit);
                    }
                    None => shared_failed = true,
                }
            }
        }
        if shared_failed {
            notes.push(
                "the shared store could not be read: rates, quotas and seats show this \
                 replica's own (fallback) counts, marked `store: memory`"
                    .to_owned(),
            );
        }
    }
    for (bound, scope) in sources.limits.iter().zip(&scopes) {
        if matches!(scope, Scope::Compound { .. }) && shared_kind(bound.def) {
            notes.push(format!(
                "limit `{}` is keyed by the license and more ({}); its shared counters \
                 cannot be listed without scanning the store, so it is left out",
                bound.def.name,
                key_spec(bound.def)
            ));
        }
    }

    let mut licenses = Vec::with_capacity(subjects.len());
    for subject in &subjects {
        let entitlement = match (&subject.license, sources.policy) {
            (Some(license), Some(policy)) => Some(policy.entitle(&license.claims.lic)),
            _ => None,
        };
        let mut counted = false;
        let mut rows = Vec::new();
        let shared_readings = shared.get(subject.id.as_str());
        for (i, (bound, scope)) in sources.limits.iter().zip(&scopes).enumerate() {
            let def = bound.def;
            let number = match &def.amount {
                Amount::Fixed(n) => Number::Known(Some(*n)),
                Amount::License { .. } => match &entitlement {
                    Some(entitlement) => Number::Known(entitlement.amounts[bound.index]),
                    None => Number::Unknown,
                },
            };
            match scope {
                Scope::Nobody => {}
                Scope::Claims => {
                    let Some(key) = claims_key(def, subject) else {
                        continue;
                    };
                    let from_store = shared_readings
                        .filter(|_| shared_kind(def))
                        .map(|readings| readings[i]);
                    let (label, reading, store) = match from_store {
                        Some(reading) => (key_label(&key).into_owned(), reading, Store::Shared),
                        None => match memory[i].get(&key) {
                            Some(reading) => {
                                (key_label(&key).into_owned(), Some(*reading), Store::Memory)
                            }
                            // Beyond `max_keys`, new keys share one counter.
                            None => match memory[i].get(OVERFLOW_KEY) {
                                Some(reading) => (
                                    key_label(OVERFLOW_KEY).into_owned(),
                                    Some(*reading),
                                    Store::Memory,
                                ),
                                None => (key_label(&key).into_owned(), None, Store::Memory),
                            },
                        },
                    };
                    counted |= reading.is_some();
                    rows.push(row(def, label, reading, number, now_nanos, store));
                }
                Scope::Compound { .. } if shared_kind(def) => {}
                Scope::Compound { .. } => {
                    let mut keys: Vec<(&String, &Reading)> = memory[i]
                        .iter()
                        .filter(|(key, _)| {
                            license_part(*scope, def, key) == Some(subject.id.as_str())
                        })
                        .collect();
                    keys.sort_by(|a, b| a.0.cmp(b.0));
                    if keys.len() > MAX_KEYS_PER_LIMIT {
                        notes.push(format!(
                            "license `{}` has {} keys under limit `{}`; the first \
                             {MAX_KEYS_PER_LIMIT} are listed",
                            subject.id,
                            keys.len(),
                            def.name
                        ));
                        keys.truncate(MAX_KEYS_PER_LIMIT);
                    }
                    for (key, reading) in keys {
                        counted = true;
                        let label = key_label(key).into_owned();
                        rows.push(row(
                            def,
                            label,
                            Some(*reading),
                            number,
                            now_nanos,
                            Store::Memory,
                        ));
                    }
                }
            }
        }
        if subject.entitlement == Entitlement::Unknown
            && !counted
            && !sources.keep.contains(&subject.id)
        {
            continue;
        }
        licenses.push(LicenseUsage {
            license: subject.id.clone(),
            plan: subject.license.as_ref().map(|l| l.claims.lic.plan.clone()),
            entitlement: subject.entitlement,
            limits: rows,
            meters: Vec::new(),
            instances: None,
        });
    }
    UsageReport {
        time: rfc3339_ms(now_nanos),
        store: if sources.shared.is_some() {
            Store::Shared
        } else {
            Store::Memory
        },
        licenses,
        truncated,
        notes,
    }
}

/// A limit's key as the policy writes it, e.g. `license+header:x-user`.
fn key_spec(def: &LimitDef) -> String {
    def.key
        .iter()
        .map(|part| match part {
            KeyPart::License => "license".to_owned(),
            KeyPart::User => "user".to_owned(),
            KeyPart::Claim(Claim::Sub) => "claim:sub".to_owned(),
            KeyPart::Claim(Claim::Plan) => "claim:plan".to_owned(),
            KeyPart::Claim(Claim::Customer) => "claim:customer".to_owned(),
            KeyPart::Claim(Claim::Issuer) => "claim:iss".to_owned(),
            KeyPart::Header(name) => format!("header:{name}"),
            KeyPart::ClientIp => "client_ip".to_owned(),
            KeyPart::Route => "route".to_owned(),
        })
        .collect::<Vec<_>>()
        .join("+")
}

/// Unix seconds as RFC 3339.
pub(crate) fn rfc3339(unix_secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix_secs)).to_string()
}

/// Unix nanoseconds as RFC 3339 with milliseconds, rounded up (never
/// earlier than the instant).
fn rfc3339_ms(unix_nanos: u64) -> String {
    let ms = unix_nanos.div_ceil(1_000_000);
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// One row: `reading` (`None`: nothing counted) under `number`.
fn row(
    def: &LimitDef,
    key: String,
    reading: Option<Reading>,
    number: Number,
    now_nanos: u64,
    store: Store,
) -> LimitUsage {
    let (limit, limit_known) = match number {
        Number::Known(limit) => (limit, true),
        Number::Unknown => (None, false),
    };
    let left = |used: u64| limit.map(|limit| limit.saturating_sub(used));
    let mut usage = LimitUsage {
        name: def.name.to_string(),
        kind: def.kind.as_str().to_owned(),
        key,
        used: Some(0),
        limit,
        burst: None,
        limit_known,
        remaining: None,
        reset: None,
        window_seconds: None,
        store,
    };
    match &def.kind {
        LimitKind::Quota { period } => {
            let used = match reading {
                Some(Reading::Quota { used }) => used,
                _ => 0,
            };
            let (start, length) = quota_window(*period, now_nanos / 1_000_000_000);
            usage.used = Some(used);
            usage.remaining = left(used);
            usage.reset = Some(rfc3339(start + length));
            usage.window_seconds = Some(length);
        }
        LimitKind::Rate { window, burst } => {
            let ahead = match reading {
                Some(Reading::Rate { ahead }) => ahead,
                _ => Duration::ZERO,
            };
            let ahead_nanos = u64::try_from(ahead.as_nanos()).unwrap_or(u64::MAX);
            usage.reset = Some(rfc3339_ms(now_nanos.saturating_add(ahead_nanos)));
            usage.window_seconds = Some(window.as_secs().max(1));
            match limit {
                Some(amount) => {
                    let burst = burst.unwrap_or(amount);
                    usage.burst = Some(burst);
                    // GCRA: each unit of the burst in use is one emission
                    // interval of `ahead`.
                    let remaining = if amount == 0 {
                        0
                    } else {
                        let emission = window.as_nanos() as f64 / amount as f64;
                        let room = emission * burst as f64 - ahead_nanos as f64;
                        ((room / emission).floor().max(0.0) as u64).min(burst)
                    };
                    usage.used = Some(if amount == 0 { 0 } else { burst - remaining });
                    usage.remaining = Some(remaining);
                }
                // Unlimited: never charged.
                None if limit_known => usage.used = Some(0),
                None => usage.used = None,
            }
        }
        LimitKind::Seats { idle, .. } => {
            let active = match reading {
                Some(Reading::Seats { active }) => active,
                _ => 0,
            };
            usage.used = Some(active);
            usage.remaining = left(active);
            usage.window_seconds = Some(idle.as_secs().max(1));
        }
        LimitKind::Concurrency => {
            let in_flight = match reading {
                Some(Reading::Concurrency { in_flight }) => in_flight,
                _ => 0,
            };
            usage.used = Some(in_flight);
            usage.remaining = left(in_flight);
        }
    }
    usage
}

/// Licenses by id, first [`MAX_LICENSES`]; whether more were cut.
pub(crate) fn first_licenses(ids: BTreeSet<String>) -> (Vec<String>, bool) {
    let truncated = ids.len() > MAX_LICENSES;
    (ids.into_iter().take(MAX_LICENSES).collect(), truncated)
}

#[cfg(test)]
#[path = "usage/tests.rs"]
mod tests;
