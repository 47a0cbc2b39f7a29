//! Counter keys as the engine builds them and as metrics and `/usage`
//! show them.

use std::borrow::Cow;

/// Joins the parts of a compound key; cannot appear in a header value.
pub(super) const KEY_SEPARATOR: char = '\u{1f}';

/// A counter key as a metric label (and as `/usage` shows it): compound
/// keys joined with `/`, the overflow counter named, control characters
/// replaced.
pub(super) fn key_label(key: &str) -> Cow<'_, str> {
    if key == crate::limits::OVERFLOW_KEY {
        return Cow::Borrowed("(overflow)");
    }
    if !key.chars().any(char::is_control) {
        return Cow::Borrowed(key);
    }
    Cow::Owned(
        key.chars()
            .map(|c| match c {
                KEY_SEPARATOR => '/',
                c if c.is_control() => '?',
                c => c,
            })
            .collect(),
    )
}
