//! The chunked-body harness: arbitrary bytes as a chunked body through the
//! proxy's own decoder (`proxy::h1::ChunkedDecoder`). Shared by the
//! cargo-fuzz target `h1_chunked` and the seed replay in
//! `src/proxy/h1/mod.rs` (it names the library only as `crate::proxy`).
//!
//! Besides "never panic", the decoder must hold these invariants:
//!
//! - every call on non-empty input makes progress until the body is done,
//!   and its data range lies within what it consumed;
//! - the payload, the outcome (done, incomplete, or which error) and the
//!   bytes left after the body are the same whether the input arrives whole,
//!   split in two at any point, or one byte at a time;
//! - the payload re-encoded with the chunk writers (as one chunk and as
//!   many small ones) decodes back to itself, done, with nothing left over.

#![allow(dead_code)]

use crate::proxy::h1::{write_chunk_header, ChunkedDecoder, ChunkedError, CHUNK_END, LAST_CHUNK};

/// Inputs up to this length are split at every point and fed byte by
/// byte; longer ones at a sample of points.
const ALL_SPLITS: usize = 300;

/// What decoding one body gives: payload, outcome (`Ok(done)` or the
/// error) and the bytes after the body (none after an error).
type Outcome = (Vec<u8>, Result<bool, ChunkedError>, Vec<u8>);

/// Run one input; `Some(true)` when it is a complete body, `Some(false)`
/// when refused, `None` when incomplete.
pub fn h1_chunked(data: &[u8]) -> Option<bool> {
    let whole = decode(&[data]);
    let step = (data.len() / ALL_SPLITS).max(1);
    for at in (0..=data.len()).step_by(step) {
        let (a, b) = data.split_at(at);
        assert_eq!(decode(&[a, b]), whole, "split at {at}");
    }
    if data.len() <= ALL_SPLITS {
        let bytes: Vec<&[u8]> = data.chunks(1).collect();
        assert_eq!(decode(&bytes), whole, "one byte at a time");
    }
    let payload = &whole.0;
    reencodes(payload, &[payload.len().max(1)]);
    reencodes(payload, &[1, 2, 3, 16, 255]);
    match whole.1 {
        Ok(true) => Some(true),
        Ok(false) => None,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            Some(false)
        }
    }
}

/// Feed `pieces` as reads would bring them.
fn decode(pieces: &[&[u8]]) -> Outcome {
    let mut decoder = ChunkedDecoder::new();
    let mut buf = Vec::new();
    let mut payload = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        while !buf.is_empty() && !decoder.is_done() {
            match decoder.decode(&buf) {
                Ok(d) => {
                    assert!(d.consumed > 0, "no progress");
                    assert!(d.consumed <= buf.len() && d.data.end <= d.consumed);
                    assert!(d.data.start <= d.data.end);
                    assert_eq!(d.done, decoder.is_done());
                    payload.extend_from_slice(&buf[d.data]);
                    buf.drain(..d.consumed);
                }
                Err(e) => {
                    // The fault sticks.
                    assert_eq!(decoder.decode(b"0\r\n\r\n"), Err(e.clone()));
                    return (payload, Err(e), Vec::new());
                }
            }
        }
    }
    (payload, Ok(decoder.is_done()), buf)
}

/// Encode `payload` in chunks whose sizes cycle through `sizes`, then check
/// that it decodes back.
fn reencodes(payload: &[u8], sizes: &[usize]) {
    let mut body = Vec::new();
    let mut rest = payload;
    for &size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (chunk, after) = rest.split_at(size.min(rest.len()));
        write_chunk_header(&mut body, chunk.len());
        body.extend_from_slice(chunk);
        body.extend_from_slice(CHUNK_END);
        rest = after;
    }
    body.extend_from_slice(LAST_CHUNK);
    let (decoded, outcome, left) = decode(&[&body]);
    assert_eq!(outcome, Ok(true));
    assert!(left.is_empty());
    assert_eq!(decoded, payload);
}
