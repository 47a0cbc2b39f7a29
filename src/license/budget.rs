//! A per-client budget of signature checks that fail.
//!
//! A forger who knows a `kid` can make every request cost one `ring`
//! verification (tens of microseconds) with a token that was never seen
//! before, so neither cache helps. Each client address gets a token bucket
//! (GCRA: one timestamp per client, updated with a compare-and-swap, as the
//! policy's rate limits do): a signature check takes one unit *before* it
//! runs and gives it back when the token turns out valid, so only failures
//! spend the budget and a burst of concurrent forgeries cannot overshoot it.
//! An empty bucket answers without touching `ring`.
//!
//! IPv6 clients are counted per /64, the block one host usually holds, so
//! rotating addresses inside it does not multiply the budget; IPv4-mapped
//! addresses count as their IPv4 address. The table is bounded: past
//! `max_clients`, new clients share one overflow bucket until a sweep (at
//! most once a second) drops clients whose bucket is full again.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;

/// How many signature checks may fail per client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BudgetSettings {
    /// Failures allowed per `per`, sustained.
    pub limit: u64,
    /// The window `limit` is counted over.
    pub per: Duration,
    /// Failures allowed at once after a quiet spell.
    pub burst: u64,
    /// Clients tracked before new ones share one bucket.
    pub max_clients: usize,
}

impl Default for BudgetSettings {
    /// 20 per second, burst 50: see the README's Licenses section for why.
    fn default() -> Self {
        BudgetSettings {
            limit: 20,
            per: Duration::from_secs(1),
            burst: 50,
            max_clients: 10_000,
        }
    }
}

/// The budget of every client; see the module docs.
pub struct VerificationBudget {
    /// Client → theoretical arrival time, nanoseconds since `start`.
    clients: DashMap<IpAddr, AtomicU64, hashbrown::DefaultHashBuilder>,
    /// The bucket of clients beyond `max_clients`.
    overflow: AtomicU64,
    /// Nanoseconds one failure costs: `per / limit`.
    emission: u64,
    /// `emission × burst`: how far ahead of now the bucket may run.
    tolerance: u64,
    max_clients: usize,
    /// When the table was last swept (nanoseconds since `start`).
    last_sweep: AtomicU64,
    start: Instant,
}

/// The budget said no: retry after this long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exhausted(pub Duration);

impl Exhausted {
    /// Whole seconds for `Retry-After`: rounded up, at least 1.
    pub fn retry_after_secs(self) -> u64 {
        self.0.as_nanos().div_ceil(1_000_000_000).max(1) as u64
    }
}

const SWEEP_INTERVAL_NANOS: u64 = 1_000_000_000;

impl VerificationBudget {
    /// A budget with every client's bucket full.
    pub fn new(settings: &BudgetSettings) -> Self {
        let per = settings.per.as_nanos().min(u128::from(u64::MAX)) as u64;
        let emission = (per / settings.limit.max(1)).max(1);
        VerificationBudget {
            clients: DashMap::with_hasher(hashbrown::DefaultHashBuilder::default()),
            overflow: AtomicU64::new(0),
            emission,
            tolerance: emission.saturating_mul(settings.burst),
            max_clients: settings.max_clients.max(1),
            last_sweep: AtomicU64::new(0),
            start: Instant::now(),
        }
    }

    /// Take one signature check for `client`, to be given back with
    /// [`refund`](Self::refund) if the token verifies.
    pub fn take(&self, client: IpAddr) -> Result<(), Exhausted> {
        self.take_at(client, self.now())
    }

    /// Give back what [`take`](Self::take) took: the token was valid.
    pub fn refund(&self, client: IpAddr) {
        let key = bucket_key(client);
        let give_back = |tat: u64| Some(tat.saturating_sub(self.emission));
        match self.clients.get(&key) {
            Some(tat) => {
                let _ = tat.fetch_update(Ordering::AcqRel, Ordering::Acquire, give_back);
            }
            None => {
                let _ = self
                    .overflow
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, give_back);
            }
        }
    }

    /// Clients tracked now.
    pub fn clients(&self) -> usize {
        self.clients.len()
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64
    }

    fn take_at(&self, client: IpAddr, now: u64) -> Result<(), Exhausted> {
        let key = bucket_key(client);
        if let Some(tat) = self.clients.get(&key) {
            return self.spend(&tat, now);
        }
        if self.clients.len() >= self.max_clients && !self.sweep(now) {
            return self.spend(&self.overflow, now);
        }
        let entry = self.clients.entry(key).or_default().downgrade();
        self.spend(&entry, now)
    }

    /// One GCRA step: allowed while the theoretical arrival time, one
    /// emission on, stays within `tolerance` of now.
    fn spend(&self, tat: &AtomicU64, now: u64) -> Result<(), Exhausted> {
        let mut current = tat.load(Ordering::Acquire);
        loop {
            let next = current.max(now).saturating_add(self.emission);
            let allow_at = next.saturating_sub(self.tolerance);
            if allow_at > now {
                return Err(Exhausted(Duration::from_nanos(allow_at - now)));
            }
            match tat.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(()),
                Err(seen) => current = seen,
            }
        }
    }

    /// Drop clients whose bucket is full again (a missing client is the
    /// same as a full one), at most once per interval so a flood of new
    /// addresses cannot make every check walk the table. Whether there is
    /// room now.
    fn sweep(&self, now: u64) -> bool {
        let last = self.last_sweep.load(Ordering::Acquire);
        let due = now >= last.saturating_add(SWEEP_INTERVAL_NANOS) || last == 0;
        if due
            && self
                .last_sweep
                .compare_exchange(last, now.max(1), Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.clients
                .retain(|_, tat| tat.load(Ordering::Acquire) > now);
        }
        self.clients.len() < self.max_clients
    }
}

impl std::fmt::Debug for VerificationBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerificationBudget")
            .field("clients", &self.clients.len())
            .field("emission_nanos", &self.emission)
            .field("tolerance_nanos", &self.tolerance)
            .finish_non_exhaustive()
    }
}

/// The address a bucket is kept under: IPv4 as is (also when it arrives
/// IPv4-mapped on a dual-stack socket), IPv6 by its /64.
fn bucket_key(client: IpAddr) -> IpAddr {
    match client.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn budget(limit: u64, burst: u64, max_clients: usize) -> VerificationBudget {
        VerificationBudget::new(&BudgetSettings {
            limit,
            per: Duration::from_secs(1),
            burst,
            max_clients,
        })
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_full_bucket_allows_the_burst_then_refills_at_the_rate() {
        let budget = budget(10, 5, 100);
        let client = ip("192.0.2.1");
        let now = 7 * SECOND;
        for _ in 0..5 {
            assert_eq!(budget.take_at(client, now), Ok(()));
        }
        let Err(exhausted) = budget.take_at(client, now) else {
            panic!("the sixth failure at once is over the burst");
        };
        assert_eq!(exhausted.0, Duration::from_millis(100), "one emission");
        assert_eq!(exhausted.retry_after_secs(), 1, "rounded up to a second");
        // One emission later, exactly one more.
        assert_eq!(budget.take_at(client, now + SECOND / 10), Ok(()));
        assert!(budget.take_at(client, now + SECOND / 10).is_err());
        // Other clients have their own bucket.
        assert_eq!(budget.take_at(ip("192.0.2.2"), now), Ok(()));
    }

    #[test]
    fn a_refund_gives_the_unit_back() {
        // `take` / `refund` read the real clock: one per hour does not
        // refill while this test runs.
        let budget = VerificationBudget::new(&BudgetSettings {
            limit: 1,
            per: Duration::from_secs(3600),
            burst: 2,
            max_clients: 100,
        });
        let client = ip("192.0.2.1");
        for _ in 0..100 {
            budget.take(client).unwrap();
            budget.refund(client);
        }
        budget.take(client).unwrap();
        budget.take(client).unwrap();
        assert!(budget.take(client).is_err(), "two failures spent it");
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let budget = budget(1, 1, 100);
        let now = SECOND;
        assert_eq!(budget.take_at(ip("2001:db8:1:2::1"), now), Ok(()));
        assert!(
            budget.take_at(ip("2001:db8:1:2:ffff::9"), now).is_err(),
            "same /64"
        );
        assert_eq!(budget.take_at(ip("2001:db8:1:3::1"), now), Ok(()));
        assert_eq!(budget.take_at(ip("198.51.100.7"), now), Ok(()));
        assert!(budget.take_at(ip("::ffff:198.51.100.7"), now).is_err());
        // Mapped IPv4 clients do not all land in the ::/64 bucket.
        assert_eq!(budget.take_at(ip("::ffff:198.51.100.8"), now), Ok(()));
    }

    #[test]
    fn beyond_max_clients_new_clients_share_one_bucket_until_a_sweep() {
        let budget = budget(1, 1, 2);
        let now = 5 * SECOND;
        budget.take_at(ip("192.0.2.1"), now).unwrap();
        budget.take_at(ip("192.0.2.2"), now).unwrap();
        // Full, and both buckets are in use: the sweep frees nothing.
        assert_eq!(budget.take_at(ip("192.0.2.3"), now), Ok(()));
        assert!(
            budget.take_at(ip("192.0.2.4"), now).is_err(),
            "the overflow bucket is shared"
        );
        assert_eq!(budget.clients(), 2, "the table stays bounded");
        // Once the buckets refilled, a (due) sweep makes room again.
        let later = now + 3 * SECOND;
        assert_eq!(budget.take_at(ip("192.0.2.5"), later), Ok(()));
        assert_eq!(budget.clients(), 1);
        assert!(budget.take_at(ip("192.0.2.5"), later).is_err());
    }
}
