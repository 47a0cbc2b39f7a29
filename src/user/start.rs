//! The user subsystem assembled from its settings: the verifier, and one
//! key source per issuer putting that issuer's JWKS in force. Shared by the
//! proxy, which runs the sources, and `policy explain`, which loads the
//! keys once.

use std::sync::Arc;

use tokio::sync::Notify;

use super::source::{IssuerJwks, JwksBoard, JwksContext, JwksError, JwksFetcher};
use super::{JwksSource, UserKeyring, UserMetrics, UserSettings, UserVerifier};
use crate::lifecycle::Lifecycle;
use crate::metrics::Registry;

/// An issuer's key source could not be set up (a bad JWKS file, a bad URL).
#[derive(Debug, thiserror::Error)]
#[error("users.issuers #{index} ({issuer}): {error}")]
pub struct UsersError {
    /// Its position in `users.issuers`.
    pub index: usize,
    /// Its `issuer`.
    pub issuer: String,
    /// What is wrong.
    #[source]
    pub error: JwksError,
}

/// The verifier with its issuers' keys in force (a file's, or a URL's
/// state-file copy), and the sources that keep them current.
#[derive(Debug)]
pub struct Users {
    /// Verifies user tokens; share it with the decision engine.
    pub verifier: Arc<UserVerifier>,
    /// Every issuer's key status, for `/ready` and `/users`.
    pub board: JwksBoard,
    /// Per issuer: its source, and what wakes it for an unknown `kid`.
    pub sources: Vec<(IssuerJwks, Arc<Notify>)>,
}

impl Users {
    /// Build from `settings`, registering the metrics on `registry`; with
    /// a `lifecycle`, readiness waits until every issuer has keys.
    pub fn new(
        settings: &UserSettings,
        registry: &Registry,
        lifecycle: Option<Arc<Lifecycle>>,
    ) -> Result<Users, UsersError> {
        let verifier = Arc::new(UserVerifier::new(
            settings.clone(),
            Arc::new(UserMetrics::new(registry)),
        ));
        let context = JwksContext::new(registry, lifecycle, settings.state_file.as_deref());
        let mut sources = Vec::with_capacity(settings.issuers.len());
        for (index, issuer) in settings.issuers.iter().enumerate() {
            let origin = issuer.issuer.clone();
            let (target, name) = (Arc::clone(&verifier), issuer.issuer.clone());
            let source = IssuerJwks::new(
                &issuer.issuer,
                &issuer.jwks,
                &context,
                move |bytes: &[u8]| UserKeyring::from_jwks_slice(bytes, &origin),
                move |keyring: UserKeyring| {
                    let skipped = keyring.skipped();
                    let kids = keyring.kids().join(", ");
                    let changed = target.replace_keys(index, Arc::new(keyring));
                    if changed {
                        tracing::info!(issuer = %name, "identity provider keys in force: {kids}");
                        for key in skipped {
                            tracing::info!(issuer = %name, "identity provider key not used: {key}");
                        }
                    }
                    changed
                },
            )
            .map_err(|error| UsersError {
                index,
                issuer: issuer.issuer.clone(),
                error,
            })?;
            sources.push((source, verifier.key_wanted(index)));
        }
        Ok(Users {
            verifier,
            board: context.board,
            sources,
        })
    }

    /// Fetch once the JWKS of every URL issuer that has no keys yet (no
    /// state-file copy): for `policy explain`, which runs no sources.
    pub async fn fetch_missing(&self) -> Result<(), String> {
        for (index, issuer) in self.verifier.settings().issuers.iter().enumerate() {
            let JwksSource::Url(fetch) = &issuer.jwks else {
                continue;
            };
            if !self.verifier.keys(index).is_empty() {
                continue;
            }
            let fetcher = JwksFetcher::new(fetch).map_err(|e| e.to_string())?;
            let response = fetcher.fetch(None).await.map_err(|e| e.to_string())?;
            let jwks = response
                .jwks
                .ok_or_else(|| format!("{}: no JWKS in the response", fetcher.url()))?;
            let keyring =
                UserKeyring::from_jwks_slice(&jwks, fetcher.url()).map_err(|e| e.to_string())?;
            self.verifier.replace_keys(index, Arc::new(keyring));
        }
        Ok(())
    }
}

/// The verifier of `policy explain`: the issuers' keys from their files,
/// the state file's copies, or else fetched now. Writes nothing.
pub fn explain_verifier(settings: UserSettings) -> Result<Arc<UserVerifier>, String> {
    let users = Users::new(&settings, &Registry::new(), None).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime to fetch the JWKS: {e}"))?;
    runtime.block_on(users.fetch_missing())?;
    Ok(users.verifier)
}
