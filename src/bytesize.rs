//! Sizes in bytes as people write them in YAML files: `8MiB`, `128Mi` (as a
//! Kubernetes memory limit is written), `500M`, or plain bytes. A leaf shared
//! by the config file and metering's settings.

use std::fmt;

use serde::{Deserialize, Deserializer};

/// A size in bytes: a number, or a number with a binary (`Ki`, `Mi`, `Gi`,
/// `Ti`, with or without a trailing `B`) or decimal (`k`/`K`, `M`, `G`, `T`,
/// with or without `B`) unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(text: &str) -> Result<ByteSize, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: u64 = number.parse().map_err(|_| {
            format!("`{text}` is not a size; expected whole bytes or e.g. `8MiB`, `128Mi`, `500M`")
        })?;
        if unit.starts_with(['.', ',']) {
            return Err(format!(
                "`{text}`: fractions are not supported; write a whole number of a smaller unit (e.g. `1536Mi` for 1.5Gi)"
            ));
        }
        let factor: u64 = match unit.trim() {
            "" | "B" => 1,
            "Ki" | "KiB" => 1 << 10,
            "Mi" | "MiB" => 1 << 20,
            "Gi" | "GiB" => 1 << 30,
            "Ti" | "TiB" => 1 << 40,
            "k" | "K" | "kB" | "KB" => 1_000,
            "M" | "MB" => 1_000_000,
            "G" | "GB" => 1_000_000_000,
            "T" | "TB" => 1_000_000_000_000,
            other => {
                return Err(format!(
                    "`{other}` is not a size unit; expected B, Ki(B), Mi(B), Gi(B), Ti(B), k(B), M(B), G(B) or T(B)"
                ))
            }
        };
        number
            .checked_mul(factor)
            .map(ByteSize)
            .ok_or_else(|| format!("`{text}` is too large"))
    }
}

/// In the largest binary unit it reaches: exact when that unit divides it
/// (`128MiB`), else to a tenth (`24.5MiB`); below 1 KiB in bytes.
impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let units = [
            ("TiB", 1u64 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ];
        match units.iter().find(|(_, factor)| self.0 >= *factor) {
            Some((unit, factor)) if self.0.is_multiple_of(*factor) => {
                write!(f, "{}{unit}", self.0 / factor)
            }
            Some((unit, factor)) => write!(f, "{:.1}{unit}", self.0 as f64 / *factor as f64),
            None => write!(f, "{}B", self.0),
        }
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size in bytes, e.g. `8MiB`, `128Mi` or 8388608")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("{v} is negative; expected a size")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::ByteSize;

    #[test]
    fn units_people_and_kubernetes_write() {
        for (text, bytes) in [
            ("0", 0),
            ("4096", 4096),
            ("512B", 512),
            ("128Mi", 128 << 20),
            ("64MiB", 64 << 20),
            ("1Gi", 1 << 30),
            ("8 KiB", 8 << 10),
            ("500M", 500_000_000),
            ("10MB", 10_000_000),
            ("2k", 2_000),
            ("2K", 2_000),
            ("1G", 1_000_000_000),
        ] {
            assert_eq!(ByteSize::parse(text), Ok(ByteSize(bytes)), "{text}");
        }
        for (text, error) in [
            ("", "`` is not a size"),
            ("Mi", "`Mi` is not a size"),
            ("1.5Gi", "fractions are not supported"),
            ("12 parsecs", "`parsecs` is not a size unit"),
            ("128mi", "`mi` is not a size unit"),
            ("99999999999999Ti", "is too large"),
        ] {
            let message = ByteSize::parse(text).unwrap_err();
            assert!(message.contains(error), "{text}: {message}");
        }
    }

    #[test]
    fn shown_in_the_largest_unit_reached() {
        assert_eq!(ByteSize(128 << 20).to_string(), "128MiB");
        assert_eq!(ByteSize(1536 << 10).to_string(), "1.5MiB");
        assert_eq!(ByteSize(500_000_000).to_string(), "476.8MiB");
        assert_eq!(ByteSize(1000).to_string(), "1000B");
        assert_eq!(ByteSize(0).to_string(), "0B");
    }
}
