use serde_json::{json, Value};

use super::*;
use crate::license::issue::{sign, sign_parts, sign_revocations, SigningKey};
use crate::license::token;

struct Fixture {
    key: SigningKey,
    keyring: Keyring,
}

fn fixture() -> Fixture {
    let key = SigningKey::generate(Algorithm::EdDSA).unwrap();
    let keyring = Keyring::from_keys(vec![key.verifying_key("k1").unwrap()]).unwrap();
    Fixture { key, keyring }
}

fn list(seq: u64, jti: &[&str], sub: &[&str]) -> Value {
    json!({"iss": "vendor", "iat": 1_800_000_000u64, "seq": seq, "jti": jti, "sub": sub})
}

fn license_claims(sub: &str, jti: &str) -> Claims {
    serde_json::from_value(json!({
        "sub": sub, "jti": jti, "exp": 4_000_000_000u64, "lic": {"plan": "pro"}
    }))
    .unwrap()
}

impl Fixture {
    fn verify(&self, claims: &Value) -> Result<RevocationList, LicenseError> {
        RevocationList::verify(
            &sign_revocations(claims, &self.key, "k1"),
            &self.keyring,
            None,
        )
    }
}

#[test]
fn a_signed_list_parses_into_sets() {
    let f = fixture();
    let parsed = f.verify(&list(7, &["t1", "t2"], &["lic-9"])).unwrap();
    assert_eq!(parsed.seq, 7);
    assert_eq!(parsed.iat, 1_800_000_000);
    assert_eq!(parsed.iss.as_deref(), Some("vendor"));
    assert_eq!(parsed.kid, "k1");
    assert!(parsed.jti.contains("t2") && parsed.sub.contains("lic-9"));

    assert!(parsed.check(&license_claims("lic-1", "t3")).is_ok());
    let by_jti = parsed.check(&license_claims("lic-1", "t1")).unwrap_err();
    assert_eq!(by_jti.reason(), "license_revoked");
    assert!(by_jti.detail().contains("jti `t1`"), "{by_jti}");
    let by_sub = parsed.check(&license_claims("lic-9", "t9")).unwrap_err();
    assert!(by_sub.detail().contains("sub `lic-9`") && by_sub.detail().contains("seq 7"));

    // `jti` and `sub` may be left out: an empty list revokes nothing.
    let empty = f.verify(&json!({"iat": 1, "seq": 1})).unwrap();
    assert!(!empty.revokes(&license_claims("lic-9", "t1")));
}

#[test]
fn a_license_token_is_not_a_list_and_a_list_is_not_a_license() {
    let f = fixture();
    // A license token (typ JWT) whose claims happen to look like a list.
    let license_typed = sign(&list(9, &[], &[]), &f.key, "k1");
    let err = RevocationList::verify(&license_typed, &f.keyring, None).unwrap_err();
    assert_eq!(err.reason(), "license_malformed");
    assert!(
        err.detail().contains("licensegate-revocations+jwt"),
        "{err}"
    );

    // No `typ` at all is not a list either.
    let header = json!({"alg": "EdDSA", "kid": "k1"}).to_string();
    let untyped = sign_parts(
        header.as_bytes(),
        list(9, &[], &[]).to_string().as_bytes(),
        &f.key,
    );
    let err = RevocationList::verify(&untyped, &f.keyring, None).unwrap_err();
    assert!(err.detail().contains("no `typ`"), "{err}");

    // A list whose claims happen to look like a license is no license.
    let claims = json!({"sub": "lic", "exp": 4_000_000_000u64, "lic": {"plan": "p"},
                        "iat": 1, "seq": 1});
    let list_typed = sign_revocations(&claims, &f.key, "k1");
    let err = token::verify(&list_typed, &f.keyring).unwrap_err();
    assert_eq!(err.reason(), "license_malformed");
    assert!(err.detail().contains("typ"), "{err}");
}

#[test]
fn tampered_foreign_and_malformed_lists_are_refused() {
    let f = fixture();
    let good = sign_revocations(&list(3, &["t1"], &[]), &f.key, "k1");
    let mut parts: Vec<&str> = good.split('.').collect();
    let forged_payload = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        list(3, &[], &[]).to_string(),
    );
    parts[1] = &forged_payload;
    let err = RevocationList::verify(&parts.join("."), &f.keyring, None).unwrap_err();
    assert_eq!(err.reason(), "license_signature_invalid");

    let stranger = SigningKey::generate(Algorithm::EdDSA).unwrap();
    let foreign = sign_revocations(&list(3, &[], &[]), &stranger, "other");
    let err = RevocationList::verify(&foreign, &f.keyring, None).unwrap_err();
    assert_eq!(err.reason(), "license_key_unknown");

    for (claims, expect) in [
        (json!({"seq": 1}), "missing field `iat`"),
        (json!({"iat": 1}), "missing field `seq`"),
        (json!({"iat": 1, "seq": -1}), "invalid value"),
        (
            json!({"iat": 1, "seq": 1, "jti": "t1"}),
            "expected a sequence",
        ),
        (json!([1, 2]), "not a JSON object"),
    ] {
        let err = f.verify(&claims).unwrap_err();
        assert_eq!(err.reason(), "license_malformed", "{claims}");
        assert!(err.detail().contains(expect), "{claims}: {err}");
    }
    let header = json!({"alg": "EdDSA", "kid": "k1", "typ": REVOCATIONS_TYP}).to_string();
    let repeated = sign_parts(header.as_bytes(), br#"{"iat":1,"seq":1,"seq":2}"#, &f.key);
    let err = RevocationList::verify(&repeated, &f.keyring, None).unwrap_err();
    assert!(err.detail().contains("duplicate key"), "{err}");
}

#[test]
fn another_issuer_is_refused_when_one_is_configured() {
    let f = fixture();
    let text = sign_revocations(&list(1, &[], &[]), &f.key, "k1");
    assert!(RevocationList::verify(&text, &f.keyring, Some("vendor")).is_ok());
    let err = RevocationList::verify(&text, &f.keyring, Some("other")).unwrap_err();
    assert_eq!(err.reason(), "license_issuer_mismatch");
    let no_iss = sign_revocations(&json!({"iat": 1, "seq": 1}), &f.key, "k1");
    assert!(RevocationList::verify(&no_iss, &f.keyring, Some("other")).is_ok());
}

#[test]
fn only_a_higher_seq_replaces_the_list_in_force() {
    let f = fixture();
    let five = f.verify(&list(5, &["t1"], &[])).unwrap();
    assert_eq!(admit(None, &five), Ok(Admission::Newer));
    let six = f.verify(&list(6, &[], &[])).unwrap();
    assert_eq!(admit(Some(&five), &six), Ok(Admission::Newer));

    let four = f.verify(&list(4, &["t1", "t2"], &[])).unwrap();
    let refused = admit(Some(&five), &four).unwrap_err();
    assert_eq!(
        refused,
        Refusal::Rollback {
            offered: 4,
            in_force: 5
        }
    );
    assert_eq!(refused.label(), "rollback");

    // The same list again, even re-signed, is the same list.
    let again = f.verify(&list(5, &["t1"], &[])).unwrap();
    assert_eq!(admit(Some(&five), &again), Ok(Admission::Same));
    // Same seq, other content: refused both ways round.
    let other = f.verify(&list(5, &[], &[])).unwrap();
    assert_eq!(
        admit(Some(&five), &other),
        Err(Refusal::Conflict { seq: 5 })
    );
    assert_eq!(admit(Some(&other), &five).unwrap_err().label(), "conflict");
}
