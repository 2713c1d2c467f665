//! The ADS protocol rules with a scripted client against real replicas: a replica behind the Envoy
//! holds or turns it away (never moves it backwards), a replica cut off from the quorum reports
//! NOT_SERVING and ends its streams, and a NACK is recorded and its version not sent again.

use anyhow::{Context, Result, bail, ensure};
use concord_tests::{Cluster, Options, eventually};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const T: Duration = Duration::from_secs(20);

/// A scripted ADS stream.
struct Ads {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: Streaming<DiscoveryResponse>,
}

impl Ads {
    async fn open(c: &Cluster, xds: &str) -> Result<Ads, tonic::Status> {
        let channel = c
            .xds_channel(xds, "scripted")
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let mut client = AggregatedDiscoveryServiceClient::new(channel);
        let (tx, rx) = mpsc::channel(8);
        let rx = client
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(Ads { tx, rx })
    }

    async fn request(&self, version: &str, nonce: &str, error: Option<&str>) -> Result<()> {
        self.request_type(CDS, version, nonce, error).await
    }

    async fn request_type(
        &self,
        type_url: &str,
        version: &str,
        nonce: &str,
        error: Option<&str>,
    ) -> Result<()> {
        let req = DiscoveryRequest {
            version_info: version.to_string(),
            node: Some(Node {
                id: "scripted".into(),
                ..Default::default()
            }),
            type_url: type_url.into(),
            response_nonce: nonce.to_string(),
            error_detail: error.map(|m| RpcStatus {
                code: 3,
                message: m.to_string(),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.tx.send(req).await.context("stream closed")
    }

    /// The next response, or the status the stream ended with.
    async fn next(&mut self) -> Result<DiscoveryResponse, tonic::Status> {
        match tokio::time::timeout(T, self.rx.message()).await {
            Ok(Ok(Some(r))) => Ok(r),
            Ok(Ok(None)) => Err(tonic::Status::ok("stream ended")),
            Ok(Err(s)) => Err(s),
            Err(_) => Err(tonic::Status::deadline_exceeded("no message in 20 s")),
        }
    }
}

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
        let v = c.get(1, "/v1/envoys").await?;
        ensure!(v["revision"] == rev, "{v}");
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
        let v = c.get(1, "/v1/envoys").await?;
        let nack = &v["envoys"][0]["last_nack"];
        ensure!(
            nack["message"] == "scripted rejection" && nack["version"] == v1,
            "{v}"
        );
        Ok(v)
    })
    .await?;
    ensure!(status["nacks_total"].as_u64() >= Some(1), "{status}");
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
async fn unknown_types_get_an_empty_set_and_responses_name_the_replica() -> Result<()> {
    let c = Cluster::start(Options::default()).await?;
    let rev = c.put(1, "b1", 9001).await?;
    c.builders(1, true).await?;
    let mut ads = Ads::open(&c, &c.nodes[&1].xds).await?;
    let rds = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
    ads.request_type(rds, "", "", None).await?;
    let r = ads.next().await?;
    ensure!(r.type_url == rds && r.resources.is_empty(), "{r:?}");
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
