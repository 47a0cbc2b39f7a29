//! One coarse timer per relayed connection, bounding every wait: the next
//! request, a request head, the upstream's answer, a stalled body. Arming a
//! timer per wait costs a timer-wheel insert and removal per request; this
//! one ticks every `period` whatever happens, and each wait counts ticks.

use std::future::Future;
use std::pin::{pin, Pin};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// The bound of a wait passed.
#[derive(Debug)]
pub struct Elapsed;

pub struct Clock {
    tick: Pin<Box<Sleep>>,
    period: Duration,
    ticks: u64,
}

impl Clock {
    /// A clock fine enough for `shortest`, the shortest bound it keeps: a
    /// bound passes between 1× and 1.5× its length.
    pub fn new(shortest: Duration) -> Clock {
        let period = (shortest / 2).max(Duration::from_millis(5));
        Clock {
            tick: Box::pin(tokio::time::sleep(period)),
            period,
            ticks: 0,
        }
    }

    /// Ticks so far.
    pub fn ticks(&self) -> u64 {
        self.ticks
    }

    /// Ticks that make sure at least `bound` has passed (the first tick of
    /// a wait may come at once).
    pub fn ticks_for(&self, bound: Duration) -> u64 {
        let whole = bound.as_nanos().div_ceil(self.period.as_nanos().max(1));
        u64::try_from(whole).unwrap_or(u64::MAX / 2) + 1
    }

    /// Whether a tick passed (the timer is re-armed); otherwise the task
    /// is woken at the next one.
    pub fn poll_tick(&mut self, cx: &mut Context<'_>) -> bool {
        if self.tick.as_mut().poll(cx).is_pending() {
            return false;
        }
        self.ticks += 1;
        let now = Instant::now();
        // Like `MissedTickBehavior::Delay`: a late tick does not bunch up.
        let next = (self.tick.deadline() + self.period).max(now + self.period / 2);
        self.tick.as_mut().reset(next);
        true
    }

    /// `future`, unless `bound` passes first.
    pub async fn within<F: Future>(
        &mut self,
        bound: Duration,
        future: F,
    ) -> Result<F::Output, Elapsed> {
        let limit = self.ticks_for(bound);
        let start = self.ticks;
        let mut future = pin!(future);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(output) = future.as_mut().poll(cx) {
                return Poll::Ready(Ok(output));
            }
            while self.poll_tick(cx) {
                if self.ticks - start >= limit {
                    return Poll::Ready(Err(Elapsed));
                }
            }
            Poll::Pending
        })
        .await
    }
}
