//! Idle upstream connections shared by all inbound connections, and the
//! requests waiting for one: the list both plain-HTTP/1.1 pools keep
//! (hyper's senders in `upstream.rs`, the relay's sockets in
//! `relay/pool.rs`).
//!
//! The warmest connection is reused and the coldest expire first. A request
//! that finds every budgeted connection in use waits for one to be given
//! back, which is handed to it directly, or for a slot freed by one
//! closing, at most the budget's queue wait.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use prometheus::IntGauge;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::budget::{Slot, UpstreamBudget};
use super::error::UpstreamError;

/// An upstream connection that can sit in the idle list.
pub trait Reusable: Send + 'static {
    /// Whether it can still carry a request.
    fn is_open(&self) -> bool;
}

#[derive(Debug)]
pub struct IdleConnections<T> {
    list: Mutex<IdleList<T>>,
    max_idle: usize,
    /// Connections unused this long are closed.
    idle_timeout: Duration,
    /// Idle connections, exported: a gauge other lists add to as well
    /// (hyper's and the relay's), so each adds what it changed.
    gauge: IntGauge,
    budget: Arc<UpstreamBudget>,
}

/// Connections given back, and requests waiting for one: under one lock, so
/// a connection given back never misses a request that just began to wait.
#[derive(Debug)]
struct IdleList<T> {
    /// Most recently given back last.
    entries: VecDeque<(T, Instant)>,
    /// First come first served; closed ones (their wait ended) are skipped.
    waiters: VecDeque<oneshot::Sender<T>>,
    /// `entries.len()` as last added to the gauge.
    published: usize,
}

/// What a queued request got: a connection given back, or a freed slot.
pub enum Freed<T> {
    Idle(T),
    Slot(Slot),
}

impl<T: Reusable> IdleConnections<T> {
    pub fn new(
        max_idle: usize,
        idle_timeout: Duration,
        gauge: IntGauge,
        budget: Arc<UpstreamBudget>,
    ) -> Self {
        IdleConnections {
            list: Mutex::new(IdleList {
                entries: VecDeque::new(),
                waiters: VecDeque::new(),
                published: 0,
            }),
            max_idle,
            idle_timeout,
            gauge,
            budget,
        }
    }

    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// The most recently given back connection that is still open.
    pub fn take(&self) -> Option<T> {
        let mut list = self.list.lock();
        let found = pop_open(&mut list.entries);
        self.publish(&mut list);
        found
    }

    /// A connection slot now, or whatever is freed first within the queue's
    /// wait: a connection given back or a slot.
    pub async fn slot_or_idle(&self) -> Result<Freed<T>, UpstreamError> {
        match self.budget.try_connection() {
            Some(slot) => Ok(Freed::Slot(slot)),
            None => self.wait().await,
        }
    }

    async fn wait(&self) -> Result<Freed<T>, UpstreamError> {
        let _queued = self.budget.enqueue()?;
        let (waiter, mut handed) = oneshot::channel();
        {
            let mut list = self.list.lock();
            // Given back since the caller looked?
            if let Some(connection) = pop_open(&mut list.entries) {
                self.publish(&mut list);
                return Ok(Freed::Idle(connection));
            }
            list.waiters.retain(|w| !w.is_closed());
            list.waiters.push_back(waiter);
        }
        let waited = tokio::time::timeout(self.budget.queue_wait(), async {
            tokio::select! {
                biased;
                Ok(connection) = &mut handed => Freed::Idle(connection),
                slot = self.budget.acquire_connection() => Freed::Slot(slot),
            }
        })
        .await;
        // A connection handed over just as the wait ended is used, not lost.
        handed.close();
        if let Ok(connection) = handed.try_recv() {
            return Ok(Freed::Idle(connection));
        }
        waited.map_err(|_| self.budget.overloaded().into())
    }

    /// Give a connection back: to a waiting request first, else to the list
    /// (or closed, when the list is full).
    pub fn put(&self, mut connection: T) {
        let now = Instant::now();
        let mut list = self.list.lock();
        while let Some(waiter) = list.waiters.pop_front() {
            match waiter.send(connection) {
                Ok(()) => return,
                Err(back) => connection = back,
            }
        }
        if list.entries.len() >= self.max_idle {
            self.expire(&mut list.entries, now);
        }
        if list.entries.len() < self.max_idle {
            list.entries.push_back((connection, now));
        }
        self.publish(&mut list);
    }

    /// Close connections unused for the idle timeout, and forget closed
    /// ones: called as connections are given back, and periodically, so a
    /// quiet proxy lets go too.
    pub fn expire_idle(&self) {
        let mut list = self.list.lock();
        self.expire(&mut list.entries, Instant::now());
        self.publish(&mut list);
    }

    fn publish(&self, list: &mut IdleList<T>) {
        let now = list.entries.len();
        self.gauge.add(now as i64 - list.published as i64);
        list.published = now;
    }

    fn expire(&self, entries: &mut VecDeque<(T, Instant)>, now: Instant) {
        while entries
            .front()
            .is_some_and(|(_, since)| now.duration_since(*since) >= self.idle_timeout)
        {
            entries.pop_front();
        }
        entries.retain(|(connection, _)| connection.is_open());
    }
}

fn pop_open<T: Reusable>(entries: &mut VecDeque<(T, Instant)>) -> Option<T> {
    while let Some((connection, _)) = entries.pop_back() {
        if connection.is_open() {
            return Some(connection);
        }
    }
    None
}

impl<T> Drop for IdleConnections<T> {
    fn drop(&mut self) {
        // Its connections close with it.
        let published = self.list.get_mut().published;
        self.gauge.sub(published as i64);
    }
}
