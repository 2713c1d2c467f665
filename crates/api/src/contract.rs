//! Contract tests: literal JSON as the admin API sends and accepts it today. Each decodes into
//! its type and encodes back to the same JSON, so renaming, dropping or retyping a field of a
//! type fails here before it breaks a script, an older CLI or a replica of another version.

use super::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// `json` decodes into `T` and `T` encodes back to the same JSON (key order aside).
fn round_trip<T: Serialize + DeserializeOwned>(json: &str) -> T {
    let typed: T =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{json} does not decode: {e}"));
    let back = serde_json::to_value(&typed).expect("encodes");
    let want: Value = serde_json::from_str(json).expect("literal is JSON");
    assert_eq!(back, want, "re-encoded differently");
    typed
}

#[test]
fn status() {
    let s: Status = round_trip(
        r#"{"cluster":"concord","node_id":2,"role":"follower","term":3,"leader":1,
            "last_log_index":42,"applied_index":42,"snapshot_index":null,"purged_index":null,
            "revision":40,"builders":2,
            "members":[{"id":1,"addr":"127.0.0.1:7101","voter":true},
                       {"id":4,"addr":"127.0.0.1:7104","voter":false}],
            "millis_since_quorum_ack":null}"#,
    );
    assert_eq!(s.role, Role::Follower);
    assert_eq!(s.leader, Some(1));
    assert_eq!(s.voters(), [1]);
}

#[test]
fn builders_and_writes() {
    let l: BuilderList = round_trip(
        r#"{"revision":7,"builders":[{"id":"b1","addr":"127.0.0.1:9001","sni":"b1.example.com",
            "region":"ord","labels":{"a":"b"},"source":"api"}]}"#,
    );
    assert_eq!(l.ids(), ["b1"]);
    let one: OneBuilder = round_trip(
        r#"{"revision":7,"builder":{"id":"d","addr":"[::1]:443","sni":"d.example.com",
            "region":"","labels":{},"source":"dns"}}"#,
    );
    assert_eq!(one.builder.source, concord_registry::Source::Dns);
    let w: Written = round_trip(r#"{"revision":9,"changed":false,"log_index":11}"#);
    assert!(!w.changed);
    let m: MembershipChanged = round_trip(r#"{"log_index":12}"#);
    assert_eq!(m.log_index, 12);
}

#[test]
fn error_body() {
    let e: ErrorBody =
        round_trip(r#"{"error":{"code":"no_leader","message":"no leader: the cluster …"}}"#);
    assert_eq!(e.error.code, ErrorCode::NoLeader);
    // A code from a newer replica still decodes.
    let e: ErrorBody = serde_json::from_str(r#"{"error":{"code":"later","message":"m"}}"#)
        .expect("unknown code decodes");
    assert_eq!(e.error.code, ErrorCode::Unknown);
}

#[test]
fn requests() {
    let p: PutBuilder = round_trip(
        r#"{"addr":"127.0.0.1:80","sni":"b1.example.com","region":"ord","labels":{"k":"v"}}"#,
    );
    assert_eq!(p.addr.port(), 80);
    let b: BatchBody = round_trip(
        r#"{"upserts":[{"id":"x","addr":"10.0.0.1:9","sni":"x.example.com","region":"",
            "labels":{}}],"removes":["y"]}"#,
    );
    assert_eq!(b.removes, ["y"]);
    let a: AddLearner = round_trip(r#"{"node_id":4,"addr":"127.0.0.1:7104"}"#);
    assert_eq!(a.node_id, 4);
    let _: Promote = round_trip(r#"{"node_id":4}"#);
    let _: Isolate = round_trip(r#"{"isolated":true}"#);
    let cut: Isolate = round_trip(r#"{"isolated":true,"from":[3,4,5]}"#);
    assert_eq!(cut.from, [3, 4, 5]);
    let _: Isolated = round_trip(r#"{"isolated":false}"#);
    let _: Isolated = round_trip(r#"{"isolated":true,"from":[1,2]}"#);
}

const ENVOY: &str = r#"{"node_id":"envoy-1","node_cluster":"builders","stream":3,
    "peer":"127.0.0.1:50000","connected_at_ms":1700000000000,
    "types":{"clusters":{"sent":7,"acked":7,"acked_at_us":1700000000000001,"pending":false,
                         "resources_sent":2,"removals_sent":0},
             "listeners":{"sent":7,"acked":6,"acked_at_us":null,"pending":true,
                          "resources_sent":1,"removals_sent":0}},
    "last_nack":{"type_name":"listeners","version":5,"message":"scripted rejection",
                 "at_ms":1700000000002}}"#;

#[test]
fn envoys_of_one_replica() {
    let json = format!(r#"{{"node_id":1,"revision":7,"nacks_total":1,"envoys":[{ENVOY}]}}"#);
    let l: LocalEnvoys = round_trip(&json);
    assert_eq!(l.ids(), ["envoy-1"]);
    assert_eq!(l.envoys[0].acked("listeners"), Some(6));
    assert_eq!(l.envoys[0].sync_state(7), SyncState::Pending);
}

#[test]
fn envoys_of_the_cluster() {
    let json = format!(
        r#"{{"asked":2,"revision":7,
            "replicas":[{{"node_id":1,"revision":7,"nacks_total":1,"envoys":1}},
                        {{"node_id":3,"error":"node 3 at 127.0.0.1:7103 is unreachable"}}],
            "envoys":[{}]}}"#,
        ENVOY.replacen('{', r#"{"replica":1,"replica_revision":7,"#, 1)
    );
    let c: ClusterEnvoys = round_trip(&json);
    assert!(matches!(
        c.replica(3).map(|r| &r.answer),
        Some(envoys::ReplicaAnswer::Failed { .. })
    ));
    assert!(matches!(
        c.replica(1).map(|r| &r.answer),
        Some(envoys::ReplicaAnswer::Answered { envoys: 1, .. })
    ));
    let e = c.envoy("envoy-1").expect("envoy-1 listed");
    assert_eq!(e.replica, 1);
    assert_eq!(e.envoy.stream, 3);
}

#[test]
fn discovery() {
    let d: DiscoveryStatus = round_trip(
        r#"{"node_id":1,"enabled":true,"leader":1,"polling":true,
            "note":"this replica leads and polls",
            "poller":{"polling":true,"server":"127.0.0.1:5353",
                "sources":["txt:_instances.internal:8443"],"interval_ms":1000,"polls":5,
                "errors":1,"consecutive_errors":0,"last_poll_at_ms":1700000000000,
                "last_poll_us":800,"last_result":"unchanged",
                "last_error":[1699999999000,"timed out"],
                "last_change":{"at_ms":1700000000000,"revision":9,"added":2,"updated":0,
                               "removed":1},
                "discovered":2,
                "skipped":[{"name":"_instances.internal","entry":"junk","reason":"no ip"}],
                "skipped_total":3,"changes":1,"held":0,"stale":0}}"#,
    );
    let p = d.poller.expect("poller");
    assert_eq!(p.last_error.map(|e| e.1), Some("timed out".into()));
    let off: DiscoveryStatus = round_trip(
        r#"{"node_id":2,"enabled":false,"leader":null,"polling":false,
            "note":"DNS discovery is off on this replica (no --dns-server)","poller":null}"#,
    );
    assert!(off.poller.is_none());
}

#[test]
fn xds_resources() {
    let x: XdsResources = round_trip(
        r#"{"node_id":2,"resources":{"version_info":"7",
            "listener":{"name":"builders","address":"0.0.0.0:10000",
                        "filter_chains":[["b1.builders.test","builder_b1"]]},
            "clusters":[{"name":"builder_b1","endpoint":"127.0.0.1:9001"}],"skipped":[]}}"#,
    );
    let l = x.resources.listener.expect("listener");
    assert_eq!(l.filter_chains[0].0, "b1.builders.test");
}
