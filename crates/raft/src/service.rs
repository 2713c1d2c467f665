//! The server side of the peer channel: receives openraft RPCs and forwarded client requests.
//!
//! Every call is checked against this replica's cluster name and node id first, so a replica of
//! another cluster, or a peer that dials the wrong address, is refused with a message that says so.
//! With TLS, the caller's certificate (already signed by the cluster CA, or the handshake failed)
//! must name the node id the caller claims, and that node must be a member (voter or learner) of
//! the membership this replica knows. A replica that knows no membership yet (a new node waiting
//! to be initialised or added as a learner) accepts any node of its cluster: it has nothing to
//! check against, and whoever adds it is a member of the cluster that the CA vouches for.

use crate::contact::{LEADER_QUORUM_HEADER, decode_age};
use crate::network::{CLUSTER_HEADER, FROM_HEADER, TO_HEADER};
use crate::node::Node;
use crate::proto::Message;
use crate::proto::raft_server::Raft as RaftRpc;
use crate::{ClientRequest, TypeConfig};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The peer RPC service of one replica.
pub struct PeerService {
    node: Arc<Node>,
}

impl PeerService {
    /// Serves `node`'s peer RPCs.
    pub fn new(node: Arc<Node>) -> Self {
        PeerService { node }
    }

    fn check(&self, req: &Request<Message>) -> Result<(), Status> {
        if self.node.is_isolated() {
            return Err(Status::unavailable("isolated by fault injection"));
        }
        let md = req.metadata();
        let header = |k| md.get(k).and_then(|v| v.to_str().ok()).unwrap_or("");
        if self.node.is_cut_off_from(header(FROM_HEADER)) {
            return Err(Status::unavailable("cut off by fault injection"));
        }
        let cluster = header(CLUSTER_HEADER);
        if cluster != self.node.cluster() {
            tracing::warn!(peer_cluster = cluster, "refused a peer of another cluster");
            return Err(Status::permission_denied(format!(
                "this replica belongs to cluster {:?}, the caller to {cluster:?}",
                self.node.cluster()
            )));
        }
        let to = header(TO_HEADER);
        if to != self.node.id().to_string() {
            tracing::warn!(to, "refused a call meant for another node id");
            return Err(Status::failed_precondition(format!(
                "this is node {}, the caller meant node {to}; check the member addresses",
                self.node.id()
            )));
        }
        if let Some(tls) = self.node.tls() {
            self.check_identity(tls, req, header(FROM_HEADER))
                .inspect_err(|_| concord_telemetry::metrics().peer_calls_refused.inc())?;
        }
        Ok(())
    }

    /// The caller's certificate names the node it claims to be, and that node is a member.
    fn check_identity(
        &self,
        tls: &concord_tls::PeerTls,
        req: &Request<Message>,
        from: &str,
    ) -> Result<(), Status> {
        let certs = req.peer_certs();
        let Some(leaf) = certs.as_ref().and_then(|c| c.first()) else {
            return Err(Status::unauthenticated("no client certificate"));
        };
        let Some(id) = tls.peer_node_id(leaf) else {
            tracing::warn!(
                from,
                "refused a peer whose certificate names no node of this cluster"
            );
            return Err(Status::permission_denied(format!(
                "the client certificate names no node of cluster {c:?} (URI SAN \
                 spiffe://concord/{c}/node/<id>)",
                c = tls.cluster(),
            )));
        };
        if from != id.to_string() {
            tracing::warn!(
                from,
                cert_node = id,
                "refused a peer that claims another node id"
            );
            return Err(Status::permission_denied(format!(
                "the caller claims node {from:?} but its certificate names node {id}"
            )));
        }
        let known = {
            let m = self.node.raft().metrics();
            let m = m.borrow();
            let membership = m.membership_config.membership();
            let none = membership.nodes().next().is_none();
            none || membership.get_node(&id).is_some()
        };
        if !known {
            tracing::warn!(cert_node = id, "refused a peer that is not a member");
            return Err(Status::permission_denied(format!(
                "node {id} is not a member of this cluster; add it with `concord cluster add-learner` first"
            )));
        }
        Ok(())
    }
}

fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, Status> {
    serde_json::from_slice(payload)
        .map_err(|e| Status::invalid_argument(format!("undecodable request: {e}")))
}

fn reply<T: Serialize>(v: &T) -> Result<Response<Message>, Status> {
    Ok(Response::new(Message {
        payload: serde_json::to_vec(v).map_err(|e| Status::internal(e.to_string()))?,
        data: Vec::new(),
    }))
}

#[tonic::async_trait]
impl RaftRpc for PeerService {
    async fn append_entries(&self, req: Request<Message>) -> Result<Response<Message>, Status> {
        self.check(&req)?;
        let rpc: AppendEntriesRequest<TypeConfig> = decode(&req.get_ref().payload)?;
        let leader_quorum_age = decode_age(
            req.metadata()
                .get(LEADER_QUORUM_HEADER)
                .and_then(|v| v.to_str().ok()),
        );
        let resp = self.node.raft().append_entries(rpc).await;
        if matches!(&resp, Ok(r) if r.is_success()) {
            self.node.touch_leader_contact(leader_quorum_age);
        }
        reply(&resp)
    }

    async fn vote(&self, req: Request<Message>) -> Result<Response<Message>, Status> {
        self.check(&req)?;
        let rpc: VoteRequest<u64> = decode(&req.get_ref().payload)?;
        reply(&self.node.raft().vote(rpc).await)
    }

    async fn install_snapshot(&self, req: Request<Message>) -> Result<Response<Message>, Status> {
        self.check(&req)?;
        let msg = req.into_inner();
        let mut rpc: InstallSnapshotRequest<TypeConfig> = decode(&msg.payload)?;
        rpc.data = msg.data;
        reply(&self.node.raft().install_snapshot(rpc).await)
    }

    async fn forward(&self, req: Request<Message>) -> Result<Response<Message>, Status> {
        self.check(&req)?;
        let rpc: ClientRequest = decode(&req.get_ref().payload)?;
        let write = matches!(rpc, ClientRequest::Write(_));
        // Executed here or refused with NotLeader: never forwarded again, so no loops.
        let answer = self.node.execute_local(rpc).await;
        if let Some(hold) = write.then(|| self.node.take_held_reply()).flatten() {
            tokio::time::sleep(hold).await;
        }
        reply(&answer)
    }
}
