//! Signed revocation lists: how a license is withdrawn before its `exp`.
//!
//! Licenses are verified offline, so revocation has to come to the proxy: a
//! compact JWS signed by a key of the license keyring, with header
//! `typ: licensegate-revocations+jwt` (required; and a license token must
//! not carry it, so neither kind passes as the other) and claims
//! `{iss?, iat, seq, jti: [..], sub: [..]}`. It goes through the same
//! checks as a license token (size, shape, header, key, signature, then the
//! claims), see [`super::token`].
//!
//! A list is only ever replaced by a *newer* one: [`admit`] refuses a lower
//! `seq` (a rollback to a list without a revocation) and an equal `seq`
//! with other content (two lists claiming the same place in the sequence).
//!
//! On the request path a list is two hash-set lookups (no allocation):
//! [`RevocationList::check`].

use std::collections::HashSet;
use std::sync::Arc;

use serde::Deserialize;

use super::claims::Claims;
use super::error::{quote, LicenseError};
use super::jose::is_valid_kid;
use super::json::from_slice_strict;
use super::keys::Keyring;
use super::token::{Algorithm, HeaderRules, Unverified, KID_CHARACTERS};

/// The `typ` header of a revocation list.
pub const REVOCATIONS_TYP: &str = "licensegate-revocations+jwt";

/// Longest list accepted: room for tens of thousands of ids, while a
/// hostile source still cannot make the proxy hold more than this.
pub const MAX_LIST_BYTES: usize = 1024 * 1024;

/// Revocation lists: the license algorithms and key ids, `typ` required.
/// RFC 7515 §4.1.9 allows the `application/` prefix.
const REVOCATIONS_HEADER: HeaderRules<Algorithm> = HeaderRules {
    alg: Algorithm::from_jose,
    accepted: "EdDSA and ES256",
    typ: &[REVOCATIONS_TYP, "application/licensegate-revocations+jwt"],
    typ_required: true,
    kid: (is_valid_kid, KID_CHARACTERS),
};

/// A verified revocation list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevocationList {
    /// Who issued it, if it says.
    pub iss: Option<String>,
    /// When it was issued, unix seconds.
    pub iat: u64,
    /// Its place in the vendor's sequence of lists.
    pub seq: u64,
    /// Revoked token ids (`jti`).
    pub jti: HashSet<String>,
    /// Revoked license ids (`sub`): every token of that license.
    pub sub: HashSet<String>,
    /// The key that signed it.
    pub kid: String,
    /// The list as received, to persist and to compare.
    pub text: Arc<str>,
}

/// The claims as signed; unknown members are ignored.
#[derive(Deserialize)]
struct RawList {
    iss: Option<String>,
    iat: u64,
    seq: u64,
    #[serde(default)]
    jti: Vec<String>,
    #[serde(default)]
    sub: Vec<String>,
}

impl RevocationList {
    /// Verify `text` under `keyring` and parse it. When `issuer` is set, a
    /// list that names another `iss` is refused (one without `iss` is
    /// accepted: the signature already ties it to the vendor's keys).
    pub fn verify(
        text: &str,
        keyring: &Keyring,
        issuer: Option<&str>,
    ) -> Result<RevocationList, LicenseError> {
        let text = text.trim();
        let (header, payload) =
            Unverified::parse_as(text, keyring, &REVOCATIONS_HEADER, MAX_LIST_BYTES)?
                .verify_payload()?;
        if payload.trim_ascii_start().first() != Some(&b'{') {
            return Err(LicenseError::malformed(
                "revocation list claims are not a JSON object",
            ));
        }
        let raw: RawList = from_slice_strict(&payload).map_err(|e| {
            LicenseError::malformed(format!(
                "revocation list claims: {e} (expected `iat`, `seq` and arrays `jti`, `sub`)"
            ))
        })?;
        if let (Some(expected), Some(found)) = (issuer, raw.iss.as_deref()) {
            if expected != found {
                return Err(LicenseError::IssuerMismatch {
                    expected: expected.to_owned(),
                    found: quote(found),
                });
            }
        }
        Ok(RevocationList {
            iss: raw.iss,
            iat: raw.iat,
            seq: raw.seq,
            jti: raw.jti.into_iter().collect(),
            sub: raw.sub.into_iter().collect(),
            kid: header.kid,
            text: Arc::from(text),
        })
    }

    /// Refuse a license this list revokes: by its `jti`, else its `sub`.
    /// Two lookups; no allocation unless refused.
    pub fn check(&self, claims: &Claims) -> Result<(), LicenseError> {
        if let Some(jti) = claims.jti.as_deref() {
            if self.jti.contains(jti) {
                return Err(self.revoked("jti", jti));
            }
        }
        if self.sub.contains(claims.sub.as_str()) {
            return Err(self.revoked("sub", &claims.sub));
        }
        Ok(())
    }

    /// Whether this list revokes a license with these claims.
    pub fn revokes(&self, claims: &Claims) -> bool {
        self.check(claims).is_err()
    }

    fn revoked(&self, field: &'static str, id: &str) -> LicenseError {
        LicenseError::Revoked {
            field,
            id: quote(id),
            seq: self.seq,
        }
    }
}

/// What [`admit`] decided about an offered list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Newer than the list in force (or the first): put it in force.
    Newer,
    /// The list in force again: nothing to do.
    Same,
}

/// Why an offered list does not replace the one in force.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// It did not verify or parse.
    #[error("{0}")]
    Invalid(LicenseError),
    /// Its `seq` is lower than the list in force: a rollback.
    #[error("revocation list seq {offered} is older than seq {in_force} in force (no rollback)")]
    Rollback {
        /// The offered `seq`.
        offered: u64,
        /// The `seq` in force.
        in_force: u64,
    },
    /// Same `seq` as the list in force, other content.
    #[error("revocation list seq {seq} differs from the list in force with the same seq")]
    Conflict {
        /// The `seq` both lists claim.
        seq: u64,
    },
}

impl Refusal {
    /// The `result` label of `licensegate_license_revocation_updates_total`.
    pub const fn label(&self) -> &'static str {
        match self {
            Refusal::Invalid(_) => "invalid",
            Refusal::Rollback { .. } => "rollback",
            Refusal::Conflict { .. } => "conflict",
        }
    }
}

/// Whether `offered` may replace `in_force`: only a strictly higher `seq`,
/// or the same list again.
pub fn admit(
    in_force: Option<&RevocationList>,
    offered: &RevocationList,
) -> Result<Admission, Refusal> {
    let Some(current) = in_force else {
        return Ok(Admission::Newer);
    };
    match offered.seq.cmp(&current.seq) {
        std::cmp::Ordering::Greater => Ok(Admission::Newer),
        std::cmp::Ordering::Less => Err(Refusal::Rollback {
            offered: offered.seq,
            in_force: current.seq,
        }),
        std::cmp::Ordering::Equal => {
            // Compared as content, not text: the same list signed twice
            // (ES256 signatures differ each time) is still the same list.
            let same = offered.iat == current.iat
                && offered.iss == current.iss
                && offered.jti == current.jti
                && offered.sub == current.sub;
            if same {
                Ok(Admission::Same)
            } else {
                Err(Refusal::Conflict { seq: offered.seq })
            }
        }
    }
}

pub mod source;
#[cfg(test)]
mod tests;
