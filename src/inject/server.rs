//! The admission webhook's HTTPS server: rustls (ring) with a certificate
//! that is re-read when its files change (a cert-manager renewal arrives as a
//! Secret symlink swap), HTTP/1.1 and HTTP/2 by ALPN, bounded bodies and
//! timeouts well inside the API server's own.
//!
//! Routes: `POST /inject/opt-in` (pods annotated `licensegate.io/inject:
//! enabled`), `POST /inject/opt-out` (pods in opted-in namespaces, unless
//! annotated `disabled`), `GET /healthz` and `GET /readyz`.

use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use parking_lot::Mutex;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::review::{Injector, Verdict, MAX_REVIEW_BYTES};
use super::sidecar::Scope;

/// Time for a TLS handshake, a request head, or a request body. The API
/// server waits `timeoutSeconds` (10 s at most) for the whole call.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more wait in the accept backlog.
const MAX_CONNECTIONS: usize = 1024;
/// In-flight reviews get this long after SIGTERM before the process exits.
const DRAIN: Duration = Duration::from_secs(5);

/// The webhook's settings.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// How often the certificate files are checked for changes.
    pub reload_interval: Duration,
    pub injector: Injector,
}

/// A serving certificate that can be replaced while connections come in.
pub struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: ArcSwap<CertifiedKey>,
    /// The file contents behind `current`, to notice changes cheaply.
    loaded: Mutex<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("cert", &self.cert_path)
            .field("key", &self.key_path)
            .finish_non_exhaustive()
    }
}

impl ReloadingCert {
    /// Load the certificate chain and key; both must be valid and match.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<ReloadingCert, String> {
        let (cert_pem, key_pem) = read_pair(cert_path, key_path)?;
        let certified = certified_key(cert_path, &cert_pem, key_path, &key_pem)?;
        Ok(ReloadingCert {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            current: ArcSwap::from_pointee(certified),
            loaded: Mutex::new((cert_pem, key_pem)),
        })
    }

    /// Re-read the files; swap in a changed, valid pair. A broken or
    /// half-written pair keeps the current certificate.
    pub fn reload(&self) -> Result<bool, String> {
        let (cert_pem, key_pem) = read_pair(&self.cert_path, &self.key_path)?;
        let mut loaded = self.loaded.lock();
        if loaded.0 == cert_pem && loaded.1 == key_pem {
            return Ok(false);
        }
        let certified = certified_key(&self.cert_path, &cert_pem, &self.key_path, &key_pem)?;
        self.current.store(Arc::new(certified));
        *loaded = (cert_pem, key_pem);
        Ok(true)
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn read_pair(cert: &Path, key: &Path) -> Result<(Vec<u8>, Vec<u8>), String> {
    let read = |path: &Path| std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()));
    Ok((read(cert)?, read(key)?))
}

fn certified_key(
    cert_path: &Path,
    cert_pem: &[u8],
    key_path: &Path,
    key_pem: &[u8],
) -> Result<CertifiedKey, String> {
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", cert_path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no PEM CERTIFICATE block found",
            cert_path.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
        format!(
            "{}: {e} (expected a PKCS#8, PKCS#1 or SEC1 PEM private key)",
            key_path.display()
        )
    })?;
    CertifiedKey::from_der(certs, key, &rustls::crypto::ring::default_provider()).map_err(|e| {
        format!(
            "{} and {} do not make a usable pair: {e}",
            cert_path.display(),
            key_path.display()
        )
    })
}

/// Why the webhook could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("webhook certificate: {0}")]
    Certificate(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl ServeError {
    /// Process exit status, as for `licensegate run`.
    pub fn exit_code(&self) -> i32 {
        match self {
            ServeError::Certificate(_) => crate::exit::CONFIG,
            ServeError::Bind { .. } => crate::exit::OS_ERROR,
        }
    }
}

/// A bound webhook, ready to serve.
pub struct Webhook {
    listener: TcpListener,
    local_addr: SocketAddr,
    tls: tokio_rustls::TlsAcceptor,
    cert: Arc<ReloadingCert>,
    settings: ServeSettings,
}

impl Webhook {
    /// Load the certificate and bind the port (inside a Tokio runtime).
    pub async fn bind(settings: ServeSettings) -> Result<Webhook, ServeError> {
        let cert = Arc::new(
            ReloadingCert::load(&settings.cert, &settings.key).map_err(ServeError::Certificate)?,
        );
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| ServeError::Certificate(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(cert.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let bind_error = |source| ServeError::Bind {
            addr: settings.listen,
            source,
        };
        let listener = TcpListener::bind(settings.listen)
            .await
            .map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        Ok(Webhook {
            listener,
            local_addr,
            tls: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            cert,
            settings,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serve until `shutdown` resolves, then give in-flight reviews a
    /// moment to finish.
    pub async fn serve(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::spawn(watch_certificate(
            self.cert.clone(),
            self.settings.reload_interval,
        ));
        let injector = Arc::new(self.settings.injector);
        let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                permit = limit.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
                () = &mut shutdown => break,
            };
            let (tcp, peer) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "webhook accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let tls = self.tls.clone();
            let injector = injector.clone();
            let watcher = graceful.watcher();
            tokio::spawn(async move {
                let _permit = permit;
                let stream = match tokio::time::timeout(IO_TIMEOUT, tls.accept(tcp)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(error)) => {
                        tracing::debug!(%peer, %error, "webhook TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "webhook TLS handshake timed out");
                        return;
                    }
                };
                let mut builder =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                builder
                    .http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(IO_TIMEOUT);
                builder
                    .http2()
                    .timer(TokioTimer::new())
                    .max_concurrent_streams(64)
                    .keep_alive_interval(Duration::from_secs(30));
                let service = service_fn(move |request| {
                    let injector = injector.clone();
                    async move { Ok::<_, Infallible>(handle(&injector, request).await) }
                });
                let connection = builder.serve_connection(TokioIo::new(stream), service);
                if let Err(error) = watcher.watch(connection).await {
                    tracing::debug!(%peer, %error, "webhook connection ended with an error");
                }
            });
        }
        drop(self.listener);
        tracing::info!("webhook stopped accepting; finishing in-flight reviews");
        if tokio::time::timeout(DRAIN, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("in-flight reviews did not finish within {DRAIN:?}");
        }
    }
}

/// Check the certificate files every `interval`; a renewal takes effect
/// for new connections without a restart.
async fn watch_certificate(cert: Arc<ReloadingCert>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let cert = cert.clone();
        match tokio::task::spawn_blocking(move || cert.reload()).await {
            Ok(Ok(true)) => tracing::info!("webhook certificate reloaded"),
            Ok(Ok(false)) => {}
            Ok(Err(error)) => {
                tracing::warn!(%error, "webhook certificate not reloaded; keeping the current one")
            }
            Err(error) => tracing::warn!(%error, "webhook certificate check failed"),
        }
    }
}

async fn handle(injector: &Injector, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let scope = match (request.method(), request.uri().path()) {
        (&Method::POST, "/inject/opt-in") => Scope::OptIn,
        (&Method::POST, "/inject/opt-out") => Scope::OptOut,
        (&Method::GET | &Method::HEAD, "/healthz" | "/readyz") => {
            return text(StatusCode::OK, "ok\n".into())
        }
        (_, "/inject/opt-in" | "/inject/opt-out" | "/healthz" | "/readyz") => {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed\n".into(),
            )
        }
        _ => {
            return text(
                StatusCode::NOT_FOUND,
                "not found; reviews go to POST /inject/opt-in or /inject/opt-out\n".into(),
            )
        }
    };
    let body = match tokio::time::timeout(IO_TIMEOUT, read_review(request.into_body())).await {
        Ok(Ok(body)) => body,
        Ok(Err(ReadError::TooLarge)) => {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the review is larger than {MAX_REVIEW_BYTES} bytes\n"),
            );
        }
        Ok(Err(ReadError::Body(error))) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("cannot read the review: {error}\n"),
            );
        }
        Err(_) => {
            return text(
                StatusCode::REQUEST_TIMEOUT,
                "the review body did not arrive in time\n".into(),
            )
        }
    };
    match injector.review(&body, scope) {
        Ok(answer) => {
            match answer.verdict {
                Verdict::Injected => tracing::info!("{}", answer.summary),
                Verdict::LeftAlone => tracing::debug!("{}", answer.summary),
                Verdict::Failed => tracing::warn!("{}", answer.summary),
            }
            let body = serde_json::to_vec(&answer.review).expect("reviews serialise");
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        Err(error) => {
            tracing::warn!(%error, "malformed admission review");
            text(StatusCode::BAD_REQUEST, format!("{error}\n"))
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// How much of an oversized review is read and discarded before the 413:
/// answering while the client still sends makes the closing socket reset the
/// connection, and the client may lose the answer with the rest of its write.
const DRAIN_OVERSIZED_BYTES: usize = 4 * MAX_REVIEW_BYTES;

enum ReadError {
    TooLarge,
    Body(hyper::Error),
}

/// The review body, at most `MAX_REVIEW_BYTES`; an oversized one is drained
/// up to `DRAIN_OVERSIZED_BYTES` so its sender reads the 413.
async fn read_review(mut body: Incoming) -> Result<Bytes, ReadError> {
    let mut review = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(ReadError::Body)?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen += data.len();
        if seen > DRAIN_OVERSIZED_BYTES {
            break;
        }
        if seen <= MAX_REVIEW_BYTES {
            review.extend_from_slice(&data);
        }
    }
    if seen > MAX_REVIEW_BYTES {
        return Err(ReadError::TooLarge);
    }
    Ok(Bytes::from(review))
}
