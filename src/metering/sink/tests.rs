use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue, StatusCode};

use super::*;
use crate::metering::record::{Body, Record, ThresholdBody, UsageBody};

fn usage_record(customer: Option<&str>) -> Record {
    Record {
        seq: 3,
        id: "4f1c".repeat(16),
        source: "licensegate/pod-0".into(),
        journaled_ms: 1_767_225_610_250,
        body: Body::Usage(UsageBody {
            license: "lic-1".into(),
            customer: customer.map(Into::into),
            plan: "pro".into(),
            route: "chat".into(),
            meter: "tokens".into(),
            value: 1234,
            window_start_ms: 1_767_225_600_000,
            window_end_ms: 1_767_225_610_000,
        }),
    }
}

fn threshold_record() -> Record {
    Record {
        seq: 4,
        id: "ab".repeat(32),
        source: "licensegate/pod-0".into(),
        journaled_ms: 1_767_225_612_345,
        body: Body::QuotaThreshold(ThresholdBody {
            license: "lic-1".into(),
            customer: None,
            limit: "monthly_tokens".into(),
            threshold_percent: 80,
            period_start: 1_764_547_200,
            used: 800,
            limit_amount: 1000,
        }),
    }
}

#[test]
fn usage_becomes_an_openmeter_cloudevent() {
    let (content_type, body) = cloudevents::format_batch(&[usage_record(Some("acme"))]);
    assert_eq!(content_type, "application/cloudevents-batch+json");
    let events: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let expected = serde_json::json!([{
        "specversion": "1.0",
        "id": "4f1c".repeat(16),
        "source": "licensegate/pod-0",
        "type": "tokens",
        "subject": "acme",
        "time": "2026-01-01T00:00:10.000Z",
        "datacontenttype": "application/json",
        "data": {
            "value": 1234,
            "license": "lic-1",
            "plan": "pro",
            "route": "chat",
            "meter": "tokens",
            "window": {"start": "2026-01-01T00:00:00.000Z", "end": "2026-01-01T00:00:10.000Z"}
        }
    }]);
    assert_eq!(events, expected);
    // Without a customer, the license is the subject.
    let record = usage_record(None);
    assert_eq!(cloudevents::event(&record).subject, "lic-1");
}

#[test]
fn a_threshold_becomes_its_own_event_type() {
    let mut line = Vec::new();
    cloudevents::write_line(&threshold_record(), &mut line);
    assert_eq!(line.last(), Some(&b'\n'));
    assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
    let event: serde_json::Value = serde_json::from_slice(&line).unwrap();
    assert_eq!(event["type"], "licensegate.quota.threshold");
    assert_eq!(event["subject"], "lic-1");
    assert_eq!(event["time"], "2026-01-01T00:00:12.345Z");
    assert_eq!(
        event["data"],
        serde_json::json!({
            "license": "lic-1",
            "limit": "monthly_tokens",
            "threshold_percent": 80,
            "period_start": "2025-12-01T00:00:00Z",
            "used": 800,
            "limit_amount": 1000
        })
    );
}

#[test]
fn usage_becomes_a_stripe_meter_event_form() {
    let form = stripe::form(&usage_record(Some("cus_NciAYcXfLnqBoz"))).unwrap();
    let pairs: Vec<(String, String)> = form_urlencoded::parse(form.as_bytes())
        .into_owned()
        .collect();
    let pairs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        pairs,
        [
            ("event_name", "tokens"),
            ("payload[stripe_customer_id]", "cus_NciAYcXfLnqBoz"),
            ("payload[value]", "1234"),
            ("identifier", "4f1c".repeat(16).as_str()),
            ("timestamp", "1767225610"),
        ]
    );
    // Brackets are encoded on the wire.
    assert!(form.contains("payload%5Bvalue%5D=1234"), "{form}");
    // Not a meter event: not sent to Stripe.
    assert_eq!(stripe::form(&threshold_record()), None);
}

#[test]
fn a_window_flushed_early_is_never_stamped_in_the_future_for_stripe() {
    let mut record = usage_record(Some("cus_1"));
    record.journaled_ms = 1_767_225_605_000; // before the window's end
    let form = stripe::form(&record).unwrap();
    assert!(form.ends_with("timestamp=1767225605"), "{form}");
}

fn answer(status: u16, retry_after: Option<&str>) -> Result<Answer, Retry> {
    let mut headers = HeaderMap::new();
    if let Some(value) = retry_after {
        headers.insert("retry-after", HeaderValue::from_str(value).unwrap());
    }
    classify(
        StatusCode::from_u16(status).unwrap(),
        &headers,
        "why".into(),
        "https://collector.test/events",
        UNIX_EPOCH + Duration::from_secs(1_767_225_600),
    )
}

#[test]
fn statuses_are_retried_or_refused_for_good() {
    for status in [200, 201, 202, 204] {
        assert_eq!(answer(status, None).unwrap(), Answer::Accepted, "{status}");
    }
    for (status, kind) in [
        (408, ErrorKind::Timeout),
        (429, ErrorKind::Throttled),
        (500, ErrorKind::Server),
        (502, ErrorKind::Server),
        (503, ErrorKind::Server),
        (504, ErrorKind::Server),
    ] {
        let retry = answer(status, None).unwrap_err();
        assert_eq!(retry.kind, kind, "{status}");
        assert_eq!(retry.after, None);
        assert!(
            retry.detail.contains(&status.to_string()),
            "{}",
            retry.detail
        );
    }
    for status in [301, 400, 401, 403, 404, 409, 413, 422] {
        assert_eq!(
            answer(status, None).unwrap(),
            Answer::Rejected {
                status,
                answer: "why".into()
            },
            "{status}"
        );
    }
}

#[test]
fn retry_after_is_honoured_in_both_forms_and_capped() {
    assert_eq!(
        answer(429, Some("7")).unwrap_err().after,
        Some(Duration::from_secs(7))
    );
    // An HTTP date 90 s after "now".
    assert_eq!(
        answer(503, Some("Thu, 01 Jan 2026 00:01:30 GMT"))
            .unwrap_err()
            .after,
        Some(Duration::from_secs(90))
    );
    let now = SystemTime::now();
    assert_eq!(retry_after(b"86400", now), Some(MAX_RETRY_AFTER));
    assert_eq!(
        retry_after(b"Thu, 01 Jan 1970 00:00:00 GMT", now),
        Some(Duration::ZERO)
    );
    assert_eq!(retry_after(b"soon", now), None);
    assert_eq!(retry_after(b"-1", now), None);
}

#[test]
fn answers_are_bounded_and_cannot_forge_log_lines() {
    assert_eq!(
        printable(b"bad\r\nINFO forged", 100),
        "bad\\r\\nINFO forged"
    );
    let long = printable(&[b'x'; 10_000], 64);
    assert!(long.len() <= 64 + '…'.len_utf8());
    assert!(long.ends_with('…'));
}
