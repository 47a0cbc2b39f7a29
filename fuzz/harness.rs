//! The fuzz harness, shared by the cargo-fuzz targets in `fuzz/fuzz_targets/`
//! and by the seed-replay test in `src/license/tests.rs`, so CI runs every
//! committed seed (and regression) through exactly the code libFuzzer runs.
//!
//! This file is compiled twice, with `#[path]`: as a module of each fuzz
//! binary (whose root does `use licensegate::license;`) and as a module of
//! the library's unit tests (where `crate::license` is the module itself).
//! So it names the library only as `crate::license` and uses only its public
//! API.
//!
//! Every function here must return normally for every input: a panic is a
//! bug, either in `src/license` or in an invariant asserted below.

#![allow(dead_code)]

use std::sync::OnceLock;

use serde_json::Value;

use crate::license::issue::{sign, sign_parts, SigningKey};
use crate::license::{
    admits, token, Algorithm, Claims, Environment, Keyring, LicenseError, Validator,
    VerifiedLicense,
};

/// Key id of the fixed Ed25519 key.
pub const ED25519_KID: &str = "fuzz-ed25519";
/// Key id of the fixed ES256 (P-256) key.
pub const ES256_KID: &str = "fuzz-es256";

/// The header `signed_claims` uses when its input has no NUL byte.
pub const STANDARD_HEADER: &[u8] = br#"{"alg":"EdDSA","kid":"fuzz-ed25519","typ":"JWT"}"#;

/// An unencrypted PKCS#8 v1 Ed25519 private key made once with
/// `openssl genpkey -algorithm ed25519 -outform DER`. TEST ONLY: it signs
/// nothing but fuzz inputs and seeds.
const ED25519_PKCS8: [u8; 48] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
    0xdd, 0x31, 0x92, 0xc9, 0x04, 0x45, 0x57, 0x3e, 0xd7, 0x8f, 0x64, 0xbe, 0x58, 0xad, 0x30, 0x35,
    0x53, 0x98, 0x80, 0xcd, 0x65, 0x85, 0x3a, 0x83, 0x34, 0x08, 0x81, 0x77, 0xe2, 0x40, 0x56, 0x9d,
];

/// An unencrypted PKCS#8 P-256 private key (with its public key, as ring
/// needs) made once with `openssl genpkey -algorithm EC -pkeyopt
/// ec_paramgen_curve:P-256` and `openssl pkcs8 -topk8 -nocrypt`. TEST ONLY.
const ES256_PKCS8: [u8; 138] = [
    0x30, 0x81, 0x87, 0x02, 0x01, 0x00, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02,
    0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x04, 0x6d, 0x30, 0x6b, 0x02,
    0x01, 0x01, 0x04, 0x20, 0x62, 0x49, 0xbe, 0x76, 0xa9, 0x05, 0x01, 0x9c, 0xd2, 0x45, 0xe6, 0xfc,
    0xef, 0x66, 0x18, 0xa9, 0x13, 0x8b, 0x40, 0x25, 0xe2, 0x6e, 0x92, 0xec, 0xb0, 0xd0, 0xa2, 0x7b,
    0x45, 0x54, 0x77, 0x86, 0xa1, 0x44, 0x03, 0x42, 0x00, 0x04, 0x69, 0xfa, 0x49, 0x80, 0x9e, 0xb4,
    0x41, 0x9b, 0x91, 0x8e, 0xdd, 0xfb, 0xe0, 0x9c, 0x42, 0x65, 0xf5, 0xe9, 0xa8, 0x17, 0x05, 0x0c,
    0x3f, 0x82, 0x1a, 0xdd, 0x7d, 0xd6, 0x0d, 0xc5, 0x10, 0xfe, 0x31, 0x3c, 0x17, 0x80, 0xd2, 0x7c,
    0x8f, 0x35, 0x5b, 0x85, 0x6d, 0xff, 0x13, 0xd9, 0xe2, 0x98, 0xb3, 0xd8, 0x8e, 0xe8, 0x24, 0x1c,
    0xef, 0x47, 0xe1, 0x7a, 0x84, 0x56, 0xc0, 0x02, 0x8a, 0x18,
];

/// The fixed signing keys and the keyring of their public halves.
pub struct Keys {
    /// Signs as [`ED25519_KID`].
    pub ed25519: SigningKey,
    /// Signs as [`ES256_KID`].
    pub es256: SigningKey,
    /// Both public keys.
    pub keyring: Keyring,
}

/// The fixed keys, built once per process.
pub fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let ed25519 = SigningKey::from_pkcs8_der(&ED25519_PKCS8).expect("fixed Ed25519 key");
        let es256 = SigningKey::from_pkcs8_der(&ES256_PKCS8).expect("fixed P-256 key");
        assert_eq!(ed25519.alg(), Algorithm::EdDSA);
        assert_eq!(es256.alg(), Algorithm::ES256);
        let keyring = Keyring::from_keys(vec![
            ed25519.verifying_key(ED25519_KID).expect("valid kid"),
            es256.verifying_key(ES256_KID).expect("valid kid"),
        ])
        .expect("distinct kids");
        Keys {
            ed25519,
            es256,
            keyring,
        }
    })
}

/// Target `token_verify`: `data`, if UTF-8, as a token for [`token::verify`]
/// against the fixed keyring. Returns what `verify` returned (`None` for
/// non-UTF-8 input).
///
/// Besides "no panic", every rejection must be well-formed: this input is
/// unauthenticated, and details may be shown to the client, so they must
/// stay short and free of control characters.
pub fn token_verify(data: &[u8]) -> Option<Result<VerifiedLicense, LicenseError>> {
    let text = std::str::from_utf8(data).ok()?;
    let result = token::verify(text, &keys().keyring);
    match &result {
        Ok(license) => exercise_verified(license),
        Err(err) => check_error(err, false),
    }
    Some(result)
}

/// Target `signed_claims`: sign `data` with a fixed key and verify it, so
/// the claims parser and strict JSON see signature-valid input.
///
/// Without a NUL byte, `data` is the payload under [`STANDARD_HEADER`]. With
/// one, the bytes before the first NUL are the header and the rest the
/// payload (valid JSON never holds a raw NUL, so no payload worth trying is
/// lost); the ES256 key signs when the header mentions `ES256`, else the
/// Ed25519 key.
pub fn signed_claims(data: &[u8]) -> Result<VerifiedLicense, LicenseError> {
    let keys = keys();
    let (header, payload, custom_header) = match data.iter().position(|&b| b == 0) {
        Some(nul) => (&data[..nul], &data[nul + 1..], true),
        None => (STANDARD_HEADER, data, false),
    };
    let key = if contains(header, b"ES256") {
        &keys.es256
    } else {
        &keys.ed25519
    };
    let token = sign_parts(header, payload, key);
    let result = token::verify(&token, &keys.keyring);

    match &result {
        Ok(license) => {
            exercise_verified(license);
            // RFC 7515 §4: the JOSE Header is a JSON object.
            assert!(
                serde_json::from_slice::<serde_json::Map<String, Value>>(header).is_ok(),
                "accepted a header that is not a JSON object: {}",
                String::from_utf8_lossy(header)
            );
            // The strict single-pass parse must agree with serde_json's own
            // tree on every document it accepts (it may reject more:
            // repeated keys).
            let tree: Value = serde_json::from_slice(payload)
                .expect("claims accepted but serde_json cannot parse the payload");
            let via_tree: Claims = serde_json::from_value(tree)
                .expect("claims accepted but not parseable from serde_json's tree");
            assert_eq!(via_tree, license.claims, "the two parses disagree");
        }
        Err(err) => {
            // The signature is ours; with our header only the claims can
            // be at fault (or their absence, or the size limit).
            if !custom_header
                && !payload.is_empty()
                && token.len() <= crate::license::MAX_TOKEN_BYTES
            {
                assert_eq!(err.reason(), "license_malformed", "{err}");
                assert!(err.detail().contains(": claims: "), "{err}");
            }
            check_error(err, false);
        }
    }
    result
}

/// Run a verified license through everything downstream of `verify`, and
/// check that its claims survive a serialise, re-sign and verify round trip.
fn exercise_verified(license: &VerifiedLicense) {
    let claims = &license.claims;
    assert!(!claims.sub.is_empty(), "an empty `sub` was accepted");

    let strict = Validator {
        issuer: Some("https://licenses.example.com".into()),
        audience: Some("licensegate".into()),
        ..Validator::default()
    };
    let huge = Validator {
        leeway: std::time::Duration::from_secs(u64::MAX),
        grace: std::time::Duration::from_secs(u64::MAX),
        ..Validator::default()
    };
    for now in [0, claims.exp.0, claims.exp.0.saturating_add(61), u64::MAX] {
        for validator in [&strict, &huge] {
            if let Err(err) = validator.validate(claims, now) {
                check_error(&err, true);
            }
        }
    }
    let env = &claims.lic.env;
    let first = |list: &Option<Vec<String>>| list.as_ref().and_then(|l| l.first().cloned());
    for runtime in [
        Environment::default(),
        Environment {
            cluster: Some("prod-eu".into()),
            namespace: Some("shop".into()),
            region: Some("eu-west-1".into()),
            service_account: Some("api".into()),
        },
        Environment {
            cluster: first(&env.clusters),
            namespace: first(&env.namespaces),
            region: first(&env.regions),
            service_account: first(&env.service_accounts),
        },
    ] {
        if let Err(err) = admits(env, &runtime) {
            check_error(&err, true);
        }
    }

    let value = serde_json::to_value(claims).expect("claims serialise");
    let again = token::verify(&sign(&value, &keys().ed25519, ED25519_KID), &keys().keyring)
        .unwrap_or_else(|e| panic!("re-signed claims do not verify: {e}\n{value}"));
    assert_eq!(&again.claims, claims, "claims changed in a round trip");
}

/// Every error has a listed reason and a non-empty detail. Unless it is
/// about claims whose signature verified (`signed` here, or a claims parse
/// error, which `verify` reports only after the signature), something in it
/// may come from an anonymous client, and details may be shown to clients:
/// so the detail must also be short and printable.
fn check_error(err: &LicenseError, signed: bool) {
    assert!(LicenseError::REASONS.contains(&err.reason()), "{err:?}");
    let detail = err.detail();
    assert!(!detail.is_empty());
    if signed || detail.starts_with("malformed license token: claims: ") {
        return;
    }
    assert!(
        detail.len() <= 512,
        "a {}-byte detail from unauthenticated input: {detail:.200}",
        detail.len()
    );
    assert!(
        !detail.chars().any(char::is_control),
        "a control character in a detail: {detail:?}"
    );
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
