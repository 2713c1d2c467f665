//! Unit tests of the request checks, and property tests that feed every endpoint arbitrary bytes,
//! arbitrary JSON and arbitrary field values: decoding never panics, and whatever it accepts the
//! registry accepts as a valid builder and applies without panicking.

use super::*;
use concord_registry::{Command, Registry, Source};
use proptest::prelude::*;
use serde_json::{Value, json};

fn put(body: Value) -> Result<Request, RequestError> {
    decode(Endpoint::PutBuilder, "b1", body.to_string().as_bytes())
}

#[test]
fn valid_bodies_decode() {
    let r = put(json!({ "addr": "127.0.0.1:80", "sni": "b1.example.com", "labels": { "a": "b" } }))
        .unwrap();
    let Request::Write(batch) = r else {
        panic!("{r:?}")
    };
    assert_eq!(batch.upserts[0].id, "b1");
    assert_eq!(batch.upserts[0].source, Source::Api);
    let r = decode(
        Endpoint::Batch,
        "",
        br#"{"upserts":[{"id":"x","addr":"[::1]:9","sni":"x.example.com"}],"removes":["y"]}"#,
    )
    .unwrap();
    assert!(matches!(r, Request::Write(b) if b.upserts.len() == 1 && b.removes == ["y"]));
    assert_eq!(
        decode(Endpoint::AddLearner, "", br#"{"node_id":4,"addr":"h:1"}"#).unwrap(),
        Request::AddLearner {
            node_id: 4,
            addr: "h:1".into()
        }
    );
    assert_eq!(
        decode(Endpoint::Isolate, "", br#"{"isolated":true}"#).unwrap(),
        Request::Isolate(true)
    );
}

#[test]
fn invalid_bodies_are_refused_with_a_reason() {
    let cases: Vec<(Endpoint, &str, &[u8])> = vec![
        (
            Endpoint::PutBuilder,
            "b1",
            br#"{"addr":"127.0.0.1","sni":"a.b"}"#,
        ),
        (
            Endpoint::PutBuilder,
            "b1",
            br#"{"addr":"0.0.0.0:80","sni":"a.b"}"#,
        ),
        (
            Endpoint::PutBuilder,
            "b 1",
            br#"{"addr":"127.0.0.1:80","sni":"a.b"}"#,
        ),
        (
            Endpoint::PutBuilder,
            "b1",
            br#"{"addr":"127.0.0.1:80","sni":"a.b","x":1}"#,
        ),
        (Endpoint::PutBuilder, "b1", b"\xff"),
        (
            Endpoint::Batch,
            "",
            br#"{"upserts":[{"addr":"127.0.0.1:80","sni":"a.b"}]}"#,
        ),
        (Endpoint::AddLearner, "", br#"{"node_id":0,"addr":"h:1"}"#),
        (Endpoint::AddLearner, "", br#"{"node_id":1,"addr":":1"}"#),
        (
            Endpoint::AddLearner,
            "",
            br#"{"node_id":1,"addr":"h:99999"}"#,
        ),
        (Endpoint::Promote, "", br#"{"node_id":-1}"#),
        (Endpoint::Isolate, "", br#"{"isolated":"yes"}"#),
    ];
    for (e, id, body) in cases {
        let err = decode(e, id, body).unwrap_err();
        assert!(!err.to_string().is_empty(), "{e:?} {body:?}");
    }
}

/// Whatever decodes must be something the registry takes without panicking.
fn check_accepted(r: &Request) {
    if let Request::Write(batch) = r {
        for b in &batch.upserts {
            assert!(b.validate().is_ok(), "accepted an invalid builder {b:?}");
            assert_eq!(b.source, Source::Api);
        }
        let mut reg = Registry::new();
        let _ = reg.apply(1, &Command::new(Source::Api, batch.clone()));
    }
}

fn endpoint() -> impl Strategy<Value = Endpoint> {
    proptest::sample::select(Endpoint::ALL.to_vec())
}

/// JSON values up to a small depth whose object keys are often the fields the bodies have.
fn arb_json() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        proptest::sample::select(vec![
            "addr", "sni", "region", "labels", "id", "upserts", "removes", "node_id", "isolated",
        ])
        .prop_map(str::to_string),
        ".{0,6}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::from),
        "[0-9a-f:.\\[\\]]{0,30}".prop_map(Value::from),
        "[a-z0-9.-]{0,70}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(key.clone(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(e in endpoint(), id in ".{0,20}",
                                   body in proptest::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(r) = decode(e, &id, &body) {
            check_accepted(&r);
        }
    }

    #[test]
    fn arbitrary_json_never_panics(e in endpoint(), id in "[a-z0-9.-]{0,10}", v in arb_json()) {
        if let Ok(r) = decode(e, &id, v.to_string().as_bytes()) {
            check_accepted(&r);
        }
    }

    #[test]
    fn arbitrary_field_values_never_panic(id in ".{0,140}", addr in ".{0,50}", sni in ".{0,300}",
                                          region in ".{0,10}",
                                          labels in proptest::collection::btree_map(".{0,8}", ".{0,8}", 0..4),
                                          node_id in any::<u64>()) {
        let b = json!({ "addr": addr, "sni": sni, "region": region, "labels": labels });
        if let Ok(r) = decode(Endpoint::PutBuilder, &id, b.to_string().as_bytes()) {
            check_accepted(&r);
        }
        let mut one = b.clone();
        one["id"] = json!(id);
        let batch = json!({ "upserts": [one.clone(), one], "removes": [id] });
        if let Ok(r) = decode(Endpoint::Batch, "", batch.to_string().as_bytes()) {
            check_accepted(&r);
        }
        let learner = json!({ "node_id": node_id, "addr": addr });
        if let Ok(Request::AddLearner { node_id, addr }) =
            decode(Endpoint::AddLearner, "", learner.to_string().as_bytes())
        {
            prop_assert!(node_id > 0 && addr.contains(':'));
        }
    }
}
