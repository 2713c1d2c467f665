//! Criterion micro-benchmarks of the registry's hot paths: applying a one-builder command to a
//! registry of 100, 1000 and 10000 builders (what every replica does per committed entry), and
//! the poller's diff of two source views of that size with one builder changed (what the leader
//! does per DNS answer): `cargo bench -p concord-registry --bench apply`.

use concord_registry::{Batch, Builder, Command, Registry, Source, diff};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use std::hint::black_box;

fn builder(i: usize, port: u16) -> Builder {
    Builder {
        id: format!("b{i}"),
        addr: format!("10.{}.{}.{}:{port}", i / 65536, (i / 256) % 256, i % 256)
            .parse()
            .expect("valid address"),
        sni: format!("b{i}.builders.example.com"),
        region: "ord".into(),
        labels: Default::default(),
        source: Source::Dns,
    }
}

fn registry(n: usize) -> Registry {
    let mut r = Registry::new();
    let upserts = (0..n).map(|i| builder(i, 443)).collect();
    r.apply(
        1,
        &Command::new(
            Source::Dns,
            Batch {
                upserts,
                removes: vec![],
            },
        ),
    );
    r
}

fn apply(c: &mut Criterion) {
    let mut g = c.benchmark_group("apply one builder");
    for n in [100, 1000, 10000] {
        let base = registry(n);
        let cmd = Command::new(
            Source::Dns,
            Batch {
                upserts: vec![builder(1, 8443)],
                removes: vec![],
            },
        );
        // The registry is persistent (shared maps), so a clone per iteration is what a replica
        // pays to keep the previous revision for its streams.
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                let mut r = base.clone();
                black_box(r.apply(2, &cmd))
            })
        });
    }
    g.finish();
}

fn diff_one_changed(c: &mut Criterion) {
    let mut g = c.benchmark_group("diff, one builder changed");
    for n in [100, 1000, 10000] {
        let from = registry(n).of_source(Source::Dns);
        let mut to = from.clone();
        to.insert("b1".into(), builder(1, 8443));
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| black_box(diff(&from, &to)))
        });
    }
    g.finish();
}

criterion_group!(benches, apply, diff_one_changed);
criterion_main!(benches);
