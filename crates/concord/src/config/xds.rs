//! Envoy ADS settings: the xDS address, the builders' listener and how it routes, and the
//! stream lifetime rules.

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};
use concord_discovery::{DiscoveryConfig, SniTemplate};
use concord_raft::NodeId;
use concord_registry::is_dns_name;
use concord_xds::{ListenerMode, ResourceConfig, XdsConfig};
use std::net::SocketAddr;
use std::time::Duration;

/// The ADS server and the resources it serves.
#[derive(Debug, Clone, PartialEq, Args)]
#[command(next_help_heading = "Envoy ADS (xDS)")]
pub struct XdsArgs {
    /// Address of the Envoy ADS server (gRPC, with the gRPC health service).
    /// [default: 127.0.0.1:<18000+id>]
    #[arg(long, env = "CONCORD_XDS_ADDR", value_name = "IP:PORT")]
    pub xds_addr: Option<SocketAddr>,

    /// Name of the builders' listener in Envoy. Same on every replica.
    #[arg(
        long,
        env = "CONCORD_ENVOY_LISTENER_NAME",
        value_name = "NAME",
        default_value = "builders"
    )]
    pub envoy_listener_name: String,

    /// Address Envoy's builders' listener binds, unless an Envoy's bootstrap asks for another.
    /// Same on every replica.
    #[arg(
        long,
        env = "CONCORD_ENVOY_LISTENER_ADDR",
        value_name = "IP:PORT",
        default_value = "0.0.0.0:10000"
    )]
    pub envoy_listener_addr: SocketAddr,

    /// How Envoy's builders' listener routes. sni-cluster is far faster for Envoy at scale (one
    /// change at 1000 builders, SotW: ACKed in 27 ms against 195 ms; at 10000, 198 ms against
    /// 2 s) but routes only names under the suffix. Same on every replica. [default:
    /// sni-cluster when --sni-suffix is given, else filter-chains]
    #[arg(long, env = "CONCORD_LISTENER_MODE", value_name = "MODE", value_enum)]
    pub listener_mode: Option<ListenerModeArg>,

    /// The builder SNI suffix of sni-cluster mode (e.g. `builders.example.com`), which it makes
    /// the default mode: only names under it reach a builder; any other SNI matches no chain
    /// and is closed. Builders whose SNI is outside it get no cluster (skipped, logged).
    /// [default: the fixed tail of --dns-sni-template, e.g. builders.local]
    #[arg(long, env = "CONCORD_SNI_SUFFIX", value_name = "DOMAIN")]
    pub sni_suffix: Option<String>,

    /// A replica out of contact with the quorum for this many milliseconds reports NOT_SERVING
    /// and ends its Envoys' streams, so they move to a replica that still gets updates.
    #[arg(
        long,
        env = "CONCORD_STALE_AFTER_MS",
        value_name = "MS",
        default_value_t = 3000
    )]
    pub stale_after_ms: u64,

    /// How long a stream whose Envoy already has a newer revision than this replica waits for
    /// it before ending, so the Envoy tries another replica.
    #[arg(
        long,
        env = "CONCORD_CATCH_UP_TIMEOUT_MS",
        value_name = "MS",
        default_value_t = 2000
    )]
    pub catch_up_timeout_ms: u64,

    /// End each Envoy stream after about this many seconds so Envoys rebalance across
    /// replicas; 0 for never.
    #[arg(
        long,
        env = "CONCORD_MAX_STREAM_AGE_SECS",
        value_name = "SECS",
        default_value_t = 0
    )]
    pub max_stream_age_secs: u64,

    /// Serve only these Envoys (a control-plane canary: a replica running a new concord
    /// version first serves a chosen group): `cluster=NAME` (the Envoys' node cluster,
    /// `concord envoy-bootstrap --node-cluster`) or `metadata.KEY=VALUE` (a node metadata
    /// field); repeat or comma-separate for several groups. Any other Envoy's stream ends with
    /// UNAVAILABLE before any response, so it moves to another replica at once. Widen the group
    /// by restarting with more (or none: every Envoy).
    #[arg(
        long,
        env = "CONCORD_SERVE_ENVOYS",
        value_name = "SELECTOR",
        value_delimiter = ','
    )]
    pub serve_envoys: Vec<concord_xds::envoy_select::EnvoySelector>,
}

/// How the builders' listener routes (the mode without its suffix).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ListenerModeArg {
    /// One filter chain per builder, matching its SNI name.
    FilterChains,
    /// One chain matching `*.<--sni-suffix>` with the `sni_cluster` filter; clusters are named
    /// by SNI, so the listener never changes.
    SniCluster,
    /// As sni-cluster, and Envoy asks for a cluster it does not hold when a client first names
    /// it (on-demand CDS over delta ADS): for Envoys bootstrapped with `concord envoy-bootstrap
    /// --on-demand-clusters`, which hold only the builders their clients reach.
    OnDemand,
}

impl XdsArgs {
    /// The listener mode, with the sni-cluster suffix checked against the SNI template of DNS
    /// discovery (`template`: the one discovery uses, or the default without discovery).
    pub fn listener_mode(
        &self,
        template: &SniTemplate,
        dns: Option<&DiscoveryConfig>,
    ) -> Result<ListenerMode> {
        let tail = template.fixed_tail();
        // Naming the suffix says every builder is under it: then the faster mode is the default.
        let mode = self.listener_mode.unwrap_or(match self.sni_suffix {
            Some(_) => ListenerModeArg::SniCluster,
            None => ListenerModeArg::FilterChains,
        });
        if mode == ListenerModeArg::FilterChains {
            return Ok(ListenerMode::FilterChains);
        }
        let suffix = match &self.sni_suffix {
            Some(s) => s
                .trim_start_matches("*.")
                .trim_matches('.')
                .to_ascii_lowercase(),
            None => match tail.as_deref().and_then(|t| t.strip_prefix('.')) {
                Some(t) => t.to_string(),
                None => bail!(
                    "--listener-mode sni-cluster needs --sni-suffix (the SNI template {:?} has no \
                     fixed domain to take it from)",
                    template.as_str()
                ),
            },
        };
        if !is_dns_name(&suffix) {
            bail!("invalid --sni-suffix {suffix:?}: expected a lower-case DNS name");
        }
        if dns.is_some()
            && !tail
                .as_deref()
                .is_some_and(|t| t.ends_with(&format!(".{suffix}")))
        {
            bail!(
                "--dns-sni-template {:?} makes names outside --sni-suffix {suffix:?}; \
                 sni-cluster mode could not route to those builders",
                template.as_str()
            );
        }
        Ok(ListenerMode::SniCluster {
            suffix,
            on_demand: mode == ListenerModeArg::OnDemand,
        })
    }

    /// The ADS settings of node `node_id` of `cluster`.
    pub fn xds_config(
        &self,
        cluster: &str,
        node_id: NodeId,
        mode: ListenerMode,
    ) -> Result<XdsConfig> {
        let name = &self.envoy_listener_name;
        if name.is_empty()
            || !name
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        {
            bail!("invalid --envoy-listener-name {name:?}");
        }
        Ok(XdsConfig {
            identifier: format!("concord/{cluster}/node-{node_id}"),
            catch_up_timeout: Duration::from_millis(self.catch_up_timeout_ms),
            max_stream_age: match self.max_stream_age_secs {
                0 => None,
                s => Some(Duration::from_secs(s)),
            },
            resources: ResourceConfig {
                listener_name: name.clone(),
                listener_addr: self.envoy_listener_addr,
                mode,
                ..ResourceConfig::default()
            },
            served_envoys: concord_xds::envoy_select::ServedEnvoys(self.serve_envoys.clone()),
        })
    }

    /// How long out of contact with the quorum before turning Envoys away; it must exceed an
    /// election, or every election would turn them away.
    pub fn stale_after(&self, election_max: Duration) -> Result<Duration> {
        let stale = Duration::from_millis(self.stale_after_ms);
        if stale <= election_max {
            bail!(
                "--stale-after-ms {} must exceed the election timeout maximum {}, or every \
                 election would turn replicas away from their Envoys",
                self.stale_after_ms,
                election_max.as_millis()
            );
        }
        Ok(stale)
    }
}
