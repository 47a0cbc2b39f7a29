//! Instance slots in the store: one script call takes, renews, gives back
//! or reads the slots of one license (see [`instances.lua`](../instances.lua)
//! for the rules, the store's clock and the re-assertion after a gap).

use std::time::Duration;

use super::{Connection, SharedStore};

const SCRIPT: &str = include_str!("../instances.lua");

/// What to do with this replica's slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotOp {
    /// Take a free slot (or keep the one held).
    Take,
    /// Keep the slot held, re-asserting it after a gap in the store.
    Renew,
    /// Give the slot back.
    Release,
    /// Only read who holds slots.
    Read,
}

impl SlotOp {
    fn as_str(self) -> &'static str {
        match self {
            SlotOp::Take => "take",
            SlotOp::Renew => "renew",
            SlotOp::Release => "release",
            SlotOp::Read => "read",
        }
    }
}

/// One replica holding a slot.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SlotHolder {
    pub instance: String,
    /// How long its lease runs without a renewal (negative: lapsed, kept
    /// while the store settles after a gap).
    pub lease_left_ms: i64,
}

/// What the store said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotReply {
    /// Whether this replica holds a slot now.
    pub held: bool,
    /// Whether the store is settling after a gap: nobody new is admitted.
    pub settling: bool,
    /// A renewal found another process under this replica's name since
    /// its last one: two replicas run as one, sharing one slot.
    pub name_shared: bool,
    /// Every holder, in the order they took their slots.
    pub holders: Vec<SlotHolder>,
}

impl SharedStore {
    /// How long a slot's lease runs without a renewal: three heartbeats.
    pub fn slot_lease(&self) -> Duration {
        self.settings.heartbeat * 3
    }

    /// Whether a first connection was made (slots are not asked for
    /// before).
    pub fn is_connected(&self) -> bool {
        self.connection.load().is_some()
    }

    /// `op` on this replica's slot among the `limit` slots of `key` (see
    /// [`crate::policy::InstanceLimit::key`]). An error when the store
    /// cannot answer in time; the caller keeps what it held.
    pub async fn instance_slot(
        &self,
        key: &str,
        op: SlotOp,
        limit: u64,
    ) -> Result<SlotReply, String> {
        let connection = self
            .connection
            .load_full()
            .ok_or_else(|| "not connected yet".to_owned())?;
        let base = format!(
            "{}:{{{}}}:instances",
            self.settings.key_prefix,
            hash_tag(key)
        );
        let heartbeat = self.settings.heartbeat;
        let lease = self.slot_lease();
        // Every holder calls once a heartbeat: two without any call is a
        // gap. A shorter outage cannot lapse a holder's lease (renewed at
        // most a heartbeat before it began, lapsing three after), and a
        // gap seen where there was none only delays admissions a while.
        let gap = heartbeat * 2;
        let mut invocation = self.slots_script.prepare_invoke();
        invocation
            .key(&base)
            .key(format!("{base}:order"))
            .key(format!("{base}:meta"))
            .arg(op.as_str())
            .arg(&self.settings.instance)
            .arg(limit)
            .arg(lease.as_millis() as u64)
            .arg(gap.as_millis() as u64)
            .arg(lease.as_millis() as u64)
            .arg(&self.process);
        let patience = self.settings.timeout.max(Duration::from_millis(250));
        let reply = tokio::time::timeout(patience, async {
            match &*connection {
                Connection::Single(c) => {
                    invocation
                        .invoke_async::<Vec<redis::Value>>(&mut c.clone())
                        .await
                }
                Connection::Cluster(c) => {
                    invocation
                        .invoke_async::<Vec<redis::Value>>(&mut c.clone())
                        .await
                }
            }
        })
        .await
        .map_err(|_| format!("no answer within {patience:?}"))?
        .map_err(|error| error.to_string())?;
        parse(&reply).ok_or_else(|| format!("unexpected reply: {reply:?}"))
    }
}

pub(super) fn script() -> redis::Script {
    redis::Script::new(SCRIPT)
}

fn parse(reply: &[redis::Value]) -> Option<SlotReply> {
    use redis::Value;
    let int = |value: &Value| match value {
        Value::Int(n) => Some(*n),
        _ => None,
    };
    let [held, settling, name_shared, rest @ ..] = reply else {
        return None;
    };
    let holders = rest
        .chunks_exact(2)
        .map(|pair| {
            let instance = match &pair[0] {
                Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                Value::SimpleString(text) => text.clone(),
                _ => return None,
            };
            Some(SlotHolder {
                instance,
                lease_left_ms: int(&pair[1])?,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(SlotReply {
        held: int(held)? == 1,
        settling: int(settling)? == 1,
        name_shared: int(name_shared)? == 1,
        holders,
    })
}

/// `key` inside a hash tag: braces would end the tag early (a customer
/// named `a}b`), so they are escaped, with `%` itself.
fn hash_tag(key: &str) -> String {
    let mut tag = String::with_capacity(key.len());
    for c in key.chars() {
        match c {
            '%' => tag.push_str("%25"),
            '{' => tag.push_str("%7B"),
            '}' => tag.push_str("%7D"),
            c => tag.push(c),
        }
    }
    tag
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_cannot_leave_its_hash_tag() {
        assert_eq!(hash_tag("lic-1"), "lic-1");
        assert_eq!(hash_tag("customer=a}b{c%"), "customer=a%7Db%7Bc%25");
    }

    #[test]
    fn replies_are_read_in_holder_order() {
        use redis::Value;
        let reply = [
            Value::Int(1),
            Value::Int(0),
            Value::Int(0),
            Value::BulkString(b"pod-a".to_vec()),
            Value::Int(5_000),
            Value::BulkString(b"pod-b".to_vec()),
            Value::Int(-20),
        ];
        let parsed = parse(&reply).unwrap();
        assert!(parsed.held && !parsed.settling && !parsed.name_shared);
        assert_eq!(
            parsed.holders,
            vec![
                SlotHolder {
                    instance: "pod-a".into(),
                    lease_left_ms: 5_000
                },
                SlotHolder {
                    instance: "pod-b".into(),
                    lease_left_ms: -20
                },
            ]
        );
        assert_eq!(parse(&[Value::Int(1)]), None);
    }
}
