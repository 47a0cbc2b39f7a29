//! The decision order as a table: each row a request and a license against
//! one compiled policy, with the outcome, the reason and the steps taken.
//! Every row runs twice, with the proxy's `NoTrace` and with a collecting
//! trace, which must reach the same outcome.

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Version};

use super::*;
use crate::license::{Algorithm, Claims, LicenseError, VerifiedLicense};
use crate::policy::{OnInstanceLimit, Policy};
use crate::user::{UserError, VerifiedUser};

const POLICY: &str = "\
plans:
  pro:
    features: [reports]
    limits: {calls: 100}
  basic: {}
limits:
  calls:
    rate: {limit: lic.limits.calls, default: 10, per: 1m}
  fixed:
    rate: {limit: 5, per: 1m, key: client_ip}
  users:
    seats: {identity: 'header:x-user', default: 3}
  guests:
    seats: {identity: 'header:x-user', default: unlimited}
routes:
  - {name: closed, path: /closed/**, access: deny}
  - {name: health, path: /healthz, access: public}
  - {name: counted, path: /counted, access: public, limits: [fixed]}
  - {name: reports, path: /reports/**, features: [reports], limits: [calls]}
  - {name: team, path: /team/**, limits: [calls, users]}
  - {name: guests, path: /guests/**, limits: [guests]}
  - {name: live, path: /live/**, websocket: true}
  - {name: strict, path: /strict/**, preflight: decide}
  - {name: trial, path: /trial/**, mode: shadow, features: [reports]}
";

fn policy(unmatched: &str) -> Policy {
    Policy::compile(vec![(
        "p.yaml".into(),
        format!("unmatched: {unmatched}\n{POLICY}"),
    )])
    .unwrap_or_else(|error| panic!("{error}"))
}

fn license(plan: &str) -> VerifiedLicense {
    let claims: Claims = serde_json::from_value(serde_json::json!({
        "sub": "lic-1", "exp": 4_000_000_000u64, "lic": {"plan": plan},
    }))
    .unwrap();
    VerifiedLicense {
        kid: "k1".into(),
        alg: Algorithm::EdDSA,
        claims,
    }
}

/// The license as the gate would answer, counting how often it is asked;
/// the user as the verifier would.
struct Given<'a> {
    answer: Result<LicenseView<'a>, LicenseError>,
    asked: usize,
    user: Result<&'a VerifiedUser, UserError>,
}

impl<'a> Credentials<'a> for Given<'a> {
    fn user(&mut self) -> Result<&'a VerifiedUser, UserError> {
        self.user.clone()
    }

    fn license(&mut self) -> Result<LicenseView<'a>, LicenseError> {
        self.asked += 1;
        self.answer.clone()
    }
}

/// A request head as the proxy holds it, and whether a body follows.
struct Request {
    head: http::request::Parts,
    body: BodyState,
}

fn request(method: &str, path: &'static str, headers: &[(&'static str, &'static str)]) -> Request {
    let mut map = HeaderMap::new();
    map.insert(http::header::HOST, HeaderValue::from_static("app.test"));
    for (name, value) in headers {
        map.append(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    let mut head = http::Request::new(()).into_parts().0;
    head.method = method.parse().unwrap();
    head.version = Version::HTTP_11;
    head.uri = path.parse().unwrap();
    head.headers = map;
    Request {
        head,
        body: BodyState::Empty,
    }
}

const UPGRADE: &[(&str, &str)] = &[("connection", "Upgrade"), ("upgrade", "websocket")];
const PREFLIGHT: &[(&str, &str)] = &[
    ("origin", "http://localhost:5173"),
    ("access-control-request-method", "POST"),
];

/// What a row expects.
#[derive(Debug, PartialEq, Eq)]
enum Expect {
    Allow(Admission),
    Deny(Reason, StatusCode),
    /// Limits to count: (name, amount) in order.
    Count(Vec<(String, Option<u64>)>),
}

fn count(limits: &[(&str, Option<u64>)]) -> Expect {
    Expect::Count(
        limits
            .iter()
            .map(|(name, amount)| ((*name).to_owned(), *amount))
            .collect(),
    )
}

fn summary(outcome: &Outcome<'_>) -> Expect {
    match outcome {
        Outcome::Allow(admission) => Expect::Allow(*admission),
        Outcome::Deny(denial) => Expect::Deny(denial.reason, denial.status),
        Outcome::Count(plan) => Expect::Count(
            plan.checks()
                .map(|check| (check.def.name.to_string(), check.amount))
                .collect(),
        ),
    }
}

/// A step's kind, for comparing sequences.
fn kind(step: &Step<'_>) -> &'static str {
    match step {
        Step::Route(_) => "route",
        Step::Access { .. } => "access",
        Step::Upgrade { .. } => "upgrade",
        Step::Preflight(PreflightStep::Forwarded) => "preflight:forwarded",
        Step::Preflight(PreflightStep::Decided) => "preflight:decided",
        Step::Preflight(PreflightStep::Refused) => "preflight:refused",
        Step::License(Ok(_)) => "license",
        Step::License(Err(_)) => "license:refused",
        Step::Environment(Ok(_)) => "environment",
        Step::Environment(Err(_)) => "environment:refused",
        Step::Instance(InstanceCheck::Waiting { .. }) => "instance:waiting",
        Step::Instance(_) => "instance",
        Step::Features {
            missing: Some(_), ..
        } => "features:missing",
        Step::Features { .. } => "features",
        Step::User(Ok(_)) => "user",
        Step::User(Err(_)) => "user:refused",
        Step::Roles { refused: None, .. } => "roles",
        Step::Roles { .. } => "roles:refused",
        Step::Limit(_) => "limit",
    }
}

/// The license a row gives.
#[derive(Clone, Copy)]
enum Lic {
    Plan(&'static str),
    Fails(fn() -> LicenseError),
}

struct Row {
    name: &'static str,
    unmatched: &'static str,
    request: Request,
    license: Lic,
    expect: Expect,
    /// Whether the evaluator asked for the license.
    asked: bool,
    /// The kinds of the steps taken, space-separated.
    steps: &'static str,
}

fn rows() -> Vec<Row> {
    use Admission::*;
    let pro = Lic::Plan("pro");
    let missing = Lic::Fails(|| LicenseError::Missing);
    let forbidden = StatusCode::FORBIDDEN;
    let with_body = |mut request: Request| {
        request.body = BodyState::Follows;
        request
    };
    let row = |name, request, license, expect, asked, steps| Row {
        name,
        unmatched: "deny",
        request,
        license,
        expect,
        asked,
        steps,
    };
    vec![
        row(
            "a deny route refuses before anything else, preflights and upgrades included",
            request("OPTIONS", "/closed/x", &[PREFLIGHT, UPGRADE].concat()),
            pro,
            Expect::Deny(Reason::RouteDenied, forbidden),
            false,
            "route access preflight:refused",
        ),
        row(
            "no route under `unmatched: deny` is a 404",
            request("GET", "/nowhere", &[]),
            pro,
            Expect::Deny(Reason::RouteNotFound, StatusCode::NOT_FOUND),
            false,
            "route access",
        ),
        row(
            "an upgrade the route does not allow is refused before the license",
            request("GET", "/reports/q3", UPGRADE),
            missing,
            Expect::Deny(Reason::UpgradeNotAllowed, forbidden),
            false,
            "route access upgrade",
        ),
        row(
            "an upgrade a route allows goes on to the license",
            request("GET", "/live/feed", UPGRADE),
            pro,
            Expect::Allow(Licensed),
            true,
            "route access upgrade license environment instance features",
        ),
        row(
            "a preflight the route forwards needs no license",
            request("OPTIONS", "/reports/q3", PREFLIGHT),
            missing,
            Expect::Allow(Preflight),
            false,
            "route access upgrade preflight:forwarded",
        ),
        row(
            "an OPTIONS with a body is a request, not a preflight",
            with_body(request("OPTIONS", "/reports/q3", PREFLIGHT)),
            missing,
            Expect::Deny(Reason::LicenseMissing, forbidden),
            true,
            "route access upgrade license:refused",
        ),
        row(
            "`preflight: decide` decides a preflight like any request",
            request("OPTIONS", "/strict/x", PREFLIGHT),
            missing,
            Expect::Deny(Reason::LicenseMissing, forbidden),
            true,
            "route access upgrade preflight:decided license:refused",
        ),
        row(
            "a public route without limits asks for no license",
            request("GET", "/healthz", &[]),
            missing,
            Expect::Allow(Public),
            false,
            "route access upgrade",
        ),
        row(
            "a public route's limits are counted with their fixed numbers",
            request("GET", "/counted", &[]),
            missing,
            count(&[("fixed", Some(5))]),
            false,
            "route access upgrade limit",
        ),
        row(
            "an expired license stops at the license",
            request("GET", "/reports/q3", &[]),
            Lic::Fails(|| LicenseError::Expired {
                expired_at: 1,
                now: 2,
            }),
            Expect::Deny(Reason::LicenseExpired, forbidden),
            true,
            "route access upgrade license:refused",
        ),
        row(
            "a license for another environment is refused at the environment",
            request("GET", "/reports/q3", &[]),
            Lic::Fails(|| LicenseError::EnvironmentNotLicensed("namespace `dev`".into())),
            Expect::Deny(Reason::EnvironmentNotLicensed, forbidden),
            true,
            "route access upgrade environment:refused",
        ),
        row(
            "a client over its budget of failing checks is told to wait",
            request("GET", "/reports/q3", &[]),
            Lic::Fails(|| LicenseError::VerificationThrottled { retry_after: 3 }),
            Expect::Deny(
                Reason::LicenseVerificationThrottled,
                StatusCode::TOO_MANY_REQUESTS,
            ),
            true,
            "route access upgrade license:refused",
        ),
        row(
            "a feature the plan lacks is refused before the limits",
            request("GET", "/reports/q3", &[]),
            Lic::Plan("basic"),
            Expect::Deny(Reason::FeatureNotLicensed, forbidden),
            true,
            "route access upgrade license environment instance features:missing",
        ),
        row(
            "a licensed route's limits take the license's numbers",
            request("GET", "/reports/q3", &[]),
            pro,
            count(&[("calls", Some(100))]),
            true,
            "route access upgrade license environment instance features limit",
        ),
        row(
            "a seat limit needs the identity it counts, before anything is counted",
            request("GET", "/team/board", &[]),
            pro,
            Expect::Deny(Reason::SeatIdentityMissing, forbidden),
            true,
            "route access upgrade license environment instance features limit limit",
        ),
        row(
            "with the identity, rate and seats are counted",
            request("GET", "/team/board", &[("x-user", "alice")]),
            pro,
            count(&[("calls", Some(100)), ("users", Some(3))]),
            true,
            "route access upgrade license environment instance features limit limit",
        ),
        row(
            "an empty identity is no identity",
            request("GET", "/team/board", &[("x-user", "")]),
            pro,
            Expect::Deny(Reason::SeatIdentityMissing, forbidden),
            true,
            "route access upgrade license environment instance features limit limit",
        ),
        row(
            "unlimited seats need no identity",
            request("GET", "/guests/x", &[]),
            pro,
            count(&[("guests", None)]),
            true,
            "route access upgrade license environment instance features limit",
        ),
        row(
            "shadow mode changes no outcome: the engine forwards the denial",
            request("GET", "/trial/x", &[]),
            Lic::Plan("basic"),
            Expect::Deny(Reason::FeatureNotLicensed, forbidden),
            true,
            "route access upgrade license environment instance features:missing",
        ),
        Row {
            unmatched: "licensed",
            ..row(
                "`unmatched: licensed` checks the license and nothing else",
                request("GET", "/nowhere", &[]),
                pro,
                Expect::Allow(Licensed),
                true,
                "route access upgrade license environment instance",
            )
        },
        Row {
            unmatched: "public",
            ..row(
                "`unmatched: public` admits requests, not tunnels",
                request("GET", "/nowhere", UPGRADE),
                missing,
                Expect::Deny(Reason::UpgradeNotAllowed, forbidden),
                false,
                "route access upgrade",
            )
        },
        Row {
            unmatched: "public",
            ..row(
                "unmatched preflights are forwarded unless unmatched requests are denied",
                request("OPTIONS", "/nowhere", PREFLIGHT),
                missing,
                Expect::Allow(Preflight),
                false,
                "route access upgrade preflight:forwarded",
            )
        },
        row(
            "under `unmatched: deny` an unmatched preflight is refused",
            request("OPTIONS", "/nowhere", PREFLIGHT),
            missing,
            Expect::Deny(Reason::RouteNotFound, StatusCode::NOT_FOUND),
            false,
            "route access preflight:refused",
        ),
    ]
}

/// Evaluate `row` with `trace`; the outcome, whether the license was asked
/// for, and the trace.
fn run<'a, T: Trace<'a>>(
    policy: &'a Policy,
    row: &'a Row,
    view: Result<LicenseView<'a>, LicenseError>,
    settings: &EvaluatorSettings,
    trace: T,
) -> (Expect, bool, Verdict<'a, T>) {
    let facts = RequestFacts::of(&row.request.head, row.request.body);
    let mut source = Given {
        answer: view,
        asked: 0,
        user: Err(UserError::Missing),
    };
    let verdict = evaluate(policy, &facts, &mut source, settings, trace);
    (summary(&verdict.outcome), source.asked > 0, verdict)
}

#[test]
fn the_decision_order() {
    let settings = EvaluatorSettings::default();
    for row in rows() {
        let policy = policy(row.unmatched);
        let licensed = match row.license {
            Lic::Plan(plan) => Some(license(plan)),
            Lic::Fails(_) => None,
        };
        let entitlement = licensed.as_ref().map(|l| policy.entitle(&l.claims.lic));
        let view = || match (row.license, &licensed, &entitlement) {
            (Lic::Fails(error), _, _) => Err(error()),
            (_, Some(license), Some(entitlement)) => Ok(LicenseView {
                license,
                entitlement,
                environment: EnvironmentCheck::Admitted,
                instance: InstanceCheck::Serving,
            }),
            _ => unreachable!(),
        };
        let (fast, fast_asked, _) = run(&policy, &row, view(), &settings, NoTrace);
        let (traced, asked, verdict) = run(&policy, &row, view(), &settings, Vec::new());
        assert_eq!(fast, traced, "{}: the trace changed the outcome", row.name);
        assert_eq!(fast_asked, asked, "{}", row.name);
        assert_eq!(traced, row.expect, "{}", row.name);
        assert_eq!(asked, row.asked, "{}: license asked", row.name);
        let steps: Vec<&str> = verdict.steps.iter().map(kind).collect();
        assert_eq!(
            steps,
            row.steps.split_whitespace().collect::<Vec<_>>(),
            "{}",
            row.name
        );
    }
}

#[test]
fn the_verdict_carries_the_route_its_mode_and_the_tunnel() {
    let policy = policy("public");
    let row = |path| Row {
        name: "",
        unmatched: "public",
        request: request("GET", path, &[]),
        license: Lic::Plan("pro"),
        expect: Expect::Allow(Admission::Public),
        asked: false,
        steps: "",
    };
    let pro = license("pro");
    let entitlement = policy.entitle(&pro.claims.lic);
    let view = || {
        Ok(LicenseView {
            license: &pro,
            entitlement: &entitlement,
            environment: EnvironmentCheck::Admitted,
            instance: InstanceCheck::Serving,
        })
    };
    let settings = EvaluatorSettings::default();
    let (trial, live, nowhere) = (row("/trial/x"), row("/live/x"), row("/nowhere"));
    let (_, _, verdict) = run(&policy, &trial, view(), &settings, NoTrace);
    assert_eq!(verdict.route.map(|r| &*r.name), Some("trial"));
    assert_eq!(verdict.mode, Mode::Shadow);
    assert!(!verdict.websocket);
    let (_, _, verdict) = run(&policy, &live, view(), &settings, NoTrace);
    assert!(verdict.websocket);
    assert_eq!(verdict.mode, Mode::Enforce);
    let (_, _, verdict) = run(&policy, &nowhere, view(), &settings, NoTrace);
    assert!(verdict.route.is_none());
    assert!(!verdict.websocket);
    // `licensegate dev`: any allowed request may become a tunnel.
    let any = EvaluatorSettings {
        websocket: WebSocketScope::AnyRoute,
        ..EvaluatorSettings::default()
    };
    let mut upgrade = row("/nowhere");
    upgrade.request = request("GET", "/nowhere", UPGRADE);
    let (outcome, _, verdict) = run(&policy, &upgrade, view(), &any, NoTrace);
    assert_eq!(outcome, Expect::Allow(Admission::Public));
    assert!(verdict.websocket);
}

#[test]
fn a_per_request_license_failure_is_the_clients_to_fix() {
    let policy = policy("deny");
    let header = EvaluatorSettings {
        license_header: Some(http::header::AUTHORIZATION),
        ..EvaluatorSettings::default()
    };
    let deployment = EvaluatorSettings::default();
    let row = Row {
        name: "",
        unmatched: "deny",
        request: request("GET", "/reports/q3", &[]),
        license: Lic::Fails(|| LicenseError::Missing),
        expect: Expect::Allow(Admission::Public),
        asked: false,
        steps: "",
    };
    let denial = |settings: &EvaluatorSettings, error: LicenseError| {
        let (_, _, verdict) = run(&policy, &row, Err(error), settings, NoTrace);
        match verdict.outcome {
            Outcome::Deny(denial) => denial,
            other => panic!("not denied: {other:?}"),
        }
    };
    let missing = denial(&header, LicenseError::Missing);
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        missing.headers[http::header::WWW_AUTHENTICATE],
        "Bearer realm=\"licensegate\""
    );
    assert_eq!(
        missing.hint,
        Hint::LicenseHeader(http::header::AUTHORIZATION)
    );
    let expired = denial(
        &header,
        LicenseError::Expired {
            expired_at: 1,
            now: 2,
        },
    );
    assert_eq!(expired.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        expired.headers[http::header::WWW_AUTHENTICATE],
        "Bearer realm=\"licensegate\", error=\"invalid_token\""
    );
    // The environment is the deployment's matter, whoever sent the token.
    let environment = denial(
        &header,
        LicenseError::EnvironmentNotLicensed("namespace `dev`".into()),
    );
    assert_eq!(environment.status, StatusCode::FORBIDDEN);
    assert!(environment.headers.is_empty());
    // A deployment license: the operator's matter.
    let deployment = denial(&deployment, LicenseError::Missing);
    assert_eq!(deployment.status, StatusCode::FORBIDDEN);
    assert_eq!(deployment.hint, Hint::DeploymentLicense);
    assert!(deployment.headers.is_empty());
}

#[test]
fn the_plan_hands_the_seat_holder_it_read_to_the_counting() {
    let policy = policy("deny");
    let pro = license("pro");
    let entitlement = policy.entitle(&pro.claims.lic);
    let row = Row {
        name: "",
        unmatched: "deny",
        request: request("GET", "/team/board", &[("x-user", "alice")]),
        license: Lic::Plan("pro"),
        expect: Expect::Allow(Admission::Public),
        asked: false,
        steps: "",
    };
    let view = LicenseView {
        license: &pro,
        entitlement: &entitlement,
        environment: EnvironmentCheck::Admitted,
        instance: InstanceCheck::Serving,
    };
    let settings = EvaluatorSettings::default();
    let (_, _, verdict) = run(&policy, &row, Ok(view), &settings, NoTrace);
    match verdict.outcome {
        // `users` is the route's second limit.
        Outcome::Count(plan) => assert_eq!(plan.seat, Some((1, "alice"))),
        other => panic!("not counted: {other:?}"),
    }
}

const ROLES_POLICY: &str = "\
unmatched: deny
plans:
  team:
    roles: [analyst, viewer]
  open: {}
limits:
  seats:
    seats: {identity: user, default: 2}
routes:
  - {name: reports, path: /reports/**, roles: [analyst, admin]}
  - {name: admin, path: /admin/**, roles: {all_of: [admin, analyst]}}
  - {name: seated, path: /seated/**, limits: [seats]}
  - {name: plain, path: /plain/**}
  - {name: open-roles, path: /open/**, access: public, roles: [viewer]}
";

fn user(roles: &[&str]) -> VerifiedUser {
    VerifiedUser::new(
        0,
        "alice@acme.test".into(),
        roles.iter().map(|r| (*r).into()).collect(),
        4_000_000_000,
        None,
        "kid-1".into(),
    )
}

/// Roles as written: any-of, all-of, the license's cap, and the user a
/// seat limit counts by.
#[test]
fn roles_and_seats_by_verified_user() {
    let policy = Policy::compile(vec![("p.yaml".into(), ROLES_POLICY.into())])
        .unwrap_or_else(|error| panic!("{error}"));
    let settings = EvaluatorSettings::default();
    let decide = |path: &'static str,
                  plan: &str,
                  lic_roles: Option<&[&str]>,
                  user: Result<&VerifiedUser, UserError>| {
        let mut license = license(plan);
        license.claims.lic.roles = lic_roles.map(|r| r.iter().map(|s| (*s).to_owned()).collect());
        let entitlement = policy.entitle(&license.claims.lic);
        let row = request("GET", path, &[]);
        let facts = RequestFacts::of(&row.head, row.body);
        let mut source = Given {
            answer: Ok(LicenseView {
                license: &license,
                entitlement: &entitlement,
                environment: EnvironmentCheck::Admitted,
                instance: InstanceCheck::Serving,
            }),
            asked: 0,
            user: user.clone(),
        };
        let fast = summary(&evaluate(&policy, &facts, &mut source, &settings, NoTrace).outcome);
        let mut source = Given {
            answer: source.answer.clone(),
            asked: 0,
            user,
        };
        let verdict = evaluate(&policy, &facts, &mut source, &settings, Vec::new());
        let traced = summary(&verdict.outcome);
        assert_eq!(fast, traced, "{path}: the trace changed the outcome");
        let steps: Vec<&str> = verdict.steps.iter().map(kind).collect();
        (traced, steps.join(" "))
    };
    let analyst = user(&["analyst"]);
    let admin = user(&["admin"]);
    let both = user(&["admin", "analyst"]);
    let nobody = user(&[]);
    let denied = |reason| Expect::Deny(reason, StatusCode::FORBIDDEN);
    let allowed = Expect::Allow(Admission::Licensed);

    // Any of: a held role the plan includes passes.
    let (outcome, steps) = decide("/reports/q3", "team", None, Ok(&analyst));
    assert_eq!(outcome, allowed);
    assert_eq!(
        steps,
        "route access upgrade license environment instance features user roles"
    );
    // Held, but the plan caps roles and `admin` is not in it.
    let (outcome, steps) = decide("/reports/q3", "team", None, Ok(&admin));
    assert_eq!(outcome, denied(Reason::RoleNotLicensed));
    assert!(steps.ends_with("user roles:refused"), "{steps}");
    // The license adds `admin` to its plan's roles.
    assert_eq!(
        decide("/reports/q3", "team", Some(&["admin"]), Ok(&admin)).0,
        allowed
    );
    // A plan without `roles` and a license without `lic.roles`: no cap.
    assert_eq!(decide("/reports/q3", "open", None, Ok(&admin)).0, allowed);
    // Not held at all.
    assert_eq!(
        decide("/reports/q3", "open", None, Ok(&nobody)).0,
        denied(Reason::RoleMissing)
    );
    // All of: both needed, and both licensed.
    assert_eq!(
        decide("/admin/x", "open", None, Ok(&analyst)).0,
        denied(Reason::RoleMissing)
    );
    assert_eq!(decide("/admin/x", "open", None, Ok(&both)).0, allowed);
    assert_eq!(
        decide("/admin/x", "team", None, Ok(&both)).0,
        denied(Reason::RoleNotLicensed)
    );
    // A user token that fails: 401 with its reason, before any role.
    let (outcome, steps) = decide("/reports/q3", "team", None, Err(UserError::Missing));
    assert_eq!(
        outcome,
        Expect::Deny(Reason::UserTokenMissing, StatusCode::UNAUTHORIZED)
    );
    assert!(steps.ends_with("user:refused"), "{steps}");
    let expired = UserError::Expired { exp: 1, now: 2 };
    assert_eq!(
        decide("/reports/q3", "team", None, Err(expired)).0,
        Expect::Deny(Reason::UserTokenInvalid, StatusCode::UNAUTHORIZED)
    );
    assert_eq!(
        decide("/reports/q3", "team", None, Err(UserError::KeysUnavailable)).0,
        Expect::Deny(Reason::UserKeysUnavailable, StatusCode::SERVICE_UNAVAILABLE)
    );
    // A route that needs no user never asks for one.
    let (outcome, steps) = decide("/plain/x", "team", None, Err(UserError::Missing));
    assert_eq!(outcome, allowed);
    assert!(!steps.contains("user"), "{steps}");
    // A public route's roles are checked without a license (no cap).
    let (outcome, steps) = decide("/open/x", "team", None, Ok(&user(&["viewer"])));
    assert_eq!(outcome, Expect::Allow(Admission::Public));
    assert!(!steps.contains("license"), "{steps}");
    // Seats held by the verified user: the plan hands its subject over.
    let mut license = license("open");
    license.claims.lic.roles = None;
    let entitlement = policy.entitle(&license.claims.lic);
    let row = request("GET", "/seated/x", &[("x-user", "mallory")]);
    let facts = RequestFacts::of(&row.head, row.body);
    let mut source = Given {
        answer: Ok(LicenseView {
            license: &license,
            entitlement: &entitlement,
            environment: EnvironmentCheck::Admitted,
            instance: InstanceCheck::Serving,
        }),
        asked: 0,
        user: Ok(&analyst),
    };
    match evaluate(&policy, &facts, &mut source, &settings, NoTrace).outcome {
        Outcome::Count(plan) => assert_eq!(plan.seat, Some((0, "alice@acme.test"))),
        other => panic!("not counted: {other:?}"),
    }
}

#[test]
fn roles_compile_with_their_errors_and_warnings() {
    let compile = |text: &str| Policy::compile(vec![("p.yaml".into(), text.into())]);
    for (roles, expected) in [
        ("[]", "name at least one role"),
        ("{one_of: [x]}", "one_of"),
        ("admin", "expected a list of roles"),
        ("['']", "is not a role name"),
    ] {
        let error = compile(&format!("routes:\n  - {{path: /a, roles: {roles}}}\n"))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("p.yaml:2:") && error.contains(expected),
            "{roles}: {error}"
        );
    }
    let error = compile("routes:\n  - {path: /a, access: deny, roles: [x]}\n")
        .unwrap_err()
        .to_string();
    assert!(error.contains("a `deny` route has no roles"), "{error}");
    let policy = compile(
        "plans:\n  team: {roles: [viewer]}\nlimits:\n  s: {seats: {identity: 'header:x-user', default: 1}}\nroutes:\n  - {path: /a, roles: [admin], limits: [s]}\n",
    )
    .unwrap();
    let warnings: Vec<String> = policy.warnings.iter().map(ToString::to_string).collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("role `admin` is in no plan")),
        "{warnings:?}"
    );
    assert!(
        warnings.iter().any(|w| w.contains("any client can type")),
        "{warnings:?}"
    );
    assert!(policy.needs_user);
    assert!(!compile("routes:\n  - {path: /a}\n").unwrap().needs_user);
}

#[test]
fn a_replica_without_an_instance_slot_refuses_or_flags_licensed_requests_only() {
    let policy = policy("deny");
    let pro = license("pro");
    let entitlement = policy.entitle(&pro.claims.lic);
    let settings = EvaluatorSettings::default();
    let licensed = Row {
        name: "",
        unmatched: "deny",
        request: request("GET", "/live/feed", &[]),
        license: Lic::Plan("pro"),
        expect: Expect::Allow(Admission::Licensed),
        asked: true,
        steps: "",
    };
    let waiting = |on_limit| InstanceCheck::Waiting { on_limit, limit: 2 };
    let view = |instance| {
        Ok(LicenseView {
            license: &pro,
            entitlement: &entitlement,
            environment: EnvironmentCheck::Admitted,
            instance,
        })
    };
    for (check, expect, shadowed) in [
        (
            InstanceCheck::Serving,
            Expect::Allow(Admission::Licensed),
            false,
        ),
        (
            waiting(OnInstanceLimit::Deny),
            Expect::Deny(Reason::InstanceLimitReached, StatusCode::FORBIDDEN),
            false,
        ),
        (
            waiting(OnInstanceLimit::NotReady),
            Expect::Deny(
                Reason::InstanceLimitReached,
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            false,
        ),
        (
            waiting(OnInstanceLimit::Shadow),
            Expect::Allow(Admission::Licensed),
            true,
        ),
    ] {
        let (outcome, _, verdict) = run(&policy, &licensed, view(check), &settings, Vec::new());
        assert_eq!(outcome, expect, "{check:?}");
        let steps: Vec<&str> = verdict.steps.iter().map(kind).collect();
        assert!(
            steps.contains(&if check == InstanceCheck::Serving {
                "instance"
            } else {
                "instance:waiting"
            }),
            "{steps:?}"
        );
        assert_eq!(
            verdict.shadowed.as_ref().map(|d| d.reason),
            shadowed.then_some(Reason::InstanceLimitReached),
            "{check:?}"
        );
        if let Outcome::Deny(denial) = &verdict.outcome {
            assert!(
                denial.detail.contains("allows 2 instances"),
                "{}",
                denial.detail
            );
        }
    }
    // A public route needs no license, so no slot either.
    let public = Row {
        request: request("GET", "/healthz", &[]),
        asked: false,
        ..licensed
    };
    let (outcome, asked, _) = run(
        &policy,
        &public,
        view(waiting(OnInstanceLimit::Deny)),
        &settings,
        NoTrace,
    );
    assert!(!asked);
    assert!(
        matches!(outcome, Expect::Allow(_) | Expect::Count(_)),
        "{outcome:?}"
    );
}
