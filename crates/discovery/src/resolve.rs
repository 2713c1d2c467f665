//! One poll of every configured source against the configured nameserver (hickory-resolver): cache
//! off (a 100 ms poller must really ask), one attempt with a timeout below the interval, UDP with
//! TCP when an answer is truncated, fully-qualified names only.
//!
//! Answers are classified once, here: records → builders; NXDOMAIN ("the name does not exist")
//! and NODATA ("the name exists but has no records of this type") → no builders at that name
//! (unless NXDOMAIN is configured to count as an error); anything else (SERVFAIL, REFUSED,
//! timeout, connection failure, a malformed message) → an error that changes nothing.

use crate::endpoints::{self, ServiceAnswer};
use crate::parse::{self, Parsed, SrvTarget};
use crate::template::SniTemplate;
use concord_registry::services::{DnsEndpoints, DnsKind};
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig,
    ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError, NoRecords};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

/// A record format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Fly-style TXT (`instance=…,ip=…;…`).
    FlyTxt,
    /// SRV, targets resolved to addresses.
    Srv,
    /// A and AAAA: every address is a builder.
    Addr,
}

/// One name to poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceSpec {
    /// Its format.
    pub kind: Kind,
    /// The fully-qualified name (with the trailing dot).
    pub name: String,
    /// Builder port for TXT and A/AAAA (SRV records carry their own).
    pub port: u16,
}

impl fmt::Display for SourceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            Kind::FlyTxt => "txt",
            Kind::Srv => "srv",
            Kind::Addr => "a",
        };
        match self.kind {
            Kind::Srv => write!(f, "{kind}:{}", self.name),
            _ => write!(f, "{kind}:{}:{}", self.name, self.port),
        }
    }
}

/// Why a `--dns-source` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// Not `txt:NAME:PORT`, `srv:NAME` or `a:NAME:PORT` (unknown kind, missing or zero port,
    /// empty name).
    #[error(
        "invalid DNS source {spec:?}: expected txt:NAME:PORT, srv:NAME or a:NAME:PORT \
         (e.g. txt:_instances.internal:8372)"
    )]
    Malformed {
        /// The source as given.
        spec: String,
    },
    /// The shape is right but the name is not a DNS name.
    #[error(
        "invalid DNS source {spec:?}: expected txt:NAME:PORT, srv:NAME or a:NAME:PORT \
         (e.g. txt:_instances.internal:8372): {reason}"
    )]
    InvalidName {
        /// The source as given.
        spec: String,
        /// What is wrong with the name.
        reason: String,
    },
}

impl FromStr for SourceSpec {
    type Err = SourceError;

    /// `txt:NAME:PORT`, `srv:NAME`, or `a:NAME:PORT`; a missing trailing dot is added.
    fn from_str(s: &str) -> Result<Self, SourceError> {
        let bad = || SourceError::Malformed {
            spec: s.to_string(),
        };
        let (kind, rest) = s.split_once(':').ok_or_else(bad)?;
        let kind = match kind {
            "txt" => Kind::FlyTxt,
            "srv" => Kind::Srv,
            "a" | "aaaa" | "addr" => Kind::Addr,
            _ => return Err(bad()),
        };
        let (name, port) = match kind {
            Kind::Srv => (rest, 0),
            _ => {
                let (name, port) = rest.rsplit_once(':').ok_or_else(bad)?;
                let port: u16 = port.parse().map_err(|_| bad())?;
                if port == 0 {
                    return Err(bad());
                }
                (name, port)
            }
        };
        let name = if name.ends_with('.') {
            name.to_string()
        } else {
            format!("{name}.")
        };
        Name::from_ascii(&name).map_err(|e| SourceError::InvalidName {
            spec: s.to_string(),
            reason: e.to_string(),
        })?;
        if name == "." {
            return Err(bad());
        }
        Ok(SourceSpec { kind, name, port })
    }
}

/// What to do with NXDOMAIN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NxDomain {
    /// The name has no builders (subject to the mass-removal guard).
    #[default]
    Empty,
    /// An error: change nothing (for names that must always exist).
    Error,
}

/// Why a poll failed; it changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}: {reason}")]
pub struct PollError {
    /// The name that failed.
    pub name: String,
    /// What happened.
    pub reason: String,
}

/// Why the resolver could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ResolverError {
    /// hickory refused the configuration (the cause is the source, shown by `{:#}`).
    #[error("cannot build the DNS resolver")]
    Build(#[source] NetError),
}

/// The resolver of one poller.
pub struct Resolver {
    inner: TokioResolver,
    nxdomain: NxDomain,
}

/// How a name answered.
enum Answer<T> {
    Records(T),
    /// NXDOMAIN or NODATA: nothing at this name.
    Nothing,
}

impl Resolver {
    /// A resolver for `server`, with the cache off and one attempt of `timeout`.
    pub fn new(
        server: SocketAddr,
        timeout: Duration,
        nxdomain: NxDomain,
    ) -> Result<Self, ResolverError> {
        let mut udp = ConnectionConfig::udp();
        udp.port = server.port();
        let mut tcp = ConnectionConfig::tcp();
        tcp.port = server.port();
        let ns = NameServerConfig::new(server.ip(), true, vec![udp, tcp]);
        let config = ResolverConfig::from_parts(None, vec![], vec![ns]);
        let mut opts = ResolverOpts::default();
        opts.cache_size = 0;
        // `timeout` bounds the whole lookup, including the TCP retry of a truncated UDP answer;
        // `attempts` counts retries, so 0 is exactly one try per poll.
        opts.timeout = timeout;
        opts.attempts = 0;
        opts.use_hosts_file = ResolveHosts::Never;
        opts.ndots = 0;
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        opts.recursion_desired = false;
        let inner = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(opts)
            .build()
            .map_err(ResolverError::Build)?;
        Ok(Resolver { inner, nxdomain })
    }

    /// One query; answers of type `ty`, and the additional section (SRV targets' addresses).
    async fn lookup(
        &self,
        name: &str,
        ty: RecordType,
    ) -> Result<Answer<(Vec<RData>, Vec<(String, RData)>)>, PollError> {
        let err = |reason: String| PollError {
            name: name.to_string(),
            reason,
        };
        // from_ascii: service labels such as `_instances` are not host names (IDNA refuses some).
        let fqdn = Name::from_ascii(name).map_err(|e| err(format!("invalid name: {e}")))?;
        match self.inner.lookup(fqdn, ty).await {
            Ok(l) => {
                let answers = l
                    .answers()
                    .iter()
                    .filter(|r| r.record_type() == ty)
                    .map(|r| r.data.clone())
                    .collect();
                let extra = l
                    .additionals()
                    .iter()
                    .map(|r| (r.name.to_ascii(), r.data.clone()))
                    .collect();
                Ok(Answer::Records((answers, extra)))
            }
            Err(NetError::Dns(DnsError::NoRecordsFound(NoRecords { response_code, .. }))) => {
                match response_code {
                    ResponseCode::NoError => Ok(Answer::Nothing),
                    ResponseCode::NXDomain if self.nxdomain == NxDomain::Empty => {
                        Ok(Answer::Nothing)
                    }
                    ResponseCode::NXDomain => Err(err("name does not exist (NXDOMAIN)".into())),
                    other => Err(err(format!("{other} for {ty}"))),
                }
            }
            Err(NetError::Timeout) => Err(err(format!("{ty} query timed out"))),
            Err(e) => Err(err(format!("{ty} lookup failed: {e}"))),
        }
    }

    async fn addresses(&self, name: &str) -> Result<Vec<IpAddr>, PollError> {
        let mut out = Vec::new();
        for ty in [RecordType::A, RecordType::AAAA] {
            if let Answer::Records((rs, _)) = self.lookup(name, ty).await? {
                out.extend(rs.iter().filter_map(ip_of));
            }
        }
        Ok(out)
    }

    /// The targets of the SRV records at `name`, with their addresses.
    async fn srv_targets(&self, name: &str) -> Result<Vec<SrvTarget>, PollError> {
        let (records, extra) = match self.lookup(name, RecordType::SRV).await? {
            Answer::Records(r) => r,
            Answer::Nothing => Default::default(),
        };
        let mut targets = Vec::new();
        for r in records {
            if let RData::SRV(srv) = r {
                let target = srv.target.to_ascii();
                // The server usually sends the targets' addresses along; ask only for the ones
                // it did not.
                let mut addrs: Vec<IpAddr> = extra
                    .iter()
                    .filter(|(n, _)| n.eq_ignore_ascii_case(&target))
                    .filter_map(|(_, d)| ip_of(d))
                    .collect();
                if addrs.is_empty() {
                    addrs = self.addresses(&target).await?;
                }
                targets.push(SrvTarget {
                    target: target.trim_end_matches('.').to_string(),
                    port: srv.port,
                    weight: srv.weight,
                    addrs,
                });
            }
        }
        Ok(targets)
    }

    /// Resolves the DNS name of a service's endpoints.
    pub async fn service(&self, dns: &DnsEndpoints) -> Result<ServiceAnswer, PollError> {
        let name = match dns.name.ends_with('.') {
            true => dns.name.clone(),
            false => format!("{}.", dns.name),
        };
        let label = name.trim_end_matches('.');
        Ok(match (dns.kind, dns.port) {
            (DnsKind::Srv, _) => endpoints::from_srv(label, &self.srv_targets(&name).await?),
            (DnsKind::A, port) => {
                let port = port.unwrap_or(0);
                endpoints::from_addresses(label, &self.addresses(&name).await?, port)
            }
        })
    }

    /// Polls one source.
    pub async fn poll(&self, s: &SourceSpec, template: &SniTemplate) -> Result<Parsed, PollError> {
        let label = s.name.trim_end_matches('.');
        match s.kind {
            Kind::FlyTxt => {
                let records = match self.lookup(&s.name, RecordType::TXT).await? {
                    Answer::Records((rs, _)) => rs
                        .into_iter()
                        .filter_map(|r| match r {
                            RData::TXT(t) => {
                                Some(t.txt_data.iter().map(|s| s.to_vec()).collect::<Vec<_>>())
                            }
                            _ => None,
                        })
                        .collect(),
                    Answer::Nothing => Vec::new(),
                };
                Ok(parse::fly_txt(label, &records, s.port, template))
            }
            Kind::Srv => Ok(parse::srv(
                label,
                &self.srv_targets(&s.name).await?,
                template,
            )),
            Kind::Addr => {
                let addrs = self.addresses(&s.name).await?;
                Ok(parse::addresses(label, &addrs, s.port, template))
            }
        }
    }
}

fn ip_of(r: &RData) -> Option<IpAddr> {
    match r {
        RData::A(a) => Some(IpAddr::V4(a.0)),
        RData::AAAA(a) => Some(IpAddr::V6(a.0)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_specs_parse() {
        let s: SourceSpec = "txt:_instances.internal:8372".parse().unwrap();
        assert_eq!(
            (s.kind, s.name.as_str(), s.port),
            (Kind::FlyTxt, "_instances.internal.", 8372)
        );
        let s: SourceSpec = "srv:_buildkit._tcp.builders.test.".parse().unwrap();
        assert_eq!((s.kind, s.port), (Kind::Srv, 0));
        assert_eq!(s.to_string(), "srv:_buildkit._tcp.builders.test.");
        for bad in [
            "txt:_instances.internal",
            "mx:a.b:1",
            "a:pool.test:0",
            "a::1",
            "nonsense",
        ] {
            assert!(bad.parse::<SourceSpec>().is_err(), "{bad}");
        }
    }
}
