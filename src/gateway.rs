//! The composition root: bind the proxy and admin listeners from settings,
//! then run them until the lifecycle drains.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::admin::{Admin, AdminServer};
use crate::config::{ConfigError, Settings};
use crate::decision::DecisionEngine;
use crate::license::watch::{update_readiness, LicenseWatch, LICENSE_READY};
use crate::license::LicenseGate;
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::proxy::forward::Forwarder;
use crate::proxy::server::{BindError, ProxyServer};
use crate::proxy::Shared;

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
}

impl StartError {
    /// Exit status: 64 (EX_USAGE) for configuration, 71 (EX_OSERR) for binding.
    pub fn exit_code(&self) -> i32 {
        match self {
            StartError::Config(_)
            | StartError::Bind(BindError::Tls(_))
            | StartError::License(_) => 64,
            StartError::Bind(BindError::Io { .. }) => 71,
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
}

impl Gateway {
    /// Build everything the settings describe and bind both ports. Must run
    /// inside a Tokio runtime. Nothing is served until [`Gateway::run`].
    pub fn bind(settings: &Settings) -> Result<Gateway, StartError> {
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
        let engine = match &license {
            Some(gate) => DecisionEngine::with_license(Arc::clone(gate)),
            None => DecisionEngine::allow_all(),
        };

        let shared = Arc::new(Shared {
            engine,
            forwarder: Forwarder::new(settings)?,
            metrics: Arc::clone(&metrics),
        });
        let proxy = ProxyServer::bind(settings, shared)?;
        let admin = AdminServer::bind(
            settings.admin,
            Arc::new(Admin {
                lifecycle: Arc::clone(&lifecycle),
                metrics: Arc::clone(&metrics),
                license: license.clone(),
            }),
        )?;
        let license = license.map(|gate| {
            let watch = LicenseWatch::start(Arc::clone(&gate));
            (gate, watch)
        });
        Ok(Gateway {
            proxy,
            admin,
            lifecycle,
            metrics,
            license,
        })
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
        let admin = tokio::spawn(self.admin.serve());
        self.proxy.serve(Arc::clone(&self.lifecycle)).await;
        admin.abort();
        if let Some((watch, refresh)) = license {
            watch.abort();
            if let Some(refresh) = refresh {
                refresh.abort();
            }
        }
    }
}
