//! Counting a request's limits in memory, and the fallback while a shared
//! store is away (a store that was never reached: no Redis needed).

use std::borrow::Cow;
use std::time::Duration;

use super::*;
use crate::limits::{StoreMetrics, Unserved};
use crate::limits::{StoreMode, StoreNodes, StoreSettings};
use crate::metrics::Registry;
use crate::policy::{Amount, Count, KeyPart, Period};

fn def(name: &str, kind: LimitKind, on_store_error: OnStoreError) -> LimitDef {
    LimitDef {
        name: name.into(),
        kind,
        amount: Amount::Fixed(0),
        key: vec![KeyPart::License],
        needs_license: true,
        needs_user: false,
        on_store_error,
        headers: true,
        count: Count::Attempted,
        overage: None,
        thresholds: Box::default(),
    }
}

fn monthly(name: &str, on_store_error: OnStoreError) -> LimitDef {
    def(
        name,
        LimitKind::Quota {
            period: Period::Month,
        },
        on_store_error,
    )
}

fn refunds() -> Arc<RefundMetrics> {
    Arc::new(RefundMetrics::new(&Registry::new()))
}

fn memory() -> Arc<MemoryStore> {
    Arc::new(MemoryStore::new(
        Clock::manual(Duration::from_secs(1_768_478_400)),
        100,
    ))
}

/// A store that has not connected (and, on a closed port, never will).
fn unreachable_store(clock: &Clock) -> Arc<SharedStore> {
    let settings = StoreSettings {
        nodes: StoreNodes::Standalone("redis://127.0.0.1:1".into()),
        mode: StoreMode::Accurate,
        timeout: Duration::from_millis(50),
        replicas: 3,
        key_prefix: "lg".into(),
        lease_max_slice: 100,
        lease_period: Duration::from_secs(10),
        heartbeat: Duration::from_secs(2),
        instance: "test-replica".into(),
    };
    let metrics = Arc::new(StoreMetrics::new(&Registry::new()));
    Arc::new(SharedStore::new(settings, metrics, clock.clone()))
}

/// Charges of `amount` each, under key "lic-1".
fn charges<'a>(
    defs: &'a [LimitDef],
    counters: &'a [Arc<Counters>],
    amount: impl Fn(usize) -> u64 + Clone + 'a,
) -> impl Iterator<Item = Charge<'a>> + Clone + 'a {
    defs.iter()
        .zip(counters)
        .enumerate()
        .map(move |(i, (def, counters))| Charge {
            def,
            counters,
            amount: amount(i),
            cost: 1,
            key: Cow::Borrowed("lic-1"),
            identity: Cow::Borrowed(""),
        })
}

#[test]
fn a_refusal_gives_back_every_limit_counted_before_it_however_many() {
    let limiter = Limiter::new(memory(), None, refunds());
    // 100 quotas of one unit a month, then one of none.
    let defs: Vec<LimitDef> = (0..=100)
        .map(|i| monthly(&format!("q{i}"), OnStoreError::Fallback))
        .collect();
    let counters: Vec<_> = defs.iter().map(|d| limiter.memory().counters(d)).collect();
    let mut held = Held::default();
    let refusal = limiter
        .count_in_memory(charges(&defs, &counters, |i| u64::from(i < 100)), &mut held)
        .unwrap_err();
    let Refusal::Limited { def, .. } = refusal else {
        panic!("limited: {refusal:?}");
    };
    assert_eq!(&*def.name, "q100");
    // Every unit came back: the first 100 pass again, each at its only unit.
    limiter
        .count_in_memory(charges(&defs[..100], &counters, |_| 1), &mut held)
        .unwrap();
    let refusal = limiter
        .count_in_memory(charges(&defs[..100], &counters, |_| 1), &mut held)
        .unwrap_err();
    assert!(matches!(refusal, Refusal::Limited { def, .. } if &*def.name == "q0"));
}

#[test]
fn a_refusal_releases_the_concurrency_slots_it_took() {
    let limiter = Limiter::new(memory(), None, refunds());
    let defs = [
        def("inflight", LimitKind::Concurrency, OnStoreError::Fallback),
        monthly("calls", OnStoreError::Fallback),
    ];
    let counters: Vec<_> = defs.iter().map(|d| limiter.memory().counters(d)).collect();
    // Two in flight, one unit a month.
    let amounts = |i: usize| if i == 0 { 2 } else { 1 };
    let mut first = Held::default();
    limiter
        .count_in_memory(charges(&defs, &counters, amounts), &mut first)
        .unwrap();
    assert_eq!(first.permits.len(), 1);
    // The quota is used up: the second request's slot is released at once.
    let mut held = Held::default();
    let refusal = limiter
        .count_in_memory(charges(&defs, &counters, amounts), &mut held)
        .unwrap_err();
    assert!(held.permits.is_empty());
    assert!(matches!(refusal, Refusal::Limited { def, .. } if &*def.name == "calls"));
    // So the second slot is free.
    limiter
        .count_in_memory(charges(&defs[..1], &counters, amounts), &mut held)
        .unwrap();
    assert_eq!((first.permits.len(), held.permits.len()), (1, 1));
}

#[tokio::test]
async fn while_the_store_is_away_each_limit_follows_its_on_store_error() {
    let memory = memory();
    let shared = unreachable_store(memory.clock());
    assert!(!shared.is_available());
    let limiter = Limiter::new(memory, Some(shared), refunds());
    let defs = [
        def("inflight", LimitKind::Concurrency, OnStoreError::Deny),
        monthly("shared", OnStoreError::Fallback),
        monthly("free", OnStoreError::Allow),
    ];
    let counters: Vec<_> = defs.iter().map(|d| limiter.memory().counters(d)).collect();
    let mut held = Held::default();
    // 9 a month among 3 replicas: this one counts 3 (concurrency still
    // counts here; `free` is not counted while the store is away).
    for _ in 0..3 {
        limiter
            .count(Some("lic-1"), charges(&defs, &counters, |_| 9), &mut held)
            .await
            .unwrap();
    }
    assert_eq!(held.permits.len(), 3);
    let refusal = limiter
        .count(Some("lic-1"), charges(&defs, &counters, |_| 9), &mut held)
        .await
        .unwrap_err();
    assert!(matches!(refusal, Refusal::Limited { def, .. } if &*def.name == "shared"));
    assert!(held.permits.is_empty(), "a refusal releases every permit");
    let free = counters[2].usage(&defs[2], limiter.clock());
    assert!(free.iter().all(|(_, used)| *used == 0), "{free:?}");

    // `deny`: refused, and what came before it is given back.
    let defs = [
        monthly("before", OnStoreError::Fallback),
        monthly("strict", OnStoreError::Deny),
    ];
    let counters: Vec<_> = defs.iter().map(|d| limiter.memory().counters(d)).collect();
    let refusal = limiter
        .count(None, charges(&defs, &counters, |_| 9), &mut held)
        .await
        .unwrap_err();
    assert!(matches!(refusal, Refusal::StoreUnavailable { def } if &*def.name == "strict"));
    let before = counters[0].usage(&defs[0], limiter.clock());
    assert!(before.iter().all(|(_, used)| *used == 0), "{before:?}");
}

#[tokio::test]
async fn quota_units_counted_in_fallback_are_ledgered_net_of_give_backs_and_drained_once() {
    let memory = memory();
    let shared = unreachable_store(memory.clock());
    let limiter = Limiter::new(memory, Some(Arc::clone(&shared)), refunds());
    let rate = LimitKind::Rate {
        window: Duration::from_secs(3600),
        burst: None,
    };
    let defs = [
        def("api", rate, OnStoreError::Fallback),
        monthly("calls", OnStoreError::Fallback),
        monthly("free", OnStoreError::Allow),
    ];
    let counters: Vec<_> = defs.iter().map(|d| limiter.memory().counters(d)).collect();
    let mut held = Held::default();
    for _ in 0..3 {
        limiter
            .count(Some("lic-1"), charges(&defs, &counters, |_| 90), &mut held)
            .await
            .unwrap();
    }
    // A fourth request is counted by `calls`, then refused by `strict`:
    // its unit comes back out of the ledger too.
    let strict = [
        monthly("calls", OnStoreError::Fallback),
        monthly("strict", OnStoreError::Deny),
    ];
    let strict_counters: Vec<_> = strict
        .iter()
        .map(|d| limiter.memory().counters(d))
        .collect();
    let refusal = limiter
        .count(
            Some("lic-1"),
            charges(&strict, &strict_counters, |_| 90),
            &mut held,
        )
        .await
        .unwrap_err();
    assert!(matches!(refusal, Refusal::StoreUnavailable { .. }));

    // Only the quota counted here is ledgered: not the rate (instantaneous),
    // not `free` (not counted while the store is away).
    let month = 1_767_225_600; // 2026-01-01, the window of "now"
    let unmerged = shared.outage().drain();
    let expected = crate::limits::Unmerged {
        epoch: 0,
        window: crate::limits::WindowKey {
            tag: "lic-1".into(),
            limit: "calls".into(),
            key: "lic-1".into(),
            start: month,
        },
        period: Period::Month,
        units: 3,
    };
    assert_eq!(unmerged, vec![expected.clone()]);
    // Drained once: nothing left to merge.
    assert!(shared.outage().is_empty());
    assert_eq!(shared.outage().drain(), Vec::new());

    // A merge that failed comes back with its own epoch (its marker), and
    // what is counted meanwhile goes under a new one.
    shared.outage().restore([expected.clone()]);
    limiter
        .count(
            Some("lic-1"),
            charges(&defs[1..2], &counters[1..2], |_| 90),
            &mut held,
        )
        .await
        .unwrap();
    let mut unmerged = shared.outage().drain();
    unmerged.sort_by_key(|u| u.epoch);
    assert_eq!(
        unmerged,
        vec![
            expected.clone(),
            crate::limits::Unmerged {
                epoch: 2,
                units: 1,
                ..expected
            }
        ]
    );
}

#[test]
fn allowed_rates_and_quotas_state_what_is_left_when_their_headers_are_on() {
    let limiter = Limiter::new(memory(), None, refunds());
    let rate = LimitKind::Rate {
        window: Duration::from_secs(60),
        burst: None,
    };
    let mut quiet = monthly("quiet", OnStoreError::Fallback);
    quiet.headers = false;
    let defs = [
        def("api", rate, OnStoreError::Fallback),
        monthly("calls", OnStoreError::Fallback),
        quiet,
    ];
    let counters: Vec<_> = defs.iter().map(|d| limiter.memory().counters(d)).collect();
    let amounts = |i: usize| [60, 1000, 5][i];
    for n in 1..=3u64 {
        let mut held = Held::default();
        limiter
            .count_in_memory(charges(&defs, &counters, amounts), &mut held)
            .unwrap();
        let budgets = &held.budgets;
        let stated: Vec<(&str, u64, u64, u64)> = budgets
            .iter()
            .map(|b| (&*b.name, b.limit, b.window, b.remaining))
            .collect();
        assert_eq!(
            stated,
            // A rate: what could pass at once now; a quota: what is left of
            // the month (January: 31 days).
            vec![
                ("api", 60, 60, 60 - n),
                ("calls", 1000, 31 * 86_400, 1000 - n)
            ],
            "request {n}"
        );
        // Resets: the rate is whole again in n seconds (one per request);
        // the month ends in 16.5 days.
        let resets: Vec<u64> = budgets.iter().map(|b| b.reset).collect();
        assert_eq!(resets, vec![n, 16 * 86_400 + 12 * 3600], "request {n}");
    }
    // A refusal states no budget.
    let mut held = Held::default();
    let refusal = limiter
        .count_in_memory(charges(&defs, &counters, |i| [60, 1000, 3][i]), &mut held)
        .unwrap_err();
    assert!(matches!(refusal, Refusal::Limited { def, .. } if &*def.name == "quiet"));
    assert!(held.budgets.is_empty());
}

fn served(mut def: LimitDef) -> LimitDef {
    def.count = Count::Served;
    def
}

/// `licensegate_quota_refunds_total` by reason, from `registry`.
fn refunded(registry: &Registry) -> Vec<(String, u64)> {
    let page = String::from_utf8(registry.render()).unwrap();
    Unserved::ALL
        .iter()
        .map(|reason| {
            let series = format!(
                "licensegate_quota_refunds_total{{reason=\"{}\"}} ",
                reason.as_str()
            );
            let value = page
                .lines()
                .find_map(|line| line.strip_prefix(&series))
                .map_or(0, |v| v.trim().parse().unwrap());
            (reason.as_str().to_owned(), value)
        })
        .collect()
}

#[test]
fn a_served_quota_keeps_its_unit_only_for_a_served_request() {
    let registry = Registry::new();
    let limiter = Limiter::new(memory(), None, Arc::new(RefundMetrics::new(&registry)));
    let defs = [
        served(monthly("calls", OnStoreError::Fallback)),
        monthly("attempts", OnStoreError::Fallback),
    ];
    let counters: Vec<_> = defs.iter().map(|d| limiter.memory().counters(d)).collect();
    let used = |i: usize| counters[i].usage(&defs[i], limiter.clock())[0].1;
    let count = || {
        let mut held = Held::default();
        limiter
            .count_in_memory(charges(&defs, &counters, |_| 10), &mut held)
            .unwrap();
        held.tickets
    };

    let tickets = count();
    assert_eq!(tickets.len(), 1, "only the served quota hands out a ticket");
    assert_eq!((used(0), used(1)), (1, 1));
    tickets.unserved(Unserved::UpstreamError);
    assert_eq!((used(0), used(1)), (0, 1));
    count().served();
    assert_eq!((used(0), used(1)), (1, 2));
    count().unserved(Unserved::Incomplete);
    // Dropped unsettled: the client went away before the response head.
    drop(count());
    assert_eq!((used(0), used(1)), (1, 4));
    assert_eq!(
        refunded(&registry),
        [
            ("upstream_error".to_owned(), 1),
            ("incomplete".to_owned(), 1),
            ("client_gone".to_owned(), 1)
        ]
    );

    // Refused by a later limit: the refusal gives the unit back, once; the
    // tickets it had are let go without a second give-back.
    let refusing = [
        served(monthly("calls", OnStoreError::Fallback)),
        monthly("none", OnStoreError::Fallback),
    ];
    let refusing_counters: Vec<_> = refusing
        .iter()
        .map(|d| limiter.memory().counters(d))
        .collect();
    let mut held = Held::default();
    limiter
        .count_in_memory(
            charges(&refusing, &refusing_counters, |i| [10, 0][i]),
            &mut held,
        )
        .unwrap_err();
    assert!(held.tickets.is_empty());
    drop(held);
    assert_eq!(used(0), 1, "given back once");
    assert_eq!(refunded(&registry)[2].1, 1);
}

#[tokio::test]
async fn a_served_quota_counted_in_fallback_leaves_the_outage_ledger_too() {
    let memory = memory();
    let shared = unreachable_store(memory.clock());
    let limiter = Limiter::new(memory, Some(Arc::clone(&shared)), refunds());
    let defs = [served(monthly("calls", OnStoreError::Fallback))];
    let counters: Vec<_> = defs.iter().map(|d| limiter.memory().counters(d)).collect();
    let count = async || {
        let mut held = Held::default();
        limiter
            .count(Some("lic-1"), charges(&defs, &counters, |_| 90), &mut held)
            .await
            .unwrap();
        held.tickets
    };
    count().await.served();
    count().await.unserved(Unserved::UpstreamError);
    drop(count().await);
    let unmerged = shared.outage().drain();
    assert_eq!(unmerged.len(), 1);
    assert_eq!(unmerged[0].units, 1, "only the served request is merged");
    assert_eq!(counters[0].usage(&defs[0], limiter.clock())[0].1, 1);
}
