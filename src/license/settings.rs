//! Where licenses come from and how they are checked: what a
//! [`LicenseGate`](super::LicenseGate) is built from.

use std::path::PathBuf;
use std::time::Duration;

use super::refresh::RefreshSettings;
use super::revocation::source::RevocationSettings;
use super::{BudgetSettings, Environment};

/// Where licenses come from and how they are checked.
#[derive(Clone, Debug)]
pub struct LicenseSettings {
    /// Public keys: a PEM file, a directory of PEM files, or a JWKS file.
    pub keys: PathBuf,
    /// Where tokens come from.
    pub source: LicenseSource,
    /// Required `iss`, if set.
    pub issuer: Option<String>,
    /// A value `aud` must contain, if set.
    pub audience: Option<String>,
    /// Clock skew tolerated on `nbf` and `exp`.
    pub leeway: Duration,
    /// How long after `exp` (plus leeway) the license still works.
    pub grace: Duration,
    /// The workload identity licenses are bound to.
    pub environment: Environment,
    /// Verified tokens remembered (header source).
    pub cache_capacity: usize,
    /// Trusted time and the last fetched token, kept across restarts.
    pub state_file: Option<PathBuf>,
    /// Keep the token header on forwarded requests (header source).
    pub forward_token: bool,
    /// Signature checks that may fail per client (header source).
    pub failed_verifications: BudgetSettings,
    /// Where signed revocation lists come from, if anywhere.
    pub revocations: Option<RevocationSettings>,
}

/// Where license tokens come from.
#[derive(Clone, Debug)]
pub enum LicenseSource {
    /// One deployment license in a file, reloaded when it changes.
    File(PathBuf),
    /// A token per request in this header (`Bearer ` prefix optional).
    Header(http::HeaderName),
    /// A short-lived deployment token fetched from the vendor on schedule.
    Refresh(RefreshSettings),
}
