//! Where shared counters live and how they are used: what
//! [`SharedStore`](super::shared::SharedStore) is built from.

use std::time::Duration;

use serde::Deserialize;

/// How often a replica announces itself and renews its instance slot,
/// unless `store.heartbeat` says otherwise.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(2);

/// Where shared counters live and how they are used.
#[derive(Clone, Debug)]
pub struct StoreSettings {
    pub nodes: StoreNodes,
    pub mode: StoreMode,
    /// Longest wait for one round trip; slower answers count as errors.
    pub timeout: Duration,
    /// Replicas sharing the limits: fallback counting divides by this.
    pub replicas: u32,
    pub key_prefix: String,
    /// Leased mode: the most units one lease takes.
    pub lease_max_slice: u64,
    /// Leased mode: how long a lease may be spent before it is returned.
    pub lease_period: Duration,
    /// How often a replica announces itself (and renews its instance slot);
    /// an announcement or slot lapses after three.
    pub heartbeat: Duration,
    /// This replica's name among the replicas: stable across restarts of
    /// one pod, so a restarted pod finds its own instance slot.
    pub instance: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreNodes {
    Standalone(String),
    Cluster(Vec<String>),
}

impl StoreNodes {
    /// For logs: the URLs without passwords.
    pub fn describe(&self) -> String {
        let strip = |url: &str| match (url.find("://"), url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}://…@{}", &url[..scheme], &url[at + 1..])
            }
            _ => url.to_owned(),
        };
        match self {
            StoreNodes::Standalone(url) => strip(url),
            StoreNodes::Cluster(urls) => {
                let urls: Vec<String> = urls.iter().map(|u| strip(u)).collect();
                format!("cluster {}", urls.join(","))
            }
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreMode {
    /// Every decision asks the store (one round trip).
    #[default]
    Accurate,
    /// Replicas lease slices of rate and quota budgets and spend them locally.
    Leased,
}
