//! JSON lines: one structured CloudEvent per line, appended to a file (or
//! written to standard output), acknowledged once written (and synced, as
//! the fsync policy says). A reader of the file dedupes on `id` like any
//! collector: after a crash the lines since the last acknowledgement come
//! again.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use super::Retry;
use crate::metering::metrics::ErrorKind;
use crate::metering::record::Record;
use crate::metering::settings::{Fsync, JsonlTarget};

#[derive(Debug)]
pub struct JsonlSink {
    target: JsonlTarget,
    fsync: Fsync,
}

impl JsonlSink {
    pub fn new(target: JsonlTarget, fsync: Fsync) -> JsonlSink {
        JsonlSink { target, fsync }
    }

    pub async fn deliver(&mut self, batch: &[Record]) -> Result<(), Retry> {
        let mut lines = Vec::with_capacity(batch.len() * 400);
        for record in batch {
            super::cloudevents::write_line(record, &mut lines);
        }
        let io = |detail: String| Retry {
            kind: ErrorKind::Io,
            after: None,
            detail,
        };
        let target = self.target.clone();
        let sync = self.fsync != Fsync::Never;
        // Blocking writes, off the runtime's threads.
        let written = tokio::task::spawn_blocking(move || match &target {
            JsonlTarget::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(&lines)
                    .and_then(|()| out.flush())
                    .map_err(|e| format!("standard output: {e}"))
            }
            JsonlTarget::File(path) => {
                append(path, &lines, sync).map_err(|e| format!("{}: {e}", path.display()))
            }
        })
        .await;
        match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(detail)) => Err(io(detail)),
            Err(error) => Err(io(format!("the write task failed: {error}"))),
        }
    }
}

/// Append `lines` to `path` (opened per batch, so a rotated file is
/// followed); on a failed write, cut off what landed so the retry does not
/// follow half a line.
fn append(path: &Path, lines: &[u8], sync: bool) -> std::io::Result<()> {
    let mut file = OpenOptions::new().create(true).append(true).open(path)?;
    let before = file.metadata()?.len();
    let result = file
        .write_all(lines)
        .and_then(|()| if sync { file.sync_data() } else { Ok(()) });
    if result.is_err() {
        let _ = file.set_len(before);
    }
    result
}
