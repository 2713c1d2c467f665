//! `GET /v1/xds/resources`: what one replica serves Envoys now, decoded from the encoded
//! resources (`crates/xds` builds them).

use serde::{Deserialize, Serialize};

/// `GET /v1/xds/resources`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct XdsResources {
    /// The replica's node id.
    pub node_id: u64,
    /// What it serves at its default listener address.
    pub resources: Resources,
}

/// The resources, summarised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// `version_info` of the resources.
    pub version_info: String,
    /// The builders' listener (absent with no builders).
    pub listener: Option<ListenerSummary>,
    /// One cluster per routable builder.
    pub clusters: Vec<ClusterSummary>,
    /// Builders the listener mode cannot route to (sni-cluster mode: SNI outside the suffix).
    pub skipped: Vec<String>,
}

/// A listener, summarised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerSummary {
    /// Its name.
    pub name: String,
    /// Where it binds.
    pub address: String,
    /// (SNI name or wildcard, chain name), one per filter chain.
    pub filter_chains: Vec<(String, String)>,
}

/// A cluster, summarised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSummary {
    /// Its name.
    pub name: String,
    /// Its one endpoint.
    pub endpoint: String,
}
