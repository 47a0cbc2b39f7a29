//! Metering through the library API, exporting over real HTTPS to a real
//! collector on loopback that deduplicates as OpenMeter does: every unit
//! recorded arrives once, through collector outages, 503s, a refused batch,
//! and a process dropped without its graceful flush.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;
use std::time::{Duration, Instant};

use common::collector::{Collector, Reply};
use licensegate::metering::{
    Event, HttpTarget, Metering, MeteringSettings, QuotaThreshold, SinkSettings, SinkTarget, Usage,
};
use licensegate::metrics::Registry;
use tokio::sync::watch;
use tokio::task::JoinHandle;

struct Counting;

thread_local! {
    // Per thread, so other tests running alongside do not count.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards every call to the system allocator; only counts.
#[expect(unsafe_code, reason = "a global allocator is an unsafe trait")]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const METER: &str = "api_calls";

fn usage<'a>(license: &'a str, route: &'a str) -> Usage<'a> {
    Usage {
        license,
        customer: Some("acme"),
        plan: "pro",
        route,
        meter: METER,
        value: 1,
    }
}

/// `count` units over three licenses and two routes.
fn record(metering: &Metering, count: u64) {
    let licenses = ["lic-a", "lic-b", "lic-c"];
    for i in 0..count {
        let route = if i % 2 == 0 { "chat" } else { "search" };
        metering.record(usage(licenses[i as usize % 3], route));
    }
}

fn settings(dir: &Path, collector: &Collector) -> MeteringSettings {
    let mut target = HttpTarget::new(collector.events_url().parse().unwrap());
    target.ca = Some(collector.ca.clone());
    target.headers.push((
        http::header::AUTHORIZATION,
        "Bearer om_test".parse().unwrap(),
    ));
    let mut sink = SinkSettings::new("openmeter", SinkTarget::CloudEvents(target));
    sink.batch = 4;
    sink.timeout = Duration::from_secs(5);
    sink.min_backoff = Duration::from_millis(20);
    sink.max_backoff = Duration::from_millis(200);
    let mut settings = MeteringSettings::new(dir.join("journal"), vec![sink]);
    settings.source = "licensegate/test-pod-0".into();
    settings.window = Duration::from_millis(100);
    settings
}

/// A started metering subsystem: the handle, its metrics and its tasks.
struct Running {
    metering: Metering,
    registry: Registry,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    fn start(settings: MeteringSettings) -> Running {
        let registry = Registry::new();
        let (metering, tasks) = Metering::start(settings, &registry).unwrap();
        let (stop, _) = watch::channel(false);
        let stopped = |stop: &watch::Sender<bool>| {
            let mut rx = stop.subscribe();
            async move {
                let _ = rx.wait_for(|stopped| *stopped).await;
            }
        };
        let mut handles = vec![tokio::spawn(tasks.flusher.run(stopped(&stop)))];
        for exporter in tasks.exporters {
            handles.push(tokio::spawn(exporter.run(stopped(&stop))));
        }
        Running {
            metering,
            registry,
            stop,
            tasks: handles,
        }
    }

    fn metric(&self, series: &str) -> f64 {
        common::metric(&String::from_utf8(self.registry.render()).unwrap(), series)
            .unwrap_or_else(|| panic!("no {series}"))
    }

    /// The graceful stop: the open window is journalled.
    async fn stop(self) {
        self.stop.send_replace(true);
        for task in self.tasks {
            task.await.unwrap();
        }
    }

    /// The process dies: tasks dropped where they are, nothing flushed.
    async fn crash(self) {
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks {
            let _ = task.await;
        }
        drop(self.metering);
    }
}

/// Poll `done` every 20 ms for up to 20 s.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + common::WAIT;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "not within {:?}: {what}",
            common::WAIT
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn report(test: &str, collector: &Collector) {
    eprintln!(
        "{test}: raw deliveries {}, after dedupe {}, total {}",
        collector.deliveries(),
        collector.unique(),
        collector.total(METER)
    );
}

#[tokio::test]
async fn every_unit_arrives_once() {
    let collector = Collector::start().await;
    let dir = tempfile::tempdir().unwrap();
    // Windows end only at the flushes below, whatever the machine's speed.
    let mut settings = settings(dir.path(), &collector);
    settings.window = Duration::from_secs(3600);
    let running = Running::start(settings);
    for _ in 0..5 {
        record(&running.metering, 200);
        running.metering.flush().await;
    }
    until("1000 units at the collector", || {
        collector.total(METER) == 1000
    })
    .await;
    until("the backlog drained", || {
        running.metric("licensegate_metering_backlog_records{sink=\"openmeter\"}") == 0.0
            && running.metric("licensegate_metering_oldest_unexported_seconds{sink=\"openmeter\"}")
                == 0.0
    })
    .await;
    report("every_unit_arrives_once", &collector);
    // 5 flushes × 6 (license, route) keys, in batches of at most 4.
    assert_eq!(collector.unique(), 30);
    assert_eq!(collector.deliveries(), 30, "nothing sent twice");
    assert!(collector.statuses().iter().all(|s| *s == 200));
    assert_eq!(
        running.metric("licensegate_metering_exported_total{sink=\"openmeter\"}"),
        30.0
    );
    // Disk writes follow flushes, not the 1000 records.
    let writes = running.metric("licensegate_metering_journal_writes_total");
    assert!((5.0..=10.0).contains(&writes), "{writes} journal writes");
    let headers = collector.last_headers().unwrap();
    assert_eq!(headers["authorization"], "Bearer om_test");
    assert!(headers["user-agent"]
        .to_str()
        .unwrap()
        .starts_with("licensegate/"));
    running.stop().await;
}

#[tokio::test]
async fn usage_waits_out_a_collector_that_is_down() {
    let collector = Collector::start().await;
    collector.down();
    let dir = tempfile::tempdir().unwrap();
    let running = Running::start(settings(dir.path(), &collector));
    record(&running.metering, 500);
    running.metering.flush().await;
    until("an export failed", || {
        running
            .metric("licensegate_metering_sink_errors_total{kind=\"network\",sink=\"openmeter\"}")
            >= 2.0
    })
    .await;
    assert_eq!(collector.total(METER), 0);
    assert_eq!(
        running.metric("licensegate_metering_backlog_records{sink=\"openmeter\"}"),
        6.0
    );
    record(&running.metering, 300);
    collector.up().await;
    until("800 units at the collector", || {
        collector.total(METER) == 800
    })
    .await;
    report("usage_waits_out_a_collector_that_is_down", &collector);
    running.stop().await;
}

#[tokio::test]
async fn retries_after_503_and_lost_acknowledgements_count_once() {
    let collector = Collector::start().await;
    // Three plain 503s (one asking for a 1 s pause), then two batches taken
    // whose acknowledgement is lost: the exporter must send those again.
    collector.script([
        Reply::Status(503, None),
        Reply::Status(503, Some(1)),
        Reply::Status(503, None),
        Reply::TakeThen503,
        Reply::TakeThen503,
    ]);
    let dir = tempfile::tempdir().unwrap();
    // One window for all 1000 units (journalled by the flush below): six
    // records, one per license and route, whatever the machine's speed.
    let mut settings = settings(dir.path(), &collector);
    settings.window = Duration::from_secs(3600);
    let running = Running::start(settings);
    record(&running.metering, 1000);
    running.metering.flush().await;
    until("1000 units at the collector", || {
        collector.total(METER) == 1000
    })
    .await;
    until("the backlog drained", || {
        running.metric("licensegate_metering_backlog_records{sink=\"openmeter\"}") == 0.0
    })
    .await;
    report(
        "retries_after_503_and_lost_acknowledgements_count_once",
        &collector,
    );
    assert_eq!(collector.unique(), 6);
    assert!(
        collector.deliveries() > collector.unique(),
        "the batches whose acknowledgement was lost were sent again"
    );
    assert_eq!(&collector.statuses()[..5], [503, 503, 503, 503, 503]);
    assert_eq!(
        running
            .metric("licensegate_metering_sink_errors_total{kind=\"server\",sink=\"openmeter\"}"),
        5.0
    );
    running.stop().await;
}

#[tokio::test]
async fn a_refused_batch_is_dead_lettered_and_export_goes_on() {
    let collector = Collector::start().await;
    collector.script([Reply::Status(400, None)]);
    let dir = tempfile::tempdir().unwrap();
    let running = Running::start(settings(dir.path(), &collector));
    // Two keys, so the refused batch is one request.
    running.metering.record(Usage {
        value: 5,
        ..usage("lic-a", "chat")
    });
    running.metering.record(Usage {
        value: 6,
        ..usage("lic-b", "chat")
    });
    running.metering.flush().await;
    until("the batch dead-lettered", || {
        running.metric("licensegate_metering_dead_letters_total{sink=\"openmeter\"}") == 2.0
    })
    .await;
    record(&running.metering, 90);
    running.metering.flush().await;
    until("the later units at the collector", || {
        collector.total(METER) == 90
    })
    .await;
    assert_eq!(
        running
            .metric("licensegate_metering_sink_errors_total{kind=\"rejected\",sink=\"openmeter\"}"),
        1.0
    );
    let text =
        std::fs::read_to_string(dir.path().join("journal/dead-letter/openmeter.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["status"], 400);
    assert_eq!(lines[0]["sink"], "openmeter");
    assert!(lines[0]["answer"]
        .as_str()
        .unwrap()
        .contains("scripted 400"));
    let mut values: Vec<u64> = lines[0]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["data"]["value"].as_u64().unwrap())
        .collect();
    values.sort();
    assert_eq!(values, [5, 6]);
    running.stop().await;
}

#[tokio::test]
async fn a_restart_resends_what_was_taken_but_not_acknowledged_with_the_same_ids() {
    let collector = Collector::start().await;
    // Every batch of the first process is taken, and its acknowledgement lost.
    collector.script(vec![Reply::TakeThen503; 1000]);
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings(dir.path(), &collector);
    // One batch: each retry of it is taken, and never acknowledged.
    settings.sinks[0].batch = 100;
    // One window, journalled by the flush: six records.
    settings.window = Duration::from_secs(3600);
    let first = Running::start(settings.clone());
    record(&first.metering, 600);
    first.metering.flush().await;
    until("the collector took all 600", || {
        collector.total(METER) == 600
    })
    .await;
    let taken = collector.deliveries();
    first.crash().await;
    // The second process is answered 200.
    collector.clear_script();

    let second = Running::start(settings);
    until("the backlog drained", || {
        second.metric("licensegate_metering_backlog_records{sink=\"openmeter\"}") == 0.0
    })
    .await;
    report(
        "a_restart_resends_what_was_taken_but_not_acknowledged_with_the_same_ids",
        &collector,
    );
    assert!(
        collector.deliveries() >= taken + 6,
        "sent again after the restart"
    );
    assert_eq!(collector.unique(), 6, "with the same ids");
    assert_eq!(collector.total(METER), 600, "counted once");
    second.stop().await;
}

#[tokio::test]
async fn a_crash_after_the_journal_write_loses_nothing_journalled() {
    let collector = Collector::start().await;
    collector.down();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings(dir.path(), &collector);
    // Windows close only when flushed, so what is journalled is known.
    settings.window = Duration::from_secs(3600);
    let first = Running::start(settings.clone());
    // Acknowledged before the outage: must not be sent again.
    collector.up().await;
    record(&first.metering, 120);
    first.metering.flush().await;
    until("the first units at the collector", || {
        collector.total(METER) == 120
    })
    .await;
    until("the cursor stored", || {
        first.metric("licensegate_metering_backlog_records{sink=\"openmeter\"}") == 0.0
    })
    .await;
    collector.down();
    // Journalled, never acknowledged.
    record(&first.metering, 300);
    first.metering.flush().await;
    until("an export attempt failed", || {
        first.metric("licensegate_metering_sink_errors_total{kind=\"network\",sink=\"openmeter\"}")
            >= 1.0
    })
    .await;
    // In the open window only: what a kill -9 loses by design.
    record(&first.metering, 50);
    first.crash().await;
    let cursor =
        std::fs::read_to_string(dir.path().join("journal/cursors/openmeter.json")).unwrap();
    eprintln!("cursor at the crash: {cursor}");

    collector.up().await;
    let second = Running::start(settings);
    until("420 units at the collector", || {
        collector.total(METER) == 420
    })
    .await;
    until("the backlog drained", || {
        second.metric("licensegate_metering_backlog_records{sink=\"openmeter\"}") == 0.0
    })
    .await;
    report(
        "a_crash_after_the_journal_write_loses_nothing_journalled",
        &collector,
    );
    assert_eq!(
        collector.deliveries(),
        collector.unique(),
        "nothing acknowledged was sent again"
    );
    assert_eq!(collector.total(METER), 420);
    second.stop().await;
}

#[tokio::test]
async fn a_graceful_stop_loses_nothing() {
    let collector = Collector::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings(dir.path(), &collector);
    settings.window = Duration::from_secs(3600);
    let first = Running::start(settings.clone());
    collector.down();
    record(&first.metering, 77);
    first.stop().await;
    collector.up().await;
    let second = Running::start(settings);
    until("77 units at the collector", || collector.total(METER) == 77).await;
    second.stop().await;
}

#[tokio::test]
async fn stripe_meter_events_are_idempotent() {
    let collector = Collector::start().await;
    collector.script([Reply::TakeThen503, Reply::TakeThen503]);
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings(dir.path(), &collector);
    let mut target = HttpTarget::new(collector.stripe_url().parse().unwrap());
    target.ca = Some(collector.ca.clone());
    target.headers.push((
        http::header::AUTHORIZATION,
        "Bearer sk_test_123".parse().unwrap(),
    ));
    let mut sink = SinkSettings::new("stripe", SinkTarget::Stripe(target));
    sink.min_backoff = Duration::from_millis(20);
    sink.max_backoff = Duration::from_millis(200);
    settings.sinks = vec![sink];
    // One window, journalled by the flush: six records.
    settings.window = Duration::from_secs(3600);
    let running = Running::start(settings);
    record(&running.metering, 300);
    running
        .metering
        .event(Event::QuotaThreshold(QuotaThreshold {
            license: "lic-a",
            customer: Some("acme"),
            limit: "monthly",
            threshold_percent: 80,
            period_start: 1_764_547_200,
            used: 800,
            limit_amount: 1000,
        }));
    running.metering.flush().await;
    until("300 units at Stripe", || collector.total(METER) == 300).await;
    until("the backlog drained", || {
        running.metric("licensegate_metering_backlog_records{sink=\"stripe\"}") == 0.0
    })
    .await;
    report("stripe_meter_events_are_idempotent", &collector);
    assert_eq!(collector.unique(), 6, "thresholds are not meter events");
    assert!(collector.deliveries() > 6);
    assert!(collector.stripe_keys_match());
    running.stop().await;
}

#[tokio::test]
async fn events_are_valid_cloudevents_for_the_reference_sdk() {
    let collector = Collector::start().await;
    let dir = tempfile::tempdir().unwrap();
    let running = Running::start(settings(dir.path(), &collector));
    record(&running.metering, 10);
    running.metering.record(Usage {
        customer: None,
        ..usage("lic-x", "chat")
    });
    running
        .metering
        .event(Event::QuotaThreshold(QuotaThreshold {
            license: "lic-a",
            customer: None,
            limit: "monthly",
            threshold_percent: 100,
            period_start: 1_764_547_200,
            used: 1000,
            limit_amount: 1000,
        }));
    running.metering.flush().await;
    until("every event at the collector", || collector.unique() == 8).await;
    running.stop().await;

    if let Some(checked) = collector.check_with_sdk(dir.path()) {
        assert_eq!(checked, 8);
    }
}

#[test]
fn a_warm_record_allocates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = MeteringSettings::new(
        dir.path().join("journal"),
        vec![SinkSettings::new(
            "file",
            SinkTarget::Jsonl(licensegate::metering::JsonlTarget::File(
                dir.path().join("usage.jsonl"),
            )),
        )],
    );
    settings.window = Duration::from_secs(3600);
    let (metering, _tasks) = Metering::start(settings, &Registry::new()).unwrap();
    let license = String::from("lic-a");
    for _attempt in 0..3 {
        metering.record(usage(&license, "chat"));
        let aggregates = metering.open_aggregates();
        let before = ALLOCATIONS.with(Cell::get);
        let started = Instant::now();
        const N: u32 = 100_000;
        for _ in 0..N {
            metering.record(usage(&license, "chat"));
        }
        let elapsed = started.elapsed();
        let allocations = ALLOCATIONS.with(Cell::get) - before;
        if metering.open_aggregates() != aggregates {
            // An hour boundary passed: a new window, a new key. Again.
            continue;
        }
        eprintln!(
            "record: {:?} per call ({} build), {allocations} allocations in {N}",
            elapsed / N,
            if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            }
        );
        assert_eq!(allocations, 0);
        return;
    }
    panic!("three window boundaries in a row");
}
