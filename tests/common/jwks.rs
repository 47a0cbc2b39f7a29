//! An identity provider's JWKS endpoint over real HTTPS on loopback, as
//! Keycloak or Auth0 serve theirs: `application/jwk-set+json` with an
//! `ETag` (a new one each time the set is replaced) that an
//! `If-None-Match` turns into a 304.
//!
//! The set can be swapped while it runs, requests are counted, it can
//! answer an error status instead, and it can be stopped (listener and
//! connections closed, so fetches are refused) and resumed on the same
//! port.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::TestCert;

#[derive(Default)]
struct Served {
    jwks: String,
    /// Bumped by every `set`; the `ETag` is `"v<version>"`.
    version: u64,
    cache_control: Option<String>,
    fail: Option<u16>,
    fetches: usize,
    not_modified: usize,
}

/// A running JWKS endpoint; stopped when dropped.
pub struct JwksServer {
    addr: SocketAddr,
    cert: TestCert,
    served: Arc<Mutex<Served>>,
    acceptor: tokio_rustls::TlsAcceptor,
    /// `true` closes the listener and every open connection.
    down: watch::Sender<bool>,
    listening: Mutex<Option<JoinHandle<()>>>,
}

impl JwksServer {
    /// Serve `initial_jwks` on an ephemeral loopback port.
    pub async fn start(initial_jwks: &str) -> JwksServer {
        let cert = TestCert::new();
        let mut config = cert.server_config();
        // HTTP/1.1 is what every identity provider's JWKS client speaks.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = JwksServer {
            addr: listener.local_addr().unwrap(),
            cert,
            served: Arc::new(Mutex::new(Served {
                jwks: initial_jwks.to_owned(),
                version: 1,
                ..Served::default()
            })),
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            down: watch::Sender::new(false),
            listening: Mutex::new(None),
        };
        server.listen(listener);
        server
    }

    /// The JWKS URL (`https://127.0.0.1:<port>/jwks`).
    pub fn url(&self) -> String {
        format!("https://{}/jwks", self.addr)
    }

    /// The PEM certificate to trust (the issuer's `jwks.ca`).
    pub fn ca_path(&self) -> String {
        self.cert.cert_path()
    }

    /// Serve `jwks` from now on, with a new `ETag`.
    pub fn set(&self, jwks: &str) {
        let mut served = self.served.lock();
        served.jwks = jwks.to_owned();
        served.version += 1;
    }

    /// Send `Cache-Control: <value>` with the set (none by default).
    pub fn cache_control(&self, value: Option<&str>) {
        self.served.lock().cache_control = value.map(str::to_owned);
    }

    /// Answer `status` (with a short text body) instead of the set, until
    /// called with `None`.
    pub fn fail_with(&self, status: Option<u16>) {
        self.served.lock().fail = status;
    }

    /// Requests answered so far, 304s and failures included.
    pub fn fetches(&self) -> usize {
        self.served.lock().fetches
    }

    /// Requests answered with 304 Not Modified.
    pub fn not_modified(&self) -> usize {
        self.served.lock().not_modified
    }

    /// Close the listener and every open connection; returns once the port
    /// refuses connections.
    pub async fn stop(&self) {
        self.down.send_replace(true);
        let listening = self.listening.lock().take();
        if let Some(listening) = listening {
            let _ = listening.await;
        }
    }

    /// Listen on the same port again, serving the same set.
    pub async fn resume(&self) {
        self.stop().await;
        // SO_REUSEADDR: the connections just closed may hold the port in
        // TIME_WAIT.
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(self.addr).unwrap();
        self.down.send_replace(false);
        self.listen(socket.listen(128).unwrap());
    }

    fn listen(&self, listener: TcpListener) {
        let acceptor = self.acceptor.clone();
        let served = Arc::clone(&self.served);
        let mut down = self.down.subscribe();
        let down_for_connections = self.down.clone();
        let listening = tokio::spawn(async move {
            loop {
                let tcp = tokio::select! {
                    _ = down.wait_for(|down| *down) => return,
                    accepted = listener.accept() => match accepted {
                        Ok((tcp, _)) => tcp,
                        Err(_) => continue,
                    },
                };
                let acceptor = acceptor.clone();
                let served = Arc::clone(&served);
                let mut down = down_for_connections.subscribe();
                tokio::spawn(async move {
                    let connection = async {
                        let tls = acceptor.accept(tcp).await.ok()?;
                        let service = service_fn(|request| {
                            let response = answer(&served, &request);
                            async move { Ok::<_, std::convert::Infallible>(response) }
                        });
                        hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tls), service)
                            .await
                            .ok()
                    };
                    tokio::select! {
                        _ = down.wait_for(|down| *down) => {}
                        _ = connection => {}
                    }
                });
            }
        });
        *self.listening.lock() = Some(listening);
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.down.send_replace(true);
    }
}

fn answer(served: &Mutex<Served>, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let mut served = served.lock();
    served.fetches += 1;
    let response = Response::builder();
    if let Some(status) = served.fail {
        return response
            .status(status)
            .header(CONTENT_TYPE, "text/plain")
            .body(Full::new(Bytes::from(format!(
                "jwks failing with {status}\n"
            ))))
            .unwrap();
    }
    let etag = format!("\"v{}\"", served.version);
    let response = match &served.cache_control {
        Some(value) => response.header(CACHE_CONTROL, value.as_str()),
        None => response,
    }
    .header(ETAG, etag.as_str());
    let unchanged =
        request.headers().get(IF_NONE_MATCH) == Some(&HeaderValue::from_str(&etag).unwrap());
    if unchanged {
        served.not_modified += 1;
        return response
            .status(StatusCode::NOT_MODIFIED)
            .body(Full::new(Bytes::new()))
            .unwrap();
    }
    response
        .header(CONTENT_TYPE, "application/jwk-set+json")
        .body(Full::new(Bytes::from(served.jwks.clone())))
        .unwrap()
}
