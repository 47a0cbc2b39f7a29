//! `licensegate license keygen | issue | inspect`: the vendor-side tools.

use std::io::Read;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};

use crate::config::HumanDuration;
use crate::license::issue::{jwks, sign, SigningKey};
use crate::license::validate::unix_now;
use crate::license::{token, Algorithm, Keyring, Validator};

#[derive(Debug, Subcommand)]
pub enum LicenseCommand {
    /// Make a signing key pair (PKCS#8 PEM private, SPKI PEM public).
    Keygen(KeygenArgs),
    /// Sign a license token from a claims file and print it.
    Issue(IssueArgs),
    /// Decode and verify a token; exit 0 when valid, 1 when not.
    Inspect(InspectArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum KeyAlg {
    Ed25519,
    Es256,
}

#[derive(Debug, Args)]
pub struct KeygenArgs {
    #[arg(long, value_enum, default_value = "ed25519")]
    pub alg: KeyAlg,
    /// Key id; tokens name it in their `kid` header.
    #[arg(long)]
    pub kid: String,
    /// Where to write the private key (created with mode 0600).
    #[arg(long)]
    pub private: PathBuf,
    /// Where to write the public key.
    #[arg(long)]
    pub public: PathBuf,
    /// Also write the public key as a JWKS file.
    #[arg(long)]
    pub jwks: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct IssueArgs {
    /// PKCS#8 PEM private key.
    #[arg(long)]
    pub key: PathBuf,
    #[arg(long)]
    pub kid: String,
    /// YAML or JSON claims: at least `sub` and `lic.plan`.
    #[arg(long)]
    pub claims: PathBuf,
    /// Lifetime from now; sets `exp` unless the claims file has one.
    #[arg(long, default_value = "30d")]
    pub ttl: HumanDuration,
    #[arg(long)]
    pub iss: Option<String>,
    #[arg(long)]
    pub aud: Option<String>,
    #[arg(long)]
    pub sub: Option<String>,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Public keys (PEM file, PEM directory or JWKS); without them the token
    /// is decoded but cannot be valid.
    #[arg(long)]
    pub keys: Option<PathBuf>,
    #[arg(long)]
    pub iss: Option<String>,
    #[arg(long)]
    pub aud: Option<String>,
    /// The token, `@FILE`, or `-` for standard input.
    pub token: String,
}

/// Run a license command; returns the exit status.
pub fn run(command: LicenseCommand) -> i32 {
    let result = match command {
        LicenseCommand::Keygen(args) => keygen(args),
        LicenseCommand::Issue(args) => issue(args),
        LicenseCommand::Inspect(args) => return inspect(args),
    };
    match result {
        Ok(()) => 0,
        Err(message) => {
            eprintln!("licensegate: {message}");
            1
        }
    }
}

fn keygen(args: KeygenArgs) -> Result<(), String> {
    let alg = match args.alg {
        KeyAlg::Ed25519 => Algorithm::EdDSA,
        KeyAlg::Es256 => Algorithm::ES256,
    };
    let key = SigningKey::generate(alg).map_err(|e| e.to_string())?;
    let public = key.verifying_key(&args.kid).map_err(|e| e.to_string())?;
    write_private(&args.private, key.private_key_pem().as_bytes())?;
    write(&args.public, key.public_key_pem().as_bytes())?;
    if let Some(path) = &args.jwks {
        let text = serde_json::to_string_pretty(&jwks(&[public])).expect("JWKS serialises");
        write(path, format!("{text}\n").as_bytes())?;
    }
    eprintln!(
        "wrote {} key `{}`: private {}, public {}",
        alg.as_str(),
        args.kid,
        args.private.display(),
        args.public.display()
    );
    Ok(())
}

fn issue(args: IssueArgs) -> Result<(), String> {
    let key = SigningKey::from_pkcs8_pem_file(&args.key).map_err(|e| e.to_string())?;
    let text = std::fs::read_to_string(&args.claims)
        .map_err(|e| format!("{}: cannot read claims: {e}", args.claims.display()))?;
    let claims_yaml: serde_yaml::Value =
        crate::config::parse_yaml(&args.claims, &text).map_err(|e| e.to_string())?;
    let mut claims: Value = serde_json::to_value(claims_yaml).map_err(|e| {
        format!(
            "{}: claims are not JSON-compatible: {e}",
            args.claims.display()
        )
    })?;
    let Some(object) = claims.as_object_mut() else {
        return Err(format!(
            "{}: claims must be a mapping",
            args.claims.display()
        ));
    };
    let now = unix_now();
    object.entry("iat").or_insert(json!(now));
    object.entry("nbf").or_insert(json!(now));
    object
        .entry("exp")
        .or_insert(json!(now + args.ttl.0.as_secs()));
    object.entry("jti").or_insert(json!(random_id()));
    for (name, value) in [("iss", args.iss), ("aud", args.aud), ("sub", args.sub)] {
        if let Some(value) = value {
            object.insert(name.into(), json!(value));
        }
    }
    let token = sign(&claims, &key, &args.kid);
    // Verify what we made, so a claims mistake surfaces here, not at the customer.
    let public = key.verifying_key(&args.kid).map_err(|e| e.to_string())?;
    let keyring = Keyring::from_keys(vec![public]).map_err(|e| e.to_string())?;
    token::verify(&token, &keyring).map_err(|e| {
        format!(
            "{}: the claims do not make a valid license: {e}",
            args.claims.display()
        )
    })?;
    println!("{token}");
    Ok(())
}

fn inspect(args: InspectArgs) -> i32 {
    let token = match read_token_arg(&args.token) {
        Ok(token) => token,
        Err(message) => {
            eprintln!("licensegate: {message}");
            return 2;
        }
    };
    let (header, claims) = decode_unverified(&token);
    let now = unix_now();
    let verdict = match &args.keys {
        None => Err((
            "not_verified".to_owned(),
            "no --keys given; decoded without verification".to_owned(),
        )),
        Some(path) => match Keyring::load(path) {
            Err(error) => Err(("keys_unreadable".to_owned(), error.to_string())),
            Ok(keyring) => {
                let validator = Validator {
                    issuer: args.iss.clone(),
                    audience: args.aud.clone(),
                    ..Validator::default()
                };
                token::verify(&token, &keyring)
                    .and_then(|license| validator.validate(&license.claims, now))
                    .map_err(|e| (e.reason().to_owned(), e.detail()))
            }
        },
    };
    let expires_in = claims
        .get("exp")
        .and_then(Value::as_u64)
        .map(|exp| exp as i64 - now as i64);
    let (valid, reason, detail, in_grace) = match &verdict {
        Ok(validity) => (true, Value::Null, Value::Null, validity.is_in_grace()),
        Err((reason, detail)) => (false, json!(reason), json!(detail), false),
    };
    let report = json!({
        "valid": valid,
        "reason": reason,
        "detail": detail,
        "in_grace": in_grace,
        "header": header,
        "claims": claims,
        "expires_in_seconds": expires_in,
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&report).expect("report serialises")
    );
    i32::from(!valid)
}

pub(super) fn read_token_arg(arg: &str) -> Result<String, String> {
    let text = if arg == "-" {
        let mut text = String::new();
        std::io::stdin()
            .take(crate::license::MAX_TOKEN_BYTES as u64 + 1024)
            .read_to_string(&mut text)
            .map_err(|e| format!("cannot read the token from standard input: {e}"))?;
        text
    } else if let Some(path) = arg.strip_prefix('@') {
        std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?
    } else {
        arg.to_owned()
    };
    Ok(text.trim().to_owned())
}

/// Header and claims as JSON for display, whatever the signature says.
fn decode_unverified(token: &str) -> (Value, Value) {
    let mut parts = token.split('.');
    let mut decode = || {
        parts
            .next()
            .and_then(|p| URL_SAFE_NO_PAD.decode(p).ok())
            .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
            .unwrap_or(Value::Null)
    };
    let header = decode();
    let claims = decode();
    (header, claims)
}

fn random_id() -> String {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .expect("the system random source works");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn write(path: &Path, contents: &[u8]) -> Result<(), String> {
    std::fs::write(path, contents).map_err(|e| format!("{}: {e}", path.display()))
}

fn write_private(path: &Path, contents: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    file.write_all(contents)
        .map_err(|e| format!("{}: {e}", path.display()))
}
