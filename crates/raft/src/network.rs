//! The client side of the peer channel: openraft's [`RaftNetworkFactory`] over tonic, and request
//! forwarding to the leader.
//!
//! One lazily connected HTTP/2 channel per peer (node id and address) is shared by the replication
//! stream, votes and forwarded requests; tonic reconnects it after a failure. With TLS, each
//! connection presents this node's certificate and accepts only a server whose certificate names
//! the node id it dials (see [`concord_tls::peer`]).

use crate::api::{ClientError, ClientReply, ClientRequest};
use crate::contact::{ContactClock, LEADER_QUORUM_HEADER, encode_age};
use crate::proto::Message;
use crate::proto::raft_client::RaftClient;
use crate::{NodeId, TypeConfig};
use concord_tls::PeerTls;
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, BasicNode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// Largest message on the peer channel (snapshot chunks and large append batches).
pub const MAX_MESSAGE: usize = 256 * 1024 * 1024;
/// Metadata key: the cluster name.
pub const CLUSTER_HEADER: &str = "x-concord-cluster";
/// Metadata key: the sender's node id.
pub const FROM_HEADER: &str = "x-concord-from";
/// Metadata key: the node id the sender means to reach.
pub const TO_HEADER: &str = "x-concord-to";

/// Peer channels by node id and address.
type Channels = HashMap<(NodeId, String), Channel>;

/// Creates peer connections for openraft and for forwarding; cheap to clone.
#[derive(Clone)]
pub struct Network {
    cluster: String,
    from: NodeId,
    tls: Option<Arc<PeerTls>>,
    /// Channels by peer, made with the TLS files of the generation beside them.
    channels: Arc<Mutex<(u64, Channels)>>,
    /// Fault injection: while set, every call fails as if the network were cut.
    isolated: Arc<AtomicBool>,
    /// Fault injection: the peers this node is cut off from (both ways), as in a partition.
    cut: Arc<Mutex<BTreeSet<NodeId>>>,
    /// This node's contact with a quorum; as leader, it tells its followers how long ago its
    /// quorum acknowledged it.
    contact: Arc<ContactClock>,
    /// How soon openraft tries an unreachable peer again (see [`Network::retry_unreachable`]).
    retry: Duration,
}

/// openraft's own pause before it tries an unreachable peer again.
const OPENRAFT_DEFAULT_RETRY: Duration = Duration::from_millis(500);

impl Network {
    /// A network for node `from` of `cluster`; plaintext without `tls`.
    pub fn new(cluster: String, from: NodeId, tls: Option<Arc<PeerTls>>) -> Self {
        Network {
            cluster,
            from,
            tls,
            channels: Arc::default(),
            isolated: Arc::default(),
            cut: Arc::default(),
            contact: Arc::default(),
            retry: OPENRAFT_DEFAULT_RETRY,
        }
    }

    /// Sets how soon the leader tries an unreachable peer again; a heartbeat interval suits.
    ///
    /// openraft pauses replication to a peer that failed as unreachable for this long (500 ms
    /// unless the network says otherwise). A replica restarted inside that pause hears nothing
    /// from the leader, its election timer fires, and it campaigns in a higher term and deposes
    /// a healthy leader: a second election for one fault (issue 17). Retrying a dead peer costs
    /// one refused connection per retry.
    pub fn retry_unreachable(mut self, every: Duration) -> Self {
        self.retry = every;
        self
    }

    /// This node's contact clock, shared with the node and its peer server.
    pub(crate) fn contact(&self) -> Arc<ContactClock> {
        self.contact.clone()
    }

    /// The peers cut off by fault injection, shared with the peer server (see
    /// [`crate::Node::cut_off`]).
    pub(crate) fn cut(&self) -> Arc<Mutex<BTreeSet<NodeId>>> {
        self.cut.clone()
    }

    /// The fault-injection switch shared with the peer server (see [`crate::Node::isolate`]).
    pub(crate) fn isolation(&self) -> Arc<AtomicBool> {
        self.isolated.clone()
    }

    fn client(&self, to: NodeId, addr: &str) -> Result<RaftClient<Channel>, NoChannel> {
        if self.isolated.load(Ordering::Relaxed) {
            return Err(NoChannel::Isolated);
        }
        if self
            .cut
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&to)
        {
            return Err(NoChannel::CutOff(to));
        }
        let mut guard = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        let (generation, channels) = &mut *guard;
        // After a certificate rotation, dial anew so peers see the new certificate (and an old
        // one can be revoked); calls in flight finish on the old connections.
        let now = self.tls.as_ref().map_or(0, |t| t.generation());
        if *generation != now {
            *generation = now;
            channels.clear();
        }
        let key = (to, addr.to_string());
        let channel = match channels.get(&key) {
            Some(c) => c.clone(),
            None => {
                let endpoint = Endpoint::from_shared(format!("http://{addr}"))
                    .map_err(|e| NoChannel::BadAddress {
                        addr: addr.to_string(),
                        error: e.to_string(),
                    })?
                    .connect_timeout(Duration::from_millis(500))
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(5))
                    .keep_alive_timeout(Duration::from_secs(5));
                let c = match &self.tls {
                    Some(tls) => {
                        let tls = tls.clone();
                        endpoint.connect_with_connector_lazy(concord_tls::net::connector(
                            move || tls.client_config(to),
                        ))
                    }
                    None => endpoint.connect_lazy(),
                };
                channels.insert(key, c.clone());
                c
            }
        };
        Ok(RaftClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE))
    }

    fn request(&self, to: NodeId, msg: Message, timeout: Duration) -> tonic::Request<Message> {
        let mut req = tonic::Request::new(msg);
        req.set_timeout(timeout);
        let md = req.metadata_mut();
        // The cluster name is validated as ASCII when the config is read.
        if let Ok(v) = self.cluster.parse() {
            md.insert(CLUSTER_HEADER, v);
        }
        md.insert(FROM_HEADER, self.from.into());
        md.insert(TO_HEADER, to.into());
        req
    }

    /// Sends `req` to replica `to` at `addr`: its answer, or the gRPC status that refused it
    /// (the channel's own failures are that replica being unreachable).
    async fn call(
        &self,
        to: NodeId,
        addr: &str,
        req: &ClientRequest,
        timeout: Duration,
    ) -> Result<Result<Result<ClientReply, ClientError>, tonic::Status>, ClientError> {
        let mut client = self
            .client(to, addr)
            .map_err(|e| unreachable(to, addr, e.to_string()))?;
        let msg = Message {
            payload: serde_json::to_vec(req).expect("client requests serialise"),
            data: Vec::new(),
        };
        let reply = match client.forward(self.request(to, msg, timeout)).await {
            Ok(reply) => reply,
            Err(status) => return Ok(Err(status)),
        };
        serde_json::from_slice::<Result<ClientReply, ClientError>>(&reply.into_inner().payload)
            .map(Ok)
            .map_err(|e| unreachable(to, addr, format!("undecodable reply: {e}")))
    }

    /// Sends a client request to the leader `to` at `addr` and waits for its answer.
    pub async fn forward(
        &self,
        to: NodeId,
        addr: &str,
        req: &ClientRequest,
        timeout: Duration,
    ) -> Result<ClientReply, ClientError> {
        match self.call(to, addr, req, timeout).await? {
            Ok(answer) => answer,
            Err(s) => Err(unreachable(
                to,
                addr,
                format!("{}: {}", s.code(), s.message()),
            )),
        }
    }

    /// The highest entry format replica `to` applies. A build from before entry formats refuses
    /// the question as an undecodable request; that answer means [`FORMAT_BUILDERS`].
    ///
    /// [`FORMAT_BUILDERS`]: concord_registry::FORMAT_BUILDERS
    pub async fn entry_format(
        &self,
        to: NodeId,
        addr: &str,
        timeout: Duration,
    ) -> Result<u32, ClientError> {
        match self
            .call(to, addr, &ClientRequest::EntryFormat, timeout)
            .await?
        {
            Ok(Ok(ClientReply::EntryFormat { supported })) => Ok(supported),
            Ok(Ok(other)) => Err(unreachable(to, addr, format!("unexpected reply {other:?}"))),
            Ok(Err(e)) => Err(e),
            Err(s)
                if s.code() == tonic::Code::InvalidArgument
                    && s.message().starts_with("undecodable request") =>
            {
                Ok(concord_registry::FORMAT_BUILDERS)
            }
            Err(s) => Err(unreachable(
                to,
                addr,
                format!("{}: {}", s.code(), s.message()),
            )),
        }
    }
}

/// Replica `to` at `addr` could not be reached, or answered nothing usable.
fn unreachable(to: NodeId, addr: &str, error: String) -> ClientError {
    ClientError::LeaderUnreachable {
        leader: to,
        addr: addr.to_string(),
        error,
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Conn;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Conn {
        Conn {
            net: self.clone(),
            target,
            addr: node.addr.clone(),
        }
    }
}

/// A connection to one peer, as openraft sees it.
pub struct Conn {
    net: Network,
    target: NodeId,
    addr: String,
}

/// What went wrong on one RPC, before it is shaped into openraft's error type.
/// Why no channel to a peer could be had.
#[derive(Debug, thiserror::Error)]
enum NoChannel {
    #[error("isolated by fault injection")]
    Isolated,
    #[error("cut off from node {0} by fault injection")]
    CutOff(NodeId),
    #[error("invalid peer address {addr:?}: {error}")]
    BadAddress { addr: String, error: String },
}

enum CallError<E> {
    Unreachable(String),
    Network(String),
    TooLarge,
    Remote(E),
}

impl Conn {
    async fn call<Req, Resp, E>(
        &self,
        rpc: &Req,
        data: Vec<u8>,
        option: &RPCOption,
        kind: Rpc,
    ) -> Result<Resp, CallError<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: DeserializeOwned,
    {
        let mut client = self
            .net
            .client(self.target, &self.addr)
            .map_err(|e| CallError::Unreachable(e.to_string()))?;
        let msg = Message {
            payload: serde_json::to_vec(rpc).expect("raft requests serialise"),
            data,
        };
        let mut req = self.net.request(self.target, msg, option.hard_ttl());
        if let Rpc::Append = kind {
            // A follower counts itself in contact only with a leader that has a quorum.
            let age = self
                .net
                .contact
                .leader_quorum_age(std::time::Instant::now());
            if let Ok(v) = encode_age(age).parse() {
                req.metadata_mut().insert(LEADER_QUORUM_HEADER, v);
            }
        }
        let reply = match kind {
            Rpc::Append => client.append_entries(req).await,
            Rpc::Vote => client.vote(req).await,
            Rpc::Snapshot => client.install_snapshot(req).await,
        };
        let reply = reply.map_err(|s| match s.code() {
            tonic::Code::Unavailable => CallError::Unreachable(s.message().to_string()),
            tonic::Code::ResourceExhausted | tonic::Code::OutOfRange => CallError::TooLarge,
            _ => CallError::Network(format!("{}: {}", s.code(), s.message())),
        })?;
        let result: Result<Resp, E> = serde_json::from_slice(&reply.into_inner().payload)
            .map_err(|e| CallError::Network(format!("undecodable reply: {e}")))?;
        result.map_err(CallError::Remote)
    }

    fn shape<E: std::error::Error>(
        &self,
        e: CallError<E>,
        entries: u64,
    ) -> RPCError<NodeId, BasicNode, E> {
        match e {
            CallError::Unreachable(m) => {
                RPCError::Unreachable(Unreachable::new(&AnyError::error(m)))
            }
            CallError::Network(m) => RPCError::Network(NetworkError::new(&AnyError::error(m))),
            CallError::TooLarge => {
                RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(entries.div_ceil(2)))
            }
            CallError::Remote(e) => RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                BasicNode::new(&self.addr),
                e,
            )),
        }
    }
}

#[derive(Clone, Copy)]
enum Rpc {
    Append,
    Vote,
    Snapshot,
}

impl RaftNetwork<TypeConfig> for Conn {
    fn backoff(&self) -> Backoff {
        // After the pause openraft waits for the next heartbeat tick before it sends again, so
        // a restarted peer is reached within about two heartbeats of listening.
        Backoff::new(std::iter::repeat(self.net.retry))
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let n = rpc.entries.len() as u64;
        self.call(&rpc, Vec::new(), &option, Rpc::Append)
            .await
            .map_err(|e| self.shape(e, n))
    }

    async fn install_snapshot(
        &mut self,
        mut rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        // The chunk travels raw beside the JSON of the rest of the request.
        let data = std::mem::take(&mut rpc.data);
        self.call(&rpc, data, &option, Rpc::Snapshot)
            .await
            .map_err(|e| self.shape(e, 1))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(&rpc, Vec::new(), &option, Rpc::Vote)
            .await
            .map_err(|e| self.shape(e, 1))
    }
}
