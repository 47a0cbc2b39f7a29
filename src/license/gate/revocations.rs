//! The gate's side of revocation lists: taking lists from their source
//! (file, URL, state file), the `seq` rules, and what `/license` and the
//! metrics show. The lists themselves: [`crate::license::revocation`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{json, Value};

use super::{wall_clock, LicenseGate};
use crate::atomic_file;
use crate::license::revocation::source::{PollError, Poller, RevocationSettings, RevocationSource};
use crate::license::revocation::{admit, Admission, Refusal, RevocationList, MAX_LIST_BYTES};
use crate::license::state::{PersistedState, StateFile};
use crate::watch::Trigger;

/// Where lists come from, and what came last.
pub(super) struct Feed {
    origin: Origin,
    /// The list's own state file; else the license state file holds it.
    state_file: Option<StateFile>,
    max_age: Duration,
    /// What the file last held, with the keyring generation it was
    /// checked under, so an unchanged file is not offered again.
    last_read: Mutex<Option<(Result<String, String>, u64)>>,
    /// When a list was last offered (unix seconds), from where, and what
    /// became of it.
    last_update: Mutex<Option<Update>>,
}

/// A list offered: when (unix seconds), from where, and its fate.
type Update = (u64, String, Result<(), String>);

enum Origin {
    File(PathBuf),
    Url(Arc<Poller>),
}

impl Feed {
    pub(super) fn new(settings: &RevocationSettings) -> Result<Feed, PollError> {
        let origin = match &settings.source {
            RevocationSource::File(path) => Origin::File(path.clone()),
            RevocationSource::Url(poll) => Origin::Url(Arc::new(Poller::new(poll)?)),
        };
        Ok(Feed {
            origin,
            state_file: settings.state_file.clone().map(StateFile::new),
            max_age: settings.max_age,
            last_read: Mutex::new(None),
            last_update: Mutex::new(None),
        })
    }
}

/// Where a list restored at start says it came from.
const FROM_STATE: &str = "the state file";

impl LicenseGate {
    /// The revocation list file, for the file source (watched).
    pub fn revocation_file(&self) -> Option<&Path> {
        match &self.revocation.as_ref()?.origin {
            Origin::File(path) => Some(path),
            Origin::Url(_) => None,
        }
    }

    /// Offer a revocation list (as text) from `from`. A newer list that
    /// verifies is put in force: cached verifications it revokes are
    /// dropped, the deployment license is re-checked, and the list is
    /// persisted. Anything else leaves the list in force, logged and
    /// counted.
    pub fn offer_revocations(&self, text: &str, from: &str) -> Result<Admission, Refusal> {
        let keyring = self.verifier.keyring();
        let issuer = self.verifier.validator().issuer.as_deref();
        let result = RevocationList::verify(text, &keyring, issuer)
            .map_err(Refusal::Invalid)
            .and_then(|list| {
                let in_force = self.verifier.revocations();
                admit(in_force.as_deref(), &list).map(|admission| (admission, list))
            });
        let outcome = match result {
            Ok((Admission::Same, list)) => {
                tracing::debug!(seq = list.seq, from, "the revocation list in force, again");
                Ok(Admission::Same)
            }
            Ok((Admission::Newer, list)) => {
                let list = Arc::new(list);
                // Counted before it is enforced: whoever sees a token
                // refused by this list finds its `seq` on the metrics.
                self.metrics.revocation_update("ok");
                self.metrics
                    .revocation_seq
                    .set(i64::try_from(list.seq).unwrap_or(i64::MAX));
                let purged = self.verifier.set_revocations(Arc::clone(&list));
                tracing::info!(
                    seq = list.seq,
                    iat = list.iat,
                    jti = list.jti.len(),
                    sub = list.sub.len(),
                    purged,
                    from,
                    "revocation list in force"
                );
                if from != FROM_STATE {
                    self.persist_revocations(&list);
                }
                if let Some(loaded) = self.loaded() {
                    if let Some((license, _)) = &loaded.license {
                        if let Err(error) = list.check(&license.claims) {
                            tracing::error!(%error, "the deployment license is revoked");
                        }
                    }
                }
                Ok(Admission::Newer)
            }
            Err(refusal) => {
                tracing::error!(%refusal, result = refusal.label(), from, "revocation list refused; the list in force stays");
                self.metrics.revocation_update(refusal.label());
                Err(refusal)
            }
        };
        if let Some(feed) = &self.revocation {
            *feed.last_update.lock() = Some((
                self.clock.now(),
                from.to_owned(),
                outcome.as_ref().map(|_| ()).map_err(ToString::to_string),
            ));
        }
        self.refresh_state();
        outcome
    }

    /// Re-read the revocation list file (file source). What reads the
    /// same as at the last pass under the same keys is skipped for
    /// [`Trigger::Files`].
    pub(super) fn reload_revocations(&self, trigger: Trigger) {
        let (Some(feed), Some(path)) = (&self.revocation, self.revocation_file()) else {
            return;
        };
        let read = read_list(path);
        let stamp = (read.clone(), self.verifier.keyring().generation());
        {
            let mut last = feed.last_read.lock();
            if trigger == Trigger::Files && last.as_ref() == Some(&stamp) {
                return;
            }
            *last = Some(stamp);
        }
        match read {
            Ok(text) => {
                let _ = self.offer_revocations(&text, &path.display().to_string());
            }
            Err(error) => {
                tracing::warn!(%error, "no revocation list read; the list in force stays");
            }
        }
    }

    /// The task that polls the revocation URL, for the URL source; `None`
    /// otherwise. Runs until dropped.
    pub fn revocation_task(
        self: &Arc<Self>,
    ) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        let Origin::Url(poller) = &self.revocation.as_ref()?.origin else {
            return None;
        };
        let poller = Arc::clone(poller);
        let gate = Arc::clone(self);
        Some(async move {
            let from = poller.url().to_owned();
            let failing = Arc::clone(&gate);
            poller
                .run(
                    |text| {
                        let _ = gate.offer_revocations(&text, &from);
                    },
                    |error| {
                        tracing::warn!(%error, "revocation list fetch failed; the list in force stays");
                        failing.metrics.revocation_update("fetch_error");
                        if let Some(feed) = &failing.revocation {
                            *feed.last_update.lock() =
                                Some((failing.clock.now(), from.clone(), Err(error)));
                        }
                    },
                )
                .await;
        })
    }

    /// Put the persisted list back in force, so a restart while the source
    /// is unreachable still enforces it.
    pub(super) fn restore_revocations(&self) {
        let Some(feed) = &self.revocation else {
            return;
        };
        let Some(file) = feed.state_file.as_ref().or(self.state_file.as_ref()) else {
            return;
        };
        match file.load() {
            Ok(PersistedState {
                revocation_list: Some(text),
                ..
            }) => {
                let _ = self.offer_revocations(&text, FROM_STATE);
            }
            Ok(_) => {}
            Err(error) => {
                tracing::error!(%error, "cannot restore the revocation list; starting without it");
            }
        }
    }

    /// The list for the license state file: only when the list has no
    /// state file of its own.
    pub(super) fn revocations_for_license_state(&self) -> Option<String> {
        let feed = self.revocation.as_ref()?;
        if feed.state_file.is_some() {
            return None;
        }
        self.verifier
            .revocations()
            .map(|list| list.text.to_string())
    }

    fn persist_revocations(&self, list: &RevocationList) {
        let Some(feed) = &self.revocation else {
            return;
        };
        match &feed.state_file {
            Some(file) => {
                let state = PersistedState {
                    highest_trusted_time: self.clock.floor(),
                    revocation_list: Some(list.text.to_string()),
                    updated_at: wall_clock(),
                    ..PersistedState::default()
                };
                if let Err(error) = file.save(&state) {
                    tracing::error!(%error, "cannot write the revocation state file");
                }
            }
            None => self.persist(None),
        }
    }

    /// The revocation gauges: `seq`, age and its bound.
    pub(super) fn update_revocation_gauges(&self) {
        let Some(feed) = &self.revocation else {
            return;
        };
        let metrics = &self.metrics;
        let now = self.clock.now();
        let list = self.verifier.revocations();
        let seq = list.as_ref().map_or(0, |l| l.seq);
        let age = now.saturating_sub(list.as_ref().map_or(0, |l| l.iat));
        metrics
            .revocation_seq
            .set(i64::try_from(seq).unwrap_or(i64::MAX));
        metrics
            .revocation_age
            .set(i64::try_from(age).unwrap_or(i64::MAX));
        metrics
            .revocation_max_age
            .set(i64::try_from(feed.max_age.as_secs()).unwrap_or(i64::MAX));
    }

    /// What `/license` shows of revocation: `null` without a source.
    pub(super) fn revocation_status(&self) -> Value {
        let Some(feed) = &self.revocation else {
            return Value::Null;
        };
        let now = self.clock.now();
        let (source, location) = match &feed.origin {
            Origin::File(path) => ("file", path.display().to_string()),
            Origin::Url(poller) => ("url", poller.url().to_owned()),
        };
        let list = self.verifier.revocations().map(|list| {
            let age = now.saturating_sub(list.iat);
            json!({
                "seq": list.seq,
                "iat": list.iat,
                "iss": list.iss,
                "kid": list.kid,
                "age_seconds": age,
                "stale": age > feed.max_age.as_secs(),
                "revoked_jti": list.jti.len(),
                "revoked_sub": list.sub.len(),
            })
        });
        let last_update = feed.last_update.lock().as_ref().map(|(at, from, result)| {
            json!({"at": at, "from": from, "ok": result.is_ok(), "error": result.as_ref().err()})
        });
        json!({
            "source": source,
            "from": location,
            "max_age_seconds": feed.max_age.as_secs(),
            "list": list,
            "last_update": last_update,
        })
    }
}

/// The list file's text, or why there is none.
fn read_list(path: &Path) -> Result<String, String> {
    let shown = path.display();
    let bytes = atomic_file::read_at_most(path, MAX_LIST_BYTES as u64 + 1024)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{shown}: no such file"))?;
    if bytes.len() > MAX_LIST_BYTES + 1024 {
        return Err(format!(
            "{shown}: larger than a revocation list can be ({MAX_LIST_BYTES} bytes)"
        ));
    }
    let text = String::from_utf8(bytes).map_err(|_| format!("{shown}: not text"))?;
    Ok(text.trim().to_owned())
}
