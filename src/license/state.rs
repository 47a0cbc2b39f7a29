//! State that must survive a restart: the highest trusted time seen (so
//! winding the clock back across a restart cannot revive an expired
//! license) and the last good token (so a restart while the license server
//! is unreachable still has a license to serve with).
//!
//! One small JSON file, replaced atomically: a crash mid-save leaves the old
//! file or the new one, never a torn one. It holds a token, so it is written
//! with mode 0600.

use std::fmt;
use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::atomic_file::{self, FileError};

/// The largest state file read: a token of at most
/// [`MAX_TOKEN_BYTES`](super::MAX_TOKEN_BYTES) and a revocation list of at
/// most [`MAX_LIST_BYTES`](super::revocation::MAX_LIST_BYTES) plus the JSON
/// around them, with room to spare. Anything bigger is not a file this code wrote.
pub const MAX_STATE_BYTES: u64 = 64 * 1024 + super::revocation::MAX_LIST_BYTES as u64;

/// What is persisted between runs.
///
/// Unknown fields are ignored when loading, so a rollback to an older
/// version still reads a file written by a newer one.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistedState {
    /// The latest trusted time seen, unix seconds (see
    /// [`TrustedClock`](super::TrustedClock)).
    pub highest_trusted_time: u64,
    /// The token text of the last license that verified, if any. It must be
    /// verified again when loaded: the keyring may have changed.
    #[serde(default)]
    pub last_good_token: Option<String>,
    /// The revocation list in force, as signed. Verified again when loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_list: Option<String>,
    /// When this state was saved, unix seconds.
    pub updated_at: u64,
}

impl fmt::Debug for PersistedState {
    // The token is a credential: logs get its size, never its text.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PersistedState")
            .field("highest_trusted_time", &self.highest_trusted_time)
            .field(
                "last_good_token",
                &self
                    .last_good_token
                    .as_ref()
                    .map(|t| format!("<{} bytes>", t.len())),
            )
            .field(
                "revocation_list",
                &self
                    .revocation_list
                    .as_ref()
                    .map(|t| format!("<{} bytes>", t.len())),
            )
            .field("updated_at", &self.updated_at)
            .finish()
    }
}

/// Why the state file could not be loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A filesystem operation failed.
    #[error("{}: cannot {action}: {source}", path.display())]
    Io {
        /// The file or directory operated on.
        path: PathBuf,
        /// What was being done, e.g. "read" or "rename into place".
        action: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The file exists but is not a state file this program can use.
    #[error("{}: corrupt license state: {message}", path.display())]
    Corrupt {
        /// The state file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
}

/// The state file at `path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateFile {
    /// Where the state lives. Its directory must exist and be writable: the
    /// replacement is written next to it.
    pub path: PathBuf,
}

impl StateFile {
    /// The state file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> StateFile {
        StateFile { path: path.into() }
    }

    /// Read the state. A missing file is the default state (first run); a
    /// file that cannot be read or parsed is an error naming the path.
    pub fn load(&self) -> Result<PersistedState, StateError> {
        let path = &self.path;
        let Some(bytes) = atomic_file::read_at_most(path, MAX_STATE_BYTES)? else {
            return Ok(PersistedState::default());
        };
        let corrupt = |message: String| StateError::Corrupt {
            path: path.clone(),
            message,
        };
        if bytes.len() as u64 > MAX_STATE_BYTES {
            return Err(corrupt(format!(
                "larger than {MAX_STATE_BYTES} bytes, the most a state file can be"
            )));
        }
        let state: PersistedState = serde_json::from_slice(&bytes).map_err(|e| {
            corrupt(format!(
                "{e} (expected JSON with `highest_trusted_time` and `updated_at`)"
            ))
        })?;
        if let Some(token) = &state.last_good_token {
            if token.len() > super::MAX_TOKEN_BYTES {
                return Err(corrupt(format!(
                    "`last_good_token` is {} bytes, more than a license token can be",
                    token.len()
                )));
            }
        }
        Ok(state)
    }

    /// Replace the state atomically (mode 0600; see
    /// [`atomic_file::replace`]).
    pub fn save(&self, state: &PersistedState) -> Result<(), StateError> {
        let mut json = serde_json::to_vec_pretty(state).map_err(|e| StateError::Corrupt {
            path: self.path.clone(),
            message: format!("cannot encode: {e}"),
        })?;
        json.push(b'\n');
        atomic_file::replace(&self.path, &json)?;
        Ok(())
    }
}

impl From<FileError> for StateError {
    fn from(error: FileError) -> StateError {
        StateError::Io {
            path: error.path,
            action: error.action,
            source: error.source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn sample() -> PersistedState {
        PersistedState {
            highest_trusted_time: 1_800_000_000,
            last_good_token: Some("aGVhZGVy.cGF5bG9hZA.c2ln".into()),
            revocation_list: Some("cmV2.bGlzdA.c2ln".into()),
            updated_at: 1_800_000_005,
        }
    }

    #[test]
    fn missing_file_is_the_default_state() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(dir.path().join("state.json"));
        assert_eq!(file.load().unwrap(), PersistedState::default());
    }

    #[test]
    fn save_then_load_round_trips_with_mode_0600_and_no_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(dir.path().join("state.json"));
        file.save(&sample()).unwrap();
        assert_eq!(file.load().unwrap(), sample());
        let mode = fs::metadata(&file.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        // Replacing an existing, world-readable file also ends up 0600.
        fs::set_permissions(&file.path, fs::Permissions::from_mode(0o644)).unwrap();
        let newer = PersistedState {
            last_good_token: None,
            ..sample()
        };
        file.save(&newer).unwrap();
        assert_eq!(file.load().unwrap(), newer);
        let mode = fs::metadata(&file.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state.json"], "no temporary files left behind");
    }

    #[test]
    fn corrupt_file_is_an_error_naming_the_path_and_problem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let file = StateFile::new(&path);
        for (content, expect) in [
            ("{\"highest_trusted_time\": 5", "EOF"),
            ("[]", "expected struct"),
            (
                "{\"updated_at\": 1}",
                "missing field `highest_trusted_time`",
            ),
            (
                "{\"highest_trusted_time\": -1, \"updated_at\": 1}",
                "invalid value",
            ),
            ("", "EOF"),
        ] {
            fs::write(&path, content).unwrap();
            let error = file.load().unwrap_err();
            let text = error.to_string();
            assert!(matches!(error, StateError::Corrupt { .. }), "{text}");
            assert!(text.contains(&path.display().to_string()), "{text}");
            assert!(text.contains(expect), "{content:?}: {text}");
        }
    }

    #[test]
    fn oversized_file_or_token_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let file = StateFile::new(&path);
        fs::write(&path, vec![b' '; MAX_STATE_BYTES as usize + 1]).unwrap();
        assert!(file.load().unwrap_err().to_string().contains("larger than"));

        let state = PersistedState {
            last_good_token: Some("a".repeat(crate::license::MAX_TOKEN_BYTES + 1)),
            ..sample()
        };
        file.save(&state).unwrap();
        let text = file.load().unwrap_err().to_string();
        assert!(text.contains("`last_good_token`"), "{text}");
    }

    #[test]
    fn unknown_fields_are_ignored_and_token_is_optional() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        fs::write(
            &path,
            r#"{"highest_trusted_time": 7, "updated_at": 8, "from_a_newer_version": true}"#,
        )
        .unwrap();
        let state = StateFile::new(&path).load().unwrap();
        assert_eq!(
            state,
            PersistedState {
                highest_trusted_time: 7,
                last_good_token: None,
                revocation_list: None,
                updated_at: 8,
            }
        );
    }

    #[test]
    fn unreadable_path_and_missing_directory_are_io_errors() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should be.
        let error = StateFile::new(dir.path()).load().unwrap_err();
        assert!(matches!(error, StateError::Io { .. }), "{error}");

        let nowhere = StateFile::new(dir.path().join("missing/state.json"));
        let error = nowhere.save(&sample()).unwrap_err();
        assert!(matches!(
            error,
            StateError::Io {
                action: "create a temporary file",
                ..
            }
        ));
        assert!(error.to_string().contains("missing"), "{error}");
    }

    #[test]
    fn stale_temporary_files_do_not_block_saving() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(dir.path().join("state.json"));
        fs::write(dir.path().join(".state.json.0000000000000000.tmp"), "junk").unwrap();
        file.save(&sample()).unwrap();
        file.save(&sample()).unwrap();
        assert_eq!(file.load().unwrap(), sample());
    }

    #[test]
    fn debug_never_shows_the_token() {
        let shown = format!("{:?}", sample());
        assert!(!shown.contains("cGF5bG9hZA"), "{shown}");
        assert!(shown.contains("bytes"), "{shown}");
    }
}
