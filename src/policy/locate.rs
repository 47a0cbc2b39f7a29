//! Finding the line and column of a node in a YAML document, for errors
//! found after parsing (an unknown feature, a shadowed route).
//!
//! serde_norway reports positions only for errors raised while it reads, so
//! this walks the document once more and raises an error exactly at the node
//! asked for; the position the parser attaches to that error is the answer.
//! It costs a second parse of one file, only when there is something to say.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// One step into a document: a mapping key or a sequence index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Key(String),
    Index(usize),
}

impl Step {
    pub fn key(key: &str) -> Step {
        Step::Key(key.to_owned())
    }
}

/// Render steps the way errors name settings: `routes[2].features[0]`.
pub fn dotted(steps: &[Step]) -> String {
    let mut out = String::new();
    for step in steps {
        match step {
            Step::Key(key) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Step::Index(i) => {
                out.push('[');
                out.push_str(&i.to_string());
                out.push(']');
            }
        }
    }
    out
}

const FOUND: &str = "licensegate-locate-found";

/// The 1-based line and column of the node at `steps` in `text`, if present.
pub fn locate(text: &str, steps: &[Step]) -> Option<(usize, usize)> {
    let deserializer = serde_yaml::Deserializer::from_str(text);
    match (Seek { steps }).deserialize(deserializer) {
        Err(error) if error.to_string().contains(FOUND) => error
            .location()
            .map(|location| (location.line(), location.column())),
        _ => None,
    }
}

struct Seek<'a> {
    steps: &'a [Step],
}

impl<'de> DeserializeSeed<'de> for Seek<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seek<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML node")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some((first, rest)) = self.steps.split_first() else {
            return Err(de::Error::custom(FOUND));
        };
        while let Some(key) = map.next_key::<KeyText>()? {
            match first {
                Step::Key(wanted) if key.0.as_deref() == Some(wanted.as_str()) => {
                    return map.next_value_seed(Seek { steps: rest });
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some((first, rest)) = self.steps.split_first() else {
            return Err(de::Error::custom(FOUND));
        };
        let mut index = 0;
        loop {
            if matches!(first, Step::Index(wanted) if *wanted == index) {
                return seq.next_element_seed(Seek { steps: rest }).map(|_| ());
            }
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Ok(());
            }
            index += 1;
        }
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.scalar()
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.scalar()
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.scalar()
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.scalar()
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.scalar()
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.scalar()
    }
}

impl Seek<'_> {
    fn scalar<E: de::Error>(&self) -> Result<(), E> {
        if self.steps.is_empty() {
            Err(E::custom(FOUND))
        } else {
            Ok(())
        }
    }
}

/// A mapping key as text (non-text keys never match a step).
struct KeyText(Option<String>);

impl<'de> de::Deserialize<'de> for KeyText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = KeyText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<KeyText, E> {
                Ok(KeyText(Some(v.to_owned())))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<KeyText, E> {
                Ok(KeyText(Some(v.to_string())))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<KeyText, E> {
                Ok(KeyText(Some(v.to_string())))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<KeyText, E> {
                Ok(KeyText(Some(v.to_string())))
            }
            fn visit_unit<E: de::Error>(self) -> Result<KeyText, E> {
                Ok(KeyText(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<KeyText, E> {
                Ok(KeyText(None))
            }
        }
        deserializer.deserialize_any(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
plans:
  pro:
    features: [a, b]
routes:
  - path: /x
  - path: /y
    features:
      - reports
";

    #[test]
    fn finds_keys_indices_and_flow_items() {
        let at = |steps: &[Step]| locate(DOC, steps);
        assert_eq!(
            at(&[
                Step::key("routes"),
                Step::Index(1),
                Step::key("features"),
                Step::Index(0)
            ]),
            Some((8, 9))
        );
        assert_eq!(
            at(&[Step::key("routes"), Step::Index(1)]).map(|p| p.0),
            Some(6)
        );
        assert_eq!(
            at(&[
                Step::key("plans"),
                Step::key("pro"),
                Step::key("features"),
                Step::Index(1)
            ]),
            Some((3, 19))
        );
        assert_eq!(at(&[Step::key("nothing")]), None);
        assert_eq!(at(&[Step::key("routes"), Step::Index(7)]), None);
    }

    #[test]
    fn dotted_names_match_config_errors() {
        let steps = [
            Step::key("routes"),
            Step::Index(2),
            Step::key("features"),
            Step::Index(0),
        ];
        assert_eq!(dotted(&steps), "routes[2].features[0]");
    }
}
