use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;

use super::*;
use crate::license::{Algorithm, Claims};
use crate::limits::{Checked, MemoryStore};

/// 2026-01-01T10:00:00Z.
const NOW: u64 = 1_767_261_600;

const POLICY: &str = r#"
limits:
  daily: {quota: {limit: lic.limits.daily, default: 5, period: day}}
  rpm: {rate: {limit: 60, per: 1m}}
  users: {seats: {identity: "header:x-user", default: 3, idle: 5m}}
  inflight: {concurrency: {limit: 4, key: [license, "header:x-user"]}}
  by_ip: {rate: {limit: 5, per: 1m, key: client_ip}}
  by_plan: {quota: {limit: 1000, period: month, key: "claim:plan"}}
routes:
  - {name: api, path: "/api/**", limits: [daily, rpm, users, inflight, by_ip, by_plan]}
"#;

fn policy() -> Policy {
    Policy::compile(vec![(PathBuf::from("p.yaml"), POLICY.to_owned())])
        .unwrap_or_else(|error| panic!("{error}"))
}

fn license(id: &str) -> Arc<VerifiedLicense> {
    let claims: Claims = serde_json::from_value(json!({
        "sub": id, "exp": NOW + 3600,
        "lic": {"plan": "pro", "limits": {"daily": 100}, "seats": 10},
    }))
    .unwrap();
    Arc::new(VerifiedLicense {
        kid: "k1".into(),
        alg: Algorithm::EdDSA,
        claims,
    })
}

struct Fixture {
    policy: Policy,
    clock: Clock,
    counters: Vec<Arc<Counters>>,
    _permits: Vec<crate::limits::Permit>,
}

impl Fixture {
    fn new() -> Fixture {
        let clock = Clock::manual(Duration::from_secs(NOW));
        let store = MemoryStore::new(clock.clone(), 100);
        let policy = policy();
        let counters = policy.limits.iter().map(|d| store.counters(d)).collect();
        Fixture {
            policy,
            clock,
            counters,
            _permits: Vec::new(),
        }
    }

    fn count(&mut self, limit: &str, key: &str, identity: &str, amount: u64) {
        let index = self
            .policy
            .limits
            .iter()
            .position(|d| &*d.name == limit)
            .unwrap();
        let def = &self.policy.limits[index];
        match self.counters[index].check(def, key, identity, amount, 1, &self.clock) {
            // A hold given back only when asked: these stay counted.
            Checked::Allowed(_) | Checked::Ticketed(..) => {}
            Checked::Held(permit) => self._permits.push(permit),
            Checked::Limited(limited) => panic!("{limit} refused: {limited:?}"),
        }
    }

    fn sources(&self) -> Sources<'_> {
        Sources {
            policy: Some(&self.policy),
            limits: self
                .policy
                .limits
                .iter()
                .zip(&self.counters)
                .enumerate()
                .map(|(index, (def, counters))| Bound {
                    def,
                    index,
                    counters,
                })
                .collect(),
            clock: &self.clock,
            shared: None,
            keep: HashSet::new(),
        }
    }
}

fn known(id: &str) -> Subject {
    Subject {
        id: id.into(),
        license: Some(license(id)),
        entitlement: Entitlement::Recent,
    }
}

fn unknown(id: &str) -> Subject {
    Subject {
        id: id.into(),
        license: None,
        entitlement: Entitlement::Unknown,
    }
}

/// A row as (name, key, used, limit, remaining).
type Row<'a> = (&'a str, &'a str, Option<u64>, Option<u64>, Option<u64>);

fn summary(usage: &LicenseUsage) -> Vec<Row<'_>> {
    usage
        .limits
        .iter()
        .map(|l| (&*l.name, &*l.key, l.used, l.limit, l.remaining))
        .collect()
}

#[tokio::test]
async fn a_license_sees_every_limit_it_is_counted_under_with_its_own_numbers() {
    let mut f = Fixture::new();
    for _ in 0..3 {
        f.count("daily", "lic-1", "", 100);
    }
    f.count("rpm", "lic-1", "", 60);
    f.count("rpm", "lic-1", "", 60);
    f.count("users", "lic-1", "alice", 10);
    f.count("users", "lic-1", "bob", 10);
    f.count("inflight", "lic-1\u{1f}alice", "", 4);
    f.count("by_ip", "127.0.0.1", "", 5);
    f.count("by_plan", "pro", "", 1000);
    f.count("daily", "lic-2", "", 5);

    let mut ids = BTreeSet::new();
    counted_licenses(&f.sources().limits, &f.clock, &mut ids);
    assert_eq!(ids, BTreeSet::from(["lic-1".into(), "lic-2".into()]));

    let answer = report(
        f.sources(),
        vec![known("lic-1"), unknown("lic-2"), unknown("lic-3")],
        false,
    )
    .await;
    assert_eq!(answer.time, "2026-01-01T10:00:00.000Z");
    assert_eq!(answer.store, Store::Memory);
    // lic-3: never seen, nothing counted.
    let [one, two] = &answer.licenses[..] else {
        panic!("{answer:#?}");
    };
    assert_eq!(
        summary(one),
        [
            ("daily", "lic-1", Some(3), Some(100), Some(97)),
            ("rpm", "lic-1", Some(2), Some(60), Some(58)),
            ("users", "lic-1", Some(2), Some(10), Some(8)),
            ("inflight", "lic-1/alice", Some(1), Some(4), Some(3)),
            ("by_plan", "pro", Some(1), Some(1000), Some(999)),
        ]
    );
    assert_eq!(
        (one.plan.as_deref(), one.entitlement),
        (Some("pro"), Entitlement::Recent)
    );
    let daily = &one.limits[0];
    assert_eq!(daily.reset.as_deref(), Some("2026-01-02T00:00:00Z"));
    assert_eq!(daily.window_seconds, Some(86_400));
    assert_eq!(daily.store, Store::Memory);
    // Two of a 60-per-minute burst are in use: whole again in 2 s.
    let rpm = &one.limits[1];
    assert_eq!(rpm.reset.as_deref(), Some("2026-01-01T10:00:02.000Z"));
    assert_eq!((rpm.burst, rpm.window_seconds), (Some(60), Some(60)));
    let users = &one.limits[2];
    assert_eq!(
        (users.reset.as_deref(), users.window_seconds),
        (None, Some(300))
    );

    // Numbers from an unseen license are unknown; fixed ones are not.
    assert_eq!(two.entitlement, Entitlement::Unknown);
    assert_eq!(two.plan, None);
    assert_eq!(
        summary(two),
        [
            ("daily", "lic-2", Some(1), None, None),
            ("rpm", "lic-2", Some(0), Some(60), Some(60)),
            ("users", "lic-2", Some(0), None, None),
        ]
    );
    assert!(!two.limits[0].limit_known && two.limits[1].limit_known);

    // Time passes: the rate refills, the day's quota stays.
    f.clock.advance(Duration::from_secs(1));
    let later = report(f.sources(), vec![known("lic-1")], false).await;
    let rows = summary(&later.licenses[0]);
    assert_eq!(rows[0], ("daily", "lic-1", Some(3), Some(100), Some(97)));
    assert_eq!(rows[1], ("rpm", "lic-1", Some(1), Some(60), Some(59)));
}

#[tokio::test]
async fn keys_beyond_the_bound_are_read_from_the_shared_overflow_counter() {
    let f = Fixture::new();
    let def = &f.policy.limits[0];
    let small = MemoryStore::new(f.clock.clone(), 1);
    let counters = small.counters(def);
    for key in ["lic-1", "lic-2", "lic-3"] {
        // Counted (served-counted quotas hand out a ticket, kept here).
        assert!(matches!(
            counters.check(def, key, "", 100, 1, &f.clock),
            Checked::Allowed(_) | Checked::Ticketed(..)
        ));
    }
    let sources = Sources {
        limits: vec![Bound {
            def,
            index: 0,
            counters: &counters,
        }],
        ..f.sources()
    };
    let answer = report(sources, vec![known("lic-1"), known("lic-3")], false).await;
    let rows: Vec<_> = answer.licenses.iter().flat_map(summary).collect();
    assert_eq!(
        rows,
        [
            ("daily", "lic-1", Some(1), Some(100), Some(99)),
            ("daily", "(overflow)", Some(2), Some(100), Some(98)),
        ]
    );
}

#[test]
fn license_ids_are_bounded_printable_and_brace_free() {
    for id in ["lic-1", "cust 42", "Ünïcode", &"x".repeat(MAX_LICENSE_ID)] {
        assert!(is_license_id(id), "{id}");
    }
    for id in [
        "",
        "a\u{1f}b",
        "a\nb",
        "{lic}",
        "lic}",
        &"x".repeat(MAX_LICENSE_ID + 1),
    ] {
        assert!(!is_license_id(id), "{id:?}");
    }
}

#[test]
fn the_listing_is_cut_at_the_bound_in_id_order() {
    let ids: BTreeSet<String> = (0..MAX_LICENSES + 5)
        .map(|i| format!("lic-{i:05}"))
        .collect();
    let (first, truncated) = first_licenses(ids);
    assert!(truncated);
    assert_eq!(first.len(), MAX_LICENSES);
    assert_eq!(first[0], "lic-00000");
    let (all, truncated) = first_licenses(BTreeSet::from(["a".to_owned()]));
    assert_eq!((all, truncated), (vec!["a".to_owned()], false));
}
