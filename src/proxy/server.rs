//! The proxy listener: accept, TLS, HTTP/1.1 + HTTP/2 on one port, idle and
//! connection limits, HTTP/2 stream bounds, and draining on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::future::{Either, TryFutureExt};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use super::conn::ConnContext;
use super::io::{Activity, ConnectionSlot, CountingIo, H2_PREFACE};
use super::relay::{Clock, RelayConn, RelayLimits};
use super::settings::ProxySettings;
use super::{handle, Shared};
use crate::decision::Peer;
use crate::lifecycle::Lifecycle;

/// A bound proxy listener, ready to serve.
pub struct ProxyServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    builders: Arc<Builders>,
    connections: Arc<Semaphore>,
    max_connections: u32,
    request_header_timeout: Duration,
    idle_timeout: Duration,
    drain_timeout: Duration,
    max_stream_resets: u32,
    relay_limits: RelayLimits,
}

/// HTTP server builders, shared by all connections.
struct Builders {
    /// Plain TCP whose first bytes are not the HTTP/2 preface; TLS without
    /// ALPN `h2` (RFC 9113 §3.3: HTTP/2 over TLS is negotiated).
    http1: http1::Builder,
    /// Plain TCP starting with the HTTP/2 preface (prior knowledge); TLS
    /// with ALPN `h2`.
    http2: http2::Builder<TokioExecutor>,
    /// Plain TCP whose first bytes are only part of the HTTP/2 preface:
    /// hyper-util reads the first bytes and picks the protocol.
    auto: auto::Builder<TokioExecutor>,
}

/// Streams a client may reset before the server accepted them (h2's own
/// default): the first form of CVE-2023-44487. Resets after acceptance are
/// bounded by `limits.max_stream_resets` (see `io.rs`).
const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;

/// Streams h2 may reset over the client's protocol errors in a connection's
/// lifetime before answering GOAWAY ENHANCE_YOUR_CALM (hyper's default).
const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;

/// How long a connection that exceeded `limits.max_stream_resets` has after
/// its GOAWAY to finish, before it is closed regardless.
const RESET_FLOOD_GRACE: Duration = Duration::from_secs(1);

impl Builders {
    fn new(settings: &ProxySettings) -> Self {
        let mut http1 = http1::Builder::new();
        // The request-head timeout is enforced by the connection watchdog
        // (one coarse timer per connection) rather than hyper's per-request timer.
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(None)
            .max_buf_size(settings.limits.max_header_bytes)
            // The buffer limit alone lets a head through that arrives in
            // few enough reads; this one is checked on every parsed head.
            .max_header_size(settings.limits.max_header_bytes)
            .keep_alive(true)
            // Small responses go out as one flattened write; writev's queue
            // bookkeeping cost more than the copy (callgrind, benches/load.sh).
            .writev(false);
        let limits = &settings.limits;
        let max_header_list = u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_header_list_size(max_header_list)
            .max_concurrent_streams(limits.max_concurrent_streams)
            .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESET_STREAMS)
            .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESET_STREAMS);
        let mut auto = auto::Builder::new(TokioExecutor::new());
        // hyper-util offers no `max_header_size` here: its HTTP/1 heads are
        // bounded by the read buffer alone. Only plain-TCP clients whose first
        // read is a fragment of the HTTP/2 preface come this way.
        auto.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(None)
            .max_buf_size(limits.max_header_bytes)
            .keep_alive(true)
            .writev(false);
        auto.http2()
            .timer(TokioTimer::new())
            .max_header_list_size(max_header_list)
            .max_concurrent_streams(limits.max_concurrent_streams)
            .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESET_STREAMS)
            .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESET_STREAMS);
        Builders { http1, http2, auto }
    }
}

/// How a plain-TCP connection starts.
enum Sniffed {
    Http1,
    Http2,
    /// A prefix of the HTTP/2 preface so far.
    Unsure,
}

impl ProxyServer {
    /// Bind the listener. Fails before anything is served if the address is taken.
    pub fn bind(settings: &ProxySettings, shared: Arc<Shared>) -> Result<ProxyServer, BindError> {
        let tls = match &settings.tls {
            Some(files) => Some(TlsAcceptor::from(
                crate::tls::server_config(files).map_err(BindError::Tls)?,
            )),
            None => None,
        };
        let listener = bind_listener(settings.listen).map_err(|source| BindError::Io {
            what: "proxy",
            addr: settings.listen,
            source,
        })?;
        let local_addr = listener.local_addr().map_err(|source| BindError::Io {
            what: "proxy",
            addr: settings.listen,
            source,
        })?;
        let max_connections = u32::try_from(settings.limits.max_connections).unwrap_or(u32::MAX);
        Ok(ProxyServer {
            listener,
            local_addr,
            tls,
            shared,
            builders: Arc::new(Builders::new(settings)),
            connections: Arc::new(Semaphore::new(max_connections as usize)),
            max_connections,
            request_header_timeout: settings.timeouts.request_header,
            idle_timeout: settings.timeouts.idle,
            drain_timeout: settings.timeouts.drain,
            max_stream_resets: settings.limits.max_stream_resets,
            relay_limits: RelayLimits {
                max_header_bytes: settings.limits.max_header_bytes,
                request_header: settings.timeouts.request_header,
                idle: settings.timeouts.idle,
                upstream_response: settings.timeouts.upstream_response,
            },
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serve until `lifecycle` starts draining, then stop accepting, let
    /// open connections finish (up to the drain timeout) and return.
    pub async fn serve(self, lifecycle: Arc<Lifecycle>) {
        let drained = lifecycle.drained();
        tokio::pin!(drained);
        loop {
            let permit = tokio::select! {
                biased;
                () = &mut drained => break,
                permit = Arc::clone(&self.connections).acquire_owned() => {
                    permit.expect("the connection semaphore is never closed")
                }
            };
            let (stream, addr) = tokio::select! {
                biased;
                () = &mut drained => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let connection = Connection {
                shared: Arc::clone(&self.shared),
                builders: Arc::clone(&self.builders),
                tls: self.tls.clone(),
                lifecycle: Arc::clone(&lifecycle),
                peer: Peer {
                    addr,
                    tls: self.tls.is_some(),
                },
                request_header_timeout: self.request_header_timeout,
                idle_timeout: self.idle_timeout,
                max_stream_resets: self.max_stream_resets,
                relay_limits: self.relay_limits,
            };
            let slot = ConnectionSlot::new(
                permit,
                self.shared.metrics.connections_open.clone(),
                Arc::clone(&lifecycle),
            );
            tokio::spawn(connection.run(stream, slot));
        }

        // Refuse new connections from here on.
        drop(self.listener);
        tracing::info!("listener closed; draining open connections");
        let all = self.connections.acquire_many(self.max_connections);
        match tokio::time::timeout(self.drain_timeout, all).await {
            Ok(_) => tracing::info!("all connections drained"),
            Err(_) => {
                let open = self.max_connections as usize - self.connections.available_permits();
                tracing::warn!(open, "drain deadline passed; closing remaining connections");
            }
        }
    }
}

struct Connection {
    shared: Arc<Shared>,
    builders: Arc<Builders>,
    tls: Option<TlsAcceptor>,
    lifecycle: Arc<Lifecycle>,
    peer: Peer,
    request_header_timeout: Duration,
    idle_timeout: Duration,
    max_stream_resets: u32,
    relay_limits: RelayLimits,
}

impl Connection {
    /// Serve one connection. `slot` is held until the connection and any
    /// tunnel it became have ended.
    ///
    /// An async block rather than an async fn, whose arguments rustc
    /// stores twice in the task; the first bytes are peeked by hand, with
    /// the relay's clock bounding the wait: an idle client's task stays
    /// small (see `relay`).
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn stores its arguments twice in the task"
    )]
    fn run(self, stream: TcpStream, slot: ConnectionSlot) -> impl Future<Output = ()> + Send {
        async move {
            self.shared.metrics.connections_total.inc();
            let relay_pool = self.shared.forwarder.relay_pool().cloned();
            let mut clock = Clock::new(
                self.relay_limits
                    .request_header
                    .min(self.relay_limits.idle)
                    .min(self.relay_limits.upstream_response),
            );
            // Plain TCP: HTTP/1 or HTTP/2 (prior knowledge), told by the
            // first bytes. `None` for TLS, which ALPN decides.
            let sniffed = match self.tls {
                Some(_) => None,
                None => {
                    let drain = self.lifecycle.drain_signal();
                    let mut drain = pin!(drain);
                    drain.as_mut().enable();
                    let bound = clock.ticks_for(self.idle_timeout);
                    let start = clock.ticks();
                    let sniffed = std::future::poll_fn(|cx| {
                        if self.lifecycle.is_draining() || drain.as_mut().poll(cx).is_ready() {
                            return Poll::Ready(None);
                        }
                        if let Poll::Ready(sniffed) = poll_sniff(&stream, cx) {
                            return Poll::Ready(Some(sniffed));
                        }
                        while clock.poll_tick(cx) {
                            if clock.ticks() - start >= bound {
                                return Poll::Ready(None);
                            }
                        }
                        Poll::Pending
                    })
                    .await;
                    match sniffed {
                        Some(sniffed) => Some(sniffed),
                        None => return,
                    }
                }
            };
            if let (Some(Sniffed::Http1), Some(pool)) = (&sniffed, relay_pool) {
                let relay = RelayConn {
                    conn: Arc::new(self.shared.forwarder.relay_connection(self.peer, slot)),
                    shared: self.shared,
                    pool,
                    lifecycle: self.lifecycle,
                    client: stream,
                    limits: self.relay_limits,
                };
                relay.serve(clock).await;
                return;
            }
            drop(clock);
            // Boxed: hyper's path would otherwise reserve its room in every
            // relayed connection's task too.
            let hyper: Pin<Box<dyn Future<Output = ()> + Send>> =
                Box::pin(self.serve_hyper(stream, slot, sniffed));
            hyper.await;
        }
    }

    /// Serve one connection with hyper: TLS, HTTP/2, or HTTP/1 under
    /// `http1: hyper` or in front of a TLS or HTTP/2 upstream.
    async fn serve_hyper(self, stream: TcpStream, slot: ConnectionSlot, sniffed: Option<Sniffed>) {
        let activity = Arc::new(Activity::new(self.max_stream_resets));
        let io = CountingIo::new(stream, Arc::clone(&activity));
        let shared = Arc::clone(&self.shared);
        let conn = Arc::new(self.shared.forwarder.connection(self.peer, slot));
        let service_activity = Arc::clone(&activity);
        let service_conn = Arc::clone(&conn);
        let service = service_fn(move |request| {
            if service_activity.reset_flood() {
                // Refused unprocessed (RFC 9113 §8.7): the connection is
                // closing, and nothing of this stream reaches the upstream.
                let refused = h2::Error::from(h2::Reason::REFUSED_STREAM);
                return Either::Right(std::future::ready(Err(refused)));
            }
            let in_flight = service_activity.begin_request();
            Either::Left(
                handle(
                    Arc::clone(&shared),
                    Arc::clone(&service_conn),
                    request,
                    in_flight,
                )
                .map_err(|never| match never {}),
            )
        });
        // Each protocol's connection future is boxed as it is built, so the
        // task holds only the one in use. Awaited inline, rustc reserved room
        // for all of them in every connection's task (9.7 KB, measured), the
        // largest part of an idle connection's memory.
        let serving: Option<Pin<Box<dyn Future<Output = ()> + Send + '_>>> = match self.tls.clone()
        {
            // Plain TCP: hyper's HTTP/1 and HTTP/2 connections directly, chosen
            // from the peeked first bytes. hyper-util's auto-detection instead
            // wraps the stream for the connection's lifetime to replay the
            // bytes it read, which cost every read and write (callgrind).
            None => match sniffed {
                Some(Sniffed::Http1) => Some(Box::pin(
                    self.supervise(
                        self.builders
                            .http1
                            .serve_connection(TokioIo::new(io), service)
                            .with_upgrades(),
                        |c| c.graceful_shutdown(),
                        &activity,
                        &conn,
                    ),
                )),
                Some(Sniffed::Http2) => Some(Box::pin({
                    // The server's SETTINGS go out before its first read.
                    activity.set_multiplexed();
                    self.supervise(
                        self.builders
                            .http2
                            .serve_connection(TokioIo::new(io), service),
                        |c| c.graceful_shutdown(),
                        &activity,
                        &conn,
                    )
                })),
                Some(Sniffed::Unsure) => Some(Box::pin(
                    self.supervise(
                        self.builders
                            .auto
                            .serve_connection_with_upgrades(TokioIo::new(io), service),
                        |c| c.graceful_shutdown(),
                        &activity,
                        &conn,
                    ),
                )),
                None => None,
            },
            Some(acceptor) => {
                let handshake =
                    tokio::time::timeout(self.request_header_timeout, acceptor.accept(io));
                match Box::pin(handshake).await {
                    Ok(Ok(tls)) if tls.get_ref().1.alpn_protocol() == Some(b"h2") => {
                        activity.set_multiplexed();
                        Some(Box::pin(
                            self.supervise(
                                self.builders
                                    .http2
                                    .serve_connection(TokioIo::new(tls), service),
                                |c| c.graceful_shutdown(),
                                &activity,
                                &conn,
                            ),
                        ))
                    }
                    Ok(Ok(tls)) => Some(Box::pin(
                        self.supervise(
                            self.builders
                                .http1
                                .serve_connection(TokioIo::new(tls), service)
                                .with_upgrades(),
                            |c| c.graceful_shutdown(),
                            &activity,
                            &conn,
                        ),
                    )),
                    Ok(Err(error)) => {
                        tracing::debug!(peer = %self.peer.addr, %error, "TLS handshake failed");
                        None
                    }
                    Err(_) => {
                        tracing::debug!(peer = %self.peer.addr, "TLS handshake timed out");
                        None
                    }
                }
            }
        };
        if let Some(serving) = serving {
            serving.await;
        }
    }

    /// Drive a served connection, enforcing the watchdog's timeouts and
    /// shutting it down gracefully when draining begins.
    async fn supervise<C, E>(
        &self,
        connection: C,
        graceful_shutdown: impl Fn(Pin<&mut C>),
        activity: &Activity,
        conn: &ConnContext,
    ) where
        C: Future<Output = Result<(), E>>,
        E: std::fmt::Display,
    {
        let peer = self.peer;
        tokio::pin!(connection);
        let lifecycle = &self.lifecycle;
        let drained = lifecycle.drained();
        tokio::pin!(drained);
        let mut watchdog = Watchdog::new(self.request_header_timeout, self.idle_timeout);
        let check = tokio::time::sleep(watchdog.period);
        tokio::pin!(check);
        let mut closing = false;
        // After a reset flood's GOAWAY: the time left before closing.
        let mut flood_grace: Option<Pin<Box<tokio::time::Sleep>>> = None;
        // The drain signal and the watchdog timer keep the waker of their
        // first poll (this task's), so after that they are polled only once
        // they may be ready. Polling them on every wake-up of the connection,
        // as `select!` does, cost ~700 instructions per request (callgrind).
        // The reset-flood flag is a load; its waker is registered once too.
        let mut drain_polled = false;
        let mut check_polled = false;
        let mut supervisor_registered = false;
        loop {
            let event = std::future::poll_fn(|cx| {
                if let Poll::Ready(result) = connection.as_mut().poll(cx) {
                    return Poll::Ready(Event::Ended(result));
                }
                if !supervisor_registered {
                    supervisor_registered = true;
                    activity.register_supervisor(cx.waker());
                }
                if let Some(grace) = &mut flood_grace {
                    if grace.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Event::FloodGraceOver);
                    }
                } else if activity.reset_flood() {
                    return Poll::Ready(Event::ResetFlood);
                }
                if !closing && (!drain_polled || lifecycle.is_draining()) {
                    drain_polled = true;
                    if drained.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Event::Drain);
                    }
                }
                if !check_polled || check.is_elapsed() {
                    check_polled = true;
                    if check.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Event::Check);
                    }
                }
                Poll::Pending
            })
            .await;
            match event {
                Event::Ended(result) => {
                    if let Err(error) = result {
                        tracing::debug!(peer = %peer.addr, %error, "connection ended with an error");
                    }
                    return;
                }
                Event::Drain => {
                    closing = true;
                    graceful_shutdown(connection.as_mut());
                }
                Event::ResetFlood => {
                    tracing::warn!(
                        peer = %peer.addr,
                        "HTTP/2 client reset more accepted streams than limits.max_stream_resets allows; closing the connection"
                    );
                    if !closing {
                        closing = true;
                        graceful_shutdown(connection.as_mut());
                    }
                    flood_grace = Some(Box::pin(tokio::time::sleep(RESET_FLOOD_GRACE)));
                }
                Event::FloodGraceOver => return,
                Event::Check => {
                    // Like `Interval` with `MissedTickBehavior::Delay`.
                    let now = Instant::now();
                    let due = check.deadline();
                    let next = if now > due + Duration::from_millis(5) {
                        now + watchdog.period
                    } else {
                        due + watchdog.period
                    };
                    check.as_mut().reset(next);
                    check_polled = false;
                    match watchdog.check(activity) {
                        Verdict::Fine => {}
                        Verdict::Quiet => conn.release_upstream(),
                        Verdict::HeadTooSlow => {
                            tracing::debug!(peer = %peer.addr, "request head not received in time; closing");
                            return;
                        }
                        Verdict::Idle if !closing => {
                            tracing::debug!(peer = %peer.addr, "closing idle connection");
                            closing = true;
                            graceful_shutdown(connection.as_mut());
                        }
                        // A graceful close (GOAWAY) that stayed quiet for
                        // another idle period without finishing: the client
                        // does not answer it.
                        Verdict::Idle => return,
                    }
                }
            }
        }
    }
}

/// Peek at the first bytes (hyper or the relay still reads them): the
/// HTTP/2 preface, a part of it, or anything else.
fn poll_sniff(stream: &TcpStream, cx: &mut std::task::Context<'_>) -> Poll<Sniffed> {
    let mut first = [0u8; H2_PREFACE.len()];
    let mut peeked = tokio::io::ReadBuf::new(&mut first);
    match stream.poll_peek(cx, &mut peeked) {
        Poll::Pending => Poll::Pending,
        Poll::Ready(Ok(n)) if n > 0 && peeked.filled() == &H2_PREFACE[..n] => {
            Poll::Ready(if n == H2_PREFACE.len() {
                Sniffed::Http2
            } else {
                Sniffed::Unsure
            })
        }
        // End of stream and errors are hyper's to report.
        Poll::Ready(_) => Poll::Ready(Sniffed::Http1),
    }
}

/// What woke the connection's supervision loop.
enum Event<T> {
    Ended(T),
    Drain,
    Check,
    /// `limits.max_stream_resets` exceeded.
    ResetFlood,
    FloodGraceOver,
}

/// One coarse timer per connection enforcing the request-head and idle
/// timeouts. It checks every `period` (half the shorter timeout), so a slow
/// head is cut off between 1× and 1.5× `timeouts.request_header`, and a quiet
/// connection closed between 1× and 1.5× `timeouts.idle` (rounded to checks).
struct Watchdog {
    period: Duration,
    head_epochs: u64,
    idle_checks: u64,
    quiet_checks: u64,
    last_ticks: u64,
}

enum Verdict {
    Fine,
    /// The first check of a quiet spell.
    Quiet,
    HeadTooSlow,
    Idle,
}

impl Watchdog {
    fn new(request_header: Duration, idle: Duration) -> Self {
        let period = (request_header.min(idle) / 2).max(Duration::from_millis(5));
        let checks = |timeout: Duration| (timeout.as_nanos() / period.as_nanos()).max(1) as u64;
        Watchdog {
            period,
            head_epochs: checks(request_header),
            idle_checks: checks(idle),
            quiet_checks: 0,
            last_ticks: 0,
        }
    }

    fn check(&mut self, activity: &Activity) -> Verdict {
        let epoch = activity.advance_epoch();
        if let Some(started) = activity.head_started() {
            // The head began during epoch `started`, i.e. after its start.
            if activity.in_flight() == 0 && epoch.saturating_sub(started + 1) >= self.head_epochs {
                return Verdict::HeadTooSlow;
            }
        }
        let ticks = activity.ticks();
        if ticks == self.last_ticks && activity.in_flight() == 0 {
            self.quiet_checks += 1;
        } else {
            self.quiet_checks = 0;
        }
        self.last_ticks = ticks;
        if self.quiet_checks >= self.idle_checks {
            Verdict::Idle
        } else if self.quiet_checks == 1 {
            Verdict::Quiet
        } else {
            Verdict::Fine
        }
    }
}

/// Why a listener could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Io {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(crate::tls::TlsError),
}

/// Bind with address reuse and a deep backlog, as a sidecar sees bursts.
pub fn bind_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}
