//! The SotW driver's rules, driven through a channel: first requests always answered, NACKed
//! versions not sent again (on this stream or a later one) while the next version is, never
//! backwards, and pushes in the type table's order.

use super::SotwStream;
use crate::resources::{CLUSTER_TYPE, LISTENER_TYPE};
use crate::stream::testing::{CATCH_UP, Envoy, Replica, builder, node};
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::rpc::Status as RpcStatus;

/// A request of Envoy `envoy-1`.
fn request(type_url: &str, version: &str, nonce: &str, error: Option<&str>) -> DiscoveryRequest {
    DiscoveryRequest {
        node: node("envoy-1"),
        version_info: version.into(),
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

/// Starts a SotW driver on `replica` and returns the Envoy's end.
fn connect(replica: &Replica) -> Envoy<DiscoveryRequest> {
    let (envoy, peer, inbound, tx) = replica.stream();
    tokio::spawn(SotwStream::new(replica.xds.clone(), peer, tx).run(inbound));
    envoy
}

async fn response(envoy: &mut Envoy<DiscoveryRequest>) -> DiscoveryResponse {
    envoy
        .recv()
        .await
        .expect("a response, not the stream's end")
}

#[tokio::test]
async fn the_first_request_is_answered_even_at_the_envoys_own_version() {
    let replica = Replica::new(None);
    let mut envoy = connect(&replica);
    // A reconnecting Envoy already at this replica's revision: answered all the same (it may
    // be warming, and it waits for a response).
    envoy.send(request(CLUSTER_TYPE, "1", "", None)).await;
    let r = response(&mut envoy).await;
    assert_eq!(
        (r.type_url.as_str(), r.version_info.as_str()),
        (CLUSTER_TYPE, "1")
    );
    assert_eq!(r.resources.len(), 2);
    assert_eq!(r.control_plane.unwrap().identifier, "replica-1");
    envoy.send(request(LISTENER_TYPE, "1", "", None)).await;
    let r = response(&mut envoy).await;
    assert_eq!(
        (r.type_url.as_str(), r.version_info.as_str()),
        (LISTENER_TYPE, "1")
    );
    assert_eq!(r.resources.len(), 1);
    envoy.close().await;
}

#[tokio::test]
async fn a_nacked_version_is_not_resent_and_the_next_one_is() {
    let mut replica = Replica::new(None);
    let mut envoy = connect(&replica);
    envoy.send(request(CLUSTER_TYPE, "", "", None)).await;
    let first = response(&mut envoy).await;
    assert_eq!(first.version_info, "1");
    envoy
        .send(request(CLUSTER_TYPE, "", &first.nonce, Some("bad cluster")))
        .await;
    // Had the driver answered the NACK by sending version 1 again, that would come first.
    replica.nacked(1).await;
    replica.apply(2, vec![builder("b0", 444)]);
    let next = response(&mut envoy).await;
    assert_eq!(next.version_info, "2", "the NACKed version was sent again");
    envoy.close().await;
}

#[tokio::test]
async fn a_version_nacked_on_an_earlier_stream_is_not_resent_and_the_next_one_is() {
    let mut replica = Replica::new(None);
    let mut envoy = connect(&replica);
    envoy.send(request(CLUSTER_TYPE, "", "", None)).await;
    let first = response(&mut envoy).await;
    envoy
        .send(request(CLUSTER_TYPE, "", &first.nonce, Some("bad cluster")))
        .await;
    replica.nacked(1).await;
    envoy.close().await;
    // The same Envoy reconnects, still holding nothing it accepted: not sent version 1 again.
    let mut envoy = connect(&replica);
    envoy.send(request(CLUSTER_TYPE, "", "", None)).await;
    replica.connected("envoy-1").await;
    replica.apply(2, vec![builder("b0", 444)]);
    let next = response(&mut envoy).await;
    assert_eq!(next.version_info, "2", "the NACKed version was sent again");
    envoy.close().await;
}

#[tokio::test]
async fn an_envoy_ahead_of_the_replica_is_not_sent_older_config() {
    let replica = Replica::new(None);
    let mut envoy = connect(&replica);
    // The Envoy has revision 9 from another replica; this one has applied 1.
    envoy.send(request(CLUSTER_TYPE, "9", "", None)).await;
    let end = envoy.recv::<DiscoveryResponse>().await;
    let status = end.expect_err("an Envoy ahead of the replica was sent older config");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains(&format!("{CATCH_UP:?}")),
        "{status:?}"
    );
}

#[tokio::test]
async fn an_envoy_ahead_of_the_replica_is_answered_once_it_catches_up() {
    let mut replica = Replica::new(None);
    let mut envoy = connect(&replica);
    envoy.send(request(CLUSTER_TYPE, "3", "", None)).await;
    replica.connected("envoy-1").await;
    replica.apply(2, vec![builder("b0", 444)]);
    replica.apply(3, vec![builder("b1", 444)]);
    let r = response(&mut envoy).await;
    assert_eq!(
        r.version_info, "3",
        "sent a revision older than the Envoy's"
    );
    envoy.close().await;
}

#[tokio::test]
async fn a_new_revision_is_pushed_clusters_first() {
    let mut replica = Replica::new(None);
    let mut envoy = connect(&replica);
    // Listeners subscribed first: the push order is the type table's, not the Envoy's.
    for type_url in [LISTENER_TYPE, CLUSTER_TYPE] {
        envoy.send(request(type_url, "", "", None)).await;
        let r = response(&mut envoy).await;
        envoy
            .send(request(type_url, &r.version_info, &r.nonce, None))
            .await;
    }
    replica.apply(2, vec![builder("b2", 443)]);
    let first = response(&mut envoy).await;
    let second = response(&mut envoy).await;
    assert_eq!(
        [first.type_url.as_str(), second.type_url.as_str()],
        [CLUSTER_TYPE, LISTENER_TYPE]
    );
    assert_eq!([first.version_info, second.version_info], ["2", "2"]);
    assert_eq!(first.resources.len(), 3);
    envoy.close().await;
}

#[tokio::test]
async fn types_this_replica_does_not_serve_are_ignored_and_counted() {
    let replica = Replica::new(None);
    let mut envoy = connect(&replica);
    // A client asking for ever new type URLs: none gets an answer, nor any state.
    for i in 0..10 {
        let junk = format!("type.googleapis.com/junk.{i}");
        envoy.send(request(&junk, "", "", None)).await;
    }
    envoy.send(request(CLUSTER_TYPE, "", "", None)).await;
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
    envoy.send(request(CLUSTER_TYPE, "", "", None)).await;
    let first = response(&mut envoy).await;
    assert_eq!(first.version_info, "1");
    // Two revisions while version 1 is not ACKed yet, then a request of another type, which
    // the driver handles after it has seen them.
    replica.apply(2, vec![builder("b0", 444)]);
    replica.apply(3, vec![builder("b0", 555)]);
    envoy.send(request(LISTENER_TYPE, "", "", None)).await;
    let mut early = Vec::new();
    loop {
        let r = response(&mut envoy).await;
        if r.type_url == LISTENER_TYPE {
            assert_eq!(r.version_info, "3");
            break;
        }
        early.push(r.version_info);
    }
    early.extend(
        envoy
            .try_recv::<DiscoveryResponse>()
            .map(|r| r.version_info),
    );
    assert!(
        early.is_empty(),
        "clusters at {early:?} were sent while version 1 was unacknowledged"
    );
    envoy
        .send(request(CLUSTER_TYPE, "1", &first.nonce, None))
        .await;
    let next = response(&mut envoy).await;
    assert_eq!(
        (next.type_url.as_str(), next.version_info.as_str()),
        (CLUSTER_TYPE, "3"),
        "the ACK is answered with the newest revision"
    );
    envoy.close().await;
}
