//! The decision seam: every inbound request is decided exactly once, before
//! it is forwarded. [`evaluate()`] is the decision order, pure; the engine
//! runs it, counts the limits and applies the result; `policy explain` runs
//! it and prints its steps.

mod engine;
mod entitlements;
pub mod evaluate;
mod keys;
mod log;
mod meters;
mod metrics;
mod thresholds;
pub mod usage;

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, StatusCode};

/// A stable, machine-readable reason. Its `as_str` form is the `reason`
/// field of problem+json bodies and the `reason` label of metrics, so the
/// set is closed (bounded label cardinality) and names never change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The request was allowed; used for metrics only.
    Allowed,
    /// A CORS preflight forwarded without a license check or limits; used
    /// for metrics only.
    CorsPreflight,
    /// The upstream refused or reset the connection.
    UpstreamUnavailable,
    /// The upstream did not answer within `timeouts.upstream_response`.
    UpstreamTimeout,
    /// The request could not be turned into an upstream request.
    BadRequest,
    /// The request path uses an encoding that is refused (see `policy::normalize`).
    BadRequestPath,
    LicenseMissing,
    LicenseMalformed,
    LicenseSignatureInvalid,
    LicenseKeyUnknown,
    LicenseAlgorithmRejected,
    LicenseIssuerMismatch,
    LicenseAudienceMismatch,
    LicenseExpired,
    LicenseNotYetValid,
    EnvironmentNotLicensed,
    /// The route needs a feature the license does not include.
    FeatureNotLicensed,
    RateLimited,
    QuotaExceeded,
    SeatLimitReached,
    /// A seat-counted route was called without the identity that holds a seat.
    SeatIdentityMissing,
    ConcurrencyLimited,
    /// The route is `access: deny`.
    RouteDenied,
    /// No route matches and unmatched requests are denied.
    RouteNotFound,
    /// The shared counter store cannot answer and the limit says `deny`.
    LimitStoreUnavailable,
    /// This client sent more unverifiable license tokens than its budget of
    /// signature checks allows; answered without verifying.
    LicenseVerificationThrottled,
    /// The license's `jti` or `sub` is on the signed revocation list in force.
    LicenseRevoked,
    /// Every upstream connection (`upstream.max_connections`) stayed busy
    /// for the queue's wait.
    UpstreamOverloaded,
    /// A protocol upgrade the route does not allow (only WebSocket, and only
    /// on routes that say `websocket: true`).
    UpgradeNotAllowed,
    /// The route needs a verified user and the request carries no user token.
    UserTokenMissing,
    /// The user token did not verify (signature, issuer, audience, time…).
    UserTokenInvalid,
    /// No identity provider keys are loaded yet to verify user tokens with.
    UserKeysUnavailable,
    /// The user does not hold the role the route needs.
    RoleMissing,
    /// The user holds the role, but the license does not include it.
    RoleNotLicensed,
    /// Every instance slot of the license is held by other replicas.
    InstanceLimitReached,
}

impl Reason {
    /// Every reason, in a fixed order; metrics pre-resolve one handle each.
    pub const ALL: [Reason; 35] = [
        Reason::Allowed,
        Reason::CorsPreflight,
        Reason::UpstreamUnavailable,
        Reason::UpstreamTimeout,
        Reason::BadRequest,
        Reason::BadRequestPath,
        Reason::LicenseMissing,
        Reason::LicenseMalformed,
        Reason::LicenseSignatureInvalid,
        Reason::LicenseKeyUnknown,
        Reason::LicenseAlgorithmRejected,
        Reason::LicenseIssuerMismatch,
        Reason::LicenseAudienceMismatch,
        Reason::LicenseExpired,
        Reason::LicenseNotYetValid,
        Reason::EnvironmentNotLicensed,
        Reason::FeatureNotLicensed,
        Reason::RateLimited,
        Reason::QuotaExceeded,
        Reason::SeatLimitReached,
        Reason::SeatIdentityMissing,
        Reason::ConcurrencyLimited,
        Reason::RouteDenied,
        Reason::RouteNotFound,
        Reason::LimitStoreUnavailable,
        Reason::LicenseVerificationThrottled,
        Reason::LicenseRevoked,
        Reason::UpstreamOverloaded,
        Reason::UpgradeNotAllowed,
        Reason::UserTokenMissing,
        Reason::UserTokenInvalid,
        Reason::UserKeysUnavailable,
        Reason::RoleMissing,
        Reason::RoleNotLicensed,
        Reason::InstanceLimitReached,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::Allowed => "allowed",
            Reason::CorsPreflight => "cors_preflight",
            Reason::UpstreamUnavailable => "upstream_unavailable",
            Reason::UpstreamTimeout => "upstream_timeout",
            Reason::BadRequest => "bad_request",
            Reason::BadRequestPath => "bad_request_path",
            Reason::LicenseMissing => "license_missing",
            Reason::LicenseMalformed => "license_malformed",
            Reason::LicenseSignatureInvalid => "license_signature_invalid",
            Reason::LicenseKeyUnknown => "license_key_unknown",
            Reason::LicenseAlgorithmRejected => "license_algorithm_rejected",
            Reason::LicenseIssuerMismatch => "license_issuer_mismatch",
            Reason::LicenseAudienceMismatch => "license_audience_mismatch",
            Reason::LicenseExpired => "license_expired",
            Reason::LicenseNotYetValid => "license_not_yet_valid",
            Reason::EnvironmentNotLicensed => "environment_not_licensed",
            Reason::FeatureNotLicensed => "feature_not_licensed",
            Reason::RateLimited => "rate_limited",
            Reason::QuotaExceeded => "quota_exceeded",
            Reason::SeatLimitReached => "seat_limit_reached",
            Reason::SeatIdentityMissing => "seat_identity_missing",
            Reason::ConcurrencyLimited => "concurrency_limited",
            Reason::RouteDenied => "route_denied",
            Reason::RouteNotFound => "route_not_found",
            Reason::LimitStoreUnavailable => "limit_store_unavailable",
            Reason::LicenseVerificationThrottled => "license_verification_throttled",
            Reason::LicenseRevoked => "license_revoked",
            Reason::UpstreamOverloaded => "upstream_overloaded",
            Reason::UpgradeNotAllowed => "upgrade_not_allowed",
            Reason::UserTokenMissing => "user_token_missing",
            Reason::UserTokenInvalid => "user_token_invalid",
            Reason::UserKeysUnavailable => "user_keys_unavailable",
            Reason::RoleMissing => "role_missing",
            Reason::RoleNotLicensed => "role_not_licensed",
            Reason::InstanceLimitReached => "instance_limit_reached",
        }
    }

    /// Short human title for the problem+json `title` field.
    pub const fn title(self) -> &'static str {
        match self {
            Reason::Allowed => "Allowed",
            Reason::CorsPreflight => "CORS preflight forwarded",
            Reason::UpstreamUnavailable => "Upstream unavailable",
            Reason::UpstreamTimeout => "Upstream timed out",
            Reason::BadRequest => "Bad request",
            Reason::BadRequestPath => "Request path rejected",
            Reason::LicenseMissing => "License missing",
            Reason::LicenseMalformed => "License malformed",
            Reason::LicenseSignatureInvalid => "License signature invalid",
            Reason::LicenseKeyUnknown => "License signed with an unknown key",
            Reason::LicenseAlgorithmRejected => "License algorithm rejected",
            Reason::LicenseIssuerMismatch => "License issuer mismatch",
            Reason::LicenseAudienceMismatch => "License audience mismatch",
            Reason::LicenseExpired => "License expired",
            Reason::LicenseNotYetValid => "License not yet valid",
            Reason::EnvironmentNotLicensed => "Environment not licensed",
            Reason::FeatureNotLicensed => "Feature not licensed",
            Reason::RateLimited => "Rate limited",
            Reason::QuotaExceeded => "Quota exceeded",
            Reason::SeatLimitReached => "Seat limit reached",
            Reason::SeatIdentityMissing => "Seat identity missing",
            Reason::ConcurrencyLimited => "Too many requests in flight",
            Reason::RouteDenied => "Route denied",
            Reason::RouteNotFound => "No route",
            Reason::LimitStoreUnavailable => "Limit store unavailable",
            Reason::LicenseVerificationThrottled => "Too many unverifiable licenses",
            Reason::LicenseRevoked => "License revoked",
            Reason::UpstreamOverloaded => "Upstream overloaded",
            Reason::UpgradeNotAllowed => "Protocol upgrade not allowed",
            Reason::UserTokenMissing => "User token missing",
            Reason::UserTokenInvalid => "User token invalid",
            Reason::UserKeysUnavailable => "Identity provider keys unavailable",
            Reason::RoleMissing => "Role missing",
            Reason::RoleNotLicensed => "Role not licensed",
            Reason::InstanceLimitReached => "Instance limit reached",
        }
    }

    /// The reason a license check failed with.
    pub const fn of_license_error(error: &crate::license::LicenseError) -> Reason {
        use crate::license::LicenseError as E;
        match error {
            E::Missing => Reason::LicenseMissing,
            E::Malformed(_) => Reason::LicenseMalformed,
            E::SignatureInvalid(_) => Reason::LicenseSignatureInvalid,
            E::KeyUnknown { .. } => Reason::LicenseKeyUnknown,
            E::AlgorithmRejected(_) => Reason::LicenseAlgorithmRejected,
            E::IssuerMismatch { .. } => Reason::LicenseIssuerMismatch,
            E::AudienceMismatch { .. } => Reason::LicenseAudienceMismatch,
            E::Expired { .. } => Reason::LicenseExpired,
            E::NotYetValid { .. } => Reason::LicenseNotYetValid,
            E::EnvironmentNotLicensed(_) => Reason::EnvironmentNotLicensed,
            E::VerificationThrottled { .. } => Reason::LicenseVerificationThrottled,
            E::Revoked { .. } => Reason::LicenseRevoked,
        }
    }

    /// The reason a limit of `kind` refuses with.
    pub const fn of_limit(kind: &crate::policy::LimitKind) -> Reason {
        use crate::policy::LimitKind as K;
        match kind {
            K::Rate { .. } => Reason::RateLimited,
            K::Quota { .. } => Reason::QuotaExceeded,
            K::Seats { .. } => Reason::SeatLimitReached,
            K::Concurrency => Reason::ConcurrencyLimited,
        }
    }

    pub const fn index(self) -> usize {
        self as usize
    }
}

/// What the engine concluded for one request.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "boxing `Allowed` would allocate on every allowed request, \
              which the decision path never does (tests/allocations.rs)"
)]
pub enum Decision {
    Allow(Allowed),
    /// Boxed: a denial is larger still, and rarer.
    Deny(Box<Denial>),
}

/// A rejection, rendered by [`crate::problem`] as RFC 9457 problem+json
/// or, for a browser, as an HTML page.
#[derive(Debug)]
pub struct Denial {
    pub status: StatusCode,
    pub reason: Reason,
    pub detail: Cow<'static, str>,
    /// Extra response headers, e.g. `Retry-After` on 429.
    pub headers: HeaderMap,
    /// The route that matched, when one did (shown on the page).
    pub route: Option<Arc<str>>,
    /// The limit that refused, for a limit's denial (named in a gRPC
    /// status's `ErrorInfo`).
    pub limit: Option<Arc<str>>,
    /// Facts behind the page's "what to do".
    pub hint: Hint,
}

impl Denial {
    pub fn new(status: StatusCode, reason: Reason, detail: impl Into<Cow<'static, str>>) -> Self {
        Denial {
            status,
            reason,
            detail: detail.into(),
            headers: HeaderMap::new(),
            route: None,
            limit: None,
            hint: Hint::None,
        }
    }
}

/// What a denial knows that tells a person how to get past it, beyond its
/// reason, status and headers (a 429's `Retry-After` is read from those).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Hint {
    #[default]
    None,
    /// Licenses come with each request, in this header.
    LicenseHeader(HeaderName),
    /// The deployment's own license (a file or the refresh endpoint) is at
    /// fault: an operator's matter, not the caller's.
    DeploymentLicense,
    /// The license's plan lacks a feature the route needs.
    MissingFeature {
        feature: String,
        license: String,
        plan: String,
    },
    /// A user token is missing or did not verify.
    UserToken,
    /// The upstream failed; `local` when it runs on this machine (a
    /// sidecar's workload, a dev server), named in the detail.
    Upstream { local: bool },
}

/// Whether a request has a body, as far as is known when it is decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyState {
    /// None: HTTP/1 without `Content-Length` (or with 0) and without
    /// `Transfer-Encoding`; an HTTP/2 stream that ended with its headers.
    Empty,
    /// One follows, or may.
    Follows,
}

static ACCESS_CONTROL_REQUEST_METHOD: HeaderName =
    HeaderName::from_static("access-control-request-method");

/// Whether a request is a CORS preflight (Fetch standard, "CORS-preflight
/// request"): `OPTIONS` with `Origin` and `Access-Control-Request-Method`,
/// and no body. Browsers send it without credentials before a cross-origin
/// request; anything with a body is a request in its own right. The method
/// is compared first: other requests pay one comparison.
pub fn is_cors_preflight(method: &http::Method, headers: &HeaderMap, body: BodyState) -> bool {
    method == http::Method::OPTIONS
        && body == BodyState::Empty
        && headers.contains_key(http::header::ORIGIN)
        && headers.contains_key(&ACCESS_CONTROL_REQUEST_METHOD)
        && !headers.contains_key(http::header::TRANSFER_ENCODING)
        && headers
            .get_all(http::header::CONTENT_LENGTH)
            .iter()
            .all(|length| length.as_bytes().trim_ascii() == b"0")
}

/// Whether `head` asks to become a WebSocket tunnel: HTTP/1.1 with an
/// `Upgrade: websocket` token and a `Connection: upgrade` token. The
/// policy decides whether its route allows one; the proxy checks the rest
/// of the handshake and strips every other upgrade.
pub fn asks_for_websocket(head: &http::request::Parts) -> bool {
    asks_for_websocket_in(head.version, &head.headers)
}

fn asks_for_websocket_in(version: http::Version, headers: &HeaderMap) -> bool {
    version == http::Version::HTTP_11
        && has_token(headers, &http::header::UPGRADE, b"websocket")
        && has_token(headers, &http::header::CONNECTION, b"upgrade")
}

/// Whether a comma-separated header has `token` (ASCII case-insensitive).
pub fn has_token(headers: &HeaderMap, name: &http::HeaderName, token: &[u8]) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
    })
}

/// Facts about the connection a request arrived on.
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    pub tls: bool,
}

/// The header that tells the upstream a shadow-mode rule would have denied.
pub const SHADOW_DENY_HEADER: &str = "x-licensegate-shadow-deny";

/// The header that tells the upstream a request passed past 100 % of a
/// quota with `overage`: the quotas' names, comma-separated.
pub const OVERAGE_HEADER: &str = "x-licensegate-overage";

pub use crate::policy::WebSocketScope;
pub use engine::{Allowed, DecisionEngine, EngineSettings, ForwardedUser};
pub use entitlements::LicenseHeaderNames;
pub use evaluate::{
    evaluate, user_denial, Admission, Credentials, EnvironmentCheck, EvaluatorSettings,
    InstanceCheck, LicenseView, LimitCheck, LimitPlan, NoTrace, Outcome, PreflightStep,
    RequestFacts, Step, Trace, Verdict,
};
pub use meters::{LicenseIdentity, MeterFeed, Metered, RouteMeters};
pub use metrics::DecisionMetrics;
pub use thresholds::{Holder, ThresholdAnnouncer};

#[cfg(test)]
mod tests;
