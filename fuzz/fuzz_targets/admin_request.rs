//! Admin API request bodies → what they ask for, as the handlers decode them. Input: one byte
//! choosing the endpoint, the path's `{id}` up to a 0x00 byte, then the body. Whatever is
//! accepted must be valid builders of source `api` that the registry applies without panicking.
#![no_main]

use concord_api::{Endpoint, Request, decode};
use concord_registry::{Command, Registry, Source};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [e, rest @ ..] = data else {
        return;
    };
    let endpoint = Endpoint::ALL[usize::from(*e) % Endpoint::ALL.len()];
    let (id, body) = match rest.iter().position(|&b| b == 0) {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (&rest[..0], rest),
    };
    let id = String::from_utf8_lossy(id);
    if let Ok(Request::Write(batch)) = decode(endpoint, &id, body) {
        for b in &batch.upserts {
            assert!(b.validate().is_ok(), "accepted an invalid builder: {b:?}");
            assert_eq!(b.source, Source::Api);
        }
        let mut r = Registry::new();
        let _ = r.apply(1, &Command::new(Source::Api, batch));
    }
});
