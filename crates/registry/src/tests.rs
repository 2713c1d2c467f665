//! Unit and property tests of apply and diff.

use super::*;
use proptest::prelude::*;

fn b(id: &str, port: u16, source: Source) -> Builder {
    Builder {
        id: id.to_string(),
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
        sni: format!("{id}.builders.example.com"),
        region: "ord".into(),
        labels: BTreeMap::new(),
        source,
    }
}

fn put(builders: Vec<Builder>) -> Command {
    Command::new(
        Source::Api,
        Batch {
            upserts: builders,
            removes: vec![],
        },
    )
}

fn rm(ids: &[&str]) -> Command {
    Command::new(
        Source::Api,
        Batch {
            upserts: vec![],
            removes: ids.iter().map(|s| s.to_string()).collect(),
        },
    )
}

#[test]
fn revision_is_index_of_last_change() {
    let mut r = Registry::new();
    assert_eq!(
        r.apply(3, &put(vec![b("a", 1, Source::Api)])),
        Outcome::Applied {
            revision: 3,
            changed: true
        }
    );
    // Identical upsert and absent removal change nothing, so the revision stays.
    assert_eq!(
        r.apply(4, &put(vec![b("a", 1, Source::Api)])),
        Outcome::Applied {
            revision: 3,
            changed: false
        }
    );
    assert_eq!(
        r.apply(5, &rm(&["zz"])),
        Outcome::Applied {
            revision: 3,
            changed: false
        }
    );
    r.apply(6, &rm(&["a"]));
    assert_eq!(r.revision(), 6);
    assert!(r.is_empty());
}

#[test]
fn invalid_builders_reject_the_whole_batch() {
    let mut r = Registry::new();
    let mut bad = b("x", 1, Source::Api);
    bad.addr = "0.0.0.0:80".parse().unwrap();
    let out = r.apply(1, &put(vec![b("ok", 2, Source::Api), bad]));
    assert!(matches!(
        out,
        Outcome::Rejected(Rejection::InvalidBuilder(_))
    ));
    assert!(r.is_empty(), "nothing half-applied");
    assert_eq!(r.revision(), 0);

    for (id, sni) in [
        ("", "a.example.com"),
        ("a b", "a.example.com"),
        ("a", "UPPER.example.com"),
        ("a", "-a.example.com"),
        ("a", "a..example.com"),
        ("a", ""),
    ] {
        let mut x = b("a", 1, Source::Api);
        x.id = id.into();
        x.sni = sni.into();
        assert!(x.validate().is_err(), "{id:?} {sni:?} should be invalid");
    }
}

#[test]
fn sni_names_stay_unique() {
    let mut r = Registry::new();
    r.apply(1, &put(vec![b("a", 1, Source::Api)]));
    let mut dup = b("b", 2, Source::Api);
    dup.sni = "a.builders.example.com".into();
    assert!(matches!(
        r.apply(2, &put(vec![dup.clone()])),
        Outcome::Rejected(Rejection::DuplicateSni { .. })
    ));
    // Taking over the name in the same batch that frees it is fine, in either order.
    let mut a2 = b("a", 1, Source::Api);
    a2.sni = "other.example.com".into();
    assert!(matches!(
        r.apply(3, &put(vec![dup.clone(), a2])),
        Outcome::Applied { changed: true, .. }
    ));
    assert_eq!(r.get("b").unwrap().sni, "a.builders.example.com");
    // Removing the owner frees the name too.
    let mut c = b("c", 3, Source::Api);
    c.sni = "a.builders.example.com".into();
    let mut cmd = put(vec![c]);
    cmd.batch.removes.push("b".into());
    assert!(matches!(r.apply(4, &cmd), Outcome::Applied { .. }));
    assert_eq!(r.get("c").unwrap().sni, "a.builders.example.com");
}

#[test]
fn sources_own_their_builders() {
    let mut r = Registry::new();
    let dns = Command::new(
        Source::Dns,
        Batch {
            upserts: vec![b("d", 1, Source::Dns)],
            removes: vec![],
        },
    );
    r.apply(1, &dns);
    assert!(matches!(
        r.apply(2, &rm(&["d"])),
        Outcome::Rejected(Rejection::OwnedByOtherSource { .. })
    ));
    assert!(matches!(
        r.apply(3, &put(vec![b("d", 9, Source::Api)])),
        Outcome::Rejected(Rejection::OwnedByOtherSource { .. })
    ));
    assert!(matches!(
        r.apply(4, &put(vec![b("e", 9, Source::Dns)])),
        Outcome::Rejected(Rejection::SourceMismatch { .. })
    ));
}

#[test]
fn if_revision_fences_stale_proposals() {
    let mut r = Registry::new();
    r.apply(5, &put(vec![b("a", 1, Source::Api)]));
    let mut late = rm(&["a"]);
    late.if_revision = Some(2);
    assert_eq!(
        r.apply(6, &late),
        Outcome::Rejected(Rejection::StaleRevision {
            expected: 2,
            actual: 5
        })
    );
    late.if_revision = Some(5);
    assert!(matches!(
        r.apply(7, &late),
        Outcome::Applied { revision: 7, .. }
    ));
}

#[test]
fn duplicate_and_contradictory_batches_are_rejected() {
    let mut r = Registry::new();
    assert!(matches!(
        r.apply(
            1,
            &put(vec![b("a", 1, Source::Api), b("a", 2, Source::Api)])
        ),
        Outcome::Rejected(Rejection::DuplicateId(_))
    ));
    let mut cmd = put(vec![b("a", 1, Source::Api)]);
    cmd.batch.removes.push("a".into());
    assert!(matches!(
        r.apply(1, &cmd),
        Outcome::Rejected(Rejection::UpsertAndRemove(_))
    ));
}

#[test]
fn command_json_round_trips() {
    let mut cmd = put(vec![b("a", 1, Source::Api)]);
    assert_eq!(cmd.seen_at_us(), None);
    cmd.trace.insert("traceparent".into(), "00-1-2-01".into());
    cmd.set_seen_at_us(1_700_000_000_123_456);
    assert_eq!(cmd.seen_at_us(), Some(1_700_000_000_123_456));
    let json = serde_json::to_string(&cmd).unwrap();
    assert_eq!(serde_json::from_str::<Command>(&json).unwrap(), cmd);
}

/// Builders over a small id and port space, so that sets overlap and differ in interesting ways.
fn arb_set(source: Source) -> impl Strategy<Value = BTreeMap<String, Builder>> {
    proptest::collection::btree_map(0u8..12, (1u16..4, "[a-z]{0,2}"), 0..10).prop_map(move |m| {
        m.into_iter()
            .map(|(i, (port, region))| {
                let mut x = b(&format!("b{i}"), port, source);
                x.region = region;
                (x.id.clone(), x)
            })
            .collect()
    })
}

fn load(set: &BTreeMap<String, Builder>, revision: u64) -> Registry {
    Registry::from_parts(set.values().cloned(), revision).unwrap()
}

proptest! {
    #[test]
    fn apply_of_diff_yields_target(a in arb_set(Source::Dns), target in arb_set(Source::Dns)) {
        let mut r = load(&a, 1);
        let batch = diff(&a, &target);
        let out = r.apply(2, &Command::new(Source::Dns, batch.clone()));
        prop_assert!(matches!(out, Outcome::Applied { .. }), "{out:?}");
        prop_assert_eq!(r.of_source(Source::Dns), target.clone());
        prop_assert_eq!(r.revision(), if batch.is_empty() { 1 } else { 2 });
        prop_assert_eq!(batch.is_empty(), a == target);
    }

    #[test]
    fn diff_leaves_other_sources_alone(
        api in arb_set(Source::Api), a in arb_set(Source::Dns), target in arb_set(Source::Dns)
    ) {
        // Api builders get ids of their own so the two sources never collide.
        let api: BTreeMap<String, Builder> = api.into_values().map(|mut x| {
            x.id = format!("api-{}", x.id);
            x.sni = format!("{}.api.example.com", x.id);
            (x.id.clone(), x)
        }).collect();
        let mut r = Registry::from_parts(api.values().chain(a.values()).cloned(), 1).unwrap();
        let out = r.apply(2, &Command::new(Source::Dns, diff(&r.of_source(Source::Dns), &target)));
        prop_assert!(matches!(out, Outcome::Applied { .. }), "{out:?}");
        prop_assert_eq!(r.of_source(Source::Api), api);
        prop_assert_eq!(r.of_source(Source::Dns), target);
    }

    #[test]
    fn same_log_same_state(sets in proptest::collection::vec(arb_set(Source::Api), 1..8),
                           junk in proptest::collection::vec(any::<bool>(), 8)) {
        // A log of diffs, some of them replaced by invalid commands, applied on two replicas.
        let mut log = Vec::new();
        let mut prev = BTreeMap::new();
        for (i, s) in sets.iter().enumerate() {
            let mut cmd = Command::new(Source::Api, diff(&prev, s));
            if junk[i] {
                cmd.batch.upserts.push(b("", 1, Source::Api));
            } else {
                prev = s.clone();
            }
            log.push(cmd);
        }
        let (mut one, mut two) = (Registry::new(), Registry::new());
        let outs_one: Vec<_> = log.iter().enumerate().map(|(i, c)| one.apply(i as u64 + 1, c)).collect();
        let outs_two: Vec<_> = log.iter().enumerate().map(|(i, c)| two.apply(i as u64 + 1, c)).collect();
        prop_assert_eq!(outs_one, outs_two);
        prop_assert_eq!(&one, &two);
        prop_assert_eq!(one.of_source(Source::Api), prev);
    }
}

#[test]
fn a_copy_shares_every_builder_until_one_changes() {
    let mut r = Registry::new();
    r.apply(
        1,
        &put((0..100)
            .map(|i| b(&format!("b{i}"), 1000 + i, Source::Api))
            .collect()),
    );
    // What the state machine does on each commit: copy (snapshots hold the old one), change.
    let old = r.clone();
    assert!(old.builders.ptr_eq(&r.builders), "a copy is O(1)");
    r.apply(2, &put(vec![b("b7", 9999, Source::Api)]));
    assert!(!old.builders.ptr_eq(&r.builders));
    assert_eq!(
        old.get("b7").unwrap().addr.port(),
        1007,
        "the old copy is untouched"
    );
    assert_eq!(r.get("b7").unwrap().addr.port(), 9999);
    assert!(Arc::ptr_eq(old.get("b8").unwrap(), r.get("b8").unwrap()));
    r.apply(3, &rm(&["b9"]));
    r.apply(
        4,
        &put(vec![b("b8", 1008, Source::Api), b("new", 7, Source::Api)]),
    );
    assert_eq!(
        r.changed_ids(&old),
        ["b7", "b9", "new"],
        "b8 was put unchanged"
    );
    assert!(r.changed_ids(&r.clone()).is_empty());
}
