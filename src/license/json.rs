//! Strict JSON: serde_json keeps the last of two equal keys, so
//! `{"sub":"a","sub":"b"}` would mean different things to different parsers.
//! A signed document must have one meaning, so objects that repeat a key are
//! rejected at every nesting level.
//!
//! Two ways in: [`from_slice_strict`] checks any document in a pass of its
//! own before a derived parse (headers, JWKS: small or off the hot path);
//! [`visit_members`] lets a hand-written `Deserialize` check as it goes, in
//! one pass (the claims, parsed on every cold verification).

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, Deserialize, DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};

/// Parse `bytes` as a `T`, first rejecting any object with a repeated key.
///
/// The check costs about as much as the parse itself, so the claims (see
/// [`visit_members`]) do not use this.
pub(crate) fn from_slice_strict<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    UniqueKeys::deserialize(&mut de).map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    serde_json::from_slice(bytes).map_err(|e| e.to_string())
}

/// Read an object's members in one pass, rejecting a repeated key.
/// `member(key, map)` reads the value of a known key and returns true, or
/// returns false for an unknown key, whose value is then walked (and checked
/// for repeated keys) without being kept.
pub(crate) fn visit_members<'de, A, F>(mut map: A, mut member: F) -> Result<(), A::Error>
where
    A: MapAccess<'de>,
    F: FnMut(&str, &mut A) -> Result<bool, A::Error>,
{
    let mut seen = SeenKeys::default();
    while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
        // A borrowed key clones as a pointer copy.
        if !seen.insert(key.clone()) {
            return Err(de::Error::custom(format_args!(
                "duplicate key {}",
                super::error::quote(&key)
            )));
        }
        if !member(&key, &mut map)? {
            map.next_value::<UniqueKeys>()?;
        }
    }
    Ok(())
}

/// Whether an object member was present at all, whatever its value
/// (`null` included). Use with `#[serde(default)]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Present(pub bool);

impl<'de> Deserialize<'de> for Present {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        de::IgnoredAny::deserialize(deserializer).map(|_| Present(true))
    }
}

/// Any JSON value, accepted only if no object in it repeats a key. Nesting
/// depth is bounded by serde_json's recursion limit (128).
struct UniqueKeys;

impl<'de> Deserialize<'de> for UniqueKeys {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(UniqueKeysVisitor)
    }
}

struct UniqueKeysVisitor;

impl<'de> Visitor<'de> for UniqueKeysVisitor {
    type Value = UniqueKeys;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_i64<E>(self, _: i64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_u64<E>(self, _: u64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_f64<E>(self, _: f64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_str<E>(self, _: &str) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_unit<E>(self) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<UniqueKeys, A::Error> {
        while seq.next_element::<UniqueKeys>()?.is_some() {}
        Ok(UniqueKeys)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<UniqueKeys, A::Error> {
        visit_members(map, |_, _| Ok(false))?;
        Ok(UniqueKeys)
    }
}

/// An object key, borrowed from the input unless it contained escapes (then
/// unescaped, so `"k\u0069d"` and `"kid"` count as the same key).
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// Keys seen in one object: a linear scan for the usual handful, a hash set
/// past that so a hostile 16 KiB header of tiny keys stays linear-time.
#[derive(Default)]
struct SeenKeys<'de> {
    few: Vec<Cow<'de, str>>,
    many: Option<HashSet<Cow<'de, str>>>,
}

impl<'de> SeenKeys<'de> {
    const LINEAR_MAX: usize = 16;

    /// False if `key` was already present.
    fn insert(&mut self, key: Cow<'de, str>) -> bool {
        if let Some(many) = &mut self.many {
            return many.insert(key);
        }
        if self.few.contains(&key) {
            return false;
        }
        self.few.push(key);
        if self.few.len() > Self::LINEAR_MAX {
            self.many = Some(self.few.drain(..).collect());
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn check(text: &str) -> Result<Value, String> {
        from_slice_strict(text.as_bytes())
    }

    #[test]
    fn accepts_ordinary_documents() {
        assert!(check(r#"{"a":1,"b":[{"a":1},{"a":2}],"c":{"a":{"b":null}}}"#).is_ok());
        assert!(check("[1,2,3]").is_ok());
        assert!(check(r#"{}"#).is_ok());
    }

    #[test]
    fn rejects_duplicates_at_any_depth() {
        for text in [
            r#"{"a":1,"a":2}"#,
            r#"{"x":{"a":1,"a":1}}"#,
            r#"{"x":[{"ok":1},{"a":1,"b":2,"a":3}]}"#,
            r#"[[[{"deep":{"k":1,"k":2}}]]]"#,
            // Equal after unescaping.
            r#"{"kid":"a","k\u0069d":"b"}"#,
        ] {
            let err = check(text).unwrap_err();
            assert!(err.contains("duplicate key"), "{text}: {err}");
        }
    }

    #[test]
    fn many_keys_switch_to_hashing_and_still_detect() {
        let mut text = String::from("{");
        for i in 0..100 {
            text.push_str(&format!("\"k{i}\":{i},"));
        }
        text.push_str("\"k5\":0}");
        assert!(check(&text).unwrap_err().contains("`k5`"));
        let unique = text.replace("\"k5\":0}", "\"last\":0}");
        assert!(check(&unique).is_ok());
    }

    #[test]
    fn rejects_trailing_garbage_and_deep_nesting() {
        assert!(check(r#"{"a":1} x"#).is_err());
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(check(&deep).unwrap_err().contains("recursion limit"));
    }
}
