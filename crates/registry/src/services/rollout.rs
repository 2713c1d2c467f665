//! Release rollouts (issue 15): a service's traffic moves from one version of its endpoints (those
//! whose label `label` is `from`) to another (`to`) in weighted steps, each held for an interval
//! and judged on Envoy's own stats (DESIGN rule 13). A rollout is replicated state: starting it,
//! every step, a rollback and an operator's pause, resume or abort are committed entries
//! ([`RolloutChange`]), and the leader alone decides steps (rule 11), fenced by the rollout's
//! start index and step, so a deposed leader's late decision changes nothing and a new leader
//! resumes at the step the log holds: never repeating or skipping one.
//!
//! While a rollout exists, Envoys get two more clusters for the service, `<service>~<from>` and
//! `<service>~<to>` (the endpoints of each version), and every route to the service is split
//! between them by the step's weight ([`routed`]). Separate clusters give Envoy's per-cluster
//! stats per version, which is what the steps are judged on.

use super::{Desired, Duration, Endpoint, Route, Service, WeightedService};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The steps of a rollout when none are given: the new version's share of traffic, in percent.
pub const DEFAULT_STEPS: [u32; 4] = [10, 25, 50, 100];
/// The most steps a rollout may have.
pub const MOST_STEPS: usize = 20;
/// The shortest step interval: Envoys flush their stats every few seconds.
pub const SHORTEST_INTERVAL_MS: u64 = 1_000;
/// The longest step interval.
pub const LONGEST_INTERVAL_MS: u64 = 24 * 3_600_000;
/// The most requests a step may be asked to wait for.
pub const MOST_MIN_REQUESTS: u64 = 10_000_000;
/// Events kept per rollout (its start, steps, rollback, operator actions).
pub const KEPT_EVENTS: usize = 64;

fn version_label() -> String {
    "version".into()
}
fn default_steps() -> Vec<u32> {
    DEFAULT_STEPS.to_vec()
}
fn one_minute() -> Duration {
    Duration::from_secs(60)
}
fn five() -> u32 {
    5
}
fn hundred() -> u64 {
    100
}

/// What an operator asks for (`concord rollout start`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutSpec {
    /// The service whose traffic moves.
    pub service: String,
    /// The endpoint label that names a version.
    #[serde(default = "version_label")]
    pub label: String,
    /// The version traffic moves from (endpoints whose label has this value).
    pub from: String,
    /// The version traffic moves to.
    pub to: String,
    /// The new version's share at each step, in percent: increasing, the last one 100.
    #[serde(default = "default_steps")]
    pub steps: Vec<u32>,
    /// How long each step is held before it is judged.
    #[serde(default = "one_minute")]
    pub interval: Duration,
    /// How many percentage points the new version's error rate may be above the old one's.
    #[serde(default = "five")]
    pub max_error_increase: u32,
    /// The fewest requests to the new version a step needs before it is promoted; a rollback
    /// needs as many too, so a handful of early errors does not decide.
    #[serde(default = "hundred")]
    pub min_requests: u64,
}

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Steps are judged and promoted by the leader.
    Running,
    /// Held at its step by an operator.
    Paused,
    /// Every step passed: all traffic goes to the new version.
    Promoted,
    /// The new version failed a step: all traffic goes back to the old one until an operator
    /// starts a new rollout.
    RolledBack,
    /// An operator stopped it: all traffic goes to the old version.
    Aborted,
}

impl Phase {
    /// True while steps can still change (running or paused).
    pub fn is_active(self) -> bool {
        matches!(self, Phase::Running | Phase::Paused)
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Running => "running",
            Phase::Paused => "paused",
            Phase::Promoted => "promoted",
            Phase::RolledBack => "rolled back",
            Phase::Aborted => "aborted",
        })
    }
}

/// Something that happened to a rollout, as committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutEvent {
    /// The log index of the entry.
    pub index: u64,
    /// When the deciding replica committed it (Unix milliseconds, its clock).
    pub at_ms: u64,
    /// What happened (`step 2: 25%`, `rolled back: …`).
    pub what: String,
}

/// A rollout as the registry holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    /// What was asked.
    pub spec: RolloutSpec,
    /// Where it stands.
    pub phase: Phase,
    /// The current step (an index into `spec.steps`).
    pub step: usize,
    /// The log index of its start: it names this rollout, so a decision about an earlier
    /// rollout of the same service never changes this one.
    pub started_at: u64,
    /// The log index at which the current step (or phase) began.
    pub step_at: u64,
    /// Why it rolled back or was aborted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What happened to it, oldest first (the last [`KEPT_EVENTS`]).
    #[serde(default)]
    pub events: Vec<RolloutEvent>,
}

impl Rollout {
    /// The new version's share of traffic now, in percent.
    pub fn weight(&self) -> u32 {
        match self.phase {
            Phase::Running | Phase::Paused => self.spec.steps.get(self.step).copied().unwrap_or(0),
            Phase::Promoted => 100,
            Phase::RolledBack | Phase::Aborted => 0,
        }
    }

    /// Whether a leader's decision about step `step` of the rollout started at `started_at`
    /// still applies: the rollout is that one, running, at that step (the fence).
    fn at(&self, started_at: u64, step: usize) -> bool {
        self.started_at == started_at && self.phase == Phase::Running && self.step == step
    }

    fn record(&mut self, index: u64, at_ms: u64, what: String) {
        self.events.push(RolloutEvent { index, at_ms, what });
        if self.events.len() > KEPT_EVENTS {
            let extra = self.events.len() - KEPT_EVENTS;
            self.events.drain(..extra);
        }
    }
}

/// A change to rollouts, committed through Raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum RolloutChange {
    /// Starts a rollout at its first step (an operator).
    Start {
        /// What is asked.
        spec: RolloutSpec,
        /// When (Unix ms).
        at_ms: u64,
    },
    /// Holds a running rollout at its step (an operator).
    Pause {
        /// The service.
        service: String,
        /// When (Unix ms).
        at_ms: u64,
    },
    /// Lets a paused rollout go on from its step (an operator).
    Resume {
        /// The service.
        service: String,
        /// When (Unix ms).
        at_ms: u64,
    },
    /// Stops a running or paused rollout, sending all traffic to the old version (an operator).
    Abort {
        /// The service.
        service: String,
        /// When (Unix ms).
        at_ms: u64,
    },
    /// The leader judged step `step` of the rollout started at `started_at` good: the next
    /// step, or promoted after the last. Applies only if the rollout is still running there.
    Promote {
        /// The service.
        service: String,
        /// The rollout's start index.
        started_at: u64,
        /// The step judged.
        step: usize,
        /// When (Unix ms).
        at_ms: u64,
        /// What it was judged on.
        why: String,
    },
    /// The leader judged step `step` bad: all traffic back to the old version. Applies only if
    /// the rollout is still running there.
    RollBack {
        /// The service.
        service: String,
        /// The rollout's start index.
        started_at: u64,
        /// The step judged.
        step: usize,
        /// When (Unix ms).
        at_ms: u64,
        /// Why.
        why: String,
    },
}

impl RolloutChange {
    /// The service the change is about.
    pub fn service(&self) -> &str {
        match self {
            RolloutChange::Start { spec, .. } => &spec.service,
            RolloutChange::Pause { service, .. }
            | RolloutChange::Resume { service, .. }
            | RolloutChange::Abort { service, .. }
            | RolloutChange::Promote { service, .. }
            | RolloutChange::RollBack { service, .. } => service,
        }
    }

    /// A few words for people (the status page's list of changes).
    pub fn summary(&self) -> String {
        let s = self.service();
        match self {
            RolloutChange::Start { spec, .. } => {
                format!("rollout of {s} {} → {} started", spec.from, spec.to)
            }
            RolloutChange::Pause { .. } => format!("rollout of {s} paused"),
            RolloutChange::Resume { .. } => format!("rollout of {s} resumed"),
            RolloutChange::Abort { .. } => format!("rollout of {s} aborted"),
            RolloutChange::Promote { step, .. } => {
                format!("rollout of {s} passed step {}", step + 1)
            }
            RolloutChange::RollBack { .. } => format!("rollout of {s} rolled back"),
        }
    }
}

/// Rollouts by service.
pub type Rollouts = BTreeMap<String, Rollout>;

/// One service's registered endpoints by id.
pub type ServiceEndpoints = imbl::OrdMap<String, Arc<Endpoint>>;

/// Why a rollout change is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RolloutProblem {
    /// The spec is out of range or names what does not exist.
    Invalid(String),
    /// The service has a rollout running or paused.
    InProgress(Phase),
    /// The service has no rollout (or none the change applies to).
    NoRollout,
    /// The rollout is not in a phase the change applies to.
    WrongPhase(Phase),
}

fn version_ok(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 63
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// The endpoints of `service`'s version `value` of `label`.
fn version_endpoints(endpoints: Option<&ServiceEndpoints>, label: &str, value: &str) -> usize {
    endpoints
        .into_iter()
        .flat_map(|m| m.values())
        .filter(|e| e.labels.get(label).map(String::as_str) == Some(value))
        .count()
}

/// Checks a spec against the state it would start in: every problem in one message.
pub fn check_spec(
    spec: &RolloutSpec,
    desired: &Desired,
    endpoints: Option<&ServiceEndpoints>,
) -> Result<(), String> {
    let mut problems = Vec::new();
    if !desired.services.contains_key(&spec.service) {
        problems.push(format!(
            "no service {:?}: `concord apply` one first (`concord get services` lists them)",
            spec.service
        ));
    }
    if spec.label.is_empty() || spec.label.len() > 63 {
        problems.push(format!("label {:?} must be 1-63 characters", spec.label));
    }
    for (what, v) in [("from", &spec.from), ("to", &spec.to)] {
        if !version_ok(v) {
            problems.push(format!(
                "{what} version {v:?} must be 1-63 lower-case letters, digits, '-' or '_'"
            ));
        }
    }
    if spec.from == spec.to {
        problems.push(format!("from and to are both {:?}", spec.from));
    }
    let steps = &spec.steps;
    if steps.is_empty() || steps.len() > MOST_STEPS {
        problems.push(format!("{} steps: give 1 to {MOST_STEPS}", steps.len()));
    } else if steps.iter().any(|s| !(1..=100).contains(s))
        || steps.windows(2).any(|w| w[0] >= w[1])
        || steps.last() != Some(&100)
    {
        problems.push(format!(
            "steps {steps:?} must be percentages of 1-100, increasing, ending at 100"
        ));
    }
    let ms = spec.interval.as_millis();
    if !(SHORTEST_INTERVAL_MS..=LONGEST_INTERVAL_MS).contains(&ms) {
        problems.push(format!("interval {} is outside 1s-24h", spec.interval));
    }
    if spec.max_error_increase > 100 {
        problems.push(format!(
            "max_error_increase {} is outside 0-100 (percentage points)",
            spec.max_error_increase
        ));
    }
    if !(1..=MOST_MIN_REQUESTS).contains(&spec.min_requests) {
        problems.push(format!(
            "min_requests {} is outside 1-{MOST_MIN_REQUESTS}",
            spec.min_requests
        ));
    }
    if problems.is_empty() {
        for v in [&spec.from, &spec.to] {
            if version_endpoints(endpoints, &spec.label, v) == 0 {
                problems.push(format!(
                    "no registered endpoint of service {:?} has {}={v}: register the \
                     version's instances first (`concord endpoints list {}`)",
                    spec.service, spec.label, spec.service
                ));
            }
        }
    }
    match problems.is_empty() {
        true => Ok(()),
        false => Err(problems.join("; ")),
    }
}

/// Applies `change` (the entry at `index`) to `rollouts`: Ok(true) when it changed something,
/// Ok(false) for a leader's decision about a step the rollout already left (fenced), Err when
/// refused. `desired` and `endpoints` are the state it applies to (for a start).
pub fn apply(
    rollouts: &mut Rollouts,
    index: u64,
    change: &RolloutChange,
    desired: &Desired,
    endpoints: Option<&ServiceEndpoints>,
) -> Result<bool, RolloutProblem> {
    let service = change.service();
    if let RolloutChange::Start { spec, at_ms } = change {
        if let Some(r) = rollouts.get(service)
            && r.phase.is_active()
        {
            return Err(RolloutProblem::InProgress(r.phase));
        }
        check_spec(spec, desired, endpoints).map_err(RolloutProblem::Invalid)?;
        let mut r = Rollout {
            spec: spec.clone(),
            phase: Phase::Running,
            step: 0,
            started_at: index,
            step_at: index,
            reason: None,
            events: Vec::new(),
        };
        r.record(
            index,
            *at_ms,
            format!(
                "started: {} → {}, step 1: {}%",
                spec.from, spec.to, spec.steps[0]
            ),
        );
        rollouts.insert(service.to_string(), r);
        return Ok(true);
    }
    let r = rollouts.get_mut(service).ok_or(RolloutProblem::NoRollout)?;
    match change {
        RolloutChange::Start { .. } => unreachable!("handled above"),
        RolloutChange::Pause { at_ms, .. } => {
            if r.phase != Phase::Running {
                return Err(RolloutProblem::WrongPhase(r.phase));
            }
            r.phase = Phase::Paused;
            r.record(index, *at_ms, format!("paused at step {}", r.step + 1));
        }
        RolloutChange::Resume { at_ms, .. } => {
            if r.phase != Phase::Paused {
                return Err(RolloutProblem::WrongPhase(r.phase));
            }
            // The step is judged afresh from here: its interval and stats start again.
            r.phase = Phase::Running;
            r.step_at = index;
            r.record(index, *at_ms, format!("resumed at step {}", r.step + 1));
        }
        RolloutChange::Abort { at_ms, .. } => {
            if !r.phase.is_active() {
                return Err(RolloutProblem::WrongPhase(r.phase));
            }
            r.phase = Phase::Aborted;
            r.step_at = index;
            r.reason = Some("aborted by an operator".into());
            r.record(index, *at_ms, format!("aborted at step {}", r.step + 1));
        }
        RolloutChange::Promote {
            started_at,
            step,
            at_ms,
            why,
            ..
        } => {
            if !r.at(*started_at, *step) {
                return Ok(false);
            }
            r.step_at = index;
            if r.step + 1 >= r.spec.steps.len() {
                r.phase = Phase::Promoted;
                r.record(index, *at_ms, format!("promoted to 100%: {why}"));
            } else {
                r.step += 1;
                let w = r.spec.steps[r.step];
                r.record(index, *at_ms, format!("step {}: {w}% ({why})", r.step + 1));
            }
        }
        RolloutChange::RollBack {
            started_at,
            step,
            at_ms,
            why,
            ..
        } => {
            if !r.at(*started_at, *step) {
                return Ok(false);
            }
            r.phase = Phase::RolledBack;
            r.step_at = index;
            r.reason = Some(why.clone());
            r.record(
                index,
                *at_ms,
                format!("rolled back at step {}: {why}", step + 1),
            );
        }
    }
    Ok(true)
}

/// The name of the service (and cluster) holding version `version` of `service` while a
/// rollout of it exists. `~` is not allowed in service names, so it names nothing else.
pub fn version_service(service: &str, version: &str) -> String {
    format!("{service}~{version}")
}

/// The Envoy cluster of version `version` of `service` while a rollout of it exists (the
/// services half's clusters are `service_<name>`), whose stats judge the rollout.
pub fn version_cluster(service: &str, version: &str) -> String {
    cluster_name(&version_service(service, version))
}

/// The Envoy cluster (and load assignment) name of service `service`: `service_<name>`. One
/// definition for the resources (`concord_xds::services`) and the stats that judge rollouts.
pub fn cluster_name(service: &str) -> String {
    format!("service_{service}")
}

/// The desired state Envoys get: `desired` with, for every rollout of an existing service, the
/// service's two version services (its settings, no DNS or fixed endpoints: the versions are
/// registered endpoints) and every route to the service split between them by the rollout's
/// weight. `desired` itself when there are no rollouts.
pub fn routed(desired: &Arc<Desired>, rollouts: &Rollouts) -> Arc<Desired> {
    let live: Vec<&Rollout> = rollouts
        .values()
        .filter(|r| desired.services.contains_key(&r.spec.service))
        .collect();
    if live.is_empty() {
        return desired.clone();
    }
    let mut d = Desired::clone(desired);
    for r in &live {
        let base: &Service = &desired.services[&r.spec.service];
        for v in [&r.spec.from, &r.spec.to] {
            let mut s = base.clone();
            s.dns = None;
            s.endpoints = Vec::new();
            d.services.insert(version_service(&r.spec.service, v), s);
        }
    }
    let by_service: BTreeMap<&str, &Rollout> =
        live.iter().map(|r| (r.spec.service.as_str(), *r)).collect();
    for table in d.route_tables.values_mut() {
        for vh in &mut table.virtual_hosts {
            for route in &mut vh.routes {
                split(route, &by_service);
            }
        }
    }
    Arc::new(d)
}

/// Splits `route`'s services that are rolled out between their two versions.
fn split(route: &mut Route, rollouts: &BTreeMap<&str, &Rollout>) {
    let targets: Vec<WeightedService> = match &route.service {
        Some(s) => vec![WeightedService {
            service: s.clone(),
            weight: 100,
        }],
        None => route.weighted.clone(),
    };
    if !targets
        .iter()
        .any(|t| rollouts.contains_key(t.service.as_str()))
    {
        return;
    }
    // Weights are relative (Envoy sums them): scaling every one by 100 keeps a split exact.
    let mut out: Vec<WeightedService> = Vec::new();
    for t in targets {
        match rollouts.get(t.service.as_str()) {
            None => out.push(WeightedService {
                service: t.service,
                weight: t.weight * 100,
            }),
            Some(r) => {
                let w = r.weight();
                for (v, share) in [(&r.spec.from, 100 - w), (&r.spec.to, w)] {
                    out.push(WeightedService {
                        service: version_service(&t.service, v),
                        weight: t.weight * share,
                    });
                }
            }
        }
    }
    out.retain(|t| t.weight > 0);
    // The smallest equal weights: what Envoy shows reads as the split.
    let gcd = out.iter().fold(0, |g, t| gcd(g, t.weight)).max(1);
    for t in &mut out {
        t.weight /= gcd;
    }
    if out.len() == 1 {
        route.service = Some(out.remove(0).service);
        route.weighted = Vec::new();
    } else {
        route.service = None;
        route.weighted = out;
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    match b {
        0 => a,
        b => gcd(b, a % b),
    }
}

/// The registered endpoints of the version services of `rollout`: `(version service, its
/// endpoints)` for `from` and `to`.
pub fn version_endpoints_of(
    rollout: &Rollout,
    endpoints: Option<&ServiceEndpoints>,
) -> [(String, ServiceEndpoints); 2] {
    let of = |v: &String| {
        (
            version_service(&rollout.spec.service, v),
            endpoints
                .into_iter()
                .flat_map(|m| m.iter())
                .filter(|(_, e)| e.labels.get(&rollout.spec.label) == Some(v))
                .map(|(id, e)| (id.clone(), e.clone()))
                .collect(),
        )
    };
    [of(&rollout.spec.from), of(&rollout.spec.to)]
}

#[cfg(test)]
mod tests;
