//! One read barrier at a time for every stream of a replica ([`single_flight`]). Every delta
//! stream catches up with the cluster before its first response (DESIGN rule 3), so a fleet
//! that reconnects at once (a replica died, a partition healed) would otherwise send the
//! leader one linearizable read per Envoy. Here the streams that wait at one moment share one
//! barrier: a caller joins the barrier that starts next if one is already running (that one
//! began before the caller arrived, so it does not cover it), else starts one. At most two
//! barriers are ever in flight per replica: the running one and the one its joiners wait for.
//!
//! Used by the server to wrap the replica's barrier, and by the stream tests.

use crate::config::{BarrierError, ReadBarrierFn};
use concord_telemetry::tasks::Tasks;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// `barrier`, shared: callers waiting at the same moment share one run of it, and each caller
/// gets the result of a run that started after it called. Its runs are tasks of `tasks`, so
/// the replica's drain waits for them like any other.
pub(crate) fn single_flight(barrier: ReadBarrierFn, tasks: Tasks) -> ReadBarrierFn {
    let flight = Arc::new(Flight {
        barrier,
        tasks,
        rounds: Mutex::new(Rounds::default()),
        results: watch::Sender::new(None),
    });
    Arc::new(move || Box::pin(flight.clone().join()))
}

/// The shared state of a [`single_flight`] barrier.
struct Flight {
    barrier: ReadBarrierFn,
    tasks: Tasks,
    rounds: Mutex<Rounds>,
    /// The last round that finished, with its result.
    results: watch::Sender<Option<(u64, Result<u64, BarrierError>)>>,
}

#[derive(Default)]
struct Rounds {
    /// The number of rounds started so far; the running round's number while one runs.
    started: u64,
    running: bool,
    /// A caller arrived while a round was running: start another once it ends.
    again: bool,
}

impl Flight {
    /// Waits for a round that starts after now, starting one if none runs.
    async fn join(self: Arc<Self>) -> Result<u64, BarrierError> {
        // Subscribed before the round is chosen: its result cannot be missed.
        let mut results = self.results.subscribe();
        let round = {
            let mut r = self.rounds.lock().unwrap_or_else(|e| e.into_inner());
            if r.running {
                r.again = true;
                r.started + 1
            } else {
                r.running = true;
                r.started += 1;
                self.tasks
                    .spawn("xds read barrier", self.clone().run(r.started));
                r.started
            }
        };
        let done = results
            .wait_for(|last| last.as_ref().is_some_and(|(n, _)| *n >= round))
            .await
            .map_err(|_| BarrierError("the read barrier is gone".into()))?;
        match done.as_ref() {
            Some((_, result)) => result.clone(),
            None => Err(BarrierError("the read barrier is gone".into())),
        }
    }

    /// Runs rounds from `round` until no caller waits for another. Its own task, so a caller
    /// that gives up (its catch-up timeout) leaves the round running for the others.
    async fn run(self: Arc<Self>, mut round: u64) {
        loop {
            // In a task of its own too, so a barrier that panics fails its round and no more.
            let result = match self
                .tasks
                .spawn("xds read barrier run", (self.barrier)())
                .await
            {
                Ok(result) => result,
                Err(error) => Err(BarrierError(format!("its task failed: {error}"))),
            };
            self.results.send_replace(Some((round, result)));
            let mut r = self.rounds.lock().unwrap_or_else(|e| e.into_inner());
            if !std::mem::take(&mut r.again) {
                r.running = false;
                return;
            }
            r.started += 1;
            round = r.started;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;
    use tokio::sync::Semaphore;

    /// A barrier that counts its runs, returns the run's number, and finishes a run only when
    /// the test adds a permit to `gate`.
    fn gated() -> (ReadBarrierFn, Arc<AtomicU64>, Arc<Semaphore>) {
        let (runs, gate) = (Arc::new(AtomicU64::new(0)), Arc::new(Semaphore::new(0)));
        let (r, g) = (runs.clone(), gate.clone());
        let barrier: ReadBarrierFn = Arc::new(move || {
            let (r, g) = (r.clone(), g.clone());
            Box::pin(async move {
                let n = r.fetch_add(1, Ordering::SeqCst) + 1;
                g.acquire().await.expect("open").forget();
                Ok(n)
            })
        });
        (barrier, runs, gate)
    }

    async fn settle() {
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn callers_at_one_moment_share_one_barrier_that_started_after_they_came() {
        let (barrier, runs, gate) = gated();
        let shared = single_flight(barrier, Tasks::new());
        let first = tokio::spawn(shared());
        settle().await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        // Ten callers arrive while run 1 is in flight: it began before them, so they wait for
        // run 2, which all ten share.
        let later: Vec<_> = (0..10).map(|_| tokio::spawn(shared())).collect();
        settle().await;
        assert_eq!(runs.load(Ordering::SeqCst), 1, "one barrier per moment");
        gate.add_permits(1);
        assert_eq!(first.await.unwrap(), Ok(1));
        settle().await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            2,
            "the waiting callers' barrier"
        );
        assert!(later.iter().all(|h| !h.is_finished()), "run 1 covers none");
        gate.add_permits(1);
        for h in later {
            assert_eq!(h.await.unwrap(), Ok(2));
        }
        // Idle again: the next caller starts a run of its own.
        let next = tokio::spawn(shared());
        gate.add_permits(1);
        assert_eq!(next.await.unwrap(), Ok(3));
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_failed_or_abandoned_barrier_fails_its_round_only() {
        let (calls, gate) = (Arc::new(AtomicU64::new(0)), Arc::new(Semaphore::new(0)));
        let (c, g) = (calls.clone(), gate.clone());
        let barrier: ReadBarrierFn = Arc::new(move || {
            let (n, g) = (c.fetch_add(1, Ordering::SeqCst), g.clone());
            Box::pin(async move {
                match n {
                    0 => Err(BarrierError("no leader".into())),
                    1 => panic!("a broken barrier"),
                    _ => {
                        g.acquire().await.expect("open").forget();
                        Ok(n)
                    }
                }
            })
        });
        let shared = single_flight(barrier, Tasks::new());
        assert_eq!(shared().await, Err(BarrierError("no leader".into())));
        let panicked = shared().await.unwrap_err();
        assert!(panicked.0.contains("failed"), "{panicked}");
        // A caller that gives up leaves its round running; the next caller, arriving during
        // it, gets the round after.
        let gave_up = tokio::time::timeout(Duration::from_millis(20), shared()).await;
        assert!(gave_up.is_err());
        let next = tokio::spawn(shared());
        settle().await;
        gate.add_permits(2);
        assert_eq!(next.await.unwrap(), Ok(3));
    }
}
