//! Forwarding to the upstream: rewrite the request for the upstream origin,
//! strip hop-by-hop headers and every client spelling of a protected header,
//! set `X-Forwarded-*`, send it over a pooled connection, and open a
//! WebSocket tunnel when a genuine handshake answer comes back.

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{request, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::settings::{ProxySettings, Underscores, UpstreamProtocol};
use super::{ProxyMetrics, UpstreamErrorKind};
use crate::decision::{LicenseHeaderNames, Peer};
use crate::limits::Permit;
use crate::problem::{grpc_format, Asked, Format};
use crate::tls::TlsError;
use crate::user::UserForwarding;

use super::budget::{find_overloaded, Budgeted, Slot, UpstreamBudget};
use super::conn::ConnContext;
use super::error::{Failure, UpstreamError};
use super::io::ConnectionSlot;
use super::relay::pool::RelayPool;
use super::request_body::RequestBody;
use super::settings::Http1Engine;
use super::tunnel::{Tunnel, WebSocketHandshake};
use super::upstream::{DirectPool, Lease};

type UpstreamClient = Client<Budgeted<HttpsConnector<HttpConnector>>, RequestBody>;

/// Idle direct upstream connections kept for new inbound connections.
const DIRECT_MAX_IDLE: usize = 1024;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// Every header licensegate sets for the upstream starts with this; no
/// client may send one.
const OWN_PREFIX: &[u8] = b"x-licensegate-";

/// How to send a request rewritten for the upstream.
pub struct Outbound<'c> {
    /// Which upstream connection to send on.
    pub via: Via<'c>,
    /// Whether the direct connection may serve further requests.
    pub keep_connection: bool,
    pub upgrade: Option<PendingUpgrade>,
    /// How a failure of this request is to be written for its client.
    pub asked: Asked,
}

/// Header names no client may set, whatever their spelling: the
/// entitlement headers and the license header. (Hop-by-hop, forwarding and
/// `x-licensegate-*` names are known to [`classify`].)
#[derive(Debug)]
struct Protected {
    names: Vec<HeaderName>,
    underscores: Underscores,
}

impl Protected {
    /// Whether `name`, with `_` read as `-`, is one no client may send.
    fn covers(&self, name: &[u8]) -> bool {
        let folded: Vec<u8> = name
            .iter()
            .map(|&b| if b == b'_' { b'-' } else { b })
            .collect();
        let Ok(folded) = HeaderName::from_bytes(&folded) else {
            return true;
        };
        !matches!(classify(folded.as_str().as_bytes()), Known::Other)
            || folded.as_str().as_bytes().starts_with(OWN_PREFIX)
            || self.names.contains(&folded)
    }
}

/// The upstream connection a request goes out on.
pub enum Via<'c> {
    /// The plain HTTP/1.1 connection this inbound HTTP/1.1 connection holds.
    Held(&'c Lease),
    /// A plain HTTP/1.1 connection for one HTTP/2 stream, given back to the
    /// shared idle list when the response body is done (the lease travels
    /// with the body).
    Stream(Lease),
    /// hyper-util's pool: TLS or HTTP/2 upstreams.
    Pooled,
}

/// Sends requests to one upstream origin over pooled connections.
pub struct Forwarder {
    /// Plain HTTP/1.1 upstreams: connection-affine reuse for HTTP/1.x
    /// clients, a connection per response for HTTP/2 client streams.
    direct: Option<Arc<DirectPool>>,
    /// Plain HTTP/1.1 upstreams, for plain HTTP/1.x clients served by the
    /// relay (`http1: relay`).
    relay: Option<Arc<RelayPool>>,
    /// TLS or HTTP/2 upstreams.
    client: UpstreamClient,
    /// `upstream.max_connections`, shared by both.
    budget: Arc<UpstreamBudget>,
    scheme: Scheme,
    authority: Authority,
    /// How the upstream is named in what clients read, and whether that
    /// name gives its address (see [`upstream_name`]).
    name: (String, bool),
    connect_timeout: Duration,
    response_timeout: Duration,
    trust_forwarded: bool,
    protected: Protected,
    tunnel_idle: Duration,
    tunnels_open: prometheus::IntGauge,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field(
                "upstream",
                &format_args!("{}://{}", self.scheme, self.authority),
            )
            .finish_non_exhaustive()
    }
}

impl Forwarder {
    /// The upkeep of the plain upstream connections' idle list: close those
    /// left unused for `timeouts.upstream_idle`, checking every quarter of it
    /// (at least every 10 s); runs until dropped. `None` without such a list:
    /// hyper-util's pool (TLS, HTTP/2 upstreams) expires its own.
    pub fn idle_upkeep(&self) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        let pool = Arc::clone(self.direct.as_ref()?);
        let relay = self.relay.clone();
        let period =
            (pool.idle_timeout() / 4).clamp(Duration::from_millis(10), Duration::from_secs(10));
        Some(async move {
            let mut checks = tokio::time::interval(period);
            checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                checks.tick().await;
                pool.expire_idle();
                if let Some(relay) = &relay {
                    relay.expire_idle();
                }
            }
        })
    }

    /// A forwarder to `settings.upstream`. Clients may not send, in any
    /// spelling, the entitlement headers `names`, `license_header` (the
    /// header a per-request license comes in) nor the verified user's
    /// headers (`users`).
    pub fn new(
        settings: &ProxySettings,
        names: &LicenseHeaderNames,
        license_header: Option<&HeaderName>,
        users: Option<&UserForwarding>,
        metrics: &ProxyMetrics,
    ) -> Result<Forwarder, TlsError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(settings.timeouts.upstream_connect));
        http.set_keepalive(Some(Duration::from_secs(60)));

        let upstream = &settings.upstream;
        let tls = if upstream.url.is_https() {
            crate::tls::client_config(upstream.ca.as_deref())?
        } else {
            // A plain upstream never starts TLS, so its root store is never consulted.
            empty_client_config()
        };
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        let connector = match upstream.protocol {
            UpstreamProtocol::Http1 => builder.enable_http1().wrap_connector(http),
            UpstreamProtocol::Http2 => builder.enable_http2().wrap_connector(http),
            UpstreamProtocol::Auto => builder.enable_all_versions().wrap_connector(http),
        };
        let budget = Arc::new(UpstreamBudget::new(
            upstream.max_connections,
            settings.timeouts.upstream_queue,
            metrics.upstream_open.clone(),
            metrics.upstream_queued.clone(),
        ));
        let connector = Budgeted::new(connector, Arc::clone(&budget));

        let mut client = Client::builder(TokioExecutor::new());
        client
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(settings.timeouts.upstream_idle)
            .http2_only(upstream.protocol == UpstreamProtocol::Http2);
        let direct = (!upstream.url.is_https() && upstream.protocol != UpstreamProtocol::Http2)
            .then(|| {
                Arc::new(DirectPool::new(
                    upstream.url.authority.clone(),
                    settings.timeouts.upstream_connect,
                    settings.timeouts.upstream_response,
                    DIRECT_MAX_IDLE,
                    settings.timeouts.upstream_idle,
                    metrics.upstream_idle.clone(),
                    Arc::clone(&budget),
                ))
            });
        let relay = (direct.is_some() && settings.http1 == Http1Engine::Relay).then(|| {
            Arc::new(RelayPool::new(
                upstream.url.authority.clone(),
                settings.timeouts.upstream_connect,
                DIRECT_MAX_IDLE,
                settings.timeouts.upstream_idle,
                metrics.upstream_idle.clone(),
                Arc::clone(&budget),
            ))
        });
        Ok(Forwarder {
            direct,
            relay,
            client: client.build(connector),
            budget,
            scheme: upstream.url.scheme.clone(),
            authority: upstream.url.authority.clone(),
            name: upstream_name(&upstream.url.authority, &upstream.url.scheme),
            connect_timeout: settings.timeouts.upstream_connect,
            response_timeout: settings.timeouts.upstream_response,
            trust_forwarded: settings.forwarded.trust_incoming,
            protected: Protected {
                names: protected_names(names, license_header, users),
                underscores: settings.headers.underscores,
            },
            tunnel_idle: settings.timeouts.tunnel_idle,
            tunnels_open: metrics.tunnels_open.clone(),
        })
    }

    /// How the upstream is named in what clients read.
    pub fn name(&self) -> &str {
        &self.name.0
    }

    /// Whether the upstream runs on this machine (its name gives its address).
    pub fn is_local(&self) -> bool {
        self.name.1
    }

    /// The relay's upstream connections, when the relay serves plain
    /// HTTP/1.x clients.
    pub(super) fn relay_pool(&self) -> Option<&Arc<RelayPool>> {
        self.relay.as_ref()
    }

    /// Per-connection state for a connection the relay serves: it holds
    /// no upstream connection between requests.
    pub(super) fn relay_connection(&self, peer: Peer, slot: ConnectionSlot) -> ConnContext {
        ConnContext::new(peer, None, slot)
    }

    /// Per-connection forwarding state for a newly accepted connection.
    pub fn connection(&self, peer: Peer, slot: ConnectionSlot) -> ConnContext {
        ConnContext::new(peer, self.direct.as_ref().map(DirectPool::lease), slot)
    }

    /// Rewrite an allowed request head for the upstream. No I/O: the caller
    /// awaits the send itself ([`Lease::send`] or [`Forwarder::send_pooled`]),
    /// as every async layer between it and the send would move the request
    /// and its future once more per request (measured with callgrind), then
    /// hands the response head to [`Forwarder::finish`].
    ///
    /// `websocket`: the handshake the request carries, when it was decided
    /// to become a tunnel; every other upgrade is stripped here.
    pub fn prepare<'c>(
        &self,
        head: &mut request::Parts,
        conn: &'c ConnContext,
        websocket: Option<WebSocketHandshake>,
    ) -> Result<Outbound<'c>, UpstreamError> {
        let upgrade = websocket.and_then(|handshake| {
            let inbound = head.extensions.remove::<OnUpgrade>()?;
            Some(PendingUpgrade { handshake, inbound })
        });
        let via = match (&conn.lease, &self.direct) {
            // HTTP/2 clients multiplex: each stream takes an upstream
            // connection of its own from the shared idle list.
            (Some(_), Some(pool)) if head.version == Version::HTTP_2 => Via::Stream(pool.lease()),
            (Some(lease), _) => Via::Held(lease),
            _ => Via::Pooled,
        };
        let asked = self.rewrite_head(head, conn, upgrade.is_some(), matches!(via, Via::Pooled))?;
        Ok(Outbound {
            // An upgraded connection is consumed by its tunnel; never reuse it.
            keep_connection: upgrade.is_none(),
            upgrade,
            via,
            asked,
        })
    }

    /// Rewrite an allowed request head for the upstream: screen the names,
    /// strip hop-by-hop headers, set the forwarding headers; the target in
    /// origin form unless `absolute_uri` (hyper-util's pool wants the
    /// origin in it). `websocket`: the request becomes a tunnel. Says how a
    /// failure of the request is to be written for its client.
    pub(super) fn rewrite_head(
        &self,
        head: &mut request::Parts,
        conn: &ConnContext,
        websocket: bool,
        absolute_uri: bool,
    ) -> Result<Asked, UpstreamError> {
        let scan = Scan::of(&head.headers, true);
        if scan.suspect_names {
            self.remove_impersonations(&mut head.headers);
        }
        self.rewrite(head, &scan, conn, websocket, absolute_uri)?;
        Ok(Asked {
            accept: scan.accept,
            grpc: scan.grpc,
            head: head.method == http::Method::HEAD,
        })
    }

    /// Send over hyper-util's pool (TLS or HTTP/2 upstreams). The slot
    /// returned counts the request against `upstream.max_connections` until
    /// its response body has been sent.
    pub async fn send_pooled(
        &self,
        request: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Slot), UpstreamError> {
        let sending = async {
            let slot = self.budget.request().await?;
            let response = self.client.request(request).await;
            Ok::<_, UpstreamError>((response, slot))
        };
        match tokio::time::timeout(self.response_timeout, sending).await {
            Ok(Ok((Ok(response), slot))) => Ok((response, slot)),
            Ok(Err(overloaded)) => Err(overloaded),
            Ok(Ok((Err(error), _))) => Err(match find_overloaded(&error) {
                Some(overloaded) => {
                    UpstreamError::said(UpstreamErrorKind::Overloaded, overloaded.to_string())
                }
                None => {
                    let mut failed = UpstreamError::from_hyper(
                        if error.is_connect() {
                            UpstreamErrorKind::Connect
                        } else {
                            UpstreamErrorKind::Protocol
                        },
                        &error,
                    );
                    if let Failure::ConnectTimeout(within @ None) = &mut failed.failure {
                        *within = Some(self.connect_timeout);
                    }
                    failed
                }
            }),
            Err(_elapsed) => Err(UpstreamError::new(
                UpstreamErrorKind::Timeout,
                Failure::ResponseTimeout(self.response_timeout),
                format!(
                    "the upstream did not respond within {}",
                    humantime::format_duration(self.response_timeout)
                ),
            )),
        }
    }

    /// Fix up the upstream's response head, and open the tunnel a genuine
    /// WebSocket 101 answers. A 101 that answers anything else (no
    /// handshake was forwarded, a wrong `Sec-WebSocket-Accept`, another
    /// protocol) is refused: the client must never be switched to a
    /// protocol no one decided. The tunnel takes the request's `permits`.
    pub fn finish(
        &self,
        mut response: Response<Incoming>,
        upgrade: Option<PendingUpgrade>,
        conn: &Arc<ConnContext>,
        permits: &mut Vec<Permit>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            strip_hop_by_hop(response.headers_mut());
            return Ok(response);
        }
        let upgrade = upgrade.ok_or_else(|| {
            UpstreamError::said(
                UpstreamErrorKind::Protocol,
                "the upstream switched protocols (101) for a request that asked for no upgrade",
            )
        })?;
        upgrade
            .handshake
            .answered_by(response.headers())
            .map_err(|why| UpstreamError::said(UpstreamErrorKind::Protocol, why))?;
        let upstream_side = hyper::upgrade::on(&mut response);
        let tunnel = self.tunnel(Arc::clone(conn), std::mem::take(permits));
        tokio::spawn(tunnel.run(upgrade.inbound, upstream_side));
        strip_hop_by_hop(response.headers_mut());
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        Ok(response)
    }

    /// A WebSocket tunnel for `conn`, holding the handshake's `permits`.
    pub(super) fn tunnel(&self, conn: Arc<ConnContext>, permits: Vec<Permit>) -> Tunnel {
        Tunnel {
            conn,
            permits,
            idle_timeout: self.tunnel_idle,
            open: self.tunnels_open.clone(),
        }
    }

    /// Remove inbound headers whose names impersonate a protected one
    /// (`x_license_features`, `X-Forwarded_For`, `x-licensegate-…`), and,
    /// unless `headers.underscores: keep`, every name with `_`.
    #[cold]
    fn remove_impersonations(&self, headers: &mut HeaderMap) {
        let doomed: Vec<HeaderName> = headers
            .keys()
            .filter(|name| {
                let bytes = name.as_str().as_bytes();
                bytes.starts_with(OWN_PREFIX)
                    || (bytes.contains(&b'_')
                        && (self.protected.underscores == Underscores::Drop
                            || self.protected.covers(bytes)))
            })
            .cloned()
            .collect();
        for name in doomed {
            tracing::debug!(header = %name, "removed a client header that impersonates a protected one");
            headers.remove(name);
        }
    }

    /// Point the request at the upstream origin and fix up its headers.
    fn rewrite(
        &self,
        head: &mut request::Parts,
        scan: &Scan,
        conn: &ConnContext,
        websocket: bool,
        absolute_uri: bool,
    ) -> Result<(), UpstreamError> {
        // HTTP/2 requests carry the host in `:authority`; an HTTP/1.1 upstream needs `Host`.
        let original_host = match &scan.host {
            Some(host) => Some(host.clone()),
            None => head
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
        };

        scan.strip(&mut head.headers);
        if websocket {
            head.headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            head.headers
                .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        }
        if let Some(host) = &original_host {
            // `Host` is gone only if it never was there or `Connection` named it.
            let missing = scan.host.is_none()
                || (scan.connection_names_others && !head.headers.contains_key(header::HOST));
            if missing {
                head.headers.insert(header::HOST, host.clone());
            }
        }
        // What the scan saw still holds unless `Connection` named more headers.
        let forwarded = (!scan.connection_names_others).then_some(scan.forwarded);
        self.set_forwarded(&mut head.headers, conn, original_host, forwarded);

        // The pool wants the upstream origin in the URI; a direct HTTP/1.1
        // connection sends the origin form (`/path?query`) as it is.
        if absolute_uri || head.uri.authority().is_some() {
            let path_and_query = head
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"));
            let mut parts = http::uri::Parts::default();
            if absolute_uri {
                parts.scheme = Some(self.scheme.clone());
                parts.authority = Some(self.authority.clone());
            }
            parts.path_and_query = Some(path_and_query);
            head.uri = Uri::from_parts(parts).map_err(|e| {
                UpstreamError::said(
                    UpstreamErrorKind::Protocol,
                    format!("the request target cannot be forwarded: {e}"),
                )
            })?;
        }
        // The upstream connection's own version is chosen by the pool; HTTP/1.1
        // is accepted by both an HTTP/1.1 and an HTTP/2 upstream connection.
        head.version = Version::HTTP_11;
        Ok(())
    }

    /// `forwarded`: which forwarding headers are present, when already known
    /// (`FWD_*` bits); `None` to look them up.
    fn set_forwarded(
        &self,
        headers: &mut HeaderMap,
        conn: &ConnContext,
        host: Option<HeaderValue>,
        forwarded: Option<u8>,
    ) {
        let has = |headers: &HeaderMap, bit: u8, name: &HeaderName| match forwarded {
            Some(bits) => bits & bit != 0,
            None => headers.contains_key(name),
        };
        let client_ip = conn.ip_header.clone();
        let proto = HeaderValue::from_static(if conn.peer.tls { "https" } else { "http" });
        if self.trust_forwarded {
            let chain = if !has(headers, FWD_FOR, &X_FORWARDED_FOR) {
                String::new()
            } else {
                headers
                    .get_all(&X_FORWARDED_FOR)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let value = if chain.is_empty() {
                client_ip
            } else {
                HeaderValue::from_str(&format!("{chain}, {}", conn.peer.addr.ip()))
                    .unwrap_or(client_ip)
            };
            headers.insert(&X_FORWARDED_FOR, value);
            if !has(headers, FWD_PROTO, &X_FORWARDED_PROTO) {
                headers.insert(&X_FORWARDED_PROTO, proto);
            }
            if !has(headers, FWD_HOST, &X_FORWARDED_HOST) {
                if let Some(host) = host {
                    headers.insert(&X_FORWARDED_HOST, host);
                }
            }
        } else {
            // Replace: a client must not be able to claim another address.
            if has(headers, FWD_FORWARDED, &FORWARDED) {
                headers.remove(&FORWARDED);
            }
            headers.insert(&X_FORWARDED_FOR, client_ip);
            headers.insert(&X_FORWARDED_PROTO, proto);
            match host {
                Some(host) => {
                    headers.insert(&X_FORWARDED_HOST, host);
                }
                None => {
                    if has(headers, FWD_HOST, &X_FORWARDED_HOST) {
                        headers.remove(&X_FORWARDED_HOST);
                    }
                }
            }
        }
    }
}

/// The upstream as clients read it in a 502 or 504: "the upstream at
/// 127.0.0.1:5173" when it is a loopback address or `localhost` (a
/// sidecar's workload, a dev server: the address is what the developer
/// needs to see), else "the upstream", so an answer never discloses an
/// internal address.
fn upstream_name(authority: &Authority, scheme: &Scheme) -> (String, bool) {
    let host = authority.host();
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let local = bare
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
        || bare.trim_end_matches('.').eq_ignore_ascii_case("localhost");
    if !local {
        return ("the upstream".to_owned(), false);
    }
    let port = authority
        .port_u16()
        .unwrap_or(if *scheme == Scheme::HTTPS { 443 } else { 80 });
    (format!("the upstream at {host}:{port}"), true)
}

/// An inbound WebSocket handshake waiting for the upstream's 101.
pub struct PendingUpgrade {
    handshake: WebSocketHandshake,
    inbound: OnUpgrade,
}

/// The configured names a client may not send in any spelling: the
/// entitlement headers and a header-borne license.
fn protected_names(
    headers: &LicenseHeaderNames,
    license_header: Option<&HeaderName>,
    users: Option<&UserForwarding>,
) -> Vec<HeaderName> {
    let mut names = vec![
        headers.id.clone(),
        headers.plan.clone(),
        headers.features.clone(),
    ];
    names.extend(license_header.cloned());
    if let Some(users) = users {
        names.extend([users.id.clone(), users.roles.clone()]);
    }
    names
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) that are not named in `Connection`,
/// one bit each so a single scan finds which are present.
const HOP_CONNECTION: u16 = 1 << 0;
const HOP_KEEP_ALIVE: u16 = 1 << 1;
const HOP_PROXY_CONNECTION: u16 = 1 << 2;
const HOP_PROXY_AUTHENTICATE: u16 = 1 << 3;
const HOP_PROXY_AUTHORIZATION: u16 = 1 << 4;
const HOP_TRAILER: u16 = 1 << 5;
const HOP_TRANSFER_ENCODING: u16 = 1 << 6;
const HOP_UPGRADE: u16 = 1 << 7;
const HOP_TE: u16 = 1 << 8;
const HOP_HTTP2_SETTINGS: u16 = 1 << 9;

/// RFC 9110 §7.6.1's list, plus `Proxy-Connection` (obsolete, still sent)
/// and `HTTP2-Settings` (RFC 9113 §3.2.1's h2c upgrade, connection-specific).
static HOP_BY_HOP: [(&HeaderName, u16); 10] = [
    (&header::CONNECTION, HOP_CONNECTION),
    (&KEEP_ALIVE, HOP_KEEP_ALIVE),
    (&PROXY_CONNECTION, HOP_PROXY_CONNECTION),
    (&header::PROXY_AUTHENTICATE, HOP_PROXY_AUTHENTICATE),
    (&header::PROXY_AUTHORIZATION, HOP_PROXY_AUTHORIZATION),
    (&header::TRAILER, HOP_TRAILER),
    (&header::TRANSFER_ENCODING, HOP_TRANSFER_ENCODING),
    (&header::UPGRADE, HOP_UPGRADE),
    (&header::TE, HOP_TE),
    (&HTTP2_SETTINGS, HOP_HTTP2_SETTINGS),
];

/// Forwarding headers a request may carry, one bit each.
const FWD_FORWARDED: u8 = 1 << 0;
const FWD_FOR: u8 = 1 << 1;
const FWD_PROTO: u8 = 1 << 2;
const FWD_HOST: u8 = 1 << 3;

/// A header name the forwarding path cares about.
enum Known {
    Hop(u16),
    Forwarded(u8),
    Host,
    /// `accept` and `content-type`: kept in case the upstream fails and
    /// the proxy writes the answer (a page for a browser, problem+json for
    /// gRPC and APIs), when the head has gone with the request.
    Accept,
    ContentType,
    Other,
}

/// Classify a name by length and first byte, then one comparison: much
/// cheaper than comparing against every interesting `HeaderName` or hashing
/// (names are always lowercase). Takes the name's bytes, which the caller
/// may need again.
fn classify(s: &[u8]) -> Known {
    let (Some(&first), len) = (s.first(), s.len()) else {
        return Known::Other;
    };
    let (candidate, known): (&[u8], Known) = match (len, first) {
        (2, b't') => (b"te", Known::Hop(HOP_TE)),
        (4, b'h') => (b"host", Known::Host),
        (6, b'a') => (b"accept", Known::Accept),
        (12, b'c') => (b"content-type", Known::ContentType),
        (14, b'h') => (b"http2-settings", Known::Hop(HOP_HTTP2_SETTINGS)),
        (7, b't') => (b"trailer", Known::Hop(HOP_TRAILER)),
        (7, b'u') => (b"upgrade", Known::Hop(HOP_UPGRADE)),
        (9, b'f') => (b"forwarded", Known::Forwarded(FWD_FORWARDED)),
        (10, b'c') => (b"connection", Known::Hop(HOP_CONNECTION)),
        (10, b'k') => (b"keep-alive", Known::Hop(HOP_KEEP_ALIVE)),
        (15, b'x') => (b"x-forwarded-for", Known::Forwarded(FWD_FOR)),
        (16, b'p') => (b"proxy-connection", Known::Hop(HOP_PROXY_CONNECTION)),
        (16, b'x') => (b"x-forwarded-host", Known::Forwarded(FWD_HOST)),
        (17, b't') => (b"transfer-encoding", Known::Hop(HOP_TRANSFER_ENCODING)),
        (17, b'x') => (b"x-forwarded-proto", Known::Forwarded(FWD_PROTO)),
        (18, b'p') => (b"proxy-authenticate", Known::Hop(HOP_PROXY_AUTHENTICATE)),
        (19, b'p') => (b"proxy-authorization", Known::Hop(HOP_PROXY_AUTHORIZATION)),
        _ => return Known::Other,
    };
    if s == candidate {
        known
    } else {
        Known::Other
    }
}

/// Whether a `Connection` value names only `close` or `keep-alive`, i.e.
/// no further header to remove (and no `upgrade`). Values that are not
/// text count as naming others, which sends them down the general path.
fn connection_names_nothing(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    if bytes.eq_ignore_ascii_case(b"keep-alive") || bytes.eq_ignore_ascii_case(b"close") {
        return true;
    }
    let Ok(value) = value.to_str() else {
        return false;
    };
    value.split(',').all(|token| {
        // A valid header value holds no whitespace other than SP and HTAB.
        let token = token.trim_matches([' ', '\t']);
        token.is_empty()
            || token.eq_ignore_ascii_case("close")
            || token.eq_ignore_ascii_case("keep-alive")
    })
}

/// Whether a header name holds `_`, eight bytes at a time: this runs on
/// every inbound header name, and a byte loop cost ~60 instructions a name
/// (callgrind). Names are ASCII, so the zero-byte test is exact.
fn has_underscore(name: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    const UNDERSCORES: u64 = u64::from_ne_bytes([b'_'; 8]);
    let mut words = name.chunks_exact(8);
    for word in &mut words {
        let word = u64::from_ne_bytes(word.try_into().expect("eight bytes")) ^ UNDERSCORES;
        if word.wrapping_sub(ONES) & !word & HIGHS != 0 {
            return true;
        }
    }
    words.remainder().contains(&b'_')
}

/// What one pass over a message's headers found.
struct Scan {
    /// Hop-by-hop headers present (`HOP_*` bits).
    hop: u16,
    /// Some `Connection` value names more than `close`/`keep-alive`.
    connection_names_others: bool,
    /// Forwarding headers present (`FWD_*` bits).
    forwarded: u8,
    /// The first `Host` value.
    host: Option<HeaderValue>,
    /// Some name has `_` or licensegate's own prefix: screen the names
    /// before forwarding (see [`Forwarder::remove_impersonations`]).
    suspect_names: bool,
    /// The first `Accept` value (requests only).
    accept: Option<HeaderValue>,
    /// A gRPC request's denial form (requests only).
    grpc: Option<Format>,
}

impl Scan {
    /// `screen_names`: look for names that impersonate protected ones
    /// (inbound requests only; what the upstream names is its business).
    #[inline]
    fn of(headers: &HeaderMap, screen_names: bool) -> Scan {
        let mut scan = Scan {
            hop: 0,
            connection_names_others: false,
            forwarded: 0,
            host: None,
            suspect_names: false,
            accept: None,
            grpc: None,
        };
        for (name, value) in headers {
            let bytes = name.as_str().as_bytes();
            match classify(bytes) {
                Known::Other => {
                    if screen_names
                        && (has_underscore(bytes)
                            || (bytes.first() == Some(&b'x') && bytes.starts_with(OWN_PREFIX)))
                    {
                        scan.suspect_names = true;
                    }
                }
                Known::Hop(bit) => {
                    scan.hop |= bit;
                    if bit == HOP_CONNECTION && !connection_names_nothing(value) {
                        scan.connection_names_others = true;
                    }
                }
                Known::Forwarded(bit) => scan.forwarded |= bit,
                Known::Host => {
                    if scan.host.is_none() {
                        scan.host = Some(value.clone());
                    }
                }
                Known::Accept => {
                    if screen_names && scan.accept.is_none() {
                        scan.accept = Some(value.clone());
                    }
                }
                Known::ContentType => {
                    if screen_names && scan.grpc.is_none() {
                        scan.grpc = grpc_format(value);
                    }
                }
            }
        }
        scan
    }

    /// Remove the hop-by-hop headers this scan found in `headers`.
    fn strip(&self, headers: &mut HeaderMap) {
        if self.hop == 0 {
            return;
        }
        if self.connection_names_others {
            // Headers named in `Connection` are hop-by-hop too. `close` and
            // `keep-alive` are the usual tokens and name nothing else to remove.
            let named: Vec<HeaderName> = headers
                .get_all(header::CONNECTION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .filter(|t| {
                    !t.eq_ignore_ascii_case("close") && !t.eq_ignore_ascii_case("keep-alive")
                })
                .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
                .collect();
            for name in named {
                headers.remove(name);
            }
        }
        for &(hop, bit) in &HOP_BY_HOP {
            if self.hop & bit == 0 {
                continue;
            }
            if bit == HOP_TE {
                let trailers_only = headers.get_all(header::TE).iter().count() == 1
                    && headers
                        .get(header::TE)
                        .is_some_and(|te| te.as_bytes().eq_ignore_ascii_case(b"trailers"));
                if trailers_only {
                    continue;
                }
            }
            headers.remove(hop);
        }
    }
}

/// Remove hop-by-hop headers (RFC 9110 §7.6.1): the fixed set and every
/// header named in `Connection`. `TE: trailers` survives, as gRPC needs it.
///
/// Most messages carry few or none of these, so one pass over the names
/// (cheap comparisons, no hashing) decides what needs removing.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    Scan::of(headers, false).strip(headers);
}

fn empty_client_config() -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default protocol versions")
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_fixed_and_connection_named_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(header::TE, HeaderValue::from_static("gzip"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers);
        let names: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
    }

    #[test]
    fn keep_alive_token_and_header_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("Keep-Alive"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("2"));
        strip_hop_by_hop(&mut headers);
        let names: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-length"]);
    }

    #[test]
    fn messages_without_hop_by_hop_headers_are_untouched() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("a"));
        headers.insert("x-a", HeaderValue::from_static("1"));
        let before = headers.clone();
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers, before);
    }

    #[test]
    fn te_other_than_trailers_is_removed_even_beside_trailers() {
        let mut headers = HeaderMap::new();
        headers.append(header::TE, HeaderValue::from_static("trailers"));
        headers.append(header::TE, HeaderValue::from_static("gzip"));
        strip_hop_by_hop(&mut headers);
        assert!(headers.get(header::TE).is_none());
    }

    #[test]
    fn te_trailers_survives() {
        let mut headers = HeaderMap::new();
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.get(header::TE).unwrap(), "trailers");
    }

    #[test]
    fn classify_finds_every_name_it_looks_for_and_nothing_else() {
        for (hop, bit) in &HOP_BY_HOP {
            assert!(
                matches!(classify(hop.as_str().as_bytes()), Known::Hop(b) if b == *bit),
                "{hop}"
            );
        }
        for (name, bit) in [
            (&FORWARDED, FWD_FORWARDED),
            (&X_FORWARDED_FOR, FWD_FOR),
            (&X_FORWARDED_PROTO, FWD_PROTO),
            (&X_FORWARDED_HOST, FWD_HOST),
        ] {
            assert!(
                matches!(classify(name.as_str().as_bytes()), Known::Forwarded(b) if b == bit),
                "{name}"
            );
        }
        assert!(matches!(classify(b"host"), Known::Host));
        assert!(matches!(classify(b"accept"), Known::Accept));
        assert!(matches!(classify(b"content-type"), Known::ContentType));
        for other in [
            "user-agent",
            "accepts",
            "accept-encoding",
            "content-typf",
            "content-length",
            "te2",
            "hosts",
            "tea",
            "x-forwarded-fox",
            "trailers",
            "connections",
            "keep-alivf",
            "proxy-connectiom",
            "transfer-encodinx",
            "date",
        ] {
            let name = HeaderName::from_bytes(other.as_bytes()).unwrap();
            assert!(
                matches!(classify(name.as_str().as_bytes()), Known::Other),
                "{other}"
            );
        }
    }

    #[test]
    fn connection_values_naming_only_close_or_keep_alive_name_nothing() {
        for value in [
            "close",
            "Keep-Alive",
            "keep-alive, close",
            " close ,",
            "",
            ",\tclose",
        ] {
            let value = HeaderValue::from_str(value).unwrap();
            assert!(connection_names_nothing(&value), "{value:?}");
        }
        for value in ["upgrade", "close, x-secret", "keep-alive,te", "closed"] {
            let value = HeaderValue::from_str(value).unwrap();
            assert!(!connection_names_nothing(&value), "{value:?}");
        }
        let opaque = HeaderValue::from_bytes(b"close, \xff").unwrap();
        assert!(!connection_names_nothing(&opaque));
    }

    #[test]
    fn scan_sees_host_forwarding_and_hop_headers_in_one_pass() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("a.example"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        headers.insert(header::ACCEPT, HeaderValue::from_static("text/html"));
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        let scan = Scan::of(&headers, true);
        assert_eq!(scan.accept.as_ref().unwrap(), "text/html");
        assert_eq!(scan.grpc, Some(Format::Grpc));
        // Responses: what the upstream accepts or sends is not asked.
        let response = Scan::of(&headers, false);
        assert!(response.accept.is_none() && response.grpc.is_none());
        assert_eq!(scan.host.as_ref().unwrap(), "a.example");
        assert_eq!(scan.hop, HOP_CONNECTION | HOP_KEEP_ALIVE);
        assert_eq!(scan.forwarded, FWD_PROTO);
        assert!(!scan.connection_names_others);
        scan.strip(&mut headers);
        let mut names: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "accept",
                "content-type",
                "host",
                "x-forwarded-proto",
                "x-kept"
            ]
        );
    }

    #[test]
    fn only_a_local_upstream_is_named_by_its_address() {
        let name = |authority: &'static str, scheme: Scheme| {
            upstream_name(&Authority::from_static(authority), &scheme)
        };
        for (authority, named) in [
            ("127.0.0.1:5173", "the upstream at 127.0.0.1:5173"),
            ("127.9.9.9:8080", "the upstream at 127.9.9.9:8080"),
            ("[::1]:3000", "the upstream at [::1]:3000"),
            ("localhost:3000", "the upstream at localhost:3000"),
            ("LOCALHOST.:3000", "the upstream at LOCALHOST.:3000"),
            ("localhost", "the upstream at localhost:80"),
        ] {
            assert_eq!(
                name(authority, Scheme::HTTP),
                (named.to_owned(), true),
                "{authority}"
            );
        }
        assert_eq!(
            name("localhost", Scheme::HTTPS).0,
            "the upstream at localhost:443"
        );
        for authority in [
            "10.0.0.5:8080",
            "[fd00::1]:80",
            "orders.internal:8080",
            "localhost.example.com:80",
            "0.0.0.0:80",
        ] {
            assert_eq!(
                name(authority, Scheme::HTTP),
                ("the upstream".to_owned(), false),
                "{authority}"
            );
        }
    }

    #[test]
    fn underscores_are_found_wherever_they_stand() {
        let mut name = *b"abcdefghijklmnopqrstuvwx";
        assert!(!has_underscore(&name));
        for at in 0..name.len() {
            let saved = name[at];
            name[at] = b'_';
            for len in 0..=name.len() {
                assert_eq!(has_underscore(&name[..len]), at < len, "{at} {len}");
            }
            name[at] = saved;
        }
        // Bytes next to `_` in value (`^`, `` ` ``) are not it.
        assert!(!has_underscore(b"^^^^^^^^````````"));
    }
}
