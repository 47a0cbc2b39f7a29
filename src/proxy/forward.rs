//! Forwarding to the upstream: rewrite the request for the upstream origin,
//! strip hop-by-hop headers, set `X-Forwarded-*`, send it over a pooled
//! connection, and tunnel HTTP/1.1 upgrades.

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
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::config::{ConfigError, Settings, UpstreamProtocol};
use crate::decision::Peer;
use crate::metrics::UpstreamErrorKind;

use super::upstream::{DirectPool, Lease};

type UpstreamClient = Client<HttpsConnector<HttpConnector>, Incoming>;

/// Idle direct upstream connections kept for new inbound connections.
const DIRECT_MAX_IDLE: usize = 1024;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// What forwarding keeps per inbound connection: the peer, its address
/// pre-rendered for `X-Forwarded-For`, and the upstream connection it holds.
#[derive(Debug)]
pub struct ConnContext {
    pub peer: Peer,
    ip_header: HeaderValue,
    lease: Option<Lease>,
}

/// Why the upstream gave no response.
#[derive(Debug)]
pub struct UpstreamError {
    pub kind: UpstreamErrorKind,
    pub detail: String,
}

/// Sends requests to one upstream origin over pooled connections.
pub struct Forwarder {
    /// Plain HTTP/1.1 upstreams: connection-affine reuse for HTTP/1.x clients.
    direct: Option<Arc<DirectPool>>,
    /// Everything else: HTTP/2 clients, TLS or HTTP/2 upstreams.
    client: UpstreamClient,
    scheme: Scheme,
    authority: Authority,
    response_timeout: Duration,
    trust_forwarded: bool,
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
    pub fn new(settings: &Settings) -> Result<Forwarder, ConfigError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(settings.timeouts.upstream_connect));
        http.set_keepalive(Some(Duration::from_secs(60)));

        let upstream = &settings.upstream;
        let tls = if upstream.url.is_https() {
            super::tls::client_config(upstream.ca.as_deref())?
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

        let mut client = Client::builder(TokioExecutor::new());
        client
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .http2_only(upstream.protocol == UpstreamProtocol::Http2);
        let direct = (!upstream.url.is_https() && upstream.protocol != UpstreamProtocol::Http2)
            .then(|| {
                Arc::new(DirectPool::new(
                    upstream.url.authority.clone(),
                    settings.timeouts.upstream_connect,
                    settings.timeouts.upstream_response,
                    DIRECT_MAX_IDLE,
                ))
            });
        Ok(Forwarder {
            direct,
            client: client.build(connector),
            scheme: upstream.url.scheme.clone(),
            authority: upstream.url.authority.clone(),
            response_timeout: settings.timeouts.upstream_response,
            trust_forwarded: settings.forwarded.trust_incoming,
        })
    }

    /// Per-connection forwarding state for a newly accepted connection.
    pub fn connection(&self, peer: Peer) -> ConnContext {
        let ip_header = HeaderValue::from_str(&peer.addr.ip().to_string())
            .expect("an IP address is a valid header value");
        ConnContext {
            peer,
            ip_header,
            lease: self.direct.as_ref().map(DirectPool::lease),
        }
    }

    /// Forward one allowed request and return the upstream's response head
    /// with its body still streaming.
    pub async fn forward(
        &self,
        mut head: request::Parts,
        body: Incoming,
        conn: &ConnContext,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let upgrade = prepare_upgrade(&mut head);
        // HTTP/2 clients multiplex, so their requests share the general pool.
        let lease = conn
            .lease
            .as_ref()
            .filter(|_| head.version != Version::HTTP_2);
        self.rewrite(
            &mut head,
            conn,
            upgrade.as_ref().map(|u| &u.protocol),
            lease.is_none(),
        )?;
        let request = Request::from_parts(head, body);

        let mut response = match lease {
            // An upgraded connection is consumed by its tunnel; never reuse it.
            Some(lease) => lease.send(request, upgrade.is_none()).await?,
            None => match tokio::time::timeout(self.response_timeout, self.client.request(request))
                .await
            {
                Ok(Ok(response)) => response,
                Ok(Err(error)) => {
                    return Err(UpstreamError {
                        kind: if error.is_connect() {
                            UpstreamErrorKind::Connect
                        } else {
                            UpstreamErrorKind::Protocol
                        },
                        detail: describe(&error),
                    })
                }
                Err(_elapsed) => {
                    return Err(UpstreamError {
                        kind: UpstreamErrorKind::Timeout,
                        detail: format!(
                            "the upstream did not respond within {}",
                            humantime::format_duration(self.response_timeout)
                        ),
                    })
                }
            },
        };

        match upgrade {
            Some(upgrade) if response.status() == StatusCode::SWITCHING_PROTOCOLS => {
                let upstream_side = hyper::upgrade::on(&mut response);
                tokio::spawn(tunnel(upgrade.inbound, upstream_side));
                strip_hop_by_hop(response.headers_mut());
                let headers = response.headers_mut();
                headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                headers.insert(header::UPGRADE, upgrade.protocol);
            }
            _ => strip_hop_by_hop(response.headers_mut()),
        }
        Ok(response)
    }

    /// Point the request at the upstream origin and fix up its headers.
    fn rewrite(
        &self,
        head: &mut request::Parts,
        conn: &ConnContext,
        upgrade: Option<&HeaderValue>,
        absolute_uri: bool,
    ) -> Result<(), UpstreamError> {
        // HTTP/2 requests carry the host in `:authority`; an HTTP/1.1 upstream needs `Host`.
        let original_host = match head.headers.get(header::HOST) {
            Some(host) => Some(host.clone()),
            None => head
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
        };

        strip_hop_by_hop(&mut head.headers);
        if let Some(protocol) = upgrade {
            head.headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            head.headers.insert(header::UPGRADE, protocol.clone());
        }
        if let Some(host) = &original_host {
            if !head.headers.contains_key(header::HOST) {
                head.headers.insert(header::HOST, host.clone());
            }
        }
        self.set_forwarded(&mut head.headers, conn, original_host);

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
            head.uri = Uri::from_parts(parts).map_err(|e| UpstreamError {
                kind: UpstreamErrorKind::Protocol,
                detail: format!("the request target cannot be forwarded: {e}"),
            })?;
        }
        // The upstream connection's own version is chosen by the pool; HTTP/1.1
        // is accepted by both an HTTP/1.1 and an HTTP/2 upstream connection.
        head.version = Version::HTTP_11;
        Ok(())
    }

    fn set_forwarded(
        &self,
        headers: &mut HeaderMap,
        conn: &ConnContext,
        host: Option<HeaderValue>,
    ) {
        let client_ip = conn.ip_header.clone();
        let proto = HeaderValue::from_static(if conn.peer.tls { "https" } else { "http" });
        if self.trust_forwarded {
            let chain = headers
                .get_all(&X_FORWARDED_FOR)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect::<Vec<_>>()
                .join(", ");
            let value = if chain.is_empty() {
                client_ip
            } else {
                HeaderValue::from_str(&format!("{chain}, {}", conn.peer.addr.ip()))
                    .unwrap_or(client_ip)
            };
            headers.insert(&X_FORWARDED_FOR, value);
            if !headers.contains_key(&X_FORWARDED_PROTO) {
                headers.insert(&X_FORWARDED_PROTO, proto);
            }
            if !headers.contains_key(&X_FORWARDED_HOST) {
                if let Some(host) = host {
                    headers.insert(&X_FORWARDED_HOST, host);
                }
            }
        } else {
            // Replace: a client must not be able to claim another address.
            headers.remove(&FORWARDED);
            headers.insert(&X_FORWARDED_FOR, client_ip);
            headers.insert(&X_FORWARDED_PROTO, proto);
            match host {
                Some(host) => headers.insert(&X_FORWARDED_HOST, host),
                None => headers.remove(&X_FORWARDED_HOST),
            };
        }
    }
}

/// An inbound HTTP/1.1 upgrade (e.g. WebSocket) waiting for the upstream's 101.
struct PendingUpgrade {
    protocol: HeaderValue,
    inbound: OnUpgrade,
}

fn prepare_upgrade(head: &mut request::Parts) -> Option<PendingUpgrade> {
    if head.version != Version::HTTP_11 || !connection_has_token(&head.headers, "upgrade") {
        return None;
    }
    let protocol = head.headers.get(header::UPGRADE)?.clone();
    let inbound = head.extensions.remove::<OnUpgrade>()?;
    Some(PendingUpgrade { protocol, inbound })
}

async fn tunnel(inbound: OnUpgrade, upstream: OnUpgrade) {
    let (inbound, upstream) = match tokio::try_join!(inbound, upstream) {
        Ok(pair) => pair,
        Err(error) => {
            tracing::debug!(%error, "upgrade did not complete");
            return;
        }
    };
    let mut inbound = TokioIo::new(inbound);
    let mut upstream = TokioIo::new(upstream);
    if let Err(error) = tokio::io::copy_bidirectional(&mut inbound, &mut upstream).await {
        tracing::debug!(%error, "upgraded connection ended with an error");
    }
}

fn connection_has_token(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) that are not named in `Connection`,
/// one bit each so a single scan finds which are present.
const HOP_BY_HOP: [(&HeaderName, u16); 9] = [
    (&header::CONNECTION, 1 << 0),
    (&KEEP_ALIVE, 1 << 1),
    (&PROXY_CONNECTION, 1 << 2),
    (&header::PROXY_AUTHENTICATE, 1 << 3),
    (&header::PROXY_AUTHORIZATION, 1 << 4),
    (&header::TRAILER, 1 << 5),
    (&header::TRANSFER_ENCODING, 1 << 6),
    (&header::UPGRADE, 1 << 7),
    (&header::TE, 1 << 8),
];

/// Remove hop-by-hop headers (RFC 9110 §7.6.1): the fixed set and every
/// header named in `Connection`. `TE: trailers` survives, as gRPC needs it.
///
/// Most messages carry few or none of these, so one pass over the names
/// (cheap comparisons, no hashing) decides what needs removing.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut present = 0u16;
    for name in headers.keys() {
        for (hop, bit) in HOP_BY_HOP {
            if name == hop {
                present |= bit;
            }
        }
    }
    if present == 0 {
        return;
    }
    if present & 1 != 0 {
        // Headers named in `Connection` are hop-by-hop too. `close` and
        // `keep-alive` are the usual tokens and name nothing else to remove.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| !t.eq_ignore_ascii_case("close") && !t.eq_ignore_ascii_case("keep-alive"))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for (hop, bit) in HOP_BY_HOP {
        if present & bit == 0 {
            continue;
        }
        if *hop == header::TE {
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

fn empty_client_config() -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default protocol versions")
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth()
}

/// The error and its causes, for the problem `detail`.
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
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
}
