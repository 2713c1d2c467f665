//! The local cluster's settings: flags or `CONCORD_LOCAL_*` variables, saved by the first `up`
//! into the run directory so that every later command (and `up`) works on the same world.

use anyhow::{Context, Result, bail};
use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Args, builder::BoolishValueParser};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// What the local world looks like. Node N listens on `<base> + N` for each kind of port.
#[derive(Args, Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Settings {
    /// Number of replicas.
    #[arg(long, global = true, env = "CONCORD_LOCAL_NODES", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=9))]
    pub nodes: u64,
    /// Raft peer port of node N is base+N.
    #[arg(
        long,
        global = true,
        env = "CONCORD_LOCAL_PEER_BASE",
        default_value_t = 7100
    )]
    pub peer_base: u16,
    /// Admin API port of node N is base+N.
    #[arg(
        long,
        global = true,
        env = "CONCORD_LOCAL_ADMIN_BASE",
        default_value_t = 8100
    )]
    pub admin_base: u16,
    /// ADS port of node N is base+N.
    #[arg(
        long,
        global = true,
        env = "CONCORD_LOCAL_XDS_BASE",
        default_value_t = 18000
    )]
    pub xds_base: u16,
    /// Number of Envoys (0: none); envoy-N streams from node N first.
    #[arg(long, global = true, env = "CONCORD_LOCAL_ENVOYS", default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=9))]
    pub envoys: u64,
    /// Admin port of envoy-N is base+N.
    #[arg(
        long,
        global = true,
        env = "CONCORD_LOCAL_ENVOY_ADMIN_BASE",
        default_value_t = 9900
    )]
    pub envoy_admin_base: u16,
    /// The builders' TLS listener of envoy-N is on base+N.
    #[arg(
        long,
        env = "CONCORD_LOCAL_ENVOY_LISTENER_BASE",
        default_value_t = 10000
    )]
    pub envoy_listener_base: u16,
    /// Demo builders the first `up` publishes in DNS (b1..bN; 0: none).
    #[arg(long, global = true, env = "CONCORD_LOCAL_BUILDERS", default_value_t = 3, value_parser = clap::value_parser!(u64).range(0..=244))]
    pub builders: u64,
    /// Port of api builder bN (`add-builder N`) is base+N.
    #[arg(
        long,
        global = true,
        env = "CONCORD_LOCAL_BUILDER_BASE",
        default_value_t = 9000
    )]
    pub builder_base: u16,
    /// The SNI name of demo builder bN is bN.<domain>.
    #[arg(
        long,
        env = "CONCORD_LOCAL_BUILDER_DOMAIN",
        default_value = "builders.local"
    )]
    pub builder_domain: String,
    /// DNS discovery from a local BIND 9; without it `up` registers the demo builders through
    /// the API.
    #[arg(long, global = true, env = "CONCORD_LOCAL_DNS", default_value_t = true, action = ArgAction::Set, value_parser = BoolishValueParser::new(), value_name = "BOOL")]
    pub dns: bool,
    /// Port of named on 127.0.0.1 (UDP and TCP).
    #[arg(
        long,
        global = true,
        env = "CONCORD_LOCAL_DNS_PORT",
        default_value_t = 5353
    )]
    pub dns_port: u16,
    /// Port of every DNS demo builder (bN on 127.0.0.<10+N>).
    #[arg(
        long,
        global = true,
        env = "CONCORD_LOCAL_DNS_BUILDER_PORT",
        default_value_t = 9443
    )]
    pub dns_builder_port: u16,
    /// Mutual TLS between the replicas and to the Envoys, from a local CA; off runs plaintext.
    #[arg(long, global = true, env = "CONCORD_LOCAL_TLS", default_value_t = true, action = ArgAction::Set, value_parser = BoolishValueParser::new(), value_name = "BOOL")]
    pub tls: bool,
}

/// How long commands wait (not saved: they may differ per command).
#[derive(Args, Debug, Clone)]
pub struct Waits {
    /// Seconds `up` and `start` wait for named, a leader and each Envoy.
    #[arg(
        long,
        global = true,
        env = "CONCORD_LOCAL_UP_TIMEOUT",
        default_value_t = 30
    )]
    pub up_timeout: u64,
    /// Seconds `up`, `dns-add`, `dns-rm` and `add-builder` wait for the routes.
    #[arg(
        long,
        global = true,
        env = "CONCORD_LOCAL_ROUTE_TIMEOUT",
        default_value_t = 20
    )]
    pub route_timeout: u64,
    /// Seconds `down` waits after SIGTERM before SIGKILL.
    #[arg(
        long,
        global = true,
        env = "CONCORD_LOCAL_STOP_TIMEOUT",
        default_value_t = 15
    )]
    pub stop_timeout: u64,
}

/// The DNS zone the nodes poll, and the Fly-style TXT record in it.
pub const DNS_ZONE: &str = "internal";
/// The TXT record's name.
pub const DNS_TXT_NAME: &str = "_instances.internal";
/// Demo builder bN's DNS address is 127.0.0.<DNS_IP_OFFSET + N>.
pub const DNS_IP_OFFSET: u64 = 10;

impl Settings {
    /// The settings of the world in `dir`: those saved there by an earlier `up`, checked against
    /// the ones given now explicitly; else the given ones (saved when `save`).
    pub fn resolve(
        given: Settings,
        matches: &ArgMatches,
        dir: &Path,
        save: bool,
    ) -> Result<Settings> {
        let file = dir.join("settings.json");
        let Ok(text) = std::fs::read_to_string(&file) else {
            if save {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("create {}", dir.display()))?;
                let text = serde_json::to_string_pretty(&given)? + "\n";
                concord_harness::process::write_atomically(&file, &text)?;
            }
            return Ok(given);
        };
        let saved: Settings = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a settings file of this concord-local",
                file.display()
            )
        })?;
        let (want, have) = (serde_json::to_value(&given)?, serde_json::to_value(&saved)?);
        for (key, value) in want.as_object().into_iter().flatten() {
            let explicit = matches!(
                matches.value_source(key),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            );
            if explicit && have.get(key) != Some(value) {
                bail!(
                    "the local cluster in {} was set up with {key} = {}, not {value}; `reset` first to change it",
                    dir.display(),
                    have.get(key).map(ToString::to_string).unwrap_or_default()
                );
            }
        }
        Ok(saved)
    }

    /// Demo builder bN's SNI name.
    pub fn sni(&self, n: u64) -> String {
        format!("b{n}.{}", self.builder_domain)
    }

    /// Where demo builder bN listens: on its DNS address, or (api builders) on 127.0.0.1.
    pub fn builder_addr(&self, n: u64, kind: Kind) -> SocketAddr {
        match kind {
            Kind::Dns => SocketAddr::from((
                [127, 0, 0, (DNS_IP_OFFSET + n) as u8],
                self.dns_builder_port,
            )),
            Kind::Api => SocketAddr::from(([127, 0, 0, 1], self.builder_base + n as u16)),
        }
    }

    /// The TXT entry that publishes demo builder bN.
    pub fn dns_entry(&self, n: u64) -> String {
        let ip = self.builder_addr(n, Kind::Dns).ip();
        format!("instance=b{n},app=builders,ip={ip},region=local")
    }

    /// The largest builder number for `kind`.
    pub fn max_builder(&self, kind: Kind) -> u64 {
        match kind {
            Kind::Dns => 254 - DNS_IP_OFFSET,
            Kind::Api => u64::from(u16::MAX - self.builder_base),
        }
    }

    /// The node envoy-N prefers (wrapping around when there are more Envoys than nodes).
    pub fn envoy_home(&self, n: u64) -> u64 {
        (n - 1) % self.nodes + 1
    }

    /// envoy-N's admin and listener addresses.
    pub fn envoy_addrs(&self, n: u64) -> (SocketAddr, SocketAddr) {
        let at = |base: u16| SocketAddr::from(([127, 0, 0, 1], base + n as u16));
        (at(self.envoy_admin_base), at(self.envoy_listener_base))
    }

    /// envoy-N's xDS servers: its preferred node first, then the following ones.
    pub fn envoy_servers(&self, n: u64) -> Vec<String> {
        let home = self.envoy_home(n);
        (0..self.nodes)
            .map(|i| (home - 1 + i) % self.nodes + 1)
            .map(|id| format!("127.0.0.1:{}", self.xds_base + id as u16))
            .collect()
    }
}

/// How a demo builder is announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Published in the DNS list; the leader's poller registers it (source `dns`).
    Dns,
    /// Registered through the admin API (`add-builder`, or `up` without DNS; source `api`).
    Api,
}

impl Kind {
    /// Its name in `builder-N.kind`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Dns => "dns",
            Kind::Api => "api",
        }
    }

    /// Parses a `builder-N.kind` file's content.
    pub fn parse(s: &str) -> Option<Kind> {
        match s.trim() {
            "dns" => Some(Kind::Dns),
            "api" => Some(Kind::Api),
            _ => None,
        }
    }
}

/// The run directory: `$CONCORD_LOCAL_RUN_DIR`, else `$XDG_STATE_HOME/concord-local` (the
/// `deploy/local/concord-local` wrapper sets `deploy/local/.run`).
pub fn default_run_dir() -> PathBuf {
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."));
    state.join("concord-local")
}
