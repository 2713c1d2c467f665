//! DNS discovery settings: the nameserver and names the leader polls, the SNI names it gives
//! builders, the poll timing and the mass-removal guard.

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};
use concord_discovery::{DiscoveryConfig, GuardConfig, NxDomain, SniTemplate, SourceSpec};
use std::net::SocketAddr;
use std::time::Duration;

/// The SNI template of discovered builders unless one is given.
pub const DEFAULT_SNI_TEMPLATE: &str = "{id}.builders.local";

/// DNS discovery; off without --dns-server. With it and no --dns-source, only services' `dns:`
/// names are polled.
#[derive(Debug, Clone, PartialEq, Args)]
#[command(next_help_heading = "DNS discovery")]
pub struct DnsArgs {
    /// Nameserver to poll for builders and for services' `dns:` endpoints; turns DNS discovery
    /// on (the leader polls). Without it, services' `dns:` names are not resolved.
    #[arg(long, env = "CONCORD_DNS_SERVER", value_name = "IP:PORT")]
    pub dns_server: Option<SocketAddr>,

    /// Names to poll, comma separated or repeated: `txt:NAME:PORT` (Fly-style TXT, builders on
    /// PORT), `srv:NAME` (SRV; targets resolved to addresses), `a:NAME:PORT` (every A/AAAA
    /// address is a builder on PORT).
    #[arg(
        long,
        env = "CONCORD_DNS_SOURCES",
        value_name = "SOURCE",
        value_delimiter = ','
    )]
    pub dns_source: Vec<String>,

    /// SNI name of a discovered builder; placeholders {id}, {ip}, {region}, {app}, {name}.
    #[arg(
        long,
        env = "CONCORD_DNS_SNI_TEMPLATE",
        value_name = "TEMPLATE",
        default_value = DEFAULT_SNI_TEMPLATE
    )]
    pub dns_sni_template: String,

    /// Time between DNS polls in milliseconds.
    #[arg(
        long,
        env = "CONCORD_DNS_INTERVAL_MS",
        value_name = "MS",
        default_value_t = 100
    )]
    pub dns_interval_ms: u64,

    /// Timeout of one DNS query, below the interval. [default: 80% of the interval]
    #[arg(long, env = "CONCORD_DNS_TIMEOUT_MS", value_name = "MS")]
    pub dns_timeout_ms: Option<u64>,

    /// Time between polls after a failed one, until one succeeds (at least the interval).
    #[arg(
        long,
        env = "CONCORD_DNS_ERROR_BACKOFF_MS",
        value_name = "MS",
        default_value_t = 1000
    )]
    pub dns_error_backoff_ms: u64,

    /// A poll that would remove more than this share (0-1) of the discovered builders removes
    /// only builders missing for --dns-removal-hold-ms.
    #[arg(
        long,
        env = "CONCORD_DNS_MAX_REMOVAL_SHARE",
        value_name = "SHARE",
        default_value_t = 0.5
    )]
    pub dns_max_removal_share: f64,

    /// How long a builder must have been missing from every DNS answer before such a large
    /// removal takes it out (a zone reload or DNS failover must not empty the registry); 0
    /// turns the guard off.
    #[arg(
        long,
        env = "CONCORD_DNS_REMOVAL_HOLD_MS",
        value_name = "MS",
        default_value_t = GuardConfig::DEFAULT_HOLD.as_millis() as u64
    )]
    pub dns_removal_hold_ms: u64,

    /// What NXDOMAIN means. NOERROR with no records always means no builders.
    #[arg(
        long,
        env = "CONCORD_DNS_NXDOMAIN",
        value_name = "MEANING",
        value_enum,
        default_value_t = NxDomainArg::Empty
    )]
    pub dns_nxdomain: NxDomainArg,
}

/// What NXDOMAIN means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NxDomainArg {
    /// The name has no builders.
    Empty,
    /// An error: change nothing (for names that must always exist).
    Error,
}

impl From<NxDomainArg> for NxDomain {
    fn from(a: NxDomainArg) -> NxDomain {
        match a {
            NxDomainArg::Empty => NxDomain::Empty,
            NxDomainArg::Error => NxDomain::Error,
        }
    }
}

impl DnsArgs {
    /// The SNI template builders get: the one given with discovery on, the default without.
    pub fn template(&self, discovery: Option<&DiscoveryConfig>) -> Result<SniTemplate> {
        match discovery {
            Some(d) => Ok(d.template.clone()),
            None => SniTemplate::parse(DEFAULT_SNI_TEMPLATE).map_err(anyhow::Error::from),
        }
    }

    /// The discovery settings; `None` when no --dns-server is given.
    pub fn discovery(&self) -> Result<Option<DiscoveryConfig>> {
        let Some(server) = self.dns_server else {
            if !self.dns_source.is_empty() {
                bail!("--dns-source needs --dns-server (the nameserver to ask)");
            }
            return Ok(None);
        };
        let sources = self
            .dns_source
            .iter()
            .map(|s| s.trim().parse::<SourceSpec>().map_err(anyhow::Error::from))
            .collect::<Result<Vec<_>>>()?;
        // No sources is allowed: the poller then resolves only the names services take their
        // endpoints from (`dns:` in the desired state).
        let template = SniTemplate::parse(&self.dns_sni_template)?;
        let interval = self.dns_interval_ms;
        if interval == 0 {
            bail!("--dns-interval-ms must be at least 1");
        }
        let timeout = self.dns_timeout_ms.unwrap_or((interval * 4 / 5).max(1));
        if timeout == 0 || timeout >= interval {
            bail!(
                "--dns-timeout-ms {timeout} must be above 0 and below --dns-interval-ms {interval}"
            );
        }
        let share = self.dns_max_removal_share;
        if !(0.0..=1.0).contains(&share) {
            bail!("--dns-max-removal-share {share} must be between 0 and 1");
        }
        Ok(Some(DiscoveryConfig {
            server,
            sources,
            template,
            interval: Duration::from_millis(interval),
            timeout: Duration::from_millis(timeout),
            error_backoff: Duration::from_millis(self.dns_error_backoff_ms.max(interval)),
            guard: GuardConfig {
                max_removal_share: share,
                hold: Duration::from_millis(self.dns_removal_hold_ms),
            },
            nxdomain: self.dns_nxdomain.into(),
        }))
    }
}
