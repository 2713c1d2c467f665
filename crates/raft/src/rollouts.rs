//! Rollout steps, judged by the leader alone (DESIGN rules 11 and 13; issue 15).
//!
//! Every replica sums the stats its Envoys stream to it (`concord_xds`'s stats sink); while this
//! node leads, it reads every member's sums for the two version clusters of each running
//! rollout every [`CHECK_EVERY`], and judges the step on what accumulated since the step's
//! window opened. A window opens when this leader first sees the step (or the step changes): a
//! new leader judges the step it finds in the log afresh, a whole interval from its election,
//! so a step is never skipped, and the step a decision is about is in the entry, so it is never
//! repeated. Each replica's sums are kept per incarnation (they start from zero when it
//! restarts): an Envoy that moves to another replica after a failover keeps counting there,
//! and the replica it left keeps what it counted before.
//!
//! The verdict ([`judge`]): once the new version has seen `min_requests` requests, an error
//! rate more than `max_error_increase` points above the old version's rolls back at once (at
//! the next check, within a stats flush of the threshold being crossed); at the end of the
//! interval a step whose new version has seen `min_requests` is promoted; until then it holds.

use crate::NodeId;
use concord_api::{ClusterTotals, Latency, StatsReport, StepProgress, VersionCounts};
use concord_registry::services::{Phase, Rollout, RolloutChange, version_cluster};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often the leader reads the replicas' stats and judges running steps.
pub const CHECK_EVERY: Duration = Duration::from_millis(500);

/// How long the leader waits for one replica's stats.
pub const ASK_TIMEOUT: Duration = Duration::from_millis(400);

/// What the leader makes of a step now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Keep judging; why.
    Hold(String),
    /// The step passed; on what.
    Promote(String),
    /// The step failed; why.
    RollBack(String),
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Hold(why) => write!(f, "holding: {why}"),
            Verdict::Promote(why) => write!(f, "promoting: {why}"),
            Verdict::RollBack(why) => write!(f, "rolling back: {why}"),
        }
    }
}

/// Judges a step of `rollout` held for `held` with these counts in its window.
pub fn judge(rollout: &Rollout, from: VersionCounts, to: VersionCounts, held: Duration) -> Verdict {
    let spec = &rollout.spec;
    let (old, new) = (from.error_rate(), to.error_rate());
    let limit = old + f64::from(spec.max_error_increase);
    let rates = format!(
        "{} errors {new:.1}% of {} requests, {} {old:.1}% of {}",
        spec.to, to.requests, spec.from, from.requests
    );
    if to.requests >= spec.min_requests && new > limit {
        return Verdict::RollBack(format!(
            "{rates}: more than {} points above",
            spec.max_error_increase
        ));
    }
    let interval = spec.interval.std();
    if to.requests < spec.min_requests {
        return Verdict::Hold(format!(
            "{} of the {} requests to {} a step needs ({rates})",
            to.requests, spec.min_requests, spec.to
        ));
    }
    if held < interval {
        let left = interval - held;
        return Verdict::Hold(format!("{rates}; {} ms of the step left", left.as_millis()));
    }
    Verdict::Promote(format!("{rates}, held {}", spec.interval))
}

/// A step's window: the counts since it opened, per replica incarnation.
#[derive(Debug)]
struct Window {
    /// Which step of which rollout, from when (`step_at`: a resume opens a new window).
    key: (u64, usize, u64),
    opened: Instant,
    /// Per (replica, incarnation): its sums when first seen in this window, and last seen.
    sums: HashMap<(NodeId, u64), ([ClusterTotals; 2], [ClusterTotals; 2])>,
    replicas: usize,
    streams: usize,
    verdict: String,
    /// When a decision about this step was last proposed (not again before it is applied, or a
    /// while has passed).
    proposed: Option<Instant>,
}

/// What a step's window counted per version.
#[derive(Debug, Default)]
struct WindowTotals {
    from: VersionCounts,
    to: VersionCounts,
    from_latency: Latency,
    to_latency: Latency,
}

/// The leader's windows, one per running rollout.
#[derive(Debug, Default)]
pub struct Judge {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    term: Option<u64>,
    windows: HashMap<String, Window>,
}

fn counts(now: &ClusterTotals, first: &ClusterTotals) -> VersionCounts {
    let (r1, e1) = now.requests_and_errors();
    let (r0, e0) = first.requests_and_errors();
    VersionCounts {
        requests: r1.saturating_sub(r0),
        errors: e1.saturating_sub(e0),
    }
}

fn totals_of(report: &StatsReport, cluster: &str) -> ClusterTotals {
    report
        .clusters
        .iter()
        .find(|c| c.cluster == cluster)
        .cloned()
        .unwrap_or_else(|| ClusterTotals {
            cluster: cluster.to_string(),
            ..ClusterTotals::default()
        })
}

impl Judge {
    /// Forgets every window: this node no longer leads.
    pub fn clear(&self) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.term = None;
        inner.windows.clear();
    }

    /// Takes in one round of reports (per member: its report, or none if it did not answer) for
    /// `rollout`, running now, while this node leads in `term`; returns the change to propose,
    /// if any.
    pub fn observe(
        &self,
        term: u64,
        rollout: &Rollout,
        reports: &[(NodeId, Option<StatsReport>)],
        now: Instant,
    ) -> Option<RolloutChange> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.term != Some(term) {
            inner.windows.clear();
            inner.term = Some(term);
        }
        let service = &rollout.spec.service;
        let key = (rollout.started_at, rollout.step, rollout.step_at);
        let w = inner
            .windows
            .entry(service.clone())
            .or_insert_with(|| Window::new(key, now));
        if w.key != key {
            *w = Window::new(key, now);
        }
        let clusters = [
            version_cluster(service, &rollout.spec.from),
            version_cluster(service, &rollout.spec.to),
        ];
        w.replicas = 0;
        w.streams = 0;
        for (id, report) in reports {
            let Some(report) = report else { continue };
            w.replicas += 1;
            w.streams += report.streams;
            let seen = [
                totals_of(report, &clusters[0]),
                totals_of(report, &clusters[1]),
            ];
            // A replica seen in this window before under another incarnation restarted within
            // it: everything its new incarnation counted is the window's.
            let restarted = w
                .sums
                .keys()
                .any(|(n, inc)| n == id && *inc != report.incarnation);
            w.sums
                .entry((*id, report.incarnation))
                .and_modify(|(_, last)| *last = seen.clone())
                .or_insert_with(|| match restarted {
                    true => (Default::default(), seen.clone()),
                    false => (seen.clone(), seen),
                });
        }
        let t = w.totals();
        let verdict = judge(rollout, t.from, t.to, now.duration_since(w.opened));
        w.verdict = verdict.to_string();
        let at_ms = concord_telemetry::unix_micros() / 1000;
        let change = match verdict {
            Verdict::Hold(_) => return None,
            Verdict::Promote(why) => RolloutChange::Promote {
                service: service.clone(),
                started_at: rollout.started_at,
                step: rollout.step,
                at_ms,
                why,
            },
            Verdict::RollBack(why) => RolloutChange::RollBack {
                service: service.clone(),
                started_at: rollout.started_at,
                step: rollout.step,
                at_ms,
                why,
            },
        };
        if w.proposed
            .is_some_and(|p| now.duration_since(p) < Duration::from_secs(2))
        {
            return None;
        }
        w.proposed = Some(now);
        Some(change)
    }

    /// Drops the windows of rollouts no longer running.
    pub fn retain(&self, running: &[&Rollout]) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .windows
            .retain(|s, _| running.iter().any(|r| r.spec.service == *s));
    }

    /// How each running rollout's step is judged now.
    pub fn progress(&self, running: &[&Rollout], now: Instant) -> Vec<StepProgress> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        running
            .iter()
            .filter(|r| r.phase == Phase::Running)
            .map(|r| {
                let w = inner.windows.get(&r.spec.service);
                let t = w.map(Window::totals).unwrap_or_default();
                StepProgress {
                    service: r.spec.service.clone(),
                    step: r.step,
                    weight: r.weight(),
                    judged_for_ms: w.map_or(0, |w| now.duration_since(w.opened).as_millis() as u64),
                    interval_ms: r.spec.interval.as_millis(),
                    from: t.from,
                    to: t.to,
                    from_latency: t.from_latency,
                    to_latency: t.to_latency,
                    replicas_reporting: w.map_or(0, |w| w.replicas),
                    stat_streams: w.map_or(0, |w| w.streams),
                    verdict: w.map_or_else(|| "not judged yet".into(), |w| w.verdict.clone()),
                }
            })
            .collect()
    }
}

impl Window {
    /// A window of step `key` opening at `now`, nothing counted yet.
    fn new(key: (u64, usize, u64), opened: Instant) -> Window {
        Window {
            key,
            opened,
            sums: HashMap::new(),
            replicas: 0,
            streams: 0,
            verdict: String::new(),
            proposed: None,
        }
    }

    /// The window's counts and request times per version, summed over replica incarnations.
    fn totals(&self) -> WindowTotals {
        let mut w = WindowTotals::default();
        for (first, last) in self.sums.values() {
            let f = counts(&last[0], &first[0]);
            let t = counts(&last[1], &first[1]);
            w.from.requests += f.requests;
            w.from.errors += f.errors;
            w.to.requests += t.requests;
            w.to.errors += t.errors;
            w.from_latency
                .add(&last[0].rq_time.since(&first[0].rq_time));
            w.to_latency.add(&last[1].rq_time.since(&first[1].rq_time));
        }
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_registry::services::RolloutSpec;

    fn rollout(step: usize, step_at: u64) -> Rollout {
        let spec: RolloutSpec = serde_json::from_value(serde_json::json!({
            "service": "echo", "from": "v1", "to": "v2", "interval": "10s",
            "min_requests": 20, "max_error_increase": 5
        }))
        .unwrap();
        Rollout {
            spec,
            phase: Phase::Running,
            step,
            started_at: 7,
            step_at,
            reason: None,
            events: Vec::new(),
        }
    }

    fn report(incarnation: u64, v1: (u64, u64), v2: (u64, u64)) -> StatsReport {
        // Every v1 request took 10 ms, every v2 one 100 ms.
        let c = |name: &str, (total, failed): (u64, u64), ms: f64| ClusterTotals {
            cluster: name.into(),
            grpc_total: total,
            grpc_failure: failed,
            rq_total: total,
            rq_5xx: 0,
            rq_time: Latency {
                samples: total,
                sum_us: total * ms as u64 * 1000,
                buckets: concord_api::LATENCY_BOUNDS_MS
                    .iter()
                    .map(|b| if *b >= ms { total } else { 0 })
                    .collect(),
            },
        };
        StatsReport {
            incarnation,
            streams: 1,
            messages: 1,
            clusters: vec![
                c("service_echo~v1", v1, 10.0),
                c("service_echo~v2", v2, 100.0),
            ],
            stage: None,
        }
    }

    fn counts(requests: u64, errors: u64) -> VersionCounts {
        VersionCounts { requests, errors }
    }

    #[test]
    fn the_verdict_holds_until_enough_requests_and_the_interval_then_promotes() {
        let r = rollout(0, 7);
        let s = Duration::from_secs;
        assert!(matches!(
            judge(&r, counts(100, 0), counts(19, 19), s(1)),
            Verdict::Hold(_)
        ));
        assert!(matches!(
            judge(&r, counts(100, 0), counts(20, 1), s(9)),
            Verdict::Hold(_)
        ));
        assert!(matches!(
            judge(&r, counts(100, 0), counts(20, 1), s(10)),
            Verdict::Promote(_)
        ));
        // Within the margin of the old version's own errors.
        assert!(matches!(
            judge(&r, counts(100, 10), counts(100, 15), s(10)),
            Verdict::Promote(_)
        ));
        let v = judge(&r, counts(100, 10), counts(100, 16), s(1));
        assert!(matches!(v, Verdict::RollBack(_)), "{v}");
        assert_eq!(
            v.to_string(),
            "rolling back: v2 errors 16.0% of 100 requests, v1 10.0% of 100: more than 5 points above"
        );
        // Too few requests to promote after the interval: it holds.
        assert!(matches!(
            judge(&r, counts(0, 0), counts(3, 0), s(60)),
            Verdict::Hold(_)
        ));
    }

    #[test]
    fn windows_count_from_when_they_open_per_incarnation_and_reopen_on_a_new_step_or_term() {
        let j = Judge::default();
        let t0 = Instant::now();
        let r = rollout(0, 7);
        // Totals before the window are not counted.
        let none = j.observe(1, &r, &[(1, Some(report(11, (500, 0), (50, 0))))], t0);
        assert_eq!(none, None);
        // Replica 1 counts 10 more v2 errors; replica 2 (seen now) only its growth from now on.
        let round = [
            (1, Some(report(11, (600, 0), (60, 10)))),
            (2, Some(report(21, (1000, 0), (1000, 1000)))),
            (3, None),
        ];
        assert_eq!(j.observe(1, &r, &round, t0 + Duration::from_secs(1)), None);
        let p = &j.progress(&[&r], t0 + Duration::from_secs(1))[0];
        assert_eq!((p.from, p.to), (counts(100, 0), counts(10, 10)));
        // Request times count over the same window, apart per version.
        assert_eq!((p.from_latency.samples, p.to_latency.samples), (100, 10));
        assert_eq!(p.to_latency.mean_ms(), Some(100.0));
        let p99 = p.to_latency.quantile_ms(0.99).unwrap();
        assert!((50.0..=100.0).contains(&p99), "{p99}");
        assert!(p.from_latency.quantile_ms(0.99).unwrap() <= 10.0);
        assert_eq!((p.replicas_reporting, p.stat_streams), (2, 2));
        // Replica 1 restarted (new incarnation, from zero) and its Envoy moved to replica 2:
        // both keep counting, the old incarnation keeps what it had.
        let round = [
            (1, Some(report(12, (0, 0), (5, 5)))),
            (2, Some(report(21, (1000, 0), (1010, 1010)))),
        ];
        let change = j.observe(1, &r, &round, t0 + Duration::from_secs(2));
        let p = &j.progress(&[&r], t0 + Duration::from_secs(2))[0];
        assert_eq!(p.to, counts(25, 25));
        assert_eq!(p.to_latency.samples, 25);
        assert!(
            matches!(
                &change,
                Some(RolloutChange::RollBack {
                    step: 0,
                    started_at: 7,
                    ..
                })
            ),
            "{change:?}"
        );
        // Proposed once, not again at once.
        assert_eq!(j.observe(1, &r, &round, t0 + Duration::from_secs(3)), None);
        // A new term opens a new window: nothing counted yet.
        assert_eq!(j.observe(2, &r, &round, t0 + Duration::from_secs(4)), None);
        assert_eq!(j.progress(&[&r], t0)[0].to, counts(0, 0));
        // So does the next step.
        let next = rollout(1, 9);
        j.observe(2, &next, &round, t0 + Duration::from_secs(5));
        let p = &j.progress(&[&next], t0 + Duration::from_secs(5))[0];
        assert_eq!((p.step, p.to, p.judged_for_ms), (1, counts(0, 0), 0));
    }
}
