//! Verifying a user token: a compact JWS from the customer's identity
//! provider (an OIDC ID token or an RFC 9068 access token).
//!
//! The steps a license token goes through ([`crate::license::token`]'s
//! rules 1–3: size, three canonical base64url segments, a strict header
//! without `jwk`/`jku`/`x5u`/`x5c`/`crit`) are shared with it; what differs:
//! - `alg` may be RS256, ES256 or EdDSA (identity providers sign with RSA
//!   by default); `none`, HMAC, PS* and anything else are rejected before a
//!   key is looked up, so a public key can never serve as an HMAC secret;
//! - `typ`, if present, is `JWT` or an access token's `at+jwt`;
//! - the key is found by `kid` among all issuers' keys (the first issuer
//!   whose keyring has it), and `alg` must be on *that* issuer's allow-list
//!   and the algorithm the key is pinned to;
//! - the signature is checked over the raw `header.payload` before the
//!   payload is even decoded; only then are the claims read
//!   ([`super::claims`]): `iss` must be the issuer whose key signed.
//!
//! Time is not part of verification: [`validate`] checks `exp` and `nbf`
//! on every use, cached or not.

use std::sync::Arc;
use std::time::Duration;

use super::keys::{UserKey, UserKeyring};
use super::settings::IssuerSettings;
use super::{claims, UserAlgorithm, UserError, VerifiedUser};
use crate::license::jose::{is_valid_idp_kid, IDP_KID_CHARACTERS};
use crate::license::quote;
use crate::license::token::{decode_segment, parse_header, pinned, split, HeaderRules, JwsError};

/// Longest user token accepted, checked before any parsing; the same as a
/// license's (16 KiB: far above a token with a few hundred roles).
pub use crate::license::MAX_TOKEN_BYTES;

impl JwsError for UserError {
    fn malformed(detail: String) -> Self {
        UserError::Malformed(detail)
    }
    fn algorithm_rejected(detail: String) -> Self {
        UserError::AlgorithmRejected(detail)
    }
}

/// RFC 9068 §2.1 types access tokens `at+jwt`; RFC 7515 §4.1.9 allows the
/// `application/` prefix to be present or not.
const USER_HEADER: HeaderRules<UserAlgorithm> = HeaderRules {
    alg: UserAlgorithm::from_jose,
    accepted: "RS256, ES256 and EdDSA",
    typ: &["JWT", "application/jwt", "at+jwt", "application/at+jwt"],
    typ_required: false,
    kid: (is_valid_idp_kid, IDP_KID_CHARACTERS),
};

/// Verify `token` against the issuers' keyrings (`keyrings[i]` holds the
/// keys of `issuers[i]`) and read its user. Time is not checked: see
/// [`validate`].
pub fn verify(
    token: &[u8],
    keyrings: &[Arc<UserKeyring>],
    issuers: &[IssuerSettings],
) -> Result<VerifiedUser, UserError> {
    Unverified::parse(token, keyrings, issuers)?.verify()
}

/// Whether `user` may be served at `now` (unix seconds), with `leeway` for
/// clock skew: before `exp + leeway`, and not before `nbf - leeway`.
pub fn validate(user: &VerifiedUser, now: u64, leeway: Duration) -> Result<(), UserError> {
    let leeway = leeway.as_secs();
    if now >= user.exp.saturating_add(leeway) {
        return Err(UserError::Expired { exp: user.exp, now });
    }
    match user.nbf {
        Some(nbf) if now.saturating_add(leeway) < nbf => Err(UserError::NotYetValid { nbf, now }),
        _ => Ok(()),
    }
}

/// The last second a verified user may be served from a cache: `exp`
/// plus leeway. [`validate`] still runs on every hit (for `nbf`).
pub(crate) fn serve_until(user: &VerifiedUser, leeway: Duration) -> u64 {
    user.exp.saturating_add(leeway.as_secs())
}

/// A token that passed every check before its signature: what a forger
/// gets for free. [`Unverified::verify`] is the `ring` work callers budget.
pub(crate) struct Unverified<'a> {
    issuer_index: usize,
    issuer: &'a IssuerSettings,
    key: &'a UserKey,
    payload: &'a str,
    signature: Vec<u8>,
    /// `header.payload`, the bytes the signature covers.
    signing_input: &'a [u8],
}

impl<'a> Unverified<'a> {
    /// Shape, header, key lookup, algorithm pinning and signature length;
    /// no `ring`.
    pub(crate) fn parse(
        token: &'a [u8],
        keyrings: &'a [Arc<UserKeyring>],
        issuers: &'a [IssuerSettings],
    ) -> Result<Self, UserError> {
        // Checked before the text: a 1 MiB header value is refused at once.
        if token.len() > MAX_TOKEN_BYTES {
            return Err(UserError::Malformed(format!(
                "token is {} bytes; the limit is {MAX_TOKEN_BYTES}",
                token.len()
            )));
        }
        let text = std::str::from_utf8(token)
            .map_err(|_| UserError::Malformed("the token is not ASCII text".into()))?;
        let segments = split(text)?;
        let header = parse_header(&decode_segment(segments.header, "header")?, &USER_HEADER)?;

        let (issuer_index, issuer, key) = keyrings
            .iter()
            .zip(issuers)
            .enumerate()
            .find_map(|(i, (keyring, issuer))| Some((i, issuer, keyring.get(&header.kid)?)))
            .ok_or_else(|| UserError::KeyUnknown {
                kid: header.kid.clone(),
            })?;
        if !issuer.algorithms.contains(&header.alg) {
            return Err(UserError::AlgorithmRejected(format!(
                "{} is not among the algorithms of issuer {} ({})",
                header.alg,
                quote(&issuer.issuer),
                issuer
                    .algorithms
                    .iter()
                    .map(|a| a.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        pinned(header.alg, key.alg(), key.kid())?;
        let signature = decode_segment(segments.signature, "signature")?;
        key.check_signature_length(&signature)?;
        Ok(Unverified {
            issuer_index,
            issuer,
            key,
            payload: segments.payload,
            signature,
            signing_input: segments.signing_input,
        })
    }

    /// The signature, then the claims.
    pub(crate) fn verify(self) -> Result<VerifiedUser, UserError> {
        self.key.verify(self.signing_input, &self.signature)?;
        let payload = decode_segment(self.payload, "payload")?;
        claims::read(&payload, self.issuer_index, self.issuer, self.key.kid())
    }
}
