//! Why a forwarded request got no response from the upstream, said twice:
//! plainly for the client ([`Failure`], with the upstream named only when
//! it is on this machine) and in full for the log (`detail`).

use std::borrow::Cow;
use std::time::Duration;

use super::UpstreamErrorKind;

/// Why the upstream gave no response.
#[derive(Debug)]
pub struct UpstreamError {
    pub kind: UpstreamErrorKind,
    /// What happened, for the client.
    pub failure: Failure,
    /// The error and its causes (addresses included), for the log.
    pub detail: String,
    /// The client's request body failed (malformed chunked framing, or the
    /// client went away mid-body): the client's fault, not the upstream's.
    pub client_body: bool,
}

/// What happened, in words a client can act on. Variants carry no
/// addresses: the proxy puts the upstream's name in front.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    Refused,
    /// The connect timeout, when known where the failure is classified.
    ConnectTimeout(Option<Duration>),
    Unresolved,
    Tls,
    Reset,
    ClosedBeforeAnswering,
    ResponseTimeout(Duration),
    /// A sentence of its own (the connection budget, a wrong 101).
    Said(Cow<'static, str>),
    /// Anything else: a cause without addresses (an I/O error's kind, a
    /// hyper error's text).
    Other(String),
}

impl Failure {
    /// The sentence for a problem's `detail`; `upstream` is how the
    /// upstream is called ("the upstream at 127.0.0.1:5173", "the upstream").
    pub fn describe(&self, upstream: &str) -> String {
        let human = |d: &Duration| humantime::format_duration(*d);
        match self {
            Failure::Refused => format!("{upstream} refused the connection"),
            Failure::ConnectTimeout(Some(d)) => {
                format!("{upstream} did not accept a connection within {}", human(d))
            }
            Failure::ConnectTimeout(None) => {
                format!("{upstream} did not accept a connection in time")
            }
            Failure::Unresolved => format!("the name of {upstream} could not be resolved"),
            Failure::Tls => format!("the TLS handshake with {upstream} failed"),
            Failure::Reset => format!("{upstream} reset the connection"),
            Failure::ClosedBeforeAnswering => {
                format!("{upstream} closed the connection before answering")
            }
            Failure::ResponseTimeout(d) => {
                format!("{upstream} did not answer within {}", human(d))
            }
            Failure::Said(text) => text.to_string(),
            Failure::Other(cause) => format!("the request to {upstream} failed: {cause}"),
        }
    }
}

impl UpstreamError {
    pub fn new(kind: UpstreamErrorKind, failure: Failure, detail: String) -> Self {
        UpstreamError {
            kind,
            failure,
            detail,
            client_body: false,
        }
    }

    /// A failure that says itself what happened (no cause to classify).
    pub fn said(kind: UpstreamErrorKind, text: impl Into<Cow<'static, str>>) -> Self {
        let text = text.into();
        UpstreamError::new(kind, Failure::Said(text.clone()), text.into_owned())
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
            failure: classify(error),
            detail: describe(error),
            client_body,
        }
    }
}

/// What an error chain says happened, read from the most telling link: an
/// I/O error's kind, hyper's "closed before the message completed", a TLS
/// error, a resolver's failure.
pub fn classify(error: &(dyn std::error::Error + 'static)) -> Failure {
    let mut cause = Some(error);
    while let Some(current) = cause {
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            if io
                .get_ref()
                .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
            {
                return Failure::Tls;
            }
            return of_io(io);
        }
        if current.downcast_ref::<rustls::Error>().is_some() {
            return Failure::Tls;
        }
        if let Some(hyper_error) = current.downcast_ref::<hyper::Error>() {
            if hyper_error.is_incomplete_message() {
                return Failure::ClosedBeforeAnswering;
            }
        }
        // hyper-util's connector names the step that failed, not a type.
        if current.to_string() == "dns error" {
            return Failure::Unresolved;
        }
        cause = current.source();
    }
    Failure::Other(error.to_string())
}

/// An I/O error as a failure; its text has no addresses.
pub fn of_io(error: &std::io::Error) -> Failure {
    use std::io::ErrorKind as K;
    match error.kind() {
        K::ConnectionRefused => Failure::Refused,
        K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => Failure::Reset,
        K::UnexpectedEof => Failure::ClosedBeforeAnswering,
        K::TimedOut => Failure::ConnectTimeout(None),
        _ => Failure::Other(error.to_string()),
    }
}

/// The error and its causes, for the log.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_read_plainly() {
        let at = "the upstream at 127.0.0.1:5173";
        assert_eq!(
            Failure::Refused.describe(at),
            "the upstream at 127.0.0.1:5173 refused the connection"
        );
        assert_eq!(
            Failure::ResponseTimeout(Duration::from_secs(30)).describe(at),
            "the upstream at 127.0.0.1:5173 did not answer within 30s"
        );
        assert_eq!(
            Failure::ClosedBeforeAnswering.describe("the upstream"),
            "the upstream closed the connection before answering"
        );
    }

    #[test]
    fn io_errors_are_classified_by_kind() {
        use std::io::{Error, ErrorKind};
        let refused = Error::from(ErrorKind::ConnectionRefused);
        assert_eq!(classify(&refused), Failure::Refused);
        let reset = Error::from(ErrorKind::ConnectionReset);
        assert_eq!(classify(&reset), Failure::Reset);
        // Wrapped, as connectors do.
        #[derive(Debug, thiserror::Error)]
        #[error("tcp connect error")]
        struct Wrapper(#[source] Error);
        let wrapped = Wrapper(Error::from(ErrorKind::ConnectionRefused));
        assert_eq!(classify(&wrapped), Failure::Refused);
    }
}
