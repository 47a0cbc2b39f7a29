//! `licensegate policy check` and `licensegate policy explain`: the policy
//! compiler and the decision order, from the command line, without a proxy.

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::license::read_token_arg;
use crate::decision::{is_cors_preflight, BodyState};
use crate::license::{token, Keyring, Validator, VerifiedLicense};
use crate::policy::compile::HostMatch;
use crate::policy::normalize::normalize;
use crate::policy::{Access, Amount, KeyPart, LicenseAmount, LimitKind, Mode, Period, Policy};

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Compile policy files; print errors and warnings with file:line:column.
    Check(CheckArgs),
    /// Show how one request would be decided, check by check.
    Explain(ExplainArgs),
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Policy files or directories, compiled together as `run` would.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Treat warnings as errors.
    #[arg(long)]
    pub strict: bool,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// Policy files or directories.
    #[arg(long, required = true, num_args = 1..)]
    pub policy: Vec<PathBuf>,
    /// The license token, `@FILE`, or `-` for standard input.
    #[arg(long)]
    pub license: Option<String>,
    /// Public keys to verify the license with (PEM file, directory or JWKS).
    #[arg(long)]
    pub keys: Option<PathBuf>,
    /// Expected issuer (`iss`).
    #[arg(long)]
    pub iss: Option<String>,
    /// Expected audience (`aud`).
    #[arg(long)]
    pub aud: Option<String>,
    #[arg(long, default_value = "GET")]
    pub method: String,
    /// The request path (and query), e.g. `/api/reports/q3`.
    #[arg(long)]
    pub path: String,
    /// The request's host (without port).
    #[arg(long)]
    pub host: Option<String>,
    /// A request header, `Name: value` (repeatable).
    #[arg(long = "header", short = 'H')]
    pub headers: Vec<String>,
}

pub fn run(command: PolicyCommand) -> i32 {
    match command {
        PolicyCommand::Check(args) => check(args),
        PolicyCommand::Explain(args) => match explain(args) {
            Ok((text, allowed)) => {
                print!("{text}");
                i32::from(!allowed)
            }
            Err(message) => {
                eprintln!("licensegate: {message}");
                2
            }
        },
    }
}

fn check(args: CheckArgs) -> i32 {
    match Policy::load(&args.files) {
        Err(error) => {
            for diagnostic in &error.0 {
                eprintln!("{}", with_severity(&diagnostic.to_string(), "error"));
            }
            eprintln!("licensegate: policy invalid: {} error(s)", error.0.len());
            1
        }
        Ok(policy) => {
            for warning in &policy.warnings {
                eprintln!("{}", with_severity(&warning.to_string(), "warning"));
            }
            println!(
                "ok: {} routes, {} limits, {} plans, {} features; {} warning(s)",
                policy.routes.len(),
                policy.limits.len(),
                policy.plans.len(),
                policy.features.len(),
                policy.warnings.len()
            );
            i32::from(args.strict && !policy.warnings.is_empty())
        }
    }
}

/// `file:line:col: message` → `file:line:col: error: message`.
fn with_severity(text: &str, severity: &str) -> String {
    // The location ends at the first ": " after the file name's last colon run.
    match text.find(": ") {
        Some(at) => format!("{}: {severity}: {}", &text[..at], &text[at + 2..]),
        None => format!("{severity}: {text}"),
    }
}

/// The explanation and whether the request would be allowed (first
/// request: counters start empty here).
pub fn explain(args: ExplainArgs) -> Result<(String, bool), String> {
    let policy = Policy::load(&args.policy).map_err(|e| format!("policy invalid:\n{e}"))?;
    let method = http::Method::from_bytes(args.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("`{}` is not an HTTP method", args.method))?;
    let mut headers = http::HeaderMap::new();
    for header in &args.headers {
        let (name, value) = header
            .split_once(':')
            .ok_or_else(|| format!("`{header}`: expected `Name: value`"))?;
        let name = http::HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("`{name}` is not a header name"))?;
        let value = http::HeaderValue::from_str(value.trim())
            .map_err(|_| format!("the value of `{name}` is not a valid header value"))?;
        headers.append(name, value);
    }
    let raw_path = args.path.split('?').next().unwrap_or("");
    let mut out = String::new();
    let line = |out: &mut String, label: &str, text: &str| {
        let _ = writeln!(out, "{label:<10} {text}");
    };
    let request = match &args.host {
        Some(host) => format!("{method} {raw_path} (host {host})"),
        None => format!("{method} {raw_path}"),
    };
    line(&mut out, "request", &request);
    let path = match normalize(raw_path) {
        Ok(path) => path.into_owned(),
        Err(error) => {
            line(&mut out, "path", &format!("rejected: {error}"));
            line(&mut out, "decision", "deny 400 bad_request_path");
            return Ok((out, false));
        }
    };
    if path != raw_path {
        line(&mut out, "path", &format!("normalised to {path}"));
    }
    let route = policy.find(&method, args.host.as_deref(), &path, &headers);
    let (access, mode) = match route {
        Some(route) => {
            let file = policy
                .sources
                .get(route.origin.0)
                .map_or(String::new(), |p| p.display().to_string());
            line(
                &mut out,
                "route",
                &format!(
                    "`{}` (routes[{}] of {file}, path {})",
                    route.name, route.origin.1, route.path
                ),
            );
            // Host groups are tried first, so say which one decided.
            let group = match &route.host {
                Some(HostMatch::Exact(host)) => format!("exact host `{host}`"),
                Some(wildcard @ HostMatch::Suffix(_)) => format!("wildcard host `{wildcard}`"),
                None => "any host (the route has no `host`)".to_owned(),
            };
            line(&mut out, "host", &group);
            line(
                &mut out,
                "websocket",
                if route.websocket {
                    "a WebSocket upgrade may become a tunnel (`websocket: true`)"
                } else {
                    "no upgrade: the route does not set `websocket: true`"
                },
            );
            (route.access, route.mode)
        }
        None => {
            line(&mut out, "route", "no route matches; `unmatched` applies");
            line(
                &mut out,
                "websocket",
                "no upgrade: only a route can allow one",
            );
            (policy.unmatched, policy.mode)
        }
    };
    let shadow = mode == Mode::Shadow;
    line(
        &mut out,
        "mode",
        if shadow {
            "shadow: a denial is logged and counted, and the request forwarded"
        } else {
            "enforce"
        },
    );
    let deny = |out: &mut String, status: u16, reason: &str, detail: &str| {
        line(
            out,
            "decision",
            &format!("deny {status} {reason}: {detail}"),
        );
        if shadow {
            line(
                out,
                "",
                &format!("(shadow mode: forwarded with x-licensegate-shadow-deny: {reason})"),
            );
        }
        Ok((std::mem::take(out), shadow))
    };
    // Explain has no body to send: the request is a preflight when its
    // method and headers say so (`-H 'Content-Length: 5'` says otherwise).
    let preflight = is_cors_preflight(&method, &headers, BodyState::Empty);
    match access {
        Access::Deny => {
            line(&mut out, "access", "deny");
            if preflight {
                line(
                    &mut out,
                    "preflight",
                    "a CORS preflight, refused like any request: nothing reaches a `deny` route",
                );
            }
            let (status, reason) = if route.is_some() {
                (403, "route_denied")
            } else {
                (404, "route_not_found")
            };
            return deny(&mut out, status, reason, "the route is not available");
        }
        Access::Public => line(&mut out, "access", "public: no license needed"),
        Access::Licensed => line(&mut out, "access", "licensed"),
    }
    if preflight {
        if policy.forwards_preflight(route) {
            line(
                &mut out,
                "preflight",
                "a CORS preflight (OPTIONS with Origin and Access-Control-Request-Method, no body): \
                 forwarded to the upstream, which answers it, without a license check and not \
                 counted by any limit",
            );
            line(&mut out, "decision", "allow cors_preflight");
            return Ok((out, true));
        }
        line(
            &mut out,
            "preflight",
            "a CORS preflight, decided like any request (the route says `preflight: decide`)",
        );
    }
    let license = if access == Access::Licensed {
        match verify_license(&args)? {
            Err((reason, detail)) => {
                line(&mut out, "license", &format!("rejected: {detail}"));
                return deny(&mut out, 403, &reason, &detail);
            }
            Ok(license) => {
                let lic = &license.claims.lic;
                line(
                    &mut out,
                    "license",
                    &format!(
                        "`{}` plan `{}`, features [{}], signed by key `{}` (environment binding is checked by the running proxy)",
                        license.claims.sub,
                        lic.plan,
                        lic.features.join(", "),
                        license.kid
                    ),
                );
                Some(license)
            }
        }
    } else {
        None
    };
    let entitlement = license.as_ref().map(|l| policy.entitle(&l.claims.lic));
    if let (Some(route), Some(entitlement), Some(license)) = (route, &entitlement, &license) {
        if route.feature_names.is_empty() {
            line(&mut out, "features", "none required");
        } else {
            match entitlement.features.first_missing(&route.features) {
                None => line(
                    &mut out,
                    "features",
                    &format!("needs [{}]: licensed", route.feature_names.join(", ")),
                ),
                Some(bit) => {
                    let feature = &policy.features[bit];
                    line(
                        &mut out,
                        "features",
                        &format!("needs `{feature}`: not licensed"),
                    );
                    return deny(
                        &mut out,
                        403,
                        "feature_not_licensed",
                        &format!(
                            "license `{}` (plan `{}`) does not include `{feature}`",
                            license.claims.sub, license.claims.lic.plan
                        ),
                    );
                }
            }
        }
    }
    if let Some(route) = route {
        for usage in &route.limits {
            let def = &policy.limits[usage.limit];
            let amount = match &entitlement {
                Some(e) => e.amounts[usage.limit],
                None => match def.amount {
                    Amount::Fixed(n) => Some(n),
                    Amount::License { default, .. } => default,
                },
            };
            let source = match &def.amount {
                Amount::Fixed(_) => "fixed".to_owned(),
                Amount::License {
                    source: LicenseAmount::Limit(name),
                    ..
                } => format!("lic.limits.{name}, else plan, else default"),
                Amount::License {
                    source: LicenseAmount::Seats,
                    ..
                } => "lic.seats, else plan, else default".to_owned(),
            };
            let amount_text = amount.map_or("unlimited".to_owned(), |n| n.to_string());
            let what = match &def.kind {
                LimitKind::Rate { window, burst } => format!(
                    "rate {amount_text} per {} (burst {}), cost {}",
                    humantime::format_duration(*window),
                    burst.map_or(amount_text.clone(), |b| b.to_string()),
                    usage.cost
                ),
                LimitKind::Quota { period } => format!(
                    "quota {amount_text} per {}, cost {}",
                    match period {
                        Period::Hour => "hour (UTC)".to_owned(),
                        Period::Day => "day (UTC)".to_owned(),
                        Period::Month => "month (UTC)".to_owned(),
                        Period::Rolling(w) => format!("rolling {}", humantime::format_duration(*w)),
                    },
                    usage.cost
                ),
                LimitKind::Seats { identity, idle } => format!(
                    "{amount_text} seats by {} (freed after {} idle)",
                    describe(identity, &headers, license.as_ref()),
                    humantime::format_duration(*idle)
                ),
                LimitKind::Concurrency => format!("{amount_text} in flight"),
            };
            let keys: Vec<String> = def
                .key
                .iter()
                .map(|part| describe(part, &headers, license.as_ref()))
                .collect();
            line(
                &mut out,
                "limit",
                &format!(
                    "`{}`: {what}; amount from {source}; counted per {}",
                    def.name,
                    keys.join(" + ")
                ),
            );
            if let LimitKind::Seats { identity, .. } = &def.kind {
                let present = match identity {
                    KeyPart::Header(name) => headers.contains_key(name),
                    _ => true,
                };
                if !present && amount.is_some() {
                    return deny(
                        &mut out,
                        403,
                        "seat_identity_missing",
                        &format!(
                            "seats of `{}` are counted by {}",
                            def.name,
                            describe(identity, &headers, license.as_ref())
                        ),
                    );
                }
            }
            if amount == Some(0) {
                return deny(
                    &mut out,
                    429,
                    "rate_limited",
                    &format!("`{}` allows nothing", def.name),
                );
            }
        }
        if !route.limits.is_empty() {
            line(
                &mut out,
                "",
                "(counters are live in the proxy; a first request passes them)",
            );
        }
    }
    line(&mut out, "decision", "allow");
    if license.is_some() {
        line(
            &mut out,
            "",
            "the upstream receives x-license-id, x-license-plan and x-license-features",
        );
    }
    Ok((out, true))
}

fn verify_license(args: &ExplainArgs) -> Result<Result<VerifiedLicense, (String, String)>, String> {
    let Some(text) = &args.license else {
        return Ok(Err((
            "license_missing".into(),
            "no --license given; the route needs one".into(),
        )));
    };
    let token = read_token_arg(text)?;
    let keys = args
        .keys
        .as_ref()
        .ok_or("--license needs --keys to verify it with")?;
    let keyring = Keyring::load(keys).map_err(|e| e.to_string())?;
    let validator = Validator {
        issuer: args.iss.clone(),
        audience: args.aud.clone(),
        ..Validator::default()
    };
    let now = crate::license::validate::unix_now();
    Ok(token::verify(&token, &keyring)
        .and_then(|license| validator.validate(&license.claims, now).map(|_| license))
        .map_err(|e| (e.reason().to_owned(), e.detail())))
}

fn describe(
    part: &KeyPart,
    headers: &http::HeaderMap,
    license: Option<&VerifiedLicense>,
) -> String {
    match part {
        KeyPart::License => match license {
            Some(l) => format!("license `{}`", l.claims.sub),
            None => "license".into(),
        },
        KeyPart::Claim(claim) => format!("claim {claim:?}").to_lowercase(),
        KeyPart::Header(name) => match headers.get(name).and_then(|v| v.to_str().ok()) {
            Some(value) => format!("header {name} `{value}`"),
            None => format!("header {name} (absent in this request)"),
        },
        KeyPart::ClientIp => "client address".into(),
        KeyPart::Route => "route".into(),
    }
}
