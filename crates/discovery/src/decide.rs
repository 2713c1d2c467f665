//! The poller's decision, as a plain function: the applied registry, one poll's parsed answer,
//! the mass-removal guard and the time the answer was seen go in; "unchanged", "hold" or a
//! fenced command to propose comes out. No I/O and no clock — the poller ([`crate::poller`])
//! does the asking, the proposing, the metrics and the schedule around it.

use crate::guard::{Guard, Held, Verdict};
use crate::parse::{Parsed, Skipped};
use concord_registry::{Builder, Command, Registry, Source, diff};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

/// What to do with one answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// DNS agrees with the registry.
    Unchanged,
    /// The answer differs only by removals the guard holds back.
    Hold(Held),
    /// Propose this change (boxed: a command is large beside the other answers).
    Propose(Box<Proposal>),
}

/// A change to propose, and what it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    /// The `dns` command, fenced by the revision the diff was computed against.
    pub command: Command,
    /// Builders it adds.
    pub added: usize,
    /// Builders it changes.
    pub updated: usize,
    /// Builders it removes.
    pub removed: usize,
    /// Removals the guard holds back from it, if any: the rest of the answer goes through.
    pub held: Option<Held>,
}

/// Decides what the answer `answer`, seen at `now`, changes in `registry`'s `dns` builders.
///
/// A large removal the guard holds does not hold the rest of the answer: additions and updates
/// are proposed without the held removals — except an addition that takes the SNI name of a held
/// builder, which would be refused, and so waits for that builder's removal.
pub fn decide(
    registry: &Registry,
    answer: &BTreeMap<String, Builder>,
    guard: &mut Guard,
    now: Instant,
) -> Decision {
    let current = registry.of_source(Source::Dns);
    let mut batch = diff(&current, answer);
    if cfg!(feature = "mutant-poller-ignores-removals") {
        // The mutant (chaos/mutants): builders that leave DNS are never removed.
        batch.removes.clear();
    }
    let held = match guard.judge(&current, answer, now) {
        Verdict::Apply => None,
        Verdict::Hold(h) => {
            batch.removes.retain(|id| !h.kept.contains(id));
            let kept_snis: BTreeSet<&str> = h
                .kept
                .iter()
                .filter_map(|id| current.get(id))
                .map(|b| b.sni.as_str())
                .collect();
            batch
                .upserts
                .retain(|b| !kept_snis.contains(b.sni.as_str()));
            Some(h)
        }
    };
    if batch.is_empty() {
        return match held {
            Some(h) => Decision::Hold(h),
            None => Decision::Unchanged,
        };
    }
    let updated = batch
        .upserts
        .iter()
        .filter(|b| current.contains_key(&b.id))
        .count();
    let (added, removed) = (batch.upserts.len() - updated, batch.removes.len());
    let command = Command {
        if_revision: Some(registry.revision()),
        ..Command::new(Source::Dns, batch)
    };
    Decision::Propose(Box::new(Proposal {
        command,
        added,
        updated,
        removed,
        held,
    }))
}

/// Moves the builders of `parsed` whose id or SNI name belongs to an `api` builder to its
/// skipped list: the poller never touches what the API put.
pub fn skip_api_clashes(registry: &Registry, parsed: &mut Parsed) {
    let api_snis: BTreeSet<&str> = registry
        .iter()
        .filter(|b| b.source == Source::Api)
        .map(|b| b.sni.as_str())
        .collect();
    let clashes: Vec<String> = parsed
        .builders
        .values()
        .filter(|b| {
            registry.get(&b.id).is_some_and(|o| o.source == Source::Api)
                || api_snis.contains(b.sni.as_str())
        })
        .map(|b| b.id.clone())
        .collect();
    for id in clashes {
        if let Some(b) = parsed.builders.remove(&id) {
            parsed.skipped.push(Skipped {
                name: b.sni.clone(),
                entry: id,
                reason: "id or SNI name belongs to a builder put through the API".into(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::GuardConfig;
    use concord_registry::{Batch, Outcome};
    use proptest::prelude::*;
    use std::time::Duration;

    const MS: Duration = Duration::from_millis(1);

    fn b(id: &str, source: Source) -> Builder {
        Builder {
            id: id.to_string(),
            addr: "10.0.0.1:8443".parse().unwrap(),
            sni: format!("{id}.b.test"),
            region: String::new(),
            labels: Default::default(),
            source,
        }
    }

    fn dns(ids: &[&str]) -> BTreeMap<String, Builder> {
        ids.iter()
            .map(|id| (id.to_string(), b(id, Source::Dns)))
            .collect()
    }

    fn registry(ids: &[&str], revision: u64) -> Registry {
        Registry::from_parts(dns(ids).into_values(), revision).unwrap()
    }

    fn guard(hold_ms: u64) -> Guard {
        Guard::new(GuardConfig {
            max_removal_share: 0.5,
            hold: Duration::from_millis(hold_ms),
        })
    }

    fn proposal(d: Decision) -> Proposal {
        match d {
            Decision::Propose(p) => *p,
            other => panic!("expected a proposal, got {other:?}"),
        }
    }

    #[test]
    fn the_same_answer_is_unchanged() {
        let reg = registry(&["a", "b"], 7);
        let d = decide(&reg, &dns(&["a", "b"]), &mut guard(1000), Instant::now());
        assert_eq!(d, Decision::Unchanged);
    }

    #[test]
    fn a_change_is_fenced_by_the_registry_revision() {
        let reg = registry(&["a", "b"], 7);
        let mut changed = dns(&["a", "c"]);
        changed.get_mut("a").unwrap().region = "ord".into();
        let p = proposal(decide(&reg, &changed, &mut guard(1000), Instant::now()));
        assert_eq!(p.command.if_revision, Some(7));
        assert_eq!(p.command.source, Source::Dns);
        assert_eq!((p.added, p.updated, p.removed), (1, 1, 1));
        assert_eq!(p.command.batch.removes, ["b"]);
        assert_eq!(p.held, None);
    }

    #[test]
    fn a_held_removal_lets_the_additions_through() {
        let reg = registry(&["a", "b", "c", "d"], 3);
        let t = Instant::now();
        let mut g = guard(1000);
        // The zone reloads: only a new builder is in the answer for a moment.
        let p = proposal(decide(&reg, &dns(&["e"]), &mut g, t));
        assert_eq!(p.command.batch.upserts, [b("e", Source::Dns)]);
        assert!(p.command.batch.removes.is_empty());
        assert_eq!((p.added, p.removed), (1, 0));
        let h = p.held.expect("the removal is held");
        assert_eq!((h.removals, h.kept.len()), (4, 4));
        // Once e is in, the same answer is a pure hold.
        let reg = Registry::from_parts(dns(&["a", "b", "c", "d", "e"]).into_values(), 4).unwrap();
        assert!(matches!(
            decide(&reg, &dns(&["e"]), &mut g, t + 500 * MS),
            Decision::Hold(Held { removals: 4, .. })
        ));
        // Missing for the hold: removed.
        let p = proposal(decide(&reg, &dns(&["e"]), &mut g, t + 1000 * MS));
        assert_eq!(p.command.batch.removes, ["a", "b", "c", "d"]);
        assert_eq!(p.held, None);
    }

    #[test]
    fn an_addition_taking_a_held_builders_name_waits_for_its_removal() {
        let reg = registry(&["a", "b"], 3);
        let mut g = guard(1000);
        let t = Instant::now();
        let mut moved = b("a2", Source::Dns);
        moved.sni = "a.b.test".into();
        let answer: BTreeMap<_, _> = [("a2".to_string(), moved.clone())].into();
        assert!(matches!(
            decide(&reg, &answer, &mut g, t),
            Decision::Hold(_)
        ));
        let p = proposal(decide(&reg, &answer, &mut g, t + 1000 * MS));
        assert_eq!(p.command.batch.upserts, [moved]);
        assert_eq!(p.command.batch.removes, ["a", "b"]);
    }

    #[test]
    fn api_clashes_are_skipped() {
        let mut reg = Registry::new();
        let put = Command::new(
            Source::Api,
            Batch {
                upserts: vec![b("m", Source::Api)],
                removes: vec![],
            },
        );
        assert!(matches!(reg.apply(1, &put), Outcome::Applied { .. }));
        let mut same_name = b("m2", Source::Dns);
        same_name.sni = "m.b.test".into();
        let mut parsed = Parsed {
            builders: [
                ("m".to_string(), b("m", Source::Dns)),
                ("m2".to_string(), same_name),
                ("d".to_string(), b("d", Source::Dns)),
            ]
            .into(),
            skipped: vec![],
        };
        skip_api_clashes(&reg, &mut parsed);
        assert_eq!(parsed.builders.keys().collect::<Vec<_>>(), ["d"]);
        let skipped: Vec<&str> = parsed.skipped.iter().map(|s| s.entry.as_str()).collect();
        assert_eq!(skipped, ["m", "m2"]);
    }

    fn arb_ids() -> impl Strategy<Value = BTreeSet<u8>> {
        proptest::collection::btree_set(0u8..8, 0..8)
    }

    fn named(ids: &BTreeSet<u8>) -> BTreeMap<String, Builder> {
        ids.iter()
            .map(|i| format!("b{i}"))
            .map(|id| (id.clone(), b(&id, Source::Dns)))
            .collect()
    }

    proptest! {
        /// Applying the proposal gives the answer, less the removals the guard holds; what it
        /// holds is only ever removals; the counts describe the batch.
        #[test]
        fn a_proposal_applies_to_the_answer_less_held_removals(
            have in arb_ids(),
            want in arb_ids(),
            revision in 1u64..100,
            hold_ms in prop_oneof![Just(0u64), Just(1000u64)],
        ) {
            let reg = Registry::from_parts(named(&have).into_values(), revision).unwrap();
            let answer = named(&want);
            let d = decide(&reg, &answer, &mut guard(hold_ms), Instant::now());
            let (after, held) = match d {
                Decision::Unchanged => (reg.clone(), BTreeSet::new()),
                Decision::Hold(h) => (reg.clone(), h.kept),
                Decision::Propose(p) => {
                    prop_assert_eq!(p.command.if_revision, Some(revision));
                    let batch = &p.command.batch;
                    prop_assert_eq!(p.added + p.updated, batch.upserts.len());
                    prop_assert_eq!(p.removed, batch.removes.len());
                    let mut after = reg.clone();
                    let outcome = after.apply(revision + 1, &p.command);
                    prop_assert!(
                        matches!(outcome, Outcome::Applied { changed: true, .. }),
                        "{:?}", outcome
                    );
                    (after, p.held.map(|h| h.kept).unwrap_or_default())
                }
            };
            let mut expected = answer.clone();
            for id in &held {
                prop_assert!(!answer.contains_key(id) && reg.get(id).is_some());
                expected.insert(id.clone(), b(id, Source::Dns));
            }
            prop_assert_eq!(after.of_source(Source::Dns), expected);
            if hold_ms == 0 {
                prop_assert!(held.is_empty());
            }
        }
    }
}
