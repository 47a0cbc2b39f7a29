//! The user-token verifier the request path asks: a cache of verified
//! tokens in front of [`token::verify`], each issuer's keys swappable live,
//! and a budget of failing signature checks per client.
//!
//! A token seen before costs the header lookup, a map lookup and the time
//! check (no allocation). A new token costs one signature check, within the
//! sending client's budget: a forger with a known `kid` cannot make every
//! request cost an RSA verification. A token naming a `kid` no issuer has
//! wakes the JWKS fetchers ([`UserVerifier::key_wanted`]): the provider may
//! have rotated its keys since the last fetch.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::HeaderMap;
use parking_lot::Mutex;
use prometheus::IntGauge;
use tokio::sync::Notify;

use super::keys::{digest64, UserKeyring};
use super::metrics::UserMetrics;
use super::token;
use super::{UserError, UserSettings, VerifiedUser};
use crate::license::{Answered, VerificationBudget, VerificationCache};

/// Verifies user tokens against the configured issuers' keys. Share it
/// behind an `Arc`.
pub struct UserVerifier {
    settings: UserSettings,
    /// `keyrings[i]` holds the keys of `settings.issuers[i]`.
    keyrings: Box<[ArcSwap<UserKeyring>]>,
    /// The cache tag: [`combined`] over every keyring's generation. Changed
    /// before a keyring is swapped, so from then on no entry verified under
    /// the old keys is served.
    generation: AtomicU64,
    /// Serialises [`replace_keys`](Self::replace_keys), so the combined
    /// generation is computed from keyrings no one else is changing.
    replacing: Mutex<()>,
    cache: VerificationCache<VerifiedUser>,
    budget: VerificationBudget,
    key_wanted: Box<[Arc<Notify>]>,
    metrics: Arc<UserMetrics>,
    /// `licensegate_user_keys` per issuer.
    key_counts: Box<[IntGauge]>,
}

impl UserVerifier {
    /// A verifier with no keys loaded yet: every check is
    /// [`UserError::KeysUnavailable`] until [`replace_keys`](Self::replace_keys).
    pub fn new(settings: UserSettings, metrics: Arc<UserMetrics>) -> UserVerifier {
        let issuers = settings.issuers.len();
        let keyrings: Box<[ArcSwap<UserKeyring>]> = (0..issuers)
            .map(|_| ArcSwap::from_pointee(UserKeyring::empty()))
            .collect();
        let generation = combined(keyrings.iter().map(|k| k.load().generation()));
        let key_counts = settings
            .issuers
            .iter()
            .map(|issuer| {
                let gauge = metrics.keys(&issuer.issuer);
                gauge.set(0);
                gauge
            })
            .collect();
        UserVerifier {
            keyrings,
            generation: AtomicU64::new(generation),
            replacing: Mutex::new(()),
            cache: VerificationCache::new(settings.cache_capacity),
            budget: VerificationBudget::new(&settings.failed_verifications),
            key_wanted: (0..issuers).map(|_| Arc::new(Notify::new())).collect(),
            metrics,
            key_counts,
            settings,
        }
    }

    /// What it was built from.
    pub fn settings(&self) -> &UserSettings {
        &self.settings
    }

    /// The user of the request, if its token verifies at `now` (unix
    /// seconds). `client` is asked only when a signature check is due (for
    /// its budget). Counted in `licensegate_user_token_verifications_total`.
    pub fn check(
        &self,
        headers: &HeaderMap,
        now: u64,
        client: impl FnOnce() -> IpAddr,
    ) -> Result<Arc<VerifiedUser>, UserError> {
        match self.settings.token.find(headers) {
            Some(token) => self.check_token_traced(token, now, client).0,
            None => {
                self.metrics
                    .verification(Err(&UserError::Missing), Answered::Parse);
                Err(UserError::Missing)
            }
        }
    }

    /// [`check`](Self::check) for a token already found, also telling how
    /// it was answered: [`Answered::Cache`] (no parsing, no signature),
    /// [`Answered::Parse`] (refused before the signature),
    /// [`Answered::Throttled`], or [`Answered::Signature`].
    pub fn check_token_traced(
        &self,
        token: &[u8],
        now: u64,
        client: impl FnOnce() -> IpAddr,
    ) -> (Result<Arc<VerifiedUser>, UserError>, Answered) {
        let (result, answered) = match self.cached(token, now) {
            Some(result) => (result, Answered::Cache),
            None => self.check_uncached(token, now, client),
        };
        self.metrics
            .verification(result.as_ref().map(|_| ()), answered);
        (result, answered)
    }

    /// The hit path: no allocation; the time window is checked every time.
    #[inline]
    fn cached(&self, token: &[u8], now: u64) -> Option<Result<Arc<VerifiedUser>, UserError>> {
        let generation = self.generation.load(Ordering::Acquire);
        let user = self.cache.get(token, generation, now)?;
        Some(token::validate(&user, now, self.settings.leeway).map(|()| user))
    }

    /// Everything after a cache miss; kept out of line so the hit path
    /// stays small.
    #[inline(never)]
    fn check_uncached(
        &self,
        token: &[u8],
        now: u64,
        client: impl FnOnce() -> IpAddr,
    ) -> (Result<Arc<VerifiedUser>, UserError>, Answered) {
        let keyrings: Vec<Arc<UserKeyring>> = self.keyrings.iter().map(|k| k.load_full()).collect();
        if keyrings.iter().all(|k| k.is_empty()) {
            return (Err(UserError::KeysUnavailable), Answered::Parse);
        }
        // The tag of what these keyrings verify; it differs from
        // `self.generation` only if a swap raced this check, and then the
        // entry is never served.
        let generation = combined(keyrings.iter().map(|k| k.generation()));
        let unverified = match token::Unverified::parse(token, &keyrings, &self.settings.issuers) {
            Ok(unverified) => unverified,
            Err(error) => {
                if matches!(error, UserError::KeyUnknown { .. }) {
                    self.want_keys();
                }
                return (Err(error), Answered::Parse);
            }
        };
        let client = client();
        if let Err(exhausted) = self.budget.take(client) {
            let error = UserError::VerificationThrottled {
                retry_after: exhausted.retry_after_secs(),
            };
            return (Err(error), Answered::Throttled);
        }
        self.metrics.signature_checks.inc();
        let result = unverified.verify().and_then(|user| {
            token::validate(&user, now, self.settings.leeway)?;
            Ok(Arc::new(user))
        });
        if let Ok(user) = &result {
            // Only failures spend the budget.
            self.budget.refund(client);
            let serve_until = token::serve_until(user, self.settings.leeway);
            self.cache
                .insert(token, Arc::clone(user), generation, serve_until, now);
        }
        (result, Answered::Signature)
    }

    /// Wake every issuer's JWKS fetcher: a token named a key none has. The
    /// fetchers rate-limit themselves (`min_refresh`).
    fn want_keys(&self) {
        for notify in &*self.key_wanted {
            notify.notify_one();
        }
    }

    /// Swap in the keys of issuer `issuer` (its index in
    /// [`UserSettings::issuers`]). Returns false, and keeps the cache, when
    /// they equal the current ones; otherwise the cache is cleared.
    ///
    /// # Panics
    /// If `issuer` is not an index of `settings().issuers`.
    pub fn replace_keys(&self, issuer: usize, keyring: Arc<UserKeyring>) -> bool {
        let _one_at_a_time = self.replacing.lock();
        let slot = &self.keyrings[issuer];
        if slot.load().generation() == keyring.generation() {
            return false;
        }
        let generation = combined(self.keyrings.iter().enumerate().map(|(i, k)| {
            if i == issuer {
                keyring.generation()
            } else {
                k.load().generation()
            }
        }));
        let count = keyring.len();
        self.generation.store(generation, Ordering::Release);
        slot.store(keyring);
        self.cache.clear();
        self.key_counts[issuer].set(i64::try_from(count).unwrap_or(i64::MAX));
        true
    }

    /// The current keys of issuer `issuer`.
    ///
    /// # Panics
    /// If `issuer` is not an index of `settings().issuers`.
    pub fn keys(&self, issuer: usize) -> Arc<UserKeyring> {
        self.keyrings[issuer].load_full()
    }

    /// Whether any issuer has keys.
    pub fn has_keys(&self) -> bool {
        self.keyrings.iter().any(|k| !k.load().is_empty())
    }

    /// Notified (`notify_one`) when a token names a `kid` that no issuer
    /// has: issuer `issuer`'s JWKS fetcher waits on it to fetch early.
    ///
    /// # Panics
    /// If `issuer` is not an index of `settings().issuers`.
    pub fn key_wanted(&self, issuer: usize) -> Arc<Notify> {
        Arc::clone(&self.key_wanted[issuer])
    }

    /// The cache of verified tokens, e.g. for its size on the admin port.
    pub fn cache(&self) -> &VerificationCache<VerifiedUser> {
        &self.cache
    }
}

impl std::fmt::Debug for UserVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserVerifier")
            .field("issuers", &self.settings.issuers.len())
            .field("generation", &self.generation.load(Ordering::Relaxed))
            .field("cache", &self.cache)
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

/// One generation for a list of keyring generations, order included (the
/// same keys under another issuer verify other tokens).
fn combined(generations: impl Iterator<Item = u64>) -> u64 {
    let encoded: Vec<u8> = generations.flat_map(u64::to_be_bytes).collect();
    digest64(&encoded)
}
