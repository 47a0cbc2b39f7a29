//! licensegate's own HTTP/1.1 relay, for plain-TCP HTTP/1.x clients of a
//! plain HTTP/1.1 upstream (a sidecar's usual case), as Pingora and Envoy
//! relay rather than pairing a generic server with a generic client.
//!
//! Each inbound connection is one task, and each request passes the named
//! phases in it: read the head (`h1::parse_request`), decide (the shared
//! evaluator, as for hyper's path), rewrite the head for the upstream, send
//! it on a pooled upstream connection, relay the request body while reading
//! the response (full duplex: an upstream may answer before it has read the
//! whole body), relay the response, and give the upstream connection back.
//!
//! What an idle keep-alive connection costs is what makes the sidecar's
//! memory scale: between requests the task holds its socket, a timer and
//! two `Arc`s. Buffers are allocated when bytes arrive and freed when the
//! connection goes idle; the request's own state lives in a box taken for
//! the request; the upstream connection goes back to the shared idle list
//! as soon as its response has been read.
//!
//! Framing is normalised, never passed through: the upstream gets exactly
//! one framing header and a body re-framed by the proxy (chunked bodies are
//! decoded and re-encoded, extensions and trailers dropped), so a request
//! the proxy and the upstream could split differently cannot be formed.

mod clock;
pub mod pool;

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::future::Either;
use futures_util::FutureExt;
use http::{HeaderValue, Method, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;

use super::conn::ConnContext;
use super::error::{of_io, Failure, UpstreamError};
use super::forward::strip_hop_by_hop;
use super::h1::{self, BodyFraming, ChunkedDecoder, RequestHead, ResponseFraming, ResponseOut};
use super::settle::Settlement;
use super::tunnel::WebSocketHandshake;
use super::{admit, answered, decide, upstream_failed, Outcome, Shared, UpstreamErrorKind};
use crate::decision::{BodyState, Decision, Denial, Reason};
use crate::lifecycle::Lifecycle;
use crate::problem::{self, Format};
pub use clock::Clock;
use clock::Elapsed;
use pool::{RelayPool, Upstream};

/// A read buffer's size when bytes arrive: a typical head and small body
/// fit in one read.
const READ_CHUNK: usize = 8 * 1024;

/// The largest response head an upstream may send.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Flush a re-framed body to its peer once this much is gathered.
const WRITE_CHUNK: usize = 16 * 1024;

/// The bounds one relayed connection keeps.
#[derive(Clone, Copy, Debug)]
pub struct RelayLimits {
    pub max_header_bytes: usize,
    pub request_header: Duration,
    pub idle: Duration,
    pub upstream_response: Duration,
}

/// One inbound connection served by the relay.
pub struct RelayConn {
    pub shared: Arc<Shared>,
    pub conn: Arc<ConnContext>,
    pub pool: Arc<RelayPool>,
    pub lifecycle: Arc<Lifecycle>,
    pub client: TcpStream,
    pub limits: RelayLimits,
}

/// What the connection does after a request.
enum Next {
    KeepAlive,
    Close,
    /// A WebSocket handshake was answered: the connection is a tunnel now.
    Tunnel(Box<TunnelStart>),
}

/// What an answered handshake leaves for its tunnel.
struct TunnelStart {
    upstream: Upstream,
    /// Bytes the upstream sent after its 101.
    from_upstream: BytesMut,
    permits: Vec<crate::limits::Permit>,
}

impl RelayConn {
    /// Serve requests until the client closes, a timeout passes, or the
    /// proxy drains. `clock` bounds every wait of the connection.
    ///
    /// Waiting for a request and reading its head are polled by hand, with
    /// no future of their own, and the connection's fields are used where
    /// they are rather than moved into locals: what the task holds while a
    /// client is idle is most of what a connection costs.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn stores its arguments twice in the task"
    )]
    pub fn serve(self, mut clock: Clock) -> impl Future<Output = ()> + Send {
        async move {
            let limits = self.limits;
            let mut client = self.client;
            let drain = self.lifecycle.drain_signal();
            let mut drain = pin!(drain);
            drain.as_mut().enable();
            let mut buf = BytesMut::new();
            loop {
                if buf.is_empty() {
                    // Idle: no buffer held until the next request's bytes arrive.
                    buf = BytesMut::new();
                    let bound = clock.ticks_for(limits.idle);
                    let start = clock.ticks();
                    let ready = std::future::poll_fn(|cx| {
                        if self.lifecycle.is_draining() || drain.as_mut().poll(cx).is_ready() {
                            return Poll::Ready(false);
                        }
                        if let Poll::Ready(ready) = client.poll_read_ready(cx) {
                            return Poll::Ready(ready.is_ok());
                        }
                        while clock.poll_tick(cx) {
                            if clock.ticks() - start >= bound {
                                return Poll::Ready(false);
                            }
                        }
                        Poll::Pending
                    })
                    .await;
                    if !ready {
                        return;
                    }
                }
                let bound = clock.ticks_for(limits.request_header);
                let start = clock.ticks();
                let read = std::future::poll_fn(|cx| {
                    if let Poll::Ready(read) =
                        poll_read_head(&client, &mut buf, limits.max_header_bytes, cx)
                    {
                        return Poll::Ready(Some(read));
                    }
                    while clock.poll_tick(cx) {
                        if clock.ticks() - start >= bound {
                            return Poll::Ready(None);
                        }
                    }
                    Poll::Pending
                })
                .await;
                let head = match read {
                    Some(Ok(Some(head))) => head,
                    // End of stream between requests, or a head too slow:
                    // closed without an answer, as a keep-alive connection is.
                    Some(Ok(None)) | None => return,
                    Some(Err(error)) => {
                        boxed(refuse_head(&self.shared, &mut client, error)).await;
                        return;
                    }
                };
                let exchange = Exchange {
                    shared: &self.shared,
                    conn: &self.conn,
                    pool: &self.pool,
                    lifecycle: &self.lifecycle,
                    limits,
                };
                // Boxed: the request's state is allocated for the request
                // only, not reserved in every idle connection's task.
                let next = boxed(exchange.run(head, &mut client, &mut buf, &mut clock)).await;
                match next {
                    Next::KeepAlive => {}
                    Next::Close => {
                        let _ = client.shutdown().await;
                        return;
                    }
                    Next::Tunnel(start) => {
                        // Boxed, as a request's state is: rare, and large.
                        boxed(tunnel(&self.shared, &self.conn, client, buf, *start)).await;
                        return;
                    }
                }
            }
        }
    }
}

/// `future` on the heap. A future awaited inside an async fn, even inside
/// `Box::pin(..)` in the same statement, may keep its room in the caller's
/// state (rustc lays moved-from locals out there too): building it in
/// this plain fn keeps an idle connection's task small.
fn boxed<'a, T>(
    future: impl Future<Output = T> + Send + 'a,
) -> Pin<Box<dyn Future<Output = T> + Send + 'a>> {
    Box::pin(future)
}

/// Turn a relayed connection into the WebSocket tunnel its handshake
/// opened.
async fn tunnel(
    shared: &Shared,
    conn: &Arc<ConnContext>,
    mut client: TcpStream,
    buf: BytesMut,
    start: TunnelStart,
) {
    let TunnelStart {
        mut upstream,
        from_upstream,
        permits,
    } = start;
    // Bytes each side sent right behind the handshake go first.
    if !buf.is_empty() && upstream.stream.write_all(&buf).await.is_err() {
        return;
    }
    if !from_upstream.is_empty() && client.write_all(&from_upstream).await.is_err() {
        return;
    }
    drop(buf);
    let tunnel = shared.forwarder.tunnel(Arc::clone(conn), permits);
    tunnel.run_io(client, upstream.stream).await;
}

/// Read until a whole request head is buffered. `Ready(Ok(None))`: the
/// client closed before sending one.
fn poll_read_head(
    client: &TcpStream,
    buf: &mut BytesMut,
    max_header_bytes: usize,
    cx: &mut std::task::Context<'_>,
) -> Poll<Result<Option<RequestHead>, h1::HeadError>> {
    loop {
        if !buf.is_empty() {
            if let Some((head, len)) = h1::parse_request(buf)? {
                buf.advance(len);
                return Poll::Ready(Ok(Some(head)));
            }
            if buf.len() >= max_header_bytes {
                return Poll::Ready(Err(h1::HeadError::TooLarge));
            }
        }
        match client.poll_read_ready(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(_)) => return Poll::Ready(Ok(None)),
            Poll::Ready(Ok(())) => {}
        }
        buf.reserve(READ_CHUNK.min(max_header_bytes - buf.len()).max(1));
        match client.try_read_buf(buf) {
            Ok(0) => return Poll::Ready(Ok(None)),
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return Poll::Ready(Ok(None)),
        }
    }
}

/// Answer a head that cannot be parsed, and close.
async fn refuse_head(shared: &Shared, client: &mut TcpStream, error: h1::HeadError) {
    shared.metrics.request(Outcome::Deny, Reason::BadRequest);
    let denial = Denial::new(error.status(), Reason::BadRequest, error.to_string());
    let response = problem::render(denial, Format::Problem);
    let mut out = Vec::new();
    write_own_response(&mut out, response, true, true);
    let _ = client.write_all(&out).await;
    let _ = client.shutdown().await;
}

/// Serialise a response licensegate wrote itself. `body`: the method was
/// not HEAD.
fn write_own_response(out: &mut Vec<u8>, response: Response<Full<Bytes>>, body: bool, close: bool) {
    let (parts, full) = response.into_parts();
    let bytes = full
        .collect()
        .now_or_never()
        .and_then(Result::ok)
        .map(|collected| collected.to_bytes())
        .unwrap_or_default();
    if body {
        h1::write_response_head(
            out,
            parts.status,
            &parts.headers,
            ResponseOut::Length(bytes.len() as u64),
            close,
        );
        out.extend_from_slice(&bytes);
    } else {
        let mut headers = parts.headers;
        headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
        h1::write_response_head(out, parts.status, &headers, ResponseOut::NoBody, close);
    }
}

/// One request on a relayed connection, from decision to the end of its
/// response.
struct Exchange<'a> {
    shared: &'a Shared,
    conn: &'a Arc<ConnContext>,
    pool: &'a RelayPool,
    lifecycle: &'a Lifecycle,
    limits: RelayLimits,
}

/// Why relaying a request body stopped short.
enum BodyFault {
    /// The client's framing was malformed, or it went away mid-body.
    Client(String),
    /// The client closed its connection while the response was awaited.
    ClientGone,
}

/// How the response ended.
enum Responded {
    /// The whole response went out; the upstream connection can carry
    /// another request when `reusable`.
    Done { reusable: bool, close: bool },
    /// A WebSocket 101 went out.
    Tunnel(BytesMut),
}

/// How a relayed exchange ended.
enum Ended {
    Request(BodyFault),
    Response(Result<Responded, RespondFault>),
    /// No response head within `timeouts.upstream_response`.
    Timeout,
    /// No byte either way for `timeouts.idle` while the response was relayed.
    Stalled,
}

/// The response could not be relayed.
enum RespondFault {
    /// Nothing was sent to the client yet: answer for the upstream.
    /// `retryable`: a reused connection closed before any response byte.
    Upstream {
        error: UpstreamError,
        retryable: bool,
    },
    /// Part of the response went out: the connection can only be closed.
    Broken,
}

impl Exchange<'_> {
    async fn run(
        self,
        request: RequestHead,
        client: &mut TcpStream,
        buf: &mut BytesMut,
        clock: &mut Clock,
    ) -> Next {
        let started = Instant::now();
        let RequestHead {
            parts: mut head,
            framing,
            keep_alive,
            expect_continue,
        } = request;
        let shared = self.shared;
        let body_state = if framing == BodyFraming::Empty {
            BodyState::Empty
        } else {
            BodyState::Follows
        };
        let mut websocket = None;
        let decision = decide(shared, self.conn, &mut head, body_state, &mut websocket).await;
        let mut allowed = match decision {
            Decision::Deny(denial) => {
                shared.metrics.request(Outcome::Deny, denial.reason);
                let format = problem::format_for(&head.method, &head.headers);
                let response = problem::render(*denial, format);
                // An unread body cannot be told from the next request.
                let close = !keep_alive || framing != BodyFraming::Empty;
                let next = self
                    .answer(client, response, &head.method, close, started)
                    .await;
                return next;
            }
            Decision::Allow(allowed) => allowed,
        };
        let reason = if allowed.preflight {
            Reason::CorsPreflight
        } else {
            Reason::Allowed
        };
        let websocket = websocket.filter(|_| allowed.websocket);
        let mut settlement = Settlement::new(
            std::mem::take(&mut allowed.tickets),
            allowed.metered.take(),
            shared.metering.as_ref(),
        );
        let forwarder = &shared.forwarder;
        let asked = match forwarder.rewrite_head(&mut head, self.conn, websocket.is_some(), false) {
            Ok(asked) => asked,
            Err(error) => {
                let format = problem::format_for(&head.method, &head.headers);
                return self
                    .failed(
                        client,
                        error,
                        format,
                        &mut allowed,
                        &mut settlement,
                        &head.method,
                        true,
                        started,
                    )
                    .await;
            }
        };
        // Every failure from here on is answered the same way: in the form
        // the client asked for, settling the request as not served.
        macro_rules! fail {
            ($error:expr, $close:expr) => {
                return self
                    .failed(
                        client,
                        $error,
                        asked.format(),
                        &mut allowed,
                        &mut settlement,
                        &head.method,
                        $close,
                        started,
                    )
                    .await
            };
        }
        admit(shared, &mut head.headers, &allowed);
        let permits = std::mem::take(&mut allowed.permits);
        let counted = settlement.as_ref().and_then(Settlement::request_counter);

        // The request head, and the body bytes already read when the body
        // has a length: one write to the upstream.
        let mut sent = Vec::with_capacity(1024);
        h1::write_request_head(&mut sent, &head, framing);
        let mut remaining = 0;
        let body_started = !buf.is_empty();
        if let BodyFraming::Length(length) = framing {
            let now = buf.len().min(usize::try_from(length).unwrap_or(usize::MAX));
            sent.extend_from_slice(&buf[..now]);
            buf.advance(now);
            if let Some(counted) = &counted {
                counted.fetch_add(now as u64, Ordering::Relaxed);
            }
            remaining = length - now as u64;
        }
        // A chunked body's buffered part is decoded before the upstream is
        // contacted: malformed framing is refused with nothing sent.
        let mut decoder = ChunkedDecoder::new();
        if framing == BodyFraming::Chunked {
            if let Err(error) = reframe_chunks(&mut decoder, buf, &mut sent, counted.as_deref()) {
                let mut error = UpstreamError::said(
                    UpstreamErrorKind::Protocol,
                    format!("the chunked request body is malformed: {error}"),
                );
                error.client_body = true;
                fail!(error, true);
            }
        }
        // All of the request is in `sent`: it can be sent again.
        let replayable = match framing {
            BodyFraming::Empty => true,
            BodyFraming::Length(_) => remaining == 0,
            BodyFraming::Chunked => decoder.is_done(),
        };
        let body_awaited = match framing {
            BodyFraming::Empty => false,
            BodyFraming::Length(_) => remaining > 0,
            BodyFraming::Chunked => !decoder.is_done(),
        };
        if expect_continue && body_awaited && !body_started {
            // Decided and allowed: the client may send its body.
            if client
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .is_err()
            {
                return Next::Close;
            }
        }

        let mut attempt = 0;
        loop {
            attempt += 1;
            let checkout = if attempt == 1 {
                Either::Left(self.pool.checkout())
            } else {
                Either::Right(self.pool.fresh())
            };
            let mut upstream = match clock.within(self.limits.upstream_response, checkout).await {
                Ok(Ok(upstream)) => upstream,
                Ok(Err(error)) => {
                    fail!(
                        error,
                        !keep_alive || remaining > 0 || framing == BodyFraming::Chunked
                    )
                }
                Err(Elapsed) => {
                    let error = self.response_timeout();
                    fail!(error, true);
                }
            };
            if let Err(error) = upstream.stream.write_all(&sent).await {
                if upstream.reused && replayable && attempt == 1 {
                    continue;
                }
                let error = upstream_io(&error);
                fail!(error, true);
            }
            let reused = upstream.reused;
            let (ended, sent_whole, was_headed) = {
                let (mut client_r, mut client_w) = client.split();
                let (mut up_r, mut up_w) = upstream.stream.split();
                // Shared by the two directions, which run in this one task.
                let body_sent = AtomicBool::new(replayable);
                let progress = AtomicU64::new(0);
                let headed = AtomicBool::new(false);
                let mut from_upstream = BytesMut::new();
                let close_wanted = !keep_alive || self.lifecycle.is_draining();
                let request_side = pump_request(
                    &mut client_r,
                    buf,
                    &mut up_w,
                    framing,
                    remaining,
                    &mut decoder,
                    counted.as_deref(),
                    &body_sent,
                    &progress,
                );
                let response_side = respond(
                    &mut up_r,
                    &mut client_w,
                    &mut from_upstream,
                    Respond {
                        shared,
                        allowed: &allowed,
                        reason,
                        settlement: &mut settlement,
                        method: &head.method,
                        client_version: head.version,
                        websocket: websocket.as_ref(),
                        close_wanted,
                        body_sent: &body_sent,
                        progress: &progress,
                        headed: &headed,
                        started,
                    },
                );
                let mut request_side = pin!(request_side);
                let mut response_side = pin!(response_side);
                let mut request_done = false;
                let response_limit = clock.ticks_for(self.limits.upstream_response);
                let idle_limit = clock.ticks_for(self.limits.idle);
                let start_tick = clock.ticks();
                let mut seen = (0u64, start_tick);
                let ended = std::future::poll_fn(|cx| {
                    if !request_done {
                        if let Poll::Ready(fault) = request_side.as_mut().poll(cx) {
                            request_done = true;
                            if let Some(fault) = fault {
                                return Poll::Ready(Ended::Request(fault));
                            }
                        }
                    }
                    if let Poll::Ready(result) = response_side.as_mut().poll(cx) {
                        return Poll::Ready(Ended::Response(result));
                    }
                    while clock.poll_tick(cx) {
                        let now = clock.ticks();
                        if !headed.load(Ordering::Relaxed) {
                            if now - start_tick >= response_limit {
                                return Poll::Ready(Ended::Timeout);
                            }
                        } else if progress.load(Ordering::Relaxed) != seen.0 {
                            seen = (progress.load(Ordering::Relaxed), now);
                        } else if now - seen.1 >= idle_limit {
                            return Poll::Ready(Ended::Stalled);
                        }
                    }
                    Poll::Pending
                })
                .await;
                (
                    ended,
                    body_sent.load(Ordering::Relaxed),
                    headed.load(Ordering::Relaxed),
                )
            };
            match ended {
                Ended::Response(Ok(Responded::Done { reusable, close })) => {
                    if reusable && sent_whole {
                        self.pool.checkin(upstream);
                    }
                    drop(permits);
                    return if close || !sent_whole {
                        Next::Close
                    } else {
                        Next::KeepAlive
                    };
                }
                Ended::Response(Ok(Responded::Tunnel(from_upstream))) => {
                    return Next::Tunnel(Box::new(TunnelStart {
                        upstream,
                        from_upstream,
                        permits,
                    }));
                }
                Ended::Response(Err(RespondFault::Upstream { error, retryable })) => {
                    if retryable && reused && replayable && attempt == 1 {
                        continue;
                    }
                    fail!(error, !sent_whole || !keep_alive);
                }
                Ended::Response(Err(RespondFault::Broken)) | Ended::Stalled => return Next::Close,
                Ended::Request(BodyFault::ClientGone) => return Next::Close,
                Ended::Request(BodyFault::Client(detail)) => {
                    if was_headed {
                        return Next::Close;
                    }
                    let mut error = UpstreamError::said(UpstreamErrorKind::Protocol, detail);
                    error.client_body = true;
                    fail!(error, true);
                }
                Ended::Timeout => {
                    let error = self.response_timeout();
                    fail!(error, !sent_whole || !keep_alive);
                }
            }
        }
    }

    fn response_timeout(&self) -> UpstreamError {
        let timeout = self.limits.upstream_response;
        UpstreamError::new(
            UpstreamErrorKind::Timeout,
            Failure::ResponseTimeout(timeout),
            format!(
                "the upstream did not respond within {}",
                humantime::format_duration(timeout)
            ),
        )
    }

    /// Answer for an upstream that did not answer an allowed request.
    #[allow(clippy::too_many_arguments)]
    async fn failed(
        &self,
        client: &mut TcpStream,
        error: UpstreamError,
        format: Format,
        allowed: &mut crate::decision::Allowed,
        settlement: &mut Option<Settlement>,
        method: &Method,
        close: bool,
        started: Instant,
    ) -> Next {
        let (response, status) = upstream_failed(self.shared, error, format, allowed.route.take());
        if let Some(settlement) = settlement {
            settlement.answered_here(status);
        }
        self.answer(client, response, method, close, started).await
    }

    /// Send a response licensegate wrote itself.
    async fn answer(
        &self,
        client: &mut TcpStream,
        response: Response<Full<Bytes>>,
        method: &Method,
        close: bool,
        started: Instant,
    ) -> Next {
        let close = close || self.lifecycle.is_draining();
        let mut out = Vec::with_capacity(1024);
        write_own_response(&mut out, response, method != Method::HEAD, close);
        self.shared
            .metrics
            .request_duration
            .observe(started.elapsed().as_secs_f64());
        match client.write_all(&out).await {
            Ok(()) if !close => Next::KeepAlive,
            _ => Next::Close,
        }
    }
}

/// An I/O failure on an upstream connection, for the client and the log.
fn upstream_io(error: &std::io::Error) -> UpstreamError {
    UpstreamError::new(
        UpstreamErrorKind::Protocol,
        of_io(error),
        format!("upstream connection failed: {error}"),
    )
}

/// Relay the rest of the request body to the upstream; then, until the
/// response is done, watch the client: one that closes its connection has
/// gone, and its request is cancelled (as hyper's server does). Bytes the
/// client sends meanwhile (a pipelined request) stay in `buf`.
#[allow(clippy::too_many_arguments)]
async fn pump_request(
    client: &mut ReadHalf<'_>,
    buf: &mut BytesMut,
    upstream: &mut WriteHalf<'_>,
    framing: BodyFraming,
    mut remaining: u64,
    decoder: &mut ChunkedDecoder,
    counted: Option<&AtomicU64>,
    body_sent: &AtomicBool,
    progress: &AtomicU64,
) -> Option<BodyFault> {
    let count = |n: usize| {
        progress.fetch_add(1, Ordering::Relaxed);
        if let Some(counted) = counted {
            counted.fetch_add(n as u64, Ordering::Relaxed);
        }
    };
    match framing {
        BodyFraming::Empty => {}
        BodyFraming::Length(_) => {
            while remaining > 0 {
                if buf.is_empty() {
                    buf.reserve(READ_CHUNK);
                    match client.read_buf(buf).await {
                        Ok(0) | Err(_) => {
                            return Some(BodyFault::Client(
                                "the client closed the connection before the whole body arrived"
                                    .into(),
                            ))
                        }
                        Ok(_) => {}
                    }
                }
                let now = buf
                    .len()
                    .min(usize::try_from(remaining).unwrap_or(usize::MAX));
                if upstream.write_all(&buf[..now]).await.is_err() {
                    // The upstream stopped reading: its answer (or its
                    // failure) is the response side's to read.
                    return pending_forever().await;
                }
                buf.advance(now);
                remaining -= now as u64;
                count(now);
            }
        }
        BodyFraming::Chunked => {
            let mut out = Vec::new();
            while !decoder.is_done() {
                buf.reserve(READ_CHUNK);
                match client.read_buf(buf).await {
                    Ok(0) | Err(_) => {
                        return Some(BodyFault::Client(
                            "the client closed the connection before the last chunk".into(),
                        ))
                    }
                    Ok(_) => {}
                }
                if let Err(error) = reframe_chunks(decoder, buf, &mut out, counted) {
                    return Some(BodyFault::Client(format!(
                        "the chunked request body is malformed: {error}"
                    )));
                }
                progress.fetch_add(1, Ordering::Relaxed);
                if !out.is_empty() {
                    if upstream.write_all(&out).await.is_err() {
                        return pending_forever().await;
                    }
                    out.clear();
                }
            }
        }
    }
    body_sent.store(true, Ordering::Relaxed);
    // Watch for the client leaving. A pipelined request's bytes are kept,
    // and then there is nothing more to watch.
    if buf.is_empty() {
        let mut probe = [0u8; 1];
        match client.peek(&mut probe).await {
            Ok(0) | Err(_) => return Some(BodyFault::ClientGone),
            Ok(_) => {}
        }
    }
    None
}

/// Decode the chunked body bytes in `buf` and append them to `out`
/// re-framed (one chunk per decoded piece, extensions and trailers
/// dropped, and the last chunk once the body ends). Bytes past the body's
/// end stay in `buf`: they are the next request's.
fn reframe_chunks(
    decoder: &mut ChunkedDecoder,
    buf: &mut BytesMut,
    out: &mut Vec<u8>,
    counted: Option<&AtomicU64>,
) -> Result<(), h1::ChunkedError> {
    while !buf.is_empty() && !decoder.is_done() {
        let decoded = decoder.decode(buf)?;
        let data = &buf[decoded.data.clone()];
        if !data.is_empty() {
            frame_into(out, data, true);
            if let Some(counted) = counted {
                counted.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
        }
        buf.advance(decoded.consumed);
        if decoded.consumed == 0 {
            break;
        }
    }
    if decoder.is_done() {
        out.extend_from_slice(h1::LAST_CHUNK);
    }
    Ok(())
}

async fn pending_forever<T>() -> T {
    std::future::pending().await
}

/// What the response side reads and updates.
struct Respond<'a> {
    shared: &'a Shared,
    allowed: &'a crate::decision::Allowed,
    reason: Reason,
    settlement: &'a mut Option<Settlement>,
    method: &'a Method,
    client_version: Version,
    websocket: Option<&'a WebSocketHandshake>,
    /// The client asked to close, or the proxy drains.
    close_wanted: bool,
    body_sent: &'a AtomicBool,
    progress: &'a AtomicU64,
    headed: &'a AtomicBool,
    started: Instant,
}

/// Read the upstream's response head (skipping interim 1xx answers), fix it
/// up for the client, and relay the body.
async fn respond(
    upstream: &mut ReadHalf<'_>,
    client: &mut WriteHalf<'_>,
    from_upstream: &mut BytesMut,
    ctx: Respond<'_>,
) -> Result<Responded, RespondFault> {
    let response =
        loop {
            match h1::parse_response(from_upstream, ctx.method) {
                Ok(Some((response, len))) => {
                    from_upstream.advance(len);
                    let status = response.parts.status;
                    if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
                        continue;
                    }
                    break response;
                }
                Ok(None) => {}
                Err(error) => {
                    return Err(RespondFault::Upstream {
                        error: UpstreamError::said(
                            UpstreamErrorKind::Protocol,
                            format!("the upstream's response head is malformed: {error}"),
                        ),
                        retryable: false,
                    })
                }
            }
            if from_upstream.len() >= MAX_RESPONSE_HEAD {
                return Err(RespondFault::Upstream {
                    error: UpstreamError::said(
                        UpstreamErrorKind::Protocol,
                        "the upstream's response head is larger than 64 KiB",
                    ),
                    retryable: false,
                });
            }
            let empty = from_upstream.is_empty();
            from_upstream.reserve(READ_CHUNK);
            match upstream.read_buf(from_upstream).await {
                Ok(0) => return Err(RespondFault::Upstream {
                    error: UpstreamError::new(
                        UpstreamErrorKind::Protocol,
                        Failure::ClosedBeforeAnswering,
                        "upstream connection failed: connection closed before message completed"
                            .into(),
                    ),
                    retryable: empty,
                }),
                Err(error) => {
                    return Err(RespondFault::Upstream {
                        error: upstream_io(&error),
                        retryable: empty,
                    })
                }
                Ok(_) => {
                    ctx.progress.fetch_add(1, Ordering::Relaxed);
                }
            }
        };
    let h1::ResponseHead {
        parts: mut response,
        framing,
        keep_alive: upstream_keeps,
    } = response;
    ctx.headed.store(true, Ordering::Relaxed);
    let status = response.status;
    let mut out = Vec::with_capacity(512 + from_upstream.len().min(WRITE_CHUNK));

    if status == StatusCode::SWITCHING_PROTOCOLS {
        let Some(handshake) = ctx.websocket else {
            return Err(RespondFault::Upstream {
                error: UpstreamError::said(
                    UpstreamErrorKind::Protocol,
                    "the upstream switched protocols (101) for a request that asked for no upgrade",
                ),
                retryable: false,
            });
        };
        if let Err(why) = handshake.answered_by(&response.headers) {
            return Err(RespondFault::Upstream {
                error: UpstreamError::said(UpstreamErrorKind::Protocol, why),
                retryable: false,
            });
        }
    }

    // The head the client gets: hop-by-hop headers gone, a tunnel's own
    // `Connection`/`Upgrade` set back, the usage headers read and removed.
    strip_hop_by_hop(&mut response.headers);
    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    if switching {
        let headers = &mut response.headers;
        headers.insert(
            http::header::CONNECTION,
            HeaderValue::from_static("upgrade"),
        );
        headers.insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
    }
    answered(
        ctx.shared,
        ctx.allowed,
        ctx.reason,
        ctx.settlement,
        status,
        &mut response.headers,
    );
    if switching {
        h1::write_response_head(
            &mut out,
            status,
            &response.headers,
            ResponseOut::NoBody,
            false,
        );
        observe(ctx.shared, ctx.started);
        client
            .write_all(&out)
            .await
            .map_err(|_| RespondFault::Broken)?;
        return Ok(Responded::Tunnel(std::mem::take(from_upstream)));
    }
    let http10 = ctx.client_version == Version::HTTP_10;
    let body_out = match framing {
        ResponseFraming::Empty => ResponseOut::NoBody,
        ResponseFraming::Length(length) => ResponseOut::Length(length),
        ResponseFraming::Chunked | ResponseFraming::UntilClose if http10 => ResponseOut::Close,
        ResponseFraming::Chunked | ResponseFraming::UntilClose => ResponseOut::Chunked,
    };
    // A request body not yet read to its end cannot be told from the next
    // request: the connection closes after this response.
    let close = ctx.close_wanted
        || body_out == ResponseOut::Close
        || !ctx.body_sent.load(Ordering::Relaxed);
    let mut headers = response.headers;
    if http10 && !close {
        headers.insert(
            http::header::CONNECTION,
            HeaderValue::from_static("keep-alive"),
        );
    }
    h1::write_response_head(&mut out, status, &headers, body_out, close);
    observe(ctx.shared, ctx.started);
    let settle = |settlement: &mut Option<Settlement>, n: usize| {
        if let Some(settlement) = settlement {
            settlement.sent(n);
        }
    };

    let mut reusable = upstream_keeps;
    match framing {
        ResponseFraming::Empty => {
            client
                .write_all(&out)
                .await
                .map_err(|_| RespondFault::Broken)?;
        }
        ResponseFraming::Length(length) => {
            let mut remaining = length;
            loop {
                let now = from_upstream
                    .len()
                    .min(usize::try_from(remaining).unwrap_or(usize::MAX));
                out.extend_from_slice(&from_upstream[..now]);
                from_upstream.advance(now);
                remaining -= now as u64;
                settle(ctx.settlement, now);
                flush(client, &mut out, ctx.progress).await?;
                if remaining == 0 {
                    break;
                }
                read_more(upstream, from_upstream).await?;
            }
        }
        ResponseFraming::Chunked => {
            let mut decoder = ChunkedDecoder::new();
            loop {
                while !from_upstream.is_empty() && !decoder.is_done() {
                    let decoded = decoder
                        .decode(from_upstream)
                        .map_err(|_| RespondFault::Broken)?;
                    let data = &from_upstream[decoded.data.clone()];
                    if !data.is_empty() {
                        frame_into(&mut out, data, body_out == ResponseOut::Chunked);
                        settle(ctx.settlement, data.len());
                    }
                    from_upstream.advance(decoded.consumed);
                    if decoded.consumed == 0 {
                        break;
                    }
                }
                if decoder.is_done() && body_out == ResponseOut::Chunked {
                    out.extend_from_slice(h1::LAST_CHUNK);
                }
                flush(client, &mut out, ctx.progress).await?;
                if decoder.is_done() {
                    break;
                }
                read_more(upstream, from_upstream).await?;
            }
        }
        ResponseFraming::UntilClose => {
            reusable = false;
            loop {
                if !from_upstream.is_empty() {
                    let data = &from_upstream[..];
                    frame_into(&mut out, data, body_out == ResponseOut::Chunked);
                    settle(ctx.settlement, data.len());
                    from_upstream.clear();
                }
                from_upstream.reserve(READ_CHUNK);
                let read = upstream.read_buf(from_upstream).await;
                let ended = matches!(read, Ok(0));
                if ended && body_out == ResponseOut::Chunked {
                    out.extend_from_slice(h1::LAST_CHUNK);
                }
                flush(client, &mut out, ctx.progress).await?;
                match read {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(_) => return Err(RespondFault::Broken),
                }
            }
        }
    }
    if let Some(settlement) = ctx.settlement {
        settlement.completed();
    }
    // Bytes beyond the response: the upstream cannot be trusted to frame
    // the next one.
    reusable &= from_upstream.is_empty();
    Ok(Responded::Done { reusable, close })
}

/// Append `data` to `out` as the receiver's framing wants it: one chunk,
/// or the bytes as they are (a length-delimited or close-delimited body).
fn frame_into(out: &mut Vec<u8>, data: &[u8], chunked: bool) {
    if chunked {
        h1::write_chunk_header(out, data.len());
        out.extend_from_slice(data);
        out.extend_from_slice(h1::CHUNK_END);
    } else {
        out.extend_from_slice(data);
    }
}

/// Send what the response has gathered to the client.
async fn flush(
    client: &mut WriteHalf<'_>,
    out: &mut Vec<u8>,
    progress: &AtomicU64,
) -> Result<(), RespondFault> {
    if out.is_empty() {
        return Ok(());
    }
    client
        .write_all(out)
        .await
        .map_err(|_| RespondFault::Broken)?;
    progress.fetch_add(1, Ordering::Relaxed);
    out.clear();
    Ok(())
}

/// Read more of the response body; its end before the framing's is a
/// broken response.
async fn read_more(upstream: &mut ReadHalf<'_>, buf: &mut BytesMut) -> Result<(), RespondFault> {
    buf.reserve(READ_CHUNK);
    match upstream.read_buf(buf).await {
        Ok(0) | Err(_) => Err(RespondFault::Broken),
        Ok(_) => Ok(()),
    }
}

fn observe(shared: &Shared, started: Instant) {
    shared
        .metrics
        .request_duration
        .observe(started.elapsed().as_secs_f64());
}
