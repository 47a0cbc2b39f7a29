//! Where policies come from and how their counters are kept: what the
//! composition root loads a [`Policy`](super::Policy) and its counters file from.

use std::path::PathBuf;
use std::time::Duration;

/// Where policies come from and how their counters are kept.
#[derive(Clone, Debug)]
pub struct PolicySettings {
    /// Policy files or directories of them (`*.yaml`, `*.yml`).
    pub paths: Vec<PathBuf>,
    /// Quota counts kept across restarts.
    pub counters_file: Option<PathBuf>,
    /// How often the counters file is written (also on shutdown).
    pub persist_interval: Duration,
    /// Keys tracked per limit before new keys share one overflow counter.
    pub max_keys_per_limit: usize,
    /// Which requests may become WebSocket tunnels. No config file key:
    /// only `licensegate dev` widens it.
    pub websocket: WebSocketScope,
}

/// Which allowed requests may become WebSocket tunnels under a policy.
/// Either way the handshake is checked in full, the 101 must answer it and
/// the tunnel holds its connection slot; only the choice of requests differs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WebSocketScope {
    /// Requests matched by a route with `websocket: true`.
    #[default]
    Routes,
    /// Any request the policy and the license allow, matched by a route or
    /// by `unmatched`: `licensegate dev`, whose dev server opens its
    /// hot-reload socket on a path of its own choosing (Vite `/`, Next
    /// `/_next/webpack-hmr`) that policies do not name.
    AnyRoute,
}
