//! Per-connection activity tracking for the connection watchdog.
//!
//! The transport wrapper counts reads and writes and notes when a client
//! starts sending an HTTP/1.1 request head, so one coarse per-connection
//! timer can enforce both the idle timeout and the request-head (slowloris)
//! timeout. That replaces a timer armed and torn down on every request, which
//! profiling showed costing about a tenth of the proxy's user-space work.
//!
//! It also counts HTTP/2 streams the client reset after they were accepted
//! (CVE-2023-44487's second form: hyper's own guard counts only resets
//! before acceptance), and flags the connection once they exceed
//! `limits.max_stream_resets` per [`STREAM_RESET_WINDOW`].

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http_body::{Body, Frame, SizeHint};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::settings::STREAM_RESET_WINDOW;
use super::settle::Settlement;

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

/// The HTTP/2 connection preface (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The first reads matched the preface, or did not: nothing more to follow.
const PREFACE_DECIDED: u8 = u8::MAX;

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
    /// Bytes of the HTTP/2 preface the first reads matched, however the
    /// client split it; `PREFACE_DECIDED` once known.
    preface: AtomicU8,
    /// Streams reset by the client after acceptance, in the current window.
    resets: Mutex<ResetWindow>,
    max_resets: u32,
    /// Set once `max_resets` was exceeded: new streams are refused and the
    /// connection is being closed.
    reset_flood: AtomicBool,
    /// The connection's supervising task, woken when `reset_flood` is set.
    supervisor: AtomicWaker,
}

#[derive(Debug)]
struct ResetWindow {
    started: Instant,
    count: u32,
}

impl Activity {
    /// `max_resets`: accepted streams the client may reset per window.
    pub fn new(max_resets: u32) -> Self {
        Activity {
            ticks: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            head_since: AtomicU64::new(NO_HEAD),
            epoch: AtomicU64::new(0),
            multiplexed: AtomicBool::new(false),
            preface: AtomicU8::new(0),
            resets: Mutex::new(ResetWindow {
                started: Instant::now(),
                count: 0,
            }),
            max_resets,
            reset_flood: AtomicBool::new(false),
            supervisor: AtomicWaker::new(),
        }
    }

    pub fn ticks(&self) -> u64 {
        self.ticks.load(Ordering::Relaxed)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Mark the connection as HTTP/2 (ALPN `h2`, or the preface seen). Its
    /// frames are no request head: the head timer does not apply.
    pub fn set_multiplexed(&self) {
        self.multiplexed.store(true, Ordering::Relaxed);
        self.head_since.store(NO_HEAD, Ordering::Relaxed);
    }

    /// Whether the client reset more accepted streams than allowed.
    pub fn reset_flood(&self) -> bool {
        self.reset_flood.load(Ordering::Relaxed)
    }

    /// Wake the task polling this when a reset flood is detected.
    pub fn register_supervisor(&self, waker: &std::task::Waker) {
        self.supervisor.register(waker);
    }

    /// An accepted HTTP/2 stream ended before its response was sent: the
    /// client reset it (or the connection is going away anyway).
    #[cold]
    fn stream_cancelled(&self) {
        // On HTTP/1.1 that only happens when the connection closes.
        if !self.multiplexed.load(Ordering::Relaxed) {
            return;
        }
        let exceeded = {
            let mut window = self.resets.lock();
            let now = Instant::now();
            if now.duration_since(window.started) >= STREAM_RESET_WINDOW {
                window.started = now;
                window.count = 0;
            }
            window.count = window.count.saturating_add(1);
            window.count > self.max_resets
        };
        if exceeded && !self.reset_flood.swap(true, Ordering::Relaxed) {
            self.supervisor.wake();
        }
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
        InFlight {
            activity: Arc::clone(self),
            complete: false,
        }
    }

    fn on_read(&self, bytes: &[u8]) {
        self.ticks.fetch_add(1, Ordering::Relaxed);
        let matched = self.preface.load(Ordering::Relaxed);
        if matched != PREFACE_DECIDED {
            self.follow_preface(matched, bytes);
        }
        if self.in_flight.load(Ordering::Relaxed) == 0
            && !self.multiplexed.load(Ordering::Relaxed)
            && self.head_since.load(Ordering::Relaxed) == NO_HEAD
        {
            self.head_since
                .store(self.epoch.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }

    /// Match the first reads against the HTTP/2 preface, which the client
    /// may split anywhere. The server's SETTINGS may go out before the first
    /// read, so "first" means the first bytes read, not the first I/O.
    #[cold]
    fn follow_preface(&self, matched: u8, bytes: &[u8]) {
        let expected = &H2_PREFACE[usize::from(matched)..];
        let n = bytes.len().min(expected.len());
        let next = if bytes[..n] != expected[..n] {
            PREFACE_DECIDED
        } else if n == expected.len() {
            self.set_multiplexed();
            PREFACE_DECIDED
        } else {
            matched + n as u8
        };
        self.preface.store(next, Ordering::Relaxed);
    }

    fn on_write(&self) {
        self.ticks.fetch_add(1, Ordering::Relaxed);
    }
}

/// A request in flight, from the service call to the end of its response
/// body. Dropped before that end, it was cancelled.
#[derive(Debug)]
pub struct InFlight {
    activity: Arc<Activity>,
    complete: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.activity.in_flight.fetch_sub(1, Ordering::Relaxed);
        if !self.complete {
            self.activity.stream_cancelled();
        }
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
        // An HTTP/2 stream's upstream connection (back to the idle list), or
        // a pooled request's slot of the upstream budget: given back once
        // the body (declared first, so dropped first) is done with it.
        upstream: Option<super::upstream::UpstreamHold>,
        // Quota tickets and meters, settled (on drop) by whether the body
        // completed.
        settle: Option<Settlement>,
    }
}

impl<B: Body> InFlightBody<B> {
    pub fn new(
        body: B,
        mut guard: InFlight,
        permits: Vec<crate::limits::Permit>,
        upstream: Option<super::upstream::UpstreamHold>,
        mut settle: Option<Settlement>,
    ) -> Self {
        // An empty body is never polled: its response is complete as sent.
        guard.complete = body.is_end_stream();
        if guard.complete {
            if let Some(settle) = &mut settle {
                settle.completed();
            }
        }
        InFlightBody {
            body,
            guard,
            permits,
            upstream,
            settle,
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
        let mut this = self.project();
        let polled = this.body.as_mut().poll_frame(cx);
        // The server stops polling once the body says it has ended; an
        // upstream body error ends the response too, not the client's doing.
        let (ended, whole) = match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(settle), Some(data)) = (this.settle.as_mut(), frame.data_ref()) {
                    settle.sent(data.len());
                }
                let ended = this.body.is_end_stream();
                (ended, ended)
            }
            Poll::Ready(None) => (true, true),
            // Cut short: not a served response.
            Poll::Ready(Some(Err(_))) => (true, false),
            Poll::Pending => (false, false),
        };
        if ended {
            this.guard.complete = true;
        }
        if whole {
            if let Some(settle) = this.settle.as_mut() {
                settle.completed();
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// What a [`CountingIo`] reports its traffic to.
pub trait Observe {
    /// `bytes` were read.
    fn read(&self, bytes: &[u8]);
    /// Bytes were written.
    fn wrote(&self);
}

impl Observe for Activity {
    fn read(&self, bytes: &[u8]) {
        self.on_read(bytes);
    }

    fn wrote(&self) {
        self.on_write();
    }
}

/// Reads and writes that moved bytes, counted: a tunnel's idle clock.
#[derive(Debug, Default)]
pub struct Ticks(AtomicU64);

impl Ticks {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Observe for Ticks {
    fn read(&self, _: &[u8]) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn wrote(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// An I/O stream that reports its activity.
    pub struct CountingIo<T, O> {
        #[pin]
        inner: T,
        activity: Arc<O>,
    }
}

impl<T, O> CountingIo<T, O> {
    pub fn new(inner: T, activity: Arc<O>) -> Self {
        CountingIo { inner, activity }
    }
}

impl<T: AsyncRead, O: Observe> AsyncRead for CountingIo<T, O> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let result = this.inner.poll_read(cx, buf);
        if buf.filled().len() != before {
            this.activity.read(&buf.filled()[before..]);
        }
        result
    }
}

impl<T: AsyncWrite, O: Observe> AsyncWrite for CountingIo<T, O> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let result = this.inner.poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.wrote();
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
            this.activity.wrote();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn multiplexed(activity: &Activity) -> bool {
        activity.multiplexed.load(Ordering::Relaxed)
    }

    #[test]
    fn a_preface_split_anywhere_marks_the_connection_multiplexed() {
        for split in 1..H2_PREFACE.len() {
            let activity = Activity::new(1);
            // The server's SETTINGS may go out before the first read.
            activity.on_write();
            activity.on_read(&H2_PREFACE[..split]);
            activity.on_read(&H2_PREFACE[split..]);
            assert!(multiplexed(&activity), "split at {split}");
            assert_eq!(activity.head_started(), None, "split at {split}");
        }
        // An HTTP/1.1 head that starts like the preface is still timed.
        let activity = Activity::new(1);
        activity.on_read(b"PR");
        activity.on_read(b"OPFIND / HTTP/1.1\r\n");
        activity.on_read(H2_PREFACE);
        assert!(!multiplexed(&activity));
        assert_eq!(activity.head_started(), Some(0));
    }

    #[test]
    fn accepted_streams_reset_beyond_the_budget_flag_the_connection() {
        let activity = Arc::new(Activity::new(2));
        activity.set_multiplexed();
        // Finished responses are no resets.
        for _ in 0..3 {
            let mut in_flight = activity.begin_request();
            in_flight.complete = true;
        }
        for _ in 0..2 {
            drop(activity.begin_request());
        }
        assert!(!activity.reset_flood());
        drop(activity.begin_request());
        assert!(activity.reset_flood());
        assert_eq!(activity.in_flight(), 0);

        // On HTTP/1.1 a request ends early only with its connection.
        let http1 = Arc::new(Activity::new(1));
        for _ in 0..3 {
            drop(http1.begin_request());
        }
        assert!(!http1.reset_flood());
    }
}
