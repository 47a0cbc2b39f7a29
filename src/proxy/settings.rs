//! What the proxy is built from: its listener, the upstream it forwards to,
//! and the timeouts and limits of both sides. Filled in by `config` from the
//! file and the flags; the proxy never reads either.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use serde::{Deserialize, Deserializer};

use crate::tls::TlsFiles;

/// Everything [`ProxyServer`](super::server::ProxyServer) and
/// [`Forwarder`](super::forward::Forwarder) are built from.
#[derive(Clone, Debug)]
pub struct ProxySettings {
    pub listen: SocketAddr,
    /// Inbound TLS; plain TCP (with h2c prior knowledge) when absent.
    pub tls: Option<TlsFiles>,
    pub upstream: UpstreamSettings,
    pub forwarded: ForwardedSettings,
    pub headers: HeaderSettings,
    pub timeouts: Timeouts,
    pub limits: Limits,
    /// What serves plain-TCP HTTP/1.1 clients of a plain HTTP/1.1 upstream.
    pub http1: Http1Engine,
}

/// The code that serves plain-TCP HTTP/1.x clients when the upstream is
/// plain HTTP/1.1 (the sidecar's usual case). TLS and HTTP/2 clients, and
/// TLS or HTTP/2 upstreams, are always served by hyper.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Http1Engine {
    /// licensegate's own relay: the request and its response framed in the
    /// inbound connection's task, buffers held only while a request is in
    /// flight, upstream connections shared by all clients.
    #[default]
    Relay,
    /// hyper's server and client pair: the reference the relay is tested
    /// against, and a fallback.
    Hyper,
}

#[derive(Clone, Debug)]
pub struct UpstreamSettings {
    pub url: UpstreamUrl,
    pub protocol: UpstreamProtocol,
    /// PEM bundle of CAs trusted for an https upstream; system roots when absent.
    pub ca: Option<PathBuf>,
    /// Upstream connections open at once (and requests in flight over a
    /// multiplexed upstream); more wait up to `timeouts.upstream_queue`.
    pub max_connections: usize,
}

/// Default `upstream.max_connections`: as many as the shared idle list
/// keeps, far above what one local workload usually serves in parallel.
pub const DEFAULT_UPSTREAM_MAX_CONNECTIONS: usize = 1024;

/// Which HTTP version to speak to the upstream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 on plain TCP; ALPN (h2 or http/1.1) on TLS.
    #[default]
    Auto,
    Http1,
    /// HTTP/2 only: prior knowledge (h2c) on plain TCP, ALPN h2 on TLS.
    Http2,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct ForwardedSettings {
    /// Keep and extend incoming `X-Forwarded-*`/`Forwarded` headers instead
    /// of replacing them. Only safe behind another trusted proxy.
    pub trust_incoming: bool,
}

/// How inbound header names are screened before forwarding.
#[derive(Clone, Copy, Debug, Default)]
pub struct HeaderSettings {
    pub underscores: Underscores,
}

/// What happens to inbound headers with `_` in their name. CGI, WSGI and
/// Rack servers read `_` and `-` alike (`HTTP_X_LICENSE_ID`), so such a
/// name can impersonate one licensegate sets. Names that do impersonate a
/// protected header are removed whatever this says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Underscores {
    /// Remove every such header, as nginx does by default.
    #[default]
    Drop,
    /// Forward them, except those that read as a protected name.
    Keep,
}

#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// Time a client has to send a complete request head. On HTTP/1.1 this
    /// also bounds how long a keep-alive connection waits for its next request.
    pub request_header: Duration,
    pub upstream_connect: Duration,
    /// Time from sending the request to the upstream's response head.
    pub upstream_response: Duration,
    /// An upstream connection unused this long is closed. Keep it below the
    /// upstream's own keep-alive timeout, so the proxy closes first.
    pub upstream_idle: Duration,
    /// How long a request waits for an upstream connection once
    /// `upstream.max_connections` are open; then 503 `upstream_overloaded`.
    pub upstream_queue: Duration,
    /// A connection with no traffic and no request in flight is closed.
    pub idle: Duration,
    /// How long in-flight requests may run after a shutdown signal.
    pub drain: Duration,
    /// A WebSocket tunnel with no bytes either way for this long is closed.
    pub tunnel_idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            request_header: Duration::from_secs(10),
            upstream_connect: Duration::from_secs(2),
            upstream_response: Duration::from_secs(30),
            upstream_idle: Duration::from_secs(90),
            upstream_queue: Duration::from_secs(1),
            idle: Duration::from_secs(60),
            drain: Duration::from_secs(25),
            tunnel_idle: Duration::from_secs(300),
        }
    }
}

/// Bounds on inbound connections.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest request head accepted (HTTP/1.1 read buffer, HTTP/2 header list).
    pub max_header_bytes: usize,
    /// Inbound connections held open at once; further ones wait in the backlog.
    pub max_connections: usize,
    /// HTTP/2 streams a client may have open at once on one connection.
    pub max_concurrent_streams: u32,
    /// HTTP/2 streams a client may reset after they were accepted, per
    /// connection per [`STREAM_RESET_WINDOW`], before the connection is closed.
    pub max_stream_resets: u32,
    /// The memory the process may use (`limits.memory`, else the container's
    /// cgroup limit); `None` when neither is known.
    pub memory: Option<MemoryBudget>,
    /// `max_connections` was derived from `memory` rather than set.
    pub max_connections_derived: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 64 * 1024,
            max_connections: 10_000,
            max_concurrent_streams: 100,
            max_stream_resets: 200,
            memory: None,
            max_connections_derived: false,
        }
    }
}

impl Limits {
    /// The memory `max_connections` idle keep-alive clients of `engine` and
    /// the process itself need, when that is more than the budget: a
    /// container sized like this is OOM-killed before the limit is reached.
    pub fn over_budget(&self, engine: Http1Engine) -> Option<(u64, MemoryBudget)> {
        let budget = self.memory?;
        let needed = memory_needed(self.max_connections, engine.connection_bytes());
        (needed > budget.bytes).then_some((needed, budget))
    }
}

// === Memory budget ===
//
// `limits.max_connections` follows from the memory the process may use, so
// that a full proxy is not OOM-killed: (budget - BASE_RESERVE) /
// per-connection bytes, within DERIVED_CONNECTIONS.

/// What the process holds whatever its client count: the runtime, the
/// compiled policy and license caches, metrics, the upstream pool (the
/// release binary idles at ~11 MiB with an enforcing policy loaded after a
/// first request, benches/footprint.py), plus headroom for the buffers of
/// requests in flight (64 KiB head buffers, 64 KiB body chunks, HTTP/2
/// windows).
pub const BASE_RESERVE: u64 = 24 << 20;

/// Memory one idle keep-alive HTTP/1.1 client connection holds with the
/// relay (`http1: relay`): its task, its socket state and no buffer while
/// no request is in flight, about 2 KB measured per idle keep-alive client
/// (benches/footprint.py, release build, 4,000 clients). The rest of the
/// 8 KiB is for the clients with a request in flight, whose read buffers
/// and request state are held only then.
pub const PER_CONNECTION_BYTES: u64 = 8 << 10;

/// The same with `http1: hyper`, which keeps an 8 KiB read and a write
/// buffer per connection for its life: ~35 KB measured per idle keep-alive
/// client (benches/footprint.py, release build, 4,000 clients, the upstream
/// connection each had pinned included), rounded up.
pub const HYPER_PER_CONNECTION_BYTES: u64 = 40 << 10;

/// Bounds of a derived `limits.max_connections`: at least enough for a
/// workload's usual parallelism however small the budget, at most the
/// default limit however large.
pub const DERIVED_CONNECTIONS: std::ops::RangeInclusive<usize> = 64..=10_000;

/// The memory the process may use, and where that figure came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryBudget {
    pub bytes: u64,
    pub source: BudgetSource,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BudgetSource {
    /// `limits.memory` in the config file.
    Config,
    /// The container's cgroup limit, read from this file.
    Cgroup(&'static str),
}

impl fmt::Display for BudgetSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BudgetSource::Config => f.write_str("limits.memory"),
            BudgetSource::Cgroup(file) => write!(f, "cgroup {file}"),
        }
    }
}

impl MemoryBudget {
    /// The connection limit this budget affords clients of `engine`.
    pub fn connections(&self, engine: Http1Engine) -> usize {
        let affordable = self.bytes.saturating_sub(BASE_RESERVE) / engine.connection_bytes();
        usize::try_from(affordable)
            .unwrap_or(usize::MAX)
            .clamp(*DERIVED_CONNECTIONS.start(), *DERIVED_CONNECTIONS.end())
    }
}

/// The memory `connections` idle clients and the process need.
pub fn memory_needed(connections: usize, per_connection: u64) -> u64 {
    BASE_RESERVE.saturating_add((connections as u64).saturating_mul(per_connection))
}

impl Http1Engine {
    /// What one idle keep-alive client connection served by this engine
    /// holds.
    pub fn connection_bytes(self) -> u64 {
        match self {
            Http1Engine::Relay => PER_CONNECTION_BYTES,
            Http1Engine::Hyper => HYPER_PER_CONNECTION_BYTES,
        }
    }
}

/// The window over which `limits.max_stream_resets` is counted.
pub const STREAM_RESET_WINDOW: Duration = Duration::from_secs(10);

/// Smallest header budget hyper's HTTP/1.1 reader accepts.
pub const MIN_HEADER_BYTES: usize = 8 * 1024;

/// An upstream origin: `http://host:port` or `https://host:port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamUrl {
    pub scheme: Scheme,
    pub authority: Authority,
}

impl UpstreamUrl {
    pub fn is_https(&self) -> bool {
        self.scheme == Scheme::HTTPS
    }
}

impl fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority)
    }
}

impl FromStr for UpstreamUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let uri: http::Uri = text
            .parse()
            .map_err(|e| format!("`{text}` is not a URL: {e}"))?;
        let scheme = match uri.scheme_str() {
            Some("http") => Scheme::HTTP,
            Some("https") => Scheme::HTTPS,
            Some(other) => {
                return Err(format!(
                    "scheme `{other}` is not supported; expected http or https"
                ))
            }
            None => {
                return Err(format!(
                    "`{text}` has no scheme; expected http://host:port or https://host:port"
                ))
            }
        };
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("`{text}` has no host"))?;
        if authority.as_str().contains('@') {
            return Err("user info in the upstream URL is not supported".into());
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(format!(
                "`{text}` has a path or query; the upstream is an origin (scheme://host:port) and requests keep their own path"
            ));
        }
        Ok(UpstreamUrl { scheme, authority })
    }
}

impl<'de> Deserialize<'de> for UpstreamUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}
