//! HTTP/2 bounds through the real binary: concurrent streams per connection,
//! resets of accepted streams, the global cap on upstream connections, and
//! idle h2c connections. The client is the `h2` crate over a socket whose
//! inbound frames are recorded as they arrive; the upstream counts the
//! connections it accepts and the requests it receives.

mod common;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};

// === A recording upstream ===

/// An HTTP/1.1 + HTTP/2 upstream that counts accepted connections and
/// received requests, and answers only once released.
struct HeldUpstream {
    addr: SocketAddr,
    counts: Arc<Counts>,
    release: watch::Sender<bool>,
}

#[derive(Default)]
struct Counts {
    connections: AtomicUsize,
    requests: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    changed: Notify,
}

impl Counts {
    /// Wait (bounded) until `done` holds for these counts.
    async fn until(&self, what: &str, done: impl Fn(&Counts) -> bool) {
        let waiting = async {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if done(self) {
                    return;
                }
                changed.await;
            }
        };
        if tokio::time::timeout(WAIT, waiting).await.is_err() {
            panic!(
                "upstream never saw {what}: {} connections, {} requests, {} in flight",
                self.connections.load(Ordering::SeqCst),
                self.requests.load(Ordering::SeqCst),
                self.in_flight.load(Ordering::SeqCst)
            );
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

async fn held_upstream() -> HeldUpstream {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counts = Arc::new(Counts::default());
    let (release, released) = watch::channel(false);
    let accept_counts = Arc::clone(&counts);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            accept_counts.connections.fetch_add(1, Ordering::SeqCst);
            accept_counts.changed.notify_waiters();
            let counts = Arc::clone(&accept_counts);
            let released = released.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_request| {
                    let counts = Arc::clone(&counts);
                    let mut released = released.clone();
                    async move {
                        counts.requests.fetch_add(1, Ordering::SeqCst);
                        let now = counts.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                        counts.max_in_flight.fetch_max(now, Ordering::SeqCst);
                        counts.changed.notify_waiters();
                        let _ = released.wait_for(|released| *released).await;
                        counts.in_flight.fetch_sub(1, Ordering::SeqCst);
                        counts.changed.notify_waiters();
                        Ok::<_, std::convert::Infallible>(Response::new(full("ok")))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    HeldUpstream {
        addr,
        counts,
        release,
    }
}

// === A socket that records the frames the proxy sends ===

#[derive(Debug, Default)]
struct Seen {
    /// Parameters of the server's (non-ack) SETTINGS frames, in order.
    settings: Vec<(u16, u32)>,
    /// Error codes of GOAWAY frames, in order.
    goaway: Vec<u32>,
    /// RST_STREAM frames: stream id and error code.
    resets: Vec<(u32, u32)>,
    /// When the first GOAWAY arrived.
    first_goaway: Option<Instant>,
    /// The proxy closed the connection.
    eof: bool,
    /// Bytes of an unfinished frame.
    partial: Vec<u8>,
}

const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
const SETTINGS_MAX_HEADER_LIST_SIZE: u16 = 0x6;
const NO_ERROR: u32 = 0x0;
const REFUSED_STREAM: u32 = 0x7;
const CANCEL: u32 = 0x8;

impl Seen {
    fn feed(&mut self, bytes: &[u8]) {
        self.partial.extend_from_slice(bytes);
        loop {
            let buf = &self.partial;
            if buf.len() < 9 {
                return;
            }
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() < 9 + len {
                return;
            }
            let (kind, flags) = (buf[3], buf[4]);
            let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
            let payload = buf[9..9 + len].to_vec();
            self.partial.drain(..9 + len);
            match kind {
                SETTINGS if flags & 0x1 == 0 => {
                    for pair in payload.chunks_exact(6) {
                        let id = u16::from_be_bytes([pair[0], pair[1]]);
                        let value = u32::from_be_bytes([pair[2], pair[3], pair[4], pair[5]]);
                        self.settings.push((id, value));
                    }
                }
                RST_STREAM => {
                    let code = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                    self.resets.push((stream, code));
                }
                GOAWAY => {
                    let code = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
                    self.goaway.push(code);
                    self.first_goaway.get_or_insert_with(Instant::now);
                }
                _ => {}
            }
        }
    }

    fn setting(&self, id: u16) -> Option<u32> {
        self.settings
            .iter()
            .rev()
            .find(|(i, _)| *i == id)
            .map(|(_, v)| *v)
    }
}

#[derive(Clone, Default)]
struct Tap {
    seen: Arc<Mutex<Seen>>,
    changed: Arc<Notify>,
}

impl Tap {
    /// Wait (bounded) until `done` holds for what was seen.
    async fn until(&self, what: &str, done: impl Fn(&Seen) -> bool) {
        let waiting = async {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if done(&self.seen.lock()) {
                    return;
                }
                changed.await;
            }
        };
        if tokio::time::timeout(WAIT, waiting).await.is_err() {
            panic!("never saw {what}: {:?}", self.seen.lock());
        }
    }

    fn saw_goaway(&self) -> bool {
        !self.seen.lock().goaway.is_empty()
    }
}

struct Tapped {
    stream: TcpStream,
    tap: Tap,
}

impl AsyncRead for Tapped {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if let Poll::Ready(result) = &polled {
            let mut seen = self.tap.seen.lock();
            match result {
                Ok(()) if buf.filled().len() > before => seen.feed(&buf.filled()[before..]),
                _ => seen.eof = true,
            }
            drop(seen);
            self.tap.changed.notify_waiters();
        }
        polled
    }
}

impl AsyncWrite for Tapped {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// An h2c (prior knowledge) client connection to `addr`, driven in the
/// background, and the tap recording what the proxy sends on it.
async fn h2c(addr: SocketAddr) -> (h2::client::SendRequest<Bytes>, Tap) {
    let tap = Tap::default();
    let stream = TcpStream::connect(addr).await.unwrap();
    let tapped = Tapped {
        stream,
        tap: tap.clone(),
    };
    let (sender, connection) = h2::client::handshake(tapped).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    (sender, tap)
}

/// A hand-driven HTTP/2 client that sends only the frames it is told to:
/// it never answers the server's PINGs, so a graceful GOAWAY never ends.
struct RawH2 {
    write: tokio::net::tcp::OwnedWriteHalf,
    next_stream: u32,
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut frame = vec![len[1], len[2], len[3], kind, flags];
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

impl RawH2 {
    async fn connect(addr: SocketAddr) -> (RawH2, Tap) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut read, mut write) = TcpStream::connect(addr).await.unwrap().into_split();
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        write.write_all(&hello).await.unwrap();
        let tap = Tap::default();
        let reader = tap.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = read.read(&mut buf).await.unwrap_or(0);
                let mut seen = reader.seen.lock();
                if n == 0 {
                    seen.eof = true;
                } else {
                    seen.feed(&buf[..n]);
                }
                drop(seen);
                reader.changed.notify_waiters();
                if n == 0 {
                    return;
                }
            }
        });
        let client = RawH2 {
            write,
            next_stream: 1,
        };
        (client, tap)
    }

    /// Open a stream with `GET http://app.test/`; returns its id.
    async fn get(&mut self) -> u32 {
        use tokio::io::AsyncWriteExt;
        // HPACK: :method GET, :scheme http, :path / (static table), and
        // :authority app.test as a literal without indexing.
        let mut block = vec![0x82, 0x86, 0x84, 0x01, 8];
        block.extend_from_slice(b"app.test");
        let id = self.next_stream;
        self.next_stream += 2;
        let end_stream_and_headers = 0x1 | 0x4;
        let headers = frame(HEADERS, end_stream_and_headers, id, &block);
        self.write.write_all(&headers).await.unwrap();
        id
    }

    async fn reset(&mut self, id: u32) {
        use tokio::io::AsyncWriteExt;
        let rst = frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes());
        self.write.write_all(&rst).await.unwrap();
    }
}

fn get(path: &str) -> Request<()> {
    Request::get(format!("http://app.test{path}"))
        .body(())
        .unwrap()
}

/// Send one GET on a fresh stream and read the whole response.
async fn exchange(
    sender: h2::client::SendRequest<Bytes>,
    path: &str,
) -> Result<(http::response::Parts, Bytes), h2::Error> {
    let mut sender = sender.ready().await?;
    let (response, _) = sender.send_request(get(path), true)?;
    let (parts, mut body) = response.await?.into_parts();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    Ok((parts, Bytes::from(bytes)))
}

fn proxy_with(dir: &std::path::Path, config: &str) -> Proxy {
    Proxy::with_config(&write_file(dir, "lg.yaml", config))
}

/// Responses (or stream errors) of streams run in the background.
#[derive(Default)]
struct Outcomes {
    results: Mutex<Vec<Result<(http::response::Parts, Bytes), h2::Error>>>,
    changed: Notify,
}

impl Outcomes {
    /// Run `count` GETs of `path`, each on its own stream.
    fn spawn(count: usize, sender: &h2::client::SendRequest<Bytes>, path: &str) -> Arc<Self> {
        let outcomes = Arc::new(Outcomes::default());
        for _ in 0..count {
            let (outcomes, sender, path) = (Arc::clone(&outcomes), sender.clone(), path.to_owned());
            tokio::spawn(async move {
                let result = exchange(sender, &path).await;
                outcomes.results.lock().push(result);
                outcomes.changed.notify_waiters();
            });
        }
        outcomes
    }

    /// Wait (bounded) until `count` streams have finished.
    async fn until(&self, count: usize) {
        let waiting = async {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if self.results.lock().len() >= count {
                    return;
                }
                changed.await;
            }
        };
        if tokio::time::timeout(WAIT, waiting).await.is_err() {
            panic!(
                "only {} of {count} streams finished",
                self.results.lock().len()
            );
        }
    }

    /// How many finished with `status`.
    fn with_status(&self, status: u16) -> usize {
        self.results
            .lock()
            .iter()
            .filter(|r| matches!(r, Ok((parts, _)) if parts.status == status))
            .count()
    }
}

fn assert_overloaded(parts: &http::response::Parts, body: &Bytes) {
    assert_eq!(parts.status, 503, "{body:?}");
    assert_eq!(parts.headers["retry-after"], "1");
    assert_eq!(parts.headers["content-type"], "application/problem+json");
    let problem: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert_eq!(problem["reason"], "upstream_overloaded", "{problem}");
}

// === Tests ===

#[tokio::test]
async fn one_h2_connection_cannot_fan_out_past_the_upstream_cap() {
    let upstream = held_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_with(
        dir.path(),
        &format!(
            "upstream: {{url: 'http://{}', max_connections: 8}}\n\
             timeouts: {{upstream_queue: 200ms}}\n",
            upstream.addr
        ),
    );
    let (sender, tap) = h2c(proxy.addr).await;
    tap.until("the server's SETTINGS", |seen| {
        seen.setting(SETTINGS_MAX_CONCURRENT_STREAMS).is_some()
    })
    .await;
    {
        let seen = tap.seen.lock();
        assert_eq!(seen.setting(SETTINGS_MAX_CONCURRENT_STREAMS), Some(100));
        assert_eq!(seen.setting(SETTINGS_MAX_HEADER_LIST_SIZE), Some(65536));
    }

    let outcomes = Outcomes::spawn(250, &sender, "/slow");
    upstream
        .counts
        .until("8 requests in flight", |c| {
            c.in_flight.load(Ordering::SeqCst) == 8
        })
        .await;
    let page = metrics(&proxy).await;
    assert_eq!(
        metric(&page, "licensegate_upstream_connections_open"),
        Some(8.0)
    );

    // While those 8 are held, every other stream is refused: at once when
    // 8 already wait, else after the queue's 200 ms.
    outcomes.until(242).await;
    for result in outcomes.results.lock().iter() {
        let (parts, body) = result.as_ref().expect("a response, not a reset");
        assert_overloaded(parts, body);
    }
    assert_eq!(upstream.counts.connections(), 8);
    assert_eq!(upstream.counts.requests(), 8);

    upstream.release.send(true).unwrap();
    outcomes.until(250).await;
    assert_eq!(outcomes.with_status(200), 8);
    assert_eq!(outcomes.with_status(503), 242);
    assert_eq!(
        upstream.counts.connections(),
        8,
        "a connection beyond the cap"
    );
    assert_eq!(upstream.counts.requests(), 8);
    let page = metrics(&proxy).await;
    assert_eq!(
        metric(
            &page,
            "licensegate_requests_total{decision=\"error\",reason=\"upstream_overloaded\"}"
        ),
        Some(242.0)
    );
}

#[tokio::test]
async fn queued_requests_take_the_connections_given_back() {
    let upstream = held_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_with(
        dir.path(),
        &format!(
            "upstream: {{url: 'http://{}', max_connections: 2}}\n\
             timeouts: {{upstream_queue: 15s}}\n",
            upstream.addr
        ),
    );
    let (sender, _tap) = h2c(proxy.addr).await;
    let outcomes = Outcomes::spawn(4, &sender, "/queued");
    upstream
        .counts
        .until("2 requests in flight", |c| c.requests() == 2)
        .await;
    let queued = async || {
        metric(
            &metrics(&proxy).await,
            "licensegate_upstream_requests_queued",
        ) == Some(2.0)
    };
    assert!(eventually(queued).await, "two requests should wait");

    upstream.release.send(true).unwrap();
    outcomes.until(4).await;
    assert_eq!(outcomes.with_status(200), 4);
    assert_eq!(upstream.counts.requests(), 4);
    assert_eq!(
        upstream.counts.connections(),
        2,
        "the queued requests opened connections of their own"
    );
    let page = metrics(&proxy).await;
    assert_eq!(
        metric(&page, "licensegate_upstream_requests_queued"),
        Some(0.0)
    );
}

#[tokio::test]
async fn requests_over_an_http2_upstream_are_capped_too() {
    let upstream = held_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_with(
        dir.path(),
        &format!(
            "upstream: {{url: 'http://{}', protocol: http2, max_connections: 2}}\n\
             timeouts: {{upstream_queue: 15s}}\n",
            upstream.addr
        ),
    );
    let (sender, _tap) = h2c(proxy.addr).await;
    // 2 in flight, 2 waiting (the queue holds as many as the cap), 2 refused.
    let outcomes = Outcomes::spawn(6, &sender, "/multiplexed");
    outcomes.until(2).await;
    for result in outcomes.results.lock().iter() {
        let (parts, body) = result.as_ref().expect("a response, not a reset");
        assert_overloaded(parts, body);
    }
    upstream
        .counts
        .until("2 requests in flight", |c| c.requests() == 2)
        .await;

    upstream.release.send(true).unwrap();
    outcomes.until(6).await;
    assert_eq!(outcomes.with_status(200), 4);
    assert_eq!(upstream.counts.requests(), 4);
    assert_eq!(upstream.counts.max_in_flight.load(Ordering::SeqCst), 2);
    assert!(
        upstream.counts.connections() <= 2,
        "a connection beyond the cap"
    );
}

#[tokio::test]
async fn resetting_accepted_streams_draws_a_goaway_and_bounds_upstream_requests() {
    const MAX_RESETS: usize = 20;
    const BATCH: usize = 10;
    let upstream = held_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_with(
        dir.path(),
        &format!(
            "upstream: {{url: 'http://{}'}}\nlimits: {{max_stream_resets: {MAX_RESETS}}}\n",
            upstream.addr
        ),
    );
    let (sender, tap) = h2c(proxy.addr).await;

    // Batches of streams, each reset once the upstream has its requests:
    // accepted, forwarded, then cancelled. 50 batches unless stopped.
    let mut sent = 0;
    for _ in 0..50 {
        if tap.saw_goaway() {
            break;
        }
        let mut streams = Vec::new();
        for _ in 0..BATCH {
            let Ok(mut ready) = sender.clone().ready().await else {
                break;
            };
            match ready.send_request(get("/reset"), true) {
                Ok((response, stream)) => streams.push((response, stream)),
                Err(_) => break,
            }
        }
        sent += streams.len();
        let target = sent;
        let forwarded = upstream
            .counts
            .until("the batch", |c| c.requests() >= target);
        let goaway = tap.until("a GOAWAY", |seen| !seen.goaway.is_empty());
        tokio::select! {
            () = forwarded => {}
            () = goaway => {}
        }
        for (_response, mut stream) in streams {
            stream.send_reset(h2::Reason::CANCEL);
        }
    }

    tap.until("a GOAWAY", |seen| !seen.goaway.is_empty()).await;
    assert_eq!(tap.seen.lock().goaway[0], NO_ERROR);
    // The connection is flagged as the stream tasks see the resets, which
    // may be after the next batch was accepted: the 21st reset comes in the
    // third batch, the fourth may still be forwarded, the fifth never is.
    let reached = upstream.counts.requests();
    assert!(
        reached <= MAX_RESETS + 2 * BATCH,
        "{reached} requests of {sent} streams reached the upstream"
    );
    proxy.wait_for_log("limits.max_stream_resets");
}

#[tokio::test]
async fn idle_h2c_connections_get_a_goaway_after_the_idle_timeout() {
    let upstream = held_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_with(
        dir.path(),
        &format!(
            "upstream: {{url: 'http://{}'}}\ntimeouts: {{request_header: 200ms, idle: 1500ms}}\n",
            upstream.addr
        ),
    );
    let connected = Instant::now();
    let (_sender, tap) = h2c(proxy.addr).await;
    tap.until("a GOAWAY or the end", |seen| {
        !seen.goaway.is_empty() || seen.eof
    })
    .await;
    let seen = tap.seen.lock();
    assert_eq!(
        seen.goaway.first(),
        Some(&NO_ERROR),
        "closed without a GOAWAY: {seen:?}"
    );
    let after = seen.first_goaway.unwrap() - connected;
    assert!(
        after >= Duration::from_millis(1500),
        "closed after {after:?}, before timeouts.idle"
    );
}

#[tokio::test]
async fn a_client_ignoring_the_reset_goaway_is_cut_off_and_refused_meanwhile() {
    let upstream = held_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_with(
        dir.path(),
        &format!(
            "upstream: {{url: 'http://{}'}}\nlimits: {{max_stream_resets: 5}}\n",
            upstream.addr
        ),
    );
    let (mut client, tap) = RawH2::connect(proxy.addr).await;
    let mut streams = Vec::new();
    for _ in 0..6 {
        streams.push(client.get().await);
    }
    upstream
        .counts
        .until("6 requests", |c| c.requests() == 6)
        .await;
    for id in streams {
        client.reset(id).await;
    }
    tap.until("a GOAWAY", |seen| !seen.goaway.is_empty()).await;

    // The client does not answer the GOAWAY's PING and opens another stream:
    // it is refused unprocessed, then the connection is closed regardless.
    let late = client.get().await;
    tap.until("the late stream refused", |seen| {
        seen.resets.iter().any(|(id, _)| *id == late)
    })
    .await;
    let refused = tap.seen.lock().resets.clone();
    assert!(refused.contains(&(late, REFUSED_STREAM)), "{refused:?}");
    tap.until("the connection closed", |seen| seen.eof).await;
    assert_eq!(upstream.counts.requests(), 6);
}
