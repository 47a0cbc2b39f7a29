//! Why a forwarded request got no response from the upstream.

use crate::metrics::UpstreamErrorKind;

/// Why the upstream gave no response.
#[derive(Debug)]
pub struct UpstreamError {
    pub kind: UpstreamErrorKind,
    pub detail: String,
    /// The client's request body failed (malformed chunked framing, or the
    /// client went away mid-body): the client's fault, not the upstream's.
    pub client_body: bool,
}

impl UpstreamError {
    pub fn new(kind: UpstreamErrorKind, detail: String) -> Self {
        UpstreamError {
            kind,
            detail,
            client_body: false,
        }
    }

    /// A hyper error from sending a request: a failure of the request body
    /// read from the client is hyper's "user body" error whose cause is the
    /// inbound connection's own hyper error.
    pub fn from_hyper(kind: UpstreamErrorKind, error: &(dyn std::error::Error + 'static)) -> Self {
        let mut client_body = false;
        let mut cause = Some(error);
        while let Some(current) = cause {
            if let Some(hyper_error) = current.downcast_ref::<hyper::Error>() {
                client_body = hyper_error.is_user()
                    && std::error::Error::source(hyper_error)
                        .is_some_and(|s| s.downcast_ref::<hyper::Error>().is_some());
                break;
            }
            cause = current.source();
        }
        UpstreamError {
            kind,
            detail: describe(error),
            client_body,
        }
    }
}

/// The error and its causes, for the problem `detail`.
pub fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
