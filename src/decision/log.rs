//! Decision log: one JSON line per denial (enforced or shadow), rate-limited
//! so a flood of bad requests cannot fill the disk. Never contains tokens
//! or query strings (which may carry secrets).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::IntCounter;

/// Lines per second before lines are dropped (and counted).
const LINES_PER_SECOND: u64 = 50;

#[derive(Debug, Default)]
pub struct DecisionLog {
    /// Current second (unix) in the high 32 bits, lines in it in the low.
    window: AtomicU64,
    suppressed: AtomicU64,
}

/// What one denial line says.
pub struct DenialLine<'a> {
    pub shadow: bool,
    pub reason: &'a str,
    pub status: u16,
    pub route: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub license: Option<&'a str>,
    /// The verified user's subject (never the token).
    pub user: Option<&'a str>,
    pub client: std::net::IpAddr,
    pub detail: &'a str,
}

impl DecisionLog {
    pub fn denial(&self, line: DenialLine<'_>, suppressed_counter: &IntCounter) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            & 0xffff_ffff;
        let mut current = self.window.load(Ordering::Relaxed);
        loop {
            let (second, lines) = (current >> 32, current & 0xffff_ffff);
            let next = if second == now {
                current + 1
            } else {
                now << 32 | 1
            };
            if second == now && lines >= LINES_PER_SECOND {
                self.suppressed.fetch_add(1, Ordering::Relaxed);
                suppressed_counter.inc();
                return;
            }
            match self.window.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(seen) => current = seen,
            }
        }
        let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
        let json = serde_json::json!({
            // Lets log pipelines pick decision lines out of the stream.
            "log": "licensegate.decision",
            "decision": if line.shadow { "shadow_deny" } else { "deny" },
            "reason": line.reason,
            "status": line.status,
            "route": line.route,
            "method": line.method,
            "path": line.path,
            "license": line.license,
            "user": line.user,
            "client": line.client.to_string(),
            "detail": line.detail,
            "suppressed_before": suppressed,
        });
        tracing::info!(target: "licensegate::decision", "{json}");
    }
}
