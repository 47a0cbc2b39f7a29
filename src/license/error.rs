//! Why a license was not accepted.

use std::fmt;

/// Why a license token was not accepted.
///
/// [`reason`](LicenseError::reason) is a stable machine code (a problem+json
/// `reason` and a metrics label, so the set is closed); the `Display` form is
/// the human detail. Values copied from an unverified token into a detail are
/// escaped and truncated, since details may be shown to the client.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LicenseError {
    /// No token was presented at all.
    #[error("no license token was presented")]
    Missing,
    /// Not a well-formed compact JWS, or header/claims that break the rules.
    #[error("malformed license token: {0}")]
    Malformed(String),
    /// The signature does not verify under the key named by `kid`.
    #[error("license signature is invalid: {0}")]
    SignatureInvalid(String),
    /// The `kid` names no key in the keyring.
    #[error("license is signed with key `{kid}`, which is not in the keyring")]
    KeyUnknown {
        /// Already checked to be a plain identifier, so safe to echo.
        kid: String,
    },
    /// The `alg` is not accepted at all, or not for the key it names.
    #[error("license algorithm rejected: {0}")]
    AlgorithmRejected(String),
    /// `iss` is absent or differs from the configured issuer.
    #[error("license issuer {found} does not match the expected `{expected}`")]
    IssuerMismatch {
        /// The configured issuer.
        expected: String,
        /// Quoted token value, or "absent".
        found: String,
    },
    /// `aud` is absent or does not contain the configured audience.
    #[error("license audience {found} does not include the expected `{expected}`")]
    AudienceMismatch {
        /// The configured audience.
        expected: String,
        /// Quoted token values, or "absent".
        found: String,
    },
    /// Past `exp` plus leeway plus grace.
    #[error("license expired at {} (unix {expired_at}); now is unix {now}", Iso(*expired_at))]
    Expired {
        /// `exp`, unix seconds.
        expired_at: u64,
        /// The time checked at, unix seconds.
        now: u64,
    },
    /// Before `nbf` minus leeway.
    #[error("license is not valid before {} (unix {not_before}); now is unix {now}", Iso(*not_before))]
    NotYetValid {
        /// `nbf`, unix seconds.
        not_before: u64,
        /// The time checked at, unix seconds.
        now: u64,
    },
    /// `lic.env` does not include this deployment.
    #[error("environment not licensed: {0}")]
    EnvironmentNotLicensed(String),
    /// The license's `jti` or `sub` is on the revocation list in force.
    #[error("license {field} {id} is revoked by revocation list seq {seq}")]
    Revoked {
        /// The claim that matched: `jti` or `sub`.
        field: &'static str,
        /// The revoked value, quoted.
        id: String,
        /// The `seq` of the list that revokes it.
        seq: u64,
    },
    /// Not checked: this client's license tokens failed verification more
    /// often than its budget of signature checks allows.
    #[error(
        "too many license tokens from this client failed verification; retry in {retry_after} s"
    )]
    VerificationThrottled {
        /// Seconds until the budget allows another signature check.
        retry_after: u64,
    },
}

impl LicenseError {
    /// Every reason code, in a fixed order, for pre-registering metrics.
    pub const REASONS: [&'static str; 12] = [
        "license_missing",
        "license_malformed",
        "license_signature_invalid",
        "license_key_unknown",
        "license_algorithm_rejected",
        "license_issuer_mismatch",
        "license_audience_mismatch",
        "license_expired",
        "license_not_yet_valid",
        "environment_not_licensed",
        "license_verification_throttled",
        "license_revoked",
    ];

    /// The stable snake_case code of this error.
    pub const fn reason(&self) -> &'static str {
        match self {
            LicenseError::Missing => "license_missing",
            LicenseError::Malformed(_) => "license_malformed",
            LicenseError::SignatureInvalid(_) => "license_signature_invalid",
            LicenseError::KeyUnknown { .. } => "license_key_unknown",
            LicenseError::AlgorithmRejected(_) => "license_algorithm_rejected",
            LicenseError::IssuerMismatch { .. } => "license_issuer_mismatch",
            LicenseError::AudienceMismatch { .. } => "license_audience_mismatch",
            LicenseError::Expired { .. } => "license_expired",
            LicenseError::NotYetValid { .. } => "license_not_yet_valid",
            LicenseError::EnvironmentNotLicensed(_) => "environment_not_licensed",
            LicenseError::VerificationThrottled { .. } => "license_verification_throttled",
            LicenseError::Revoked { .. } => "license_revoked",
        }
    }

    /// The human-readable detail (same as `to_string()`).
    pub fn detail(&self) -> String {
        self.to_string()
    }

    pub(crate) fn malformed(detail: impl Into<String>) -> Self {
        LicenseError::Malformed(detail.into())
    }
}

/// Quote an untrusted string for a detail message: escaped, at most 64
/// characters, so a hostile token cannot inject control characters or
/// megabytes into logs and responses.
pub(crate) fn quote(text: &str) -> String {
    const MAX: usize = 64;
    let mut out = String::with_capacity(text.len().min(MAX) + 2);
    out.push('`');
    for (i, c) in text.chars().enumerate() {
        if i == MAX {
            out.push('…');
            break;
        }
        out.extend(c.escape_debug());
    }
    out.push('`');
    out
}

/// A unix time rendered as RFC 3339 UTC, for details only.
struct Iso(u64);

impl fmt::Display for Iso {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Clamp so humantime's formatter (which handles years up to 9999)
        // never sees an out-of-range value; claims are capped well below.
        let secs = self.0.min(253_402_300_799);
        let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        write!(f, "{}", humantime::format_rfc3339_seconds(time))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_stable_and_listed() {
        let all = [
            LicenseError::Missing,
            LicenseError::malformed("x"),
            LicenseError::SignatureInvalid("x".into()),
            LicenseError::KeyUnknown { kid: "k".into() },
            LicenseError::AlgorithmRejected("x".into()),
            LicenseError::IssuerMismatch {
                expected: "a".into(),
                found: "b".into(),
            },
            LicenseError::AudienceMismatch {
                expected: "a".into(),
                found: "b".into(),
            },
            LicenseError::Expired {
                expired_at: 0,
                now: 1,
            },
            LicenseError::NotYetValid {
                not_before: 1,
                now: 0,
            },
            LicenseError::EnvironmentNotLicensed("x".into()),
            LicenseError::VerificationThrottled { retry_after: 1 },
            LicenseError::Revoked {
                field: "jti",
                id: "`j`".into(),
                seq: 1,
            },
        ];
        let codes: Vec<_> = all.iter().map(LicenseError::reason).collect();
        assert_eq!(codes, LicenseError::REASONS);
    }

    #[test]
    fn details_render_times_and_escape_input() {
        let e = LicenseError::Expired {
            expired_at: 1_700_000_000,
            now: 1_700_000_100,
        };
        assert_eq!(
            e.detail(),
            "license expired at 2023-11-14T22:13:20Z (unix 1700000000); now is unix 1700000100"
        );
        assert_eq!(quote("a\u{1b}[31m\n"), "`a\\u{1b}[31m\\n`");
        let long = quote(&"x".repeat(1000));
        assert_eq!(long.chars().count(), 64 + 3);
    }
}
