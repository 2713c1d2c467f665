//! Criterion micro-benchmarks of wire encoding: one state-of-the-world CDS response carrying
//! every cluster of 100, 1000 and 10000 builders (what a SotW push costs per stream), and one
//! delta response carrying the one cluster that changed (what a delta push costs per stream),
//! each framed for gRPC from the snapshot's shared encodings:
//! `cargo bench -p concord-xds --bench wire`.

use concord_registry::{Batch, Builder, Command, Registry, Source};
use concord_xds::wire::{self, Head};
use concord_xds::{ResourceConfig, Snapshot};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::sync::Arc;

fn snapshot(n: usize) -> Snapshot {
    let upserts = (0..n)
        .map(|i| Builder {
            id: format!("b{i}"),
            addr: format!("10.{}.{}.{}:443", i / 65536, (i / 256) % 256, i % 256)
                .parse()
                .expect("valid address"),
            sni: format!("b{i}.builders.example.com"),
            region: "ord".into(),
            labels: Default::default(),
            source: Source::Api,
        })
        .collect();
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
    Snapshot::build(Arc::new(r), ResourceConfig::default())
}

const HEAD: Head<'static> = Head {
    version: "12345",
    type_url: concord_xds::CLUSTER_TYPE,
    nonce: "7",
    identifier: "concord-1",
};

fn encode(c: &mut Criterion) {
    let mut sotw = c.benchmark_group("sotw CDS response, every cluster");
    for n in [100, 1000, 10000] {
        let resources = snapshot(n).cluster_resources();
        let bytes = wire::sotw(&HEAD, &resources).expect("fits a frame").len();
        sotw.throughput(Throughput::Bytes(bytes as u64));
        sotw.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| black_box(wire::sotw(&HEAD, &resources)))
        });
    }
    sotw.finish();
    let mut delta = c.benchmark_group("delta CDS response, one cluster");
    for n in [100, 1000, 10000] {
        let snap = snapshot(n);
        let one: Vec<_> = snap.cluster_map().values().take(1).cloned().collect();
        delta.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| black_box(wire::delta(&HEAD, &one, &[])))
        });
    }
    delta.finish();
}

criterion_group!(benches, encode);
criterion_main!(benches);
