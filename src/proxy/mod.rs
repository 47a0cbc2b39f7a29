//! The inbound side: accept connections, decide each request, forward or reject.

mod budget;
mod conn;
mod error;
pub mod forward;
pub mod h1;
mod idle;
mod io;
mod metrics;
mod relay;
mod request_body;
pub mod server;
pub mod settings;
mod settle;
mod tunnel;
mod upstream;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::{Body as _, Incoming};

use crate::decision::{BodyState, Decision, DecisionEngine, Denial, Hint, Reason};
use crate::policy::normalize::{check_request_head, normalize_target, HeadError};
use crate::problem::{self, Format};
use conn::ConnContext;
use error::UpstreamError;
use forward::{Forwarder, Via};
use io::{InFlight, InFlightBody};
pub use metrics::{Outcome, ProxyMetrics, UpstreamErrorKind};
use request_body::RequestBody;
pub use settings::ProxySettings;
use settle::{strip_usage_headers, Settlement};

/// Response bodies: the upstream's, streamed, or one the proxy wrote.
pub type ProxyBody = Either<Incoming, Full<Bytes>>;

/// What every connection of the proxy shares.
#[derive(Debug)]
pub struct Shared {
    pub engine: DecisionEngine,
    pub forwarder: Forwarder,
    pub metrics: Arc<ProxyMetrics>,
    /// Where served requests' meters are recorded, when metering is on.
    pub metering: Option<crate::metering::Metering>,
}

/// One request, from head to response head: decide, then forward or reject.
/// The response body keeps `in_flight` until it has been sent, and settles
/// the request's quota tickets and meters when it ends (see `settle.rs`).
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
    // Normalised once: the host and path decided on are what the upstream gets.
    let mut websocket = None;
    // HTTP/1: no body framing in the head; HTTP/2: the stream ended with
    // the headers. Tells a CORS preflight from an OPTIONS with a body.
    let body_state = if body.is_end_stream() {
        BodyState::Empty
    } else {
        BodyState::Follows
    };
    let decision = decide(&shared, &conn, &mut head, body_state, &mut websocket).await;
    let mut permits = Vec::new();
    let mut stream_lease = None;
    let mut settlement = None;
    let response = match decision {
        Decision::Deny(denial) => {
            shared.metrics.request(Outcome::Deny, denial.reason);
            let format = problem::format_for(&head.method, &head.headers);
            problem::render(*denial, format).map(Either::Right)
        }
        Decision::Allow(mut allowed) => {
            let reason = if allowed.preflight {
                Reason::CorsPreflight
            } else {
                Reason::Allowed
            };
            let forwarder = &shared.forwarder;
            // Only a route that allows it opens a tunnel (a shadow-mode
            // refusal is forwarded as a plain request, upgrade stripped).
            let websocket = websocket.filter(|_| allowed.websocket);
            // Held by this future until the response head: dropped with it
            // (the client went away), it gives the quota units back.
            settlement = Settlement::new(
                std::mem::take(&mut allowed.tickets),
                allowed.metered.take(),
                shared.metering.as_ref(),
            );
            let result = match forwarder.prepare(&mut head, &conn, websocket) {
                Ok(outbound) => {
                    admit(&shared, &mut head.headers, &allowed);
                    permits = std::mem::take(&mut allowed.permits);
                    let asked = outbound.asked;
                    let counted = settlement.as_ref().and_then(Settlement::request_counter);
                    let request = Request::from_parts(head, RequestBody::new(body, counted));
                    let sent = match outbound.via {
                        Via::Held(lease) => lease.send(request, outbound.keep_connection).await,
                        Via::Stream(lease) => {
                            let sent = lease.send(request, outbound.keep_connection).await;
                            stream_lease = Some(lease.into());
                            sent
                        }
                        Via::Pooled => {
                            forwarder
                                .send_pooled(request)
                                .await
                                .map(|(response, slot)| {
                                    stream_lease = Some(slot.into());
                                    response
                                })
                        }
                    };
                    sent.and_then(|response| {
                        forwarder.finish(response, outbound.upgrade, &conn, &mut permits)
                    })
                    .map_err(|error| (error, asked.format()))
                }
                Err(error) => Err((error, problem::format_for(&head.method, &head.headers))),
            };
            match result {
                Ok(mut response) => {
                    let status = response.status();
                    answered(
                        &shared,
                        &allowed,
                        reason,
                        &mut settlement,
                        status,
                        response.headers_mut(),
                    );
                    response.map(Either::Left)
                }
                Err((error, format)) => {
                    let (response, status) =
                        upstream_failed(&shared, error, format, allowed.route.take());
                    // The failure's HTTP status, not the response's: a gRPC
                    // answer is a 200 whatever happened.
                    if let Some(settlement) = &mut settlement {
                        settlement.answered_here(status);
                    }
                    response.map(Either::Right)
                }
            }
        }
    };
    shared
        .metrics
        .request_duration
        .observe(started.elapsed().as_secs_f64());
    Ok(response.map(|body| InFlightBody::new(body, in_flight, permits, stream_lease, settlement)))
}

pub use crate::decision::SHADOW_DENY_HEADER;

/// The request phase both HTTP/1 engines and HTTP/2 share: refuse heads
/// that cannot be decided safely, else decide. `websocket` is set to a
/// well-formed handshake.
async fn decide(
    shared: &Shared,
    conn: &ConnContext,
    head: &mut http::request::Parts,
    body: BodyState,
    websocket: &mut Option<tunnel::WebSocketHandshake>,
) -> Decision {
    match check_head(head, websocket) {
        Ok(()) => shared.engine.decide(head, &conn.peer, body).await,
        Err(denial) => shared.engine.refuse_unmatched(denial, head, &conn.peer),
    }
}

/// An allowed request's headers as the upstream gets them: the verified
/// entitlements and user, never what the client claimed.
fn admit(shared: &Shared, headers: &mut http::HeaderMap, allowed: &crate::decision::Allowed) {
    set_entitlement_headers(
        headers,
        shared.engine.license_header_names(),
        shared.engine.license_token_header(),
        allowed,
    );
    if let Some(users) = shared.engine.users() {
        set_user_headers(headers, users.settings(), allowed);
    }
}

/// The upstream answered an allowed request: count it, read the usage
/// headers for its settlement, and fix up the head the client gets.
fn answered(
    shared: &Shared,
    allowed: &crate::decision::Allowed,
    reason: Reason,
    settlement: &mut Option<Settlement>,
    status: StatusCode,
    headers: &mut http::HeaderMap,
) {
    shared.metrics.request(Outcome::Allow, reason);
    if let Some(settlement) = settlement {
        settlement.responded(status, headers);
    }
    if let Some(names) = &allowed.usage_headers {
        strip_usage_headers(headers, names);
    }
    if !allowed.budgets.is_empty() {
        add_budget_headers(headers, &allowed.budgets);
    }
}

/// Replace whatever the client sent under the entitlement header names with
/// the verified values, so the upstream can trust them, and remove the
/// license token header (`token_header`), so the workload never holds a
/// token it could log or replay.
fn set_entitlement_headers(
    headers: &mut http::HeaderMap,
    names: &crate::decision::LicenseHeaderNames,
    token_header: Option<&http::HeaderName>,
    allowed: &crate::decision::Allowed,
) {
    if let Some(name) = token_header {
        headers.remove(name);
    }
    // Clients rarely send these: one pass over the names instead of four
    // hashed removals (callgrind).
    let sent_by_client = headers.keys().any(|name| {
        name == names.id
            || name == names.plan
            || name == names.features
            || name == SHADOW_DENY_HEADER
    });
    if sent_by_client {
        headers.remove(&names.id);
        headers.remove(&names.plan);
        headers.remove(&names.features);
        headers.remove(SHADOW_DENY_HEADER);
    }
    if let Some(license) = &allowed.license {
        for (name, value) in [
            (&names.id, &license.id),
            (&names.plan, &license.plan),
            (&names.features, &license.features),
        ] {
            if let Some(value) = value {
                headers.insert(name.clone(), value.clone());
            }
        }
    }
    if let Some(reason) = allowed.shadow {
        headers.insert(
            http::HeaderName::from_static(SHADOW_DENY_HEADER),
            http::HeaderValue::from_static(reason.as_str()),
        );
    }
    // (A client's own `x-licensegate-*` headers were removed before.)
    if !allowed.overage.is_empty() {
        let names: Vec<&str> = allowed.overage.iter().map(|o| &*o.limit).collect();
        // Limit names are letters, digits, `_`, `-` and `.`: a valid value.
        if let Ok(value) = http::HeaderValue::from_str(&names.join(", ")) {
            headers.insert(
                http::HeaderName::from_static(crate::decision::OVERAGE_HEADER),
                value,
            );
        }
    }
}

/// Replace whatever the client sent under the user header names with the
/// verified user's subject and licensed roles, and remove the user token
/// when `users.forward.token` is off. A request without a verified user
/// reaches the workload with neither header.
fn set_user_headers(
    headers: &mut http::HeaderMap,
    users: &crate::user::UserSettings,
    allowed: &crate::decision::Allowed,
) {
    let forward = &users.forward;
    headers.remove(&forward.id);
    headers.remove(&forward.roles);
    if !forward.token {
        users.token.remove(headers);
    }
    if let Some(forwarded) = &allowed.user {
        if let Some(id) = &forwarded.user.subject_value {
            headers.insert(forward.id.clone(), id.clone());
        }
        if let Some(roles) = &forwarded.roles {
            headers.insert(forward.roles.clone(), roles.clone());
        }
    }
}

static RATELIMIT_POLICY: http::HeaderName = http::HeaderName::from_static("ratelimit-policy");
static RATELIMIT: http::HeaderName = http::HeaderName::from_static("ratelimit");

/// State what the request left of its rates and quotas on the response
/// (IETF draft-ietf-httpapi-ratelimit-headers): `RateLimit-Policy:
/// "NAME";q=LIMIT;w=WINDOW` and `RateLimit: "NAME";r=REMAINING;t=RESET`,
/// one list member per limit. Both fields are Structured Field lists, and
/// a list's field lines combine into one list (RFC 9110 §5.3, RFC 8941
/// §3.1): the upstream's own members, if it sent any, are kept and ours
/// are appended as further field lines.
fn add_budget_headers(headers: &mut http::HeaderMap, budgets: &crate::limits::Budgets) {
    // Every response of a budgeted route comes here: one buffer per field,
    // moved into the header value without a copy.
    let (mut policy, mut state) = (String::with_capacity(48), String::with_capacity(48));
    for (n, budget) in budgets.iter().enumerate() {
        if n > 0 {
            policy.push_str(", ");
            state.push_str(", ");
        }
        budget.write_policy_member(&mut policy);
        budget.write_state_member(&mut state);
    }
    if policy.is_empty() {
        return;
    }
    let value = |text: String| http::HeaderValue::from_maybe_shared(bytes::Bytes::from(text)).ok();
    if let (Some(policy), Some(state)) = (value(policy), value(state)) {
        headers.append(RATELIMIT_POLICY.clone(), policy);
        headers.append(RATELIMIT.clone(), state);
    }
}

/// Refuse heads that cannot be decided safely: CONNECT, several `Host`
/// headers, hosts read differently by different parsers, paths with
/// ambiguous encodings, malformed WebSocket handshakes. `websocket` is set
/// to a well-formed handshake.
fn check_head(
    head: &mut http::request::Parts,
    websocket: &mut Option<tunnel::WebSocketHandshake>,
) -> Result<(), Box<Denial>> {
    if let Err(error) = check_request_head(head) {
        let status = match error {
            HeadError::Connect => StatusCode::METHOD_NOT_ALLOWED,
            HeadError::DuplicateHost | HeadError::MissingHost | HeadError::BadHost(_) => {
                StatusCode::BAD_REQUEST
            }
        };
        return Err(Box::new(Denial::new(
            status,
            Reason::BadRequest,
            error.to_string(),
        )));
    }
    normalize_target(head).map_err(|error| {
        Box::new(Denial::new(
            StatusCode::BAD_REQUEST,
            Reason::BadRequestPath,
            error.to_string(),
        ))
    })?;
    *websocket = tunnel::requested(head).map_err(|error| {
        let mut denial = Denial::new(error.status(), Reason::BadRequest, error.detail());
        if error == tunnel::HandshakeError::UnsupportedVersion {
            denial.headers.insert(
                http::header::SEC_WEBSOCKET_VERSION,
                http::HeaderValue::from_static("13"),
            );
        }
        Box::new(denial)
    })?;
    Ok(())
}

/// The answer to a request the upstream did not answer, in `format`.
#[cold]
fn upstream_failed(
    shared: &Shared,
    error: UpstreamError,
    format: Format,
    route: Option<Arc<str>>,
) -> (Response<Full<Bytes>>, StatusCode) {
    if error.client_body {
        // Not an upstream failure: no upstream error counted, no alert.
        tracing::debug!(detail = %error.detail, "the client's request body failed");
        shared.metrics.request(Outcome::Error, Reason::BadRequest);
        let mut denial = Denial::new(
            StatusCode::BAD_REQUEST,
            Reason::BadRequest,
            format!("the request body could not be read: {}", error.detail),
        );
        denial.route = route;
        let response = problem::render(denial, format);
        return (response, StatusCode::BAD_REQUEST);
    }
    shared.metrics.upstream_error(error.kind);
    let (status, reason) = match error.kind {
        UpstreamErrorKind::Timeout => (StatusCode::GATEWAY_TIMEOUT, Reason::UpstreamTimeout),
        UpstreamErrorKind::Connect | UpstreamErrorKind::Protocol => {
            (StatusCode::BAD_GATEWAY, Reason::UpstreamUnavailable)
        }
        UpstreamErrorKind::Overloaded => {
            (StatusCode::SERVICE_UNAVAILABLE, Reason::UpstreamOverloaded)
        }
    };
    if error.kind == UpstreamErrorKind::Overloaded {
        // Counted in the metrics; a warning per refused request would add
        // work when there is least room for it.
        tracing::debug!(detail = %error.detail, "upstream overloaded");
    } else {
        tracing::warn!(kind = error.kind.as_str(), detail = %error.detail, "upstream request failed");
    }
    shared.metrics.request(Outcome::Error, reason);
    let forwarder = &shared.forwarder;
    let mut denial = Denial::new(status, reason, error.failure.describe(forwarder.name()));
    denial.route = route;
    denial.hint = Hint::Upstream {
        local: forwarder.is_local(),
    };
    if reason == Reason::UpstreamOverloaded {
        // A connection usually comes back within the queue's wait; a second
        // is a polite pause that still keeps clients from piling up.
        denial.headers.insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("1"),
        );
    }
    (problem::render(denial, format), status)
}
