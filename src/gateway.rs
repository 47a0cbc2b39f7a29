//! The composition root: bind the proxy and admin listeners from settings,
//! then run them until the lifecycle drains.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::admin::{Admin, AdminServer};
use crate::config::{ConfigError, Settings};
use crate::dev::{plan_names, DevControl, DevLicense};
use crate::exit;
use std::time::Duration;

use crate::decision::{DecisionEngine, EngineSettings, WebSocketScope};
use crate::license::watch::{update_readiness, LicenseWatch, LICENSE_READY};
use crate::license::LicenseGate;
use crate::lifecycle::Lifecycle;
use crate::limits::persist::CounterFile;
use crate::limits::shared::SharedStore;
use crate::limits::{Clock, MemoryStore};
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::proxy::forward::Forwarder;
use crate::proxy::server::{BindError, ProxyServer};
use crate::proxy::Shared;
use crate::reload::{PolicyWatch, POLICY_NOTE};

/// Readiness condition: the first connection attempt to the shared store
/// has been made (ready afterwards whatever its result).
pub const STORE_READY: &str = "store";

/// Readiness condition: the proxy listener is bound and accepting.
pub const LISTENER_READY: &str = "listener";

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error(transparent)]
    License(#[from] crate::license::GateError),
    #[error("policy:\n{0}")]
    Policy(#[from] crate::policy::PolicyError),
}

impl StartError {
    /// Exit status: [`exit::CONFIG`] for configuration (TLS files, license
    /// keys and policy included), [`exit::OS_ERROR`] for binding.
    pub fn exit_code(&self) -> i32 {
        match self {
            StartError::Config(_)
            | StartError::Bind(BindError::Tls(_))
            | StartError::License(_)
            | StartError::Policy(_) => exit::CONFIG,
            StartError::Bind(BindError::Io { .. }) => exit::OS_ERROR,
        }
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
    dev: Option<Arc<DevControl>>,
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
        crate::proxy::tls::install_crypto_provider();
        let metrics = Arc::new(Metrics::new());
        let lifecycle = Arc::new(Lifecycle::new());
        lifecycle.require(LISTENER_READY, "proxy listener not started");

        let license = match &settings.license {
            Some(license) => Some(Arc::new(LicenseGate::new(license, Arc::clone(&metrics))?)),
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
            trust_forwarded: settings.forwarded.trust_incoming,
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
            Arc::clone(&metrics),
        );
        let shared_store = settings.store.as_ref().map(|store| {
            lifecycle.require(STORE_READY, "connecting to the shared counter store");
            Arc::new(SharedStore::new(
                store.clone(),
                Arc::clone(&metrics.store),
                Clock::system(),
            ))
        });
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
                metrics.policy.loaded.set(0);
            }
        }

        let shared = Arc::new(Shared {
            engine,
            forwarder: Forwarder::new(settings, &metrics)?,
            metrics: Arc::clone(&metrics),
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
        let proxy = ProxyServer::bind(settings, Arc::clone(&shared))?;
        let admin = AdminServer::bind(
            settings.admin,
            Arc::new(Admin {
                lifecycle: Arc::clone(&lifecycle),
                metrics: Arc::clone(&metrics),
                license: license.clone(),
                dev: dev.clone(),
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
            dev,
        })
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

    /// Serve until draining completes. The admin port keeps answering until
    /// the proxy has drained, so `/readyz` shows 503 throughout.
    pub async fn run(self) {
        // The listener is bound, so connections queue from here on: ready
        // before the admin port can be asked.
        self.lifecycle.set(LISTENER_READY, Ok(()));
        let license = self.license.map(|(gate, watch)| {
            update_readiness(&gate, &self.lifecycle, gate.refresh_state());
            let refresh = gate.spawn_refresh();
            (
                tokio::spawn(watch.run(Arc::clone(&self.lifecycle))),
                refresh,
            )
        });
        let policy = self.policy.map(|(watch, file, interval)| {
            let watch = tokio::spawn(watch.run(Arc::clone(&self.lifecycle)));
            let upkeep = tokio::spawn(crate::reload::maintain(
                Arc::clone(&self.shared),
                file.clone(),
                interval,
            ));
            (watch, upkeep, file)
        });
        let shared_store = self.shared_store.clone();
        let store = self.shared_store.map(|store| {
            let lifecycle = Arc::clone(&self.lifecycle);
            tokio::spawn(store.maintain(move |store| {
                // Fallback never blocks traffic: ready either way.
                lifecycle.set(STORE_READY, Ok(()));
                lifecycle.note(STORE_READY, store.describe());
            }))
        });
        let admin = tokio::spawn(self.admin.serve());
        let shared = Arc::clone(&self.shared);
        let upstream_upkeep = tokio::spawn(async move {
            shared.forwarder.expire_idle_upstreams().await;
        });
        self.proxy.serve(Arc::clone(&self.lifecycle)).await;
        upstream_upkeep.abort();
        if let Some((watch, upkeep, file)) = policy {
            watch.abort();
            upkeep.abort();
            // Drained: every counted request is in; nothing is lost on SIGTERM.
            if let Some(file) = file {
                crate::reload::save_counters(&self.shared, &file);
                tracing::info!(path = %file.path().display(), "quota counters saved");
            }
        }
        admin.abort();
        if let Some(store) = store {
            store.abort();
        }
        if let Some(shared) = shared_store {
            // Drained: unspent leased units go back, so a rolling deploy
            // does not use up quotas it never served.
            shared.return_leases(true).await;
        }
        if let Some((watch, refresh)) = license {
            watch.abort();
            if let Some(refresh) = refresh {
                refresh.abort();
            }
        }
    }
}
