//! RFC 9457 problem details: the single place where rejections become
//! HTTP responses.

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;

use crate::decision::{Denial, Reason};

pub const CONTENT_TYPE_PROBLEM: &str = "application/problem+json";

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
    reason: &'a str,
}

/// The `type` URI of a reason: stable, documented, one per reason.
pub fn type_uri(reason: Reason) -> String {
    format!(
        "https://licensegate.io/problems/{}",
        reason.as_str().replace('_', "-")
    )
}

/// Render a denial as `application/problem+json`, keeping its extra headers.
pub fn render(denial: Denial) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(&Problem {
        kind: type_uri(denial.reason),
        title: denial.reason.title(),
        status: denial.status.as_u16(),
        detail: &denial.detail,
        reason: denial.reason.as_str(),
    })
    .expect("problem serialises: all fields are plain strings and numbers");
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = denial.status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_PROBLEM));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.extend(denial.headers);
    response
}

/// Shorthand for proxy-side failures that are not policy decisions.
pub fn error(
    status: StatusCode,
    reason: Reason,
    detail: impl Into<std::borrow::Cow<'static, str>>,
) -> Response<Full<Bytes>> {
    render(Denial::new(status, reason, detail))
}
