//! Durations as people write them in YAML files and flags: `250ms`, `10s`,
//! `5m`. A leaf shared by the config file, policy files and the CLIs.

use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A duration written the human way: `250ms`, `10s`, `5m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        humantime::parse_duration(text)
            .map(HumanDuration)
            .map_err(|e| {
                format!("`{text}` is not a duration ({e}); expected e.g. `250ms`, `10s`, `5m`")
            })
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A duration above zero, checked when the file is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NonZeroDuration(pub Duration);

impl<'de> Deserialize<'de> for NonZeroDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let HumanDuration(duration) = HumanDuration::deserialize(deserializer)?;
        if duration.is_zero() {
            return Err(serde::de::Error::custom(
                "must be greater than zero; expected e.g. `1s`",
            ));
        }
        Ok(NonZeroDuration(duration))
    }
}
