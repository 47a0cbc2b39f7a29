//! The tools' side of the admin port: one HTTP/1.1 exchange with a running
//! licensegate, bounded in time, telling "nothing listens there" from "it
//! answered badly" (`dev switch`, `usage`).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// How long a tool waits for the whole exchange.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Why an exchange failed.
#[derive(Debug)]
pub enum Failure {
    /// Nothing accepted the connection.
    Connect(std::io::Error),
    /// Connected, but the exchange failed or took longer than [`PATIENCE`].
    Exchange(String),
}

/// `method path` to the admin port at `addr`, with `body` as JSON if any:
/// the status and the whole answer.
pub async fn exchange(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Option<Bytes>,
) -> Result<(StatusCode, Bytes), Failure> {
    tokio::time::timeout(PATIENCE, exchange_unbounded(addr, method, path, body))
        .await
        .unwrap_or_else(|_| {
            Err(Failure::Exchange(format!(
                "no answer within {} s",
                PATIENCE.as_secs()
            )))
        })
}

async fn exchange_unbounded(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Option<Bytes>,
) -> Result<(StatusCode, Bytes), Failure> {
    let exchange = |e: &dyn std::fmt::Display| Failure::Exchange(e.to_string());
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(Failure::Connect)?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| exchange(&e))?;
    tokio::spawn(connection);
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, addr.to_string());
    if body.is_some() {
        request = request.header(CONTENT_TYPE, "application/json");
    }
    let request = request
        .body(Full::new(body.unwrap_or_default()))
        .map_err(|e| exchange(&e))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| exchange(&e))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| exchange(&e))?
        .to_bytes();
    Ok((status, body))
}

/// A problem+json `detail`, else the body as text.
pub fn detail(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["detail"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_owned())
}
