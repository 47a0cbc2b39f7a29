//! The chunked transfer coding (RFC 9112 §7.1), decoded incrementally and
//! strictly, in both directions (client request bodies, upstream response
//! bodies).
//!
//! The decoder is a byte-at-a-time state machine over the framing and a
//! bulk copy over chunk data, so it never buffers: a size line or trailer
//! split across reads is carried as a state and a few counters.
//!
//! Stricter than hyper 1.12 (`proto/h1/decode.rs`), each a place where two
//! parsers could disagree on where a chunk ends:
//! - a chunk size has at most 16 hex digits (hyper: any number that fits
//!   a u64, so `00000000000000000005` passes there);
//! - whitespace after the size must lead to an extension (`5 \r\n` is
//!   refused; hyper accepts it), and extensions follow the RFC grammar
//!   (hyper skips any bytes but LF up to the CR);
//! - a size line is at most 4096 bytes (hyper: only the 16 KiB budget for
//!   all extensions of a body, which is kept here too);
//! - trailer fields are checked byte by byte as they arrive (hyper buffers
//!   them and runs httparse at the end); obs-fold is refused in both.
//!
//! Trailer fields are validated and dropped: the hyper pair that serves
//! plain HTTP/1 today drops them too (and the proxy strips `Trailer`).

use std::ops::Range;

/// Longest chunk-size line, extensions included, CRLF excluded.
const MAX_SIZE_LINE: usize = 4096;
/// Extension bytes over a whole body, as hyper's `CHUNKED_EXTENSIONS_LIMIT`:
/// without it, 1-byte chunks with long extensions cost the proxy a lot of
/// parsing per payload byte.
const MAX_EXTENSIONS: usize = 16 * 1024;
/// The trailer section, in bytes and field lines (hyper's `TRAILER_LIMIT`
/// and header count).
const MAX_TRAILER_BYTES: usize = 16 * 1024;
const MAX_TRAILERS: usize = super::head::MAX_HEADERS;
/// 16 hex digits fill a u64, so the size can never overflow.
const MAX_SIZE_DIGITS: u8 = 16;

/// What is wrong with a chunked body.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChunkedError {
    #[error("chunk size is not a hexadecimal number")]
    InvalidSize,
    #[error("chunk size has more than 16 hex digits")]
    SizeTooLong,
    #[error("chunk-size line longer than 4096 bytes")]
    SizeLineTooLong,
    #[error("malformed chunk extension")]
    InvalidExtension,
    #[error("chunk extensions exceed 16 KiB")]
    ExtensionsTooLarge,
    #[error("a line in the chunked body ends in a bare LF")]
    BareLf,
    #[error("a CR in the chunked body is not followed by LF")]
    BareCr,
    #[error("chunk data is not followed by CRLF")]
    MissingDataCrlf,
    #[error("malformed trailer field")]
    InvalidTrailer,
    #[error("obsolete line folding in a trailer field")]
    TrailerObsFold,
    #[error("trailer section larger than 16 KiB")]
    TrailersTooLarge,
    #[error("more than 100 trailer fields")]
    TooManyTrailers,
}

/// The result of one [`ChunkedDecoder::decode`] call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded {
    /// Input bytes used; the next call starts at `input[consumed..]`.
    pub consumed: usize,
    /// Payload to forward: a range inside `input[..consumed]`, maybe empty.
    pub data: Range<usize>,
    /// The last chunk and the trailer section have been read; the bytes
    /// from `consumed` on belong to whatever follows the body.
    pub done: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Hex digits of a chunk size.
    Size,
    /// BWS that must lead to `;` (after the size or an extension).
    BeforeSemicolon,
    /// After `;`: BWS, then an extension name.
    ExtName0,
    ExtName,
    /// BWS after a name: `=`, or `;` for the next extension.
    AfterName,
    /// After `=`: BWS, then a token or a quoted string.
    ExtValue0,
    ExtToken,
    ExtQuoted,
    ExtQuotedEscape,
    /// After a value: `;`, BWS or the line's CR.
    AfterValue,
    /// CR of the size line seen.
    SizeLf,
    /// Chunk data; `size` bytes remain.
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line, or of the final CRLF.
    TrailerStart,
    TrailerName,
    TrailerValue,
    TrailerLf,
    /// CR of the final empty line seen.
    EndLf,
    Done,
}

/// An incremental, strict decoder for one chunked body.
#[derive(Clone, Debug)]
pub struct ChunkedDecoder {
    state: State,
    /// The chunk size being read, then the data bytes left in the chunk.
    size: u64,
    digits: u8,
    line_len: usize,
    extension_bytes: usize,
    trailer_bytes: usize,
    trailers: usize,
    /// Once framing is broken it stays broken: every later call fails alike.
    failed: Option<ChunkedError>,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        ChunkedDecoder {
            state: State::Size,
            size: 0,
            digits: 0,
            line_len: 0,
            extension_bytes: 0,
            trailer_bytes: 0,
            trailers: 0,
            failed: None,
        }
    }

    /// Decode from the front of `input`. `consumed` input bytes were used;
    /// `data` (a range inside `input[..consumed]`) is payload to forward;
    /// call again with `&input[consumed..]` (or more bytes) until `done`.
    /// Returns at most one data range per call; a call with input that
    /// holds only framing returns an empty range. It makes progress on any
    /// non-empty input (a size line or trailer line split across calls is
    /// carried in the decoder's state), except after `done`.
    ///
    /// When the framing breaks after some data in the same call, that data
    /// is returned first (with `consumed` stopping before the bad byte) and
    /// the error comes with the next call, so the payload before an error
    /// does not depend on how the input was split.
    pub fn decode(&mut self, input: &[u8]) -> Result<Decoded, ChunkedError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let mut pos = 0;
        let mut data = 0..0;
        while pos < input.len() {
            match self.state {
                State::Done => break,
                State::Data => {
                    if !data.is_empty() {
                        break;
                    }
                    let available = (input.len() - pos) as u64;
                    // Fits a usize: at most what is left of `input`.
                    let n = self.size.min(available) as usize;
                    data = pos..pos + n;
                    pos += n;
                    self.size -= n as u64;
                    if self.size == 0 {
                        self.state = State::DataCr;
                    }
                }
                _ => match self.step(input[pos]) {
                    Ok(()) => pos += 1,
                    Err(e) => {
                        self.failed = Some(e.clone());
                        if data.is_empty() {
                            return Err(e);
                        }
                        break;
                    }
                },
            }
        }
        Ok(Decoded {
            consumed: pos,
            data,
            done: self.state == State::Done,
        })
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// One framing byte.
    fn step(&mut self, b: u8) -> Result<(), ChunkedError> {
        use State::*;
        match self.state {
            Size | BeforeSemicolon | ExtName0 | ExtName | AfterName | ExtValue0 | ExtToken
            | ExtQuoted | ExtQuotedEscape | AfterValue => {
                self.line_len += 1;
                if self.line_len > MAX_SIZE_LINE && b != b'\r' {
                    return Err(ChunkedError::SizeLineTooLong);
                }
                // Everything on the line but the digits and its end.
                if (self.state != Size || !b.is_ascii_hexdigit()) && b != b'\r' && b != b'\n' {
                    self.extension_bytes += 1;
                    if self.extension_bytes > MAX_EXTENSIONS {
                        return Err(ChunkedError::ExtensionsTooLarge);
                    }
                }
            }
            TrailerStart | TrailerName | TrailerValue | TrailerLf | EndLf => {
                self.trailer_bytes += 1;
                if self.trailer_bytes > MAX_TRAILER_BYTES {
                    return Err(ChunkedError::TrailersTooLarge);
                }
            }
            SizeLf | Data | DataCr | DataLf | Done => {}
        }
        self.state = match (self.state, b) {
            (Size, _) if b.is_ascii_hexdigit() => {
                if self.digits == MAX_SIZE_DIGITS {
                    return Err(ChunkedError::SizeTooLong);
                }
                self.digits += 1;
                self.size = self.size << 4 | u64::from(hex(b));
                Size
            }
            (Size, _) if self.digits == 0 => {
                return Err(if b == b'\n' {
                    ChunkedError::BareLf
                } else {
                    ChunkedError::InvalidSize
                })
            }
            (Size | BeforeSemicolon, b' ' | b'\t') => BeforeSemicolon,
            (AfterName, b' ' | b'\t') => AfterName,
            (Size | BeforeSemicolon | ExtName | AfterName | ExtToken | AfterValue, b';') => {
                ExtName0
            }
            (Size | ExtName | ExtToken | AfterValue, b'\r') => SizeLf,
            (Size | ExtName | ExtToken | AfterValue | BeforeSemicolon | AfterName, b'\n') => {
                return Err(ChunkedError::BareLf)
            }
            (Size, _) => return Err(ChunkedError::InvalidSize),
            (ExtName0 | ExtValue0, b' ' | b'\t') => self.state,
            (ExtName0 | ExtName, _) if is_tchar(b) => ExtName,
            (ExtName, b' ' | b'\t') => AfterName,
            (ExtName | AfterName, b'=') => ExtValue0,
            (ExtValue0, b'"') => ExtQuoted,
            (ExtValue0 | ExtToken, _) if is_tchar(b) => ExtToken,
            (ExtToken | AfterValue, b' ' | b'\t') => BeforeSemicolon,
            (ExtQuoted, b'"') => AfterValue,
            (ExtQuoted, b'\\') => ExtQuotedEscape,
            (ExtQuoted | ExtQuotedEscape, _) if is_qdtext(b) || b == b'"' || b == b'\\' => {
                ExtQuoted
            }
            (
                BeforeSemicolon | ExtName0 | ExtName | AfterName | ExtValue0 | ExtToken | ExtQuoted
                | ExtQuotedEscape | AfterValue,
                _,
            ) => return Err(ChunkedError::InvalidExtension),
            (SizeLf, b'\n') => {
                self.line_len = 0;
                self.digits = 0;
                if self.size == 0 {
                    TrailerStart
                } else {
                    Data
                }
            }
            (TrailerLf, b'\n') => TrailerStart,
            (EndLf, b'\n') => Done,
            (SizeLf | TrailerLf | EndLf, _) => return Err(ChunkedError::BareCr),
            (DataCr, b'\r') => DataLf,
            (DataLf, b'\n') => Size,
            (DataCr | DataLf, _) => return Err(ChunkedError::MissingDataCrlf),
            (TrailerStart, b'\r') => EndLf,
            (TrailerStart, _) if is_tchar(b) => {
                if self.trailers == MAX_TRAILERS {
                    return Err(ChunkedError::TooManyTrailers);
                }
                self.trailers += 1;
                TrailerName
            }
            (TrailerStart, b' ' | b'\t') if self.trailers > 0 => {
                return Err(ChunkedError::TrailerObsFold)
            }
            (TrailerName, _) if is_tchar(b) => TrailerName,
            (TrailerName, b':') => TrailerValue,
            (TrailerValue, b'\r') => TrailerLf,
            (TrailerValue, _) if is_field_value_byte(b) => TrailerValue,
            (TrailerStart | TrailerName | TrailerValue, b'\n') => return Err(ChunkedError::BareLf),
            (TrailerStart | TrailerName | TrailerValue, _) => {
                return Err(ChunkedError::InvalidTrailer)
            }
            // `decode` never steps these states.
            (Data | Done, _) => self.state,
        };
        Ok(())
    }
}

fn hex(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

/// tchar (RFC 9110 §5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// qdtext (RFC 9110 §5.6.4), and what may follow a backslash besides
/// `"` and `\`.
fn is_qdtext(b: u8) -> bool {
    matches!(b, b'\t' | b' ' | 0x21 | 0x23..=0x5B | 0x5D..=0x7E | 0x80..=0xFF)
}

/// A field-value byte as httparse takes it in a head: HTAB, SP, VCHAR and
/// obs-text; never NUL, CR, LF or other controls.
fn is_field_value_byte(b: u8) -> bool {
    matches!(b, b'\t' | b' '..=0x7E | 0x80..=0xFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `pieces` in order, as reads would bring them; return the
    /// payload, the outcome (done, or the error) and what follows the body
    /// (nothing after an error).
    fn run(pieces: &[&[u8]]) -> (Vec<u8>, Result<bool, ChunkedError>, Vec<u8>) {
        let mut decoder = ChunkedDecoder::new();
        let mut buf = Vec::new();
        let mut payload = Vec::new();
        for piece in pieces {
            buf.extend_from_slice(piece);
            while !buf.is_empty() && !decoder.is_done() {
                match decoder.decode(&buf) {
                    Ok(d) => {
                        assert!(d.consumed > 0, "no progress on {buf:?}");
                        assert!(d.data.end <= d.consumed);
                        assert_eq!(d.done, decoder.is_done());
                        payload.extend_from_slice(&buf[d.data]);
                        buf.drain(..d.consumed);
                    }
                    Err(e) => return (payload, Err(e), Vec::new()),
                }
            }
        }
        (payload, Ok(decoder.is_done()), buf)
    }

    fn ok(input: &[u8]) -> Vec<u8> {
        match run(&[input]) {
            (payload, Ok(true), rest) if rest.is_empty() => payload,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(input)),
        }
    }

    fn err(input: &[u8]) -> ChunkedError {
        match run(&[input]) {
            (_, Err(e), _) => e,
            other => panic!("{:?} accepted: {other:?}", String::from_utf8_lossy(input)),
        }
    }

    #[test]
    fn a_body_decodes_to_its_payload_and_stops_at_its_end() {
        let input = b"5\r\nhello\r\n1;a=b\r\n \r\nA\r\n0123456789\r\n0\r\n\r\nGET / HTTP/1.1\r\n";
        let (payload, done, rest) = run(&[input]);
        assert_eq!(payload, b"hello 0123456789");
        assert_eq!(done, Ok(true));
        assert_eq!(rest, b"GET / HTTP/1.1\r\n");
        let mut decoder = ChunkedDecoder::new();
        let first = decoder.decode(input).unwrap();
        // One data range per call; the framing after it is consumed too.
        assert_eq!(
            first,
            Decoded {
                consumed: 17,
                data: 3..8,
                done: false
            }
        );
        let second = decoder.decode(&input[17..]).unwrap();
        assert_eq!(
            second,
            Decoded {
                consumed: 6,
                data: 0..1,
                done: false
            }
        );
        let last = decoder.decode(&input[23..]).unwrap();
        assert_eq!(
            last,
            Decoded {
                consumed: 17,
                data: 0..10,
                done: true
            }
        );
        // Framing alone makes progress with an empty range.
        let mut decoder = ChunkedDecoder::new();
        let framing = decoder.decode(b"0\r\n").unwrap();
        assert_eq!(
            framing,
            Decoded {
                consumed: 3,
                data: 0..0,
                done: false
            }
        );
        let end = decoder.decode(b"\r\nnext").unwrap();
        assert_eq!(
            end,
            Decoded {
                consumed: 2,
                data: 0..0,
                done: true
            }
        );
        assert_eq!(decoder.decode(b"next").unwrap().consumed, 0);
    }

    #[test]
    fn sizes_are_1_to_16_hex_digits() {
        assert_eq!(ok(b"00a\r\n0123456789\r\n0000\r\n\r\n"), b"0123456789");
        assert_eq!(ok(b"A\r\n0123456789\r\n0\r\n\r\n"), b"0123456789");
        let mut decoder = ChunkedDecoder::new();
        decoder.decode(b"ffffffffffffffff\r\nab").unwrap();
        assert_eq!(decoder.size, u64::MAX - 2);
        for (input, e) in [
            (
                &b"00000000000000005\r\nhello\r\n0\r\n\r\n"[..],
                ChunkedError::SizeTooLong,
            ),
            (b"10000000000000000\r\n", ChunkedError::SizeTooLong),
            (b"0x5\r\nhello\r\n0\r\n\r\n", ChunkedError::InvalidSize),
            (b"+5\r\nhello\r\n0\r\n\r\n", ChunkedError::InvalidSize),
            (b"-5\r\n", ChunkedError::InvalidSize),
            (b" 5\r\nhello\r\n0\r\n\r\n", ChunkedError::InvalidSize),
            (b"\r\n", ChunkedError::InvalidSize),
            (b"g\r\n", ChunkedError::InvalidSize),
            (b"5g\r\n", ChunkedError::InvalidSize),
            (b"5,a\r\n", ChunkedError::InvalidSize),
            (b"\xd9\xa5\r\nhello\r\n0\r\n\r\n", ChunkedError::InvalidSize),
        ] {
            assert_eq!(err(input), e, "{:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn extensions_follow_the_grammar_and_are_dropped() {
        for line in [
            "5;a",
            "5;a=b",
            "5 ;a",
            "5\t; a = b ;c",
            "5;a=\"q \\\" ; x\";b=t",
            "5;a=\"\\a\\\t\"",
            "5;!#$%&'*+-.^_`|~=z",
        ] {
            let input = format!("{line}\r\nhello\r\n0;last\r\n\r\n");
            assert_eq!(ok(input.as_bytes()), b"hello", "{line:?}");
        }
        for line in [
            "5 ",
            "5;",
            "5;a ",
            "5;a=",
            "5;a=b ",
            "5;=b",
            "5;a=\"b",
            "5;a=\"b\"c",
            "5;a=b=c",
            "5;a=\"\x01\"",
            "5;a=\"\\\x7f\"",
            "5 5",
            "5;a\x00",
        ] {
            let input = format!("{line}\r\nhello\r\n0\r\n\r\n");
            assert_eq!(
                err(input.as_bytes()),
                ChunkedError::InvalidExtension,
                "{line:?}"
            );
        }
    }

    #[test]
    fn long_size_lines_and_extension_floods_are_refused() {
        let line = |ext: usize| format!("1;{}\r\nx\r\n", "a".repeat(ext));
        // 4096 bytes before the CR is the most a size line may have.
        let input = format!("{}0\r\n\r\n", line(MAX_SIZE_LINE - 2));
        assert_eq!(ok(input.as_bytes()), b"x");
        let input = format!("{}0\r\n\r\n", line(MAX_SIZE_LINE - 1));
        assert_eq!(err(input.as_bytes()), ChunkedError::SizeLineTooLong);
        // Under the line limit each, but over 16 KiB in all.
        let input = line(4000).repeat(5);
        assert_eq!(err(input.as_bytes()), ChunkedError::ExtensionsTooLarge);
    }

    #[test]
    fn every_line_ends_in_crlf() {
        for (input, e) in [
            (&b"5\nhello\r\n0\r\n\r\n"[..], ChunkedError::BareLf),
            (b"5\rhello\r\n0\r\n\r\n", ChunkedError::BareCr),
            (b"5;a\nhello\r\n0\r\n\r\n", ChunkedError::BareLf),
            (b"5;a=b\nhello\r\n0\r\n\r\n", ChunkedError::BareLf),
            (b"5\r\nhello\n0\r\n\r\n", ChunkedError::MissingDataCrlf),
            (b"5\r\nhello\r0\r\n\r\n", ChunkedError::MissingDataCrlf),
            (b"5\r\nhello0\r\n\r\n", ChunkedError::MissingDataCrlf),
            (b"5\r\nhelloo\r\n0\r\n\r\n", ChunkedError::MissingDataCrlf),
            (b"5\r\nhello\r\n0\n\r\n", ChunkedError::BareLf),
            (b"5\r\nhello\r\n0\r\n\n", ChunkedError::BareLf),
            (b"5\r\nhello\r\n0\r\n\rx", ChunkedError::BareCr),
            (b"0\r\nX: a\n\r\n", ChunkedError::BareLf),
            (b"0\r\nX: a\rb\r\n\r\n", ChunkedError::BareCr),
        ] {
            assert_eq!(err(input), e, "{:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn data_before_a_fault_is_delivered_and_the_fault_follows() {
        let input = b"5\r\nhello\r\nzz\r\nbroken\r\n0\r\n\r\n";
        let mut decoder = ChunkedDecoder::new();
        let first = decoder.decode(input).unwrap();
        assert_eq!((first.data, first.consumed), (3..8, 10));
        assert_eq!(decoder.decode(&input[10..]), Err(ChunkedError::InvalidSize));
        assert_eq!(decoder.decode(b"0\r\n\r\n"), Err(ChunkedError::InvalidSize));
        assert_eq!(run(&[input]).0, b"hello");
    }

    #[test]
    fn trailers_are_checked_then_dropped() {
        assert_eq!(
            ok(b"5\r\nhello\r\n0\r\nX-Sum: abc\r\nX-Empty:\r\nX-L: caf\xe9\r\n\r\n"),
            b"hello"
        );
        for (input, e) in [
            (&b"0\r\nX-Sum abc\r\n\r\n"[..], ChunkedError::InvalidTrailer),
            (b"0\r\nX-Sum : abc\r\n\r\n", ChunkedError::InvalidTrailer),
            (b"0\r\n: abc\r\n\r\n", ChunkedError::InvalidTrailer),
            (b"0\r\n abc: d\r\n\r\n", ChunkedError::InvalidTrailer),
            (b"0\r\nX: a\0b\r\n\r\n", ChunkedError::InvalidTrailer),
            (b"0\r\nX: a\x7f\r\n\r\n", ChunkedError::InvalidTrailer),
            (b"0\r\nX: a\r\n b\r\n\r\n", ChunkedError::TrailerObsFold),
            (b"0\r\nX: a\r\n\tb\r\n\r\n", ChunkedError::TrailerObsFold),
        ] {
            assert_eq!(err(input), e, "{:?}", String::from_utf8_lossy(input));
        }
        let many = format!("0\r\n{}\r\n", "X: y\r\n".repeat(MAX_TRAILERS));
        assert_eq!(ok(many.as_bytes()), b"");
        let many = format!("0\r\n{}\r\n", "X: y\r\n".repeat(MAX_TRAILERS + 1));
        assert_eq!(err(many.as_bytes()), ChunkedError::TooManyTrailers);
        let big = format!("0\r\nX: {}\r\n\r\n", "v".repeat(MAX_TRAILER_BYTES));
        assert_eq!(err(big.as_bytes()), ChunkedError::TrailersTooLarge);
    }

    #[test]
    fn any_split_of_the_input_decodes_alike() {
        let inputs: [&[u8]; 8] = [
            b"5\r\nhello\r\n1;a=\"b;c\"\r\n \r\n6\r\nworld!\r\n0\r\nX-T: v\r\n\r\nrest",
            b"3\r\nabc\r\n0\r\n\r\n",
            b"3\r\nabc\r\n3\r\ndef",
            b"3\r\nabc\r\nzz\r\n",
            b"3\r\nabc\r\n3\r\ndefX\r\n0\r\n\r\n",
            b"2;x=\"\\\"\"\r\nab\r\n0\r\nA: b\r\nC: d\r\n\r\n",
            b"1\r\na\r\n0\r\nA: b\r\n c\r\n\r\n",
            b"0\r\n\r\n",
        ];
        for input in inputs {
            let whole = run(&[input]);
            let mut bytes: Vec<&[u8]> = input.chunks(1).collect();
            assert_eq!(
                run(&bytes),
                whole,
                "one byte at a time: {:?}",
                String::from_utf8_lossy(input)
            );
            for at in 0..=input.len() {
                let (a, b) = input.split_at(at);
                assert_eq!(
                    run(&[a, b]),
                    whole,
                    "split at {at}: {:?}",
                    String::from_utf8_lossy(input)
                );
                for at2 in at..=input.len() {
                    let (b1, c) = b.split_at(at2 - at);
                    bytes = vec![a, b1, c];
                    assert_eq!(run(&bytes), whole);
                }
            }
        }
    }

    #[test]
    fn errors_read_as_short_sentences() {
        assert_eq!(
            ChunkedError::MissingDataCrlf.to_string(),
            "chunk data is not followed by CRLF"
        );
    }
}
