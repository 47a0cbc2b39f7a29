//! The decision seam: every inbound request is decided exactly once, before
//! it is forwarded. The license and policy engines plug in here.

use std::borrow::Cow;
use std::net::SocketAddr;

use http::{HeaderMap, StatusCode};

/// A stable, machine-readable reason. Its `as_str` form is the `reason`
/// field of problem+json bodies and the `reason` label of metrics, so the
/// set is closed (bounded label cardinality) and names never change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The request was allowed; used for metrics only.
    Allowed,
    /// The upstream refused or reset the connection.
    UpstreamUnavailable,
    /// The upstream did not answer within `timeouts.upstream_response`.
    UpstreamTimeout,
    /// The request could not be turned into an upstream request.
    BadRequest,
}

impl Reason {
    /// Every reason, in a fixed order; metrics pre-resolve one handle each.
    pub const ALL: [Reason; 4] = [
        Reason::Allowed,
        Reason::UpstreamUnavailable,
        Reason::UpstreamTimeout,
        Reason::BadRequest,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::Allowed => "allowed",
            Reason::UpstreamUnavailable => "upstream_unavailable",
            Reason::UpstreamTimeout => "upstream_timeout",
            Reason::BadRequest => "bad_request",
        }
    }

    /// Short human title for the problem+json `title` field.
    pub const fn title(self) -> &'static str {
        match self {
            Reason::Allowed => "Allowed",
            Reason::UpstreamUnavailable => "Upstream unavailable",
            Reason::UpstreamTimeout => "Upstream timed out",
            Reason::BadRequest => "Bad request",
        }
    }

    pub const fn index(self) -> usize {
        self as usize
    }
}

/// What the engine concluded for one request.
#[derive(Debug)]
pub enum Decision {
    Allow,
    /// Boxed so that the common `Allow` stays one word wide.
    Deny(Box<Denial>),
}

/// A rejection, rendered by [`crate::problem`] as RFC 9457 problem+json.
#[derive(Debug)]
pub struct Denial {
    pub status: StatusCode,
    pub reason: Reason,
    pub detail: Cow<'static, str>,
    /// Extra response headers, e.g. `Retry-After` on 429.
    pub headers: HeaderMap,
}

impl Denial {
    pub fn new(status: StatusCode, reason: Reason, detail: impl Into<Cow<'static, str>>) -> Self {
        Denial {
            status,
            reason,
            detail: detail.into(),
            headers: HeaderMap::new(),
        }
    }
}

/// Facts about the connection a request arrived on.
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    pub tls: bool,
}

/// Decides every request. Immutable once built; later versions hold compiled
/// policy and license snapshots that are swapped atomically on reload.
#[derive(Debug, Default)]
pub struct DecisionEngine {
    _private: (),
}

impl DecisionEngine {
    /// An engine that allows every request (a plain reverse proxy).
    pub fn allow_all() -> Self {
        DecisionEngine { _private: () }
    }

    /// Decide one request from its head. Async because shared counters may
    /// need a round trip; the plain path completes without suspending.
    pub async fn decide(&self, _head: &http::request::Parts, _peer: &Peer) -> Decision {
        Decision::Allow
    }
}
