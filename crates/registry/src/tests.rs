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
        Outcome::Rejected(Rejection::InvalidBuilder { .. })
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
        Outcome::Rejected(Rejection::DuplicateId { .. })
    ));
    let mut cmd = put(vec![b("a", 1, Source::Api)]);
    cmd.batch.removes.push("a".into());
    assert!(matches!(
        r.apply(1, &cmd),
        Outcome::Rejected(Rejection::UpsertAndRemove { .. })
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

/// A log entry's payload as JSON: mostly the shape of a [`Command`], with values drawn from small
/// pools that mix valid and invalid ids, addresses, SNI names and sources, so decoded commands
/// collide, conflict and break rules in every way apply checks.
fn arb_payload() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::json;
    let id = prop_oneof![
        12 => "b[0-9]{1,2}",
        1 => Just(String::new()),
        1 => ".{0,4}",
        1 => "[a-z]{129}",
    ];
    // Junk sources and addresses fail the whole payload's decoding, so they are rare.
    let source = prop_oneof![10 => Just("api"), 10 => Just("dns"), 1 => Just("API")];
    let addr = prop_oneof![
        12 => "127\\.0\\.0\\.1:[1-3]",
        1 => Just("127.0.0.1:0".to_string()),
        2 => Just("0.0.0.0:80".to_string()),
        2 => Just("[::1]:9".to_string()),
        1 => ".{0,10}",
    ];
    let sni = prop_oneof![
        12 => "s[0-9]{1,2}\\.example\\.com",
        1 => ".{0,8}",
        1 => Just(String::new()),
    ];
    let builder = (
        id.clone(),
        addr,
        sni,
        prop_oneof![8 => "[a-z0-9-]{0,3}", 1 => ".{0,3}"],
        // Mostly the command's own source (None), sometimes another.
        proptest::option::weighted(0.2, source.clone()),
        proptest::collection::btree_map(
            prop_oneof![8 => "[a-z]{1,3}", 1 => ".{0,3}"],
            ".{0,3}",
            0..2,
        ),
    )
        .prop_map(|(id, addr, sni, region, source, labels)| {
            json!({ "id": id, "addr": addr, "sni": sni, "region": region, "source": source,
                    "labels": labels })
        });
    (
        source,
        proptest::collection::vec(builder, 0..5),
        proptest::collection::vec(id, 0..4),
        proptest::option::weighted(0.2, 0u64..6),
        proptest::collection::btree_map(".{0,12}", ".{0,12}", 0..3),
    )
        .prop_map(|(source, mut upserts, removes, if_revision, trace)| {
            for b in &mut upserts {
                if b["source"].is_null() {
                    b["source"] = json!(source);
                }
            }
            let mut v = json!({ "source": source, "batch": { "upserts": upserts, "removes": removes },
                                "trace": trace });
            if let Some(r) = if_revision {
                v["if_revision"] = json!(r);
            }
            v
        })
}

/// The invariants every applied state keeps, whatever the log held.
fn check_invariants(r: &Registry, index: u64) -> Result<(), TestCaseError> {
    let mut snis = std::collections::HashSet::new();
    for b in r.iter() {
        prop_assert!(b.validate().is_ok(), "invalid builder applied: {b:?}");
        prop_assert!(snis.insert(b.sni.clone()), "SNI {} twice", b.sni);
    }
    prop_assert!(r.revision() <= index);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Log payloads decoded from arbitrary bytes never panic, and whatever decodes applies
    /// without panicking.
    #[test]
    fn arbitrary_log_bytes_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(cmd) = serde_json::from_slice::<Command>(&raw) {
            let mut r = Registry::new();
            let _ = r.apply(1, &cmd);
            check_invariants(&r, 1)?;
        }
    }

    /// A log of command-shaped payloads, some cut short or with a byte changed: decoding never
    /// panics, apply keeps the invariants, a rejected command changes nothing, and two replicas
    /// applying the same log agree.
    #[test]
    fn decoded_log_applies_safely(payloads in proptest::collection::vec(
        (arb_payload(), any::<prop::sample::Index>(), 0u8..4), 1..12)) {
        let mut one = Registry::new();
        let mut two = Registry::new();
        for (i, (payload, at, damage)) in payloads.into_iter().enumerate() {
            let index = i as u64 + 1;
            let mut raw = serde_json::to_vec(&payload).unwrap();
            match damage {
                0 => raw.truncate(at.index(raw.len() + 1)),
                1 => { let k = at.index(raw.len()); raw[k] = raw[k].wrapping_add(1); }
                _ => {}
            }
            let Ok(cmd) = serde_json::from_slice::<Command>(&raw) else { continue };
            let before = one.clone();
            let out = one.apply(index, &cmd);
            prop_assert_eq!(&out, &two.apply(index, &cmd));
            if matches!(out, Outcome::Rejected(_)) {
                prop_assert_eq!(&one, &before);
            }
            check_invariants(&one, index)?;
        }
        prop_assert_eq!(one, two);
    }
}

#[test]
fn payload_generator_makes_applicable_commands() {
    // The property above is only worth something if many payloads decode and change the registry.
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let (mut decoded, mut changed) = (0, 0);
    for i in 0..500 {
        let v = arb_payload().new_tree(&mut runner).unwrap().current();
        if let Ok(cmd) = serde_json::from_value::<Command>(v) {
            decoded += 1;
            let mut r = Registry::new();
            if matches!(r.apply(i + 1, &cmd), Outcome::Applied { changed: true, .. }) {
                changed += 1;
            }
        }
    }
    assert!(
        decoded > 250 && changed > 50,
        "decoded {decoded}, changed {changed}"
    );
}

fn with_id(mut cmd: Command, id: &str) -> Command {
    cmd.request_id = Some(id.to_string());
    cmd
}

/// Issue 16: writer A's forwarded put times out after it committed, writer B puts Y, and A's
/// retry commits A's put again. The retry must not put X back (readers would see X → Y → X); it
/// is answered with its first outcome.
#[test]
fn a_retried_request_applies_once_and_answers_the_first_outcome() {
    let x = b("a", 1, Source::Api);
    let y = b("a", 2, Source::Api);
    let mut r = Registry::new();
    let first = r.apply(1, &with_id(put(vec![x.clone()]), "req-a"));
    assert_eq!(
        first,
        Outcome::Applied {
            revision: 1,
            changed: true
        }
    );
    r.apply(2, &with_id(put(vec![y.clone()]), "req-b"));
    let retry = r.apply(3, &with_id(put(vec![x]), "req-a"));
    assert_eq!(**r.get("a").unwrap(), y, "the retry put X back over Y");
    assert_eq!(r.revision(), 2);
    assert_eq!(retry, first, "the retry is answered with the first outcome");
    // A retried delete does not remove a builder put again since.
    r.apply(4, &with_id(rm(&["a"]), "req-c"));
    r.apply(5, &with_id(put(vec![y.clone()]), "req-d"));
    r.apply(6, &with_id(rm(&["a"]), "req-c"));
    assert_eq!(
        **r.get("a").unwrap(),
        y,
        "the retried delete removed it again"
    );
    // Commands without an id (older entries, the DNS poller) are never deduplicated.
    r.apply(7, &rm(&["a"]));
    assert!(r.get("a").is_none());
}

/// The table of request ids stays bounded and evicts the oldest first, the same on every replica.
#[test]
fn remembered_requests_are_bounded_oldest_first() {
    let mut r = Registry::new();
    let n = KEPT_REQUESTS as u64 + 2;
    for i in 1..=n {
        r.apply(i, &with_id(rm(&["absent"]), &format!("req-{i}")));
    }
    assert_eq!(r.requests().count(), KEPT_REQUESTS);
    assert_eq!(r.oldest_request_index(), Some(3));
    assert!(r.request("req-2").is_none() && r.request("req-3").is_some());
    // Rebuilt from what it stores, it holds the same.
    let again = Registry::new().with_requests(r.requests());
    assert_eq!(
        again.requests().collect::<Vec<_>>(),
        r.requests().collect::<Vec<_>>()
    );
}

/// A command of a format the cluster has not reached is refused on every replica alike, and
/// goes through once a raise has committed; the raise itself changes no revision.
#[test]
fn a_newer_format_is_refused_until_the_cluster_is_raised() {
    let mut r = Registry::new();
    assert_eq!(r.format(), FORMAT_BUILDERS);
    let mut newer = put(vec![b("b1", 1, Source::Api)]);
    newer.format = 2;
    assert_eq!(
        r.apply(1, &newer),
        Outcome::Rejected(Rejection::FormatNotEnabled {
            format: 2,
            cluster: 1
        })
    );
    assert!(r.is_empty());
    assert_eq!(
        r.apply(2, &Command::raise_format(2)),
        Outcome::Applied {
            revision: 0,
            changed: false
        }
    );
    assert_eq!(r.format(), 2);
    assert_eq!(
        r.apply(3, &newer),
        Outcome::Applied {
            revision: 3,
            changed: true
        }
    );
    // Never lowered.
    r.apply(4, &Command::raise_format(1));
    assert_eq!(r.format(), 2);
}

/// Entries of the builds before formats existed decode as format 1, a raise is written so that
/// those builds would not mistake it for anything but an empty batch, and this build refuses to
/// apply what it does not know.
#[test]
fn entry_formats_on_the_wire() {
    let old = r#"{"source":"api","batch":{"upserts":[],"removes":["b1"]}}"#;
    let cmd: Command = serde_json::from_str(old).expect("decodes");
    assert_eq!(cmd.format, FORMAT_BUILDERS);
    assert_eq!(serde_json::to_string(&cmd).expect("encodes"), old);
    let raise = serde_json::to_value(Command::raise_format(2)).expect("encodes");
    assert_eq!(
        raise["batch"],
        serde_json::json!({"upserts": [], "removes": []})
    );
    assert_eq!(
        (raise["format"].as_u64(), raise["raise_format"].as_u64()),
        (Some(2), Some(2))
    );
    assert!(Command::raise_format(FORMAT).check_format().is_ok());
    let future = Command::raise_format(FORMAT + 1);
    assert_eq!(
        future.check_format(),
        Err(UnknownFormat { format: FORMAT + 1 })
    );
}

#[test]
fn a_command_says_what_it_changes() {
    let one = Command::new(
        Source::Dns,
        Batch {
            upserts: vec![b("b1", 9001, Source::Dns)],
            removes: vec!["b2".into(), "b3".into()],
        },
    );
    assert_eq!(one.summary(), "dns: put builder b1, removed 2 builders");
    assert_eq!(
        Command::raise_format(2).summary(),
        "api: entry format raised to 2"
    );
    let drain = Command::endpoints(vec![crate::services::EndpointChange::Drain {
        service: "api".into(),
        id: "e1".into(),
    }]);
    assert_eq!(drain.summary(), "api: draining endpoint api/e1");
    assert_eq!(
        Command::new(Source::Api, Batch::default()).summary(),
        "api: no change"
    );
}
