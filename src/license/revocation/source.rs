//! Where revocation lists come from: a file (watched with the license
//! files, see [`crate::license::watch`]) or an HTTPS URL polled on an
//! interval, with back-off after failures.
//!
//! As with the license refresh, nothing fetched is trusted: the gate
//! verifies each list and applies the `seq` rules before it replaces the
//! list in force. A hostile server can withhold a newer list (the
//! `LicensegateRevocationListStale` alert catches that) but cannot lift a
//! revocation or forge one.

use std::path::PathBuf;
use std::time::Duration;

use http::header::ACCEPT;
use http::{HeaderMap, HeaderValue, Uri};

use super::MAX_LIST_BYTES;
use crate::backoff::Backoff;
use crate::remote::{FetchErrorKind, RemoteClient, SetupError};
use crate::untrusted::printable;

/// `license.revocations`: where lists come from and how old one may get.
#[derive(Clone, Debug)]
pub struct RevocationSettings {
    /// The file or the URL.
    pub source: RevocationSource,
    /// Where the list in force survives restarts, when not in the license
    /// state file.
    pub state_file: Option<PathBuf>,
    /// Age (from the list's `iat`) past which the list is reported stale.
    pub max_age: Duration,
}

impl RevocationSettings {
    /// Default [`max_age`](Self::max_age).
    pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(3600);
}

/// Where revocation lists come from.
#[derive(Clone, Debug)]
pub enum RevocationSource {
    /// A mounted file, reloaded when it changes and on SIGHUP.
    File(PathBuf),
    /// An HTTPS endpoint, polled.
    Url(PollSettings),
}

/// How to poll a revocation endpoint.
#[derive(Clone, Debug)]
pub struct PollSettings {
    /// `https://`, or `http://` to a loopback address with `allow_http`.
    pub url: Uri,
    /// Allow plain `http://`, to a loopback address only.
    pub allow_http: bool,
    /// A PEM CA bundle to trust instead of the system roots.
    pub ca: Option<PathBuf>,
    /// Bound on one whole fetch.
    pub timeout: Duration,
    /// Time between fetches while they succeed.
    pub interval: Duration,
    /// The first retry delay after a failure.
    pub min_backoff: Duration,
    /// The longest retry delay.
    pub max_backoff: Duration,
}

impl PollSettings {
    /// Default [`interval`](Self::interval).
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);

    /// Settings for `url` with every default: system roots, https only, the
    /// license refresh's timeout and back-off.
    pub fn new(url: Uri) -> PollSettings {
        use crate::license::refresh::RefreshSettings as R;
        PollSettings {
            url,
            allow_http: false,
            ca: None,
            timeout: R::DEFAULT_TIMEOUT,
            interval: Self::DEFAULT_INTERVAL,
            min_backoff: R::DEFAULT_MIN_BACKOFF,
            max_backoff: R::DEFAULT_MAX_BACKOFF,
        }
    }
}

/// Settings that cannot work, named by the setting.
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {message}")]
pub struct PollError {
    /// The setting at fault, e.g. `license.revocations.url`.
    pub setting: &'static str,
    /// What is wrong with it.
    pub message: String,
}

/// Fetches revocation lists from one URL.
#[derive(Debug)]
pub struct Poller {
    remote: RemoteClient,
    interval: Duration,
    min_backoff: Duration,
    max_backoff: Duration,
}

impl Poller {
    /// Check `settings` and build the client (CA bundle loaded now).
    pub fn new(settings: &PollSettings) -> Result<Poller, PollError> {
        let invalid = |setting, message| PollError { setting, message };
        for (setting, value) in [
            ("license.revocations.timeout", settings.timeout),
            ("license.revocations.interval", settings.interval),
        ] {
            if value.is_zero() {
                return Err(invalid(setting, "must be more than zero".into()));
            }
        }
        if settings.min_backoff.is_zero() || settings.max_backoff < settings.min_backoff {
            return Err(invalid(
                "license.revocations.min_backoff",
                format!(
                    "need 0 < min_backoff ({:?}) <= max_backoff ({:?})",
                    settings.min_backoff, settings.max_backoff
                ),
            ));
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            ACCEPT,
            HeaderValue::from_static("application/jwt, text/plain;q=0.8"),
        );
        let remote = RemoteClient::new(
            &settings.url,
            settings.allow_http,
            settings.ca.as_deref(),
            settings.timeout,
            MAX_LIST_BYTES + 1024,
            headers,
        )
        .map_err(|error| match error {
            SetupError::Url(message) => invalid("license.revocations.url", message),
            SetupError::Ca(message) => invalid("license.revocations.ca", message),
        })?;
        Ok(Poller {
            remote,
            interval: settings.interval,
            min_backoff: settings.min_backoff,
            max_backoff: settings.max_backoff,
        })
    }

    /// The URL, query redacted, as logs show it.
    pub fn url(&self) -> &str {
        self.remote.url()
    }

    /// GET the list once: the compact JWS as the body (not yet verified).
    pub async fn fetch(&self) -> Result<String, String> {
        let fetched =
            self.remote
                .get(HeaderMap::new(), false)
                .await
                .map_err(|kind: FetchErrorKind| {
                    format!("revocation list from {}: {kind}", self.url())
                })?;
        let text = std::str::from_utf8(&fetched.body)
            .map_err(|_| {
                format!(
                    "revocation list from {}: the body is not text (starts `{}`)",
                    self.url(),
                    printable(&fetched.body, 32)
                )
            })?
            .trim();
        Ok(text.to_owned())
    }

    /// Fetch every `interval`, or after a back-off delay when a fetch
    /// fails; `install` gets each list, `failed` each failure. Runs until
    /// dropped.
    pub async fn run(&self, mut install: impl FnMut(String), mut failed: impl FnMut(String)) {
        let mut backoff = Backoff::new(self.min_backoff, self.max_backoff);
        loop {
            let delay = match self.fetch().await {
                Ok(text) => {
                    install(text);
                    backoff.reset();
                    self.interval
                }
                Err(error) => {
                    failed(error);
                    backoff.next_delay()
                }
            };
            tokio::time::sleep(delay).await;
        }
    }
}
