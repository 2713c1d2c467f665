//! Registry commands as they come out of the Raft log (JSON payloads), one per input line,
//! applied in order on two replicas. Decoding must never panic; apply must keep every builder
//! valid and every SNI name unique, change nothing when it rejects, and give both replicas the
//! same state.
#![no_main]

use concord_registry::{Command, Outcome, Registry};
use libfuzzer_sys::fuzz_target;
use std::collections::HashSet;

fuzz_target!(|data: &[u8]| {
    let mut one = Registry::new();
    let mut two = Registry::new();
    for (i, line) in data.split(|&b| b == b'\n').enumerate() {
        let index = i as u64 + 1;
        let Ok(cmd) = serde_json::from_slice::<Command>(line) else {
            continue;
        };
        let before = one.clone();
        let out = one.apply(index, &cmd);
        assert_eq!(out, two.apply(index, &cmd));
        if matches!(out, Outcome::Rejected(_)) {
            assert_eq!(one, before, "a rejected command changed the registry");
        }
        let mut snis = HashSet::new();
        for b in one.iter() {
            assert!(b.validate().is_ok(), "invalid builder applied: {b:?}");
            assert!(snis.insert(b.sni.clone()), "SNI {} twice", b.sni);
        }
        assert!(one.revision() <= index);
        // What a snapshot of this state holds rebuilds the same registry.
        let rebuilt = Registry::from_parts(one.iter().map(|b| (**b).clone()), one.revision());
        assert_eq!(rebuilt.as_ref(), Ok(&one));
    }
    assert_eq!(one, two);
});
