//! The admin port: `/metrics`, `/healthz`, `/readyz` and a loopback-only
//! `POST /shutdown`; under `licensegate dev` also `/dev/license` (the plan
//! switch, loopback-only for changes). Kept apart from the proxy port so
//! probes and scrapes never compete with, or leak into, workload traffic.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::dev::{DevControl, PlanChange, SwitchError};
use crate::license::LicenseGate;
use crate::lifecycle::Lifecycle;
use crate::metrics::Registry;
use crate::proxy::server::{bind_listener, BindError};

/// The admin endpoints' shared state.
#[derive(Debug)]
pub struct Admin {
    pub lifecycle: Arc<Lifecycle>,
    pub metrics: Registry,
    pub license: Option<Arc<LicenseGate>>,
    /// The dev license (`licensegate dev` only): `/dev/license` is 404
    /// without it.
    pub dev: Option<Arc<DevControl>>,
}

/// The largest `POST /dev/license` body read: a plan and a feature list.
const MAX_DEV_BODY: usize = 64 * 1024;

pub struct AdminServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    admin: Arc<Admin>,
}

impl AdminServer {
    pub fn bind(addr: SocketAddr, admin: Arc<Admin>) -> Result<AdminServer, BindError> {
        let io_error = |source| BindError::Io {
            what: "admin",
            addr,
            source,
        };
        let listener = bind_listener(addr).map_err(io_error)?;
        let local_addr = listener.local_addr().map_err(io_error)?;
        Ok(AdminServer {
            listener,
            local_addr,
            admin,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serve until the task is dropped; the admin port stays up while the
    /// proxy drains so probes can watch it happen.
    pub async fn serve(self) {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(std::time::Duration::from_secs(5));
        loop {
            let (stream, peer) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
            };
            let admin = Arc::clone(&self.admin);
            let connection = builder.serve_connection(
                TokioIo::new(stream),
                service_fn(move |request| {
                    let admin = Arc::clone(&admin);
                    async move { Ok::<_, Infallible>(admin.handle(peer, request).await) }
                }),
            );
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "admin connection ended with an error");
                }
            });
        }
    }
}

impl Admin {
    async fn handle(&self, peer: SocketAddr, request: Request<Incoming>) -> Response<Full<Bytes>> {
        match (&self.dev, request.method(), request.uri().path()) {
            (Some(dev), &Method::POST, "/dev/license") => {
                self.switch_dev_license(dev, peer, request).await
            }
            (Some(dev), &Method::GET | &Method::HEAD, "/dev/license") => {
                json(StatusCode::OK, &dev.status())
            }
            (Some(_), _, "/dev/license") => {
                text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
            }
            _ => self.route(peer, &request),
        }
    }

    /// `POST /dev/license`: re-sign the dev license with another plan or
    /// features and put it in force before answering.
    async fn switch_dev_license(
        &self,
        dev: &DevControl,
        peer: SocketAddr,
        request: Request<Incoming>,
    ) -> Response<Full<Bytes>> {
        if let Err(refusal) = from_local_tool(peer, request.headers()) {
            return problem(
                StatusCode::FORBIDDEN,
                format!("the dev license is only switched {refusal}"),
            );
        }
        let body = match Limited::new(request.into_body(), MAX_DEV_BODY)
            .collect()
            .await
        {
            Ok(body) => body.to_bytes(),
            Err(error) => {
                return problem(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the body (at most {MAX_DEV_BODY} bytes): {error}"),
                )
            }
        };
        // An empty body changes nothing and renews the license.
        let change = if body.trim_ascii().is_empty() {
            PlanChange::default()
        } else {
            match serde_json::from_slice::<PlanChange>(&body) {
                Ok(change) => change,
                Err(error) => {
                    return problem(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "the body must be JSON like {{\"plan\": \"free\", \"features\": [\"a\", \"b\"]}} \
                             (both optional): {error}"
                        ),
                    )
                }
            }
        };
        match dev.switch(change) {
            Ok(status) => json(StatusCode::OK, &status),
            Err(error) => {
                let status = match &error {
                    SwitchError::Invalid(_) => StatusCode::BAD_REQUEST,
                    SwitchError::NotSwitchable(_) => StatusCode::CONFLICT,
                    SwitchError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
                };
                problem(status, error.to_string())
            }
        }
    }

    fn route(&self, peer: SocketAddr, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        match (request.method(), request.uri().path()) {
            (&Method::GET | &Method::HEAD, "/metrics") => {
                let mut response = Response::new(Full::new(Bytes::from(self.metrics.render())));
                response.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                response
            }
            (&Method::GET | &Method::HEAD, "/healthz" | "/live") => text(StatusCode::OK, "ok\n"),
            (&Method::GET | &Method::HEAD, "/readyz" | "/ready") => {
                let report = self.lifecycle.report();
                let status = if report.ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                json(status, &report)
            }
            (&Method::GET | &Method::HEAD, "/license") => match &self.license {
                Some(gate) => json(StatusCode::OK, &gate.status()),
                None => json(
                    StatusCode::OK,
                    &serde_json::json!({ "enforced": false, "detail": "no license section configured" }),
                ),
            },
            (&Method::POST, "/shutdown") => {
                if let Err(refusal) = from_local_tool(peer, request.headers()) {
                    tracing::warn!(%peer, "shutdown refused: {refusal}");
                    return text(
                        StatusCode::FORBIDDEN,
                        "shutdown is only accepted from loopback, and not from a browser\n",
                    );
                }
                tracing::info!(%peer, "shutdown requested on the admin port");
                self.lifecycle.drain();
                text(StatusCode::ACCEPTED, "draining\n")
            }
            (
                _,
                "/metrics" | "/healthz" | "/live" | "/readyz" | "/ready" | "/license" | "/shutdown",
            ) => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
            _ => text(
                StatusCode::NOT_FOUND,
                "not found; try /metrics, /healthz, /readyz, /license or POST /shutdown\n",
            ),
        }
    }
}

/// Whether a state-changing admin request comes from a tool on this host.
/// Loopback alone is not enough: a web page open in a browser on the same
/// machine can POST to 127.0.0.1 (or reach it by DNS rebinding). Browsers
/// mark every such request with `Origin` (and `Sec-Fetch-Site`); `curl`, the
/// CLI and probes send neither.
fn from_local_tool(peer: SocketAddr, headers: &http::HeaderMap) -> Result<(), &'static str> {
    // On a dual-stack listener an IPv4 client is `::ffff:127.0.0.1`.
    if !peer.ip().to_canonical().is_loopback() {
        return Err("from loopback");
    }
    if headers.contains_key(http::header::ORIGIN) || headers.contains_key("sec-fetch-site") {
        return Err("from a local tool, not from a web page");
    }
    Ok(())
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// An RFC 9457 problem without a licensing reason: admin requests are not
/// policy decisions.
fn problem(status: StatusCode, detail: String) -> Response<Full<Bytes>> {
    let body = serde_json::json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
    });
    let mut response = json(status, &body);
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(crate::problem::CONTENT_TYPE_PROBLEM),
    );
    response
}

fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_vec_pretty(value).expect("admin reports serialise");
    body.push(b'\n');
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
