//! The shared Prometheus registry and its text rendering. A leaf: each
//! subsystem defines and registers its own families here at construction
//! (`decision::DecisionMetrics`, `license::LicenseMetrics`, ...) and
//! resolves its label handles once, so the hot path only touches atomics.

use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    TextEncoder,
};

/// The registry every subsystem registers its metrics on. Cheap to clone
/// (the families are shared).
#[derive(Clone)]
pub struct Registry {
    inner: prometheus::Registry,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

impl Registry {
    /// A registry holding `licensegate_build_info`.
    pub fn new() -> Registry {
        let registry = Registry {
            inner: prometheus::Registry::new(),
        };
        registry
            .gauge_vec(
                "licensegate_build_info",
                "Build information; always 1.",
                &["version"],
            )
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        registry
    }

    /// Register `collector`; names are fixed in code, so a clash is a bug.
    pub fn register<C: Collector + Clone + 'static>(&self, collector: C) -> C {
        self.inner
            .register(Box::new(collector.clone()))
            .expect("metric names are unique");
        collector
    }

    pub fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.register(IntCounter::new(name, help).expect("valid metric"))
    }

    pub fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.register(IntGauge::new(name, help).expect("valid metric"))
    }

    pub fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.register(IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }

    pub fn gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.register(IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }

    pub fn histogram(&self, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
        self.register(
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .expect("valid metric"),
        )
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 * 1024);
        TextEncoder::new()
            .encode(&self.inner.gather(), &mut out)
            .expect("text encoding into a Vec cannot fail");
        out
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

/// One handle per value of a closed label set (an enum's `ALL`), resolved
/// once: the series exist (as zeros) from the start and counting is an
/// index, not a label lookup.
pub fn resolve_counters<'a>(
    family: &IntCounterVec,
    values: impl IntoIterator<Item = &'a str>,
) -> Vec<IntCounter> {
    values
        .into_iter()
        .map(|value| family.with_label_values(&[value]))
        .collect()
}

/// [`resolve_counters`] for gauges.
pub fn resolve_gauges<'a>(
    family: &IntGaugeVec,
    values: impl IntoIterator<Item = &'a str>,
) -> Vec<IntGauge> {
    values
        .into_iter()
        .map(|value| family.with_label_values(&[value]))
        .collect()
}
