//! The relay's upstream connections: plain TCP to a plain HTTP/1.1
//! upstream, taken for one request and its response and given back to a
//! shared idle list as soon as the response has been read, so an idle
//! client holds no upstream connection. Every connection holds a slot of
//! `upstream.max_connections` (`budget.rs`); a request that finds none free
//! waits for a connection to be given back, which is handed over directly,
//! or for one to close.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use http::uri::Authority;
use parking_lot::Mutex;
use prometheus::IntGauge;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::super::budget::{Slot, UpstreamBudget};
use super::super::error::UpstreamError;
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

/// Idle upstream connections shared by all inbound connections.
#[derive(Debug)]
pub struct RelayPool {
    authority: Authority,
    connect_timeout: Duration,
    idle: Mutex<IdleList>,
    max_idle: usize,
    idle_timeout: Duration,
    idle_gauge: IntGauge,
    budget: Arc<UpstreamBudget>,
}

/// Connections given back, and requests waiting for one: under one lock,
/// so a connection given back never misses a request that just began to wait.
#[derive(Debug, Default)]
struct IdleList {
    /// Most recently given back last: the warmest is reused, the coldest
    /// expire from the front.
    entries: VecDeque<(Upstream, Instant)>,
    waiters: VecDeque<oneshot::Sender<Upstream>>,
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
            idle: Mutex::default(),
            max_idle,
            idle_timeout,
            idle_gauge,
            budget,
        }
    }

    /// An idle connection that is still open, else [`RelayPool::fresh`].
    pub async fn checkout(&self) -> Result<Upstream, UpstreamError> {
        match self.take_idle() {
            Some(upstream) => Ok(upstream),
            None => self.fresh().await,
        }
    }

    /// A new connection while the budget allows, else the first one given
    /// back (or a slot freed by one closing) within the queue's wait. Also
    /// for a request retried after a reused connection turned out closed.
    pub async fn fresh(&self) -> Result<Upstream, UpstreamError> {
        let slot = match self.budget.try_connection() {
            Some(slot) => slot,
            None => match self.wait().await? {
                Freed::Idle(upstream) => return Ok(upstream),
                Freed::Slot(slot) => slot,
            },
        };
        self.connect(slot).await
    }

    async fn connect(&self, slot: Slot) -> Result<Upstream, UpstreamError> {
        let stream = connect_tcp(&self.authority, self.connect_timeout).await?;
        Ok(Upstream {
            stream,
            _slot: slot,
            reused: false,
        })
    }

    fn take_idle(&self) -> Option<Upstream> {
        let mut idle = self.idle.lock();
        let found = pop_open(&mut idle.entries);
        self.idle_gauge.set(idle.entries.len() as i64);
        found
    }

    async fn wait(&self) -> Result<Freed, UpstreamError> {
        let _queued = self.budget.enqueue()?;
        let (waiter, mut handed) = oneshot::channel();
        {
            let mut idle = self.idle.lock();
            if let Some(upstream) = pop_open(&mut idle.entries) {
                self.idle_gauge.set(idle.entries.len() as i64);
                return Ok(Freed::Idle(upstream));
            }
            idle.waiters.retain(|w| !w.is_closed());
            idle.waiters.push_back(waiter);
        }
        let waited = tokio::time::timeout(self.budget.queue_wait(), async {
            tokio::select! {
                biased;
                Ok(upstream) = &mut handed => Freed::Idle(upstream),
                slot = self.budget.acquire_connection() => Freed::Slot(slot),
            }
        })
        .await;
        // A connection handed over just as the wait ended is used, not lost.
        handed.close();
        if let Ok(upstream) = handed.try_recv() {
            return Ok(Freed::Idle(upstream));
        }
        waited.map_err(|_| self.budget.overloaded().into())
    }

    /// Give back a connection whose last response was read to its end and
    /// that the upstream keeps open. A waiting request gets it first.
    pub fn checkin(&self, mut upstream: Upstream) {
        upstream.reused = true;
        let now = Instant::now();
        let mut idle = self.idle.lock();
        while let Some(waiter) = idle.waiters.pop_front() {
            match waiter.send(upstream) {
                Ok(()) => return,
                Err(back) => upstream = back,
            }
        }
        if idle.entries.len() >= self.max_idle {
            self.expire(&mut idle.entries, now);
        }
        if idle.entries.len() < self.max_idle {
            idle.entries.push_back((upstream, now));
        }
        self.idle_gauge.set(idle.entries.len() as i64);
    }

    /// Close connections unused for the idle timeout, and those the
    /// upstream closed.
    pub fn expire_idle(&self) {
        let mut idle = self.idle.lock();
        self.expire(&mut idle.entries, Instant::now());
        self.idle_gauge.set(idle.entries.len() as i64);
    }

    fn expire(&self, entries: &mut VecDeque<(Upstream, Instant)>, now: Instant) {
        while entries
            .front()
            .is_some_and(|(_, since)| now.duration_since(*since) >= self.idle_timeout)
        {
            entries.pop_front();
        }
        entries.retain(|(upstream, _)| is_open(&upstream.stream));
    }
}

/// What a queued request got: a connection given back, or a freed slot.
enum Freed {
    Idle(Upstream),
    Slot(Slot),
}

fn pop_open(entries: &mut VecDeque<(Upstream, Instant)>) -> Option<Upstream> {
    while let Some((upstream, _)) = entries.pop_back() {
        if is_open(&upstream.stream) {
            return Some(upstream);
        }
    }
    None
}

/// Whether an idle connection can carry a request: nothing to read yet.
/// End of stream means the upstream closed it; bytes it sent unasked
/// mean it cannot be trusted to frame the next response.
fn is_open(stream: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}
