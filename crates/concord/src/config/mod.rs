//! `concord serve` configuration: flags, with environment fallbacks, over an optional TOML file,
//! over defaults that run a local three-node cluster with no editing. Validated once, before
//! anything starts, into a [`ServeConfig`].
//!
//! One module per area ([`node`], [`raft`], [`admin`], [`xds`], [`dns`], [`tls`], [`trace`]),
//! each a clap argument group with its defaults (shown by `--help`) and its checks; [`layer`]
//! puts flags, environment and the file together, the same way for every setting.

mod admin;
mod dns;
mod layer;
mod node;
mod raft;
mod tls;
mod trace;
mod xds;

#[cfg(test)]
mod tests;

use crate::auth::Tokens;
use anyhow::{Context, Result, bail};
use clap::{Arg, ArgMatches, Args, Command, FromArgMatches};
use concord_discovery::DiscoveryConfig;
use concord_raft::{NodeConfig, NodeId};
use concord_telemetry::trace::TraceConfig;
use concord_tls::XdsTls;
use concord_xds::XdsConfig;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Every setting of `concord serve`, by area. Each has a flag, an environment variable
/// (`CONCORD_*`) and a key in the config file (the flag's long name, e.g. `node-id = 2`).
#[derive(Debug, Clone, PartialEq, Args)]
pub struct Settings {
    #[command(flatten)]
    node: node::NodeArgs,
    #[command(flatten)]
    raft: raft::RaftArgs,
    #[command(flatten)]
    admin: admin::AdminArgs,
    #[command(flatten)]
    xds: xds::XdsArgs,
    #[command(flatten)]
    dns: dns::DnsArgs,
    #[command(flatten)]
    tls: tls::TlsArgs,
    #[command(flatten)]
    trace: trace::TraceArgs,
}

/// The arguments of `concord serve`: what flags and environment gave, kept as clap read them so
/// that the config file can be layered under them ([`ServeArgs::resolve`]).
#[derive(Debug, Clone, Default)]
pub struct ServeArgs {
    /// Argument ids given by flag or environment, with their values.
    given: Vec<(String, Vec<OsString>)>,
}

impl Args for ServeArgs {
    fn augment_args(cmd: Command) -> Command {
        let config = Arg::new(layer::CONFIG)
            .long(layer::CONFIG)
            .env("CONCORD_CONFIG")
            .value_name("FILE")
            .value_parser(clap::value_parser!(PathBuf))
            .help(
                "TOML file with any of these settings, keyed by flag name (`node-id = 2`); \
                 flags and environment take precedence",
            );
        Settings::augment_args(cmd.arg(config))
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for ServeArgs {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(ServeArgs {
            given: layer::given(m),
        })
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

/// The validated configuration of one replica.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Raft settings.
    pub node: NodeConfig,
    /// Where the admin HTTP API listens.
    pub admin_addr: SocketAddr,
    /// The admin API's tokens and the file they come from; `None`: no tokens needed.
    pub admin_tokens: Option<(PathBuf, Tokens)>,
    /// Whether a non-loopback admin API without tokens was explicitly allowed.
    pub insecure_admin: bool,
    /// Where the ADS server listens.
    pub xds_addr: SocketAddr,
    /// ADS settings.
    pub xds: XdsConfig,
    /// Out of contact with the quorum this long, the replica stops serving Envoys.
    pub stale_after: Duration,
    /// DNS discovery, if configured.
    pub discovery: Option<DiscoveryConfig>,
    /// Whether the fault-injection endpoint is on.
    pub fault_injection: bool,
    /// TLS of the xDS port; plaintext without.
    pub xds_tls: Option<Arc<XdsTls>>,
    /// Plaintext was asked for (--insecure).
    pub insecure: bool,
    /// Trace export, if configured.
    pub tracing: Option<TraceConfig>,
    /// How long a drain on SIGTERM may take.
    pub shutdown_grace: Duration,
}

impl ServeArgs {
    /// Layers flags/env over the file (if any) and validates the result.
    pub fn resolve(self) -> Result<ServeConfig> {
        let layer::Layered { settings: s, given } = layer::layer(&self.given)?;
        // The order of the checks decides which of several mistakes is reported; TLS files are
        // loaded last, so a bad value elsewhere is reported before a missing certificate.
        let discovery = s.dns.discovery()?;
        let tracing = s.trace.config(&given, s.node.node_id)?;
        let template = s.dns.template(discovery.as_ref())?;
        let mode = s.xds.listener_mode(&template, discovery.as_ref())?;
        let cluster = s.node.cluster()?;
        let node_id = s.node.node_id()?;
        let shutdown_grace = s.node.shutdown_grace()?;
        let transport = s.tls.transport(&cluster, node_id);

        let peer_addr = or_default_port(s.raft.peer_addr, 7100, node_id, "--peer-addr")?;
        let admin_addr = or_default_port(s.admin.admin_addr, 8100, node_id, "--admin-addr")?;
        let xds_addr = or_default_port(s.xds.xds_addr, 18000, node_id, "--xds-addr")?;
        let admin_tokens = s.admin.tokens(admin_addr)?;
        if peer_addr == admin_addr || peer_addr == xds_addr || admin_addr == xds_addr {
            bail!(
                "--peer-addr ({peer_addr}), --admin-addr ({admin_addr}) and --xds-addr \
                 ({xds_addr}) need a port each"
            );
        }
        let advertise = s.raft.advertise(peer_addr)?;
        let members = s.raft.members(node_id, &advertise)?;
        let timing = s.raft.timing()?;
        let stale_after = s.xds.stale_after(timing.election_max)?;
        let (peer_tls, xds_tls) = transport?;
        let xds = s.xds.xds_config(&cluster, node_id, mode)?;
        let data_dir = s.node.data_dir(&cluster, node_id)?;
        Ok(ServeConfig {
            node: NodeConfig {
                cluster,
                node_id,
                data_dir,
                listen_addr: peer_addr,
                initial_members: members,
                heartbeat: timing.heartbeat,
                election_timeout_min: timing.election_min,
                election_timeout_max: timing.election_max,
                snapshot_threshold: timing.snapshot_threshold,
                request_timeout: timing.request_timeout,
                quorum_timeout: timing.quorum_timeout,
                tls: peer_tls,
            },
            admin_addr,
            admin_tokens,
            insecure_admin: s.admin.insecure_admin,
            xds_addr,
            xds,
            stale_after,
            discovery,
            fault_injection: s.admin.enable_fault_injection,
            xds_tls,
            insecure: s.tls.insecure,
            tracing,
            shutdown_grace,
        })
    }
}

/// `addr`, else 127.0.0.1 on port `base + node_id`: the local cluster's layout.
fn or_default_port(
    addr: Option<SocketAddr>,
    base: u64,
    node_id: NodeId,
    flag: &str,
) -> Result<SocketAddr> {
    if let Some(addr) = addr {
        return Ok(addr);
    }
    let port = u16::try_from(base + node_id).with_context(|| {
        format!("node id {node_id} is too large for a default {flag}; set {flag}")
    })?;
    Ok(SocketAddr::from(([127, 0, 0, 1], port)))
}
