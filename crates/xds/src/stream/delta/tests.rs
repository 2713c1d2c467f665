//! The delta driver's rules, driven through a channel: first requests always answered, NACKed
//! resource versions not sent again (on this stream or a later one) while the next versions
//! are, and never backwards: every stream waits for the replica to catch up with the cluster
//! before its first response, whatever its Envoy reports holding (nothing, included).

use super::DeltaStream;
use crate::config::ReadBarrierFn;
use crate::resources::{CLUSTER_TYPE, LISTENER_TYPE};
use crate::stream::testing::{CATCH_UP, Envoy, Replica, builder, node};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use std::collections::HashMap;
use std::sync::Arc;

/// A request of Envoy `envoy-1`.
fn request(type_url: &str, nonce: &str, error: Option<&str>) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        node: node("envoy-1"),
        type_url: type_url.into(),
        response_nonce: nonce.into(),
        error_detail: error.map(|message| RpcStatus {
            code: 13,
            message: message.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A first request of an Envoy that holds `held` (name → version).
fn reconnect(type_url: &str, held: HashMap<String, String>) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        initial_resource_versions: held,
        ..request(type_url, "", None)
    }
}

/// A read barrier that reports the cluster at `revision`.
fn barrier(revision: u64) -> Option<ReadBarrierFn> {
    Some(Arc::new(move || Box::pin(async move { Ok(revision) })))
}

/// Starts a delta driver on `replica` and returns the Envoy's end.
fn connect(replica: &Replica) -> Envoy<DeltaDiscoveryRequest> {
    let (envoy, peer, inbound, tx) = replica.stream();
    tokio::spawn(DeltaStream::new(replica.xds.clone(), peer, tx).run(inbound));
    envoy
}

async fn response(envoy: &mut Envoy<DeltaDiscoveryRequest>) -> DeltaDiscoveryResponse {
    envoy
        .recv()
        .await
        .expect("a response, not the stream's end")
}

fn names(r: &DeltaDiscoveryResponse) -> Vec<&str> {
    r.resources.iter().map(|r| r.name.as_str()).collect()
}

#[tokio::test]
async fn the_first_request_is_answered_even_when_the_envoy_holds_everything() {
    let replica = Replica::new(None);
    let held: HashMap<String, String> = replica
        .xds
        .snapshots
        .borrow()
        .cluster_map()
        .values()
        .map(|n| (n.name.clone(), n.version.clone()))
        .collect();
    assert_eq!(held.len(), 2);
    let mut envoy = connect(&replica);
    envoy.send(reconnect(CLUSTER_TYPE, held)).await;
    // Nothing differs, and the Envoy still hears the revision: it waits for a response.
    let r = response(&mut envoy).await;
    assert_eq!(
        (r.type_url.as_str(), r.system_version_info.as_str()),
        (CLUSTER_TYPE, "1")
    );
    assert!(
        r.resources.is_empty() && r.removed_resources.is_empty(),
        "{r:?}"
    );
    // A fresh subscription gets everything.
    envoy.send(request(LISTENER_TYPE, "", None)).await;
    let r = response(&mut envoy).await;
    assert_eq!(
        (r.type_url.as_str(), names(&r)),
        (LISTENER_TYPE, vec!["builders"])
    );
    envoy.close().await;
}

#[tokio::test]
async fn a_nacked_version_is_not_resent_and_the_next_one_is() {
    let mut replica = Replica::new(None);
    let mut envoy = connect(&replica);
    envoy.send(request(CLUSTER_TYPE, "", None)).await;
    let first = response(&mut envoy).await;
    assert_eq!(names(&first), ["builder_b0", "builder_b1"]);
    envoy
        .send(request(CLUSTER_TYPE, &first.nonce, Some("bad cluster")))
        .await;
    // Had the driver answered the NACK by sending version 1 again, that would come first.
    replica.nacked(1).await;
    replica.apply(2, vec![builder("b0", 444)]);
    let next = response(&mut envoy).await;
    assert_eq!(
        next.system_version_info, "2",
        "the NACKed version was sent again"
    );
    assert_eq!(names(&next), ["builder_b0"], "only what changed since");
    envoy.close().await;
}

#[tokio::test]
async fn a_version_nacked_on_an_earlier_stream_is_not_resent_and_the_next_one_is() {
    let mut replica = Replica::new(None);
    let mut envoy = connect(&replica);
    envoy.send(request(CLUSTER_TYPE, "", None)).await;
    let first = response(&mut envoy).await;
    envoy
        .send(request(CLUSTER_TYPE, &first.nonce, Some("bad cluster")))
        .await;
    replica.nacked(1).await;
    envoy.close().await;
    // The same Envoy reconnects holding nothing: it hears the revision, not the resources it
    // rejected; the next change is sent.
    let mut envoy = connect(&replica);
    envoy.send(request(CLUSTER_TYPE, "", None)).await;
    let r = response(&mut envoy).await;
    assert_eq!(r.system_version_info, "1");
    assert!(
        r.resources.is_empty(),
        "the NACKed version was sent again: {:?}",
        names(&r)
    );
    envoy.send(request(CLUSTER_TYPE, &r.nonce, None)).await;
    replica.apply(2, vec![builder("b0", 444)]);
    let next = response(&mut envoy).await;
    assert_eq!(next.system_version_info, "2");
    assert_eq!(names(&next), ["builder_b0"]);
    envoy.close().await;
}

#[tokio::test]
async fn an_envoy_holding_what_the_replica_does_not_serve_is_not_sent_older_config() {
    // The cluster is at revision 9; this replica has applied 1 and does not get further.
    let replica = Replica::new(barrier(9));
    let mut envoy = connect(&replica);
    let held = [("builder_b0".to_string(), "00000000000000ff".to_string())].into();
    envoy.send(reconnect(CLUSTER_TYPE, held)).await;
    let end = envoy.recv::<DeltaDiscoveryResponse>().await;
    let status = end.expect_err("an Envoy ahead of the replica was sent older config");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains(&format!("{CATCH_UP:?}")),
        "{status:?}"
    );
}

#[tokio::test]
async fn an_envoy_holding_what_the_replica_does_not_serve_is_answered_once_it_catches_up() {
    let mut replica = Replica::new(barrier(3));
    let mut envoy = connect(&replica);
    let held = [("builder_b0".to_string(), "00000000000000ff".to_string())].into();
    envoy.send(reconnect(CLUSTER_TYPE, held)).await;
    replica.connected("envoy-1").await;
    replica.apply(2, vec![builder("b0", 444)]);
    replica.apply(3, vec![builder("b1", 444)]);
    let r = response(&mut envoy).await;
    assert_eq!(
        r.system_version_info, "3",
        "sent a revision older than the cluster's"
    );
    assert_eq!(names(&r), ["builder_b0", "builder_b1"]);
    envoy.close().await;
}

#[tokio::test]
async fn an_envoy_holding_nothing_is_not_sent_a_state_older_than_the_clusters() {
    // Every builder was removed at revision 2 and an Envoy ACKed that on another replica: its
    // newest state is empty, so on reconnect it reports holding nothing, as a fresh Envoy
    // does. This replica has applied revision 1 (b0 and b1); the cluster is at 2.
    let mut replica = Replica::new(barrier(2));
    let mut envoy = connect(&replica);
    envoy.send(request(CLUSTER_TYPE, "", None)).await;
    replica.connected("envoy-1").await;
    replica.change(2, vec![], vec!["b0", "b1"]);
    let r = response(&mut envoy).await;
    assert_eq!(
        (r.system_version_info.as_str(), names(&r)),
        ("2", vec![]),
        "sent a revision older than the cluster's, bringing removed builders back"
    );
    envoy.close().await;
}

#[tokio::test]
async fn an_envoy_holding_nothing_is_turned_away_by_a_replica_that_cannot_catch_up() {
    let replica = Replica::new(barrier(9));
    let mut envoy = connect(&replica);
    envoy.send(request(CLUSTER_TYPE, "", None)).await;
    let end = envoy.recv::<DeltaDiscoveryResponse>().await;
    let status = end.expect_err("a replica behind the cluster answered an empty Envoy");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
}

#[tokio::test]
async fn an_envoy_holding_exactly_what_a_lagging_replica_serves_is_not_sent_a_lower_revision() {
    // Revision 2 added b2 and revision 3 removed it again: an Envoy at 3 holds exactly what
    // this replica serves at 1 (as an sni-cluster listener is identical at every revision),
    // and must still not hear revision 1.
    let mut replica = Replica::new(barrier(3));
    let held: HashMap<String, String> = replica
        .xds
        .snapshots
        .borrow()
        .cluster_map()
        .values()
        .map(|n| (n.name.clone(), n.version.clone()))
        .collect();
    let mut envoy = connect(&replica);
    envoy.send(reconnect(CLUSTER_TYPE, held)).await;
    replica.connected("envoy-1").await;
    replica.apply(2, vec![builder("b2", 443)]);
    replica.change(3, vec![], vec!["b2"]);
    let r = response(&mut envoy).await;
    assert_eq!(
        r.system_version_info, "3",
        "answered with a revision lower than the Envoy's"
    );
    assert!(
        r.resources.is_empty() && r.removed_resources.is_empty(),
        "{r:?}"
    );
    envoy.close().await;
}

#[tokio::test]
async fn a_stream_catches_up_once_before_its_first_response() {
    let calls = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let c = calls.clone();
    let barrier: ReadBarrierFn = Arc::new(move || {
        c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(async { Ok(1) })
    });
    let replica = Replica::new(Some(barrier));
    let mut envoy = connect(&replica);
    envoy.send(request(CLUSTER_TYPE, "", None)).await;
    assert_eq!(names(&response(&mut envoy).await).len(), 2);
    envoy.send(request(LISTENER_TYPE, "", None)).await;
    assert_eq!(names(&response(&mut envoy).await), ["builders"]);
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    envoy.close().await;
}

#[tokio::test]
async fn types_this_replica_does_not_serve_are_ignored_and_counted() {
    let replica = Replica::new(None);
    let mut envoy = connect(&replica);
    // A client asking for ever new type URLs: none gets an answer, nor any state.
    for i in 0..10 {
        let junk = format!("type.googleapis.com/junk.{i}");
        envoy.send(request(&junk, "", None)).await;
    }
    envoy.send(request(CLUSTER_TYPE, "", None)).await;
    let r = response(&mut envoy).await;
    assert_eq!(r.type_url, CLUSTER_TYPE, "an unserved type was answered");
    let listed = replica.xds.envoys.list();
    assert_eq!(listed[0].types.keys().collect::<Vec<_>>(), ["clusters"]);
    // Counted (at least these: the counter is the process's).
    assert!(concord_telemetry::metrics().unknown_type_requests.get() >= 10);
    envoy.close().await;
}

#[tokio::test]
async fn one_response_per_type_is_unacknowledged_and_newer_revisions_coalesce() {
    let mut replica = Replica::new(None);
    let mut envoy = connect(&replica);
    envoy.send(request(CLUSTER_TYPE, "", None)).await;
    let first = response(&mut envoy).await;
    assert_eq!(first.system_version_info, "1");
    replica.apply(2, vec![builder("b0", 444)]);
    replica.apply(3, vec![builder("b1", 555)]);
    envoy.send(request(LISTENER_TYPE, "", None)).await;
    let mut early = Vec::new();
    loop {
        let r = response(&mut envoy).await;
        if r.type_url == LISTENER_TYPE {
            assert_eq!(r.system_version_info, "3");
            break;
        }
        early.push(r.system_version_info);
    }
    early.extend(
        envoy
            .try_recv::<DeltaDiscoveryResponse>()
            .map(|r| r.system_version_info),
    );
    assert!(
        early.is_empty(),
        "clusters at {early:?} were sent while version 1 was unacknowledged"
    );
    envoy.send(request(CLUSTER_TYPE, &first.nonce, None)).await;
    let next = response(&mut envoy).await;
    assert_eq!(
        (next.type_url.as_str(), next.system_version_info.as_str()),
        (CLUSTER_TYPE, "3"),
        "the ACK is answered with the newest revision"
    );
    assert_eq!(
        names(&next),
        ["builder_b0", "builder_b1"],
        "both changes since version 1, in one response"
    );
    envoy.close().await;
}

#[tokio::test]
async fn a_subscription_beyond_the_name_bound_ends_the_stream() {
    use crate::protocol::delta::MAX_NAMES_PER_TYPE;
    let replica = Replica::new(None);
    let mut envoy = connect(&replica);
    envoy.send(request(CLUSTER_TYPE, "", None)).await;
    let first = response(&mut envoy).await;
    // Within the bound: answered. One more name than it allows, in a later request: refused.
    let names = |from: usize, n: usize| (from..from + n).map(|i| format!("name-{i}")).collect();
    envoy
        .send(DeltaDiscoveryRequest {
            resource_names_subscribe: names(0, MAX_NAMES_PER_TYPE),
            ..request(CLUSTER_TYPE, &first.nonce, None)
        })
        .await;
    envoy
        .send(DeltaDiscoveryRequest {
            resource_names_subscribe: names(MAX_NAMES_PER_TYPE, 1),
            ..request(CLUSTER_TYPE, "", None)
        })
        .await;
    let end = loop {
        match envoy.recv::<DeltaDiscoveryResponse>().await {
            Ok(_) => continue,
            Err(status) => break status,
        }
    };
    assert_eq!(end.code(), tonic::Code::InvalidArgument, "{end:?}");
    assert!(end.message().contains("resource names"), "{end:?}");
}

#[tokio::test]
async fn a_type_with_nothing_new_is_held_at_the_revision_without_a_response() {
    let mut replica = Replica::new(None);
    let mut envoy = connect(&replica);
    envoy.send(request(CLUSTER_TYPE, "", None)).await;
    let clusters = response(&mut envoy).await;
    envoy.send(request(LISTENER_TYPE, "", None)).await;
    let listeners = response(&mut envoy).await;
    assert_eq!(listeners.type_url, LISTENER_TYPE);
    envoy
        .send(request(CLUSTER_TYPE, &clusters.nonce, None))
        .await;
    envoy
        .send(request(LISTENER_TYPE, &listeners.nonce, None))
        .await;
    // A port moves: the clusters change, the listener (which routes by name) does not.
    replica.apply(2, vec![builder("b0", 444)]);
    let r = response(&mut envoy).await;
    assert_eq!(
        (r.type_url.as_str(), r.system_version_info.as_str()),
        (CLUSTER_TYPE, "2")
    );
    envoy.send(request(CLUSTER_TYPE, &r.nonce, None)).await;
    replica.apply(3, vec![builder("b1", 555)]);
    let r = response(&mut envoy).await;
    assert_eq!(
        (
            r.type_url.as_str(),
            r.system_version_info.as_str(),
            r.resources.len()
        ),
        (CLUSTER_TYPE, "3", 1),
        "a listeners response with nothing in it was sent: {r:?}"
    );
    // The status says what the Envoy holds: the listener of revision 3, as it was ACKed.
    let status = replica.xds.envoys.list();
    let l = status[0].of("listeners").expect("listeners");
    assert_eq!((l.sent, l.acked, l.pending), (Some(3), Some(3), false));
    assert_eq!(status[0].of("clusters").map(|c| c.sent), Some(Some(3)));
    envoy.close().await;
}

#[tokio::test]
async fn a_stream_whose_envoy_always_has_a_request_ready_still_ends_at_shutdown() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let replica = Replica::new(None);
    let (_envoy, peer, _, tx) = replica.stream::<DeltaDiscoveryRequest>();
    // Requests for a type the replica does not serve, each ready at once (never a wait), as
    // many as the driver reads: each is read and ignored.
    let read = Arc::new(AtomicUsize::new(0));
    let counted = read.clone();
    struct Flood(Arc<AtomicUsize>);
    impl tokio_stream::Stream for Flood {
        type Item = Result<DeltaDiscoveryRequest, tonic::Status>;
        fn poll_next(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            let n = self.0.fetch_add(1, Ordering::Relaxed);
            let r = request("type.googleapis.com/not.Served", "", None);
            std::task::Poll::Ready((n < 100_000).then_some(Ok(r)))
        }
    }
    let flood = Flood(counted);
    replica.xds.shutdown.cancel();
    DeltaStream::new(replica.xds.clone(), peer, tx)
        .run(flood)
        .await;
    let read = read.load(Ordering::Relaxed);
    assert!(
        read <= super::super::ENDS_FIRST_EVERY as usize,
        "the stream read {read} requests after the shutdown"
    );
}
