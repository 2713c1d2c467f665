//! Every task a replica spawns, in one place: a [`Tasks`] handle is a cancellation token plus a
//! shared [`TaskTracker`], so shutdown can cancel a subsystem, then wait (within a grace period)
//! for every task to finish and say by name which did not. Spawned tasks carry the span they
//! were spawned in (`in_current_span`), so their logs and traces keep the caller's fields.
//!
//! Used by every crate that spawns (raft, xds, tls, the binary); the binary creates the root
//! and hands a [`Tasks::child`] to each subsystem.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// Task counts by name: how many are running, and how many were ever spawned.
#[derive(Default)]
struct Counts {
    live: BTreeMap<&'static str, usize>,
    spawned: BTreeMap<&'static str, usize>,
}

/// A subsystem's cancellation token and the process-wide task tracker. Cheap to clone.
#[derive(Clone)]
pub struct Tasks {
    token: CancellationToken,
    tracker: TaskTracker,
    counts: Arc<Mutex<Counts>>,
}

impl Default for Tasks {
    fn default() -> Self {
        Tasks::new()
    }
}

/// Decrements a task's live count when the task ends, however it ends (done, panicked, aborted).
struct Live {
    name: &'static str,
    counts: Arc<Mutex<Counts>>,
}

impl Drop for Live {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = c.live.get_mut(self.name) {
            *n -= 1;
            if *n == 0 {
                c.live.remove(self.name);
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A task's future with its [`Live`] count. A struct, not an `async` block that awaits the
    /// future it captured: such a block holds the future twice (captured and awaited), which
    /// doubled every xDS stream's task, 8 KiB instead of 4 (issue 17, 10,000 streams a replica).
    struct Counted<F> {
        #[pin]
        fut: F,
        _live: Live,
    }
}

impl<F: Future> Future for Counted<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.project().fut.poll(cx)
    }
}

/// What [`Tasks::drain`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drained {
    /// Tasks spawned since start, by name.
    pub spawned: BTreeMap<&'static str, usize>,
    /// Tasks still running when the grace period ended, by name (empty: a clean drain).
    pub unfinished: BTreeMap<&'static str, usize>,
}

impl Tasks {
    /// A root: a new token and a new tracker.
    pub fn new() -> Tasks {
        Tasks {
            token: CancellationToken::new(),
            tracker: TaskTracker::new(),
            counts: Arc::default(),
        }
    }

    /// The same tracker with a child token: cancelled with this one, or on its own.
    pub fn child(&self) -> Tasks {
        Tasks {
            token: self.token.child_token(),
            ..self.clone()
        }
    }

    /// This subsystem's token: every loop selects on it.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Cancels this subsystem (and its children).
    pub fn cancel(&self) {
        self.token.cancel();
    }

    /// Spawns `fut` as task `name`, tracked, in the current span.
    pub fn spawn<F>(&self, name: &'static str, fut: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker
            .spawn(self.counted(name, fut).in_current_span())
    }

    /// `fut`, counted as live task `name` and tracked (a drain waits for it), but run by
    /// whoever polls it: for work that belongs inside a task its caller already has.
    pub fn track<F: Future>(
        &self,
        name: &'static str,
        fut: F,
    ) -> impl Future<Output = F::Output> + use<F> {
        self.tracker.track_future(self.counted(name, fut))
    }

    /// `fut`, counted as a live task `name` until it is dropped.
    fn counted<F: Future>(&self, name: &'static str, fut: F) -> Counted<F> {
        let live = {
            let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
            *c.live.entry(name).or_default() += 1;
            *c.spawned.entry(name).or_default() += 1;
            Live {
                name,
                counts: self.counts.clone(),
            }
        };
        Counted { fut, _live: live }
    }

    /// Tasks running now, by name.
    pub fn live(&self) -> BTreeMap<&'static str, usize> {
        let c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.live.clone()
    }

    /// Cancels everything, refuses new tasks' completion from holding the wait open (the
    /// tracker is closed), and waits for every task for at most `grace`.
    pub async fn drain(&self, grace: Duration) -> Drained {
        self.token.cancel();
        self.tracker.close();
        let _ = tokio::time::timeout(grace, self.tracker.wait()).await;
        let c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        Drained {
            spawned: c.spawned.clone(),
            unfinished: c.live.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_counted_task_holds_its_future_once() {
        let tasks = Tasks::new();
        // A future whose state is 4 KiB, as an xDS stream's is.
        let big = async {
            let buf = [0u8; 4096];
            tokio::task::yield_now().await;
            buf.len()
        };
        let inner = std::mem::size_of_val(&big);
        let counted = tasks.counted("big", big);
        let size = std::mem::size_of_val(&counted);
        assert!(
            size < inner + 128,
            "a {inner}-byte future takes {size} bytes counted"
        );
        assert_eq!(tasks.live(), BTreeMap::from([("big", 1)]));
        assert_eq!(counted.await, 4096);
        assert!(tasks.live().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_tasks_that_stop_on_their_token_and_names_the_others() {
        let root = Tasks::new();
        let polite = root.child();
        let token = polite.token().clone();
        polite.spawn("polite", async move {
            token.cancelled().await;
            // Finishing takes a while, within the grace period.
            tokio::time::sleep(Duration::from_millis(500)).await;
        });
        root.spawn("stubborn", std::future::pending::<()>());
        root.spawn("done", async {}).await.unwrap();
        assert_eq!(
            root.live(),
            BTreeMap::from([("polite", 1), ("stubborn", 1)])
        );
        let drained = root.drain(Duration::from_secs(2)).await;
        assert_eq!(drained.unfinished, BTreeMap::from([("stubborn", 1)]));
        assert_eq!(
            drained.spawned,
            BTreeMap::from([("done", 1), ("polite", 1), ("stubborn", 1)])
        );
    }

    #[tokio::test]
    async fn a_cancelled_child_leaves_its_parent_running() {
        let root = Tasks::new();
        let child = root.child();
        child.cancel();
        assert!(child.token().is_cancelled());
        assert!(!root.token().is_cancelled());
        let clean = root.drain(Duration::from_secs(1)).await;
        assert!(clean.unfinished.is_empty(), "{clean:?}");
    }
}
