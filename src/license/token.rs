//! Compact JWS (RFC 7515) parsing and signature verification with `ring`.
//!
//! The rules, in the order they are applied:
//! 1. At most [`MAX_TOKEN_BYTES`]; exactly three base64url segments without
//!    padding (no JWE, no JSON serialisation, no unencoded payloads).
//! 2. The header is strict JSON (no repeated keys). `alg` must be `EdDSA` or
//!    `ES256`: `none`, HMAC and RSA are rejected outright, so no key can be
//!    misused under another algorithm. `kid` is required and must be a plain
//!    identifier. `typ`, if present, must be `JWT`.
//! 3. Headers that carry or point at a key (`jwk`, `jku`, `x5u`, `x5c`) are
//!    rejected as **malformed**: keys come only from the configured keyring,
//!    and a token offering its own key is not a token we could ever accept.
//!    `crit` is rejected too: we implement no extensions.
//! 4. `kid` must name a keyring key, and the token's `alg` must be the one
//!    that key is pinned to.
//! 5. The signature is checked over the raw `header.payload` text; only then
//!    is the payload decoded and parsed, so unauthenticated input never
//!    reaches the claims parser.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;

use super::claims::Claims;
use super::error::{quote, LicenseError};
use super::jose::is_valid_kid;
pub use super::jose::Algorithm;
use super::json::{from_slice_strict, Present};
use super::keys::{Keyring, VerifyingKey};

/// Longest token accepted, checked before any parsing.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// A token whose signature verified under the keyring, with its claims.
/// Time, issuer and audience are not checked yet: see
/// [`Validator`](crate::license::Validator).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedLicense {
    /// The key that signed it.
    pub kid: String,
    /// The algorithm it was signed with.
    pub alg: Algorithm,
    /// The claims, parsed after the signature verified.
    pub claims: Claims,
}

impl VerifiedLicense {
    /// The `exp` claim, in unix seconds.
    pub fn expires_at(&self) -> u64 {
        self.claims.exp.0
    }
}

/// Verify a compact JWS against `keyring` and parse its claims.
///
/// Pure and allocation-light; no I/O. Every rejection maps to one
/// [`LicenseError`] reason (see the module docs for the order of checks).
pub fn verify(token: &str, keyring: &Keyring) -> Result<VerifiedLicense, LicenseError> {
    Unverified::parse(token, keyring)?.verify()
}

/// A token that passed every check before its signature (rules 1–4 of the
/// module docs): the part a forger gets for free. What is left,
/// [`Unverified::verify`], is the `ring` work that callers budget.
pub(crate) struct Unverified<'a> {
    header: Header<Algorithm>,
    key: &'a VerifyingKey,
    payload: &'a str,
    signature: Vec<u8>,
    /// `header.payload`, the bytes the signature covers.
    signing_input: &'a [u8],
}

impl<'a> Unverified<'a> {
    /// Size, shape, header, key lookup and signature length; no `ring`.
    pub(crate) fn parse(token: &'a str, keyring: &'a Keyring) -> Result<Self, LicenseError> {
        Self::parse_as(token, keyring, &LICENSE_HEADER, MAX_TOKEN_BYTES)
    }

    /// [`parse`](Self::parse) for any kind of JWS the license keyring signs
    /// (licenses, revocation lists): `rules` for its header, at most
    /// `max_bytes` long.
    pub(crate) fn parse_as(
        token: &'a str,
        keyring: &'a Keyring,
        rules: &HeaderRules<Algorithm>,
        max_bytes: usize,
    ) -> Result<Self, LicenseError> {
        let segments = split_at_most(token, max_bytes)?;

        let header = parse_header(&decode_segment(segments.header, "header")?, rules)?;
        let key = keyring
            .get(&header.kid)
            .ok_or_else(|| LicenseError::KeyUnknown {
                kid: header.kid.clone(),
            })?;
        pinned(header.alg, key.alg(), key.kid())?;
        let signature = decode_segment(segments.signature, "signature")?;
        key.check_signature_length(&signature)?;
        Ok(Unverified {
            header,
            key,
            payload: segments.payload,
            signature,
            signing_input: segments.signing_input,
        })
    }

    /// The signature, then the claims.
    pub(crate) fn verify(self) -> Result<VerifiedLicense, LicenseError> {
        let (header, payload) = self.verify_payload()?;
        // `Claims` rejects repeated members itself, in the same pass.
        let claims: Claims = serde_json::from_slice(&payload)
            .map_err(|e| LicenseError::malformed(format!("claims: {e}")))?;
        Ok(VerifiedLicense {
            kid: header.kid,
            alg: header.alg,
            claims,
        })
    }

    /// The signature, then the decoded payload bytes, for the caller to
    /// parse as its kind of claims.
    pub(crate) fn verify_payload(self) -> Result<(Header<Algorithm>, Vec<u8>), LicenseError> {
        self.key.verify(self.signing_input, &self.signature)?;
        let payload = decode_segment(self.payload, "payload")?;
        Ok((self.header, payload))
    }
}

// === The compact JWS steps every token kind shares ===
//
// User tokens (`crate::user`) follow the same rules 1–3 with their own
// algorithms and `typ` values, and their own error type.

/// The errors of the shared steps: each token kind maps them onto its own.
pub(crate) trait JwsError {
    /// Not a compact JWS, or a header of the wrong shape.
    fn malformed(detail: String) -> Self;
    /// `alg` names an algorithm this kind of token never accepts.
    fn algorithm_rejected(detail: String) -> Self;
}

impl JwsError for LicenseError {
    fn malformed(detail: String) -> Self {
        LicenseError::Malformed(detail)
    }
    fn algorithm_rejected(detail: String) -> Self {
        LicenseError::AlgorithmRejected(detail)
    }
}

/// A key verifies the one algorithm it is pinned to: a token naming
/// another is refused before any signature work.
pub(crate) fn pinned<A: PartialEq + std::fmt::Display, E: JwsError>(
    token: A,
    key: A,
    kid: &str,
) -> Result<(), E> {
    if token == key {
        return Ok(());
    }
    Err(E::algorithm_rejected(format!(
        "the token says {token} but key `{kid}` is pinned to {key}"
    )))
}

/// The three segments of a compact JWS, still base64url.
pub(crate) struct Segments<'a> {
    pub(crate) header: &'a str,
    pub(crate) payload: &'a str,
    pub(crate) signature: &'a str,
    /// `header.payload`, the bytes the signature covers.
    pub(crate) signing_input: &'a [u8],
}

/// Rule 1: the size, then exactly three segments.
pub(crate) fn split<E: JwsError>(token: &str) -> Result<Segments<'_>, E> {
    split_at_most(token, MAX_TOKEN_BYTES)
}

/// [`split`] with another size limit (revocation lists may be longer).
pub(crate) fn split_at_most<E: JwsError>(token: &str, max_bytes: usize) -> Result<Segments<'_>, E> {
    if token.len() > max_bytes {
        return Err(E::malformed(format!(
            "token is {} bytes; the limit is {max_bytes}",
            token.len()
        )));
    }
    let dots = token.bytes().filter(|&b| b == b'.').count();
    if dots != 2 {
        return Err(E::malformed(format!(
            "a compact JWS has 3 dot-separated segments, this has {}",
            dots + 1
        )));
    }
    // Two dots were counted, so both splits succeed.
    let (header, rest) = token.split_once('.').unwrap_or_default();
    let (payload, signature) = rest.split_once('.').unwrap_or_default();
    // An empty signature is left to the signature check, so an unsecured
    // (`alg: none`) token is reported as the algorithm it is.
    for (segment, what) in [(header, "header"), (payload, "payload")] {
        if segment.is_empty() {
            return Err(E::malformed(format!("the {what} segment is empty")));
        }
    }
    Ok(Segments {
        header,
        payload,
        signature,
        signing_input: &token.as_bytes()[..header.len() + 1 + payload.len()],
    })
}

/// One segment's bytes: unpadded, canonical base64url only.
pub(crate) fn decode_segment<E: JwsError>(segment: &str, what: &str) -> Result<Vec<u8>, E> {
    if segment.is_empty() {
        return Err(E::malformed(format!("the {what} segment is empty")));
    }
    // The engine rejects padding and non-canonical trailing bits, so each
    // token has exactly one encoding.
    URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|e| E::malformed(format!("the {what} is not unpadded base64url: {e}")))
}

/// What one kind of token accepts in its header (rule 2).
pub(crate) struct HeaderRules<A> {
    /// The algorithm an `alg` value names, if this kind accepts it at all.
    pub(crate) alg: fn(&str) -> Option<A>,
    /// Those algorithms, for the refusal: "EdDSA and ES256".
    pub(crate) accepted: &'static str,
    /// The `typ` values accepted (ASCII case-insensitive).
    pub(crate) typ: &'static [&'static str],
    /// Whether `typ` must be present (else its absence is accepted too).
    pub(crate) typ_required: bool,
    /// Whether a `kid` is acceptable, and what is, for the refusal.
    pub(crate) kid: (fn(&str) -> bool, &'static str),
}

/// License tokens: see the module docs. RFC 7515 §4.1.9 allows omitting
/// the "application/" prefix of `typ`.
const LICENSE_HEADER: HeaderRules<Algorithm> = HeaderRules {
    alg: Algorithm::from_jose,
    accepted: "EdDSA and ES256",
    typ: &["JWT", "application/jwt"],
    typ_required: false,
    kid: (is_valid_kid, KID_CHARACTERS),
};

/// What [`is_valid_kid`] accepts, in words.
pub(crate) const KID_CHARACTERS: &str = "use 1 to 128 of A-Z a-z 0-9 . _ - (and no `..`)";

/// The header members we act on; anything else is ignored.
#[derive(Deserialize)]
struct RawHeader {
    alg: Option<String>,
    kid: Option<String>,
    typ: Option<String>,
    #[serde(default)]
    crit: Present,
    #[serde(default)]
    jwk: Present,
    #[serde(default)]
    jku: Present,
    #[serde(default)]
    x5u: Present,
    #[serde(default)]
    x5c: Present,
}

/// A checked header.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Header<A> {
    pub(crate) alg: A,
    pub(crate) kid: String,
}

/// Rules 2 and 3 over the decoded header, with `rules` for the algorithms
/// and `typ` values.
pub(crate) fn parse_header<A, E: JwsError>(
    bytes: &[u8],
    rules: &HeaderRules<A>,
) -> Result<Header<A>, E> {
    let raw: RawHeader =
        from_slice_strict(bytes).map_err(|e| E::malformed(format!("header: {e}")))?;
    // A derived struct also parses from a JSON array, by member position;
    // a JOSE header is an object (RFC 7515 §4).
    if bytes.trim_ascii_start().first() != Some(&b'{') {
        return Err(E::malformed("header is not a JSON object".into()));
    }

    let alg = match raw.alg.as_deref() {
        None => return Err(E::malformed("header has no `alg`".into())),
        Some(name) => (rules.alg)(name).ok_or_else(|| {
            E::algorithm_rejected(format!(
                "{} is not accepted; only {} are",
                quote(name),
                rules.accepted
            ))
        })?,
    };

    for (name, present) in [
        ("jwk", raw.jwk),
        ("jku", raw.jku),
        ("x5u", raw.x5u),
        ("x5c", raw.x5c),
    ] {
        if present.0 {
            return Err(E::malformed(format!(
                "header parameter `{name}` is not accepted: verification keys come only from the configured keys"
            )));
        }
    }
    if raw.crit.0 {
        return Err(E::malformed(
            "header parameter `crit` is not accepted: no JWS extensions are supported".into(),
        ));
    }
    let expected_typ = || {
        rules
            .typ
            .iter()
            .map(|t| format!("`{t}`"))
            .collect::<Vec<_>>()
            .join(" or ")
    };
    match raw.typ.as_deref() {
        Some(typ) if !rules.typ.iter().any(|t| typ.eq_ignore_ascii_case(t)) => {
            return Err(E::malformed(format!(
                "header `typ` is {}; expected {}",
                quote(typ),
                expected_typ()
            )));
        }
        None if rules.typ_required => {
            return Err(E::malformed(format!(
                "header has no `typ`; expected {}",
                expected_typ()
            )));
        }
        _ => {}
    }

    let kid = raw
        .kid
        .ok_or_else(|| E::malformed("header has no `kid`".into()))?;
    let (valid, characters) = rules.kid;
    if !valid(&kid) {
        return Err(E::malformed(format!(
            "header `kid` {} is not a key id: {characters}",
            quote(&kid)
        )));
    }
    Ok(Header { alg, kid })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(json: &str) -> Result<Header<Algorithm>, LicenseError> {
        parse_header(json.as_bytes(), &LICENSE_HEADER)
    }

    #[test]
    fn accepts_the_two_algorithms_with_a_kid() {
        assert_eq!(
            header(r#"{"alg":"EdDSA","kid":"k1","typ":"JWT"}"#).unwrap(),
            Header {
                alg: Algorithm::EdDSA,
                kid: "k1".into()
            }
        );
        let h =
            header(r#"{"typ":"application/JWT","kid":"a.b_c-9","alg":"ES256","x5t":"ignored"}"#)
                .unwrap();
        assert_eq!(h.alg, Algorithm::ES256);
        assert!(header(r#"{"alg":"EdDSA","kid":"k","typ":"jwt"}"#).is_ok());
    }

    #[test]
    fn rejects_other_algorithms() {
        for alg in [
            "none", "None", "HS256", "HS512", "RS256", "PS256", "ES384", "ES256K", "eddsa",
            "Ed25519", "",
        ] {
            let err = header(&format!(r#"{{"alg":"{alg}","kid":"k"}}"#)).unwrap_err();
            assert_eq!(err.reason(), "license_algorithm_rejected", "{alg}");
        }
        let err = header(r#"{"kid":"k"}"#).unwrap_err();
        assert_eq!(err.reason(), "license_malformed");
        let err = header(r#"{"alg":5,"kid":"k"}"#).unwrap_err();
        assert_eq!(err.reason(), "license_malformed");
    }

    #[test]
    fn rejects_bad_kids() {
        for kid in [
            "",
            ".",
            "..",
            "../k",
            "a/b",
            "a\\\\b",
            "a..b",
            "k ",
            "ké",
            "k\\n",
            &"k".repeat(129),
        ] {
            let err = header(&format!(r#"{{"alg":"EdDSA","kid":"{kid}"}}"#)).unwrap_err();
            assert_eq!(err.reason(), "license_malformed", "{kid:?}");
        }
        assert!(header(r#"{"alg":"EdDSA"}"#)
            .unwrap_err()
            .detail()
            .contains("no `kid`"));
        assert!(header(r#"{"alg":"EdDSA","kid":null}"#).is_err());
        assert!(header(&format!(r#"{{"alg":"EdDSA","kid":"{}"}}"#, "k".repeat(128))).is_ok());
    }

    #[test]
    fn rejects_embedded_keys_crit_and_odd_typ() {
        for member in [
            r#""jwk":{"kty":"OKP"}"#,
            r#""jku":"https://evil.test/jwks""#,
            r#""x5u":"https://evil.test/c""#,
            r#""x5c":["MII="]"#,
            r#""jwk":null"#,
            r#""crit":["b64"]"#,
            r#""crit":[]"#,
            r#""typ":"JOSE""#,
            r#""typ":"at+jwt""#,
        ] {
            let err = header(&format!(r#"{{"alg":"EdDSA","kid":"k",{member}}}"#)).unwrap_err();
            assert_eq!(err.reason(), "license_malformed", "{member}");
        }
    }

    #[test]
    fn rejects_duplicate_header_members() {
        let err = header(r#"{"alg":"EdDSA","kid":"k","kid":"other"}"#).unwrap_err();
        assert!(err.detail().contains("duplicate key `kid`"), "{err}");
        let err = header(r#"{"alg":"none","alg":"EdDSA","kid":"k"}"#).unwrap_err();
        assert_eq!(err.reason(), "license_malformed");
    }

    #[test]
    fn split_requires_exactly_three_segments() {
        for token in ["", "a", "a.b", "a.b.c.d", "..", "a..c", ".b.c"] {
            let err = split::<LicenseError>(token).err().unwrap();
            assert_eq!(err.reason(), "license_malformed");
        }
        let s = split::<LicenseError>("hh.pp.ss").ok().unwrap();
        assert_eq!((s.header, s.payload, s.signature), ("hh", "pp", "ss"));
        assert_eq!(s.signing_input, b"hh.pp");
    }

    #[test]
    fn base64_must_be_unpadded_and_canonical() {
        assert_eq!(decode_segment::<LicenseError>("e30", "x").unwrap(), b"{}");
        for bad in ["e30=", "e3+", "e3/", "e3 0", "e31"] {
            assert!(decode_segment::<LicenseError>(bad, "x").is_err(), "{bad}");
        }
    }
}
