//! An identity provider's signing keys, from its JWKS.
//!
//! A real provider's JWKS holds more than signing keys: Keycloak lists its
//! `RSA-OAEP` encryption key beside them, others publish P-384 or RS512
//! keys for other clients. Those are *skipped* (and listed, so an operator
//! can see why a kid is unknown), never an error: the provider decides what
//! it publishes, and one key we cannot use must not take the others down.
//! What is an error is what can only be a mistake or a leak: private key
//! material, a signing key without a `kid` or with a repeated one, an
//! `alg` that contradicts the key, an RSA key weaker than 2048 bits, and a
//! JWKS with no usable key at all.
//!
//! Each key is pinned to one algorithm (its `alg`, or the only one its
//! type allows here), so no token can make a key verify under another.

use std::collections::HashMap;
use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::digest;
use ring::signature::{RsaPublicKeyComponents, RSA_PKCS1_2048_8192_SHA256};
use serde::Deserialize;

use super::{UserAlgorithm, UserError};
use crate::license::jose::{is_valid_idp_kid, IDP_KID_CHARACTERS};
use crate::license::json::{from_slice_strict, Present};
use crate::license::{quote, Algorithm, KeyError, LicenseError, VerifyingKey};

/// RSA moduli accepted, in bits: what `RSA_PKCS1_2048_8192_SHA256` verifies.
const RSA_BITS: std::ops::RangeInclusive<usize> = 2048..=8192;

/// A JWKS could not be used. Names where it came from, which key (by
/// position and kid), and what was expected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {}{message}", key.as_deref().map(|k| format!("{k}: ")).unwrap_or_default())]
pub struct UserKeyError {
    /// The JWKS's source: a file path or URL.
    pub origin: String,
    /// The key at fault, `key #2 (`kc-1`)`; `None` for the document.
    pub key: Option<String>,
    /// What is wrong and what was expected.
    pub message: String,
}

/// A public key that may sign user tokens.
#[derive(Clone, PartialEq, Eq)]
pub struct UserKey {
    kid: Box<str>,
    alg: UserAlgorithm,
    public: Public,
}

#[derive(Clone, PartialEq, Eq)]
enum Public {
    /// Modulus and exponent, big-endian without leading zeros (as ring
    /// takes them).
    Rsa { n: Box<[u8]>, e: Box<[u8]> },
    /// ES256 and EdDSA: the license keyring's key type, which checks the
    /// point and verifies with ring.
    Curve(VerifyingKey),
}

impl UserKey {
    /// The key id tokens name it by.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The one algorithm this key verifies.
    pub fn alg(&self) -> UserAlgorithm {
        self.alg
    }

    /// The signature's length, before any `ring` work: a forged token of
    /// the wrong shape costs nothing.
    pub(crate) fn check_signature_length(&self, signature: &[u8]) -> Result<(), UserError> {
        match &self.public {
            Public::Rsa { n, .. } if signature.len() != n.len() => {
                Err(UserError::SignatureInvalid(format!(
                    "an RS256 signature under key `{}` ({} bits) is {} bytes, this is {}",
                    self.kid,
                    bit_length(n),
                    n.len(),
                    signature.len()
                )))
            }
            Public::Rsa { .. } => Ok(()),
            Public::Curve(key) => key
                .check_signature_length(signature)
                .map_err(signature_error),
        }
    }

    /// Check `signature` over `message`.
    pub(crate) fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), UserError> {
        match &self.public {
            Public::Rsa { n, e } => RsaPublicKeyComponents { n, e }
                .verify(&RSA_PKCS1_2048_8192_SHA256, message, signature)
                .map_err(|_| {
                    UserError::SignatureInvalid(format!(
                        "it does not verify under key `{}` (RS256)",
                        self.kid
                    ))
                }),
            Public::Curve(key) => key.verify(message, signature).map_err(signature_error),
        }
    }

    /// The bytes the keyring's generation is computed from.
    fn public_bytes(&self) -> [&[u8]; 2] {
        match &self.public {
            Public::Rsa { n, e } => [n, e],
            Public::Curve(key) => [key.public_key(), &[]],
        }
    }
}

impl fmt::Debug for UserKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

fn signature_error(error: LicenseError) -> UserError {
    match error {
        LicenseError::SignatureInvalid(detail) => UserError::SignatureInvalid(detail),
        other => UserError::SignatureInvalid(other.to_string()),
    }
}

/// One issuer's usable keys by kid, and what its JWKS held that was
/// skipped. Immutable; share it behind an `Arc` and swap whole keyrings.
pub struct UserKeyring {
    keys: HashMap<Box<str>, UserKey>,
    skipped: Vec<String>,
    generation: u64,
}

impl UserKeyring {
    /// No keys: an issuer whose JWKS is not loaded yet. Every token naming
    /// it is `key_unknown`.
    pub fn empty() -> UserKeyring {
        UserKeyring::from_keys(HashMap::new(), Vec::new())
    }

    /// The usable keys of a JWKS document (`{"keys": [...]}`); `origin`
    /// (a path or URL) names it in errors. See the module docs for what is
    /// skipped and what is an error.
    pub fn from_jwks_slice(json: &[u8], origin: &str) -> Result<UserKeyring, UserKeyError> {
        let document_error = |message: String| UserKeyError {
            origin: origin.to_owned(),
            key: None,
            message,
        };
        let jwks: Jwks = from_slice_strict(json).map_err(|e| {
            document_error(format!("not a JWKS document ({{\"keys\": [...]}}): {e}"))
        })?;
        let mut keys = HashMap::with_capacity(jwks.keys.len());
        let mut skipped = Vec::new();
        for (index, value) in jwks.keys.into_iter().enumerate() {
            let kid = value.get("kid").and_then(serde_json::Value::as_str);
            let key_error = |message: String| UserKeyError {
                origin: origin.to_owned(),
                key: Some(match kid {
                    Some(kid) => format!("key #{index} ({})", quote(kid)),
                    None => format!("key #{index}"),
                }),
                message,
            };
            let jwk = Jwk::deserialize(&value).map_err(|e| key_error(e.to_string()))?;
            match jwk.classify().map_err(key_error)? {
                Use::Skip(why) => skipped.push(match kid {
                    Some(kid) => format!("{kid}: {why}"),
                    None => format!("key #{index}: {why}"),
                }),
                Use::Sign(alg) => {
                    let key = jwk.into_key(alg).map_err(key_error)?;
                    if keys.contains_key(&key.kid) {
                        return Err(key_error(
                            "the kid appears more than once; tokens name their key by it".into(),
                        ));
                    }
                    keys.insert(key.kid.clone(), key);
                }
            }
        }
        if keys.is_empty() {
            return Err(document_error(if skipped.is_empty() {
                "`keys` is empty; expected at least one RS256, ES256 or EdDSA signing key".into()
            } else {
                format!(
                    "no usable signing key (RS256, ES256 or EdDSA); skipped {}",
                    skipped.join("; ")
                )
            }));
        }
        Ok(UserKeyring::from_keys(keys, skipped))
    }

    fn from_keys(keys: HashMap<Box<str>, UserKey>, skipped: Vec<String>) -> UserKeyring {
        let generation = generation(&keys);
        UserKeyring {
            keys,
            skipped,
            generation,
        }
    }

    /// The key named `kid`.
    pub fn get(&self, kid: &str) -> Option<&UserKey> {
        self.keys.get(kid)
    }

    /// The number of usable keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are no keys (not loaded yet).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The usable keys' kids, sorted.
    pub fn kids(&self) -> Vec<&str> {
        let mut kids: Vec<&str> = self.keys.keys().map(|k| &**k).collect();
        kids.sort_unstable();
        kids
    }

    /// The keys of the JWKS that were not taken, each as `kid: why`
    /// (`key #n: why` when it had no kid), in document order.
    pub fn skipped(&self) -> Vec<String> {
        self.skipped.clone()
    }

    /// A fingerprint of the usable keys (kids, algorithms, key bytes) as a
    /// number: equal keys give equal generations however they were listed,
    /// so a refetch that changed nothing keeps the caches.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

impl fmt::Debug for UserKeyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserKeyring")
            .field("generation", &format_args!("{:016x}", self.generation))
            .field("kids", &self.kids())
            .field("skipped", &self.skipped)
            .finish()
    }
}

fn generation(keys: &HashMap<Box<str>, UserKey>) -> u64 {
    let mut sorted: Vec<&UserKey> = keys.values().collect();
    sorted.sort_unstable_by(|a, b| a.kid.cmp(&b.kid));
    // Length-prefixed fields, so no two different keyrings encode alike.
    let mut encoded = Vec::new();
    for key in sorted {
        let [first, second] = key.public_bytes();
        for field in [
            key.kid.as_bytes(),
            key.alg.as_str().as_bytes(),
            first,
            second,
        ] {
            encoded.extend_from_slice(&(field.len() as u32).to_be_bytes());
            encoded.extend_from_slice(field);
        }
    }
    digest64(&encoded)
}

/// The first 64 bits of the SHA-256 of `bytes`: a generation number.
pub(crate) fn digest64(bytes: &[u8]) -> u64 {
    let digest = digest::digest(&digest::SHA256, bytes);
    let mut first = [0; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    u64::from_be_bytes(first)
}

#[derive(Deserialize)]
struct Jwks {
    keys: Vec<serde_json::Value>,
}

/// The members of one JWK that decide whether and how it is used; others
/// (`x5c`, `x5t`, ...) are ignored.
#[derive(Deserialize)]
struct Jwk {
    kty: Option<String>,
    crv: Option<String>,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    key_ops: Option<Vec<String>>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
    // Private members (RFC 7518 §6.2.2, §6.3.2, §6.4.1; RFC 8037 §2).
    #[serde(default)]
    d: Present,
    #[serde(default)]
    p: Present,
    #[serde(default)]
    q: Present,
    #[serde(default)]
    dp: Present,
    #[serde(default)]
    dq: Present,
    #[serde(default)]
    qi: Present,
    #[serde(default)]
    oth: Present,
    #[serde(default)]
    k: Present,
}

/// What a JWK is for here.
enum Use {
    /// A signing key, pinned to this algorithm.
    Sign(UserAlgorithm),
    /// Not ours to use, and why.
    Skip(String),
}

/// Algorithms of each key type that we do not verify: a key pinned to one
/// is skipped. Any other `alg` contradicts the key and is an error.
const RSA_OTHER: [&str; 10] = [
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "RSA1_5",
    "RSA-OAEP",
    "RSA-OAEP-256",
    "RSA-OAEP-384",
    "RSA-OAEP-512",
];
const KEY_AGREEMENT: [&str; 4] = [
    "ECDH-ES",
    "ECDH-ES+A128KW",
    "ECDH-ES+A192KW",
    "ECDH-ES+A256KW",
];

impl Jwk {
    fn classify(&self) -> Result<Use, String> {
        let private = [
            ("d", self.d),
            ("p", self.p),
            ("q", self.q),
            ("dp", self.dp),
            ("dq", self.dq),
            ("qi", self.qi),
            ("oth", self.oth),
            ("k", self.k),
        ];
        if let Some((name, _)) = private.iter().find(|(_, present)| present.0) {
            return Err(format!(
                "holds private key material (`{name}`); a JWKS for verification publishes public keys only"
            ));
        }
        if let Some(usage) = self.use_.as_deref() {
            if usage != "sig" {
                return Ok(Use::Skip(format!("`use` is {}, not `sig`", quote(usage))));
            }
        }
        if let Some(ops) = &self.key_ops {
            if !ops.iter().any(|op| op == "verify") {
                return Ok(Use::Skip("`key_ops` does not include `verify`".into()));
            }
        }
        let alg = self.alg.as_deref();
        let (pinned, others): (UserAlgorithm, &[&str]) =
            match (self.kty.as_deref(), self.crv.as_deref()) {
                (None, _) => return Err("has no `kty`".into()),
                (Some("RSA"), _) => (UserAlgorithm::RS256, &RSA_OTHER),
                (Some("EC"), Some("P-256")) => (UserAlgorithm::ES256, &KEY_AGREEMENT),
                (Some("OKP"), Some("Ed25519")) => (UserAlgorithm::EdDSA, &["Ed25519"]),
                (Some("EC" | "OKP"), None) => return Err("has no `crv`".into()),
                (Some("EC" | "OKP"), Some(crv)) => {
                    return Ok(Use::Skip(format!(
                        "curve {} is not supported (EC P-256 and OKP Ed25519 are)",
                        quote(crv)
                    )))
                }
                (Some("oct"), _) => {
                    return Ok(Use::Skip(
                        "a symmetric (`oct`) key never verifies user tokens".into(),
                    ))
                }
                (Some(kty), _) => {
                    return Ok(Use::Skip(format!(
                        "key type {} is not supported (RSA, EC, OKP are)",
                        quote(kty)
                    )))
                }
            };
        match alg {
            None => Ok(Use::Sign(pinned)),
            Some(name) if name == pinned.as_str() => Ok(Use::Sign(pinned)),
            Some(name) if others.contains(&name) => Ok(Use::Skip(format!(
                "`alg` {} is not supported ({pinned} is)",
                quote(name)
            ))),
            Some(name) => Err(format!(
                "`alg` is {}, which a {} key cannot be used for; expected {pinned}",
                quote(name),
                self.kty.as_deref().unwrap_or_default()
            )),
        }
    }

    /// The key of a JWK that [`classify`](Self::classify) found usable.
    fn into_key(self, alg: UserAlgorithm) -> Result<UserKey, String> {
        let kid = self
            .kid
            .ok_or("has no `kid`; a signing key needs one, tokens name their key by it")?;
        if !is_valid_idp_kid(&kid) {
            return Err(format!(
                "kid {} is not a key id: {}",
                quote(&kid),
                IDP_KID_CHARACTERS
            ));
        }
        let public = match alg {
            UserAlgorithm::RS256 => rsa_public(member("n", self.n)?, member("e", self.e)?)?,
            UserAlgorithm::ES256 => {
                let (x, y) = (member("x", self.x)?, member("y", self.y)?);
                if x.len() != 32 || y.len() != 32 {
                    return Err(format!(
                        "P-256 coordinates are 32 bytes each; `x` is {} and `y` is {}",
                        x.len(),
                        y.len()
                    ));
                }
                curve(&kid, Algorithm::ES256, &[&[0x04], &x[..], &y[..]].concat())?
            }
            UserAlgorithm::EdDSA => curve(&kid, Algorithm::EdDSA, &member("x", self.x)?)?,
        };
        Ok(UserKey {
            kid: kid.into(),
            alg,
            public,
        })
    }
}

/// A base64url member's bytes.
fn member(name: &str, value: Option<String>) -> Result<Vec<u8>, String> {
    let value = value.ok_or_else(|| format!("has no `{name}`"))?;
    URL_SAFE_NO_PAD
        .decode(value)
        .map_err(|e| format!("`{name}` is not unpadded base64url: {e}"))
}

fn curve(kid: &str, alg: Algorithm, public: &[u8]) -> Result<Public, String> {
    // `into_key` checked the kid by the identity provider's rule.
    VerifyingKey::with_checked_kid(kid, alg, public)
        .map(Public::Curve)
        .map_err(|e| match e {
            KeyError::Invalid { message, .. } => message,
            other => other.to_string(),
        })
}

/// Check what ring will check at every verification, once, here: a key it
/// would refuse is a load error, not a stream of invalid signatures.
fn rsa_public(n: Vec<u8>, e: Vec<u8>) -> Result<Public, String> {
    let n = strip_leading_zeros(&n);
    let bits = bit_length(n);
    if !RSA_BITS.contains(&bits) {
        return Err(format!(
            "an RSA key of {bits} bits; expected {} to {} bits",
            RSA_BITS.start(),
            RSA_BITS.end()
        ));
    }
    if n.last().is_some_and(|b| b & 1 == 0) {
        return Err("the RSA modulus `n` is even, so not a modulus".into());
    }
    let e = strip_leading_zeros(&e);
    let exponent = (e.len() <= 5).then(|| e.iter().fold(0u64, |v, &b| (v << 8) | u64::from(b)));
    match exponent {
        Some(value) if (3..(1 << 33)).contains(&value) && value & 1 == 1 => {}
        _ => {
            return Err(
                "the RSA exponent `e` must be odd, at least 3 and below 2^33 (usually AQAB, 65537)"
                    .into(),
            )
        }
    }
    Ok(Public::Rsa {
        n: n.into(),
        e: e.into(),
    })
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[first..]
}

/// Bits of a big-endian number without leading zero bytes.
fn bit_length(n: &[u8]) -> usize {
    match n.first() {
        None => 0,
        Some(top) => n.len() * 8 - top.leading_zeros() as usize,
    }
}
