//! Config canaries, judged by the leader alone (issue 15; DESIGN rule 11): while a
//! configuration is staged to a group of Envoys, the leader reads every member's Envoys (over
//! the peer channel, each marking which of its Envoys are of the group) and
//! - aborts the stage at the first NACK an Envoy of the group sent of a version at or after the
//!   stage: the other Envoys never receive it, and the abort says the Envoy's message;
//! - promotes it once every Envoy of the group (one at least) has ACKed a version at or after
//!   the stage with nothing outstanding, and has held it so for the stage's hold.
//!
//! The hold is timed by this leader from when it first saw the group hold the stage: a new
//! leader times it afresh, so the hold is never cut short.

use crate::node::NoStatus;
use concord_api::LocalEnvoys;
use concord_registry::services::{Stage, StageChange};
use std::time::{Duration, Instant};

/// What the group's Envoys say of a stage now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// An Envoy of the group NACKed it: why.
    Nacked(String),
    /// Every one of the `n` Envoys of the group holds it.
    Held(usize),
    /// Not yet: why.
    Waiting(String),
}

/// The group's verdict from every member's answer.
pub fn judge(stage: &Stage, answers: &[Result<LocalEnvoys, NoStatus>]) -> Verdict {
    let mut group = 0;
    let mut waiting = Vec::new();
    for local in answers.iter().flatten() {
        for e in local.envoys.iter().filter(|e| e.staged == Some(true)) {
            group += 1;
            if let Some(n) = &e.last_nack
                && n.version >= stage.at
            {
                return Verdict::Nacked(format!(
                    "Envoy {} (on node {}) rejected the {} of version {}: {}",
                    e.node_id, local.node_id, n.type_name, n.version, n.message
                ));
            }
            let pending = e.types.values().any(|t| t.pending);
            let holds = e
                .types
                .values()
                .any(|t| t.acked.is_some_and(|a| a >= stage.at));
            if pending || !holds {
                waiting.push(e.node_id.clone());
            }
        }
    }
    if group == 0 {
        let unanswered = answers.iter().filter(|a| a.is_err()).count();
        return Verdict::Waiting(format!(
            "no Envoy of the group is connected ({unanswered} replicas did not answer)"
        ));
    }
    match waiting.is_empty() {
        true => Verdict::Held(group),
        false => Verdict::Waiting(format!(
            "{} of {group} Envoys not holding it yet: {}",
            waiting.len(),
            waiting.join(", ")
        )),
    }
}

/// What to commit for `verdict` now; `since` is when the group was first seen holding the stage
/// (kept across calls, reset when it stops holding).
pub fn decide(
    stage: &Stage,
    verdict: Verdict,
    since: &mut Option<Instant>,
    now: Instant,
) -> Option<StageChange> {
    let at_ms = concord_telemetry::unix_micros() / 1000;
    match verdict {
        Verdict::Nacked(why) => Some(StageChange::Abort {
            at: stage.at,
            why,
            at_ms,
        }),
        Verdict::Waiting(_) => {
            *since = None;
            None
        }
        Verdict::Held(n) => {
            let first = *since.get_or_insert(now);
            let hold: Duration = stage.hold.std();
            (now.duration_since(first) >= hold).then(|| StageChange::Promote {
                at: stage.at,
                why: format!(
                    "{n} Envoys of the group ACKed it and held it for {}",
                    stage.hold
                ),
                at_ms,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_api::envoys::{EnvoyStatus, NackStatus, TypeStatus};

    fn stage() -> Stage {
        Stage {
            desired: Default::default(),
            group: vec!["cluster=canary".parse().unwrap()],
            hold: concord_registry::services::Duration::from_secs(2),
            at: 10,
            at_ms: 0,
        }
    }

    fn envoy(id: &str, staged: bool, acked: u64, pending: bool) -> EnvoyStatus {
        EnvoyStatus {
            node_id: id.into(),
            node_cluster: "x".into(),
            stream: 1,
            peer: None,
            connected_at_ms: 0,
            types: [(
                "routes".to_string(),
                TypeStatus {
                    sent: Some(acked),
                    acked: Some(acked),
                    pending,
                    ..Default::default()
                },
            )]
            .into(),
            last_nack: None,
            staged: Some(staged),
        }
    }

    fn on(node_id: u64, envoys: Vec<EnvoyStatus>) -> Result<LocalEnvoys, NoStatus> {
        Ok(LocalEnvoys {
            node_id,
            revision: 10,
            nacks_total: 0,
            envoys,
            serving: Some(true),
            not_serving: None,
            report: None,
        })
    }

    #[test]
    fn the_group_holds_nacks_or_waits() {
        let s = stage();
        assert!(matches!(
            judge(&s, &[on(1, vec![envoy("main", false, 10, false)])]),
            Verdict::Waiting(_)
        ));
        let held = [
            on(1, vec![envoy("c1", true, 10, false)]),
            on(
                2,
                vec![envoy("c2", true, 11, false), envoy("main", false, 9, false)],
            ),
        ];
        assert_eq!(judge(&s, &held), Verdict::Held(2));
        let behind = [on(1, vec![envoy("c1", true, 9, false)])];
        assert!(matches!(judge(&s, &behind), Verdict::Waiting(w) if w.contains("c1")));
        let pending = [on(1, vec![envoy("c1", true, 10, true)])];
        assert!(matches!(judge(&s, &pending), Verdict::Waiting(_)));
        let mut nacked = envoy("c1", true, 9, false);
        nacked.last_nack = Some(NackStatus {
            type_name: "listeners".into(),
            version: 10,
            message: "cannot bind".into(),
            at_ms: 0,
        });
        let v = judge(&s, &[on(3, vec![nacked.clone()])]);
        assert_eq!(
            v,
            Verdict::Nacked(
                "Envoy c1 (on node 3) rejected the listeners of version 10: cannot bind".into()
            )
        );
        // A NACK from before the stage is not about it.
        nacked.last_nack.as_mut().unwrap().version = 9;
        assert!(matches!(
            judge(&s, &[on(3, vec![nacked])]),
            Verdict::Waiting(_)
        ));
    }

    #[test]
    fn a_held_stage_is_promoted_after_its_hold_and_a_nack_aborts_at_once() {
        let s = stage();
        let t0 = Instant::now();
        let mut since = None;
        assert_eq!(decide(&s, Verdict::Held(1), &mut since, t0), None);
        assert_eq!(
            decide(
                &s,
                Verdict::Held(1),
                &mut since,
                t0 + Duration::from_secs(1)
            ),
            None
        );
        // Stopping holding restarts the hold.
        assert_eq!(
            decide(
                &s,
                Verdict::Waiting("x".into()),
                &mut since,
                t0 + Duration::from_secs(2)
            ),
            None
        );
        assert_eq!(
            decide(
                &s,
                Verdict::Held(1),
                &mut since,
                t0 + Duration::from_secs(3)
            ),
            None
        );
        assert!(matches!(
            decide(
                &s,
                Verdict::Held(1),
                &mut since,
                t0 + Duration::from_secs(5)
            ),
            Some(StageChange::Promote { at: 10, .. })
        ));
        assert!(matches!(
            decide(&s, Verdict::Nacked("bad".into()), &mut None, t0),
            Some(StageChange::Abort { at: 10, .. })
        ));
    }
}
