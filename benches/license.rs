//! License verification costs: `cargo bench --bench license`.
//!
//! - `cold/*`: full parse + signature + claims, no cache (`token::verify`);
//! - `ring_verify/*`: ring's signature check alone over the same bytes, the
//!   floor that `cold` is compared against;
//! - `overhead/*`: `cold` minus `ring_verify`, measured pairwise (robust to
//!   a busy machine): parsing, decoding and allocation per verification;
//! - `cached_check`: `LicenseVerifier::check` on a token already in the cache.
//! - `user/check_cached`: `UserVerifier::check` on a Keycloak RS256 token
//!   already in the cache, found in a browser-like request's headers;
//! - `user/verify_rs256`: the same token verified from scratch
//!   (`user::token::verify`: parse, RSA-2048 signature, claims).

use std::hint::black_box;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use licensegate::license::issue::{sign, SigningKey};
use licensegate::license::{token, Algorithm, Keyring, LicenseVerifier, Validator};
use licensegate::metrics::Registry;
use licensegate::user::settings::UserForwarding;
use licensegate::user::{
    ClaimPath, IssuerSettings, JwksSource, TokenLocation, UserAlgorithm, UserKeyring, UserMetrics,
    UserSettings, UserVerifier,
};
use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED, ED25519};

const NOW: u64 = 1_700_000_000;

/// A realistic license: ~600 bytes as a token.
fn claims() -> serde_json::Value {
    serde_json::json!({
        "iss": "https://licenses.example.com", "sub": "lic-0001",
        "aud": ["licensegate", "billing"],
        "iat": NOW - 100, "nbf": NOW - 100, "exp": NOW + 365 * 86_400, "jti": "bench-1",
        "lic": {
            "plan": "enterprise", "features": ["sso", "audit-log", "priority-support"],
            "limits": {"rps": 500, "tenants": 20}, "seats": 50,
            "env": {"clusters": ["prod-eu"], "namespaces": ["shop", "shop-canary"]},
            "customer": "ACME Corp"
        }
    })
}

fn bench(c: &mut Criterion) {
    let ed = SigningKey::generate(Algorithm::EdDSA).unwrap();
    let ec = SigningKey::generate(Algorithm::ES256).unwrap();
    let keyring = Keyring::from_keys(vec![
        ed.verifying_key("ed").unwrap(),
        ec.verifying_key("ec").unwrap(),
    ])
    .unwrap();

    for (name, key, kid) in [("ed25519", &ed, "ed"), ("es256", &ec, "ec")] {
        let token = sign(&claims(), key, kid);
        assert!(token::verify(&token, &keyring).is_ok());
        c.bench_function(&format!("cold/{name}"), |b| {
            b.iter(|| token::verify(black_box(&token), &keyring).unwrap())
        });

        // The same work ring does inside `cold`, with the key, message and
        // signature already decoded.
        let public = keyring.get(kid).unwrap().public_key().to_vec();
        let (input, signature) = token.rsplit_once('.').unwrap();
        use base64::Engine;
        let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(signature)
            .unwrap();
        let algorithm: &'static dyn ring::signature::VerificationAlgorithm = match kid {
            "ed" => &ED25519,
            _ => &ECDSA_P256_SHA256_FIXED,
        };
        let ring_verify = || {
            UnparsedPublicKey::new(algorithm, &public)
                .verify(black_box(input.as_bytes()), black_box(&signature))
                .unwrap()
        };
        c.bench_function(&format!("ring_verify/{name}"), |b| b.iter(ring_verify));

        // `cold` minus `ring_verify`, timed in alternating runs of 16 so that
        // load from other processes hits both sides alike: the cost of
        // everything but the signature arithmetic.
        c.bench_function(&format!("overhead/{name}"), |b| {
            b.iter_custom(|iters| {
                let (mut cold, mut raw) = (Duration::ZERO, Duration::ZERO);
                let mut left = iters;
                while left > 0 {
                    let n = left.min(16);
                    left -= n;
                    let start = Instant::now();
                    for _ in 0..n {
                        black_box(token::verify(black_box(&token), &keyring).unwrap());
                    }
                    let middle = Instant::now();
                    for _ in 0..n {
                        ring_verify();
                    }
                    cold += middle - start;
                    raw += middle.elapsed();
                }
                cold.saturating_sub(raw)
            })
        });
    }

    let validator = Validator {
        issuer: Some("https://licenses.example.com".into()),
        audience: Some("licensegate".into()),
        ..Validator::default()
    };
    let verifier = LicenseVerifier::new(Arc::new(keyring), validator, 10_000);
    let token = sign(&claims(), &ed, "ed");
    println!("token length: {} bytes", token.len());
    verifier.check(&token, NOW).unwrap();
    c.bench_function("cached_check", |b| {
        b.iter(|| verifier.check(black_box(&token), NOW).unwrap())
    });
}

fn bench_users(c: &mut Criterion) {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/users");
    let read = |name: &str| std::fs::read(fixtures.join(name)).unwrap();
    let token = read("keycloak-rs256.jwt").trim_ascii().to_vec();
    println!("user token length: {} bytes", token.len());
    let issuer = IssuerSettings {
        issuer: "https://idp.example.test/realms/acme".into(),
        audiences: vec!["licensegate".into()],
        jwks: JwksSource::File(fixtures.join("jwks.json")),
        algorithms: UserAlgorithm::ALL.to_vec(),
        subject_claim: ClaimPath::sub(),
        roles_claim: ClaimPath::parse("realm_access.roles"),
    };
    let keyring = Arc::new(UserKeyring::from_jwks_slice(&read("jwks.json"), "jwks.json").unwrap());
    let verifier = UserVerifier::new(
        UserSettings {
            issuers: vec![issuer.clone()],
            token: TokenLocation::Bearer,
            leeway: Duration::from_secs(60),
            cache_capacity: 10_000,
            forward: UserForwarding::default(),
            state_file: None,
            failed_verifications: Default::default(),
        },
        Arc::new(UserMetrics::new(&Registry::new())),
    );
    verifier.replace_keys(0, Arc::clone(&keyring));

    // What a browser's API call carries.
    let mut bearer = b"Bearer ".to_vec();
    bearer.extend_from_slice(&token);
    let head = http::Request::get("/api/reports/q3?page=2")
        .header("host", "shop.example.test")
        .header(
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        )
        .header("accept", "application/json, text/plain, */*")
        .header("accept-language", "en-GB,en;q=0.5")
        .header("accept-encoding", "gzip, deflate, br, zstd")
        .header("referer", "https://shop.example.test/reports")
        .header("origin", "https://shop.example.test")
        .header("cookie", "_ga=GA1.1.1234567890.1700000000; theme=dark")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .header("x-request-id", "9f1c2d3e-4b5a-6978-8a9b-0c1d2e3f4a5b")
        .header("authorization", bearer)
        .body(())
        .unwrap()
        .into_parts()
        .0;
    let client = || IpAddr::from([10, 0, 0, 7]);
    verifier.check(&head.headers, NOW, client).unwrap();
    c.bench_function("user/check_cached", |b| {
        b.iter(|| {
            verifier
                .check(black_box(&head.headers), NOW, client)
                .unwrap()
        })
    });

    let keyrings = [keyring];
    let issuers = [issuer];
    c.bench_function("user/verify_rs256", |b| {
        b.iter(|| licensegate::user::token::verify(black_box(&token), &keyrings, &issuers).unwrap())
    });
}

criterion_group!(benches, bench, bench_users);
criterion_main!(benches);
