//! The license check on the request path, and the reloadable state behind it.
//!
//! Two sources:
//! - **file**: one deployment license, verified when loaded and re-checked
//!   per request only against the clock (a few comparisons). Reloads swap an
//!   immutable snapshot atomically; a token that fails never replaces a good
//!   one.
//! - **header**: each request brings its own token, verified through the
//!   [`LicenseVerifier`] cache, so a repeat costs a map lookup.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use http::{HeaderMap, HeaderName};

use super::{
    admits, Environment, Keyring, LicenseError, LicenseVerifier, Validator, Validity,
    VerifiedLicense,
};
use crate::config::{LicenseSettings, LicenseSource};
use crate::metrics::{LicenseState, Metrics};

/// The license check shared by all connections.
pub struct LicenseGate {
    verifier: LicenseVerifier,
    keys_path: PathBuf,
    environment: Environment,
    source: Source,
    clock: TrustedClock,
    metrics: Arc<Metrics>,
}

enum Source {
    File {
        path: PathBuf,
        current: ArcSwap<Loaded>,
    },
    Header(HeaderName),
}

/// The deployment license as last loaded from its file.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The license in force (the last good one), with its token text so a
    /// keyring change can re-verify it.
    pub license: Option<(Arc<VerifiedLicense>, Arc<str>)>,
    /// Whether the license admits this workload's environment.
    pub environment: Option<Result<(), LicenseError>>,
    /// Why there is no license in force.
    pub error: Option<LicenseError>,
    /// When the last load was tried (unix seconds) and what it gave.
    pub last_reload: Option<(u64, Result<(), String>)>,
}

/// Why the gate could not be built.
#[derive(Debug, thiserror::Error)]
#[error("license.keys: {0}")]
pub struct GateError(#[from] pub super::KeyError);

impl LicenseGate {
    /// Load the keyring (and, for the file source, the license). A missing
    /// or bad license file is not an error here: the gate starts denying
    /// with the reason, and readiness reports it, until a good one arrives.
    pub fn new(
        settings: &LicenseSettings,
        metrics: Arc<Metrics>,
    ) -> Result<LicenseGate, GateError> {
        let keyring = Keyring::load(&settings.keys)?;
        let validator = Validator {
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
            leeway: settings.leeway,
            grace: settings.grace,
        };
        let environment = Environment {
            cluster: settings.environment.cluster.clone(),
            namespace: settings.environment.namespace.clone(),
            region: settings.environment.region.clone(),
            service_account: settings.environment.service_account.clone(),
        };
        let source = match &settings.source {
            LicenseSource::File(path) => Source::File {
                path: path.clone(),
                current: ArcSwap::from_pointee(Loaded::default()),
            },
            LicenseSource::Header(name) => Source::Header(name.clone()),
        };
        let gate = LicenseGate {
            verifier: LicenseVerifier::new(Arc::new(keyring), validator, settings.cache_capacity),
            keys_path: settings.keys.clone(),
            environment,
            source,
            clock: TrustedClock::default(),
            metrics,
        };
        if gate.file_path().is_some() {
            let _ = gate.reload_license();
        }
        gate.refresh_state();
        Ok(gate)
    }

    /// Check one request. `Ok` carries whether the license is in grace.
    pub fn check(&self, headers: &HeaderMap) -> Result<Validity, LicenseError> {
        let now = self.clock.now();
        match &self.source {
            Source::File { current, .. } => {
                let loaded = current.load();
                let Some((license, _)) = &loaded.license else {
                    return Err(loaded.error.clone().unwrap_or(LicenseError::Missing));
                };
                if let Some(Err(error)) = &loaded.environment {
                    return Err(error.clone());
                }
                let validity = self.verifier.validator().validate(&license.claims, now)?;
                self.count_grace(validity);
                Ok(validity)
            }
            Source::Header(name) => {
                let result = self.check_header(headers, name, now);
                self.metrics
                    .license
                    .verification(result.as_ref().map(Validity::is_in_grace));
                if let Ok(validity) = result {
                    self.count_grace(validity);
                }
                result
            }
        }
    }

    fn check_header(
        &self,
        headers: &HeaderMap,
        name: &HeaderName,
        now: u64,
    ) -> Result<Validity, LicenseError> {
        let value = headers.get(name).ok_or(LicenseError::Missing)?;
        let token = bearer_token(value.as_bytes())?;
        let (result, cache_hit) = self.verifier.check_traced(token, now);
        if cache_hit {
            self.metrics.license.cache_hits.inc();
        } else {
            self.metrics.license.cache_misses.inc();
        }
        let (license, validity) = result?;
        admits(&license.claims.lic.env, &self.environment)?;
        Ok(validity)
    }

    fn count_grace(&self, validity: Validity) {
        if validity.is_in_grace() {
            self.metrics.license.grace_requests.inc();
        }
    }

    /// Whether tokens come with each request (clients can fix a denial by
    /// sending a valid token) rather than from the deployment.
    pub fn is_per_request(&self) -> bool {
        matches!(self.source, Source::Header(_))
    }

    /// The license file, for the file source.
    pub fn file_path(&self) -> Option<&Path> {
        match &self.source {
            Source::File { path, .. } => Some(path),
            Source::Header(_) => None,
        }
    }

    /// Where the keyring is loaded from.
    pub fn keys_path(&self) -> &Path {
        &self.keys_path
    }

    /// The deployment license snapshot (file source).
    pub fn loaded(&self) -> Option<Arc<Loaded>> {
        match &self.source {
            Source::File { current, .. } => Some(current.load_full()),
            Source::Header(_) => None,
        }
    }

    /// The verifier (keyring and cache).
    pub fn verifier(&self) -> &LicenseVerifier {
        &self.verifier
    }

    /// The workload identity licenses are checked against.
    pub fn environment(&self) -> &Environment {
        &self.environment
    }

    /// The trusted time used for license decisions (unix seconds).
    pub fn now(&self) -> u64 {
        self.clock.now()
    }

    /// Re-read the license file. A token that fails verification or
    /// validation keeps the previous license in force and is reported.
    pub fn reload_license(&self) -> Result<(), LicenseError> {
        let Source::File { path, current } = &self.source else {
            return Ok(());
        };
        let now = self.clock.now();
        let previous = current.load_full();
        let read = read_token(path);
        if let (Ok(token), Some((_, in_force))) = (&read, &previous.license) {
            if **token == **in_force {
                // Unchanged: a watch event for another file in the directory.
                return Ok(());
            }
        }
        let result = read.and_then(|token| {
            let (result, _) = self.verifier.check_traced(&token, now);
            result.map(|(license, _)| (license, Arc::<str>::from(token)))
        });
        self.metrics
            .license
            .verification(result.as_ref().map(|_| false));
        let outcome = match result {
            Ok((license, token)) => {
                let environment = admits(&license.claims.lic.env, &self.environment);
                if let Err(error) = &environment {
                    tracing::error!(%error, "the license does not admit this environment");
                }
                if let Some(iat) = license.claims.iat {
                    self.clock.observe(iat.0);
                }
                tracing::info!(
                    license = %license.claims.sub,
                    plan = %license.claims.lic.plan,
                    expires = license.claims.exp.0,
                    path = %path.display(),
                    "license loaded"
                );
                current.store(Arc::new(Loaded {
                    license: Some((license, token)),
                    environment: Some(environment),
                    error: None,
                    last_reload: Some((now, Ok(()))),
                }));
                self.metrics.license.reloads_ok.inc();
                Ok(())
            }
            Err(error) => {
                if previous.license.is_some() {
                    tracing::error!(%error, path = %path.display(), "new license rejected; the previous license stays in force");
                } else {
                    tracing::error!(%error, path = %path.display(), "no valid license loaded");
                }
                current.store(Arc::new(Loaded {
                    license: previous.license.clone(),
                    environment: previous.environment.clone(),
                    error: if previous.license.is_some() {
                        None
                    } else {
                        Some(error.clone())
                    },
                    last_reload: Some((now, Err(error.to_string()))),
                }));
                self.metrics.license.reloads_failed.inc();
                Err(error)
            }
        };
        self.refresh_state();
        outcome
    }

    /// Re-read the keyring. A broken key file keeps the previous keyring. A
    /// changed keyring drops cached verifications and re-checks the loaded
    /// license, so removing a key revokes what it signed.
    pub fn reload_keys(&self) -> Result<bool, super::KeyError> {
        let keyring = match Keyring::load(&self.keys_path) {
            Ok(keyring) => keyring,
            Err(error) => {
                tracing::error!(%error, "keyring reload failed; the previous keys stay in force");
                self.metrics.license.reloads_failed.inc();
                return Err(error);
            }
        };
        let changed = self.verifier.replace_keyring(Arc::new(keyring));
        self.metrics.license.reloads_ok.inc();
        if changed {
            tracing::info!(keys = %self.keys_path.display(), fingerprint = %self.verifier.keyring().fingerprint(), "keyring reloaded");
            self.recheck_loaded();
        }
        Ok(changed)
    }

    /// After a keyring change the license in force must still verify.
    fn recheck_loaded(&self) {
        let Source::File { current, .. } = &self.source else {
            return;
        };
        let loaded = current.load_full();
        let Some((_, token)) = &loaded.license else {
            // Nothing in force: the file may now verify under the new keys.
            let _ = self.reload_license();
            return;
        };
        let (result, _) = self.verifier.check_traced(token, self.clock.now());
        if let Err(error) = result {
            tracing::error!(%error, "the license in force no longer verifies under the new keyring");
            current.store(Arc::new(Loaded {
                license: None,
                environment: None,
                error: Some(error),
                last_reload: loaded.last_reload.clone(),
            }));
            // The file may hold a newer token signed with the new key.
            let _ = self.reload_license();
        }
        self.refresh_state();
    }

    /// The deployment license's state now, for metrics, readiness and logs.
    pub fn state(&self) -> LicenseState {
        let Some(loaded) = self.loaded() else {
            return LicenseState::Valid;
        };
        match &loaded.license {
            None => match &loaded.error {
                None | Some(LicenseError::Missing) => LicenseState::Missing,
                Some(LicenseError::Expired { .. }) => LicenseState::Expired,
                Some(_) => LicenseState::Invalid,
            },
            Some((license, _)) => {
                if let Some(Err(_)) = &loaded.environment {
                    return LicenseState::Invalid;
                }
                match self
                    .verifier
                    .validator()
                    .validate(&license.claims, self.clock.now())
                {
                    Ok(Validity::Valid { .. }) => LicenseState::Valid,
                    Ok(Validity::InGrace { .. }) => LicenseState::Grace,
                    Err(LicenseError::Expired { .. }) => LicenseState::Expired,
                    Err(_) => LicenseState::Invalid,
                }
            }
        }
    }

    /// Update the state gauges (deployment license only); returns the state.
    pub fn refresh_state(&self) -> LicenseState {
        self.clock.observe(wall_clock());
        let state = self.state();
        if self.is_per_request() {
            return state;
        }
        self.metrics.license.set_state(state);
        let expiry = self
            .loaded()
            .and_then(|l| l.license.as_ref().map(|(license, _)| license.claims.exp.0))
            .unwrap_or(0);
        self.metrics
            .license
            .expiry_timestamp
            .set(i64::try_from(expiry).unwrap_or(i64::MAX));
        state
    }
}

impl LicenseGate {
    /// What `GET /license` on the admin port reports. Never the token.
    pub fn status(&self) -> serde_json::Value {
        use serde_json::json;
        let keyring = self.verifier.keyring();
        let kids: Vec<&str> = keyring.keys().iter().map(|k| k.kid()).collect();
        let env = &self.environment;
        let mut status = json!({
            "enforced": true,
            "keyring": { "path": self.keys_path.display().to_string(), "fingerprint": keyring.fingerprint(), "kids": kids },
            "environment": {
                "cluster": env.cluster, "namespace": env.namespace,
                "region": env.region, "service_account": env.service_account,
            },
            "trusted_time": self.clock.now(),
        });
        match &self.source {
            Source::Header(name) => {
                status["source"] = json!("header");
                status["header"] = json!(name.as_str());
                status["cached_tokens"] = json!(self.verifier.cache().len());
            }
            Source::File { path, current } => {
                let loaded = current.load();
                let now = self.clock.now();
                status["source"] = json!("file");
                status["path"] = json!(path.display().to_string());
                status["state"] = json!(self.state().as_str());
                status["error"] = json!(loaded
                    .error
                    .as_ref()
                    .map(|e| json!({"reason": e.reason(), "detail": e.detail()})));
                status["last_reload"] =
                    json!(loaded.last_reload.as_ref().map(|(at, result)| json!({
                        "at": at,
                        "ok": result.is_ok(),
                        "error": result.as_ref().err(),
                    })));
                status["license"] = json!(loaded.license.as_ref().map(|(license, _)| {
                    let claims = &license.claims;
                    let validity = self.verifier.validator().validate(claims, now);
                    json!({
                        "id": claims.sub,
                        "customer": claims.lic.customer,
                        "plan": claims.lic.plan,
                        "features": claims.lic.features,
                        "limits": claims.lic.limits,
                        "seats": claims.lic.seats,
                        "issuer": claims.iss,
                        "expires_at": claims.exp.0,
                        "expires_in_seconds": claims.exp.0 as i64 - now as i64,
                        "in_grace": matches!(validity, Ok(Validity::InGrace { .. })),
                        "grace_ends": match validity { Ok(Validity::InGrace { grace_ends, .. }) => Some(grace_ends), _ => None },
                        "kid": license.kid,
                        "alg": license.alg.as_str(),
                    })
                }));
            }
        }
        status
    }
}

impl std::fmt::Debug for LicenseGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LicenseGate")
            .field("keys", &self.keys_path)
            .field("per_request", &self.is_per_request())
            .finish_non_exhaustive()
    }
}

/// The token in a header value: `Bearer <token>` or the bare token.
fn bearer_token(value: &[u8]) -> Result<&str, LicenseError> {
    let text = std::str::from_utf8(value)
        .map_err(|_| LicenseError::Malformed("the license header is not valid text".into()))?
        .trim();
    let token = match text.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case("bearer ") => text[7..].trim_start(),
        _ => text,
    };
    if token.is_empty() || token.eq_ignore_ascii_case("bearer") {
        return Err(LicenseError::Missing);
    }
    Ok(token)
}

fn read_token(path: &Path) -> Result<String, LicenseError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            if bytes.len() > super::MAX_TOKEN_BYTES + 64 {
                return Err(LicenseError::Malformed(format!(
                    "{} is larger than a license token can be",
                    path.display()
                )));
            }
            let text = String::from_utf8(bytes)
                .map_err(|_| LicenseError::Malformed(format!("{} is not text", path.display())))?;
            let token = text.trim();
            if token.is_empty() {
                return Err(LicenseError::Missing);
            }
            Ok(token.to_owned())
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Err(LicenseError::Missing),
        Err(error) => Err(LicenseError::Malformed(format!(
            "cannot read {}: {error}",
            path.display()
        ))),
    }
}

fn wall_clock() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Time for license decisions: the wall clock, never earlier than the
/// latest trusted time seen (the `iat` of verified tokens and earlier
/// readings of the wall clock), so winding the clock back cannot bring an
/// expired license back to life.
#[derive(Debug, Default)]
pub struct TrustedClock {
    floor: AtomicU64,
}

/// How far behind the trusted floor the wall clock may fall before it is
/// reported (ordinary NTP steps stay well inside this).
const CLOCK_BEHIND_REPORT_SECS: u64 = 300;

impl TrustedClock {
    /// The wall clock, or the trusted floor when the wall clock is behind it.
    pub fn now(&self) -> u64 {
        wall_clock().max(self.floor.load(Ordering::Relaxed))
    }

    /// Raise the floor to `time` if it is later.
    pub fn observe(&self, time: u64) {
        let previous = self.floor.fetch_max(time, Ordering::Relaxed);
        let wall = wall_clock();
        if previous > wall + CLOCK_BEHIND_REPORT_SECS && time == wall {
            tracing::warn!(
                behind_seconds = previous - wall,
                "the wall clock is behind the latest trusted time; license checks use the trusted time"
            );
        }
    }

    /// The latest trusted time seen.
    pub fn floor(&self) -> u64 {
        self.floor.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_prefix_is_optional_and_case_insensitive() {
        assert_eq!(bearer_token(b"Bearer abc").unwrap(), "abc");
        assert_eq!(bearer_token(b"bearer   abc").unwrap(), "abc");
        assert_eq!(bearer_token(b"abc").unwrap(), "abc");
        assert_eq!(bearer_token(b"Bearer ").unwrap_err(), LicenseError::Missing);
        assert!(matches!(
            bearer_token(b"\xff"),
            Err(LicenseError::Malformed(_))
        ));
    }

    #[test]
    fn trusted_clock_never_goes_back() {
        let clock = TrustedClock::default();
        let far_future = wall_clock() + 10_000;
        clock.observe(far_future);
        assert_eq!(clock.now(), far_future);
        clock.observe(1);
        assert_eq!(clock.floor(), far_future);
    }
}
