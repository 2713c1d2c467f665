//! Time to build and serialise the resources of one revision (all clusters and the listener) for
//! 100, 1000 and 10000 builders, from scratch and incrementally after a change of one builder
//! (in both listener modes): `cargo bench -p concord-xds --bench resources`.

use concord_registry::{Batch, Builder, Command, Registry, Source};
use concord_xds::{CLUSTER_TYPE, LISTENER_TYPE, ListenerMode, ResourceConfig, Snapshot};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn registry(n: usize) -> Arc<Registry> {
    let upserts = (0..n)
        .map(|i| Builder {
            id: format!("b{i}"),
            addr: format!("10.{}.{}.{}:443", i / 65536, (i / 256) % 256, i % 256)
                .parse()
                .unwrap(),
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
    Arc::new(r)
}

fn main() {
    for n in [100, 1000, 10000] {
        let reg = registry(n);
        let runs = if n >= 10000 { 30 } else { 200 };
        let mut times: Vec<Duration> = Vec::with_capacity(runs);
        let mut bytes = 0;
        for _ in 0..runs {
            let t = Instant::now();
            let snap = Snapshot::build(reg.clone(), ResourceConfig::default());
            let addr = snap.default_listener_addr();
            let l = snap.resources(LISTENER_TYPE, addr);
            let c = snap.resources(CLUSTER_TYPE, addr);
            times.push(t.elapsed());
            bytes = l
                .iter()
                .chain(c.iter())
                .map(|a| a.value.len())
                .sum::<usize>();
        }
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "{n:>6} builders: build+serialise p50 {:.2} ms, p99 {:.2} ms over {runs} runs ({} KiB encoded)",
            ms(times[runs / 2]),
            ms(times[(runs * 99).div_ceil(100) - 1]),
            bytes / 1024
        );
        for (mode, config) in [
            ("filter-chains", ResourceConfig::default()),
            (
                "sni-cluster",
                ResourceConfig {
                    mode: ListenerMode::SniCluster {
                        suffix: "builders.example.com".into(),
                    },
                    ..ResourceConfig::default()
                },
            ),
        ] {
            let base = Snapshot::build(reg.clone(), config);
            let mut times: Vec<Duration> = Vec::with_capacity(runs);
            for i in 0..runs {
                // One builder moves: encode it; assemble the listener (a copy of the encoded
                // chains in filter-chains mode, nothing in sni-cluster mode).
                let mut r = Registry::clone(&reg);
                let mut b = Builder::clone(r.get("b1").unwrap());
                b.addr.set_port(1000 + i as u16);
                r.apply(
                    2 + i as u64,
                    &Command::new(
                        Source::Api,
                        Batch {
                            upserts: vec![b],
                            removes: vec![],
                        },
                    ),
                );
                let r = Arc::new(r);
                let t = Instant::now();
                let snap = base.next(r);
                let addr = snap.default_listener_addr();
                snap.resources(LISTENER_TYPE, addr);
                let _ = snap.cluster_map();
                times.push(t.elapsed());
                assert_eq!(snap.serialised(), 1);
            }
            times.sort();
            println!(
                "{n:>6} builders, one changed, {mode}: incremental p50 {:.3} ms, p99 {:.3} ms",
                ms(times[runs / 2]),
                ms(times[(runs * 99).div_ceil(100) - 1]),
            );
        }
    }
}
