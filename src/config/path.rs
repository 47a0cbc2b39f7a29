//! Paths written in a config file. A relative one is resolved against the
//! directory of the file that names it, so `keys: keys` means the `keys`
//! beside the config file wherever the process was started from. What each
//! setting needs (an existing file, an existing file or directory, a
//! directory to find or write a file in) is checked while the file is
//! parsed, so a missing path is reported like any other bad value: file,
//! line, column, setting, and the path as resolved.
//!
//! Flags and `LICENSEGATE_*` variables do not come through here: their
//! relative paths stay relative to the working directory, as a shell user
//! expects.

use std::cell::RefCell;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

thread_local! {
    /// The directory of the config file being parsed on this thread, only
    /// while [`with_base_dir`] runs. Derived `Deserialize` impls cannot take
    /// arguments, and the position of an error comes only from failing
    /// inside one; parsing is synchronous, so a scope on the parsing thread
    /// is exactly as wide as the parse.
    static BASE_DIR: RefCell<Option<PathBuf>> = const { RefCell::new(None) };
}

/// Run `parse` with relative config paths resolved against `dir`. The base
/// is this thread's alone and is restored when `parse` returns or unwinds,
/// so parses never see each other's base.
pub fn with_base_dir<T>(dir: PathBuf, parse: impl FnOnce() -> T) -> T {
    struct Restore(Option<PathBuf>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            BASE_DIR.with(|base| *base.borrow_mut() = previous);
        }
    }
    let _restore = Restore(BASE_DIR.with(|base| base.replace(Some(dir))));
    parse()
}

/// The directory relative paths in the config file `file` are resolved
/// against: its parent, made absolute (not canonical: a Kubernetes
/// ConfigMap mount reaches the file through `..data` symlinks, and its
/// neighbours are beside the link, not beside the link's target).
pub fn base_dir(file: &Path) -> PathBuf {
    let file = std::path::absolute(file).unwrap_or_else(|_| file.to_owned());
    match file.parent() {
        Some(parent) => parent.to_owned(),
        None => PathBuf::from("/"),
    }
}

/// A path as written, resolved against the base in scope (if any).
fn resolve(text: &str) -> Result<PathBuf, String> {
    if text.is_empty() {
        return Err("an empty path".into());
    }
    let path = PathBuf::from(text);
    if path.is_absolute() {
        return Ok(path);
    }
    Ok(BASE_DIR
        .with(|base| base.borrow().as_ref().map(|base| base.join(&path)))
        .unwrap_or(path))
}

/// What a failed look-up says: `no such file or directory` rather than the
/// platform's "No such file or directory (os error 2)".
fn describe(error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::NotFound => "no such file or directory".into(),
        kind => kind.to_string(),
    }
}

fn deserialize_resolved<'de, D: Deserializer<'de>>(
    deserializer: D,
    check: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<PathBuf, D::Error> {
    let text = String::deserialize(deserializer)?;
    let path = resolve(&text).map_err(serde::de::Error::custom)?;
    check(&path)
        .map_err(|message| serde::de::Error::custom(format!("{}: {message}", path.display())))?;
    Ok(path)
}

/// A file that must exist when the config is loaded: a certificate, a
/// private key, a CA bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExistingFile(pub PathBuf);

impl<'de> Deserialize<'de> for ExistingFile {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_resolved(deserializer, |path| {
            let meta = std::fs::metadata(path).map_err(|e| describe(&e))?;
            if meta.is_dir() {
                return Err("is a directory; expected a file".into());
            }
            Ok(())
        })
        .map(ExistingFile)
    }
}

/// A file or a directory that must exist: the keyring (a PEM file, a
/// directory of them, or a JWKS file), a policy path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExistingPath(pub PathBuf);

impl<'de> Deserialize<'de> for ExistingPath {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_resolved(deserializer, |path| {
            std::fs::metadata(path)
                .map(|_| ())
                .map_err(|e| describe(&e))
        })
        .map(ExistingPath)
    }
}

/// A file the proxy reads once it appears, or writes itself: the license
/// file, the state file, the counters file. It may be absent, but not a
/// directory, and its directory must exist: that is what is watched, or
/// written into.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileInDir(pub PathBuf);

impl<'de> Deserialize<'de> for FileInDir {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_resolved(deserializer, |path| {
            match std::fs::metadata(path) {
                Ok(meta) if meta.is_dir() => return Err("is a directory; expected a file".into()),
                Ok(_) => return Ok(()),
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                    ) => {}
                Err(error) => return Err(describe(&error)),
            }
            let dir = match path.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => dir,
                _ => Path::new("."),
            };
            match std::fs::metadata(dir) {
                Ok(meta) if meta.is_dir() => Ok(()),
                Ok(_) => Err(format!("{} is not a directory", dir.display())),
                Err(error) => Err(format!(
                    "its directory {}: {}",
                    dir.display(),
                    describe(&error)
                )),
            }
        })
        .map(FileInDir)
    }
}

#[cfg(test)]
mod tests;
