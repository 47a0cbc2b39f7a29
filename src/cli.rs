//! The command line: `licensegate run`, `demo`, `dev` and the tools
//! (`license`, `policy`, `inject`, `usage`).
//! The three that serve share `run_gateway`: one runtime, signals, exit status.

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

mod admin_client;
mod dev;
mod license;
mod policy;
mod usage;

use crate::bytesize::ByteSize;
use crate::config::{ConfigError, FileConfig, Overrides, Settings, Workers};
use crate::demo::EchoUpstream;
use crate::dev::{DevKey, Grant};
use crate::exit;
use crate::gateway::Gateway;
use crate::license::LicenseSource;
use crate::process::{build_runtime, Signals, RUNTIME_GRACE};
use crate::proxy::settings::{ProxySettings, UpstreamProtocol, UpstreamUrl};

#[derive(Debug, Parser)]
#[command(
    name = "licensegate",
    version,
    about = "A license-enforcing sidecar reverse proxy"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log filter, e.g. `info` or `licensegate=debug`.
    #[arg(long, global = true, env = "LICENSEGATE_LOG", default_value = "info")]
    pub log: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy in front of an upstream.
    Run(RunArgs),
    /// Run the proxy in front of an embedded echo server, with zero setup.
    Demo(DemoArgs),
    /// Run the proxy in front of a local dev server with a development
    /// license; `dev switch` changes its plan while it runs.
    Dev(dev::DevArgs),
    /// Make keys, issue and inspect license tokens.
    #[command(subcommand)]
    License(license::LicenseCommand),
    /// Check policy files and explain decisions.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Inject the sidecar into Kubernetes workloads: by hand or as an admission webhook.
    #[command(subcommand)]
    Inject(crate::inject::InjectCommand),
    /// Show what licenses have used of their limits and meters, from a
    /// running licensegate's admin port.
    Usage(usage::UsageArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// YAML config file; flags and LICENSEGATE_* variables override it.
    #[arg(long, short, env = "LICENSEGATE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Inbound address, e.g. 0.0.0.0:8080.
    #[arg(long, env = "LICENSEGATE_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Policy file or directory (repeatable); replaces `policy.paths`.
    #[arg(long, env = "LICENSEGATE_POLICY", value_delimiter = ',')]
    pub policy: Vec<PathBuf>,
    /// The workload's origin, http://host:port or https://host:port.
    #[arg(long, env = "LICENSEGATE_UPSTREAM")]
    pub upstream: Option<UpstreamUrl>,
    /// HTTP version towards the upstream: auto, http1 or http2.
    #[arg(long, env = "LICENSEGATE_UPSTREAM_PROTOCOL")]
    pub upstream_protocol: Option<UpstreamProtocol>,
    /// PEM CA bundle trusted for an https upstream (default: system roots).
    #[arg(long, env = "LICENSEGATE_UPSTREAM_CA")]
    pub upstream_ca: Option<PathBuf>,
    /// Admin address for /metrics, /healthz, /readyz [default: 127.0.0.1:9901].
    #[arg(long, env = "LICENSEGATE_ADMIN")]
    pub admin: Option<SocketAddr>,
    /// Runtime worker threads [default: available cores].
    #[arg(long, env = "LICENSEGATE_WORKERS")]
    pub workers: Option<Workers>,
    /// PEM certificate chain for inbound TLS.
    #[arg(long, env = "LICENSEGATE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for inbound TLS.
    #[arg(long, env = "LICENSEGATE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Keep and extend incoming X-Forwarded-* headers (only behind a trusted proxy).
    #[arg(long, env = "LICENSEGATE_TRUST_FORWARDED")]
    pub trust_forwarded: Option<bool>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Inbound address of the demo proxy.
    #[arg(long, env = "LICENSEGATE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Admin address of the demo proxy.
    #[arg(long, env = "LICENSEGATE_ADMIN", default_value = crate::config::DEFAULT_ADMIN)]
    pub admin: SocketAddr,
}

impl std::str::FromStr for UpstreamProtocol {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "auto" => Ok(UpstreamProtocol::Auto),
            "http1" => Ok(UpstreamProtocol::Http1),
            "http2" => Ok(UpstreamProtocol::Http2),
            other => Err(format!(
                "`{other}` is not a protocol; expected auto, http1 or http2"
            )),
        }
    }
}

/// Parse arguments, run the command, return the process exit status.
pub fn main() -> i32 {
    let cli = Cli::parse();
    init_logging(&cli.log);
    match cli.command {
        Command::Run(args) => run(args),
        Command::Demo(args) => demo(args),
        Command::Dev(args) => dev::run(args),
        Command::License(command) => license::run(command),
        Command::Policy(command) => policy::run(command),
        Command::Inject(command) => crate::inject::run(command),
        Command::Usage(args) => usage::run(args),
    }
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|error| {
        eprintln!("licensegate: ignoring invalid log filter `{filter}`: {error}");
        tracing_subscriber::EnvFilter::new("info")
    });
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour only for people: log collectors get plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

fn load_settings(args: RunArgs) -> Result<Settings, ConfigError> {
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    Settings::resolve(
        file,
        Overrides {
            listen: args.listen,
            admin: args.admin,
            workers: args.workers,
            upstream: args.upstream,
            upstream_protocol: args.upstream_protocol,
            upstream_ca: args.upstream_ca,
            tls_cert: args.tls_cert,
            tls_key: args.tls_key,
            trust_forwarded: args.trust_forwarded,
            policy: args.policy,
        },
    )
}

fn run(args: RunArgs) -> i32 {
    let settings = match load_settings(args) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("licensegate: configuration error: {error}");
            return exit::CONFIG;
        }
    };
    run_gateway(settings.workers, || async {
        let gateway = Gateway::bind(&settings).map_err(|error| {
            eprintln!("licensegate: {error}");
            error.exit_code()
        })?;
        announce(&gateway);
        tracing::info!(
            upstream = %settings.proxy.upstream.url,
            workers = settings.workers,
            tls = settings.proxy.tls.is_some(),
            "licensegate started"
        );
        log_connection_limit(&settings.proxy);
        Ok(gateway)
    })
}

fn demo(args: DemoArgs) -> i32 {
    run_gateway(crate::config::default_workers(), || async {
        let echo = EchoUpstream::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .map_err(|error| {
                eprintln!("licensegate: cannot start the demo upstream: {error}");
                exit::OS_ERROR
            })?;
        let upstream: UpstreamUrl = format!("http://{}", echo.local_addr())
            .parse()
            .expect("a loopback address is a valid origin");
        // The proxy's upstream: it ends with the runtime, after the drain.
        tokio::spawn(echo.serve());
        let (key, policy) = DevKey::create("demo")
            .and_then(|key| {
                let policy = key.dir().join("demo-policy.yaml");
                std::fs::write(&policy, DEMO_POLICY)
                    .map_err(|e| format!("{}: {e}", policy.display()))?;
                Ok((key, policy))
            })
            .map_err(|message| {
                eprintln!("licensegate: cannot set up the demo license: {message}");
                exit::OS_ERROR
            })?;
        let grant = Grant::demo();
        let token = key.sign(&grant);
        let mut settings = Settings::resolve(
            FileConfig::default(),
            Overrides {
                listen: Some(args.listen),
                admin: Some(args.admin),
                upstream: Some(upstream),
                policy: vec![policy.clone()],
                ..Overrides::default()
            },
        )
        .expect("demo settings are complete");
        settings.license =
            Some(key.license_settings(LicenseSource::Header(http::header::AUTHORIZATION)));
        let gateway = Gateway::bind(&settings).map_err(|error| {
            eprintln!("licensegate: {error}");
            eprintln!("hint: pick other ports with --listen and --admin");
            error.exit_code()
        })?;
        announce(&gateway);
        let proxy = gateway.proxy_addr();
        let admin = gateway.admin_addr();
        // Write errors are ignored: a closed stdout must not stop the proxy.
        let _ = writeln!(
            std::io::stdout(),
            "\nlicensegate demo: proxying to an embedded echo server at {upstream}\n\
             Policy: {policy} (edit it: changes apply at once)\n\
             A development key was generated and signed this license ({grant}):\n\n\
             TOKEN={token}\n\n\
             Try:\n  \
             curl -i http://{proxy}/healthz                                   # public route: no license needed\n  \
             curl -i http://{proxy}/hello                                     # 401: no license\n  \
             curl -i -H \"Authorization: Bearer $TOKEN\" http://{proxy}/hello    # forwarded; the echo shows what arrived (x-license-* headers)\n  \
             curl -i -H \"Authorization: Bearer ${{TOKEN}}x\" http://{proxy}/hello   # 401: tampered token\n  \
             curl -i -H \"Authorization: Bearer $TOKEN\" -H 'x-user: alice' http://{proxy}/api/reports/q3  # 200: feature `reports`\n  \
             curl -i -H \"Authorization: Bearer $TOKEN\" -H 'x-user: alice' http://{proxy}/api/export/q3   # 403 feature_not_licensed\n  \
             for u in bob carol dave; do curl -s -o /dev/null -w \"$u %{{http_code}}\\n\" -H \"Authorization: Bearer $TOKEN\" -H \"x-user: $u\" http://{proxy}/api/items; done\n      \
             # dave: 429 seat_limit_reached (alice, bob and carol hold the 3 seats)\n  \
             for i in $(seq 20); do curl -s -o /dev/null -w '%{{http_code}} ' -H \"Authorization: Bearer $TOKEN\" -H 'x-user: alice' http://{proxy}/api/items; done; echo\n      \
             # 20 per minute per license: the 21st request is 429 rate_limited with Retry-After\n  \
             curl -s http://{admin}/metrics | grep licensegate_decisions       # decisions by reason and route\n  \
             curl -s http://{admin}/license                                   # license status\n\n\
             Press Ctrl-C to stop.",
            upstream = settings.proxy.upstream.url,
            policy = policy.display(),
            grant = grant.describe(),
        );
        let _ = std::io::stdout().flush();
        Ok(gateway)
    })
}

/// The demo's policy, `policies/demo.yaml`, built into the binary.
pub const DEMO_POLICY: &str = include_str!("../policies/demo.yaml");

/// Run the gateway that `start` binds (and announces) on a runtime of
/// `workers` threads until it drains; `start`'s error is the exit status.
/// The one place `run`, `demo` and `dev` build their runtime and catch
/// signals.
fn run_gateway<F, Start>(workers: usize, start: Start) -> i32
where
    Start: FnOnce() -> F,
    F: Future<Output = Result<Gateway, i32>>,
{
    let runtime = match build_runtime(workers) {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("licensegate: cannot start the runtime: {error}");
            return exit::OS_ERROR;
        }
    };
    let code = runtime.block_on(async {
        // Before the ports are announced: a signal sent as soon as they are
        // known must drain, not kill.
        let signals = Signals::install();
        let mut gateway = match start().await {
            Ok(gateway) => gateway,
            Err(code) => return code,
        };
        match signals {
            Ok(signals) => gateway = gateway.with_signals(signals),
            Err(error) => tracing::error!(
                %error,
                "cannot install signal handlers; use POST /shutdown on the admin port"
            ),
        }
        gateway.run().await.exit_code()
    });
    // Tunnels and pooled upstream connections end with the runtime.
    runtime.shutdown_timeout(RUNTIME_GRACE);
    code
}

/// The one stdout line tools and tests read to find the bound ports. Write
/// errors are ignored: a closed stdout must not stop the proxy.
/// How `limits.max_connections` stands against the memory budget, once at
/// start: a limit the budget cannot hold means an OOM kill under load.
fn log_connection_limit(proxy: &ProxySettings) {
    let limits = &proxy.limits;
    let Some(budget) = limits.memory else {
        return;
    };
    let per_connection = ByteSize(proxy.http1.connection_bytes());
    if limits.max_connections_derived {
        tracing::info!(
            max_connections = limits.max_connections,
            memory = %ByteSize(budget.bytes),
            source = %budget.source,
            %per_connection,
            "max_connections derived from the memory budget"
        );
    }
    if let Some((needed, budget)) = limits.over_budget(proxy.http1) {
        let advice = if limits.max_connections_derived {
            "the budget is below what the smallest derived limit needs; raise the memory limit"
        } else {
            "lower limits.max_connections, or leave it out to derive it from the budget"
        };
        tracing::warn!(
            "limits.max_connections {} needs about {} ({per_connection} per connection on top of {}), more than the memory budget of {} ({}): {advice}",
            limits.max_connections,
            ByteSize(needed),
            ByteSize(crate::proxy::settings::BASE_RESERVE),
            ByteSize(budget.bytes),
            budget.source,
        );
    }
}

fn announce(gateway: &Gateway) {
    let mut stdout = std::io::stdout();
    let _ = writeln!(
        stdout,
        "licensegate listening: proxy={} admin={}",
        gateway.proxy_addr(),
        gateway.admin_addr()
    );
    let _ = stdout.flush();
}
