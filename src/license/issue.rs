//! Minting keys and licenses, for the CLI and for tests. Not used on the
//! request path.

use std::fmt;
use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivatePkcs8KeyDer;

use super::keys::{pem_encode, KeyError, VerifyingKey};
use super::token::Algorithm;

/// A private signing key (Ed25519 or P-256), kept with its PKCS#8 encoding
/// so it can be written back out unchanged.
pub struct SigningKey {
    pkcs8: Vec<u8>,
    pair: Pair,
}

enum Pair {
    Ed25519(Ed25519KeyPair),
    P256(EcdsaKeyPair),
}

impl SigningKey {
    /// A fresh random key for `alg`.
    pub fn generate(alg: Algorithm) -> Result<SigningKey, KeyError> {
        let rng = SystemRandom::new();
        let pkcs8 = match alg {
            Algorithm::EdDSA => Ed25519KeyPair::generate_pkcs8(&rng),
            Algorithm::ES256 => {
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            }
        }
        .map_err(|_| invalid("key generation", "the system random source failed"))?;
        SigningKey::from_pkcs8_der(pkcs8.as_ref())
    }

    /// A key from unencrypted PKCS#8 DER: Ed25519 (v1 or v2) or P-256.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<SigningKey, KeyError> {
        from_pkcs8(der, "private key")
    }

    /// A key from the first `PRIVATE KEY` (PKCS#8) PEM block in `pem`.
    pub fn from_pkcs8_pem(pem: &[u8]) -> Result<SigningKey, KeyError> {
        let der =
            PrivatePkcs8KeyDer::from_pem_slice(pem).map_err(|e| pem_error("private key", e))?;
        from_pkcs8(der.secret_pkcs8_der(), "private key")
    }

    /// A key from a PKCS#8 PEM file.
    pub fn from_pkcs8_pem_file(path: &Path) -> Result<SigningKey, KeyError> {
        let origin = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| KeyError::Read {
            path: path.to_owned(),
            source,
        })?;
        let der = PrivatePkcs8KeyDer::from_pem_slice(&bytes).map_err(|e| pem_error(&origin, e))?;
        from_pkcs8(der.secret_pkcs8_der(), &origin)
    }

    /// The algorithm this key signs with.
    pub fn alg(&self) -> Algorithm {
        match self.pair {
            Pair::Ed25519(_) => Algorithm::EdDSA,
            Pair::P256(_) => Algorithm::ES256,
        }
    }

    /// The private key as a `PRIVATE KEY` (PKCS#8) PEM block. Secret.
    pub fn private_key_pem(&self) -> String {
        pem_encode("PRIVATE KEY", &self.pkcs8)
    }

    /// The public key as a `PUBLIC KEY` (SPKI) PEM block.
    pub fn public_key_pem(&self) -> String {
        self.verifying_key_unchecked("k").to_spki_pem()
    }

    /// The public half, named `kid`.
    pub fn verifying_key(&self, kid: &str) -> Result<VerifyingKey, KeyError> {
        VerifyingKey::new(kid, self.alg(), self.public_bytes())
    }

    /// Sign `message`: 64 bytes for both algorithms.
    pub fn sign_bytes(&self, message: &[u8]) -> Vec<u8> {
        match &self.pair {
            Pair::Ed25519(pair) => pair.sign(message).as_ref().to_vec(),
            Pair::P256(pair) => pair
                .sign(&SystemRandom::new(), message)
                // ring fails here only if the OS random source does.
                .expect("the system random source failed while signing")
                .as_ref()
                .to_vec(),
        }
    }

    fn public_bytes(&self) -> &[u8] {
        match &self.pair {
            Pair::Ed25519(pair) => pair.public_key().as_ref(),
            Pair::P256(pair) => pair.public_key().as_ref(),
        }
    }

    fn verifying_key_unchecked(&self, kid: &str) -> VerifyingKey {
        self.verifying_key(kid)
            .expect("a key pair's own public key is valid")
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.alg())
            .finish_non_exhaustive()
    }
}

fn invalid(origin: &str, message: impl Into<String>) -> KeyError {
    KeyError::Invalid {
        origin: origin.to_owned(),
        message: message.into(),
    }
}

fn pem_error(origin: &str, error: rustls_pki_types::pem::Error) -> KeyError {
    let message = match error {
        rustls_pki_types::pem::Error::NoItemsFound => {
            "no `-----BEGIN PRIVATE KEY-----` (PKCS#8) block; convert other formats with `openssl pkcs8 -topk8 -nocrypt`".to_owned()
        }
        other => format!("not valid PEM: {other}"),
    };
    invalid(origin, message)
}

fn from_pkcs8(der: &[u8], origin: &str) -> Result<SigningKey, KeyError> {
    // The "maybe unchecked" form also takes PKCS#8 v1 (no embedded public
    // key), which OpenSSL and Python's cryptography write; v2 is checked.
    let pair = if let Ok(pair) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
        Pair::Ed25519(pair)
    } else if let Ok(pair) =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &SystemRandom::new())
    {
        Pair::P256(pair)
    } else {
        return Err(invalid(
            origin,
            "not an unencrypted Ed25519 or P-256 PKCS#8 private key",
        ));
    };
    Ok(SigningKey {
        pkcs8: der.to_vec(),
        pair,
    })
}

/// Sign `claims` as a compact JWS with header `{"alg", "kid", "typ": "JWT"}`.
///
/// # Panics
/// If `kid` is not a valid key id (see [`VerifyingKey::new`]), or if the OS
/// random source fails during ES256 signing.
pub fn sign(claims: &serde_json::Value, key: &SigningKey, kid: &str) -> String {
    assert!(
        super::jose::is_valid_kid(kid),
        "kid {kid:?} is not a valid key id"
    );
    let header = serde_json::json!({"alg": key.alg().as_str(), "kid": kid, "typ": "JWT"});
    sign_parts(
        header.to_string().as_bytes(),
        claims.to_string().as_bytes(),
        key,
    )
}

/// Sign a revocation list (claims `{iss?, iat, seq, jti, sub}`) with `key`
/// under `kid`; see [`super::revocation`].
pub fn sign_revocations(claims: &serde_json::Value, key: &SigningKey, kid: &str) -> String {
    assert!(
        super::jose::is_valid_kid(kid),
        "kid {kid:?} is not a valid key id"
    );
    let header = serde_json::json!({
        "alg": key.alg().as_str(),
        "kid": kid,
        "typ": super::revocation::REVOCATIONS_TYP,
    });
    sign_parts(
        header.to_string().as_bytes(),
        claims.to_string().as_bytes(),
        key,
    )
}

/// Sign exactly these header and payload bytes. No checks at all: for tests
/// and tools that need to craft unusual (or hostile) tokens.
pub fn sign_parts(header: &[u8], payload: &[u8], key: &SigningKey) -> String {
    let mut token = URL_SAFE_NO_PAD.encode(header);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(payload, &mut token);
    let signature = key.sign_bytes(token.as_bytes());
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(signature, &mut token);
    token
}

/// Why claims about to be signed make a token that is valid at no time
/// from `now` on: `exp` not after `now` (already expired, or expiring at
/// once as with a zero lifetime), or `nbf` not before `exp`. `None` when
/// some time remains, or when the times are not numbers (the claims check
/// that follows signing reports those).
pub fn never_valid(claims: &serde_json::Value, now: u64) -> Option<String> {
    let time = |name| claims.get(name).and_then(serde_json::Value::as_u64);
    let exp = time("exp")?;
    if exp <= now {
        return Some(format!(
            "`exp` is unix {exp}, {} s before now (unix {now}): the token would be expired when issued",
            now - exp
        ));
    }
    match time("nbf") {
        Some(nbf) if nbf >= exp => Some(format!(
            "`nbf` (unix {nbf}) is not before `exp` (unix {exp}): the token would never be valid"
        )),
        _ => None,
    }
}

/// A JWKS document (`{"keys": [...]}`) of `keys`.
pub fn jwks(keys: &[VerifyingKey]) -> serde_json::Value {
    let keys: Vec<_> = keys.iter().map(VerifyingKey::to_jwk).collect();
    serde_json::json!({ "keys": keys })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::license::keys::Keyring;

    #[test]
    fn generated_keys_round_trip_through_pem() {
        for alg in [Algorithm::EdDSA, Algorithm::ES256] {
            let key = SigningKey::generate(alg).unwrap();
            assert_eq!(key.alg(), alg);
            let pem = key.private_key_pem();
            assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{pem}");
            assert!(pem.lines().all(|l| l.len() <= 64));
            let back = SigningKey::from_pkcs8_pem(pem.as_bytes()).unwrap();
            assert_eq!(back.alg(), alg);
            assert_eq!(back.public_key_pem(), key.public_key_pem());

            let public = key.verifying_key("k1").unwrap();
            assert_eq!(public.alg(), alg);
            let spki = rustls_pki_types::SubjectPublicKeyInfoDer::from_pem_slice(
                key.public_key_pem().as_bytes(),
            )
            .unwrap();
            assert_eq!(VerifyingKey::from_spki_der("k1", &spki).unwrap(), public);
        }
    }

    #[test]
    fn signatures_are_64_bytes_and_verify() {
        for alg in [Algorithm::EdDSA, Algorithm::ES256] {
            let key = SigningKey::generate(alg).unwrap();
            let sig = key.sign_bytes(b"hello");
            assert_eq!(sig.len(), 64);
            let public = key.verifying_key("k").unwrap();
            assert!(public.verify(b"hello", &sig).is_ok());
            assert!(public.verify(b"hellO", &sig).is_err());
        }
    }

    #[test]
    fn jwks_export_loads_back() {
        let ed = SigningKey::generate(Algorithm::EdDSA).unwrap();
        let ec = SigningKey::generate(Algorithm::ES256).unwrap();
        let keys = vec![
            ed.verifying_key("ed").unwrap(),
            ec.verifying_key("ec").unwrap(),
        ];
        let doc = jwks(&keys);
        let ring = Keyring::from_jwks_slice(doc.to_string().as_bytes()).unwrap();
        assert_eq!(ring.get("ed"), Some(&keys[0]));
        assert_eq!(ring.get("ec"), Some(&keys[1]));
        assert_eq!(ring.to_jwks(), jwks(&[keys[1].clone(), keys[0].clone()]));
    }

    #[test]
    fn loading_rejects_other_private_keys() {
        let err = SigningKey::from_pkcs8_pem(b"nothing here").unwrap_err();
        assert!(err.to_string().contains("openssl pkcs8"), "{err}");
        let err = SigningKey::from_pkcs8_der(&[0x30, 0x03, 0x02, 0x01, 0x00]).unwrap_err();
        assert!(err.to_string().contains("Ed25519 or P-256"), "{err}");
    }

    #[test]
    fn tokens_valid_at_no_time_are_named() {
        use serde_json::json;
        let now = 1_000_000;
        assert_eq!(never_valid(&json!({"exp": now + 1}), now), None);
        assert_eq!(
            never_valid(&json!({"nbf": now + 10, "exp": now + 11}), now),
            None
        );
        assert_eq!(never_valid(&json!({"exp": "soon"}), now), None);
        let expired = never_valid(&json!({"exp": now - 5}), now).unwrap();
        assert!(expired.contains("5 s before now"), "{expired}");
        let at_once = never_valid(&json!({"exp": now}), now).unwrap();
        assert!(at_once.contains("expired when issued"), "{at_once}");
        let backwards = never_valid(&json!({"nbf": now + 20, "exp": now + 20}), now).unwrap();
        assert!(backwards.contains("never be valid"), "{backwards}");
    }

    #[test]
    fn sign_produces_the_standard_header() {
        let key = SigningKey::generate(Algorithm::EdDSA).unwrap();
        let token = sign(&serde_json::json!({"sub": "x"}), &key, "k-1");
        let header = token.split('.').next().unwrap();
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
        assert_eq!(
            header,
            serde_json::json!({"alg": "EdDSA", "kid": "k-1", "typ": "JWT"})
        );
    }
}
