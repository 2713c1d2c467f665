//! Parser tests, including malformed and adversarial input.

use super::*;
use proptest::prelude::*;

fn t() -> SniTemplate {
    SniTemplate::parse("{id}.builders.test").unwrap()
}

fn txt(records: &[&[&str]]) -> Vec<Vec<Vec<u8>>> {
    records
        .iter()
        .map(|r| r.iter().map(|s| s.as_bytes().to_vec()).collect())
        .collect()
}

#[test]
fn fly_txt_entries_across_strings_and_records() {
    let recs = txt(&[
        &[
            "instance=a1,app=builders,ip=fdaa:0:1::3,region=ord;inst",
            "ance=a2,app=builders,ip=fdaa:0:1::4,region=iad",
        ],
        &["instance=a3,ip=10.0.0.3"],
    ]);
    let p = fly_txt("_instances.internal", &recs, 8372, &t());
    assert!(p.skipped.is_empty(), "{:?}", p.skipped);
    assert_eq!(p.builders.len(), 3);
    let a2 = &p.builders["a2"];
    assert_eq!(a2.addr, "[fdaa:0:1::4]:8372".parse().unwrap());
    assert_eq!(a2.region, "iad");
    assert_eq!(a2.sni, "a2.builders.test");
    assert_eq!(a2.labels["app"], "builders");
    assert_eq!(a2.source, Source::Dns);
}

#[test]
fn fly_txt_malformed_entries_are_skipped_not_fatal() {
    let recs = txt(&[&[
        "instance=ok1,ip=10.0.0.1;instance=noip;ip=10.0.0.2;instance=bad,ip=999.1.1.1;\
         instance=x,ip=10.0.0.3,color=red;garbage;;instance=ok1,ip=10.0.0.9;\
         instance=two,instance=three,ip=10.0.0.4;instance=UP_PER,ip=10.0.0.5",
    ]]);
    let p = fly_txt("n", &recs, 1, &t());
    assert_eq!(p.builders.keys().collect::<Vec<_>>(), ["ok1"]);
    let reasons: Vec<&str> = p.skipped.iter().map(|s| s.reason.as_str()).collect();
    assert!(
        reasons.iter().any(|r| r.contains("missing ip")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("missing instance")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("invalid ip")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("unknown key")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("not key=value")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("duplicate id")),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r.contains("twice")), "{reasons:?}");
    // "UP_PER" becomes "up_per.builders.test": '_' is not a valid DNS label character.
    assert!(
        reasons.iter().any(|r| r.contains("not a valid DNS name")),
        "{reasons:?}"
    );
    assert_eq!(p.skipped.len(), 8);
}

#[test]
fn fly_txt_non_utf8_is_skipped() {
    let p = fly_txt("n", &[vec![vec![0xff, 0xfe, b';']]], 1, &t());
    assert!(p.builders.is_empty());
    assert_eq!(p.skipped[0].reason, "not UTF-8");
}

#[test]
fn srv_targets_become_builders() {
    let recs = vec![
        SrvTarget {
            target: "b1.builders.test".into(),
            port: 1234,
            weight: 1,
            addrs: vec!["10.0.0.1".parse().unwrap()],
        },
        SrvTarget {
            target: "multi.builders.test".into(),
            port: 99,
            weight: 1,
            addrs: vec!["10.0.0.2".parse().unwrap(), "::1".parse().unwrap()],
        },
        SrvTarget {
            target: "gone.builders.test".into(),
            port: 1,
            weight: 1,
            addrs: vec![],
        },
    ];
    let p = srv("_buildkit._tcp.builders.test", &recs, &t());
    assert_eq!(
        p.builders.keys().collect::<Vec<_>>(),
        ["b1", "multi-0", "multi-1"]
    );
    assert_eq!(p.builders["b1"].addr.port(), 1234);
    assert_eq!(p.skipped.len(), 1);
}

#[test]
fn addresses_become_builders() {
    let ips: Vec<IpAddr> = vec!["10.0.0.1".parse().unwrap(), "fd00::2".parse().unwrap()];
    let p = addresses("pool.builders.test", &ips, 8372, &t());
    assert_eq!(
        p.builders.keys().collect::<Vec<_>>(),
        ["10-0-0-1", "fd00--2"]
    );
    assert_eq!(p.builders["fd00--2"].sni, "fd00--2.builders.test");
}

#[test]
fn merge_skips_ids_seen_in_an_earlier_name() {
    let a = addresses("a", &["10.0.0.1".parse().unwrap()], 1, &t());
    let b = addresses("b", &["10.0.0.1".parse().unwrap()], 2, &t());
    let mut all = a;
    all.merge(b);
    assert_eq!(all.builders.len(), 1);
    assert_eq!(all.skipped.len(), 1);
}

proptest! {
    #[test]
    fn fly_txt_never_panics(records in proptest::collection::vec(
        proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..4), 0..4)) {
        let p = fly_txt("n", &records, 1, &t());
        for b in p.builders.values() {
            prop_assert!(b.validate().is_ok());
        }
    }

    #[test]
    fn fly_txt_structured_noise_never_panics(s in "[a-z=,;:.0-9 ]{0,400}") {
        let p = fly_txt("n", &[vec![s.into_bytes()]], 1, &t());
        for b in p.builders.values() {
            prop_assert!(b.validate().is_ok());
        }
    }

    #[test]
    fn fly_txt_round_trips_valid_entries(ids in proptest::collection::btree_set("[a-z][a-z0-9]{0,10}", 0..30)) {
        let entries: Vec<String> = ids.iter().enumerate()
            .map(|(i, id)| format!("instance={id},app=x,ip=fdaa::{:x},region=ord", i + 1))
            .collect();
        let joined = entries.join(";");
        // Split into 255-byte strings, as a DNS server would.
        let strings: Vec<Vec<u8>> = joined.as_bytes().chunks(255).map(<[u8]>::to_vec).collect();
        let p = fly_txt("n", &[strings], 7, &t());
        prop_assert!(p.skipped.is_empty());
        prop_assert_eq!(p.builders.keys().cloned().collect::<BTreeSet<_>>(), ids);
    }

    #[test]
    fn srv_never_panics(target in ".{0,80}", port in any::<u16>(), n in 0usize..4) {
        let addrs = (0..n).map(|i| IpAddr::from([10, 0, 0, i as u8])).collect();
        let p = srv("n", &[SrvTarget { target, port, weight: 1, addrs }], &t());
        for b in p.builders.values() {
            prop_assert!(b.validate().is_ok());
        }
    }
}

/// Templates as an operator might write them, valid or not.
fn arb_template() -> impl Strategy<Value = SniTemplate> {
    prop_oneof![
        4 => Just("{id}.builders.test".to_string()),
        1 => "[a-z{}.-]{0,8}\\{(id|ip|region|app|name)\\}[a-z{}.-]{0,12}",
        1 => ".{0,30}",
    ]
    .prop_map(|s| SniTemplate::parse(&s).unwrap_or_else(|_| t()))
}

/// A Fly TXT entry made of the real keys (and some others) with values that are often close to
/// valid: ids, IPv4 and IPv6 addresses, names, and noise.
fn arb_fly_entry() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("instance".to_string()),
        Just("ip".to_string()),
        Just("app".to_string()),
        Just("region".to_string()),
        "[a-z ]{0,6}",
    ];
    let value = prop_oneof![
        "[a-z0-9-]{0,12}",
        any::<std::net::Ipv4Addr>().prop_map(|ip| ip.to_string()),
        any::<std::net::Ipv6Addr>().prop_map(|ip| ip.to_string()),
        "[0-9a-f:.]{0,20}",
        ".{0,10}",
    ];
    proptest::collection::vec((key, value, "[ =]{0,2}"), 0..6).prop_map(|pairs| {
        pairs
            .into_iter()
            .map(|(k, v, sep)| format!("{k}={v}{sep}"))
            .collect::<Vec<_>>()
            .join(",")
    })
}

fn all_valid(p: &Parsed) -> Result<(), TestCaseError> {
    for (id, b) in &p.builders {
        prop_assert!(b.validate().is_ok(), "{b:?}");
        prop_assert_eq!(id, &b.id);
        prop_assert_eq!(b.source, Source::Dns);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn fly_txt_keyed_noise_never_panics(
        records in proptest::collection::vec(proptest::collection::vec(arb_fly_entry(), 0..8), 0..3),
        splits in proptest::collection::vec(any::<prop::sample::Index>(), 0..3),
        port in any::<u16>(), template in arb_template()) {
        // Each record's entries joined with ';', then cut into strings at arbitrary points (even
        // inside a UTF-8 sequence), as a record's strings may be.
        let records: Vec<Vec<Vec<u8>>> = records.into_iter().map(|entries| {
            let bytes = entries.join(";").into_bytes();
            let mut cuts: Vec<usize> = splits.iter().map(|i| i.index(bytes.len() + 1)).collect();
            cuts.sort_unstable();
            let mut strings = Vec::new();
            let mut from = 0;
            for c in cuts {
                strings.push(bytes[from..c].to_vec());
                from = c;
            }
            strings.push(bytes[from..].to_vec());
            strings
        }).collect();
        let p = fly_txt("_instances.internal", &records, port, &template);
        all_valid(&p)?;
    }

    #[test]
    fn srv_and_addresses_never_panic(
        targets in proptest::collection::vec(
            (".{0,40}", any::<u16>(), proptest::collection::vec(any::<IpAddr>(), 0..4)), 0..6),
        addrs in proptest::collection::vec(any::<IpAddr>(), 0..8),
        port in any::<u16>(), template in arb_template()) {
        let records: Vec<SrvTarget> = targets.into_iter()
            .map(|(target, port, addrs)| SrvTarget { target, port, weight: 1, addrs })
            .collect();
        let mut p = srv("_buildkit._tcp.example.com", &records, &template);
        all_valid(&p)?;
        let a = addresses("pool.example.com", &addrs, port, &template);
        all_valid(&a)?;
        p.merge(a);
        all_valid(&p)?;
    }

    #[test]
    fn templates_never_panic(s in ".{0,40}", id in ".{0,20}", region in ".{0,8}", ip in any::<IpAddr>()) {
        if let Ok(template) = SniTemplate::parse(&s) {
            let fields = Fields { id: &id, ip: ip.to_string(), region: &region, ..Fields::default() };
            if let Ok(name) = template.render(&fields) {
                prop_assert!(concord_registry::is_dns_name(&name), "{name:?}");
            }
        }
    }
}
