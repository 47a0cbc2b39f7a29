//! The inbound side: accept connections, decide each request, forward or reject.

pub mod forward;
mod io;
pub mod server;
pub mod tls;
mod upstream;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::decision::{Decision, DecisionEngine, Reason};
use crate::metrics::{Metrics, Outcome, UpstreamErrorKind};
use crate::problem;
use forward::{ConnContext, Forwarder};

/// Response bodies: the upstream's, streamed, or one the proxy wrote.
pub type ProxyBody = Either<Incoming, Full<Bytes>>;

/// What every connection of the proxy shares.
#[derive(Debug)]
pub struct Shared {
    pub engine: DecisionEngine,
    pub forwarder: Forwarder,
    pub metrics: Arc<Metrics>,
}

/// One request, from head to response head: decide, then forward or reject.
pub async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnContext>,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let started = Instant::now();
    let (head, body) = request.into_parts();
    let response = match shared.engine.decide(&head, &conn.peer).await {
        Decision::Deny(denial) => {
            shared.metrics.request(Outcome::Deny, denial.reason);
            problem::render(*denial).map(Either::Right)
        }
        Decision::Allow => match shared.forwarder.forward(head, body, &conn).await {
            Ok(response) => {
                shared.metrics.request(Outcome::Allow, Reason::Allowed);
                response.map(Either::Left)
            }
            Err(error) => {
                shared.metrics.upstream_error(error.kind);
                let (status, reason) = match error.kind {
                    UpstreamErrorKind::Timeout => {
                        (StatusCode::GATEWAY_TIMEOUT, Reason::UpstreamTimeout)
                    }
                    UpstreamErrorKind::Connect | UpstreamErrorKind::Protocol => {
                        (StatusCode::BAD_GATEWAY, Reason::UpstreamUnavailable)
                    }
                };
                tracing::warn!(kind = error.kind.as_str(), detail = %error.detail, "upstream request failed");
                shared.metrics.request(Outcome::Error, reason);
                problem::error(status, reason, error.detail).map(Either::Right)
            }
        },
    };
    shared
        .metrics
        .request_duration
        .observe(started.elapsed().as_secs_f64());
    Ok(response)
}
