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

use crate::decision::{Decision, DecisionEngine, Denial, Reason};
use crate::metrics::{Metrics, Outcome, UpstreamErrorKind};
use crate::policy::normalize::normalize_target;
use crate::problem;
use forward::{ConnContext, Forwarder, UpstreamError};
use io::{InFlight, InFlightBody};

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
/// The response body keeps `in_flight` until it has been sent.
///
/// Forwarding is inlined here (prepare, send, finish) rather than behind
/// another async fn: each async layer moved the request and the futures
/// once more per request (memcpy, measured with callgrind).
pub async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnContext>,
    request: Request<Incoming>,
    in_flight: InFlight,
) -> Result<Response<InFlightBody<ProxyBody>>, Infallible> {
    let started = Instant::now();
    let (mut head, body) = request.into_parts();
    // Normalised once: the path decided on is the path the upstream gets.
    let decision = match normalize_target(&mut head) {
        Ok(()) => shared.engine.decide(&head, &conn.peer).await,
        Err(error) => Decision::Deny(Box::new(Denial::new(
            StatusCode::BAD_REQUEST,
            Reason::PathRejected,
            error.to_string(),
        ))),
    };
    let response = match decision {
        Decision::Deny(denial) => {
            shared.metrics.request(Outcome::Deny, denial.reason);
            problem::render(*denial).map(Either::Right)
        }
        Decision::Allow => {
            let forwarder = &shared.forwarder;
            let result = match forwarder.prepare(&mut head, &conn) {
                Ok(outbound) => {
                    let request = Request::from_parts(head, body);
                    let sent = match outbound.lease {
                        Some(lease) => lease.send(request, outbound.keep_connection).await,
                        None => forwarder.send_pooled(request).await,
                    };
                    sent.map(|response| forwarder.finish(response, outbound.upgrade))
                }
                Err(error) => Err(error),
            };
            match result {
                Ok(response) => {
                    shared.metrics.request(Outcome::Allow, Reason::Allowed);
                    response.map(Either::Left)
                }
                Err(error) => upstream_failed(&shared, error),
            }
        }
    };
    shared
        .metrics
        .request_duration
        .observe(started.elapsed().as_secs_f64());
    Ok(response.map(|body| InFlightBody::new(body, in_flight)))
}

/// The problem response for a request the upstream did not answer.
#[cold]
fn upstream_failed(shared: &Shared, error: UpstreamError) -> Response<ProxyBody> {
    shared.metrics.upstream_error(error.kind);
    let (status, reason) = match error.kind {
        UpstreamErrorKind::Timeout => (StatusCode::GATEWAY_TIMEOUT, Reason::UpstreamTimeout),
        UpstreamErrorKind::Connect | UpstreamErrorKind::Protocol => {
            (StatusCode::BAD_GATEWAY, Reason::UpstreamUnavailable)
        }
    };
    tracing::warn!(kind = error.kind.as_str(), detail = %error.detail, "upstream request failed");
    shared.metrics.request(Outcome::Error, reason);
    problem::error(status, reason, error.detail).map(Either::Right)
}
