//! The relay's upstream connections: plain TCP to a plain HTTP/1.1
//! upstream, taken for one request and its response and given back to the
//! shared idle list (`idle.rs`) as soon as the response has been read, so
//! an idle client holds no upstream connection. Every connection holds a
//! slot of `upstream.max_connections` (`budget.rs`).

use std::sync::Arc;
use std::time::Duration;

use http::uri::Authority;
use prometheus::IntGauge;
use tokio::net::TcpStream;

use super::super::budget::{Slot, UpstreamBudget};
use super::super::error::UpstreamError;
use super::super::idle::{Freed, IdleConnections, Reusable};
use super::super::upstream::connect_tcp;

/// One upstream connection and the budget slot it holds while open.
#[derive(Debug)]
pub struct Upstream {
    pub stream: TcpStream,
    _slot: Slot,
    /// It served a request before: a failure before any response byte may
    /// be the upstream having closed it meanwhile.
    pub reused: bool,
}

impl Reusable for Upstream {
    /// Nothing to read yet. End of stream means the upstream closed it;
    /// bytes it sent unasked mean it cannot be trusted to frame the next
    /// response.
    fn is_open(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

/// Connections to one upstream origin, shared by all inbound connections.
#[derive(Debug)]
pub struct RelayPool {
    authority: Authority,
    connect_timeout: Duration,
    idle: IdleConnections<Upstream>,
}

impl RelayPool {
    pub fn new(
        authority: Authority,
        connect_timeout: Duration,
        max_idle: usize,
        idle_timeout: Duration,
        idle_gauge: IntGauge,
        budget: Arc<UpstreamBudget>,
    ) -> Self {
        RelayPool {
            authority,
            connect_timeout,
            idle: IdleConnections::new(max_idle, idle_timeout, idle_gauge, budget),
        }
    }

    /// An idle connection that is still open, else [`RelayPool::fresh`].
    pub async fn checkout(&self) -> Result<Upstream, UpstreamError> {
        match self.idle.take() {
            Some(upstream) => Ok(upstream),
            None => self.fresh().await,
        }
    }

    /// A new connection while the budget allows, else the first one given
    /// back (or a slot freed by one closing) within the queue's wait. Also
    /// for a request retried after a reused connection turned out closed.
    pub async fn fresh(&self) -> Result<Upstream, UpstreamError> {
        let slot = match self.idle.slot_or_idle().await? {
            Freed::Idle(upstream) => return Ok(upstream),
            Freed::Slot(slot) => slot,
        };
        let stream = connect_tcp(&self.authority, self.connect_timeout).await?;
        Ok(Upstream {
            stream,
            _slot: slot,
            reused: false,
        })
    }

    /// Give back a connection whose last response was read to its end and
    /// that the upstream keeps open. A waiting request gets it first.
    pub fn checkin(&self, mut upstream: Upstream) {
        upstream.reused = true;
        self.idle.put(upstream);
    }

    /// Close connections unused for the idle timeout, and those the
    /// upstream closed.
    pub fn expire_idle(&self) {
        self.idle.expire_idle();
    }
}
