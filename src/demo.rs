//! The embedded echo upstream behind `licensegate demo`. It is a real HTTP
//! server, so tests use it as an upstream too.
//!
//! - a request without a body gets a JSON description of what arrived
//!   (method, path, version, headers), which shows what the proxy forwarded;
//! - a request with a body gets that body streamed straight back.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Request, Response};
use http_body::Body as _;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// A bound echo server.
pub struct EchoUpstream {
    listener: TcpListener,
    local_addr: SocketAddr,
}

impl EchoUpstream {
    pub async fn bind(addr: SocketAddr) -> std::io::Result<EchoUpstream> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        Ok(EchoUpstream {
            listener,
            local_addr,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serve forever (until the task is dropped).
    pub async fn serve(self) {
        let builder = auto::Builder::new(TokioExecutor::new());
        loop {
            let Ok((stream, _)) = self.listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let connection = builder
                .serve_connection(TokioIo::new(stream), service_fn(echo))
                .into_owned();
            tokio::spawn(connection);
        }
    }
}

/// What the echo server reports about a request without a body.
#[derive(serde::Serialize, serde::Deserialize, Debug)]
pub struct EchoReport {
    pub method: String,
    pub path: String,
    pub version: String,
    pub headers: BTreeMap<String, Vec<String>>,
}

async fn echo(
    request: Request<Incoming>,
) -> Result<Response<Either<Full<Bytes>, Incoming>>, Infallible> {
    let has_body = !request.body().is_end_stream();
    if has_body {
        let content_type = request.headers().get(CONTENT_TYPE).cloned();
        let mut response = Response::new(Either::Right(request.into_body()));
        response.headers_mut().insert(
            CONTENT_TYPE,
            content_type.unwrap_or(HeaderValue::from_static("application/octet-stream")),
        );
        return Ok(response);
    }
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in request.headers() {
        headers
            .entry(name.as_str().to_owned())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let report = EchoReport {
        method: request.method().to_string(),
        path: request
            .uri()
            .path_and_query()
            .map_or("/".to_owned(), |pq| pq.to_string()),
        version: format!("{:?}", request.version()),
        headers,
    };
    // Drain the (empty) body so the connection can be reused.
    let _ = request.into_body().collect().await;
    let mut body = serde_json::to_vec_pretty(&report).expect("report serialises");
    body.push(b'\n');
    let mut response = Response::new(Either::Left(Full::new(Bytes::from(body))));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}
