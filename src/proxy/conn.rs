//! What an inbound connection carries through forwarding, and into the
//! tunnel it may become.

use http::HeaderValue;

use super::io::ConnectionSlot;
use super::upstream::Lease;
use crate::decision::Peer;

/// What forwarding keeps per inbound connection: the peer, its address
/// pre-rendered for `X-Forwarded-For`, and the upstream connection it holds.
#[derive(Debug)]
pub struct ConnContext {
    pub peer: Peer,
    pub(super) ip_header: HeaderValue,
    pub(super) lease: Option<Lease>,
    /// Held as long as anything of the connection lives, a tunnel included.
    slot: ConnectionSlot,
}

impl ConnContext {
    pub(super) fn new(peer: Peer, lease: Option<Lease>, slot: ConnectionSlot) -> ConnContext {
        let ip_header = HeaderValue::from_str(&peer.addr.ip().to_string())
            .expect("an IP address is a valid header value");
        ConnContext {
            peer,
            ip_header,
            lease,
            slot,
        }
    }

    /// Resolves once the proxy starts draining.
    pub async fn drained(&self) {
        self.slot.drained().await;
    }

    /// The inbound connection went quiet: let go of its upstream connection.
    pub fn release_upstream(&self) {
        if let Some(lease) = &self.lease {
            lease.release();
        }
    }
}
