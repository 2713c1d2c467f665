//! Fly-style TXT answers → builders. Input: two bytes of port, one byte choosing the SNI
//! template, then the records: 0x00 ends a record, 0x01 ends one of its strings (the bytes
//! between are arbitrary, UTF-8 or not). Every builder the parser returns must be valid.
#![no_main]

use concord_discovery::SniTemplate;
use concord_discovery::parse::fly_txt;
use libfuzzer_sys::fuzz_target;

const TEMPLATES: [&str; 4] = [
    "{id}.builders.local",
    "{id}-{region}.{app}.example.com",
    "{ip}.{name}",
    "b{id}{app}{region}",
];

fuzz_target!(|data: &[u8]| {
    let [p0, p1, t, rest @ ..] = data else {
        return;
    };
    let port = u16::from_be_bytes([*p0, *p1]);
    let template = SniTemplate::parse(TEMPLATES[usize::from(*t) % TEMPLATES.len()]).unwrap();
    let records: Vec<Vec<Vec<u8>>> = rest
        .split(|&b| b == 0)
        .map(|r| r.split(|&b| b == 1).map(<[u8]>::to_vec).collect())
        .collect();
    let parsed = fly_txt("_instances.internal", &records, port, &template);
    for (id, b) in &parsed.builders {
        assert_eq!(id, &b.id);
        assert!(b.validate().is_ok(), "invalid builder from TXT: {b:?}");
    }
});
