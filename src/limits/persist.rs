//! The counters state file: quota counts survive restarts. Written every
//! few seconds by the gateway and once more after draining on shutdown, to a
//! temporary file renamed into place, so a crash mid-write never leaves a
//! torn file. A kill without warning loses at most one interval.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::quota::QuotaState;
use super::MemoryStore;

#[derive(Debug, Default, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    /// Limit name → key → state.
    quotas: BTreeMap<String, BTreeMap<String, Entry>>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    window_start: u64,
    used: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    previous: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

const VERSION: u32 = 1;

/// Where quota counts are kept between runs.
#[derive(Clone, Debug)]
pub struct CounterFile {
    path: PathBuf,
}

impl CounterFile {
    pub fn new(path: PathBuf) -> CounterFile {
        CounterFile { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Restore counts into `store`. A missing file is a first start (0
    /// restored); an unreadable one is an error the caller logs — counting
    /// starts afresh rather than refusing to serve.
    pub fn restore(&self, store: &MemoryStore) -> Result<usize, String> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(format!("{}: {e}", self.path.display())),
        };
        let file: StateFile =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", self.path.display()))?;
        if file.version != VERSION {
            return Err(format!(
                "{}: version {} is not supported (expected {VERSION})",
                self.path.display(),
                file.version
            ));
        }
        let mut restored = 0;
        for (limit, keys) in file.quotas {
            let counters = store.quota_named(&limit);
            let Some(quota) = counters.as_quota() else {
                continue;
            };
            for (key, entry) in keys {
                quota.restore(
                    &key,
                    QuotaState {
                        window_start: entry.window_start,
                        used: entry.used,
                        previous: entry.previous,
                    },
                );
                restored += 1;
            }
        }
        Ok(restored)
    }

    /// Write every quota's counts.
    pub fn save(&self, store: &MemoryStore) -> std::io::Result<()> {
        let mut file = StateFile {
            version: VERSION,
            quotas: BTreeMap::new(),
        };
        for (name, counters) in store.quotas() {
            let Some(quota) = counters.as_quota() else {
                continue;
            };
            let keys: BTreeMap<String, Entry> = quota
                .snapshot()
                .into_iter()
                .map(|(key, state)| {
                    (
                        key,
                        Entry {
                            window_start: state.window_start,
                            used: state.used,
                            previous: state.previous,
                        },
                    )
                })
                .collect();
            if !keys.is_empty() {
                file.quotas.insert(name.to_string(), keys);
            }
        }
        let text = serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?;
        let temp = self.path.with_extension("tmp");
        std::fs::write(&temp, text)?;
        std::fs::rename(&temp, &self.path)
    }
}
