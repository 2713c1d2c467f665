//! Time to build and serialise the resources of one revision (all clusters and the listener) for
//! 100, 1000 and 10000 builders: `cargo bench -p concord-xds --bench resources`.

use concord_registry::{Batch, Builder, Command, Registry, Source};
use concord_xds::{CLUSTER_TYPE, LISTENER_TYPE, ResourceConfig, Snapshot};
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
    }
}
