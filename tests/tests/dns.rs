//! DNS discovery against a real DNS server (BIND 9 over UDP and TCP, changed with nsupdate), with
//! real replicas and a real Envoy: each record format end to end, only the leader polls and a new
//! leader resumes, outages change nothing, the mass-removal guard, and 1000 builders in one name.

use anyhow::{Context, Result, bail, ensure};
use concord_api::{DiscoveryStatus, PollerStatus, Source};
use concord_harness::dns::Bind;
use concord_harness::envoy::Envoy;
use concord_harness::tls::{TestCa, TlsBuilder, probe};
use concord_harness::{Cluster, Options, eventually, free_port};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

const T: Duration = Duration::from_secs(20);
const TEMPLATE: &str = "{id}.dns.test";

fn dns_opts(bind: &Bind, sources: &[String], extra: &[&str]) -> Options {
    let mut args = vec![
        "--dns-server".to_string(),
        bind.addr(),
        "--dns-sni-template".into(),
        TEMPLATE.into(),
        "--dns-source".into(),
        sources.join(","),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    Options {
        extra: args,
        ..Options::default()
    }
}

fn sni(id: &str) -> String {
    TEMPLATE.replace("{id}", id)
}

fn entry(id: &str, ip: &str) -> String {
    format!("instance={id},app=builders,ip={ip},region=ord")
}

/// The `dns` builders a replica has applied, by id.
async fn dns_ids(c: &Cluster, id: u64) -> Result<BTreeSet<String>> {
    let v = c.api(id).builders(false).await?;
    Ok(v.builders
        .into_iter()
        .filter(|b| b.source == Source::Dns)
        .map(|b| b.id)
        .collect())
}

/// A replica's discovery status, and its poller (an error where discovery is off).
async fn discovery(c: &Cluster, id: u64) -> Result<(DiscoveryStatus, PollerStatus)> {
    let v = c.api(id).discovery().await?;
    let p = v
        .poller
        .clone()
        .with_context(|| format!("node {id} has no poller: {v:?}"))?;
    Ok((v, p))
}

/// Waits until the leader's `dns` builders are exactly `want`.
async fn discovered(c: &Cluster, want: &[&str]) -> Result<()> {
    let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
    eventually(T, "DNS builders committed", || async {
        let leader = c.leader().await?;
        let got = dns_ids(c, leader).await?;
        ensure!(got == want, "have {got:?}, want {want:?}");
        Ok(())
    })
    .await
}

async fn routes(ca: &TestCa, e: &Envoy, id: &str, yes: bool) -> Result<()> {
    eventually(T, &format!("{id} routed: {yes}"), || async {
        match probe(ca, e.listener, &sni(id)).await {
            Ok(g) if yes && g == format!("builder {id}") => Ok(()),
            Ok(g) if yes => bail!("reached {g:?}"),
            Ok(g) => bail!("still reached {g:?}"),
            Err(_) if !yes => Ok(()),
            Err(err) => Err(err),
        }
    })
    .await
}

#[tokio::test]
async fn each_record_format_reaches_envoy_and_leaves_again() -> Result<()> {
    let bind = Bind::start().await?;
    let (txt_port, a_port) = (free_port(), free_port());
    let sources = vec![
        format!("txt:_instances.internal:{txt_port}"),
        "srv:_buildkit._tcp.builders.test".to_string(),
        format!("a:pool.builders.test:{a_port}"),
    ];
    let c = Cluster::start(dns_opts(&bind, &sources, &[])).await?;
    // An api builder the poller must never touch.
    c.put(1, "manual", 9001).await?;
    let ca = TestCa::new()?;
    let x: Vec<&str> = c.nodes.values().map(|r| r.xds.as_str()).collect();
    let envoy = Envoy::start(&c, "envoy-dns", &x, false).await?;

    // TXT (Fly style): a builder on 127.0.0.11.
    let t1 = TlsBuilder::start_on(
        &ca,
        "t1",
        &sni("t1"),
        SocketAddr::from(([127, 0, 0, 11], txt_port)),
    )
    .await?;
    bind.set_instances(&[entry("t1", "127.0.0.11")])?;
    // SRV: target s1 with an A record, on its own port.
    let s1 = TlsBuilder::start_on(
        &ca,
        "s1",
        &sni("s1"),
        SocketAddr::from(([127, 0, 0, 21], 0)),
    )
    .await?;
    bind.update(&format!(
        "zone builders.test.\nupdate add s1.builders.test. 5 A 127.0.0.21\n\
         update add _buildkit._tcp.builders.test. 5 SRV 10 50 {} s1.builders.test.",
        s1.addr.port()
    ))?;
    // A: every address of the name is a builder; its id is the address.
    let a_id = "127-0-0-31";
    let a1 = TlsBuilder::start_on(
        &ca,
        a_id,
        &sni(a_id),
        SocketAddr::from(([127, 0, 0, 31], a_port)),
    )
    .await?;
    bind.update("zone builders.test.\nupdate add pool.builders.test. 5 A 127.0.0.31")?;

    discovered(&c, &["t1", "s1", a_id]).await?;
    for id in ["t1", "s1", a_id] {
        routes(&ca, &envoy, id, true).await?;
    }

    // Removed from DNS: no longer routed.
    bind.set_instances(&[])?;
    bind.update("zone builders.test.\nupdate delete _buildkit._tcp.builders.test. SRV")?;
    bind.update("zone builders.test.\nupdate delete pool.builders.test. A")?;
    // Removing everything is a mass removal: applied once it persists.
    discovered(&c, &[]).await?;
    for id in ["t1", "s1", a_id] {
        routes(&ca, &envoy, id, false).await?;
    }
    let (_, ids) = c.builders(1, true).await?;
    ensure!(ids == ["manual"], "the api builder stays: {ids:?}");
    drop((t1, s1, a1));
    Ok(())
}

#[tokio::test]
async fn only_the_leader_polls_and_a_new_leader_misses_no_change() -> Result<()> {
    let bind = Bind::start().await?;
    let sources = vec!["txt:_instances.internal:8443".to_string()];
    let mut c = Cluster::start(dns_opts(&bind, &sources, &[])).await?;
    let leader = c.leader().await?;
    bind.set_instances(&[entry("k0", "10.0.0.1")])?;
    discovered(&c, &["k0"]).await?;
    // Only the leader polls: its counter grows, the others' stay at zero.
    let before = discovery(&c, leader).await?.1.polls;
    eventually(T, "the leader keeps polling", || async {
        let (v, p) = discovery(&c, leader).await?;
        ensure!(v.polling && p.polls > before + 5, "{v:?}");
        Ok(())
    })
    .await?;
    for id in c.up().into_iter().filter(|&id| id != leader) {
        let (v, p) = discovery(&c, id).await?;
        ensure!(!v.polling, "node {id} polls too: {v:?}");
        ensure!(p.polls == 0, "node {id} polled: {v:?}");
        ensure!(v.leader == Some(leader), "{v:?}");
    }

    // DNS keeps changing while the leader is killed: entries come and go.
    let mut live: Vec<String> = vec!["k0".into()];
    let mut removed: BTreeSet<String> = BTreeSet::new();
    let entries =
        |live: &[String]| -> Vec<String> { live.iter().map(|id| entry(id, "10.0.0.1")).collect() };
    for i in 1..=12 {
        live.push(format!("k{i}"));
        if i % 3 == 0 {
            removed.insert(live.remove(0));
        }
        bind.set_instances(&entries(&live))?;
        if i == 4 {
            c.node(leader).kill();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let new_leader = c.leader().await?;
    ensure!(new_leader != leader, "a new leader");
    let want: Vec<&str> = live.iter().map(String::as_str).collect();
    discovered(&c, &want).await?;
    let (v, _) = discovery(&c, new_leader).await?;
    ensure!(v.polling, "the new leader polls: {v:?}");
    // No removed builder comes back, on any replica.
    c.node(leader).start()?;
    c.converged(T).await?;
    // The old leader restarts believing it leads (its own committed vote) until it hears of the
    // new term; it must not poll meanwhile: the poller confirms leadership with a quorum first.
    let (v, p) = discovery(&c, leader).await?;
    ensure!(
        p.polls == 0 && !v.polling,
        "restarted old leader polled: {v:?}"
    );
    for id in c.up() {
        let have = dns_ids(&c, id).await?;
        let back: Vec<_> = have.intersection(&removed).collect();
        ensure!(back.is_empty(), "node {id} has removed builders {back:?}");
    }
    Ok(())
}

#[tokio::test]
async fn dns_outage_changes_nothing_and_polling_resumes() -> Result<()> {
    let mut bind = Bind::start().await?;
    let sources = vec!["txt:_instances.internal:8443".to_string()];
    let c = Cluster::start(dns_opts(
        &bind,
        &sources,
        &["--dns-error-backoff-ms", "1000"],
    ))
    .await?;
    bind.set_instances(&[entry("o1", "10.0.0.1"), entry("o2", "10.0.0.2")])?;
    discovered(&c, &["o1", "o2"]).await?;
    let leader = c.leader().await?;
    let rev = c.status(leader).await?.revision;

    for outage in ["paused", "killed"] {
        let errors = discovery(&c, leader).await?.1.errors;
        match outage {
            "paused" => bind.pause()?,
            _ => bind.kill(),
        }
        eventually(
            T,
            &format!("polls fail while the server is {outage}"),
            || async {
                let (v, p) = discovery(&c, leader).await?;
                ensure!(p.errors >= errors + 2, "{v:?}");
                Ok(())
            },
        )
        .await?;
        // Nothing changed: same builders, same revision.
        let s = c.status(leader).await?;
        ensure!(s.revision == rev, "registry moved during the outage: {s:?}");
        ensure!(dns_ids(&c, leader).await?.len() == 2, "builders kept");
        match outage {
            "paused" => bind.resume()?,
            _ => bind.restart().await?,
        }
        // Back at the normal interval: many polls a second again, not one per backoff.
        eventually(T, "polls succeed again", || async {
            let (v, p) = discovery(&c, leader).await?;
            ensure!(p.consecutive_errors == 0, "{v:?}");
            Ok(())
        })
        .await?;
        let p0 = discovery(&c, leader).await?.1.polls;
        let start = std::time::Instant::now();
        eventually(T, "polling at the normal interval", || async {
            let p = discovery(&c, leader).await?.1.polls;
            ensure!(p >= p0 + 5, "{} polls", p - p0);
            Ok(())
        })
        .await?;
        // Five polls at 100 ms take about half a second; under the 1 s backoff, five seconds.
        ensure!(
            start.elapsed() < Duration::from_secs(3),
            "slow polling: {:?}",
            start.elapsed()
        );
    }
    let s = c.status(leader).await?;
    ensure!(s.revision == rev, "registry moved: {s:?}");
    Ok(())
}

#[tokio::test]
async fn mass_removal_is_held_once_and_applied_when_it_persists() -> Result<()> {
    const HOLD: Duration = Duration::from_millis(3000);
    let bind = Bind::start().await?;
    let sources = vec!["txt:_instances.internal:8443".to_string()];
    let c = Cluster::start(dns_opts(
        &bind,
        &sources,
        &[
            "--dns-removal-hold-ms",
            &HOLD.as_millis().to_string(),
            "--dns-max-removal-share",
            "0.5",
        ],
    ))
    .await?;
    let all: Vec<String> = (1..=6)
        .map(|i| entry(&format!("m{i}"), "10.0.0.1"))
        .collect();
    bind.set_instances(&all)?;
    discovered(&c, &["m1", "m2", "m3", "m4", "m5", "m6"]).await?;
    let leader = c.leader().await?;
    let rev = c.status(leader).await?.revision;

    // A short empty answer: held, and forgotten when the records come back.
    let held0 = discovery(&c, leader).await?.1.held;
    bind.set_instances(&[])?;
    eventually(T, "the empty answer is held", || async {
        let (v, p) = discovery(&c, leader).await?;
        ensure!(p.held > held0, "{v:?}");
        Ok(())
    })
    .await?;
    bind.set_instances(&all)?;
    eventually(T, "back to normal", || async {
        let (v, p) = discovery(&c, leader).await?;
        ensure!(p.last_result == "unchanged", "{v:?}");
        Ok(())
    })
    .await?;
    let s = c.status(leader).await?;
    ensure!(
        s.revision == rev,
        "the held removal must not have been applied: {s:?}"
    );
    ensure!(dns_ids(&c, leader).await?.len() == 6, "all builders kept");

    // A truncated answer (most entries gone, one new) that persists: the new builder arrives at
    // once, the removals only once they have been missing for the hold.
    let start = std::time::Instant::now();
    let mut truncated = all[..2].to_vec();
    truncated.push(entry("m7", "10.0.0.1"));
    bind.set_instances(&truncated)?;
    eventually(
        T,
        "the new builder is added while the removal is held",
        || async {
            let have = dns_ids(&c, leader).await?;
            ensure!(have.len() == 7, "{have:?}");
            Ok(())
        },
    )
    .await?;
    discovered(&c, &["m1", "m2", "m7"]).await?;
    ensure!(
        start.elapsed() >= HOLD,
        "removed after {:?}, before the {HOLD:?} hold",
        start.elapsed()
    );
    let (v, p) = discovery(&c, leader).await?;
    ensure!(p.held > held0 + 1, "held before applying: {v:?}");
    Ok(())
}

#[tokio::test]
async fn a_thousand_builders_in_one_name_arrive_over_tcp() -> Result<()> {
    let bind = Bind::start().await?;
    let mut script = "zone builders.test.\n".to_string();
    for i in 0..1000 {
        script += &format!(
            "update add many.builders.test. 5 A 10.1.{}.{}\n",
            i / 250,
            i % 250 + 1
        );
    }
    bind.update(&script)?;
    let sources = vec!["a:many.builders.test:8443".to_string()];
    let c = Cluster::start(dns_opts(&bind, &sources, &[])).await?;
    // Checked on one leader at a time: a leader elected meanwhile has not polled yet.
    eventually(T, "1000 builders discovered", || async {
        let leader = c.leader().await?;
        let n = dns_ids(&c, leader).await?.len();
        ensure!(n == 1000, "{n} builders");
        let (v, p) = discovery(&c, leader).await?;
        ensure!(p.discovered == 1000, "{v:?}");
        Ok(())
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn malformed_entries_are_skipped_and_counted() -> Result<()> {
    let bind = Bind::start().await?;
    let sources = vec!["txt:_instances.internal:8443".to_string()];
    let c = Cluster::start(dns_opts(&bind, &sources, &[])).await?;
    bind.set_instances(&[
        entry("good", "10.0.0.1"),
        "instance=noip,app=x".into(),
        "instance=bad,ip=not-an-ip".into(),
        "instance=odd,ip=10.0.0.2,colour=blue".into(),
        "garbage".into(),
        entry("good", "10.0.0.3"),
    ])?;
    discovered(&c, &["good"]).await?;
    let leader = c.leader().await?;
    let p = eventually(T, "skips reported", || async {
        let (v, p) = discovery(&c, leader).await?;
        ensure!(p.skipped.len() == 5, "{v:?}");
        Ok(p)
    })
    .await?;
    ensure!(p.skipped_total >= 5, "{p:?}");
    Ok(())
}
