//! Announcing quota threshold crossings: once per threshold, period and
//! key on this replica (the limits' [`ThresholdLedger`]), once across
//! replicas when a shared store can say so (a marker set there first), as a
//! `licensegate.quota.threshold` event to the billing system when metering
//! is on, a log line and `licensegate_quota_thresholds_total`.

use std::sync::Arc;

use prometheus::IntCounterVec;

use crate::limits::shared::SharedStore;
use crate::limits::{Crossing, ThresholdLedger};
use crate::metering::{Event, Metering, QuotaThreshold};
use crate::metrics::Registry;

/// Where crossings go.
pub struct ThresholdAnnouncer {
    ledger: ThresholdLedger,
    metering: Option<Metering>,
    shared: Option<Arc<SharedStore>>,
    announced: IntCounterVec,
}

impl std::fmt::Debug for ThresholdAnnouncer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThresholdAnnouncer")
            .field("metering", &self.metering.is_some())
            .field("shared", &self.shared.is_some())
            .finish_non_exhaustive()
    }
}

/// Whose quota crossed: the license the request was counted for.
#[derive(Clone, Debug)]
pub struct Holder {
    pub license: Box<str>,
    pub customer: Option<Box<str>>,
}

impl ThresholdAnnouncer {
    pub fn new(
        metering: Option<Metering>,
        shared: Option<Arc<SharedStore>>,
        registry: &Registry,
    ) -> ThresholdAnnouncer {
        ThresholdAnnouncer {
            ledger: ThresholdLedger::default(),
            metering,
            shared,
            announced: registry.counter_vec(
                "licensegate_quota_thresholds_total",
                "Quota thresholds crossed and announced (once per threshold, period and key), by limit and threshold percent.",
                &["limit", "threshold"],
            ),
        }
    }

    /// Announce `crossings` of `holder`'s quotas. Called off the hot path
    /// (a crossing happens a few times per period per key); the store's
    /// say, when there is one, is asked on a task of its own.
    pub fn announce(self: &Arc<Self>, holder: Holder, crossings: Vec<Crossing>) {
        let fresh: Vec<Crossing> = crossings
            .into_iter()
            .filter(|crossing| self.ledger.first(crossing))
            .collect();
        if fresh.is_empty() {
            return;
        }
        let Some(shared) = self.shared.clone() else {
            for crossing in &fresh {
                self.emit(&holder, crossing);
            }
            return;
        };
        let this = Arc::clone(self);
        tokio::spawn(async move {
            for crossing in &fresh {
                // The store could not say: announce (a repeat is better
                // than silence; the billing side sees the same period).
                if shared.claim_threshold(&holder.license, crossing).await != Some(false) {
                    this.emit(&holder, crossing);
                }
            }
        });
    }

    fn emit(&self, holder: &Holder, crossing: &Crossing) {
        self.announced
            .with_label_values(&[&*crossing.limit, &crossing.threshold_percent.to_string()])
            .inc();
        tracing::info!(
            license = %holder.license,
            limit = %crossing.limit,
            threshold_percent = crossing.threshold_percent,
            used = crossing.used,
            limit_amount = crossing.limit_amount,
            "quota threshold crossed"
        );
        if let Some(metering) = &self.metering {
            metering.event(Event::QuotaThreshold(QuotaThreshold {
                license: &holder.license,
                customer: holder.customer.as_deref(),
                limit: &crossing.limit,
                threshold_percent: u32::from(crossing.threshold_percent),
                period_start: crossing.window_start,
                used: crossing.used,
                limit_amount: crossing.limit_amount,
            }));
        }
    }

    /// Forget crossings of windows that have ended.
    pub fn sweep(&self, now: u64) {
        self.ledger.sweep(now);
    }
}
