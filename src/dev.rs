//! Development licenses, for `licensegate demo` and `licensegate dev`: a
//! throw-away signing key in a private temporary directory, the licenses it
//! signs, and (for `dev`) the license file behind `/dev/license` on the
//! admin port, re-signed when the plan is switched.
//!
//! Trust: the private key exists only in this process's memory; the
//! directory holds its public half, the license file and nothing secret.
//! The proxy verifies these licenses like any other (signature, issuer,
//! expiry), through the same gate and the same file source as production.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::license::issue::{sign, SigningKey};
use crate::license::validate::unix_now;
use crate::license::{Algorithm, Environment, LicenseGate, LicenseSettings, LicenseSource};
use crate::policy::Policy;

/// The `iss` of every development license, checked by the proxy.
pub const ISSUER: &str = "licensegate-dev";

/// The key id; also the public key file's stem, which the keyring reads as
/// the kid.
const KID: &str = "licensegate-dev";

/// How long a `licensegate dev` license lasts: a working day. Each switch
/// signs a new one, so `licensegate dev switch` with no flags renews it.
pub const DEV_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// The license file's name in the dev directory.
const LICENSE_FILE: &str = "license.jwt";

/// What a development license grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The license id (`sub`).
    pub id: &'static str,
    pub customer: &'static str,
    pub plan: String,
    /// The license's own features; its plan's come from the policy.
    pub features: Vec<String>,
    pub seats: Option<u32>,
    pub lifetime: Duration,
}

impl Grant {
    /// The license `licensegate demo` prints.
    pub fn demo() -> Grant {
        Grant {
            id: "demo-license",
            customer: "Demo Customer",
            plan: "pro".to_owned(),
            features: vec!["reports".to_owned()],
            seats: Some(3),
            lifetime: Duration::from_secs(3600),
        }
    }

    /// A `licensegate dev` license.
    pub fn dev(plan: String, features: Vec<String>) -> Grant {
        Grant {
            id: "dev-license",
            customer: "Local development",
            plan,
            features,
            seats: None,
            lifetime: DEV_LIFETIME,
        }
    }

    /// `plan `pro`, feature `reports`, 3 seats, 1 hour`.
    pub fn describe(&self) -> String {
        let mut text = format!(
            "plan `{}`, {}",
            self.plan,
            describe_features(&self.features)
        );
        if let Some(seats) = self.seats {
            text.push_str(&format!(", {seats} seats"));
        }
        let hours = self.lifetime.as_secs() / 3600;
        text.push_str(&format!(
            ", {hours} hour{}",
            if hours == 1 { "" } else { "s" }
        ));
        text
    }

    fn claims(&self, now: u64) -> serde_json::Value {
        let mut lic = serde_json::json!({
            "plan": self.plan,
            "customer": self.customer,
            "features": self.features,
        });
        if let Some(seats) = self.seats {
            lic["seats"] = serde_json::json!(seats);
        }
        serde_json::json!({
            "iss": ISSUER,
            "sub": self.id,
            "iat": now,
            "nbf": now,
            "exp": now + self.lifetime.as_secs(),
            "lic": lic,
        })
    }
}

/// `feature `reports``, `features `a`, `b``, `no features of its own`.
pub fn describe_features(features: &[String]) -> String {
    match features {
        [] => "no features of its own".to_owned(),
        [one] => format!("feature `{one}`"),
        many => format!(
            "features {}",
            many.iter()
                .map(|f| format!("`{f}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// A throw-away signing key and the private directory that holds its public
/// half; the directory is removed when the key is dropped.
pub struct DevKey {
    dir: PathBuf,
    key: SigningKey,
    public_key: PathBuf,
}

impl DevKey {
    /// A fresh key in a new directory `licensegate-{purpose}-…` under the
    /// system temp dir, readable by this user only.
    pub fn create(purpose: &str) -> Result<DevKey, String> {
        let key = SigningKey::generate(Algorithm::EdDSA).map_err(|e| e.to_string())?;
        let dir = private_dir(purpose)?;
        // Built before writing, so a failed write removes the directory.
        let dev = DevKey {
            public_key: dir.join(format!("{KID}.pem")),
            dir,
            key,
        };
        std::fs::write(&dev.public_key, dev.key.public_key_pem())
            .map_err(|e| format!("{}: {e}", dev.public_key.display()))?;
        Ok(dev)
    }

    /// The private directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The public key file: the keyring to verify this key's licenses.
    pub fn public_key(&self) -> &Path {
        &self.public_key
    }

    /// A license granting `grant`, valid from now.
    pub fn sign(&self, grant: &Grant) -> String {
        sign(&grant.claims(unix_now()), &self.key, KID)
    }

    /// How the proxy checks this key's licenses, from `source`.
    pub fn license_settings(&self, source: LicenseSource) -> LicenseSettings {
        license_settings(self.public_key.clone(), source, Some(ISSUER.to_owned()))
    }
}

impl Drop for DevKey {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl std::fmt::Debug for DevKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevKey").field("dir", &self.dir).finish()
    }
}

/// License settings for development: a minute of leeway, no grace.
fn license_settings(
    keys: PathBuf,
    source: LicenseSource,
    issuer: Option<String>,
) -> LicenseSettings {
    LicenseSettings {
        keys,
        source,
        issuer,
        audience: None,
        leeway: Duration::from_secs(60),
        grace: Duration::ZERO,
        environment: Environment::default(),
        cache_capacity: 10_000,
        state_file: None,
        forward_token: false,
        failed_verifications: Default::default(),
        revocations: None,
    }
}

/// A new directory only this user can enter. The name is random as well as
/// per process, and creation fails rather than reuse anything already there
/// (the temp dir is shared with other users).
fn private_dir(purpose: &str) -> Result<PathBuf, String> {
    use std::os::unix::fs::DirBuilderExt;
    let mut random = [0u8; 6];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random)
        .map_err(|_| "the system random source failed".to_owned())?;
    let suffix: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let dir = std::env::temp_dir().join(format!(
        "licensegate-{purpose}-{}-{suffix}",
        std::process::id()
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}

/// The deployment license `licensegate dev` runs with.
pub enum DevLicense {
    /// Minted with a throw-away key; re-signed on every switch.
    Minted {
        /// Boxed: a signing key is large, and the other variant is two paths.
        key: Box<DevKey>,
        file: PathBuf,
        /// The grant in the file. Held across sign, write and install, so
        /// concurrent switches apply one after the other.
        grant: Mutex<Grant>,
    },
    /// The developer's own license file and keys (`--license`, `--keys`):
    /// watched like in production, never re-signed.
    Given { file: PathBuf, keys: PathBuf },
}

impl DevLicense {
    /// A new key and a license file granting `grant`.
    pub fn mint(grant: Grant) -> Result<DevLicense, String> {
        let key = DevKey::create("dev")?;
        let file = key.dir().join(LICENSE_FILE);
        write_atomically(&file, &key.sign(&grant))?;
        Ok(DevLicense::Minted {
            key: Box::new(key),
            file,
            grant: Mutex::new(grant),
        })
    }

    /// The developer's own license file, verified with `keys`.
    pub fn given(file: PathBuf, keys: PathBuf) -> DevLicense {
        DevLicense::Given { file, keys }
    }

    /// The license file the proxy reads.
    pub fn file(&self) -> &Path {
        match self {
            DevLicense::Minted { file, .. } | DevLicense::Given { file, .. } => file,
        }
    }

    /// How the proxy checks it: the deployment license from its file, so
    /// requests need no `Authorization` header.
    pub fn license_settings(&self) -> LicenseSettings {
        let source = LicenseSource::File(self.file().to_owned());
        match self {
            DevLicense::Minted { key, .. } => key.license_settings(source),
            // The developer's license may have any issuer.
            DevLicense::Given { keys, .. } => license_settings(keys.clone(), source, None),
        }
    }
}

impl std::fmt::Debug for DevLicense {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevLicense")
            .field("file", &self.file())
            .field("switchable", &matches!(self, DevLicense::Minted { .. }))
            .finish()
    }
}

/// Replace `path` with `contents` in one step (a temporary file in the same
/// directory, then a rename), so the license watcher never reads half a
/// token.
fn write_atomically(path: &Path, contents: &str) -> Result<(), String> {
    let temp = path.with_extension("tmp");
    std::fs::write(&temp, contents).map_err(|e| format!("{}: {e}", temp.display()))?;
    std::fs::rename(&temp, path).map_err(|e| format!("{}: {e}", path.display()))
}

/// The body of `POST /dev/license`; an absent field keeps its value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanChange {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Vec<String>>,
}

/// What `/dev/license` answers: the license in force.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevStatus {
    /// `None` while no valid license is in force (see `error`).
    pub plan: Option<String>,
    /// The license's own features (its plan's come from the policy).
    pub features: Vec<String>,
    /// Expiry, unix seconds.
    pub exp: Option<u64>,
    pub expires_in_seconds: Option<i64>,
    pub license_file: PathBuf,
    /// Whether `POST /dev/license` can re-sign it.
    pub switchable: bool,
    /// Why no license is in force.
    pub error: Option<String>,
}

/// Why a switch was refused.
#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    /// The request asks for something that cannot be (400).
    #[error("{0}")]
    Invalid(String),
    /// This license cannot be re-signed (409).
    #[error("{0}")]
    NotSwitchable(String),
    /// Signing, writing or installing failed (500).
    #[error("{0}")]
    Failed(String),
}

/// The plans the policy in force defines, sorted; `None` without a policy.
pub type PlanNames = Box<dyn Fn() -> Option<Vec<String>> + Send + Sync>;

/// The dev license bound to the running gate: what the admin port's
/// `/dev/license` reads and switches.
pub struct DevControl {
    license: DevLicense,
    gate: Arc<LicenseGate>,
    plans: PlanNames,
}

impl std::fmt::Debug for DevControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevControl")
            .field("license", &self.license)
            .finish_non_exhaustive()
    }
}

impl DevControl {
    /// `gate` must read `license`'s file.
    pub fn new(license: DevLicense, gate: Arc<LicenseGate>, plans: PlanNames) -> DevControl {
        DevControl {
            license,
            gate,
            plans,
        }
    }

    /// The license in force, as the gate holds it.
    pub fn status(&self) -> DevStatus {
        let loaded = self.gate.loaded().unwrap_or_default();
        let now = self.gate.now();
        let claims = loaded.license.as_ref().map(|(license, _)| &license.claims);
        DevStatus {
            plan: claims.map(|c| c.lic.plan.clone()),
            features: claims.map(|c| c.lic.features.clone()).unwrap_or_default(),
            exp: claims.map(|c| c.exp.0),
            expires_in_seconds: claims.map(|c| c.exp.0 as i64 - now as i64),
            license_file: self.license.file().to_owned(),
            switchable: matches!(self.license, DevLicense::Minted { .. }),
            error: loaded.error.as_ref().map(ToString::to_string),
        }
    }

    /// Re-sign the license with `change` applied, write it over the file and
    /// put it in force at once (the file watcher then reads the same bytes).
    pub fn switch(&self, change: PlanChange) -> Result<DevStatus, SwitchError> {
        let DevLicense::Minted { key, file, grant } = &self.license else {
            return Err(SwitchError::NotSwitchable(format!(
                "this licensegate dev runs with --license {}, which it cannot re-sign; \
                 edit that file (it is watched) or restart without --license",
                self.license.file().display()
            )));
        };
        if let Some(plan) = &change.plan {
            check_plan(plan, (self.plans)().as_deref()).map_err(SwitchError::Invalid)?;
        }
        if let Some(features) = &change.features {
            check_features(features).map_err(SwitchError::Invalid)?;
        }
        let mut grant = grant.lock();
        let mut next = grant.clone();
        if let Some(plan) = change.plan {
            next.plan = plan;
        }
        if let Some(features) = change.features {
            next.features = features;
        }
        let token = key.sign(&next);
        write_atomically(file, &token).map_err(SwitchError::Failed)?;
        self.gate
            .install_token(Ok(token))
            .map_err(|e| SwitchError::Failed(format!("the re-signed license was refused: {e}")))?;
        self.gate.refresh_state();
        tracing::info!(grant = %next.describe(), "dev license switched");
        *grant = next;
        Ok(self.status())
    }
}

/// A plan name is one the policy defines, when the policy defines any.
pub fn check_plan(plan: &str, defined: Option<&[String]>) -> Result<(), String> {
    if plan.trim().is_empty() {
        return Err("the plan name is empty".to_owned());
    }
    match defined {
        Some(plans) if !plans.is_empty() && !plans.iter().any(|p| p == plan) => Err(format!(
            "plan `{plan}` is not defined by the policy; its plans: {}",
            plans.join(", ")
        )),
        _ => Ok(()),
    }
}

/// Feature names travel comma-separated in `x-license-features`.
pub fn check_features(features: &[String]) -> Result<(), String> {
    for feature in features {
        if feature.is_empty()
            || feature
                .chars()
                .any(|c| c == ',' || c.is_whitespace() || c.is_control())
        {
            return Err(format!(
                "`{feature}` is not a feature name: non-empty, without commas or spaces"
            ));
        }
    }
    Ok(())
}

/// The policy's plan names, sorted.
pub fn plan_names(policy: &Policy) -> Vec<String> {
    let mut plans: Vec<String> = policy.plans.keys().cloned().collect();
    plans.sort();
    plans
}

/// The plan a dev license starts on without `--plan`: the policy's plan
/// that grants the most features (ties: the first by name), so every
/// licensed route works until a switch narrows it; `dev` when the policy
/// defines no plans.
pub fn default_plan(policy: Option<&Policy>) -> String {
    policy
        .and_then(|policy| {
            policy
                .plans
                .iter()
                .max_by(|(a_name, a), (b_name, b)| {
                    a.features
                        .len()
                        .cmp(&b.features.len())
                        .then_with(|| b_name.cmp(a_name))
                })
                .map(|(name, _)| name.clone())
        })
        .unwrap_or_else(|| "dev".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_plan_is_the_richest_then_the_first_by_name() {
        let policy = Policy::compile(vec![(
            PathBuf::from("p.yaml"),
            "plans:\n  free: {features: []}\n  pro: {features: [a, b]}\n  max: {features: [a, c]}\n"
                .to_owned(),
        )])
        .unwrap();
        assert_eq!(default_plan(Some(&policy)), "max");
        assert_eq!(default_plan(None), "dev");
    }

    #[test]
    fn plan_and_feature_names_are_checked() {
        let plans = ["free".to_owned(), "pro".to_owned()];
        assert!(check_plan("pro", Some(&plans)).is_ok());
        let error = check_plan("por", Some(&plans)).unwrap_err();
        assert!(error.contains("free, pro"), "{error}");
        assert!(check_plan("anything", Some(&[])).is_ok());
        assert!(check_plan("anything", None).is_ok());
        assert!(check_plan(" ", None).is_err());
        assert!(check_features(&["reports".to_owned()]).is_ok());
        assert!(check_features(&["a,b".to_owned()]).is_err());
        assert!(check_features(&[String::new()]).is_err());
    }

    #[test]
    fn grants_describe_themselves() {
        assert_eq!(
            Grant::demo().describe(),
            "plan `pro`, feature `reports`, 3 seats, 1 hour"
        );
        assert_eq!(
            Grant::dev("free".into(), vec![]).describe(),
            "plan `free`, no features of its own, 12 hours"
        );
    }
}
