//! Which changes the Envoys of this replica accepted, and how fast: per revision, how many
//! Envoys newly ACKed it and the slowest of their discovery-to-ACK times — the status page's
//! "how long until every Envoy ACKed it". Fed by the push bookkeeping on every ACK that
//! carries changes; bounded to the most recent revisions.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Revisions whose ACKs are kept (as many as the replica keeps revision times of).
const KEPT: usize = 4096;

/// The ACKs of one change on this replica.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Acks {
    /// Envoys that ACKed it.
    pub envoys: u64,
    /// The slowest of their times from when the change was seen (or, without that, applied
    /// here) to the ACK, in microseconds.
    pub slowest_us: u64,
}

/// The ACKs of recent changes on one replica.
#[derive(Default)]
pub struct ChangeAcks {
    inner: Mutex<BTreeMap<u64, Acks>>,
}

impl ChangeAcks {
    /// An Envoy ACKed `revision`, `latency_us` after the change was seen.
    pub(crate) fn acked(&self, revision: u64, latency_us: u64) {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let a = m.entry(revision).or_default();
        a.envoys += 1;
        a.slowest_us = a.slowest_us.max(latency_us);
        while m.len() > KEPT {
            m.pop_first();
        }
    }

    /// The ACKs of the revisions from `from` on, oldest first.
    pub fn since(&self, from: u64) -> Vec<(u64, Acks)> {
        let m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        m.range(from..).map(|(r, a)| (*r, *a)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_envoys_keeps_the_slowest_and_forgets_the_oldest() {
        let acks = ChangeAcks::default();
        acks.acked(5, 300);
        acks.acked(5, 900);
        acks.acked(5, 100);
        acks.acked(7, 50);
        assert_eq!(
            acks.since(0),
            [
                (
                    5,
                    Acks {
                        envoys: 3,
                        slowest_us: 900
                    }
                ),
                (
                    7,
                    Acks {
                        envoys: 1,
                        slowest_us: 50
                    }
                )
            ]
        );
        assert_eq!(acks.since(6).len(), 1);
        for r in 10..10 + KEPT as u64 {
            acks.acked(r, 1);
        }
        assert_eq!(acks.since(0).len(), KEPT);
        assert_eq!(acks.since(0)[0].0, 10, "the oldest went first");
    }
}
