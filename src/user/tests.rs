//! User tokens end to end: PyJWT-made tokens of Keycloak and Auth0 shape,
//! every refusal, JWKS loading, and the cached verifier.
//!
//! The fixtures come from `tests/fixtures/users/make_fixtures.py`; its
//! private keys let these tests sign their own tokens with the keys of the
//! JWKS it wrote.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use futures_util::FutureExt;
use http::{HeaderMap, HeaderValue};
use ring::hmac;
use ring::rand::SystemRandom;
use ring::signature::{KeyPair, RsaKeyPair, RSA_PKCS1_SHA256};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivatePkcs8KeyDer;
use serde_json::{json, Value};

use super::settings::UserForwarding;
use super::*;
use crate::license::issue::SigningKey;
use crate::license::{Answered, BudgetSettings};
use crate::metrics::Registry;

/// 2023-11-14T22:13:20Z; the fake clock.
const NOW: u64 = 1_700_000_000;
const LEEWAY: u64 = 60;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/users")
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn fixture_token(name: &str) -> Vec<u8> {
    fixture(name).trim_ascii().to_vec()
}

/// What make_fixtures.py says the tokens carry.
fn expected() -> Value {
    serde_json::from_slice(&fixture("expected.json")).unwrap()
}

fn keyring(name: &str) -> Arc<UserKeyring> {
    Arc::new(UserKeyring::from_jwks_slice(&fixture(name), name).unwrap())
}

fn path(text: &str) -> ClaimPath {
    ClaimPath::parse(text).unwrap()
}

fn keycloak() -> IssuerSettings {
    IssuerSettings {
        issuer: expected()["keycloak"]["issuer"].as_str().unwrap().into(),
        audiences: vec!["licensegate".into()],
        jwks: JwksSource::File(fixtures().join("jwks.json")),
        algorithms: UserAlgorithm::ALL.to_vec(),
        subject_claim: ClaimPath::sub(),
        roles_claim: Some(path("realm_access.roles")),
    }
}

fn auth0() -> IssuerSettings {
    IssuerSettings {
        issuer: expected()["auth0"]["issuer"].as_str().unwrap().into(),
        audiences: vec!["https://api.acme.example".into()],
        jwks: JwksSource::File(fixtures().join("jwks-auth0.json")),
        algorithms: vec![UserAlgorithm::RS256],
        subject_claim: ClaimPath::sub(),
        roles_claim: Some(path("https://acme.example/roles")),
    }
}

fn settings(issuers: Vec<IssuerSettings>) -> UserSettings {
    UserSettings {
        issuers,
        token: TokenLocation::Bearer,
        leeway: Duration::from_secs(LEEWAY),
        cache_capacity: 100,
        forward: UserForwarding::default(),
        state_file: None,
        // Three failures, then one an hour: nothing refills during a test.
        failed_verifications: BudgetSettings {
            limit: 1,
            per: Duration::from_secs(3600),
            burst: 3,
            max_clients: 100,
        },
    }
}

/// The Keycloak issuer with its fixture JWKS, and the Auth0 one.
fn both() -> (Vec<Arc<UserKeyring>>, Vec<IssuerSettings>) {
    (
        vec![keyring("jwks.json"), keyring("jwks-auth0.json")],
        vec![keycloak(), auth0()],
    )
}

fn verify_both(token: &[u8]) -> Result<VerifiedUser, UserError> {
    let (keyrings, issuers) = both();
    token::verify(token, &keyrings, &issuers)
}

// === Signing with the fixture keys ===

#[derive(Clone, Copy, Debug, PartialEq)]
enum Signer {
    Rs256,
    Es256,
    EdDsa,
}

impl Signer {
    const ALL: [Signer; 3] = [Signer::Rs256, Signer::Es256, Signer::EdDsa];

    fn name(self) -> &'static str {
        match self {
            Signer::Rs256 => "rs256",
            Signer::Es256 => "es256",
            Signer::EdDsa => "eddsa",
        }
    }

    fn alg(self) -> &'static str {
        match self {
            Signer::Rs256 => "RS256",
            Signer::Es256 => "ES256",
            Signer::EdDsa => "EdDSA",
        }
    }

    fn kid(self) -> String {
        expected()["keycloak"]["kids"][self.name()]
            .as_str()
            .unwrap()
            .into()
    }

    fn sign(self, message: &[u8]) -> Vec<u8> {
        let pem = fixture(&format!("private/{}.pem", self.name()));
        match self {
            Signer::Rs256 => {
                let der = PrivatePkcs8KeyDer::from_pem_slice(&pem).unwrap();
                let pair = RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).unwrap();
                let mut signature = vec![0; pair.public().modulus_len()];
                pair.sign(
                    &RSA_PKCS1_SHA256,
                    &SystemRandom::new(),
                    message,
                    &mut signature,
                )
                .unwrap();
                signature
            }
            Signer::Es256 | Signer::EdDsa => SigningKey::from_pkcs8_pem(&pem)
                .unwrap()
                .sign_bytes(message),
        }
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `header.payload.signature` over exactly these bytes.
fn signed(signer: Signer, header: &[u8], payload: &[u8]) -> Vec<u8> {
    let input = format!("{}.{}", b64(header), b64(payload));
    let signature = signer.sign(input.as_bytes());
    format!("{input}.{}", b64(&signature)).into_bytes()
}

/// The header `signer` would use, with `extra` members merged in.
fn header(signer: Signer, extra: Value) -> Value {
    let mut header = json!({"alg": signer.alg(), "kid": signer.kid(), "typ": "JWT"});
    for (name, value) in extra.as_object().unwrap() {
        header[name] = value.clone();
    }
    header
}

/// Keycloak-shaped claims valid at [`NOW`].
fn claims() -> Value {
    json!({
        "exp": NOW + 300, "iat": NOW - 10, "jti": "t-1",
        "iss": expected()["keycloak"]["issuer"], "aud": ["licensegate", "account"],
        "sub": "user-1", "typ": "Bearer", "azp": "shop",
        "realm_access": {"roles": ["viewer", "analyst", "viewer"]},
        "preferred_username": "ada", "email": "ada@acme.example"
    })
}

/// `claims()` with `changes` applied (`null` removes a member).
fn claims_with(changes: Value) -> Value {
    let mut claims = claims();
    for (name, value) in changes.as_object().unwrap() {
        if value.is_null() {
            claims.as_object_mut().unwrap().remove(name);
        } else {
            claims[name] = value.clone();
        }
    }
    claims
}

fn mint(signer: Signer, claims: &Value) -> Vec<u8> {
    let header = header(signer, json!({}));
    signed(
        signer,
        header.to_string().as_bytes(),
        claims.to_string().as_bytes(),
    )
}

/// Verify, then validate at [`NOW`]: what a first check does.
fn check(token: &[u8]) -> Result<VerifiedUser, UserError> {
    let user = verify_both(token)?;
    token::validate(&user, NOW, Duration::from_secs(LEEWAY))?;
    Ok(user)
}

fn result(outcome: Result<VerifiedUser, UserError>) -> &'static str {
    match outcome {
        Ok(_) => "ok",
        Err(e) => e.result(),
    }
}

// === Interop: tokens made by PyJWT ===

#[test]
fn keycloak_tokens_of_each_algorithm_verify() {
    let expected = &expected()["keycloak"];
    let roles: Vec<&str> = expected["roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    for signer in Signer::ALL {
        let token = fixture_token(&format!("keycloak-{}.jwt", signer.name()));
        let user = verify_both(&token).unwrap_or_else(|e| panic!("{signer:?}: {e}"));
        assert_eq!(user.issuer, 0);
        assert_eq!(&*user.subject, expected["sub"].as_str().unwrap());
        assert_eq!(user.roles.iter().map(|r| &**r).collect::<Vec<_>>(), roles);
        assert!(user.has_role("analyst") && !user.has_role("Analyst"));
        assert_eq!(user.exp, expected["exp"].as_u64().unwrap());
        assert_eq!(&*user.kid, signer.kid());
        assert_eq!(token::validate(&user, NOW, Duration::ZERO), Ok(()));
    }

    // The subject from another claim.
    let token = fixture_token("keycloak-rs256.jwt");
    let (keyrings, _) = both();
    for (claim, want) in [
        ("preferred_username", &expected["preferred_username"]),
        ("email", &expected["email"]),
    ] {
        let issuer = IssuerSettings {
            subject_claim: path(claim),
            ..keycloak()
        };
        let user = token::verify(&token, &keyrings[..1], &[issuer]).unwrap();
        assert_eq!(&*user.subject, want.as_str().unwrap());
    }
}

#[test]
fn auth0_token_reads_namespaced_roles_and_scopes() {
    let expected = &expected()["auth0"];
    let token = fixture_token("auth0.jwt");
    let user = verify_both(&token).unwrap();
    assert_eq!(user.issuer, 1, "the second issuer's key signed it");
    assert_eq!(&*user.subject, expected["sub"].as_str().unwrap());
    let roles: Vec<&str> = user.roles.iter().map(|r| &**r).collect();
    assert_eq!(json!(roles), expected["roles"]);

    // OAuth scopes as roles: one space-separated string.
    let (keyrings, _) = both();
    let issuer = IssuerSettings {
        roles_claim: Some(path("scope")),
        ..auth0()
    };
    let user = token::verify(&token, &keyrings[1..], &[issuer]).unwrap();
    let scopes: Vec<&str> = user.roles.iter().map(|r| &**r).collect();
    assert_eq!(json!(scopes), expected["scopes"]);
}

// === JWKS ===

#[test]
fn provider_jwks_keeps_signing_keys_and_lists_the_rest() {
    let keys = keyring("jwks.json");
    let kc = &expected()["keycloak"];
    let mut kids: Vec<String> = Signer::ALL.iter().map(|s| s.kid()).collect();
    kids.sort();
    assert_eq!(keys.kids(), kids);
    assert_eq!(keys.len(), 3);
    let skipped = keys.skipped();
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    for (line, kid) in skipped.iter().zip(kc["skipped"].as_array().unwrap()) {
        assert!(
            line.starts_with(&format!("{}: ", kid.as_str().unwrap())),
            "{line}"
        );
    }
    assert!(skipped[0].contains("`use` is `enc`"), "{}", skipped[0]);
    assert!(skipped[1].contains("P-384"), "{}", skipped[1]);
    for signer in Signer::ALL {
        assert_eq!(
            keys.get(&signer.kid()).unwrap().alg().as_str(),
            signer.alg()
        );
    }

    // Auth0 publishes no `alg`: an RSA key is RS256.
    let auth0 = keyring("jwks-auth0.json");
    let kid = expected()["auth0"]["kid"].as_str().unwrap().to_owned();
    assert_eq!(auth0.get(&kid).unwrap().alg(), UserAlgorithm::RS256);

    // The generation follows the keys, not the document.
    assert_eq!(keyring("jwks.json").generation(), keys.generation());
    let mut reordered: Value = serde_json::from_slice(&fixture("jwks.json")).unwrap();
    reordered["keys"].as_array_mut().unwrap().reverse();
    let reordered =
        UserKeyring::from_jwks_slice(reordered.to_string().as_bytes(), "reordered").unwrap();
    assert_eq!(reordered.generation(), keys.generation());
    assert_ne!(keyring("jwks-rotated.json").generation(), keys.generation());
    assert_ne!(UserKeyring::empty().generation(), keys.generation());
    assert!(UserKeyring::empty().is_empty());
}

/// A JWKS of the fixture's keys, with the key of kid `kid` edited.
fn jwks_with(kid: &str, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Vec<u8> {
    let mut jwks: Value = serde_json::from_slice(&fixture("jwks.json")).unwrap();
    let key = jwks["keys"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|k| k["kid"] == kid)
        .unwrap();
    edit(key.as_object_mut().unwrap());
    jwks.to_string().into_bytes()
}

#[test]
fn jwks_mistakes_are_errors_that_name_the_key() {
    let rsa = Signer::Rs256.kid();
    let ec = Signer::Es256.kid();
    let ed = Signer::EdDsa.kid();
    // A 1024-bit modulus (odd, top bit set).
    let weak = b64(&[&[0xc5][..], &[0x5a; 126], &[0x01]].concat());
    let cases: Vec<(Vec<u8>, &str, &str)> = vec![
        (
            jwks_with(&rsa, |k| {
                k.insert("d".into(), json!("AQAB"));
            }),
            "key #0",
            "private key material (`d`)",
        ),
        (
            jwks_with(&ec, |k| {
                k.insert("d".into(), json!("AQAB"));
            }),
            "key #1",
            "(`d`)",
        ),
        (
            br#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"h"}]}"#.to_vec(),
            "key #0",
            "(`k`)",
        ),
        (
            jwks_with(&rsa, |k| {
                k.insert("p".into(), json!("AQAB"));
            }),
            "key #0",
            "(`p`)",
        ),
        (
            jwks_with(&ec, |k| {
                k.remove("kid");
            }),
            "key #1:",
            "has no `kid`",
        ),
        (
            jwks_with(&ed, |k| {
                k.insert("kid".into(), json!(rsa.clone()));
            }),
            "key #2",
            "more than once",
        ),
        (
            jwks_with(&ec, |k| {
                k.insert("kid".into(), json!("../etc"));
            }),
            "key #1",
            "not a key id",
        ),
        (
            jwks_with(&rsa, |k| {
                k.insert("alg".into(), json!("ES256"));
            }),
            "key #0",
            "`alg` is `ES256`",
        ),
        (
            jwks_with(&ec, |k| {
                k.insert("alg".into(), json!("RS256"));
            }),
            "key #1",
            "expected ES256",
        ),
        (
            jwks_with(&ec, |k| {
                k.insert("alg".into(), json!("ES384"));
            }),
            "key #1",
            "expected ES256",
        ),
        (
            jwks_with(&ed, |k| {
                k.insert("alg".into(), json!("ES256"));
            }),
            "key #2",
            "expected EdDSA",
        ),
        (
            jwks_with(&rsa, |k| {
                k.insert("n".into(), json!(weak));
            }),
            "key #0",
            "RSA key of 1024 bits; expected 2048 to 8192",
        ),
        (
            jwks_with(&rsa, |k| {
                k.insert("e".into(), json!("AQAB="));
            }),
            "key #0",
            "not unpadded base64url",
        ),
        (
            jwks_with(&rsa, |k| {
                k.insert("e".into(), json!("Ag"));
            }),
            "key #0",
            "exponent",
        ),
        (
            jwks_with(&ec, |k| {
                k.insert("y".into(), k["x"].clone());
            }),
            "key #1",
            "P-256",
        ),
        (
            jwks_with(&ed, |k| {
                k.remove("x");
            }),
            "key #2",
            "has no `x`",
        ),
        (
            jwks_with(&ec, |k| {
                k.insert("kid".into(), json!(5));
            }),
            "key #1",
            "invalid type",
        ),
        (br#"{"keys":[]}"#.to_vec(), "jwks:", "`keys` is empty"),
        (
            br#"{"keys":[{"kty":"EC","crv":"P-384","kid":"a"}]}"#.to_vec(),
            "jwks:",
            "no usable signing key (RS256, ES256 or EdDSA); skipped a: curve",
        ),
        (
            br#"{"keys":[],"keys":[]}"#.to_vec(),
            "jwks:",
            "duplicate key `keys`",
        ),
        (b"<html>".to_vec(), "jwks:", "not a JWKS document"),
    ];
    for (json, at, message) in cases {
        let error = UserKeyring::from_jwks_slice(&json, "jwks").unwrap_err();
        let text = error.to_string();
        assert!(text.starts_with("jwks: "), "{text}");
        assert!(text.contains(at), "wanted {at:?} in: {text}");
        assert!(text.contains(message), "wanted {message:?} in: {text}");
    }
    // The key's position and kid, for the operator.
    let error = UserKeyring::from_jwks_slice(
        &jwks_with(&rsa, |k| {
            k.insert("alg".into(), json!("EdDSA"));
        }),
        "https://idp.example.test/certs",
    )
    .unwrap_err();
    assert_eq!(error.origin, "https://idp.example.test/certs");
    assert_eq!(error.key.as_deref(), Some(&*format!("key #0 (`{rsa}`)")));
}

#[test]
fn keys_of_other_uses_and_algorithms_are_skipped() {
    let rsa = Signer::Rs256.kid();
    for (edit, why) in [
        (
            json!({"alg": "RS512"}),
            "`alg` `RS512` is not supported (RS256 is)",
        ),
        (json!({"alg": "PS256"}), "`PS256`"),
        (
            json!({"alg": "RSA-OAEP-256", "use": "enc"}),
            "`use` is `enc`",
        ),
        (json!({"key_ops": ["encrypt"]}), "`key_ops`"),
        (json!({"kty": "RSA-HSM"}), "key type `RSA-HSM`"),
    ] {
        let json = jwks_with(&rsa, |k| {
            for (name, value) in edit.as_object().unwrap() {
                k.insert(name.clone(), value.clone());
            }
        });
        let keys = UserKeyring::from_jwks_slice(&json, "jwks").unwrap();
        assert_eq!(keys.len(), 2, "{edit}");
        assert!(keys.get(&rsa).is_none());
        let line = format!("{rsa}: ");
        let skipped = keys.skipped();
        let reason = skipped.iter().find(|s| s.starts_with(&line)).unwrap();
        assert!(reason.contains(why), "{reason}");
    }
    // An unusable key needs no kid; it is named by position.
    let json = jwks_with(&rsa, |k| {
        k.insert("use".into(), json!("enc"));
        k.remove("kid");
    });
    let keys = UserKeyring::from_jwks_slice(&json, "jwks").unwrap();
    assert!(
        keys.skipped()[0].starts_with("key #0: "),
        "{:?}",
        keys.skipped()
    );
}

// === Refusals ===

#[test]
fn claims_that_do_not_fit_the_issuer_are_refused() {
    let auth0_issuer = expected()["auth0"]["issuer"].clone();
    let cases = [
        // Signed by the Keycloak key but claiming the other issuer.
        (json!({"iss": auth0_issuer}), "issuer_mismatch"),
        (
            json!({"iss": "https://idp.example.test/realms/acme/"}),
            "issuer_mismatch",
        ),
        (json!({"iss": null}), "issuer_mismatch"),
        (json!({"iss": 7}), "malformed"),
        (json!({"aud": "account"}), "audience_mismatch"),
        (
            json!({"aud": ["account", "licensegate-admin"]}),
            "audience_mismatch",
        ),
        (json!({"aud": null}), "audience_mismatch"),
        (json!({"aud": "licensegate"}), "ok"),
        (json!({"aud": [1]}), "malformed"),
        (json!({"exp": NOW - LEEWAY - 1}), "expired"),
        (json!({"exp": NOW - LEEWAY + 1}), "ok"),
        (json!({"exp": null}), "malformed"),
        (json!({"exp": "4102444800"}), "malformed"),
        (json!({"exp": (NOW + 300) as f64 + 0.5}), "malformed"),
        (json!({"nbf": NOW + LEEWAY + 1}), "not_yet_valid"),
        (json!({"nbf": NOW + LEEWAY}), "ok"),
        (json!({"iat": "yesterday"}), "malformed"),
        (json!({"sub": null}), "subject_missing"),
        (json!({"sub": ""}), "subject_missing"),
        (json!({"sub": 42}), "subject_missing"),
        (json!({"realm_access": {"roles": "a b"}}), "ok"),
        (json!({"realm_access": null}), "ok"),
        (json!({"realm_access": {"roles": 3}}), "malformed"),
        (
            json!({"realm_access": {"roles": {"admin": true}}}),
            "malformed",
        ),
        (
            json!({"realm_access": {"roles": ["admin", 1]}}),
            "malformed",
        ),
        (json!({"realm_access": {"roles": null}}), "malformed"),
        (json!({"realm_access": ["admin"]}), "malformed"),
    ];
    for (changes, want) in cases {
        let token = mint(Signer::Rs256, &claims_with(changes.clone()));
        assert_eq!(result(check(&token)), want, "{changes}");
    }

    let user = check(&mint(Signer::Es256, &claims())).unwrap();
    let roles: Vec<&str> = user.roles.iter().map(|r| &**r).collect();
    assert_eq!(roles, ["analyst", "viewer"], "sorted, no duplicates");
    let token = mint(
        Signer::Es256,
        &claims_with(json!({"realm_access": {"roles": " b  a b "}})),
    );
    let user = check(&token).unwrap();
    assert_eq!(
        user.roles.iter().map(|r| &**r).collect::<Vec<_>>(),
        ["a", "b"]
    );
    let token = mint(Signer::Es256, &claims_with(json!({"realm_access": {}})));
    assert!(check(&token).unwrap().roles.is_empty(), "absent: no roles");

    let err = check(&mint(Signer::Rs256, &claims_with(json!({"sub": null})))).unwrap_err();
    assert_eq!(err.detail(), "user token has no subject: no claim `sub`");
    let err = check(&mint(
        Signer::Rs256,
        &claims_with(json!({"aud": "account"})),
    ))
    .unwrap_err();
    assert!(
        err.detail()
            .contains("`aud` is `account`; expected one of `licensegate`"),
        "{err}"
    );
}

#[test]
fn repeated_members_are_refused_wherever_they_are() {
    let claims = claims().to_string();
    let payloads = [
        claims.replacen("{", r#"{"sub":"admin","#, 1),
        claims.replacen(r#""roles":["#, r#""roles":["admin"],"roles":["#, 1),
        claims.replacen("{", r#"{"aud":"other","#, 1),
    ];
    for payload in payloads {
        let token = signed(
            Signer::EdDsa,
            header(Signer::EdDsa, json!({})).to_string().as_bytes(),
            payload.as_bytes(),
        );
        let err = check(&token).unwrap_err();
        assert_eq!(err.result(), "malformed", "{payload}");
        assert!(err.detail().contains("duplicate key"), "{err}");
    }
    let kid = Signer::EdDsa.kid();
    let header = format!(r#"{{"alg":"EdDSA","kid":"{kid}","kid":"{kid}"}}"#);
    let token = signed(Signer::EdDsa, header.as_bytes(), claims.as_bytes());
    assert_eq!(result(check(&token)), "malformed");
}

#[test]
fn headers_that_could_change_the_key_or_algorithm_are_refused() {
    let claims = claims();
    let cases = [
        (
            json!({"jwk": {"kty": "OKP", "crv": "Ed25519", "x": "AA"}}),
            "malformed",
        ),
        (
            json!({"jku": "https://evil.example/jwks.json"}),
            "malformed",
        ),
        (json!({"x5u": "https://evil.example/cert"}), "malformed"),
        (json!({"x5c": ["MIIB"]}), "malformed"),
        (json!({"crit": ["exp"]}), "malformed"),
        (json!({"typ": "JOSE"}), "malformed"),
        (json!({"typ": "at+jwt"}), "ok"),
        (json!({"typ": "application/at+jwt"}), "ok"),
        (json!({"kid": "not-in-any-jwks"}), "key_unknown"),
        (json!({"kid": null}), "malformed"),
        (json!({"kid": "../../etc/passwd"}), "malformed"),
        (json!({"alg": "PS256"}), "algorithm_rejected"),
        (json!({"alg": "RS512"}), "algorithm_rejected"),
        (json!({"alg": "HS256"}), "algorithm_rejected"),
        (json!({"alg": "rs256"}), "algorithm_rejected"),
        // The RSA key's kid under another algorithm.
        (json!({"alg": "ES256"}), "algorithm_rejected"),
    ];
    for (extra, want) in cases {
        let header = header(Signer::Rs256, extra.clone());
        let token = signed(
            Signer::Rs256,
            header.to_string().as_bytes(),
            claims.to_string().as_bytes(),
        );
        assert_eq!(result(check(&token)), want, "{extra}");
    }
    let header = b"[\"RS256\"]";
    let token = signed(Signer::Rs256, header, claims.to_string().as_bytes());
    assert_eq!(result(check(&token)), "malformed", "an array header");

    // A key signs only under its pinned algorithm: the EC key's signature
    // on a token that names the RSA key, and the other way round.
    let header_rsa_kid = json!({"alg": "ES256", "kid": Signer::Rs256.kid()});
    let token = signed(
        Signer::Es256,
        header_rsa_kid.to_string().as_bytes(),
        claims.to_string().as_bytes(),
    );
    let err = check(&token).unwrap_err();
    assert_eq!(err.result(), "algorithm_rejected");
    assert!(err.detail().contains("pinned to RS256"), "{err}");
}

#[test]
fn an_issuer_accepts_only_its_algorithms() {
    let (keyrings, _) = both();
    let rsa_only = IssuerSettings {
        algorithms: vec![UserAlgorithm::RS256],
        ..keycloak()
    };
    let issuers = [rsa_only, auth0()];
    assert!(token::verify(&mint(Signer::Rs256, &claims()), &keyrings, &issuers).is_ok());
    for signer in [Signer::Es256, Signer::EdDsa] {
        let err = token::verify(&mint(signer, &claims()), &keyrings, &issuers).unwrap_err();
        assert_eq!(err.result(), "algorithm_rejected", "{signer:?}");
        assert!(
            err.detail().contains("not among the algorithms of issuer"),
            "{err}"
        );
    }
}

#[test]
fn unsecured_and_hmac_tokens_never_verify() {
    let payload = b64(claims().to_string().as_bytes());
    let rsa = Signer::Rs256.kid();

    // `alg: none`, with an empty signature and with some bytes.
    for signature in ["", "AAAA"] {
        let header = b64(json!({"alg": "none", "kid": rsa}).to_string().as_bytes());
        let token = format!("{header}.{payload}.{signature}");
        assert_eq!(
            result(check(token.as_bytes())),
            "algorithm_rejected",
            "{signature:?}"
        );
    }

    // HS256 keyed with what an attacker can read of the RSA key: its JWK,
    // its modulus, its certificate (DER and PEM), its PKCS#1 DER.
    let jwks: Value = serde_json::from_slice(&fixture("jwks.json")).unwrap();
    let jwk = &jwks["keys"][0];
    assert_eq!(jwk["kid"], rsa.as_str());
    let cert = STANDARD.decode(jwk["x5c"][0].as_str().unwrap()).unwrap();
    let cert_pem = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        jwk["x5c"][0].as_str().unwrap()
    );
    let pem = fixture("private/rs256.pem");
    let der = PrivatePkcs8KeyDer::from_pem_slice(&pem).unwrap();
    let pkcs1 = RsaKeyPair::from_pkcs8(der.secret_pkcs8_der())
        .unwrap()
        .public_key()
        .as_ref()
        .to_vec();
    let secrets = [
        jwk.to_string().into_bytes(),
        URL_SAFE_NO_PAD.decode(jwk["n"].as_str().unwrap()).unwrap(),
        cert,
        cert_pem.into_bytes(),
        pkcs1,
    ];
    for (i, secret) in secrets.iter().enumerate() {
        for alg in ["HS256", "HS384", "HS512"] {
            let header = b64(json!({"alg": alg, "kid": rsa, "typ": "JWT"})
                .to_string()
                .as_bytes());
            let input = format!("{header}.{payload}");
            let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), input.as_bytes());
            let token = format!("{input}.{}", b64(tag.as_ref()));
            let err = check(token.as_bytes()).unwrap_err();
            assert_eq!(err.result(), "algorithm_rejected", "secret #{i} {alg}");
        }
    }
}

#[test]
fn damaged_tokens_are_refused() {
    let token = String::from_utf8(mint(Signer::Rs256, &claims())).unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    let mut signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();

    let granted = b64(claims_with(json!({"realm_access": {"roles": ["admin"]}}))
        .to_string()
        .as_bytes());
    let spliced = format!("{}.{granted}.{}", parts[0], parts[2]);
    signature[100] ^= 0x40;
    let flipped = format!("{}.{}.{}", parts[0], parts[1], b64(&signature));
    let short = format!("{}.{}.{}", parts[0], parts[1], b64(&signature[..255]));
    let padded = format!("{token}=");
    let cases: Vec<(Vec<u8>, &str, &str)> = vec![
        (
            spliced.into_bytes(),
            "signature_invalid",
            "does not verify under key",
        ),
        (flipped.into_bytes(), "signature_invalid", "does not verify"),
        (
            short.into_bytes(),
            "signature_invalid",
            "is 256 bytes, this is 255",
        ),
        (
            format!("{}.{}.", parts[0], parts[1]).into_bytes(),
            "malformed",
            "signature segment is empty",
        ),
        (padded.into_bytes(), "malformed", "base64url"),
        (
            format!("{}.{}", parts[0], parts[1]).into_bytes(),
            "malformed",
            "3 dot-separated",
        ),
        (
            format!("{token}.{}", parts[2]).into_bytes(),
            "malformed",
            "3 dot-separated",
        ),
        (vec![b'a'; MAX_TOKEN + 1], "malformed", "the limit is 16384"),
        (
            [&token.as_bytes()[..20], &[0xff], &token.as_bytes()[21..]].concat(),
            "malformed",
            "not ASCII",
        ),
    ];
    for (token, want, detail) in cases {
        let err = check(&token).unwrap_err();
        assert_eq!(err.result(), want, "{err}");
        assert!(err.detail().contains(detail), "wanted {detail:?} in {err}");
    }
}

const MAX_TOKEN: usize = token::MAX_TOKEN_BYTES;

// === The verifier ===

struct Setup {
    verifier: UserVerifier,
    registry: Registry,
}

fn verifier(issuers: Vec<IssuerSettings>) -> Setup {
    let registry = Registry::new();
    let metrics = Arc::new(UserMetrics::new(&registry));
    Setup {
        verifier: UserVerifier::new(settings(issuers), metrics),
        registry,
    }
}

impl Setup {
    fn loaded() -> Setup {
        let setup = verifier(vec![keycloak(), auth0()]);
        assert!(setup.verifier.replace_keys(0, keyring("jwks.json")));
        assert!(setup.verifier.replace_keys(1, keyring("jwks-auth0.json")));
        setup
    }

    /// A check from `client` at `now`.
    fn at(
        &self,
        token: &[u8],
        now: u64,
        client: &str,
    ) -> (Result<Arc<VerifiedUser>, UserError>, Answered) {
        let client: IpAddr = client.parse().unwrap();
        self.verifier.check_token_traced(token, now, || client)
    }

    fn metric(&self, series: &str) -> u64 {
        let text = String::from_utf8(self.registry.render()).unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
            .parse()
            .unwrap()
    }

    fn counted(&self, result: &str) -> u64 {
        self.metric(&format!(
            "licensegate_user_token_verifications_total{{result=\"{result}\"}}"
        ))
    }

    fn signature_checks(&self) -> u64 {
        self.metric("licensegate_user_token_signature_checks_total")
    }
}

fn bearer(token: &[u8]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::HOST,
        HeaderValue::from_static("shop.example.test"),
    );
    let mut value = b"Bearer ".to_vec();
    value.extend_from_slice(token);
    headers.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_bytes(&value).unwrap(),
    );
    headers
}

#[test]
fn nothing_verifies_before_keys_are_loaded() {
    let setup = verifier(vec![keycloak(), auth0()]);
    let v = &setup.verifier;
    assert!(!v.has_keys());
    assert!(v.keys(0).is_empty());
    let token = fixture_token("keycloak-rs256.jwt");
    let client = || IpAddr::from([192, 0, 2, 1]);
    assert_eq!(
        v.check(&bearer(&token), NOW, client),
        Err(UserError::KeysUnavailable)
    );
    assert_eq!(
        v.check(&HeaderMap::new(), NOW, client),
        Err(UserError::Missing)
    );
    assert_eq!(setup.counted("keys_unavailable"), 1);
    assert_eq!(setup.counted("missing"), 1);
    assert_eq!(
        setup.metric("licensegate_user_keys{issuer=\"https://acme.eu.auth0.example/\"}"),
        0
    );

    // One issuer's keys are enough for its tokens.
    assert!(v.replace_keys(1, keyring("jwks-auth0.json")));
    assert!(v.has_keys());
    let user = v
        .check(&bearer(&fixture_token("auth0.jwt")), NOW, client)
        .unwrap();
    assert_eq!(user.issuer, 1);
    assert_eq!(
        setup.metric("licensegate_user_keys{issuer=\"https://acme.eu.auth0.example/\"}"),
        1
    );
    assert_eq!(
        v.check(&bearer(&token), NOW, client).unwrap_err().result(),
        "key_unknown"
    );
}

#[test]
fn a_token_seen_before_is_answered_from_the_cache() {
    let setup = Setup::loaded();
    let token = fixture_token("keycloak-rs256.jwt");
    let (first, answered) = setup.at(&token, NOW, "192.0.2.1");
    assert_eq!(answered, Answered::Signature);
    let (second, answered) = setup.at(&token, NOW + 1, "192.0.2.2");
    assert_eq!(answered, Answered::Cache);
    assert!(
        Arc::ptr_eq(&first.unwrap(), &second.unwrap()),
        "the same verified user"
    );
    assert_eq!(setup.signature_checks(), 1, "no second signature check");
    assert_eq!((setup.counted("verified"), setup.counted("cached")), (1, 1));

    // Through the headers, as the request path asks.
    let user = setup
        .verifier
        .check(&bearer(&token), NOW + 2, || IpAddr::from([192, 0, 2, 3]))
        .unwrap();
    assert_eq!(user.issuer, 0);
    assert_eq!(setup.counted("cached"), 2);
    assert_eq!(setup.verifier.cache().len(), 1);
}

#[test]
fn a_cached_token_is_not_served_past_its_expiry() {
    let setup = Setup::loaded();
    let exp = NOW + 100;
    let token = mint(Signer::Es256, &claims_with(json!({"exp": exp})));
    assert_eq!(setup.at(&token, NOW, "192.0.2.1").1, Answered::Signature);
    let (ok, answered) = setup.at(&token, exp + LEEWAY - 1, "192.0.2.1");
    assert!(ok.is_ok());
    assert_eq!(answered, Answered::Cache, "within the leeway");
    let (late, _) = setup.at(&token, exp + LEEWAY, "192.0.2.1");
    assert_eq!(
        late,
        Err(UserError::Expired {
            exp,
            now: exp + LEEWAY
        })
    );
    assert_eq!(setup.counted("expired"), 1);
    // Whatever the cache holds, the window is checked again on a hit.
    let user = setup.at(&token, NOW, "192.0.2.1").0.unwrap();
    assert_eq!(
        token::validate(&user, exp + LEEWAY, Duration::from_secs(LEEWAY)),
        Err(UserError::Expired {
            exp,
            now: exp + LEEWAY
        })
    );
    let mut early = (*user).clone();
    early.nbf = Some(NOW + 10);
    assert_eq!(
        token::validate(&early, NOW - LEEWAY, Duration::from_secs(LEEWAY)),
        Err(UserError::NotYetValid {
            nbf: NOW + 10,
            now: NOW - LEEWAY
        })
    );
}

#[test]
fn new_keys_clear_the_cache_and_equal_keys_keep_it() {
    let setup = Setup::loaded();
    let v = &setup.verifier;
    let rs = fixture_token("keycloak-rs256.jwt");
    let es = fixture_token("keycloak-es256.jwt");
    for token in [&rs, &es] {
        assert_eq!(setup.at(token, NOW, "192.0.2.1").1, Answered::Signature);
    }
    assert_eq!(v.cache().len(), 2);

    // A refetch that changed nothing.
    assert!(!v.replace_keys(0, keyring("jwks.json")));
    assert_eq!(setup.at(&rs, NOW, "192.0.2.1").1, Answered::Cache);

    // The provider rotated its RSA key.
    assert!(v.replace_keys(0, keyring("jwks-rotated.json")));
    assert!(v.cache().is_empty());
    assert_eq!(v.keys(0).kids().len(), 3);
    let (old, answered) = setup.at(&rs, NOW, "192.0.2.1");
    assert_eq!(old.unwrap_err().result(), "key_unknown");
    assert_eq!(answered, Answered::Parse);
    let (es_again, answered) = setup.at(&es, NOW, "192.0.2.1");
    assert!(es_again.is_ok());
    assert_eq!(
        answered,
        Answered::Signature,
        "verified again under the new keys"
    );
    assert_eq!(setup.at(&es, NOW, "192.0.2.1").1, Answered::Cache);
    let rotated = fixture_token("keycloak-rs256-rotated.jwt");
    let user = setup.at(&rotated, NOW, "192.0.2.1").0.unwrap();
    assert_eq!(
        &*user.kid,
        expected()["keycloak"]["rotated_kid"].as_str().unwrap()
    );
}

#[test]
fn an_unknown_kid_asks_every_issuer_for_its_keys() {
    let setup = Setup::loaded();
    let v = &setup.verifier;
    let wanted = [v.key_wanted(0), v.key_wanted(1)];
    let pending = |n: &Arc<tokio::sync::Notify>| n.notified().now_or_never().is_some();
    assert!(!wanted.iter().any(pending));

    assert!(setup
        .at(&fixture_token("keycloak-rs256.jwt"), NOW, "192.0.2.1")
        .0
        .is_ok());
    assert!(!wanted.iter().any(pending), "a known kid wants nothing");

    let header = header(Signer::Rs256, json!({"kid": "kc-rs256-2027"}));
    let token = signed(
        Signer::Rs256,
        header.to_string().as_bytes(),
        claims().to_string().as_bytes(),
    );
    let (result, answered) = setup.at(&token, NOW, "192.0.2.1");
    assert_eq!(
        result.unwrap_err(),
        UserError::KeyUnknown {
            kid: "kc-rs256-2027".into()
        }
    );
    assert_eq!(answered, Answered::Parse);
    assert!(wanted.iter().all(pending), "both fetchers woken");
    assert_eq!(
        setup.signature_checks(),
        1,
        "an unknown kid costs no signature check"
    );
}

#[test]
fn a_client_sending_forgeries_runs_out_of_signature_checks() {
    let setup = Setup::loaded();
    let forger = "198.51.100.7";
    let forgery = |i: u64| {
        let token = mint(Signer::Rs256, &claims_with(json!({"jti": i})));
        let mut token = String::from_utf8(token).unwrap();
        let (signed, signature) = token.rsplit_once('.').unwrap();
        let mut raw = URL_SAFE_NO_PAD.decode(signature).unwrap();
        raw[0] ^= 1;
        token = format!("{signed}.{}", b64(&raw));
        token.into_bytes()
    };
    // Valid tokens give their unit back: they never spend the budget.
    for i in 0..5 {
        let token = mint(Signer::Rs256, &claims_with(json!({"jti": 100 + i})));
        assert!(setup.at(&token, NOW, forger).0.is_ok());
    }
    for i in 0..3 {
        let (result, answered) = setup.at(&forgery(i), NOW, forger);
        assert_eq!(result.unwrap_err().result(), "signature_invalid");
        assert_eq!(answered, Answered::Signature);
    }
    let checks = setup.signature_checks();
    let (result, answered) = setup.at(&forgery(3), NOW, forger);
    assert!(
        matches!(result, Err(UserError::VerificationThrottled { retry_after }) if retry_after > 0)
    );
    assert_eq!(answered, Answered::Throttled);
    assert_eq!(setup.signature_checks(), checks, "ring was not consulted");
    assert_eq!(setup.counted("throttled"), 1);
    // A new valid token of the same client waits too; a cached one does not.
    let fresh = mint(Signer::Rs256, &claims_with(json!({"jti": "fresh"})));
    assert_eq!(setup.at(&fresh, NOW, forger).1, Answered::Throttled);
    let seen = mint(Signer::Rs256, &claims_with(json!({"jti": 100})));
    assert_eq!(setup.at(&seen, NOW, forger).1, Answered::Cache);
    // Other clients keep their budget.
    assert_eq!(
        setup.at(&forgery(4), NOW, "198.51.100.8").1,
        Answered::Signature
    );
}

#[test]
fn every_result_has_a_series_from_the_start() {
    let setup = verifier(vec![keycloak()]);
    for result in ["cached", "verified"].into_iter().chain(UserError::RESULTS) {
        assert_eq!(setup.counted(result), 0, "{result}");
    }
    assert_eq!(setup.signature_checks(), 0);
    assert_eq!(
        setup.metric("licensegate_user_keys{issuer=\"https://idp.example.test/realms/acme\"}"),
        0
    );
    setup.verifier.replace_keys(0, keyring("jwks.json"));
    assert_eq!(
        setup.metric("licensegate_user_keys{issuer=\"https://idp.example.test/realms/acme\"}"),
        3
    );
}

/// AWS Cognito names its keys with base64 (`+`, `/`, `=`): such a kid is
/// a key id here, though never a license key's (those name files).
#[test]
fn base64_kids_of_identity_providers_are_key_ids() {
    let cognito = "1jFuCzN+hy7Xh0vX4Qz/Fm8mNk7ZBJAOyOqTPu5ZQ2E=";
    let jwks = jwks_with(&Signer::EdDsa.kid(), |key| {
        key.insert("kid".into(), json!(cognito));
    });
    let keyring = Arc::new(UserKeyring::from_jwks_slice(&jwks, "cognito").unwrap());
    assert!(keyring.kids().contains(&cognito));
    let header = header(Signer::EdDsa, json!({"kid": cognito}));
    let token = signed(
        Signer::EdDsa,
        header.to_string().as_bytes(),
        claims().to_string().as_bytes(),
    );
    let user = token::verify(&token, &[keyring], &[keycloak()]).unwrap();
    assert_eq!(&*user.kid, cognito);
    // A line break or a path walk is still no key id.
    for bad in ["a\nb", "../k", ""] {
        let jwks = jwks_with(&Signer::EdDsa.kid(), |key| {
            key.insert("kid".into(), json!(bad));
        });
        assert!(UserKeyring::from_jwks_slice(&jwks, "x").is_err(), "{bad:?}");
    }
    assert!(!crate::license::jose::is_valid_kid(cognito));
}

// The cargo-fuzz harness of `fuzz/fuzz_targets/user_token.rs`, compiled
// into the tests too, so every committed seed runs through exactly the code
// the fuzzer runs on every `cargo test`.
#[path = "../../fuzz/user_harness.rs"]
mod user_harness;

#[test]
fn user_token_fuzz_seeds_replay() {
    let seeds = fixtures().join("../../../fuzz/seeds/user_token");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&seeds)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    paths.sort();
    assert!(paths.len() >= 5, "too few seeds: {paths:?}");
    for path in paths {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        // A panic inside is the failure the fuzzer would report.
        let result = user_harness::user_token(&std::fs::read(&path).unwrap());
        if name.starts_with("ok-") {
            assert!(result.is_ok(), "{name}: {result:?}");
        } else if name.starts_with("err-") {
            assert!(result.is_err(), "{name}: {result:?}");
        }
    }
}
