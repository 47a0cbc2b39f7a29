//! A lax upstream that records every byte it receives: the witness for
//! "no byte reaches the workload without a decision".
//!
//! It speaks just enough HTTP/1.1 to keep a client going — heads, bodies by
//! `Content-Length` or chunked framing, keep-alive — and, like the lax
//! servers attackers look for, it answers `101 Switching Protocols` to any
//! request carrying `Upgrade`. After a 101 it keeps reading: every byte
//! that arrives inside the tunnel is recorded (and echoed back), and request
//! lines found in it are recorded as requests too.
//!
//! Each connection's bytes are also kept apart, with where every parsed
//! request starts and ends in them, so a test can say exactly which bytes
//! a given exchange put on the wire.

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use base64::Engine;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use super::WAIT;

/// How the upstream answers a request that asks for an upgrade.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer101 {
    /// A 101 echoing the asked protocol with the right `Sec-WebSocket-Accept`.
    Genuine,
    /// A 101 with a `Sec-WebSocket-Accept` that answers another key.
    WrongAccept,
    /// A 101 to every request, upgrade or not.
    Always,
}

/// One request as the upstream parsed it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// The request line, e.g. `GET /x HTTP/1.1`.
    pub line: String,
    /// Header names as received (case kept) with their values.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Trailer fields after a chunked body's last chunk.
    pub trailers: Vec<(String, String)>,
    /// Parsed from bytes that arrived after a 101 on its connection.
    pub in_tunnel: bool,
    /// Which connection (index into [`RecordingUpstream::connection_records`]).
    pub connection: usize,
    /// Where the request lies in its connection's bytes.
    pub span: Range<usize>,
}

impl Seen {
    pub fn target(&self) -> &str {
        self.line.split(' ').nth(1).unwrap_or("")
    }

    /// The first value of `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether any header name, read as CGI does (`_` = `-`), is `name`.
    pub fn has_header_like(&self, name: &str) -> bool {
        let fold = |s: &str| s.to_ascii_lowercase().replace('_', "-");
        self.headers.iter().any(|(n, _)| fold(n) == fold(name))
    }
}

/// What one connection delivered.
#[derive(Clone, Debug, Default)]
pub struct ConnectionRecord {
    /// Every byte received on it, in order.
    pub bytes: Vec<u8>,
    /// End of the last complete request parsed from `bytes`: what lies
    /// beyond is a request still arriving, or bytes no parser accepted.
    pub parsed: usize,
    /// Offset in `bytes` where a tunnel began (after a 101).
    pub tunnel_from: Option<usize>,
    /// The peer ended the stream (or it failed).
    pub closed: bool,
}

impl ConnectionRecord {
    /// Nothing half-received: the connection ended, or every byte belongs
    /// to a complete request (or to a tunnel).
    pub fn settled(&self) -> bool {
        self.closed || self.tunnel_from.is_some() || self.parsed == self.bytes.len()
    }
}

#[derive(Default)]
struct Record {
    requests: Vec<Seen>,
    per_connection: Vec<ConnectionRecord>,
    /// Every byte received, all connections, in arrival order per read.
    bytes: Vec<u8>,
    /// Bytes received after a 101.
    tunnel_bytes: Vec<u8>,
    connections: usize,
    /// Connections that reached end of stream.
    closed: usize,
    switched: usize,
}

pub struct RecordingUpstream {
    pub addr: SocketAddr,
    record: Arc<Mutex<Record>>,
    changed: Arc<Notify>,
}

impl RecordingUpstream {
    pub async fn start(answer: Answer101) -> RecordingUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let record = Arc::new(Mutex::new(Record::default()));
        let changed = Arc::new(Notify::new());
        let (r, c) = (Arc::clone(&record), Arc::clone(&changed));
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let id = {
                    let mut record = r.lock();
                    record.connections += 1;
                    record.per_connection.push(ConnectionRecord::default());
                    record.per_connection.len() - 1
                };
                c.notify_waiters();
                tokio::spawn(serve(stream, id, answer, Arc::clone(&r), Arc::clone(&c)));
            }
        });
        RecordingUpstream {
            addr,
            record,
            changed,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.record.lock().requests.clone()
    }

    /// Everything received, as text (lossy).
    pub fn received(&self) -> String {
        String::from_utf8_lossy(&self.record.lock().bytes).into_owned()
    }

    pub fn tunnel_bytes(&self) -> Vec<u8> {
        self.record.lock().tunnel_bytes.clone()
    }

    /// Each connection's bytes, in accept order.
    pub fn connection_records(&self) -> Vec<ConnectionRecord> {
        self.record.lock().per_connection.clone()
    }

    pub fn connections(&self) -> usize {
        self.record.lock().connections
    }

    pub fn closed_connections(&self) -> usize {
        self.record.lock().closed
    }

    /// 101s this upstream sent.
    pub fn switched(&self) -> usize {
        self.record.lock().switched
    }

    /// Wait (bounded by `WAIT`) until `done` holds for the record.
    pub async fn wait_until(&self, what: &str, done: impl Fn(&RecordingUpstream) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if done(self) {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, notified).await.is_err() {
                panic!(
                    "upstream never saw {what}; it received:\n{}",
                    self.received()
                );
            }
        }
    }

    /// Wait until a request whose target is `target` arrived.
    pub async fn wait_for_target(&self, target: &str) {
        self.wait_until(target, |u| {
            u.requests().iter().any(|r| r.target() == target)
        })
        .await;
    }
}

async fn serve(
    mut stream: TcpStream,
    id: usize,
    answer: Answer101,
    record: Arc<Mutex<Record>>,
    changed: Arc<Notify>,
) {
    let mut buffer = Vec::new();
    // Offset in the connection's bytes of `buffer[0]`.
    let mut consumed = 0;
    let mut tunnel = false;
    loop {
        // Parse what is buffered; read more when it is not enough.
        match parse_request(&buffer) {
            Parsed::Complete { seen, used } => {
                buffer.drain(..used);
                let wants_upgrade = seen.header("upgrade").is_some();
                let key = seen.header("sec-websocket-key").map(str::to_owned);
                let protocol = seen.header("upgrade").unwrap_or("websocket").to_owned();
                let head_only = seen.line.starts_with("HEAD ");
                let mut seen = seen;
                seen.in_tunnel = tunnel;
                seen.connection = id;
                seen.span = consumed..consumed + used;
                consumed += used;
                {
                    let mut record = record.lock();
                    record.per_connection[id].parsed = consumed;
                    record.requests.push(seen);
                }
                changed.notify_waiters();
                if tunnel {
                    continue;
                }
                let switch = answer == Answer101::Always || wants_upgrade;
                let response = if switch {
                    let accept = match (answer, key) {
                        (Answer101::WrongAccept, _) => accept_for("bm90IHRoZSBjbGllbnQncw=="),
                        (_, Some(key)) => accept_for(&key),
                        (_, None) => accept_for("AAAAAAAAAAAAAAAAAAAAAA=="),
                    };
                    format!(
                        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: {protocol}\r\n\
                         Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                    )
                } else if head_only {
                    // The length a GET would have, and no body.
                    "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n".to_owned()
                } else {
                    "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_owned()
                };
                if stream.write_all(response.as_bytes()).await.is_err() {
                    break;
                }
                if switch {
                    tunnel = true;
                    let mut record = record.lock();
                    record.switched += 1;
                    record.per_connection[id].tunnel_from = Some(consumed);
                    // Bytes already buffered arrived inside the tunnel.
                    if !buffer.is_empty() {
                        record.tunnel_bytes.extend_from_slice(&buffer);
                    }
                    drop(record);
                    changed.notify_waiters();
                }
                continue;
            }
            Parsed::Invalid if !tunnel => break,
            _ => {}
        }
        let mut chunk = [0u8; 16 * 1024];
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        {
            let mut record = record.lock();
            record.bytes.extend_from_slice(&chunk[..n]);
            record.per_connection[id]
                .bytes
                .extend_from_slice(&chunk[..n]);
            if tunnel {
                record.tunnel_bytes.extend_from_slice(&chunk[..n]);
            }
        }
        changed.notify_waiters();
        if tunnel {
            // Echo, so a client can see the tunnel carries bytes.
            if stream.write_all(&chunk[..n]).await.is_err() {
                break;
            }
            // Keep at most what may still hold a request line.
            buffer.extend_from_slice(&chunk[..n]);
            if buffer.len() > 64 * 1024 {
                consumed += buffer.len();
                buffer.clear();
            }
        } else {
            buffer.extend_from_slice(&chunk[..n]);
        }
    }
    {
        let mut record = record.lock();
        record.closed += 1;
        record.per_connection[id].closed = true;
    }
    changed.notify_waiters();
}

fn accept_for(key: &str) -> String {
    let mut context = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    context.update(key.as_bytes());
    context.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(context.finish())
}

enum Parsed {
    Complete { seen: Seen, used: usize },
    Partial,
    Invalid,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// One request from the front of `buffer`.
fn parse_request(buffer: &[u8]) -> Parsed {
    let Some(end) = find(buffer, b"\r\n\r\n") else {
        return if buffer.len() > 64 * 1024 {
            Parsed::Invalid
        } else {
            Parsed::Partial
        };
    };
    let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or("").to_owned();
    if line.split(' ').count() != 3 {
        return Parsed::Invalid;
    }
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.to_owned(), v.trim().to_owned()))
        .collect();
    let mut seen = Seen {
        line,
        headers,
        body: Vec::new(),
        trailers: Vec::new(),
        in_tunnel: false,
        connection: 0,
        span: 0..0,
    };
    let mut used = end + 4;
    let chunked = seen
        .header("transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
    if chunked {
        loop {
            let Some(size_end) = find(&buffer[used..], b"\r\n") else {
                return Parsed::Partial;
            };
            let size_text = String::from_utf8_lossy(&buffer[used..used + size_end]).into_owned();
            let size_text = size_text.split(';').next().unwrap_or("").trim().to_owned();
            let Ok(size) = usize::from_str_radix(&size_text, 16) else {
                return Parsed::Invalid;
            };
            let data = used + size_end + 2;
            if size == 0 {
                // Trailer lines, if any, up to the empty line.
                let mut at = data;
                loop {
                    let Some(line_end) = find(&buffer[at..], b"\r\n") else {
                        return Parsed::Partial;
                    };
                    let line = String::from_utf8_lossy(&buffer[at..at + line_end]).into_owned();
                    at += line_end + 2;
                    if line.is_empty() {
                        break;
                    }
                    if let Some((name, value)) = line.split_once(':') {
                        seen.trailers
                            .push((name.to_owned(), value.trim().to_owned()));
                    }
                }
                used = at;
                break;
            }
            if buffer.len() < data + size + 2 {
                return Parsed::Partial;
            }
            seen.body.extend_from_slice(&buffer[data..data + size]);
            used = data + size + 2;
        }
    } else if let Some(length) = seen.header("content-length") {
        let Ok(length) = length.parse::<usize>() else {
            return Parsed::Invalid;
        };
        if buffer.len() < used + length {
            return Parsed::Partial;
        }
        seen.body = buffer[used..used + length].to_vec();
        used += length;
    }
    Parsed::Complete { seen, used }
}
