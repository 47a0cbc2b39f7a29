//! Time for counters: monotonic nanoseconds for rates and seats (immune to
//! wall-clock steps) and wall-clock time for calendar quotas. A manual clock
//! lets tests move time without sleeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Clone, Debug)]
pub struct Clock(Inner);

#[derive(Clone, Debug)]
enum Inner {
    System {
        start: Instant,
    },
    /// Nanoseconds since the unix epoch, moved by hand.
    Manual(Arc<AtomicU64>),
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

impl Clock {
    pub fn system() -> Clock {
        Clock(Inner::System {
            start: Instant::now(),
        })
    }

    /// A clock standing at `unix` until moved with [`Clock::advance`].
    pub fn manual(unix: Duration) -> Clock {
        Clock(Inner::Manual(Arc::new(AtomicU64::new(
            unix.as_nanos() as u64
        ))))
    }

    /// Move a manual clock forward (no effect on the system clock).
    pub fn advance(&self, by: Duration) {
        if let Inner::Manual(now) = &self.0 {
            now.fetch_add(by.as_nanos() as u64, Ordering::Relaxed);
        }
    }

    /// Monotonic nanoseconds from an arbitrary origin.
    pub fn mono_nanos(&self) -> u64 {
        match &self.0 {
            Inner::System { start } => start.elapsed().as_nanos() as u64,
            Inner::Manual(now) => now.load(Ordering::Relaxed),
        }
    }

    /// Wall-clock nanoseconds since the unix epoch.
    pub fn unix_nanos(&self) -> u64 {
        match &self.0 {
            Inner::System { .. } => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
            Inner::Manual(now) => now.load(Ordering::Relaxed),
        }
    }
}
