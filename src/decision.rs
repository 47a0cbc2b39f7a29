//! The decision seam: every inbound request is decided exactly once, before
//! it is forwarded. The license and policy engines plug in here.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderMap, StatusCode};

use crate::license::{LicenseError, LicenseGate};

/// A stable, machine-readable reason. Its `as_str` form is the `reason`
/// field of problem+json bodies and the `reason` label of metrics, so the
/// set is closed (bounded label cardinality) and names never change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The request was allowed; used for metrics only.
    Allowed,
    /// The upstream refused or reset the connection.
    UpstreamUnavailable,
    /// The upstream did not answer within `timeouts.upstream_response`.
    UpstreamTimeout,
    /// The request could not be turned into an upstream request.
    BadRequest,
    /// The request path uses an encoding that is refused (see `policy::normalize`).
    PathRejected,
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
}

impl Reason {
    /// Every reason, in a fixed order; metrics pre-resolve one handle each.
    pub const ALL: [Reason; 15] = [
        Reason::Allowed,
        Reason::UpstreamUnavailable,
        Reason::UpstreamTimeout,
        Reason::BadRequest,
        Reason::PathRejected,
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
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::Allowed => "allowed",
            Reason::UpstreamUnavailable => "upstream_unavailable",
            Reason::UpstreamTimeout => "upstream_timeout",
            Reason::BadRequest => "bad_request",
            Reason::PathRejected => "path_rejected",
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
        }
    }

    /// Short human title for the problem+json `title` field.
    pub const fn title(self) -> &'static str {
        match self {
            Reason::Allowed => "Allowed",
            Reason::UpstreamUnavailable => "Upstream unavailable",
            Reason::UpstreamTimeout => "Upstream timed out",
            Reason::BadRequest => "Bad request",
            Reason::PathRejected => "Path rejected",
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
        }
    }

    pub const fn index(self) -> usize {
        self as usize
    }
}

/// What the engine concluded for one request.
#[derive(Debug)]
pub enum Decision {
    Allow,
    /// Boxed so that the common `Allow` stays one word wide.
    Deny(Box<Denial>),
}

/// A rejection, rendered by [`crate::problem`] as RFC 9457 problem+json.
#[derive(Debug)]
pub struct Denial {
    pub status: StatusCode,
    pub reason: Reason,
    pub detail: Cow<'static, str>,
    /// Extra response headers, e.g. `Retry-After` on 429.
    pub headers: HeaderMap,
}

impl Denial {
    pub fn new(status: StatusCode, reason: Reason, detail: impl Into<Cow<'static, str>>) -> Self {
        Denial {
            status,
            reason,
            detail: detail.into(),
            headers: HeaderMap::new(),
        }
    }
}

/// Facts about the connection a request arrived on.
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    pub tls: bool,
}

/// Decides every request. Immutable once built; what it consults (the
/// license gate's snapshots) is swapped atomically on reload.
#[derive(Debug, Default)]
pub struct DecisionEngine {
    license: Option<Arc<LicenseGate>>,
}

impl DecisionEngine {
    /// An engine that allows every request (a plain reverse proxy).
    pub fn allow_all() -> Self {
        DecisionEngine { license: None }
    }

    /// An engine that requires a valid license for every request.
    pub fn with_license(gate: Arc<LicenseGate>) -> Self {
        DecisionEngine {
            license: Some(gate),
        }
    }

    /// Decide one request from its head. Async because shared counters may
    /// need a round trip; the license check completes without suspending.
    pub async fn decide(&self, head: &http::request::Parts, _peer: &Peer) -> Decision {
        if let Some(gate) = &self.license {
            if let Err(error) = gate.check(&head.headers) {
                return Decision::Deny(Box::new(license_denial(&error, gate.is_per_request())));
            }
        }
        Decision::Allow
    }
}

/// A failed license check as a response. A per-request token the client can
/// fix is a 401 with a `WWW-Authenticate` challenge (RFC 6750); anything
/// about the deployment or its environment is a 403.
fn license_denial(error: &LicenseError, per_request: bool) -> Denial {
    let reason = Reason::of_license_error(error);
    let mut denial = Denial::new(StatusCode::FORBIDDEN, reason, error.detail());
    if per_request && reason != Reason::EnvironmentNotLicensed {
        denial.status = StatusCode::UNAUTHORIZED;
        let challenge = if reason == Reason::LicenseMissing {
            "Bearer realm=\"licensegate\""
        } else {
            "Bearer realm=\"licensegate\", error=\"invalid_token\""
        };
        denial.headers.insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static(challenge),
        );
    }
    denial
}
