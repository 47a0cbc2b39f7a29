//! End-to-end tests of the license core: minted tokens, attacks on them,
//! the cached verifier, and tokens made by PyJWT.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::hmac;
use serde_json::{json, Value};

use super::issue::{sign, sign_parts, SigningKey};
use super::*;

/// 2023-11-14T22:13:20Z; the fake clock.
const NOW: u64 = 1_700_000_000;
const ISSUER: &str = "https://licenses.example.com";
const AUDIENCE: &str = "licensegate";

fn claims() -> Value {
    json!({
        "iss": ISSUER, "sub": "lic-0001", "aud": AUDIENCE,
        "iat": NOW - 100, "nbf": NOW - 100, "exp": NOW + 86_400, "jti": "j1",
        "lic": {
            "plan": "enterprise", "features": ["sso"], "limits": {"rps": 100},
            "seats": 10, "env": {"namespaces": ["shop"]}, "customer": "ACME"
        }
    })
}

fn validator() -> Validator {
    Validator {
        issuer: Some(ISSUER.into()),
        audience: Some(AUDIENCE.into()),
        leeway: Duration::from_secs(60),
        grace: Duration::from_secs(3600),
    }
}

struct Fixture {
    ed: SigningKey,
    ec: SigningKey,
    keyring: Keyring,
}

fn fixture() -> Fixture {
    let ed = SigningKey::generate(Algorithm::EdDSA).unwrap();
    let ec = SigningKey::generate(Algorithm::ES256).unwrap();
    let keyring = Keyring::from_keys(vec![
        ed.verifying_key("ed-1").unwrap(),
        ec.verifying_key("ec-1").unwrap(),
    ])
    .unwrap();
    Fixture { ed, ec, keyring }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn segments(token: &str) -> Vec<String> {
    token.split('.').map(str::to_owned).collect()
}

/// Full check: verify, then validate at the fake clock.
fn check(token: &str, keyring: &Keyring) -> Result<Validity, LicenseError> {
    let verified = token::verify(token, keyring)?;
    validator().validate(&verified.claims, NOW)
}

fn reason(result: Result<Validity, LicenseError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(e) => e.reason(),
    }
}

#[test]
fn minted_tokens_verify_with_both_algorithms() {
    let f = fixture();
    for (key, kid, alg) in [
        (&f.ed, "ed-1", Algorithm::EdDSA),
        (&f.ec, "ec-1", Algorithm::ES256),
    ] {
        let token = sign(&claims(), key, kid);
        let verified = token::verify(&token, &f.keyring).unwrap();
        assert_eq!((verified.kid.as_str(), verified.alg), (kid, alg));
        assert_eq!(verified.claims.sub, "lic-0001");
        assert_eq!(verified.claims.lic.limits["rps"], 100);
        assert_eq!(verified.expires_at(), NOW + 86_400);
        assert_eq!(
            check(&token, &f.keyring),
            Ok(Validity::Valid {
                expires_at: NOW + 86_400
            })
        );
    }
}

#[test]
fn tampering_breaks_the_signature() {
    let f = fixture();
    for (key, kid) in [(&f.ed, "ed-1"), (&f.ec, "ec-1")] {
        let token = sign(&claims(), key, kid);
        let parts = segments(&token);

        // A payload granting more, spliced under the original signature.
        let mut richer = claims();
        richer["lic"]["seats"] = json!(10_000);
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            b64(richer.to_string().as_bytes()),
            parts[2]
        );
        assert_eq!(
            reason(check(&forged, &f.keyring)),
            "license_signature_invalid"
        );

        // One flipped signature bit.
        let mut sig = URL_SAFE_NO_PAD.decode(&parts[2]).unwrap();
        sig[10] ^= 0x01;
        let forged = format!("{}.{}.{}", parts[0], parts[1], b64(&sig));
        assert_eq!(
            reason(check(&forged, &f.keyring)),
            "license_signature_invalid"
        );

        // Signature of another token.
        let other = sign(&json!({"sub": "x"}), key, kid);
        let forged = format!("{}.{}.{}", parts[0], parts[1], segments(&other)[2]);
        assert_eq!(
            reason(check(&forged, &f.keyring)),
            "license_signature_invalid"
        );

        // Wrong length, and empty.
        let forged = format!("{}.{}.{}", parts[0], parts[1], b64(&sig[..63]));
        let err = check(&forged, &f.keyring).unwrap_err();
        assert_eq!(err.reason(), "license_signature_invalid");
        assert!(err.detail().contains("64 bytes, this is 63"), "{err}");
        let forged = format!("{}.{}.", parts[0], parts[1]);
        assert_eq!(reason(check(&forged, &f.keyring)), "license_malformed");
    }
}

#[test]
fn der_encoded_ecdsa_signature_gets_a_hint() {
    let f = fixture();
    let token = sign(&claims(), &f.ec, "ec-1");
    let parts = segments(&token);
    let raw = URL_SAFE_NO_PAD.decode(&parts[2]).unwrap();
    // Wrap r and s as a DER SEQUENCE of two INTEGERs (both made positive).
    let int = |half: &[u8]| [&[0x02, 33, 0x00][..], half].concat();
    let body = [int(&raw[..32]), int(&raw[32..])].concat();
    let der = [&[0x30, body.len() as u8][..], &body].concat();
    let forged = format!("{}.{}.{}", parts[0], parts[1], b64(&der));
    let err = check(&forged, &f.keyring).unwrap_err();
    assert_eq!(err.reason(), "license_signature_invalid");
    assert!(err.detail().contains("DER-encoded"), "{err}");
}

#[test]
fn alg_none_is_rejected() {
    let f = fixture();
    let header = json!({"alg": "none", "kid": "ed-1", "typ": "JWT"});
    for signature in ["", "c2ln"] {
        let token = format!(
            "{}.{}.{signature}",
            b64(header.to_string().as_bytes()),
            b64(claims().to_string().as_bytes())
        );
        let err = check(&token, &f.keyring).unwrap_err();
        assert_eq!(err.reason(), "license_algorithm_rejected", "{err}");
    }
}

#[test]
fn hmac_with_the_public_key_as_secret_is_rejected() {
    // The classic confusion attack: sign HS256 with the verifier's public
    // key bytes (raw and as PEM) as the HMAC secret.
    let f = fixture();
    let public = f.keyring.get("ed-1").unwrap();
    for secret in [
        public.public_key().to_vec(),
        public.to_spki_pem().into_bytes(),
        public.to_spki_der(),
    ] {
        let header = json!({"alg": "HS256", "kid": "ed-1", "typ": "JWT"});
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims().to_string().as_bytes())
        );
        let tag = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, &secret),
            input.as_bytes(),
        );
        let token = format!("{input}.{}", b64(tag.as_ref()));
        let err = check(&token, &f.keyring).unwrap_err();
        assert_eq!(err.reason(), "license_algorithm_rejected", "{err}");
        assert!(err.detail().contains("`HS256` is not accepted"), "{err}");
    }
}

#[test]
fn alg_must_match_the_keys_pinned_algorithm() {
    let f = fixture();
    // An ES256 signature claiming the Ed25519 key's kid, and vice versa.
    let header = json!({"alg": "ES256", "kid": "ed-1"});
    let token = sign_parts(
        header.to_string().as_bytes(),
        claims().to_string().as_bytes(),
        &f.ec,
    );
    let err = check(&token, &f.keyring).unwrap_err();
    assert_eq!(err.reason(), "license_algorithm_rejected");
    assert!(err.detail().contains("pinned to EdDSA"), "{err}");

    let header = json!({"alg": "EdDSA", "kid": "ec-1"});
    let token = sign_parts(
        header.to_string().as_bytes(),
        claims().to_string().as_bytes(),
        &f.ed,
    );
    assert_eq!(
        reason(check(&token, &f.keyring)),
        "license_algorithm_rejected"
    );
}

#[test]
fn unknown_and_hostile_kids() {
    let f = fixture();
    let token = sign(&claims(), &f.ed, "ed-2");
    let err = check(&token, &f.keyring).unwrap_err();
    assert_eq!(err, LicenseError::KeyUnknown { kid: "ed-2".into() });

    // A valid signature from a key we do not know under a kid we do.
    let stranger = SigningKey::generate(Algorithm::EdDSA).unwrap();
    let token = sign(&claims(), &stranger, "ed-1");
    assert_eq!(
        reason(check(&token, &f.keyring)),
        "license_signature_invalid"
    );

    for kid in [
        "../ed-1",
        "/etc/passwd",
        "keys/ed-1",
        "..\\ed-1",
        "ed-1\n",
        "",
    ] {
        let header = json!({"alg": "EdDSA", "kid": kid});
        let token = sign_parts(
            header.to_string().as_bytes(),
            claims().to_string().as_bytes(),
            &f.ed,
        );
        let err = check(&token, &f.keyring).unwrap_err();
        assert_eq!(err.reason(), "license_malformed", "{kid:?}");
    }
}

#[test]
fn embedded_keys_are_rejected_even_when_they_sign() {
    // The token carries its own (attacker's) key and is validly signed by it.
    let f = fixture();
    let attacker = SigningKey::generate(Algorithm::EdDSA).unwrap();
    let jwk = attacker.verifying_key("ed-1").unwrap().to_jwk();
    for (name, value) in [
        ("jwk", jwk),
        ("jku", json!("https://attacker.invalid/jwks.json")),
        ("x5u", json!("https://attacker.invalid/cert.pem")),
        ("x5c", json!(["MIIB"])),
    ] {
        let mut header = json!({"alg": "EdDSA", "kid": "ed-1"});
        header[name] = value;
        let token = sign_parts(
            header.to_string().as_bytes(),
            claims().to_string().as_bytes(),
            &attacker,
        );
        let err = check(&token, &f.keyring).unwrap_err();
        assert_eq!(err.reason(), "license_malformed", "{name}");
        assert!(err.detail().contains(&format!("`{name}`")), "{err}");
    }
}

#[test]
fn issuer_audience_and_time_failures() {
    let f = fixture();
    let mint = |edit: &dyn Fn(&mut Value)| {
        let mut c = claims();
        edit(&mut c);
        sign(&c, &f.ed, "ed-1")
    };
    type Edit<'a> = &'a dyn Fn(&mut Value);
    let cases: [(Edit<'_>, &str); 8] = [
        (
            &|c| c["iss"] = json!("https://evil.example"),
            "license_issuer_mismatch",
        ),
        (
            &|c| {
                c.as_object_mut().unwrap().remove("iss");
            },
            "license_issuer_mismatch",
        ),
        (
            &|c| c["aud"] = json!(["someone-else"]),
            "license_audience_mismatch",
        ),
        (
            &|c| {
                c.as_object_mut().unwrap().remove("aud");
            },
            "license_audience_mismatch",
        ),
        (&|c| c["exp"] = json!(NOW - 60 - 3600), "license_expired"),
        (&|c| c["nbf"] = json!(NOW + 61), "license_not_yet_valid"),
        (&|c| c["nbf"] = json!(NOW + 60), "ok"),
        (&|c| c["aud"] = json!(["x", AUDIENCE]), "ok"),
    ];
    for (edit, expected) in cases {
        let token = mint(edit);
        assert_eq!(reason(check(&token, &f.keyring)), expected);
    }

    let token = mint(&|c| c["exp"] = json!(NOW - 60));
    assert_eq!(
        check(&token, &f.keyring),
        Ok(Validity::InGrace {
            expired_at: NOW - 60,
            grace_ends: NOW + 3600
        })
    );
}

#[test]
fn malformed_shapes() {
    let f = fixture();
    let good = sign(&claims(), &f.ed, "ed-1");
    let parts = segments(&good);
    let oversize = format!("{}.{}.{}", parts[0], "A".repeat(MAX_TOKEN_BYTES), parts[2]);
    let cases = [
        String::new(),
        "abc".into(),
        format!("{}.{}", parts[0], parts[1]),
        format!("{good}.extra"),
        format!("{}..{}", parts[0], parts[2]),
        format!("{}=.{}.{}", parts[0], parts[1], parts[2]),
        format!("{}.{}.{}=", parts[0], parts[1], parts[2]),
        format!("*{}.{}.{}", parts[0], parts[1], parts[2]),
        format!("{}.{}.{}", b64(b"not json"), parts[1], parts[2]),
        format!("{}.{}.{}", b64(b"[\"alg\"]"), parts[1], parts[2]),
        format!(" {good}"),
        oversize,
    ];
    for token in &cases {
        let err = token::verify(token, &f.keyring).unwrap_err();
        assert_eq!(err.reason(), "license_malformed", "{token:.80}: {err}");
    }
    // The size limit is checked before anything else.
    let err = token::verify(&"x".repeat(MAX_TOKEN_BYTES + 1), &f.keyring).unwrap_err();
    assert!(err.detail().contains("the limit is 16384"), "{err}");
}

#[test]
fn signed_but_malformed_payloads() {
    // Correctly signed payloads that are not acceptable claims.
    let f = fixture();
    let header = json!({"alg": "EdDSA", "kid": "ed-1"}).to_string();
    let payloads: [&[u8]; 7] = [
        b"not json",
        b"[]",
        br#"{"sub":"a","exp":1e10,"lic":{"plan":"p"}}"#,
        br#"{"sub":"a","exp":-5,"lic":{"plan":"p"}}"#,
        br#"{"sub":"a","exp":1,"lic":{"plan":"p"},"sub":"b"}"#,
        br#"{"sub":"a","exp":1,"lic":{"plan":"p","features":["x"],"features":[]}}"#,
        b"\xff\xfe",
    ];
    for payload in payloads {
        let token = sign_parts(header.as_bytes(), payload, &f.ed);
        let err = token::verify(&token, &f.keyring).unwrap_err();
        assert_eq!(
            err.reason(),
            "license_malformed",
            "{}: {err}",
            String::from_utf8_lossy(payload)
        );
        assert!(err.detail().contains("claims:"), "{err}");
    }
}

#[test]
fn duplicate_header_members_are_rejected_before_the_keyring() {
    let f = fixture();
    let header = br#"{"alg":"EdDSA","kid":"ed-1","kid":"ed-1"}"#;
    let token = sign_parts(header, claims().to_string().as_bytes(), &f.ed);
    let err = token::verify(&token, &f.keyring).unwrap_err();
    assert!(err.detail().contains("duplicate key `kid`"), "{err}");
}

#[test]
fn unverified_payload_is_never_parsed() {
    // A bad signature over an unparseable payload reports the signature,
    // proving the payload was not looked at first.
    let f = fixture();
    let header = b64(json!({"alg": "EdDSA", "kid": "ed-1"})
        .to_string()
        .as_bytes());
    let token = format!("{header}.{}.{}", b64(b"{{{{"), b64(&[0; 64]));
    assert_eq!(
        reason(check(&token, &f.keyring)),
        "license_signature_invalid"
    );
}

#[test]
fn verifier_caches_hits_and_revalidates_time() {
    let f = fixture();
    let verifier = LicenseVerifier::new(Arc::new(f.keyring), validator(), 100);
    let token = sign(&claims(), &f.ed, "ed-1");

    let (first, validity) = verifier.check(&token, NOW).unwrap();
    assert_eq!(
        validity,
        Validity::Valid {
            expires_at: NOW + 86_400
        }
    );
    assert_eq!(verifier.cache().len(), 1);
    let (second, _) = verifier.check(&token, NOW + 1).unwrap();
    assert!(Arc::ptr_eq(&first, &second), "served from the cache");

    // Time moves on: in grace, then expired and evicted.
    let exp = NOW + 86_400;
    let (_, validity) = verifier.check(&token, exp + 60).unwrap();
    assert!(validity.is_in_grace());
    let err = verifier.check(&token, exp + 60 + 3600).unwrap_err();
    assert_eq!(err.reason(), "license_expired");
    assert!(verifier.cache().is_empty());

    // Failures are not in the verification cache (but in the negative one).
    let bad = format!("{}x", &token[..token.len() - 1]);
    assert!(verifier.check(&bad, NOW).is_err());
    assert!(verifier.cache().is_empty());
}

#[test]
fn header_tokens_hit_the_cache_as_bytes_and_non_text_is_malformed() {
    let f = fixture();
    let verifier = LicenseVerifier::new(Arc::new(f.keyring), validator(), 100);
    let token = sign(&claims(), &f.ed, "ed-1");
    let (first, answered) = verifier.check_bytes_traced(token.as_bytes(), NOW);
    assert_eq!(answered, Answered::Signature);
    let (second, answered) = verifier.check_bytes_traced(token.as_bytes(), NOW);
    assert_eq!(answered, Answered::Cache, "the same bytes are a hit");
    assert!(Arc::ptr_eq(&first.unwrap().0, &second.unwrap().0));
    let (third, answered) = verifier.check_traced(&token, NOW);
    assert!(
        answered == Answered::Cache && third.is_ok(),
        "text and bytes share entries"
    );

    let mut not_text = token.clone().into_bytes();
    not_text[3] = 0xff;
    let (result, answered) = verifier.check_bytes_traced(&not_text, NOW);
    assert_eq!(answered, Answered::Parse);
    assert!(
        matches!(result, Err(LicenseError::Malformed(_))),
        "{result:?}"
    );
}

#[test]
fn verifier_rechecks_issuer_on_hits_and_drops_cache_on_new_keyring() {
    let f = fixture();
    let ed_public = f.keyring.get("ed-1").unwrap().clone();
    let verifier = LicenseVerifier::new(Arc::new(f.keyring), validator(), 100);
    let token = sign(&claims(), &f.ed, "ed-1");
    verifier.check(&token, NOW).unwrap();

    // The same contents: no change, cache kept.
    let same =
        Keyring::from_keys(vec![ed_public.clone(), f.ec.verifying_key("ec-1").unwrap()]).unwrap();
    assert!(!verifier.replace_keyring(Arc::new(same)));
    assert_eq!(verifier.cache().len(), 1);

    // Key rotated out: the cached token no longer passes.
    let rotated = Keyring::from_keys(vec![f.ec.verifying_key("ec-1").unwrap()]).unwrap();
    assert!(verifier.replace_keyring(Arc::new(rotated)));
    assert!(verifier.cache().is_empty());
    assert_eq!(
        verifier.check(&token, NOW).unwrap_err().reason(),
        "license_key_unknown"
    );
    assert_eq!(verifier.keyring().len(), 1);
}

#[test]
fn stale_generation_entries_are_never_served() {
    // Simulates a check that raced a keyring swap and inserted late.
    let f = fixture();
    let old_generation = f.keyring.generation();
    let verifier = LicenseVerifier::new(
        Arc::new(Keyring::from_keys(vec![]).unwrap()),
        validator(),
        100,
    );
    let token = sign(&claims(), &f.ed, "ed-1");
    let license = Arc::new(token::verify(&token, &f.keyring).unwrap());
    verifier
        .cache()
        .insert(&token, license, old_generation, u64::MAX, NOW);
    assert_eq!(
        verifier.check(&token, NOW).unwrap_err().reason(),
        "license_key_unknown"
    );
}

/// A token that names `kid` of the keyring and is signed by a key it
/// does not hold: what a forger who read a `kid` sends. `n` makes it unique.
fn forged(n: u64) -> String {
    let rogue = SigningKey::generate(Algorithm::EdDSA).unwrap();
    let mut claims = claims();
    claims["jti"] = json!(format!("forged-{n}"));
    sign(&claims, &rogue, "ed-1")
}

fn budgeted(f: Fixture, limit: u64, burst: u64) -> LicenseVerifier {
    // Per hour: nothing refills while a test runs.
    LicenseVerifier::new(Arc::new(f.keyring), validator(), 100).with_budget(&BudgetSettings {
        limit,
        per: Duration::from_secs(3600),
        burst,
        max_clients: 100,
    })
}

const CLIENT: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
const OTHER_CLIENT: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

#[test]
fn a_forged_token_costs_one_signature_check_then_comes_from_the_negative_cache() {
    let verifier = LicenseVerifier::new(Arc::new(fixture().keyring), validator(), 100);
    let token = forged(1);
    let (first, answered) = verifier.check_traced(&token, NOW);
    assert_eq!(answered, Answered::Signature);
    assert_eq!(first.unwrap_err().reason(), "license_signature_invalid");
    for _ in 0..3 {
        let (again, answered) = verifier.check_traced(&token, NOW);
        assert_eq!(answered, Answered::NegativeCache);
        assert_eq!(
            again.unwrap_err().reason(),
            "license_signature_invalid",
            "the precise reason is kept"
        );
    }
    assert_eq!(verifier.negative_cache().len(), 1);

    // Failures before the signature are cheaper to redo than to remember.
    let unknown_kid = sign(&claims(), &fixture().ed, "nobody");
    for _ in 0..2 {
        let (result, answered) = verifier.check_traced(&unknown_kid, NOW);
        assert_eq!(answered, Answered::Parse);
        assert_eq!(result.unwrap_err().reason(), "license_key_unknown");
    }
    assert_eq!(verifier.negative_cache().len(), 1);
}

#[test]
fn signed_but_invalid_tokens_are_validated_again_on_each_negative_hit() {
    let f = fixture();
    let early = {
        let mut claims = claims();
        claims["nbf"] = json!(NOW + 1000);
        sign(&claims, &f.ed, "ed-1")
    };
    let late = {
        let mut claims = claims();
        claims["exp"] = json!(NOW - 10_000);
        sign(&claims, &f.ed, "ed-1")
    };
    let verifier = LicenseVerifier::new(Arc::new(f.keyring), validator(), 100);
    let (result, answered) = verifier.check_traced(&early, NOW);
    assert_eq!(answered, Answered::Signature);
    assert_eq!(result.unwrap_err().reason(), "license_not_yet_valid");
    let (result, answered) = verifier.check_traced(&early, NOW + 10);
    assert_eq!(answered, Answered::NegativeCache);
    assert_eq!(
        result.unwrap_err(),
        LicenseError::NotYetValid {
            not_before: NOW + 1000,
            now: NOW + 10
        },
        "reported as of now"
    );
    // Its `nbf` (less the leeway) arrives: accepted, and cached as valid.
    let (result, answered) = verifier.check_traced(&early, NOW + 1000 - 60);
    assert_eq!(answered, Answered::NegativeCache);
    assert!(result.is_ok(), "{result:?}");
    let (_, answered) = verifier.check_traced(&early, NOW + 1000);
    assert_eq!(answered, Answered::Cache);
    assert!(verifier.negative_cache().is_empty());

    let (result, _) = verifier.check_traced(&late, NOW);
    assert_eq!(result.unwrap_err().reason(), "license_expired");
    let (result, answered) = verifier.check_traced(&late, NOW + 5);
    assert_eq!(answered, Answered::NegativeCache);
    assert!(matches!(
        result,
        Err(LicenseError::Expired { now, .. }) if now == NOW + 5
    ));
}

#[test]
fn the_budget_throttles_failing_checks_per_client_without_a_signature_check() {
    let f = fixture();
    let valid = sign(&claims(), &f.ed, "ed-1");
    let fresh_valid = {
        let mut claims = claims();
        claims["jti"] = json!("fresh");
        sign(&claims, &f.ed, "ed-1")
    };
    let verifier = budgeted(f, 1, 3);
    let check =
        |token: &str, client| verifier.check_from_client(token.as_bytes(), NOW, move || client);

    let (result, answered) = check(&valid, CLIENT);
    assert_eq!(answered, Answered::Signature);
    assert!(result.is_ok());

    // A burst of 3 failures, then refused unchecked.
    let forgeries: Vec<String> = (0..3).map(forged).collect();
    for token in &forgeries {
        let (result, answered) = check(token, CLIENT);
        assert_eq!(answered, Answered::Signature);
        assert_eq!(result.unwrap_err().reason(), "license_signature_invalid");
    }
    let remembered = verifier.negative_cache().len();
    let (result, answered) = check(&forged(99), CLIENT);
    assert_eq!(answered, Answered::Throttled);
    let Err(LicenseError::VerificationThrottled { retry_after }) = result else {
        panic!("{result:?}");
    };
    assert!(retry_after >= 1);
    assert_eq!(
        verifier.negative_cache().len(),
        remembered,
        "nothing was verified"
    );

    // A token that failed before still gets its precise reason, free.
    let (result, answered) = check(&forgeries[0], CLIENT);
    assert_eq!(answered, Answered::NegativeCache);
    assert_eq!(result.unwrap_err().reason(), "license_signature_invalid");
    // A valid token seen before passes; the client is not even asked.
    let (result, answered) = verifier.check_from_client(valid.as_bytes(), NOW, || {
        unreachable!("a hit needs no client")
    });
    assert_eq!(answered, Answered::Cache);
    assert!(result.is_ok());
    // A token never seen waits for the budget like any other.
    assert_eq!(check(&fresh_valid, CLIENT).1, Answered::Throttled);
    // Other clients are not affected.
    let (result, answered) = check(&fresh_valid, OTHER_CLIENT);
    assert_eq!(answered, Answered::Signature);
    assert!(result.is_ok());
}

#[test]
fn valid_tokens_never_spend_the_budget() {
    let f = fixture();
    let tokens: Vec<String> = (0..10)
        .map(|n| {
            let mut claims = claims();
            claims["jti"] = json!(format!("valid-{n}"));
            sign(&claims, &f.ed, "ed-1")
        })
        .collect();
    let verifier = budgeted(f, 1, 1);
    for token in &tokens {
        let (result, answered) = verifier.check_from_client(token.as_bytes(), NOW, || CLIENT);
        assert_eq!(answered, Answered::Signature);
        assert!(result.is_ok());
    }
    // The one unit of the burst is still there for a failure.
    let (_, answered) = verifier.check_from_client(forged(1).as_bytes(), NOW, || CLIENT);
    assert_eq!(answered, Answered::Signature);
    let (_, answered) = verifier.check_from_client(forged(2).as_bytes(), NOW, || CLIENT);
    assert_eq!(answered, Answered::Throttled);
}

#[test]
fn a_new_keyring_forgets_refused_tokens() {
    let f = fixture();
    let new_key = SigningKey::generate(Algorithm::EdDSA).unwrap();
    // Signed with the key that will be `ed-1` after the rotation.
    let token = sign(&claims(), &new_key, "ed-1");
    let verifier = LicenseVerifier::new(Arc::new(f.keyring), validator(), 100);
    assert_eq!(
        verifier.check(&token, NOW).unwrap_err().reason(),
        "license_signature_invalid"
    );
    assert_eq!(verifier.negative_cache().len(), 1);
    let rotated = Keyring::from_keys(vec![new_key.verifying_key("ed-1").unwrap()]).unwrap();
    assert!(verifier.replace_keyring(Arc::new(rotated)));
    assert!(verifier.negative_cache().is_empty());
    assert!(verifier.check(&token, NOW).is_ok());
}

#[test]
fn environment_restrictions_from_a_token() {
    let f = fixture();
    let verified = token::verify(&sign(&claims(), &f.ed, "ed-1"), &f.keyring).unwrap();
    let mut runtime = Environment {
        namespace: Some("shop".into()),
        ..Environment::default()
    };
    assert_eq!(admits(&verified.claims.lic.env, &runtime), Ok(()));
    runtime.namespace = Some("dev".into());
    assert_eq!(
        admits(&verified.claims.lic.env, &runtime)
            .unwrap_err()
            .reason(),
        "environment_not_licensed"
    );
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/license")
}

fn read_token(name: &str) -> String {
    std::fs::read_to_string(fixtures().join(name))
        .unwrap()
        .trim()
        .to_owned()
}

#[test]
fn pyjwt_tokens_verify_with_pem_and_jwks_keyrings() {
    let expected: Claims =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("claims.json")).unwrap())
            .unwrap();
    let validator = Validator {
        issuer: Some(expected.iss.clone().unwrap()),
        audience: Some("licensegate".into()),
        ..Validator::default()
    };
    for keyring_path in ["keys", "jwks.json"] {
        let keyring = Keyring::load(&fixtures().join(keyring_path)).unwrap();
        for (file, kid, alg) in [
            ("py-ed25519.jwt", "py-ed25519", Algorithm::EdDSA),
            ("py-es256.jwt", "py-es256", Algorithm::ES256),
        ] {
            let verified = token::verify(&read_token(file), &keyring).unwrap();
            assert_eq!((verified.kid.as_str(), verified.alg), (kid, alg));
            assert_eq!(verified.claims, expected);
            // Valid now (real clock) and until 2100.
            assert_eq!(
                validator.validate(&verified.claims, validate::unix_now()),
                Ok(Validity::Valid {
                    expires_at: 4_102_444_800
                })
            );
            assert!(validator
                .validate(&verified.claims, 4_102_444_800 + 60)
                .is_err());
        }
    }
}

#[test]
fn third_party_private_keys_sign_tokens_we_accept() {
    let keyring = Keyring::load(&fixtures().join("jwks.json")).unwrap();
    for kid in ["py-ed25519", "py-es256"] {
        let key = SigningKey::from_pkcs8_pem_file(&fixtures().join(format!("private/{kid}.pem")))
            .unwrap();
        let token = sign(&claims(), &key, kid);
        assert_eq!(token::verify(&token, &keyring).unwrap().kid, kid);
        // The public half matches the committed public key file.
        let pem = std::fs::read_to_string(fixtures().join(format!("keys/{kid}.pem"))).unwrap();
        assert_eq!(key.public_key_pem(), pem);
    }
}

#[test]
fn schema_lists_exactly_the_parsed_members() {
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/license-claims.schema.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let keys = |v: &Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(
        keys(&schema["properties"]),
        ["aud", "exp", "iat", "iss", "jti", "lic", "nbf", "sub"]
    );
    assert_eq!(schema["required"], json!(["sub", "exp", "lic"]));
    assert_eq!(
        keys(&schema["properties"]["lic"]["properties"]),
        ["customer", "env", "features", "limits", "plan", "roles", "seats"]
    );
    assert_eq!(schema["properties"]["lic"]["required"], json!(["plan"]));
    assert_eq!(
        keys(&schema["properties"]["lic"]["properties"]["env"]["properties"]),
        ["clusters", "namespaces", "regions", "service_accounts"]
    );
    assert_eq!(
        schema["$defs"]["numericDate"]["maximum"],
        json!(NumericDate::MAX)
    );
    // Everything the serializer writes for a full license is in the schema.
    let full: Claims = serde_json::from_value(claims()).unwrap();
    let written = serde_json::to_value(&full).unwrap();
    for key in keys(&written) {
        assert!(schema["properties"].get(&key).is_some(), "{key}");
    }
}

#[test]
fn fuzz_regression_header_that_is_a_json_array() {
    // Found with the `signed_claims` fuzz target's header invariant: serde's
    // derived header struct also parsed a JSON array by member position, so
    // a validly signed token with this header verified.
    let f = fixture();
    let payload = claims().to_string();
    for header in [
        &br#"["EdDSA","ed-1",null]"#[..],
        br#" ["EdDSA","ed-1",null,false,null,null,null,null]"#,
    ] {
        let token = sign_parts(header, payload.as_bytes(), &f.ed);
        let err = token::verify(&token, &f.keyring).unwrap_err();
        assert_eq!(err.reason(), "license_malformed", "{err}");
        assert!(err.detail().contains("not a JSON object"), "{err}");
    }
    // The exact fuzz input: header, NUL, payload.
    let input =
        b"[\"EdDSA\",\"fuzz-ed25519\",null]\0{\"sub\":\"a\",\"exp\":1,\"lic\":{\"plan\":\"p\"}}";
    let err = fuzz_harness::signed_claims(input).unwrap_err();
    assert_eq!(
        err.detail(),
        "malformed license token: header is not a JSON object"
    );
    // Objects, with leading whitespace too, still verify.
    let token = sign_parts(
        br#" {"alg":"EdDSA","kid":"ed-1"}"#,
        payload.as_bytes(),
        &f.ed,
    );
    assert!(token::verify(&token, &f.keyring).is_ok());
}

// The cargo-fuzz harness, compiled into the tests as well, so every
// committed seed runs through exactly the code the fuzz targets run, on
// every `cargo test`, with no libFuzzer or nightly compiler.
#[path = "../../fuzz/harness.rs"]
mod fuzz_harness;

#[test]
fn fuzz_seeds_replay_through_the_harness() {
    type Target = fn(&[u8]) -> Option<Result<VerifiedLicense, LicenseError>>;
    let targets: [(&str, Target); 2] = [
        ("token_verify", fuzz_harness::token_verify),
        ("signed_claims", |data| {
            Some(fuzz_harness::signed_claims(data))
        }),
    ];
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    // Every seed directory is replayed: a new target needs an entry above.
    let mut dirs: Vec<String> = std::fs::read_dir(&seeds)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    let mut known: Vec<&str> = targets.iter().map(|(name, _)| *name).collect();
    // Replayed by `policy::normalize::request_head_fuzz_seeds_replay`,
    // `user::tests::user_token_fuzz_seeds_replay` and
    // `proxy::h1::h1_fuzz_seeds_replay`.
    known.push("request_head");
    known.push("h1_request");
    known.push("h1_chunked");
    known.push("user_token");
    known.sort();
    assert_eq!(dirs, known, "seed directories without a replay entry");
    for (target, run) in targets {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(seeds.join(target))
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .collect();
        paths.sort();
        assert!(paths.len() >= 5, "{target}: too few seeds: {paths:?}");
        for path in paths {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            // A panic inside `run` is the failure a fuzzer would report.
            let result = run(&std::fs::read(&path).unwrap());
            // `ok-*` seeds must verify and `err-*` seeds must not, so a
            // seed that rots (say, re-minted fixtures) is noticed.
            if name.starts_with("ok-") {
                assert!(matches!(result, Some(Ok(_))), "{target}/{name}: {result:?}");
            } else if name.starts_with("err-") {
                assert!(
                    matches!(result, Some(Err(_))),
                    "{target}/{name}: {result:?}"
                );
            }
        }
    }
}
