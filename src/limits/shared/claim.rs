//! Threshold crossings across replicas: the first replica to set a marker in
//! the store announces the crossing; the others see the marker and stay
//! quiet.

use std::time::Duration;

use super::{Connection, SharedStore};
use crate::limits::Crossing;

impl SharedStore {
    /// Whether this replica is the first to announce `crossing`: a marker
    /// set once (`SET NX`), kept until the crossing's window has ended.
    /// `None` when the store cannot say (away, slow, failing): the caller
    /// then decides alone, as its own ledger says.
    pub async fn claim_threshold(&self, tag: &str, crossing: &Crossing) -> Option<bool> {
        if !self.is_available() {
            return None;
        }
        let connection = self.connection.load_full()?;
        let marker = threshold_marker(&self.settings.key_prefix, tag, crossing);
        let now = self.clock.unix_nanos() / 1_000_000_000;
        // Past the window's end by a day, like calendar quota keys.
        let ttl_ms = (crossing.expires_at().saturating_sub(now) + 86_400) * 1000;
        let mut set = redis::cmd("SET");
        set.arg(&marker).arg(1).arg("NX").arg("PX").arg(ttl_ms);
        let patience = self.settings.timeout.max(Duration::from_millis(250));
        let answer = tokio::time::timeout(patience, async {
            match &*connection {
                Connection::Single(c) => set.query_async::<Option<String>>(&mut c.clone()).await,
                Connection::Cluster(c) => set.query_async::<Option<String>>(&mut c.clone()).await,
            }
        })
        .await;
        match answer {
            Ok(Ok(set)) => Some(set.is_some()),
            _ => None,
        }
    }
}

/// The marker of one crossing: under the license's hash tag, beside the
/// quota's own keys.
fn threshold_marker(prefix: &str, tag: &str, crossing: &Crossing) -> String {
    format!(
        "{prefix}:{{{tag}}}:{}:t:{}:{}:{}",
        crossing.limit, crossing.key, crossing.window_start, crossing.threshold_percent
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_name_limit_key_window_and_threshold_under_the_hash_tag() {
        let crossing = Crossing {
            limit: "monthly".into(),
            key: "lic-1".into(),
            threshold_percent: 80,
            window_start: 1_767_225_600,
            window_seconds: 2_678_400,
            used: 800,
            limit_amount: 1000,
        };
        assert_eq!(
            threshold_marker("lg", "lic-1", &crossing),
            "lg:{lic-1}:monthly:t:lic-1:1767225600:80"
        );
    }
}
