//! The single place where rejections become HTTP responses: RFC 9457
//! problem details for API clients (the default), a small HTML page for a
//! browser navigation, a gRPC status for a gRPC call ([`negotiate`]
//! decides which).

pub mod grpc;
mod negotiate;
mod page;

use bytes::Bytes;
use http::header::{
    HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, VARY,
    X_CONTENT_TYPE_OPTIONS,
};
use http::Response;
use http_body_util::Full;
use serde::Serialize;

use crate::decision::{Denial, Reason};
pub use negotiate::{format_for, grpc_format, negotiate, Asked, Format};

pub const CONTENT_TYPE_PROBLEM: &str = "application/problem+json";
pub const CONTENT_TYPE_HTML: &str = "text/html; charset=utf-8";

/// The page loads nothing and runs nothing: its only style is inline, and
/// it may not be framed, used as a form target or rebased.
pub const PAGE_POLICY: &str =
    "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

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

/// Render a denial in `format`, keeping its extra headers (`Retry-After`,
/// `RateLimit`, `WWW-Authenticate`) in every form and its status in the
/// HTTP ones (gRPC carries its own).
pub fn render(denial: Denial, format: Format) -> Response<Full<Bytes>> {
    let (body, content_type) = match format {
        Format::Grpc => return grpc::render(denial, grpc::Flavor::Native),
        Format::GrpcWeb => return grpc::render(denial, grpc::Flavor::Web),
        Format::Html => (
            Bytes::from(page::render(&denial)),
            HeaderValue::from_static(CONTENT_TYPE_HTML),
        ),
        Format::Problem => (
            Bytes::from(problem_json(&denial)),
            HeaderValue::from_static(CONTENT_TYPE_PROBLEM),
        ),
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = denial.status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, content_type);
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // The form depends on `Accept`: a cache must not serve one for the other.
    headers.insert(VARY, HeaderValue::from_static("accept"));
    if format == Format::Html {
        headers.insert(
            CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(PAGE_POLICY),
        );
        headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        headers.insert(
            HeaderName::from_static("referrer-policy"),
            HeaderValue::from_static("no-referrer"),
        );
    }
    headers.extend(denial.headers);
    response
}

fn problem_json(denial: &Denial) -> Vec<u8> {
    serde_json::to_vec(&Problem {
        kind: type_uri(denial.reason),
        title: denial.reason.title(),
        status: denial.status.as_u16(),
        detail: &denial.detail,
        reason: denial.reason.as_str(),
    })
    .expect("problem serialises: all fields are plain strings and numbers")
}

#[cfg(test)]
mod tests;
