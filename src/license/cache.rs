//! Remembering verified tokens, so a token seen before costs a map lookup
//! instead of a signature check.
//!
//! The map is keyed by the token text itself, compared in full. Hashing the
//! whole token with SHA-256 (as first planned) costs ~550 ns for a typical
//! 700-byte token on the reference machine, more than the whole 200 ns
//! budget of a hit; instead the map hashes only the token's tail (the end of
//! the signature, random-looking per token) with a randomly seeded foldhash
//! (keyed SipHash cost ~290 instructions per lookup), and equality is an
//! exact byte comparison, so there are no false hits at all.
//! Only tokens that verified are ever inserted, so an attacker cannot crowd
//! a bucket or grow the map.
//!
//! Memory is bounded by the entry count: at most `capacity` tokens of at most
//! [`MAX_TOKEN_BYTES`](super::MAX_TOKEN_BYTES) each (a real deployment sees a
//! handful of licenses).
//!
//! The cache holds any verified value: licenses here, verified users in
//! [`crate::user`], which share the same rules (exact bytes, generation
//! tags, a serving deadline).

use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use dashmap::DashMap;

use super::budget::{BudgetSettings, VerificationBudget};
use super::claims::Claims;
use super::error::LicenseError;
use super::keys::Keyring;
use super::negative::{Failure, NegativeCache};
use super::revocation::RevocationList;
use super::token::{self, VerifiedLicense};
use super::validate::{Validator, Validity};

/// Verified tokens by their exact text, each with what it verified to (a
/// `T`). Bounded; see the module docs.
pub struct VerificationCache<T = VerifiedLicense> {
    /// Keyed by bytes: a hit needs no UTF-8 check of the header value.
    map: DashMap<Box<[u8]>, Entry<T>, TailHasher>,
    capacity: usize,
}

struct Entry<T> {
    value: Arc<T>,
    /// The generation of the keys that verified it (for licenses,
    /// [`Keyring::generation`]).
    generation: u64,
    /// Not served from this second on (`exp` + leeway + grace).
    serve_until: u64,
}

impl<T> VerificationCache<T> {
    /// The default number of entries.
    pub const DEFAULT_CAPACITY: usize = 10_000;

    /// An empty cache holding at most `capacity` entries (at least 1).
    pub fn new(capacity: usize) -> Self {
        VerificationCache {
            map: DashMap::with_hasher(TailHasher::default()),
            capacity: capacity.max(1),
        }
    }

    /// The most entries held at once.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Drop every entry, e.g. when the keyring or validator changes.
    pub fn clear(&self) {
        self.map.clear();
    }

    /// Drop every entry whose value `drop` picks; returns how many went.
    pub(crate) fn remove_where(&self, drop: impl Fn(&T) -> bool) -> usize {
        let before = self.map.len();
        self.map.retain(|_, entry| !drop(&entry.value));
        before.saturating_sub(self.map.len())
    }

    /// The value for `token` if it was verified under keys `generation`
    /// and is not past its serving time. A stale entry is removed.
    pub(crate) fn get(
        &self,
        token: &(impl AsRef<[u8]> + ?Sized),
        generation: u64,
        now: u64,
    ) -> Option<Arc<T>> {
        let token = token.as_ref();
        {
            let entry = self.map.get(token)?;
            if entry.generation == generation && now < entry.serve_until {
                return Some(Arc::clone(&entry.value));
            }
            // The read guard must be gone before removing (same shard).
        }
        self.map.remove_if(token, |_, e| {
            e.generation != generation || now >= e.serve_until
        });
        None
    }

    /// Remember `value` for `token` until `serve_until`.
    ///
    /// When full, expired and other-generation entries are dropped first; if
    /// that frees less than an eighth of the capacity, an arbitrary eighth
    /// (hash order, so effectively random) goes too. This keeps the hit path
    /// free of LRU bookkeeping, and a full cache costs one sweep per
    /// capacity/8 inserts.
    pub(crate) fn insert(
        &self,
        token: &(impl AsRef<[u8]> + ?Sized),
        value: Arc<T>,
        generation: u64,
        serve_until: u64,
        now: u64,
    ) {
        let token = token.as_ref();
        if now >= serve_until {
            return;
        }
        if self.map.len() >= self.capacity {
            self.map
                .retain(|_, e| e.generation == generation && now < e.serve_until);
            let target = self.capacity - self.capacity.div_ceil(8);
            let mut excess = self.map.len().saturating_sub(target);
            if excess > 0 {
                self.map.retain(|_, _| {
                    if excess == 0 {
                        return true;
                    }
                    excess -= 1;
                    false
                });
            }
        }
        self.map.insert(
            token.into(),
            Entry {
                value,
                generation,
                serve_until,
            },
        );
    }
}

impl<T> std::fmt::Debug for VerificationCache<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerificationCache")
            .field("len", &self.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

/// Hashes a string key by its last [`TailHasher::TAIL`] bytes and its length
/// with a randomly seeded foldhash. Both the stored `Box<[u8]>` and the
/// looked-up `&[u8]` hash through `[u8]`'s `Hash`: a length prefix
/// (`write_usize`), then the whole token in one `write`, so both sides see
/// the same tail. Only tokens that verified are stored, so an attacker
/// cannot choose colliding keys.
#[derive(Clone, Default)]
struct TailHasher(hashbrown::DefaultHashBuilder);

impl TailHasher {
    /// 32 base64url characters: 192 bits of the signature.
    const TAIL: usize = 32;
}

impl BuildHasher for TailHasher {
    type Hasher = TailHash;

    fn build_hasher(&self) -> TailHash {
        TailHash(self.0.build_hasher())
    }
}

struct TailHash(<hashbrown::DefaultHashBuilder as BuildHasher>::Hasher);

impl Hasher for TailHash {
    fn write(&mut self, bytes: &[u8]) {
        self.0
            .write(&bytes[bytes.len().saturating_sub(TailHasher::TAIL)..]);
        self.0.write_usize(bytes.len());
    }

    /// The slice's length prefix: `write` hashes the length itself.
    fn write_usize(&mut self, _length: usize) {}

    fn finish(&self) -> u64 {
        self.0.finish()
    }
}

/// How a check was answered, for metrics and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answered {
    /// From the verification cache: no parsing, no signature.
    Cache,
    /// From the negative cache: the token failed before.
    NegativeCache,
    /// Refused before the signature (text, shape, header, key, length).
    Parse,
    /// A signature check ran.
    Signature,
    /// The client's budget of failing signature checks is spent: refused
    /// without a check.
    Throttled,
}

/// Verifies license tokens: the cache, then the negative cache, then full
/// verification (within the client's budget), then the validator. Share it
/// behind an `Arc`; the keyring can be swapped live.
pub struct LicenseVerifier {
    keyring: ArcSwap<Keyring>,
    cache: VerificationCache,
    negative: NegativeCache,
    budget: VerificationBudget,
    validator: Validator,
    /// The signed revocation list in force, checked on every answer.
    revocations: ArcSwapOption<RevocationList>,
}

impl LicenseVerifier {
    /// A verifier over `keyring` with a cache of `cache_capacity` entries
    /// and the default budget of failing checks per client.
    pub fn new(keyring: Arc<Keyring>, validator: Validator, cache_capacity: usize) -> Self {
        LicenseVerifier {
            keyring: ArcSwap::new(keyring),
            cache: VerificationCache::new(cache_capacity),
            negative: NegativeCache::new(
                NegativeCache::DEFAULT_ENTRIES,
                NegativeCache::DEFAULT_BYTES,
            ),
            budget: VerificationBudget::new(&BudgetSettings::default()),
            validator,
            revocations: ArcSwapOption::empty(),
        }
    }

    /// Budget failing signature checks per client with `settings`.
    pub fn with_budget(mut self, settings: &BudgetSettings) -> Self {
        self.budget = VerificationBudget::new(settings);
        self
    }

    /// Verify and validate `token` at `now` (unix seconds).
    ///
    /// A cache hit does no signature or parsing work; the time window, issuer
    /// and audience are still checked on every call. A token that failed
    /// after its signature was checked is remembered in the negative cache,
    /// so it never costs a signature check twice.
    pub fn check(
        &self,
        token: &str,
        now: u64,
    ) -> Result<(Arc<VerifiedLicense>, Validity), LicenseError> {
        self.check_traced(token, now).0
    }

    /// [`check`](Self::check), also telling how it was answered.
    pub fn check_traced(
        &self,
        token: &str,
        now: u64,
    ) -> (
        Result<(Arc<VerifiedLicense>, Validity), LicenseError>,
        Answered,
    ) {
        self.check_bytes_traced(token.as_bytes(), now)
    }

    /// [`check_traced`](Self::check_traced) for a token as a header carries
    /// it: a hit compares bytes only; the text is checked on a miss. No
    /// budget applies (a deployment token).
    pub fn check_bytes_traced(
        &self,
        token: &[u8],
        now: u64,
    ) -> (
        Result<(Arc<VerifiedLicense>, Validity), LicenseError>,
        Answered,
    ) {
        self.check_with(token, now, || None)
    }

    /// [`check_bytes_traced`](Self::check_bytes_traced) for a token sent by
    /// `client` (asked only if a signature check is due): a check that
    /// fails spends the client's budget; with none left, the answer is
    /// [`LicenseError::VerificationThrottled`] and `ring` is not consulted.
    pub fn check_from_client(
        &self,
        token: &[u8],
        now: u64,
        client: impl FnOnce() -> IpAddr,
    ) -> (
        Result<(Arc<VerifiedLicense>, Validity), LicenseError>,
        Answered,
    ) {
        self.check_with(token, now, || Some(client()))
    }

    fn check_with(
        &self,
        token: &[u8],
        now: u64,
        client: impl FnOnce() -> Option<IpAddr>,
    ) -> (
        Result<(Arc<VerifiedLicense>, Validity), LicenseError>,
        Answered,
    ) {
        let keyring = self.keyring.load();
        let generation = keyring.generation();
        if let Some(license) = self.cache.get(token, generation, now) {
            let result = self
                .not_revoked(&license.claims)
                .and_then(|()| self.validator.validate(&license.claims, now))
                .map(|validity| (license, validity));
            return (result, Answered::Cache);
        }
        let (result, answered) = self.check_uncached(token, now, &keyring, client);
        let result = result.and_then(|(license, validity)| {
            self.not_revoked(&license.claims)?;
            Ok((license, validity))
        });
        (result, answered)
    }

    /// Refuse a license the revocation list in force revokes: two hash-set
    /// lookups, no allocation unless refused.
    pub fn not_revoked(&self, claims: &Claims) -> Result<(), LicenseError> {
        match &*self.revocations.load() {
            Some(list) => list.check(claims),
            None => Ok(()),
        }
    }

    /// The revocation list in force.
    pub fn revocations(&self) -> Option<Arc<RevocationList>> {
        self.revocations.load_full()
    }

    /// Put `list` in force and drop the cached verifications it revokes
    /// (they would be refused anyway: this frees their entries at once).
    /// Returns how many were dropped.
    pub fn set_revocations(&self, list: Arc<RevocationList>) -> usize {
        // In force first, so nothing verified meanwhile escapes the purge.
        self.revocations.store(Some(Arc::clone(&list)));
        self.cache
            .remove_where(|license: &VerifiedLicense| list.revokes(&license.claims))
    }

    /// Everything after a verification-cache miss; kept out of line so the
    /// hit path stays as it was.
    #[inline(never)]
    fn check_uncached(
        &self,
        token: &[u8],
        now: u64,
        keyring: &Keyring,
        client: impl FnOnce() -> Option<IpAddr>,
    ) -> (
        Result<(Arc<VerifiedLicense>, Validity), LicenseError>,
        Answered,
    ) {
        let generation = keyring.generation();
        if let Some(failure) = self.negative.get(token, generation) {
            let result = match failure {
                Failure::Unverified(error) => Err(error),
                Failure::Invalid(license) => self.revalidate(token, license, generation, now),
            };
            return (result, Answered::NegativeCache);
        }
        let Ok(text) = std::str::from_utf8(token) else {
            let error = LicenseError::Malformed("the license header is not valid text".into());
            return (Err(error), Answered::Parse);
        };
        let unverified = match token::Unverified::parse(text, keyring) {
            Ok(unverified) => unverified,
            Err(error) => return (Err(error), Answered::Parse),
        };
        let client = client();
        if let Some(client) = client {
            if let Err(exhausted) = self.budget.take(client) {
                let error = LicenseError::VerificationThrottled {
                    retry_after: exhausted.retry_after_secs(),
                };
                return (Err(error), Answered::Throttled);
            }
        }
        let result = match unverified.verify() {
            Err(error) => {
                self.negative
                    .insert(token, Failure::Unverified(error.clone()), generation);
                Err(error)
            }
            Ok(license) => {
                let license = Arc::new(license);
                match self.validator.validate(&license.claims, now) {
                    Ok(validity) => {
                        let serve_until = self.validator.serve_until(&license.claims);
                        self.cache.insert(
                            token,
                            Arc::clone(&license),
                            generation,
                            serve_until,
                            now,
                        );
                        Ok((license, validity))
                    }
                    Err(error) => {
                        self.negative
                            .insert(token, Failure::Invalid(license), generation);
                        Err(error)
                    }
                }
            }
        };
        if let (Some(client), Ok(_)) = (client, &result) {
            // Only failures spend the budget.
            self.budget.refund(client);
        }
        (result, Answered::Signature)
    }

    /// A remembered, signed but invalid token, validated at `now`: time may
    /// have made it valid (`nbf`), then it moves to the verification cache.
    fn revalidate(
        &self,
        token: &[u8],
        license: Arc<VerifiedLicense>,
        generation: u64,
        now: u64,
    ) -> Result<(Arc<VerifiedLicense>, Validity), LicenseError> {
        let validity = self.validator.validate(&license.claims, now)?;
        self.negative.remove(token);
        let serve_until = self.validator.serve_until(&license.claims);
        self.cache
            .insert(token, Arc::clone(&license), generation, serve_until, now);
        Ok((license, validity))
    }

    /// The current keyring.
    pub fn keyring(&self) -> Arc<Keyring> {
        self.keyring.load_full()
    }

    /// Swap in `keyring`. Returns false (and keeps the caches) when its
    /// contents equal the current one's; otherwise both caches are cleared.
    /// Entries are also tagged with the keyring generation, so a check that
    /// raced the swap cannot leave an entry the new keyring would not accept.
    pub fn replace_keyring(&self, keyring: Arc<Keyring>) -> bool {
        let new_generation = keyring.generation();
        let old = self.keyring.swap(keyring);
        if old.generation() == new_generation {
            return false;
        }
        self.cache.clear();
        self.negative.clear();
        true
    }

    /// The checks applied after verification.
    pub fn validator(&self) -> &Validator {
        &self.validator
    }

    /// The cache, e.g. for its size on the admin port.
    pub fn cache(&self) -> &VerificationCache {
        &self.cache
    }

    /// The tokens remembered as refused.
    pub fn negative_cache(&self) -> &NegativeCache {
        &self.negative
    }
}

impl std::fmt::Debug for LicenseVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LicenseVerifier")
            .field("keyring", &self.keyring.load().fingerprint())
            .field("cache", &self.cache)
            .field("negative", &self.negative)
            .field("budget", &self.budget)
            .field("validator", &self.validator)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::license::claims::{Claims, LicenseClaims, NumericDate};
    use crate::license::token::Algorithm;
    use std::hash::Hash;

    fn license(exp: u64) -> Arc<VerifiedLicense> {
        Arc::new(VerifiedLicense {
            kid: "k".into(),
            alg: Algorithm::EdDSA,
            claims: Claims {
                iss: None,
                sub: "s".into(),
                aud: Default::default(),
                exp: NumericDate(exp),
                nbf: None,
                iat: None,
                jti: None,
                lic: LicenseClaims::default(),
            },
        })
    }

    #[test]
    fn tail_hash_agrees_for_owned_and_borrowed_keys() {
        let hasher = TailHasher::default();
        let text = "header.payload.signature-with-enough-characters-to-cut";
        let owned: Box<[u8]> = text.as_bytes().into();
        let hash = |v: &dyn Fn(&mut TailHash)| {
            let mut h = hasher.build_hasher();
            v(&mut h);
            h.finish()
        };
        assert_eq!(hash(&|h| owned.hash(h)), hash(&|h| text.as_bytes().hash(h)));
        // Same tail, different length: different hash (almost surely).
        let longer = format!("x{text}");
        assert_ne!(
            hash(&|h| longer.as_bytes().hash(h)),
            hash(&|h| text.as_bytes().hash(h))
        );
    }

    #[test]
    fn same_tail_tokens_are_distinct_entries() {
        let cache = VerificationCache::new(10);
        let tail = "S".repeat(40);
        let a = format!("aaaa.{tail}");
        let b = format!("bbbb.{tail}");
        cache.insert(&a, license(100), 1, 100, 0);
        assert!(cache.get(&a, 1, 0).is_some());
        assert!(cache.get(&b, 1, 0).is_none());
        cache.insert(&b, license(200), 1, 200, 0);
        assert_eq!(cache.get(&a, 1, 0).unwrap().expires_at(), 100);
        assert_eq!(cache.get(&b, 1, 0).unwrap().expires_at(), 200);
    }

    #[test]
    fn entries_expire_and_follow_the_generation() {
        let cache = VerificationCache::new(10);
        cache.insert("t", license(100), 7, 150, 0);
        assert!(cache.get("t", 7, 149).is_some());
        assert!(cache.get("t", 8, 10).is_none(), "other keyring");
        assert!(cache.is_empty(), "stale entry removed");
        cache.insert("t", license(100), 7, 150, 0);
        assert!(cache.get("t", 7, 150).is_none(), "past serving time");
        assert!(cache.is_empty());
        cache.insert("t", license(100), 7, 150, 150);
        assert!(cache.is_empty(), "already-expired entries are not stored");
    }

    #[test]
    fn full_cache_drops_expired_first_then_a_chunk() {
        let cache = VerificationCache::new(16);
        for i in 0..8 {
            cache.insert(&format!("old{i}"), license(10), 1, 10, 0);
        }
        for i in 0..8 {
            cache.insert(&format!("new{i}"), license(1000), 1, 1000, 0);
        }
        assert_eq!(cache.len(), 16);
        // At now = 20 the eight old entries are expired: they go, nothing else.
        cache.insert("x", license(1000), 1, 1000, 20);
        assert_eq!(cache.len(), 9);
        assert!((0..8).all(|i| cache.get(&format!("new{i}"), 1, 20).is_some()));

        for i in 0..7 {
            cache.insert(&format!("more{i}"), license(1000), 1, 1000, 20);
        }
        assert_eq!(cache.len(), 16);
        // Nothing expired: an eighth (2 of 16) is dropped before inserting.
        cache.insert("y", license(1000), 1, 1000, 20);
        assert_eq!(cache.len(), 15);
        assert!(cache.get("y", 1, 20).is_some());
        for _ in 0..1000 {
            cache.insert(&format!("{}", rand_token()), license(1000), 1, 1000, 20);
            assert!(cache.len() <= 16);
        }
        cache.clear();
        assert!(cache.is_empty());
    }

    fn rand_token() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        N.fetch_add(1, Ordering::Relaxed)
    }

    #[test]
    fn capacity_is_at_least_one() {
        let cache = VerificationCache::new(0);
        assert_eq!(cache.capacity(), 1);
        cache.insert("a", license(10), 1, 10, 0);
        cache.insert("b", license(10), 1, 10, 0);
        assert_eq!(cache.len(), 1);
        assert!(cache.get("b", 1, 0).is_some());
    }
}
