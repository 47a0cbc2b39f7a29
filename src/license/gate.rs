//! The license check on the request path, and the reloadable state behind it.
//!
//! Two sources:
//! - **file**: one deployment license, verified when loaded and re-checked
//!   per request only against the clock (a few comparisons). Reloads swap an
//!   immutable snapshot atomically; a token that fails never replaces a good
//!   one.
//! - **header**: each request brings its own token, verified through the
//!   [`LicenseVerifier`] cache, so a repeat costs a map lookup. Failing
//!   signature checks are budgeted per client address. The header is
//!   removed before forwarding unless `forward_token` keeps it.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use http::{HeaderMap, HeaderName};
use parking_lot::Mutex;

use super::refresh::{run_refresh_loop, Fetcher, Lifetime, RefreshError};
use super::revocation::source::PollError;
use super::settings::{LicenseSettings, LicenseSource};
use super::state::{PersistedState, StateFile};
use super::{
    admits, Answered, Environment, KeyFiles, Keyring, LicenseError, LicenseVerifier, Validator,
    Validity, VerifiedLicense,
};
use crate::license::{LicenseMetrics, LicenseState};
use crate::watch::Trigger;

mod revocations;

/// The license check shared by all connections.
pub struct LicenseGate {
    verifier: LicenseVerifier,
    keys_path: PathBuf,
    environment: Environment,
    source: Source,
    clock: TrustedClock,
    /// Where the trusted time and the last fetched token survive restarts.
    state_file: Option<StateFile>,
    /// The trusted time last written to the state file.
    persisted_floor: AtomicU64,
    /// Held while the state file is written (see `persist`).
    persisting: Mutex<()>,
    /// What the last reload pass read (only the watcher's task reloads, so
    /// the lock is never contended).
    last_read: Mutex<LastRead>,
    metrics: Arc<LicenseMetrics>,
    /// Where revocation lists come from, if anywhere.
    revocation: Option<revocations::Feed>,
    /// Notified when the deployment license in force changes (one
    /// listener: the instance slot, which re-reads the license's limit).
    changed: Arc<tokio::sync::Notify>,
}

/// What the last reload pass read, so that a pass reading the same again
/// does nothing: no check, no metric, no log line above debug. Watch events
/// arrive for any change in a watched directory, and a file that stays
/// broken must not be reported again on each of them.
#[derive(Debug, Default)]
struct LastRead {
    /// The keyring's files, or why they could not be read or used.
    keys: Option<Result<KeyFiles, String>>,
    /// Whether the keyring's files last failed to load (so that a return to
    /// the keyring in force counts as a successful reload).
    keys_failed: bool,
    /// The license file's token, or why there is none, with the generation
    /// of the keyring it was checked under: a new keyring may verify a token
    /// the old one refused.
    license: Option<(Result<String, LicenseError>, u64)>,
}

enum Source {
    /// One license for the whole deployment, swapped atomically on reload.
    Deployment {
        origin: Origin,
        current: ArcSwap<Loaded>,
    },
    /// A token in this header of every request.
    Header {
        name: HeaderName,
        /// Forward the header to the upstream (default: removed).
        forward: bool,
    },
}

enum Origin {
    File(PathBuf),
    Refresh(Arc<Fetcher>),
}

impl Origin {
    fn describe(&self) -> String {
        match self {
            Origin::File(path) => path.display().to_string(),
            Origin::Refresh(fetcher) => fetcher.url().to_owned(),
        }
    }
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
pub enum GateError {
    /// The keyring could not be loaded.
    #[error("license.keys: {0}")]
    Keys(#[from] super::KeyError),
    /// The refresh endpoint settings are unusable.
    #[error(transparent)]
    Refresh(#[from] RefreshError),
    /// The revocation list endpoint settings are unusable.
    #[error(transparent)]
    Revocations(#[from] PollError),
}

impl LicenseGate {
    /// Load the keyring (and, for the file source, the license). A missing
    /// or bad license file is not an error here: the gate starts denying
    /// with the reason, and readiness reports it, until a good one arrives.
    pub fn new(
        settings: &LicenseSettings,
        metrics: Arc<LicenseMetrics>,
    ) -> Result<LicenseGate, GateError> {
        let key_files = KeyFiles::read(&settings.keys)?;
        let keyring = Keyring::from_files(&key_files)?;
        let validator = Validator {
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
            leeway: settings.leeway,
            grace: settings.grace,
        };
        let environment = settings.environment.clone();
        let deployment = |origin| Source::Deployment {
            origin,
            current: ArcSwap::from_pointee(Loaded::default()),
        };
        let source = match &settings.source {
            LicenseSource::File(path) => deployment(Origin::File(path.clone())),
            LicenseSource::Refresh(refresh) => {
                deployment(Origin::Refresh(Arc::new(Fetcher::new(refresh)?)))
            }
            LicenseSource::Header(name) => Source::Header {
                name: name.clone(),
                forward: settings.forward_token,
            },
        };
        let gate = LicenseGate {
            verifier: LicenseVerifier::new(Arc::new(keyring), validator, settings.cache_capacity)
                .with_budget(&settings.failed_verifications),
            keys_path: settings.keys.clone(),
            environment,
            source,
            clock: TrustedClock::default(),
            state_file: settings.state_file.clone().map(StateFile::new),
            persisted_floor: AtomicU64::new(0),
            persisting: Mutex::new(()),
            last_read: Mutex::new(LastRead {
                keys: Some(Ok(key_files)),
                ..LastRead::default()
            }),
            metrics,
            revocation: settings
                .revocations
                .as_ref()
                .map(revocations::Feed::new)
                .transpose()?,
            changed: Arc::new(tokio::sync::Notify::new()),
        };
        // The list first, so a revoked license is never put in force.
        gate.restore_revocations();
        gate.reload_revocations(Trigger::Files);
        gate.restore_state();
        if gate.file_path().is_some() {
            gate.reload_license(Trigger::Files);
        }
        gate.refresh_state();
        Ok(gate)
    }

    /// Check one request from `client` (asked only when a token needs a
    /// signature check). `Ok` carries whether the license is in grace.
    pub fn check(
        &self,
        headers: &HeaderMap,
        client: impl FnOnce() -> IpAddr,
    ) -> Result<(Arc<VerifiedLicense>, Validity), LicenseError> {
        let now = self.clock.now();
        match &self.source {
            Source::Deployment { current, .. } => {
                let loaded = current.load();
                let Some((license, _)) = &loaded.license else {
                    return Err(loaded.error.clone().unwrap_or(LicenseError::Missing));
                };
                if let Some(Err(error)) = &loaded.environment {
                    return Err(error.clone());
                }
                self.verifier.not_revoked(&license.claims)?;
                let validity = self.verifier.validator().validate(&license.claims, now)?;
                self.count_grace(validity);
                Ok((Arc::clone(license), validity))
            }
            Source::Header { name, .. } => {
                let result = self.check_header(headers, name, now, client);
                self.metrics
                    .verification(result.as_ref().map(|(_, v)| v.is_in_grace()));
                if let Ok((_, validity)) = &result {
                    self.count_grace(*validity);
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
        client: impl FnOnce() -> IpAddr,
    ) -> Result<(Arc<VerifiedLicense>, Validity), LicenseError> {
        let value = headers.get(name).ok_or(LicenseError::Missing)?;
        let token = bearer_token(value.as_bytes())?;
        let (result, answered) = self.verifier.check_from_client(token, now, client);
        self.count_answer(answered);
        let (license, validity) = result?;
        admits(&license.claims.lic.env, &self.environment)?;
        Ok((license, validity))
    }

    fn count_answer(&self, answered: Answered) {
        let metrics = &self.metrics;
        match answered {
            Answered::Cache => metrics.cache_hits.inc(),
            Answered::NegativeCache => metrics.negative_cache_hits.inc(),
            Answered::Parse => metrics.cache_misses.inc(),
            Answered::Signature => {
                metrics.cache_misses.inc();
                metrics.signature_checks.inc();
            }
            // Counted with the result (`license_verification_throttled`).
            Answered::Throttled => {}
        }
    }

    fn count_grace(&self, validity: Validity) {
        if validity.is_in_grace() {
            self.metrics.grace_requests.inc();
        }
    }

    /// Whether tokens come with each request (clients can fix a denial by
    /// sending a valid token) rather than from the deployment.
    pub fn is_per_request(&self) -> bool {
        matches!(self.source, Source::Header { .. })
    }

    /// The header that carries per-request tokens; `None` for a deployment
    /// license.
    pub fn token_header(&self) -> Option<&HeaderName> {
        match &self.source {
            Source::Header { name, .. } => Some(name),
            Source::Deployment { .. } => None,
        }
    }

    /// The header that carries per-request tokens, when it is to be removed
    /// before forwarding: `None` for a deployment license (the header, e.g.
    /// `Authorization`, is then the client's own business) and with
    /// `forward_token`.
    pub fn token_header_to_remove(&self) -> Option<&HeaderName> {
        match &self.source {
            Source::Header {
                name,
                forward: false,
            } => Some(name),
            _ => None,
        }
    }

    /// The license file, for the file source.
    pub fn file_path(&self) -> Option<&Path> {
        match &self.source {
            Source::Deployment {
                origin: Origin::File(path),
                ..
            } => Some(path),
            _ => None,
        }
    }

    /// Where the keyring is loaded from.
    pub fn keys_path(&self) -> &Path {
        &self.keys_path
    }

    /// Notified (one permit, kept until taken) whenever the deployment
    /// license in force changes.
    pub fn changed(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.changed)
    }

    /// The deployment license snapshot (file source).
    pub fn loaded(&self) -> Option<Arc<Loaded>> {
        match &self.source {
            Source::Deployment { current, .. } => Some(current.load_full()),
            Source::Header { .. } => None,
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

    /// One reload pass over the keyring and (file source) the license
    /// file. For [`Trigger::Files`], what reads the same as at the last pass
    /// is skipped.
    pub fn reload_files(&self, trigger: Trigger) {
        self.reload_keys(trigger);
        self.reload_revocations(trigger);
        if self.file_path().is_some() {
            self.reload_license(trigger);
        }
    }

    /// Re-read the license file. A token that fails verification or
    /// validation keeps the previous license in force and is reported.
    fn reload_license(&self, trigger: Trigger) {
        let Some(path) = self.file_path() else {
            return;
        };
        let token = read_token(path);
        let read = (token.clone(), self.verifier.keyring().generation());
        {
            let mut last = self.last_read.lock();
            if trigger == Trigger::Files && last.license.as_ref() == Some(&read) {
                tracing::debug!(path = %path.display(), "license file unchanged since the last reload pass");
                return;
            }
            last.license = Some(read);
        }
        let _ = self.install_token(token);
    }

    /// Put a deployment token in force if it verifies and validates; else
    /// keep the license in force and record why. Returns the lifetime of the
    /// license in force, for scheduling refreshes.
    pub fn install_token(
        &self,
        token: Result<String, LicenseError>,
    ) -> Result<Lifetime, LicenseError> {
        let Source::Deployment { origin, current } = &self.source else {
            return Err(LicenseError::Missing);
        };
        let now = self.clock.now();
        let previous = current.load_full();
        if let (Ok(token), Some((license, in_force))) = (&token, &previous.license) {
            let last_failed = matches!(previous.last_reload, Some((_, Err(_))));
            if **token == **in_force && !last_failed {
                // The license in force again, with nothing to recover from.
                return Ok(Lifetime::of(&license.claims, now));
            }
        }
        let result = token.and_then(|token| {
            let (result, answered) = self.verifier.check_traced(&token, now);
            self.count_answer(answered);
            result.map(|(license, _)| (license, Arc::<str>::from(token)))
        });
        self.metrics.verification(result.as_ref().map(|_| false));
        let from = origin.describe();
        let outcome = match result {
            Ok((license, token)) => {
                let environment = admits(&license.claims.lic.env, &self.environment);
                if let Err(error) = &environment {
                    tracing::error!(%error, "the license does not admit this environment");
                }
                if let Some(iat) = license.claims.iat {
                    self.clock.observe(iat.0);
                }
                let lifetime = Lifetime::of(&license.claims, now);
                let (sub, plan, expires) = (
                    license.claims.sub.clone(),
                    license.claims.lic.plan.clone(),
                    license.claims.exp.0,
                );
                current.store(Arc::new(Loaded {
                    license: Some((license, Arc::clone(&token))),
                    environment: Some(environment),
                    error: None,
                    last_reload: Some((now, Ok(()))),
                }));
                self.changed.notify_one();
                // Logged once in force: readers of this line may rely on it.
                tracing::info!(license = %sub, plan = %plan, expires, from = %from, "license loaded");
                self.metrics.reloads_ok.inc();
                if matches!(origin, Origin::Refresh(_)) {
                    self.persist(Some(&token));
                }
                Ok(lifetime)
            }
            Err(error) => {
                if previous.license.is_some() {
                    tracing::error!(%error, from = %from, "new license rejected; the previous license stays in force");
                } else {
                    tracing::error!(%error, from = %from, "no valid license loaded");
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
                self.metrics.reloads_failed.inc();
                Err(error)
            }
        };
        self.refresh_state();
        outcome
    }

    /// Record a failed fetch in the status without touching the license.
    pub fn record_fetch_failure(&self, error: &str) {
        if let Source::Deployment { current, .. } = &self.source {
            let previous = current.load_full();
            current.store(Arc::new(Loaded {
                license: previous.license.clone(),
                environment: previous.environment.clone(),
                error: previous.error.clone(),
                last_reload: Some((self.clock.now(), Err(error.to_owned()))),
            }));
            self.metrics.reloads_failed.inc();
        }
    }

    /// The task that fetches tokens from the vendor on schedule, for the
    /// refresh source; `None` for the other sources. Runs until dropped.
    pub fn refresh_task(
        self: &Arc<Self>,
    ) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        let Source::Deployment {
            origin: Origin::Refresh(fetcher),
            ..
        } = &self.source
        else {
            return None;
        };
        let fetcher = Arc::clone(fetcher);
        let gate = Arc::clone(self);
        let current = gate.loaded().and_then(|l| {
            l.license
                .as_ref()
                .map(|(license, _)| Lifetime::of(&license.claims, gate.now()))
        });
        Some(async move {
            let clock_gate = Arc::clone(&gate);
            run_refresh_loop(
                &fetcher,
                current,
                move || clock_gate.now(),
                |token| gate.install_token(Ok(token)),
                |error| gate.record_fetch_failure(&error.to_string()),
            )
            .await;
        })
    }

    /// Load the state file: raise the trusted clock to what was trusted
    /// before the restart and, for the refresh source, put the last fetched
    /// token back in force so a restart while the vendor is unreachable
    /// still serves.
    fn restore_state(&self) {
        let Some(file) = &self.state_file else {
            return;
        };
        let state = match file.load() {
            Ok(state) => state,
            Err(error) => {
                tracing::error!(%error, "cannot use the license state file; starting without it");
                return;
            }
        };
        self.clock.observe(state.highest_trusted_time);
        self.persisted_floor
            .store(state.highest_trusted_time, Ordering::Relaxed);
        let refresh = matches!(
            self.source,
            Source::Deployment {
                origin: Origin::Refresh(_),
                ..
            }
        );
        if let (true, Some(token)) = (refresh, state.last_good_token) {
            match self.install_token(Ok(token)) {
                Ok(_) => tracing::info!("license restored from the state file"),
                Err(error) => tracing::warn!(%error, "the persisted license is not usable"),
            }
        }
    }

    /// Write the state file (trusted time, and the token in force for the
    /// refresh source). Failures are logged: the proxy keeps serving.
    fn persist(&self, token: Option<&str>) {
        let Some(file) = &self.state_file else {
            return;
        };
        // One writer at a time, each writing what is in force when it
        // holds the lock: a periodic write that read "no license yet"
        // cannot land after, and so erase, the write of a new license.
        let _writing = self.persisting.lock();
        let floor = self.clock.floor();
        let last_good_token = token.map(str::to_owned).or_else(|| {
            self.loaded()
                .and_then(|l| l.license.as_ref().map(|(_, t)| t.to_string()))
                .filter(|_| {
                    matches!(
                        self.source,
                        Source::Deployment {
                            origin: Origin::Refresh(_),
                            ..
                        }
                    )
                })
        });
        let state = PersistedState {
            highest_trusted_time: floor,
            last_good_token,
            revocation_list: self.revocations_for_license_state(),
            updated_at: wall_clock(),
        };
        match file.save(&state) {
            Ok(()) => self.persisted_floor.store(floor, Ordering::Relaxed),
            Err(error) => tracing::error!(%error, "cannot write the license state file"),
        }
    }

    /// Persist the trusted time when it has moved on by a minute or more.
    pub fn persist_if_due(&self) {
        if self.clock.floor() >= self.persisted_floor.load(Ordering::Relaxed) + 60 {
            self.persist(None);
        }
    }

    /// Re-read the keyring. A broken key file keeps the previous keyring. A
    /// changed keyring drops cached verifications and re-checks the loaded
    /// license, so removing a key revokes what it signed. Counted when the
    /// keys in force change, when they fail to load, and when they load
    /// again after a failure.
    fn reload_keys(&self, trigger: Trigger) {
        let read = KeyFiles::read(&self.keys_path).map_err(|e| e.to_string());
        let was_failing = {
            let mut last = self.last_read.lock();
            if trigger == Trigger::Files && last.keys.as_ref() == Some(&read) {
                tracing::debug!(keys = %self.keys_path.display(), "keyring files unchanged since the last reload pass");
                return;
            }
            last.keys = Some(read.clone());
            last.keys_failed
        };
        let loaded = read.and_then(|files| Keyring::from_files(&files).map_err(|e| e.to_string()));
        self.last_read.lock().keys_failed = loaded.is_err();
        let keyring = match loaded {
            Ok(keyring) => keyring,
            Err(error) => {
                tracing::error!(%error, "keyring reload failed; the previous keys stay in force");
                self.metrics.reloads_failed.inc();
                return;
            }
        };
        let fingerprint = keyring.fingerprint();
        if self.verifier.replace_keyring(Arc::new(keyring)) {
            self.metrics.reloads_ok.inc();
            tracing::info!(keys = %self.keys_path.display(), %fingerprint, "keyring reloaded");
            self.recheck_loaded();
        } else if was_failing {
            self.metrics.reloads_ok.inc();
            tracing::info!(keys = %self.keys_path.display(), %fingerprint, "keyring files load again; the keys in force are unchanged");
        } else {
            tracing::debug!(keys = %self.keys_path.display(), "the keyring read is the keyring in force");
        }
    }

    /// After a keyring change the license in force must still verify.
    fn recheck_loaded(&self) {
        let Source::Deployment { current, .. } = &self.source else {
            return;
        };
        let loaded = current.load_full();
        let Some((_, token)) = &loaded.license else {
            // Nothing in force: the file may now verify under the new keys.
            self.reload_license(Trigger::Files);
            return;
        };
        let (result, answered) = self.verifier.check_traced(token, self.clock.now());
        self.count_answer(answered);
        if let Err(error) = result {
            tracing::error!(%error, "the license in force no longer verifies under the new keyring");
            current.store(Arc::new(Loaded {
                license: None,
                environment: None,
                error: Some(error),
                last_reload: loaded.last_reload.clone(),
            }));
            self.changed.notify_one();
            // The file may hold a newer token signed with the new key.
            self.reload_license(Trigger::Files);
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
                if self.verifier.not_revoked(&license.claims).is_err() {
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
        self.update_revocation_gauges();
        let state = self.state();
        if self.is_per_request() {
            return state;
        }
        self.metrics.set_state(state);
        let expiry = self
            .loaded()
            .and_then(|l| l.license.as_ref().map(|(license, _)| license.claims.exp.0))
            .unwrap_or(0);
        self.metrics
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
            "revocations": self.revocation_status(),
        });
        match &self.source {
            Source::Header { name, forward } => {
                status["source"] = json!("header");
                status["header"] = json!(name.as_str());
                status["forward_token"] = json!(forward);
                status["cached_tokens"] = json!(self.verifier.cache().len());
                status["refused_tokens"] = json!(self.verifier.negative_cache().len());
            }
            Source::Deployment { origin, current } => {
                let loaded = current.load();
                let now = self.clock.now();
                match origin {
                    Origin::File(path) => {
                        status["source"] = json!("file");
                        status["path"] = json!(path.display().to_string());
                    }
                    Origin::Refresh(fetcher) => {
                        status["source"] = json!("refresh");
                        status["url"] = json!(fetcher.url());
                    }
                }
                status["state"] = json!(self.state().as_str());
                let revoked = loaded
                    .license
                    .as_ref()
                    .and_then(|(license, _)| self.verifier.not_revoked(&license.claims).err());
                status["revoked"] = json!(revoked.is_some());
                status["error"] = json!(loaded
                    .error
                    .as_ref()
                    .or(revoked.as_ref())
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

/// The token in a header value: `Bearer <token>` or the bare token. Bytes:
/// whether it is text is checked only when it is not a cached token.
fn bearer_token(value: &[u8]) -> Result<&[u8], LicenseError> {
    let text = value.trim_ascii();
    let token = match text.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case(b"bearer ") => text[7..].trim_ascii_start(),
        _ => text,
    };
    if token.is_empty() || token.eq_ignore_ascii_case(b"bearer") {
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
        assert_eq!(bearer_token(b"Bearer abc").unwrap(), b"abc");
        assert_eq!(bearer_token(b"bearer   abc").unwrap(), b"abc");
        assert_eq!(bearer_token(b" abc ").unwrap(), b"abc");
        assert_eq!(bearer_token(b"Bearer ").unwrap_err(), LicenseError::Missing);
        assert_eq!(bearer_token(b"bearer").unwrap_err(), LicenseError::Missing);
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
