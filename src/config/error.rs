//! The configuration error: a leaf, so every subsystem that reads its own
//! settings (TLS files, the refresh source) reports in the same form
//! without importing the whole configuration.

use std::path::PathBuf;

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
    Yaml(#[from] crate::yaml::YamlError),
    #[error("{setting}: {message}")]
    Invalid {
        setting: &'static str,
        message: String,
    },
}

impl From<crate::tls::TlsError> for ConfigError {
    fn from(error: crate::tls::TlsError) -> ConfigError {
        ConfigError::Invalid {
            setting: error.setting,
            message: error.message,
        }
    }
}
