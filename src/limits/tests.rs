use std::time::Duration;

use super::*;
use crate::policy::{Amount, Count, KeyPart, Period};

const MONTH_START: u64 = 1_767_225_600; // 2026-01-01T00:00:00Z

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

fn clock() -> Clock {
    Clock::manual(Duration::from_secs(MONTH_START))
}

fn allowed(checked: Checked) -> bool {
    !matches!(checked, Checked::Limited(_))
}

#[test]
fn rate_allows_burst_then_paces_at_the_rate() {
    let clock = clock();
    let d = def(
        "r",
        LimitKind::Rate {
            window: Duration::from_secs(60),
            burst: None,
        },
    );
    let c = Counters::new(&d, 100);
    for _ in 0..20 {
        assert!(allowed(c.check(&d, "k", "", 20, 1, &clock)));
    }
    let Checked::Limited(limited) = c.check(&d, "k", "", 20, 1, &clock) else {
        panic!("the 21st request must be limited");
    };
    assert_eq!(limited.retry_after, Duration::from_secs(3));
    assert_eq!(limited.limit, 20);
    // Another key has its own budget.
    assert!(allowed(c.check(&d, "other", "", 20, 1, &clock)));
    clock.advance(Duration::from_millis(2_999));
    assert!(!allowed(c.check(&d, "k", "", 20, 1, &clock)));
    clock.advance(Duration::from_millis(1));
    assert!(allowed(c.check(&d, "k", "", 20, 1, &clock)));
    assert!(!allowed(c.check(&d, "k", "", 20, 1, &clock)));
}

#[test]
fn rate_refund_gives_the_slot_back() {
    let clock = clock();
    let d = def(
        "r",
        LimitKind::Rate {
            window: Duration::from_secs(1),
            burst: Some(1),
        },
    );
    let c = Counters::new(&d, 100);
    assert!(allowed(c.check(&d, "k", "", 1, 1, &clock)));
    assert!(!allowed(c.check(&d, "k", "", 1, 1, &clock)));
    c.refund(&d, "k", 1, 1, &clock);
    assert!(allowed(c.check(&d, "k", "", 1, 1, &clock)));
}

#[test]
fn calendar_quota_resets_at_the_month_boundary() {
    let clock = clock();
    let d = def(
        "q",
        LimitKind::Quota {
            period: Period::Month,
        },
    );
    let c = Counters::new(&d, 100);
    assert!(allowed(c.check(&d, "k", "", 10, 4, &clock)));
    assert!(allowed(c.check(&d, "k", "", 10, 6, &clock)));
    let Checked::Limited(limited) = c.check(&d, "k", "", 10, 1, &clock) else {
        panic!("quota exhausted");
    };
    // January has 31 days.
    assert_eq!(limited.retry_after, Duration::from_secs(31 * 86_400));
    assert_eq!(limited.window, Some(Duration::from_secs(31 * 86_400)));
    clock.advance(Duration::from_secs(31 * 86_400 - 1));
    assert!(!allowed(c.check(&d, "k", "", 10, 1, &clock)));
    clock.advance(Duration::from_secs(1));
    assert!(allowed(c.check(&d, "k", "", 10, 10, &clock)));
}

#[test]
fn month_windows_follow_the_calendar() {
    let feb = MONTH_START + 31 * 86_400;
    assert_eq!(quota::window(Period::Month, feb + 5), (feb, 28 * 86_400));
    let dec_2026 = 1_796_083_200; // 2026-12-01
    assert_eq!(
        quota::window(Period::Month, dec_2026 + 100),
        (dec_2026, 31 * 86_400)
    );
    assert_eq!(
        quota::window(Period::Day, MONTH_START + 90_000),
        (MONTH_START + 86_400, 86_400)
    );
}

#[test]
fn rolling_quota_carries_the_previous_window() {
    let clock = clock();
    let window = Duration::from_secs(100);
    let d = def(
        "q",
        LimitKind::Quota {
            period: Period::Rolling(window),
        },
    );
    let c = Counters::new(&d, 100);
    assert!(allowed(c.check(&d, "k", "", 10, 10, &clock)));
    // A quarter into the next window, three quarters of the 10 still count.
    clock.advance(Duration::from_secs(125));
    assert!(allowed(c.check(&d, "k", "", 10, 2, &clock)));
    assert!(!allowed(c.check(&d, "k", "", 10, 1, &clock)));
    clock.advance(Duration::from_secs(75));
    assert!(allowed(c.check(&d, "k", "", 10, 8, &clock)));
}

#[test]
fn seats_free_up_after_the_idle_window() {
    let clock = clock();
    let idle = Duration::from_secs(60);
    let d = def(
        "s",
        LimitKind::Seats {
            identity: KeyPart::ClientIp,
            idle,
        },
    );
    let c = Counters::new(&d, 100);
    for user in ["a", "b", "c"] {
        assert!(allowed(c.check(&d, "lic", user, 3, 1, &clock)));
    }
    let Checked::Limited(limited) = c.check(&d, "lic", "d", 3, 1, &clock) else {
        panic!("4th user must wait");
    };
    assert_eq!(limited.retry_after, idle);
    clock.advance(Duration::from_secs(30));
    // Known users keep their seats and refresh them.
    assert!(allowed(c.check(&d, "lic", "a", 3, 1, &clock)));
    assert!(allowed(c.check(&d, "lic", "b", 3, 1, &clock)));
    clock.advance(Duration::from_secs(30));
    // `c` has been idle for 60 s: its seat goes to `d`.
    assert!(allowed(c.check(&d, "lic", "d", 3, 1, &clock)));
    assert!(!allowed(c.check(&d, "lic", "c", 3, 1, &clock)));
    assert_eq!(c.usage(&d, &clock), vec![("lic".to_owned(), 3)]);
}

#[test]
fn concurrency_permits_free_their_slot_on_drop() {
    let clock = clock();
    let d = def("c", LimitKind::Concurrency);
    let c = Counters::new(&d, 100);
    let Checked::Held(first) = c.check(&d, "k", "", 2, 1, &clock) else {
        panic!()
    };
    let Checked::Held(_second) = c.check(&d, "k", "", 2, 1, &clock) else {
        panic!()
    };
    assert!(!allowed(c.check(&d, "k", "", 2, 1, &clock)));
    drop(first);
    assert!(allowed(c.check(&d, "k", "", 2, 1, &clock)));
}

#[test]
fn keys_beyond_the_bound_share_one_counter() {
    let clock = clock();
    let d = def(
        "r",
        LimitKind::Rate {
            window: Duration::from_secs(60),
            burst: None,
        },
    );
    let c = Counters::new(&d, 2);
    assert!(allowed(c.check(&d, "a", "", 1, 1, &clock)));
    assert!(allowed(c.check(&d, "b", "", 1, 1, &clock)));
    // Full: new keys land on the overflow counter, which also limits.
    assert!(allowed(c.check(&d, "c", "", 1, 1, &clock)));
    assert!(!allowed(c.check(&d, "d", "", 1, 1, &clock)));
}

#[test]
fn quota_counts_survive_the_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = persist::CounterFile::new(dir.path().join("counters.json"));
    let clock = clock();
    let d = def(
        "calls",
        LimitKind::Quota {
            period: Period::Day,
        },
    );
    let store = MemoryStore::new(clock.clone(), 100);
    let counters = store.counters(&d);
    assert!(allowed(counters.check(&d, "lic-1", "", 5, 4, &clock)));
    file.save(&store).unwrap();

    let restarted = MemoryStore::new(clock.clone(), 100);
    assert_eq!(file.restore(&restarted).unwrap(), 1);
    let counters = restarted.counters(&d);
    assert!(allowed(counters.check(&d, "lic-1", "", 5, 1, &clock)));
    assert!(!allowed(counters.check(&d, "lic-1", "", 5, 1, &clock)));
}

#[test]
fn retry_after_is_never_early() {
    let clock = clock();
    for nanos in [1, 999_999_999, 1_000_000_000, 2_500_000_000] {
        let delay = Duration::from_nanos(nanos);
        let secs = retry_after_secs(delay, &clock);
        assert!(Duration::from_secs(secs) >= delay, "{secs} for {delay:?}");
        clock.advance(Duration::from_nanos(7_777_777));
    }
}

#[test]
fn rolling_quota_retry_after_is_when_the_request_fits() {
    let window = Duration::from_secs(100);
    let d = def(
        "q",
        LimitKind::Quota {
            period: Period::Rolling(window),
        },
    );
    for (fill, wait_first) in [(10u64, 25u64), (6, 60)] {
        let clock = clock();
        let c = Counters::new(&d, 100);
        assert!(allowed(c.check(&d, "k", "", 10, fill, &clock)));
        clock.advance(Duration::from_secs(wait_first));
        let mut waited = 0;
        while let Checked::Limited(limited) = c.check(&d, "k", "", 10, 5, &clock) {
            // Waiting exactly Retry-After must be enough: never early.
            clock.advance(limited.retry_after);
            waited += 1;
            assert!(waited < 2, "refused again after waiting Retry-After");
        }
        assert_eq!(waited, 1, "the first try must have been refused");
    }
}

#[test]
fn refunds_reach_the_overflow_counter() {
    let clock = clock();
    let d = def(
        "q",
        LimitKind::Quota {
            period: Period::Day,
        },
    );
    let c = Counters::new(&d, 1);
    assert!(allowed(c.check(&d, "a", "", 10, 1, &clock)));
    // "b" does not fit under max_keys: it counts on the overflow key.
    assert!(allowed(c.check(&d, "b", "", 10, 10, &clock)));
    assert!(!allowed(c.check(&d, "c", "", 10, 1, &clock)));
    c.refund(&d, "b", 10, 10, &clock);
    assert!(allowed(c.check(&d, "c", "", 10, 10, &clock)));
}

#[test]
fn a_rate_states_what_could_pass_at_once_and_when_its_burst_is_back() {
    let clock = clock();
    let d = def(
        "r",
        LimitKind::Rate {
            window: Duration::from_secs(60),
            burst: Some(10),
        },
    );
    let c = Counters::new(&d, 100);
    // 60 a minute, 10 at once: one slot back per second.
    let left = |c: &Counters| match c.check(&d, "k", "", 60, 1, &clock) {
        Checked::Allowed(Some(left)) => (left.remaining, left.reset),
        other => panic!("allowed with a budget: {other:?}"),
    };
    assert_eq!(left(&c), (9, Duration::from_secs(1)));
    assert_eq!(left(&c), (8, Duration::from_secs(2)));
    clock.advance(Duration::from_secs(1));
    assert_eq!(left(&c), (8, Duration::from_secs(2)));
}

#[test]
fn a_quota_states_what_is_left_of_its_window() {
    let clock = clock();
    let d = def(
        "q",
        LimitKind::Quota {
            period: Period::Day,
        },
    );
    let c = Counters::new(&d, 100);
    clock.advance(Duration::from_secs(6 * 3600));
    let Checked::Allowed(Some(left)) = c.check(&d, "k", "", 100, 30, &clock) else {
        panic!("allowed with a budget");
    };
    assert_eq!(
        left,
        Left {
            remaining: 70,
            reset: Duration::from_secs(18 * 3600),
            window: Duration::from_secs(86_400),
        }
    );
}

#[test]
fn budgets_keep_the_limits_closest_to_running_out() {
    let budget = |name: &str, limit: u64, remaining: u64| Budget {
        name: name.into(),
        limit,
        window: 60,
        remaining,
        reset: 1,
    };
    let mut budgets = Budgets::default();
    assert!(budgets.is_empty());
    budgets.offer(budget("a", 100, 90)); // 90 % left
    budgets.offer(budget("b", 1000, 100)); // 10 %
    budgets.offer(budget("c", 10, 5)); // 50 %: replaces `a`, in its place
    budgets.offer(budget("d", 100, 80)); // 80 %: looser than both kept
    let kept: Vec<&str> = budgets.iter().map(|b| &*b.name).collect();
    assert_eq!(kept, ["c", "b"]);
    assert_eq!(MAX_BUDGETS, 2);
    assert_eq!(
        budgets.iter().next().unwrap().policy_member(),
        "\"c\";q=10;w=60"
    );
    assert_eq!(
        budgets.iter().next().unwrap().state_member(),
        "\"c\";r=5;t=1"
    );
    budgets.clear();
    assert!(budgets.is_empty());
}

#[test]
fn a_served_quota_hands_out_what_gives_its_units_back_to_their_window() {
    let clock = clock();
    let mut d = def(
        "q",
        LimitKind::Quota {
            period: Period::Rolling(Duration::from_secs(3600)),
        },
    );
    d.count = crate::policy::Count::Served;
    let c = Counters::new(&d, 100);
    let used = |c: &Counters| c.usage(&d, &clock)[0].1;
    let Checked::Ticketed(left, first) = c.check(&d, "k", "", 10, 2, &clock) else {
        panic!("a served quota hands out a ticket");
    };
    assert_eq!(left.remaining, 8);
    let Checked::Ticketed(_, second) = c.check(&d, "k", "", 10, 3, &clock) else {
        panic!("a served quota hands out a ticket");
    };
    assert_eq!(used(&c), 5);
    // Back into the window it was taken from.
    first.give_back();
    assert_eq!(used(&c), 3);
    // The window has moved on by one: `second`'s units weigh as part of
    // the previous window's count; given back, they weigh no more.
    clock.advance(Duration::from_secs(3600));
    assert!(allowed(c.check(&d, "k", "", 10, 1, &clock)));
    assert_eq!(used(&c), 1 + 3);
    second.give_back();
    assert_eq!(used(&c), 1);
    // A window long gone takes nothing back (nor goes below zero).
    let Checked::Ticketed(_, old) = c.check(&d, "k", "", 10, 1, &clock) else {
        panic!("a served quota hands out a ticket");
    };
    clock.advance(Duration::from_secs(3 * 3600));
    assert!(allowed(c.check(&d, "k", "", 10, 4, &clock)));
    old.give_back();
    assert_eq!(used(&c), 4);
    // A quota that counts attempts hands out none.
    d.count = crate::policy::Count::Attempted;
    assert!(matches!(
        c.check(&d, "k", "", 10, 1, &clock),
        Checked::Allowed(Some(_))
    ));
}
