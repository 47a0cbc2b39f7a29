//! Stripe Billing meter events: one form-encoded `POST` per usage record
//! (`event_name` = the meter, `payload[stripe_customer_id]` = the subject,
//! `payload[value]`, `identifier` = the record's id, `timestamp`).
//!
//! Stripe takes one event per request, so a batch is acknowledged once every
//! event in it was; a batch cut short by a failure is sent again whole,
//! which is harmless: each request carries the record's id as `identifier`
//! and as `Idempotency-Key`, so Stripe counts a repeated event once. A
//! refused event (an unknown customer, say) is dead-lettered alone.
//! Threshold events are not meter events and are not sent.

use super::{Answer, HttpSink, Rejection, Retry};
use crate::metering::record::{Body, Record};

pub const CONTENT_TYPE: &str = "application/x-www-form-urlencoded";

/// The form for `record`; `None` for what is not a meter event.
pub fn form(record: &Record) -> Option<String> {
    let Body::Usage(usage) = &record.body else {
        return None;
    };
    // The window's end; never after the record was journalled (a window
    // flushed early at shutdown), since Stripe refuses events from more
    // than five minutes ahead.
    let timestamp = usage.window_end_ms.min(record.journaled_ms) / 1000;
    Some(
        form_urlencoded::Serializer::new(String::new())
            .append_pair("event_name", &usage.meter)
            .append_pair("payload[stripe_customer_id]", record.body.subject())
            .append_pair("payload[value]", &usage.value.to_string())
            .append_pair("identifier", &record.id)
            .append_pair("timestamp", &timestamp.to_string())
            .finish(),
    )
}

pub async fn deliver(http: &HttpSink, batch: &[Record]) -> Result<Vec<Rejection>, Retry> {
    let mut rejections = Vec::new();
    for (index, record) in batch.iter().enumerate() {
        let Some(form) = form(record) else { continue };
        match http
            .post(CONTENT_TYPE, form.into_bytes(), Some(&record.id))
            .await?
        {
            Answer::Accepted => {}
            Answer::Rejected { status, answer } => rejections.push(Rejection {
                records: vec![index],
                status,
                answer,
            }),
        }
    }
    Ok(rejections)
}
