//! licensegate's own HTTP/1.1 codec: pure functions and state machines,
//! bytes in and typed values out, with no I/O. The relay frames requests
//! and responses with it in the inbound connection's task.
//!
//! - [`head`]: request and response heads and their body framing;
//! - [`chunked`]: the chunked transfer coding, decoded incrementally;
//! - [`write`]: heads and chunk framing written back out.

pub mod chunked;
pub mod head;
pub mod write;

pub use chunked::{ChunkedDecoder, ChunkedError, Decoded};
pub use head::{
    parse_request, parse_response, BodyFraming, HeadError, RequestHead, ResponseFraming,
    ResponseHead, MAX_HEADERS,
};
pub use write::{
    http_date, write_chunk_header, write_request_head, write_response_head, ResponseOut, CHUNK_END,
    LAST_CHUNK,
};
