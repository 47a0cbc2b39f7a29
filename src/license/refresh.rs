//! Fetching short-lived license tokens from a license server on a schedule.
//!
//! The timing rules are pure functions ([`next_delay`], [`Backoff`],
//! [`Schedule`]) so they are tested without a clock; [`Fetcher`] does one
//! HTTPS GET; [`run_refresh_loop`] ties them together.
//!
//! Nothing fetched here is trusted: the caller verifies each token
//! (signature, issuer, audience, time) before it replaces the license in
//! force. A hostile or compromised server can therefore withhold a license
//! but never grant one; TLS protects the request's credentials (e.g. an API
//! key header) and keeps an on-path attacker from doing even that.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

#[cfg(test)]
use crate::backoff::backoff_delay;
pub use crate::backoff::Backoff;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, Uri};

use super::{Claims, MAX_TOKEN_BYTES};
pub use crate::remote::FetchErrorKind;
use crate::remote::{shown_url, RemoteClient, SetupError};
use crate::untrusted::printable;

/// The largest response body read: a token of at most [`MAX_TOKEN_BYTES`]
/// plus room for a JSON wrapper and whitespace.
pub const MAX_RESPONSE_BYTES: usize = MAX_TOKEN_BYTES + 4096;

// Setting names used in configuration errors.
const URL_SETTING: &str = "license.refresh.url";
const CA_SETTING: &str = "license.refresh.ca";
const TIMEOUT_SETTING: &str = "license.refresh.timeout";
const BACKOFF_SETTING: &str = "license.refresh.backoff";
const FRACTION_SETTING: &str = "license.refresh.refresh_at_fraction";

/// Where to fetch tokens from, and when.
#[derive(Clone)]
pub struct RefreshSettings {
    /// The token endpoint: `https://` (or `http://` to a loopback address
    /// when [`allow_http`](Self::allow_http) is set).
    pub url: Uri,
    /// Allow plain `http://`, to a loopback address only. For tests and a
    /// local agent on the same host; anything else would expose the request
    /// headers on the network.
    pub allow_http: bool,
    /// A PEM CA bundle to trust instead of the system roots.
    pub ca: Option<PathBuf>,
    /// Bound on one whole fetch: connect, TLS, response and body.
    pub timeout: Duration,
    /// The first retry delay after a failure.
    pub min_backoff: Duration,
    /// The longest retry delay.
    pub max_backoff: Duration,
    /// How far into a token's lifetime (`iat`, else `nbf`, to `exp`) the
    /// next fetch happens, in (0, 1].
    pub refresh_at_fraction: f64,
    /// Extra request headers, e.g. an API key. Sent marked sensitive and
    /// never logged.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl RefreshSettings {
    /// Default [`timeout`](Self::timeout).
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
    /// Default [`min_backoff`](Self::min_backoff).
    pub const DEFAULT_MIN_BACKOFF: Duration = Duration::from_secs(1);
    /// Default [`max_backoff`](Self::max_backoff).
    pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(300);
    /// Default [`refresh_at_fraction`](Self::refresh_at_fraction).
    pub const DEFAULT_REFRESH_AT_FRACTION: f64 = 0.5;

    /// Settings for `url` with every default: system roots, https only.
    pub fn new(url: Uri) -> RefreshSettings {
        RefreshSettings {
            url,
            allow_http: false,
            ca: None,
            timeout: Self::DEFAULT_TIMEOUT,
            min_backoff: Self::DEFAULT_MIN_BACKOFF,
            max_backoff: Self::DEFAULT_MAX_BACKOFF,
            refresh_at_fraction: Self::DEFAULT_REFRESH_AT_FRACTION,
            headers: Vec::new(),
        }
    }
}

impl fmt::Debug for RefreshSettings {
    // Header values are credentials: only their names are shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("RefreshSettings")
            .field("url", &shown_url(&self.url))
            .field("allow_http", &self.allow_http)
            .field("ca", &self.ca)
            .field("timeout", &self.timeout)
            .field("min_backoff", &self.min_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("refresh_at_fraction", &self.refresh_at_fraction)
            .field("headers", &names)
            .finish()
    }
}

/// Refresh settings that cannot work, named by the setting (`license.refresh.*`).
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {message}")]
pub struct RefreshError {
    /// The setting at fault, e.g. `license.refresh.url`.
    pub setting: &'static str,
    /// What is wrong with it.
    pub message: String,
}

/// A failed fetch: the URL (query redacted) and what went wrong.
#[derive(Debug, thiserror::Error)]
#[error("license refresh from {url}: {kind}")]
pub struct FetchError {
    /// The URL fetched, with any query string redacted.
    pub url: String,
    /// What went wrong.
    pub kind: FetchErrorKind,
}

/// Fetches tokens from one URL. Cheap to share by reference.
pub struct Fetcher {
    remote: RemoteClient,
    refresh_at_fraction: f64,
    min_backoff: Duration,
    max_backoff: Duration,
}

impl fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fetcher")
            .field("url", &self.remote.url())
            .field("timeout", &self.remote.timeout())
            .finish_non_exhaustive()
    }
}

impl Fetcher {
    /// Check `settings` and build the HTTPS client (loading the CA bundle,
    /// or the system roots, now rather than at the first fetch).
    pub fn new(settings: &RefreshSettings) -> Result<Fetcher, RefreshError> {
        if settings.timeout.is_zero() {
            return Err(invalid(TIMEOUT_SETTING, "must be more than zero".into()));
        }
        if settings.min_backoff.is_zero() || settings.max_backoff < settings.min_backoff {
            return Err(invalid(
                BACKOFF_SETTING,
                format!(
                    "need 0 < min ({:?}) <= max ({:?})",
                    settings.min_backoff, settings.max_backoff
                ),
            ));
        }
        let fraction = settings.refresh_at_fraction;
        if !(fraction > 0.0 && fraction <= 1.0) {
            return Err(invalid(
                FRACTION_SETTING,
                format!("{fraction} is not in (0, 1]"),
            ));
        }

        let mut headers = HeaderMap::new();
        for (name, value) in &settings.headers {
            let mut value = value.clone();
            value.set_sensitive(true);
            headers.append(name.clone(), value);
        }
        if !headers.contains_key(ACCEPT) {
            headers.insert(
                ACCEPT,
                HeaderValue::from_static(
                    "application/jwt, application/json;q=0.9, text/plain;q=0.8",
                ),
            );
        }
        let remote = RemoteClient::new(
            &settings.url,
            settings.allow_http,
            settings.ca.as_deref(),
            settings.timeout,
            MAX_RESPONSE_BYTES,
            headers,
        )
        .map_err(|error| match error {
            SetupError::Url(message) => invalid(URL_SETTING, message),
            SetupError::Ca(message) => invalid(CA_SETTING, message),
        })?;

        Ok(Fetcher {
            remote,
            refresh_at_fraction: fraction,
            min_backoff: settings.min_backoff,
            max_backoff: settings.max_backoff,
        })
    }

    /// The URL fetched, query redacted, as errors and logs show it.
    pub fn url(&self) -> &str {
        self.remote.url()
    }

    /// GET the URL once and return the token text (not yet verified).
    ///
    /// The response must be 200 with a body of at most
    /// [`MAX_RESPONSE_BYTES`]: either the compact token as text, or a JSON
    /// object with a string `token` (or `license`) field. JSON is recognised
    /// by its content type or a leading `{`, which no compact token has.
    pub async fn fetch(&self) -> Result<String, FetchError> {
        let result = self
            .remote
            .get(HeaderMap::new(), false)
            .await
            .and_then(|fetched| {
                let content_type = fetched
                    .headers
                    .get(CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok());
                extract_token(content_type, &fetched.body).map_err(FetchErrorKind::Response)
            });
        result.map_err(|kind| FetchError {
            url: self.remote.url().to_owned(),
            kind,
        })
    }

    /// A [`Schedule`] with this fetcher's timing settings, starting from the
    /// token in force (if any).
    pub fn schedule(&self, current: Option<Lifetime>) -> Schedule {
        Schedule {
            fraction: self.refresh_at_fraction,
            backoff: Backoff::new(self.min_backoff, self.max_backoff),
            current,
        }
    }
}

fn invalid(setting: &'static str, message: String) -> RefreshError {
    RefreshError { setting, message }
}

/// The token in a 200 response body; the error says what the body is instead.
fn extract_token(content_type: Option<&str>, body: &[u8]) -> Result<String, String> {
    let text = std::str::from_utf8(body)
        .map_err(|_| "the response body is not UTF-8 text".to_owned())?
        .trim();
    if text.is_empty() {
        return Err("the response body is empty".into());
    }
    let media_type = content_type
        .map(|ct| {
            ct.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let is_json =
        media_type == "application/json" || media_type.ends_with("+json") || text.starts_with('{');
    let value: serde_json::Value;
    let token = if is_json {
        value = serde_json::from_str(text)
            .map_err(|e| format!("the response is not valid JSON: {e}"))?;
        let field = ["token", "license"]
            .into_iter()
            .find_map(|name| Some((name, value.get(name)?)));
        match field {
            Some((_, serde_json::Value::String(token))) => token.trim(),
            Some((name, _)) => {
                return Err(format!("`{name}` in the JSON response is not a string"))
            }
            None => return Err("the JSON response has no string `token` or `license` field".into()),
        }
    } else {
        text
    };
    if token.len() > MAX_TOKEN_BYTES {
        return Err(format!(
            "the token is {} bytes, more than the {MAX_TOKEN_BYTES} a license token can be",
            token.len()
        ));
    }
    if !is_compact_jws(token) {
        let shown_type = if media_type.is_empty() {
            "none"
        } else {
            media_type.as_str()
        };
        return Err(format!(
            "the response is not a compact license token (content type {}; body starts `{}`)",
            printable(shown_type.as_bytes(), 60),
            printable(token.as_bytes(), 32)
        ));
    }
    Ok(token.to_owned())
}

/// Three non-empty base64url segments: checked here so that, say, an HTML
/// error page served with 200 gets a clear error naming the fetch, rather
/// than a "malformed token" from verification.
fn is_compact_jws(token: &str) -> bool {
    let mut segments = 0;
    for segment in token.split('.') {
        segments += 1;
        if segment.is_empty()
            || !segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return false;
        }
    }
    segments == 3
}

/// A token's validity window, unix seconds: what the schedule needs to
/// know about the license in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetime {
    /// When the token was issued (`iat`, else `nbf`).
    pub issued: u64,
    /// `exp`.
    pub expires: u64,
}

impl Lifetime {
    /// The lifetime of verified `claims`: from `iat`, else `nbf`, else
    /// `fetched_at` (when there is neither), to `exp`.
    pub fn of(claims: &Claims, fetched_at: u64) -> Lifetime {
        let expires = claims.exp.0;
        let issued = claims
            .iat
            .or(claims.nbf)
            .map_or(fetched_at, |date| date.0)
            .min(expires);
        Lifetime { issued, expires }
    }
}

/// How long until the next fetch, given the token in force was issued at
/// `issued` and expires at `expires` (unix seconds): the point `fraction`
/// of the way through its lifetime, minus `now`.
///
/// Zero when that point has passed or the token has expired: fetch now.
/// Never more than the time left until `expires`. Callers retrying after a
/// zero must go through [`Backoff`] (as [`Schedule`] does) so a server that
/// keeps handing out stale tokens does not cause a busy loop.
pub fn next_delay(now: u64, issued: u64, expires: u64, fraction: f64) -> Duration {
    if now >= expires {
        return Duration::ZERO;
    }
    let issued = issued.min(expires);
    let fraction = if fraction.is_nan() {
        RefreshSettings::DEFAULT_REFRESH_AT_FRACTION
    } else {
        fraction.clamp(0.0, 1.0)
    };
    // Rounded up so a short lifetime still waits at least a second; the
    // float-to-int cast saturates.
    let offset = ((expires - issued) as f64 * fraction).ceil() as u64;
    let refresh_at = issued.saturating_add(offset).min(expires);
    Duration::from_secs(refresh_at.saturating_sub(now))
}

/// When to fetch next: [`next_delay`] while tokens keep coming, [`Backoff`]
/// after failures. Every delay it returns after a fetch is positive, so a
/// driver cannot spin.
#[derive(Debug)]
pub struct Schedule {
    fraction: f64,
    backoff: Backoff,
    current: Option<Lifetime>,
}

impl Schedule {
    /// A schedule with these settings, starting from the token in force.
    pub fn new(settings: &RefreshSettings, current: Option<Lifetime>) -> Schedule {
        Schedule {
            fraction: settings.refresh_at_fraction,
            backoff: Backoff::new(settings.min_backoff, settings.max_backoff),
            current,
        }
    }

    /// The delay before the first fetch: zero without a token in force, or
    /// when it is due for refresh or expired.
    pub fn first_delay(&self, now: u64) -> Duration {
        self.current.map_or(Duration::ZERO, |lifetime| {
            next_delay(now, lifetime.issued, lifetime.expires, self.fraction)
        })
    }

    /// A token with `lifetime` was fetched and accepted at `now`.
    ///
    /// If it is already due for refresh (the server handed out a stale or
    /// very short-lived token), this counts as no progress and backs off
    /// rather than fetching again at once.
    pub fn on_success(&mut self, now: u64, lifetime: Lifetime) -> Duration {
        self.current = Some(lifetime);
        let delay = next_delay(now, lifetime.issued, lifetime.expires, self.fraction);
        if delay.is_zero() {
            return self.backoff.next_delay();
        }
        self.backoff.reset();
        delay
    }

    /// A fetch failed (or its token was rejected) at `now`. While the token
    /// in force is still valid, the retry comes no later than halfway
    /// through its remaining time, so a long backoff cannot sleep through
    /// the last chance to refresh before it expires.
    pub fn on_failure(&mut self, now: u64) -> Duration {
        let delay = self.backoff.next_delay();
        match self.current {
            Some(lifetime) if now < lifetime.expires => {
                let half_left = Duration::from_secs((lifetime.expires - now) / 2);
                delay.min(half_left.max(self.backoff.min()))
            }
            _ => delay,
        }
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.backoff.failures()
    }
}

/// Fetch tokens for ever: the first at once unless `current` (the token in
/// force at startup) is not yet due, then on the [`Schedule`].
///
/// `accept` verifies a fetched token and, if good, puts it in force and
/// returns its lifetime; an error keeps the previous token in force and is
/// retried like a failed fetch. `on_fetch_error` sees each failed fetch
/// (for status reporting). `clock` is the trusted time, unix seconds. Runs
/// until the future is dropped.
pub async fn run_refresh_loop<C, A, E, F>(
    fetcher: &Fetcher,
    current: Option<Lifetime>,
    clock: C,
    mut accept: A,
    mut on_fetch_error: F,
) where
    C: Fn() -> u64,
    A: FnMut(String) -> Result<Lifetime, E>,
    E: fmt::Display,
    F: FnMut(&FetchError),
{
    let mut schedule = fetcher.schedule(current);
    let mut delay = schedule.first_delay(clock());
    loop {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        delay = match fetcher.fetch().await {
            Ok(token) => match accept(token) {
                Ok(lifetime) => {
                    let delay = schedule.on_success(clock(), lifetime);
                    tracing::info!(
                        url = fetcher.url(),
                        expires = lifetime.expires,
                        next_refresh_in = %humantime::format_duration(delay),
                        "license token refreshed"
                    );
                    delay
                }
                Err(error) => {
                    let delay = schedule.on_failure(clock());
                    tracing::error!(
                        %error,
                        url = fetcher.url(),
                        retry_in = %humantime::format_duration(delay),
                        "fetched license token rejected; the license in force is unchanged"
                    );
                    delay
                }
            },
            Err(error) => {
                on_fetch_error(&error);
                let delay = schedule.on_failure(clock());
                tracing::warn!(
                    %error,
                    failures = schedule.failures(),
                    retry_in = %humantime::format_duration(delay),
                    "license refresh failed; the license in force is unchanged"
                );
                delay
            }
        };
    }
}

#[cfg(test)]
mod tests;
