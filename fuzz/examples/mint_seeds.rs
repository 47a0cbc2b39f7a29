//! Rewrites the committed seeds in `fuzz/seeds/` from the harness keys:
//!
//!     cd fuzz && cargo run --example mint_seeds
//!
//! Seeds named `ok-*` must verify and `err-*` must be rejected; the replay
//! test in `src/license/tests.rs` checks both. ES256 signatures are
//! randomised, so re-running changes those files even with equal inputs.

use std::fs;
use std::path::Path;

use licensegate::license;
use serde_json::json;

#[path = "../harness.rs"]
mod harness;

use harness::{keys, ED25519_KID, ES256_KID};
use license::issue::{sign, sign_parts};

fn full_claims() -> serde_json::Value {
    json!({
        "iss": "https://licenses.example.com", "sub": "lic-fuzz-0001",
        "aud": ["licensegate", "billing"], "iat": 1_735_689_600u64,
        "nbf": 1_735_689_600u64, "exp": 4_102_444_800u64, "jti": "fuzz-1",
        "lic": {
            "plan": "enterprise", "features": ["sso", "audit-log"],
            "limits": {"rps": 500, "tenants": 20}, "seats": 50,
            "env": {"clusters": ["prod-eu"], "namespaces": ["shop", "shop-canary"],
                    "regions": ["eu-west-1"], "service_accounts": ["api"]},
            "customer": "ACME Corp"
        },
        "x-vendor": {"nested": [1, {"a": null}]}
    })
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let k = keys();
    let minimal = json!({"sub": "lic-1", "exp": 2_000_000_000u64, "lic": {"plan": "pro"}});
    let ed_header = json!({"alg": "EdDSA", "kid": ED25519_KID}).to_string();

    let tokens: Vec<(&str, String)> = vec![
        (
            "ok-ed25519-full",
            sign(&full_claims(), &k.ed25519, ED25519_KID),
        ),
        ("ok-es256-full", sign(&full_claims(), &k.es256, ES256_KID)),
        (
            "ok-ed25519-minimal",
            sign(&minimal, &k.ed25519, ED25519_KID),
        ),
        (
            "ok-es256-no-typ",
            sign_parts(
                json!({"alg": "ES256", "kid": ES256_KID})
                    .to_string()
                    .as_bytes(),
                minimal.to_string().as_bytes(),
                &k.es256,
            ),
        ),
        (
            "err-unknown-kid",
            sign(&full_claims(), &k.ed25519, "fuzz-other"),
        ),
        (
            "err-alg-pinned-elsewhere",
            sign_parts(
                json!({"alg": "ES256", "kid": ED25519_KID})
                    .to_string()
                    .as_bytes(),
                minimal.to_string().as_bytes(),
                &k.es256,
            ),
        ),
        (
            "err-alg-none",
            sign_parts(
                json!({"alg": "none", "kid": ED25519_KID})
                    .to_string()
                    .as_bytes(),
                minimal.to_string().as_bytes(),
                &k.ed25519,
            )
            .rsplit_once('.')
            .map(|(signed, _)| format!("{signed}."))
            .unwrap(),
        ),
        (
            "err-embedded-jwk",
            sign_parts(
                json!({"alg": "EdDSA", "kid": ED25519_KID,
                       "jwk": k.keyring.get(ED25519_KID).unwrap().to_jwk()})
                .to_string()
                .as_bytes(),
                minimal.to_string().as_bytes(),
                &k.ed25519,
            ),
        ),
        (
            "err-duplicate-kid",
            sign_parts(
                br#"{"alg":"EdDSA","kid":"fuzz-ed25519","k\u0069d":"fuzz-ed25519"}"#,
                minimal.to_string().as_bytes(),
                &k.ed25519,
            ),
        ),
        (
            "err-signed-duplicate-sub",
            sign_parts(
                ed_header.as_bytes(),
                br#"{"sub":"a","exp":1,"lic":{"plan":"p"},"sub":"b"}"#,
                &k.ed25519,
            ),
        ),
        (
            "err-signed-null-env",
            sign_parts(
                ed_header.as_bytes(),
                br#"{"sub":"a","exp":1,"lic":{"plan":"p","env":{"regions":null}}}"#,
                &k.ed25519,
            ),
        ),
        ("err-bad-signature", {
            let good = sign(&minimal, &k.ed25519, ED25519_KID);
            let (signed, _) = good.rsplit_once('.').unwrap();
            format!("{signed}.{}", "A".repeat(86))
        }),
        ("err-two-segments", "eyJhbGciOiJFZERTQSJ9.e30".to_owned()),
        (
            "err-header-array",
            sign_parts(
                br#"["EdDSA","fuzz-ed25519",null]"#,
                minimal.to_string().as_bytes(),
                &k.ed25519,
            ),
        ),
    ];
    write(
        &root.join("token_verify"),
        tokens.iter().map(|(n, t)| (*n, t.as_bytes().to_vec())),
    );

    let nul = |header: &str, payload: &str| [header.as_bytes(), b"\0", payload.as_bytes()].concat();
    let claims: Vec<(&str, Vec<u8>)> = vec![
        ("ok-minimal.json", minimal.to_string().into_bytes()),
        ("ok-full.json", serde_json::to_vec_pretty(&full_claims()).unwrap()),
        (
            "ok-aud-string-escapes.json",
            br#"{"sub":"l\u0069c","aud":"licensegate","exp":0,"nbf":253402300799,"lic":{"plan":"\ud83d\ude00","features":[],"limits":{},"env":{}}}"#.to_vec(),
        ),
        (
            "ok-unknown-members.json",
            br#"{"x":[[[{"y":{"z":[true,false,null,1.5e300,-7]}}]]],"sub":"s","exp":1,"lic":{"plan":"p","x-ext":{"k":"v"},"env":{"other":[]}}}"#.to_vec(),
        ),
        (
            "err-duplicate-nested.json",
            br#"{"sub":"a","exp":1,"lic":{"plan":"a","env":{"regions":[],"regions":["x"]}}}"#.to_vec(),
        ),
        (
            "err-duplicate-limits.json",
            br#"{"sub":"a","exp":1,"lic":{"plan":"a","limits":{"rps":1,"rps":1000}}}"#.to_vec(),
        ),
        ("err-exp-float.json", br#"{"sub":"a","exp":1e10,"lic":{"plan":"p"}}"#.to_vec()),
        ("err-exp-after-9999.json", br#"{"sub":"a","exp":253402300800,"lic":{"plan":"p"}}"#.to_vec()),
        ("err-seats-too-big.json", br#"{"sub":"a","exp":1,"lic":{"plan":"p","seats":4294967296}}"#.to_vec()),
        ("err-empty-sub.json", br#"{"sub":"","exp":1,"lic":{"plan":"p"}}"#.to_vec()),
        ("err-not-an-object.json", b"[]".to_vec()),
        ("err-trailing.json", br#"{"sub":"a","exp":1,"lic":{"plan":"p"}} {}"#.to_vec()),
        (
            "ok-header-es256.bin",
            nul(&json!({"alg": "ES256", "kid": ES256_KID, "typ": "JWT"}).to_string(), &minimal.to_string()),
        ),
        (
            "ok-header-extra-members.bin",
            nul(r#"{"typ":"application/jwt","x5t":"abc","kid":"fuzz-ed25519","alg":"EdDSA"}"#, &minimal.to_string()),
        ),
        (
            "err-header-crit.bin",
            nul(r#"{"alg":"EdDSA","kid":"fuzz-ed25519","crit":["b64"]}"#, &minimal.to_string()),
        ),
        (
            "err-header-typ.bin",
            nul(r#"{"alg":"EdDSA","kid":"fuzz-ed25519","typ":"JOSE"}"#, &minimal.to_string()),
        ),
        (
            "err-header-array.bin",
            nul(r#"["EdDSA","fuzz-ed25519",null]"#, r#"{"sub":"a","exp":1,"lic":{"plan":"p"}}"#),
        ),
        ("err-header-hs256.bin", nul(r#"{"alg":"HS256","kid":"fuzz-ed25519"}"#, &minimal.to_string())),
    ];
    write(&root.join("signed_claims"), claims);
}

fn write<'a>(dir: &Path, seeds: impl IntoIterator<Item = (&'a str, Vec<u8>)>) {
    fs::create_dir_all(dir).unwrap();
    for (name, bytes) in seeds {
        fs::write(dir.join(name), bytes).unwrap();
    }
}
