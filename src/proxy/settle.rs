//! The end of a forwarded request: was it *served*? Served means the
//! client got a status below 500 and the whole response body. Then the
//! quota units it was counted (`count: served`) stay counted and its
//! route's meters are recorded; otherwise the units go back and nothing is
//! metered:
//!
//! - a 5xx (the upstream's, or licensegate's own 502 and 504): at the
//!   response head, [`Unserved::UpstreamError`];
//! - a body that did not complete (the upstream broke off, the client left
//!   mid-body): when the body is dropped, [`Unserved::Incomplete`];
//! - a client gone before the response head: the request's future is
//!   dropped with its [`Settlement`], [`Unserved::ClientGone`].
//!
//! A `101 Switching Protocols` that becomes a WebSocket tunnel keeps its
//! units but feeds no meter: what flows through a tunnel is not requests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::{HeaderMap, HeaderName, StatusCode};

use crate::decision::{MeterFeed, Metered};
use crate::limits::{Tickets, Unserved};
use crate::metering::{Metering, Usage};
use crate::policy::MeterSource;

/// What a forwarded request settles when its response ends.
#[derive(Debug)]
pub struct Settlement {
    tickets: Tickets,
    /// Boxed: most requests feed no meter.
    usage: Option<Box<PendingUsage>>,
    /// The response head was sent (or is being): a later end is the body's.
    headed: bool,
    /// The whole body was sent.
    completed: bool,
}

/// Meters waiting for the response to be served.
#[derive(Debug)]
struct PendingUsage {
    metering: Metering,
    metered: Metered,
    /// Request body bytes sent to the upstream (a `request_bytes` meter).
    request_bytes: Option<Arc<AtomicU64>>,
    response_bytes: u64,
    /// Per meter, in the route's order: the response header's number (0
    /// for meters of other sources).
    reported: Vec<u64>,
}

impl Settlement {
    /// `metering` records the meters of `metered` (none without it).
    pub fn new(
        tickets: Tickets,
        metered: Option<Metered>,
        metering: Option<&Metering>,
    ) -> Option<Settlement> {
        let usage = match (metered, metering) {
            (Some(metered), Some(metering)) => {
                let counts_request = metered
                    .meters
                    .feeds
                    .iter()
                    .any(|feed| feed.source == MeterSource::RequestBytes);
                Some(Box::new(PendingUsage {
                    metering: metering.clone(),
                    request_bytes: counts_request.then(|| Arc::new(AtomicU64::new(0))),
                    metered,
                    response_bytes: 0,
                    reported: Vec::new(),
                }))
            }
            _ => None,
        };
        if tickets.is_empty() && usage.is_none() {
            return None;
        }
        Some(Settlement {
            tickets,
            usage,
            headed: false,
            completed: false,
        })
    }

    /// Where the request body's bytes are to be counted, if a meter needs
    /// them.
    pub fn request_counter(&self) -> Option<Arc<AtomicU64>> {
        self.usage
            .as_ref()
            .and_then(|usage| usage.request_bytes.clone())
    }

    /// The response head: a 5xx settles now (nothing served); otherwise
    /// the usage headers' numbers are read, before they are removed.
    pub fn responded(&mut self, status: StatusCode, headers: &HeaderMap) {
        self.headed = true;
        if status.is_server_error() {
            std::mem::take(&mut self.tickets).unserved(Unserved::UpstreamError);
            self.usage = None;
            return;
        }
        if status == StatusCode::SWITCHING_PROTOCOLS {
            // A tunnel: not metered.
            self.usage = None;
            return;
        }
        if let Some(usage) = &mut self.usage {
            usage.read_headers(headers);
        }
    }

    /// Licensegate answered itself (the upstream failed, or the request
    /// could not be sent): a 5xx settles now; nothing is metered, since
    /// nothing was served by the upstream.
    pub fn answered_here(&mut self, status: StatusCode) {
        self.usage = None;
        self.responded(status, &HeaderMap::new());
    }

    /// `bytes` of the response body went out.
    pub fn sent(&mut self, bytes: usize) {
        if let Some(usage) = &mut self.usage {
            usage.response_bytes += bytes as u64;
        }
    }

    /// The whole response body went out.
    pub fn completed(&mut self) {
        self.completed = true;
    }
}

impl Drop for Settlement {
    fn drop(&mut self) {
        let tickets = std::mem::take(&mut self.tickets);
        match (self.headed, self.completed) {
            (true, true) => {
                tickets.served();
                if let Some(usage) = self.usage.take() {
                    usage.record();
                }
            }
            (true, false) => tickets.unserved(Unserved::Incomplete),
            (false, _) => tickets.unserved(Unserved::ClientGone),
        }
    }
}

impl PendingUsage {
    fn read_headers(&mut self, headers: &HeaderMap) {
        let meters = Arc::clone(&self.metered.meters);
        if !meters
            .feeds
            .iter()
            .any(|feed| matches!(feed.source, MeterSource::Header(_)))
        {
            return;
        }
        self.reported = meters
            .feeds
            .iter()
            .map(|feed| match &feed.source {
                MeterSource::Header(name) => self.reported_number(name, headers),
                _ => 0,
            })
            .collect();
    }

    /// The whole number the workload put in `name`; 0, counted and logged,
    /// when it is absent, repeated or anything else.
    fn reported_number(&self, name: &HeaderName, headers: &HeaderMap) -> u64 {
        let mut values = headers.get_all(name).iter();
        let number = match (values.next(), values.next()) {
            (Some(value), None) => parse_whole(value.as_bytes()),
            _ => None,
        };
        number.unwrap_or_else(|| {
            tracing::debug!(
                header = %name,
                route = %self.metered.meters.route,
                "the response's usage header is absent or not a whole number; the meter counts 0"
            );
            self.metering.bad_usage_header();
            0
        })
    }

    fn record(self) {
        let identity = &self.metered.license;
        for (index, feed) in self.metered.meters.feeds.iter().enumerate() {
            let value = match &feed.source {
                MeterSource::Requests => feed.cost,
                MeterSource::RequestBytes => self
                    .request_bytes
                    .as_ref()
                    .map_or(0, |n| n.load(Ordering::Relaxed)),
                MeterSource::ResponseBytes => self.response_bytes,
                MeterSource::Header(_) => self.reported.get(index).copied().unwrap_or(0),
            };
            self.metering
                .record(usage(&self.metered, identity, feed, value));
        }
        for over in &self.metered.overage {
            self.metering.record(Usage {
                license: &identity.license,
                customer: identity.customer.as_deref(),
                plan: &identity.plan,
                route: &self.metered.meters.route,
                meter: &over.meter,
                value: over.units,
            });
        }
    }
}

fn usage<'a>(
    metered: &'a Metered,
    identity: &'a crate::decision::LicenseIdentity,
    feed: &'a MeterFeed,
    value: u64,
) -> Usage<'a> {
    Usage {
        license: &identity.license,
        customer: identity.customer.as_deref(),
        plan: &identity.plan,
        route: &metered.meters.route,
        meter: &feed.name,
        value,
    }
}

/// ASCII digits, optionally surrounded by spaces, as a `u64`.
fn parse_whole(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Remove the headers the workload reports usage in: the client never
/// sees (or learns to forge) them.
pub fn strip_usage_headers(headers: &mut HeaderMap, names: &[HeaderName]) {
    for name in names {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::parse_whole;

    #[test]
    fn a_usage_header_is_a_whole_number() {
        assert_eq!(parse_whole(b"42"), Some(42));
        assert_eq!(parse_whole(b" 7 "), Some(7));
        assert_eq!(parse_whole(b"0"), Some(0));
        assert_eq!(parse_whole(b"18446744073709551615"), Some(u64::MAX));
        for bad in [
            &b""[..],
            b" ",
            b"-1",
            b"+1",
            b"1.5",
            b"1e3",
            b"0x10",
            b"12 tokens",
            b"18446744073709551616",
        ] {
            assert_eq!(parse_whole(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
