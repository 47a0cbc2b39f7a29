//! From policy files to one immutable, compiled [`Policy`]: names resolved
//! to indices, patterns to a trie, features to bit sets. Every problem is a
//! [`Diagnostic`] with file, line and column; warnings (shadowed routes,
//! unknown features) do not stop a policy from loading.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, Method};

use super::locate::{dotted, locate, scalar_texts, Step};
pub use super::matcher::HostMatch;
use super::matcher::{parse_pattern, pattern_key, patterns_overlap, RouteTable, Segment};
use super::schema::{
    check_flow_depth, AccessSetting, AmountSpec, CaseSetting, CountSetting, DefaultSpec,
    HeaderConditionSpec, InstancesSpec, KeySpec, LimitSpec, MeterSpec, ModeSetting, OnLimitSetting,
    PeriodSetting, PolicyFile, PreflightSetting, RolesSpec, RouteSpec, StoreErrorSetting,
    MAX_FLOW_DEPTH,
};
use crate::license::LicenseClaims;
use crate::yaml::YamlError;

/// A compiled policy: what the decision engine consults per request.
/// Immutable; a reload compiles a new one and swaps it in whole.
#[derive(Debug)]
pub struct Policy {
    /// Distinguishes snapshots; cached decisions carry it.
    pub generation: u64,
    pub routes: Vec<Route>,
    pub limits: Vec<LimitDef>,
    pub meters: Vec<MeterDef>,
    /// The response headers `{header: NAME}` meters read: removed from
    /// every response, so a client never sees (or learns to forge) them.
    pub usage_headers: Vec<HeaderName>,
    pub plans: HashMap<String, Plan>,
    /// Feature names that routes require, by bit index.
    pub features: Vec<String>,
    /// User role names that routes require, by bit index.
    pub roles: Vec<String>,
    /// What a request no route matches gets.
    pub unmatched: Access,
    /// The policy-wide mode, which also applies to unmatched requests.
    pub mode: Mode,
    pub case_insensitive: bool,
    /// Whether any request can need a license.
    pub needs_license: bool,
    /// Whether any route needs a verified user (roles, or a limit counted
    /// by `user`).
    pub needs_user: bool,
    /// How many replicas may serve under one license at once.
    pub instances: InstancesDef,
    /// The files this policy was compiled from.
    pub sources: Vec<PathBuf>,
    pub warnings: Vec<Diagnostic>,
    table: RouteTable,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Public,
    Licensed,
    Deny,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Enforce,
    /// Would-be denials are counted, logged and forwarded with a header.
    Shadow,
}

#[derive(Debug, Default)]
pub struct Plan {
    pub features: Vec<String>,
    pub limits: BTreeMap<String, u64>,
    pub seats: Option<u64>,
    /// The user roles the plan includes; `None`: the plan does not cap them.
    pub roles: Option<Vec<String>>,
}

/// One compiled route.
#[derive(Debug)]
pub struct Route {
    /// Index in [`Policy::routes`].
    pub id: usize,
    /// Shown in denials, logs and the `route` metric label.
    pub name: Arc<str>,
    /// The path pattern as written, or made from `grpc`.
    pub path: String,
    /// The gRPC method the route names, when it was given as `grpc`.
    pub grpc: Option<GrpcMethod>,
    pub pattern: Vec<Segment>,
    pub methods: Option<Vec<Method>>,
    pub host: Option<HostMatch>,
    pub headers: Vec<(HeaderName, HeaderCondition)>,
    pub access: Access,
    /// Required features, as bits of [`Policy::features`].
    pub features: NameSet,
    pub feature_names: Vec<String>,
    /// The user roles it needs.
    pub roles: RoleRule,
    /// Whether a request needs a verified user here: the route needs roles,
    /// or one of its limits is counted by `user`.
    pub needs_user: bool,
    pub limits: Vec<LimitUse>,
    /// The meters a served request feeds.
    pub meters: Vec<MeterUse>,
    pub mode: Mode,
    /// Whether a WebSocket handshake the route allows may become a tunnel.
    pub websocket: bool,
    /// What a CORS preflight to this route gets.
    pub preflight: Preflight,
    /// Which file defined it and where in `routes`.
    pub origin: (usize, usize),
}

impl Route {
    /// Whether a CORS preflight to this route goes to the upstream without
    /// a license check or limits. Never for a `deny` route: a preflight is
    /// no way into a route nobody may reach.
    pub fn forwards_preflights(&self) -> bool {
        self.access != Access::Deny && self.preflight == Preflight::Forward
    }
}

/// A route's `grpc`: one method of a service, or every method.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrpcMethod {
    /// Fully qualified: `shop.v1.Reports`.
    pub service: String,
    /// `None`: every method of the service.
    pub method: Option<String>,
}

impl GrpcMethod {
    /// gRPC's request path is `/SERVICE/METHOD` (gRPC over HTTP/2,
    /// "Requests"); a whole service is one segment of any method.
    fn path_pattern(&self) -> String {
        format!(
            "/{}/{}",
            self.service,
            self.method.as_deref().unwrap_or("*")
        )
    }
}

impl fmt::Display for GrpcMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.method {
            Some(method) => write!(f, "{}/{method}", self.service),
            None => write!(f, "{}/* (every method)", self.service),
        }
    }
}

/// A protobuf identifier: a letter or `_`, then letters, digits and `_`.
pub(super) fn is_identifier(text: &str) -> bool {
    let mut bytes = text.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A fully qualified service name: identifiers joined by dots (a service
/// without a package is one identifier).
pub(super) fn is_grpc_service(text: &str) -> bool {
    text.split('.').all(is_identifier)
}

/// What a CORS preflight gets (route setting `preflight`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Preflight {
    /// Forwarded to the upstream, which owns its CORS policy: a browser
    /// sends preflights without credentials, so a license check would
    /// refuse every cross-origin call before it is made.
    #[default]
    Forward,
    /// Decided like any request.
    Decide,
}

impl Policy {
    /// Whether a CORS preflight to `route` (`None`: no route matched) goes
    /// to the upstream undecided: the route says `preflight: forward` (the
    /// default), or no route matched and `unmatched` is not `deny`.
    pub fn forwards_preflight(&self, route: Option<&Route>) -> bool {
        match route {
            Some(route) => route.forwards_preflights(),
            None => self.unmatched != Access::Deny,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderCondition {
    Equals(String),
    Present(bool),
    Prefix(String),
}

impl HeaderCondition {
    fn holds(&self, name: &HeaderName, headers: &HeaderMap) -> bool {
        match self {
            HeaderCondition::Present(wanted) => headers.contains_key(name) == *wanted,
            HeaderCondition::Equals(value) => headers
                .get_all(name)
                .iter()
                .any(|v| v.as_bytes() == value.as_bytes()),
            HeaderCondition::Prefix(prefix) => headers
                .get_all(name)
                .iter()
                .any(|v| v.as_bytes().starts_with(prefix.as_bytes())),
        }
    }
}

/// The user roles a route needs, as indices of [`Policy::roles`]. Empty:
/// none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoleRule {
    /// The user must hold at least one of these (when any are given).
    pub any_of: Box<[usize]>,
    /// The user must hold every one of these.
    pub all_of: Box<[usize]>,
}

impl RoleRule {
    pub fn is_empty(&self) -> bool {
        self.any_of.is_empty() && self.all_of.is_empty()
    }
}

/// A route's use of a limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitUse {
    /// Index into [`Policy::limits`].
    pub limit: usize,
    /// Units a request costs (rates and quotas).
    pub cost: u64,
}

/// A meter: what served requests add up to, per license, for billing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeterDef {
    pub name: Arc<str>,
    pub source: MeterSource,
}

/// What one served request adds to a meter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MeterSource {
    /// 1, or the route's `cost`.
    Requests,
    /// Request body bytes read from the client.
    RequestBytes,
    /// Response body bytes sent to the client.
    ResponseBytes,
    /// A whole number the workload put in this response header.
    Header(HeaderName),
}

/// A route's use of a meter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MeterUse {
    /// Index into [`Policy::meters`].
    pub meter: usize,
    /// What a request adds to a `requests` meter (1 for other sources).
    pub cost: u64,
}

/// A compiled limit definition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitDef {
    pub name: Arc<str>,
    pub kind: LimitKind,
    pub amount: Amount,
    /// Whose counter: the parts are joined into one key.
    pub key: Vec<KeyPart>,
    /// Whether evaluating it needs a license (key or amount from it).
    pub needs_license: bool,
    /// Whether it is counted per verified user (`user` in its key or as
    /// its seat identity).
    pub needs_user: bool,
    /// With a shared store: what to do when the store cannot answer.
    pub on_store_error: OnStoreError,
    /// Rates and quotas: allowed responses state what is left of it
    /// (`RateLimit-Policy`, `RateLimit`); refusals always do.
    pub headers: bool,
    /// Which requests keep what they counted (quotas; every other kind
    /// counts attempts).
    pub count: Count,
    /// Quotas: requests pass past the limit, up to this soft ceiling.
    pub overage: Option<Overage>,
    /// Quotas: percentages of the limit whose crossing is announced once
    /// per period and key, ascending; empty for other kinds.
    pub thresholds: Box<[u16]>,
}

impl LimitDef {
    /// The number requests are counted against: the limit, or with
    /// `overage` the soft ceiling above it.
    pub fn ceiling(&self, amount: u64) -> u64 {
        match &self.overage {
            Some(overage) => overage.ceiling(amount),
            None => amount,
        }
    }
}

/// A quota's soft limit (setting `overage`): how far past 100 % requests
/// pass, and the meter the units past 100 % are recorded under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Overage {
    /// The ceiling, in thousandths of the limit (1250: 125 %).
    pub permille: u32,
    /// `NAME.overage`: the meter overage units feed.
    pub meter: Arc<str>,
}

impl Overage {
    pub fn ceiling(&self, amount: u64) -> u64 {
        let ceiling = u128::from(amount) * u128::from(self.permille) / 1000;
        u64::try_from(ceiling).unwrap_or(u64::MAX)
    }
}

/// The thresholds a quota announces unless it says otherwise.
pub const DEFAULT_THRESHOLDS: [u16; 2] = [80, 100];

/// Which allowed requests a quota keeps its units for (setting `count`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Count {
    /// Counted when decided, given back unless the response is served: a
    /// status below 500 and a body that completed. A 5xx (licensegate's own
    /// 502 and 504 included), a body cut short, or a client gone before the
    /// response head costs nothing.
    #[default]
    Served,
    /// Counted when decided and kept: every allowed request costs.
    Attempted,
}

/// What a limit does when the shared counter store is unreachable or slow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnStoreError {
    /// Count on this replica, the limit divided by the replica count.
    #[default]
    Fallback,
    /// Let the request through uncounted.
    Allow,
    /// Refuse with 503 `limit_store_unavailable`.
    Deny,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LimitKind {
    /// GCRA: `amount` per `window`, at most `burst` at once.
    Rate {
        window: Duration,
        burst: Option<u64>,
    },
    Quota {
        period: Period,
    },
    /// Distinct identities active within `idle`.
    Seats {
        identity: KeyPart,
        idle: Duration,
    },
    /// Requests in flight at once.
    Concurrency,
}

impl LimitKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            LimitKind::Rate { .. } => "rate",
            LimitKind::Quota { .. } => "quota",
            LimitKind::Seats { .. } => "seats",
            LimitKind::Concurrency => "concurrency",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Period {
    Hour,
    Day,
    Month,
    Rolling(Duration),
}

/// Where a limit's number comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Amount {
    Fixed(u64),
    /// The license's `lic.limits.NAME` (or `lic.seats`), else its plan's,
    /// else `default` (`None`: unlimited).
    License {
        source: LicenseAmount,
        default: Option<u64>,
    },
}

impl Amount {
    /// The number for a license with `claims` of plan `plan`: its own,
    /// else its plan's, else the default (`None`: unlimited).
    pub fn resolve(&self, claims: &LicenseClaims, plan: Option<&Plan>) -> Option<u64> {
        match self {
            Amount::Fixed(n) => Some(*n),
            Amount::License { source, default } => {
                let from_license = match source {
                    LicenseAmount::Limit(name) => claims
                        .limits
                        .get(name)
                        .copied()
                        .or_else(|| plan.and_then(|p| p.limits.get(name).copied())),
                    LicenseAmount::Seats => claims
                        .seats
                        .map(u64::from)
                        .or_else(|| plan.and_then(|p| p.seats)),
                };
                from_license.or(*default)
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LicenseAmount {
    Limit(String),
    Seats,
}

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

/// One part of a counter key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyPart {
    /// The license id (`sub`).
    License,
    /// The verified user's subject (see [`crate::user`]).
    User,
    Claim(Claim),
    Header(HeaderName),
    ClientIp,
    Route,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    Sub,
    Plan,
    Customer,
    Issuer,
}

/// Bits of a name table ([`Policy::features`], [`Policy::roles`]). Tiny:
/// routes rarely need more than 64 distinct names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NameSet(Box<[u64]>);

impl NameSet {
    fn with_len(names: usize) -> NameSet {
        NameSet(vec![0; names.div_ceil(64)].into_boxed_slice())
    }

    /// Whether `bit` is set.
    pub fn contains(&self, bit: usize) -> bool {
        self.0
            .get(bit / 64)
            .is_some_and(|w| w & (1 << (bit % 64)) != 0)
    }

    fn insert(&mut self, bit: usize) {
        self.0[bit / 64] |= 1 << (bit % 64);
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }

    /// The first bit of `required` missing from `self`.
    pub fn first_missing(&self, required: &NameSet) -> Option<usize> {
        for (i, want) in required.0.iter().enumerate() {
            let missing = want & !self.0.get(i).copied().unwrap_or(0);
            if missing != 0 {
                return Some(i * 64 + missing.trailing_zeros() as usize);
            }
        }
        None
    }
}

/// What one license is entitled to under one policy: computed once per
/// (license, policy generation) and cached by the decision engine.
#[derive(Debug)]
pub struct Entitlement {
    pub features: NameSet,
    /// The user roles it includes, as bits of [`Policy::roles`]; `None`:
    /// neither the license nor its plan caps roles.
    pub roles: Option<NameSet>,
    /// Per limit definition; `None` is unlimited.
    pub amounts: Box<[Option<u64>]>,
}

/// A problem in a policy file, with where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub position: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, column)) => write!(
                f,
                "{}:{line}:{column}: {}",
                self.file.display(),
                self.message
            ),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// Why a policy did not load: every error found, in file order (files in
/// the order given, then by line and column; errors past the located ones
/// last, in a fixed order).
#[derive(Debug, thiserror::Error)]
pub struct PolicyError(pub Vec<Diagnostic>);

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, diagnostic) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{diagnostic}")?;
        }
        Ok(())
    }
}

/// Located diagnostics cost a re-parse each; past this many, the rest are
/// reported without a position.
const MAX_LOCATED: usize = 50;

static GENERATION: AtomicU64 = AtomicU64::new(1);

impl Policy {
    /// Read and compile policy files; a directory stands for its `*.yaml`
    /// and `*.yml` files in name order.
    pub fn load(paths: &[PathBuf]) -> Result<Policy, PolicyError> {
        Policy::compile(Policy::read(paths)?)
    }

    /// Read policy files (directories expanded) as (path, text).
    pub fn read(paths: &[PathBuf]) -> Result<Vec<(PathBuf, String)>, PolicyError> {
        let mut files = Vec::new();
        for path in paths {
            if path.is_dir() {
                let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
                    .map_err(|e| read_error(path, e))?
                    .filter_map(|entry| entry.ok().map(|e| e.path()))
                    .filter(|p| {
                        // Skip Kubernetes' `..data` links and hidden files.
                        let hidden = p
                            .file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with('.'));
                        !hidden
                            && matches!(
                                p.extension().and_then(|e| e.to_str()),
                                Some("yaml" | "yml")
                            )
                    })
                    .collect();
                entries.sort();
                if entries.is_empty() {
                    return Err(PolicyError(vec![Diagnostic {
                        file: path.clone(),
                        position: None,
                        message: "directory has no *.yaml or *.yml policy files".into(),
                    }]));
                }
                for entry in entries {
                    let text =
                        std::fs::read_to_string(&entry).map_err(|e| read_error(&entry, e))?;
                    files.push((entry, text));
                }
            } else {
                let text = std::fs::read_to_string(path).map_err(|e| read_error(path, e))?;
                files.push((path.clone(), text));
            }
        }
        Ok(files)
    }

    /// Compile policy documents given as (name, text).
    pub fn compile(files: Vec<(PathBuf, String)>) -> Result<Policy, PolicyError> {
        let mut parsed = Vec::with_capacity(files.len());
        let mut errors = Vec::new();
        for (path, text) in &files {
            if text.trim().is_empty() {
                parsed.push(PolicyFile::default());
                continue;
            }
            if let Err(position) = check_flow_depth(text) {
                errors.push(Diagnostic {
                    file: path.clone(),
                    position: Some(position),
                    message: format!(
                        "`[`/`{{` collections nested more than {MAX_FLOW_DEPTH} deep; a policy needs a few levels"
                    ),
                });
                continue;
            }
            match crate::yaml::parse::<PolicyFile>(path, text) {
                Ok(mut file) => {
                    header_texts_as_written(&mut file, text);
                    parsed.push(file);
                }
                Err(error) => errors.push(yaml_diagnostic(path, error)),
            }
        }
        if !errors.is_empty() {
            return Err(PolicyError(errors));
        }
        let mut compiler = Compiler::default();
        compiler.compile(&parsed);
        let located = |mut notes: Vec<Note>| -> Vec<Diagnostic> {
            // Locate the first notes of the first files (within a file,
            // notes come roughly in document order), then sort by position.
            // The sorts are stable: unlocated notes keep the order they were
            // found in, which is deterministic.
            notes.sort_by_key(|note| note.file);
            let mut diagnostics: Vec<(usize, Diagnostic)> = notes
                .into_iter()
                .enumerate()
                .map(|(i, note)| {
                    let (path, text) = &files[note.file];
                    let position = if i < MAX_LOCATED {
                        locate(text, &note.at)
                    } else {
                        None
                    };
                    let message = if note.at.is_empty() {
                        note.message
                    } else {
                        format!("{}: {}", dotted(&note.at), note.message)
                    };
                    let diagnostic = Diagnostic {
                        file: path.clone(),
                        position,
                        message,
                    };
                    (note.file, diagnostic)
                })
                .collect();
            diagnostics.sort_by_key(|(file, d)| (*file, d.position.is_none(), d.position));
            diagnostics.into_iter().map(|(_, d)| d).collect()
        };
        if !compiler.errors.is_empty() {
            return Err(PolicyError(located(std::mem::take(&mut compiler.errors))));
        }
        let warnings = located(std::mem::take(&mut compiler.warnings));
        let mut policy = compiler.finish();
        policy.warnings = warnings;
        policy.sources = files.into_iter().map(|(path, _)| path).collect();
        Ok(policy)
    }

    /// The route for a request, if any. `path` must be normalised.
    pub fn find(
        &self,
        method: &Method,
        host: Option<&str>,
        path: &str,
        headers: &HeaderMap,
    ) -> Option<&Route> {
        let id = self.table.find(host, path, |id| {
            self.routes[id as usize].accepts(method, headers)
        })?;
        Some(&self.routes[id as usize])
    }

    /// What `claims` entitle to under this policy: the license's own
    /// features and limits over its plan's over the limit's default.
    pub fn entitle(&self, claims: &LicenseClaims) -> Entitlement {
        let plan = self.plans.get(&claims.plan);
        let mut features = NameSet::with_len(self.features.len());
        for (bit, name) in self.features.iter().enumerate() {
            let in_plan = plan.is_some_and(|p| p.features.iter().any(|f| f == name));
            if in_plan || claims.has_feature(name) {
                features.insert(bit);
            }
        }
        let plan_roles = plan.and_then(|p| p.roles.as_ref());
        let roles = (plan_roles.is_some() || claims.roles.is_some()).then(|| {
            let mut roles = NameSet::with_len(self.roles.len());
            for (bit, name) in self.roles.iter().enumerate() {
                let listed = |list: Option<&Vec<String>>| list.is_some_and(|l| l.contains(name));
                if listed(plan_roles) || listed(claims.roles.as_ref()) {
                    roles.insert(bit);
                }
            }
            roles
        });
        let amounts = self
            .limits
            .iter()
            .map(|limit| limit.amount.resolve(claims, plan))
            .collect();
        Entitlement {
            features,
            roles,
            amounts,
        }
    }

    /// Nodes in the route trie.
    pub fn trie_nodes(&self) -> usize {
        self.table.node_count()
    }
}

impl Route {
    /// Methods and headers; the host was matched by its group in the
    /// route table.
    fn accepts(&self, method: &Method, headers: &HeaderMap) -> bool {
        if let Some(methods) = &self.methods {
            if !methods.iter().any(|m| m == method) {
                return false;
            }
        }
        self.headers
            .iter()
            .all(|(name, condition)| condition.holds(name, headers))
    }

    /// Rank among routes of one host group with the same path pattern:
    /// higher is more specific; see [`super::matcher`] for precedence.
    fn specificity(&self) -> (u8, usize) {
        (u8::from(self.methods.is_some()), self.headers.len())
    }
}

/// Replace header values YAML read as numbers or booleans (`x-version: 2`)
/// with their text as written: `2.10` must compare as `2.10`, not as the
/// number's `2.1`. One more pass over the file, only when there are any.
fn header_texts_as_written(file: &mut PolicyFile, text: &str) {
    let mut targets = Vec::new();
    for (i, route) in file.routes.iter().enumerate() {
        for (name, condition) in &route.headers {
            if matches!(condition, HeaderConditionSpec::EqualsScalar(_)) {
                targets.push(vec![
                    Step::key("routes"),
                    Step::Index(i),
                    Step::key("headers"),
                    Step::key(name),
                ]);
            }
        }
    }
    if targets.is_empty() {
        return;
    }
    let mut texts = scalar_texts(text, &targets).into_iter();
    for route in &mut file.routes {
        for (_, condition) in route.headers.iter_mut() {
            if let HeaderConditionSpec::EqualsScalar(value) = condition {
                // Keep the parsed form if the text cannot be read back.
                if let Some(Some(written)) = texts.next() {
                    *value = written;
                }
            }
        }
    }
}

fn read_error(path: &Path, error: std::io::Error) -> PolicyError {
    PolicyError(vec![Diagnostic {
        file: path.to_owned(),
        position: None,
        message: format!("cannot read policy: {error}"),
    }])
}

fn yaml_diagnostic(path: &Path, error: YamlError) -> Diagnostic {
    let (position, message) = match error {
        YamlError::At {
            line,
            column,
            message,
            ..
        } => (Some((line, column)), message),
        YamlError::Unplaced { message, .. } => (None, message),
    };
    Diagnostic {
        file: path.to_owned(),
        position,
        message,
    }
}

/// A diagnostic before it is located: which file, which node.
struct Note {
    file: usize,
    at: Vec<Step>,
    message: String,
}

#[derive(Default)]
struct Compiler {
    errors: Vec<Note>,
    warnings: Vec<Note>,
    mode: Option<(Mode, usize)>,
    unmatched: Option<(Access, usize)>,
    case: Option<(bool, usize)>,
    instances: Option<(InstancesDef, usize)>,
    /// Plans in the order defined: (name, plan, file).
    plans: Vec<(String, Plan, usize)>,
    plan_index: HashMap<String, usize>,
    limit_index: HashMap<String, usize>,
    limits: Vec<(LimitDef, usize)>,
    meter_index: HashMap<String, usize>,
    meters: Vec<(MeterDef, usize)>,
    /// Meters defined but not compiled (their error is reported).
    broken_meters: HashSet<String>,
    /// Seat limits whose header identity an SSO proxy in front sets
    /// (`trust_header`): not warned about.
    trusted_seat_headers: HashSet<String>,
    /// Limits defined but not compiled (their error is reported): routes
    /// using them fail without a second error.
    broken_limits: HashSet<String>,
    features: Vec<String>,
    feature_index: HashMap<String, usize>,
    roles: Vec<String>,
    role_index: HashMap<String, usize>,
    routes: Vec<Route>,
    /// Route keys by position, for shadowing checks: (route, file, index).
    route_names: HashMap<Arc<str>, (usize, usize)>,
    /// Feature bits of each route, sized once every feature is known.
    route_bits: Vec<Vec<usize>>,
    /// Routes without their own mode, which take the policy-wide one.
    inherit_mode: Vec<usize>,
}

impl Compiler {
    fn error(&mut self, file: usize, at: Vec<Step>, message: impl Into<String>) {
        self.errors.push(Note {
            file,
            at,
            message: message.into(),
        });
    }

    fn warn(&mut self, file: usize, at: Vec<Step>, message: impl Into<String>) {
        self.warnings.push(Note {
            file,
            at,
            message: message.into(),
        });
    }

    fn compile(&mut self, files: &[PolicyFile]) {
        for (f, file) in files.iter().enumerate() {
            self.top_level(f, file);
            for (name, spec) in &file.plans {
                let at = vec![Step::key("plans"), Step::key(name)];
                if let Some(&other) = self.plan_index.get(name) {
                    let other = self.plans[other].2;
                    self.error(
                        f,
                        at,
                        format!("plan `{name}` is already defined (file #{})", other + 1),
                    );
                    continue;
                }
                let plan = Plan {
                    features: spec.features.clone(),
                    limits: spec
                        .limits
                        .iter()
                        .map(|(name, n)| (name.clone(), *n))
                        .collect(),
                    seats: spec.seats,
                    roles: spec.roles.clone(),
                };
                self.plan_index.insert(name.clone(), self.plans.len());
                self.plans.push((name.clone(), plan, f));
            }
            for (name, spec) in &file.limits {
                self.limit(f, name, spec);
            }
            for (name, spec) in &file.meters {
                self.meter(f, name, spec);
            }
        }
        for (f, file) in files.iter().enumerate() {
            for (i, spec) in file.routes.iter().enumerate() {
                self.route(f, i, spec);
            }
        }
        self.check_references();
        self.check_shadowing();
        self.check_host_overlap();
    }

    fn top_level(&mut self, f: usize, file: &PolicyFile) {
        if let Some(mode) = file.mode {
            let mode = match mode {
                ModeSetting::Enforce => Mode::Enforce,
                ModeSetting::Shadow => Mode::Shadow,
            };
            if self.mode.is_some_and(|(m, _)| m != mode) {
                self.error(
                    f,
                    vec![Step::key("mode")],
                    "set differently in another policy file",
                );
            }
            self.mode = Some((mode, f));
        }
        if let Some(unmatched) = file.unmatched {
            let access = access(unmatched);
            if self.unmatched.is_some_and(|(a, _)| a != access) {
                self.error(
                    f,
                    vec![Step::key("unmatched")],
                    "set differently in another policy file",
                );
            }
            self.unmatched = Some((access, f));
        }
        if let Some(case) = file.paths.as_ref().and_then(|p| p.case) {
            let insensitive = case == CaseSetting::Insensitive;
            if self.case.is_some_and(|(c, _)| c != insensitive) {
                self.error(
                    f,
                    vec![Step::key("paths"), Step::key("case")],
                    "set differently in another policy file",
                );
            }
            self.case = Some((insensitive, f));
        }
        if let Some(spec) = &file.instances {
            self.instances(f, spec);
        }
    }

    fn instances(&mut self, f: usize, spec: &InstancesSpec) {
        let at = vec![Step::key("instances")];
        if let Some((_, other)) = self.instances {
            self.error(
                f,
                at,
                format!("already set in another policy file (file #{})", other + 1),
            );
            return;
        }
        let limit = spec
            .limit
            .clone()
            .unwrap_or_else(|| AmountSpec::License(format!("lic.limits.{INSTANCES_LIMIT}")));
        // Unlike a limit's, an instance limit is unlimited unless a
        // license or plan sets it: most licenses do not count replicas.
        let default = match limit {
            AmountSpec::License(_) => spec.default.or(Some(DefaultSpec::Unlimited)),
            AmountSpec::Fixed(_) => spec.default,
        };
        let Some(amount) = self.amount(f, &at, &limit, default, false) else {
            return;
        };
        let key = match spec.key.as_ref().map(|k| k.0.as_slice()) {
            None => InstanceKey::License,
            Some([one]) => match parse_key_part(one) {
                Ok(KeyPart::License) => InstanceKey::License,
                Ok(KeyPart::Claim(claim)) => InstanceKey::Claim(claim),
                Ok(_) | Err(_) => {
                    self.error(
                        f,
                        with(&at, "key"),
                        format!("`{one}`: instances are counted per `license` or per `claim:NAME` (e.g. `claim:customer`)"),
                    );
                    return;
                }
            },
            Some(_) => {
                self.error(
                    f,
                    with(&at, "key"),
                    "one key: `license` or `claim:NAME` (e.g. `claim:customer`)",
                );
                return;
            }
        };
        let on_limit = match spec.on_limit {
            None | Some(OnLimitSetting::NotReady) => OnInstanceLimit::NotReady,
            Some(OnLimitSetting::Deny) => OnInstanceLimit::Deny,
            Some(OnLimitSetting::Shadow) => OnInstanceLimit::Shadow,
        };
        self.instances = Some((
            InstancesDef {
                amount,
                key,
                on_limit,
            },
            f,
        ));
    }

    fn limit(&mut self, f: usize, name: &str, spec: &LimitSpec) {
        let at = vec![Step::key("limits"), Step::key(name)];
        if self.limit_index.contains_key(name) || self.broken_limits.contains(name) {
            self.error(
                f,
                at,
                format!("limit `{name}` is already defined in another policy file"),
            );
            return;
        }
        if !valid_name(name) {
            self.error(
                f,
                at.clone(),
                "limit names use letters, digits, `_`, `-` and `.`",
            );
            self.broken_limits.insert(name.to_owned());
            return;
        }
        let Some((kind, amount, key)) = self.limit_def(f, name, &at, spec) else {
            self.broken_limits.insert(name.to_owned());
            return;
        };
        let budgeted = matches!(kind, LimitKind::Rate { .. } | LimitKind::Quota { .. });
        if spec.headers.is_some() && !budgeted {
            self.error(
                f,
                with(&at, "headers"),
                format!(
                    "only rates and quotas state a budget in headers, not {}",
                    kind.as_str()
                ),
            );
            self.broken_limits.insert(name.to_owned());
            return;
        }
        let quota = matches!(kind, LimitKind::Quota { .. });
        if spec.count.is_some() && !quota {
            self.error(
                f,
                with(&at, "count"),
                format!(
                    "only quotas give back the units of requests that were not served; a {} counts every attempt",
                    kind.as_str()
                ),
            );
            self.broken_limits.insert(name.to_owned());
            return;
        }
        let count = match spec.count {
            _ if !quota => Count::Attempted,
            None | Some(CountSetting::Served) => Count::Served,
            Some(CountSetting::Attempted) => Count::Attempted,
        };
        let Some((overage, thresholds)) = self.soft_limits(f, &at, name, spec, quota) else {
            self.broken_limits.insert(name.to_owned());
            return;
        };
        // A budget keyed by the license is the caller's own; one keyed by
        // an address or a header may be shared with others, so it is only
        // stated when asked for.
        let headers = spec
            .headers
            .unwrap_or(budgeted && key.contains(&KeyPart::License));
        let needs_license = matches!(amount, Amount::License { .. })
            || key
                .iter()
                .chain(match &kind {
                    LimitKind::Seats { identity, .. } => Some(identity),
                    _ => None,
                })
                .any(|part| matches!(part, KeyPart::License | KeyPart::Claim(_)));
        let needs_user = key
            .iter()
            .chain(match &kind {
                LimitKind::Seats { identity, .. } => Some(identity),
                _ => None,
            })
            .any(|part| *part == KeyPart::User);
        self.limit_index.insert(name.to_owned(), self.limits.len());
        self.limits.push((
            LimitDef {
                name: name.into(),
                kind,
                amount,
                key,
                needs_license,
                needs_user,
                on_store_error: match spec.on_store_error {
                    None | Some(StoreErrorSetting::Fallback) => OnStoreError::Fallback,
                    Some(StoreErrorSetting::Allow) => OnStoreError::Allow,
                    Some(StoreErrorSetting::Deny) => OnStoreError::Deny,
                },
                headers,
                count,
                overage,
                thresholds,
            },
            f,
        ));
    }

    /// A quota's `overage` and `thresholds`, or `None` after reporting why
    /// not.
    fn soft_limits(
        &mut self,
        f: usize,
        at: &[Step],
        name: &str,
        spec: &LimitSpec,
        quota: bool,
    ) -> Option<(Option<Overage>, Box<[u16]>)> {
        for (setting, set) in [
            ("overage", spec.overage.is_some()),
            ("thresholds", spec.thresholds.is_some()),
        ] {
            if set && !quota {
                self.error(f, with(at, setting), "only quotas have this setting");
                return None;
            }
        }
        if !quota {
            return Some((None, Box::default()));
        }
        let overage = match spec.overage {
            None => None,
            Some(ratio) if ratio.is_finite() && ratio > 1.0 && ratio <= 10.0 => {
                let permille = (ratio * 1000.0).round() as u32;
                if (f64::from(permille) - ratio * 1000.0).abs() > 1e-6 {
                    self.error(
                        f,
                        with(at, "overage"),
                        "at most three decimals (1.25 is 125 % of the limit)",
                    );
                    return None;
                }
                Some(Overage {
                    permille,
                    meter: format!("{name}.overage").into(),
                })
            }
            Some(_) => {
                self.error(
                    f,
                    with(at, "overage"),
                    "a multiple of the limit above 1 and at most 10 (1.25 lets requests pass up to 125 %)",
                );
                return None;
            }
        };
        let top = overage.as_ref().map_or(100, |o| o.permille.div_ceil(10));
        let thresholds = match &spec.thresholds {
            None => DEFAULT_THRESHOLDS.into(),
            Some(list) => {
                let mut at = with(at, "thresholds");
                for (i, &percent) in list.iter().enumerate() {
                    if percent == 0 || u32::from(percent) > top {
                        at.push(Step::Index(i));
                        self.error(f, at, format!("a percentage of the limit from 1 to {top}"));
                        return None;
                    }
                    if i > 0 && list[i - 1] >= percent {
                        at.push(Step::Index(i));
                        self.error(f, at, "thresholds go up, each listed once");
                        return None;
                    }
                }
                list.clone().into_boxed_slice()
            }
        };
        Some((overage, thresholds))
    }

    fn meter(&mut self, f: usize, name: &str, spec: &MeterSpec) {
        let at = vec![Step::key("meters"), Step::key(name)];
        if self.meter_index.contains_key(name) || self.broken_meters.contains(name) {
            self.error(
                f,
                at,
                format!("meter `{name}` is already defined in another policy file"),
            );
            return;
        }
        if !valid_name(name) {
            self.error(f, at, "meter names use letters, digits, `_`, `-` and `.`");
            self.broken_meters.insert(name.to_owned());
            return;
        }
        let source = match spec {
            MeterSpec::Requests => MeterSource::Requests,
            MeterSpec::RequestBytes => MeterSource::RequestBytes,
            MeterSpec::ResponseBytes => MeterSource::ResponseBytes,
            MeterSpec::Header(header) => match HeaderName::from_bytes(header.as_bytes()) {
                Ok(header) if !header.as_str().starts_with("x-licensegate-") => {
                    MeterSource::Header(header)
                }
                Ok(_) => {
                    self.error(
                        f,
                        with(&at, "header"),
                        "`x-licensegate-*` headers are licensegate's own",
                    );
                    self.broken_meters.insert(name.to_owned());
                    return;
                }
                Err(_) => {
                    self.error(
                        f,
                        with(&at, "header"),
                        format!("`{header}` is not a header name"),
                    );
                    self.broken_meters.insert(name.to_owned());
                    return;
                }
            },
        };
        self.meter_index.insert(name.to_owned(), self.meters.len());
        self.meters.push((
            MeterDef {
                name: name.into(),
                source,
            },
            f,
        ));
    }

    /// A route's meters, or `None` after reporting why not.
    fn route_meters(
        &mut self,
        f: usize,
        at: &[Step],
        spec: &RouteSpec,
        access: Access,
    ) -> Option<Vec<MeterUse>> {
        let mut meters = Vec::new();
        let mut failed = false;
        if access != Access::Licensed && !spec.meters.is_empty() {
            self.error(
                f,
                with(at, "meters"),
                format!(
                    "meters count a license's usage; a {} route has none to count",
                    access_name(access)
                ),
            );
            return None;
        }
        for (n, used) in spec.meters.iter().enumerate() {
            let mut at = with(at, "meters");
            at.push(Step::Index(n));
            if self.broken_meters.contains(&used.meter) {
                failed = true;
                continue;
            }
            let Some(&index) = self.meter_index.get(&used.meter) else {
                let message = unknown("meter", &used.meter, &self.meter_index, &self.broken_meters);
                self.error(f, at, message);
                failed = true;
                continue;
            };
            let requests = self.meters[index].0.source == MeterSource::Requests;
            let cost = match used.cost {
                None => 1,
                Some(0) => {
                    self.error(f, at, "`cost` must be at least 1");
                    failed = true;
                    continue;
                }
                Some(cost) if requests => cost,
                Some(_) => {
                    self.error(
                        f,
                        at,
                        format!(
                            "`cost` applies to `requests` meters; `{}` counts what the request carries",
                            used.meter
                        ),
                    );
                    failed = true;
                    continue;
                }
            };
            if meters.iter().any(|m: &MeterUse| m.meter == index) {
                self.error(f, at, format!("meter `{}` is listed twice", used.meter));
                failed = true;
                continue;
            }
            meters.push(MeterUse { meter: index, cost });
        }
        (!failed).then_some(meters)
    }

    /// A limit's kind, amount and key, or `None` after reporting why not.
    fn limit_def(
        &mut self,
        f: usize,
        name: &str,
        at: &[Step],
        spec: &LimitSpec,
    ) -> Option<(LimitKind, Amount, Vec<KeyPart>)> {
        let kinds = [
            spec.rate.is_some(),
            spec.quota.is_some(),
            spec.seats.is_some(),
            spec.concurrency.is_some(),
        ];
        if kinds.iter().filter(|k| **k).count() != 1 {
            self.error(
                f,
                at.to_vec(),
                "a limit is exactly one of `rate`, `quota`, `seats` or `concurrency`",
            );
            return None;
        }
        let sub = |kind: &str| {
            let mut at = at.to_vec();
            at.push(Step::key(kind));
            at
        };
        let compiled = if let Some(rate) = &spec.rate {
            let at = sub("rate");
            if rate.per.0.is_zero() {
                self.error(f, with(&at, "per"), "must be longer than zero");
                return None;
            }
            if rate.burst == Some(0) {
                self.error(f, with(&at, "burst"), "must be at least 1");
                return None;
            }
            let amount = self.amount(f, &at, &rate.limit, rate.default, false)?;
            let key = self.key(f, &with(&at, "key"), rate.key.as_ref())?;
            (
                LimitKind::Rate {
                    window: rate.per.0,
                    burst: rate.burst,
                },
                amount,
                key,
            )
        } else if let Some(quota) = &spec.quota {
            let at = sub("quota");
            let period = match (quota.period, quota.rolling) {
                (Some(PeriodSetting::Hour), None) => Period::Hour,
                (Some(PeriodSetting::Day), None) => Period::Day,
                (Some(PeriodSetting::Month), None) => Period::Month,
                (None, Some(window)) if !window.0.is_zero() => Period::Rolling(window.0),
                (None, Some(_)) => {
                    self.error(f, with(&at, "rolling"), "must be longer than zero");
                    return None;
                }
                _ => {
                    self.error(
                        f,
                        at,
                        "a quota has exactly one of `period` (hour, day, month) or `rolling` (a duration)",
                    );
                    return None;
                }
            };
            let amount = self.amount(f, &at, &quota.limit, quota.default, false)?;
            let key = self.key(f, &with(&at, "key"), quota.key.as_ref())?;
            (LimitKind::Quota { period }, amount, key)
        } else if let Some(seats) = &spec.seats {
            let at = sub("seats");
            let limit = seats
                .limit
                .clone()
                .unwrap_or_else(|| AmountSpec::License("lic.seats".into()));
            let amount = self.amount(f, &at, &limit, seats.default, true)?;
            let key = self.key(f, &with(&at, "key"), seats.key.as_ref())?;
            let identity = match parse_key_part(&seats.identity) {
                Ok(KeyPart::Route) => {
                    self.error(f, with(&at, "identity"), "`route` does not identify a user");
                    return None;
                }
                Ok(part) => part,
                Err(message) => {
                    self.error(f, with(&at, "identity"), message);
                    return None;
                }
            };
            let idle = seats.idle.map_or(Duration::from_secs(30 * 60), |d| d.0);
            if idle.is_zero() {
                self.error(f, with(&at, "idle"), "must be longer than zero");
                return None;
            }
            match (&identity, seats.trust_header) {
                (KeyPart::Header(_), true) => self.trusted_seat_headers.insert(name.to_owned()),
                (_, true) => {
                    self.error(
                        f,
                        with(&at, "trust_header"),
                        "only a `header:NAME` identity is a header to trust",
                    );
                    return None;
                }
                _ => false,
            };
            (LimitKind::Seats { identity, idle }, amount, key)
        } else if let Some(concurrency) = &spec.concurrency {
            let at = sub("concurrency");
            let amount = self.amount(f, &at, &concurrency.limit, concurrency.default, false)?;
            let key = self.key(f, &with(&at, "key"), concurrency.key.as_ref())?;
            (LimitKind::Concurrency, amount, key)
        } else {
            unreachable!("exactly one kind was checked above")
        };
        Some(compiled)
    }

    fn amount(
        &mut self,
        f: usize,
        at: &[Step],
        spec: &AmountSpec,
        default: Option<DefaultSpec>,
        seats: bool,
    ) -> Option<Amount> {
        let default = default.map(|d| match d {
            DefaultSpec::Amount(n) => Some(n),
            DefaultSpec::Unlimited => None,
        });
        match spec {
            AmountSpec::Fixed(n) => {
                if default.is_some() {
                    self.error(f, with(at, "default"), "only used with `limit: lic.…`");
                    return None;
                }
                Some(Amount::Fixed(*n))
            }
            AmountSpec::License(path) => {
                let source = if seats && path == "lic.seats" {
                    LicenseAmount::Seats
                } else if let Some(name) = path.strip_prefix("lic.limits.") {
                    if !valid_name(name) {
                        self.error(
                            f,
                            with(at, "limit"),
                            format!("`{name}` is not a limit name"),
                        );
                        return None;
                    }
                    LicenseAmount::Limit(name.to_owned())
                } else {
                    let expected = if seats { "`lic.seats`, " } else { "" };
                    self.error(
                        f,
                        with(at, "limit"),
                        format!(
                            "`{path}`: expected a whole number, {expected}or `lic.limits.NAME`"
                        ),
                    );
                    return None;
                };
                let Some(default) = default else {
                    self.error(
                        f,
                        at.to_vec(),
                        format!(
                            "`limit: {path}` needs a `default` (a number, or `unlimited`) for licenses and plans that do not set it"
                        ),
                    );
                    return None;
                };
                Some(Amount::License { source, default })
            }
        }
    }

    fn key(&mut self, f: usize, at: &[Step], spec: Option<&KeySpec>) -> Option<Vec<KeyPart>> {
        let Some(spec) = spec else {
            return Some(vec![KeyPart::License]);
        };
        if spec.0.is_empty() {
            self.error(
                f,
                at.to_vec(),
                "an empty key list; leave `key` out for `license`",
            );
            return None;
        }
        let mut parts = Vec::new();
        for text in &spec.0 {
            match parse_key_part(text) {
                Ok(part) => parts.push(part),
                Err(message) => {
                    self.error(f, at.to_vec(), message);
                    return None;
                }
            }
        }
        Some(parts)
    }

    fn route(&mut self, f: usize, i: usize, spec: &RouteSpec) {
        let at = vec![Step::key("routes"), Step::Index(i)];
        let Some((path, grpc)) = self.route_path(f, &at, spec) else {
            return;
        };
        let pattern = match parse_pattern(&path) {
            Ok(pattern) => pattern,
            Err(message) => {
                self.error(f, with(&at, "path"), message);
                return;
            }
        };
        let mut failed = false;
        let methods = match &spec.methods {
            // gRPC calls are POSTs (gRPC over HTTP/2, "Requests").
            None if grpc.is_some() => Some(vec![Method::POST]),
            None => None,
            Some(_) if grpc.is_some() => {
                self.error(
                    f,
                    with(&at, "methods"),
                    "a gRPC route's method is POST; leave `methods` out",
                );
                return;
            }
            Some(list) if list.is_empty() => {
                self.error(
                    f,
                    with(&at, "methods"),
                    "an empty list; leave it out for any method",
                );
                return;
            }
            Some(list) => {
                let mut methods = Vec::new();
                for (m, text) in list.iter().enumerate() {
                    match Method::from_bytes(text.to_ascii_uppercase().as_bytes()) {
                        Ok(method) => methods.push(method),
                        Err(_) => {
                            let mut at = with(&at, "methods");
                            at.push(Step::Index(m));
                            self.error(f, at, format!("`{text}` is not an HTTP method"));
                            failed = true;
                        }
                    }
                }
                Some(methods)
            }
        };
        let host = match &spec.host {
            None => None,
            Some(host) => match parse_host(host) {
                Ok(host) => Some(host),
                Err(message) => {
                    self.error(f, with(&at, "host"), message);
                    return;
                }
            },
        };
        let mut headers = Vec::new();
        for (name, condition) in &spec.headers {
            let Ok(header) = HeaderName::from_bytes(name.as_bytes()) else {
                self.error(
                    f,
                    with(&at, "headers"),
                    format!("`{name}` is not a header name"),
                );
                failed = true;
                continue;
            };
            headers.push((
                header,
                match condition {
                    HeaderConditionSpec::Equals(v) | HeaderConditionSpec::EqualsScalar(v) => {
                        HeaderCondition::Equals(v.clone())
                    }
                    HeaderConditionSpec::Present(p) => HeaderCondition::Present(*p),
                    HeaderConditionSpec::Prefix(p) => HeaderCondition::Prefix(p.clone()),
                },
            ));
        }
        let access = spec.access.map_or(Access::Licensed, access);
        if access != Access::Licensed && !spec.features.is_empty() {
            self.error(
                f,
                with(&at, "features"),
                format!("a `{}` route cannot require features", access_name(access)),
            );
            failed = true;
        }
        if access == Access::Deny && spec.websocket {
            self.error(
                f,
                with(&at, "websocket"),
                "a `deny` route has no WebSocket to allow",
            );
            failed = true;
        }
        if access == Access::Deny && spec.preflight == Some(PreflightSetting::Forward) {
            self.error(
                f,
                with(&at, "preflight"),
                "a `deny` route forwards nothing, preflights included",
            );
            failed = true;
        }
        if access == Access::Deny && !spec.limits.is_empty() {
            self.error(
                f,
                with(&at, "limits"),
                "a `deny` route has no limits to apply",
            );
            failed = true;
        }
        let mut feature_names = Vec::new();
        let mut feature_bits = Vec::new();
        for (n, feature) in spec.features.iter().enumerate() {
            if feature.is_empty() {
                let mut at = with(&at, "features");
                at.push(Step::Index(n));
                self.error(f, at, "an empty feature name");
                failed = true;
                continue;
            }
            let bit = match self.feature_index.get(feature) {
                Some(&bit) => bit,
                None => {
                    self.features.push(feature.clone());
                    self.feature_index
                        .insert(feature.clone(), self.features.len() - 1);
                    self.features.len() - 1
                }
            };
            feature_names.push(feature.clone());
            feature_bits.push(bit);
        }
        let mut limits = Vec::new();
        for (n, used) in spec.limits.iter().enumerate() {
            let mut at = with(&at, "limits");
            at.push(Step::Index(n));
            if self.broken_limits.contains(&used.limit) {
                // Reported where it is defined; the policy fails anyway.
                failed = true;
                continue;
            }
            let Some(&index) = self.limit_index.get(&used.limit) else {
                let message = unknown("limit", &used.limit, &self.limit_index, &self.broken_limits);
                self.error(f, at, message);
                failed = true;
                continue;
            };
            let limit = &self.limits[index].0;
            if access == Access::Public && limit.needs_license {
                self.error(
                    f,
                    at,
                    format!(
                        "limit `{}` needs a license (its key or number comes from one) but the route is public",
                        used.limit
                    ),
                );
                failed = true;
                continue;
            }
            if used.cost == 0 {
                self.error(f, at, "`cost` must be at least 1");
                failed = true;
                continue;
            }
            if used.cost > 1
                && matches!(limit.kind, LimitKind::Seats { .. } | LimitKind::Concurrency)
            {
                self.error(
                    f,
                    at,
                    format!(
                        "`cost` applies to rates and quotas, not {}",
                        limit.kind.as_str()
                    ),
                );
                failed = true;
                continue;
            }
            if let Some(message) = unpayable(limit, &used.limit, used.cost) {
                self.error(f, at, message);
                failed = true;
                continue;
            }
            limits.push(LimitUse {
                limit: index,
                cost: used.cost,
            });
        }
        let meters = self.route_meters(f, &at, spec, access);
        failed |= meters.is_none();
        let roles = self.route_roles(f, &at, spec, access);
        failed |= roles.is_none();
        let roles = roles.unwrap_or_default();
        let needs_user =
            !roles.is_empty() || limits.iter().any(|u| self.limits[u.limit].0.needs_user);
        let name: Arc<str> = match &spec.name {
            Some(name) if name.is_empty() => {
                self.error(f, with(&at, "name"), "an empty route name");
                return;
            }
            Some(name) => name.as_str().into(),
            None => match &methods {
                Some(methods) => {
                    let list: Vec<&str> = methods.iter().map(Method::as_str).collect();
                    format!("{} {}", list.join(","), path).into()
                }
                None => path.as_str().into(),
            },
        };
        if spec.name.is_some() {
            if let Some(&(other_file, other_index)) = self.route_names.get(&name) {
                self.error(
                    f,
                    with(&at, "name"),
                    format!(
                        "route name `{name}` is already used by routes[{other_index}]{}",
                        if other_file == f {
                            String::new()
                        } else {
                            format!(" of file #{}", other_file + 1)
                        }
                    ),
                );
                failed = true;
            }
            self.route_names.insert(Arc::clone(&name), (f, i));
        }
        if failed {
            return;
        }
        let mode = match spec.mode {
            Some(ModeSetting::Shadow) => Some(Mode::Shadow),
            Some(ModeSetting::Enforce) => Some(Mode::Enforce),
            None => None,
        };
        self.routes.push(Route {
            id: self.routes.len(),
            name,
            path,
            grpc,
            pattern,
            methods,
            host,
            headers,
            access,
            // Sized when the feature list is complete (finish).
            features: NameSet::default(),
            feature_names,
            roles,
            needs_user,
            limits,
            meters: meters.unwrap_or_default(),
            // Resolved against the policy-wide mode in finish.
            mode: mode.unwrap_or(Mode::Enforce),
            websocket: spec.websocket,
            preflight: match spec.preflight {
                Some(PreflightSetting::Decide) => Preflight::Decide,
                Some(PreflightSetting::Forward) | None => Preflight::Forward,
            },
            origin: (f, i),
        });
        self.route_bits.push(feature_bits);
        if mode.is_none() {
            self.inherit_mode.push(self.routes.len() - 1);
        }
    }

    /// The route's path pattern, from `path` or from `grpc` (with the gRPC
    /// method it names); `None` after an error.
    fn route_path(
        &mut self,
        f: usize,
        at: &[Step],
        spec: &RouteSpec,
    ) -> Option<(String, Option<GrpcMethod>)> {
        let grpc = match (&spec.path, &spec.grpc) {
            (Some(path), None) => return Some((path.clone(), None)),
            (Some(_), Some(_)) => {
                self.error(
                    f,
                    with(at, "grpc"),
                    "`path` and `grpc` are exclusive: `grpc` makes the path /SERVICE/METHOD",
                );
                return None;
            }
            (None, None) => {
                self.error(
                    f,
                    at.to_vec(),
                    "a route needs `path` (an HTTP path pattern) or `grpc` \
                     (a gRPC service and method)",
                );
                return None;
            }
            (None, Some(grpc)) => grpc,
        };
        let at = with(at, "grpc");
        let mut failed = false;
        if !is_grpc_service(&grpc.service) {
            self.error(
                f,
                with(&at, "service"),
                format!(
                    "`{}` is not a gRPC service name: expected the package and service \
                     as dot-separated identifiers (letters, digits, `_`), e.g. shop.v1.Reports",
                    grpc.service
                ),
            );
            failed = true;
        }
        if let Some(method) = &grpc.method {
            if method == "*" || method == "**" {
                self.error(
                    f,
                    with(&at, "method"),
                    "leave `method` out for every method of the service",
                );
                failed = true;
            } else if !is_identifier(method) {
                self.error(
                    f,
                    with(&at, "method"),
                    format!(
                        "`{method}` is not a gRPC method name: expected an identifier \
                         (letters, digits, `_`), e.g. Export"
                    ),
                );
                failed = true;
            }
        }
        if failed {
            return None;
        }
        let grpc = GrpcMethod {
            service: grpc.service.clone(),
            method: grpc.method.clone(),
        };
        Some((grpc.path_pattern(), Some(grpc)))
    }

    /// The route's `roles`, interned into [`Policy::roles`]; `None` after
    /// an error.
    fn route_roles(
        &mut self,
        f: usize,
        at: &[Step],
        spec: &RouteSpec,
        access: Access,
    ) -> Option<RoleRule> {
        let Some(roles) = &spec.roles else {
            return Some(RoleRule::default());
        };
        let at = with(at, "roles");
        if access == Access::Deny {
            self.error(f, at, "a `deny` route has no roles to require");
            return None;
        }
        let (any_of, all_of, listed) = match roles {
            RolesSpec::AnyOf(names) => (names.as_slice(), &[][..], false),
            RolesSpec::Rule(rule) => (rule.any_of.as_slice(), rule.all_of.as_slice(), true),
        };
        if any_of.is_empty() && all_of.is_empty() {
            self.error(
                f,
                at,
                "name at least one role (an empty list would let every verified user in; drop `roles` for that)",
            );
            return None;
        }
        let mut failed = false;
        let mut intern = |group: &[String], key: &str| -> Box<[usize]> {
            let mut bits = Vec::new();
            for (n, role) in group.iter().enumerate() {
                if role.is_empty() || role.trim() != role {
                    let mut at = at.clone();
                    if listed {
                        at.push(Step::key(key));
                    }
                    at.push(Step::Index(n));
                    self.errors.push(Note {
                        file: f,
                        at,
                        message: format!(
                            "{role:?} is not a role name (empty, or with spaces around it)"
                        ),
                    });
                    failed = true;
                    continue;
                }
                let bit = *self.role_index.entry(role.clone()).or_insert_with(|| {
                    self.roles.push(role.clone());
                    self.roles.len() - 1
                });
                if !bits.contains(&bit) {
                    bits.push(bit);
                }
            }
            bits.into_boxed_slice()
        };
        let rule = RoleRule {
            any_of: intern(any_of, "any_of"),
            all_of: intern(all_of, "all_of"),
        };
        (!failed).then_some(rule)
    }

    fn check_references(&mut self) {
        // Features no plan includes can only come from a license listing them.
        let planned: HashSet<&str> = self
            .plans
            .iter()
            .flat_map(|(_, plan, _)| plan.features.iter().map(String::as_str))
            .collect();
        let mut notes = Vec::new();
        self.check_roles(&mut notes);
        if !self.plans.is_empty() {
            for route in &self.routes {
                for (n, feature) in route.feature_names.iter().enumerate() {
                    if !planned.contains(feature.as_str()) {
                        let (f, i) = route.origin;
                        notes.push((
                            f,
                            vec![Step::key("routes"), Step::Index(i), Step::key("features"), Step::Index(n)],
                            format!("feature `{feature}` is in no plan; only licenses that list it themselves pass"),
                        ));
                    }
                }
            }
        }
        // `lic.limits.NAME` no plan sets falls back to its default for every plan.
        for (limit, f) in &self.limits {
            if let Amount::License {
                source: LicenseAmount::Limit(name),
                ..
            } = &limit.amount
            {
                if !self.plans.is_empty()
                    && !self
                        .plans
                        .iter()
                        .any(|(_, plan, _)| plan.limits.contains_key(name))
                {
                    notes.push((
                        *f,
                        vec![Step::key("limits"), Step::key(&limit.name)],
                        format!("`lic.limits.{name}` is set by no plan; licenses without it get the default"),
                    ));
                }
            }
        }
        let default_instances = InstancesDef::default();
        let instances = self
            .instances
            .as_ref()
            .map_or(&default_instances, |(def, _)| def);
        let reads = |amount: &Amount, name: &str| matches!(amount, Amount::License { source: LicenseAmount::Limit(n), .. } if n == name);
        for (plan_name, plan, f) in &self.plans {
            for name in plan.limits.keys() {
                let used = reads(&instances.amount, name)
                    || self
                        .limits
                        .iter()
                        .any(|(limit, _)| reads(&limit.amount, name));
                if !used {
                    notes.push((
                        *f,
                        vec![
                            Step::key("plans"),
                            Step::key(plan_name),
                            Step::key("limits"),
                            Step::key(name),
                        ],
                        format!("no limit reads `lic.limits.{name}`"),
                    ));
                }
            }
        }
        let used: HashSet<usize> = self
            .routes
            .iter()
            .flat_map(|r| r.limits.iter().map(|l| l.limit))
            .collect();
        for (index, (limit, f)) in self.limits.iter().enumerate() {
            if !used.contains(&index) {
                notes.push((
                    *f,
                    vec![Step::key("limits"), Step::key(&limit.name)],
                    format!("limit `{}` is used by no route", limit.name),
                ));
            }
        }
        let metered: HashSet<usize> = self
            .routes
            .iter()
            .flat_map(|r| r.meters.iter().map(|m| m.meter))
            .collect();
        for (index, (meter, f)) in self.meters.iter().enumerate() {
            if !metered.contains(&index) {
                notes.push((
                    *f,
                    vec![Step::key("meters"), Step::key(&meter.name)],
                    format!("meter `{}` is fed by no route", meter.name),
                ));
            }
        }
        for (f, at, message) in notes {
            self.warn(f, at, message);
        }
    }

    fn check_shadowing(&mut self) {
        // Same pattern and conditions that an earlier-ranked route covers:
        // the later one can never be chosen. In a case-insensitive policy
        // literals that differ only in case share a trie node, so patterns
        // are compared case-folded, as the matcher does.
        let fold = self.case.is_some_and(|(insensitive, _)| insensitive);
        let mut group_of: HashMap<String, usize> = HashMap::new();
        let mut groups: Vec<Vec<usize>> = Vec::new();
        for (index, route) in self.routes.iter().enumerate() {
            let mut key = pattern_key(&route.pattern);
            if fold {
                key.make_ascii_lowercase();
            }
            let group = *group_of.entry(key).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[group].push(index);
        }
        let mut notes = Vec::new();
        for indices in &groups {
            for (later_pos, &later) in indices.iter().enumerate() {
                let l = &self.routes[later];
                for &earlier in &indices[..later_pos] {
                    let e = &self.routes[earlier];
                    if e.specificity() == l.specificity() && covers(e, l) {
                        let (f, i) = l.origin;
                        notes.push((
                            f,
                            vec![Step::key("routes"), Step::Index(i)],
                            format!(
                                "route `{}` can never match: route `{}` (routes[{}]) matches the same requests first",
                                l.name, e.name, e.origin.1
                            ),
                        ));
                        break;
                    }
                }
            }
        }
        // In route order; the diagnostics are sorted by position later.
        notes.sort_by_key(|(f, at, _)| {
            (
                *f,
                match at.get(1) {
                    Some(Step::Index(i)) => *i,
                    _ => 0,
                },
            )
        });
        for (f, at, message) in notes {
            self.warn(f, at, message);
        }
    }

    fn check_host_overlap(&mut self) {
        // A host's own routes are tried before wildcard-host routes, and
        // those before host-less ones, whatever their paths: a request both
        // match goes to the more host-specific route. Say so at the less
        // specific route, which no longer decides for that host.
        let fold = self.case.is_some_and(|(insensitive, _)| insensitive);
        let scoped: Vec<&Route> = self.routes.iter().filter(|r| r.host.is_some()).collect();
        if scoped.is_empty() {
            return;
        }
        let mut notes = Vec::new();
        for route in &self.routes {
            // The first overlapping route of each more specific host group.
            let mut deciders: Vec<&Route> = Vec::new();
            for &other in &scoped {
                let Some(other_host) = &other.host else {
                    continue;
                };
                let more_specific = match &route.host {
                    None => true,
                    Some(host) => host != other_host && host.contains(other_host),
                };
                if more_specific
                    && methods_overlap(&route.methods, &other.methods)
                    && patterns_overlap(&route.pattern, &other.pattern, fold)
                    && !deciders.iter().any(|d| d.host == other.host)
                {
                    deciders.push(other);
                }
            }
            if deciders.is_empty() {
                continue;
            }
            const NAMED: usize = 3;
            let mut named: Vec<String> = deciders
                .iter()
                .take(NAMED)
                .map(|d| {
                    let (file, index) = d.origin;
                    let elsewhere = if file == route.origin.0 {
                        String::new()
                    } else {
                        format!(" of file #{}", file + 1)
                    };
                    format!(
                        "for host `{}` route `{}` (routes[{index}]{elsewhere})",
                        d.host.as_ref().expect("host-scoped"),
                        d.name
                    )
                })
                .collect();
            if deciders.len() > NAMED {
                named.push(format!("{} more host(s)", deciders.len() - NAMED));
            }
            let (f, i) = route.origin;
            let tier = if route.host.is_some() {
                "wildcard-host routes"
            } else {
                "host-less routes"
            };
            notes.push((
                f,
                vec![Step::key("routes"), Step::Index(i)],
                format!(
                    "route `{}` overlaps host-scoped routes, which decide there instead: {}; a host's routes are tried before {tier}, whatever the path",
                    route.name,
                    named.join(", ")
                ),
            ));
        }
        for (f, at, message) in notes {
            self.warn(f, at, message);
        }
    }

    /// Roles no capping plan includes, and seats held by what a client
    /// types.
    fn check_roles(&self, notes: &mut Vec<(usize, Vec<Step>, String)>) {
        let capping: Vec<&str> = self
            .plans
            .iter()
            .filter(|(_, plan, _)| plan.roles.is_some())
            .map(|(name, _, _)| name.as_str())
            .collect();
        for route in &self.routes {
            let (f, i) = route.origin;
            for &bit in route.roles.any_of.iter().chain(&route.roles.all_of) {
                let role = &self.roles[bit];
                let in_plan = self.plans.iter().any(|(_, plan, _)| {
                    plan.roles
                        .as_ref()
                        .is_some_and(|roles| roles.contains(role))
                });
                if !capping.is_empty() && !in_plan {
                    notes.push((
                        f,
                        vec![Step::key("routes"), Step::Index(i), Step::key("roles")],
                        format!(
                            "role `{role}` is in no plan's `roles` ({}); only licenses that list it in `lic.roles` (or plans without `roles`) pass",
                            capping.join(", ")
                        ),
                    ));
                }
            }
        }
        for (limit, f) in &self.limits {
            if let LimitKind::Seats {
                identity: KeyPart::Header(name),
                ..
            } = &limit.kind
            {
                if self.trusted_seat_headers.contains(&*limit.name) {
                    continue;
                }
                notes.push((
                    *f,
                    vec![Step::key("limits"), Step::key(&limit.name), Step::key("seats"), Step::key("identity")],
                    format!(
                        "seats are held by whatever the `{name}` header says, which any client can type: one value shares a seat among everyone, fresh values lock real users out. Use `identity: user` (a verified user token, see `users:` in the config), or, behind a single sign-on proxy that sets the header and strips client copies, say so with `trust_header: true`"
                    ),
                ));
            }
        }
    }

    fn finish(self) -> Policy {
        let mode = self.mode.map_or(Mode::Enforce, |(m, _)| m);
        let unmatched = self.unmatched.map_or(Access::Deny, |(a, _)| a);
        let case_insensitive = self.case.is_some_and(|(c, _)| c);
        let feature_count = self.features.len();
        let mut routes = self.routes;
        for &index in &self.inherit_mode {
            routes[index].mode = mode;
        }
        let limits: Vec<LimitDef> = self.limits.into_iter().map(|(l, _)| l).collect();
        let meters: Vec<MeterDef> = self.meters.into_iter().map(|(m, _)| m).collect();
        let mut usage_headers: Vec<HeaderName> = Vec::new();
        for meter in &meters {
            if let MeterSource::Header(name) = &meter.source {
                if !usage_headers.contains(name) {
                    usage_headers.push(name.clone());
                }
            }
        }
        for route in &mut routes {
            // Evaluation order: concurrency, rates, quotas, seats. A limit
            // that refuses gives back what the earlier ones counted, but not
            // everything can be given back: a slot can (it is released), a
            // rate's or quota's units can (refunded), a seat cannot (once
            // taken it is someone's until idle). So seats come last, and a
            // new user refused by a rate or quota never takes a seat.
            // Several of one kind keep the order written (a stable sort).
            route.limits.sort_by_key(|u| match limits[u.limit].kind {
                LimitKind::Concurrency => 0,
                LimitKind::Rate { .. } => 1,
                LimitKind::Quota { .. } => 2,
                LimitKind::Seats { .. } => 3,
            });
        }
        for (route, bits) in routes.iter_mut().zip(&self.route_bits) {
            let mut set = NameSet::with_len(feature_count);
            for &bit in bits {
                set.insert(bit);
            }
            route.features = set;
        }
        let mut table = RouteTable::new(case_insensitive);
        for (id, route) in routes.iter().enumerate() {
            table.insert(route.host.as_ref(), &route.pattern, id as u32);
        }
        table.rank(|id| (std::cmp::Reverse(routes[id as usize].specificity()), id));
        let needs_license =
            unmatched == Access::Licensed || routes.iter().any(|r| r.access == Access::Licensed);
        let needs_user = routes.iter().any(|r| r.needs_user);
        Policy {
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
            routes,
            limits,
            meters,
            usage_headers,
            plans: self
                .plans
                .into_iter()
                .map(|(name, plan, _)| (name, plan))
                .collect(),
            features: self.features,
            roles: self.roles,
            unmatched,
            mode,
            case_insensitive,
            needs_license,
            needs_user,
            instances: self.instances.map(|(def, _)| def).unwrap_or_default(),
            sources: Vec::new(),
            warnings: Vec::new(),
            table,
        }
    }
}

/// Why no request can ever pay `cost` units of `limit`, when that is known
/// at compile time: a fixed rate lets at most `burst` (default: its amount)
/// through at once, a fixed quota at most its amount per period. Numbers
/// from licenses are only known per license, at run time; a fixed `0`
/// refuses everything whatever the cost, as written.
fn unpayable(limit: &LimitDef, name: &str, cost: u64) -> Option<String> {
    let Amount::Fixed(amount) = limit.amount else {
        return None;
    };
    if amount == 0 {
        return None;
    }
    match limit.kind {
        LimitKind::Rate { burst, .. } => {
            let (at_once, defaulted) = match burst {
                Some(burst) => (burst, ""),
                None => (amount, ", the default: its limit"),
            };
            (cost > at_once).then(|| {
                format!(
                    "`cost: {cost}` is more than rate `{name}` lets through at once (burst {at_once}{defaulted}), so no request here can pass"
                )
            })
        }
        LimitKind::Quota { .. } => (cost > amount).then(|| {
            format!(
                "`cost: {cost}` is more than quota `{name}` allows per period ({amount}), so no request here can pass"
            )
        }),
        LimitKind::Seats { .. } | LimitKind::Concurrency => None,
    }
}

/// Whether some method is accepted by both lists (`None` is any method).
fn methods_overlap(a: &Option<Vec<Method>>, b: &Option<Vec<Method>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.iter().any(|m| b.contains(m)),
        _ => true,
    }
}

/// Whether every request `later` accepts is accepted by `earlier`.
fn covers(earlier: &Route, later: &Route) -> bool {
    let methods = match (&earlier.methods, &later.methods) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(e), Some(l)) => l.iter().all(|m| e.contains(m)),
    };
    // Routes of different host groups never compete: see the matcher.
    methods
        && earlier.host == later.host
        && earlier.headers.iter().all(|h| later.headers.contains(h))
}

/// A route names a `what` (limit, meter) no file defines: the message, with
/// the names that are defined (those that failed to compile included).
fn unknown(
    what: &str,
    name: &str,
    defined: &HashMap<String, usize>,
    broken: &HashSet<String>,
) -> String {
    let known: Vec<&str> = defined.keys().chain(broken).map(String::as_str).collect();
    let known = if known.is_empty() {
        "none".to_owned()
    } else {
        sorted(known).join(", ")
    };
    format!("no {what} named `{name}` (defined: {known})")
}

fn with(at: &[Step], key: &str) -> Vec<Step> {
    let mut at = at.to_vec();
    at.push(Step::key(key));
    at
}

fn sorted(mut names: Vec<&str>) -> Vec<&str> {
    names.sort_unstable();
    names
}

fn access(setting: AccessSetting) -> Access {
    match setting {
        AccessSetting::Public => Access::Public,
        AccessSetting::Licensed => Access::Licensed,
        AccessSetting::Deny => Access::Deny,
    }
}

fn access_name(access: Access) -> &'static str {
    match access {
        Access::Public => "public",
        Access::Licensed => "licensed",
        Access::Deny => "deny",
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn parse_host(host: &str) -> Result<HostMatch, String> {
    let lower = host.to_ascii_lowercase();
    let (suffix, name) = match lower.strip_prefix("*.") {
        Some(rest) => (true, rest.to_owned()),
        None => (false, lower),
    };
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'))
        && !name.starts_with('.')
        && !name.ends_with('.');
    if !valid {
        return Err(format!(
            "`{host}` is not a host name; expected e.g. `api.example.com` or `*.example.com` (no port)"
        ));
    }
    Ok(if suffix {
        HostMatch::Suffix(format!(".{name}"))
    } else {
        HostMatch::Exact(name)
    })
}

/// `license`, `claim:NAME`, `header:NAME`, `client_ip` or `route`.
pub fn parse_key_part(text: &str) -> Result<KeyPart, String> {
    match text {
        "license" => return Ok(KeyPart::License),
        "user" => return Ok(KeyPart::User),
        "client_ip" => return Ok(KeyPart::ClientIp),
        "route" => return Ok(KeyPart::Route),
        _ => {}
    }
    if let Some(claim) = text.strip_prefix("claim:") {
        return match claim {
            "sub" => Ok(KeyPart::Claim(Claim::Sub)),
            "plan" => Ok(KeyPart::Claim(Claim::Plan)),
            "customer" => Ok(KeyPart::Claim(Claim::Customer)),
            "iss" => Ok(KeyPart::Claim(Claim::Issuer)),
            other => Err(format!(
                "`claim:{other}`: the claims a key can use are sub, plan, customer and iss"
            )),
        };
    }
    if let Some(header) = text.strip_prefix("header:") {
        return HeaderName::from_bytes(header.as_bytes())
            .map(KeyPart::Header)
            .map_err(|_| format!("`{header}` is not a header name"));
    }
    Err(format!(
        "`{text}`: expected `license`, `user`, `claim:NAME`, `header:NAME`, `client_ip` or `route`"
    ))
}
