//! Why a user token was refused.

/// A user token was refused. Every variant but [`UserError::Missing`] and
/// [`UserError::KeysUnavailable`] answers `user_token_invalid`; the detail
/// (and the metrics' `result` label, [`UserError::result`]) says which rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    /// No token where the configuration says it travels.
    #[error("no user token in the request")]
    Missing,
    /// Not a compact JWS, or a header or claim of the wrong shape.
    #[error("user token malformed: {0}")]
    Malformed(String),
    /// `alg` is not on the issuer's allow-list, or not the key's.
    #[error("user token algorithm rejected: {0}")]
    AlgorithmRejected(String),
    /// No configured issuer publishes a key with this `kid`.
    #[error("user token signed with unknown key `{kid}`")]
    KeyUnknown {
        /// The token's `kid`.
        kid: String,
    },
    /// The signature does not verify.
    #[error("user token signature invalid: {0}")]
    SignatureInvalid(String),
    /// `iss` is not the issuer whose key signed the token.
    #[error("user token issuer mismatch: {0}")]
    IssuerMismatch(String),
    /// `aud` names none of the issuer's accepted audiences.
    #[error("user token audience mismatch: {0}")]
    AudienceMismatch(String),
    /// Past `exp` (plus leeway).
    #[error("user token expired at {exp} (now {now})")]
    Expired {
        /// The token's `exp`.
        exp: u64,
        /// The time of the check.
        now: u64,
    },
    /// Before `nbf` (minus leeway).
    #[error("user token not valid before {nbf} (now {now})")]
    NotYetValid {
        /// The token's `nbf`.
        nbf: u64,
        /// The time of the check.
        now: u64,
    },
    /// The subject claim (`sub`, or the configured one) is absent or empty.
    #[error("user token has no subject: {0}")]
    SubjectMissing(String),
    /// No keys are known yet for any issuer (JWKS never fetched, no state).
    #[error("no identity provider keys are loaded yet")]
    KeysUnavailable,
    /// This client sent more unverifiable tokens than its budget of
    /// signature checks allows.
    #[error("too many unverifiable user tokens; retry in {retry_after} s")]
    VerificationThrottled {
        /// Seconds until the client's budget allows another check.
        retry_after: u64,
    },
}

impl UserError {
    /// The metrics' `result` label: bounded and stable.
    pub const fn result(&self) -> &'static str {
        match self {
            UserError::Missing => "missing",
            UserError::Malformed(_) => "malformed",
            UserError::AlgorithmRejected(_) => "algorithm_rejected",
            UserError::KeyUnknown { .. } => "key_unknown",
            UserError::SignatureInvalid(_) => "signature_invalid",
            UserError::IssuerMismatch(_) => "issuer_mismatch",
            UserError::AudienceMismatch(_) => "audience_mismatch",
            UserError::Expired { .. } => "expired",
            UserError::NotYetValid { .. } => "not_yet_valid",
            UserError::SubjectMissing(_) => "subject_missing",
            UserError::KeysUnavailable => "keys_unavailable",
            UserError::VerificationThrottled { .. } => "throttled",
        }
    }

    /// Every `result` label of an error, for pre-resolving metrics.
    pub const RESULTS: [&'static str; 12] = [
        "missing",
        "malformed",
        "algorithm_rejected",
        "key_unknown",
        "signature_invalid",
        "issuer_mismatch",
        "audience_mismatch",
        "expired",
        "not_yet_valid",
        "subject_missing",
        "keys_unavailable",
        "throttled",
    ];

    /// The problem+json detail: what was wrong, without the token.
    pub fn detail(&self) -> String {
        self.to_string()
    }
}
