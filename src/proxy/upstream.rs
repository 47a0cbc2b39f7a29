//! Plain-HTTP/1.1 upstream connections with connection affinity, for
//! hyper's client: under `http1: hyper`, and for HTTP/2 client streams
//! (the relay has its own, `relay/pool.rs`, over the same idle list).
//!
//! A sidecar's upstream is usually one local workload spoken to over plain
//! HTTP/1.1. For that case each inbound connection keeps the upstream
//! connection it last used and sends its next request on it directly: no
//! shared-pool lock, no key hashing, no task spawned per request to return
//! the connection (all of which the general-purpose pool does, and which
//! profiles showed as a large share of user-space time per request). Upstream
//! connections not held by an inbound connection wait in a small shared idle
//! list (`idle.rs`), so new inbound connections reuse them; an inbound connection that
//! goes quiet gives its connection back there. Each HTTP/2 client stream
//! takes one from that list for the time of its response. TLS and HTTP/2
//! upstreams use hyper-util's pool instead (see `forward.rs`).
//!
//! New connections need a slot of the upstream budget (`budget.rs`); a
//! request that finds none free waits for a connection to come back to the
//! idle list, which hands it over directly, or for one to close.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::Authority;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use prometheus::IntGauge;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::budget::{BudgetedIo, Slot, UpstreamBudget};
use super::error::{of_io, Failure, UpstreamError};
use super::idle::{Freed, IdleConnections, Reusable};
use super::request_body::RequestBody;
use super::UpstreamErrorKind;

type Sender = http1::SendRequest<RequestBody>;

/// Idle upstream connections shared by all inbound connections.
#[derive(Debug)]
pub struct DirectPool {
    authority: Authority,
    connect_timeout: Duration,
    response_timeout: Duration,
    idle: IdleConnections<Sender>,
}

impl Reusable for Sender {
    /// A sender whose connection is still finishing its last response (its
    /// task has not yet seen the body's end) counts as open: the next user
    /// waits for it in `poll_ready`, and one that closes instead is replaced.
    fn is_open(&self) -> bool {
        !self.is_closed()
    }
}

/// The upstream connection an inbound connection holds between requests.
/// Returned to the shared idle list when the inbound connection closes.
#[derive(Debug)]
pub struct Lease {
    pool: Arc<DirectPool>,
    /// One lock for both, taken once as a request starts and once as it ends.
    state: Mutex<LeaseState>,
}

#[derive(Debug, Default)]
struct LeaseState {
    held: Option<Sender>,
    /// The response-timeout timer, re-armed per request. Moving a tokio
    /// deadline later is an atomic update, while a fresh timer per request
    /// costs a timer-wheel insert and removal.
    timer: Option<Pin<Box<Sleep>>>,
}

impl DirectPool {
    pub fn new(
        authority: Authority,
        connect_timeout: Duration,
        response_timeout: Duration,
        max_idle: usize,
        idle_timeout: Duration,
        idle_gauge: IntGauge,
        budget: Arc<UpstreamBudget>,
    ) -> Self {
        DirectPool {
            authority,
            connect_timeout,
            response_timeout,
            idle: IdleConnections::new(max_idle, idle_timeout, idle_gauge, budget),
        }
    }

    pub fn lease(self: &Arc<Self>) -> Lease {
        Lease {
            pool: Arc::clone(self),
            state: Mutex::default(),
        }
    }

    fn take_idle(&self) -> Option<Sender> {
        self.idle.take()
    }

    /// A connection for a request that found none idle: a new one while the
    /// budget allows, else the first given back (or a slot freed by one
    /// closing) within the queue's wait.
    async fn open(&self) -> Result<Sender, UpstreamError> {
        let slot = match self.idle.slot_or_idle().await? {
            Freed::Idle(sender) => return Ok(sender),
            Freed::Slot(slot) => slot,
        };
        self.connect(slot).await
    }

    pub fn idle_timeout(&self) -> Duration {
        self.idle.idle_timeout()
    }

    /// Close connections unused for the idle timeout.
    pub fn expire_idle(&self) {
        self.idle.expire_idle();
    }

    /// A request waiting for a connection gets it first.
    fn put_idle(&self, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        self.idle.put(sender);
    }

    /// Open a connection that keeps `slot` for as long as it is open.
    async fn connect(&self, slot: Slot) -> Result<Sender, UpstreamError> {
        let stream = connect_tcp(&self.authority, self.connect_timeout).await?;
        let (sender, connection) = http1::Builder::new()
            .writev(false)
            .handshake(BudgetedIo::new(TokioIo::new(stream), slot))
            .await
            .map_err(|e| {
                let mut failed = UpstreamError::from_hyper(UpstreamErrorKind::Connect, &e);
                failed.detail = format!("HTTP/1.1 handshake failed: {}", failed.detail);
                failed
            })?;
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(%error, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}

/// A TCP connection to a plain upstream, within `connect_timeout`, trying
/// each address the name resolves to; `TCP_NODELAY` set.
pub(super) async fn connect_tcp(
    authority: &Authority,
    connect_timeout: Duration,
) -> Result<TcpStream, UpstreamError> {
    let connect_error = |failure: Failure, detail: String| {
        UpstreamError::new(UpstreamErrorKind::Connect, failure, detail)
    };
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(80);
    let connect = async {
        let mut last_error = None;
        let addrs = tokio::net::lookup_host((host, port)).await.map_err(|e| {
            connect_error(
                Failure::Unresolved,
                format!("cannot resolve {}: {e}", authority),
            )
        })?;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(stream) => return Ok(stream),
                Err(e) => {
                    last_error = Some(connect_error(
                        of_io(&e),
                        format!("tcp connect error: {addr}: {e}"),
                    ))
                }
            }
        }
        Err(last_error.unwrap_or_else(|| {
            connect_error(
                Failure::Unresolved,
                format!("{} resolved to no addresses", authority),
            )
        }))
    };
    let stream = tokio::time::timeout(connect_timeout, connect)
        .await
        .map_err(|_| {
            connect_error(
                Failure::ConnectTimeout(Some(connect_timeout)),
                format!(
                    "tcp connect to {} timed out after {}",
                    authority,
                    humantime::format_duration(connect_timeout)
                ),
            )
        })??;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

impl Lease {
    /// Send one request in origin form and wait, up to the response timeout,
    /// for the response head. Uses the held connection when it is usable,
    /// else an idle or new one; a request the connection refused before
    /// writing anything (it was closing) is retried once on a new one.
    ///
    /// One flat async fn with the deadline checked at each await: nesting
    /// async fns (and `select!`) moved the request and the futures between
    /// their states several times per request (memcpy, measured with callgrind).
    pub async fn send(
        &self,
        request: Request<RequestBody>,
        keep_connection: bool,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let timeout = self.pool.response_timeout;
        let (mut checkout, held) = Checkout::start(self, Instant::now() + timeout);
        let elapsed = |_: Elapsed| {
            UpstreamError::new(
                UpstreamErrorKind::Timeout,
                Failure::ResponseTimeout(timeout),
                format!(
                    "the upstream did not respond within {}",
                    humantime::format_duration(timeout)
                ),
            )
        };

        let mut sender = match held.or_else(|| self.pool.take_idle()) {
            Some(sender) => sender,
            // Boxed: connecting is rare, and its large future would otherwise
            // be part of (and copied with) every request's future.
            None => checkout
                .within(Box::pin(self.pool.open()))
                .await
                .map_err(elapsed)??,
        };
        let ready = checkout
            .within(std::future::poll_fn(|cx| sender.poll_ready(cx)))
            .await
            .map_err(elapsed)?;
        if ready.is_err() {
            sender = checkout
                .within(Box::pin(self.pool.open()))
                .await
                .map_err(elapsed)??;
        }
        // Pinned in place: the send future holds the request until it is
        // queued, and each move of it is a copy.
        let sending = std::pin::pin!(sender.try_send_request(request));
        let sent = checkout.within(sending).await.map_err(elapsed)?;
        let response = match sent {
            Ok(response) => response,
            Err(mut error) => match error.take_message() {
                Some(request) => {
                    sender = checkout
                        .within(Box::pin(self.pool.open()))
                        .await
                        .map_err(elapsed)??;
                    checkout
                        .within(sender.send_request(request))
                        .await
                        .map_err(elapsed)?
                        .map_err(protocol_error)?
                }
                None => return Err(protocol_error(error.into_error())),
            },
        };
        // A 101 hands the connection to a tunnel (or, unasked for, to
        // nothing): it serves no further requests.
        if keep_connection
            && response.status() != http::StatusCode::SWITCHING_PROTOCOLS
            && !closes_connection(response.headers(), response.version())
        {
            // The next request on this inbound connection waits in `poll_ready`
            // until this response's body has been read to the end. A response
            // that closes the connection leaves nothing worth holding: the
            // sender alone keeps hyper's request channel (~9 KB) allocated.
            checkout.keep = Some(sender);
        }
        Ok(response)
    }
}

/// What one request takes out of its lease: the response timer, and on
/// success the connection to keep. Both go back on drop (also when the
/// request is cancelled) under one lock.
struct Checkout<'a> {
    lease: &'a Lease,
    timer: Option<Pin<Box<Sleep>>>,
    keep: Option<Sender>,
}

/// The response deadline passed.
struct Elapsed;

impl<'a> Checkout<'a> {
    /// Arm the timer for `deadline`; also returns the held connection.
    fn start(lease: &'a Lease, deadline: Instant) -> (Self, Option<Sender>) {
        let (timer, held) = {
            let mut state = lease.state.lock();
            (state.timer.take(), state.held.take())
        };
        let timer = match timer {
            Some(mut timer) => {
                timer.as_mut().reset(deadline);
                timer
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        };
        let checkout = Checkout {
            lease,
            timer: Some(timer),
            keep: None,
        };
        (checkout, held)
    }

    /// `future`, unless the deadline passes first.
    fn within<F: Future>(&mut self, future: F) -> Within<'_, F> {
        Within {
            future,
            timer: self
                .timer
                .as_mut()
                .expect("the timer is only taken on drop"),
        }
    }
}

impl Drop for Checkout<'_> {
    fn drop(&mut self) {
        let previous = {
            let mut state = self.lease.state.lock();
            state.timer = self.timer.take();
            match self.keep.take() {
                Some(sender) => state.held.replace(sender),
                None => None,
            }
        };
        if let Some(previous) = previous {
            self.lease.pool.put_idle(previous);
        }
    }
}

pin_project_lite::pin_project! {
    struct Within<'a, F> {
        #[pin]
        future: F,
        timer: &'a mut Pin<Box<Sleep>>,
    }
}

impl<F: Future> Future for Within<'_, F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(output) = this.future.poll(cx) {
            return Poll::Ready(Ok(output));
        }
        match this.timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Lease {
    /// Give the held upstream connection back to the shared idle list (or
    /// close it if that is full), and free the response timer. Called when
    /// the inbound connection has gone quiet, so idle clients do not each
    /// pin an upstream connection.
    pub fn release(&self) {
        let held = {
            let mut state = self.state.lock();
            state.timer = None;
            state.held.take()
        };
        if let Some(sender) = held {
            self.pool.put_idle(sender);
        }
    }
}

/// Whether the upstream said it closes the connection after this response
/// (`Connection: close`, or HTTP/1.0 without `keep-alive`). One pass over
/// the `Connection` values, whole-value matches first: this runs on every
/// response.
fn closes_connection(headers: &http::HeaderMap, version: http::Version) -> bool {
    let (mut close, mut keep_alive) = (false, false);
    for value in headers.get_all(http::header::CONNECTION) {
        let value = value.as_bytes();
        if value.eq_ignore_ascii_case(b"keep-alive") {
            keep_alive = true;
        } else if value.eq_ignore_ascii_case(b"close") {
            close = true;
        } else {
            for token in value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }
    close || (version == http::Version::HTTP_10 && !keep_alive)
}

/// What a response body keeps of the upstream until it has been sent.
#[derive(Debug)]
pub enum UpstreamHold {
    /// An HTTP/2 stream's direct connection, back to the idle list after.
    Stream(Lease),
    /// A request's slot of the budget over hyper-util's pool.
    Request(Slot),
}

impl From<Lease> for UpstreamHold {
    fn from(lease: Lease) -> Self {
        UpstreamHold::Stream(lease)
    }
}

impl From<Slot> for UpstreamHold {
    fn from(slot: Slot) -> Self {
        UpstreamHold::Request(slot)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(sender) = self.state.lock().held.take() {
            self.pool.put_idle(sender);
        }
    }
}

fn protocol_error(error: hyper::Error) -> UpstreamError {
    let mut failed = UpstreamError::from_hyper(UpstreamErrorKind::Protocol, &error);
    if !failed.client_body {
        failed.detail = format!("upstream connection failed: {}", failed.detail);
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::closes_connection;
    use http::{HeaderMap, HeaderValue, Version};

    fn connection(values: &[&'static str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(http::header::CONNECTION, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn responses_that_close_their_connection_are_recognised() {
        let v11 = Version::HTTP_11;
        assert!(!closes_connection(&connection(&[]), v11));
        assert!(!closes_connection(&connection(&["keep-alive"]), v11));
        assert!(!closes_connection(&connection(&["Upgrade"]), v11));
        assert!(closes_connection(&connection(&["close"]), v11));
        assert!(closes_connection(&connection(&["CLOSE"]), v11));
        assert!(closes_connection(&connection(&["x-trace, close "]), v11));
        assert!(closes_connection(
            &connection(&["keep-alive", "close"]),
            v11
        ));
        // HTTP/1.0 closes unless it says keep-alive.
        let v10 = Version::HTTP_10;
        assert!(closes_connection(&connection(&[]), v10));
        assert!(!closes_connection(&connection(&["Keep-Alive"]), v10));
        assert!(!closes_connection(&connection(&["foo,keep-alive"]), v10));
        assert!(closes_connection(&connection(&["keep-alive, close"]), v10));
    }
}
