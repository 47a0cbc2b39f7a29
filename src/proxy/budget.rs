//! The global cap on upstream fan-out: `upstream.max_connections`.
//!
//! Without it every HTTP/2 client stream that finds no idle upstream
//! connection opens a new one, so one client connection with 250 streams to
//! a slow route opened 250 upstream connections (RSS 13 → 46 MB). The cap
//! counts upstream connections of both pools (the direct pool in
//! `upstream.rs`, hyper-util's through [`Budgeted`]) and, over hyper-util's
//! pool, requests in flight too, since an HTTP/2 upstream connection carries
//! many at once. A request that needs a connection while all are in use
//! waits in a bounded queue (at most `max_connections` waiters, each at most
//! `timeouts.upstream_queue`), then is refused with 503 `upstream_overloaded`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection};
use prometheus::IntGauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::UpstreamError;
use super::UpstreamErrorKind;

/// Upstream connections and pooled requests in flight, each at most `max`.
#[derive(Debug)]
pub struct UpstreamBudget {
    connections: Arc<Semaphore>,
    /// Requests in flight over hyper-util's pool.
    requests: Arc<Semaphore>,
    max: usize,
    queue_wait: Duration,
    /// Requests waiting now; at most `max`.
    queued: AtomicUsize,
    open_gauge: IntGauge,
    queued_gauge: IntGauge,
}

/// One unit of the budget, given back when dropped: an upstream connection
/// (held by its connection task or socket) or a pooled request in flight
/// (held by its response body).
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    /// Set for connection slots, which the open-connections gauge counts.
    open_gauge: Option<IntGauge>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(gauge) = &self.open_gauge {
            gauge.dec();
        }
    }
}

/// All of `upstream.max_connections` stayed in use for the queue's wait.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Overloaded(String);

impl From<Overloaded> for UpstreamError {
    fn from(overloaded: Overloaded) -> Self {
        UpstreamError::said(UpstreamErrorKind::Overloaded, overloaded.0)
    }
}

/// Counts a request as queued until dropped.
pub struct Queued<'a>(&'a UpstreamBudget);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::Relaxed);
        self.0.queued_gauge.dec();
    }
}

impl UpstreamBudget {
    pub fn new(
        max: usize,
        queue_wait: Duration,
        open_gauge: IntGauge,
        queued_gauge: IntGauge,
    ) -> Self {
        UpstreamBudget {
            connections: Arc::new(Semaphore::new(max)),
            requests: Arc::new(Semaphore::new(max)),
            max,
            queue_wait,
            queued: AtomicUsize::new(0),
            open_gauge,
            queued_gauge,
        }
    }

    pub fn queue_wait(&self) -> Duration {
        self.queue_wait
    }

    /// A connection slot, if one is free now.
    pub fn try_connection(&self) -> Option<Slot> {
        let permit = Arc::clone(&self.connections).try_acquire_owned().ok()?;
        Some(self.connection_slot(permit))
    }

    /// Wait (in the queue) for a connection slot to be freed.
    pub async fn acquire_connection(&self) -> Slot {
        let permit = Arc::clone(&self.connections)
            .acquire_owned()
            .await
            .expect("the budget's semaphores are never closed");
        self.connection_slot(permit)
    }

    fn connection_slot(&self, permit: OwnedSemaphorePermit) -> Slot {
        self.open_gauge.inc();
        Slot {
            _permit: permit,
            open_gauge: Some(self.open_gauge.clone()),
        }
    }

    /// A connection slot now, or once one is freed within the queue's wait.
    pub async fn connection(&self) -> Result<Slot, Overloaded> {
        if let Some(slot) = self.try_connection() {
            return Ok(slot);
        }
        let _queued = self.enqueue()?;
        tokio::time::timeout(self.queue_wait, self.acquire_connection())
            .await
            .map_err(|_| self.overloaded())
    }

    /// A slot for one request over hyper-util's pool, held until its
    /// response body ends; queued like a connection when none is free.
    pub async fn request(&self) -> Result<Slot, Overloaded> {
        let permit = match Arc::clone(&self.requests).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let _queued = self.enqueue()?;
                let acquire = Arc::clone(&self.requests).acquire_owned();
                tokio::time::timeout(self.queue_wait, acquire)
                    .await
                    .map_err(|_| self.overloaded())?
                    .expect("the budget's semaphores are never closed")
            }
        };
        Ok(Slot {
            _permit: permit,
            open_gauge: None,
        })
    }

    /// Join the queue, unless `max` requests are waiting already.
    pub fn enqueue(&self) -> Result<Queued<'_>, Overloaded> {
        if self.queued.fetch_add(1, Ordering::Relaxed) >= self.max {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            return Err(Overloaded(format!(
                "all {} upstream connections (upstream.max_connections) are in use and as many requests wait for one",
                self.max
            )));
        }
        self.queued_gauge.inc();
        Ok(Queued(self))
    }

    pub fn overloaded(&self) -> Overloaded {
        Overloaded(format!(
            "all {} upstream connections (upstream.max_connections) stayed in use for {} (timeouts.upstream_queue)",
            self.max,
            humantime::format_duration(self.queue_wait)
        ))
    }
}

/// A connector for hyper-util's pool that opens a connection only with a
/// connection slot, which then lives as long as the connection's socket.
#[derive(Clone, Debug)]
pub struct Budgeted<C> {
    inner: C,
    budget: Arc<UpstreamBudget>,
}

impl<C> Budgeted<C> {
    pub fn new(inner: C, budget: Arc<UpstreamBudget>) -> Self {
        Budgeted { inner, budget }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<C> tower_service::Service<Uri> for Budgeted<C>
where
    C: tower_service::Service<Uri> + Clone + Send + 'static,
    C::Future: Send,
    C::Error: Into<BoxError>,
{
    type Response = BudgetedIo<C::Response>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        // The inner call starts only once a slot is held, so it runs on a
        // clone; hyper-rustls' and hyper-util's connectors are always ready.
        let mut inner = self.inner.clone();
        let budget = Arc::clone(&self.budget);
        Box::pin(async move {
            let slot = budget.connection().await?;
            let io = inner.call(uri).await.map_err(Into::into)?;
            Ok(BudgetedIo { io, _slot: slot })
        })
    }
}

/// An upstream connection's socket with the slot it takes. The slot lives
/// in the socket, not in the connection's task, so an upgraded connection
/// (a WebSocket tunnel, which outlives that task) keeps counting.
#[derive(Debug)]
pub struct BudgetedIo<T> {
    io: T,
    _slot: Slot,
}

impl<T> BudgetedIo<T> {
    pub fn new(io: T, slot: Slot) -> Self {
        BudgetedIo { io, _slot: slot }
    }
}

impl<T: Read + Unpin> Read for BudgetedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Write for BudgetedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

impl<T: Connection> Connection for BudgetedIo<T> {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

/// Whether `error` or one of its causes is an [`Overloaded`].
pub fn find_overloaded<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Overloaded> {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if let Some(overloaded) = error.downcast_ref::<Overloaded>() {
            return Some(overloaded);
        }
        cause = error.source();
    }
    None
}
