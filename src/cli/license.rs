//! `licensegate license keygen | issue | inspect`: the vendor-side tools.

use std::io::Read;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};

use crate::duration::HumanDuration;
use crate::exit;
use crate::license::issue::{jwks, never_valid, sign, sign_revocations, SigningKey};
use crate::license::validate::unix_now;
use crate::license::{token, Algorithm, Keyring, RevocationList, Validator};

#[derive(Debug, Subcommand)]
pub enum LicenseCommand {
    /// Make a signing key pair (PKCS#8 PEM private, SPKI PEM public).
    Keygen(KeygenArgs),
    /// Sign a license token from a claims file and print it.
    Issue(IssueArgs),
    /// Decode and verify a token; exit 0 when valid, 1 when not.
    Inspect(InspectArgs),
    /// Sign a revocation list of token ids (`jti`) and license ids (`sub`).
    Revoke(RevokeArgs),
}

#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// PKCS#8 PEM private key (one of the license keyring's).
    #[arg(long)]
    pub key: PathBuf,
    #[arg(long)]
    pub kid: String,
    /// The list's place in the sequence: higher than every list issued before.
    #[arg(long)]
    pub seq: u64,
    /// A token id to revoke; repeat for more.
    #[arg(long)]
    pub jti: Vec<String>,
    /// A license id whose every token is revoked; repeat for more.
    #[arg(long)]
    pub sub: Vec<String>,
    /// Issue time, unix seconds (default: now).
    #[arg(long)]
    pub iat: Option<u64>,
    #[arg(long)]
    pub iss: Option<String>,
    /// Write the list here (replaced atomically) instead of printing it.
    #[arg(long)]
    pub out: Option<PathBuf>,
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
    /// Overwrite key files that exist (by default keygen refuses, so a
    /// signing key in use is never replaced by mistake).
    #[arg(long)]
    pub force: bool,
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
    /// Sign even a token valid at no time from now on: already expired
    /// (`exp` not after now, e.g. `--ttl 0s`) or with `nbf` not before
    /// `exp`. For tests of expiry handling.
    #[arg(long)]
    pub allow_expired: bool,
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
    /// A signed revocation list (the list, `@FILE`): also say whether the
    /// token is revoked under it.
    #[arg(long)]
    pub revocations: Option<String>,
    /// The token, `@FILE`, or `-` for standard input.
    pub token: String,
}

/// Run a license command; returns the exit status.
pub fn run(command: LicenseCommand) -> i32 {
    let result = match command {
        LicenseCommand::Keygen(args) => keygen(args),
        LicenseCommand::Issue(args) => issue(args),
        LicenseCommand::Inspect(args) => return inspect(args),
        LicenseCommand::Revoke(args) => revoke(args),
    };
    match result {
        Ok(()) => exit::SUCCESS,
        Err(message) => {
            eprintln!("licensegate: {message}");
            exit::FAILURE
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
    let mut files = vec![
        KeyFile {
            path: &args.private,
            contents: key.private_key_pem(),
            private: true,
        },
        KeyFile {
            path: &args.public,
            contents: key.public_key_pem(),
            private: false,
        },
    ];
    if let Some(path) = &args.jwks {
        let text = serde_json::to_string_pretty(&jwks(&[public])).expect("JWKS serialises");
        files.push(KeyFile {
            path,
            contents: format!("{text}\n"),
            private: false,
        });
    }
    write_key_files(&files, args.force)?;
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
        crate::yaml::parse(&args.claims, &text).map_err(|e| e.to_string())?;
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
    if let Some(problem) = never_valid(&claims, now) {
        if !args.allow_expired {
            return Err(format!(
                "{}: {problem}; not signed (pass --allow-expired to sign it anyway)",
                args.claims.display()
            ));
        }
        eprintln!("licensegate: warning: {problem}; signed because of --allow-expired");
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

fn revoke(args: RevokeArgs) -> Result<(), String> {
    let key = SigningKey::from_pkcs8_pem_file(&args.key).map_err(|e| e.to_string())?;
    let mut claims = json!({
        "iat": args.iat.unwrap_or_else(unix_now),
        "seq": args.seq,
        "jti": args.jti,
        "sub": args.sub,
    });
    if let Some(iss) = args.iss {
        claims["iss"] = json!(iss);
    }
    if !crate::license::jose::is_valid_kid(&args.kid) {
        return Err(format!(
            "--kid `{}` is not a key id: {}",
            args.kid,
            token::KID_CHARACTERS
        ));
    }
    let list = sign_revocations(&claims, &key, &args.kid);
    // Verify what we made, as `issue` does.
    let public = key.verifying_key(&args.kid).map_err(|e| e.to_string())?;
    let keyring = Keyring::from_keys(vec![public]).map_err(|e| e.to_string())?;
    let verified = RevocationList::verify(&list, &keyring, None)
        .map_err(|e| format!("the list does not verify: {e}"))?;
    match &args.out {
        Some(path) => {
            crate::atomic_file::replace(path, format!("{list}\n").as_bytes())
                .map_err(|e| e.to_string())?;
            eprintln!(
                "wrote revocation list seq {} ({} jti, {} sub) to {}",
                verified.seq,
                verified.jti.len(),
                verified.sub.len(),
                path.display()
            );
        }
        None => println!("{list}"),
    }
    Ok(())
}

fn inspect(args: InspectArgs) -> i32 {
    let token = match read_token_arg(&args.token) {
        Ok(token) => token,
        Err(message) => {
            eprintln!("licensegate: {message}");
            return exit::UNANSWERABLE;
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
    // Under a revocation list: verified with the same keys; a list that
    // does not verify makes the answer unknowable.
    let mut revocation = Value::Null;
    let verdict = match (&args.revocations, &args.keys, verdict) {
        (Some(arg), Some(path), Ok(validity)) => {
            let checked = read_token_arg(arg)
                .map_err(|e| ("revocations_unreadable".to_owned(), e))
                .and_then(|text| {
                    let keyring = Keyring::load(path)
                        .map_err(|e| ("keys_unreadable".into(), e.to_string()))?;
                    let list = RevocationList::verify(&text, &keyring, args.iss.as_deref())
                        .map_err(|e| ("revocations_invalid".into(), e.detail()))?;
                    let license = token::verify(&token, &keyring)
                        .map_err(|e| (e.reason().to_owned(), e.detail()))?;
                    Ok((list, license))
                });
            checked.and_then(|(list, license)| {
                let result = list.check(&license.claims);
                revocation = json!({"seq": list.seq, "iat": list.iat, "revoked": result.is_err()});
                result
                    .map(|()| validity)
                    .map_err(|e| (e.reason().to_owned(), e.detail()))
            })
        }
        (Some(_), None, _) => Err((
            "not_verified".to_owned(),
            "--revocations needs --keys".to_owned(),
        )),
        (_, _, verdict) => verdict,
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
        "revocations": revocation,
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&report).expect("report serialises")
    );
    if valid {
        exit::SUCCESS
    } else {
        exit::FAILURE
    }
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

/// One file `keygen` writes.
struct KeyFile<'a> {
    path: &'a Path,
    contents: String,
    /// Mode 0600, also when an existing file is overwritten.
    private: bool,
}

/// Write all of `files` or none: without `force`, any that exists stops
/// everything before a byte is written (and files are created exclusively,
/// so one appearing meanwhile is not clobbered either); if a write fails,
/// the files this call created are removed again, so no half of a pair is
/// left behind.
fn write_key_files(files: &[KeyFile<'_>], force: bool) -> Result<(), String> {
    for (i, file) in files.iter().enumerate() {
        if files[..i].iter().any(|other| other.path == file.path) {
            return Err(format!(
                "{}: named twice; the private key, the public key and the JWKS need a file each",
                file.path.display()
            ));
        }
        if !force && std::fs::symlink_metadata(file.path).is_ok() {
            return Err(format!(
                "{}: exists; not overwriting a key file (pass --force to replace it)",
                file.path.display()
            ));
        }
    }
    let mut created = Vec::new();
    for file in files {
        let existed = std::fs::symlink_metadata(file.path).is_ok();
        match write_key_file(file, force) {
            Ok(()) if !existed => created.push(file.path),
            Ok(()) => {}
            Err(error) => {
                for path in created {
                    let _ = std::fs::remove_file(path);
                }
                return Err(error);
            }
        }
    }
    Ok(())
}

fn write_key_file(file: &KeyFile<'_>, force: bool) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let error = |e: std::io::Error| format!("{}: {e}", file.path.display());
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    if file.private {
        options.mode(0o600);
    }
    let mut handle = options.open(file.path).map_err(error)?;
    if file.private {
        // The mode above applies only to a new file: an overwritten one
        // keeps its own, which may let others read the key.
        handle
            .set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(error)?;
    }
    handle.write_all(file.contents.as_bytes()).map_err(error)
}
