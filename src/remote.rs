//! One bounded GET from a remote service, for the clients that fetch what
//! a vendor or an identity provider publishes (the license refresh, user
//! JWKS): the URL rules (`https://`, plain `http://` to loopback only, no
//! credentials in the URL), the URL as logs show it, and a request whose
//! time and response size are bounded and whose errors say what the other
//! side answered. A leaf: what the body means is each caller's business.

use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, LOCATION, USER_AGENT};
use http::uri::Scheme;
use http::{HeaderMap, HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, LengthLimitError, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::untrusted::{error_chain, printable};

/// What went wrong in a GET.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchErrorKind {
    /// No response: DNS, TCP, TLS (e.g. an untrusted certificate) or HTTP
    /// protocol failure. The text is the whole error chain.
    #[error("request failed: {0}")]
    Request(String),
    /// No complete response within the timeout.
    #[error("no complete response within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    /// A status the caller does not take. Redirects are not followed.
    #[error("HTTP status {status}{detail}")]
    Status {
        /// The status received.
        status: StatusCode,
        /// `: ` and the start of the body (escaped, truncated), or empty.
        detail: String,
    },
    /// The body is bigger than the caller's limit.
    #[error("response body is larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// The body could not be read, or is not what the caller expects.
    #[error("{0}")]
    Response(String),
}

/// Which setting a [`RemoteClient`] could not be built from.
#[derive(Debug, PartialEq, Eq)]
pub enum SetupError {
    /// The URL: not absolute, not https, credentials in it.
    Url(String),
    /// The CA bundle.
    Ca(String),
}

/// A 200 (or, when asked for, 304) response, its body read in full.
#[derive(Debug)]
pub struct Fetched {
    /// 200, or 304 when the caller accepts it.
    pub status: StatusCode,
    /// The response headers.
    pub headers: HeaderMap,
    /// The body, at most the client's limit.
    pub body: Bytes,
}

/// GETs one URL. Each GET opens a fresh connection: fetches are minutes to
/// hours apart, so pooled connections would only sit idle.
pub struct RemoteClient {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    url: Uri,
    shown_url: String,
    headers: HeaderMap,
    timeout: Duration,
    limit: usize,
}

impl fmt::Debug for RemoteClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteClient")
            .field("url", &self.shown_url)
            .field("timeout", &self.timeout)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl RemoteClient {
    /// Check `url` and build the client (loading the CA bundle, or the
    /// system roots, now rather than at the first GET). `headers` go with
    /// every request; a `User-Agent` naming licensegate is added unless
    /// given. Bodies over `limit` bytes are refused; `timeout` bounds the
    /// whole exchange.
    pub fn new(
        url: &Uri,
        allow_http: bool,
        ca: Option<&Path>,
        timeout: Duration,
        limit: usize,
        mut headers: HeaderMap,
    ) -> Result<RemoteClient, SetupError> {
        let https = check_url(url, allow_http).map_err(SetupError::Url)?;
        let connector = crate::tls::service_connector(ca, https, allow_http, timeout)
            .map_err(|error| SetupError::Ca(error.message))?;
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_max_idle_per_host(0)
            .build(connector);
        if !headers.contains_key(USER_AGENT) {
            headers.insert(
                USER_AGENT,
                HeaderValue::from_static(concat!("licensegate/", env!("CARGO_PKG_VERSION"))),
            );
        }
        Ok(RemoteClient {
            client,
            url: url.clone(),
            shown_url: shown_url(url),
            headers,
            timeout,
            limit,
        })
    }

    /// The URL, query redacted, as errors and logs show it.
    pub fn url(&self) -> &str {
        &self.shown_url
    }

    /// The bound on one GET.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// GET the URL once, with `extra` headers on top of the client's. A 200
    /// is returned with its body; so is a 304 when `not_modified` is set
    /// (the caller sent a validator). Anything else is an error.
    pub async fn get(
        &self,
        extra: HeaderMap,
        not_modified: bool,
    ) -> Result<Fetched, FetchErrorKind> {
        match tokio::time::timeout(self.timeout, self.get_once(extra, not_modified)).await {
            Ok(result) => result,
            Err(_) => Err(FetchErrorKind::Timeout(self.timeout)),
        }
    }

    async fn get_once(
        &self,
        extra: HeaderMap,
        not_modified: bool,
    ) -> Result<Fetched, FetchErrorKind> {
        let mut request = Request::new(Empty::<Bytes>::new());
        *request.uri_mut() = self.url.clone();
        let mut headers = self.headers.clone();
        for (name, value) in extra {
            if let Some(name) = name {
                headers.insert(name, value);
            }
        }
        *request.headers_mut() = headers;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| FetchErrorKind::Request(error_chain(&e)))?;
        let (parts, body) = response.into_parts();
        let taken = parts.status == StatusCode::OK
            || (not_modified && parts.status == StatusCode::NOT_MODIFIED);
        if !taken {
            let detail = if parts.status.is_redirection() {
                let location = parts
                    .headers
                    .get(LOCATION)
                    .map_or(&[][..], |v| v.as_bytes());
                format!(
                    ": redirects are not followed (location: {})",
                    printable(location, 200)
                )
            } else {
                // The body often says why (e.g. "invalid API key"); it is
                // untrusted, so it is bounded, escaped and truncated.
                let body = Limited::new(body, self.limit).collect().await;
                match body.map(|collected| collected.to_bytes()) {
                    Ok(bytes) if !bytes.trim_ascii().is_empty() => {
                        format!(": {}", printable(&bytes, 200))
                    }
                    _ => String::new(),
                }
            };
            return Err(FetchErrorKind::Status {
                status: parts.status,
                detail,
            });
        }
        let declared = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|length| length > self.limit as u64) {
            return Err(FetchErrorKind::TooLarge { limit: self.limit });
        }
        let body = match Limited::new(body, self.limit).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(error) if error.is::<LengthLimitError>() => {
                return Err(FetchErrorKind::TooLarge { limit: self.limit })
            }
            Err(error) => {
                return Err(FetchErrorKind::Response(format!(
                    "reading the body failed: {}",
                    error_chain(&*error)
                )))
            }
        };
        Ok(Fetched {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}

/// Check a service URL: absolute, `https://` (or `http://` to a loopback
/// address when `allow_http`), no credentials. Returns whether it is https.
pub fn check_url(url: &Uri, allow_http: bool) -> Result<bool, String> {
    let Some(authority) = url.authority() else {
        return Err(format!("`{url}` is not an absolute https:// URL"));
    };
    if authority.as_str().contains('@') {
        return Err(
            "credentials in the URL would end up in logs; send them in a header (`headers`)".into(),
        );
    }
    match url.scheme() {
        Some(scheme) if *scheme == Scheme::HTTPS => Ok(true),
        Some(scheme) if *scheme == Scheme::HTTP && !allow_http => Err(format!(
            "`{}` must be https:// (plain http:// needs `allow_http: true`, \
             and then only to a loopback address)",
            shown_url(url)
        )),
        Some(scheme) if *scheme == Scheme::HTTP => {
            if is_loopback(authority.host()) {
                Ok(false)
            } else {
                Err(format!(
                    "plain http:// is allowed only to a loopback address, not `{}`",
                    authority.host()
                ))
            }
        }
        _ => Err(format!("`{}` must be https://", shown_url(url))),
    }
}

fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The URL for errors and logs: a query string may carry a credential, so
/// it is replaced by `?…`.
pub fn shown_url(url: &Uri) -> String {
    let mut shown = match (url.scheme(), url.authority()) {
        (Some(scheme), Some(authority)) => format!("{scheme}://{authority}{}", url.path()),
        _ => url.path().to_owned(),
    };
    if url.query().is_some() {
        shown.push_str("?…");
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_https_or_loopback_http_without_credentials() {
        let check = |url: &str, allow_http| check_url(&url.parse().unwrap(), allow_http);
        assert_eq!(check("https://idp.example/jwks", false), Ok(true));
        for url in [
            "http://127.0.0.1:9/t",
            "http://[::1]:9/t",
            "http://localhost:9/t",
        ] {
            assert_eq!(check(url, true), Ok(false), "{url}");
        }
        assert!(check("http://127.0.0.1:9/t", false)
            .unwrap_err()
            .contains("must be https://"));
        assert!(check("http://idp.example/t", true)
            .unwrap_err()
            .contains("only to a loopback address"));
        assert!(check("ftp://127.0.0.1/t", true)
            .unwrap_err()
            .contains("https://"));
        assert!(check("/jwks", false)
            .unwrap_err()
            .contains("not an absolute"));
        let error = check("https://user:pw@idp.example/t", false).unwrap_err();
        assert!(
            error.contains("credentials") && !error.contains("pw"),
            "{error}"
        );
        assert_eq!(
            shown_url(&"https://idp.example/jwks?key=hunter2".parse().unwrap()),
            "https://idp.example/jwks?…"
        );
    }
}
