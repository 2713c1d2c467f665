//! Graceful shutdown of a real replica: SIGTERM the leader while an ADS client streams from it and
//! writes are in flight, and check that the drain is clean — the process exits 0 within its
//! grace period having awaited every task, no write it accepted fails, the stream ends with a
//! gRPC status (not a reset), the cluster keeps committing, and the data dir reopens.

use anyhow::{Result, bail, ensure};
use concord_harness::ads::Ads;
use concord_harness::{Cluster, Options, admin_client, eventually};
use serde_json::json;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(20);
/// The grace period the replicas are started with.
const GRACE: Duration = Duration::from_secs(5);

/// What one writer saw: ids acknowledged (200), and the answers that were failures.
#[derive(Default)]
struct Writes {
    acked: Vec<String>,
    failed: Vec<String>,
}

/// PUTs `w<n>-<i>` through `admin` until `stop`, one at a time.
async fn writer(n: usize, admin: String, stop: Arc<AtomicBool>) -> Writes {
    let http = admin_client(None).expect("client");
    let mut out = Writes::default();
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let id = format!("w{n}-{i}");
        let body = json!({ "addr": format!("127.0.0.1:{}", 10000 + i % 50000), "sni": concord_harness::sni(&id) });
        match http
            .put(format!("{admin}/v1/builders/{id}"))
            .json(&body)
            .send()
            .await
        {
            Ok(resp) if resp.status() == 200 => out.acked.push(id),
            // An answer that is not a success: the replica took the write and then failed it.
            Ok(resp) => {
                let status = resp.status();
                let text = resp.text().await.unwrap_or_default();
                out.failed.push(format!("{id}: {status} {text}"));
            }
            // No answer: the replica was no longer accepting (refused or closed before a
            // request was read); a client tries another replica. Stop: the port is gone.
            Err(_) => break,
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_every_task_and_loses_no_write() -> Result<()> {
    let mut c = Cluster::start(Options {
        extra: vec![format!("--shutdown-grace-ms={}", GRACE.as_millis())],
        ..Options::default()
    })
    .await?;
    let leader = c.leader().await?;
    c.put(leader, "before", 9001).await?;

    // A scripted ADS client streams from the replica about to stop.
    let xds = c.nodes[&leader].xds.clone();
    let mut ads = eventually(T, "an ADS stream opens", || async {
        Ads::open(&c, &xds).await.map_err(anyhow::Error::from)
    })
    .await?;
    ads.request("", "", None).await?;
    let first = ads.next().await?;
    ensure!(!first.resources.is_empty(), "no clusters in {first:?}");

    // Writes in flight on the replica when it is told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let admin = c.nodes[&leader].admin.clone();
    let writers: Vec<_> = (0..4)
        .map(|n| tokio::spawn(writer(n, admin.clone(), stop.clone())))
        .collect();
    eventually(T, "writes commit", || async {
        let (_, ids) = c.builders(leader, false).await?;
        ensure!(ids.len() > 20, "{} builders", ids.len());
        Ok(())
    })
    .await?;

    let started = Instant::now();
    let node = c.node(leader);
    let status = tokio::task::block_in_place(|| node.terminate())?;
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let log = c.nodes[&leader].log_tail();
    eprintln!(
        "node {leader} exited ({status}) {took:?} after SIGTERM: {}",
        log.lines().rev().nth(1).unwrap_or_default()
    );
    ensure!(status.success(), "exit {status}\n{log}");
    ensure!(
        took < GRACE + Duration::from_secs(2),
        "took {took:?} to exit (grace {GRACE:?})\n{log}"
    );

    // The stream ended with a status the replica sent, not a reset connection.
    let end = loop {
        match ads.next().await {
            Ok(_) => continue,
            Err(s) => break s,
        }
    };
    ensure!(
        matches!(end.code(), tonic::Code::Ok | tonic::Code::Unavailable),
        "the ADS stream ended with {end:?}, not a status"
    );

    let mut acked = BTreeSet::new();
    let mut failed = Vec::new();
    for w in writers {
        let w = w.await?;
        acked.extend(w.acked);
        failed.extend(w.failed);
    }
    if !failed.is_empty() {
        bail!(
            "{} writes the stopping replica accepted failed, e.g. {:?}\n{log}",
            failed.len(),
            &failed[..failed.len().min(3)]
        );
    }

    ensure!(
        log.contains("drained: every task finished"),
        "no drained line in the log:\n{log}"
    );

    // The others elect a leader and keep committing; every acknowledged write is there.
    eventually(T, "the rest of the cluster commits", || async {
        let id = c.leader().await?;
        c.put(id, "after", 9002).await
    })
    .await?;
    let other = c.leader().await?;
    let (_, ids) = c.builders(other, true).await?;
    let have: BTreeSet<String> = ids.into_iter().collect();
    let lost: Vec<_> = acked.difference(&have).collect();
    ensure!(lost.is_empty(), "acknowledged writes lost: {lost:?}");

    // The stopped replica's data dir reopens, and it catches up.
    c.node(leader).start()?;
    eventually(T, "the restarted replica has every write", || async {
        let (_, ids) = c.builders(leader, false).await?;
        let got: BTreeSet<String> = ids.into_iter().collect();
        ensure!(
            acked.is_subset(&got) && got.contains("after"),
            "{} builders",
            got.len()
        );
        Ok(())
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", c.logs()))?;
    Ok(())
}
