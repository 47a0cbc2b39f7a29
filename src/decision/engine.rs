//! The decision engine: run the evaluator (route, access, upgrade,
//! preflight, license, features, seat identities: see [`super::evaluate`]),
//! count the limits it names, and say allow or deny — once per request,
//! with the metrics, the decision log and shadow mode.
//!
//! Limits are counted in the route's order (concurrency, rates, quotas,
//! then seats; see [`crate::policy`]). A limit that refuses gives back what
//! earlier limits counted for the same request, so a denied request is
//! never billed against a quota, and seats come last so a refused request
//! never takes one.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use prometheus::IntCounter;

use super::entitlements::{Entitled, EntitlementCache, LicenseHeaders, RoleCap};
use super::evaluate::{
    instance_denial, license_denial, Admission, Credentials, EnvironmentCheck, EvaluatorSettings,
    InstanceCheck, LicenseView, LimitCheck, LimitPlan, NoTrace, Outcome, RequestFacts, Verdict,
};
use super::keys::{key_label, KEY_SEPARATOR};
use super::log::{DecisionLog, DenialLine};
use super::meters::{self, Metered, RouteMeters};
use super::thresholds::{Holder, ThresholdAnnouncer};
use super::usage::{self, Bound, Entitlement, Sources, Subject, UsageReport, UsageRequest};
use super::DecisionMetrics;
use super::{BodyState, Decision, Denial, Peer, Reason};
use crate::license::{LicenseError, LicenseGate, VerifiedLicense};
use crate::limits::instances::InstanceSlot;
use crate::limits::shared::{SharedStore, SlotOp};
use crate::limits::{
    retry_after_secs, Budget, Budgets, Charge, Counters, Held, Limited, Limiter, MemoryStore,
    OverageUse, Permit, Refusal, Tickets,
};
use crate::policy::{
    Claim, KeyPart, LimitDef, LimitKind, Mode, OnInstanceLimit, Policy, PolicyError,
};
use crate::user::{UserError, UserVerifier, VerifiedUser};

use super::entitlements::LicenseHeaderNames;
use crate::policy::WebSocketScope;

/// How the engine is built.
#[derive(Clone, Debug)]
pub struct EngineSettings {
    pub license_headers: LicenseHeaderNames,
    /// Keys tracked per limit before new keys share an overflow counter.
    pub max_keys: usize,
    /// Licenses whose entitlements are remembered.
    pub entitlement_capacity: usize,
    /// Take the client address for `client_ip` keys from the last
    /// `X-Forwarded-For` entry (added by the trusted proxy in front).
    pub trust_forwarded: bool,
    /// Which allowed requests may become WebSocket tunnels.
    pub websocket: WebSocketScope,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            license_headers: LicenseHeaderNames::default(),
            max_keys: MemoryStore::DEFAULT_MAX_KEYS,
            entitlement_capacity: 10_000,
            trust_forwarded: false,
            websocket: WebSocketScope::Routes,
        }
    }
}

/// The route label of requests no route matched.
pub const UNMATCHED_ROUTE: &str = "(unmatched)";

/// The route label of requests refused before matching (bad path or head).
pub const REJECTED_ROUTE: &str = "(rejected)";

/// What an allowed request carries to the forwarder.
#[derive(Debug, Default)]
pub struct Allowed {
    /// Entitlement header values (absent when no license was checked).
    pub license: Option<Arc<LicenseHeaders>>,
    /// Concurrency slots, held until the response has been sent.
    pub permits: Vec<Permit>,
    /// What the rates and quotas that state it (`headers`) have left, for
    /// the response's `RateLimit-Policy` and `RateLimit` fields.
    pub budgets: Budgets,
    /// Served-counted quota charges (`count: served`): kept if the
    /// response is served, given back if not. Dropped unsettled, they give
    /// the units back (the client went away).
    pub tickets: Tickets,
    /// The meters the matched route feeds, when it has any and a license
    /// was verified: recorded once the response was served.
    pub metered: Option<Metered>,
    /// Response headers the workload reports usage in, to be removed from
    /// the response (every response, metered or not).
    pub usage_headers: Option<Arc<[HeaderName]>>,
    /// Quotas with `overage` this request went past 100 % of: the
    /// upstream is told (`x-licensegate-overage`) and the units are
    /// metered apart.
    pub overage: Vec<OverageUse>,
    /// A shadow-mode rule would have denied for this reason.
    pub shadow: Option<Reason>,
    /// The verified user, and the roles the workload is told (those the
    /// license includes).
    pub user: Option<ForwardedUser>,
    /// The matched route lets this request become a WebSocket tunnel.
    pub websocket: bool,
    /// A CORS preflight, forwarded without a license check or limits.
    pub preflight: bool,
    /// The matched route's name, for an answer licensegate writes itself
    /// when the upstream fails.
    pub route: Option<Arc<str>>,
}

impl Allowed {
    /// Take what counting the limits left to hold until the response ends.
    fn hold(&mut self, held: Held) {
        let Held {
            permits,
            budgets,
            tickets,
            overage,
            crossings: _,
        } = held;
        self.permits = permits;
        self.budgets = budgets;
        self.tickets = tickets;
        self.overage = overage;
    }
}

/// The verified license and its entitlement, once checked: filled by
/// [`RequestCredentials`] when the evaluator reaches the license.
type LicenseSlot = OnceCell<(Arc<VerifiedLicense>, Arc<Entitled>)>;

/// The verified user, once checked.
type UserSlot = OnceCell<Arc<VerifiedUser>>;

/// What the workload is told about the request's verified user.
#[derive(Clone, Debug)]
pub struct ForwardedUser {
    pub user: Arc<VerifiedUser>,
    /// The roles the license includes, comma-separated; `None`: none.
    pub roles: Option<HeaderValue>,
}

impl ForwardedUser {
    /// `user`, with the roles `cap` admits (all of them when the license
    /// does not cap roles).
    fn new(user: Arc<VerifiedUser>, cap: Option<&RoleCap>) -> ForwardedUser {
        let roles = match cap {
            None => user.roles_value.clone(),
            Some(cap) => user.roles_value_capped(cap.id, |role| cap.admits(role)),
        };
        ForwardedUser { user, roles }
    }
}

/// Who holds the seat `check` counts (`""` for other limits): as the
/// evaluator read it, or read here. The evaluator has refused requests
/// without one.
fn seat_identity<'a>(
    context: &KeyContext<'a>,
    plan: &LimitPlan<'a>,
    check: &LimitCheck<'_>,
) -> Cow<'a, str> {
    match (&check.def.kind, plan.seat) {
        (LimitKind::Seats { .. }, Some((position, text))) if position == check.position => {
            Cow::Borrowed(text)
        }
        (LimitKind::Seats { identity, .. }, _) => context.part(identity).unwrap_or_default(),
        _ => Cow::Borrowed(""),
    }
}

/// What the request is charged under each limit of `plan` it is limited
/// by, in the route's order. Keys are built as the limiter reaches them
/// (and again for the give-backs of a refusal, which are rare).
fn charges<'a>(
    active: &'a Active,
    plan: LimitPlan<'a>,
    context: &'a KeyContext<'a>,
) -> impl Iterator<Item = Charge<'a>> + Clone + 'a {
    plan.checks().filter_map(move |check| {
        Some(Charge {
            def: check.def,
            counters: &active.counters[check.usage.limit],
            amount: check.amount?,
            cost: check.usage.cost,
            key: context.key(&check.def.key),
            identity: seat_identity(context, &plan, &check),
        })
    })
}

/// The license gate as the evaluator's license source: checks the
/// request's license when the decision order reaches it, and keeps it (with
/// its entitlement) in `slot` for counting and forwarding.
struct RequestCredentials<'a> {
    engine: &'a DecisionEngine,
    policy: &'a Policy,
    head: &'a http::request::Parts,
    peer: &'a Peer,
    slot: &'a LicenseSlot,
    user: &'a UserSlot,
}

impl<'a> Credentials<'a> for RequestCredentials<'a> {
    fn user(&mut self) -> Result<&'a VerifiedUser, UserError> {
        let engine = self.engine;
        let users = engine
            .users
            .as_ref()
            .expect("a policy whose routes need users is only bound with a user verifier");
        let (head, peer) = (self.head, self.peer);
        let now = engine.limiter.clock().unix_nanos() / 1_000_000_000;
        let user = users.check(&head.headers, now, || {
            client_ip(&head.headers, peer, engine.trust_forwarded)
        })?;
        Ok(self.user.get_or_init(|| user))
    }

    fn license(&mut self) -> Result<LicenseView<'a>, LicenseError> {
        let engine = self.engine;
        let gate = engine
            .license
            .as_ref()
            .expect("a policy with licensed routes is only bound with a license gate");
        let (head, peer) = (self.head, self.peer);
        let client = || client_ip(&head.headers, peer, engine.trust_forwarded);
        let (license, _) = gate.check(&head.headers, client)?;
        let entitled = engine.entitlements.get(&license, Some(self.policy));
        let (license, entitled) = self.slot.get_or_init(|| (license, entitled));
        Ok(LicenseView {
            license,
            entitlement: entitled
                .entitlement
                .as_ref()
                .expect("an entitlement under a policy"),
            // The gate refuses a license whose `lic.env` does not admit
            // this deployment.
            environment: EnvironmentCheck::Admitted,
            instance: engine.instance_check(),
        })
    }
}

/// A policy in force, bound to its counters.
struct Active {
    policy: Policy,
    /// Per limit definition.
    counters: Vec<Arc<Counters>>,
    /// `decisions_total{allow, allowed, route}` per route, pre-resolved.
    allowed: Vec<IntCounter>,
    unmatched_allowed: IntCounter,
    /// Per route: the meters it feeds.
    meters: Vec<Option<Arc<RouteMeters>>>,
    usage_headers: Option<Arc<[HeaderName]>>,
}

/// Decides every request. What it consults (license snapshots, the policy)
/// is swapped atomically on reload.
pub struct DecisionEngine {
    license: Option<Arc<LicenseGate>>,
    policy: Option<ArcSwap<Active>>,
    /// Counts the limits: in memory, or in a shared store.
    limiter: Limiter,
    entitlements: EntitlementCache,
    header_names: LicenseHeaderNames,
    /// The license token header removed before forwarding, if any.
    token_header: Option<HeaderName>,
    /// Verifies user tokens, when the deployment has an identity provider.
    users: Option<Arc<UserVerifier>>,
    metrics: Arc<DecisionMetrics>,
    log: DecisionLog,
    trust_forwarded: bool,
    /// What the evaluator is told about the deployment.
    evaluator: EvaluatorSettings,
    /// Where quota threshold crossings go; `None`: they are dropped.
    thresholds: Option<Arc<ThresholdAnnouncer>>,
    /// This replica's instance slot under the deployment license.
    instances: Option<Arc<InstanceSlot>>,
}

impl std::fmt::Debug for DecisionEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionEngine")
            .field("license", &self.license.is_some())
            .field("policy", &self.policy.is_some())
            .finish_non_exhaustive()
    }
}

impl DecisionEngine {
    /// An engine without a policy: every request passes, after the license
    /// check when a license gate is given.
    pub fn new(
        license: Option<Arc<LicenseGate>>,
        store: Arc<MemoryStore>,
        settings: &EngineSettings,
        metrics: Arc<DecisionMetrics>,
    ) -> DecisionEngine {
        let token_header = license
            .as_ref()
            .and_then(|gate| gate.token_header_to_remove().cloned());
        let evaluator = EvaluatorSettings {
            websocket: settings.websocket,
            license_header: license
                .as_ref()
                .and_then(|gate| gate.token_header().cloned()),
        };
        DecisionEngine {
            license,
            token_header,
            users: None,
            policy: None,
            limiter: Limiter::new(store, None, Arc::clone(&metrics.limits.refunds)),
            entitlements: EntitlementCache::new(settings.entitlement_capacity),
            header_names: settings.license_headers.clone(),
            metrics,
            log: DecisionLog::default(),
            trust_forwarded: settings.trust_forwarded,
            evaluator,
            thresholds: None,
            instances: None,
        }
    }

    /// Refuse (or flag) licensed requests while `slot` holds no instance
    /// slot the license needs.
    pub fn with_instance_slot(mut self, slot: Arc<InstanceSlot>) -> DecisionEngine {
        self.instances = Some(slot);
        self
    }

    /// Where this replica stands against the license's instance limit.
    fn instance_check(&self) -> InstanceCheck {
        let Some(slot) = &self.instances else {
            return InstanceCheck::NotChecked;
        };
        match slot.refusal() {
            None => InstanceCheck::Serving,
            Some(refusal) => InstanceCheck::Waiting {
                on_limit: refusal.on_limit,
                limit: refusal.limit,
            },
        }
    }

    /// Announce quota threshold crossings (`thresholds`) through
    /// `announcer`; without one they are dropped.
    pub fn with_thresholds(mut self, announcer: Arc<ThresholdAnnouncer>) -> DecisionEngine {
        self.thresholds = Some(announcer);
        self
    }

    /// Verify user tokens with `users`: routes may then need roles and
    /// count limits per user, and a verified user is told to the workload.
    pub fn with_users(mut self, users: Arc<UserVerifier>) -> DecisionEngine {
        self.users = Some(users);
        self
    }

    /// The user verifier, when one is configured.
    pub fn users(&self) -> Option<&Arc<UserVerifier>> {
        self.users.as_ref()
    }

    /// Count rate, quota and seat limits in a shared store.
    pub fn with_shared_store(mut self, shared: Arc<SharedStore>) -> DecisionEngine {
        self.limiter = Limiter::new(
            Arc::clone(self.limiter.memory()),
            Some(shared),
            Arc::clone(self.limiter.refunds()),
        );
        self
    }

    /// An engine that allows every request (a plain reverse proxy).
    pub fn allow_all() -> DecisionEngine {
        DecisionEngine::new(
            None,
            Arc::new(MemoryStore::new(
                Default::default(),
                MemoryStore::DEFAULT_MAX_KEYS,
            )),
            &EngineSettings::default(),
            Arc::new(DecisionMetrics::new(&crate::metrics::Registry::new())),
        )
    }

    /// Enforce `policy` from now on. Fails (and keeps any policy in force)
    /// if the policy needs a license and there is no license gate.
    pub fn with_policy(mut self, policy: Policy) -> Result<DecisionEngine, PolicyError> {
        let active = self.bind(policy)?;
        self.policy = Some(ArcSwap::from_pointee(active));
        Ok(self)
    }

    /// Swap in a newly compiled policy (hot reload).
    pub fn install(&self, policy: Policy) -> Result<(), PolicyError> {
        let Some(current) = &self.policy else {
            return Err(PolicyError(vec![crate::policy::Diagnostic {
                file: PathBuf::new(),
                position: None,
                message: "started without a policy; restart to enforce one".into(),
            }]));
        };
        let active = self.bind(policy)?;
        current.store(Arc::new(active));
        Ok(())
    }

    fn bind(&self, policy: Policy) -> Result<Active, PolicyError> {
        if policy.needs_license && self.license.is_none() {
            let file = policy.sources.first().cloned().unwrap_or_default();
            return Err(PolicyError(vec![crate::policy::Diagnostic {
                file,
                position: None,
                message: "the policy has licensed routes (or `unmatched: licensed`) but no `license` is configured".into(),
            }]));
        }
        if policy.needs_user && self.users.is_none() {
            let file = policy.sources.first().cloned().unwrap_or_default();
            return Err(PolicyError(vec![crate::policy::Diagnostic {
                file,
                position: None,
                message: "the policy has routes that need a verified user (`roles`, or a limit counted by `user`) but no `users` identity provider is configured".into(),
            }]));
        }
        let counters = policy
            .limits
            .iter()
            .map(|def| self.limiter.memory().counters(def))
            .collect();
        let allowed = policy
            .routes
            .iter()
            .map(|route| self.metrics.allowed(&route.name))
            .collect();
        let unmatched_allowed = self.metrics.allowed(UNMATCHED_ROUTE);
        let route_meters = meters::route_meters(&policy);
        let usage_headers = meters::usage_headers(&policy);
        let metrics = &self.metrics.policy;
        metrics.loaded.set(1);
        metrics.routes.set(policy.routes.len() as i64);
        metrics.generation.set(policy.generation as i64);
        Ok(Active {
            policy,
            counters,
            allowed,
            unmatched_allowed,
            meters: route_meters,
            usage_headers,
        })
    }

    /// The decision, policy and limit-usage metrics this engine counts into.
    pub fn metrics(&self) -> &Arc<DecisionMetrics> {
        &self.metrics
    }

    pub fn has_policy(&self) -> bool {
        self.policy.is_some()
    }

    /// The counter store (for the state file and maintenance).
    pub fn store(&self) -> &Arc<MemoryStore> {
        self.limiter.memory()
    }

    pub fn license_header_names(&self) -> &LicenseHeaderNames {
        &self.header_names
    }

    /// The header that carries per-request license tokens, to be removed
    /// before forwarding; `None` for a deployment license or when
    /// `license.forward_token` keeps it.
    pub fn license_token_header(&self) -> Option<&HeaderName> {
        self.token_header.as_ref()
    }

    /// Run `f` on the policy in force.
    pub fn with_current_policy<T>(&self, f: impl FnOnce(&Policy) -> T) -> Option<T> {
        self.policy.as_ref().map(|p| f(&p.load().policy))
    }

    /// Decide one request from its head (path already normalised) and
    /// whether a body follows (which tells a CORS preflight from a request).
    /// Async because a shared counter store may need a round trip; with the
    /// in-memory store it completes without suspending.
    pub async fn decide(
        &self,
        head: &http::request::Parts,
        peer: &Peer,
        body: BodyState,
    ) -> Decision {
        match &self.policy {
            None => self.decide_without_policy(head, peer, body),
            Some(policy) => {
                let started = Instant::now();
                let decision = match self.limiter.shared() {
                    Some(_) => {
                        // Held across the round trip: a reload meanwhile
                        // does not change the policy this request uses.
                        let active = policy.load_full();
                        Box::pin(self.decide_shared(&active, head, peer, body)).await
                    }
                    None => self.decide_local(&policy.load(), head, peer, body),
                };
                self.metrics
                    .decision_duration
                    .observe(started.elapsed().as_secs_f64());
                decision
            }
        }
    }

    fn decide_without_policy(
        &self,
        head: &http::request::Parts,
        peer: &Peer,
        body: BodyState,
    ) -> Decision {
        // Without a policy there are no routes to scope upgrades to: the
        // operator chose pass-through, so a WebSocket handshake that passed
        // the license check may become a tunnel.
        let Some(gate) = &self.license else {
            return Decision::Allow(Allowed {
                user: self
                    .offered_user(head, peer)
                    .map(|user| ForwardedUser::new(user, None)),
                websocket: true,
                ..Allowed::default()
            });
        };
        // Every request needs the license, as under `unmatched: licensed`,
        // and so preflights go to the upstream as they do there.
        if super::is_cors_preflight(&head.method, &head.headers, body) {
            return Decision::Allow(Allowed {
                preflight: true,
                ..Allowed::default()
            });
        }
        match gate.check(&head.headers, || {
            client_ip(&head.headers, peer, self.trust_forwarded)
        }) {
            Ok((license, _)) => {
                let entitled = self.entitlements.get(&license, None);
                let refused = instance_denial(&license, self.instance_check());
                let allowed = Allowed {
                    license: Some(Arc::clone(&entitled.headers)),
                    user: self
                        .offered_user(head, peer)
                        .map(|user| ForwardedUser::new(user, entitled.roles.as_ref())),
                    websocket: true,
                    ..Allowed::default()
                };
                match refused {
                    Some((on_limit, denial)) => self.refuse(
                        denial,
                        on_limit == OnInstanceLimit::Shadow,
                        allowed,
                        UNMATCHED_ROUTE,
                        (head, peer),
                        (Some(&license), None),
                    ),
                    None => Decision::Allow(allowed),
                }
            }
            Err(error) => Decision::Deny(Box::new(license_denial(&error, gate.token_header()))),
        }
    }

    /// Decide with the in-memory store: never suspends.
    fn decide_local(
        &self,
        active: &Active,
        head: &http::request::Parts,
        peer: &Peer,
        body: BodyState,
    ) -> Decision {
        let (slot, user) = (LicenseSlot::new(), UserSlot::new());
        let mut verdict = self.evaluate(active, head, peer, body, &slot, &user);
        let mut allowed = Allowed::default();
        if let Outcome::Count(plan) = verdict.outcome {
            let context = self.key_context(&plan, head, peer);
            let charges = charges(active, plan, &context);
            let mut held = Held::default();
            let counted = self.limiter.count_in_memory(charges, &mut held);
            self.announce(&plan, &mut held);
            allowed.hold(held);
            if let Err(refusal) = counted {
                verdict.outcome = Outcome::Deny(self.refused(refusal));
            }
        }
        self.conclude(active, verdict, allowed, (&slot, &user), head, peer)
    }

    /// Decide with the shared store: one round trip when it answers.
    async fn decide_shared(
        &self,
        active: &Active,
        head: &http::request::Parts,
        peer: &Peer,
        body: BodyState,
    ) -> Decision {
        let (slot, user) = (LicenseSlot::new(), UserSlot::new());
        let mut verdict = self.evaluate(active, head, peer, body, &slot, &user);
        let mut allowed = Allowed::default();
        if let Outcome::Count(plan) = verdict.outcome {
            let context = self.key_context(&plan, head, peer);
            let charges = charges(active, plan, &context);
            let tag = plan.license.map(|license| license.claims.sub.as_str());
            let mut held = Held::default();
            let counted = self.limiter.count(tag, charges, &mut held).await;
            self.announce(&plan, &mut held);
            allowed.hold(held);
            if let Err(refusal) = counted {
                verdict.outcome = Outcome::Deny(self.refused(refusal));
            }
        }
        self.conclude(active, verdict, allowed, (&slot, &user), head, peer)
    }

    /// Hand the quota thresholds this request crossed to the announcer.
    fn announce(&self, plan: &LimitPlan<'_>, held: &mut Held) {
        if held.crossings.is_empty() {
            return;
        }
        let crossings = std::mem::take(&mut held.crossings);
        if let (Some(announcer), Some(license)) = (&self.thresholds, plan.license) {
            let holder = Holder {
                license: license.claims.sub.as_str().into(),
                customer: license.claims.lic.customer.as_deref().map(Into::into),
            };
            announcer.announce(holder, crossings);
        }
    }

    /// The decision order up to the limits (see [`super::evaluate`]).
    fn evaluate<'a>(
        &'a self,
        active: &'a Active,
        head: &'a http::request::Parts,
        peer: &'a Peer,
        body: BodyState,
        slot: &'a LicenseSlot,
        user: &'a UserSlot,
    ) -> Verdict<'a, NoTrace> {
        let mut source = RequestCredentials {
            engine: self,
            policy: &active.policy,
            head,
            peer,
            slot,
            user,
        };
        super::evaluate(
            &active.policy,
            &RequestFacts::of(head, body),
            &mut source,
            &self.evaluator,
            NoTrace,
        )
    }

    /// Metrics, log and shadow mode for a decided request (`verdict`'s
    /// outcome with the counting's refusal, if any).
    fn conclude(
        &self,
        active: &Active,
        verdict: Verdict<'_, NoTrace>,
        mut allowed: Allowed,
        (slot, user): (&LicenseSlot, &UserSlot),
        head: &http::request::Parts,
        peer: &Peer,
    ) -> Decision {
        let route = verdict.route;
        let route_name = route.map_or(UNMATCHED_ROUTE, |r| &r.name);
        allowed.websocket = verdict.websocket;
        allowed.route = route.map(|r| Arc::clone(&r.name));
        // Forwarded with the entitlement headers even when a shadow-mode
        // rule after the license would have denied.
        allowed.license = slot.get().map(|(_, e)| Arc::clone(&e.headers));
        let result = match verdict.outcome {
            Outcome::Deny(denial) => Err(denial),
            Outcome::Allow(admission) => {
                allowed.preflight = admission == Admission::Preflight;
                Ok(())
            }
            Outcome::Count(_) => Ok(()),
        };
        if result.is_ok() && !allowed.preflight {
            let user = match user.get() {
                Some(user) => Some(Arc::clone(user)),
                None => self.offered_user(head, peer),
            };
            let cap = slot.get().and_then(|(_, entitled)| entitled.roles.as_ref());
            allowed.user = user.map(|user| ForwardedUser::new(user, cap));
        }
        allowed.usage_headers.clone_from(&active.usage_headers);
        // A preflight carries no license and feeds no meter.
        if let (false, Some(route), Some((_, entitled))) = (allowed.preflight, route, slot.get()) {
            let feeds = match &active.meters[route.id] {
                Some(feeds) => Some(Arc::clone(feeds)),
                // Overage is metered on a route without meters too (rare:
                // a quota past 100 %).
                None if !allowed.overage.is_empty() => Some(Arc::new(RouteMeters {
                    route: Arc::clone(&route.name),
                    feeds: Box::default(),
                })),
                None => None,
            };
            if let Some(meters) = feeds {
                allowed.metered = Some(Metered {
                    meters,
                    license: Arc::clone(&entitled.identity),
                    overage: allowed.overage.clone(),
                });
            }
        }
        let who = (
            slot.get().map(|(l, _)| &**l),
            user.get().map(|u| &*u.subject),
        );
        match result {
            Ok(()) if allowed.preflight => {
                self.metrics.preflight(route_name);
                Decision::Allow(allowed)
            }
            // Allowed, flagged with what its check's own setting let
            // through (an instance limit under `on_limit: shadow`).
            Ok(()) if verdict.shadowed.is_some() => {
                let denial = verdict.shadowed.expect("checked above");
                self.refuse(denial, true, allowed, route_name, (head, peer), who)
            }
            Ok(()) => {
                match route {
                    Some(route) => active.allowed[route.id].inc(),
                    None => active.unmatched_allowed.inc(),
                }
                Decision::Allow(allowed)
            }
            Err(mut denial) => {
                denial.route = route.map(|r| Arc::clone(&r.name));
                let shadow = verdict.mode == Mode::Shadow;
                self.refuse(denial, shadow, allowed, route_name, (head, peer), who)
            }
        }
    }

    /// Log and count `denial` of a request to `route`; under `shadow` the
    /// request is allowed as `allowed`, flagged with the denial's reason.
    fn refuse(
        &self,
        denial: Box<Denial>,
        shadow: bool,
        mut allowed: Allowed,
        route: &str,
        (head, peer): (&http::request::Parts, &Peer),
        who: (Option<&VerifiedLicense>, Option<&str>),
    ) -> Decision {
        self.log_denial(&denial, shadow, route, head, peer, who);
        self.metrics.denied(denial.reason, route, shadow);
        if shadow {
            allowed.shadow = Some(denial.reason);
            Decision::Allow(allowed)
        } else {
            Decision::Deny(denial)
        }
    }

    /// What this request's counter keys are made of.
    /// The user of a request whose route does not need one, when it
    /// carries a token that verifies: the workload is told who it is. A
    /// token that does not verify is not refused here (the route did not
    /// ask for a user); it is counted, and no user is told.
    fn offered_user(&self, head: &http::request::Parts, peer: &Peer) -> Option<Arc<VerifiedUser>> {
        let users = self.users.as_ref()?;
        users.settings().token.find(&head.headers)?;
        let now = self.limiter.clock().unix_nanos() / 1_000_000_000;
        users
            .check(&head.headers, now, || {
                client_ip(&head.headers, peer, self.trust_forwarded)
            })
            .ok()
    }

    fn key_context<'a>(
        &self,
        plan: &LimitPlan<'a>,
        head: &'a http::request::Parts,
        peer: &Peer,
    ) -> KeyContext<'a> {
        KeyContext {
            license: plan.license,
            user: plan.user,
            headers: &head.headers,
            client: client_ip(&head.headers, peer, self.trust_forwarded),
            route: &plan.route.name,
        }
    }

    /// The denial for a refusal of the limits.
    fn refused(&self, refusal: Refusal<'_>) -> Box<Denial> {
        match refusal {
            Refusal::Limited { def, limited } => {
                Box::new(limit_denial(def, &limited, self.limiter.clock()))
            }
            Refusal::StoreUnavailable { def } => Box::new(Denial::new(
                StatusCode::SERVICE_UNAVAILABLE,
                Reason::LimitStoreUnavailable,
                format!(
                    "limit `{}` is counted in a shared store that is unavailable, and set to deny meanwhile",
                    def.name
                ),
            )),
        }
    }

    fn log_denial(
        &self,
        denial: &Denial,
        shadow: bool,
        route: &str,
        head: &http::request::Parts,
        peer: &Peer,
        (license, user): (Option<&VerifiedLicense>, Option<&str>),
    ) {
        self.log.denial(
            DenialLine {
                shadow,
                reason: denial.reason.as_str(),
                status: denial.status.as_u16(),
                route,
                method: head.method.as_str(),
                path: head.uri.path(),
                license: license.map(|l| l.claims.sub.as_str()),
                user,
                client: client_ip(&head.headers, peer, self.trust_forwarded),
                detail: &denial.detail,
            },
            &self.metrics.decision_logs_suppressed,
        );
    }

    /// Count and log a request refused before matching (bad path or head).
    #[cold]
    pub fn refuse_unmatched(
        &self,
        denial: Box<Denial>,
        head: &http::request::Parts,
        peer: &Peer,
    ) -> Decision {
        self.metrics.denied(denial.reason, REJECTED_ROUTE, false);
        self.log_denial(&denial, false, REJECTED_ROUTE, head, peer, (None, None));
        Decision::Deny(denial)
    }

    /// Sweep expired counter entries and refresh the usage gauges.
    pub fn maintain(&self) {
        let Some(policy) = &self.policy else {
            return;
        };
        let active = policy.load();
        let clock = self.limiter.clock();
        if let Some(thresholds) = &self.thresholds {
            thresholds.sweep(clock.unix_nanos() / 1_000_000_000);
        }
        let metrics = &self.metrics.limits;
        metrics.seats_in_use.reset();
        metrics.seats_limit.reset();
        metrics.quota_used.reset();
        metrics.quota_limit.reset();
        for (def, counters) in active.policy.limits.iter().zip(&active.counters) {
            let kept = counters.sweep(def, clock);
            metrics
                .limit_keys
                .with_label_values(&[&*def.name])
                .set(kept as i64);
            let (used, limit) = match def.kind {
                LimitKind::Seats { .. } => (&metrics.seats_in_use, &metrics.seats_limit),
                LimitKind::Quota { .. } => (&metrics.quota_used, &metrics.quota_limit),
                _ => continue,
            };
            // Per-key series only while the key count is small (a
            // deployment license, a handful of tenants).
            let usage = counters.usage(def, clock);
            if usage.len() > MAX_KEY_SERIES {
                continue;
            }
            for (key, value) in usage {
                let label = key_label(&key);
                used.with_label_values(&[&*def.name, &*label])
                    .set(value as i64);
                if let Some(amount) = self.amount_for_key(&active.policy, def, &key) {
                    limit
                        .with_label_values(&[&*def.name, &*label])
                        .set(amount as i64);
                }
            }
        }
    }

    /// `/usage`: what one license, or every license with usage on this
    /// replica, has used of its limits (see [`super::usage`]).
    pub async fn usage(&self, request: UsageRequest) -> UsageReport {
        let active = self.policy.as_ref().map(|policy| policy.load_full());
        let clock = self.limiter.clock();
        let limits: Vec<Bound<'_>> = active
            .iter()
            .flat_map(|active| {
                active
                    .policy
                    .limits
                    .iter()
                    .zip(&active.counters)
                    .enumerate()
            })
            .map(|(index, (def, counters))| Bound {
                def,
                index,
                counters,
            })
            .collect();
        let deployment = self
            .license
            .as_ref()
            .and_then(|gate| gate.loaded())
            .and_then(|loaded| loaded.license.as_ref().map(|(l, _)| Arc::clone(l)));
        let (ids, truncated) = match request.license {
            Some(id) => (vec![id], false),
            None => {
                let mut ids = std::collections::BTreeSet::new();
                if let Some(license) = &deployment {
                    ids.insert(license.claims.sub.clone());
                }
                self.entitlements.ids(|id| {
                    if !ids.contains(id) {
                        ids.insert(id.to_owned());
                    }
                });
                usage::counted_licenses(&limits, clock, &mut ids);
                ids.extend(request.also.iter().cloned());
                usage::first_licenses(ids)
            }
        };
        let subjects = ids
            .into_iter()
            .map(|id| match &deployment {
                Some(license) if license.claims.sub == id => Subject {
                    id,
                    license: Some(Arc::clone(license)),
                    entitlement: Entitlement::Deployment,
                },
                _ => {
                    let license = self.entitlements.find(&id);
                    let entitlement = match license {
                        Some(_) => Entitlement::Recent,
                        None => Entitlement::Unknown,
                    };
                    Subject {
                        id,
                        license,
                        entitlement,
                    }
                }
            })
            .collect();
        let sources = Sources {
            policy: active.as_ref().map(|active| &active.policy),
            limits,
            clock,
            shared: self.limiter.shared().map(|shared| &**shared),
            keep: request.also.into_iter().collect(),
        };
        let mut report = usage::report(sources, subjects, truncated).await;
        if let (Some(slot), Some(license)) = (&self.instances, &deployment) {
            let instances = self.instance_usage(slot).await;
            if let Some(entry) = report
                .licenses
                .iter_mut()
                .find(|entry| entry.license == license.claims.sub)
            {
                entry.instances = instances;
            }
        }
        report
    }

    /// Who holds the deployment license's instance slots: read from the
    /// store now when it answers, else as the slot last saw them.
    async fn instance_usage(&self, slot: &InstanceSlot) -> Option<usage::InstanceUsage> {
        let status = slot.status();
        let limit = status.limit?;
        let mut holders = status.holders;
        if let (Some(store), Some(key)) = (self.limiter.shared(), &status.key) {
            match store.instance_slot(key, SlotOp::Read, limit).await {
                Ok(reply) => holders = reply.holders,
                Err(error) => {
                    tracing::debug!(%error, "instance slot holders not read; showing the last seen");
                }
            }
        }
        Some(usage::InstanceUsage {
            holder: status.holder.unwrap_or_default(),
            limit,
            on_limit: status.on_limit.unwrap_or_default().as_str().to_owned(),
            counted: status.counted.to_owned(),
            instance: status.instance,
            state: status.state.as_str().to_owned(),
            holders: holders
                .into_iter()
                .map(|h| usage::InstanceHolder {
                    instance: h.instance,
                    lease_left_ms: h.lease_left_ms,
                })
                .collect(),
        })
    }

    /// The limit number for a key that is a license id (deployment license).
    fn amount_for_key(&self, policy: &Policy, def: &LimitDef, key: &str) -> Option<u64> {
        match &def.amount {
            crate::policy::Amount::Fixed(n) => Some(*n),
            crate::policy::Amount::License { .. } => {
                let gate = self.license.as_ref()?;
                let loaded = gate.loaded()?;
                let (license, _) = loaded.license.as_ref()?;
                if def.key != [KeyPart::License] || license.claims.sub != key {
                    return None;
                }
                let index = policy.limits.iter().position(|d| d == def)?;
                self.entitlements
                    .get(license, Some(policy))
                    .entitlement
                    .as_ref()?
                    .amounts[index]
            }
        }
    }
}

/// The client address for keys and logs: the TCP peer, or with
/// `forwarded.trust_incoming` the last `X-Forwarded-For` entry — the one the
/// trusted proxy in front appended (earlier entries are client-supplied).
fn client_ip(headers: &HeaderMap, peer: &Peer, trust_forwarded: bool) -> IpAddr {
    if trust_forwarded {
        let last = headers
            .get_all("x-forwarded-for")
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|v| v.trim().parse().ok());
        if let Some(ip) = last {
            return ip;
        }
    }
    peer.addr.ip()
}

/// Gauges get per-key series up to this many keys per limit.
const MAX_KEY_SERIES: usize = 100;

/// A limit's refusal: 429 with `Retry-After` and, for rates and quotas,
/// the IETF `RateLimit-Policy` and `RateLimit` fields.
fn limit_denial(def: &LimitDef, limited: &Limited, clock: &crate::limits::Clock) -> Denial {
    let retry = retry_after_secs(limited.retry_after, clock);
    let window = limited.window.unwrap_or(Duration::ZERO);
    let detail = match &def.kind {
        LimitKind::Rate { .. } => format!(
            "rate limit `{}` ({} per {}) reached; retry in {retry} s",
            def.name,
            limited.limit,
            humantime::format_duration(window)
        ),
        LimitKind::Quota { .. } => format!(
            "quota `{}` ({} per period) is used up; it resets in {}",
            def.name,
            limited.limit,
            humantime::format_duration(Duration::from_secs(limited.retry_after.as_secs()))
        ),
        LimitKind::Seats { idle, .. } => format!(
            "all {} seats of `{}` are in use; a seat frees after {} without requests",
            limited.limit,
            def.name,
            humantime::format_duration(*idle)
        ),
        LimitKind::Concurrency => format!(
            "{} requests are already in flight (limit `{}`)",
            limited.limit, def.name
        ),
    };
    let reason = Reason::of_limit(&def.kind);
    let mut denial = Denial::new(StatusCode::TOO_MANY_REQUESTS, reason, detail);
    denial.limit = Some(Arc::clone(&def.name));
    denial
        .headers
        .insert(http::header::RETRY_AFTER, HeaderValue::from(retry));
    // Whatever the limit's `headers` says: a refused client needs to know.
    if matches!(def.kind, LimitKind::Rate { .. } | LimitKind::Quota { .. }) {
        let budget = Budget {
            name: Arc::clone(&def.name),
            limit: limited.limit,
            window: window.as_secs().max(1),
            remaining: limited.remaining,
            reset: retry,
        };
        let (policy, state) = (budget.policy_member(), budget.state_member());
        if let Ok(value) = HeaderValue::from_str(&policy) {
            denial
                .headers
                .insert(HeaderName::from_static("ratelimit-policy"), value);
        }
        if let Ok(value) = HeaderValue::from_str(&state) {
            denial
                .headers
                .insert(HeaderName::from_static("ratelimit"), value);
        }
    }
    denial
}

/// What counter keys are made of, for one request.
struct KeyContext<'a> {
    license: Option<&'a VerifiedLicense>,
    user: Option<&'a VerifiedUser>,
    headers: &'a HeaderMap,
    client: IpAddr,
    route: &'a str,
}

impl<'a> KeyContext<'a> {
    /// The value of one key part; `None` when the request lacks it (no
    /// license, header absent). Absent parts key as "".
    fn part(&self, part: &KeyPart) -> Option<Cow<'a, str>> {
        match part {
            KeyPart::License => self.license.map(|l| Cow::Borrowed(l.claims.sub.as_str())),
            KeyPart::User => self.user.map(|u| Cow::Borrowed(&*u.subject)),
            KeyPart::Claim(claim) => {
                let claims = &self.license?.claims;
                match claim {
                    Claim::Sub => Some(Cow::Borrowed(claims.sub.as_str())),
                    Claim::Plan => Some(Cow::Borrowed(claims.lic.plan.as_str())),
                    Claim::Customer => claims.lic.customer.as_deref().map(Cow::Borrowed),
                    Claim::Issuer => claims.iss.as_deref().map(Cow::Borrowed),
                }
            }
            KeyPart::Header(name) => self.headers.get(name).map(|v| match v.to_str() {
                Ok(text) => Cow::Borrowed(text),
                Err(_) => Cow::Owned(String::from_utf8_lossy(v.as_bytes()).into_owned()),
            }),
            KeyPart::ClientIp => Some(Cow::Owned(self.client.to_string())),
            KeyPart::Route => Some(Cow::Borrowed(self.route)),
        }
    }

    fn key(&self, parts: &[KeyPart]) -> Cow<'a, str> {
        if let [one] = parts {
            return self.part(one).unwrap_or(Cow::Borrowed(""));
        }
        // One allocation for the usual ids (a license id, an e-mail).
        let mut key = String::with_capacity(64);
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                key.push(KEY_SEPARATOR);
            }
            if let Some(value) = self.part(part) {
                key.push_str(&value);
            }
        }
        Cow::Owned(key)
    }
}
