use std::path::Path;

use super::*;

fn parse(yaml: &str) -> Result<MeteringSettings, String> {
    let file: MeteringFile = serde_yaml::from_str(yaml).map_err(|e| e.to_string())?;
    file.resolve(Path::new("/etc/licensegate"))
        .map_err(|e| e.to_string())
}

#[test]
fn settings_have_defaults_and_resolve_relative_paths() {
    let settings = parse(
        "
journal: {dir: metering}
sinks:
  - {name: openmeter, kind: cloudevents, url: 'https://openmeter.cloud/api/v1/events', ca: ca.pem,
     headers: {Authorization: Bearer om_secret}}
  - {name: audit, kind: jsonl, path: usage.jsonl}
  - {name: console, kind: jsonl, path: '-'}
",
    )
    .unwrap();
    assert!(settings.source.starts_with("licensegate/"));
    assert_eq!(settings.window, Duration::from_secs(10));
    let journal = &settings.journal;
    assert_eq!(journal.dir, Path::new("/etc/licensegate/metering"));
    assert_eq!(journal.segment_bytes, 8 << 20);
    assert_eq!(journal.max_bytes, 1 << 30);
    assert_eq!(journal.fsync, Fsync::Window);
    assert_eq!(journal.overflow, Overflow::DropNewest);
    let openmeter = &settings.sinks[0];
    assert_eq!(openmeter.batch, 100);
    assert_eq!(openmeter.timeout, Duration::from_secs(10));
    assert_eq!(
        (openmeter.min_backoff, openmeter.max_backoff),
        (Duration::from_millis(200), Duration::from_secs(30))
    );
    let SinkTarget::CloudEvents(http) = &openmeter.target else {
        panic!("{:?}", openmeter.target)
    };
    assert_eq!(
        http.ca.as_deref(),
        Some(Path::new("/etc/licensegate/ca.pem"))
    );
    assert_eq!(http.headers[0].0, "authorization");
    // Credentials never show in debug output (and so in logs).
    assert!(!format!("{settings:?}").contains("om_secret"));
    assert!(matches!(
        &settings.sinks[1].target,
        SinkTarget::Jsonl(JsonlTarget::File(path)) if path == Path::new("/etc/licensegate/usage.jsonl")
    ));
    assert!(matches!(
        &settings.sinks[2].target,
        SinkTarget::Jsonl(JsonlTarget::Stdout)
    ));
}

#[test]
fn settings_take_every_field() {
    let settings = parse(
        "
source: licensegate/pod-0
window: 250ms
journal: {dir: /var/lib/lg, segment_bytes: 1MiB, max_bytes: 64MiB, fsync: always, overflow: drop_oldest}
sinks:
  - {name: stripe, kind: stripe, headers: {Authorization: Bearer sk_test}, batch: 20, timeout: 3s,
     min_backoff: 50ms, max_backoff: 5s}
",
    )
    .unwrap();
    assert_eq!(settings.source, "licensegate/pod-0");
    assert_eq!(settings.window, Duration::from_millis(250));
    assert_eq!(settings.journal.segment_bytes, 1 << 20);
    assert_eq!(settings.journal.max_bytes, 64 << 20);
    assert_eq!(settings.journal.fsync, Fsync::Always);
    assert_eq!(settings.journal.overflow, Overflow::DropOldest);
    let stripe = &settings.sinks[0];
    let SinkTarget::Stripe(http) = &stripe.target else {
        panic!("{:?}", stripe.target)
    };
    assert_eq!(http.url, settings::STRIPE_URL);
    assert_eq!((stripe.batch, stripe.timeout), (20, Duration::from_secs(3)));
    assert_eq!(stripe.min_backoff, Duration::from_millis(50));
}

#[test]
fn bad_settings_say_which_and_why() {
    let cases = [
        (
            "journal: {dir: d}\nsinks: [{name: a, kind: jsonl, path: x, bogus: 1}]",
            "unknown field `bogus`",
        ),
        ("journal: {dir: d, segment_bytes: 8 parsecs}\nsinks: []", "`parsecs` is not a size unit"),
        ("window: soon\njournal: {dir: d}\nsinks: []", "`soon` is not a duration"),
        ("journal: {dir: d, fsync: sometimes}\nsinks: []", "unknown variant `sometimes`"),
        ("journal: {dir: d}\nsinks: []", "metering.sinks: at least one sink is required"),
        (
            "window: 2h\njournal: {dir: d}\nsinks: [{name: a, kind: jsonl, path: x}]",
            "metering.window: 2h is out of range",
        ),
        (
            "journal: {dir: d, segment_bytes: 1MiB, max_bytes: 1MiB}\nsinks: [{name: a, kind: jsonl, path: x}]",
            "metering.journal.max_bytes: 1048576 must be at least twice segment_bytes",
        ),
        (
            "journal: {dir: d}\nsinks: [{name: a, kind: jsonl, path: x}, {name: a, kind: jsonl, path: y}]",
            "metering.sinks[1].name: `a` names two sinks",
        ),
        (
            "journal: {dir: d}\nsinks: [{name: ../a, kind: jsonl, path: x}]",
            "metering.sinks[0].name: `../a` is not a sink name",
        ),
        (
            "journal: {dir: d}\nsinks: [{name: a, kind: cloudevents}]",
            "metering.sinks[0].url: required",
        ),
        (
            "journal: {dir: d}\nsinks: [{name: a, kind: cloudevents, url: 'http://collector:8080/e'}]",
            "metering.sinks[0].url: `http://collector:8080/e` must be https://",
        ),
        (
            "journal: {dir: d}\nsinks: [{name: a, kind: cloudevents, url: 'http://collector:8080/e', allow_http: true}]",
            "plain http:// is allowed only to a loopback address, not `collector`",
        ),
        (
            "journal: {dir: d}\nsinks: [{name: a, kind: cloudevents, url: 'https://u:p@c/e'}]",
            "credentials in the URL",
        ),
        (
            "journal: {dir: d}\nsinks: [{name: a, kind: stripe}]",
            "metering.sinks[0].headers: a `stripe` sink needs `Authorization",
        ),
        (
            "journal: {dir: d}\nsinks: [{name: a, kind: jsonl, url: 'https://c/e', path: x}]",
            "metering.sinks[0].url: not used by a `jsonl` sink",
        ),
        (
            "journal: {dir: d}\nsinks: [{name: a, kind: jsonl}]",
            "metering.sinks[0].path: required for a `jsonl` sink",
        ),
        (
            "journal: {dir: d}\nsinks: [{name: a, kind: cloudevents, url: 'https://c/e', path: x}]",
            "metering.sinks[0].path: only a `jsonl` sink",
        ),
        (
            "journal: {dir: d}\nsinks: [{name: a, kind: jsonl, path: x, batch: 0}]",
            "metering.sinks[0].batch: 0 is out of range",
        ),
        (
            "journal: {dir: d}\nsinks: [{name: a, kind: jsonl, path: x, min_backoff: 2s, max_backoff: 1s}]",
            "metering.sinks[0].min_backoff",
        ),
    ];
    for (yaml, expected) in cases {
        let error = parse(yaml).unwrap_err();
        assert!(
            error.contains(expected),
            "{yaml}\n  gave: {error}\n  expected: {expected}"
        );
    }
    // Sizes in bytes as plain numbers.
    let settings = parse(
        "journal: {dir: d, segment_bytes: 65536, max_bytes: 10MB}\nsinks: [{name: a, kind: jsonl, path: x}]",
    )
    .unwrap();
    assert_eq!(settings.journal.segment_bytes, 65_536);
    assert_eq!(settings.journal.max_bytes, 10_000_000);
}

fn usage(route: &str, value: u64) -> Usage<'_> {
    Usage {
        license: "lic-1",
        customer: Some("acme"),
        plan: "pro",
        route,
        meter: "requests",
        value,
    }
}

fn jsonl_settings(dir: &Path) -> MeteringSettings {
    let mut settings = MeteringSettings::new(
        dir.join("journal"),
        vec![SinkSettings::new(
            "file",
            SinkTarget::Jsonl(JsonlTarget::File(dir.join("usage.jsonl"))),
        )],
    );
    settings.source = "licensegate/unit".into();
    settings
}

/// The complete lines of `path`, parsed (a line being written is left out).
fn lines(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = &text[..text.rfind('\n').map_or(0, |end| end + 1)];
    complete
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// Poll `done` every 10 ms for up to 10 s.
async fn until(mut done: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not done within 10 s");
}

#[tokio::test]
async fn usage_is_summed_per_key_and_exported_once_per_window() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::new();
    let (metering, tasks) = Metering::start(jsonl_settings(dir.path()), &registry).unwrap();
    for _ in 0..5 {
        metering.record(usage("chat", 2));
    }
    metering.record(usage("search", 1));
    metering.record(usage("search", 0));
    metering.event(Event::QuotaThreshold(QuotaThreshold {
        license: "lic-1",
        customer: Some("acme"),
        limit: "monthly",
        threshold_percent: 80,
        period_start: 1_764_547_200,
        used: 80,
        limit_amount: 100,
    }));
    metering.flush().await;
    assert_eq!(metering.open_aggregates(), 0);
    // The month's running total outlives the window's aggregates.
    let (totals, since) = metering.month_to_date("lic-1");
    assert_eq!(totals, [("requests".to_owned(), 11)]);
    assert!(since <= unix_ms(std::time::SystemTime::now()));
    assert_eq!(metering.month_to_date_licenses(), ["lic-1"]);
    assert!(metering.month_to_date("lic-2").0.is_empty());

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut exporters = tasks.exporters;
    let exporter = tokio::spawn(exporters.remove(0).run(async {
        let _ = stopped.await;
    }));
    let path = dir.path().join("usage.jsonl");
    let exported = || {
        let page = String::from_utf8(registry.render()).unwrap();
        page.contains("licensegate_metering_exported_total{sink=\"file\"} 3")
            && page.contains("licensegate_metering_backlog_records{sink=\"file\"} 0")
    };
    until(exported).await;
    let events = lines(&path);
    assert_eq!(events.len(), 3);
    let mut seen: Vec<(String, u64)> = events
        .iter()
        .map(|e| {
            let value = e["data"]["value"].as_u64().or(e["data"]["used"].as_u64());
            (e["type"].as_str().unwrap().to_owned(), value.unwrap())
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("licensegate.quota.threshold".to_owned(), 80),
            ("requests".to_owned(), 1),
            ("requests".to_owned(), 10),
        ]
    );
    assert!(events.iter().all(|e| e["subject"] == "acme"));
    assert!(events.iter().all(|e| e["source"] == "licensegate/unit"));
    stop.send(()).unwrap();
    exporter.await.unwrap();
}

#[tokio::test]
async fn a_graceful_stop_journals_the_open_window() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = jsonl_settings(dir.path());
    // A window that will not close during the test.
    settings.window = Duration::from_secs(3600);
    let (metering, tasks) = Metering::start(settings.clone(), &Registry::new()).unwrap();
    metering.record(usage("chat", 7));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let flusher = tokio::spawn(tasks.flusher.run(async {
        let _ = stopped.await;
    }));
    stop.send(()).unwrap();
    flusher.await.unwrap();
    drop(metering);
    drop(tasks.exporters);

    // The next process exports it.
    let (_metering, tasks) = Metering::start(settings, &Registry::new()).unwrap();
    assert_eq!(tasks.recovery.records, 1);
    let mut exporters = tasks.exporters;
    let exporter = tokio::spawn(exporters.remove(0).run(std::future::pending()));
    let path = dir.path().join("usage.jsonl");
    until(|| lines(&path).len() == 1).await;
    assert_eq!(lines(&path)[0]["data"]["value"], 7);
    exporter.abort();
}
