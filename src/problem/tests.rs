//! Unit tests of content negotiation and of both forms of a denial.

use http::header::{HeaderValue, ACCEPT, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, Method, StatusCode};
use http_body_util::BodyExt;

use super::negotiate::q_of;
use super::*;
use crate::decision::Hint;

fn accept(values: &[&'static str]) -> Format {
    let values: Vec<HeaderValue> = values.iter().map(|v| HeaderValue::from_static(v)).collect();
    negotiate(&values)
}

const BROWSER: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";

#[test]
fn browsers_get_html_api_clients_get_problem_json() {
    // Firefox / Chrome navigations.
    assert_eq!(accept(&[BROWSER]), Format::Html);
    assert_eq!(
        accept(&["text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7"]),
        Format::Html
    );
    // No Accept at all, fetch()'s and curl's `*/*`, JSON asked for.
    assert_eq!(accept(&[]), Format::Problem);
    assert_eq!(accept(&["*/*"]), Format::Problem);
    assert_eq!(accept(&["application/json"]), Format::Problem);
    assert_eq!(accept(&["application/problem+json"]), Format::Problem);
    assert_eq!(
        accept(&["application/json, text/plain, */*"]),
        Format::Problem
    );
    assert_eq!(accept(&[""]), Format::Problem);
}

#[test]
fn equal_weights_keep_problem_json() {
    assert_eq!(accept(&["text/html, application/json"]), Format::Problem);
    assert_eq!(accept(&["application/json, text/html"]), Format::Problem);
    assert_eq!(
        accept(&["text/html;q=0.5, application/problem+json;q=0.5"]),
        Format::Problem
    );
    // Both only through `*/*`.
    assert_eq!(accept(&["image/png, */*;q=0.3"]), Format::Problem);
}

#[test]
fn weights_decide_and_zero_excludes() {
    assert_eq!(accept(&["application/json;q=0.5, text/html"]), Format::Html);
    assert_eq!(
        accept(&["text/html;q=0.9, application/json;q=0.8"]),
        Format::Html
    );
    assert_eq!(accept(&["text/html;q=0, */*"]), Format::Problem);
    assert_eq!(accept(&["text/html;q=0"]), Format::Problem);
    // q=0 on JSON, HTML through `*/*`: HTML is the only acceptable one.
    assert_eq!(
        accept(&["application/json;q=0, application/problem+json;q=0, */*"]),
        Format::Html
    );
    // Either JSON type is enough for JSON.
    assert_eq!(
        accept(&["application/problem+json;q=0.1, application/json, text/html"]),
        Format::Problem
    );
    // Spacing and case.
    assert_eq!(
        accept(&["  TEXT/HTML ; Q=1.0 ,application/json ; q=0.2"]),
        Format::Html
    );
}

#[test]
fn the_most_specific_range_gives_the_weight() {
    // `text/html;q=0` beats `text/*`.
    assert_eq!(accept(&["text/*, text/html;q=0"]), Format::Problem);
    // `text/*` alone: text, not JSON.
    assert_eq!(accept(&["text/*"]), Format::Html);
    // `application/*;q=0.1` is more specific than `*/*` for JSON.
    assert_eq!(accept(&["*/*, application/*;q=0.1"]), Format::Html);
    // A range with a parameter we do not match is about another variant.
    assert_eq!(
        accept(&["text/html;level=1, application/json;q=0.5"]),
        Format::Problem
    );
    assert_eq!(
        accept(&["text/html;charset=utf-8, application/json;q=0.5"]),
        Format::Html
    );
    assert_eq!(
        accept(&["text/html;charset=\"UTF-8\";q=0.9, */*;q=0.1"]),
        Format::Html
    );
}

#[test]
fn unreadable_ranges_and_weights_are_ignored() {
    // Malformed weights drop their element, never guess HTML.
    assert_eq!(accept(&["text/html;q=2, */*"]), Format::Problem);
    assert_eq!(accept(&["text/html;q=0.5555"]), Format::Problem);
    assert_eq!(accept(&["text/html;q=, */*"]), Format::Problem);
    assert_eq!(accept(&["text/html;q=abc"]), Format::Problem);
    assert_eq!(accept(&["html, */*"]), Format::Problem);
    assert_eq!(accept(&["*/html, */*"]), Format::Problem);
    assert_eq!(accept(&[",,;,"]), Format::Problem);
    // Several Accept lines are one list.
    assert_eq!(
        accept(&["application/json;q=0.1", "text/html"]),
        Format::Html
    );
}

#[test]
fn q_values_follow_the_grammar() {
    assert_eq!(q_of("1"), Some(1000));
    assert_eq!(q_of("1.000"), Some(1000));
    assert_eq!(q_of("1.001"), None);
    assert_eq!(q_of("0"), Some(0));
    assert_eq!(q_of("0."), Some(0));
    assert_eq!(q_of("0.8"), Some(800));
    assert_eq!(q_of("0.05"), Some(50));
    assert_eq!(q_of("0.001"), Some(1));
    assert_eq!(q_of("0.0001"), None);
    assert_eq!(q_of(".5"), None);
    assert_eq!(q_of("2"), None);
    assert_eq!(q_of("-0"), None);
    assert_eq!(q_of("0.-1"), None);
}

#[test]
fn grpc_gets_grpc_and_head_keeps_problem_json() {
    let mut headers = HeaderMap::new();
    headers.insert(ACCEPT, HeaderValue::from_static(BROWSER));
    assert_eq!(format_for(&Method::GET, &headers), Format::Html);
    assert_eq!(format_for(&Method::HEAD, &headers), Format::Problem);
    for (content_type, format) in [
        ("application/grpc", Format::Grpc),
        ("application/grpc+proto", Format::Grpc),
        ("Application/GRPC+json", Format::Grpc),
        ("application/grpc; charset=utf-8", Format::Grpc),
        ("application/grpc-web", Format::GrpcWeb),
        ("Application/GRPC-web+proto", Format::GrpcWeb),
        ("application/grpc-web-text", Format::GrpcWeb),
        ("application/grpc-web-text+proto", Format::GrpcWeb),
    ] {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        assert_eq!(
            format_for(&Method::POST, &headers),
            format,
            "{content_type}"
        );
    }
    // Near misses are not gRPC: `Accept` decides.
    for content_type in [
        "application/json",
        "application/grpcx",
        "application/grpc-webby",
        "application/grp",
    ] {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        assert_eq!(
            format_for(&Method::POST, &headers),
            Format::Html,
            "{content_type}"
        );
    }

    let asked = |accept: Option<&'static str>, grpc, head| Asked {
        accept: accept.map(HeaderValue::from_static),
        grpc,
        head,
    };
    assert_eq!(asked(Some(BROWSER), None, false).format(), Format::Html);
    assert_eq!(asked(Some(BROWSER), None, true).format(), Format::Problem);
    assert_eq!(
        asked(Some(BROWSER), Some(Format::Grpc), false).format(),
        Format::Grpc
    );
    assert_eq!(
        asked(None, Some(Format::GrpcWeb), true).format(),
        Format::GrpcWeb
    );
    assert_eq!(asked(None, None, false).format(), Format::Problem);
}

async fn body_text(response: Response<Full<Bytes>>) -> (http::response::Parts, String) {
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (parts, String::from_utf8(bytes.to_vec()).unwrap())
}

#[tokio::test]
async fn the_page_escapes_everything_it_quotes() {
    let mut denial = Denial::new(
        StatusCode::NOT_FOUND,
        Reason::RouteNotFound,
        "no route matches GET /<script>alert(\"x\")</script>&'",
    );
    denial.route = Some("<b>route</b>".into());
    let (parts, page) = body_text(render(denial, Format::Html)).await;
    assert_eq!(parts.status, 404);
    assert!(!page.contains("<script>"), "{page}");
    assert!(!page.contains("<b>"), "{page}");
    assert!(
        page.contains("/&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#39;"),
        "{page}"
    );
    assert!(page.contains("&lt;b&gt;route&lt;/b&gt;"), "{page}");
    // Nothing to load or run.
    assert!(!page.contains("<script"), "{page}");
    assert!(!page.contains("src="), "{page}");
    assert!(!page.contains("href="), "{page}");
    assert!(page.contains("name=\"viewport\""), "{page}");
}

#[tokio::test]
async fn both_forms_keep_status_and_extra_headers() {
    let make = || {
        let mut denial = Denial::new(
            StatusCode::TOO_MANY_REQUESTS,
            Reason::RateLimited,
            "rate limit `api` (1 per 1m) reached; retry in 42 s",
        );
        denial
            .headers
            .insert(RETRY_AFTER, HeaderValue::from_static("42"));
        denial.headers.insert(
            http::header::HeaderName::from_static("ratelimit"),
            HeaderValue::from_static("\"api\";r=0;t=42"),
        );
        denial
    };
    let (html, page) = body_text(render(make(), Format::Html)).await;
    let (json, problem) = body_text(render(make(), Format::Problem)).await;
    for parts in [&html, &json] {
        assert_eq!(parts.status, 429);
        assert_eq!(parts.headers[RETRY_AFTER], "42");
        assert_eq!(parts.headers["ratelimit"], "\"api\";r=0;t=42");
        assert_eq!(parts.headers["cache-control"], "no-store");
        assert_eq!(parts.headers["vary"], "accept");
    }
    assert_eq!(html.headers[CONTENT_TYPE], "text/html; charset=utf-8");
    assert_eq!(html.headers["content-security-policy"], PAGE_POLICY);
    assert_eq!(html.headers["x-content-type-options"], "nosniff");
    assert!(page.contains("Try again in 42s."), "{page}");
    assert!(page.contains("<code>rate_limited</code>"), "{page}");
    assert_eq!(json.headers[CONTENT_TYPE], CONTENT_TYPE_PROBLEM);
    assert!(!json.headers.contains_key("content-security-policy"));
    let problem: serde_json::Value = serde_json::from_str(&problem).unwrap();
    assert_eq!(problem["reason"], "rate_limited");
    assert_eq!(problem["status"], 429);

    // gRPC: 200 and an empty body (trailers-only), the extra headers kept,
    // no `Vary` (`content-type` chose the form, not `Accept`).
    let (grpc, body) = body_text(render(make(), Format::Grpc)).await;
    assert_eq!(grpc.status, 200);
    assert!(body.is_empty());
    assert_eq!(grpc.headers[CONTENT_TYPE], "application/grpc");
    assert_eq!(grpc.headers["grpc-status"], "8");
    assert_eq!(grpc.headers[RETRY_AFTER], "42");
    assert_eq!(grpc.headers["ratelimit"], "\"api\";r=0;t=42");
    assert!(!grpc.headers.contains_key("vary"));
    let (web, body) = body_text(render(make(), Format::GrpcWeb)).await;
    assert_eq!(web.status, 200);
    assert!(body.is_empty());
    assert_eq!(web.headers[CONTENT_TYPE], "application/grpc-web+proto");
    assert_eq!(web.headers["grpc-status"], "8");
}

#[tokio::test]
async fn hints_use_what_the_denial_knows() {
    let page = |denial: Denial| async move { body_text(render(denial, Format::Html)).await.1 };

    let mut missing = Denial::new(
        StatusCode::UNAUTHORIZED,
        Reason::LicenseMissing,
        "no license token was presented",
    );
    missing.hint = Hint::LicenseHeader(http::header::AUTHORIZATION);
    assert!(page(missing)
        .await
        .contains("<code>Authorization: Bearer &lt;license token&gt;</code>"));

    let mut custom = Denial::new(StatusCode::UNAUTHORIZED, Reason::LicenseMissing, "none");
    custom.hint = Hint::LicenseHeader(http::header::HeaderName::from_static("x-license"));
    assert!(page(custom).await.contains("<code>x-license</code> header"));

    let mut file = Denial::new(StatusCode::FORBIDDEN, Reason::LicenseMissing, "none");
    file.hint = Hint::DeploymentLicense;
    assert!(page(file)
        .await
        .contains("The deployment license is missing"));

    let mut feature = Denial::new(StatusCode::FORBIDDEN, Reason::FeatureNotLicensed, "x");
    feature.hint = Hint::MissingFeature {
        feature: "export".into(),
        license: "cust-1".into(),
        plan: "<pro>".into(),
    };
    feature.route = Some("export".into());
    let text = page(feature).await;
    assert!(text.contains("the feature <code>export</code>"), "{text}");
    assert!(
        text.contains("its plan, <code>&lt;pro&gt;</code>, lacks it"),
        "{text}"
    );
    assert!(
        text.contains("<dt>Route</dt><dd><code>export</code></dd>"),
        "{text}"
    );

    let mut down = Denial::new(
        StatusCode::BAD_GATEWAY,
        Reason::UpstreamUnavailable,
        "the upstream at 127.0.0.1:5173 refused the connection",
    );
    down.hint = Hint::Upstream { local: true };
    let text = page(down).await;
    assert!(text.contains("is down or not listening"), "{text}");
    assert!(
        text.contains("127.0.0.1:5173 refused the connection"),
        "{text}"
    );

    let mut remote = Denial::new(StatusCode::GATEWAY_TIMEOUT, Reason::UpstreamTimeout, "x");
    remote.hint = Hint::Upstream { local: false };
    let text = page(remote).await;
    assert!(text.contains("slow to answer"), "{text}");
    assert!(!text.contains("timeouts.upstream_response"), "{text}");
}

#[test]
fn every_denial_reason_has_a_hint() {
    for reason in Reason::ALL {
        if matches!(reason, Reason::Allowed | Reason::CorsPreflight) {
            continue;
        }
        let denial = Denial::new(StatusCode::FORBIDDEN, reason, "detail");
        let page = page::render(&denial);
        let hint = page
            .split("<h2>What to do</h2>\n<p>")
            .nth(1)
            .and_then(|rest| rest.split("</p>").next())
            .unwrap_or_default();
        assert!(hint.len() > 10, "{}: {hint:?}", reason.as_str());
    }
}

// === gRPC ===

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

// The expected bytes are what the reference protobuf runtime (Python
// `protobuf`, deterministic serialisation) writes for the same messages.
const ERROR_INFO: &str = "0a0c726174655f6c696d69746564120e6c6963656e7365676174652e696f1a100a056c696d697412077065722d6d696e1a0c0a05726f7574651203617069";
const RETRY_INFO_300: &str = "0a0308ac02";
const STATUS: &str = "0808120f726174655f6c696d697465643a20781a6a0a28747970652e676f6f676c65617069732e636f6d2f676f6f676c652e7270632e4572726f72496e666f123e0a0c726174655f6c696d69746564120e6c6963656e7365676174652e696f1a100a056c696d697412077065722d6d696e1a0c0a05726f75746512036170691a310a28747970652e676f6f676c65617069732e636f6d2f676f6f676c652e7270632e5265747279496e666f12050a0308ac02";

#[test]
fn protobuf_messages_match_the_reference_encoding() {
    let info = grpc::error_info(
        "rate_limited",
        "licensegate.io",
        &[("limit", "per-min"), ("route", "api")],
    );
    assert_eq!(info, hex(ERROR_INFO));
    let retry = grpc::retry_info(300);
    assert_eq!(retry, hex(RETRY_INFO_300));
    let status = grpc::status(
        8,
        "rate_limited: x",
        &[
            grpc::any("type.googleapis.com/google.rpc.ErrorInfo", &info),
            grpc::any("type.googleapis.com/google.rpc.RetryInfo", &retry),
        ],
    );
    assert_eq!(status, hex(STATUS));
    // Varint edges: one byte up to 127, then 7 bits a byte; proto3 omits 0.
    assert_eq!(grpc::retry_info(127), [0x0a, 0x02, 0x08, 0x7f]);
    assert_eq!(grpc::retry_info(128), [0x0a, 0x03, 0x08, 0x80, 0x01]);
    assert_eq!(grpc::retry_info(0), [0x0a, 0x00]);
    assert_eq!(
        grpc::retry_info(u64::from(u32::MAX)),
        [0x0a, 0x06, 0x08, 0xff, 0xff, 0xff, 0xff, 0x0f]
    );
    assert_eq!(grpc::status(0, "", &[]), Vec::<u8>::new());
}

#[test]
fn grpc_message_is_percent_encoded() {
    assert_eq!(grpc::percent_encode("plain text: ok"), "plain text: ok");
    assert_eq!(grpc::percent_encode("100%"), "100%25");
    assert_eq!(grpc::percent_encode("a\nb\tc"), "a%0Ab%09c");
    assert_eq!(
        grpc::percent_encode("caf\u{e9} \u{1f600}"),
        "caf%C3%A9 %F0%9F%98%80"
    );
    assert_eq!(grpc::percent_encode("~\u{7f}"), "~%7F");
}

#[test]
fn every_reason_has_its_grpc_status() {
    use crate::license::LicenseError;
    use crate::policy::LimitKind;
    use grpc::{grpc_code, Code};
    // What a client may do about it decides the class, not a copy of the
    // table: a license or user credential is for the client to fix
    // (UNAUTHENTICATED); a limit is never UNAVAILABLE, which clients and
    // meshes retry on their own; only availability failures are.
    for reason in LicenseError::REASONS {
        let reason = Reason::ALL
            .into_iter()
            .find(|r| r.as_str() == reason)
            .unwrap();
        let expected = match reason {
            Reason::EnvironmentNotLicensed => Code::PermissionDenied,
            Reason::LicenseVerificationThrottled => Code::ResourceExhausted,
            _ => Code::Unauthenticated,
        };
        assert_eq!(grpc_code(reason), expected, "{}", reason.as_str());
    }
    for kind in [
        LimitKind::Concurrency,
        LimitKind::Seats {
            identity: crate::policy::KeyPart::User,
            idle: std::time::Duration::from_secs(1),
        },
    ] {
        assert_eq!(grpc_code(Reason::of_limit(&kind)), Code::ResourceExhausted);
    }
    for reason in [Reason::RateLimited, Reason::QuotaExceeded] {
        assert_eq!(grpc_code(reason), Code::ResourceExhausted);
    }
    let unavailable: Vec<&str> = Reason::ALL
        .into_iter()
        .filter(|&r| grpc_code(r) == Code::Unavailable)
        .map(Reason::as_str)
        .collect();
    assert_eq!(
        unavailable,
        [
            "upstream_unavailable",
            "limit_store_unavailable",
            "upstream_overloaded",
            "user_keys_unavailable"
        ]
    );
    for reason in [Reason::UserTokenMissing, Reason::UserTokenInvalid] {
        assert_eq!(grpc_code(reason), Code::Unauthenticated);
    }
    for reason in [
        Reason::FeatureNotLicensed,
        Reason::RoleMissing,
        Reason::RoleNotLicensed,
        Reason::RouteDenied,
    ] {
        assert_eq!(grpc_code(reason), Code::PermissionDenied);
    }
    assert_eq!(grpc_code(Reason::UpstreamTimeout), Code::DeadlineExceeded);
    assert_eq!(grpc_code(Reason::BadRequestPath), Code::InvalidArgument);
    assert_eq!(grpc_code(Reason::RouteNotFound), Code::NotFound);
    // The numbers are gRPC's (google.rpc.Code), not ours to choose.
    for (code, number, name) in [
        (Code::Unknown, 2, "UNKNOWN"),
        (Code::InvalidArgument, 3, "INVALID_ARGUMENT"),
        (Code::DeadlineExceeded, 4, "DEADLINE_EXCEEDED"),
        (Code::NotFound, 5, "NOT_FOUND"),
        (Code::PermissionDenied, 7, "PERMISSION_DENIED"),
        (Code::ResourceExhausted, 8, "RESOURCE_EXHAUSTED"),
        (Code::Unavailable, 14, "UNAVAILABLE"),
        (Code::Unauthenticated, 16, "UNAUTHENTICATED"),
    ] {
        assert_eq!((code.as_u8(), code.name()), (number, name));
    }
}

#[tokio::test]
async fn a_grpc_denial_carries_status_message_and_details() {
    use base64::Engine as _;
    let mut denial = Denial::new(StatusCode::TOO_MANY_REQUESTS, Reason::RateLimited, "x");
    denial.route = Some("api".into());
    denial.limit = Some("per-min".into());
    denial
        .headers
        .insert(RETRY_AFTER, HeaderValue::from_static("300"));
    let (parts, body) = body_text(render(denial, Format::Grpc)).await;
    assert!(body.is_empty());
    assert_eq!(parts.headers["grpc-status"], "8");
    assert_eq!(parts.headers["grpc-message"], "rate_limited: x");
    let details = parts.headers["grpc-status-details-bin"].to_str().unwrap();
    assert!(!details.ends_with('='), "unpadded: {details}");
    let details = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(details)
        .unwrap();
    assert_eq!(details, hex(STATUS));

    // No Retry-After, no route: ErrorInfo alone, without metadata; the
    // message is percent-encoded.
    let denial = Denial::new(
        StatusCode::FORBIDDEN,
        Reason::FeatureNotLicensed,
        "needs `reports` (100% of plans \u{2260} yours)",
    );
    let (parts, _) = body_text(render(denial, Format::Grpc)).await;
    assert_eq!(parts.headers["grpc-status"], "7");
    assert_eq!(
        parts.headers["grpc-message"],
        "feature_not_licensed: needs `reports` (100%25 of plans %E2%89%A0 yours)"
    );
    let details = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(parts.headers["grpc-status-details-bin"].as_bytes())
        .unwrap();
    let message = "feature_not_licensed: needs `reports` (100% of plans \u{2260} yours)";
    let expected = grpc::status(
        7,
        message,
        &[grpc::any(
            "type.googleapis.com/google.rpc.ErrorInfo",
            &grpc::error_info("feature_not_licensed", "licensegate.io", &[]),
        )],
    );
    assert_eq!(details, expected);
}
