use super::*;
use crate::access_log::AccessLog;
use crate::resource_type::Placement;
use crate::resources::{SNI_CLUSTER_CHAIN, socket_address_for_tests as socket_address};
use concord_registry::{Batch, Command, Source};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::listener::v3::Listener;

fn builder(i: usize, sni_domain: &str) -> Builder {
    Builder {
        id: format!("b{i}"),
        addr: format!("10.0.0.{}:443", i % 250 + 1).parse().unwrap(),
        sni: format!("b{i}.{sni_domain}"),
        region: String::new(),
        labels: Default::default(),
        source: Source::Api,
    }
}

fn apply(r: &mut Registry, index: u64, upserts: Vec<Builder>, removes: Vec<String>) {
    r.apply(
        index,
        &Command::new(Source::Api, Batch { upserts, removes }),
    );
}

fn registry(n: usize) -> Arc<Registry> {
    let mut r = Registry::new();
    apply(
        &mut r,
        7,
        (0..n).map(|i| builder(i, "builders.example.com")).collect(),
        vec![],
    );
    Arc::new(r)
}

fn sni_config() -> ResourceConfig {
    ResourceConfig {
        mode: ListenerMode::SniCluster {
            suffix: "builders.example.com".into(),
            on_demand: false,
        },
        ..ResourceConfig::default()
    }
}

#[test]
fn one_cluster_and_one_chain_per_builder() {
    let snap = Snapshot::build(registry(3), ResourceConfig::default());
    assert_eq!(snap.version(), "7");
    let addr = snap.default_listener_addr();
    let clusters = snap.resources(CLUSTER_TYPE, addr);
    assert_eq!(clusters.len(), 3);
    let c = Cluster::decode(clusters[1].value.as_slice()).unwrap();
    assert_eq!(c.name, "builder_b1");
    let listeners = snap.resources(LISTENER_TYPE, addr);
    let l = Listener::decode(listeners[0].value.as_slice()).unwrap();
    assert_eq!(l.filter_chains.len(), 3);
    let m = l.filter_chains[2].filter_chain_match.clone().unwrap();
    assert_eq!(m.server_names, ["b2.builders.example.com"]);
    assert_eq!(m.transport_protocol, "tls");
    assert!(snap.resources("type.googleapis.com/other", addr).is_empty());
}

#[test]
fn assembled_listener_equals_the_one_built_whole() {
    let reg = registry(5);
    let snap = Snapshot::build(reg.clone(), ResourceConfig::default());
    let addr = snap.default_listener_addr();
    let got = Listener::decode(snap.resources(LISTENER_TYPE, addr)[0].value.as_slice()).unwrap();
    let want = listener(
        reg.iter()
            .map(|b| filter_chain(b, AccessLog::Off))
            .collect(),
        "builders",
        addr,
    );
    assert_eq!(got, want);
}

#[test]
fn listener_is_encoded_once_per_address() {
    let snap = Snapshot::build(registry(2), ResourceConfig::default());
    let a: SocketAddr = "127.0.0.1:10001".parse().unwrap();
    let b: SocketAddr = "127.0.0.1:10002".parse().unwrap();
    let first = snap.resources(LISTENER_TYPE, a);
    assert!(Arc::ptr_eq(&first, &snap.resources(LISTENER_TYPE, a)));
    let other = Listener::decode(snap.resources(LISTENER_TYPE, b)[0].value.as_slice()).unwrap();
    assert_eq!(
        other.address.unwrap(),
        socket_address(b),
        "each address gets its own listener"
    );
}

#[test]
fn dump_shows_what_is_served() {
    let snap = Snapshot::build(registry(2), ResourceConfig::default());
    let d = snap.dump();
    assert_eq!(d.version_info, "7");
    assert_eq!(d.clusters.len(), 2);
    assert_eq!(d.clusters[0].name, "builder_b0");
    assert_eq!(d.clusters[0].endpoint, "10.0.0.1:443");
    let l = d.listener.unwrap();
    assert_eq!(l.address, "0.0.0.0:10000");
    assert_eq!(
        l.filter_chains[1],
        (
            "b1.builders.example.com".to_string(),
            "builder_b1".to_string()
        )
    );
}

#[test]
fn empty_registry_has_no_listener() {
    let snap = Snapshot::build(Arc::new(Registry::new()), ResourceConfig::default());
    assert!(
        snap.resources(LISTENER_TYPE, snap.default_listener_addr())
            .is_empty()
    );
    assert_eq!(snap.version(), "0");
}

#[test]
fn sni_cluster_mode_has_one_suffix_chain_and_clusters_named_by_sni() {
    let mut r = Registry::clone(&registry(2));
    // Outside the suffix: the bare suffix, another domain, and a look-alike ending.
    apply(
        &mut r,
        8,
        vec![
            Builder {
                sni: "builders.example.com".into(),
                ..builder(7, "x")
            },
            builder(8, "other.example.com"),
            builder(9, "evilbuilders.example.com"),
        ],
        vec![],
    );
    let snap = Snapshot::build(Arc::new(r), sni_config());
    let addr = snap.default_listener_addr();
    let clusters: Vec<Cluster> = snap
        .resources(CLUSTER_TYPE, addr)
        .iter()
        .map(|a| Cluster::decode(a.value.as_slice()).unwrap())
        .collect();
    let names: Vec<&str> = clusters.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        ["b0.builders.example.com", "b1.builders.example.com"]
    );
    assert_eq!(snap.skipped(), ["b7", "b8", "b9"]);
    let l = Listener::decode(snap.resources(LISTENER_TYPE, addr)[0].value.as_slice()).unwrap();
    assert_eq!(l.filter_chains.len(), 1, "one chain, whatever the builders");
    let fc = &l.filter_chains[0];
    assert_eq!(fc.name, SNI_CLUSTER_CHAIN);
    let m = fc.filter_chain_match.as_ref().unwrap();
    assert_eq!(m.server_names, ["*.builders.example.com"]);
    assert_eq!(m.transport_protocol, "tls");
    let filters: Vec<&str> = fc.filters.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        filters,
        [
            "envoy.filters.network.sni_cluster",
            "envoy.filters.network.tcp_proxy"
        ]
    );
    assert!(l.default_filter_chain.is_none(), "no fallback chain");
    // With no builders the listener is still there (it never changes).
    let empty = Snapshot::build(Arc::new(Registry::new()), sni_config());
    assert_eq!(empty.resources(LISTENER_TYPE, addr).len(), 1);
}

#[test]
fn a_change_of_k_builders_serialises_k() {
    for config in [ResourceConfig::default(), sni_config()] {
        let mut r = Registry::clone(&registry(100));
        let first = Snapshot::build(Arc::new(r.clone()), config.clone());
        assert_eq!(first.serialised(), 100);
        let addr = first.default_listener_addr();
        let before = first.resources(LISTENER_TYPE, addr);
        // k = 3: one added, one changed, one removed.
        let mut moved = builder(5, "builders.example.com");
        moved.addr = "10.9.9.9:443".parse().unwrap();
        apply(
            &mut r,
            8,
            vec![builder(100, "builders.example.com"), moved],
            vec!["b7".into()],
        );
        let second = first.next(Arc::new(r.clone()));
        assert_eq!(second.revision(), 8);
        assert_eq!(second.serialised(), 2, "the removal encodes nothing");
        // Unchanged builders share their encoded cluster with the previous snapshot.
        let same = |a: &Snapshot, b: &Snapshot, name: &str| {
            let x = a.clusters().find(|n| n.name.contains(name)).unwrap();
            let y = b.clusters().find(|n| n.name.contains(name)).unwrap();
            std::ptr::eq(x, y)
        };
        assert!(same(&first, &second, "b3"));
        assert!(!same(&first, &second, "b5"));
        assert_eq!(second.clusters().count(), 100);
        // The result is what a full build gives.
        let full = Snapshot::build(Arc::new(r.clone()), config.clone());
        assert_eq!(
            second.resources(CLUSTER_TYPE, addr),
            full.resources(CLUSTER_TYPE, addr)
        );
        assert_eq!(
            second.resources(LISTENER_TYPE, addr),
            full.resources(LISTENER_TYPE, addr)
        );
        let after = second.resources(LISTENER_TYPE, addr);
        match config.mode {
            ListenerMode::FilterChains => assert_ne!(before, after),
            // The sni-cluster listener is encoded once and never again.
            ListenerMode::SniCluster { .. } => assert!(Arc::ptr_eq(&before, &after)),
        }
        // No change at all (a new revision with identical builders) encodes nothing.
        assert_eq!(second.next(Arc::new(r)).serialised(), 0);
    }
}

#[test]
fn versions_are_content_hashes() {
    let a = Snapshot::build(registry(3), ResourceConfig::default());
    let mut r = Registry::clone(&registry(3));
    apply(&mut r, 9, vec![builder(3, "builders.example.com")], vec![]);
    // Built at another revision, from scratch: the same content has the same version.
    let b = Snapshot::build(Arc::new(r), ResourceConfig::default());
    let v = |s: &Snapshot, name: &str| {
        s.clusters()
            .find(|n| n.name == name)
            .map(|n| n.version.clone())
    };
    assert_eq!(v(&a, "builder_b1"), v(&b, "builder_b1"));
    assert_ne!(v(&a, "builder_b1"), v(&a, "builder_b2"));
    let addr = a.default_listener_addr();
    assert_ne!(
        a.named_listener(addr).unwrap().version,
        b.named_listener(addr).unwrap().version
    );
    assert_eq!(content_version(b""), "cbf29ce484222325");
}

fn shop(timeout: &str) -> concord_registry::services::Desired {
    serde_json::from_value(serde_json::json!({
        "services": {
            "echo": {"protocol": "grpc", "endpoints": [{"addr": "127.0.0.1:50051"}]},
            "other": {"protocol": "http"}
        },
        "route_tables": {"main": {"virtual_hosts": [{"name": "echo", "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "service": "echo", "timeout": timeout}]}]}},
        "listeners": {"public": {"address": "0.0.0.0:8080", "route_table": "main"}}
    }))
    .unwrap()
}

fn with_services(
    r: &Registry,
    index: u64,
    d: concord_registry::services::Desired,
) -> Arc<Registry> {
    let mut r = r.clone();
    if r.format() < 2 {
        r.apply(index, &Command::raise_format(2));
    }
    r.apply(index, &Command::apply_services(d));
    Arc::new(r)
}

/// Services add their clusters beside the builders', their load assignments, route
/// configurations and listeners; a change of one route re-encodes only what it must, and a
/// builder change re-encodes none of the services' resources.
#[test]
fn services_resources_sit_beside_the_builders() {
    let builders = registry(3);
    let first = Snapshot::build(builders.clone(), ResourceConfig::default());
    let r1 = with_services(&builders, 8, shop("15s"));
    let s1 = first.next(r1.clone());
    let names: Vec<String> = s1.cluster_map().keys().cloned().collect();
    assert_eq!(
        names,
        [
            "builder_b0",
            "builder_b1",
            "builder_b2",
            "service_echo",
            "service_other"
        ]
    );
    assert_eq!(s1.cluster_resources().len(), 5);
    assert_eq!(s1.endpoint_map().len(), 2);
    assert_eq!(s1.route_map().keys().collect::<Vec<_>>(), ["routes_main"]);
    let addr = s1.default_listener_addr();
    let listeners: Vec<String> = s1.listener_map(addr.into()).keys().cloned().collect();
    assert_eq!(listeners, ["builders", "http_public"]);
    assert_eq!(s1.listener_resources(addr.into()).len(), 2);
    // An Envoy 3 ports off gets the services listener 3 ports up.
    let l = &s1.listener_map(Placement {
        port_offset: 3,
        ..addr.into()
    })["http_public"];
    let decoded = Listener::decode(l.resource.value.as_slice()).unwrap();
    assert_eq!(
        decoded.address,
        Some(socket_address("0.0.0.0:8083".parse().unwrap()))
    );

    // A route change: the route configuration changes; clusters and endpoints are the same Arcs.
    let r2 = with_services(&r1, 9, shop("5s"));
    let s2 = s1.next(r2.clone());
    assert!(Arc::ptr_eq(
        &s1.cluster_map()["service_echo"],
        &s2.cluster_map()["service_echo"]
    ));
    assert!(Arc::ptr_eq(
        &s1.endpoint_map()["service_echo"],
        &s2.endpoint_map()["service_echo"]
    ));
    assert_ne!(
        s1.route_map()["routes_main"].version,
        s2.route_map()["routes_main"].version
    );
    assert_eq!(
        s2.services_serialised(),
        1,
        "only the route table is encoded"
    );
    assert!(Arc::ptr_eq(
        &s1.listener_map(addr.into())["http_public"],
        &s2.listener_map(addr.into())["http_public"]
    ));

    // A builder change leaves the services' resources alone.
    let mut r3 = Registry::clone(&r2);
    apply(
        &mut r3,
        10,
        vec![builder(9, "builders.example.com")],
        vec![],
    );
    let s3 = s2.next(Arc::new(r3));
    assert_eq!(s3.services_serialised(), 0);
    assert!(Arc::ptr_eq(
        &s2.route_map()["routes_main"],
        &s3.route_map()["routes_main"]
    ));

    // Removing the services removes their clusters, not the builders'.
    let r4 = with_services(&r2, 11, concord_registry::services::Desired::default());
    let s4 = s3.next(r4);
    assert!(
        s4.cluster_map().keys().all(|k| k.starts_with("builder_")),
        "{:?}",
        s4.cluster_map().keys().collect::<Vec<_>>()
    );
    assert!(s4.endpoint_map().is_empty() && s4.route_map().is_empty());
    assert_eq!(
        s4.listener_map(addr.into()).keys().collect::<Vec<_>>(),
        ["builders"]
    );
}

/// A registered endpoint re-encodes its service's load assignment alone: one resource, whatever
/// the number of services.
#[test]
fn one_endpoint_change_re_encodes_one_load_assignment() {
    let mut v = serde_json::json!({"services": {}});
    for i in 0..100 {
        v["services"][format!("svc-{i}")] = serde_json::json!({"protocol": "grpc"});
    }
    let desired: concord_registry::services::Desired = serde_json::from_value(v).unwrap();
    let r1 = with_services(&Registry::new(), 1, desired);
    let s1 = Snapshot::build(r1.clone(), ResourceConfig::default());
    assert_eq!(s1.services_serialised(), 200);
    let mut r2 = Registry::clone(&r1);
    r2.apply(
        2,
        &Command::endpoints(vec![concord_registry::services::EndpointChange::Register {
            service: "svc-7".into(),
            id: "e1".into(),
            addr: "127.0.0.1:50051".parse().unwrap(),
            weight: 1,
            labels: Default::default(),
            ttl: None,
        }]),
    );
    let s2 = s1.next(Arc::new(r2));
    assert_eq!(s2.services_serialised(), 1);
    let (a, b) = (s1.endpoint_map(), s2.endpoint_map());
    assert_ne!(a["service_svc-7"].version, b["service_svc-7"].version);
    assert!(Arc::ptr_eq(&a["service_svc-8"], &b["service_svc-8"]));
    assert!(Arc::ptr_eq(
        &s1.cluster_map()["service_svc-7"],
        &s2.cluster_map()["service_svc-7"]
    ));
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    let cla = ClusterLoadAssignment::decode(b["service_svc-7"].resource.value.as_slice()).unwrap();
    assert_eq!(cla.endpoints[0].lb_endpoints.len(), 1);
}
