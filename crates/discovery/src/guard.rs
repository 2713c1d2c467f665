//! The mass-removal guard (DESIGN rule 7): an answer that would remove more than a configured
//! share of the discovered builders removes only the builders that have been missing from every
//! answer for a configured time. A zone reload, a DNS failover or a truncated answer that
//! leaves a name empty for a moment is held back; a removal that persists goes through.
//!
//! It counts time, not polls: at a 100 ms interval, three polls are 300 ms — shorter than a
//! zone reload. Continuity is tracked per builder, so an answer that flaps between two halves
//! removes neither, and a fleet that drains one builder at a time loses each one `hold` after
//! it left. Pure: the poller feeds it each successful poll's answer and the time.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Guard settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GuardConfig {
    /// Removing more than this share (0.0–1.0) of the current builders is a large removal.
    pub max_removal_share: f64,
    /// How long a builder must have been missing from every answer before a large removal takes
    /// it out; zero turns the guard off.
    pub hold: Duration,
}

impl GuardConfig {
    /// The default hold: longer than a zone reload or a nameserver restart, short enough that
    /// a real mass removal lands within seconds.
    pub const DEFAULT_HOLD: Duration = Duration::from_secs(5);
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            max_removal_share: 0.5,
            hold: Self::DEFAULT_HOLD,
        }
    }
}

/// What the guard says about one answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Apply every removal.
    Apply,
    /// A large removal: keep the builders in [`Held::kept`], apply the rest.
    Hold(Held),
}

/// A large removal the guard holds (in part).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// Builders the answer lacks that stay for now: missing for less than the hold.
    pub kept: BTreeSet<String>,
    /// Builders the answer would remove in all (kept or not).
    pub removals: usize,
    /// How long the longest-missing kept builder has been missing.
    pub missing_for: Duration,
    /// How long a builder must be missing before it is removed.
    pub needed: Duration,
}

/// The guard's memory: since when each current builder has been missing from the answers.
#[derive(Debug, Default)]
pub struct Guard {
    config: GuardConfig,
    missing: BTreeMap<String, Instant>,
}

impl Guard {
    /// A guard with `config`.
    pub fn new(config: GuardConfig) -> Self {
        Guard {
            config,
            missing: BTreeMap::new(),
        }
    }

    /// Judges an answer, seen at `now`, that would turn `current` into `proposed`.
    /// Only the ids count: builders, or the endpoints of one service.
    pub fn judge<C, P>(
        &mut self,
        current: &BTreeMap<String, C>,
        proposed: &BTreeMap<String, P>,
        now: Instant,
    ) -> Verdict {
        let gone = |id: &String| current.contains_key(id) && !proposed.contains_key(id);
        // A builder back in the answer (or no longer in the registry) breaks its streak.
        self.missing.retain(|id, _| gone(id));
        for id in current.keys().filter(|id| gone(id)) {
            self.missing.entry(id.clone()).or_insert(now);
        }
        let removals = self.missing.len();
        let large = !current.is_empty()
            && removals as f64 > self.config.max_removal_share * current.len() as f64;
        if !large || self.config.hold.is_zero() {
            return Verdict::Apply;
        }
        let young: Vec<(&String, Duration)> = self
            .missing
            .iter()
            .map(|(id, since)| (id, now.saturating_duration_since(*since)))
            .filter(|(_, d)| *d < self.config.hold)
            .collect();
        let Some(missing_for) = young.iter().map(|(_, d)| *d).max() else {
            return Verdict::Apply;
        };
        Verdict::Hold(Held {
            kept: young.into_iter().map(|(id, _)| id.clone()).collect(),
            removals,
            missing_for,
            needed: self.config.hold,
        })
    }

    /// Forgets what was missing (when this replica starts leading: a new term's poller vouches
    /// only for the answers it saw itself).
    pub fn reset(&mut self) {
        self.missing.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_registry::{Builder, Source};
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    fn set(ids: &[&str]) -> BTreeMap<String, Builder> {
        ids.iter()
            .map(|id| {
                let b = Builder {
                    id: id.to_string(),
                    addr: "10.0.0.1:1".parse().unwrap(),
                    sni: format!("{id}.x.test"),
                    region: String::new(),
                    labels: Default::default(),
                    source: Source::Dns,
                };
                (id.to_string(), b)
            })
            .collect()
    }

    fn kept(v: &Verdict) -> Vec<&str> {
        match v {
            Verdict::Apply => vec![],
            Verdict::Hold(h) => h.kept.iter().map(String::as_str).collect(),
        }
    }

    fn guard(hold_ms: u64) -> Guard {
        Guard::new(GuardConfig {
            max_removal_share: 0.5,
            hold: Duration::from_millis(hold_ms),
        })
    }

    #[test]
    fn small_changes_apply_at_once() {
        let mut g = Guard::new(GuardConfig::default());
        let t = Instant::now();
        let cur = set(&["a", "b", "c", "d"]);
        assert_eq!(g.judge(&cur, &set(&["a", "b", "c"]), t), Verdict::Apply);
        assert_eq!(
            g.judge(&cur, &set(&["a", "b"]), t),
            Verdict::Apply,
            "half is not more than half"
        );
        assert_eq!(
            g.judge(&cur, &set(&["a", "b", "c", "d", "e"]), t),
            Verdict::Apply
        );
        assert_eq!(g.judge(&set(&[]), &set(&["a"]), t), Verdict::Apply);
    }

    #[test]
    fn a_short_empty_answer_is_held_and_forgotten() {
        let mut g = guard(1000);
        let t = Instant::now();
        let cur = set(&["a", "b", "c", "d"]);
        let v = g.judge(&cur, &set(&[]), t);
        assert_eq!(
            v,
            Verdict::Hold(Held {
                kept: ["a", "b", "c", "d"].map(String::from).into(),
                removals: 4,
                missing_for: Duration::ZERO,
                needed: 1000 * MS,
            })
        );
        assert!(
            matches!(g.judge(&cur, &set(&[]), t + 900 * MS), Verdict::Hold(Held { missing_for, .. }) if missing_for == 900 * MS)
        );
        // Back before the hold ran out: forgotten, and a new empty answer starts over.
        assert_eq!(g.judge(&cur, &cur, t + 950 * MS), Verdict::Apply);
        assert_eq!(kept(&g.judge(&cur, &set(&[]), t + 1100 * MS)).len(), 4);
        assert_eq!(kept(&g.judge(&cur, &set(&[]), t + 2000 * MS)).len(), 4);
    }

    #[test]
    fn a_removal_missing_for_the_hold_applies() {
        let mut g = guard(1000);
        let t = Instant::now();
        let cur = set(&["a", "b", "c", "d"]);
        let smaller = set(&["a"]);
        assert_eq!(kept(&g.judge(&cur, &smaller, t)), ["b", "c", "d"]);
        assert_eq!(
            kept(&g.judge(&cur, &smaller, t + 999 * MS)),
            ["b", "c", "d"]
        );
        assert_eq!(g.judge(&cur, &smaller, t + 1000 * MS), Verdict::Apply);
    }

    #[test]
    fn an_answer_flapping_between_halves_removes_only_what_neither_half_has() {
        let mut g = guard(1000);
        let t = Instant::now();
        let cur = set(&["a", "b", "c", "d", "e", "f"]);
        for i in 0..50u32 {
            let (answer, other_half) = if i % 2 == 0 {
                (set(&["a", "b"]), ["c", "d"])
            } else {
                (set(&["c", "d"]), ["a", "b"])
            };
            let v = g.judge(&cur, &answer, t + i * 100 * MS);
            let mut want = other_half.to_vec();
            // e and f are in no answer: held for the hold, then let go.
            if i < 10 {
                want.extend(["e", "f"]);
                want.sort();
            }
            assert_eq!(kept(&v), want, "poll {i}: {v:?}");
        }
    }

    #[test]
    fn builders_leaving_at_different_times_each_go_after_the_hold() {
        let mut g = guard(1000);
        let t = Instant::now();
        let cur = set(&["a", "b", "c", "d"]);
        assert_eq!(kept(&g.judge(&cur, &set(&["a"]), t)), ["b", "c", "d"]);
        assert_eq!(
            kept(&g.judge(&cur, &set(&[]), t + 500 * MS)),
            ["a", "b", "c", "d"]
        );
        // At 1000 ms b, c and d have been gone for the hold; a only for 500 ms.
        assert_eq!(kept(&g.judge(&cur, &set(&[]), t + 1000 * MS)), ["a"]);
        // They are removed; a, the last one, goes once it has been gone for the hold.
        let cur = set(&["a"]);
        assert_eq!(kept(&g.judge(&cur, &set(&[]), t + 1200 * MS)), ["a"]);
        assert_eq!(g.judge(&cur, &set(&[]), t + 1500 * MS), Verdict::Apply);
    }

    #[test]
    fn reset_restarts_the_clock_and_zero_turns_the_guard_off() {
        let mut g = guard(1000);
        let t = Instant::now();
        let cur = set(&["a", "b"]);
        assert_eq!(kept(&g.judge(&cur, &set(&[]), t)).len(), 2);
        g.reset();
        assert_eq!(kept(&g.judge(&cur, &set(&[]), t + 1500 * MS)).len(), 2);
        let mut off = guard(0);
        assert_eq!(off.judge(&cur, &set(&[]), t), Verdict::Apply);
    }

    proptest! {
        /// Whatever the answers and their timing, a builder is removed only by a small removal
        /// or after it has been missing from every answer for the hold; the guard holds nothing
        /// but current builders the answer lacks.
        #[test]
        fn kept_builders_are_exactly_the_young_missing_ones_of_a_large_removal(
            polls in proptest::collection::vec(
                (proptest::collection::btree_set(0u8..6, 0..6), 0u64..600),
                1..40,
            ),
        ) {
            let all: Vec<String> = (0..6).map(|i| format!("b{i}")).collect();
            let ids: Vec<&str> = all.iter().map(String::as_str).collect();
            let cur = set(&ids);
            let mut g = guard(1000);
            let t0 = Instant::now();
            let mut t = t0;
            let mut since: BTreeMap<String, Instant> = BTreeMap::new();
            for (present, step) in polls {
                t += Duration::from_millis(step);
                let answer: BTreeMap<_, _> = cur
                    .iter()
                    .filter(|(id, _)| present.contains(&id[1..].parse::<u8>().unwrap()))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                since.retain(|id, _| !answer.contains_key(id));
                for id in cur.keys().filter(|id| !answer.contains_key(*id)) {
                    since.entry(id.clone()).or_insert(t);
                }
                let v = g.judge(&cur, &answer, t);
                let large = since.len() * 2 > cur.len();
                let young: BTreeSet<String> = since
                    .iter()
                    .filter(|(_, s)| t.duration_since(**s) < 1000 * MS)
                    .map(|(id, _)| id.clone())
                    .collect();
                match v {
                    Verdict::Apply => prop_assert!(!large || young.is_empty()),
                    Verdict::Hold(h) => {
                        prop_assert!(large);
                        prop_assert_eq!(&h.kept, &young);
                        prop_assert_eq!(h.removals, since.len());
                        prop_assert!(h.missing_for < h.needed);
                    }
                }
            }
        }
    }
}
