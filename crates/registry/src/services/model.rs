//! The objects of the services half, as operators write them (`concord apply -f`): services,
//! route tables and listeners. Field names are the file's; unknown fields are refused, so a typo
//! is an error rather than a silently ignored setting.

use super::Duration;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// What a service's upstream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// HTTP/1.1 (or HTTP/2 with `http2: true`).
    Http,
    /// gRPC: HTTP/2 to the upstream, always.
    Grpc,
}

/// How Envoy picks an endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    /// Each endpoint in turn (weighted).
    #[default]
    RoundRobin,
    /// The endpoint with the fewest active requests of two picked at random.
    LeastRequest,
    /// Consistent hashing on a ring (needs a hash policy on the route to be sticky).
    RingHash,
    /// Maglev consistent hashing.
    Maglev,
}

/// Envoy's circuit breakers for a service (default priority); unset limits keep Envoy's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakers {
    /// Connections to all endpoints together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Requests waiting for a connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<u32>,
    /// Requests in flight (HTTP/2, gRPC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
    /// Retries in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
}

impl CircuitBreakers {
    /// True when no limit is set.
    pub fn is_empty(&self) -> bool {
        *self == CircuitBreakers::default()
    }
}

/// Passive health checking: endpoints that keep failing are ejected for a while.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierDetection {
    /// Consecutive 5xx (gRPC: UNAVAILABLE and the like) answers that eject an endpoint.
    #[serde(default = "five")]
    pub consecutive_5xx: u32,
    /// How often ejections are evaluated.
    #[serde(default = "ten_seconds")]
    pub interval: Duration,
    /// How long a first ejection lasts (longer for each repeat).
    #[serde(default = "thirty_seconds")]
    pub base_ejection_time: Duration,
    /// The most endpoints of the service ejected at once, in percent.
    #[serde(default = "ten")]
    pub max_ejection_percent: u32,
}

fn five() -> u32 {
    5
}
fn ten() -> u32 {
    10
}
fn ten_seconds() -> Duration {
    Duration::from_secs(10)
}
fn thirty_seconds() -> Duration {
    Duration::from_secs(30)
}

/// What an active health check asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckKind {
    /// The standard gRPC health service (`grpc.health.v1.Health/Check`).
    Grpc,
    /// An HTTP GET of `path`; 200 is healthy.
    Http,
    /// A TCP connection.
    Tcp,
}

/// Envoy's active health check of every endpoint of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// What to ask.
    pub kind: HealthCheckKind,
    /// `http`: the path to GET.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `grpc`: the service name to ask about (empty: the server as a whole).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    /// Time between checks of one endpoint.
    #[serde(default = "five_seconds")]
    pub interval: Duration,
    /// How long one check may take.
    #[serde(default = "one_second")]
    pub timeout: Duration,
    /// Failed checks in a row that mark an endpoint unhealthy.
    #[serde(default = "two")]
    pub unhealthy_threshold: u32,
    /// Passed checks in a row that mark it healthy again.
    #[serde(default = "one")]
    pub healthy_threshold: u32,
}

fn one() -> u32 {
    1
}
fn two() -> u32 {
    2
}
fn one_second() -> Duration {
    Duration::from_secs(1)
}
fn five_seconds() -> Duration {
    Duration::from_secs(5)
}

/// TLS from Envoy to the service's endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// The server name to send (SNI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
}

/// Which DNS names a service's endpoints come from (the leader's poller resolves them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DnsKind {
    /// SRV records: targets and ports (`_grpc._tcp.echo.service.consul`).
    Srv,
    /// A and AAAA records, with `port`.
    A,
}

/// Endpoints from DNS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsEndpoints {
    /// The name to resolve.
    pub name: String,
    /// The record type.
    pub kind: DnsKind,
    /// `a`: the port of every address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// An endpoint written into the file (fixed, not registered).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticEndpoint {
    /// Its address.
    pub addr: SocketAddr,
    /// Its load-balancing weight (1–128).
    #[serde(default = "one")]
    pub weight: u32,
}

/// A service: an upstream cluster of endpoints with its settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// What the endpoints speak.
    pub protocol: Protocol,
    /// `http` services: HTTP/2 to the upstream (gRPC always uses it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub http2: bool,
    /// Load-balancing policy.
    #[serde(default)]
    pub lb: LbPolicy,
    /// How long Envoy waits for a connection to an endpoint.
    #[serde(default = "one_second")]
    pub connect_timeout: Duration,
    /// TLS to the endpoints; plaintext without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_tls: Option<UpstreamTls>,
    /// Limits on connections, requests and retries.
    #[serde(default, skip_serializing_if = "CircuitBreakers::is_empty")]
    pub circuit_breakers: CircuitBreakers,
    /// Ejection of endpoints that keep failing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// Active health checking of every endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// How long a draining endpoint keeps its in-flight requests before it is removed.
    #[serde(default = "thirty_seconds")]
    pub drain_timeout: Duration,
    /// Endpoints from DNS, polled by the leader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsEndpoints>,
    /// Fixed endpoints (beside registered ones).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<StaticEndpoint>,
}

/// A gRPC service, or one method of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcMatch {
    /// The fully qualified service name (`echo.v1.Echo`).
    pub service: String,
    /// One method of it; all of them when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

/// A header a request must carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    /// The header's name (lower case).
    pub name: String,
    /// Exactly this value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// A value starting with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Present (true) or absent (false), whatever its value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
}

/// What a route matches: exactly one of `prefix`, `path` and `grpc`, and any headers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// Paths starting with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Exactly this path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// A gRPC service or method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcMatch>,
    /// Headers the request must carry as well.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
}

/// One service of a weighted split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedService {
    /// The service.
    pub service: String,
    /// Its share in percent; the shares of a route add up to 100.
    pub weight: u32,
}

/// Exponential backoff between retries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    /// The first interval.
    pub base: Duration,
    /// The longest interval (10 × base when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<Duration>,
}

/// When and how often Envoy retries a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Envoy's retry conditions (`5xx`, `connect-failure`, `unavailable`, …).
    pub retry_on: Vec<String>,
    /// Retries after the first attempt.
    #[serde(default = "one")]
    pub attempts: u32,
    /// How long each attempt may take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    /// The pause between attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Backoff>,
}

/// A route: a match, where it goes, and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// What the route matches.
    #[serde(rename = "match")]
    pub matches: RouteMatch,
    /// The one service it goes to …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// … or a weighted split between services.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub weighted: Vec<WeightedService>,
    /// How long the whole request may take (Envoy's default 15 s when absent; `0s`: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// Headers added to the request before it goes upstream.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub request_headers_to_add: BTreeMap<String, String>,
    /// Headers removed from the request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_headers_to_remove: Vec<String>,
    /// Replaces the matched prefix of the path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_rewrite: Option<String>,
    /// Replaces the `:authority` (Host) header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_rewrite: Option<String>,
}

/// Domains and their routes (the first match wins).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualHost {
    /// Its name, unique in the route table.
    pub name: String,
    /// The `:authority` values it answers (`echo.example.com`, `*.example.com`, `*`).
    pub domains: Vec<String>,
    /// Its routes, in order.
    pub routes: Vec<Route>,
}

/// A route table: virtual hosts by domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteTable {
    /// Its virtual hosts; no domain in two of them.
    pub virtual_hosts: Vec<VirtualHost>,
}

/// TLS termination at a listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// The name of a certificate held by concord (sent to Envoy by SDS).
    pub certificate: String,
    /// ALPN protocols offered, in order of preference.
    #[serde(default = "default_alpn")]
    pub alpn: Vec<String>,
}

fn default_alpn() -> Vec<String> {
    vec!["h2".into(), "http/1.1".into()]
}

/// A listener: an address where Envoy accepts HTTP and gRPC for a route table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Where Envoy binds.
    pub address: SocketAddr,
    /// The route table it serves.
    pub route_table: String,
    /// TLS termination; plaintext without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
    /// Internal only: its address must be a loopback or private one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub internal: bool,
}

/// The whole desired state of the services half, set at once by `concord apply`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Desired {
    /// Services by name.
    #[serde(default)]
    pub services: BTreeMap<String, Service>,
    /// Route tables by name.
    #[serde(default)]
    pub route_tables: BTreeMap<String, RouteTable>,
    /// Listeners by name.
    #[serde(default)]
    pub listeners: BTreeMap<String, Listener>,
}
