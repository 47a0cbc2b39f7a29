//! Where an issuer's public keys come from, and how they are kept current:
//! a JWKS file re-read when it changes, or the identity provider's JWKS URL
//! fetched on schedule, when a token names a `kid` not yet known, and kept
//! in a state file across restarts.
//!
//! Trust: a JWKS holds public keys only, and whoever can change what the
//! sidecar reads here can mint users. The URL is therefore `https://` with
//! a verified certificate (plain `http://` only to loopback, for tests and
//! local providers), redirects are not followed, and nothing fetched is
//! used until the keyring parser accepts it; a document it refuses leaves
//! the last good keys in force. A token's `kid` never reaches a URL or a
//! path: an unknown one can only ask for the configured URL to be fetched
//! again, at most once per `min_refresh`.
//!
//! This module does not know the keyring type: [`JwksKeys::new`] takes
//! what parses the bytes and what puts the result in force, as closures.
//!
//! Timing, as pure functions tested without a clock: [`refresh_delay`]
//! (the response's `Cache-Control: max-age`, clamped to `[min_refresh,
//! refresh]`), [`Backoff`] after failures.

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use http::{HeaderMap, HeaderValue, StatusCode};
use parking_lot::Mutex;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use super::settings::{JwksFetchSettings, JwksSource};
use crate::backoff::Backoff;
use crate::lifecycle::Lifecycle;
use crate::metrics::Registry;
use crate::remote::{FetchErrorKind, RemoteClient, SetupError};
use crate::untrusted::printable;
use crate::watch::{dir_of, settle, spawn_sighup, watch_dirs, Trigger};

mod state;
mod status;

#[cfg(test)]
mod tests;

pub use state::{JwksStateEntry, JwksStateFile, JWKS_STATE_VERSION, MAX_JWKS_STATE_BYTES};
pub use status::{
    FetchResult, IssuerJwksMetrics, JwksBoard, JwksMetrics, JwksOrigin, JwksStatus,
    JwksStatusSnapshot, USER_KEYS_READY,
};

/// The largest JWKS read, fetched or from a file. Real ones are a few KiB
/// (a handful of RSA keys); a megabyte leaves room for certificate chains
/// (`x5c`) and stops a hostile server from filling memory.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// The longest `ETag` kept and sent back: validators are short, and this
/// one is untrusted and stored in the state file.
const MAX_ETAG_BYTES: usize = 1024;

const ACCEPT_JWKS: &str = "application/jwk-set+json, application/json";

// === impl JwksError ===

/// A JWKS source that cannot work, named by its setting (`jwks.url`,
/// `jwks.file`, …, relative to the issuer).
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {message}")]
pub struct JwksError {
    /// The setting at fault.
    pub setting: &'static str,
    /// What is wrong, e.g. the file and where its JSON stops parsing.
    pub message: String,
}

fn invalid(setting: &'static str, message: String) -> JwksError {
    JwksError { setting, message }
}

/// A failed fetch: the URL (query redacted) and what went wrong.
#[derive(Debug, thiserror::Error)]
#[error("JWKS fetch from {url}: {kind}")]
pub struct JwksFetchError {
    /// The URL fetched, with any query string redacted.
    pub url: String,
    /// What went wrong.
    pub kind: FetchErrorKind,
}

// === impl JwksFetcher ===

/// What a fetch brought.
#[derive(Debug, PartialEq, Eq)]
pub struct JwksResponse {
    /// The document; `None` for `304 Not Modified`.
    pub jwks: Option<Bytes>,
    /// Its `ETag`, if it has a usable one.
    pub etag: Option<String>,
    /// `Cache-Control: max-age` (zero for `no-cache` / `no-store`).
    pub max_age: Option<Duration>,
    /// `Content-Type`, for error messages.
    pub content_type: Option<String>,
}

/// Fetches one issuer's JWKS URL.
pub struct JwksFetcher {
    remote: RemoteClient,
    refresh: Duration,
    min_refresh: Duration,
    min_backoff: Duration,
    max_backoff: Duration,
}

impl fmt::Debug for JwksFetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwksFetcher")
            .field("url", &self.remote.url())
            .field("refresh", &self.refresh)
            .field("min_refresh", &self.min_refresh)
            .finish_non_exhaustive()
    }
}

impl JwksFetcher {
    /// Check `settings` and build the HTTPS client (loading the CA bundle,
    /// or the system roots, now rather than at the first fetch).
    pub fn new(settings: &JwksFetchSettings) -> Result<JwksFetcher, JwksError> {
        if settings.timeout.is_zero() {
            return Err(invalid("jwks.timeout", "must be more than zero".into()));
        }
        if settings.min_refresh.is_zero() || settings.refresh < settings.min_refresh {
            return Err(invalid(
                "jwks.min_refresh",
                format!(
                    "need 0 < min_refresh ({}) <= refresh ({})",
                    humantime::format_duration(settings.min_refresh),
                    humantime::format_duration(settings.refresh)
                ),
            ));
        }
        if settings.min_backoff.is_zero() || settings.max_backoff < settings.min_backoff {
            return Err(invalid(
                "jwks.backoff",
                format!(
                    "need 0 < min ({}) <= max ({})",
                    humantime::format_duration(settings.min_backoff),
                    humantime::format_duration(settings.max_backoff)
                ),
            ));
        }
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static(ACCEPT_JWKS));
        let remote = RemoteClient::new(
            &settings.url,
            settings.allow_http,
            settings.ca.as_deref(),
            settings.timeout,
            MAX_JWKS_BYTES,
            headers,
        )
        .map_err(|error| match error {
            SetupError::Url(message) => invalid("jwks.url", message),
            SetupError::Ca(message) => invalid("jwks.ca", message),
        })?;
        Ok(JwksFetcher {
            remote,
            refresh: settings.refresh,
            min_refresh: settings.min_refresh,
            min_backoff: settings.min_backoff,
            max_backoff: settings.max_backoff,
        })
    }

    /// The URL fetched, query redacted, as errors and logs show it.
    pub fn url(&self) -> &str {
        self.remote.url()
    }

    /// GET the JWKS once; with `etag` (of the keys in force) as
    /// `If-None-Match`, so an unchanged set costs the provider a 304.
    pub async fn fetch(&self, etag: Option<&str>) -> Result<JwksResponse, JwksFetchError> {
        let mut extra = HeaderMap::new();
        let etag = etag.and_then(|etag| HeaderValue::from_str(etag).ok());
        let conditional = etag.is_some();
        if let Some(etag) = etag {
            extra.insert(IF_NONE_MATCH, etag);
        }
        let fetched = self
            .remote
            .get(extra, conditional)
            .await
            .map_err(|kind| JwksFetchError {
                url: self.url().to_owned(),
                kind,
            })?;
        let header = |name| {
            fetched
                .headers
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
                .map(str::to_owned)
        };
        Ok(JwksResponse {
            jwks: (fetched.status != StatusCode::NOT_MODIFIED).then_some(fetched.body),
            etag: header(ETAG).filter(|etag| !etag.is_empty() && etag.len() <= MAX_ETAG_BYTES),
            max_age: max_age(&fetched.headers),
            content_type: header(CONTENT_TYPE),
        })
    }

    /// How long until the next fetch after a success whose response said
    /// `max_age`: see [`refresh_delay`].
    pub fn next_refresh(&self, max_age: Option<Duration>) -> Duration {
        refresh_delay(max_age, self.min_refresh, self.refresh)
    }
}

/// The delay before the next scheduled fetch: the response's `max-age`,
/// else `refresh`, never below `min_refresh` (a provider answering
/// `max-age=0` must not be polled in a loop) nor above `refresh` (keys
/// revoked at the provider reach the sidecar within `refresh`, whatever
/// the cache headers say).
pub fn refresh_delay(
    max_age: Option<Duration>,
    min_refresh: Duration,
    refresh: Duration,
) -> Duration {
    max_age.unwrap_or(refresh).min(refresh).max(min_refresh)
}

/// `Cache-Control: max-age` of a response (RFC 9111 §5.2.2.1): the
/// smallest given; `no-cache` and `no-store` count as zero. `s-maxage`
/// is for shared caches, which the sidecar is not.
pub fn max_age(headers: &HeaderMap) -> Option<Duration> {
    let mut found: Option<u64> = None;
    let directives = headers
        .get_all(CACHE_CONTROL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','));
    for directive in directives {
        let (name, argument) = match directive.split_once('=') {
            Some((name, argument)) => (name.trim(), Some(argument.trim().trim_matches('"'))),
            None => (directive.trim(), None),
        };
        let seconds = if name.eq_ignore_ascii_case("max-age") {
            // Digits only; saturating, since the delay is clamped anyway.
            match argument {
                Some(digits)
                    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) =>
                {
                    digits.parse::<u64>().unwrap_or(u64::MAX)
                }
                _ => continue,
            }
        } else if name.eq_ignore_ascii_case("no-cache") || name.eq_ignore_ascii_case("no-store") {
            0
        } else {
            continue;
        };
        found = Some(found.map_or(seconds, |smallest| smallest.min(seconds)));
    }
    found.map(Duration::from_secs)
}

// === impl JwksKeys ===

/// Parses a JWKS and puts it in force: whether the keys changed, or why
/// the document was refused.
type Apply = Box<dyn Fn(&[u8]) -> Result<bool, String> + Send + Sync>;

/// One issuer's keys: what parses a JWKS and puts it in force, the last
/// good document, and the issuer's status and metrics.
pub struct JwksKeys {
    issuer: String,
    apply: Apply,
    status: JwksStatus,
    metrics: IssuerJwksMetrics,
    current: Mutex<Option<Current>>,
}

impl fmt::Debug for JwksKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwksKeys")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

/// The document in force and its validator.
struct Current {
    raw: Bytes,
    etag: Option<String>,
}

/// What became of a document offered to [`JwksKeys`].
enum Offer {
    /// Parsed and put in force; `install` said the keys changed.
    Changed,
    /// The document in force, or one whose keys `install` found the same.
    Unchanged,
    /// Refused by the parser; the keys in force stay.
    Invalid(String),
}

impl JwksKeys {
    /// Keys for `issuer`: a JWKS becomes keys through `parse` (its error
    /// text is shown as is, so it should say where the JSON stops being
    /// valid), and `install` puts them in force, returning whether they
    /// differ from those in force before (which decides the `changed` and
    /// `unchanged` results, and whether the state file is written).
    pub fn new<K, E, P, I>(
        issuer: &str,
        parse: P,
        install: I,
        status: JwksStatus,
        metrics: IssuerJwksMetrics,
    ) -> JwksKeys
    where
        E: fmt::Display,
        P: Fn(&[u8]) -> Result<K, E> + Send + Sync + 'static,
        I: Fn(K) -> bool + Send + Sync + 'static,
    {
        JwksKeys {
            issuer: issuer.to_owned(),
            apply: Box::new(move |bytes| {
                parse(bytes)
                    .map(&install)
                    .map_err(|error| error.to_string())
            }),
            status,
            metrics,
            current: Mutex::new(None),
        }
    }

    /// The issuer.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Its status.
    pub fn status(&self) -> &JwksStatus {
        &self.status
    }

    /// Put `issuer`'s JWKS from the state file in force, unless keys are in
    /// force already. Returns whether it did.
    pub fn restore(&self, state: &JwksStateFile) -> bool {
        if self.current.lock().is_some() {
            return false;
        }
        let Some(entry) = state.entry(&self.issuer) else {
            return false;
        };
        match self.offer(Bytes::from(entry.jwks), entry.etag) {
            Offer::Changed | Offer::Unchanged => {
                self.status.succeeded(JwksOrigin::State, entry.fetched_at);
                self.metrics.succeeded_at(entry.fetched_at);
                tracing::info!(
                    issuer = self.issuer,
                    fetched_at = entry.fetched_at,
                    state_file = %state.path().display(),
                    "user JWKS restored from the state file"
                );
                true
            }
            Offer::Invalid(error) => {
                tracing::warn!(
                    issuer = self.issuer,
                    %error,
                    state_file = %state.path().display(),
                    "the state file's JWKS does not parse; ignored"
                );
                false
            }
        }
    }

    fn etag(&self) -> Option<String> {
        self.current.lock().as_ref()?.etag.clone()
    }

    fn same_as_current(&self, raw: &[u8]) -> bool {
        self.current
            .lock()
            .as_ref()
            .is_some_and(|current| current.raw == raw)
    }

    /// Parse `raw` and put it in force, unless it is the document in force
    /// already (then only its validator is updated).
    fn offer(&self, raw: Bytes, etag: Option<String>) -> Offer {
        if let Some(current) = self.current.lock().as_mut() {
            if current.raw == raw {
                current.etag = etag;
                return Offer::Unchanged;
            }
        }
        match (self.apply)(&raw) {
            Ok(changed) => {
                *self.current.lock() = Some(Current { raw, etag });
                if changed {
                    Offer::Changed
                } else {
                    Offer::Unchanged
                }
            }
            Err(error) => Offer::Invalid(error),
        }
    }

    /// A fetch or read succeeded with `result` at `at`.
    fn succeeded(&self, result: FetchResult, source: JwksOrigin, at: u64) {
        self.metrics.count(result);
        self.metrics.succeeded_at(at);
        self.status.succeeded(source, at);
    }

    /// A fetch or read failed (`Error`) or was refused (`Invalid`).
    fn failed(&self, result: FetchResult, error: String) {
        self.metrics.count(result);
        self.status.failed(error);
    }
}

// === run_jwks_loop ===

/// Keep `keys` current from `fetcher`'s URL until `shutdown` resolves:
///
/// - the copy in `state` (if any, and nothing is in force yet) is put in
///   force first, so tokens verify while the first fetch runs or fails;
/// - a fetch at once, then after [`JwksFetcher::next_refresh`];
/// - after a failure, or a document that does not parse, the last good
///   keys stay and the fetch is retried after a [`Backoff`] delay;
/// - when `unknown_kid` is notified (a token named a `kid` not in force),
///   a fetch as soon as `min_refresh` has passed since the last one, so
///   however many tokens ask, one fetch per `min_refresh` window. While
///   failing, the back-off's retry stands instead. Notify it with
///   [`Notify::notify_one`], which is kept while a fetch runs.
///
/// New keys are written to `state`. Dropping the future also stops it.
pub async fn run_jwks_loop(
    fetcher: &JwksFetcher,
    keys: &JwksKeys,
    state: Option<&JwksStateFile>,
    unknown_kid: &Notify,
    shutdown: impl Future<Output = ()>,
) {
    if let Some(state) = state {
        keys.restore(state);
    }
    tokio::pin!(shutdown);
    let mut backoff = Backoff::new(fetcher.min_backoff, fetcher.max_backoff);
    let mut next = Instant::now();
    let mut last_attempt: Option<Instant> = None;
    loop {
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => return,
                () = tokio::time::sleep_until(next) => break,
                () = unknown_kid.notified() => {
                    if backoff.failures() == 0 {
                        let allowed = last_attempt.map_or_else(Instant::now, |at| at + fetcher.min_refresh);
                        next = next.min(allowed);
                    }
                }
            }
        }
        last_attempt = Some(Instant::now());
        let etag = keys.etag();
        let fetched = tokio::select! {
            biased;
            () = &mut shutdown => return,
            fetched = fetcher.fetch(etag.as_deref()) => fetched,
        };
        let delay = match fetched {
            Ok(response) => match accept(fetcher, keys, state, response) {
                Ok(delay) => {
                    backoff.reset();
                    delay
                }
                Err(error) => {
                    let delay = backoff.next_delay();
                    tracing::error!(
                        issuer = keys.issuer,
                        %error,
                        retry_in = %humantime::format_duration(delay),
                        "fetched user JWKS refused; the keys in force are kept"
                    );
                    delay
                }
            },
            Err(error) => {
                keys.failed(FetchResult::Error, error.to_string());
                let delay = backoff.next_delay();
                tracing::warn!(
                    issuer = keys.issuer,
                    %error,
                    failures = backoff.failures(),
                    retry_in = %humantime::format_duration(delay),
                    "user JWKS fetch failed; the keys in force are kept"
                );
                delay
            }
        };
        next = Instant::now() + delay;
    }
}

/// Put a fetched response in force; the delay until the next fetch, or
/// why the document was refused.
fn accept(
    fetcher: &JwksFetcher,
    keys: &JwksKeys,
    state: Option<&JwksStateFile>,
    response: JwksResponse,
) -> Result<Duration, String> {
    let now = unix_now();
    let delay = fetcher.next_refresh(response.max_age);
    let Some(jwks) = response.jwks else {
        if let Some(etag) = response.etag {
            if let Some(current) = keys.current.lock().as_mut() {
                current.etag = Some(etag);
            }
        }
        keys.succeeded(FetchResult::NotModified, JwksOrigin::Fetch, now);
        tracing::debug!(issuer = keys.issuer, "user JWKS not modified");
        return Ok(delay);
    };
    let offered = keys.offer(jwks.clone(), response.etag.clone());
    match offered {
        Offer::Changed => {
            keys.succeeded(FetchResult::Changed, JwksOrigin::Fetch, now);
            tracing::info!(
                issuer = keys.issuer,
                url = fetcher.url(),
                next_refresh_in = %humantime::format_duration(delay),
                "user JWKS updated"
            );
        }
        Offer::Unchanged => {
            keys.succeeded(FetchResult::Unchanged, JwksOrigin::Fetch, now);
            tracing::debug!(issuer = keys.issuer, "user JWKS unchanged");
        }
        Offer::Invalid(error) => {
            let error = format!(
                "JWKS from {} refused: {error} (content type {}; body starts `{}`)",
                fetcher.url(),
                printable(
                    response
                        .content_type
                        .as_deref()
                        .unwrap_or("none")
                        .as_bytes(),
                    60
                ),
                printable(&jwks, 60)
            );
            keys.failed(FetchResult::Invalid, error.clone());
            return Err(error);
        }
    }
    // Written when the document in force differs from the file's copy:
    // new keys, and any earlier save that failed.
    if let Some(state) = state {
        save(state, keys, &jwks, now, response.etag);
    }
    Ok(delay)
}

fn save(state: &JwksStateFile, keys: &JwksKeys, jwks: &[u8], now: u64, etag: Option<String>) {
    // The parser took it, so it is text; a lossy copy would not verify.
    let Ok(jwks) = std::str::from_utf8(jwks) else {
        return;
    };
    let entry = JwksStateEntry {
        jwks: jwks.to_owned(),
        fetched_at: now,
        etag,
    };
    if let Err(error) = state.record(&keys.issuer, entry) {
        tracing::error!(issuer = keys.issuer, %error, "cannot write the user JWKS state file");
    }
}

// === JWKS files ===

/// Read the JWKS file at `path` and put it in force: at start, where a
/// missing or bad file is an error naming the file (and, from the parser,
/// where its JSON stops being valid).
pub fn load_jwks_file(path: &Path, keys: &JwksKeys) -> Result<(), JwksError> {
    let (result, message) = match read_file(path) {
        Err(error) => (FetchResult::Error, error),
        Ok(raw) => match keys.offer(raw, None) {
            Offer::Changed | Offer::Unchanged => {
                keys.succeeded(FetchResult::Changed, JwksOrigin::File, unix_now());
                tracing::info!(issuer = keys.issuer, path = %path.display(), "user JWKS loaded");
                return Ok(());
            }
            Offer::Invalid(error) => (FetchResult::Invalid, format!("{}: {error}", path.display())),
        },
    };
    keys.failed(result, message.clone());
    Err(invalid("jwks.file", message))
}

fn read_file(path: &Path) -> Result<Bytes, String> {
    match crate::atomic_file::read_at_most(path, MAX_JWKS_BYTES as u64) {
        Ok(Some(bytes)) if bytes.len() > MAX_JWKS_BYTES => Err(format!(
            "{}: larger than {MAX_JWKS_BYTES} bytes, more than a JWKS can be",
            path.display()
        )),
        Ok(Some(bytes)) => Ok(Bytes::from(bytes)),
        Ok(None) => Err(format!("{}: no such file", path.display())),
        Err(error) => Err(error.to_string()),
    }
}

/// Re-read the JWKS file at `path` when its directory changes (a
/// Kubernetes ConfigMap's symlink swap included) or on SIGHUP, until
/// `shutdown` resolves; what does not parse leaves the last good keys in
/// force. [`load_jwks_file`] has read it once before.
pub async fn run_jwks_file_loop(path: &Path, keys: &JwksKeys, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let (tx, mut events) = mpsc::unbounded_channel();
    let _watcher = watch_dirs(&[dir_of(path)], tx.clone());
    spawn_sighup(tx, "user JWKS files");
    // Whatever changed between the first read and the watch.
    let mut last_read = None;
    reload_file(path, keys, Trigger::Files, &mut last_read);
    loop {
        let first = tokio::select! {
            biased;
            () = &mut shutdown => return,
            event = events.recv() => match event {
                Some(first) => first,
                None => return,
            },
        };
        let trigger = settle(&mut events, first).await;
        reload_file(path, keys, trigger, &mut last_read);
    }
}

/// One reload pass. On a file event, content that reads as at the last
/// pass is skipped; SIGHUP checks it again, so an error still present is
/// reported again.
fn reload_file(
    path: &Path,
    keys: &JwksKeys,
    trigger: Trigger,
    last_read: &mut Option<Result<Bytes, String>>,
) {
    let read = read_file(path);
    let seen = match last_read.as_ref() {
        Some(last) => *last == read,
        None => read.as_ref().is_ok_and(|raw| keys.same_as_current(raw)),
    };
    *last_read = Some(read.clone());
    if seen && trigger == Trigger::Files {
        return;
    }
    let raw = match read {
        Ok(raw) => raw,
        Err(error) => {
            tracing::error!(issuer = keys.issuer, %error, "cannot read the user JWKS file; the keys in force are kept");
            keys.failed(FetchResult::Error, error);
            return;
        }
    };
    let now = unix_now();
    match keys.offer(raw, None) {
        Offer::Changed => {
            keys.succeeded(FetchResult::Changed, JwksOrigin::File, now);
            tracing::info!(issuer = keys.issuer, path = %path.display(), "user JWKS reloaded");
        }
        Offer::Unchanged => keys.succeeded(FetchResult::Unchanged, JwksOrigin::File, now),
        Offer::Invalid(error) => {
            let error = format!("{}: {error}", path.display());
            tracing::error!(issuer = keys.issuer, %error, "user JWKS file refused; the keys in force are kept");
            keys.failed(FetchResult::Invalid, error);
        }
    }
}

// === impl IssuerJwks ===

/// What every issuer's source shares: the status board (and readiness),
/// the metrics, and the state file.
#[derive(Clone, Debug)]
pub struct JwksContext {
    /// Every issuer's status.
    pub board: JwksBoard,
    /// The JWKS metric families.
    pub metrics: Arc<JwksMetrics>,
    /// The state file, if configured.
    pub state: Option<Arc<JwksStateFile>>,
}

impl JwksContext {
    /// Register the metrics on `registry`, keep [`USER_KEYS_READY`] on
    /// `lifecycle`, and read the state file at `state_file` (never fatal).
    pub fn new(
        registry: &Registry,
        lifecycle: Option<Arc<Lifecycle>>,
        state_file: Option<&Path>,
    ) -> JwksContext {
        JwksContext {
            board: JwksBoard::new(lifecycle),
            metrics: Arc::new(JwksMetrics::new(registry)),
            state: state_file.map(|path| Arc::new(JwksStateFile::open(path))),
        }
    }
}

/// One issuer's key source, set up and ready to run.
#[derive(Debug)]
pub struct IssuerJwks {
    keys: JwksKeys,
    origin: Origin,
}

#[derive(Debug)]
enum Origin {
    File(PathBuf),
    Url {
        fetcher: Box<JwksFetcher>,
        state: Option<Arc<JwksStateFile>>,
    },
}

impl IssuerJwks {
    /// Set up `issuer`'s keys from `source`, at start, before the port is
    /// bound: a file is read and put in force now (an error if it cannot
    /// be), a URL's settings are checked and the state file's copy put in
    /// force. See [`JwksKeys::new`] for `parse` and `install`.
    pub fn new<K, E, P, I>(
        issuer: &str,
        source: &JwksSource,
        context: &JwksContext,
        parse: P,
        install: I,
    ) -> Result<IssuerJwks, JwksError>
    where
        E: fmt::Display,
        P: Fn(&[u8]) -> Result<K, E> + Send + Sync + 'static,
        I: Fn(K) -> bool + Send + Sync + 'static,
    {
        let (location, origin) = match source {
            JwksSource::File(path) => (path.display().to_string(), Origin::File(path.clone())),
            JwksSource::Url(settings) => {
                let fetcher = Box::new(JwksFetcher::new(settings)?);
                (
                    fetcher.url().to_owned(),
                    Origin::Url {
                        fetcher,
                        state: context.state.clone(),
                    },
                )
            }
        };
        let status = context.board.register(issuer, &location);
        let keys = JwksKeys::new(
            issuer,
            parse,
            install,
            status,
            context.metrics.issuer(issuer),
        );
        match &origin {
            Origin::File(path) => load_jwks_file(path, &keys)?,
            Origin::Url {
                state: Some(state), ..
            } => {
                keys.restore(state);
            }
            Origin::Url { state: None, .. } => {}
        }
        Ok(IssuerJwks { keys, origin })
    }

    /// The issuer's status.
    pub fn status(&self) -> &JwksStatus {
        self.keys.status()
    }

    /// Keep the keys current until `shutdown` resolves (the gateway passes
    /// the lifecycle reaching [`Phase::Stopping`](crate::lifecycle::Phase)):
    /// [`run_jwks_loop`] for a URL, [`run_jwks_file_loop`] for a file (which
    /// has no use for `unknown_kid`).
    pub async fn run(self, unknown_kid: Arc<Notify>, shutdown: impl Future<Output = ()>) {
        match &self.origin {
            Origin::File(path) => run_jwks_file_loop(path, &self.keys, shutdown).await,
            Origin::Url { fetcher, state } => {
                run_jwks_loop(
                    fetcher,
                    &self.keys,
                    state.as_deref(),
                    &unknown_kid,
                    shutdown,
                )
                .await;
            }
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
