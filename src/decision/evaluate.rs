//! The decision order, written once: a pure function from a policy, the
//! facts of one request and its license to a [`Verdict`]. The proxy's
//! engine runs it on every request and then counts the limits it names;
//! `licensegate policy explain` runs it on a request described by flags and
//! prints the [`Step`]s it took. Nothing here reads a clock, a file, a
//! socket, a metric or a log: whatever changes between requests is an
//! argument.
//!
//! Order of checks, and so which reason a request gets:
//!
//! 1. the route (or `unmatched`) and its access: `deny` stops here;
//! 2. a WebSocket upgrade the route does not allow (before the license and
//!    the limits: a refused upgrade costs the client nothing and the
//!    workload never sees it);
//! 3. a CORS preflight the route forwards stops here, allowed: a browser
//!    sends it without credentials, so it could never pass the license, and
//!    it must not spend limits;
//! 4. `public`: allowed, or the route's limits are counted;
//! 5. `licensed`: the license (signature, time, issuer, audience, then the
//!    environment), then the route's features;
//! 6. the identity of each seat limit the request will be counted by.
//!
//! What remains — counting the limits, giving back what a later refusal
//! undoes, shadow mode, metrics and the decision log — belongs to the
//! engine (see `engine.rs`), which needs state and a clock.
//!
//! Explaining costs the proxy nothing: the evaluator reports its steps to a
//! [`Trace`], monomorphised per caller; the proxy's [`NoTrace`] drops them
//! at compile time (and `Trace::ENABLED` skips work done only to explain),
//! while `policy explain` collects them in a `Vec`.

use std::borrow::Cow;

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};

use super::{BodyState, Denial, Hint, Reason, WebSocketScope};
use crate::license::{LicenseError, VerifiedLicense};
use crate::policy::{
    Access, Amount, Claim, Entitlement, KeyPart, LimitDef, LimitKind, LimitUse, Mode,
    OnInstanceLimit, Policy, RoleRule, Route,
};
use crate::user::{UserError, VerifiedUser};

/// What the decision reads from one request, path already normalised.
#[derive(Clone, Copy, Debug)]
pub struct RequestFacts<'a> {
    pub method: &'a Method,
    pub version: Version,
    /// Without port or trailing dot (see [`request_host`]).
    pub host: Option<&'a str>,
    /// The normalised path, without the query.
    pub path: &'a str,
    /// Route conditions, seat identities, the upgrade and preflight headers.
    pub headers: &'a HeaderMap,
    /// Whether a body follows (tells a CORS preflight from a request).
    pub body: BodyState,
}

impl<'a> RequestFacts<'a> {
    /// The facts of a request head the proxy has checked and normalised.
    pub fn of(head: &'a http::request::Parts, body: BodyState) -> RequestFacts<'a> {
        RequestFacts {
            method: &head.method,
            version: head.version,
            host: request_host(head),
            path: head.uri.path(),
            headers: &head.headers,
            body,
        }
    }

    /// See [`super::asks_for_websocket`].
    pub fn asks_for_websocket(&self) -> bool {
        super::asks_for_websocket_in(self.version, self.headers)
    }

    /// See [`super::is_cors_preflight`].
    pub fn is_cors_preflight(&self) -> bool {
        super::is_cors_preflight(self.method, self.headers, self.body)
    }
}

/// A license that passed the license check, as the evaluator reads it.
#[derive(Clone, Copy, Debug)]
pub struct LicenseView<'a> {
    pub license: &'a VerifiedLicense,
    /// What it is entitled to under the policy being evaluated.
    pub entitlement: &'a Entitlement,
    /// Whether its `lic.env` was checked against this deployment.
    pub environment: EnvironmentCheck,
    /// Whether this replica may serve under it (its instance limit).
    pub instance: InstanceCheck,
}

/// Where this replica stands against the license's instance limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstanceCheck {
    /// It holds an instance slot, or the license sets no instance limit.
    Serving,
    /// Every slot is held by other replicas; it waits for one.
    Waiting {
        on_limit: OnInstanceLimit,
        limit: u64,
    },
    /// Not known here (`policy explain`, per-request licenses).
    NotChecked,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnvironmentCheck {
    /// The license admits this deployment's environment.
    Admitted,
    /// Not known here (`policy explain` without the proxy's config).
    NotChecked,
}

/// Where the evaluator gets the license and the user from, when the
/// decision order reaches them: each at most once per request, the license
/// only for `licensed` access and the user only where the route needs one.
/// A route never verifies a token it does not need (nor spends the
/// client's budget of failing signature checks on one).
pub trait Credentials<'a> {
    fn license(&mut self) -> Result<LicenseView<'a>, LicenseError>;
    /// The verified user of the request.
    fn user(&mut self) -> Result<&'a VerifiedUser, UserError>;
}

/// How the deployment around the evaluator is set up.
#[derive(Clone, Debug, Default)]
pub struct EvaluatorSettings {
    /// Which allowed requests may become WebSocket tunnels.
    pub websocket: WebSocketScope,
    /// The header per-request license tokens come in: a failure there is
    /// the client's to fix (401 with a challenge). `None`: the deployment
    /// has one license, and its failures are the operator's (403).
    pub license_header: Option<HeaderName>,
}

impl EvaluatorSettings {
    /// Whether an allowed request under `route` (`None`: unmatched) may
    /// become a WebSocket tunnel. By default only a route can allow one:
    /// `unmatched: public|licensed` is a catch-all for requests, not a
    /// choice to open byte streams.
    pub fn allows_tunnel(&self, route: Option<&Route>) -> bool {
        match self.websocket {
            WebSocketScope::Routes => route.is_some_and(|r| r.websocket),
            WebSocketScope::AnyRoute => true,
        }
    }
}

/// What the evaluator concluded, and the steps it took to get there.
#[derive(Debug)]
pub struct Verdict<'a, T> {
    /// The route that matched; `None`: `unmatched` applied.
    pub route: Option<&'a Route>,
    /// Enforce, or shadow (a denial is logged and the request forwarded).
    pub mode: Mode,
    /// Whether the request, once allowed, may become a WebSocket tunnel.
    pub websocket: bool,
    pub outcome: Outcome<'a>,
    /// A denial that the check's own setting let through (an instance
    /// limit with `on_limit: shadow`): the allowed request is flagged with
    /// it. A later denial wins.
    pub shadowed: Option<Box<Denial>>,
    /// Whatever the [`Trace`] kept.
    pub steps: T,
}

#[derive(Debug)]
pub enum Outcome<'a> {
    /// Allowed, with nothing left to count.
    Allow(Admission),
    /// Boxed so that the common outcomes stay small.
    Deny(Box<Denial>),
    /// Allowed so far: the route's limits, counted by the engine, decide.
    Count(LimitPlan<'a>),
}

/// Why an allowed request was let through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// `public` access (a route without limits, or `unmatched: public`).
    Public,
    /// A CORS preflight forwarded without a license check or limits.
    Preflight,
    /// A license the route accepts (a route without limits, or
    /// `unmatched: licensed`).
    Licensed,
}

/// The limits a request is to be counted by, in the route's order.
#[derive(Clone, Copy, Debug)]
pub struct LimitPlan<'a> {
    pub policy: &'a Policy,
    pub route: &'a Route,
    /// `None` on a public route: limits read no license there.
    pub entitlement: Option<&'a Entitlement>,
    /// The license counter keys and seat identities may read.
    pub license: Option<&'a VerifiedLicense>,
    /// The verified user, where the route needs one.
    pub user: Option<&'a VerifiedUser>,
    /// Who holds the seat the first seat limit (at this position) counts,
    /// as the evaluator read it: the engine counts with it rather than
    /// reading the header again (a second `HeaderMap` lookup was ~170 of
    /// ~4,350 instructions per decision, callgrind on `decide/10_routes`).
    pub seat: Option<(usize, &'a str)>,
}

/// One limit of a [`LimitPlan`].
#[derive(Clone, Copy, Debug)]
pub struct LimitCheck<'a> {
    /// Its position in the route's `limits`.
    pub position: usize,
    pub usage: &'a LimitUse,
    pub def: &'a LimitDef,
    /// The number for this request; `None` is unlimited (not counted).
    pub amount: Option<u64>,
}

impl<'a> LimitPlan<'a> {
    /// The limit at `position` in the route's `limits`.
    pub fn check(&self, position: usize) -> LimitCheck<'a> {
        let usage = &self.route.limits[position];
        let def = &self.policy.limits[usage.limit];
        let amount = match self.entitlement {
            Some(entitlement) => entitlement.amounts[usage.limit],
            None => match def.amount {
                Amount::Fixed(n) => Some(n),
                // Compile refuses license-dependent limits on public routes.
                Amount::License { default, .. } => default,
            },
        };
        LimitCheck {
            position,
            usage,
            def,
            amount,
        }
    }

    pub fn checks(&self) -> impl Iterator<Item = LimitCheck<'a>> + Clone + 'a {
        let plan = *self;
        (0..self.route.limits.len()).map(move |position| plan.check(position))
    }
}

/// One thing the evaluator looked at, in order. Borrowed and `Copy`:
/// building one costs nothing worth skipping.
#[derive(Clone, Copy, Debug)]
pub enum Step<'a> {
    /// The route that matched (`None`: none did, `unmatched` applies).
    Route(Option<&'a Route>),
    /// The access and mode of the route or of `unmatched`.
    Access { access: Access, mode: Mode },
    /// Whether the request asks for a WebSocket upgrade, and whether the
    /// route lets it become a tunnel.
    Upgrade { asked: bool, allowed: bool },
    /// The request is a CORS preflight.
    Preflight(PreflightStep),
    /// The license check passed, or failed for this reason (the denial's
    /// detail says why).
    License(Result<LicenseView<'a>, Reason>),
    /// The license's environment binding.
    Environment(Result<EnvironmentCheck, Reason>),
    /// This replica against the license's instance limit.
    Instance(InstanceCheck),
    /// The route's features against the license's; `missing` is the first
    /// feature (index in `Policy::features`) the license lacks.
    Features {
        route: &'a Route,
        missing: Option<usize>,
    },
    /// The user token check passed, or failed for this reason.
    User(Result<&'a VerifiedUser, Reason>),
    /// The route's roles against the user's and the license's.
    Roles {
        route: &'a Route,
        /// `None`: every role check passed.
        refused: Option<Reason>,
    },
    /// A limit the request will be counted by.
    Limit(LimitCheck<'a>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreflightStep {
    /// Forwarded to the upstream, undecided.
    Forwarded,
    /// Decided like any request (`preflight: decide`).
    Decided,
    /// Refused like any request: the route is `deny`.
    Refused,
}

/// Where the evaluator reports its steps.
pub trait Trace<'a> {
    /// Whether steps are kept; when not, work done only to report them is
    /// skipped.
    const ENABLED: bool;
    fn step(&mut self, step: Step<'a>);
}

/// The proxy's trace: keeps nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoTrace;

impl<'a> Trace<'a> for NoTrace {
    const ENABLED: bool = false;
    #[inline(always)]
    fn step(&mut self, _: Step<'a>) {}
}

impl<'a> Trace<'a> for Vec<Step<'a>> {
    const ENABLED: bool = true;
    fn step(&mut self, step: Step<'a>) {
        self.push(step);
    }
}

/// Decide `facts` under `policy` up to the limits; see the module docs for
/// the order.
pub fn evaluate<'a, L, T>(
    policy: &'a Policy,
    facts: &RequestFacts<'a>,
    credentials: &mut L,
    settings: &EvaluatorSettings,
    mut trace: T,
) -> Verdict<'a, T>
where
    L: Credentials<'a>,
    T: Trace<'a>,
{
    let route = policy.find(facts.method, facts.host, facts.path, facts.headers);
    trace.step(Step::Route(route));
    let (access, mode) = match route {
        Some(route) => (route.access, route.mode),
        None => (policy.unmatched, policy.mode),
    };
    trace.step(Step::Access { access, mode });
    let mut shadowed = None;
    let outcome = decide(
        policy,
        route,
        facts,
        credentials,
        settings,
        &mut trace,
        &mut shadowed,
    );
    Verdict {
        route,
        mode,
        websocket: settings.allows_tunnel(route),
        outcome,
        shadowed,
        steps: trace,
    }
}

fn decide<'a, L, T>(
    policy: &'a Policy,
    route: Option<&'a Route>,
    facts: &RequestFacts<'a>,
    credentials: &mut L,
    settings: &EvaluatorSettings,
    trace: &mut T,
    shadowed: &mut Option<Box<Denial>>,
) -> Outcome<'a>
where
    L: Credentials<'a>,
    T: Trace<'a>,
{
    let access = route.map_or(policy.unmatched, |r| r.access);
    let websocket = settings.allows_tunnel(route);
    if access == Access::Deny {
        if T::ENABLED && facts.is_cors_preflight() {
            trace.step(Step::Preflight(PreflightStep::Refused));
        }
        return Outcome::Deny(Box::new(match route {
            Some(route) => Denial::new(
                StatusCode::FORBIDDEN,
                Reason::RouteDenied,
                format!("route `{}` is not available", route.name),
            ),
            None => Denial::new(
                StatusCode::NOT_FOUND,
                Reason::RouteNotFound,
                format!("no route matches {} {}", facts.method, facts.path),
            ),
        }));
    }
    // A route that allows tunnels has nothing to refuse: the proxy skips
    // reading the upgrade headers there.
    if !websocket || T::ENABLED {
        let asked = facts.asks_for_websocket();
        trace.step(Step::Upgrade {
            asked,
            allowed: websocket,
        });
        if asked && !websocket {
            return Outcome::Deny(Box::new(Denial::new(
                StatusCode::FORBIDDEN,
                Reason::UpgradeNotAllowed,
                match route {
                    Some(route) => format!(
                        "route `{}` does not allow WebSocket connections (route setting `websocket: true`)",
                        route.name
                    ),
                    None => "no route allows WebSocket connections here".to_owned(),
                },
            )));
        }
    }
    if facts.is_cors_preflight() {
        let forwarded = policy.forwards_preflight(route);
        trace.step(Step::Preflight(if forwarded {
            PreflightStep::Forwarded
        } else {
            PreflightStep::Decided
        }));
        if forwarded {
            return Outcome::Allow(Admission::Preflight);
        }
    }
    let license = match access {
        Access::Public => None,
        Access::Licensed => match credentials.license() {
            Ok(view) => {
                trace.step(Step::License(Ok(view)));
                trace.step(Step::Environment(Ok(view.environment)));
                trace.step(Step::Instance(view.instance));
                if let Some((on_limit, denial)) = instance_denial(view.license, view.instance) {
                    if on_limit == OnInstanceLimit::Shadow {
                        *shadowed = Some(denial);
                    } else {
                        return Outcome::Deny(denial);
                    }
                }
                Some(view)
            }
            Err(error) => {
                let reason = Reason::of_license_error(&error);
                trace.step(if reason == Reason::EnvironmentNotLicensed {
                    Step::Environment(Err(reason))
                } else {
                    Step::License(Err(reason))
                });
                return Outcome::Deny(Box::new(license_denial(
                    &error,
                    settings.license_header.as_ref(),
                )));
            }
        },
        Access::Deny => unreachable!("decided above"),
    };
    let Some(route) = route else {
        return Outcome::Allow(match license {
            Some(_) => Admission::Licensed,
            None => Admission::Public,
        });
    };
    if let Some(view) = license {
        let missing = view.entitlement.features.first_missing(&route.features);
        trace.step(Step::Features { route, missing });
        if let Some(bit) = missing {
            return Outcome::Deny(Box::new(feature_denial(policy, route, view.license, bit)));
        }
    }
    let user = match route.needs_user {
        false => None,
        true => match credentials.user() {
            Ok(user) => {
                trace.step(Step::User(Ok(user)));
                Some(user)
            }
            Err(error) => {
                let denial = user_denial(&error);
                trace.step(Step::User(Err(denial.reason)));
                return Outcome::Deny(Box::new(denial));
            }
        },
    };
    if let Some(user) = user.filter(|_| !route.roles.is_empty()) {
        let licensed =
            license.and_then(|view| view.entitlement.roles.as_ref().map(|r| (view.license, r)));
        let refused = check_roles(policy, route, user, licensed);
        trace.step(Step::Roles {
            route,
            refused: refused.as_ref().map(|denial| denial.reason),
        });
        if let Some(denial) = refused {
            return Outcome::Deny(Box::new(denial));
        }
    }
    if route.limits.is_empty() {
        return Outcome::Allow(match license {
            Some(_) => Admission::Licensed,
            None => Admission::Public,
        });
    }
    let mut plan = LimitPlan {
        policy,
        route,
        entitlement: license.map(|view| view.entitlement),
        license: license.map(|view| view.license),
        user,
        seat: None,
    };
    for (position, usage) in route.limits.iter().enumerate() {
        let seats = match &policy.limits[usage.limit].kind {
            LimitKind::Seats { identity, .. } => Some(identity),
            _ => None,
        };
        // Only seat limits decide anything here; the others are looked at
        // for the trace alone.
        if !T::ENABLED && seats.is_none() {
            continue;
        }
        let check = plan.check(position);
        trace.step(Step::Limit(check));
        // A seat is held by an identity: a request that does not say who
        // it is cannot take one. Checked before anything is counted, so a
        // refusal here never needs giving back.
        if let (Some(identity), Some(_)) = (seats, check.amount) {
            match seat_holder(identity, facts.headers, plan.license, plan.user, route) {
                Holder::Missing => {
                    return Outcome::Deny(Box::new(Denial::new(
                        StatusCode::FORBIDDEN,
                        Reason::SeatIdentityMissing,
                        format!(
                            "seats of `{}` are counted by {}; the request does not carry it",
                            check.def.name,
                            describe_part(identity)
                        ),
                    )));
                }
                Holder::Text(text) if plan.seat.is_none() => plan.seat = Some((position, text)),
                Holder::Text(_) | Holder::Present => {}
            }
        }
    }
    Outcome::Count(plan)
}

/// Who holds a seat counted by `part`, as far as the evaluator can read it.
enum Holder<'a> {
    Text(&'a str),
    /// Present, but read by the engine: the client address, or a header
    /// value that is not text.
    Present,
    /// Absent or empty (an absent header, an optional claim the license
    /// lacks): no one to give a seat to.
    Missing,
}

fn seat_holder<'a>(
    part: &KeyPart,
    headers: &'a HeaderMap,
    license: Option<&'a VerifiedLicense>,
    user: Option<&'a VerifiedUser>,
    route: &'a Route,
) -> Holder<'a> {
    let text = |text: &'a str| match text {
        "" => Holder::Missing,
        text => Holder::Text(text),
    };
    match part {
        KeyPart::License => license.map_or(Holder::Missing, |l| text(&l.claims.sub)),
        KeyPart::User => user.map_or(Holder::Missing, |u| text(&u.subject)),
        KeyPart::Claim(claim) => license.map_or(Holder::Missing, |l| {
            let claims = &l.claims;
            text(match claim {
                Claim::Sub => claims.sub.as_str(),
                Claim::Plan => claims.lic.plan.as_str(),
                Claim::Customer => claims.lic.customer.as_deref().unwrap_or(""),
                Claim::Issuer => claims.iss.as_deref().unwrap_or(""),
            })
        }),
        KeyPart::Header(name) => match headers.get(name) {
            None => Holder::Missing,
            Some(value) if value.is_empty() => Holder::Missing,
            Some(value) => value.to_str().map_or(Holder::Present, Holder::Text),
        },
        KeyPart::ClientIp => Holder::Present,
        KeyPart::Route => text(&route.name),
    }
}

/// A key part, in words, for denials.
pub fn describe_part(part: &KeyPart) -> Cow<'static, str> {
    match part {
        KeyPart::License => "the license".into(),
        KeyPart::User => "the verified user (a user token)".into(),
        KeyPart::Claim(_) => "a license claim".into(),
        KeyPart::Header(name) => format!("the `{name}` header").into(),
        KeyPart::ClientIp => "the client address".into(),
        KeyPart::Route => "the route".into(),
    }
}

/// Why `user` may not use `route`'s roles, if it may not: a role the user
/// lacks (`role_missing`), or one the license does not include however the
/// identity provider grants it (`role_not_licensed`). `licensed` is the
/// license and its role cap, when it has one. Every `all_of` role must be
/// both; of `any_of`, one role must be both.
fn check_roles(
    policy: &Policy,
    route: &Route,
    user: &VerifiedUser,
    licensed: Option<(&VerifiedLicense, &crate::policy::NameSet)>,
) -> Option<Denial> {
    let RoleRule { any_of, all_of } = &route.roles;
    let name = |bit: usize| policy.roles[bit].as_str();
    let held = |bit: usize| user.has_role(name(bit));
    let allowed = |bit: usize| licensed.is_none_or(|(_, roles)| roles.contains(bit));
    let not_licensed = |bit: usize| {
        let (license, _) = licensed.expect("only a cap refuses a role");
        let lic = &license.claims.lic;
        let plan = match lic.plan.as_str() {
            "" => String::new(),
            plan => format!(", plan `{plan}`"),
        };
        Denial::new(
            StatusCode::FORBIDDEN,
            Reason::RoleNotLicensed,
            format!(
                "route `{}` needs role `{}`, which license `{}`{plan} does not include (its `lic.roles` or its plan's `roles`)",
                route.name,
                name(bit),
                license.claims.sub
            ),
        )
    };
    let missing = |wanted: &[usize], all: bool| {
        let names: Vec<String> = wanted.iter().map(|&b| format!("`{}`", name(b))).collect();
        Denial::new(
            StatusCode::FORBIDDEN,
            Reason::RoleMissing,
            format!(
                "route `{}` needs {} {}; user `{}` has {}",
                route.name,
                if all { "the roles" } else { "one of the roles" },
                names.join(", "),
                user.subject,
                match user.roles.len() {
                    0 => "no roles".to_owned(),
                    _ => user
                        .roles
                        .iter()
                        .map(|r| format!("`{r}`"))
                        .collect::<Vec<_>>()
                        .join(", "),
                }
            ),
        )
    };
    if let Some(&bit) = all_of.iter().find(|&&bit| !allowed(bit)) {
        return Some(not_licensed(bit));
    }
    if all_of.iter().any(|&bit| !held(bit)) {
        return Some(missing(all_of, true));
    }
    if any_of.is_empty() || any_of.iter().any(|&bit| held(bit) && allowed(bit)) {
        return None;
    }
    // No usable role held: say the license is why when it is.
    match any_of
        .iter()
        .find(|&&bit| held(bit))
        .or_else(|| any_of.iter().all(|&bit| !allowed(bit)).then(|| &any_of[0]))
    {
        Some(&bit) => Some(not_licensed(bit)),
        None => Some(missing(any_of, false)),
    }
}

/// A failed user token check as a response: 401 with a `WWW-Authenticate`
/// challenge the client can act on (RFC 6750), 429 past the client's
/// budget of failing checks, 503 while no identity provider keys are
/// loaded (the deployment's matter, and passing).
pub fn user_denial(error: &UserError) -> Denial {
    let (status, reason) = match error {
        UserError::Missing => (StatusCode::UNAUTHORIZED, Reason::UserTokenMissing),
        UserError::KeysUnavailable => {
            (StatusCode::SERVICE_UNAVAILABLE, Reason::UserKeysUnavailable)
        }
        UserError::VerificationThrottled { .. } => {
            (StatusCode::TOO_MANY_REQUESTS, Reason::UserTokenInvalid)
        }
        _ => (StatusCode::UNAUTHORIZED, Reason::UserTokenInvalid),
    };
    let mut denial = Denial::new(status, reason, error.detail());
    denial.hint = Hint::UserToken;
    match error {
        UserError::VerificationThrottled { retry_after } => {
            denial
                .headers
                .insert(http::header::RETRY_AFTER, HeaderValue::from(*retry_after));
        }
        UserError::KeysUnavailable => {
            denial
                .headers
                .insert(http::header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        UserError::Missing => {
            denial.headers.insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"users\""),
            );
        }
        _ => {
            denial.headers.insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"users\", error=\"invalid_token\""),
            );
        }
    }
    denial
}

fn feature_denial(policy: &Policy, route: &Route, license: &VerifiedLicense, bit: usize) -> Denial {
    let lic = &license.claims.lic;
    let plan = if lic.plan.is_empty() {
        String::new()
    } else {
        format!(", plan `{}`", lic.plan)
    };
    let feature = &policy.features[bit];
    let mut denial = Denial::new(
        StatusCode::FORBIDDEN,
        Reason::FeatureNotLicensed,
        format!(
            "route `{}` needs feature `{feature}`, which license `{}`{plan} does not include",
            route.name, license.claims.sub
        ),
    );
    denial.hint = Hint::MissingFeature {
        feature: feature.clone(),
        license: license.claims.sub.clone(),
        plan: lic.plan.clone(),
    };
    denial
}

/// A failed license check as a response. A per-request token the client can
/// fix (`token_header`: the header it comes in) is a 401 with a
/// `WWW-Authenticate` challenge (RFC 6750); anything about the deployment or
/// its environment is a 403; a client over its budget of failing checks gets
/// 429 with `Retry-After`.
/// The denial of a replica without an instance slot (`check`), for a
/// request under `license`, with the setting that says what to do with it: 403 under
/// `on_limit: deny` (and `shadow`, which only flags it), 503 under
/// `not_ready` (a request that reached a replica the orchestrator was told
/// to avoid).
pub fn instance_denial(
    license: &VerifiedLicense,
    check: InstanceCheck,
) -> Option<(OnInstanceLimit, Box<Denial>)> {
    let InstanceCheck::Waiting { on_limit, limit } = check else {
        return None;
    };
    let status = match on_limit {
        OnInstanceLimit::Deny | OnInstanceLimit::Shadow => StatusCode::FORBIDDEN,
        OnInstanceLimit::NotReady => StatusCode::SERVICE_UNAVAILABLE,
    };
    let denial = Box::new(Denial::new(
        status,
        Reason::InstanceLimitReached,
        format!(
            "license `{}` allows {limit} instance{} at once and other replicas hold {}: this one serves licensed requests once a slot frees (instances.on_limit: {})",
            license.claims.sub,
            if limit == 1 { "" } else { "s" },
            if limit == 1 { "it" } else { "them all" },
            on_limit.as_str()
        ),
    ));
    Some((on_limit, denial))
}

pub fn license_denial(error: &LicenseError, token_header: Option<&HeaderName>) -> Denial {
    let reason = Reason::of_license_error(error);
    let per_request = token_header.is_some();
    let mut denial = Denial::new(StatusCode::FORBIDDEN, reason, error.detail());
    denial.hint = match token_header {
        Some(name) => Hint::LicenseHeader(name.clone()),
        None => Hint::DeploymentLicense,
    };
    if let LicenseError::VerificationThrottled { retry_after } = error {
        denial.status = StatusCode::TOO_MANY_REQUESTS;
        denial
            .headers
            .insert(http::header::RETRY_AFTER, HeaderValue::from(*retry_after));
        return denial;
    }
    if per_request && reason != Reason::EnvironmentNotLicensed {
        denial.status = StatusCode::UNAUTHORIZED;
        let challenge = if reason == Reason::LicenseMissing {
            "Bearer realm=\"licensegate\""
        } else {
            "Bearer realm=\"licensegate\", error=\"invalid_token\""
        };
        denial.headers.insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
    }
    denial
}

/// The request's host without port: the URI authority (HTTP/2, absolute
/// form) or the `Host` header.
pub fn request_host(head: &http::request::Parts) -> Option<&str> {
    // `check_request_head` made `Host` agree with any target authority.
    let raw = match head.headers.get(http::header::HOST) {
        Some(host) => host.to_str().ok()?,
        None => head.uri.authority()?.as_str(),
    };
    if let Some(rest) = raw.strip_prefix('[') {
        return rest.split(']').next();
    }
    // A byte search: `rsplit_once(':')`'s generic char searcher cost ~230
    // instructions per request (callgrind).
    let host = match raw.bytes().rposition(|b| b == b':') {
        Some(colon) => &raw[..colon],
        None => raw,
    };
    // `example.com.` is the same name, fully qualified.
    Some(host.strip_suffix('.').unwrap_or(host))
}

#[cfg(test)]
mod tests;
