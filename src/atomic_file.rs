//! Small files that must survive a restart whole (the license state, the
//! user JWKS state): read with a bound, and replaced atomically — a crash
//! mid-save leaves the old file or the new one, never a torn one. A leaf.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ring::rand::{SecureRandom, SystemRandom};

/// A filesystem operation on `path` that failed.
#[derive(Debug, thiserror::Error)]
#[error("{}: cannot {action}: {source}", path.display())]
pub struct FileError {
    /// The file or directory operated on.
    pub path: PathBuf,
    /// What was being done, e.g. "read" or "rename into place".
    pub action: &'static str,
    /// The underlying error.
    #[source]
    pub source: io::Error,
}

/// The first `limit + 1` bytes at `path`, so a result longer than `limit`
/// says the file is too big without reading all of it (whatever sits at
/// the path must not exhaust memory). `None` when there is no file.
pub fn read_at_most(path: &Path, limit: u64) -> Result<Option<Vec<u8>>, FileError> {
    let error = |action, source| FileError {
        path: path.to_owned(),
        action,
        source,
    };
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(error("open", e)),
    };
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| error("read", e))?;
    Ok(Some(bytes))
}

/// Replace `path` with `contents` atomically: write a temporary file in the
/// same directory (mode 0600: these files may hold credentials), flush it
/// to disk, rename it over `path`, then flush the directory so the rename
/// itself is durable.
pub fn replace(path: &Path, contents: &[u8]) -> Result<(), FileError> {
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let (temp_path, mut file) = create_temp(path, dir)?;
    let written = file
        .write_all(contents)
        .map_err(|e| (e, "write"))
        .and_then(|()| file.sync_all().map_err(|e| (e, "flush to disk")))
        .and_then(|()| {
            drop(file);
            fs::rename(&temp_path, path).map_err(|e| (e, "rename into place"))
        });
    if let Err((source, action)) = written {
        let _ = fs::remove_file(&temp_path);
        return Err(FileError {
            path: temp_path,
            action,
            source,
        });
    }
    // Best effort: the new file is already in place; some filesystems
    // refuse fsync on a directory, and failing the save then would mislead
    // the caller.
    if let Ok(dir) = File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// A new, exclusively created temporary file next to `path`. The name is
/// random because containers restart with the same PID, and a temporary
/// file left by a crash must not block every later save.
fn create_temp(path: &Path, dir: &Path) -> Result<(PathBuf, File), FileError> {
    let name = path
        .file_name()
        .map_or_else(|| "state".into(), |n| n.to_string_lossy().into_owned());
    let mut last_error = None;
    for _ in 0..4 {
        let temp_path = dir.join(format!(".{name}.{:016x}.tmp", random_u64()));
        // create_new: never follow or reuse something already there.
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp_path)
        {
            Ok(file) => return Ok((temp_path, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_error = Some(e),
            Err(source) => {
                return Err(FileError {
                    path: temp_path,
                    action: "create a temporary file",
                    source,
                })
            }
        }
    }
    Err(FileError {
        path: dir.to_owned(),
        action: "create a temporary file",
        source: last_error.unwrap_or_else(|| io::ErrorKind::AlreadyExists.into()),
    })
}

/// Random enough for a temporary file name; the system clock stands in if
/// the system random source fails (it does not on Linux once booted).
fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    if SystemRandom::new().fill(&mut bytes).is_ok() {
        return u64::from_le_bytes(bytes);
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    u64::from(nanos) << 32 | u64::from(std::process::id())
}
