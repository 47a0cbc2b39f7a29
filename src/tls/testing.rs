//! An HTTPS server on loopback for the unit tests of the clients that call
//! remote services: a fresh self-signed certificate for 127.0.0.1 (written
//! as the CA file the client trusts), HTTP/1.1 and HTTP/2 by ALPN, and a
//! `stop` that closes the listener and every connection.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::task::JoinSet;

/// A response body the handlers can build from anything.
pub type Body = BoxBody<Bytes, Infallible>;

/// A response with `status`, `content_type` and a whole `body`.
pub fn full(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, content_type)
        .body(Full::new(body.into()).boxed())
        .unwrap()
}

/// A certificate for 127.0.0.1; returns it and its CA file (itself).
pub fn certificate(dir: &Path, name: &str) -> (rcgen::CertifiedKey<rcgen::KeyPair>, PathBuf) {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let ca = dir.join(name);
    std::fs::write(&ca, certified.cert.pem()).unwrap();
    (certified, ca)
}

/// A running server; stopped when dropped.
pub struct TlsServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The PEM file to trust.
    pub ca: PathBuf,
    _dir: tempfile::TempDir,
    tasks: Arc<Mutex<JoinSet<()>>>,
}

impl TlsServer {
    /// Serve `handler` on an ephemeral loopback port.
    pub async fn start<F, Fut>(handler: F) -> TlsServer
    where
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        let dir = tempfile::tempdir().unwrap();
        let (certified, ca) = certificate(dir.path(), "ca.pem");
        let key = PrivateKeyDer::from(PrivatePkcs8KeyDer::from(
            certified.signing_key.serialize_der(),
        ));
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tasks = Arc::new(Mutex::new(JoinSet::new()));
        let connections = Arc::clone(&tasks);
        tasks.lock().spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let handler = handler.clone();
                connections.lock().spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |request| {
                        let answer = handler(request);
                        async move { Ok::<_, Infallible>(answer.await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        TlsServer {
            addr,
            ca,
            _dir: dir,
            tasks,
        }
    }

    /// `https://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    /// Close the listener and every open connection: from now on,
    /// connections are refused.
    pub fn stop(&self) {
        self.tasks.lock().abort_all();
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.stop();
    }
}
