//! The last good JWKS of every fetched issuer, kept across restarts so a
//! restart while an identity provider is unreachable still verifies its
//! users' tokens:
//!
//! ```json
//! { "version": 1,
//!   "issuers": { "https://idp.example/realms/acme":
//!     { "jwks": "{\"keys\":[…]}", "fetched_at": 1767225600, "etag": "\"v7\"" } } }
//! ```
//!
//! The JWKS is kept as the identity provider served it and parsed again
//! when loaded (the parser may have grown stricter since). A file that
//! cannot be read or used is logged and ignored: the first fetch then
//! decides, and the next save replaces it. Saved with
//! [`atomic_file::replace`], so a crash mid-save leaves a whole file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::MAX_JWKS_BYTES;
use crate::atomic_file::{self, FileError};

/// The format version written, and the only one read.
pub const JWKS_STATE_VERSION: u32 = 1;

/// The largest state file read: room for a few issuers' JWKS at their
/// largest, escaped. Anything bigger is not a file this code wrote.
pub const MAX_JWKS_STATE_BYTES: u64 = 16 * MAX_JWKS_BYTES as u64;

/// One issuer's last good JWKS.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwksStateEntry {
    /// The JWKS text as served.
    pub jwks: String,
    /// When it was fetched, unix seconds.
    pub fetched_at: u64,
    /// Its `ETag`, sent as `If-None-Match` by the first fetch after a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct Document {
    version: u32,
    #[serde(default)]
    issuers: BTreeMap<String, JwksStateEntry>,
}

/// The state file, read once at start and rewritten whole on each change.
/// Shared by every issuer's source; the lock orders their saves.
#[derive(Debug)]
pub struct JwksStateFile {
    path: PathBuf,
    issuers: Mutex<BTreeMap<String, JwksStateEntry>>,
}

impl JwksStateFile {
    /// Read the file at `path`. Never fails: a missing file is a first
    /// start, and one that cannot be used is logged and treated as empty.
    pub fn open(path: impl Into<PathBuf>) -> JwksStateFile {
        let path = path.into();
        let issuers = match load(&path) {
            Ok(issuers) => issuers,
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "cannot use the user JWKS state file; starting without it");
                BTreeMap::new()
            }
        };
        JwksStateFile {
            path,
            issuers: Mutex::new(issuers),
        }
    }

    /// Where it lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The last good JWKS of `issuer`, if one was kept.
    pub fn entry(&self, issuer: &str) -> Option<JwksStateEntry> {
        self.issuers.lock().get(issuer).cloned()
    }

    /// Keep `entry` as `issuer`'s last good JWKS and save the file, unless
    /// it holds that JWKS already; returns whether it wrote. A failed save
    /// leaves the entry out, so the next call tries again.
    pub fn record(&self, issuer: &str, entry: JwksStateEntry) -> Result<bool, FileError> {
        // Under the lock: two issuers saving at once must not each write
        // a file without the other's entry.
        let mut issuers = self.issuers.lock();
        if issuers
            .get(issuer)
            .is_some_and(|kept| kept.jwks == entry.jwks)
        {
            return Ok(false);
        }
        let mut document = Document {
            version: JWKS_STATE_VERSION,
            issuers: issuers.clone(),
        };
        document.issuers.insert(issuer.to_owned(), entry);
        let mut json = serde_json::to_vec_pretty(&document).expect("the state serializes");
        json.push(b'\n');
        atomic_file::replace(&self.path, &json)?;
        *issuers = document.issuers;
        Ok(true)
    }
}

fn load(path: &Path) -> Result<BTreeMap<String, JwksStateEntry>, String> {
    let Some(bytes) =
        atomic_file::read_at_most(path, MAX_JWKS_STATE_BYTES).map_err(|e| e.to_string())?
    else {
        return Ok(BTreeMap::new());
    };
    if bytes.len() as u64 > MAX_JWKS_STATE_BYTES {
        return Err(format!("larger than {MAX_JWKS_STATE_BYTES} bytes"));
    }
    let document: Document = serde_json::from_slice(&bytes).map_err(|e| {
        format!("{e} (expected JSON with `version` {JWKS_STATE_VERSION} and `issuers`)")
    })?;
    if document.version != JWKS_STATE_VERSION {
        return Err(format!(
            "version {} is not supported (expected {JWKS_STATE_VERSION})",
            document.version
        ));
    }
    let mut issuers = document.issuers;
    issuers.retain(|issuer, entry| {
        let fits = entry.jwks.len() <= MAX_JWKS_BYTES;
        if !fits {
            tracing::warn!(
                issuer,
                "the state file's JWKS is larger than a fetch can bring; ignored"
            );
        }
        fits
    });
    Ok(issuers)
}
