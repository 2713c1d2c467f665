//! A minimal OTLP/gRPC trace receiver that prints each trace as a tree once it is quiet: to look
//! at concord's traces without a collector such as Jaeger.
//!
//! `target/debug/trace-print [ADDR]` (default 127.0.0.1:4317), then run the replicas with
//! `--otlp-endpoint http://ADDR` (or `CONCORD_OTLP_ENDPOINT=http://ADDR deploy/local/concord-local up`).

use anyhow::{Context, Result};
use concord_harness::otlp::{Collector, ReceivedSpan};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// A trace is printed once no span of it arrived for this long.
const QUIET: Duration = Duration::from_secs(2);

fn print_tree(spans: &[ReceivedSpan]) {
    let t0 = spans.iter().map(|s| s.start_ns).min().unwrap_or(0);
    let ids: BTreeSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let mut children: BTreeMap<&str, Vec<&ReceivedSpan>> = BTreeMap::new();
    for s in spans {
        // A span whose parent is not here (not sampled, or lost) is shown at the top.
        let parent = if ids.contains(s.parent_span_id.as_str()) {
            s.parent_span_id.as_str()
        } else {
            ""
        };
        children.entry(parent).or_default().push(s);
    }
    for v in children.values_mut() {
        v.sort_by_key(|s| s.start_ns);
    }
    println!("trace {}", spans[0].trace_id);
    fn walk(children: &BTreeMap<&str, Vec<&ReceivedSpan>>, parent: &str, depth: usize, t0: u64) {
        for s in children.get(parent).into_iter().flatten() {
            let status = match s.status_code {
                1 => "ok".to_string(),
                2 => format!("ERROR {}", s.status_message),
                _ => "-".to_string(),
            };
            let attrs: Vec<String> = s
                .attributes
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            println!(
                "  {:>9.3} ms {:>8.3} ms  {}{} [{}] {}",
                (s.start_ns.saturating_sub(t0)) as f64 / 1e6,
                s.millis(),
                "  ".repeat(depth),
                s.name,
                status,
                attrs.join(" ")
            );
            walk(children, &s.span_id, depth + 1, t0);
        }
    }
    walk(&children, "", 0, t0);
}

#[tokio::main]
async fn main() -> Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:4317".into())
        .parse()
        .context("ADDR: give ip:port")?;
    let collector = Collector::start_on(addr).await?;
    eprintln!("receiving OTLP/gRPC traces on {}", collector.endpoint());
    // Spans of traces not printed yet, and when each trace last grew.
    let mut pending: BTreeMap<String, (Vec<ReceivedSpan>, std::time::Instant)> = BTreeMap::new();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        for s in collector.take() {
            let e = pending
                .entry(s.trace_id.clone())
                .or_insert_with(|| (Vec::new(), std::time::Instant::now()));
            e.0.push(s);
            e.1 = std::time::Instant::now();
        }
        let quiet: Vec<String> = pending
            .iter()
            .filter(|(_, (_, at))| at.elapsed() >= QUIET)
            .map(|(id, _)| id.clone())
            .collect();
        for id in quiet {
            if let Some((spans, _)) = pending.remove(&id) {
                print_tree(&spans);
            }
        }
    }
}
