//! The JOSE names licensegate accepts: signature algorithms and key ids.
//! A leaf, so the keyring and the token parser both build on it.

use std::fmt;

/// Longest `kid` accepted.
pub(crate) const MAX_KID_CHARS: usize = 128;

/// A JWS signature algorithm this crate accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Ed25519 (RFC 8037).
    EdDSA,
    /// ECDSA over P-256 with SHA-256, signature as the 64-byte `r || s`.
    ES256,
}

impl Algorithm {
    /// The JOSE `alg` name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Algorithm::EdDSA => "EdDSA",
            Algorithm::ES256 => "ES256",
        }
    }

    /// Parse a JOSE `alg` name; exact and case-sensitive, as JOSE requires.
    pub fn from_jose(name: &str) -> Option<Algorithm> {
        match name {
            "EdDSA" => Some(Algorithm::EdDSA),
            "ES256" => Some(Algorithm::ES256),
            _ => None,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A key id an identity provider chose: it never names a file here, so
/// base64's `+`, `/` and `=` are allowed (AWS Cognito's kids are base64),
/// but nothing that could break a log line, and no `..`.
pub(crate) fn is_valid_idp_kid(kid: &str) -> bool {
    (1..=MAX_KID_CHARS).contains(&kid.len())
        && kid.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+' | b'/' | b'=')
        })
        && !kid.contains("..")
}

/// What [`is_valid_idp_kid`] accepts, in words.
pub(crate) const IDP_KID_CHARACTERS: &str = "use 1 to 128 of A-Z a-z 0-9 . _ - + / = (and no `..`)";

/// A key id is a plain name: it may end up in file names, logs and metrics,
/// so nothing that could walk a path (`/`, `\`, `..`) or break a line.
pub(crate) fn is_valid_kid(kid: &str) -> bool {
    (1..=MAX_KID_CHARS).contains(&kid.len())
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && kid != "."
        && !kid.contains("..")
}
