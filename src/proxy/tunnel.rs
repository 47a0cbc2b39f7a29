//! Protocol upgrades: the only tunnel licensegate opens is a WebSocket
//! (RFC 6455), on a route that allows it, after the handshake was decided
//! like any request.
//!
//! A 101 turns a connection into bytes no one decides, so every other
//! upgrade (`h2c` — the classic smuggling route past a proxy's rules —
//! `foo/1`, …) is stripped and the request forwarded as a plain request;
//! a 101 that does not answer exactly the WebSocket handshake asked for is
//! refused (502). An open tunnel keeps what the request held: the
//! inbound connection's slot (`limits.max_connections`), its concurrency
//! permits, and the drain signal; it closes after `timeouts.tunnel_idle`
//! without bytes either way.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use prometheus::IntGauge;
use tokio::io::{AsyncRead, AsyncWrite};

use super::conn::ConnContext;
use super::io::{CountingIo, Ticks};
use crate::decision::{asks_for_websocket, has_token};
use crate::limits::Permit;

static SEC_WEBSOCKET_KEY: header::HeaderName = header::SEC_WEBSOCKET_KEY;
static SEC_WEBSOCKET_VERSION: header::HeaderName = header::SEC_WEBSOCKET_VERSION;
static SEC_WEBSOCKET_ACCEPT: header::HeaderName = header::SEC_WEBSOCKET_ACCEPT;

/// RFC 6455 §1.3: appended to the key before hashing.
const WEBSOCKET_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// A WebSocket opening handshake the client sent.
#[derive(Debug, Clone)]
pub struct WebSocketHandshake {
    /// The `Sec-WebSocket-Accept` value a genuine 101 carries.
    accept: HeaderValue,
}

/// Why a request that asks for a WebSocket cannot be one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeError {
    NotGet,
    BadKey,
    /// `Sec-WebSocket-Version` other than 13: answered 426 with the version
    /// spoken (RFC 6455 §4.4).
    UnsupportedVersion,
}

impl HandshakeError {
    pub fn status(self) -> StatusCode {
        match self {
            HandshakeError::UnsupportedVersion => StatusCode::UPGRADE_REQUIRED,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    pub fn detail(self) -> &'static str {
        match self {
            HandshakeError::NotGet => "a WebSocket handshake must be a GET (RFC 6455 §4.1)",
            HandshakeError::BadKey => {
                "a WebSocket handshake needs one Sec-WebSocket-Key of 16 base64-encoded bytes"
            }
            HandshakeError::UnsupportedVersion => {
                "only WebSocket version 13 is spoken (Sec-WebSocket-Version: 13)"
            }
        }
    }
}

/// Whether `head` asks to become a WebSocket tunnel: HTTP/1.1 with
/// `Upgrade: websocket` and `Connection: upgrade`. `Ok(None)` for every
/// other request, including other upgrade tokens, which forwarding strips.
pub fn requested(
    head: &http::request::Parts,
) -> Result<Option<WebSocketHandshake>, HandshakeError> {
    if !head.headers.contains_key(header::UPGRADE) || !asks_for_websocket(head) {
        return Ok(None);
    }
    if head.method != Method::GET {
        return Err(HandshakeError::NotGet);
    }
    let mut versions = head.headers.get_all(&SEC_WEBSOCKET_VERSION).iter();
    match (versions.next(), versions.next()) {
        (Some(version), None) if version.as_bytes().trim_ascii() == b"13" => {}
        _ => return Err(HandshakeError::UnsupportedVersion),
    }
    let mut keys = head.headers.get_all(&SEC_WEBSOCKET_KEY).iter();
    let key = match (keys.next(), keys.next()) {
        (Some(key), None) => key.as_bytes().trim_ascii(),
        _ => return Err(HandshakeError::BadKey),
    };
    match base64::engine::general_purpose::STANDARD.decode(key) {
        Ok(nonce) if nonce.len() == 16 => {}
        _ => return Err(HandshakeError::BadKey),
    }
    Ok(Some(WebSocketHandshake {
        accept: accept_for(key),
    }))
}

/// `base64(SHA-1(key ‖ GUID))`, RFC 6455 §4.2.2.
fn accept_for(key: &[u8]) -> HeaderValue {
    let mut context = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    context.update(key);
    context.update(WEBSOCKET_GUID);
    let encoded = base64::engine::general_purpose::STANDARD.encode(context.finish());
    HeaderValue::from_str(&encoded).expect("base64 is a valid header value")
}

impl WebSocketHandshake {
    /// Whether a 101 answers this handshake: `Upgrade: websocket`,
    /// `Connection: upgrade` and the `Sec-WebSocket-Accept` for our key.
    pub fn answered_by(&self, headers: &HeaderMap) -> Result<(), &'static str> {
        let mut upgrades = headers.get_all(header::UPGRADE).iter();
        match (upgrades.next(), upgrades.next()) {
            (Some(value), None)
                if value
                    .as_bytes()
                    .trim_ascii()
                    .eq_ignore_ascii_case(b"websocket") => {}
            _ => return Err("the 101 does not switch to exactly `websocket`"),
        }
        if !has_token(headers, &header::CONNECTION, b"upgrade") {
            return Err("the 101 lacks `Connection: upgrade`");
        }
        let mut accepts = headers.get_all(&SEC_WEBSOCKET_ACCEPT).iter();
        match (accepts.next(), accepts.next()) {
            (Some(accept), None) if accept.as_bytes().trim_ascii() == self.accept.as_bytes() => {
                Ok(())
            }
            _ => Err("the 101's Sec-WebSocket-Accept does not answer the client's key"),
        }
    }
}

/// What an open tunnel holds until it ends.
pub struct Tunnel {
    /// The inbound connection: its slot and the drain signal.
    pub conn: Arc<ConnContext>,
    /// Concurrency permits of the handshake's route.
    pub permits: Vec<Permit>,
    pub idle_timeout: Duration,
    pub open: IntGauge,
}

impl Tunnel {
    /// Relay bytes both ways until either side closes, the tunnel idles
    /// out, or the proxy drains.
    pub async fn run(self, inbound: OnUpgrade, upstream: OnUpgrade) {
        let (inbound, upstream) = match tokio::try_join!(inbound, upstream) {
            Ok(pair) => pair,
            Err(error) => {
                tracing::debug!(%error, "upgrade did not complete");
                return;
            }
        };
        self.run_io(TokioIo::new(inbound), TokioIo::new(upstream))
            .await;
    }

    /// Relay bytes between two connections, as [`Tunnel::run`].
    pub async fn run_io<A, B>(self, inbound: A, upstream: B)
    where
        A: AsyncRead + AsyncWrite + Unpin,
        B: AsyncRead + AsyncWrite + Unpin,
    {
        self.open.inc();
        let ticks = Arc::new(Ticks::default());
        let mut inbound = CountingIo::new(inbound, Arc::clone(&ticks));
        let mut upstream = CountingIo::new(upstream, Arc::clone(&ticks));
        let relay = tokio::io::copy_bidirectional(&mut inbound, &mut upstream);
        tokio::pin!(relay);
        let drained = self.conn.drained();
        tokio::pin!(drained);
        // Checked twice per timeout: a silent tunnel closes between 1× and
        // 1.5× `timeouts.tunnel_idle`.
        let period = (self.idle_timeout / 2).max(Duration::from_millis(5));
        let mut checks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        let mut last = 0;
        let mut quiet = Duration::ZERO;
        loop {
            tokio::select! {
                result = &mut relay => {
                    if let Err(error) = result {
                        tracing::debug!(%error, "tunnel ended with an error");
                    }
                    break;
                }
                () = &mut drained => {
                    tracing::debug!(peer = %self.conn.peer.addr, "closing tunnel: draining");
                    break;
                }
                _ = checks.tick() => {
                    let now = ticks.get();
                    if now == last {
                        quiet += period;
                        if quiet >= self.idle_timeout {
                            tracing::debug!(peer = %self.conn.peer.addr, "closing idle tunnel");
                            break;
                        }
                    } else {
                        last = now;
                        quiet = Duration::ZERO;
                    }
                }
            }
        }
        self.open.dec();
        // Held until here: the route's concurrency permits (and, with
        // `self`, the connection's slot). Dropping the streams closes both sides.
        drop(self.permits);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Version;

    fn head(headers: &[(&str, &str)]) -> http::request::Parts {
        let mut builder = http::Request::get("/ws").header("host", "a");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    #[test]
    fn the_rfc_6455_example_key_gives_its_accept() {
        assert_eq!(accept_for(KEY.as_bytes()), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn only_a_complete_websocket_handshake_is_a_tunnel_request() {
        let good = [
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
            ("sec-websocket-key", KEY),
            ("sec-websocket-version", "13"),
        ];
        assert!(requested(&head(&good)).unwrap().is_some());
        // Other tokens, or no `Connection: upgrade`: not a tunnel; stripped.
        for upgrade in [
            [
                ("connection", "Upgrade, HTTP2-Settings"),
                ("upgrade", "h2c"),
            ],
            [("connection", "upgrade"), ("upgrade", "foo/1")],
            [("connection", "close"), ("upgrade", "websocket")],
        ] {
            assert!(requested(&head(&upgrade)).unwrap().is_none(), "{upgrade:?}");
        }
        let mut bad_key = good;
        bad_key[2].1 = "c2hvcnQ=";
        assert_eq!(
            requested(&head(&bad_key)).unwrap_err(),
            HandshakeError::BadKey
        );
        let mut old = good;
        old[3].1 = "8";
        assert_eq!(
            requested(&head(&old)).unwrap_err(),
            HandshakeError::UnsupportedVersion
        );
        let mut post = head(&good);
        post.method = Method::POST;
        assert_eq!(requested(&post).unwrap_err(), HandshakeError::NotGet);
        let mut h10 = head(&good);
        h10.version = Version::HTTP_10;
        assert!(requested(&h10).unwrap().is_none());
    }

    #[test]
    fn a_101_must_answer_the_key_that_was_sent() {
        let handshake = WebSocketHandshake {
            accept: accept_for(KEY.as_bytes()),
        };
        let response = |pairs: &[(&str, &str)]| {
            let mut headers = HeaderMap::new();
            for (name, value) in pairs {
                headers.append(
                    header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_str(value).unwrap(),
                );
            }
            headers
        };
        let genuine = [
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        ];
        assert_eq!(handshake.answered_by(&response(&genuine)), Ok(()));
        let mut wrong = genuine;
        wrong[2].1 = "AAAAAAAAAAAAAAAAAAAAAAAAAAA=";
        assert!(handshake.answered_by(&response(&wrong)).is_err());
        let mut h2c = genuine;
        h2c[0].1 = "h2c";
        assert!(handshake.answered_by(&response(&h2c)).is_err());
        assert!(handshake.answered_by(&response(&genuine[..2])).is_err());
    }
}
