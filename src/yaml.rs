//! YAML into typed values, with errors in the `file:line:column: setting:
//! message` form editors jump to. A leaf: the config file, policy files and
//! the license CLI's claims all parse through here.

use std::path::{Path, PathBuf};

/// A YAML file that does not parse into what was expected.
#[derive(Debug, thiserror::Error)]
pub enum YamlError {
    /// Positioned at the offending value.
    #[error("{path}:{line}:{column}: {message}")]
    At {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// The parser gave no position (e.g. the document ended early).
    #[error("{path}: {message}")]
    Unplaced { path: PathBuf, message: String },
}

/// Deserialize YAML into `T`, reporting errors as `file:line:column:
/// dotted.setting: message` — the full path of the offending setting, not
/// just its parent.
pub fn parse<T: serde::de::DeserializeOwned>(path: &Path, text: &str) -> Result<T, YamlError> {
    let deserializer = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let setting = error.path().to_string();
        positioned(path, &setting, error.into_inner())
    })
}

/// Turn a YAML error into a positioned one. The library decorates its
/// message with " at line L column C" and a partial path; both are reported
/// up front instead, in the `file:line:column` form editors jump to.
fn positioned(path: &Path, setting: &str, error: serde_yaml::Error) -> YamlError {
    let mut message = error.to_string();
    if let Some(location) = error.location() {
        let suffix = format!(" at line {} column {}", location.line(), location.column());
        if let Some(stripped) = message.strip_suffix(&suffix) {
            message = stripped.to_owned();
        }
    }
    // Drop the library's own (partial) path prefix: some ancestor of `setting`.
    let mut prefix = setting;
    loop {
        if let Some(rest) = message.strip_prefix(&format!("{prefix}: ")) {
            message = rest.to_owned();
            break;
        }
        // Ancestors end at a `.field` or an `[index]`.
        match prefix.rfind(['.', '[']) {
            Some(at) => prefix = &prefix[..at],
            None => break,
        }
    }
    if !setting.is_empty() && setting != "." {
        message = format!("{setting}: {message}");
    }
    match error.location() {
        Some(location) => YamlError::At {
            path: path.to_owned(),
            line: location.line(),
            column: location.column(),
            message,
        },
        None => YamlError::Unplaced {
            path: path.to_owned(),
            message,
        },
    }
}
