//! The keyring: public keys that may sign licenses, each pinned to one
//! algorithm and named by its `kid`.
//!
//! Sources, all read once at load time:
//! - a PEM file with one `PUBLIC KEY` (SPKI) block, whose kid is the file
//!   stem (`keys/prod-2025.pem` has kid `prod-2025`);
//! - a directory of such `*.pem` files;
//! - a JWKS file (`{"keys": [...]}`) with `kid` on every key.
//!
//! The algorithm of a PEM key comes from its SPKI algorithm identifier. Only
//! two SPKI shapes exist for the keys we accept, both fixed-length, so they
//! are matched byte for byte rather than with a general DER parser.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ring::{agreement, digest, rand, signature};
use rustls_pki_types::pem::{PemObject, SectionKind};
use serde::Deserialize;

use super::error::LicenseError;
use super::jose::{is_valid_kid, Algorithm, MAX_KID_CHARS};
use super::json::{from_slice_strict, Present};

/// DER of an Ed25519 SubjectPublicKeyInfo (RFC 8410) up to the key:
/// SEQUENCE(42) { SEQUENCE(5) { OID 1.3.101.112 }, BIT STRING(33) { 0 unused bits, ...
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
const ED25519_KEY_LEN: usize = 32;

/// DER of a P-256 SubjectPublicKeyInfo (RFC 5480) up to the point:
/// SEQUENCE(89) { SEQUENCE(19) { OID id-ecPublicKey, OID prime256v1 },
/// BIT STRING(66) { 0 unused bits, ...
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
/// An uncompressed point: 0x04 || x || y.
const P256_POINT_LEN: usize = 65;
const P256_COORD_LEN: usize = 32;

/// A key could not be loaded. The message names the source and what was
/// expected.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A file or directory could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// What was being read.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// The contents are not an acceptable key.
    #[error("{origin}: {message}")]
    Invalid {
        /// A file path, `JWKS key #n`, or `key <kid>`.
        origin: String,
        /// What is wrong and what was expected.
        message: String,
    },
}

impl KeyError {
    fn invalid(origin: impl fmt::Display, message: impl Into<String>) -> Self {
        KeyError::Invalid {
            origin: origin.to_string(),
            message: message.into(),
        }
    }
}

/// A public key that may sign licenses.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifyingKey {
    kid: String,
    alg: Algorithm,
    /// Ed25519: the 32-byte key. ES256: the 65-byte uncompressed point.
    public: Box<[u8]>,
}

impl VerifyingKey {
    /// A key from its raw public bytes: 32 bytes for EdDSA, a 65-byte
    /// uncompressed point (`04 || x || y`) for ES256. P-256 points are
    /// checked to lie on the curve.
    pub fn new(kid: &str, alg: Algorithm, public_key: &[u8]) -> Result<Self, KeyError> {
        if !is_valid_kid(kid) {
            return Err(KeyError::invalid(
                format!("key {}", super::error::quote(kid)),
                format!(
                    "not a valid kid: use 1 to {MAX_KID_CHARS} of A-Z a-z 0-9 . _ - (and no `..`)"
                ),
            ));
        }
        VerifyingKey::with_checked_kid(kid, alg, public_key)
    }

    /// [`VerifyingKey::new`] for a kid the caller checked by its own rule
    /// (an identity provider's kids never name files: see
    /// [`is_valid_idp_kid`](super::jose::is_valid_idp_kid)).
    pub(crate) fn with_checked_kid(
        kid: &str,
        alg: Algorithm,
        public_key: &[u8],
    ) -> Result<Self, KeyError> {
        let origin = || format!("key {}", super::error::quote(kid));
        match alg {
            Algorithm::EdDSA if public_key.len() != ED25519_KEY_LEN => {
                return Err(KeyError::invalid(
                    origin(),
                    format!(
                        "an Ed25519 public key is {ED25519_KEY_LEN} bytes, this is {}",
                        public_key.len()
                    ),
                ))
            }
            Algorithm::ES256 if !is_p256_point(public_key) => {
                return Err(KeyError::invalid(
                    origin(),
                    "not a P-256 public key: expected an uncompressed point (65 bytes, 0x04 || x || y) on the curve",
                ))
            }
            _ => {}
        }
        Ok(VerifyingKey {
            kid: kid.to_owned(),
            alg,
            public: public_key.into(),
        })
    }

    /// A key from a DER SubjectPublicKeyInfo (Ed25519 or P-256).
    pub fn from_spki_der(kid: &str, der: &[u8]) -> Result<Self, KeyError> {
        let (alg, public) = parse_spki(der).map_err(|message| {
            KeyError::invalid(format!("key {}", super::error::quote(kid)), message)
        })?;
        VerifyingKey::new(kid, alg, public)
    }

    /// The key id tokens name it by.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The one algorithm this key verifies.
    pub fn alg(&self) -> Algorithm {
        self.alg
    }

    /// The raw public key (see [`VerifyingKey::new`]).
    pub fn public_key(&self) -> &[u8] {
        &self.public
    }

    /// The DER SubjectPublicKeyInfo.
    pub fn to_spki_der(&self) -> Vec<u8> {
        let prefix: &[u8] = match self.alg {
            Algorithm::EdDSA => &ED25519_SPKI_PREFIX,
            Algorithm::ES256 => &P256_SPKI_PREFIX,
        };
        [prefix, &self.public].concat()
    }

    /// The SPKI as a `PUBLIC KEY` PEM block.
    pub fn to_spki_pem(&self) -> String {
        pem_encode("PUBLIC KEY", &self.to_spki_der())
    }

    /// The key as a JWK (RFC 7517/7518/8037), with `kid`, `alg` and `use`.
    pub fn to_jwk(&self) -> serde_json::Value {
        let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
        match self.alg {
            Algorithm::EdDSA => serde_json::json!({
                "kty": "OKP", "crv": "Ed25519", "x": b64(&self.public),
                "kid": self.kid, "alg": "EdDSA", "use": "sig",
            }),
            Algorithm::ES256 => serde_json::json!({
                "kty": "EC", "crv": "P-256",
                "x": b64(&self.public[1..1 + P256_COORD_LEN]),
                "y": b64(&self.public[1 + P256_COORD_LEN..]),
                "kid": self.kid, "alg": "ES256", "use": "sig",
            }),
        }
    }

    /// Check `signature` over `message`.
    pub(crate) fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), LicenseError> {
        self.check_signature_length(signature)?;
        let algorithm: &'static dyn signature::VerificationAlgorithm = match self.alg {
            Algorithm::EdDSA => &signature::ED25519,
            Algorithm::ES256 => &signature::ECDSA_P256_SHA256_FIXED,
        };
        signature::UnparsedPublicKey::new(algorithm, &self.public)
            .verify(message, signature)
            .map_err(|_| {
                LicenseError::SignatureInvalid(format!(
                    "it does not verify under key `{}` ({})",
                    self.kid, self.alg
                ))
            })
    }

    /// The length check of [`verify`](Self::verify) alone: no `ring` work.
    pub(crate) fn check_signature_length(&self, signature: &[u8]) -> Result<(), LicenseError> {
        // Both algorithms have 64-byte JWS signatures; saying so up front
        // turns the classic DER-encoded ECDSA mistake into a clear message.
        if signature.len() != 64 {
            let hint = if self.alg == Algorithm::ES256 && signature.first() == Some(&0x30) {
                " (it looks DER-encoded; JWS uses the fixed r || s form)"
            } else {
                ""
            };
            return Err(LicenseError::SignatureInvalid(format!(
                "an {} signature is 64 bytes, this is {}{hint}",
                self.alg,
                signature.len()
            )));
        }
        Ok(())
    }
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// Whether `point` is an uncompressed P-256 point on the curve. ring checks
/// peer keys fully in ECDH but exposes no direct check, so agree with a
/// throwaway ephemeral key: it fails exactly for invalid points. Load time
/// only.
fn is_p256_point(point: &[u8]) -> bool {
    if point.len() != P256_POINT_LEN || point[0] != 0x04 {
        return false;
    }
    let rng = rand::SystemRandom::new();
    let Ok(ephemeral) = agreement::EphemeralPrivateKey::generate(&agreement::ECDH_P256, &rng)
    else {
        return false;
    };
    let peer = agreement::UnparsedPublicKey::new(&agreement::ECDH_P256, point);
    agreement::agree_ephemeral(ephemeral, &peer, |_| ()).is_ok()
}

/// Split an SPKI into algorithm and raw key, or say what it is instead.
fn parse_spki(der: &[u8]) -> Result<(Algorithm, &[u8]), String> {
    if der.len() == ED25519_SPKI_PREFIX.len() + ED25519_KEY_LEN
        && der.starts_with(&ED25519_SPKI_PREFIX)
    {
        return Ok((Algorithm::EdDSA, &der[ED25519_SPKI_PREFIX.len()..]));
    }
    if der.len() == P256_SPKI_PREFIX.len() + P256_POINT_LEN && der.starts_with(&P256_SPKI_PREFIX) {
        return Ok((Algorithm::ES256, &der[P256_SPKI_PREFIX.len()..]));
    }
    Err(format!(
        "{}; expected an Ed25519 or P-256 (uncompressed) public key",
        describe_spki(der)
    ))
}

/// Name a key we do not accept, by spotting its algorithm OID.
fn describe_spki(der: &[u8]) -> &'static str {
    const KNOWN: [(&[u8], &str); 7] = [
        (
            &[
                0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
            ],
            "an RSA key",
        ),
        (
            &[
                0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a,
            ],
            "an RSA-PSS key",
        ),
        (&[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22], "a P-384 key"),
        (&[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23], "a P-521 key"),
        (
            &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a],
            "a secp256k1 key",
        ),
        (&[0x06, 0x03, 0x2b, 0x65, 0x71], "an Ed448 key"),
        (
            &[0x06, 0x03, 0x2b, 0x65, 0x6e],
            "an X25519 (key agreement) key",
        ),
    ];
    // The algorithm identifier sits within the first few dozen bytes.
    let head = &der[..der.len().min(32)];
    for (oid, name) in KNOWN {
        if head.windows(oid.len()).any(|w| w == oid) {
            return name;
        }
    }
    // The P-256 algorithm identifier, but not the one accepted length.
    if der.get(2..23) == Some(&P256_SPKI_PREFIX[2..23]) {
        return "a P-256 key not in uncompressed form";
    }
    "not an Ed25519 or P-256 SubjectPublicKeyInfo"
}

/// The bytes a keyring is made from, read but not parsed, so that a reload
/// can tell whether anything changed before it parses, counts or logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyFiles {
    form: KeyForm,
    /// Each file read, with its contents; sorted by path in a directory.
    files: Vec<(PathBuf, Vec<u8>)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyForm {
    PemFile,
    PemDir,
    Jwks,
}

impl KeyFiles {
    /// Read what [`Keyring::load`] would parse from `path`.
    pub fn read(path: &Path) -> Result<KeyFiles, KeyError> {
        let meta = std::fs::metadata(path).map_err(|source| read_error(path, source))?;
        if meta.is_dir() {
            return KeyFiles::read_pem_dir(path);
        }
        match path.extension().and_then(|e| e.to_str()) {
            Some("json" | "jwks") => KeyFiles::read_jwks_file(path),
            _ => KeyFiles::read_pem_file(path),
        }
    }

    fn read_pem_file(path: &Path) -> Result<KeyFiles, KeyError> {
        Ok(KeyFiles {
            form: KeyForm::PemFile,
            files: vec![read_file(path)?],
        })
    }

    fn read_jwks_file(path: &Path) -> Result<KeyFiles, KeyError> {
        Ok(KeyFiles {
            form: KeyForm::Jwks,
            files: vec![read_file(path)?],
        })
    }

    fn read_pem_dir(dir: &Path) -> Result<KeyFiles, KeyError> {
        let entries = std::fs::read_dir(dir).map_err(|source| read_error(dir, source))?;
        let mut paths = Vec::new();
        for entry in entries {
            let path = entry.map_err(|source| read_error(dir, source))?.path();
            if path.extension().and_then(|e| e.to_str()) == Some("pem") && path.is_file() {
                paths.push(path);
            }
        }
        if paths.is_empty() {
            return Err(KeyError::invalid(
                dir.display(),
                "no *.pem files: expected one PUBLIC KEY PEM file per key, named <kid>.pem",
            ));
        }
        paths.sort();
        Ok(KeyFiles {
            form: KeyForm::PemDir,
            files: paths
                .iter()
                .map(|p| read_file(p))
                .collect::<Result<_, _>>()?,
        })
    }
}

fn read_file(path: &Path) -> Result<(PathBuf, Vec<u8>), KeyError> {
    let bytes = std::fs::read(path).map_err(|source| read_error(path, source))?;
    Ok((path.to_owned(), bytes))
}

/// Public keys by kid. Immutable; share it behind an `Arc`.
pub struct Keyring {
    keys: HashMap<String, VerifyingKey>,
    fingerprint: [u8; 32],
}

impl Keyring {
    /// A keyring of `keys`; kids must be unique. May be empty.
    pub fn from_keys(keys: Vec<VerifyingKey>) -> Result<Keyring, KeyError> {
        let mut map = HashMap::with_capacity(keys.len());
        for key in keys {
            if let Some(previous) = map.insert(key.kid.clone(), key) {
                return Err(KeyError::invalid(
                    format!("key `{}`", previous.kid),
                    "the kid appears more than once",
                ));
            }
        }
        let fingerprint = fingerprint(&map);
        Ok(Keyring {
            keys: map,
            fingerprint,
        })
    }

    /// Load from `path`: a directory of `*.pem` files, a JWKS file (`.json`
    /// or `.jwks`), or else a single PEM file.
    pub fn load(path: &Path) -> Result<Keyring, KeyError> {
        Keyring::from_files(&KeyFiles::read(path)?)
    }

    /// The keyring the files of [`KeyFiles::read`] make.
    pub fn from_files(files: &KeyFiles) -> Result<Keyring, KeyError> {
        match &files.form {
            KeyForm::Jwks => {
                let (path, bytes) = &files.files[0];
                parse_jwks(bytes, &path.display().to_string())
            }
            KeyForm::PemFile | KeyForm::PemDir => {
                let keys = files
                    .files
                    .iter()
                    .map(|(path, bytes)| parse_pem_key(path, bytes))
                    .collect::<Result<_, _>>()?;
                Keyring::from_keys(keys)
            }
        }
    }

    /// One key from a PEM file holding a single `PUBLIC KEY` block; its kid
    /// is the file stem.
    pub fn from_pem_file(path: &Path) -> Result<Keyring, KeyError> {
        Keyring::from_files(&KeyFiles::read_pem_file(path)?)
    }

    /// One key per `*.pem` file in `dir` (not recursive), each as
    /// [`Keyring::from_pem_file`]. Other entries are skipped, which also
    /// skips the `..data` links of a Kubernetes Secret or ConfigMap mount.
    pub fn from_pem_dir(dir: &Path) -> Result<Keyring, KeyError> {
        Keyring::from_files(&KeyFiles::read_pem_dir(dir)?)
    }

    /// Keys from a JWKS file.
    pub fn from_jwks_file(path: &Path) -> Result<Keyring, KeyError> {
        Keyring::from_files(&KeyFiles::read_jwks_file(path)?)
    }

    /// Keys from JWKS JSON (`{"keys": [...]}`). Each key needs a `kid`; its
    /// `alg`, if given, must fit the curve; `use` must be `sig` and
    /// `key_ops` must include `verify` when present. Private keys (`d`) and
    /// other key types are errors, not skipped, so a mistake is not silent.
    pub fn from_jwks_slice(json: &[u8]) -> Result<Keyring, KeyError> {
        parse_jwks(json, "JWKS")
    }

    /// The key named `kid`.
    pub fn get(&self, kid: &str) -> Option<&VerifyingKey> {
        self.keys.get(kid)
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are no keys (every token is then `license_key_unknown`).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The keys, sorted by kid.
    pub fn keys(&self) -> Vec<&VerifyingKey> {
        let mut keys: Vec<_> = self.keys.values().collect();
        keys.sort_by(|a, b| a.kid.cmp(&b.kid));
        keys
    }

    /// The keyring as JWKS JSON.
    pub fn to_jwks(&self) -> serde_json::Value {
        let keys: Vec<_> = self.keys().into_iter().map(VerifyingKey::to_jwk).collect();
        serde_json::json!({ "keys": keys })
    }

    /// A short hex digest of the contents (kids, algorithms, keys), for logs
    /// and the admin port. Equal contents give equal fingerprints, however
    /// they were loaded.
    pub fn fingerprint(&self) -> String {
        self.fingerprint[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The fingerprint as a number: caches tag entries with it so that an
    /// entry verified under another keyring is never served.
    pub fn generation(&self) -> u64 {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(&self.fingerprint[..8]);
        u64::from_be_bytes(bytes)
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("fingerprint", &self.fingerprint())
            .field("keys", &self.keys())
            .finish()
    }
}

fn fingerprint(keys: &HashMap<String, VerifyingKey>) -> [u8; 32] {
    let mut sorted: Vec<_> = keys.values().collect();
    sorted.sort_by(|a, b| a.kid.cmp(&b.kid));
    let mut ctx = digest::Context::new(&digest::SHA256);
    for key in sorted {
        // Length-prefixed so no two different keyrings serialise alike.
        for part in [key.kid.as_bytes(), key.alg.as_str().as_bytes(), &key.public] {
            ctx.update(&(part.len() as u32).to_be_bytes());
            ctx.update(part);
        }
    }
    let mut out = [0; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

fn read_error(path: &Path, source: io::Error) -> KeyError {
    KeyError::Read {
        path: path.to_owned(),
        source,
    }
}

/// The key in the PEM file `path`, whose contents are `bytes`.
fn parse_pem_key(path: &Path, bytes: &[u8]) -> Result<VerifyingKey, KeyError> {
    let origin = &path.display().to_string();
    let mut public = Vec::new();
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(bytes) {
        match section.map_err(|e| KeyError::invalid(origin, format!("not valid PEM: {e}")))? {
            (SectionKind::PublicKey, der) => public.push(der),
            (SectionKind::PrivateKey | SectionKind::EcPrivateKey | SectionKind::RsaPrivateKey, _) => {
                return Err(KeyError::invalid(
                    origin,
                    "holds a private key; the keyring takes public keys only (export one with `openssl pkey -pubout`)",
                ))
            }
            _ => {}
        }
    }
    let der = match public.as_slice() {
        [one] => one,
        [] => {
            return Err(KeyError::invalid(
                origin,
                "no `-----BEGIN PUBLIC KEY-----` block; expected an Ed25519 or P-256 SubjectPublicKeyInfo PEM",
            ))
        }
        many => {
            return Err(KeyError::invalid(
                origin,
                format!(
                    "holds {} PUBLIC KEY blocks; a PEM key's kid is its file name, so put one key per file (<kid>.pem in a directory) or use a JWKS file",
                    many.len()
                ),
            ))
        }
    };
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    if !is_valid_kid(stem) {
        return Err(KeyError::invalid(
            origin,
            format!(
                "the file name is the kid, and {} is not one: rename the file to 1 to {MAX_KID_CHARS} of A-Z a-z 0-9 . _ - plus `.pem`",
                super::error::quote(stem)
            ),
        ));
    }
    let (alg, raw) = parse_spki(der).map_err(|message| KeyError::invalid(origin, message))?;
    VerifyingKey::new(stem, alg, raw).map_err(|e| match e {
        KeyError::Invalid { message, .. } => KeyError::invalid(origin, message),
        other => other,
    })
}

/// One JWKS member. Unknown members are ignored.
#[derive(Deserialize)]
struct Jwk {
    kty: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    key_ops: Option<Vec<String>>,
    #[serde(default)]
    d: Present,
}

#[derive(Deserialize)]
struct Jwks {
    keys: Vec<Jwk>,
}

fn parse_jwks(json: &[u8], origin: &str) -> Result<Keyring, KeyError> {
    let jwks: Jwks = from_slice_strict(json).map_err(|e| {
        KeyError::invalid(
            origin,
            format!("not a JWKS document ({{\"keys\": [...]}}): {e}"),
        )
    })?;
    if jwks.keys.is_empty() {
        return Err(KeyError::invalid(origin, "`keys` is empty"));
    }
    let keys = jwks
        .keys
        .into_iter()
        .enumerate()
        .map(|(i, jwk)| {
            let name = match &jwk.kid {
                Some(kid) => format!("{origin}: key #{i} ({})", super::error::quote(kid)),
                None => format!("{origin}: key #{i}"),
            };
            parse_jwk(jwk).map_err(|message| KeyError::Invalid {
                origin: name,
                message,
            })
        })
        .collect::<Result<_, _>>()?;
    Keyring::from_keys(keys).map_err(|e| KeyError::invalid(origin, e.to_string()))
}

fn parse_jwk(jwk: Jwk) -> Result<VerifyingKey, String> {
    if jwk.d.0 {
        return Err(
            "holds a private key (`d`); publish only the public members to the keyring".into(),
        );
    }
    let kid = jwk.kid.ok_or("has no `kid`")?;
    if let Some(usage) = jwk.use_.as_deref() {
        if usage != "sig" {
            return Err(format!("`use` is {usage:?}; expected \"sig\""));
        }
    }
    if let Some(ops) = &jwk.key_ops {
        if !ops.iter().any(|op| op == "verify") {
            return Err("`key_ops` does not include \"verify\"".into());
        }
    }
    let coord = |name: &str, value: Option<String>| -> Result<Vec<u8>, String> {
        let value = value.ok_or_else(|| format!("has no `{name}`"))?;
        let bytes = URL_SAFE_NO_PAD
            .decode(value)
            .map_err(|e| format!("`{name}` is not unpadded base64url: {e}"))?;
        if bytes.len() != 32 {
            return Err(format!("`{name}` is {} bytes; expected 32", bytes.len()));
        }
        Ok(bytes)
    };
    let (alg, public) = match (jwk.kty.as_deref(), jwk.crv.as_deref()) {
        (Some("OKP"), Some("Ed25519")) => (Algorithm::EdDSA, coord("x", jwk.x)?),
        (Some("EC"), Some("P-256")) => {
            let mut point = vec![0x04];
            point.extend(coord("x", jwk.x)?);
            point.extend(coord("y", jwk.y)?);
            (Algorithm::ES256, point)
        }
        (kty, crv) => {
            return Err(format!(
                "kty {kty:?} crv {crv:?} is not supported; expected OKP/Ed25519 or EC/P-256"
            ))
        }
    };
    if let Some(name) = jwk.alg.as_deref() {
        if name != alg.as_str() {
            return Err(format!("`alg` is {name:?}, but the key is {alg} (curve)"));
        }
    }
    VerifyingKey::new(&kid, alg, &public).map_err(|e| match e {
        KeyError::Invalid { message, .. } => message,
        other => other.to_string(),
    })
}

/// PEM-encode `der` with 64-column lines (RFC 7468).
pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut out = String::with_capacity(body.len() + body.len() / 64 + 2 * label.len() + 40);
    out.push_str(&format!("-----BEGIN {label}-----\n"));
    for line in body.as_bytes().chunks(64) {
        // Base64 output is ASCII, so any byte split is a char split.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests;
