//! Config canaries, judged by the leader alone (issue 15; DESIGN rule 11): while a
//! configuration is staged to a group of Envoys, the leader reads every member's Envoys (over
//! the peer channel, each marking which of its Envoys are of the group) and their stats (each
//! replica sums what its Envoys stream, the group's and the others' apart), and
//! - aborts the stage at the first NACK an Envoy of the group sent of a version at or after the
//!   stage: the other Envoys never receive it, and the abort says the Envoy's message;
//! - aborts it as soon as the group's error rate is more than the stage's
//!   `max_error_increase` points above the other Envoys' (once the group served
//!   `min_requests`, one at least), saying both rates;
//! - promotes it once every Envoy of the group (one at least) has ACKed a version at or after
//!   the stage with nothing outstanding, has held it so for the stage's hold, and the group
//!   served `min_requests` with its error rate within bounds.
//!
//! The hold is timed, and the errors counted, by this leader from when it first judged the
//! stage: a new leader starts both afresh, so the hold is never cut short. Each replica's
//! counts are kept per incarnation, as a rollout's are (`crate::rollouts`): an Envoy that moves
//! to another replica keeps counting there.

use crate::NodeId;
use crate::node::NoStatus;
use concord_api::{LocalEnvoys, StageCounts, StatsReport, VersionCounts};
use concord_registry::services::{Stage, StageChange};
use std::collections::{HashMap, HashSet};
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

/// The requests and errors of the group's Envoys and of the others, since the judging began.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Errors {
    /// The Envoys of the group.
    pub group: VersionCounts,
    /// Every other Envoy.
    pub rest: VersionCounts,
}

impl std::fmt::Display for Errors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the group's errors {:.1}% of {} requests, the other Envoys' {:.1}% of {}",
            self.group.error_rate(),
            self.group.requests,
            self.rest.error_rate(),
            self.rest.requests
        )
    }
}

/// What to commit for `verdict` and `errors` now; `since` is when the group was first seen
/// holding the stage (kept across calls, reset when it stops holding).
pub fn decide(
    stage: &Stage,
    verdict: Verdict,
    errors: Errors,
    since: &mut Option<Instant>,
    now: Instant,
) -> Option<StageChange> {
    let at_ms = concord_telemetry::unix_micros() / 1000;
    let abort = |why| {
        Some(StageChange::Abort {
            at: stage.at,
            why,
            at_ms,
        })
    };
    if let Verdict::Nacked(why) = verdict {
        return abort(why);
    }
    let limit = errors.rest.error_rate() + f64::from(stage.max_error_increase);
    if errors.group.requests >= stage.min_requests.max(1) && errors.group.error_rate() > limit {
        return abort(format!(
            "{errors}: more than {} points above",
            stage.max_error_increase
        ));
    }
    match verdict {
        Verdict::Held(n) => {
            let first = *since.get_or_insert(now);
            let hold: Duration = stage.hold.std();
            let served = errors.group.requests >= stage.min_requests;
            (now.duration_since(first) >= hold && served).then(|| StageChange::Promote {
                at: stage.at,
                why: format!(
                    "{n} Envoys of the group ACKed it and held it for {}; {errors}",
                    stage.hold
                ),
                at_ms,
            })
        }
        _ => {
            *since = None;
            None
        }
    }
}

/// The leader's judging of one stage in one term: since when the group holds it, and what each
/// replica incarnation counted of it since the judging began.
#[derive(Debug, Default)]
pub struct Judging {
    /// The term and the stage's start index.
    key: Option<(u64, u64)>,
    /// When the group was first seen holding the stage (reset when it stops).
    pub since: Option<Instant>,
    /// Per (replica, incarnation): its counts when first and last seen.
    sums: HashMap<(NodeId, u64), (StageCounts, StageCounts)>,
    /// Replicas that answered in this judging.
    seen: HashSet<NodeId>,
}

impl Judging {
    /// Starts afresh unless it judges stage `at` in `term` already.
    pub fn begin(&mut self, term: u64, at: u64) {
        if self.key != Some((term, at)) {
            *self = Judging {
                key: Some((term, at)),
                ..Judging::default()
            };
        }
    }

    /// Takes in one round of stats reports (per member: its report, or none if it did not
    /// answer) of the stage started at `at`.
    pub fn observe(&mut self, at: u64, reports: &[(NodeId, Option<StatsReport>)]) {
        for (id, report) in reports {
            let Some(report) = report else { continue };
            let first_answer = self.seen.insert(*id);
            // Not yet counting this stage (it applies it a moment later, or no Envoy of it
            // flushed since): from zero once it does.
            let Some(now) = report.stage.filter(|s| s.at == at) else {
                continue;
            };
            // A replica that answered before under another incarnation, or without counts of
            // the stage: everything it counts now is the judging's.
            let key = (*id, report.incarnation);
            match self.sums.get_mut(&key) {
                Some((_, last)) => *last = now,
                None => {
                    let start = match first_answer {
                        true => now,
                        false => StageCounts {
                            at,
                            ..StageCounts::default()
                        },
                    };
                    self.sums.insert(key, (start, now));
                }
            }
        }
    }

    /// The counts since the judging began, summed over replica incarnations.
    pub fn errors(&self) -> Errors {
        let mut e = Errors::default();
        let diff = |sum: &mut VersionCounts, last: VersionCounts, first: VersionCounts| {
            sum.requests += last.requests.saturating_sub(first.requests);
            sum.errors += last.errors.saturating_sub(first.errors);
        };
        for (first, last) in self.sums.values() {
            diff(&mut e.group, last.group, first.group);
            diff(&mut e.rest, last.rest, first.rest);
        }
        e
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
            max_error_increase: 5,
            min_requests: 0,
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
                Box::new(TypeStatus {
                    sent: Some(acked),
                    acked: Some(acked),
                    pending,
                    ..Default::default()
                }),
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

    fn vc(requests: u64, errors: u64) -> VersionCounts {
        VersionCounts { requests, errors }
    }

    #[test]
    fn a_held_stage_is_promoted_after_its_hold_and_a_nack_aborts_at_once() {
        let s = stage();
        let t0 = Instant::now();
        let at = |secs| t0 + Duration::from_secs(secs);
        let ok = Errors::default();
        let mut since = None;
        let mut d = |v, secs| decide(&s, v, ok, &mut since, at(secs));
        assert_eq!(d(Verdict::Held(1), 0), None);
        assert_eq!(d(Verdict::Held(1), 1), None);
        // Stopping holding restarts the hold.
        assert_eq!(d(Verdict::Waiting("x".into()), 2), None);
        assert_eq!(d(Verdict::Held(1), 3), None);
        assert!(matches!(
            d(Verdict::Held(1), 5),
            Some(StageChange::Promote { at: 10, .. })
        ));
        assert!(matches!(
            decide(&s, Verdict::Nacked("bad".into()), ok, &mut None, t0),
            Some(StageChange::Abort { at: 10, .. })
        ));
    }

    #[test]
    fn the_groups_error_rate_aborts_or_holds_a_stage() {
        let mut s = stage();
        s.max_error_increase = 5;
        s.min_requests = 20;
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(60);
        let e = |group, rest| Errors { group, rest };
        // Within 5 points of the rest: promoted after the hold.
        let fine = e(vc(100, 15), vc(1000, 100));
        let mut since = Some(t0);
        assert!(matches!(
            decide(&s, Verdict::Held(2), fine, &mut since, later),
            Some(StageChange::Promote { why, .. }) if why.contains("15.0% of 100 requests")
        ));
        // More than 5 points above: aborted at once, ACKed or not, saying both rates.
        let bad = e(vc(100, 16), vc(1000, 100));
        for v in [Verdict::Held(2), Verdict::Waiting("x".into())] {
            match decide(&s, v, bad, &mut None, t0) {
                Some(StageChange::Abort { why, .. }) => assert_eq!(
                    why,
                    "the group's errors 16.0% of 100 requests, the other Envoys' 10.0% of 1000: \
                     more than 5 points above"
                ),
                other => panic!("{other:?}"),
            }
        }
        // Fewer than min_requests: neither judged on errors nor promoted.
        let few = e(vc(19, 19), vc(0, 0));
        assert_eq!(
            decide(&s, Verdict::Held(2), few, &mut Some(t0), later),
            None
        );
        // With no minimum, promoted without traffic; a first error judges.
        s.min_requests = 0;
        let none = e(vc(0, 0), vc(0, 0));
        assert!(matches!(
            decide(&s, Verdict::Held(1), none, &mut Some(t0), later),
            Some(StageChange::Promote { .. })
        ));
        assert!(matches!(
            decide(&s, Verdict::Held(1), e(vc(1, 1), vc(0, 0)), &mut None, t0),
            Some(StageChange::Abort { .. })
        ));
    }

    #[test]
    fn judging_counts_from_when_it_began_per_incarnation() {
        let report = |incarnation, at, group: (u64, u64), rest: (u64, u64)| StatsReport {
            incarnation,
            streams: 1,
            messages: 1,
            clusters: Vec::new(),
            stage: Some(StageCounts {
                at,
                group: vc(group.0, group.1),
                rest: vc(rest.0, rest.1),
            }),
        };
        let mut j = Judging::default();
        j.begin(1, 10);
        // Replica 1 counted before the judging began: not the judging's. Replica 2 has not
        // counted this stage yet (an older one): from zero once it does.
        j.observe(
            10,
            &[
                (1, Some(report(11, 10, (50, 50), (50, 0)))),
                (2, Some(report(21, 4, (9, 9), (9, 9)))),
                (3, None),
            ],
        );
        assert_eq!(j.errors(), Errors::default());
        j.observe(
            10,
            &[
                (1, Some(report(11, 10, (60, 55), (70, 1)))),
                (2, Some(report(21, 10, (5, 0), (5, 0)))),
            ],
        );
        assert_eq!(
            j.errors(),
            Errors {
                group: vc(15, 5),
                rest: vc(25, 1)
            }
        );
        // Replica 1 restarted (from zero, another incarnation): both incarnations count.
        j.observe(10, &[(1, Some(report(12, 10, (2, 2), (0, 0))))]);
        assert_eq!(j.errors().group, vc(17, 7));
        // The same stage in the same term goes on; a new term starts afresh.
        j.begin(1, 10);
        assert_eq!(j.errors().group, vc(17, 7));
        j.begin(2, 10);
        assert_eq!(j.errors(), Errors::default());
    }
}
