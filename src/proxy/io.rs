//! Per-connection activity tracking for the connection watchdog.
//!
//! The transport wrapper counts reads and writes and notes when a client
//! starts sending an HTTP/1.1 request head, so one coarse per-connection
//! timer can enforce both the idle timeout and the request-head (slowloris)
//! timeout. That replaces a timer armed and torn down on every request, which
//! profiling showed costing about a tenth of the proxy's user-space work.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What an inbound connection holds for its whole life, including the
/// tunnel it may become: its `limits.max_connections` slot, its place in
/// the open-connections gauge, and the drain signal.
#[derive(Debug)]
pub struct ConnectionSlot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    open: prometheus::IntGauge,
    lifecycle: Arc<crate::lifecycle::Lifecycle>,
}

impl ConnectionSlot {
    pub fn new(
        permit: tokio::sync::OwnedSemaphorePermit,
        open: prometheus::IntGauge,
        lifecycle: Arc<crate::lifecycle::Lifecycle>,
    ) -> Self {
        open.inc();
        ConnectionSlot {
            _permit: permit,
            open,
            lifecycle,
        }
    }

    /// Resolves once the proxy starts draining.
    pub async fn drained(&self) {
        self.lifecycle.drained().await;
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// No request head is being received.
const NO_HEAD: u64 = u64::MAX;

/// Per-connection counters shared by the transport, the service and the watchdog.
#[derive(Debug)]
pub struct Activity {
    /// Bumped on every read or write that moved bytes.
    ticks: AtomicU64,
    /// Requests whose response has not been fully sent.
    in_flight: AtomicUsize,
    /// Watchdog epoch in which the client began sending a request head
    /// while nothing was in flight; `NO_HEAD` otherwise.
    head_since: AtomicU64,
    /// Advanced by the watchdog on every check.
    epoch: AtomicU64,
    /// HTTP/2: requests are framed, so there is no head to time.
    multiplexed: AtomicBool,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            ticks: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            head_since: AtomicU64::new(NO_HEAD),
            epoch: AtomicU64::new(0),
            multiplexed: AtomicBool::new(false),
        }
    }
}

impl Activity {
    pub fn ticks(&self) -> u64 {
        self.ticks.load(Ordering::Relaxed)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Mark the connection as HTTP/2 (ALPN `h2`).
    pub fn set_multiplexed(&self) {
        self.multiplexed.store(true, Ordering::Relaxed);
    }

    /// Advance the watchdog's clock; returns the new epoch.
    pub fn advance_epoch(&self) -> u64 {
        self.epoch.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The epoch in which a still-incomplete request head began, if any.
    pub fn head_started(&self) -> Option<u64> {
        match self.head_since.load(Ordering::Relaxed) {
            NO_HEAD => None,
            epoch => Some(epoch),
        }
    }

    /// Marks a request in flight until the guard drops (with the response body).
    pub fn begin_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_since.store(NO_HEAD, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }

    fn on_read(&self, first_bytes: &[u8]) {
        let previous = self.ticks.fetch_add(1, Ordering::Relaxed);
        // The HTTP/2 connection preface starts with "PRI "; no HTTP/1.1
        // request can, as PRI is not a method hyper accepts over HTTP/1.1.
        if previous == 0 && first_bytes.starts_with(b"PRI ") {
            self.multiplexed.store(true, Ordering::Relaxed);
        }
        if self.in_flight.load(Ordering::Relaxed) == 0
            && !self.multiplexed.load(Ordering::Relaxed)
            && self.head_since.load(Ordering::Relaxed) == NO_HEAD
        {
            self.head_since
                .store(self.epoch.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }

    fn on_write(&self) {
        self.ticks.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted as in flight until the
    /// body has been sent (or dropped), so a long download is never "idle".
    pub struct InFlightBody<B> {
        #[pin]
        body: B,
        guard: InFlight,
        // Concurrency-limit slots, freed with the body.
        permits: Vec<crate::limits::Permit>,
        // An HTTP/2 stream's upstream connection: back to the idle list once
        // the body (declared first, so dropped first) is done with it.
        upstream: Option<super::upstream::Lease>,
    }
}

impl<B> InFlightBody<B> {
    pub fn new(
        body: B,
        guard: InFlight,
        permits: Vec<crate::limits::Permit>,
        upstream: Option<super::upstream::Lease>,
    ) -> Self {
        InFlightBody {
            body,
            guard,
            permits,
            upstream,
        }
    }
}

impl<B: Body<Data = Bytes>> Body for InFlightBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// An I/O stream that reports its activity.
    pub struct CountingIo<T> {
        #[pin]
        inner: T,
        activity: Arc<Activity>,
    }
}

impl<T> CountingIo<T> {
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        CountingIo { inner, activity }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncRead> AsyncRead for CountingIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let result = this.inner.poll_read(cx, buf);
        if buf.filled().len() != before {
            this.activity.on_read(&buf.filled()[before..]);
        }
        result
    }
}

impl<T: AsyncWrite> AsyncWrite for CountingIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let result = this.inner.poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.on_write();
        }
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let result = this.inner.poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.on_write();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}
