//! A vendor's signing key and a policy in a temporary directory: what the
//! tests with header licenses start from.

use std::path::{Path, PathBuf};

use licensegate::license::issue::{sign, SigningKey};
use licensegate::license::validate::unix_now;
use licensegate::license::Algorithm;
use serde_json::{json, Value};

/// `keys/k1.pem` (an Ed25519 public key) and `policy.yaml` in a temp dir.
pub struct Vendor {
    dir: tempfile::TempDir,
    key: SigningKey,
}

impl Vendor {
    pub fn new(policy: &str) -> Vendor {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("keys")).unwrap();
        let key = SigningKey::generate(Algorithm::EdDSA).unwrap();
        std::fs::write(dir.path().join("keys/k1.pem"), key.public_key_pem()).unwrap();
        super::write_file(dir.path(), "policy.yaml", policy);
        Vendor { dir, key }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn keys(&self) -> PathBuf {
        self.dir.path().join("keys")
    }

    pub fn policy(&self) -> PathBuf {
        self.dir.path().join("policy.yaml")
    }

    /// A license valid from a minute ago for an hour, with `claims` (an
    /// object) on top, signed by `k1`.
    pub fn license(&self, claims: Value) -> String {
        let now = unix_now() as i64;
        let mut all = json!({"iat": now - 60, "nbf": now - 60, "exp": now + 3600});
        let (Value::Object(all_claims), Value::Object(extra)) = (&mut all, claims) else {
            panic!("license claims are a JSON object");
        };
        all_claims.extend(extra);
        sign(&all, &self.key, "k1")
    }
}
