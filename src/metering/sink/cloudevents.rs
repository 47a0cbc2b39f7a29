//! CloudEvents 1.0 in structured JSON mode, as OpenMeter ingests them:
//! `POST` an array with `content-type: application/cloudevents-batch+json`.
//!
//! A usage record becomes an event whose `type` is the meter, `subject` the
//! customer (else the license) and `time` the end of its window; OpenMeter
//! dedupes on `source` + `id`, which the journal made deterministic.

use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;

use crate::metering::record::{Body, Record};

/// `content-type` of a batch.
pub const BATCH_CONTENT_TYPE: &str = "application/cloudevents-batch+json";
/// The `type` of a quota threshold event.
pub const THRESHOLD_TYPE: &str = "licensegate.quota.threshold";

/// One event, fields in the order the specification lists them.
#[derive(Debug, Serialize)]
pub struct CloudEvent<'a> {
    pub specversion: &'static str,
    pub id: &'a str,
    pub source: &'a str,
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub subject: &'a str,
    pub time: String,
    pub datacontenttype: &'static str,
    pub data: Data<'a>,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Data<'a> {
    Usage {
        value: u64,
        license: &'a str,
        plan: &'a str,
        route: &'a str,
        meter: &'a str,
        window: Window,
    },
    QuotaThreshold {
        license: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        customer: Option<&'a str>,
        limit: &'a str,
        threshold_percent: u32,
        period_start: String,
        used: u64,
        limit_amount: u64,
    },
}

#[derive(Debug, Serialize)]
pub struct Window {
    pub start: String,
    pub end: String,
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-12-06T10:00:10.000Z`.
pub fn rfc3339_ms(unix_ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(unix_ms)).to_string()
}

fn rfc3339_secs(unix_secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix_secs)).to_string()
}

/// The event for `record`.
pub fn event(record: &Record) -> CloudEvent<'_> {
    let (kind, time, data) = match &record.body {
        Body::Usage(usage) => (
            usage.meter.as_str(),
            rfc3339_ms(usage.window_end_ms),
            Data::Usage {
                value: usage.value,
                license: &usage.license,
                plan: &usage.plan,
                route: &usage.route,
                meter: &usage.meter,
                window: Window {
                    start: rfc3339_ms(usage.window_start_ms),
                    end: rfc3339_ms(usage.window_end_ms),
                },
            },
        ),
        Body::QuotaThreshold(threshold) => (
            THRESHOLD_TYPE,
            rfc3339_ms(record.journaled_ms),
            Data::QuotaThreshold {
                license: &threshold.license,
                customer: threshold.customer.as_deref(),
                limit: &threshold.limit,
                threshold_percent: threshold.threshold_percent,
                period_start: rfc3339_secs(threshold.period_start),
                used: threshold.used,
                limit_amount: threshold.limit_amount,
            },
        ),
    };
    CloudEvent {
        specversion: "1.0",
        id: &record.id,
        source: &record.source,
        kind,
        subject: record.body.subject(),
        time,
        datacontenttype: "application/json",
        data,
    }
}

/// Append `record` as one line of JSON (structured mode) and a newline.
pub fn write_line(record: &Record, out: &mut Vec<u8>) {
    serde_json::to_writer(&mut *out, &event(record)).expect("an event serializes into a Vec");
    out.push(b'\n');
}

/// The request body for `batch`: a JSON array of events.
pub fn format_batch(batch: &[Record]) -> (&'static str, Vec<u8>) {
    let events: Vec<CloudEvent<'_>> = batch.iter().map(event).collect();
    let body = serde_json::to_vec(&events).expect("events serialize into a Vec");
    (BATCH_CONTENT_TYPE, body)
}
