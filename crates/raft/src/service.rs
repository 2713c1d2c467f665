//! The server side of the peer channel: receives openraft RPCs and forwarded client requests.
//!
//! Every call is checked against this replica's cluster name and node id first, so a replica of
//! another cluster, or a peer that dials the wrong address, is refused with a message that says so.

use crate::network::{CLUSTER_HEADER, TO_HEADER};
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
        let resp = self.node.raft().append_entries(rpc).await;
        if matches!(&resp, Ok(r) if r.is_success()) {
            self.node.touch_leader_contact();
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
        // Executed here or refused with NotLeader: never forwarded again, so no loops.
        reply(&self.node.execute_local(rpc).await)
    }
}
