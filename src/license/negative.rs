//! Remembering tokens that failed after `ring` was consulted, so the same
//! bad token never costs a signature check twice.
//!
//! Only failures of the signature stage (and of validation after it) are
//! stored: everything before the signature is cheaper to redo than to
//! remember. Entries are keyed by the exact token bytes, like the
//! verification cache, but the keys here are chosen by whoever sends the
//! token, hence two differences:
//! - the *whole* token is hashed (randomly seeded foldhash): the tail hash of
//!   the verification cache could be aimed at one bucket by keeping the end
//!   of forged tokens fixed;
//! - memory is bounded by bytes as well as entries, since a token may be
//!   16 KiB.
//!
//! A full cache drops entries of an older keyring first, then an arbitrary
//! eighth (hash order), as the verification cache does. Inserts are bounded
//! by each client's verification budget, so a sweep is rare.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

use super::error::LicenseError;
use super::token::VerifiedLicense;

/// Why a token was refused, as remembered.
#[derive(Clone, Debug)]
pub(crate) enum Failure {
    /// The signature or the claims did not verify: final under the keyring
    /// that checked it.
    Unverified(LicenseError),
    /// Signed by a keyring key but not valid (issuer, audience, not yet
    /// valid, expired). Validated again on each hit, so the reason and its
    /// times are those of now, and a token whose `nbf` arrives is accepted.
    Invalid(Arc<VerifiedLicense>),
}

struct Entry {
    failure: Failure,
    /// [`Keyring::generation`](super::Keyring::generation) that refused it.
    generation: u64,
}

/// Refused tokens by their exact bytes. Bounded; see the module docs.
pub struct NegativeCache {
    map: DashMap<Box<[u8]>, Entry, hashbrown::DefaultHashBuilder>,
    max_entries: usize,
    max_bytes: usize,
    /// Bytes held, as counted by [`entry_bytes`].
    bytes: AtomicUsize,
}

/// What one entry is charged: the token plus the map's own overhead.
fn entry_bytes(token: &[u8]) -> usize {
    token.len() + 96
}

impl NegativeCache {
    /// The default number of entries.
    pub const DEFAULT_ENTRIES: usize = 4096;
    /// The default memory bound: 256 tokens of the largest size.
    pub const DEFAULT_BYTES: usize = 4 << 20;

    /// An empty cache of at most `max_entries` entries and `max_bytes`.
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        NegativeCache {
            map: DashMap::with_hasher(hashbrown::DefaultHashBuilder::default()),
            max_entries: max_entries.max(1),
            max_bytes,
            bytes: AtomicUsize::new(0),
        }
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Bytes held now (tokens plus a fixed overhead per entry).
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Drop every entry, e.g. when the keyring changes.
    pub fn clear(&self) {
        self.map.retain(|token, _| {
            self.bytes.fetch_sub(entry_bytes(token), Ordering::Relaxed);
            false
        });
    }

    /// How `token` failed under keyring `generation`, if remembered. An
    /// entry of another keyring is removed.
    pub(crate) fn get(&self, token: &[u8], generation: u64) -> Option<Failure> {
        {
            let entry = self.map.get(token)?;
            if entry.generation == generation {
                return Some(entry.failure.clone());
            }
            // The read guard must be gone before removing (same shard).
        }
        self.remove_if(token, |e| e.generation != generation);
        None
    }

    /// Forget `token` (it became valid).
    pub(crate) fn remove(&self, token: &[u8]) {
        self.remove_if(token, |_| true);
    }

    fn remove_if(&self, token: &[u8], condition: impl FnOnce(&Entry) -> bool) {
        if let Some((token, _)) = self.map.remove_if(token, |_, e| condition(e)) {
            self.bytes.fetch_sub(entry_bytes(&token), Ordering::Relaxed);
        }
    }

    /// Remember that `token` failed under keyring `generation`.
    pub(crate) fn insert(&self, token: &[u8], failure: Failure, generation: u64) {
        let size = entry_bytes(token);
        if size > self.max_bytes {
            return;
        }
        if self.map.len() >= self.max_entries
            || self.bytes.load(Ordering::Relaxed) + size > self.max_bytes
        {
            self.make_room(generation, size);
        }
        let entry = Entry {
            failure,
            generation,
        };
        if self.map.insert(token.into(), entry).is_none() {
            self.bytes.fetch_add(size, Ordering::Relaxed);
        }
    }

    /// Drop other-keyring entries; if that leaves less than an eighth of
    /// either bound free (or not `size` bytes), drop entries in hash order
    /// until it does.
    fn make_room(&self, generation: u64, size: usize) {
        let bytes = &self.bytes;
        self.map.retain(|token, e| {
            let keep = e.generation == generation;
            if !keep {
                bytes.fetch_sub(entry_bytes(token), Ordering::Relaxed);
            }
            keep
        });
        let entry_target = self.max_entries - self.max_entries.div_ceil(8);
        let byte_target = (self.max_bytes - self.max_bytes / 8).min(self.max_bytes - size);
        let mut excess_entries = self.map.len().saturating_sub(entry_target);
        if excess_entries == 0 && bytes.load(Ordering::Relaxed) <= byte_target {
            return;
        }
        self.map.retain(|token, _| {
            if excess_entries == 0 && bytes.load(Ordering::Relaxed) <= byte_target {
                return true;
            }
            excess_entries = excess_entries.saturating_sub(1);
            bytes.fetch_sub(entry_bytes(token), Ordering::Relaxed);
            false
        });
    }
}

impl std::fmt::Debug for NegativeCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NegativeCache")
            .field("len", &self.len())
            .field("bytes", &self.bytes())
            .field("max_entries", &self.max_entries)
            .field("max_bytes", &self.max_bytes)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signature_invalid() -> Failure {
        Failure::Unverified(LicenseError::SignatureInvalid("forged".into()))
    }

    fn reason(failure: Option<Failure>) -> Option<&'static str> {
        match failure? {
            Failure::Unverified(error) => Some(error.reason()),
            Failure::Invalid(_) => Some("invalid"),
        }
    }

    #[test]
    fn exact_bytes_and_generation() {
        let cache = NegativeCache::new(10, 1 << 20);
        cache.insert(b"a.b.sig", signature_invalid(), 3);
        assert_eq!(
            reason(cache.get(b"a.b.sig", 3)),
            Some("license_signature_invalid")
        );
        assert!(cache.get(b"a.b.sig ", 3).is_none(), "exact bytes only");
        assert!(cache.get(b"a.b.si", 3).is_none());
        assert!(cache.get(b"a.b.sig", 4).is_none(), "another keyring");
        assert!(cache.is_empty(), "the stale entry is removed");
        assert_eq!(cache.bytes(), 0);
    }

    #[test]
    fn bounded_by_entries() {
        let cache = NegativeCache::new(16, 1 << 20);
        for i in 0..1000 {
            cache.insert(format!("forged-{i}").as_bytes(), signature_invalid(), 1);
            assert!(cache.len() <= 16);
        }
        assert!(cache.get(b"forged-999", 1).is_some(), "the newest is kept");
        assert_eq!(
            cache.bytes(),
            cache
                .map
                .iter()
                .map(|e| entry_bytes(e.key()))
                .sum::<usize>()
        );
    }

    #[test]
    fn bounded_by_bytes() {
        let big = 16 * 1024;
        let cache = NegativeCache::new(10_000, 10 * entry_bytes(&vec![0; big]));
        for i in 0..100u8 {
            let mut token = vec![b'x'; big];
            token[0] = i;
            cache.insert(&token, signature_invalid(), 1);
            assert!(
                cache.bytes() <= 10 * entry_bytes(&token),
                "{}",
                cache.bytes()
            );
        }
        assert!(cache.len() <= 10 && !cache.is_empty());
        // A token larger than the whole bound is not stored at all.
        let tiny = NegativeCache::new(10, 100);
        tiny.insert(&[b'x'; 200], signature_invalid(), 1);
        assert!(tiny.is_empty());
    }

    #[test]
    fn a_new_keyring_evicts_old_entries_first() {
        let cache = NegativeCache::new(8, 1 << 20);
        for i in 0..4 {
            cache.insert(format!("old-{i}").as_bytes(), signature_invalid(), 1);
        }
        for i in 0..4 {
            cache.insert(format!("new-{i}").as_bytes(), signature_invalid(), 2);
        }
        cache.insert(b"newest", signature_invalid(), 2);
        assert_eq!(cache.len(), 5);
        assert!((0..4).all(|i| cache.get(format!("new-{i}").as_bytes(), 2).is_some()));
        cache.remove(b"newest");
        cache.clear();
        assert!(cache.is_empty());
        assert_eq!(cache.bytes(), 0);
    }
}
