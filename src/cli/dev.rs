//! `licensegate dev`: the proxy in front of a local dev server with a
//! development license in force, and `licensegate dev switch` to change its
//! plan while it runs.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, Subcommand};
use http::{Method, StatusCode};

use super::admin_client::{detail, exchange, Failure};
use super::{announce, run_gateway};
use crate::config::{FileConfig, Overrides, Settings, DEFAULT_ADMIN};
use crate::dev::{
    check_features, check_plan, default_plan, describe_features, plan_names, DevLicense, DevStatus,
    Grant, PlanChange,
};
use crate::exit;
use crate::gateway::Gateway;
use crate::policy::{Policy, WebSocketScope};
use crate::process::build_runtime;
use crate::proxy::settings::UpstreamUrl;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct DevArgs {
    #[command(subcommand)]
    pub command: Option<DevCommand>,
    #[command(flatten)]
    pub run: DevRunArgs,
}

#[derive(Debug, Subcommand)]
pub enum DevCommand {
    /// Switch the plan or features of a running `licensegate dev`.
    Switch(SwitchArgs),
}

#[derive(Debug, Args)]
pub struct DevRunArgs {
    /// The dev server's origin, e.g. http://127.0.0.1:5173.
    #[arg(long, required = true)]
    pub upstream: Option<UpstreamUrl>,
    /// Inbound address: open this in the browser.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Admin address (/dev/license, /metrics, /license).
    #[arg(long, default_value = DEFAULT_ADMIN)]
    pub admin: SocketAddr,
    /// Policy file or directory (repeatable); watched, edits apply at once.
    #[arg(long, value_delimiter = ',')]
    pub policy: Vec<PathBuf>,
    /// The license's plan [default: the policy's plan with the most features].
    #[arg(long, conflicts_with = "license")]
    pub plan: Option<String>,
    /// The license's own features, comma-separated.
    #[arg(long, value_delimiter = ',', conflicts_with = "license")]
    pub features: Option<Vec<String>>,
    /// Run with this license file instead of minting one (no switching).
    #[arg(long, requires = "keys")]
    pub license: Option<PathBuf>,
    /// Public keys that verify --license: a PEM file, a directory or a JWKS.
    #[arg(long, requires = "license")]
    pub keys: Option<PathBuf>,
    /// Listen on addresses other than loopback.
    #[arg(long)]
    pub allow_non_loopback: bool,
}

#[derive(Debug, Args)]
pub struct SwitchArgs {
    /// Admin address of the running `licensegate dev`.
    #[arg(long, default_value = DEFAULT_ADMIN)]
    pub admin: SocketAddr,
    /// The new plan (default: unchanged).
    #[arg(long)]
    pub plan: Option<String>,
    /// The new features, comma-separated; `--features ''` for none
    /// (default: unchanged).
    #[arg(long, value_delimiter = ',')]
    pub features: Option<Vec<String>>,
}

/// Run a dev command; returns the exit status.
pub fn run(args: DevArgs) -> i32 {
    match args.command {
        Some(DevCommand::Switch(args)) => switch(args),
        None => serve(args.run),
    }
}

/// `--features a,,b` and `--features ''` list no empty names.
fn feature_list(features: Option<Vec<String>>) -> Option<Vec<String>> {
    features.map(|list| list.into_iter().filter(|f| !f.is_empty()).collect())
}

fn serve(args: DevRunArgs) -> i32 {
    if !args.allow_non_loopback {
        for (flag, addr) in [("--listen", args.listen), ("--admin", args.admin)] {
            if !addr.ip().to_canonical().is_loopback() {
                eprintln!(
                    "licensegate: {flag} {addr} is not a loopback address. `licensegate dev` is a \
                     development tool: it signs its own license, so whoever reaches it gets that \
                     license's access. Pass --allow-non-loopback to listen there anyway."
                );
                return exit::CONFIG;
            }
        }
    }
    let mut settings = match Settings::resolve(
        FileConfig::default(),
        Overrides {
            listen: Some(args.listen),
            admin: Some(args.admin),
            upstream: args.upstream,
            policy: args.policy,
            ..Overrides::default()
        },
    ) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("licensegate: configuration error: {error}");
            return exit::CONFIG;
        }
    };
    if let Some(policy) = settings.policy.as_mut() {
        // A dev server's hot-reload socket has a path of its own.
        policy.websocket = WebSocketScope::AnyRoute;
    }
    // A plan to show in the switch example: another one the policy defines.
    let mut example_plan = "free".to_owned();
    let dev = match (args.license, args.keys) {
        (Some(file), Some(keys)) => DevLicense::given(file, keys),
        _ => {
            // Read here only to choose and check the plan; the gateway loads
            // (and reports on) the policy it enforces.
            let policy = settings
                .policy
                .as_ref()
                .and_then(|p| Policy::load(&p.paths).ok());
            let plan = args.plan.unwrap_or_else(|| default_plan(policy.as_ref()));
            let features = feature_list(args.features).unwrap_or_default();
            let checked = check_plan(&plan, policy.as_ref().map(plan_names).as_deref())
                .and_then(|()| check_features(&features));
            if let Err(message) = checked {
                eprintln!("licensegate: {message}");
                return exit::CONFIG;
            }
            if let Some(other) = policy
                .as_ref()
                .and_then(|p| plan_names(p).into_iter().find(|name| *name != plan))
            {
                example_plan = other;
            }
            match DevLicense::mint(Grant::dev(plan, features)) {
                Ok(dev) => dev,
                Err(message) => {
                    eprintln!("licensegate: cannot set up the dev license: {message}");
                    return exit::OS_ERROR;
                }
            }
        }
    };
    settings.license = Some(dev.license_settings());
    run_gateway(crate::config::default_workers(), || async {
        let gateway = Gateway::bind_dev(&settings, dev).map_err(|error| {
            eprintln!("licensegate: {error}");
            if error.exit_code() == exit::OS_ERROR {
                eprintln!("hint: pick other ports with --listen and --admin");
            }
            error.exit_code()
        })?;
        announce(&gateway);
        let status = gateway.dev().expect("bound with a dev license").status();
        print_banner(&settings, &gateway, &status, &example_plan);
        Ok(gateway)
    })
}

/// What runs, with which license, and how to switch. Write errors are
/// ignored: a closed stdout must not stop the proxy.
fn print_banner(settings: &Settings, gateway: &Gateway, status: &DevStatus, example_plan: &str) {
    let proxy = gateway.proxy_addr();
    let admin = gateway.admin_addr();
    let policy = match &settings.policy {
        Some(policy) => format!(
            "{} (watched: edits apply at once; WebSocket upgrades pass on every route it allows, for hot reload)",
            policy
                .paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => "none: every request passes with the license, WebSockets (hot reload) too".to_owned(),
    };
    let license = describe_status(status);
    let switching = if status.switchable {
        let command = if admin == DEFAULT_ADMIN.parse().expect("valid default") {
            "licensegate dev switch".to_owned()
        } else {
            format!("licensegate dev switch --admin {admin}")
        };
        format!(
            "Switch plans while it runs (the answer shows the license now in force):\n  \
             {command} --plan {example_plan}                 # or --features a,b\n  \
             curl -s -X POST http://{admin}/dev/license -d '{{\"plan\":\"{example_plan}\"}}'\n  \
             curl -s http://{admin}/dev/license          # the license in force"
        )
    } else {
        "Switching is off: this license is yours and cannot be re-signed; edit the file \
         (it is watched) to change it."
            .to_owned()
    };
    let _ = writeln!(
        std::io::stdout(),
        "\nlicensegate dev: http://{proxy} → {upstream}\n\
         License: {file} (the deployment license: requests need no Authorization header)\n  \
         {license}\n\
         Policy: {policy}\n\
         {switching}\n\n\
         Press Ctrl-C to stop.",
        upstream = settings.proxy.upstream.url,
        file = status.license_file.display(),
    );
    let _ = std::io::stdout().flush();
}

/// `plan `pro`, feature `reports`, valid for 12h` or why none is in force.
fn describe_status(status: &DevStatus) -> String {
    match (&status.plan, status.expires_in_seconds) {
        (Some(plan), Some(left)) => format!(
            "plan `{plan}`, {}, valid for {}",
            describe_features(&status.features),
            humantime::format_duration(Duration::from_secs(left.max(0) as u64))
        ),
        _ => format!(
            "no license in force: {}",
            status.error.as_deref().unwrap_or("unknown")
        ),
    }
}

fn switch(args: SwitchArgs) -> i32 {
    let change = PlanChange {
        plan: args.plan,
        features: feature_list(args.features),
    };
    let body = serde_json::to_vec(&change).expect("a plan change serialises");
    let runtime = match build_runtime(1) {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("licensegate: cannot start the runtime: {error}");
            return exit::OS_ERROR;
        }
    };
    let admin = args.admin;
    let answer = runtime.block_on(exchange(
        admin,
        Method::POST,
        "/dev/license",
        Some(Bytes::from(body)),
    ));
    match answer {
        Err(Failure::Connect(error)) => {
            eprintln!("licensegate: no licensegate dev running on {admin} ({error})");
            exit::UNAVAILABLE
        }
        Err(Failure::Exchange(error)) => {
            eprintln!("licensegate: talking to {admin}: {error}");
            exit::UNAVAILABLE
        }
        Ok((StatusCode::OK, body)) => match serde_json::from_slice::<DevStatus>(&body) {
            Ok(status) => {
                println!("licensegate dev: now {}", describe_status(&status));
                exit::SUCCESS
            }
            Err(error) => {
                eprintln!("licensegate: {admin} answered an unexpected body: {error}");
                exit::FAILURE
            }
        },
        Ok((StatusCode::NOT_FOUND, _)) => {
            eprintln!(
                "licensegate: the licensegate on {admin} is not a `licensegate dev` (no /dev/license)"
            );
            exit::FAILURE
        }
        Ok((status, body)) => {
            eprintln!("licensegate: switch refused ({status}): {}", detail(&body));
            exit::FAILURE
        }
    }
}
