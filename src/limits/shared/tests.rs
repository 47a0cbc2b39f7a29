//! The shared store's requests and answers, without a Redis: what each
//! request sends (the script's wire form), what each answer means, and the
//! leases in between. `tests/store.rs` runs the same against a real Redis.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::limits::Counters;
use crate::limits::{StoreMode, StoreNodes, StoreSettings};
use crate::metrics::Registry;
use crate::policy::{Amount, Count, KeyPart, LimitDef};

/// 2026-01-15T12:00:00Z: half-way through a day, mid-month.
const NOW: u64 = 1_768_478_400;

fn store(mode: StoreMode) -> SharedStore {
    let settings = StoreSettings {
        nodes: StoreNodes::Standalone("redis://127.0.0.1:1".into()),
        mode,
        timeout: Duration::from_millis(50),
        replicas: 3,
        key_prefix: "lg".into(),
        lease_max_slice: 100,
        lease_period: Duration::from_secs(10),
        heartbeat: Duration::from_secs(2),
        instance: "test-replica".into(),
    };
    let metrics = Arc::new(StoreMetrics::new(&Registry::new()));
    SharedStore::new(settings, metrics, Clock::manual(Duration::from_secs(NOW)))
}

fn def(name: &str, kind: LimitKind) -> LimitDef {
    LimitDef {
        name: name.into(),
        kind,
        amount: Amount::Fixed(0),
        key: vec![KeyPart::License],
        needs_license: true,
        needs_user: false,
        on_store_error: Default::default(),
        headers: true,
        count: Count::Attempted,
        overage: None,
        thresholds: Box::default(),
    }
}

fn rate() -> LimitDef {
    def(
        "api",
        LimitKind::Rate {
            window: Duration::from_secs(60),
            burst: Some(10),
        },
    )
}

fn quota(period: Period) -> LimitDef {
    def("calls", LimitKind::Quota { period })
}

fn seats() -> LimitDef {
    def(
        "users",
        LimitKind::Seats {
            identity: KeyPart::Header(http::HeaderName::from_static("x-user")),
            idle: Duration::from_secs(1800),
        },
    )
}

fn charge<'a>(def: &'a LimitDef, counters: &'a Counters, amount: u64) -> Charge<'a> {
    Charge {
        def,
        counters,
        amount,
        cost: 1,
        key: Cow::Borrowed("lic-1"),
        identity: Cow::Borrowed(if matches!(def.kind, LimitKind::Seats { .. }) {
            "alice"
        } else {
            ""
        }),
    }
}

/// A passed operation that took `units` and left `remaining`.
fn granted(units: u64, remaining: u64) -> Passed {
    Passed {
        granted: units,
        remaining,
        reset_us: None,
    }
}

fn counters(def: &LimitDef) -> Counters {
    Counters::new(def, 10)
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn one_call_carries_every_limit_under_the_license_hash_tag() {
    let store = store(StoreMode::Accurate);
    let (r, q, s) = (rate(), quota(Period::Month), seats());
    let (rc, qc, sc) = (counters(&r), counters(&q), counters(&s));
    let charges = [
        charge(&r, &rc, 60),
        charge(&q, &qc, 1000),
        charge(&s, &sc, 5),
    ];
    let call = store
        .plan("lic-1", &charges, 0, NOW * 1_000_000_000)
        .unwrap();
    let month = 1_767_225_600; // 2026-01-01
    let next_month = 1_769_904_000; // 2026-02-01
    assert_eq!(
        call.encode(),
        Encoded {
            keys: strings(&[
                "lg:{lic-1}:api:r:lic-1",
                &format!("lg:{{lic-1}}:calls:q:lic-1:{month}"),
                // The month before, as a rolling period would carry it.
                &format!(
                    "lg:{{lic-1}}:calls:q:lic-1:{}",
                    month - (next_month - month)
                ),
                "lg:{lic-1}:users:s:lic-1",
            ]),
            ops: 3,
            args: strings(&[
                // 60 per minute: a unit per 1 s, a burst of 10.
                "r",
                "1000000.000000",
                "10000000.000000",
                "1",
                "0",
                "-",
                // Kept a day past the window's end; no previous window weight.
                "q",
                "1000",
                "1",
                &((next_month + 86_400 - NOW) * 1000).to_string(),
                "0",
                "0",
                "s",
                "alice",
                "5",
                "1800000000",
                "-",
                "-",
            ]),
        }
    );
}

#[test]
fn a_rolling_quota_carries_the_previous_window_by_what_is_left_of_this_one() {
    let store = store(StoreMode::Accurate);
    let q = quota(Period::Rolling(Duration::from_secs(86_400)));
    let qc = counters(&q);
    // Noon: half of today's window is left.
    let charges = [charge(&q, &qc, 10)];
    let call = store
        .plan("lic-1", &charges, 0, NOW * 1_000_000_000)
        .unwrap();
    let Op::Quota {
        weight_ppm, ttl_ms, ..
    } = &call.ops[0].0
    else {
        panic!("a quota operation: {:?}", call.ops);
    };
    assert_eq!(*weight_ppm, 500_000);
    // Kept one window past this window's end (12 h + 24 h).
    assert_eq!(*ttl_ms, 36 * 3600 * 1000);
}

#[test]
fn a_rate_of_zero_refuses_without_asking_the_store() {
    let store = store(StoreMode::Accurate);
    let r = rate();
    let rc = counters(&r);
    let refused = store
        .plan("lic-1", &[charge(&r, &rc, 0)], 0, NOW * 1_000_000_000)
        .unwrap_err();
    let SharedOutcome::Limited { position, limited } = refused else {
        panic!("limited: {refused:?}");
    };
    assert_eq!((position, limited.limit), (0, 0));
    assert_eq!(limited.retry_after, Duration::from_secs(60));
}

#[test]
fn answers_are_parsed_by_their_shape() {
    assert_eq!(
        Reply::parse(&[0, 1, 59, 1_000_000, 5, 995, -1], 2),
        Some(Reply::Passed(vec![
            Passed {
                granted: 1,
                remaining: 59,
                reset_us: Some(1_000_000)
            },
            Passed {
                granted: 5,
                remaining: 995,
                reset_us: None
            },
        ]))
    );
    assert_eq!(
        Reply::parse(&[2, 1500, 3], 2),
        Some(Reply::Refused {
            op: 1,
            retry_us: 1500,
            remaining: 3
        })
    );
    // A quota refusal has no retry time of its own (-1).
    assert_eq!(
        Reply::parse(&[1, -1, 0], 1),
        Some(Reply::Refused {
            op: 0,
            retry_us: 0,
            remaining: 0
        })
    );
    for malformed in [
        &[][..],
        &[0, 1, 5, -1][..],              // an operation missing
        &[0, 1, 5, -1, 1, 5][..],        // half an operation
        &[0, 1, 5, -1, 1, 5, -1, 0][..], // one number too many
        &[0, 1, 5, -1, -1, 5, -1][..],   // a negative grant
        &[0, 1, -5, -1, 1, 5, -1][..],   // a negative remainder
        &[0, 1, 5, -2, 1, 5, -1][..],    // a reset below "none"
        &[3, 10, 0][..],                 // no third operation
        &[-1, 10, 0][..],                // negative operation
        &[1, 10][..],                    // a refusal without `remaining`
    ] {
        assert_eq!(Reply::parse(malformed, 2), None, "{malformed:?}");
    }
}

#[test]
fn a_refusal_names_the_charge_with_its_window_and_retry_time() {
    let store = store(StoreMode::Accurate);
    let (r, q) = (rate(), quota(Period::Day));
    let (rc, qc) = (counters(&r), counters(&q));
    let charges = [charge(&r, &rc, 60), charge(&q, &qc, 1000)];
    let unix = NOW * 1_000_000_000;
    let plan = |store: &SharedStore| store.plan("lic-1", &charges, 0, unix).unwrap();

    let refused = Reply::Refused {
        op: 1,
        retry_us: 0,
        remaining: 0,
    };
    let SharedOutcome::Limited { position, limited } =
        store.settle(plan(&store), Some(refused), &charges, 0, unix)
    else {
        panic!("the quota refused");
    };
    assert_eq!(position, 1);
    // Noon: the day's window ends in 12 h.
    assert_eq!(limited.retry_after, Duration::from_secs(12 * 3600));
    assert_eq!(limited.window, Some(Duration::from_secs(86_400)));
    assert_eq!(limited.limit, 1000);

    let refused = Reply::Refused {
        op: 0,
        retry_us: 2_500_000,
        remaining: 0,
    };
    let SharedOutcome::Limited { position, limited } =
        store.settle(plan(&store), Some(refused), &charges, 0, unix)
    else {
        panic!("the rate refused");
    };
    assert_eq!(position, 0);
    assert_eq!(limited.retry_after, Duration::from_micros(2_500_000));
    assert_eq!(limited.window, Some(Duration::from_secs(60)));

    assert!(matches!(
        store.settle(plan(&store), None, &charges, 0, unix),
        SharedOutcome::Unavailable
    ));
}

#[test]
fn leases_are_spent_locally_until_they_run_out() {
    let store = store(StoreMode::Leased);
    let q = quota(Period::Month);
    let qc = counters(&q);
    let charges = [charge(&q, &qc, 1000)];
    let unix = NOW * 1_000_000_000;

    // No lease yet: ask for the first slice (a tenth of the largest).
    let call = store.plan("lic-1", &charges, 0, unix).unwrap();
    let [(Op::Quota { slice, .. }, Purpose::Count { lease: Some(_), .. })] = &call.ops[..] else {
        panic!("one leasing quota operation: {:?}", call.ops);
    };
    assert_eq!(*slice, 10);
    // The store grants 10 units; this request spent one of them.
    let passed = Reply::Passed(vec![granted(10, 990)]);
    assert!(matches!(
        store.settle(call, Some(passed), &charges, 0, unix),
        SharedOutcome::Allowed { .. }
    ));

    // Nine more requests are counted without a call.
    for n in 0..9 {
        let call = store.plan("lic-1", &charges, n, unix).unwrap();
        assert!(call.ops.is_empty(), "request {n}: {:?}", call.ops);
        assert_eq!(call.spent_locally.len(), 1);
    }
    // The lease is spent: ask again, for twice as much (it ran out early).
    let call = store.plan("lic-1", &charges, 10, unix).unwrap();
    let [(Op::Quota { slice, .. }, _)] = &call.ops[..] else {
        panic!("one quota operation: {:?}", call.ops);
    };
    assert_eq!(*slice, 20);
}

#[test]
fn units_spent_locally_come_back_when_a_later_limit_refuses() {
    let store = store(StoreMode::Leased);
    let (q, s) = (quota(Period::Month), seats());
    let (qc, sc) = (counters(&q), counters(&s));
    let unix = NOW * 1_000_000_000;
    let quota_only = [charge(&q, &qc, 1000)];
    let call = store.plan("lic-1", &quota_only, 0, unix).unwrap();
    store.settle(
        call,
        Some(Reply::Passed(vec![granted(10, 990)])),
        &quota_only,
        0,
        unix,
    );
    let remaining = |store: &SharedStore| store.leases.iter().next().unwrap().lock().remaining;
    assert_eq!(remaining(&store), 9);

    // The quota is spent from the lease; the seat is asked for and refused.
    let both = [charge(&q, &qc, 1000), charge(&s, &sc, 1)];
    let call = store.plan("lic-1", &both, 1, unix).unwrap();
    assert_eq!(remaining(&store), 8);
    let [(Op::Seat { .. }, Purpose::Count { position: 1, .. })] = &call.ops[..] else {
        panic!("one seat operation: {:?}", call.ops);
    };
    let refused = Reply::Refused {
        op: 0,
        retry_us: 1,
        remaining: 0,
    };
    let outcome = store.settle(call, Some(refused), &both, 1, unix);
    assert!(matches!(
        outcome,
        SharedOutcome::Limited { position: 1, .. }
    ));
    assert_eq!(remaining(&store), 9, "the quota unit came back");

    // No answer at all gives it back too.
    let call = store.plan("lic-1", &both, 2, unix).unwrap();
    assert_eq!(remaining(&store), 8);
    assert!(matches!(
        store.settle(call, None, &both, 2, unix),
        SharedOutcome::Unavailable
    ));
    assert_eq!(remaining(&store), 9);
}

#[test]
fn an_expired_lease_is_returned_in_the_call_that_renews_it() {
    let store = store(StoreMode::Leased);
    let r = rate();
    let rc = counters(&r);
    let charges = [charge(&r, &rc, 60)];
    let unix = NOW * 1_000_000_000;
    let call = store.plan("lic-1", &charges, 0, unix).unwrap();
    store.settle(
        call,
        Some(Reply::Passed(vec![granted(10, 990)])),
        &charges,
        0,
        unix,
    );

    // After the lease period, the 9 unused units go back before a new
    // slice is taken.
    let later = Duration::from_secs(11).as_nanos() as u64;
    let call = store.plan("lic-1", &charges, later, unix).unwrap();
    let encoded = call.encode();
    assert_eq!(encoded.ops, 2);
    assert_eq!(
        &encoded.args[..3],
        &strings(&["R", "1000000.000000", "9"])[..]
    );
    assert_eq!(encoded.args[6], "r");
    assert!(matches!(call.ops[0].1, Purpose::Return));

    // A store that "refuses" a return is not speaking the protocol.
    let refused = Reply::Refused {
        op: 0,
        retry_us: 0,
        remaining: 0,
    };
    assert!(matches!(
        store.settle(call, Some(refused), &charges, later, unix),
        SharedOutcome::Unavailable
    ));
}

#[test]
fn a_passed_call_says_what_each_rate_and_quota_has_left() {
    let store = store(StoreMode::Accurate);
    let (r, q, s) = (rate(), quota(Period::Day), seats());
    let (rc, qc, sc) = (counters(&r), counters(&q), counters(&s));
    let charges = [
        charge(&r, &rc, 60),
        charge(&q, &qc, 1000),
        charge(&s, &sc, 5),
    ];
    let unix = NOW * 1_000_000_000;
    let call = store.plan("lic-1", &charges, 0, unix).unwrap();
    let passed = Reply::Passed(vec![
        Passed {
            granted: 1,
            remaining: 9,
            reset_us: Some(1_000_000),
        },
        granted(1, 957),
        granted(1, 0),
    ]);
    let SharedOutcome::Allowed { left, .. } = store.settle(call, Some(passed), &charges, 0, unix)
    else {
        panic!("allowed");
    };
    assert_eq!(
        left,
        vec![
            (
                0,
                Left {
                    remaining: 9,
                    reset: Duration::from_secs(1),
                    window: Duration::from_secs(60),
                }
            ),
            // Noon: the day ends in 12 h.
            (
                1,
                Left {
                    remaining: 957,
                    reset: Duration::from_secs(12 * 3600),
                    window: Duration::from_secs(86_400),
                }
            ),
            // Seats state no budget.
        ]
    );
}

#[test]
fn a_lease_states_the_stores_rest_as_of_its_renewal_less_what_it_spent() {
    let store = store(StoreMode::Leased);
    let q = quota(Period::Day);
    let qc = counters(&q);
    let charges = [charge(&q, &qc, 1000)];
    let unix = NOW * 1_000_000_000;
    let call = store.plan("lic-1", &charges, 0, unix).unwrap();
    // The store granted 10 and has 985 left besides (5 are in other
    // replicas' leases or spent).
    let SharedOutcome::Allowed { left, .. } = store.settle(
        call,
        Some(Reply::Passed(vec![granted(10, 985)])),
        &charges,
        0,
        unix,
    ) else {
        panic!("allowed");
    };
    // This request spent 1 of the 10: 985 + 9.
    assert_eq!(left[0].1.remaining, 994);
    assert_eq!(left[0].1.reset, Duration::from_secs(12 * 3600));
    // Spent locally, request by request, without a call: one less each.
    for n in 1..=9u64 {
        let call = store.plan("lic-1", &charges, n, unix).unwrap();
        assert!(call.ops.is_empty(), "request {n}: {:?}", call.ops);
        let [(0, left)] = &call.left[..] else {
            panic!("a local spend states what is left: {:?}", call.left);
        };
        assert_eq!(left.remaining, 994 - n, "request {n}");
        assert_eq!(left.reset, Duration::from_secs(12 * 3600));
    }
}

#[test]
fn a_merge_is_one_operation_with_its_marker_beside_the_window() {
    let store = store(StoreMode::Accurate);
    let day = NOW - NOW % 86_400;
    let entry = |start: u64, period: Period, epoch: u64| Unmerged {
        epoch,
        window: crate::limits::WindowKey {
            tag: "lic-1".into(),
            limit: "calls".into(),
            key: "lic-1".into(),
            start,
        },
        period,
        units: 7,
    };
    let op = store.merge_op(&entry(day, Period::Day, 3), NOW).unwrap();
    let call = Call {
        ops: vec![(op, Purpose::Merge)],
        ..Call::default()
    };
    let encoded = call.encode();
    let marker = format!("lg:{{lic-1}}:calls:m:lic-1:{day}:{}:3", store.process);
    assert_eq!(
        encoded,
        Encoded {
            keys: vec![format!("lg:{{lic-1}}:calls:q:lic-1:{day}"), marker],
            ops: 1,
            // Kept as a counting call keeps it: a day past the window.
            args: strings(&[
                "M",
                "7",
                &((day + 2 * 86_400 - NOW) * 1000).to_string(),
                "-",
                "-",
                "-"
            ]),
        }
    );
    // Another epoch, another marker: a later outage merges again.
    let Op::Merge { marker: other, .. } = store.merge_op(&entry(day, Period::Day, 4), NOW).unwrap()
    else {
        panic!("a merge");
    };
    assert!(other.ends_with(":4") && other != encoded.keys[1], "{other}");

    // Yesterday's key is still kept (a calendar key stays a day past its
    // window): merged. The day before's has expired: dropped.
    assert!(store
        .merge_op(&entry(day - 86_400, Period::Day, 3), NOW)
        .is_some());
    assert!(store
        .merge_op(&entry(day - 2 * 86_400, Period::Day, 3), NOW)
        .is_none());
    // A rolling hour: the previous hour still weighs in the sliding
    // estimate, the one before does not.
    let hourly = Period::Rolling(Duration::from_secs(3600));
    let hour = NOW - NOW % 3600;
    assert!(store
        .merge_op(&entry(hour - 3600, hourly, 3), NOW)
        .is_some());
    assert!(store
        .merge_op(&entry(hour - 7200, hourly, 3), NOW)
        .is_none());
}

#[test]
fn a_served_quota_says_where_its_units_go_back_to() {
    let unix = NOW * 1_000_000_000;
    let mut q = quota(Period::Day);
    q.count = Count::Served;
    let r = rate();
    let (qc, rc) = (counters(&q), counters(&r));
    let charges = [charge(&r, &rc, 60), charge(&q, &qc, 1000)];

    // Accurate: to the day's key in the store, the units this request took.
    let accurate = store(StoreMode::Accurate);
    let call = accurate.plan("lic-1", &charges, 0, unix).unwrap();
    let passed = Reply::Passed(vec![granted(1, 59), granted(1, 999)]);
    let SharedOutcome::Allowed { refunds, .. } =
        accurate.settle(call, Some(passed), &charges, 0, unix)
    else {
        panic!("allowed");
    };
    let day = NOW - NOW % 86_400;
    assert_eq!(
        refunds,
        vec![SharedRefund {
            lease_key: None,
            key: format!("lg:{{lic-1}}:calls:q:lic-1:{day}"),
            units: 1,
        }]
    );
    // A quota counted attempts says nothing.
    let counts_attempts = quota(Period::Day);
    let attempted = [charge(&r, &rc, 60), charge(&counts_attempts, &qc, 1000)];
    let call = accurate.plan("lic-1", &attempted, 0, unix).unwrap();
    let passed = Reply::Passed(vec![granted(1, 58), granted(1, 998)]);
    assert!(matches!(
        accurate.settle(call, Some(passed), &attempted, 0, unix),
        SharedOutcome::Allowed { refunds, .. } if refunds.is_empty()
    ));

    // Leased: into the lease, whether the units came with a new lease or
    // were spent from one.
    let store = store(StoreMode::Leased);
    let only = [charge(&q, &qc, 1000)];
    let lease_key: Box<str> = "lg:{lic-1}:calls:q:lic-1".into();
    let window_key = format!("lg:{{lic-1}}:calls:q:lic-1:{day}");
    let expected = SharedRefund {
        lease_key: Some(lease_key.clone()),
        key: window_key.clone(),
        units: 1,
    };
    let call = store.plan("lic-1", &only, 0, unix).unwrap();
    let SharedOutcome::Allowed { refunds, .. } = store.settle(
        call,
        Some(Reply::Passed(vec![granted(10, 990)])),
        &only,
        0,
        unix,
    ) else {
        panic!("allowed");
    };
    assert_eq!(refunds, vec![expected]);
    // Spent from the lease, without a call (`check` answers with these).
    let call = store.plan("lic-1", &only, 1, unix).unwrap();
    assert!(call.ops.is_empty(), "spent from the lease");
    assert_eq!(
        call.refunds,
        vec![SharedRefund {
            lease_key: Some(lease_key.clone()),
            key: window_key.clone(),
            units: 1,
        }]
    );
    let remaining = |store: &SharedStore| store.leases.iter().next().unwrap().lock().remaining;
    assert_eq!(remaining(&store), 8);
    // Given back: into the lease while it spends from the same window.
    assert!(store.give_back_to_lease(&lease_key, &window_key, 1));
    assert!(store.give_back_to_lease(&lease_key, &window_key, 1));
    assert_eq!(remaining(&store), 10);
    // Not into a lease of another window (nor one that does not exist):
    // those units go back to the store.
    assert!(!store.give_back_to_lease(&lease_key, "lg:{lic-1}:calls:q:lic-1:0", 1));
    assert!(!store.give_back_to_lease("lg:{lic-2}:calls:q:lic-2", &window_key, 1));
    assert_eq!(remaining(&store), 10);
}
