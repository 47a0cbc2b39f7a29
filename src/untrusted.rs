//! Text from the other side of a connection, made fit for a log line or an
//! error message: bounded, with control characters escaped so a hostile
//! peer cannot forge log lines; and errors with the causes hyper hides. A
//! leaf shared by the license refresh and the metering sinks.

/// At most `max_chars` characters of untrusted bytes, trimmed, control
/// characters escaped, `…` when cut.
pub fn printable(bytes: &[u8], max_chars: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    let mut shown = String::with_capacity(text.len().min(max_chars));
    for (n, c) in text.chars().enumerate() {
        if n == max_chars {
            shown.push('…');
            break;
        }
        if c.is_control() {
            shown.extend(c.escape_default());
        } else {
            shown.push(c);
        }
    }
    shown
}

/// An error and its sources: hyper's own message ("client error
/// (Connect)") says little; the cause (e.g. "invalid peer certificate:
/// UnknownIssuer") is in the chain.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untrusted_text_is_bounded_and_cannot_forge_log_lines() {
        assert_eq!(printable(b"line\nforged", 100), "line\\nforged");
        assert_eq!(printable(b"  padded \r\n", 100), "padded");
        assert_eq!(printable("ééé".as_bytes(), 2), "éé…");
        assert_eq!(printable("ééé".as_bytes(), 3), "ééé");
        let long = printable(&[b'x'; 10_000], 64);
        assert_eq!(long.chars().count(), 65);
        assert!(long.ends_with('…'));
    }
}
