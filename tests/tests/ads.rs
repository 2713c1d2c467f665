//! The ADS protocol rules with a scripted client against real replicas: a replica behind the Envoy
//! holds or turns it away (never moves it backwards), a replica cut off from the quorum reports
//! NOT_SERVING and ends its streams, and a NACK is recorded and its version not sent again.

use anyhow::{Result, bail, ensure};
use concord_harness::ads::{Ads, CDS, DeltaAds, names};
use concord_harness::{Cluster, Options, eventually};
use std::time::{Duration, Instant};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const T: Duration = Duration::from_secs(20);

async fn health(c: &Cluster, xds: &str) -> Result<i32> {
    let channel = c.xds_channel(xds, "scripted").await?;
    let mut client = HealthClient::new(channel);
    let resp = client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    Ok(resp.into_inner().status)
}

#[tokio::test]
async fn replica_behind_the_envoy_holds_or_turns_it_away() -> Result<()> {
    let c = Cluster::start(Options {
        extra: vec!["--catch-up-timeout-ms".into(), "1000".into()],
        ..Options::default()
    })
    .await?;
    let rev = c.put(1, "b1", 9001).await?;
    let xds = c.nodes[&1].xds.clone();

    // The Envoy claims the next revision: the replica holds the answer until it has applied it.
    let mut ads = Ads::open(&c, &xds).await?;
    ads.request(&(rev + 1).to_string(), "", None).await?;
    let rev2 = c.put(2, "b2", 9002).await?;
    let r = ads.next().await?;
    let got: u64 = r.version_info.parse()?;
    ensure!(
        got > rev && got <= rev2,
        "answered {got}, the Envoy had {}",
        rev + 1
    );
    ensure!(r.resources.len() == 2, "{} clusters", r.resources.len());

    // The Envoy claims a revision far ahead: after the catch-up timeout the stream ends with
    // UNAVAILABLE, and nothing older was ever sent.
    let mut ads = Ads::open(&c, &xds).await?;
    let t0 = Instant::now();
    ads.request(&(rev2 + 1000).to_string(), "", None).await?;
    match ads.next().await {
        Ok(r) => bail!("must not answer with version {}", r.version_info),
        Err(s) => {
            ensure!(s.code() == tonic::Code::Unavailable, "{s:?}");
            ensure!(s.message().contains("try another replica"), "{s:?}");
        }
    }
    ensure!(
        t0.elapsed() >= Duration::from_millis(900),
        "held {:?}",
        t0.elapsed()
    );
    Ok(())
}

/// `GET /readyz` of replica `id`: its status and body (no token needed, as for a probe).
async fn readyz(c: &Cluster, id: u64) -> Result<(u16, String)> {
    let r = reqwest::get(format!("{}/readyz", c.nodes[&id].admin)).await?;
    Ok((r.status().as_u16(), r.text().await?))
}

/// A replica out of contact with the quorum turns its Envoys away (gRPC health NOT_SERVING,
/// streams ended, new ones refused) and is not ready for load balancers (`/readyz` 503 with the
/// reason); with the quorum back it serves and is ready again.
#[tokio::test]
async fn replica_cut_off_from_the_quorum_steps_aside() -> Result<()> {
    let mut c = Cluster::start(Options {
        extra: vec!["--stale-after-ms".into(), "1500".into()],
        ..Options::default()
    })
    .await?;
    c.put(1, "b1", 9001).await?;
    let lone = 1;
    let xds = c.nodes[&lone].xds.clone();
    ensure!(
        health(&c, &xds).await? == ServingStatus::Serving as i32,
        "serving at first"
    );
    eventually(T, "ready at first", || async {
        let r = readyz(&c, lone).await?;
        ensure!(r == (200, "ready\n".into()), "{r:?}");
        Ok(())
    })
    .await?;
    let mut ads = Ads::open(&c, &xds).await?;
    ads.request("", "", None).await?;
    ads.next().await?;

    for id in [2, 3] {
        c.node(id).kill();
    }
    eventually(T, "the cut-off replica reports NOT_SERVING", || async {
        let s = health(&c, &xds).await?;
        ensure!(s == ServingStatus::NotServing as i32, "health {s}");
        Ok(())
    })
    .await?;
    let (status, body) = readyz(&c, lone).await?;
    ensure!(
        // The replica's own judgement, not the fallback sentence.
        status == 503 && body.starts_with("not ready: no leader with a quorum heard from"),
        "{status} {body:?}"
    );
    match ads.next().await {
        Ok(r) => bail!("unexpected response {}", r.version_info),
        Err(s) => ensure!(
            s.code() == tonic::Code::Unavailable,
            "stream ended with {s:?}"
        ),
    }
    match Ads::open(&c, &xds).await {
        Ok(_) => bail!("a stale replica must refuse new streams"),
        Err(s) => ensure!(s.code() == tonic::Code::Unavailable, "{s:?}"),
    }
    // With the quorum back, it serves again.
    for id in [2, 3] {
        c.node(id).start()?;
    }
    eventually(T, "serving again", || async {
        let s = health(&c, &xds).await?;
        ensure!(s == ServingStatus::Serving as i32, "health {s}");
        ensure!(readyz(&c, lone).await?.0 == 200, "not ready");
        Ok(())
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn nack_is_recorded_and_its_version_not_sent_again() -> Result<()> {
    let c = Cluster::start(Options::default()).await?;
    let rev = c.put(1, "b1", 9001).await?;
    // Open the stream once node 1 serves that revision, so no newer push (with a newer nonce)
    // overtakes the NACK of the first response.
    eventually(T, "node 1 serves the write", || async {
        let v = c.api(1).envoys().await?;
        ensure!(v.revision == rev, "{v:?}");
        Ok(())
    })
    .await?;
    let mut ads = Ads::open(&c, &c.nodes[&1].xds).await?;
    ads.request("", "", None).await?;
    let first = ads.next().await?;
    let v1: u64 = first.version_info.parse()?;
    ads.request("", &first.nonce, Some("scripted rejection"))
        .await?;
    let status = eventually(T, "the NACK is recorded", || async {
        let v = c.api(1).envoys().await?;
        let nack = v.envoys.first().and_then(|e| e.last_nack.as_ref());
        ensure!(
            nack.is_some_and(|n| n.message == "scripted rejection" && n.version == v1),
            "{v:?}"
        );
        Ok(v)
    })
    .await?;
    ensure!(status.nacks_total >= 1, "{status:?}");
    // Responses after the NACK carry newer revisions only, never v1 again, up to the new write.
    let v2 = c.put(2, "b2", 9002).await?;
    loop {
        let next = ads.next().await?;
        let v: u64 = next.version_info.parse()?;
        ensure!(v > v1, "after a NACK of {v1} got {v} again");
        ensure!(next.nonce != first.nonce, "fresh nonce");
        if v >= v2 {
            break;
        }
        ads.request(&next.version_info, &next.nonce, None).await?;
    }
    Ok(())
}

#[tokio::test]
async fn unknown_types_are_ignored_and_responses_name_the_replica() -> Result<()> {
    let c = Cluster::start(Options::default()).await?;
    let rev = c.put(1, "b1", 9001).await?;
    c.builders(1, true).await?;
    let mut ads = Ads::open(&c, &c.nodes[&1].xds).await?;
    let srds = "type.googleapis.com/envoy.config.route.v3.ScopedRouteConfiguration";
    // A type concord does not serve is not answered; the next request is, first.
    ads.request_type(srds, "", "", None).await?;
    ads.request("", "", None).await?;
    let r = ads.next().await?;
    ensure!(r.type_url == CDS && r.resources.len() == 1, "{r:?}");
    let v: u64 = r.version_info.parse()?;
    ensure!(v <= rev, "version {v} is a revision");
    let id = r.control_plane.map(|cp| cp.identifier).unwrap_or_default();
    ensure!(
        id == format!("concord/{}/node-1", c.name),
        "identifier {id:?}"
    );
    Ok(())
}

#[tokio::test]
async fn streams_end_at_the_maximum_age() -> Result<()> {
    let c = Cluster::start(Options {
        extra: vec!["--max-stream-age-secs".into(), "1".into()],
        ..Options::default()
    })
    .await?;
    let mut ads = Ads::open(&c, &c.nodes[&2].xds).await?;
    let t0 = Instant::now();
    ads.request("", "", None).await?;
    ads.next().await?;
    match ads.next().await {
        Ok(r) => bail!("unexpected response {}", r.version_info),
        Err(s) => {
            ensure!(s.code() == tonic::Code::Unavailable, "{s:?}");
            ensure!(s.message().contains("maximum stream age"), "{s:?}");
        }
    }
    let age = t0.elapsed();
    ensure!(
        age >= Duration::from_millis(850) && age < Duration::from_secs(5),
        "ended after {age:?}"
    );
    Ok(())
}

#[tokio::test]
async fn delta_reconnect_gets_what_differs_and_a_cut_off_replica_turns_it_away() -> Result<()> {
    let mut c = Cluster::start(Options {
        extra: ["--catch-up-timeout-ms", "1000", "--stale-after-ms", "30000"]
            .map(String::from)
            .to_vec(),
        ..Options::default()
    })
    .await?;
    c.put(1, "b1", 9001).await?;
    let rev = c.put(1, "b2", 9002).await?;
    let xds = c.nodes[&1].xds.clone();
    // A fresh Envoy gets everything, versioned by content.
    let mut ads = DeltaAds::open(&c, &xds).await?;
    ads.subscribe(CDS, &[]).await?;
    let all = ads.next().await?;
    ensure!(names(&all) == ["builder_b1", "builder_b2"], "{all:?}");
    ensure!(all.system_version_info == rev.to_string(), "{all:?}");
    ads.answer(&all, None).await?;
    let v2 = all.resources[1].version.clone();

    // A reconnecting Envoy that holds b2 as served, an older b1 and a builder that is gone
    // (from a newer revision, as far as this replica can tell: it catches up first).
    let mut ads = DeltaAds::open(&c, &c.nodes[&2].xds).await?;
    ads.subscribe(
        CDS,
        &[
            ("builder_b1", "older"),
            ("builder_b2", &v2),
            ("builder_gone", "x"),
        ],
    )
    .await?;
    let r = ads.next().await?;
    ensure!(names(&r) == ["builder_b1"], "only what differs: {r:?}");
    ensure!(r.removed_resources == ["builder_gone"], "{r:?}");

    // Cut off from the quorum (but not yet stale), it cannot catch up: an Envoy that holds
    // what this replica does not serve, and one that holds nothing (it may have seen every
    // builder removed at a newer revision), may be ahead of it; both are turned away after the
    // catch-up timeout, never sent anything older.
    for id in [2, 3] {
        c.node(id).kill();
    }
    for held in [&[("builder_b3", "x")][..], &[]] {
        let mut ahead = DeltaAds::open(&c, &xds).await?;
        let t0 = Instant::now();
        ahead.subscribe(CDS, held).await?;
        match ahead.next().await {
            Ok(r) => bail!("must not answer an Envoy that may be ahead: {r:?}"),
            Err(s) => {
                ensure!(s.code() == tonic::Code::Unavailable, "{s:?}");
                ensure!(s.message().contains("try another replica"), "{s:?}");
            }
        }
        ensure!(
            t0.elapsed() >= Duration::from_millis(900),
            "held {:?}",
            t0.elapsed()
        );
    }
    Ok(())
}

#[tokio::test]
async fn delta_nack_is_recorded_and_its_version_not_sent_again() -> Result<()> {
    let c = Cluster::start(Options::default()).await?;
    let rev = c.put(1, "b1", 9001).await?;
    eventually(T, "node 1 serves the write", || async {
        let v = c.api(1).envoys().await?;
        ensure!(v.revision == rev, "{v:?}");
        Ok(())
    })
    .await?;
    let mut ads = DeltaAds::open(&c, &c.nodes[&1].xds).await?;
    ads.subscribe(CDS, &[]).await?;
    let first = ads.next().await?;
    ensure!(names(&first) == ["builder_b1"], "{first:?}");
    ads.answer(&first, Some("scripted rejection")).await?;
    eventually(T, "the NACK is recorded", || async {
        let v = c.api(1).envoys().await?;
        let nack = v.envoys.first().and_then(|e| e.last_nack.as_ref());
        ensure!(
            nack.is_some_and(|n| n.message == "scripted rejection" && n.version == rev),
            "{v:?}"
        );
        Ok(())
    })
    .await?;
    // The next change sends the new builder only: the rejected b1 is not sent again.
    let rev2 = c.put(2, "b2", 9002).await?;
    loop {
        let r = ads.next().await?;
        ensure!(!names(&r).contains(&"builder_b1"), "b1 sent again: {r:?}");
        ensure!(r.nonce != first.nonce, "fresh nonce");
        if r.system_version_info == rev2.to_string() {
            ensure!(names(&r) == ["builder_b2"], "{r:?}");
            break;
        }
        ads.answer(&r, None).await?;
    }
    Ok(())
}

#[tokio::test]
async fn delta_unknown_types_are_ignored_and_responses_name_the_replica() -> Result<()> {
    let c = Cluster::start(Options {
        extra: vec!["--max-stream-age-secs".into(), "1".into()],
        ..Options::default()
    })
    .await?;
    c.put(1, "b1", 9001).await?;
    c.builders(1, true).await?;
    let mut ads = DeltaAds::open(&c, &c.nodes[&1].xds).await?;
    let t0 = Instant::now();
    let srds = "type.googleapis.com/envoy.config.route.v3.ScopedRouteConfiguration";
    ads.subscribe(srds, &[]).await?;
    ads.subscribe(CDS, &[]).await?;
    let r = ads.next().await?;
    ensure!(r.type_url == CDS && names(&r) == ["builder_b1"], "{r:?}");
    let id = r.control_plane.map(|cp| cp.identifier).unwrap_or_default();
    ensure!(
        id == format!("concord/{}/node-1", c.name),
        "identifier {id:?}"
    );
    // Delta streams end at the maximum age too.
    match ads.next().await {
        Ok(r) => bail!("unexpected response {r:?}"),
        Err(s) => ensure!(s.message().contains("maximum stream age"), "{s:?}"),
    }
    ensure!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    Ok(())
}

/// An Envoy that goes away without closing its side (its connection drops: the response body
/// that runs the stream's driver is dropped mid-wait) is no longer listed, over both protocols.
/// The drivers deregister when dropped; without that the replica listed such an Envoy forever.
#[tokio::test]
async fn an_envoy_whose_connection_drops_is_no_longer_listed() -> Result<()> {
    let c = Cluster::start(Options::default()).await?;
    c.put(1, "b1", 9001).await?;
    let xds = c.nodes[&1].xds.clone();
    let mut sotw = Ads::open(&c, &xds).await?;
    sotw.request("", "", None).await?;
    sotw.next().await?;
    let mut delta = DeltaAds::open(&c, &xds).await?;
    delta.subscribe(CDS, &[]).await?;
    delta.next().await?;
    let both = |ids: &[String]| {
        ["scripted", "scripted-delta"]
            .iter()
            .all(|id| ids.iter().any(|i| i == id))
    };
    eventually(T, "both listed", || async {
        let ids = c.envoys_on(1).await?;
        ensure!(both(&ids), "listed: {ids:?}");
        Ok(())
    })
    .await?;
    drop((sotw, delta));
    eventually(T, "neither listed", || async {
        let ids = c.envoys_on(1).await?;
        ensure!(ids.is_empty(), "still listed: {ids:?}");
        Ok(())
    })
    .await
}
