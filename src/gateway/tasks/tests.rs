use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::{Task, Tasks, TASKS_NOTE};
use crate::lifecycle::{Lifecycle, Phase};

const WAIT: Duration = Duration::from_secs(10);

/// Records its name in `log` when dropped: when its task stopped.
struct DropLog {
    name: &'static str,
    log: Arc<Mutex<Vec<&'static str>>>,
}

impl Drop for DropLog {
    fn drop(&mut self) {
        self.log.lock().push(self.name);
    }
}

/// A task that runs until it is dropped, and says when.
fn runs_until_dropped(
    name: &'static str,
    log: &Arc<Mutex<Vec<&'static str>>>,
) -> impl Future<Output = ()> + Send + 'static {
    let guard = DropLog {
        name,
        log: Arc::clone(log),
    };
    async move {
        let _guard = guard;
        std::future::pending::<()>().await;
    }
}

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future)
        .await
        .unwrap_or_else(|_| panic!("{what} within {WAIT:?}"))
}

async fn note_appears(lifecycle: &Lifecycle) -> String {
    loop {
        if let Some(note) = lifecycle.report().notes.get(TASKS_NOTE) {
            return note.clone();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn phases_stop_their_tasks_in_order() {
    let lifecycle = Arc::new(Lifecycle::new());
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Tasks::new(Arc::clone(&lifecycle));
    tasks.spawn(
        Task::essential("admin", Phase::Closing),
        runs_until_dropped("admin", &log),
    );
    tasks.spawn(Task::upkeep("sweep"), runs_until_dropped("sweep", &log));
    let proxy = {
        let lifecycle = Arc::clone(&lifecycle);
        let log = Arc::clone(&log);
        async move {
            lifecycle.drained().await;
            // Finishing open connections: everything else still runs.
            tokio::task::yield_now().await;
            log.lock().push("proxy");
        }
    };
    tasks.spawn(Task::essential("proxy", Phase::Draining).awaited(), proxy);

    lifecycle.drain();
    within("drained", tasks.until_drained()).await;
    tasks.stop(Phase::Draining, WAIT).await;
    assert_eq!(*log.lock(), ["proxy"]);
    tasks.stop(Phase::Stopping, WAIT).await;
    assert_eq!(*log.lock(), ["proxy", "sweep"]);
    tasks.stop(Phase::Closing, WAIT).await;
    assert_eq!(*log.lock(), ["proxy", "sweep", "admin"]);
    assert!(tasks.finish().is_empty(), "nothing failed");
}

#[tokio::test]
async fn an_essential_task_that_panics_drains_the_process_and_is_named() {
    let lifecycle = Arc::new(Lifecycle::new());
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Tasks::new(Arc::clone(&lifecycle));
    tasks.spawn(
        Task::essential("proxy", Phase::Draining),
        runs_until_dropped("proxy", &log),
    );
    tasks.spawn(Task::essential("admin server", Phase::Closing), async {
        panic!("accept loop broke");
    });

    // Nobody asked for a drain: the failure did.
    within("drained", tasks.until_drained()).await;
    assert!(lifecycle.is_draining());
    tasks.stop(Phase::Draining, WAIT).await;
    tasks.stop(Phase::Stopping, WAIT).await;
    tasks.stop(Phase::Closing, WAIT).await;
    assert_eq!(*log.lock(), ["proxy"], "the proxy was stopped, not left");
    assert_eq!(tasks.finish(), ["admin server"]);
}

#[tokio::test]
async fn an_essential_task_that_returns_early_drains_the_process() {
    let lifecycle = Arc::new(Lifecycle::new());
    let mut tasks = Tasks::new(Arc::clone(&lifecycle));
    tasks.spawn(Task::essential("signal handler", Phase::Closing), async {});

    within("drained", tasks.until_drained()).await;
    tasks.stop(Phase::Closing, WAIT).await;
    assert_eq!(tasks.finish(), ["signal handler"]);
}

#[tokio::test]
async fn upkeep_that_fails_is_named_in_readyz_and_serving_goes_on() {
    let lifecycle = Arc::new(Lifecycle::new());
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Tasks::new(Arc::clone(&lifecycle));
    tasks.spawn(
        Task::essential("proxy", Phase::Draining),
        runs_until_dropped("proxy", &log),
    );
    tasks.spawn(Task::upkeep("counters upkeep"), async {
        panic!("sweep failed");
    });
    tasks.spawn(Task::upkeep("policy watch"), async {});

    let note = within("the note", async {
        tokio::select! {
            () = tasks.until_drained() => panic!("an upkeep failure drained the process"),
            note = async {
                loop {
                    let note = note_appears(&lifecycle).await;
                    if note.contains("policy watch") && note.contains("counters upkeep") {
                        return note;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            } => note,
        }
    })
    .await;
    assert!(
        note.contains("counters upkeep panicked: sweep failed"),
        "{note}"
    );
    assert!(
        note.contains("policy watch ended before it was told to stop"),
        "{note}"
    );
    // The drain would have started in the same step as the note.
    assert!(!lifecycle.is_draining());
    assert!(log.lock().is_empty(), "the proxy still runs");

    lifecycle.drain();
    tasks.stop(Phase::Closing, WAIT).await;
    assert!(tasks.finish().is_empty(), "upkeep does not fail the exit");
}

#[tokio::test]
async fn a_task_that_outlives_its_bound_does_not_hold_up_the_rest() {
    let lifecycle = Arc::new(Lifecycle::new());
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Tasks::new(Arc::clone(&lifecycle));
    // Told by the drain, but never finishes.
    tasks.spawn(
        Task::essential("proxy", Phase::Draining).awaited(),
        std::future::pending(),
    );
    tasks.spawn(
        Task::essential("admin", Phase::Closing),
        runs_until_dropped("admin", &log),
    );

    lifecycle.drain();
    let bound = Duration::from_millis(200);
    let started = Instant::now();
    within("the bound", tasks.stop(Phase::Draining, bound)).await;
    assert!(started.elapsed() >= bound);
    // Later phases do not wait for it again.
    within("closing", tasks.stop(Phase::Closing, WAIT)).await;
    assert_eq!(*log.lock(), ["admin"]);
    assert!(tasks.finish().is_empty(), "late is not failed");
}
