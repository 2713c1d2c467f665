//! The services half → Envoy resources (issue 14). Pure: no I/O, no clock.
//!
//! - a service is one EDS cluster `service_<name>` (CDS), its endpoints one ClusterLoadAssignment
//!   of the same name (EDS), both from ADS;
//! - a route table is one RouteConfiguration `routes_<name>` (RDS): virtual hosts by domain,
//!   routes by prefix, path or gRPC service/method and headers, to a cluster or weighted clusters;
//! - a listener is one Listener `http_<name>` (LDS) with an HTTP connection manager that takes its
//!   route table by RDS and, with TLS, a certificate by SDS (`certificate_<name>`).
//!
//! The names cannot meet a builder's cluster (`builder_<id>`, or an SNI name with dots): service
//! names hold no `_`. [`crate::snapshot`] encodes these once per change and shares them.

use crate::access_log::AccessLog;
use concord_registry::services::{
    Desired, HealthCheck, HealthCheckKind, LbPolicy, Listener as ListenerSpec, Protocol, Route,
    RouteTable, Service,
};
use envoy_types::pb::envoy::config::cluster::v3::{
    CircuitBreakers, Cluster, OutlierDetection, circuit_breakers, cluster,
};
use envoy_types::pb::envoy::config::core::v3::{
    AggregatedConfigSource, ApiVersion, ConfigSource, HeaderValue, HeaderValueOption,
    HealthCheck as PbHealthCheck, Http2ProtocolOptions, TransportSocket, config_source,
    header_value_option, health_check, transport_socket,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, RetryPolicy, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
    WeightedCluster, header_matcher, retry_policy, route, route_action, route_match,
    weighted_cluster,
};
use envoy_types::pb::envoy::extensions::filters::http::grpc_stats::v3::{
    FilterConfig as GrpcStats, filter_config,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CommonTlsContext, DownstreamTlsContext, SdsSecretConfig, UpstreamTlsContext,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use envoy_types::pb::google::protobuf::{Any, BoolValue, Duration as PbDuration, UInt32Value};
use std::net::SocketAddr;

use crate::resources::any;

/// Type URL of endpoints (EDS).
pub const ENDPOINT_TYPE: &str =
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
/// Type URL of secrets (SDS).
pub const SECRET_TYPE: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
/// Type URL of route configurations (RDS).
pub const ROUTE_TYPE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
const HCM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const ROUTER_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
const GRPC_STATS_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig";
const HTTP_OPTIONS_TYPE: &str =
    "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
const DOWNSTREAM_TLS_TYPE: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";
const UPSTREAM_TLS_TYPE: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";

/// The cluster (and load assignment) name of service `name`.
pub fn cluster_name(service: &str) -> String {
    concord_registry::services::cluster_name(service)
}

/// The RouteConfiguration name of route table `name`.
pub fn route_config_name(table: &str) -> String {
    format!("routes_{table}")
}

/// The Listener name of listener `name`.
pub fn listener_name(listener: &str) -> String {
    format!("http_{listener}")
}

/// The SDS secret name of certificate `name`.
pub fn secret_name(certificate: &str) -> String {
    format!("certificate_{certificate}")
}

fn pb_duration(d: concord_registry::services::Duration) -> PbDuration {
    let ms = d.as_millis();
    PbDuration {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

fn u32v(v: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value: v })
}

fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        ..Default::default()
    }
}

const HTTP_OPTIONS_KEY: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// HTTP/2 to the upstream (gRPC).
fn http2_options() -> Any {
    let options = HttpProtocolOptions {
        upstream_protocol_options: Some(
            http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                http_protocol_options::ExplicitHttpConfig {
                    protocol_config: Some(
                        http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                            Http2ProtocolOptions::default(),
                        ),
                    ),
                },
            ),
        ),
        ..Default::default()
    };
    any(HTTP_OPTIONS_TYPE, &options)
}

/// The SDS secret of certificate `name`: its chain and key, inline.
pub fn secret(
    name: &str,
    c: &concord_registry::services::Certificate,
) -> envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret {
    use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{TlsCertificate, secret};
    let inline = |s: &str| DataSource {
        specifier: Some(data_source::Specifier::InlineString(s.to_string())),
        ..Default::default()
    };
    envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret {
        name: secret_name(name),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: Some(inline(&c.cert_pem)),
            private_key: Some(inline(c.key_pem.expose())),
            ..Default::default()
        })),
    }
}

/// The EDS cluster of service `name`.
pub fn cluster(name: &str, s: &Service) -> Cluster {
    let cluster_name = cluster_name(name);
    let lb = match s.lb {
        LbPolicy::RoundRobin => cluster::LbPolicy::RoundRobin,
        LbPolicy::LeastRequest => cluster::LbPolicy::LeastRequest,
        LbPolicy::RingHash => cluster::LbPolicy::RingHash,
        LbPolicy::Maglev => cluster::LbPolicy::Maglev,
    };
    let mut c = Cluster {
        name: cluster_name.clone(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: cluster_name,
        }),
        connect_timeout: Some(pb_duration(s.connect_timeout)),
        lb_policy: lb as i32,
        ..Default::default()
    };
    if s.protocol == Protocol::Grpc || s.http2 {
        c.typed_extension_protocol_options
            .insert(HTTP_OPTIONS_KEY.into(), http2_options());
    }
    let cb = &s.circuit_breakers;
    if !cb.is_empty() {
        c.circuit_breakers = Some(CircuitBreakers {
            thresholds: vec![circuit_breakers::Thresholds {
                max_connections: cb.max_connections.and_then(u32v),
                max_pending_requests: cb.max_pending_requests.and_then(u32v),
                max_requests: cb.max_requests.and_then(u32v),
                max_retries: cb.max_retries.and_then(u32v),
                ..Default::default()
            }],
            ..Default::default()
        });
    }
    if let Some(o) = &s.outlier_detection {
        c.outlier_detection = Some(OutlierDetection {
            consecutive_5xx: u32v(o.consecutive_5xx),
            // gRPC answers errors with HTTP 200 and a grpc-status; Envoy counts UNAVAILABLE and
            // the like as gateway failures, which eject through this.
            consecutive_gateway_failure: u32v(o.consecutive_5xx),
            enforcing_consecutive_gateway_failure: u32v(100),
            interval: Some(pb_duration(o.interval)),
            base_ejection_time: Some(pb_duration(o.base_ejection_time)),
            max_ejection_percent: u32v(o.max_ejection_percent),
            ..Default::default()
        });
    }
    if let Some(h) = &s.health_check {
        c.health_checks = vec![health_check_of(h, s)];
    }
    if let Some(tls) = &s.upstream_tls {
        let ctx = UpstreamTlsContext {
            sni: tls.sni.clone().unwrap_or_default(),
            common_tls_context: Some(CommonTlsContext {
                alpn_protocols: match s.protocol {
                    Protocol::Grpc => vec!["h2".into()],
                    Protocol::Http if s.http2 => vec!["h2".into()],
                    Protocol::Http => vec!["http/1.1".into()],
                },
                ..Default::default()
            }),
            ..Default::default()
        };
        c.transport_socket = Some(TransportSocket {
            name: "envoy.transport_sockets.tls".into(),
            config_type: Some(transport_socket::ConfigType::TypedConfig(any(
                UPSTREAM_TLS_TYPE,
                &ctx,
            ))),
        });
    }
    c
}

fn health_check_of(h: &HealthCheck, s: &Service) -> PbHealthCheck {
    let checker = match h.kind {
        HealthCheckKind::Grpc => {
            health_check::HealthChecker::GrpcHealthCheck(health_check::GrpcHealthCheck {
                service_name: h.service_name.clone().unwrap_or_default(),
                ..Default::default()
            })
        }
        HealthCheckKind::Http => {
            health_check::HealthChecker::HttpHealthCheck(health_check::HttpHealthCheck {
                path: h.path.clone().unwrap_or_else(|| "/".into()),
                codec_client_type: if s.http2 {
                    envoy_types::pb::envoy::r#type::v3::CodecClientType::Http2 as i32
                } else {
                    envoy_types::pb::envoy::r#type::v3::CodecClientType::Http1 as i32
                },
                ..Default::default()
            })
        }
        HealthCheckKind::Tcp => {
            health_check::HealthChecker::TcpHealthCheck(health_check::TcpHealthCheck::default())
        }
    };
    PbHealthCheck {
        timeout: Some(pb_duration(h.timeout)),
        interval: Some(pb_duration(h.interval)),
        // Envoy checks a cluster that has had no traffic yet only every 60 s by default; an
        // instance that fails before the first request must still leave the rotation in time.
        no_traffic_interval: Some(pb_duration(h.interval)),
        unhealthy_threshold: u32v(h.unhealthy_threshold),
        healthy_threshold: u32v(h.healthy_threshold),
        always_log_health_check_failures: true,
        health_checker: Some(checker),
        ..Default::default()
    }
}

/// One endpoint of a load assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSpec {
    /// Its address.
    pub addr: SocketAddr,
    /// Its load-balancing weight.
    pub weight: u32,
    /// Draining: no new requests, in-flight ones finish.
    pub draining: bool,
}

/// The ClusterLoadAssignment of service `name` with `endpoints`.
pub fn load_assignment(name: &str, endpoints: &[EndpointSpec]) -> ClusterLoadAssignment {
    use envoy_types::pb::envoy::config::core::v3::HealthStatus;
    ClusterLoadAssignment {
        cluster_name: cluster_name(name),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: endpoints
                .iter()
                .map(|e| LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                        address: Some(crate::resources::socket_address(e.addr)),
                        ..Default::default()
                    })),
                    health_status: if e.draining {
                        HealthStatus::Draining as i32
                    } else {
                        HealthStatus::Unknown as i32
                    },
                    load_balancing_weight: u32v(e.weight),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The endpoints of `s` written into the file.
pub fn static_endpoints(s: &Service) -> Vec<EndpointSpec> {
    s.endpoints
        .iter()
        .map(|e| EndpointSpec {
            addr: e.addr,
            weight: e.weight,
            draining: false,
        })
        .collect()
}

/// The RouteConfiguration of route table `name`.
pub fn route_configuration(name: &str, t: &RouteTable) -> RouteConfiguration {
    RouteConfiguration {
        name: route_config_name(name),
        virtual_hosts: t
            .virtual_hosts
            .iter()
            .map(|vh| VirtualHost {
                name: vh.name.clone(),
                domains: vh.domains.clone(),
                routes: vh.routes.iter().map(route_of).collect(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn route_of(r: &Route) -> envoy_types::pb::envoy::config::route::v3::Route {
    let m = &r.matches;
    let path = if let Some(p) = &m.prefix {
        route_match::PathSpecifier::Prefix(p.clone())
    } else if let Some(p) = &m.path {
        route_match::PathSpecifier::Path(p.clone())
    } else if let Some(g) = &m.grpc {
        match &g.method {
            Some(method) => route_match::PathSpecifier::Path(format!("/{}/{method}", g.service)),
            None => route_match::PathSpecifier::Prefix(format!("/{}/", g.service)),
        }
    } else {
        route_match::PathSpecifier::Prefix("/".into())
    };
    let headers = m
        .headers
        .iter()
        .map(|h| HeaderMatcher {
            name: h.name.clone(),
            header_match_specifier: Some(match (&h.exact, &h.prefix, h.present) {
                (Some(v), _, _) => {
                    header_matcher::HeaderMatchSpecifier::StringMatch(StringMatcher {
                        match_pattern: Some(string_matcher::MatchPattern::Exact(v.clone())),
                        ..Default::default()
                    })
                }
                (_, Some(v), _) => {
                    header_matcher::HeaderMatchSpecifier::StringMatch(StringMatcher {
                        match_pattern: Some(string_matcher::MatchPattern::Prefix(v.clone())),
                        ..Default::default()
                    })
                }
                (_, _, present) => {
                    header_matcher::HeaderMatchSpecifier::PresentMatch(present.unwrap_or(true))
                }
            }),
            ..Default::default()
        })
        .collect();
    let cluster = match &r.service {
        Some(s) => route_action::ClusterSpecifier::Cluster(cluster_name(s)),
        None => route_action::ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: r
                .weighted
                .iter()
                .map(|w| weighted_cluster::ClusterWeight {
                    name: cluster_name(&w.service),
                    weight: u32v(w.weight),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
    };
    let mut action = RouteAction {
        cluster_specifier: Some(cluster),
        timeout: r.timeout.map(pb_duration),
        prefix_rewrite: r.prefix_rewrite.clone().unwrap_or_default(),
        host_rewrite_specifier: r
            .host_rewrite
            .clone()
            .map(route_action::HostRewriteSpecifier::HostRewriteLiteral),
        ..Default::default()
    };
    if let Some(retry) = &r.retry {
        action.retry_policy = Some(RetryPolicy {
            retry_on: retry.retry_on.join(","),
            num_retries: u32v(retry.attempts),
            per_try_timeout: retry.per_try_timeout.map(pb_duration),
            retry_back_off: retry.backoff.as_ref().map(|b| retry_policy::RetryBackOff {
                base_interval: Some(pb_duration(b.base)),
                max_interval: b.max.map(pb_duration),
            }),
            ..Default::default()
        });
    }
    envoy_types::pb::envoy::config::route::v3::Route {
        r#match: Some(RouteMatch {
            path_specifier: Some(path),
            headers,
            grpc: m
                .grpc
                .as_ref()
                .map(|_| route_match::GrpcRouteMatchOptions {}),
            ..Default::default()
        }),
        action: Some(route::Action::Route(action)),
        request_headers_to_add: r
            .request_headers_to_add
            .iter()
            .map(|(k, v)| HeaderValueOption {
                header: Some(HeaderValue {
                    key: k.clone(),
                    value: v.clone(),
                    ..Default::default()
                }),
                append_action: header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd
                    as i32,
                ..Default::default()
            })
            .collect(),
        request_headers_to_remove: r.request_headers_to_remove.clone(),
        ..Default::default()
    }
}

/// The HTTP filters of every services listener: gRPC stats, then the router.
fn http_filters() -> Vec<HttpFilter> {
    vec![grpc_stats_filter(), router_filter()]
}

/// Counts gRPC calls per upstream cluster by their gRPC status (`cluster.<c>.grpc.total`,
/// `.failure`, ...): the router counts a gRPC error answered over HTTP 200 as a 2xx, and
/// rollouts judge gRPC services on these (issue 15). One set of stats per cluster, not per
/// method: method names come from clients, and stats per method would let them grow Envoy's
/// stats without bound.
fn grpc_stats_filter() -> HttpFilter {
    let config = GrpcStats {
        emit_filter_state: false,
        per_method_stat_specifier: Some(filter_config::PerMethodStatSpecifier::StatsForAllMethods(
            BoolValue { value: false },
        )),
        ..Default::default()
    };
    HttpFilter {
        name: "envoy.filters.http.grpc_stats".into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(any(
            GRPC_STATS_TYPE,
            &config,
        ))),
        ..Default::default()
    }
}

/// The router: the last HTTP filter of every services listener.
fn router_filter() -> HttpFilter {
    HttpFilter {
        name: "envoy.filters.http.router".into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(any(
            ROUTER_TYPE,
            &Router::default(),
        ))),
        ..Default::default()
    }
}

/// The Listener of listener `name`, its port moved by `port_offset` (several Envoys on one
/// host: see [`crate::snapshot::Snapshot::service_listeners`]).
pub fn http_listener(name: &str, l: &ListenerSpec, port_offset: i32, log: AccessLog) -> Listener {
    let mut addr = l.address;
    addr.set_port((i32::from(addr.port()) + port_offset).clamp(1, 65535) as u16);
    let hcm = HttpConnectionManager {
        stat_prefix: listener_name(name),
        codec_type: http_connection_manager::CodecType::Auto as i32,
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: route_config_name(&l.route_table),
        })),
        http_filters: http_filters(),
        access_log: crate::access_log::access_logs(log, true),
        ..Default::default()
    };
    let transport_socket = l.tls.as_ref().map(|tls| {
        let ctx = DownstreamTlsContext {
            common_tls_context: Some(CommonTlsContext {
                tls_certificate_sds_secret_configs: vec![SdsSecretConfig {
                    name: secret_name(&tls.certificate),
                    sds_config: Some(ads()),
                }],
                alpn_protocols: tls.alpn.clone(),
                ..Default::default()
            }),
            require_client_certificate: Some(BoolValue { value: false }),
            ..Default::default()
        };
        TransportSocket {
            name: "envoy.transport_sockets.tls".into(),
            config_type: Some(transport_socket::ConfigType::TypedConfig(any(
                DOWNSTREAM_TLS_TYPE,
                &ctx,
            ))),
        }
    });
    Listener {
        name: listener_name(name),
        address: Some(crate::resources::socket_address(addr)),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(filter::ConfigType::TypedConfig(any(HCM_TYPE, &hcm))),
            }],
            transport_socket,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Every resource of `d`, encoded: clusters, load assignments (file endpoints), route
/// configurations and listeners (at `port_offset`), each as (name, resource).
pub struct Encoded {
    /// CDS.
    pub clusters: Vec<(String, Any)>,
    /// EDS.
    pub endpoints: Vec<(String, Any)>,
    /// RDS.
    pub routes: Vec<(String, Any)>,
    /// LDS.
    pub listeners: Vec<(String, Any)>,
}

/// Encodes every resource of `d`.
pub fn encode(d: &Desired, port_offset: i32) -> Encoded {
    use crate::resources::{CLUSTER_TYPE, LISTENER_TYPE};
    Encoded {
        clusters: d
            .services
            .iter()
            .map(|(n, s)| (cluster_name(n), any(CLUSTER_TYPE, &cluster(n, s))))
            .collect(),
        endpoints: d
            .services
            .iter()
            .map(|(n, s)| {
                let cla = load_assignment(n, &static_endpoints(s));
                (cluster_name(n), any(ENDPOINT_TYPE, &cla))
            })
            .collect(),
        routes: d
            .route_tables
            .iter()
            .map(|(n, t)| {
                (
                    route_config_name(n),
                    any(ROUTE_TYPE, &route_configuration(n, t)),
                )
            })
            .collect(),
        listeners: d
            .listeners
            .iter()
            .map(|(n, l)| {
                (
                    listener_name(n),
                    any(
                        LISTENER_TYPE,
                        &http_listener(n, l, port_offset, AccessLog::Off),
                    ),
                )
            })
            .collect(),
    }
}

/// A bootstrap that holds every resource of `d` as static resources, for `envoy --mode
/// validate` (Envoy's own checks of what concord would send it, `concord render`): the clusters
/// as they are (EDS over an ADS that validation never dials), each load assignment in a STATIC
/// copy of its cluster, each route configuration inline in a listener of its own, and the
/// listeners as they are (routes by RDS, certificates by SDS).
pub fn validation_bootstrap(
    d: &Desired,
) -> envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap {
    use envoy_types::pb::envoy::config::bootstrap::v3::{Bootstrap, bootstrap};
    use envoy_types::pb::envoy::config::core::v3::{ApiConfigSource, GrpcService, grpc_service};
    let xds = "concord_xds";
    let mut clusters: Vec<Cluster> = d.services.iter().map(|(n, s)| cluster(n, s)).collect();
    for (n, s) in &d.services {
        let cla = load_assignment(n, &static_endpoints(s));
        clusters.push(Cluster {
            name: format!("validate_endpoints_{n}"),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Static as i32,
            )),
            load_assignment: Some(ClusterLoadAssignment {
                cluster_name: format!("validate_endpoints_{n}"),
                ..cla
            }),
            ..Default::default()
        });
    }
    let mut h2 = Cluster {
        name: xds.into(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Static as i32,
        )),
        load_assignment: Some(load_assignment(
            "validate-xds",
            &[EndpointSpec {
                addr: SocketAddr::from(([127, 0, 0, 1], 18000)),
                weight: 1,
                draining: false,
            }],
        )),
        ..Default::default()
    };
    if let Some(la) = &mut h2.load_assignment {
        la.cluster_name = xds.into();
    }
    h2.typed_extension_protocol_options
        .insert(HTTP_OPTIONS_KEY.into(), http2_options());
    clusters.push(h2);
    let mut listeners: Vec<Listener> = d
        .listeners
        .iter()
        // With access logs: Envoy checks their shape too.
        .map(|(n, l)| http_listener(n, l, 0, AccessLog::Stdout))
        .collect();
    for (i, (n, t)) in d.route_tables.iter().enumerate() {
        let mut l = http_listener(
            &format!("validate-routes-{n}"),
            &ListenerSpec {
                address: SocketAddr::from(([127, 0, 0, 1], 19000 + i as u16)),
                route_table: n.clone(),
                tls: None,
                internal: false,
            },
            0,
            AccessLog::Off,
        );
        // The route configuration inline instead of by RDS.
        let hcm = HttpConnectionManager {
            stat_prefix: format!("validate_routes_{n}"),
            route_specifier: Some(http_connection_manager::RouteSpecifier::RouteConfig(
                route_configuration(n, t),
            )),
            http_filters: http_filters(),
            ..Default::default()
        };
        l.filter_chains[0].filters[0].config_type =
            Some(filter::ConfigType::TypedConfig(any(HCM_TYPE, &hcm)));
        listeners.push(l);
    }
    let ads_source = ApiConfigSource {
        api_type: envoy_types::pb::envoy::config::core::v3::api_config_source::ApiType::Grpc as i32,
        transport_api_version: ApiVersion::V3 as i32,
        grpc_services: vec![GrpcService {
            target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
                grpc_service::EnvoyGrpc {
                    cluster_name: xds.into(),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }],
        ..Default::default()
    };
    Bootstrap {
        node: Some(envoy_types::pb::envoy::config::core::v3::Node {
            id: "concord-validate".into(),
            cluster: "concord-validate".into(),
            ..Default::default()
        }),
        static_resources: Some(bootstrap::StaticResources {
            listeners,
            clusters,
            ..Default::default()
        }),
        dynamic_resources: Some(bootstrap::DynamicResources {
            ads_config: Some(ads_source),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn http_listeners_count_grpc_calls_before_routing() {
        let spec = ListenerSpec {
            address: SocketAddr::from(([0, 0, 0, 0], 8080)),
            route_table: "main".into(),
            tls: None,
            internal: false,
        };
        let l = http_listener("edge", &spec, 0, AccessLog::Off);
        let Some(filter::ConfigType::TypedConfig(any)) = &l.filter_chains[0].filters[0].config_type
        else {
            panic!("no HttpConnectionManager");
        };
        let hcm = HttpConnectionManager::decode(any.value.as_slice()).unwrap();
        let names: Vec<&str> = hcm.http_filters.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            ["envoy.filters.http.grpc_stats", "envoy.filters.http.router"]
        );
        let Some(http_filter::ConfigType::TypedConfig(any)) = &hcm.http_filters[0].config_type
        else {
            panic!("no gRPC stats config");
        };
        assert_eq!(any.type_url, GRPC_STATS_TYPE);
        let config = GrpcStats::decode(any.value.as_slice()).unwrap();
        assert!(!config.emit_filter_state);
        assert_eq!(
            config.per_method_stat_specifier,
            Some(filter_config::PerMethodStatSpecifier::StatsForAllMethods(
                BoolValue { value: false }
            ))
        );
    }
}
