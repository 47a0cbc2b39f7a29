//! Unit tests of the policy compiler: the example policies, errors and
//! warnings located to file:line:column, route precedence through
//! [`Policy::find`], entitlements through [`Policy::entitle`], and a large
//! policy. A test marked `#[ignore = "BUG: ..."]` describes behaviour that is
//! wrong or unclear today; it fails until it is fixed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method};

use super::*;
use crate::license::LicenseClaims;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

const FILE: &str = "policy.yaml";

fn compile(text: &str) -> Result<Policy, PolicyError> {
    Policy::compile(vec![(PathBuf::from(FILE), text.to_owned())])
}

fn compile_files(files: &[(&str, &str)]) -> Result<Policy, PolicyError> {
    Policy::compile(
        files
            .iter()
            .map(|(name, text)| (PathBuf::from(name), (*text).to_owned()))
            .collect(),
    )
}

#[track_caller]
fn compiled(result: Result<Policy, PolicyError>) -> Policy {
    match result {
        Ok(policy) => policy,
        Err(error) => panic!("expected the policy to compile, got:\n{error}"),
    }
}

/// Compiles with no warnings at all.
#[track_caller]
fn clean(text: &str) -> Policy {
    let policy = compiled(compile(text));
    assert_eq!(
        policy.warnings,
        vec![],
        "expected no warnings, got:\n{}",
        render(&policy.warnings)
    );
    policy
}

#[track_caller]
fn errors_of(result: Result<Policy, PolicyError>) -> Vec<Diagnostic> {
    match result {
        Ok(policy) => panic!(
            "expected errors, the policy compiled (warnings: {:?})",
            policy.warnings
        ),
        Err(PolicyError(diagnostics)) => diagnostics,
    }
}

#[track_caller]
fn errors(text: &str) -> Vec<Diagnostic> {
    errors_of(compile(text))
}

#[track_caller]
fn warnings(text: &str) -> Vec<Diagnostic> {
    compiled(compile(text)).warnings
}

fn render(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(|d| format!("  {d}\n"))
        .collect::<String>()
}

/// Exactly one diagnostic, in `file` at `line:column`, whose message contains
/// every fragment.
#[track_caller]
fn assert_only(
    diagnostics: &[Diagnostic],
    file: &str,
    (line, column): (usize, usize),
    fragments: &[&str],
) {
    assert_eq!(
        diagnostics.len(),
        1,
        "expected one diagnostic, got:\n{}",
        render(diagnostics)
    );
    assert_at(&diagnostics[0], file, (line, column), fragments);
}

#[track_caller]
fn assert_at(
    diagnostic: &Diagnostic,
    file: &str,
    (line, column): (usize, usize),
    fragments: &[&str],
) {
    assert_eq!(diagnostic.file, Path::new(file), "file of {diagnostic}");
    assert_eq!(
        diagnostic.position,
        Some((line, column)),
        "position of {diagnostic}"
    );
    for fragment in fragments {
        assert!(
            diagnostic.message.contains(fragment),
            "`{fragment}` not in the message of\n  {diagnostic}"
        );
    }
    // The rendered form editors jump to.
    assert!(
        diagnostic
            .to_string()
            .starts_with(&format!("{file}:{line}:{column}: ")),
        "{diagnostic}"
    );
}

fn no_headers() -> HeaderMap {
    HeaderMap::new()
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}

/// The name of the route chosen for a request, if any.
fn route_name(
    policy: &Policy,
    method: Method,
    host: Option<&str>,
    path: &str,
    headers: &HeaderMap,
) -> Option<String> {
    policy
        .find(&method, host, path, headers)
        .map(|route| route.name.to_string())
}

fn get(policy: &Policy, path: &str) -> Option<String> {
    route_name(policy, Method::GET, None, path, &no_headers())
}

fn route<'a>(policy: &'a Policy, name: &str) -> &'a Route {
    policy
        .routes
        .iter()
        .find(|r| &*r.name == name)
        .unwrap_or_else(|| panic!("no route `{name}`"))
}

fn limit_index(policy: &Policy, name: &str) -> usize {
    policy
        .limits
        .iter()
        .position(|l| &*l.name == name)
        .unwrap_or_else(|| panic!("no limit `{name}`"))
}

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")
}

fn load_example(name: &str) -> Policy {
    let path = examples_dir().join(name);
    match Policy::load(std::slice::from_ref(&path)) {
        Ok(policy) => policy,
        Err(error) => panic!("{}:\n{error}", path.display()),
    }
}

// ---------------------------------------------------------------------------
// The example policies
// ---------------------------------------------------------------------------

#[test]
fn every_example_policy_compiles_without_warnings() {
    let mut names: Vec<String> = std::fs::read_dir(examples_dir())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".yaml") || name.ends_with(".yml"))
        .collect();
    names.sort();
    for expected in [
        "demo.yaml",
        "metered-api.yaml",
        "onprem-seats.yaml",
        "saas-api.yaml",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from policies/"
        );
    }
    // Each example stands alone (they define the same plan names), so each
    // is loaded on its own.
    for name in &names {
        let policy = load_example(name);
        assert!(
            policy.warnings.is_empty(),
            "{name} has warnings:\n{}",
            render(&policy.warnings)
        );
        assert!(!policy.routes.is_empty(), "{name} has no routes");
        assert_eq!(policy.sources, vec![examples_dir().join(name)]);
    }
}

#[test]
fn saas_example_routes_and_plans() {
    let policy = load_example("saas-api.yaml");
    assert_eq!(policy.unmatched, Access::Deny);
    assert_eq!(policy.mode, Mode::Enforce);
    assert_eq!(get(&policy, "/healthz").as_deref(), Some("health"));
    assert_eq!(route(&policy, "health").access, Access::Public);
    assert_eq!(get(&policy, "/docs/guides/start").as_deref(), Some("docs"));
    assert_eq!(
        route_name(&policy, Method::POST, None, "/docs/x", &no_headers()),
        None,
        "docs are GET only and nothing else matches"
    );
    assert_eq!(
        get(&policy, "/internal/debug/pprof").as_deref(),
        Some("internal")
    );
    assert_eq!(route(&policy, "internal").access, Access::Deny);
    assert_eq!(get(&policy, "/v1/reports/q3").as_deref(), Some("reports"));
    assert_eq!(get(&policy, "/v1/export/all").as_deref(), Some("export"));
    assert_eq!(route(&policy, "export").mode, Mode::Shadow);
    assert_eq!(route(&policy, "api").mode, Mode::Enforce);
    assert_eq!(get(&policy, "/v1/customers/42").as_deref(), Some("api"));
    assert_eq!(get(&policy, "/v2/anything"), None);

    // Plan amounts, and the end-user limit keyed by license and header.
    let rate = limit_index(&policy, "license_rate");
    let end_user = limit_index(&policy, "end_user_rate");
    assert_eq!(
        policy.limits[end_user].key,
        vec![
            KeyPart::License,
            KeyPart::Header(HeaderName::from_static("x-end-user"))
        ]
    );
    let free = policy.entitle(&claims("free", &[], &[], None));
    let enterprise = policy.entitle(&claims("enterprise", &[], &[], None));
    assert_eq!(free.amounts[rate], Some(60));
    assert_eq!(free.amounts[end_user], Some(20));
    assert_eq!(enterprise.amounts[rate], Some(6000));
    assert_eq!(enterprise.amounts[end_user], None, "unlimited by default");
    let reports = &route(&policy, "reports").features;
    assert!(free.features.first_missing(reports).is_some());
    assert!(enterprise.features.first_missing(reports).is_none());
}

#[test]
fn onprem_example_counts_seats_by_user_header() {
    let policy = load_example("onprem-seats.yaml");
    assert_eq!(policy.unmatched, Access::Licensed);
    let seats = limit_index(&policy, "named_users");
    assert_eq!(
        policy.limits[seats].kind,
        LimitKind::Seats {
            identity: KeyPart::Header(HeaderName::from_static("x-user")),
            idle: Duration::from_secs(30 * 60),
        }
    );
    assert_eq!(policy.limits[seats].key, vec![KeyPart::License]);
    let analytics = route(&policy, "analytics");
    // Concurrency is checked before seats whatever the order written.
    let kinds: Vec<&str> = analytics
        .limits
        .iter()
        .map(|u| policy.limits[u.limit].kind.as_str())
        .collect();
    assert_eq!(kinds, ["concurrency", "seats"]);

    let standard = policy.entitle(&claims("standard", &[], &[], None));
    let bought_40 = policy.entitle(&claims("standard", &["analytics"], &[], Some(40)));
    let in_flight = limit_index(&policy, "in_flight");
    assert_eq!(standard.amounts[seats], Some(25), "the plan's seats");
    assert_eq!(bought_40.amounts[seats], Some(40), "the license's seats");
    assert_eq!(standard.amounts[in_flight], Some(16), "the default");
    assert!(standard
        .features
        .first_missing(&analytics.features)
        .is_some());
    assert!(bought_40
        .features
        .first_missing(&analytics.features)
        .is_none());
}

#[test]
fn metered_example_weights_routes_and_uses_every_period() {
    let policy = load_example("metered-api.yaml");
    let kind = |name: &str| policy.limits[limit_index(&policy, name)].kind.clone();
    assert_eq!(
        kind("monthly_units"),
        LimitKind::Quota {
            period: Period::Month
        }
    );
    assert_eq!(
        kind("daily_units"),
        LimitKind::Quota {
            period: Period::Day
        }
    );
    assert_eq!(
        kind("fair_use"),
        LimitKind::Quota {
            period: Period::Rolling(Duration::from_secs(3600))
        }
    );
    let costs = |name: &str| -> Vec<(String, u64)> {
        route(&policy, name)
            .limits
            .iter()
            .map(|u| (policy.limits[u.limit].name.to_string(), u.cost))
            .collect()
    };
    let expected = |units: u64| {
        vec![
            ("request_rate".to_owned(), 1),
            ("monthly_units".to_owned(), units),
            ("daily_units".to_owned(), units),
            ("fair_use".to_owned(), units),
        ]
    };
    assert_eq!(costs("geocode"), expected(1));
    assert_eq!(costs("routing"), expected(5));
    assert_eq!(costs("batch"), expected(50));
    assert_eq!(
        route_name(
            &policy,
            Method::POST,
            None,
            "/v1/batch/job-7",
            &no_headers()
        )
        .as_deref(),
        Some("batch")
    );
    let scale = policy.entitle(&claims("scale", &[], &[], None));
    assert_eq!(scale.amounts[limit_index(&policy, "daily_units")], None);
    assert_eq!(
        scale.amounts[limit_index(&policy, "monthly_units")],
        Some(5_000_000)
    );
}

// ---------------------------------------------------------------------------
// Errors, located
// ---------------------------------------------------------------------------

#[test]
fn yaml_syntax_error_is_located() {
    let text = "\
routes:
  - path: /a
    methods: [GET
  - path: /b
";
    let errors = errors(text);
    // libyaml notices at the `:` of `path:`, inside what it still reads as
    // the unclosed `[GET` list.
    assert_only(&errors, FILE, (4, 9), &["did not find expected ',' or ']'"]);
}

#[test]
fn bad_indentation_is_located() {
    let text = "\
routes:
  - path: /a
   access: public
";
    assert_only(
        &errors(text),
        FILE,
        (3, 4),
        &["did not find expected '-' indicator"],
    );
}

#[test]
fn unknown_fields_are_located_and_list_the_known_ones() {
    let text = "\
routes:
  - path: /a
    featurs: [reports]
";
    assert_only(
        &errors(text),
        FILE,
        (3, 5),
        &[
            "routes[0].featurs: unknown field `featurs`",
            "expected one of `name`, `path`",
            "`features`",
        ],
    );

    let text = "\
limits:
  api_rate:
    rate:
      limit: 5
      per: 1m
      brust: 3
";
    assert_only(
        &errors(text),
        FILE,
        (6, 7),
        &[
            "limits.api_rate.rate.brust: unknown field `brust`",
            "`burst`",
        ],
    );

    assert_only(
        &errors("route:\n  - path: /a\n"),
        FILE,
        (1, 1),
        &["unknown field `route`", "`routes`"],
    );
}

#[test]
fn bad_patterns_are_located() {
    let cases = [
        ("/a/**/b", "`**` must be the last segment of `/a/**/b`"),
        (
            "/a/x*",
            "segment `x*` of `/a/x*`: `*`, `**` and `{name}` stand for whole segments",
        ),
        ("/a/x+y", "segment `x+y` of `/a/x+y` contains `+`"),
        ("a/b", "`a/b` must start with `/`"),
        ("/a//b", "has an empty segment"),
        ("/a/../b", "has a dot segment"),
        ("/a/{bad name}", "parameter `{bad name}`"),
        ("/a/%2F", "contains `%`"),
    ];
    for (pattern, message) in cases {
        let text = format!(
            "routes:\n  - name: ok\n    path: /ok\n  - name: bad\n    path: \"{pattern}\"\n"
        );
        let errors = errors_of(compile(&text));
        assert_only(&errors, FILE, (5, 11), &["routes[1].path: ", message]);
    }
}

#[test]
fn unknown_limit_referenced_by_a_route() {
    let text = "\
limits:
  api_rate:
    rate: {limit: 5, per: 1m}
routes:
  - path: /a
    limits: [api_rate, api_rates]
";
    assert_only(
        &errors(text),
        FILE,
        (6, 24),
        &["routes[0].limits[1]: no limit named `api_rates` (defined: api_rate)"],
    );
    assert_only(
        &errors("routes:\n  - path: /a\n    limits: [nope]\n"),
        FILE,
        (3, 14),
        &["no limit named `nope` (defined: none)"],
    );
}

#[test]
fn license_limit_without_default() {
    let text = "\
limits:
  api_rate:
    rate:
      limit: lic.limits.requests_per_minute
      per: 1m
";
    assert_only(
        &errors(text),
        FILE,
        (4, 7),
        &[
            "limits.api_rate.rate: `limit: lic.limits.requests_per_minute` needs a `default`",
            "`unlimited`",
        ],
    );
    // Seats read `lic.seats` unless told otherwise: that needs a default too.
    let text = "\
limits:
  users:
    seats:
      identity: header:x-user
      trust_header: true
";
    assert_only(
        &errors(text),
        FILE,
        (4, 7),
        &["limits.users.seats: `limit: lic.seats` needs a `default`"],
    );
}

#[test]
fn limit_with_two_kinds() {
    let text = "\
plans:
  pro: {}
limits:
  api:
    rate: {limit: 5, per: 1m}
    quota: {limit: 500, period: day}
";
    assert_only(
        &errors(text),
        FILE,
        (5, 5),
        &["limits.api: a limit is exactly one of `rate`, `quota`, `seats` or `concurrency`"],
    );
    assert_only(
        &errors("limits:\n  none: {}\n"),
        FILE,
        (2, 9),
        &["a limit is exactly one of"],
    );
}

#[test]
fn public_route_cannot_use_a_license_keyed_limit() {
    let text = "\
limits:
  per_license:
    rate: {limit: 5, per: 1m}
  per_ip:
    rate: {limit: 5, per: 1m, key: client_ip}
routes:
  - path: /docs/**
    access: public
    limits: [per_ip, per_license]
";
    assert_only(
        &errors(text),
        FILE,
        (9, 22),
        &["routes[0].limits[1]: limit `per_license` needs a license (its key or number comes from one) but the route is public"],
    );
    // A number from the license is as license-bound as a key.
    let text = "\
limits:
  by_plan:
    rate: {limit: lic.limits.rpm, default: 5, per: 1m, key: client_ip}
  by_customer:
    rate: {limit: 5, per: 1m, key: [client_ip, claim:customer]}
routes:
  - path: /docs/**
    access: public
    limits:
      - by_plan
      - by_customer
";
    let errors = errors(text);
    assert_eq!(errors.len(), 2, "{}", render(&errors));
    assert_at(
        &errors[0],
        FILE,
        (10, 9),
        &["limit `by_plan` needs a license"],
    );
    assert_at(
        &errors[1],
        FILE,
        (11, 9),
        &["limit `by_customer` needs a license"],
    );
}

#[test]
fn duplicate_route_names() {
    let text = "\
routes:
  - name: reports
    path: /reports
  - name: export
    path: /export
  - name: reports
    path: /reports/**
";
    assert_only(
        &errors(text),
        FILE,
        (6, 11),
        &["routes[2].name: route name `reports` is already used by routes[0]"],
    );
    let errors = errors_of(compile_files(&[
        ("a.yaml", "routes:\n  - name: reports\n    path: /a\n"),
        (
            "b.yaml",
            "routes:\n  - path: /c\n  - name: reports\n    path: /b\n",
        ),
    ]));
    assert_only(
        &errors,
        "b.yaml",
        (3, 11),
        &["route name `reports` is already used by routes[0] of file #1"],
    );
    // Routes without a name are named after their methods and path, which
    // may repeat: that is not an error.
    clean(
        "routes:\n  - path: /a\n    host: a.example.com\n  - path: /a\n    host: b.example.com\n",
    );
}

#[test]
fn duplicate_plan_and_limit_across_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("10-plans.yaml"),
        "plans:\n  pro:\n    features: [reports]\nlimits:\n  api_rate:\n    rate: {limit: 5, per: 1m}\nroutes:\n  - path: /a\n    limits: [api_rate]\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("20-more.yml"),
        "plans:\n  enterprise: {}\n  pro:\n    features: [export]\nlimits:\n  api_rate:\n    quota: {limit: 5, period: day}\n",
    )
    .unwrap();
    let errors = errors_of(Policy::load(&[dir.path().to_owned()]));
    let second = dir.path().join("20-more.yml");
    let second = second.to_str().unwrap();
    assert_eq!(errors.len(), 2, "{}", render(&errors));
    assert_at(
        &errors[0],
        second,
        (4, 5),
        &["plans.pro: plan `pro` is already defined (file #1)"],
    );
    assert_at(
        &errors[1],
        second,
        (7, 5),
        &["limits.api_rate: limit `api_rate` is already defined in another policy file"],
    );
}

#[test]
fn bad_header_name() {
    let text = "\
routes:
  - path: /a
    headers:
      x-ok: yes
      \"x tier\": gold
";
    assert_only(
        &errors(text),
        FILE,
        (4, 7),
        &["routes[0].headers: `x tier` is not a header name"],
    );
    let text = "\
limits:
  per_user:
    rate: {limit: 5, per: 1m, key: \"header:x user\"}
";
    assert_only(
        &errors(text),
        FILE,
        (3, 36),
        &["limits.per_user.rate.key: `x user` is not a header name"],
    );
}

#[test]
fn bad_keys() {
    let text = "\
limits:
  per_thing:
    rate:
      limit: 5
      per: 1m
      key: claim:nope
";
    assert_only(
        &errors(text),
        FILE,
        (6, 12),
        &["limits.per_thing.rate.key: `claim:nope`: the claims a key can use are sub, plan, customer and iss"],
    );
    let text = "\
limits:
  per_thing:
    quota:
      limit: 5
      period: day
      key: [license, tenant]
";
    assert_only(
        &errors(text),
        FILE,
        (6, 12),
        &["`tenant`: expected `license`, `user`, `claim:NAME`, `header:NAME`, `client_ip` or `route`"],
    );
}

#[test]
fn quota_with_both_period_and_rolling() {
    let text = "\
limits:
  daily:
    quota:
      limit: 1000
      period: day
      rolling: 24h
";
    assert_only(
        &errors(text),
        FILE,
        (4, 7),
        &["limits.daily.quota: a quota has exactly one of `period` (hour, day, month) or `rolling` (a duration)"],
    );
    // Neither is the same mistake.
    assert_only(
        &errors("limits:\n  daily:\n    quota: {limit: 1000}\n"),
        FILE,
        (3, 12),
        &["a quota has exactly one of `period`"],
    );
    assert_only(
        &errors("limits:\n  daily:\n    quota: {limit: 1000, period: week}\n"),
        FILE,
        (3, 34),
        &["limits.daily.quota.period: unknown variant `week`", "`day`"],
    );
}

/// Every other check, one per line: the text, where, and what it says.
#[test]
fn other_errors_are_located() {
    let cases: &[(&str, (usize, usize), &str)] = &[
        (
            "limits:\n  r:\n    rate: {limit: 5, per: 1m, burst: 0}\n",
            (3, 38),
            "limits.r.rate.burst: must be at least 1",
        ),
        (
            "limits:\n  r:\n    rate: {limit: 5, per: 0s}\n",
            (3, 27),
            "limits.r.rate.per: must be longer than zero",
        ),
        (
            "limits:\n  q:\n    quota: {limit: 5, rolling: 0s}\n",
            (3, 32),
            "limits.q.quota.rolling: must be longer than zero",
        ),
        (
            "limits:\n  r:\n    rate: {limit: 5, default: 3, per: 1m}\n",
            (3, 31),
            "limits.r.rate.default: only used with `limit: lic.…`",
        ),
        (
            "limits:\n  r:\n    rate: {limit: lic.rpm, default: 1, per: 1m}\n",
            (3, 19),
            "limits.r.rate.limit: `lic.rpm`: expected a whole number, or `lic.limits.NAME`",
        ),
        (
            "limits:\n  r:\n    rate: {limit: \"lic.limits.a b\", default: 1, per: 1m}\n",
            (3, 19),
            "limits.r.rate.limit: `a b` is not a limit name",
        ),
        (
            "limits:\n  r:\n    rate: {limit: 5, per: 1m, key: []}\n",
            (3, 36),
            "limits.r.rate.key: an empty key list; leave `key` out for `license`",
        ),
        (
            "limits:\n  \"api rate\":\n    rate: {limit: 5, per: 1m}\n",
            (3, 5),
            "limits.api rate: limit names use letters, digits, `_`, `-` and `.`",
        ),
        (
            "limits:\n  s:\n    seats: {identity: route, default: 3}\n",
            (3, 23),
            "limits.s.seats.identity: `route` does not identify a user",
        ),
        (
            "limits:\n  s:\n    seats: {identity: header:x-user, default: 3, idle: 0s}\n",
            (3, 56),
            "limits.s.seats.idle: must be longer than zero",
        ),
        (
            "limits:\n  c:\n    concurrency: {limit: 2}\nroutes:\n  - path: /a\n    limits: [{limit: c, cost: 2}]\n",
            (6, 14),
            "routes[0].limits[0]: `cost` applies to rates and quotas, not concurrency",
        ),
        (
            "limits:\n  r:\n    rate: {limit: 2, per: 1s}\nroutes:\n  - path: /a\n    limits: [{limit: r, cost: 0}]\n",
            (6, 14),
            "routes[0].limits[0]: `cost` must be at least 1",
        ),
        (
            "routes:\n  - path: /a\n    methods: []\n",
            (3, 14),
            "routes[0].methods: an empty list; leave it out for any method",
        ),
        (
            "routes:\n  - path: /a\n    methods: [GET, \"BAD METHOD\"]\n",
            (3, 20),
            "routes[0].methods[1]: `BAD METHOD` is not an HTTP method",
        ),
        (
            "routes:\n  - path: /a\n    host: api.example.com:8443\n",
            (3, 11),
            "routes[0].host: `api.example.com:8443` is not a host name",
        ),
        (
            "routes:\n  - path: /a\n    host: \"*.\"\n",
            (3, 11),
            "routes[0].host: `*.` is not a host name",
        ),
        (
            "routes:\n  - name: \"\"\n    path: /a\n",
            (2, 11),
            "routes[0].name: an empty route name",
        ),
        (
            "routes:\n  - path: /a\n    features: [\"\"]\n",
            (3, 16),
            "routes[0].features[0]: an empty feature name",
        ),
        (
            "routes:\n  - path: /a\n    access: public\n    features: [reports]\n",
            (4, 15),
            "routes[0].features: a `public` route cannot require features",
        ),
        (
            "routes:\n  - path: /a\n    access: deny\n    features: [reports]\n",
            (4, 15),
            "routes[0].features: a `deny` route cannot require features",
        ),
        (
            "limits:\n  c:\n    concurrency: {limit: 2, key: client_ip}\nroutes:\n  - path: /a\n    access: deny\n    limits: [c]\n",
            (7, 13),
            "routes[0].limits: a `deny` route has no limits to apply",
        ),
        (
            "routes:\n  - path: /a\n    access: private\n",
            (3, 13),
            "routes[0].access: unknown variant `private`",
        ),
        (
            "paths: {case: upper}\n",
            (1, 15),
            "paths.case: unknown variant `upper`",
        ),
    ];
    for (text, position, message) in cases {
        let errors = errors_of(compile(text));
        assert_only(&errors, FILE, *position, &[message]);
    }
}

#[test]
fn top_level_settings_must_agree_across_files() {
    let errors = errors_of(compile_files(&[
        (
            "a.yaml",
            "mode: shadow\nunmatched: public\npaths: {case: insensitive}\n",
        ),
        (
            "b.yaml",
            "mode: enforce\nunmatched: deny\npaths:\n  case: sensitive\n",
        ),
    ]));
    assert_eq!(errors.len(), 3, "{}", render(&errors));
    assert_at(
        &errors[0],
        "b.yaml",
        (1, 7),
        &["mode: set differently in another policy file"],
    );
    assert_at(
        &errors[1],
        "b.yaml",
        (2, 12),
        &["unmatched: set differently"],
    );
    assert_at(
        &errors[2],
        "b.yaml",
        (4, 9),
        &["paths.case: set differently"],
    );
    // The same setting twice is fine.
    compiled(compile_files(&[
        ("a.yaml", "mode: shadow\n"),
        ("b.yaml", "mode: shadow\n"),
    ]));
}

#[test]
fn every_error_is_reported_not_just_the_first() {
    let text = "\
limits:
  r:
    rate: {limit: 5, per: 0s}
routes:
  - path: /a/**/b
  - path: /c
    methods: [\"NOT A METHOD\"]
  - path: /d
    limits: [nope]
";
    let errors = errors(text);
    let positions: Vec<_> = errors.iter().map(|e| e.position).collect();
    assert_eq!(
        positions,
        vec![Some((3, 27)), Some((5, 11)), Some((7, 15)), Some((9, 14))],
        "{}",
        render(&errors)
    );
    // Parse errors in several files are all reported too.
    let errors = errors_of(compile_files(&[
        ("a.yaml", "routes: [\n"),
        ("b.yaml", "rotues: []\n"),
    ]));
    assert_eq!(errors.len(), 2, "{}", render(&errors));
    assert_eq!(errors[0].file, Path::new("a.yaml"));
    assert_at(&errors[1], "b.yaml", (1, 1), &["unknown field `rotues`"]);
}

#[test]
fn positions_stop_after_fifty_errors() {
    let mut text = String::from("routes:\n");
    for i in 0..60 {
        text.push_str(&format!("  - path: bad{i}\n"));
    }
    let errors = errors(&text);
    assert_eq!(errors.len(), 60);
    assert_eq!(errors[0].position, Some((2, 11)));
    assert_eq!(errors[49].position, Some((51, 11)));
    assert_eq!(errors[50].position, None);
    assert!(errors[59].message.starts_with("routes[59].path: "));
    assert_eq!(
        errors[59].to_string(),
        format!("{FILE}: routes[59].path: `bad59` must start with `/`")
    );
}

// ---------------------------------------------------------------------------
// Loading files and directories
// ---------------------------------------------------------------------------

#[test]
fn a_directory_loads_its_yaml_files_in_name_order() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    write(
        "20-routes.yml",
        "routes:\n  - name: second\n    path: /x\n    headers: {x-b: {present: true}}\n",
    );
    write(
        "10-routes.yaml",
        "routes:\n  - name: first\n    path: /x\n    headers: {x-a: {present: true}}\n",
    );
    write(".hidden.yaml", "this is: [not valid\n");
    write("README.txt", "not a policy\n");
    let policy = Policy::load(&[dir.path().to_owned()]).unwrap();
    assert_eq!(
        policy.sources,
        vec![
            dir.path().join("10-routes.yaml"),
            dir.path().join("20-routes.yml")
        ]
    );
    // File order breaks the tie between equally specific routes.
    let both = headers(&[("x-a", "1"), ("x-b", "1")]);
    assert_eq!(
        route_name(&policy, Method::GET, None, "/x", &both).as_deref(),
        Some("first")
    );
    assert_eq!(route(&policy, "second").origin, (1, 0));
}

#[test]
fn unreadable_paths_and_empty_directories_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let errors = errors_of(Policy::load(&[dir.path().to_owned()]));
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].position, None);
    assert_eq!(
        errors[0].message,
        "directory has no *.yaml or *.yml policy files"
    );
    let missing = dir.path().join("missing.yaml");
    let errors = errors_of(Policy::load(std::slice::from_ref(&missing)));
    assert_eq!(errors[0].file, missing);
    assert!(
        errors[0].message.starts_with("cannot read policy: "),
        "{}",
        errors[0]
    );
}

#[test]
fn an_empty_policy_denies_everything() {
    let policy = clean("");
    assert!(policy.routes.is_empty());
    assert_eq!(policy.unmatched, Access::Deny);
    assert!(!policy.needs_license);
    let policy = clean("# only a comment\n");
    assert_eq!(get(&policy, "/"), None);
}

// ---------------------------------------------------------------------------
// Warnings, located
// ---------------------------------------------------------------------------

#[test]
fn shadowed_route_warns() {
    let text = "\
routes:
  - name: item
    path: /items/{id}
    methods: [GET, POST]
    headers: {x-tier: gold}
  - name: item-get
    path: /items/*
    methods: [get]
    headers: {x-tier: gold}
";
    let policy = compiled(compile(text));
    assert_only(
        &policy.warnings,
        FILE,
        (6, 5),
        &["routes[1]: route `item-get` can never match: route `item` (routes[0]) matches the same requests first"],
    );
    // `/items/` is `/items`: the trailing slash makes no new route.
    assert_only(
        &warnings("routes:\n  - name: a\n    path: /items\n  - name: b\n    path: /items/\n"),
        FILE,
        (4, 5),
        &["route `b` can never match: route `a`"],
    );
}

#[test]
fn routes_that_differ_in_conditions_do_not_warn() {
    clean(
        "\
routes:
  - path: /items/{id}
    methods: [GET]
  - path: /items/{id}
    methods: [POST]
  - path: /items/{id}
    headers: {x-tier: gold}
  - path: /items/{id}
    headers: {x-tier: silver}
  - path: /items/{id}
  - path: /items/{id}/**
",
    );
    // A route with more conditions wins over a broader one: the broader one
    // still serves everything else.
    clean("routes:\n  - path: /a\n  - path: /a\n    methods: [GET]\n");
}

#[test]
fn shadowed_route_in_a_later_file_warns_there() {
    let policy = compiled(compile_files(&[
        ("a.yaml", "routes:\n  - name: a\n    path: /x/**\n"),
        (
            "b.yaml",
            "routes:\n  - path: /y\n  - name: b\n    path: /x/**\n",
        ),
    ]));
    assert_only(
        &policy.warnings,
        "b.yaml",
        (3, 5),
        &["routes[1]: route `b` can never match: route `a` (routes[0])"],
    );
}

#[test]
fn feature_in_no_plan_warns() {
    let text = "\
plans:
  pro:
    features: [reports]
routes:
  - path: /reports
    features: [reports, export]
";
    assert_only(
        &warnings(text),
        FILE,
        (6, 25),
        &["routes[0].features[1]: feature `export` is in no plan; only licenses that list it themselves pass"],
    );
    // Without plans, every feature comes from licenses: nothing to warn about.
    clean("routes:\n  - path: /reports\n    features: [reports, export]\n");
}

#[test]
fn license_limit_no_plan_sets_warns() {
    let text = "\
plans:
  pro:
    features: [reports]
limits:
  api_rate:
    rate: {limit: lic.limits.requests_per_minute, default: 60, per: 1m}
routes:
  - path: /a
    limits: [api_rate]
";
    assert_only(
        &warnings(text),
        FILE,
        (6, 5),
        &["limits.api_rate: `lic.limits.requests_per_minute` is set by no plan; licenses without it get the default"],
    );
}

#[test]
fn plan_limit_no_limit_reads_warns() {
    let text = "\
plans:
  pro:
    limits:
      requests_per_minute: 600
      requests_per_minit: 600
limits:
  api_rate:
    rate: {limit: lic.limits.requests_per_minute, default: 60, per: 1m}
routes:
  - path: /a
    limits: [api_rate]
";
    assert_only(
        &warnings(text),
        FILE,
        (5, 27),
        &["plans.pro.limits.requests_per_minit: no limit reads `lic.limits.requests_per_minit`"],
    );
}

#[test]
fn unused_limit_warns() {
    let text = "\
limits:
  used:
    rate: {limit: 5, per: 1m}
  unused:
    concurrency: {limit: 5}
routes:
  - path: /a
    limits: [used]
";
    assert_only(
        &warnings(text),
        FILE,
        (5, 5),
        &["limits.unused: limit `unused` is used by no route"],
    );
}

#[test]
fn warnings_do_not_stop_a_policy_from_compiling() {
    let text = "\
plans:
  pro:
    features: [reports]
limits:
  unused:
    concurrency: {limit: 5}
routes:
  - path: /a
    features: [export]
  - path: /a
";
    let policy = compiled(compile(text));
    let positions: Vec<_> = policy.warnings.iter().map(|w| w.position).collect();
    // In file order, whatever check found them.
    assert_eq!(
        positions,
        vec![Some((6, 5)), Some((9, 16)), Some((10, 5))],
        "{}",
        render(&policy.warnings)
    );
    assert_eq!(policy.routes.len(), 2);
}

// ---------------------------------------------------------------------------
// Matching through Policy::find
// ---------------------------------------------------------------------------

/// A policy shaped like a real API, every precedence rule exercised.
const API: &str = "\
plans:
  basic:
    features: [read]
  pro:
    features: [read, reports]
limits:
  api_rate:
    rate: {limit: 100, per: 1m}
routes:
  - name: api
    path: /api/**
    features: [read]
    limits: [api_rate]
  - name: item
    path: /api/items/{id}
  - name: item-write
    path: /api/items/{id}
    methods: [put, DELETE]
  - name: item-history
    path: /api/items/*/history
  - name: item-latest
    path: /api/items/latest
  - name: reports
    path: /api/reports/**
    features: [reports]
  - name: internal
    path: /api/internal/**
    access: deny
  - name: tenant-any
    path: /t/{tenant}/**
  - name: tenant-wildcard
    path: /t/{tenant}/**
    host: \"*.example.com\"
  - name: tenant-acme
    path: /t/{tenant}/**
    host: ACME.example.com
  - name: v-none
    path: /v
  - name: v-one
    path: /v
    headers: {x-version: \"2\"}
  - name: v-two
    path: /v
    headers: {x-version: \"2\", x-beta: {present: true}}
  - name: v-prefix
    path: /v
    headers: {X-Client: {prefix: sdk-}}
  - name: order-first
    path: /order
    headers: {x-a: {present: true}}
  - name: order-second
    path: /order
    headers: {x-b: {present: true}}
  - name: no-legacy
    path: /legacy
    headers: {x-legacy: {present: false}}
  - name: cafe
    path: /café
  - name: root
    path: /
    access: public
";

/// [`API`], compiled: its only warnings say that the host-scoped tenant
/// routes decide for their hosts.
#[track_caller]
fn api() -> Policy {
    let p = compiled(compile(API));
    let warned: Vec<&str> = p
        .warnings
        .iter()
        .map(|w| {
            assert!(w.message.contains("overlaps host-scoped routes"), "{w}");
            w.message.split('`').nth(1).unwrap()
        })
        .collect();
    assert_eq!(
        warned,
        ["tenant-any", "tenant-wildcard"],
        "{:?}",
        p.warnings
    );
    p
}

#[test]
fn literal_beats_parameter_beats_rest() {
    let p = api();
    assert_eq!(get(&p, "/api/items/latest").as_deref(), Some("item-latest"));
    assert_eq!(get(&p, "/api/items/7").as_deref(), Some("item"));
    assert_eq!(
        get(&p, "/api/items/7/history").as_deref(),
        Some("item-history")
    );
    assert_eq!(
        get(&p, "/api/items/latest/history").as_deref(),
        Some("item-history")
    );
    // Deeper than any specific route: back to the `**` route.
    assert_eq!(get(&p, "/api/items/7/other").as_deref(), Some("api"));
    assert_eq!(get(&p, "/api/items").as_deref(), Some("api"));
    // `**` matches an empty suffix too.
    assert_eq!(get(&p, "/api").as_deref(), Some("api"));
    assert_eq!(get(&p, "/api/reports/2026/q3").as_deref(), Some("reports"));
    assert_eq!(get(&p, "/api/reports").as_deref(), Some("reports"));
    assert_eq!(
        get(&p, "/api/internal/metrics").as_deref(),
        Some("internal")
    );
    assert_eq!(route(&p, "internal").access, Access::Deny);
    assert_eq!(get(&p, "/").as_deref(), Some("root"));
    // Nothing matches: the policy's `unmatched` applies.
    assert_eq!(get(&p, "/apix"), None);
    assert_eq!(get(&p, "/other/path"), None);
}

#[test]
fn methods_beat_no_methods_on_the_same_path_only() {
    let p = api();
    let find = |method: Method, path: &str| route_name(&p, method, None, path, &no_headers());
    // Written `put`: methods are upper-cased.
    assert_eq!(
        find(Method::PUT, "/api/items/7").as_deref(),
        Some("item-write")
    );
    assert_eq!(
        find(Method::DELETE, "/api/items/7").as_deref(),
        Some("item-write")
    );
    assert_eq!(find(Method::POST, "/api/items/7").as_deref(), Some("item"));
    // The path comes first: a literal route without methods beats a
    // parameter route with them.
    assert_eq!(
        find(Method::DELETE, "/api/items/latest").as_deref(),
        Some("item-latest")
    );
    assert_eq!(
        route(&p, "item-write").methods,
        Some(vec![Method::PUT, Method::DELETE])
    );
}

#[test]
fn exact_host_beats_wildcard_beats_none() {
    let p = api();
    let at =
        |host: Option<&str>| route_name(&p, Method::GET, host, "/t/acme/files/1", &no_headers());
    assert_eq!(at(Some("acme.example.com")).as_deref(), Some("tenant-acme"));
    // Host names compare without case.
    assert_eq!(at(Some("Acme.Example.COM")).as_deref(), Some("tenant-acme"));
    assert_eq!(
        at(Some("globex.example.com")).as_deref(),
        Some("tenant-wildcard")
    );
    assert_eq!(
        at(Some("a.b.example.com")).as_deref(),
        Some("tenant-wildcard")
    );
    // `*.example.com` is subdomains only.
    assert_eq!(at(Some("example.com")).as_deref(), Some("tenant-any"));
    assert_eq!(at(Some("evilexample.com")).as_deref(), Some("tenant-any"));
    assert_eq!(at(None).as_deref(), Some("tenant-any"));
    assert_eq!(
        route(&p, "tenant-acme").host,
        Some(compile::HostMatch::Exact("acme.example.com".into()))
    );
}

/// The example: a deny written for a host must cover the host.
const HOSTS: &str = "\
routes:
  - name: internal
    host: internal.example.com
    path: /**
    access: deny
  - name: reports
    path: /v1/reports/**
  - name: tenants
    host: \"*.example.com\"
    path: /v1/**
  - name: eu-tenants
    host: \"*.eu.example.com\"
    path: /v1/{x}/**
  - name: acme-admin
    host: acme.example.com
    path: /admin/**
  - name: acme-posts
    host: acme.example.com
    path: /v1/reports/**
    methods: [POST]
";

#[test]
fn the_host_group_decides_before_the_path() {
    let p = compiled(compile(HOSTS));
    let at = |method: Method, host: Option<&str>, path: &str| {
        route_name(&p, method, host, path, &no_headers())
    };
    let get = |host: Option<&str>, path: &str| at(Method::GET, host, path);
    // A longer host-less path does not beat the host's own `/**`.
    assert_eq!(
        get(Some("internal.example.com"), "/v1/reports/q3").as_deref(),
        Some("internal")
    );
    assert_eq!(
        get(Some("Internal.Example.COM"), "/v1/reports/q3").as_deref(),
        Some("internal")
    );
    // Other hosts, or none: the host-less route still serves.
    assert_eq!(
        get(Some("app.test"), "/v1/reports/q3").as_deref(),
        Some("reports")
    );
    assert_eq!(get(None, "/v1/reports/q3").as_deref(), Some("reports"));
    // Wildcard hosts before host-less routes, a longer suffix first.
    assert_eq!(
        get(Some("globex.example.com"), "/v1/reports/q3").as_deref(),
        Some("tenants")
    );
    assert_eq!(
        get(Some("globex.eu.example.com"), "/v1/reports/q3").as_deref(),
        Some("eu-tenants")
    );
    // The longer wildcard's route does not take `/v1`: the shorter one does.
    assert_eq!(
        get(Some("globex.eu.example.com"), "/v1").as_deref(),
        Some("tenants")
    );
    // A host group no route of which takes the request falls through: to
    // the wildcard group, then to host-less routes.
    assert_eq!(
        get(Some("acme.example.com"), "/admin/users").as_deref(),
        Some("acme-admin")
    );
    assert_eq!(
        get(Some("acme.example.com"), "/v1/reports/q3").as_deref(),
        Some("tenants")
    );
    assert_eq!(
        at(Method::POST, Some("acme.example.com"), "/v1/reports/q3").as_deref(),
        Some("acme-posts")
    );
    assert_eq!(get(Some("acme.example.com"), "/other"), None);
    assert_eq!(get(Some("example.com"), "/v1/x").as_deref(), None);
}

#[test]
fn overlaps_with_host_scoped_routes_are_warned_at_the_less_specific_route() {
    let warnings = compiled(compile(HOSTS)).warnings;
    // `eu-tenants` covers none of the other scoped routes' hosts: no warning.
    assert_eq!(warnings.len(), 2, "{}", render(&warnings));
    // `reports` (line 6) loses internal's host, the wildcards' hosts and
    // acme's POSTs.
    assert_at(
        &warnings[0],
        FILE,
        (6, 5),
        &[
            "route `reports` overlaps host-scoped routes",
            "for host `internal.example.com` route `internal` (routes[0])",
            "for host `*.example.com` route `tenants` (routes[2])",
            "for host `*.eu.example.com` route `eu-tenants` (routes[3])",
            "1 more host(s)",
            "tried before host-less routes",
        ],
    );
    // `tenants` (line 8) loses the hosts with their own routes there.
    assert_at(
        &warnings[1],
        FILE,
        (8, 5),
        &[
            "route `tenants` overlaps",
            "for host `internal.example.com` route `internal`",
            "for host `*.eu.example.com` route `eu-tenants`",
            "for host `acme.example.com` route `acme-posts`",
            "tried before wildcard-host routes",
        ],
    );

    // No overlap, no warning: other paths, other methods, hosts the
    // wildcard does not cover.
    clean(
        "\
routes:
  - {path: /public/**}
  - {path: \"/api/items/{id}\", methods: [GET]}
  - {path: /api/items/latest, methods: [POST], host: api.example.com}
  - {path: /admin/**, host: api.example.com}
  - {path: /v1/**, host: \"*.example.com\"}
  - {path: /v1/**, host: other.test}
",
    );
    // A literal overlaps a parameter, `**` anything from where it stands.
    assert_eq!(
        warnings_of("{path: '/a/{id}/b'}", "{path: /a/x/b, host: h.test}"),
        1
    );
    assert_eq!(
        warnings_of("{path: '/a/{id}'}", "{path: /a/x/b, host: h.test}"),
        0
    );
    assert_eq!(warnings_of("{path: /a}", "{path: /a/**, host: h.test}"), 1);
    assert_eq!(
        warnings_of("{path: /a/b/c/**}", "{path: /a/*, host: h.test}"),
        0
    );
    assert_eq!(
        warnings_of("{path: /a/b/c/**}", "{path: /a/**, host: h.test}"),
        1
    );
    assert_eq!(
        warnings_of(
            "{path: /a, methods: [GET, PUT]}",
            "{path: /a, methods: [put], host: h.test}"
        ),
        1
    );
}

/// How many warnings a host-less route and a host-scoped one draw.
fn warnings_of(host_less: &str, scoped: &str) -> usize {
    warnings(&format!("routes:\n  - {host_less}\n  - {scoped}\n")).len()
}

#[test]
fn a_route_is_shadowed_only_by_a_route_of_its_own_host_group() {
    let w = warnings(
        "\
routes:
  - {name: any, path: /a}
  - {name: first, path: /a, host: h.test}
  - {name: second, path: /a, host: h.test}
  - {name: other-host, path: /a, host: i.test}
",
    );
    let shadowed: Vec<&Diagnostic> = w
        .iter()
        .filter(|d| d.message.contains("can never match"))
        .collect();
    assert_eq!(shadowed.len(), 1, "{}", render(&w));
    assert_at(
        shadowed[0],
        FILE,
        (4, 5),
        &["route `second` can never match: route `first` (routes[1])"],
    );
}

#[test]
fn more_header_conditions_beat_fewer() {
    let p = api();
    let with = |pairs: &[(&str, &str)]| route_name(&p, Method::GET, None, "/v", &headers(pairs));
    assert_eq!(with(&[]).as_deref(), Some("v-none"));
    assert_eq!(with(&[("x-version", "2")]).as_deref(), Some("v-one"));
    assert_eq!(
        with(&[("x-version", "2"), ("x-beta", "")]).as_deref(),
        Some("v-two")
    );
    // Values compare exactly.
    assert_eq!(
        with(&[("x-version", "2.0"), ("x-beta", "1")]).as_deref(),
        Some("v-none")
    );
    // Any of a repeated header may satisfy a condition.
    assert_eq!(
        with(&[("x-version", "1"), ("x-version", "2")]).as_deref(),
        Some("v-one")
    );
    // Header names in the policy are case-insensitive, prefixes are not.
    assert_eq!(
        with(&[("x-client", "sdk-go/1.2")]).as_deref(),
        Some("v-prefix")
    );
    assert_eq!(with(&[("x-client", "SDK-go")]).as_deref(), Some("v-none"));
    // `present: false` requires the header to be absent.
    let legacy =
        |pairs: &[(&str, &str)]| route_name(&p, Method::GET, None, "/legacy", &headers(pairs));
    assert_eq!(legacy(&[]).as_deref(), Some("no-legacy"));
    assert_eq!(legacy(&[("x-legacy", "1")]), None);
}

#[test]
fn file_order_breaks_ties() {
    let p = api();
    let with =
        |pairs: &[(&str, &str)]| route_name(&p, Method::GET, None, "/order", &headers(pairs));
    assert_eq!(
        with(&[("x-a", "1"), ("x-b", "1")]).as_deref(),
        Some("order-first")
    );
    assert_eq!(with(&[("x-b", "1")]).as_deref(), Some("order-second"));
    // Same header condition count: x-version=2 with an sdk- client picks the
    // earlier of `v-one` and `v-prefix`.
    assert_eq!(
        route_name(
            &p,
            Method::GET,
            None,
            "/v",
            &headers(&[("x-client", "sdk-go"), ("x-version", "2")])
        )
        .as_deref(),
        Some("v-one")
    );

    // Across files: the order the files are given in.
    let a = "routes:\n  - name: from-a\n    path: /dup\n    headers: {x-a: {present: true}}\n";
    let b = "routes:\n  - name: from-b\n    path: /dup\n    headers: {x-b: {present: true}}\n";
    let both = headers(&[("x-a", "1"), ("x-b", "1")]);
    let ab = compiled(compile_files(&[("a.yaml", a), ("b.yaml", b)]));
    let ba = compiled(compile_files(&[("b.yaml", b), ("a.yaml", a)]));
    assert_eq!(
        route_name(&ab, Method::GET, None, "/dup", &both).as_deref(),
        Some("from-a")
    );
    assert_eq!(
        route_name(&ba, Method::GET, None, "/dup", &both).as_deref(),
        Some("from-b")
    );
}

#[test]
fn trailing_slash_does_not_change_the_route() {
    let p = api();
    assert_eq!(
        get(&p, "/api/items/latest/").as_deref(),
        Some("item-latest")
    );
    assert_eq!(get(&p, "/api/items/7/").as_deref(), Some("item"));
    assert_eq!(get(&p, "/api/").as_deref(), Some("api"));
    assert_eq!(get(&p, "/v/").as_deref(), Some("v-none"));
}

#[test]
fn paths_are_case_sensitive_unless_the_policy_says_otherwise() {
    let p = api();
    assert_eq!(get(&p, "/API/items/7"), None);
    assert_eq!(get(&p, "/api/Items/latest").as_deref(), Some("api"));
    assert!(!p.case_insensitive);

    let p = clean(
        "\
paths:
  case: insensitive
routes:
  - name: export
    path: /API/Export/**
  - name: item
    path: /api/items/{id}
  - name: cafe
    path: /Café
",
    );
    assert!(p.case_insensitive);
    assert_eq!(get(&p, "/api/export/x.csv").as_deref(), Some("export"));
    assert_eq!(get(&p, "/Api/EXPORT").as_deref(), Some("export"));
    // Parameter values are not folded, only compared as segments.
    assert_eq!(get(&p, "/API/ITEMS/AbC").as_deref(), Some("item"));
    // Percent-escapes are upper case after normalisation; ASCII folding
    // still finds the route.
    assert_eq!(get(&p, "/CAF%C3%A9").as_deref(), Some("cafe"));
    assert_eq!(get(&p, "/caf%C3%A9").as_deref(), Some("cafe"));
}

#[test]
fn literal_segments_match_their_normalised_form() {
    let p = api();
    // Requests are matched after normalisation: `é` arrives as `%C3%A9`.
    assert_eq!(get(&p, "/caf%C3%A9").as_deref(), Some("cafe"));
    assert_eq!(
        route(&p, "cafe").pattern,
        vec![matcher::Segment::Literal("caf%C3%A9".into())]
    );
    let normalized = normalize::normalize("/caf%c3%a9/").unwrap();
    assert_eq!(get(&p, &normalized).as_deref(), Some("cafe"));
    let normalized = normalize::normalize("/api/items/./x/../latest").unwrap();
    assert_eq!(get(&p, &normalized).as_deref(), Some("item-latest"));
}

#[test]
fn route_defaults() {
    let p = clean(
        "\
mode: shadow
unmatched: licensed
routes:
  - path: /a
  - path: /b
    methods: [get, post]
    mode: enforce
  - name: c
    path: /c
    access: public
",
    );
    let names: Vec<&str> = p.routes.iter().map(|r| &*r.name).collect();
    assert_eq!(names, ["/a", "GET,POST /b", "c"]);
    assert_eq!(p.mode, Mode::Shadow);
    assert_eq!(p.routes[0].mode, Mode::Shadow, "inherits the policy's mode");
    assert_eq!(p.routes[1].mode, Mode::Enforce);
    assert_eq!(p.routes[0].access, Access::Licensed);
    assert_eq!(p.routes[2].access, Access::Public);
    assert!(p.needs_license);
    assert_eq!(p.unmatched, Access::Licensed);

    // Only public and denied routes, unmatched denied: no license needed.
    let p = clean("routes:\n  - path: /a\n    access: public\n  - path: /b\n    access: deny\n");
    assert!(!p.needs_license);
    let p = clean("unmatched: licensed\nroutes:\n  - path: /a\n    access: public\n");
    assert!(p.needs_license);
}

#[test]
fn limits_are_evaluated_slots_rates_quotas_then_seats() {
    let p = clean(
        "\
limits:
  monthly:
    quota: {limit: 1000, period: month}
  daily:
    quota: {limit: 100, period: day}
  rate:
    rate: {limit: 10, per: 1s, burst: 20}
  users:
    seats: {limit: 5, identity: \"header:X-User\", idle: 10m, trust_header: true}
  slots:
    concurrency: {limit: 4, key: [license, route]}
routes:
  - path: /a
    limits: [monthly, rate, {limit: daily, cost: 3}, users, slots]
",
    );
    let a = &p.routes[0];
    let order: Vec<(&str, u64)> = a
        .limits
        .iter()
        .map(|u| (&*p.limits[u.limit].name, u.cost))
        .collect();
    // Quotas keep the order they were written in. Seats come last: a seat
    // taken cannot be given back when a later limit refuses.
    assert_eq!(
        order,
        [
            ("slots", 1),
            ("rate", 1),
            ("monthly", 1),
            ("daily", 3),
            ("users", 1)
        ]
    );
    let def = |name: &str| &p.limits[limit_index(&p, name)];
    assert_eq!(
        def("rate").kind,
        LimitKind::Rate {
            window: Duration::from_secs(1),
            burst: Some(20)
        }
    );
    assert_eq!(
        def("users").kind,
        LimitKind::Seats {
            identity: KeyPart::Header(HeaderName::from_static("x-user")),
            idle: Duration::from_secs(600)
        }
    );
    assert_eq!(def("users").amount, Amount::Fixed(5));
    assert!(def("users").needs_license, "counted per license by default");
    assert_eq!(def("slots").key, vec![KeyPart::License, KeyPart::Route]);
    assert_eq!(
        def("monthly").kind,
        LimitKind::Quota {
            period: Period::Month
        }
    );
}

#[test]
fn limit_defaults_and_what_needs_a_license() {
    let p = clean(
        "\
limits:
  by_license:
    rate: {limit: 5, per: 1m}
  by_ip:
    rate: {limit: 5, per: 1m, key: client_ip}
  by_plan_number:
    quota: {limit: lic.limits.calls, default: unlimited, rolling: 7d, key: client_ip}
  by_customer:
    concurrency: {limit: 2, key: [claim:customer, claim:plan, claim:sub, claim:iss]}
  by_header:
    seats: {limit: 3, identity: client_ip, key: header:x-tenant}
  seat_identity_claim:
    seats: {limit: 3, identity: claim:sub, key: route}
routes:
  - path: /a
    limits: [by_license, by_ip, by_plan_number, by_customer, by_header, seat_identity_claim]
",
    );
    let def = |name: &str| &p.limits[limit_index(&p, name)];
    assert_eq!(def("by_license").key, vec![KeyPart::License]);
    assert!(def("by_license").needs_license);
    assert!(!def("by_ip").needs_license);
    assert!(def("by_plan_number").needs_license);
    assert_eq!(
        def("by_plan_number").amount,
        Amount::License {
            source: LicenseAmount::Limit("calls".into()),
            default: None
        }
    );
    assert_eq!(
        def("by_plan_number").kind,
        LimitKind::Quota {
            period: Period::Rolling(Duration::from_secs(7 * 86_400))
        }
    );
    assert_eq!(
        def("by_customer").key,
        vec![
            KeyPart::Claim(Claim::Customer),
            KeyPart::Claim(Claim::Plan),
            KeyPart::Claim(Claim::Sub),
            KeyPart::Claim(Claim::Issuer)
        ]
    );
    assert!(def("by_customer").needs_license);
    assert!(!def("by_header").needs_license);
    assert!(
        def("seat_identity_claim").needs_license,
        "the seat holder comes from the license"
    );
    // Seats default to 30 minutes idle.
    assert!(matches!(
        def("seat_identity_claim").kind,
        LimitKind::Seats { idle, .. } if idle == Duration::from_secs(1800)
    ));
}

// ---------------------------------------------------------------------------
// Entitlements: license over plan over default
// ---------------------------------------------------------------------------

fn claims(
    plan: &str,
    features: &[&str],
    limits: &[(&str, u64)],
    seats: Option<u32>,
) -> LicenseClaims {
    LicenseClaims {
        plan: plan.to_owned(),
        features: features.iter().map(|f| (*f).to_owned()).collect(),
        limits: limits
            .iter()
            .map(|(name, n)| ((*name).to_owned(), *n))
            .collect::<BTreeMap<_, _>>(),
        seats,
        ..LicenseClaims::default()
    }
}

const PLANS: &str = "\
plans:
  basic:
    features: [read]
    limits:
      rpm: 60
  pro:
    features: [read, reports]
    limits:
      rpm: 600
      exports_per_day: 10
    seats: 20
  enterprise:
    features: [read, reports, export]
limits:
  rate_rpm:
    rate: {limit: lic.limits.rpm, default: 30, per: 1m}
  exports:
    quota: {limit: lic.limits.exports_per_day, default: unlimited, period: day}
  slots:
    concurrency: {limit: 4}
  users:
    seats: {identity: header:x-user, default: 3, trust_header: true}
routes:
  - path: /read
    features: [read]
    limits: [rate_rpm, slots, users]
  - path: /reports
    features: [reports]
    limits: [exports]
  - path: /export
    features: [export]
  - path: /both
    features: [reports, export]
";

/// Whether `entitlement` has every feature the route at `path` requires.
fn may(policy: &Policy, entitlement: &Entitlement, path: &str) -> bool {
    let route = policy
        .find(&Method::GET, None, path, &no_headers())
        .unwrap();
    entitlement
        .features
        .first_missing(&route.features)
        .is_none()
}

#[test]
fn features_are_the_license_and_its_plan_together() {
    let p = clean(PLANS);
    let basic = p.entitle(&claims("basic", &[], &[], None));
    assert!(may(&p, &basic, "/read"));
    assert!(!may(&p, &basic, "/reports"));
    assert!(!may(&p, &basic, "/export"));

    // A license adds features on top of its plan.
    let pro_plus = p.entitle(&claims("pro", &["export"], &[], None));
    assert!(may(&p, &pro_plus, "/read"));
    assert!(may(&p, &pro_plus, "/reports"));
    assert!(may(&p, &pro_plus, "/export"));
    assert!(may(&p, &pro_plus, "/both"));

    // A plan the policy does not know: the license's own features only.
    let unknown = p.entitle(&claims("gold", &["reports"], &[], None));
    assert!(!may(&p, &unknown, "/read"));
    assert!(may(&p, &unknown, "/reports"));

    // The first missing feature names what the denial reports.
    let both = p.find(&Method::GET, None, "/both", &no_headers()).unwrap();
    let missing = basic.features.first_missing(&both.features).unwrap();
    assert_eq!(p.features[missing], "reports");
    let pro = p.entitle(&claims("pro", &[], &[], None));
    let missing = pro.features.first_missing(&both.features).unwrap();
    assert_eq!(p.features[missing], "export");
    // A route without features: anyone licensed.
    assert!(both.features.first_missing(&NameSet::default()).is_none());
}

#[test]
fn amounts_are_license_over_plan_over_default() {
    let p = clean(PLANS);
    let rpm = limit_index(&p, "rate_rpm");
    let exports = limit_index(&p, "exports");
    let slots = limit_index(&p, "slots");
    let users = limit_index(&p, "users");

    let basic = p.entitle(&claims("basic", &[], &[], None));
    assert_eq!(basic.amounts[rpm], Some(60), "the plan's number");
    assert_eq!(
        basic.amounts[exports], None,
        "not in the plan: default `unlimited`"
    );
    assert_eq!(
        basic.amounts[slots],
        Some(4),
        "a fixed number is the same for everyone"
    );
    assert_eq!(
        basic.amounts[users],
        Some(3),
        "no seats anywhere: the default"
    );

    let pro = p.entitle(&claims("pro", &[], &[], None));
    assert_eq!(pro.amounts[rpm], Some(600));
    assert_eq!(pro.amounts[exports], Some(10));
    assert_eq!(pro.amounts[users], Some(20), "the plan's seats");

    // The license's own numbers win, zero included.
    let custom = p.entitle(&claims(
        "pro",
        &[],
        &[("rpm", 1000), ("exports_per_day", 0), ("unrelated", 5)],
        Some(7),
    ));
    assert_eq!(custom.amounts[rpm], Some(1000));
    assert_eq!(custom.amounts[exports], Some(0));
    assert_eq!(custom.amounts[users], Some(7));
    assert_eq!(custom.amounts[slots], Some(4));

    // Enterprise sets no rpm: the limit's default.
    let enterprise = p.entitle(&claims("enterprise", &[], &[], None));
    assert_eq!(enterprise.amounts[rpm], Some(30));

    // A plan the policy does not know: the license's numbers, else defaults.
    let unknown = p.entitle(&claims("gold", &[], &[("exports_per_day", 3)], None));
    assert_eq!(unknown.amounts[rpm], Some(30));
    assert_eq!(unknown.amounts[exports], Some(3));
    assert_eq!(unknown.amounts[users], Some(3));
    assert_eq!(unknown.amounts.len(), p.limits.len());
}

// ---------------------------------------------------------------------------
// A large policy
// ---------------------------------------------------------------------------

#[test]
fn ten_thousand_routes_compile_and_match() {
    const ROUTES: usize = 10_000;
    let mut text = String::from(
        "plans:\n  all:\n    features: [f0, f1, f2, f3, f4, f5, f6]\nlimits:\n  per_service:\n    rate: {limit: 100, per: 1s, key: [license, route]}\nroutes:\n  - name: fallback\n    path: /svc/**\n",
    );
    for i in 0..ROUTES {
        text.push_str(&format!(
            "  - name: r{i}\n    path: /svc/s{i}/v1/{{id}}\n    features: [f{}]\n",
            i % 7
        ));
        if i % 5 == 0 {
            text.push_str("    methods: [GET]\n");
        }
        if i % 3 == 0 {
            text.push_str("    limits: [per_service]\n");
        }
    }
    let policy = compiled(compile(&text));
    assert!(policy.warnings.is_empty(), "{}", render(&policy.warnings));
    assert_eq!(policy.routes.len(), ROUTES + 1);
    assert_eq!(policy.features.len(), 7);
    assert!(policy.trie_nodes() > 2 * ROUTES);
    for i in 0..ROUTES {
        let path = format!("/svc/s{i}/v1/{}", i * 7);
        let name = format!("r{i}");
        assert_eq!(get(&policy, &path).as_deref(), Some(name.as_str()));
        let post = route_name(&policy, Method::POST, None, &path, &no_headers());
        let expected = if i % 5 == 0 {
            "fallback"
        } else {
            name.as_str()
        };
        assert_eq!(post.as_deref(), Some(expected));
        assert_eq!(
            get(&policy, &format!("/svc/s{i}/v2/x")).as_deref(),
            Some("fallback")
        );
    }
    assert_eq!(
        get(&policy, "/svc/s10000/v1/1").as_deref(),
        Some("fallback")
    );
    assert_eq!(get(&policy, "/other"), None);
    assert_eq!(route(&policy, "r9999").feature_names, ["f3"]);
}

// ---------------------------------------------------------------------------
// Defects found and fixed: each test pins the behaviour that was wrong.
// ---------------------------------------------------------------------------

#[test]
fn duplicate_keys_in_one_file_are_errors() {
    let text = "\
limits:
  api_rate:
    rate: {limit: 5, per: 1m}
  api_rate:
    rate: {limit: 5000, per: 1m}
routes:
  - path: /a
    limits: [api_rate]
";
    let limit_errors = errors(text);
    assert_eq!(limit_errors.len(), 1, "{}", render(&limit_errors));
    assert_eq!(limit_errors[0].position.map(|p| p.0), Some(4));
    let text = "routes:\n  - path: /a\n    headers: {x-tier: gold, x-tier: silver}\n";
    assert_eq!(errors(text).len(), 1);
}

#[test]
fn license_seats_is_for_seat_limits_only() {
    let text = "\
limits:
  api_rate:
    rate: {limit: lic.seats, default: 5, per: 1m}
routes:
  - path: /a
    limits: [api_rate]
";
    let errors = errors(text);
    assert_only(
        &errors,
        FILE,
        (3, 19),
        &["`lic.seats`: expected a whole number, or `lic.limits.NAME`"],
    );
}

#[test]
fn case_insensitive_duplicates_warn() {
    let policy = compiled(compile(
        "paths: {case: insensitive}\nroutes:\n  - name: a\n    path: /Reports\n  - name: b\n    path: /reports\n",
    ));
    assert_eq!(get(&policy, "/reports").as_deref(), Some("a"));
    assert_only(
        &policy.warnings,
        FILE,
        (5, 5),
        &["route `b` can never match"],
    );
}

#[test]
fn errors_are_in_file_order() {
    let errors = errors_of(compile_files(&[
        ("a.yaml", "routes:\n  - path: bad\n"),
        ("b.yaml", "limits:\n  zeta:\n    rate: {limit: 5, per: 0s}\n  alpha:\n    rate: {limit: 5, per: 0s}\n"),
    ]));
    let order: Vec<(String, Option<(usize, usize)>)> = errors
        .iter()
        .map(|e| (e.file.display().to_string(), e.position))
        .collect();
    assert_eq!(
        order,
        vec![
            ("a.yaml".to_owned(), Some((2, 11))),
            ("b.yaml".to_owned(), Some((3, 27))),
            ("b.yaml".to_owned(), Some((5, 27))),
        ]
    );
}

#[test]
fn plan_warnings_are_in_file_order() {
    let mut text = String::from("plans:\n");
    for plan in ["a", "b", "c", "d", "e", "f", "g", "h"] {
        text.push_str(&format!("  {plan}:\n    limits: {{unread: 1}}\n"));
    }
    let lines: Vec<usize> = warnings(&text)
        .iter()
        .map(|w| w.position.unwrap().0)
        .collect();
    assert_eq!(lines, [3, 5, 7, 9, 11, 13, 15, 17]);
}

#[test]
fn a_broken_limit_is_reported_once() {
    let text = "\
limits:
  api_rate:
    rate: {limit: lic.limits.rpm, per: 1m}
routes:
  - path: /a
    limits: [api_rate]
";
    let errors = errors(text);
    assert_only(&errors, FILE, (3, 11), &["needs a `default`"]);
}

#[test]
fn a_cost_no_request_can_pay_is_reported() {
    let text = "\
limits:
  api_rate:
    rate: {limit: 100, per: 1m, burst: 5}
routes:
  - path: /batch
    limits: [{limit: api_rate, cost: 10}]
";
    let result = compile(text);
    let diagnostics = match result {
        Ok(policy) => policy.warnings,
        Err(PolicyError(errors)) => errors,
    };
    assert_only(&diagnostics, FILE, (6, 14), &["cost"]);
}

#[test]
fn numeric_header_values_are_text() {
    let policy = clean("routes:\n  - path: /v\n    headers: {x-version: 2}\n");
    assert!(policy
        .find(&Method::GET, None, "/v", &headers(&[("x-version", "2")]))
        .is_some());
}

#[test]
fn rolling_quota_retry_after_is_honest() {
    use crate::limits::{Checked, Clock, MemoryStore};
    let policy = clean(
        "limits:\n  hourly:\n    quota: {limit: 10, rolling: 1h, key: client_ip}\nroutes:\n  - path: /a\n    access: public\n    limits: [hourly]\n",
    );
    let def = &policy.limits[0];
    // Half way into an aligned hour.
    let clock = Clock::manual(Duration::from_secs(1_767_225_600 + 1800));
    let store = MemoryStore::new(clock.clone(), 100);
    let counters = store.counters(def);
    for _ in 0..10 {
        assert!(matches!(
            counters.check(def, "k", "", 10, 1, &clock),
            Checked::Ticketed(..)
        ));
    }
    let Checked::Limited(limited) = counters.check(def, "k", "", 10, 1, &clock) else {
        panic!("the 11th unit within the hour is refused");
    };
    clock.advance(limited.retry_after);
    assert!(
        matches!(
            counters.check(def, "k", "", 10, 1, &clock),
            Checked::Ticketed(..)
        ),
        "refused again after waiting the Retry-After of {:?}",
        limited.retry_after
    );
}

#[test]
fn refunds_reach_the_overflow_counter() {
    use crate::limits::{Checked, Clock, MemoryStore};
    let policy = clean(
        "limits:\n  daily:\n    quota: {limit: 100, period: day, key: client_ip}\nroutes:\n  - path: /a\n    access: public\n    limits: [daily]\n",
    );
    let def = &policy.limits[0];
    let clock = Clock::manual(Duration::from_secs(1_767_225_600));
    let store = MemoryStore::new(clock.clone(), 1);
    let counters = store.counters(def);
    assert!(matches!(
        counters.check(def, "first", "", 100, 1, &clock),
        Checked::Ticketed(..)
    ));
    // No room for a second key: `second` is counted under the overflow key.
    assert!(matches!(
        counters.check(def, "second", "", 100, 5, &clock),
        Checked::Ticketed(..)
    ));
    // A later limit refused the request: give the 5 units back.
    counters.refund(def, "second", 100, 5, &clock);
    let overflow: u64 = counters
        .usage(def, &clock)
        .into_iter()
        .filter(|(key, _)| key == crate::limits::OVERFLOW_KEY)
        .map(|(_, used)| used)
        .sum();
    assert_eq!(overflow, 0);
}

#[test]
fn value_errors_point_at_the_value() {
    let cases: &[(&str, (usize, usize), &str)] = &[
        (
            "limits:\n  r:\n    rate:\n      limit: 5\n      key: client_ip\n      per: 60\n",
            (6, 12),
            "limits.r.rate.per: `60` is not a duration",
        ),
        (
            "limits:\n  r:\n    rate:\n      per: 1m\n      limit: -5\n",
            (5, 14),
            "limits.r.rate.limit: expected a whole number",
        ),
        (
            "limits:\n  r:\n    rate:\n      per: 1m\n      limit: lic.limits.rpm\n      default: lots\n",
            (6, 16),
            "limits.r.rate.default: expected a whole number or `unlimited`",
        ),
        (
            "limits:\n  r:\n    rate:\n      per: 1m\n      limit: 5\n      key: {header: x-user}\n",
            (6, 12),
            "limits.r.rate.key: expected a key",
        ),
        (
            "routes:\n  - path: /a\n    headers:\n      x-b: yes\n      x-a: {present: true, prefix: v}\n",
            (5, 12),
            "routes[0].headers.x-a: expected a value to equal",
        ),
        (
            "routes:\n  - path: /a\n    limits:\n      - a\n      - {cost: 2}\n",
            (5, 9),
            "routes[0].limits[1]: expected a limit name or {limit: NAME, cost: N}",
        ),
    ];
    for (text, position, message) in cases {
        let errors = errors_of(compile(text));
        assert_only(&errors, FILE, *position, &[message]);
    }
}

#[test]
fn limit_use_errors_name_the_setting_once() {
    let errors = errors("routes:\n  - path: /a\n    limits: [a, {cost: 2}]\n");
    assert_eq!(errors.len(), 1, "{}", render(&errors));
    assert_eq!(
        errors[0].message,
        "routes[0].limits[1]: expected a limit name or {limit: NAME, cost: N}"
    );
}

#[test]
fn duplicate_plans_and_plan_limits_are_errors_too() {
    assert_only(
        &errors("plans:\n  pro: {}\n  free: {}\n  pro: {seats: 3}\n"),
        FILE,
        (4, 3),
        &["plans.pro: duplicate key `pro`"],
    );
    assert_only(
        &errors("plans:\n  pro:\n    limits:\n      rpm: 5\n      rpm: 50\n"),
        FILE,
        (5, 7),
        &["plans.pro.limits.rpm: duplicate key"],
    );
    // Different keys that are the same header name are not YAML duplicates.
    clean("routes:\n  - path: /a\n    headers: {x-a: \"1\", X-B: {present: true}}\n");
}

#[test]
fn costs_are_checked_against_fixed_numbers_only() {
    let text = "\
limits:
  daily:
    quota: {limit: 10, period: day}
routes:
  - path: /a
    limits: [{limit: daily, cost: 11}]
";
    assert_only(
        &errors(text),
        FILE,
        (6, 14),
        &["`cost: 11` is more than quota `daily` allows per period (10)"],
    );
    // Exactly the burst (default: the limit) can pass; numbers from a
    // license are known only at run time; a fixed 0 refuses everything.
    clean(
        "\
limits:
  fixed:
    rate: {limit: 5, per: 1m}
  burst:
    rate: {limit: 5, per: 1m, burst: 8}
  licensed:
    rate: {limit: lic.limits.rpm, default: 2, per: 1m}
  closed:
    quota: {limit: 0, period: day}
routes:
  - path: /a
    limits:
      - {limit: fixed, cost: 5}
      - {limit: burst, cost: 8}
      - {limit: licensed, cost: 9}
      - {limit: closed, cost: 9}
",
    );
}

#[test]
fn license_seats_still_counts_seats() {
    let p = clean(
        "limits:\n  users:\n    seats: {limit: lic.seats, default: 3, identity: \"header:x-user\", trust_header: true}\nroutes:\n  - path: /a\n    limits: [users]\n",
    );
    assert_eq!(
        p.limits[0].amount,
        Amount::License {
            source: LicenseAmount::Seats,
            default: Some(3)
        }
    );
}

#[test]
fn unquoted_header_values_compare_as_written() {
    let p = clean(
        "routes:\n  - name: v\n    path: /v\n    headers: {x-version: 2.10, x-flag: True, x-n: 0x1F}\n",
    );
    let request = |version: &str| {
        let h = headers(&[("x-version", version), ("x-flag", "True"), ("x-n", "0x1F")]);
        p.find(&Method::GET, None, "/v", &h).is_some()
    };
    assert!(request("2.10"));
    assert!(!request("2.1"));
}

#[test]
fn colon_and_at_literals_match_either_spelling() {
    let p = clean(
        "\
routes:
  - name: batch
    path: /v1/items:batchGet
  - name: me
    path: /users/@me
  - name: user
    path: /users/{id}
",
    );
    for (path, name) in [
        ("/v1/items:batchGet", "batch"),
        ("/v1/items%3AbatchGet", "batch"),
        ("/v1/items%3abatchGet", "batch"),
        ("/users/@me", "me"),
        ("/users/%40me", "me"),
        ("/users/me", "user"),
    ] {
        let normalized = normalize::normalize(path).unwrap();
        assert_eq!(get(&p, &normalized).as_deref(), Some(name), "{path}");
    }
}

#[test]
fn diagnostics_are_the_same_every_time() {
    let text = "\
plans:
  b: {features: [x], limits: {u1: 1}}
  a: {features: [y], limits: {u2: 1, u0: 1}}
limits:
  z: {concurrency: {limit: 1}}
  y: {concurrency: {limit: 1}}
routes:
  - {path: /a, features: [f1]}
  - {path: /a, features: [f1]}
  - {path: /b, features: [f2]}
";
    let first = warnings(text);
    let lines: Vec<usize> = first.iter().map(|w| w.position.unwrap().0).collect();
    let mut sorted = lines.clone();
    sorted.sort();
    assert_eq!(lines, sorted, "{}", render(&first));
    for _ in 0..10 {
        assert_eq!(warnings(text), first);
    }
}

// ---------------------------------------------------------------------------
// WebSocket routes and hostile documents
// ---------------------------------------------------------------------------

#[test]
fn websocket_is_a_route_setting_off_by_default() {
    let p = clean(
        "routes:\n  - {name: live, path: /live/**, access: public, websocket: true}\n  - {name: plain, path: /plain, access: public}\n",
    );
    assert!(route(&p, "live").websocket);
    assert!(!route(&p, "plain").websocket);
    assert_only(
        &errors("routes:\n  - path: /a\n    access: deny\n    websocket: true\n"),
        FILE,
        (4, 16),
        &["routes[0].websocket: a `deny` route has no WebSocket to allow"],
    );
    assert_only(
        &errors("routes:\n  - path: /a\n    websocket: sometimes\n"),
        FILE,
        (3, 16),
        &["routes[0].websocket", "expected a boolean"],
    );
}

#[test]
fn preflight_is_a_route_setting_forward_by_default() {
    let p = clean(
        "unmatched: licensed\nroutes:\n  - {name: api, path: /api/**}\n  - {name: strict, path: /strict/**, preflight: decide}\n  - {name: open, path: /open/**, access: public, preflight: forward}\n  - {name: closed, path: /closed/**, access: deny}\n  - {name: shut, path: /shut/**, access: deny, preflight: decide}\n",
    );
    assert_eq!(route(&p, "api").preflight, Preflight::Forward);
    assert!(route(&p, "api").forwards_preflights());
    assert_eq!(route(&p, "strict").preflight, Preflight::Decide);
    assert!(!route(&p, "strict").forwards_preflights());
    assert!(route(&p, "open").forwards_preflights());
    // Nothing reaches a `deny` route, preflights included.
    assert!(!route(&p, "closed").forwards_preflights());
    assert!(!route(&p, "shut").forwards_preflights());
    assert!(p.forwards_preflight(None));
    let closed = clean("routes:\n  - {path: /a}\n");
    assert!(!closed.forwards_preflight(None), "unmatched: deny");

    assert_only(
        &errors("routes:\n  - path: /a\n    preflight: allow\n"),
        FILE,
        (3, 16),
        &[
            "routes[0].preflight: unknown variant `allow`",
            "`forward`",
            "`decide`",
        ],
    );
    assert_only(
        &errors("routes:\n  - path: /a\n    access: deny\n    preflight: forward\n"),
        FILE,
        (4, 16),
        &["routes[0].preflight: a `deny` route forwards nothing, preflights included"],
    );
    assert_only(
        &errors("routes:\n  - path: /a\n    preflight: [forward]\n"),
        FILE,
        (3, 16),
        &["routes[0].preflight"],
    );
}

/// Nested `depth` levels deep in several YAML shapes, each ~`2 × depth`
/// bytes.
fn nested_documents(depth: usize) -> Vec<(&'static str, String)> {
    vec![
        (
            "top-level flow sequence",
            format!("{}{}\n", "[".repeat(depth), "]".repeat(depth)),
        ),
        (
            "flow mapping as the routes",
            format!("routes: {}1{}\n", "{a: ".repeat(depth), "}".repeat(depth)),
        ),
        (
            "compact block sequences",
            format!("routes:\n  {}x\n", "- ".repeat(depth)),
        ),
    ]
}

#[test]
fn deeply_nested_yaml_is_a_located_error_not_a_crash() {
    // On a thread with the stack of tokio's blocking pool, where a reload
    // compiles: nesting must not recurse without bound.
    let checked = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(|| {
            for (shape, text) in nested_documents(60_000) {
                assert!(text.len() >= 120_000, "{shape}: {} bytes", text.len());
                let errors = errors(&text);
                assert!(
                    errors.iter().all(|e| e.position.is_some()),
                    "{shape}: {}",
                    render(&errors)
                );
            }
            // Flow nesting is refused before parsing, at the bracket one
            // level too deep: the parser's time grows with depth squared.
            assert_only(
                &errors(&nested_documents(60_000)[0].1),
                FILE,
                (1, schema::MAX_FLOW_DEPTH + 1),
                &["nested more than 64 deep"],
            );
            let text = format!(
                "routes:\n  - path: /a\n    headers:\n      x: {}{}\n",
                "[".repeat(20_000),
                "]".repeat(20_000)
            );
            assert_only(&errors(&text), FILE, (4, 9 + 65), &["nested more than"]);
        })
        .unwrap()
        .join();
    assert!(checked.is_ok(), "compiling a deeply nested policy panicked");
}

#[test]
fn flow_depth_counts_only_brackets_that_open_collections() {
    let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    assert_eq!(schema::check_flow_depth(&deep(64)), Ok(()));
    assert_eq!(schema::check_flow_depth(&deep(65)), Err((1, 65)));
    // Quoted scalars and comments hold no collections; columns count
    // characters, not bytes.
    let quoted = format!(
        "a: \"{0}\"\nb: '{0}'\nc: \"\\\"{0}\"\n# {0}\nd: x # {0}\ne: 'it''s {0}'\n",
        "[".repeat(100)
    );
    assert_eq!(schema::check_flow_depth(&quoted), Ok(()));
    assert_eq!(
        schema::check_flow_depth(&format!("é: [{}", "[".repeat(64))),
        Err((1, 68))
    );
    // An apostrophe inside a plain scalar opens nothing.
    assert_eq!(
        schema::check_flow_depth(&format!("name: it's\nx: {}", deep(65))),
        Err((2, 68))
    );
}

// ---------------------------------------------------------------------------
// Meters
// ---------------------------------------------------------------------------

const METERED: &str = "\
meters:
  api_calls: requests
  egress: response_bytes
  ingress: request_bytes
  tokens: {header: X-Usage-Tokens}
routes:
  - name: chat
    path: /v1/chat
    meters: [{meter: api_calls, cost: 5}, tokens, egress, ingress]
  - name: health
    path: /healthz
    access: public
";

#[test]
fn meters_compile_with_their_sources_and_route_costs() {
    let policy = clean(METERED);
    let names: Vec<&str> = policy.meters.iter().map(|m| &*m.name).collect();
    assert_eq!(names, ["api_calls", "egress", "ingress", "tokens"]);
    let tokens = HeaderName::from_static("x-usage-tokens");
    assert_eq!(policy.meters[3].source, MeterSource::Header(tokens.clone()));
    assert_eq!(policy.usage_headers, [tokens]);
    let chat = &policy.routes[0];
    assert_eq!(
        chat.meters,
        [
            MeterUse { meter: 0, cost: 5 },
            MeterUse { meter: 3, cost: 1 },
            MeterUse { meter: 1, cost: 1 },
            MeterUse { meter: 2, cost: 1 },
        ]
    );
    assert!(policy.routes[1].meters.is_empty());
}

#[test]
fn meter_errors_are_located() {
    let cases: &[(&str, (usize, usize), &str)] = &[
        (
            "meters:\n  m: tokens\n",
            (2, 6),
            "`tokens`: expected `requests`, `request_bytes`, `response_bytes` or {header: NAME}",
        ),
        (
            "meters:\n  m: {header: 'x y'}\n",
            (2, 15),
            "meters.m.header: `x y` is not a header name",
        ),
        (
            "meters:\n  m: {header: x-licensegate-usage}\n",
            (2, 15),
            "`x-licensegate-*` headers are licensegate's own",
        ),
        (
            "meters:\n  m: {headers: x}\n",
            (2, 7),
            "unknown field `headers`",
        ),
        (
            "meters:\n  m: requests\nroutes:\n  - path: /a\n    meters: [n]\n",
            (5, 14),
            "routes[0].meters[0]: no meter named `n` (defined: m)",
        ),
        (
            "meters:\n  m: response_bytes\nroutes:\n  - path: /a\n    meters: [{meter: m, cost: 2}]\n",
            (5, 14),
            "`cost` applies to `requests` meters; `m` counts what the request carries",
        ),
        (
            "meters:\n  m: requests\nroutes:\n  - path: /a\n    meters: [{meter: m, cost: 0}]\n",
            (5, 14),
            "`cost` must be at least 1",
        ),
        (
            "meters:\n  m: requests\nroutes:\n  - path: /a\n    meters: [m, m]\n",
            (5, 17),
            "meter `m` is listed twice",
        ),
        (
            "meters:\n  m: requests\nroutes:\n  - path: /a\n    access: public\n    meters: [m]\n",
            (6, 13),
            "meters count a license's usage; a public route has none to count",
        ),
        (
            "meters:\n  m.1: requests\n  'm 2': requests\n",
            (3, 10),
            "meter names use letters, digits",
        ),
    ];
    for (text, at, fragment) in cases {
        let diagnostics = errors(text);
        assert_only(&diagnostics, FILE, *at, &[fragment]);
    }
}

#[test]
fn a_meter_no_route_feeds_is_a_warning() {
    let warned = warnings("meters:\n  idle: requests\nroutes:\n  - path: /a\n");
    assert_only(&warned, FILE, (2, 9), &["meter `idle` is fed by no route"]);
}

#[test]
fn budgets_are_stated_by_default_for_rates_and_quotas_keyed_by_the_license() {
    let p = clean(
        "limits:
  own: {rate: {limit: 5, per: 1m}}
  by_ip: {rate: {limit: 5, per: 1m, key: client_ip}}
  monthly: {quota: {limit: 5, period: month}}
  per_route: {quota: {limit: 5, period: month, key: [license, route]}}
  ip_opt_in:
    quota: {limit: 5, period: day, key: client_ip}
    headers: true
  quiet:
    rate: {limit: 5, per: 1m}
    headers: false
  users: {seats: {identity: 'header:x-user', limit: 3, trust_header: true}}
  inflight: {concurrency: {limit: 3}}
routes:
  - path: /a
    limits: [own, by_ip, monthly, per_route, ip_opt_in, quiet, users, inflight]
",
    );
    let stated: Vec<(&str, bool)> = p
        .limits
        .iter()
        .map(|def| (&*def.name, def.headers))
        .collect();
    assert_eq!(
        stated,
        [
            ("own", true),
            ("by_ip", false),
            ("monthly", true),
            ("per_route", true),
            ("ip_opt_in", true),
            ("quiet", false),
            ("users", false),
            ("inflight", false),
        ]
    );
}

#[test]
fn headers_is_a_boolean_for_rates_and_quotas_only() {
    assert_only(
        &errors("limits:\n  api:\n    rate: {limit: 5, per: 1m}\n    headers: sometimes\n"),
        FILE,
        (4, 14),
        &["limits.api.headers", "expected a boolean"],
    );
    assert_only(
        &errors("limits:\n  users:\n    seats: {identity: 'header:x-user', limit: 3}\n    headers: true\n"),
        FILE,
        (4, 14),
        &["limits.users.headers: only rates and quotas state a budget in headers, not seats"],
    );
}

#[test]
fn quotas_count_served_requests_unless_told_attempted() {
    let policy = clean(
        "limits:
  monthly: {quota: {limit: 100, period: month}}
  daily:
    quota: {limit: 10, period: day}
    count: attempted
  hourly:
    quota: {limit: 5, period: hour}
    count: served
  api: {rate: {limit: 5, per: 1m}}
  inflight: {concurrency: {limit: 2}}
routes:
  - {path: /x, limits: [inflight, api, monthly, daily, hourly]}
",
    );
    let counted: Vec<(&str, Count)> = policy
        .limits
        .iter()
        .map(|def| (&*def.name, def.count))
        .collect();
    assert_eq!(
        counted,
        [
            ("monthly", Count::Served),
            ("daily", Count::Attempted),
            ("hourly", Count::Served),
            // Every other kind counts attempts.
            ("api", Count::Attempted),
            ("inflight", Count::Attempted),
        ]
    );
}

#[test]
fn count_is_served_or_attempted_and_for_quotas_only() {
    assert_only(
        &errors("limits:\n  q:\n    quota: {limit: 5, period: day}\n    count: finished\n"),
        FILE,
        (4, 12),
        &[
            "limits.q.count",
            "unknown variant `finished`",
            "served",
            "attempted",
        ],
    );
    for (kind, spec) in [
        ("rate", "rate: {limit: 5, per: 1m}"),
        ("seats", "seats: {identity: 'header:x-user', limit: 3}"),
        ("concurrency", "concurrency: {limit: 3}"),
    ] {
        let text = format!("limits:\n  l:\n    {spec}\n    count: served\n");
        assert_only(
            &errors(&text),
            FILE,
            (4, 12),
            &[&format!(
                "limits.l.count: only quotas give back the units of requests that were not served; a {kind} counts every attempt"
            )],
        );
    }
}

#[test]
fn overage_and_thresholds_are_quota_settings_with_located_errors() {
    let p = clean(
        "limits:
  soft:
    quota: {limit: 100, period: month}
    overage: 1.25
    thresholds: [50, 100, 125]
  plain: {quota: {limit: 5, period: day}}
  rate: {rate: {limit: 5, per: 1m}}
routes:
  - {path: /a, limits: [soft, plain, rate]}
",
    );
    let soft = &p.limits[0];
    assert_eq!(soft.ceiling(100), 125);
    assert_eq!(soft.ceiling(3), 3, "rounded down: 3.75 units is 3");
    assert_eq!(
        soft.overage.as_ref().unwrap().meter.as_ref(),
        "soft.overage"
    );
    assert_eq!(&*soft.thresholds, [50, 100, 125]);
    assert_eq!(&*p.limits[1].thresholds, DEFAULT_THRESHOLDS);
    assert_eq!(p.limits[1].ceiling(5), 5);
    assert!(p.limits[2].thresholds.is_empty());

    let cases: &[(&str, (usize, usize), &str)] = &[
        (
            "limits:\n  r:\n    rate: {limit: 5, per: 1m}\n    overage: 1.5\n",
            (4, 14),
            "limits.r.overage: only quotas have this setting",
        ),
        (
            "limits:\n  q:\n    quota: {limit: 5, period: day}\n    overage: 1\n",
            (4, 14),
            "a multiple of the limit above 1 and at most 10",
        ),
        (
            "limits:\n  q:\n    quota: {limit: 5, period: day}\n    overage: 1.2345\n",
            (4, 14),
            "at most three decimals",
        ),
        (
            "limits:\n  q:\n    quota: {limit: 5, period: day}\n    thresholds: [80, 120]\n",
            (4, 22),
            "limits.q.thresholds[1]: a percentage of the limit from 1 to 100",
        ),
        (
            "limits:\n  q:\n    quota: {limit: 5, period: day}\n    thresholds: [90, 80]\n",
            (4, 22),
            "thresholds go up, each listed once",
        ),
        (
            "limits:\n  s:\n    seats: {identity: 'header:x-user', limit: 3}\n    thresholds: [80]\n",
            (4, 17),
            "limits.s.thresholds: only quotas have this setting",
        ),
    ];
    for (text, at, fragment) in cases {
        assert_only(&errors(text), FILE, *at, &[fragment]);
    }
}

// === gRPC routes ===

#[test]
fn grpc_routes_compile_to_their_method_paths_for_post() {
    let policy = clean(
        "\
routes:
  - name: export
    grpc: {service: shop.v1.Reports, method: Export}
  - grpc: {service: shop.v1.Reports}
  - grpc: {service: Health, method: Check}
",
    );
    let export = route(&policy, "export");
    assert_eq!(export.path, "/shop.v1.Reports/Export");
    assert_eq!(export.methods, Some(vec![Method::POST]));
    assert_eq!(
        export.grpc.as_ref().map(ToString::to_string).as_deref(),
        Some("shop.v1.Reports/Export")
    );
    // Unnamed: named like any route, by method and path.
    let service = route(&policy, "POST /shop.v1.Reports/*");
    assert_eq!(
        service.grpc.as_ref().map(ToString::to_string).as_deref(),
        Some("shop.v1.Reports/* (every method)")
    );
    route(&policy, "POST /Health/Check");

    let post = |path: &str| route_name(&policy, Method::POST, None, path, &no_headers());
    assert_eq!(post("/shop.v1.Reports/Export").as_deref(), Some("export"));
    assert_eq!(
        post("/shop.v1.Reports/List").as_deref(),
        Some("POST /shop.v1.Reports/*")
    );
    assert_eq!(post("/shop.v1.Reports").as_deref(), None);
    assert_eq!(post("/shop.v1.Reports/Export/x").as_deref(), None);
    assert_eq!(post("/shop.v1.Orders/Export").as_deref(), None);
    // gRPC is POST only.
    assert_eq!(get(&policy, "/shop.v1.Reports/Export"), None);
    // A path route has no gRPC method.
    let policy = clean("routes:\n  - {name: a, path: /a}\n");
    assert!(route(&policy, "a").grpc.is_none());
}

#[test]
fn grpc_route_errors_are_located() {
    assert_only(
        &errors(
            "\
routes:
  - path: /a
    grpc: {service: shop.v1.Reports}
",
        ),
        FILE,
        (3, 11),
        &["routes[0].grpc", "`path` and `grpc` are exclusive"],
    );
    assert_only(
        &errors("routes:\n  - name: nothing\n"),
        FILE,
        (2, 5),
        &["routes[0]", "a route needs `path`", "or `grpc`"],
    );
    assert_only(
        &errors("routes:\n  - grpc: {service: shop..Reports, method: Export}\n"),
        FILE,
        (2, 21),
        &[
            "routes[0].grpc.service",
            "`shop..Reports` is not a gRPC service name",
            "e.g. shop.v1.Reports",
        ],
    );
    assert_only(
        &errors("routes:\n  - grpc: {service: shop.v1.Reports, method: Ex-port}\n"),
        FILE,
        (2, 46),
        &[
            "routes[0].grpc.method",
            "`Ex-port` is not a gRPC method name",
        ],
    );
    assert_only(
        &errors("routes:\n  - grpc: {service: shop.v1.Reports, method: \"*\"}\n"),
        FILE,
        (2, 46),
        &["leave `method` out for every method"],
    );
    assert_only(
        &errors("routes:\n  - grpc: {service: a.B}\n    methods: [POST]\n"),
        FILE,
        (3, 14),
        &["routes[0].methods", "a gRPC route's method is POST"],
    );
    // Both names wrong: both said.
    let both = errors("routes:\n  - grpc: {service: 1shop, method: \"\"}\n");
    assert_eq!(both.len(), 2, "{}", render(&both));
    // Unknown keys are refused by the parser, located.
    let unknown = errors("routes:\n  - grpc: {service: a.B, methd: X}\n");
    assert_eq!(unknown.len(), 1, "{}", render(&unknown));
    assert!(
        unknown[0].message.contains("unknown field `methd`"),
        "{}",
        render(&unknown)
    );
    assert!(unknown[0].position.is_some(), "{}", render(&unknown));
}

#[test]
fn protobuf_names_are_identifiers() {
    use super::compile::{is_grpc_service, is_identifier};
    for good in ["Export", "_x", "a1", "A_b_2"] {
        assert!(is_identifier(good), "{good}");
    }
    for bad in ["", "1a", "a-b", "a.b", "a b", "é", "*"] {
        assert!(!is_identifier(bad), "{bad}");
    }
    for good in ["Health", "shop.v1.Reports", "grpc.health.v1.Health"] {
        assert!(is_grpc_service(good), "{good}");
    }
    for bad in ["", ".a", "a.", "a..b", "a/b", "shop.v1.*"] {
        assert!(!is_grpc_service(bad), "{bad}");
    }
}

fn full_claims(sub: &str, lic: LicenseClaims) -> crate::license::Claims {
    crate::license::Claims {
        iss: None,
        sub: sub.to_owned(),
        aud: crate::license::Audience::default(),
        exp: crate::license::NumericDate(u64::MAX / 2),
        nbf: None,
        iat: None,
        jti: None,
        lic,
    }
}

#[test]
fn instance_limits_come_from_the_license_its_plan_or_the_default() {
    use crate::policy::{InstancesDef, OnInstanceLimit};
    // Without a section: `lic.limits.instances`, per license, `not_ready`.
    let bare = clean("unmatched: licensed\nplans:\n  team:\n    limits: {instances: 3}\n");
    assert_eq!(bare.instances, InstancesDef::default());
    let own = bare
        .instance_limit(&full_claims(
            "lic-1",
            claims("free", &[], &[("instances", 2)], None),
        ))
        .unwrap();
    assert_eq!((own.key.as_str(), own.limit), ("lic-1", 2));
    assert_eq!(own.holder, "license lic-1");
    assert_eq!(own.on_limit, OnInstanceLimit::NotReady);
    let planned = bare
        .instance_limit(&full_claims("lic-2", claims("team", &[], &[], None)))
        .unwrap();
    assert_eq!(planned.limit, 3, "the plan's number");
    assert_eq!(
        bare.instance_limit(&full_claims("lic-3", claims("free", &[], &[], None))),
        None,
        "neither the license nor its plan sets one: unlimited"
    );

    // Per customer, with a default and another setting.
    let p = clean(
        "unmatched: licensed\ninstances:\n  key: claim:customer\n  default: 1\n  on_limit: deny\n",
    );
    let mut acme = claims("free", &[], &[], None);
    acme.customer = Some("ACME {EU}".into());
    let limit = p.instance_limit(&full_claims("lic-9", acme)).unwrap();
    assert_eq!(limit.key, "customer=ACME {EU}");
    assert_eq!(limit.holder, "customer ACME {EU}");
    assert_eq!((limit.limit, limit.on_limit), (1, OnInstanceLimit::Deny));
    // A license without the claim keeps slots of its own.
    let anonymous = p
        .instance_limit(&full_claims("lic-10", claims("free", &[], &[], None)))
        .unwrap();
    assert_eq!(anonymous.key, "lic-10");

    // A fixed number is everyone's.
    let fixed = clean("unmatched: licensed\ninstances: {limit: 0}\n");
    let zero = fixed
        .instance_limit(&full_claims(
            "lic-1",
            claims("free", &[], &[("instances", 9)], None),
        ))
        .unwrap();
    assert_eq!(zero.limit, 0);
}

#[test]
fn instance_sections_that_cannot_mean_anything_are_refused_where_written() {
    assert_only(
        &errors("unmatched: licensed\ninstances:\n  key: header:x-tenant\n"),
        FILE,
        (3, 8),
        &["per `license` or per `claim:NAME`"],
    );
    assert_only(
        &errors("unmatched: licensed\ninstances:\n  key: [license, claim:customer]\n"),
        FILE,
        (3, 8),
        &["one key"],
    );
    assert_only(
        &errors("unmatched: licensed\ninstances:\n  on_limit: wait\n"),
        FILE,
        (3, 13),
        &["not_ready", "deny", "shadow"],
    );
    assert_only(
        &errors("unmatched: licensed\ninstances:\n  limit: lic.seats\n"),
        FILE,
        (3, 10),
        &["lic.limits.NAME"],
    );
    let twice = errors_of(compile_files(&[
        ("a.yaml", "unmatched: licensed\ninstances: {default: 2}\n"),
        ("b.yaml", "instances: {default: 3}\n"),
    ]));
    assert_only(
        &twice,
        "b.yaml",
        (1, 12),
        &["already set in another policy file"],
    );
}
