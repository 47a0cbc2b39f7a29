//! The composition root: bind the proxy and admin listeners from settings,
//! then run them with their background tasks until the process drains, and
//! stop everything in order (`Gateway::run`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::admin::{Admin, AdminServer, UsageReader};
use crate::config::{ConfigError, Settings};
use crate::decision::{
    DecisionEngine, DecisionMetrics, EngineSettings, ThresholdAnnouncer, WebSocketScope,
};
use crate::dev::{plan_names, DevControl, DevLicense};
use crate::exit;
use crate::license::watch::{update_readiness, LicenseWatch, LICENSE_READY};
use crate::license::{LicenseGate, LicenseMetrics};
use crate::lifecycle::{Lifecycle, Phase};
use crate::limits::instances::{CurrentLimit, InstanceSlot, SlotState, SlotStatus};
use crate::limits::persist::CounterFile;
use crate::limits::shared::SharedStore;
use crate::limits::{Clock, MemoryStore, StoreMetrics, DEFAULT_HEARTBEAT};
use crate::metering::{Metering, MeteringError, MeteringTasks};
use crate::metrics::Registry;
use crate::policy::{InstancesDef, Policy};
use crate::process::{drain_on_signal, Signals};
use crate::proxy::forward::Forwarder;
use crate::proxy::server::{BindError, ProxyServer};
use crate::proxy::{ProxyMetrics, Shared};
use crate::reload::{PolicyWatch, POLICY_NOTE};
use crate::user::source::IssuerJwks;
use crate::user::{Users, UsersError};
use tokio::sync::Notify;

mod tasks;

pub use tasks::TASKS_NOTE;
use tasks::{Task, Tasks};

/// How long the proxy may take beyond `timeouts.drain`, which bounds its own
/// wait for open connections, before shutdown goes on without it.
const DRAIN_MARGIN: Duration = Duration::from_secs(5);

/// How long upkeep tasks get to stop: each is dropped at its next `.await`,
/// so only a task stuck between two of them takes any time.
const UPKEEP_BOUND: Duration = Duration::from_secs(5);

/// How long the admin server and the signal handler get to stop.
const CLOSING_BOUND: Duration = Duration::from_secs(1);

/// Readiness condition: the first connection attempt to the shared store
/// has been made (ready afterwards whatever its result).
pub const STORE_READY: &str = "store";

/// Readiness condition: the proxy listener is bound and accepting.
pub const LISTENER_READY: &str = "listener";

/// Readiness condition (and note): this replica holds an instance slot of
/// its license, or the license sets no instance limit, or the policy lets
/// a replica without one stay ready (`instances.on_limit`).
pub const INSTANCE_READY: &str = "instance";

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The upstream's CA bundle cannot be used.
    #[error(transparent)]
    UpstreamTls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    License(#[from] crate::license::GateError),
    #[error("policy:\n{0}")]
    Policy(#[from] crate::policy::PolicyError),
    #[error("metering: {0}")]
    Metering(#[from] MeteringError),
    /// An identity provider's key source cannot be set up.
    #[error(transparent)]
    Users(#[from] UsersError),
}

impl StartError {
    /// Exit status: [`exit::CONFIG`] for configuration (TLS files, license
    /// keys and policy included), [`exit::OS_ERROR`] for binding.
    pub fn exit_code(&self) -> i32 {
        match self {
            StartError::Config(_)
            | StartError::Bind(BindError::Tls(_))
            | StartError::UpstreamTls(_)
            | StartError::License(_)
            | StartError::Policy(_)
            | StartError::Users(_)
            | StartError::Metering(MeteringError::Settings(_) | MeteringError::Sink(_)) => {
                exit::CONFIG
            }
            StartError::Bind(BindError::Io { .. })
            | StartError::Metering(MeteringError::Journal(_)) => exit::OS_ERROR,
        }
    }
}

/// Every metric of one process: the shared registry and each subsystem's
/// own families, registered on it when built here.
pub struct Metrics {
    pub registry: Registry,
    pub license: Arc<LicenseMetrics>,
    /// Decisions, and the policy and limit-usage families the engine drives.
    pub decision: Arc<DecisionMetrics>,
    pub store: Arc<StoreMetrics>,
    pub proxy: Arc<ProxyMetrics>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        Metrics {
            license: Arc::new(LicenseMetrics::new(&registry)),
            decision: Arc::new(DecisionMetrics::new(&registry)),
            store: Arc::new(StoreMetrics::new(&registry)),
            proxy: Arc::new(ProxyMetrics::new(&registry)),
            registry,
        }
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> Vec<u8> {
        self.registry.render()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Both listeners, bound and ready to serve.
pub struct Gateway {
    proxy: ProxyServer,
    admin: AdminServer,
    lifecycle: Arc<Lifecycle>,
    metrics: Arc<Metrics>,
    license: Option<(Arc<LicenseGate>, LicenseWatch)>,
    shared: Arc<Shared>,
    policy: Option<(PolicyWatch, Option<CounterFile>, Duration)>,
    shared_store: Option<Arc<SharedStore>>,
    /// This replica's instance slot, under a deployment license.
    instances: Option<Arc<InstanceSlot>>,
    /// The flusher and exporters of metering, when it is on.
    metering: Option<MeteringTasks>,
    dev: Option<Arc<DevControl>>,
    /// Each identity provider's key source, with its unknown-`kid` signal.
    users: Option<Vec<(IssuerJwks, Arc<Notify>)>>,
    drain_timeout: Duration,
    signals: Option<Signals>,
}

/// How a gateway's run ended.
#[derive(Debug)]
pub struct Stopped {
    /// The essential tasks that panicked or ended before they were told to
    /// stop, which drained the process.
    pub failed: Vec<&'static str>,
}

impl Stopped {
    /// [`exit::SUCCESS`] after a drain that was asked for, [`exit::SOFTWARE`]
    /// after one that a failed essential task started.
    pub fn exit_code(&self) -> i32 {
        if self.failed.is_empty() {
            exit::SUCCESS
        } else {
            exit::SOFTWARE
        }
    }
}

impl Gateway {
    /// Build everything the settings describe and bind both ports. Must run
    /// inside a Tokio runtime. Nothing is served until [`Gateway::run`].
    pub fn bind(settings: &Settings) -> Result<Gateway, StartError> {
        Gateway::bind_with(settings, None)
    }

    /// [`Gateway::bind`] for `licensegate dev`: `settings.license` reads
    /// `dev`'s file, and the admin port gets `/dev/license` to switch it.
    pub fn bind_dev(settings: &Settings, dev: DevLicense) -> Result<Gateway, StartError> {
        Gateway::bind_with(settings, Some(dev))
    }

    fn bind_with(settings: &Settings, dev: Option<DevLicense>) -> Result<Gateway, StartError> {
        crate::tls::install_crypto_provider();
        let metrics = Arc::new(Metrics::new());
        let lifecycle = Arc::new(Lifecycle::new());
        lifecycle.require(LISTENER_READY, "proxy listener not started");

        let license = match &settings.license {
            Some(license) => Some(Arc::new(LicenseGate::new(
                license,
                Arc::clone(&metrics.license),
            )?)),
            None => None,
        };
        if let Some(gate) = &license {
            if !gate.is_per_request() {
                lifecycle.require(LICENSE_READY, "license not loaded");
            }
        }
        let engine_settings = EngineSettings {
            license_headers: settings.upstream_headers.clone(),
            max_keys: settings
                .policy
                .as_ref()
                .map_or(MemoryStore::DEFAULT_MAX_KEYS, |p| p.max_keys_per_limit),
            entitlement_capacity: settings.license.as_ref().map_or(1, |l| l.cache_capacity),
            trust_forwarded: settings.proxy.forwarded.trust_incoming,
            websocket: settings
                .policy
                .as_ref()
                .map_or(WebSocketScope::Routes, |p| p.websocket),
        };
        let store = Arc::new(MemoryStore::new(Clock::system(), engine_settings.max_keys));
        let mut engine = DecisionEngine::new(
            license.clone(),
            Arc::clone(&store),
            &engine_settings,
            Arc::clone(&metrics.decision),
        );
        let users = match &settings.users {
            Some(user_settings) => {
                let users = Users::new(
                    user_settings,
                    &metrics.registry,
                    Some(Arc::clone(&lifecycle)),
                )?;
                engine = engine.with_users(Arc::clone(&users.verifier));
                Some(users)
            }
            None => None,
        };
        let shared_store = settings.store.as_ref().map(|store| {
            lifecycle.require(STORE_READY, "connecting to the shared counter store");
            Arc::new(SharedStore::new(
                store.clone(),
                Arc::clone(&metrics.store),
                Clock::system(),
            ))
        });
        // The deployment license's instance slot (a per-request license is
        // not this replica's to hold).
        let instances = match &license {
            Some(gate) if !gate.is_per_request() => {
                if settings.store.is_some() {
                    // Without a store the first pass decides at once.
                    lifecycle.require(INSTANCE_READY, "instance slot not checked yet");
                }
                let (instance, heartbeat) = match &settings.store {
                    Some(store) => (store.instance.clone(), store.heartbeat),
                    None => (crate::config::default_instance_name(), DEFAULT_HEARTBEAT),
                };
                let slot = Arc::new(InstanceSlot::new(
                    instance,
                    settings.store.is_some(),
                    heartbeat,
                    &metrics.registry,
                ));
                engine = engine.with_instance_slot(Arc::clone(&slot));
                Some(slot)
            }
            _ => None,
        };
        if let Some(shared) = &shared_store {
            if settings.policy.is_none() {
                tracing::warn!("`store` is set but there is no policy: nothing to count");
            }
            engine = engine.with_shared_store(Arc::clone(shared));
        }
        let mut counters_file = None;
        match &settings.policy {
            Some(policy_settings) => {
                let policy = Policy::load(&policy_settings.paths)?;
                for warning in &policy.warnings {
                    tracing::warn!("policy: {warning}");
                }
                let summary = crate::reload::summary(&policy);
                tracing::info!("policy loaded: {summary}");
                lifecycle.note(POLICY_NOTE, summary);
                if license.as_ref().is_some_and(|gate| gate.is_per_request())
                    && policy.instances != InstancesDef::default()
                {
                    tracing::warn!(
                        "the policy's `instances` section applies to a deployment license (file or refresh source); with a license per request no instance slot is held"
                    );
                }
                engine = engine.with_policy(policy)?;
                if let Some(path) = &policy_settings.counters_file {
                    let file = CounterFile::new(path.clone());
                    match file.restore(&store) {
                        Ok(restored) => {
                            tracing::info!(path = %path.display(), restored, "quota counters restored")
                        }
                        Err(error) => {
                            tracing::error!(%error, "cannot read the counters file; quotas start from zero")
                        }
                    }
                    counters_file = Some(file);
                }
            }
            None => {
                let what = if license.is_some() {
                    "no policy configured: every request with a valid license is forwarded (no routes, features or limits)"
                } else {
                    "no policy and no license configured: forwarding every request (plain pass-through proxy)"
                };
                tracing::warn!("{what}");
                lifecycle.note(POLICY_NOTE, what);
                metrics.decision.policy.loaded.set(0);
            }
        }

        let (metering, metering_tasks) = match &settings.metering {
            Some(metering_settings) => {
                let (metering, tasks) =
                    Metering::start(metering_settings.clone(), &metrics.registry)?;
                (Some(metering), Some(tasks))
            }
            None => (None, None),
        };
        // Quota thresholds are announced with or without metering (a log
        // line and a metric); with it, as billing events too.
        engine = engine.with_thresholds(Arc::new(ThresholdAnnouncer::new(
            metering.clone(),
            shared_store.clone(),
            &metrics.registry,
        )));
        let metered = engine
            .with_current_policy(|policy| !policy.meters.is_empty())
            .unwrap_or(false);
        if metered && metering.is_none() {
            tracing::warn!(
                "the policy defines meters but `metering` is not configured: no usage is recorded \
                 (usage headers are still removed from responses)"
            );
        }
        let forwarder = Forwarder::new(
            &settings.proxy,
            &settings.upstream_headers,
            license.as_ref().and_then(|gate| gate.token_header()),
            engine.users().map(|users| &users.settings().forward),
            &metrics.proxy,
        )?;
        let shared = Arc::new(Shared {
            engine,
            forwarder,
            metrics: Arc::clone(&metrics.proxy),
            metering,
        });
        let dev = match (dev, &license) {
            (Some(dev), Some(gate)) => {
                let policy = Arc::clone(&shared);
                Some(Arc::new(DevControl::new(
                    dev,
                    Arc::clone(gate),
                    Box::new(move || policy.engine.with_current_policy(plan_names)),
                )))
            }
            (Some(_), None) => {
                return Err(StartError::Config(ConfigError::Invalid {
                    setting: "license",
                    message: "a dev license needs the license settings that read it".into(),
                }))
            }
            (None, _) => None,
        };
        let proxy = ProxyServer::bind(&settings.proxy, Arc::clone(&shared))?;
        let admin = AdminServer::bind(
            settings.admin,
            Arc::new(Admin {
                lifecycle: Arc::clone(&lifecycle),
                metrics: metrics.registry.clone(),
                license: license.clone(),
                dev: dev.clone(),
                usage: Some(UsageReader::new({
                    let shared = Arc::clone(&shared);
                    move |request| {
                        let shared = Arc::clone(&shared);
                        Box::pin(async move { shared.engine.usage(request).await })
                    }
                })),
                metering: shared.metering.clone(),
                users: users.as_ref().map(|users| users.board.clone()),
                instances: instances.clone(),
            }),
        )?;
        let license = license.map(|gate| {
            let watch = LicenseWatch::start(Arc::clone(&gate));
            (gate, watch)
        });
        let policy = settings.policy.as_ref().map(|p| {
            (
                PolicyWatch::start(Arc::clone(&shared), p.paths.clone()),
                counters_file,
                p.persist_interval,
            )
        });
        Ok(Gateway {
            proxy,
            admin,
            lifecycle,
            metrics,
            license,
            shared,
            policy,
            shared_store,
            instances,
            metering: metering_tasks,
            dev,
            users: users.map(|users| users.sources),
            drain_timeout: settings.proxy.timeouts.drain,
            signals: None,
        })
    }

    /// Drain on SIGTERM or SIGINT, and exit at once on a second one, for as
    /// long as the gateway runs.
    pub fn with_signals(mut self, signals: Signals) -> Gateway {
        self.signals = Some(signals);
        self
    }

    /// The dev license, under `licensegate dev`.
    pub fn dev(&self) -> Option<Arc<DevControl>> {
        self.dev.clone()
    }

    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy.local_addr()
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr()
    }

    pub fn lifecycle(&self) -> Arc<Lifecycle> {
        Arc::clone(&self.lifecycle)
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// Serve until the process drains, then stop in phases, each within a
    /// bound: the proxy finishes its connections while everything else still
    /// runs (the admin port shows `/readyz` 503 throughout); then upkeep
    /// stops, the counters file is written and leases go back; the admin
    /// port and the signal handler close last. Tunnels and pooled
    /// connections end with the runtime.
    pub async fn run(self) -> Stopped {
        let Gateway {
            proxy,
            admin,
            lifecycle,
            license,
            shared,
            policy,
            shared_store,
            instances,
            metering,
            users,
            drain_timeout,
            signals,
            ..
        } = self;
        // The listener is bound, so connections queue from here on: ready
        // before the admin port can be asked.
        lifecycle.set(LISTENER_READY, Ok(()));
        let mut tasks = Tasks::new(Arc::clone(&lifecycle));

        // Until draining begins all of these run. They stop in this order:
        // 1. the proxy stops accepting and lets open connections finish;
        tasks.spawn(
            Task::essential("proxy", Phase::Draining).awaited(),
            proxy.serve(Arc::clone(&lifecycle)),
        );
        // 2. upkeep, once the proxy has drained (the instance slot is
        // given back as soon as draining begins);
        if let (Some(slot), Some((gate, _))) = (instances, &license) {
            tasks.spawn(
                Task::upkeep("instance slot"),
                instance_upkeep(
                    slot,
                    Arc::clone(gate),
                    &shared,
                    shared_store.clone(),
                    &lifecycle,
                ),
            );
        }
        if let Some((gate, watch)) = license {
            update_readiness(&gate, &lifecycle, gate.refresh_state());
            tasks.spawn(
                Task::upkeep("license watch"),
                watch.run(Arc::clone(&lifecycle)),
            );
            if let Some(refresh) = gate.refresh_task() {
                tasks.spawn(Task::upkeep("license refresh"), refresh);
            }
            if let Some(poll) = gate.revocation_task() {
                tasks.spawn(Task::upkeep("revocation list polling"), poll);
            }
        }
        let mut counters_file = None;
        if let Some((watch, file, interval)) = policy {
            tasks.spawn(
                Task::upkeep("policy watch"),
                watch.run(Arc::clone(&lifecycle)),
            );
            let upkeep = crate::reload::maintain(Arc::clone(&shared), file.clone(), interval);
            tasks.spawn(Task::upkeep("counters upkeep"), upkeep);
            counters_file = file;
        }
        if let Some(store) = &shared_store {
            let lifecycle = Arc::clone(&lifecycle);
            let upkeep = Arc::clone(store).maintain(move |store| {
                // Fallback never blocks traffic: ready either way.
                lifecycle.set(STORE_READY, Ok(()));
                lifecycle.note(STORE_READY, store.describe());
            });
            tasks.spawn(Task::upkeep("store upkeep"), upkeep);
        }
        for (source, unknown_kid) in users.into_iter().flatten() {
            let stopping = Arc::clone(&lifecycle);
            tasks.spawn(
                Task::upkeep("user keys"),
                source.run(unknown_kid, async move {
                    stopping.reached(Phase::Stopping).await
                }),
            );
        }
        if let Some(upkeep) = shared.forwarder.idle_upkeep() {
            tasks.spawn(Task::upkeep("upstream pool upkeep"), upkeep);
        }
        if let Some(metering) = metering {
            // Awaited at `Stopping`, once the proxy has drained: every
            // served request is recorded, and the open window is journalled.
            let stopping = Arc::clone(&lifecycle);
            tasks.spawn(
                Task::upkeep("metering flush").awaited(),
                metering
                    .flusher
                    .run(async move { stopping.reached(Phase::Stopping).await }),
            );
            // Exporters run on until `Closing`, to send what that last
            // flush journalled; whatever they have not sent by then is sent
            // by the next start. A billing outage never gates readiness.
            for exporter in metering.exporters {
                let closing = Arc::clone(&lifecycle);
                tasks.spawn(
                    Task::upkeep_until("metering export", Phase::Closing).awaited(),
                    exporter.run(async move { closing.reached(Phase::Closing).await }),
                );
            }
        }
        // 3. what lets the process be watched and stopped, last.
        tasks.spawn(
            Task::essential("admin server", Phase::Closing),
            admin.serve(),
        );
        if let Some(signals) = signals {
            let handler = drain_on_signal(signals, Arc::clone(&lifecycle));
            tasks.spawn(Task::essential("signal handler", Phase::Closing), handler);
        }

        tasks.until_drained().await;
        tasks
            .stop(Phase::Draining, drain_timeout + DRAIN_MARGIN)
            .await;
        tasks.stop(Phase::Stopping, UPKEEP_BOUND).await;
        // Drained: every counted request is in; nothing is lost on SIGTERM.
        if let Some(file) = counters_file {
            crate::reload::save_counters(&shared, &file);
            tracing::info!(path = %file.path().display(), "quota counters saved");
        }
        if let Some(store) = shared_store {
            // Drained: unspent leased units go back, so a rolling deploy
            // does not use up quotas it never served.
            store.return_leases(true).await;
            // Quota units counted locally in an outage and not merged yet
            // (the store came back moments ago): merged before leaving.
            store.reconcile().await;
        }
        tasks.stop(Phase::Closing, CLOSING_BOUND).await;
        Stopped {
            failed: tasks.finish(),
        }
    }
}

/// Hold the instance slot of the deployment license in force under the
/// policy in force, until draining begins; readiness follows it.
fn instance_upkeep(
    slot: Arc<InstanceSlot>,
    gate: Arc<LicenseGate>,
    shared: &Arc<Shared>,
    store: Option<Arc<SharedStore>>,
    lifecycle: &Arc<Lifecycle>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let shared = Arc::clone(shared);
    let changed = gate.changed();
    let current = move || -> CurrentLimit {
        let loaded = gate.loaded().ok_or(())?;
        let (license, _) = loaded.license.as_ref().ok_or(())?;
        let claims = &license.claims;
        Ok(shared
            .engine
            .with_current_policy(|policy| policy.instance_limit(claims))
            .unwrap_or_else(|| InstancesDef::default().limit_for(claims, None)))
    };
    let report = {
        let lifecycle = Arc::clone(lifecycle);
        move |status: &SlotStatus| {
            lifecycle.set(INSTANCE_READY, status.ready());
            if matches!(status.state, SlotState::Unlimited | SlotState::Unlicensed) {
                lifecycle.forget_note(INSTANCE_READY);
            } else {
                lifecycle.note(INSTANCE_READY, status.describe());
            }
        }
    };
    let draining = Arc::clone(lifecycle);
    slot.run(
        store,
        current,
        changed,
        async move { draining.drained().await },
        report,
    )
}
