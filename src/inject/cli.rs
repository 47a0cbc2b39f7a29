//! `licensegate inject …`: the command line of sidecar injection.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use super::review::{FailurePolicy, Injector};
use super::server::{ServeSettings, Webhook};
use super::sidecar::{Defaults, Resources, SidecarMode, DEFAULT_IMAGE};
use crate::duration::HumanDuration;
use crate::exit;
use crate::process::{build_runtime, Signals, RUNTIME_GRACE};

#[derive(Debug, Subcommand)]
pub enum InjectCommand {
    /// Add the sidecar to the Pods, Deployments, StatefulSets, DaemonSets,
    /// ReplicaSets, Jobs and CronJobs in YAML from stdin (or FILE) and write
    /// the result to stdout; other resources pass through unchanged.
    Patch(PatchArgs),
    /// Serve the mutating admission webhook over HTTPS.
    Serve(ServeArgs),
    /// Make a CA and the webhook's serving certificate; print the caBundle.
    Certs(CertsArgs),
    /// Wait until the sidecar in this pod is ready (a classic sidecar's postStart hook).
    Wait(WaitArgs),
}

/// The sidecar every pod gets unless its annotations say otherwise.
#[derive(Debug, Clone, Args)]
pub struct DefaultsArgs {
    /// Sidecar image (annotation licensegate.io/image).
    #[arg(long, default_value = DEFAULT_IMAGE)]
    pub image: String,
    /// Port the proxy listens on; point Services' targetPort here (licensegate.io/proxy-port).
    #[arg(long, default_value_t = 8080)]
    pub proxy_port: u16,
    /// Admin port: probes, /metrics, /shutdown (licensegate.io/admin-port).
    #[arg(long, default_value_t = 9901)]
    pub admin_port: u16,
    /// ConfigMap holding config.yaml and policy files (licensegate.io/config).
    #[arg(long, default_value = "licensegate")]
    pub config_map: String,
    /// Secret holding license.jwt and the public keys (licensegate.io/license-secret).
    #[arg(long, default_value = "licensegate-license")]
    pub license_secret: String,
    /// CPU request, or `none` (licensegate.io/cpu-request).
    #[arg(long, default_value = "50m")]
    pub cpu_request: String,
    /// CPU limit, or `none` (licensegate.io/cpu-limit).
    #[arg(long, default_value = "1")]
    pub cpu_limit: String,
    /// Memory request, or `none` (licensegate.io/memory-request).
    #[arg(long, default_value = "32Mi")]
    pub memory_request: String,
    /// Memory limit, or `none` (licensegate.io/memory-limit).
    #[arg(long, default_value = "128Mi")]
    pub memory_limit: String,
    /// native: an init container with restartPolicy Always (Kubernetes ≥ 1.29);
    /// container: a regular first container (licensegate.io/sidecar-mode).
    #[arg(long, default_value = "native")]
    pub sidecar_mode: SidecarMode,
    /// Cluster name for license environment binding (LICENSEGATE_CLUSTER in the sidecar).
    #[arg(long)]
    pub cluster: Option<String>,
    /// Region for license environment binding (LICENSEGATE_REGION in the sidecar).
    #[arg(long)]
    pub region: Option<String>,
}

impl DefaultsArgs {
    fn defaults(&self) -> Result<Defaults, String> {
        let optional = |value: &str| (value != "none").then(|| value.to_owned());
        let defaults = Defaults {
            image: self.image.clone(),
            proxy_port: self.proxy_port,
            admin_port: self.admin_port,
            config_map: self.config_map.clone(),
            license_secret: self.license_secret.clone(),
            resources: Resources {
                cpu_request: optional(&self.cpu_request),
                cpu_limit: optional(&self.cpu_limit),
                memory_request: optional(&self.memory_request),
                memory_limit: optional(&self.memory_limit),
            },
            mode: self.sidecar_mode,
            cluster: self.cluster.clone(),
            region: self.region.clone(),
        };
        defaults.validate().map_err(|e| e.to_string())?;
        Ok(defaults)
    }
}

#[derive(Debug, Args)]
pub struct PatchArgs {
    /// YAML file to read; stdin when absent or `-`.
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub defaults: DefaultsArgs,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// HTTPS address for AdmissionReviews.
    #[arg(long, default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// PEM serving certificate (chain) for the webhook Service's DNS name.
    #[arg(long)]
    pub tls_cert: PathBuf,
    /// PEM private key of the serving certificate.
    #[arg(long)]
    pub tls_key: PathBuf,
    /// How often the certificate files are checked for a renewal.
    #[arg(long, default_value = "10s")]
    pub reload_interval: HumanDuration,
    /// For a pod that asked for the sidecar and cannot have it (bad annotation,
    /// port clash): Fail denies it with the reason, Ignore admits it uninjected
    /// with a warning.
    #[arg(long, default_value = "Fail")]
    pub failure_policy: FailurePolicy,
    #[command(flatten)]
    pub defaults: DefaultsArgs,
}

#[derive(Debug, Args)]
pub struct CertsArgs {
    /// The webhook's Service name.
    #[arg(long, default_value = "licensegate-injector")]
    pub service: String,
    /// The webhook's namespace.
    #[arg(long, default_value = "licensegate-system")]
    pub namespace: String,
    /// Write ca.crt, tls.crt and tls.key here.
    #[arg(long)]
    pub out_dir: PathBuf,
    /// Validity of the CA and the serving certificate, in days.
    #[arg(long, default_value_t = 365)]
    pub days: u32,
    /// Another DNS name for the serving certificate (repeatable).
    #[arg(long = "dns")]
    pub extra_names: Vec<String>,
    /// Replace existing files in --out-dir.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct WaitArgs {
    /// The sidecar's admin address.
    #[arg(long, default_value = "127.0.0.1:9901")]
    pub admin: SocketAddr,
    /// Give up after this long.
    #[arg(long, default_value = "120s")]
    pub timeout: HumanDuration,
}

/// Run an `inject` subcommand; returns the exit status.
pub fn run(command: InjectCommand) -> i32 {
    match command {
        InjectCommand::Patch(args) => patch(args),
        InjectCommand::Serve(args) => serve(args),
        InjectCommand::Certs(args) => certs(args),
        InjectCommand::Wait(args) => match super::wait::wait_ready(args.admin, args.timeout.0) {
            Ok(()) => exit::SUCCESS,
            Err(message) => {
                eprintln!("licensegate: {message}");
                exit::FAILURE
            }
        },
    }
}

fn patch(args: PatchArgs) -> i32 {
    let defaults = match args.defaults.defaults() {
        Ok(defaults) => defaults,
        Err(message) => {
            eprintln!("licensegate: {message}");
            return exit::CONFIG;
        }
    };
    let input = match args.file.as_deref().filter(|f| *f != Path::new("-")) {
        Some(path) => std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display())),
        None => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map(|_| text)
                .map_err(|e| format!("stdin: {e}"))
        }
    };
    let input = match input {
        Ok(input) => input,
        Err(message) => {
            eprintln!("licensegate: cannot read the input: {message}");
            return exit::DATA;
        }
    };
    match super::workload::inject_yaml(&input, &defaults) {
        Ok(injected) => {
            for note in &injected.notes {
                eprintln!("{note}");
            }
            let mut stdout = std::io::stdout().lock();
            if let Err(error) = stdout
                .write_all(injected.yaml.as_bytes())
                .and_then(|()| stdout.flush())
            {
                eprintln!("licensegate: cannot write the output: {error}");
                return exit::IO_ERROR;
            }
            exit::SUCCESS
        }
        Err(super::workload::PatchError::Input(message)) => {
            eprintln!("licensegate: {message}");
            exit::DATA
        }
        Err(error) => {
            eprintln!("licensegate: nothing written; cannot inject:\n{error}");
            exit::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> i32 {
    let defaults = match args.defaults.defaults() {
        Ok(defaults) => defaults,
        Err(message) => {
            eprintln!("licensegate: configuration error: {message}");
            return exit::CONFIG;
        }
    };
    if args.reload_interval.0.is_zero() {
        eprintln!("licensegate: configuration error: --reload-interval must be greater than zero");
        return exit::CONFIG;
    }
    let settings = ServeSettings {
        listen: args.listen,
        cert: args.tls_cert,
        key: args.tls_key,
        reload_interval: args.reload_interval.0,
        injector: Injector {
            defaults,
            failure_policy: args.failure_policy,
        },
    };
    let runtime = match build_runtime(2) {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("licensegate: cannot start the runtime: {error}");
            return exit::OS_ERROR;
        }
    };
    let code = runtime.block_on(async {
        let webhook = match Webhook::bind(settings).await {
            Ok(webhook) => webhook,
            Err(error) => {
                eprintln!("licensegate: {error}");
                return error.exit_code();
            }
        };
        // Before the address is announced, so a signal sent as soon as it
        // is known is not lost. After the first, later ones are ignored.
        let signals = Signals::install();
        let shutdown = async move {
            match signals {
                Ok(signals) => signals.first("stopping").await,
                Err(error) => {
                    tracing::error!(%error, "cannot install signal handlers");
                    std::future::pending::<()>().await;
                }
            }
        };
        let mut stdout = std::io::stdout();
        let _ = writeln!(
            stdout,
            "licensegate inject listening: webhook={}",
            webhook.local_addr()
        );
        let _ = stdout.flush();
        tracing::info!(addr = %webhook.local_addr(), "sidecar injection webhook started");
        webhook.serve(shutdown).await;
        exit::SUCCESS
    });
    runtime.shutdown_timeout(RUNTIME_GRACE);
    code
}

fn certs(args: CertsArgs) -> i32 {
    let generated = match super::certs::generate(
        &args.service,
        &args.namespace,
        &args.extra_names,
        args.days,
    ) {
        Ok(generated) => generated,
        Err(message) => {
            eprintln!("licensegate: {message}");
            return exit::FAILURE;
        }
    };
    let files = [
        ("ca.crt", &generated.ca_pem, 0o644),
        ("tls.crt", &generated.cert_pem, 0o644),
        ("tls.key", &generated.key_pem, 0o600),
    ];
    if let Err(message) = write_files(&args.out_dir, &files, args.force) {
        eprintln!("licensegate: {message}");
        return exit::FAILURE;
    }
    eprintln!(
        "wrote {0}/ca.crt, {0}/tls.crt and {0}/tls.key for {1}; the caBundle follows on stdout",
        args.out_dir.display(),
        generated.dns_names.join(", ")
    );
    use base64::Engine;
    let bundle = base64::engine::general_purpose::STANDARD.encode(generated.ca_pem.as_bytes());
    println!("{bundle}");
    exit::SUCCESS
}

fn write_files(dir: &Path, files: &[(&str, &String, u32)], force: bool) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !force {
        if let Some((name, _, _)) = files.iter().find(|(name, _, _)| dir.join(name).exists()) {
            return Err(format!(
                "{} exists; pass --force to replace it",
                dir.join(name).display()
            ));
        }
    }
    for (name, contents, mode) in files {
        let path = dir.join(name);
        let _ = std::fs::remove_file(&path);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(*mode)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        file.write_all(contents.as_bytes())
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}
