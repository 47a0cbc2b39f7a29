//! The configuration error: what reading the config file and mapping it
//! (and the flags) onto the subsystems' settings can go wrong with.

use std::path::PathBuf;

use crate::yaml::YamlError;

/// A configuration error, formatted `file:line:column: setting: what was expected`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read config file: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file does not parse into the settings it may hold.
    #[error(transparent)]
    Yaml(#[from] YamlError),
    #[error("{setting}: {message}")]
    Invalid {
        setting: &'static str,
        message: String,
    },
}
