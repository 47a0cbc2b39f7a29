//! The admin port: `/metrics`, `/healthz`, `/readyz`, `/license`, `/usage`,
//! `/users`
//! and a loopback-only `POST /shutdown`; under `licensegate dev` also
//! `/dev/license` (the plan switch, loopback-only for changes). Kept apart
//! from the proxy port so probes and scrapes never compete with, or leak
//! into, workload traffic.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::decision::usage::{is_license_id, MeterUsage, UsageReport, UsageRequest};
use crate::decision::usage::{rfc3339, MAX_LICENSE_ID};
use crate::dev::{DevControl, PlanChange, SwitchError};
use crate::license::LicenseGate;
use crate::lifecycle::Lifecycle;
use crate::limits::instances::InstanceSlot;
use crate::metering::Metering;
use crate::metrics::Registry;
use crate::proxy::server::{bind_listener, BindError};
use crate::user::source::JwksBoard;

/// The admin endpoints' shared state.
#[derive(Debug)]
pub struct Admin {
    pub lifecycle: Arc<Lifecycle>,
    pub metrics: Registry,
    pub license: Option<Arc<LicenseGate>>,
    /// The dev license (`licensegate dev` only): `/dev/license` is 404
    /// without it.
    pub dev: Option<Arc<DevControl>>,
    /// Reads the limit counters for `/usage` (404 without).
    pub usage: Option<UsageReader>,
    /// This replica's meter totals, shown by `/usage` when metering runs.
    pub metering: Option<Metering>,
    /// The identity providers' key status, shown by `/users`.
    pub users: Option<JwksBoard>,
    /// This replica's instance slot, shown by `/license`.
    pub instances: Option<Arc<InstanceSlot>>,
}

/// How `/usage` reads the limit counters: the composition root closes it
/// over the decision engine, which the admin port does not own.
pub struct UsageReader(Box<dyn Fn(UsageRequest) -> BoxFuture<'static, UsageReport> + Send + Sync>);

impl UsageReader {
    pub fn new(
        read: impl Fn(UsageRequest) -> BoxFuture<'static, UsageReport> + Send + Sync + 'static,
    ) -> UsageReader {
        UsageReader(Box::new(read))
    }
}

impl std::fmt::Debug for UsageReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UsageReader")
    }
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
            (_, &Method::GET | &Method::HEAD, "/usage") => self.usage(&request).await,
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

    /// `GET /usage[?license=ID]`: what one license, or every license with
    /// usage on this replica (at most [`crate::decision::usage::MAX_LICENSES`]),
    /// has used of its limits this period, and of its meters this month.
    /// Per-customer data: refused to web pages (see [`from_web_page`]) and
    /// never cached.
    async fn usage(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        if let Some(mark) = from_web_page(request.headers()) {
            return problem(
                StatusCode::FORBIDDEN,
                format!(
                    "per-license usage is not served to web pages (the request carries {mark}); \
                     read it with curl or `licensegate usage`"
                ),
            );
        }
        let license = match usage_query(request.uri().query()) {
            Ok(license) => license,
            Err(detail) => return problem(StatusCode::BAD_REQUEST, detail),
        };
        let Some(UsageReader(read)) = &self.usage else {
            return text(StatusCode::NOT_FOUND, "no usage on this port\n");
        };
        let also = match (&self.metering, &license) {
            (Some(metering), None) => metering.month_to_date_licenses(),
            (Some(metering), Some(id)) if !metering.month_to_date(id).0.is_empty() => {
                vec![id.clone()]
            }
            _ => Vec::new(),
        };
        let mut report = read(UsageRequest { license, also }).await;
        if let Some(metering) = &self.metering {
            for entry in &mut report.licenses {
                let (totals, since_ms) = metering.month_to_date(&entry.license);
                let since = rfc3339(since_ms / 1000);
                entry.meters = totals
                    .into_iter()
                    .map(|(meter, used)| MeterUsage {
                        meter,
                        used,
                        since: since.clone(),
                    })
                    .collect();
            }
        }
        let mut response = json(StatusCode::OK, &report);
        let headers = response.headers_mut();
        headers.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        );
        headers.insert(
            http::header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        response
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
                Some(gate) => {
                    let mut status = gate.status();
                    if let Some(slot) = &self.instances {
                        status["instances"] = serde_json::json!(slot.status());
                    }
                    json(StatusCode::OK, &status)
                }
                None => json(
                    StatusCode::OK,
                    &serde_json::json!({ "enforced": false, "detail": "no license section configured" }),
                ),
            },
            (&Method::GET | &Method::HEAD, "/users") => match &self.users {
                Some(board) => json(
                    StatusCode::OK,
                    &serde_json::json!({ "verified": true, "issuers": board.to_json() }),
                ),
                None => json(
                    StatusCode::OK,
                    &serde_json::json!({ "verified": false, "detail": "no users section configured" }),
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
                "/metrics" | "/healthz" | "/live" | "/readyz" | "/ready" | "/license" | "/usage"
                | "/users" | "/shutdown",
            ) => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
            _ => text(
                StatusCode::NOT_FOUND,
                "not found; try /metrics, /healthz, /readyz, /license, /usage, /users or POST /shutdown\n",
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

/// Whether a read comes from a web page, and the header that says so. A
/// page open in a browser on this machine (or in the cluster) can make the
/// browser fetch from the admin port: cross-origin, or same-origin once its
/// DNS name is rebound to the admin address. Browsers mark the first with
/// `Origin`, and every request with `Sec-Fetch-Site` (`same-origin` too,
/// which no page served here can be, since the admin port serves none);
/// `none` is a person typing the address, which is no page's doing. curl,
/// the CLI, probes and Prometheus send neither header.
fn from_web_page(headers: &http::HeaderMap) -> Option<&'static str> {
    if headers.contains_key(http::header::ORIGIN) {
        return Some("an `Origin` header");
    }
    match headers.get("sec-fetch-site") {
        Some(site) if site.as_bytes() != b"none" => Some("`Sec-Fetch-Site` from a page"),
        _ => None,
    }
}

/// The `license` of a `/usage` query, checked.
fn usage_query(query: Option<&str>) -> Result<Option<String>, String> {
    let mut license = None;
    for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if name != "license" {
            return Err(format!(
                "unknown query parameter `{name}`; /usage takes `license=ID` or nothing"
            ));
        }
        if license.is_some() {
            return Err("`license` is given more than once; ask for one license".to_owned());
        }
        if !is_license_id(&value) {
            return Err(format!(
                "{:?} is not a license id: 1 to {MAX_LICENSE_ID} bytes, without control \
                 characters or braces",
                value.chars().take(64).collect::<String>()
            ));
        }
        license = Some(value.into_owned());
    }
    Ok(license)
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
