//! The mass-removal guard (DESIGN rule 7): a poll that would remove more than a configured share
//! of the discovered builders is applied only when the same answer repeats over a configured
//! number of consecutive polls. One-off empty or truncated answers are held back; a removal
//! that persists goes through. Pure: the poller feeds it each poll's proposed set.

use concord_registry::Builder;
use std::collections::BTreeMap;

/// Guard settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GuardConfig {
    /// Removing more than this share (0.0–1.0) of the current builders needs confirmation.
    pub max_removal_share: f64,
    /// Consecutive identical polls that confirm a large removal (including the first).
    pub confirmations: u32,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            max_removal_share: 0.5,
            confirmations: 3,
        }
    }
}

/// What the guard says about one poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Apply it.
    Apply,
    /// Hold it: a large removal seen `seen` times of the `needed`.
    Hold {
        /// Builders it would remove.
        removals: usize,
        /// Consecutive polls with this answer so far.
        seen: u32,
        /// Needed to apply.
        needed: u32,
    },
}

/// The guard's memory: the large removal it is counting, if any.
#[derive(Debug, Default)]
pub struct Guard {
    config: GuardConfig,
    pending: Option<(BTreeMap<String, Builder>, u32)>,
}

impl Guard {
    /// A guard with `config`.
    pub fn new(config: GuardConfig) -> Self {
        Guard {
            config,
            pending: None,
        }
    }

    /// Judges a poll that would turn `current` into `proposed`.
    pub fn judge(
        &mut self,
        current: &BTreeMap<String, Builder>,
        proposed: &BTreeMap<String, Builder>,
    ) -> Verdict {
        let removals = current
            .keys()
            .filter(|k| !proposed.contains_key(*k))
            .count();
        let large = !current.is_empty()
            && removals as f64 > self.config.max_removal_share * current.len() as f64;
        if !large || self.config.confirmations <= 1 {
            self.pending = None;
            return Verdict::Apply;
        }
        let seen = match &mut self.pending {
            Some((set, n)) if set == proposed => {
                *n += 1;
                *n
            }
            _ => {
                self.pending = Some((proposed.clone(), 1));
                1
            }
        };
        if seen >= self.config.confirmations {
            self.pending = None;
            Verdict::Apply
        } else {
            Verdict::Hold {
                removals,
                seen,
                needed: self.config.confirmations,
            }
        }
    }

    /// Forgets a pending removal (after a poll error, or on losing leadership).
    pub fn reset(&mut self) {
        self.pending = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_registry::Source;

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

    #[test]
    fn small_changes_apply_at_once() {
        let mut g = Guard::new(GuardConfig::default());
        let cur = set(&["a", "b", "c", "d"]);
        assert_eq!(g.judge(&cur, &set(&["a", "b", "c"])), Verdict::Apply);
        assert_eq!(
            g.judge(&cur, &set(&["a", "b", "c", "d", "e"])),
            Verdict::Apply
        );
        assert_eq!(g.judge(&set(&[]), &set(&["a"])), Verdict::Apply);
    }

    #[test]
    fn one_off_empty_answer_is_held() {
        let mut g = Guard::new(GuardConfig::default());
        let cur = set(&["a", "b", "c", "d"]);
        assert!(matches!(
            g.judge(&cur, &set(&[])),
            Verdict::Hold {
                seen: 1,
                needed: 3,
                removals: 4
            }
        ));
        // The next poll is back to normal: the empty answer is forgotten.
        assert_eq!(g.judge(&cur, &cur), Verdict::Apply);
        assert!(matches!(
            g.judge(&cur, &set(&[])),
            Verdict::Hold { seen: 1, .. }
        ));
    }

    #[test]
    fn persistent_removal_applies_after_confirmations() {
        let mut g = Guard::new(GuardConfig::default());
        let cur = set(&["a", "b", "c", "d"]);
        let smaller = set(&["a"]);
        assert!(matches!(
            g.judge(&cur, &smaller),
            Verdict::Hold { seen: 1, .. }
        ));
        assert!(matches!(
            g.judge(&cur, &smaller),
            Verdict::Hold { seen: 2, .. }
        ));
        assert_eq!(g.judge(&cur, &smaller), Verdict::Apply);
        // A different large removal restarts the count.
        assert!(matches!(
            g.judge(&cur, &set(&["b"])),
            Verdict::Hold { seen: 1, .. }
        ));
    }
}
