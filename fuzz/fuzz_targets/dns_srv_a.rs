//! SRV targets and A/AAAA addresses → builders, with an SNI template that is itself fuzzed.
//! Every builder returned must be valid, and merging the two answers must keep them so.
#![no_main]

use concord_discovery::SniTemplate;
use concord_discovery::parse::{SrvTarget, addresses, srv};
use libfuzzer_sys::fuzz_target;
use std::net::IpAddr;

type Input = (String, Vec<(String, u16, Vec<IpAddr>)>, Vec<IpAddr>, u16);

fuzz_target!(|input: Input| {
    let (template, targets, addrs, port) = input;
    let template = SniTemplate::parse(&template)
        .unwrap_or_else(|_| SniTemplate::parse("{id}.builders.local").unwrap());
    let records: Vec<SrvTarget> = targets
        .into_iter()
        .map(|(target, port, addrs)| SrvTarget {
            target,
            port,
            addrs,
        })
        .collect();
    let mut parsed = srv("_buildkit._tcp.example.com", &records, &template);
    let a = addresses("pool.example.com", &addrs, port, &template);
    parsed.merge(a);
    for (id, b) in &parsed.builders {
        assert_eq!(id, &b.id);
        assert!(b.validate().is_ok(), "invalid builder from SRV/A: {b:?}");
    }
});
