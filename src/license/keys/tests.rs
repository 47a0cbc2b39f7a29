use std::path::PathBuf;

use super::*;
use crate::license::issue::SigningKey;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/license")
}

fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

fn message(err: KeyError) -> String {
    err.to_string()
}

#[test]
fn spki_prefixes_are_the_der_of_each_algorithm() {
    // Built with rustls-pki-types from ring-made keys; checked against
    // cryptography-made files in `loads_third_party_pem_files`.
    let ed = SigningKey::generate(Algorithm::EdDSA).unwrap();
    let der = ed.verifying_key("k").unwrap().to_spki_der();
    assert_eq!(der.len(), 44);
    assert_eq!(parse_spki(&der).unwrap().0, Algorithm::EdDSA);

    let ec = SigningKey::generate(Algorithm::ES256).unwrap();
    let der = ec.verifying_key("k").unwrap().to_spki_der();
    assert_eq!(der.len(), 91);
    let (alg, point) = parse_spki(&der).unwrap();
    assert_eq!((alg, point.len(), point[0]), (Algorithm::ES256, 65, 4));
}

#[test]
fn spki_must_match_exactly() {
    let ed = SigningKey::generate(Algorithm::EdDSA)
        .unwrap()
        .verifying_key("k")
        .unwrap()
        .to_spki_der();
    // Truncated, extended, and one flipped byte anywhere in the prefix.
    assert!(parse_spki(&ed[..43]).is_err());
    assert!(parse_spki(&[&ed[..], &[0]].concat()).is_err());
    for i in 0..ED25519_SPKI_PREFIX.len() {
        let mut bad = ed.clone();
        bad[i] ^= 0x01;
        assert!(parse_spki(&bad).is_err(), "byte {i}");
    }
    let ec = SigningKey::generate(Algorithm::ES256)
        .unwrap()
        .verifying_key("k")
        .unwrap()
        .to_spki_der();
    for i in 0..P256_SPKI_PREFIX.len() {
        let mut bad = ec.clone();
        bad[i] ^= 0x01;
        assert!(parse_spki(&bad).is_err(), "byte {i}");
    }
    assert!(parse_spki(&[]).is_err());
}

#[test]
fn unsupported_spki_are_named() {
    // A compressed P-256 point: same identifier, 33-byte key.
    let mut compressed = vec![0x30, 0x39];
    compressed.extend_from_slice(&P256_SPKI_PREFIX[2..23]);
    compressed.extend_from_slice(&[0x03, 0x22, 0x00, 0x02]);
    compressed.extend_from_slice(&[7; 32]);
    assert!(parse_spki(&compressed)
        .unwrap_err()
        .contains("not in uncompressed form"));
    assert!(parse_spki(b"garbage")
        .unwrap_err()
        .contains("not an Ed25519 or P-256"));

    for (file, needle) in [
        ("rsa-2048.pem", "an RSA key"),
        ("p384.pem", "a P-384 key"),
        ("secp256k1.pem", "a secp256k1 key"),
        ("ed448.pem", "an Ed448 key"),
    ] {
        let path = fixtures().join("unsupported").join(file);
        let err = message(Keyring::from_pem_file(&path).unwrap_err());
        assert!(err.starts_with(&path.display().to_string()), "{err}");
        assert!(err.contains(needle), "{file}: {err}");
        assert!(err.contains("expected an Ed25519 or P-256"), "{err}");
    }
}

#[test]
fn raw_keys_are_checked() {
    assert!(VerifyingKey::new("k", Algorithm::EdDSA, &[1; 32]).is_ok());
    let err = message(VerifyingKey::new("k", Algorithm::EdDSA, &[1; 31]).unwrap_err());
    assert!(err.contains("32 bytes, this is 31"), "{err}");

    let good = SigningKey::generate(Algorithm::ES256)
        .unwrap()
        .verifying_key("k")
        .unwrap();
    let point = good.public_key().to_vec();
    assert!(VerifyingKey::new("k", Algorithm::ES256, &point).is_ok());
    let mut off_curve = point.clone();
    off_curve[64] ^= 1;
    let err = message(VerifyingKey::new("k", Algorithm::ES256, &off_curve).unwrap_err());
    assert!(err.contains("on the curve"), "{err}");
    let mut compressed = point[..33].to_vec();
    compressed[0] = 2;
    assert!(VerifyingKey::new("k", Algorithm::ES256, &compressed).is_err());
    assert!(VerifyingKey::new("k", Algorithm::ES256, &[0; 65]).is_err());

    for kid in ["", "../x", "a/b", "a b"] {
        let err = message(VerifyingKey::new(kid, Algorithm::EdDSA, &[1; 32]).unwrap_err());
        assert!(err.contains("not a valid kid"), "{err}");
    }
}

#[test]
fn loads_third_party_pem_files() {
    let dir = fixtures().join("keys");
    let ring = Keyring::load(&dir).unwrap();
    assert_eq!(ring.len(), 2);
    assert_eq!(ring.get("py-ed25519").unwrap().alg(), Algorithm::EdDSA);
    assert_eq!(ring.get("py-es256").unwrap().alg(), Algorithm::ES256);

    let single = Keyring::load(&dir.join("py-es256.pem")).unwrap();
    assert_eq!(single.keys().len(), 1);
    assert_eq!(single.get("py-es256"), ring.get("py-es256"));
    // Written back out, the PEM matches cryptography's byte for byte.
    let original = std::fs::read_to_string(dir.join("py-es256.pem")).unwrap();
    assert_eq!(single.get("py-es256").unwrap().to_spki_pem(), original);
}

#[test]
fn jwks_and_pem_of_the_same_keys_fingerprint_alike() {
    let from_pem = Keyring::load(&fixtures().join("keys")).unwrap();
    let from_jwks = Keyring::load(&fixtures().join("jwks.json")).unwrap();
    assert_eq!(from_pem.fingerprint(), from_jwks.fingerprint());
    assert_eq!(from_pem.generation(), from_jwks.generation());
    assert_eq!(from_pem.fingerprint().len(), 16);
    assert_eq!(from_pem.to_jwks(), from_jwks.to_jwks());

    let one = Keyring::load(&fixtures().join("keys/py-ed25519.pem")).unwrap();
    assert_ne!(one.generation(), from_pem.generation());
    let empty = Keyring::from_keys(vec![]).unwrap();
    assert!(empty.is_empty());
    assert_ne!(empty.generation(), one.generation());
}

#[test]
fn pem_file_rules() {
    let dir = tempfile::tempdir().unwrap();
    let a = SigningKey::generate(Algorithm::EdDSA).unwrap();
    let b = SigningKey::generate(Algorithm::ES256).unwrap();

    let two = write(
        dir.path(),
        "two.pem",
        &(a.public_key_pem() + &b.public_key_pem()),
    );
    let err = message(Keyring::from_pem_file(&two).unwrap_err());
    assert!(
        err.contains("2 PUBLIC KEY blocks") && err.contains("JWKS"),
        "{err}"
    );

    let private = write(
        dir.path(),
        "mixed.pem",
        &(a.public_key_pem() + &a.private_key_pem()),
    );
    let err = message(Keyring::from_pem_file(&private).unwrap_err());
    assert!(err.contains("holds a private key"), "{err}");

    let none = write(dir.path(), "none.pem", "just text\n");
    let err = message(Keyring::from_pem_file(&none).unwrap_err());
    assert!(
        err.contains("no `-----BEGIN PUBLIC KEY-----` block"),
        "{err}"
    );

    let broken = write(
        dir.path(),
        "broken.pem",
        "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n",
    );
    let err = message(Keyring::from_pem_file(&broken).unwrap_err());
    assert!(err.contains("not valid PEM"), "{err}");

    let bad_name = write(dir.path(), "my key.pem", &a.public_key_pem());
    let err = message(Keyring::from_pem_file(&bad_name).unwrap_err());
    assert!(err.contains("the file name is the kid"), "{err}");

    let missing = dir.path().join("absent.pem");
    let err = Keyring::load(&missing).unwrap_err();
    assert!(matches!(err, KeyError::Read { .. }));
    assert!(message(err).starts_with(&missing.display().to_string()));
}

#[test]
fn pem_directory_rules() {
    let dir = tempfile::tempdir().unwrap();
    let err = message(Keyring::from_pem_dir(dir.path()).unwrap_err());
    assert!(err.contains("no *.pem files"), "{err}");

    let a = SigningKey::generate(Algorithm::EdDSA).unwrap();
    let b = SigningKey::generate(Algorithm::ES256).unwrap();
    write(dir.path(), "prod-2025.pem", &a.public_key_pem());
    write(dir.path(), "prod-2026.pem", &b.public_key_pem());
    write(dir.path(), "README.txt", "ignored");
    std::fs::create_dir(dir.path().join("..data")).unwrap();
    std::fs::create_dir(dir.path().join("sub.pem")).unwrap();
    let ring = Keyring::load(dir.path()).unwrap();
    let kids: Vec<_> = ring.keys().iter().map(|k| k.kid().to_owned()).collect();
    assert_eq!(kids, ["prod-2025", "prod-2026"]);
    assert_eq!(ring.get("prod-2026").unwrap().alg(), Algorithm::ES256);

    // One bad file fails the whole directory, naming the file.
    write(dir.path(), "bad.pem", "nope");
    let err = message(Keyring::load(dir.path()).unwrap_err());
    assert!(err.contains("bad.pem"), "{err}");
}

#[test]
fn jwks_rules() {
    let ed = SigningKey::generate(Algorithm::EdDSA)
        .unwrap()
        .verifying_key("ed")
        .unwrap()
        .to_jwk();
    let ec = SigningKey::generate(Algorithm::ES256)
        .unwrap()
        .verifying_key("ec")
        .unwrap()
        .to_jwk();
    let load = |keys: serde_json::Value| {
        Keyring::from_jwks_slice(serde_json::json!({ "keys": keys }).to_string().as_bytes())
    };
    assert_eq!(load(serde_json::json!([ed, ec])).unwrap().len(), 2);

    let with = |base: &serde_json::Value, field: &str, value: serde_json::Value| {
        let mut key = base.clone();
        if value.is_null() {
            key.as_object_mut().unwrap().remove(field);
        } else {
            key[field] = value;
        }
        key
    };
    // No alg/use is fine: the curve decides.
    assert!(load(serde_json::json!([with(
        &with(&ed, "alg", serde_json::Value::Null),
        "use",
        serde_json::Value::Null
    )]))
    .is_ok());
    assert!(load(serde_json::json!([with(
        &ec,
        "key_ops",
        serde_json::json!(["verify"])
    )]))
    .is_ok());

    for (key, needle) in [
        (with(&ed, "kid", serde_json::Value::Null), "has no `kid`"),
        (
            with(&ed, "kid", serde_json::json!("../x")),
            "not a valid kid",
        ),
        (with(&ed, "d", serde_json::json!("AAAA")), "private key"),
        (
            with(&ed, "alg", serde_json::json!("ES256")),
            "`alg` is \"ES256\"",
        ),
        (
            with(&ec, "alg", serde_json::json!("none")),
            "`alg` is \"none\"",
        ),
        (with(&ed, "use", serde_json::json!("enc")), "`use`"),
        (with(&ed, "key_ops", serde_json::json!(["sign"])), "key_ops"),
        (
            with(&ed, "crv", serde_json::json!("Ed448")),
            "not supported",
        ),
        (with(&ed, "kty", serde_json::json!("RSA")), "not supported"),
        (
            with(&ed, "x", serde_json::json!("AAAA")),
            "3 bytes; expected 32",
        ),
        (
            with(&ed, "x", serde_json::json!("!!")),
            "not unpadded base64url",
        ),
        (with(&ec, "y", serde_json::Value::Null), "has no `y`"),
        (
            with(
                &ec,
                "y",
                serde_json::json!(URL_SAFE_NO_PAD.encode([9u8; 32])),
            ),
            "on the curve",
        ),
    ] {
        let err = message(load(serde_json::json!([key])).unwrap_err());
        assert!(err.contains(needle), "{needle}: {err}");
        assert!(err.starts_with("JWKS"), "{err}");
    }

    let err = message(load(serde_json::json!([ed, ed])).unwrap_err());
    assert!(err.contains("more than once"), "{err}");
    let err = message(load(serde_json::json!([])).unwrap_err());
    assert!(err.contains("`keys` is empty"), "{err}");
    let err = message(Keyring::from_jwks_slice(br#"{"keys":[],"keys":[]}"#).unwrap_err());
    assert!(err.contains("duplicate key"), "{err}");
    let err = message(Keyring::from_jwks_slice(b"[]").unwrap_err());
    assert!(err.contains("not a JWKS document"), "{err}");
}

#[test]
fn pem_lines_are_64_columns() {
    let pem = pem_encode("TEST", &[0xab; 100]);
    let lines: Vec<_> = pem.lines().collect();
    assert_eq!(lines[0], "-----BEGIN TEST-----");
    assert_eq!(lines[1].len(), 64);
    assert_eq!(lines[2].len(), 64);
    assert_eq!(lines[3].len(), 136 - 128);
    assert_eq!(lines[4], "-----END TEST-----");
    assert!(pem.ends_with("-----\n"));
}
