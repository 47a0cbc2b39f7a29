//! `licensegate policy check` and `licensegate policy explain`: the policy
//! compiler and the decision order, from the command line, without a proxy.

use std::cell::OnceCell;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, Subcommand};

use super::license::read_token_arg;
use crate::config::{FileConfig, Overrides, Settings};
use crate::decision::{
    evaluate, Admission, BodyState, Credentials, Denial, EnvironmentCheck, EvaluatorSettings,
    InstanceCheck, LicenseHeaderNames, LicenseView, LimitCheck, LimitPlan, Outcome, PreflightStep,
    Reason, RequestFacts, Step, Verdict, WebSocketScope, SHADOW_DENY_HEADER,
};
use crate::license::{
    Keyring, LicenseError, LicenseGate, LicenseMetrics, LicenseVerifier, Validator, VerifiedLicense,
};
use crate::policy::compile::HostMatch;
use crate::policy::normalize::normalize;
use crate::policy::{
    Access, Amount, Entitlement, KeyPart, LicenseAmount, LimitKind, Mode, Period, Policy, Route,
};
use crate::user::{TokenLocation, UserError, UserVerifier, VerifiedUser};

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Compile policy files; print errors and warnings with file:line:column.
    Check(CheckArgs),
    /// Show how one request would be decided, check by check.
    Explain(Box<ExplainArgs>),
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
    /// Policy files or directories [default with --config: its `policy.paths`].
    #[arg(long, num_args = 1..)]
    pub policy: Vec<PathBuf>,
    /// The proxy's config file: licenses are checked by its `license`
    /// section as the proxy checks them (keys, issuer, audience, leeway,
    /// grace, environment, and the header per-request tokens come in).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// The license token, `@FILE`, or `-` for standard input. With a
    /// `--config` whose licenses come in a header, it is sent in that header.
    #[arg(long)]
    pub license: Option<String>,
    /// Public keys to verify the license with (PEM file, directory or
    /// JWKS), without --config.
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
    /// A user token, `@FILE`, or `-` for standard input: verified with the
    /// `users` section of --config (its JWKS file, or the last fetched JWKS
    /// in its state file, else fetched now) and sent where the proxy reads
    /// user tokens.
    #[arg(long)]
    pub user: Option<String>,
}

pub fn run(command: PolicyCommand) -> i32 {
    match command {
        PolicyCommand::Check(args) => check(args),
        PolicyCommand::Explain(args) => match explain(*args) {
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
            // Meters are named only when there are some: earlier policies
            // read as before.
            let meters = match policy.meters.len() {
                0 => String::new(),
                n => format!(", {n} meters"),
            };
            println!(
                "ok: {} routes, {} limits{meters}, {} plans, {} features; {} warning(s)",
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
/// request: counters start empty here). The decision is the proxy's own
/// ([`evaluate`]); only the rendering is explain's.
pub fn explain(args: ExplainArgs) -> Result<(String, bool), String> {
    let setup = Setup::read(&args)?;
    let policy = Policy::load(&setup.policy).map_err(|e| format!("policy invalid:\n{e}"))?;
    if policy.needs_license && matches!(setup.license, LicenseInput::NoSection) {
        return Err(format!(
            "the policy has licensed routes (or `unmatched: licensed`) but {} has no `license` section",
            args.config.as_deref().unwrap_or(Path::new("the config")).display()
        ));
    }
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
    setup.license.add_token(&mut headers)?;
    if let Some(token) = &setup.user_token {
        let users = setup.users.as_ref().ok_or_else(|| {
            "--user needs --config with a `users` section (the identity providers to verify it with)"
                .to_owned()
        })?;
        add_user_token(&users.settings().token, token, &mut headers)?;
    }
    if let Some(host) = &args.host {
        let value = http::HeaderValue::from_str(host)
            .map_err(|_| format!("`{host}` is not a valid host"))?;
        match headers.get(http::header::HOST) {
            Some(given) if given != value => {
                return Err(format!("--host `{host}` and the Host header differ"));
            }
            _ => {
                headers.insert(http::header::HOST, value);
            }
        }
    }
    let raw_path = args.path.split('?').next().unwrap_or("");
    let mut out = String::new();
    let host = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok());
    line(
        &mut out,
        "request",
        &match host {
            Some(host) => format!("{method} {raw_path} (host {host})"),
            None => format!("{method} {raw_path}"),
        },
    );
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
    // The head as the proxy holds it after its edge checks: HTTP/1.1, the
    // normalised path (the query decides nothing), no body — a request
    // with one says so in its headers (`-H 'Content-Length: 5'`).
    let mut head = http::Request::new(()).into_parts().0;
    head.method = method;
    head.version = http::Version::HTTP_11;
    head.uri = path
        .parse()
        .map_err(|_| format!("`{path}` is not a valid request target"))?;
    head.headers = headers;
    let facts = RequestFacts::of(&head, BodyState::Empty);
    let (slot, user) = (OnceCell::new(), OnceCell::new());
    let mut source = ExplainSource {
        input: &setup.license,
        users: setup.users.as_deref(),
        headers: &head.headers,
        policy: &policy,
        slot: &slot,
        user: &user,
    };
    let verdict = evaluate(&policy, &facts, &mut source, &setup.evaluator, Vec::new());
    let allowed = render(&mut out, &policy, &setup, &head.headers, &verdict);
    Ok((out, allowed))
}

fn line(out: &mut String, label: &str, text: &str) {
    let _ = writeln!(out, "{label:<10} {text}");
}

/// What explain knows about the deployment: the policy, where licenses come
/// from, and the evaluator's settings.
struct Setup {
    policy: Vec<PathBuf>,
    license: LicenseInput,
    evaluator: EvaluatorSettings,
    /// Names of the entitlement headers the upstream receives.
    upstream_headers: LicenseHeaderNames,
    /// The user verifier of --config's `users`, keys loaded.
    users: Option<Arc<UserVerifier>>,
    /// `--user`.
    user_token: Option<String>,
}

/// Put `token` where the proxy reads user tokens.
fn add_user_token(
    location: &TokenLocation,
    token: &str,
    headers: &mut http::HeaderMap,
) -> Result<(), String> {
    let (name, value) = match location {
        TokenLocation::Bearer => (http::header::AUTHORIZATION, format!("Bearer {token}")),
        TokenLocation::Header(name) => (name.clone(), token.to_owned()),
        TokenLocation::Cookie(cookie) => (http::header::COOKIE, format!("{cookie}={token}")),
    };
    if location.find(headers).is_some() {
        return Err(format!(
            "the user token is given twice: --user and the `{name}` header"
        ));
    }
    let value = http::HeaderValue::from_str(&value)
        .map_err(|_| "the --user token is not a valid header value".to_owned())?;
    headers.append(name, value);
    Ok(())
}

/// How explain checks a license.
enum LicenseInput {
    /// `--config` without a `license` section: no license can be checked.
    NoSection,
    /// The proxy's own license gate, built from `--config`; per-request
    /// tokens come in the request's headers (`--license` puts one there).
    Gate {
        gate: Box<LicenseGate>,
        token: Option<String>,
    },
    /// `--license` (if any) verified with `--keys`, `--iss` and `--aud`;
    /// the environment binding is not known.
    Flags {
        verifier: Box<LicenseVerifier>,
        token: Option<String>,
    },
    /// Neither `--config` nor `--keys`: a licensed route finds no license.
    Missing,
}

impl Setup {
    fn read(args: &ExplainArgs) -> Result<Setup, String> {
        let token = args.license.as_deref().map(read_token_arg).transpose()?;
        let Some(config) = &args.config else {
            if args.policy.is_empty() {
                return Err("give --policy, or --config to read `policy.paths`".into());
            }
            let license = match (&args.keys, token) {
                (Some(keys), token) => {
                    let keyring = Keyring::load(keys).map_err(|e| e.to_string())?;
                    let validator = Validator {
                        issuer: args.iss.clone(),
                        audience: args.aud.clone(),
                        ..Validator::default()
                    };
                    LicenseInput::Flags {
                        verifier: Box::new(LicenseVerifier::new(Arc::new(keyring), validator, 1)),
                        token,
                    }
                }
                (None, Some(_)) => return Err("--license needs --keys to verify it with".into()),
                (None, None) => LicenseInput::Missing,
            };
            if args.user.is_some() {
                return Err("--user needs --config with a `users` section (the identity providers to verify it with)".into());
            }
            return Ok(Setup {
                policy: args.policy.clone(),
                license,
                evaluator: EvaluatorSettings::default(),
                upstream_headers: LicenseHeaderNames::default(),
                users: None,
                user_token: None,
            });
        };
        if args.keys.is_some() || args.iss.is_some() || args.aud.is_some() {
            return Err(
                "--keys, --iss and --aud come from the `license` section of --config".into(),
            );
        }
        let file = FileConfig::load(config).map_err(|e| e.to_string())?;
        // `run` takes these from flags when the file has none; explain
        // binds nothing and forwards nowhere.
        let placeholders = Overrides {
            listen: file
                .listen
                .is_none()
                .then(|| SocketAddr::from(([127, 0, 0, 1], 0))),
            upstream: match file.upstream.as_ref().and_then(|u| u.url.as_ref()) {
                Some(_) => None,
                None => Some("http://127.0.0.1:1".parse().expect("a valid URL")),
            },
            policy: args.policy.clone(),
            ..Overrides::default()
        };
        let settings = Settings::resolve(file, placeholders).map_err(|e| e.to_string())?;
        let policy = match &settings.policy {
            Some(policy) => policy.paths.clone(),
            None => {
                return Err(format!(
                    "{} has no `policy.paths`; give --policy",
                    config.display()
                ))
            }
        };
        let websocket = settings
            .policy
            .as_ref()
            .map_or(WebSocketScope::Routes, |p| p.websocket);
        let (license, license_header) = match settings.license {
            None if token.is_some() => {
                return Err(format!(
                    "{} has no `license` section to check --license with",
                    config.display()
                ))
            }
            None => (LicenseInput::NoSection, None),
            Some(mut license) => {
                // Explain reads the deployment's files and writes none.
                license.state_file = None;
                // A registry of its own: nothing renders it.
                let metrics = LicenseMetrics::new(&crate::metrics::Registry::new());
                let gate =
                    LicenseGate::new(&license, Arc::new(metrics)).map_err(|e| e.to_string())?;
                let header = gate.token_header().cloned();
                if token.is_some() && header.is_none() {
                    return Err(format!(
                        "{} names a deployment license (`license.file` or `license.refresh`), \
                         which explain checks as the proxy would; --license is for `source: header`",
                        config.display()
                    ));
                }
                (
                    LicenseInput::Gate {
                        gate: Box::new(gate),
                        token,
                    },
                    header,
                )
            }
        };
        let users = match settings.users {
            None if args.user.is_some() => {
                return Err(format!(
                    "{} has no `users` section to check --user with",
                    config.display()
                ))
            }
            None => None,
            Some(users) => Some(crate::user::explain_verifier(users)?),
        };
        Ok(Setup {
            policy,
            license,
            evaluator: EvaluatorSettings {
                websocket,
                license_header,
            },
            upstream_headers: settings.upstream_headers,
            users,
            user_token: args.user.as_deref().map(read_token_arg).transpose()?,
        })
    }
}

impl LicenseInput {
    /// Put `--license` in the header the proxy reads tokens from.
    fn add_token(&self, headers: &mut http::HeaderMap) -> Result<(), String> {
        let LicenseInput::Gate {
            gate,
            token: Some(token),
        } = self
        else {
            return Ok(());
        };
        let Some(name) = gate.token_header() else {
            return Ok(());
        };
        if headers.contains_key(name) {
            return Err(format!(
                "the token is given twice: --license and the `{name}` header"
            ));
        }
        let value = http::HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| "the --license token is not a valid header value".to_owned())?;
        headers.insert(name.clone(), value);
        Ok(())
    }

    fn check(
        &self,
        headers: &http::HeaderMap,
    ) -> Result<(Arc<VerifiedLicense>, EnvironmentCheck), LicenseError> {
        let now = crate::license::validate::unix_now();
        match self {
            LicenseInput::NoSection | LicenseInput::Missing => Err(LicenseError::Missing),
            LicenseInput::Gate { gate, .. } => {
                let loopback = || IpAddr::from([127, 0, 0, 1]);
                gate.check(headers, loopback)
                    .map(|(license, _)| (license, EnvironmentCheck::Admitted))
            }
            LicenseInput::Flags { verifier, token } => {
                let token = token.as_deref().ok_or(LicenseError::Missing)?;
                verifier
                    .check(token, now)
                    .map(|(license, _)| (license, EnvironmentCheck::NotChecked))
            }
        }
    }
}

/// Explain's license source: checks the license when the evaluator asks.
struct ExplainSource<'a> {
    input: &'a LicenseInput,
    users: Option<&'a UserVerifier>,
    headers: &'a http::HeaderMap,
    policy: &'a Policy,
    slot: &'a OnceCell<(Arc<VerifiedLicense>, Entitlement, EnvironmentCheck)>,
    user: &'a OnceCell<Arc<VerifiedUser>>,
}

impl<'a> Credentials<'a> for ExplainSource<'a> {
    fn user(&mut self) -> Result<&'a VerifiedUser, UserError> {
        let users = self.users.ok_or(UserError::KeysUnavailable)?;
        let now = crate::license::validate::unix_now();
        let user = users.check(self.headers, now, || IpAddr::from([127, 0, 0, 1]))?;
        Ok(self.user.get_or_init(|| user))
    }

    fn license(&mut self) -> Result<LicenseView<'a>, LicenseError> {
        let (license, environment) = self.input.check(self.headers)?;
        let entitlement = self.policy.entitle(&license.claims.lic);
        let (license, entitlement, environment) = self
            .slot
            .get_or_init(|| (license, entitlement, environment));
        Ok(LicenseView {
            license,
            entitlement,
            environment: *environment,
            // Slots are held by running replicas, not by a command.
            instance: InstanceCheck::NotChecked,
        })
    }
}

/// Write the steps and the decision; whether the request is forwarded.
fn render(
    out: &mut String,
    policy: &Policy,
    setup: &Setup,
    headers: &http::HeaderMap,
    verdict: &Verdict<'_, Vec<Step<'_>>>,
) -> bool {
    let denial = match &verdict.outcome {
        Outcome::Deny(denial) => Some(&**denial),
        _ => None,
    };
    let detail = denial.map_or("", |d| &*d.detail);
    let mut license = None;
    let mut user = None;
    for step in &verdict.steps {
        match *step {
            Step::Route(route) => render_route(out, policy, &setup.evaluator, route),
            Step::Access { access, mode } => {
                line(
                    out,
                    "mode",
                    match mode {
                        Mode::Shadow => {
                            "shadow: a denial is logged and counted, and the request forwarded"
                        }
                        Mode::Enforce => "enforce",
                    },
                );
                line(
                    out,
                    "access",
                    match access {
                        Access::Deny => "deny",
                        Access::Public => "public: no license needed",
                        Access::Licensed => "licensed",
                    },
                );
            }
            Step::Upgrade { asked: false, .. } => {}
            Step::Upgrade {
                asked: true,
                allowed,
            } => line(
                out,
                "upgrade",
                if allowed {
                    "asks for a WebSocket upgrade: allowed here (the upstream's 101 opens the tunnel)"
                } else {
                    "asks for a WebSocket upgrade, which is not allowed here"
                },
            ),
            Step::Preflight(PreflightStep::Refused) => line(
                out,
                "preflight",
                "a CORS preflight, refused like any request: nothing reaches a `deny` route",
            ),
            Step::Preflight(PreflightStep::Forwarded) => line(
                out,
                "preflight",
                "a CORS preflight (OPTIONS with Origin and Access-Control-Request-Method, no body): \
                 forwarded to the upstream, which answers it, without a license check and not \
                 counted by any limit",
            ),
            Step::Preflight(PreflightStep::Decided) => line(
                out,
                "preflight",
                "a CORS preflight, decided like any request (the route says `preflight: decide`)",
            ),
            Step::License(Ok(view)) => {
                license = Some(view.license);
                let lic = &view.license.claims.lic;
                line(
                    out,
                    "license",
                    &format!(
                        "`{}` plan `{}`, features [{}], signed by key `{}`",
                        view.license.claims.sub,
                        lic.plan,
                        lic.features.join(", "),
                        view.license.kid
                    ),
                );
            }
            Step::License(Err(_)) => {
                let no_token = match &setup.license {
                    LicenseInput::Missing | LicenseInput::Flags { token: None, .. } => {
                        " (no --license given)"
                    }
                    _ => "",
                };
                line(out, "license", &format!("rejected: {detail}{no_token}"));
            }
            Step::Environment(Ok(EnvironmentCheck::Admitted)) => {
                line(out, "env", "admitted: `lic.env` includes this deployment")
            }
            Step::Environment(Ok(EnvironmentCheck::NotChecked)) => line(
                out,
                "env",
                "not checked here: the running proxy checks `lic.env` (give --config to check it)",
            ),
            Step::Environment(Err(_)) => line(out, "env", &format!("refused: {detail}")),
            Step::Instance(check) => {
                let limit = license.and_then(|l| policy.instance_limit(&l.claims));
                let text = match (check, limit) {
                    (_, None) => "no instance limit".to_owned(),
                    (InstanceCheck::NotChecked, Some(limit)) => format!(
                        "{} replica{} at once per {} (on_limit: {}); whether a replica holds a slot, its `/license` on the admin port says",
                        limit.limit,
                        if limit.limit == 1 { "" } else { "s" },
                        limit.holder,
                        limit.on_limit.as_str()
                    ),
                    (InstanceCheck::Serving, Some(_)) => "holds an instance slot".to_owned(),
                    (InstanceCheck::Waiting { .. }, Some(_)) => format!("no slot: {detail}"),
                };
                line(out, "instances", &text);
            }
            Step::Features { route, missing } => {
                if route.feature_names.is_empty() {
                    line(out, "features", "none required");
                } else {
                    match missing {
                        None => line(
                            out,
                            "features",
                            &format!("needs [{}]: licensed", route.feature_names.join(", ")),
                        ),
                        Some(bit) => line(
                            out,
                            "features",
                            &format!("needs `{}`: not licensed", policy.features[bit]),
                        ),
                    }
                }
            }
            Step::User(Ok(verified)) => {
                user = Some(verified);
                let roles: Vec<&str> = verified.roles.iter().map(|r| &**r).collect();
                let issuer = setup
                    .users
                    .as_ref()
                    .and_then(|u| u.settings().issuers.get(verified.issuer))
                    .map_or("", |i| i.issuer.as_str());
                line(
                    out,
                    "user",
                    &format!(
                        "`{}` from {issuer}, roles [{}], signed by key `{}`",
                        verified.subject,
                        roles.join(", "),
                        verified.kid
                    ),
                );
            }
            Step::User(Err(_)) => line(out, "user", &format!("refused: {detail}")),
            Step::Roles { route, refused } => {
                let names = |bits: &[usize]| {
                    bits.iter()
                        .map(|&b| format!("`{}`", policy.roles[b]))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let mut needs = Vec::new();
                if !route.roles.any_of.is_empty() {
                    needs.push(format!("one of {}", names(&route.roles.any_of)));
                }
                if !route.roles.all_of.is_empty() {
                    needs.push(format!("all of {}", names(&route.roles.all_of)));
                }
                let verdict = match refused {
                    None => "held, and licensed".to_owned(),
                    Some(Reason::RoleNotLicensed) => "held, but not licensed".to_owned(),
                    Some(reason) => format!("not held ({})", reason.as_str()),
                };
                line(out, "roles", &format!("needs {}: {verdict}", needs.join(" and ")));
            }
            Step::Limit(check) => render_limit(out, &check, headers, license, user),
        }
    }
    let predicted = match &verdict.outcome {
        Outcome::Count(plan) => first_refusal(plan),
        _ => None,
    };
    let denial = denial.or(predicted.as_ref());
    if matches!(verdict.outcome, Outcome::Count(_)) && denial.is_none() {
        line(
            out,
            "",
            "(counters are live in the proxy; a first request passes them)",
        );
    }
    let shadow = verdict.mode == Mode::Shadow;
    match denial {
        Some(denial) => {
            let reason = denial.reason.as_str();
            line(
                out,
                "decision",
                &format!(
                    "deny {} {reason}: {}",
                    denial.status.as_u16(),
                    denial.detail
                ),
            );
            let grpc = headers
                .get(http::header::CONTENT_TYPE)
                .and_then(crate::problem::grpc_format);
            if grpc.is_some() {
                let code = crate::problem::grpc::grpc_code(denial.reason);
                line(
                    out,
                    "",
                    &format!(
                        "a gRPC call: HTTP 200 with grpc-status: {} ({})",
                        code.as_u8(),
                        code.name()
                    ),
                );
            }
            for (name, value) in &denial.headers {
                line(
                    out,
                    "",
                    &format!("{name}: {}", String::from_utf8_lossy(value.as_bytes())),
                );
            }
            if shadow {
                line(
                    out,
                    "",
                    &format!("(shadow mode: forwarded with {SHADOW_DENY_HEADER}: {reason})"),
                );
            }
            shadow
        }
        None => {
            if matches!(verdict.outcome, Outcome::Allow(Admission::Preflight)) {
                line(out, "decision", "allow cors_preflight");
                return true;
            }
            line(out, "decision", "allow");
            if license.is_some() {
                let names = &setup.upstream_headers;
                line(
                    out,
                    "",
                    &format!(
                        "the upstream receives {}, {} and {}",
                        names.id, names.plan, names.features
                    ),
                );
            }
            if let (Some(_), Some(users)) = (user, &setup.users) {
                let forward = &users.settings().forward;
                line(
                    out,
                    "",
                    &format!("the upstream receives {} and {}", forward.id, forward.roles),
                );
            }
            true
        }
    }
}

fn render_route(
    out: &mut String,
    policy: &Policy,
    settings: &EvaluatorSettings,
    route: Option<&Route>,
) {
    let tunnel = settings.allows_tunnel(route);
    let Some(route) = route else {
        line(out, "route", "no route matches; `unmatched` applies");
        line(
            out,
            "websocket",
            if tunnel {
                "a WebSocket upgrade may become a tunnel (any allowed request may here)"
            } else {
                "no upgrade: only a route can allow one"
            },
        );
        return;
    };
    let file = policy
        .sources
        .get(route.origin.0)
        .map_or(String::new(), |p| p.display().to_string());
    line(
        out,
        "route",
        &format!(
            "`{}` (routes[{}] of {file}, path {})",
            route.name, route.origin.1, route.path
        ),
    );
    if let Some(grpc) = &route.grpc {
        line(out, "grpc", &format!("gRPC method {grpc}"));
    }
    // Host groups are tried first, so say which one decided.
    let group = match &route.host {
        Some(HostMatch::Exact(host)) => format!("exact host `{host}`"),
        Some(wildcard @ HostMatch::Suffix(_)) => format!("wildcard host `{wildcard}`"),
        None => "any host (the route has no `host`)".to_owned(),
    };
    line(out, "host", &group);
    line(
        out,
        "websocket",
        match (route.websocket, tunnel) {
            (true, _) => "a WebSocket upgrade may become a tunnel (`websocket: true`)",
            (false, true) => {
                "a WebSocket upgrade may become a tunnel (any allowed request may here)"
            }
            (false, false) => "no upgrade: the route does not set `websocket: true`",
        },
    );
}

fn render_limit(
    out: &mut String,
    check: &LimitCheck<'_>,
    headers: &http::HeaderMap,
    license: Option<&VerifiedLicense>,
    user: Option<&VerifiedUser>,
) {
    let (def, usage) = (check.def, check.usage);
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
    let amount_text = check
        .amount
        .map_or("unlimited".to_owned(), |n| n.to_string());
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
            describe(identity, headers, (license, user)),
            humantime::format_duration(*idle)
        ),
        LimitKind::Concurrency => format!("{amount_text} in flight"),
    };
    let keys: Vec<String> = def
        .key
        .iter()
        .map(|part| describe(part, headers, (license, user)))
        .collect();
    line(
        out,
        "limit",
        &format!(
            "`{}`: {what}; amount from {source}; counted per {}",
            def.name,
            keys.join(" + ")
        ),
    );
}

/// The refusal a first request meets at the counters: a limit whose number
/// is 0 allows nothing (counters start empty here, so nothing else can
/// refuse).
fn first_refusal(plan: &LimitPlan<'_>) -> Option<Denial> {
    let check = plan.checks().find(|check| check.amount == Some(0))?;
    Some(Denial::new(
        http::StatusCode::TOO_MANY_REQUESTS,
        Reason::of_limit(&check.def.kind),
        format!("`{}` allows nothing (its number is 0)", check.def.name),
    ))
}

fn describe(
    part: &KeyPart,
    headers: &http::HeaderMap,
    (license, user): (Option<&VerifiedLicense>, Option<&VerifiedUser>),
) -> String {
    match part {
        KeyPart::User => match user {
            Some(u) => format!("user `{}`", u.subject),
            None => "user".into(),
        },
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
