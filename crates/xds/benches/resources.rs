//! Criterion micro-benchmarks of resource building: the resources of one revision (all clusters
//! and the listener) built and serialised from scratch for 100, 1000 and 10000 builders, and
//! incrementally after a change of one builder, in both listener modes, and after a change of
//! one registered endpoint among 100, 1000 and 10000 services of 10 endpoints each (issue 14:
//! the cost grows with the change, not the registry) — what every replica does per committed
//! change: `cargo bench -p concord-xds --bench resources`.

use concord_registry::{Batch, Builder, Command, Registry, Source};
use concord_xds::{CLUSTER_TYPE, LISTENER_TYPE, ListenerMode, ResourceConfig, Snapshot};
use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use std::sync::Arc;

fn builder(i: usize, port: u16) -> Builder {
    Builder {
        id: format!("b{i}"),
        addr: format!("10.{}.{}.{}:{port}", i / 65536, (i / 256) % 256, i % 256)
            .parse()
            .expect("valid address"),
        sni: format!("b{i}.builders.example.com"),
        region: "ord".into(),
        labels: Default::default(),
        source: Source::Api,
    }
}

fn registry(n: usize) -> Arc<Registry> {
    let upserts = (0..n).map(|i| builder(i, 443)).collect();
    let mut r = Registry::new();
    r.apply(
        1,
        &Command::new(
            Source::Api,
            Batch {
                upserts,
                removes: vec![],
            },
        ),
    );
    Arc::new(r)
}

fn modes() -> [(&'static str, ResourceConfig); 2] {
    [
        ("filter-chains", ResourceConfig::default()),
        (
            "sni-cluster",
            ResourceConfig {
                mode: ListenerMode::SniCluster {
                    suffix: "builders.example.com".into(),
                    on_demand: false,
                },
                ..ResourceConfig::default()
            },
        ),
    ]
}

fn from_scratch(c: &mut Criterion) {
    let mut g = c.benchmark_group("build+serialise from scratch");
    g.sample_size(10);
    for n in [100, 1000, 10000] {
        let reg = registry(n);
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                let snap = Snapshot::build(reg.clone(), ResourceConfig::default());
                let addr = snap.default_listener_addr();
                black_box(snap.resources(LISTENER_TYPE, addr));
                black_box(snap.resources(CLUSTER_TYPE, addr));
            })
        });
    }
    g.finish();
}

fn one_changed(c: &mut Criterion) {
    for (mode, config) in modes() {
        let mut g = c.benchmark_group(format!("incremental, one builder changed, {mode}"));
        for n in [100, 1000, 10000] {
            let reg = registry(n);
            let base = Snapshot::build(reg.clone(), config.clone());
            let mut port = 1000u16;
            g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
                b.iter_batched(
                    || {
                        // One builder moves (set up outside the timing): the replica's apply.
                        port = port.wrapping_add(1).max(1000);
                        let mut r = Registry::clone(&reg);
                        r.apply(
                            2,
                            &Command::new(
                                Source::Api,
                                Batch {
                                    upserts: vec![builder(1, port)],
                                    removes: vec![],
                                },
                            ),
                        );
                        Arc::new(r)
                    },
                    |r| {
                        // Encode the changed builder; assemble the listener (a copy of the
                        // encoded chains in filter-chains mode, nothing in sni-cluster mode).
                        let snap = base.next(r);
                        let addr = snap.default_listener_addr();
                        black_box(snap.resources(LISTENER_TYPE, addr));
                        black_box(snap.cluster_map());
                        assert_eq!(snap.serialised(), 1, "only the changed builder is encoded");
                    },
                    BatchSize::SmallInput,
                )
            });
        }
        g.finish();
    }
}

/// A registry of `n` gRPC services with 10 registered endpoints each.
fn services(n: usize) -> Arc<Registry> {
    use concord_registry::services::{Desired, EndpointChange};
    let mut v = serde_json::json!({"services": {}});
    for i in 0..n {
        v["services"][format!("svc-{i}")] = serde_json::json!({"protocol": "grpc"});
    }
    let desired: Desired = serde_json::from_value(v).expect("a desired state");
    let mut r = Registry::new();
    r.apply(1, &Command::raise_format(2));
    r.apply(2, &Command::apply_services(desired));
    let changes = (0..n)
        .flat_map(|i| {
            (0..10).map(move |e| EndpointChange::Register {
                service: format!("svc-{i}"),
                id: format!("e{e}"),
                addr: format!(
                    "10.{}.{}.{}:{}",
                    i / 65536,
                    (i / 256) % 256,
                    i % 256,
                    8000 + e
                )
                .parse()
                .expect("valid address"),
                weight: 1,
                labels: Default::default(),
                ttl: None,
            })
        })
        .collect();
    r.apply(3, &Command::endpoints(changes));
    Arc::new(r)
}

fn one_endpoint_changed(c: &mut Criterion) {
    use concord_registry::services::EndpointChange;
    let mut g = c.benchmark_group("incremental, one endpoint changed, services x 10 endpoints");
    for n in [100, 1000, 10000] {
        let reg = services(n);
        let base = Snapshot::build(reg.clone(), ResourceConfig::default());
        let mut weight = 1u32;
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter_batched(
                || {
                    weight = weight % 100 + 2;
                    let mut r = Registry::clone(&reg);
                    r.apply(
                        4,
                        &Command::endpoints(vec![EndpointChange::Register {
                            service: "svc-7".into(),
                            id: "e0".into(),
                            addr: "10.0.0.7:8000".parse().expect("valid address"),
                            weight,
                            labels: Default::default(),
                            ttl: None,
                        }]),
                    );
                    Arc::new(r)
                },
                |r| {
                    let snap = base.next(r);
                    black_box(snap.endpoint_map());
                    black_box(snap.cluster_map());
                    assert_eq!(
                        snap.services_serialised(),
                        1,
                        "only the changed service's load assignment is encoded"
                    );
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

/// One `concord apply` that changes one service's settings (its connect timeout) among `n`:
/// only that service's cluster and load assignment are encoded.
fn one_service_changed(c: &mut Criterion) {
    use concord_registry::services::{Desired, Duration};
    let mut g =
        c.benchmark_group("incremental, one service changed by apply, services x 10 endpoints");
    for n in [100, 1000, 10000] {
        let reg = services(n);
        let base = Snapshot::build(reg.clone(), ResourceConfig::default());
        let mut ms = 100u64;
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter_batched(
                || {
                    // 100-999 ms: never the default (1 s), so every apply changes something.
                    ms = if ms >= 999 { 100 } else { ms + 1 };
                    let mut d = Desired::clone(reg.desired());
                    if let Some(s) = d.services.get_mut("svc-7") {
                        s.connect_timeout = Duration::from_millis(ms);
                    }
                    let mut r = Registry::clone(&reg);
                    let out = r.apply(4, &Command::apply_services(d));
                    assert!(
                        matches!(
                            out,
                            concord_registry::Outcome::Applied { changed: true, .. }
                        ),
                        "{out:?}"
                    );
                    Arc::new(r)
                },
                |r| {
                    let snap = base.next(r);
                    black_box(snap.cluster_map());
                    black_box(snap.endpoint_map());
                    assert_eq!(
                        snap.services_serialised(),
                        2,
                        "only the changed service's cluster and load assignment are encoded"
                    );
                    // Dropped after the timing: freeing the old desired state is the
                    // registry's cost, not the rebuild's.
                    snap
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    from_scratch,
    one_changed,
    one_endpoint_changed,
    one_service_changed
);
criterion_main!(benches);
