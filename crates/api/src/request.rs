//! Request bodies of the admin API and how they are checked. The daemon's handlers
//! (`crates/concord`, `admin.rs`) decode a body into one of these types and turn it into a
//! registry [`Batch`] or a membership change here, before anything reaches the log; [`decode`]
//! does the whole way from bytes for the fuzz targets (`fuzz/`) and the property tests. The typed
//! client serialises the same types, so what it sends is what the handlers accept.

use concord_registry::{Batch, Builder, Source};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// Why a request body was refused (HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The body is not JSON of the endpoint's shape (unknown fields included).
    #[error("{0}")]
    Malformed(String),
    /// A builder in the body breaks a rule of the registry (id, address, SNI name, …).
    #[error("{0}")]
    InvalidBuilder(String),
    /// Another field is out of range (a node id of 0, an address that is not host:port).
    #[error("{0}")]
    Invalid(String),
}

/// `PUT /v1/builders/{id}`: the id comes from the path and the source is always `api`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutBuilder {
    /// Where the builder listens, ip:port.
    pub addr: SocketAddr,
    /// Its TLS server name.
    pub sni: String,
    /// Region, or empty.
    #[serde(default)]
    pub region: String,
    /// Free-form labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl PutBuilder {
    /// A body for a builder at `addr` named `sni`, with no region and no labels.
    pub fn new(addr: SocketAddr, sni: impl Into<String>) -> Self {
        PutBuilder {
            addr,
            sni: sni.into(),
            region: String::new(),
            labels: BTreeMap::new(),
        }
    }

    /// The builder `id` of source `api`, validated before it costs a log entry.
    pub fn into_builder(self, id: String) -> Result<Builder, RequestError> {
        let b = Builder {
            id,
            addr: self.addr,
            sni: self.sni,
            region: self.region,
            labels: self.labels,
            source: Source::Api,
        };
        b.validate()
            .map_err(|e| RequestError::InvalidBuilder(e.to_string()))?;
        Ok(b)
    }
}

/// One builder of a batch: a put body with its id. (The fields are spelled out again because
/// serde cannot `flatten` together with `deny_unknown_fields`.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchBuilder {
    /// Builder id.
    pub id: String,
    /// Where the builder listens, ip:port.
    pub addr: SocketAddr,
    /// Its TLS server name.
    pub sni: String,
    /// Region, or empty.
    #[serde(default)]
    pub region: String,
    /// Free-form labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl BatchBuilder {
    /// Builder `id` at `addr` named `sni`, with no region and no labels.
    pub fn new(id: impl Into<String>, addr: SocketAddr, sni: impl Into<String>) -> Self {
        BatchBuilder {
            id: id.into(),
            addr,
            sni: sni.into(),
            region: String::new(),
            labels: BTreeMap::new(),
        }
    }
}

/// `POST /v1/builders`: puts and removes applied together, in one log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    /// Builders to put.
    #[serde(default)]
    pub upserts: Vec<BatchBuilder>,
    /// Ids to remove.
    #[serde(default)]
    pub removes: Vec<String>,
}

impl BatchBody {
    /// The registry batch, every builder validated (all or nothing).
    pub fn into_batch(self) -> Result<Batch, RequestError> {
        let upserts = self
            .upserts
            .into_iter()
            .map(|b| {
                let spec = PutBuilder {
                    addr: b.addr,
                    sni: b.sni,
                    region: b.region,
                    labels: b.labels,
                };
                spec.into_builder(b.id)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Batch {
            upserts,
            removes: self.removes,
        })
    }
}

/// `POST /v1/cluster/learners`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddLearner {
    /// The new node's id, 1 or more.
    pub node_id: u64,
    /// Its peer address, host:port.
    pub addr: String,
}

impl AddLearner {
    /// Checks the node id and the address's shape (the peer itself is dialled by Raft later).
    pub fn validate(&self) -> Result<(), RequestError> {
        let addr_ok = self
            .addr
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
        if self.node_id == 0 || !addr_ok {
            return Err(RequestError::Invalid(format!(
                "node id must be 1 or more and addr host:port (got {} and {:?})",
                self.node_id, self.addr
            )));
        }
        Ok(())
    }
}

/// `POST /v1/cluster/voters`: promote a learner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Promote {
    /// The learner's id.
    pub node_id: u64,
}

/// `POST /v1/debug/isolate` (fault injection only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Isolate {
    /// Cut off (true) or reconnect (false).
    pub isolated: bool,
    /// With `isolated`: cut off from these peers only, both ways, as one side of a partition
    /// (each side is told the other's members); empty: from every peer. Reconnecting heals both.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<u64>,
}

/// `POST /v1/debug/hold-forward-replies` (fault injection only): the next `count` writes
/// forwarded to this replica (as leader) are answered `hold_ms` late.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldForwardReplies {
    /// How many (at most 100).
    pub count: u32,
    /// How late, in milliseconds (at most 60,000).
    pub hold_ms: u64,
}

/// The endpoints that take a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `PUT /v1/builders/{id}`.
    PutBuilder,
    /// `POST /v1/builders`.
    Batch,
    /// `POST /v1/cluster/learners`.
    AddLearner,
    /// `POST /v1/cluster/voters`.
    Promote,
    /// `POST /v1/debug/isolate`.
    Isolate,
}

impl Endpoint {
    /// Every endpoint, for tests that pick one.
    pub const ALL: [Endpoint; 5] = [
        Endpoint::PutBuilder,
        Endpoint::Batch,
        Endpoint::AddLearner,
        Endpoint::Promote,
        Endpoint::Isolate,
    ];
}

/// What a valid body asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Put or remove builders, in one log entry.
    Write(Batch),
    /// Add a learner.
    AddLearner {
        /// Its id.
        node_id: u64,
        /// Its peer address.
        addr: String,
    },
    /// Promote a learner.
    Promote {
        /// Its id.
        node_id: u64,
    },
    /// Isolate or reconnect this replica.
    Isolate(bool),
}

fn json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, RequestError> {
    serde_json::from_slice(body).map_err(|e| RequestError::Malformed(e.to_string()))
}

/// The whole way from a body (and the `{id}` of the path, for a put) to what it asks for, as the
/// handlers go it: JSON of the endpoint's shape, then the same checks.
pub fn decode(endpoint: Endpoint, path_id: &str, body: &[u8]) -> Result<Request, RequestError> {
    Ok(match endpoint {
        Endpoint::PutBuilder => Request::Write(Batch {
            upserts: vec![json::<PutBuilder>(body)?.into_builder(path_id.to_string())?],
            removes: vec![],
        }),
        Endpoint::Batch => Request::Write(json::<BatchBody>(body)?.into_batch()?),
        Endpoint::AddLearner => {
            let a: AddLearner = json(body)?;
            a.validate()?;
            Request::AddLearner {
                node_id: a.node_id,
                addr: a.addr,
            }
        }
        Endpoint::Promote => Request::Promote {
            node_id: json::<Promote>(body)?.node_id,
        },
        Endpoint::Isolate => Request::Isolate(json::<Isolate>(body)?.isolated),
    })
}
