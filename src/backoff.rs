//! Retry delays with jitter, for every client that retries a remote
//! service: the license refresh and the metering sinks. A leaf.

use std::fmt;
use std::time::Duration;

use ring::rand::{SecureRandom, SystemRandom};

/// Retry delays after failures: the ceiling doubles from `2 × min` up to
/// `max`, and each delay is drawn uniformly from the upper half of the
/// ceiling (but never below `min`), so retries spread out across replicas
/// that failed together yet never come faster than `min`.
pub struct Backoff {
    min: Duration,
    max: Duration,
    failures: u32,
    rng: SystemRandom,
}

impl fmt::Debug for Backoff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backoff")
            .field("min", &self.min)
            .field("max", &self.max)
            .field("failures", &self.failures)
            .finish()
    }
}

impl Backoff {
    /// Delays between `min` (at least 1 ms) and `max` (at least `min`).
    pub fn new(min: Duration, max: Duration) -> Backoff {
        let min = min.max(Duration::from_millis(1));
        Backoff {
            min,
            max: max.max(min),
            failures: 0,
            rng: SystemRandom::new(),
        }
    }

    /// The delay before the next retry; counts one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let mut random = [0u8; 8];
        // Without randomness the ceiling itself is a safe (if unjittered)
        // answer.
        let random = match self.rng.fill(&mut random) {
            Ok(()) => u64::from_le_bytes(random),
            Err(_) => u64::MAX,
        };
        let delay = backoff_delay(self.min, self.max, self.failures, random);
        self.failures = self.failures.saturating_add(1);
        delay
    }

    /// Back to the first delay, after a success.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Failures since the last reset.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The smallest delay this backoff returns.
    pub fn min(&self) -> Duration {
        self.min
    }
}

/// The delay after `failures` earlier failures, `random` choosing where in
/// the jitter range it falls. In milliseconds, saturating throughout.
pub fn backoff_delay(min: Duration, max: Duration, failures: u32, random: u64) -> Duration {
    let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let (min, max) = (millis(min).max(1), millis(max));
    let max = max.max(min);
    let factor = 1u64
        .checked_shl(failures.saturating_add(1))
        .unwrap_or(u64::MAX);
    let ceiling = min.saturating_mul(factor).min(max);
    let floor = (ceiling / 2).max(min);
    let span = ceiling - floor;
    let jitter = match span.checked_add(1) {
        Some(range) => random % range,
        None => random,
    };
    Duration::from_millis(floor + jitter)
}
