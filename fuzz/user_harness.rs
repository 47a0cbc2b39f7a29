//! The user-token fuzz harness, shared by `fuzz/fuzz_targets/user_token.rs`
//! and the seed replay in `src/user/tests.rs` (compiled twice with
//! `#[path]`, like `harness.rs`: it names the library only as
//! `crate::user` and `crate::license` and uses only their public API).
//!
//! The keys are the interop fixtures of `tests/fixtures/users/` (made by
//! PyJWT): the identity provider's JWKS, and its Ed25519 private key to
//! sign inputs whose claims the verifier should then parse.

#![allow(dead_code)]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::license::issue::{sign_parts, SigningKey};
use crate::user::{
    token, ClaimPath, IssuerSettings, JwksSource, UserAlgorithm, UserError, UserKeyring,
    VerifiedUser,
};

const JWKS: &[u8] = include_bytes!("../tests/fixtures/users/jwks.json");
const EDDSA_PEM: &[u8] = include_bytes!("../tests/fixtures/users/private/eddsa.pem");
/// The fixture issuer and the kid of its Ed25519 key.
pub const ISSUER: &str = "https://idp.example.test/realms/acme";
pub const EDDSA_KID: &str = "kc-eddsa-2025";

/// The header `user_token` signs under when its input has a NUL byte and
/// nothing before it.
pub const STANDARD_HEADER: &[u8] = br#"{"alg":"EdDSA","kid":"kc-eddsa-2025","typ":"JWT"}"#;

struct Fixed {
    keyrings: Vec<Arc<UserKeyring>>,
    issuers: Vec<IssuerSettings>,
    signer: SigningKey,
}

fn fixed() -> &'static Fixed {
    static FIXED: OnceLock<Fixed> = OnceLock::new();
    FIXED.get_or_init(|| Fixed {
        keyrings: vec![Arc::new(
            UserKeyring::from_jwks_slice(JWKS, "fixture").expect("fixture JWKS"),
        )],
        issuers: vec![IssuerSettings {
            issuer: ISSUER.into(),
            audiences: vec!["licensegate".into()],
            jwks: JwksSource::File("jwks.json".into()),
            algorithms: UserAlgorithm::ALL.to_vec(),
            subject_claim: ClaimPath::parse("preferred_username").expect("a claim path"),
            roles_claim: ClaimPath::parse("realm_access.roles"),
        }],
        signer: SigningKey::from_pkcs8_pem(EDDSA_PEM).expect("fixture Ed25519 key"),
    })
}

/// Target `user_token`. Without a NUL byte, `data` is a token for
/// [`token::verify`] against the fixture JWKS. With one, the bytes after the
/// first NUL are a payload signed with the fixture Ed25519 key under the
/// bytes before it (or [`STANDARD_HEADER`] when those are empty), so the
/// claims reader sees signature-valid input. Returns what `verify` returned.
pub fn user_token(data: &[u8]) -> Result<VerifiedUser, UserError> {
    let fixed = fixed();
    let (token, signed) = match data.iter().position(|&b| b == 0) {
        None => (data.to_vec(), false),
        Some(nul) => {
            let header = match &data[..nul] {
                [] => STANDARD_HEADER,
                header => header,
            };
            (
                sign_parts(header, &data[nul + 1..], &fixed.signer).into_bytes(),
                true,
            )
        }
    };
    let result = token::verify(&token, &fixed.keyrings, &fixed.issuers);
    match &result {
        Ok(user) => exercise_verified(user),
        Err(error) => check_error(error, signed),
    }
    result
}

/// An accepted user: a subject, roles sorted without repeats, header values
/// that agree with them, and a time check that never panics.
fn exercise_verified(user: &VerifiedUser) {
    assert!(!user.subject.is_empty(), "an empty subject was accepted");
    assert!(
        user.roles.windows(2).all(|w| w[0] < w[1]),
        "roles unsorted or repeated: {:?}",
        user.roles
    );
    if let Some(value) = &user.subject_value {
        assert_eq!(value.as_bytes(), user.subject.as_bytes());
    }
    if let Some(value) = &user.roles_value {
        let told: Vec<&[u8]> = value.as_bytes().split(|&b| b == b',').collect();
        assert!(told
            .iter()
            .all(|role| user.roles.iter().any(|r| r.as_bytes() == *role)));
    }
    for now in [0, user.exp, user.exp.saturating_add(61), u64::MAX] {
        for leeway in [
            Duration::ZERO,
            Duration::from_secs(60),
            Duration::from_secs(u64::MAX),
        ] {
            if let Err(error) = token::validate(user, now, leeway) {
                check_error(&error, true);
            }
        }
    }
}

/// Every error has a listed result and a detail; unless the input was
/// signed here, its detail may be shown to an anonymous client, so it is
/// short and printable.
fn check_error(error: &UserError, signed: bool) {
    assert!(UserError::RESULTS.contains(&error.result()), "{error:?}");
    let detail = error.detail();
    assert!(!detail.is_empty());
    if signed {
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
