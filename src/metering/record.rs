//! One journal record: what it holds, its deterministic id, and its frame
//! on disk.
//!
//! A frame is `length (u32 LE) | crc32 (u32 LE) | payload`, the checksum
//! over the length bytes and the payload, so a torn write (the process
//! killed mid-`write`) and a flipped bit are both caught: the first leaves
//! fewer bytes than the length says, the second a checksum that does not
//! match. The payload is the record as JSON: a few hundred bytes, readable
//! with `jq` when an operator needs to look, and self-describing across
//! versions.

use ring::digest;
use serde::{Deserialize, Serialize};

/// Bytes before a frame's payload.
pub const FRAME_HEADER: usize = 8;
/// The largest payload accepted; anything longer is corruption.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// A journalled record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Position in the journal's one sequence, from 1.
    pub seq: u64,
    /// Deterministic: re-sent after a crash, a record carries the same id,
    /// and a collector deduplicating on (`source`, `id`) counts it once.
    pub id: String,
    /// The CloudEvents `source` in force when it was journalled.
    pub source: String,
    /// When it was journalled, unix milliseconds.
    pub journaled_ms: u64,
    #[serde(flatten)]
    pub body: Body,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Body {
    Usage(UsageBody),
    QuotaThreshold(ThresholdBody),
}

/// Usage summed over one window for one (license, meter, route).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageBody {
    pub license: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer: Option<String>,
    pub plan: String,
    pub route: String,
    pub meter: String,
    pub value: u64,
    /// Unix milliseconds.
    pub window_start_ms: u64,
    /// Unix milliseconds: the window's end, or the flush time when the
    /// window was flushed early (at shutdown).
    pub window_end_ms: u64,
}

/// A quota crossed a threshold (e.g. 80 %, 100 %) of its limit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThresholdBody {
    pub license: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer: Option<String>,
    /// The limit's name.
    pub limit: String,
    pub threshold_percent: u32,
    /// Start of the quota period, unix seconds.
    pub period_start: u64,
    pub used: u64,
    pub limit_amount: u64,
}

impl Body {
    /// The license's customer, else the license id: the CloudEvents
    /// `subject` (meters group by it) and Stripe's customer.
    pub fn subject(&self) -> &str {
        let (license, customer) = match self {
            Body::Usage(usage) => (&usage.license, &usage.customer),
            Body::QuotaThreshold(threshold) => (&threshold.license, &threshold.customer),
        };
        customer.as_deref().unwrap_or(license)
    }
}

// === Ids ===

/// SHA-256 over length-prefixed fields (so `("ab", "c")` and `("a", "bc")`
/// differ), as 64 lowercase hex digits.
fn hash_fields(fields: &[&[u8]]) -> String {
    let mut context = digest::Context::new(&digest::SHA256);
    for field in fields {
        context.update(&(field.len() as u64).to_le_bytes());
        context.update(field);
    }
    hex(context.finish().as_ref())
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(DIGITS[usize::from(byte >> 4)] as char);
        text.push(DIGITS[usize::from(byte & 0xf)] as char);
    }
    text
}

/// The id of a usage record: its source, the journal it was written to
/// (two journals sharing a source by mistake still never collide), its key,
/// window and sequence number. Written into the record, never recomputed.
pub fn usage_id(source: &str, journal_id: &[u8; 16], usage: &UsageBody, seq: u64) -> String {
    hash_fields(&[
        b"usage",
        source.as_bytes(),
        journal_id,
        usage.license.as_bytes(),
        usage.meter.as_bytes(),
        usage.route.as_bytes(),
        &usage.window_start_ms.to_le_bytes(),
        &seq.to_le_bytes(),
    ])
}

/// The id of a threshold event: its natural key (which threshold of which
/// limit in which period), without a sequence number, so the same crossing
/// reported twice (after a restart, say) is deduplicated into one
/// notification.
pub fn threshold_id(source: &str, threshold: &ThresholdBody) -> String {
    hash_fields(&[
        b"licensegate.quota.threshold",
        source.as_bytes(),
        threshold.license.as_bytes(),
        threshold.limit.as_bytes(),
        &threshold.period_start.to_le_bytes(),
        &threshold.threshold_percent.to_le_bytes(),
    ])
}

// === Frames ===

/// Append `record`'s frame to `out`; its length.
pub fn encode(record: &Record, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER]);
    serde_json::to_writer(&mut *out, record).expect("a record serializes into a Vec");
    let payload_len = out.len() - start - FRAME_HEADER;
    let length = u32::try_from(payload_len).expect("records are far below 4 GiB");
    out[start..start + 4].copy_from_slice(&length.to_le_bytes());
    let crc = checksum(&length.to_le_bytes(), &out[start + FRAME_HEADER..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    out.len() - start
}

fn checksum(length: &[u8; 4], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(length);
    hasher.update(payload);
    hasher.finalize()
}

/// Why the bytes at an offset are not a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bad {
    /// Fewer bytes than a frame needs: a write cut short.
    Torn,
    /// A whole frame whose checksum does not match, an impossible length,
    /// or a payload that is not a record.
    Corrupt(String),
}

/// The record at the start of `bytes` and its frame length; `Ok(None)` when
/// `bytes` is empty.
pub fn decode(bytes: &[u8]) -> Result<Option<(Record, usize)>, Bad> {
    if bytes.is_empty() {
        return Ok(None);
    }
    if bytes.len() < FRAME_HEADER {
        return Err(Bad::Torn);
    }
    let length: [u8; 4] = bytes[..4].try_into().expect("4 bytes");
    let crc = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    let payload_len = u32::from_le_bytes(length) as usize;
    if payload_len == 0 || payload_len > MAX_PAYLOAD {
        return Err(Bad::Corrupt(format!(
            "a record length of {payload_len} bytes"
        )));
    }
    let Some(payload) = bytes.get(FRAME_HEADER..FRAME_HEADER + payload_len) else {
        return Err(Bad::Torn);
    };
    if checksum(&length, payload) != crc {
        return Err(Bad::Corrupt("checksum mismatch".into()));
    }
    let record =
        serde_json::from_slice(payload).map_err(|e| Bad::Corrupt(format!("not a record: {e}")))?;
    Ok(Some((record, FRAME_HEADER + payload_len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(value: u64) -> Record {
        let body = UsageBody {
            license: "lic-1".into(),
            customer: Some("acme".into()),
            plan: "pro".into(),
            route: "chat".into(),
            meter: "tokens".into(),
            value,
            window_start_ms: 1_700_000_000_000,
            window_end_ms: 1_700_000_010_000,
        };
        Record {
            seq: 7,
            id: usage_id("licensegate/a", &[1; 16], &body, 7),
            source: "licensegate/a".into(),
            journaled_ms: 1_700_000_010_050,
            body: Body::Usage(body),
        }
    }

    #[test]
    fn frames_round_trip() {
        let mut out = Vec::new();
        let first = usage(42);
        let second = usage(43);
        let n1 = encode(&first, &mut out);
        let n2 = encode(&second, &mut out);
        assert_eq!(out.len(), n1 + n2);
        let (decoded, used) = decode(&out).unwrap().unwrap();
        assert_eq!((decoded, used), (first, n1));
        let (decoded, used) = decode(&out[n1..]).unwrap().unwrap();
        assert_eq!((decoded, used), (second, n2));
        assert_eq!(decode(&out[n1 + n2..]), Ok(None));
    }

    #[test]
    fn every_cut_short_frame_is_torn() {
        let mut out = Vec::new();
        let n = encode(&usage(1), &mut out);
        for cut in 1..n {
            assert_eq!(decode(&out[..cut]), Err(Bad::Torn), "cut at {cut} of {n}");
        }
    }

    #[test]
    fn every_flipped_byte_is_caught() {
        let mut out = Vec::new();
        let n = encode(&usage(1), &mut out);
        for at in 0..n {
            let mut bad = out.clone();
            bad[at] ^= 0x20;
            match decode(&bad) {
                Err(_) => {}
                Ok(decoded) => panic!("byte {at} flipped, yet decoded {decoded:?}"),
            }
        }
    }

    #[test]
    fn ids_are_deterministic_and_tell_records_apart() {
        let a = usage(1);
        let Body::Usage(body) = &a.body else {
            unreachable!()
        };
        // Same inputs, same id: what makes a re-sent record a duplicate.
        assert_eq!(a.id, usage_id("licensegate/a", &[1; 16], body, 7));
        assert_eq!(a.id.len(), 64);
        assert!(a.id.bytes().all(|b| b.is_ascii_hexdigit()));
        // The value is not part of the identity; everything else is.
        assert_eq!(a.id, usage(2).id);
        let differs = |id: String| assert_ne!(a.id, id);
        differs(usage_id("licensegate/b", &[1; 16], body, 7));
        differs(usage_id("licensegate/a", &[2; 16], body, 7));
        differs(usage_id("licensegate/a", &[1; 16], body, 8));
        let mut other = body.clone();
        other.route = "chat2".into();
        differs(usage_id("licensegate/a", &[1; 16], &other, 7));
        let mut other = body.clone();
        other.window_start_ms += 10_000;
        differs(usage_id("licensegate/a", &[1; 16], &other, 7));
        // Fields are length-prefixed: moving a byte between two differs.
        let mut shifted = body.clone();
        shifted.license = "lic-1t".into();
        shifted.meter = "okens".into();
        differs(usage_id("licensegate/a", &[1; 16], &shifted, 7));

        let threshold = ThresholdBody {
            license: "lic-1".into(),
            customer: None,
            limit: "monthly".into(),
            threshold_percent: 80,
            period_start: 1_700_000_000,
            used: 800,
            limit_amount: 1000,
        };
        let id = threshold_id("licensegate/a", &threshold);
        // A later report of the same crossing (more used) is the same event.
        let later = ThresholdBody {
            used: 850,
            ..threshold.clone()
        };
        assert_eq!(id, threshold_id("licensegate/a", &later));
        let full = ThresholdBody {
            threshold_percent: 100,
            ..threshold
        };
        assert_ne!(id, threshold_id("licensegate/a", &full));
    }
}
