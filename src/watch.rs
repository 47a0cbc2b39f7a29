//! Reload triggers shared by the license and policy watchers: directory
//! watches (Kubernetes Secret and ConfigMap updates are symlink swaps in the
//! mount directory, invisible to a watch on the file itself) and SIGHUP, and
//! the settling of a burst of events into one reload pass.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// What asked for a reload pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Trigger {
    /// A watched directory changed. Files that read the same as at the last
    /// pass are skipped: no check, no metric, no log line above debug.
    Files,
    /// SIGHUP: everything is read and checked again, so an error still
    /// present is reported again and a token refused as not yet valid is
    /// retried. What is in force and unchanged stays without a new log line.
    Signal,
}

/// Events closer together than this are one change: a kubelet `..data`
/// swap is several events in the mount directory (the new version
/// directory, the staging link, its rename, the old version's removal), an
/// editor's save several more.
pub const QUIET: Duration = Duration::from_millis(50);

/// A pass runs at the latest this long after the first event of a burst,
/// so a directory that never falls quiet (a neighbour written continuously)
/// cannot hold reloads back for ever.
pub const MAX_SETTLE: Duration = Duration::from_secs(1);

/// When the pass for a burst that started at `first` and whose latest event
/// came at `last` runs: once events stop for [`QUIET`], and no later than
/// [`MAX_SETTLE`] after the first.
pub fn settle_deadline(first: Instant, last: Instant) -> Instant {
    (last + QUIET).min(first + MAX_SETTLE)
}

/// Wait for the burst that `first` opened to end; returns the strongest
/// trigger in it (a SIGHUP during a burst of file events forces the pass).
/// If the channel closes meanwhile, the next receive says so.
pub async fn settle(events: &mut mpsc::UnboundedReceiver<Trigger>, first: Trigger) -> Trigger {
    let start = Instant::now();
    let mut last = start;
    let mut trigger = first;
    loop {
        match tokio::time::timeout_at(settle_deadline(start, last), events.recv()).await {
            Ok(Some(next)) => {
                trigger = trigger.max(next);
                last = Instant::now();
            }
            Ok(None) | Err(_) => return trigger,
        }
    }
}

/// The directory to watch for a path: itself if it is a directory (a PEM
/// directory), else its parent.
pub fn dir_of(path: &Path) -> PathBuf {
    if path.is_dir() {
        return path.to_owned();
    }
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    }
}

pub fn watch_dirs(
    dirs: &[PathBuf],
    tx: mpsc::UnboundedSender<Trigger>,
) -> Option<notify::RecommendedWatcher> {
    let mut watcher =
        match notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if event.is_ok_and(|event| changes_content(&event.kind)) {
                let _ = tx.send(Trigger::Files);
            }
        }) {
            Ok(watcher) => watcher,
            Err(error) => {
                tracing::warn!(%error, "cannot watch files; reload with SIGHUP");
                return None;
            }
        };
    for dir in dirs {
        if let Err(error) = watcher.watch(dir, RecursiveMode::NonRecursive) {
            tracing::warn!(%error, dir = %dir.display(), "cannot watch directory; reload with SIGHUP");
        }
    }
    Some(watcher)
}

/// Whether a filesystem event can change what a reload reads: creation,
/// modification, removal, renames (the `..data` symlink swap), and a file
/// closed after writing. Opens, reads and closes after reading cannot; the
/// reload's own reads cause them, and reacting to those made every watcher
/// reload itself in a loop.
fn changes_content(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) => true,
        // Unknown to the backend: reloading once too often is harmless.
        EventKind::Any | EventKind::Other => true,
    }
}

pub fn spawn_sighup(tx: mpsc::UnboundedSender<Trigger>, what: &'static str) {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::hangup()) {
        Ok(mut hangup) => {
            tokio::spawn(async move {
                while hangup.recv().await.is_some() {
                    tracing::info!("SIGHUP received; reloading {what}");
                    if tx.send(Trigger::Signal).is_err() {
                        return;
                    }
                }
            });
        }
        Err(error) => tracing::warn!(%error, "cannot install the SIGHUP handler"),
    }
}

#[cfg(test)]
mod tests {
    use notify::event::{
        AccessKind, AccessMode, CreateKind, DataChange, EventKind, ModifyKind, RemoveKind,
        RenameMode,
    };

    use super::{changes_content, settle_deadline, MAX_SETTLE, QUIET};

    #[test]
    fn only_events_that_can_change_content_trigger_a_reload() {
        for kind in [
            EventKind::Access(AccessKind::Open(AccessMode::Read)),
            EventKind::Access(AccessKind::Read),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            EventKind::Access(AccessKind::Any),
        ] {
            assert!(!changes_content(&kind), "{kind:?}");
        }
        for kind in [
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Data(DataChange::Content)),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Remove(RemoveKind::File),
        ] {
            assert!(changes_content(&kind), "{kind:?}");
        }
    }

    #[test]
    fn a_burst_settles_once_quiet_and_never_later_than_the_cap() {
        let first = tokio::time::Instant::now();
        let ms = |n| std::time::Duration::from_millis(n);
        // A lone event, or a burst shorter than the quiet window: one pass
        // a quiet window after the last event.
        assert_eq!(settle_deadline(first, first), first + QUIET);
        assert_eq!(
            settle_deadline(first, first + ms(30)),
            first + ms(30) + QUIET
        );
        // Events every 40 ms for 600 ms (a slow copy): still one pass, after
        // the last of them, not one in the middle.
        let mut last = first;
        for _ in 0..15 {
            let next = last + ms(40);
            assert!(
                next < settle_deadline(first, last),
                "the burst is cut at {next:?}"
            );
            last = next;
        }
        assert_eq!(settle_deadline(first, last), last + QUIET);
        // A directory that never falls quiet: the pass runs at the cap.
        assert_eq!(
            settle_deadline(first, first + ms(5_000)),
            first + MAX_SETTLE
        );
    }
}
