//! Where journalled records go: a CloudEvents collector (OpenMeter), Stripe
//! meter events, or JSON lines. Each sink formats a batch and delivers it;
//! what a failure means (retry, or dead-letter and move on) is decided here
//! once, from the status, for every HTTP sink.

use std::fmt;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::metrics::ErrorKind;
use super::record::Record;
use super::settings::{shown_url, Fsync, HttpTarget, SinkSettings, SinkTarget};
use crate::untrusted::{error_chain, printable};

pub mod cloudevents;
pub mod jsonl;
pub mod stripe;

#[cfg(test)]
mod tests;

/// The most of a sink's answer kept (in logs and dead-letter lines).
const MAX_ANSWER_BYTES: usize = 4096;
/// The longest `Retry-After` honoured: a sink asking for more is asked again
/// after this, so one bad header cannot stall exports for a day.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// A sink could not take a batch now; the exporter retries it whole.
#[derive(Debug)]
pub struct Retry {
    pub kind: ErrorKind,
    /// What the sink asked for (`Retry-After`), else the back-off decides.
    pub after: Option<Duration>,
    pub detail: String,
}

/// Records the sink refused for good: dead-lettered, never sent again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Indexes into the batch.
    pub records: Vec<usize>,
    pub status: u16,
    /// The start of the sink's answer, escaped.
    pub answer: String,
}

/// A configured sink.
pub enum Sink {
    CloudEvents(HttpSink),
    Stripe(HttpSink),
    Jsonl(jsonl::JsonlSink),
}

impl fmt::Debug for Sink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sink::CloudEvents(http) => f.debug_tuple("CloudEvents").field(http).finish(),
            Sink::Stripe(http) => f.debug_tuple("Stripe").field(http).finish(),
            Sink::Jsonl(jsonl) => f.debug_tuple("Jsonl").field(jsonl).finish(),
        }
    }
}

/// A sink that could not be set up (a CA file that cannot be read).
#[derive(Debug, thiserror::Error)]
#[error("metering sink `{sink}`: {message}")]
pub struct SinkError {
    pub sink: String,
    pub message: String,
}

impl Sink {
    pub fn new(settings: &SinkSettings, fsync: Fsync) -> Result<Sink, SinkError> {
        let error = |message: String| SinkError {
            sink: settings.name.clone(),
            message,
        };
        Ok(match &settings.target {
            SinkTarget::CloudEvents(target) => {
                Sink::CloudEvents(HttpSink::new(target, settings.timeout).map_err(error)?)
            }
            SinkTarget::Stripe(target) => {
                Sink::Stripe(HttpSink::new(target, settings.timeout).map_err(error)?)
            }
            SinkTarget::Jsonl(target) => Sink::Jsonl(jsonl::JsonlSink::new(target.clone(), fsync)),
        })
    }

    /// Deliver `batch`: `Ok` with what was refused for good (often
    /// nothing), or a [`Retry`] for the whole batch.
    pub async fn deliver(&mut self, batch: &[Record]) -> Result<Vec<Rejection>, Retry> {
        match self {
            Sink::CloudEvents(http) => {
                let (content_type, body) = cloudevents::format_batch(batch);
                match http.post(content_type, body, None).await? {
                    Answer::Accepted => Ok(Vec::new()),
                    Answer::Rejected { status, answer } => Ok(vec![Rejection {
                        records: (0..batch.len()).collect(),
                        status,
                        answer,
                    }]),
                }
            }
            Sink::Stripe(http) => stripe::deliver(http, batch).await,
            Sink::Jsonl(jsonl) => jsonl.deliver(batch).await.map(|()| Vec::new()),
        }
    }
}

/// What an HTTP sink answered, when it is final.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    Accepted,
    Rejected { status: u16, answer: String },
}

/// One HTTPS endpoint with its own TLS trust and headers; connections are
/// pooled (exports come every window).
pub struct HttpSink {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    url: Uri,
    shown_url: String,
    headers: HeaderMap,
    timeout: Duration,
}

impl fmt::Debug for HttpSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpSink")
            .field("url", &self.shown_url)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl HttpSink {
    pub fn new(target: &HttpTarget, timeout: Duration) -> Result<HttpSink, String> {
        super::settings::check_url(&target.url, target.allow_http)?;
        let https = target.url.scheme() == Some(&http::uri::Scheme::HTTPS);
        let connector =
            crate::tls::service_connector(target.ca.as_deref(), https, target.allow_http, timeout)
                .map_err(|e| e.message)?;
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        let mut headers = HeaderMap::new();
        for (name, value) in &target.headers {
            let mut value = value.clone();
            value.set_sensitive(true);
            headers.append(name.clone(), value);
        }
        if !headers.contains_key(USER_AGENT) {
            headers.insert(
                USER_AGENT,
                HeaderValue::from_static(concat!("licensegate/", env!("CARGO_PKG_VERSION"))),
            );
        }
        Ok(HttpSink {
            client,
            url: target.url.clone(),
            shown_url: shown_url(&target.url),
            headers,
            timeout,
        })
    }

    pub fn url(&self) -> &str {
        &self.shown_url
    }

    /// POST `body`; the answer when final, a [`Retry`] when not.
    pub async fn post(
        &self,
        content_type: &'static str,
        body: Vec<u8>,
        idempotency_key: Option<&str>,
    ) -> Result<Answer, Retry> {
        let mut request = Request::new(Full::new(Bytes::from(body)));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.url.clone();
        *request.headers_mut() = self.headers.clone();
        request
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        if let Some(key) = idempotency_key.and_then(|k| HeaderValue::from_str(k).ok()) {
            request.headers_mut().insert("idempotency-key", key);
        }
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| Retry {
                kind: ErrorKind::Network,
                after: None,
                detail: format!("{}: {}", self.shown_url, error_chain(&e)),
            })?;
            let (parts, body) = response.into_parts();
            // The answer says why (e.g. "invalid API key"); bounded.
            let answer = match Limited::new(body, MAX_ANSWER_BYTES * 4).collect().await {
                Ok(collected) => printable(&collected.to_bytes(), MAX_ANSWER_BYTES),
                Err(_) if parts.status.is_success() => String::new(),
                Err(error) => {
                    return Err(Retry {
                        kind: ErrorKind::Network,
                        after: None,
                        detail: format!(
                            "{}: reading the answer failed: {}",
                            self.shown_url,
                            error_chain(&*error)
                        ),
                    })
                }
            };
            Ok(classify(
                parts.status,
                &parts.headers,
                answer,
                &self.shown_url,
                SystemTime::now(),
            ))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result?,
            Err(_) => Err(Retry {
                kind: ErrorKind::Timeout,
                after: None,
                detail: format!(
                    "{}: no answer within {}",
                    self.shown_url,
                    humantime::format_duration(self.timeout)
                ),
            }),
        }
    }
}

/// What a status means for the batch: 2xx accepted; 408, 429 and 5xx
/// retried (honouring `Retry-After`); anything else refused for good.
pub fn classify(
    status: StatusCode,
    headers: &HeaderMap,
    answer: String,
    url: &str,
    now: SystemTime,
) -> Result<Answer, Retry> {
    if status.is_success() {
        return Ok(Answer::Accepted);
    }
    let kind = match status {
        StatusCode::REQUEST_TIMEOUT => Some(ErrorKind::Timeout),
        StatusCode::TOO_MANY_REQUESTS => Some(ErrorKind::Throttled),
        status if status.is_server_error() => Some(ErrorKind::Server),
        _ => None,
    };
    match kind {
        Some(kind) => Err(Retry {
            kind,
            after: headers
                .get(RETRY_AFTER)
                .and_then(|value| retry_after(value.as_bytes(), now)),
            detail: if answer.is_empty() {
                format!("{url}: HTTP {status}")
            } else {
                format!("{url}: HTTP {status}: {answer}")
            },
        }),
        None => Ok(Answer::Rejected {
            status: status.as_u16(),
            answer,
        }),
    }
}

/// `Retry-After` as delay-seconds or an HTTP date (RFC 9110 §10.2.3),
/// capped at [`MAX_RETRY_AFTER`].
pub fn retry_after(value: &[u8], now: SystemTime) -> Option<Duration> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let delay = match text.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let at = httpdate::parse_http_date(text).ok()?;
            at.duration_since(now).unwrap_or(Duration::ZERO)
        }
    };
    Some(delay.min(MAX_RETRY_AFTER))
}
