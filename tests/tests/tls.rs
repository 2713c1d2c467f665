//! TLS on every channel, with real processes: a replica refuses peers without a certificate from
//! the cluster CA for a member node id (and clients refuse a replica that is not the node they
//! dial) while the cluster keeps accepting writes; Envoys stream over TLS and mutual TLS, and an
//! ADS client without a valid client certificate is refused; a replica's certificate rotates
//! without a restart while Envoys stream and writes go on.

use anyhow::{Context, Result, bail, ensure};
use concord_harness::envoy::Envoy;
use concord_harness::pki::{self, Pki};
use concord_harness::{Cluster, Options, eventually, metric};
use concord_raft::proto::Message;
use concord_raft::proto::raft_client::RaftClient;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";

/// A writer's stop switch, its count of acknowledged writes, and its task.
type Writer = (
    Arc<AtomicBool>,
    Arc<AtomicU32>,
    JoinHandle<(u32, Vec<String>)>,
);

/// Puts builders through replica `via` until stopped; the task returns (acknowledged, failures).
fn writer(c: &Cluster, via: u64, prefix: &str) -> Writer {
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU32::new(0));
    let count = acked.clone();
    let api = c.api(via);
    let (flag, prefix) = (stop.clone(), prefix.to_string());
    let task = tokio::spawn(async move {
        let (mut ok, mut failed, mut i) = (0u32, Vec::new(), 0u32);
        while !flag.load(Ordering::Relaxed) {
            let id = format!("{prefix}{i}");
            let addr = ([127, 0, 0, 1], (20000 + i % 10000) as u16).into();
            let body = concord_api::PutBuilder::new(addr, concord_harness::sni(&id));
            match api.put_builder(&id, &body).await {
                Ok(_) => {
                    ok += 1;
                    count.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => failed.push(format!("{id}: {e}")),
            }
            i += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (ok, failed)
    });
    (stop, acked, task)
}

/// Lets the writer reach `min` acknowledged writes, stops it, and checks that none failed.
async fn stop_writer(w: Writer, min: u32) -> Result<()> {
    let acked = w.1.clone();
    let reached = eventually(Duration::from_secs(30), "writes go on", || async {
        let n = acked.load(Ordering::Relaxed);
        ensure!(n >= min, "{n} of {min} writes acknowledged");
        Ok(())
    })
    .await;
    w.0.store(true, Ordering::Relaxed);
    let (ok, failed) = w.2.await?;
    ensure!(failed.is_empty(), "writes failed: {failed:?}");
    reached.with_context(|| format!("{ok} writes acknowledged"))
}

/// A Vote with an undecodable payload to `addr` (node `to`), claiming to be node `from`, over a
/// connection made with `config`. Ok(status) is the replica's answer; Err is a failed connection.
async fn vote(
    addr: &str,
    config: Arc<rustls::ClientConfig>,
    cluster: &str,
    from: u64,
    to: u64,
) -> Result<tonic::Status, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| tonic::Status::internal(e.to_string()))?
        .connect_with_connector(concord_tls::net::connector(move || config.clone()))
        .await
        .map_err(|e| tonic::Status::unavailable(format!("connect: {e:?}")))?;
    let mut req = tonic::Request::new(Message {
        payload: b"not json".to_vec(),
        data: Vec::new(),
    });
    let md = req.metadata_mut();
    md.insert("x-concord-cluster", cluster.parse().expect("ascii"));
    md.insert("x-concord-from", from.into());
    md.insert("x-concord-to", to.into());
    match RaftClient::new(channel).vote(req).await {
        Ok(_) => Ok(tonic::Status::ok("answered")),
        Err(s) if s.code() == tonic::Code::InvalidArgument => Ok(s),
        Err(s) if s.code() == tonic::Code::PermissionDenied => Ok(s),
        Err(s) => Err(s),
    }
}

fn files(pki: &Pki, id: u64) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    pki.node(id)
}

fn with_cert(
    pki_ca: &Path,
    cert: &(std::path::PathBuf, std::path::PathBuf),
) -> Result<Arc<rustls::ClientConfig>> {
    pki::client_config(pki_ca, Some((&cert.0, &cert.1)))
}

#[tokio::test]
async fn peer_port_refuses_callers_without_a_member_certificate() -> Result<()> {
    let c = Cluster::start(Options::default()).await?;
    let pki = c.pki().context("TLS cluster")?.clone();
    let other = Pki::create(&c.dir().join("other-ca"), &c.name, &[1, 2])?;
    let w = writer(&c, 2, "p");
    let addr = c.nodes[&1].peer.clone();
    let ca = pki.ca();

    // Control: a member's certificate gets through to the RPC (which refuses the payload).
    let member = with_cert(&ca, &files(&pki, 2)?)?;
    let s = vote(&addr, member.clone(), &c.name, 2, 1).await;
    ensure!(
        matches!(&s, Ok(s) if s.code() == tonic::Code::InvalidArgument),
        "a member's certificate should pass the checks: {s:?}"
    );

    // Refused callers, several rounds while the writer runs.
    pki.certs(&["--nodes", "9"])?;
    for _ in 0..5 {
        // No client certificate: the handshake is refused.
        let none = pki::client_config(&ca, None)?;
        let s = vote(&addr, none, &c.name, 2, 1).await;
        ensure!(s.is_err(), "no client certificate must be refused: {s:?}");

        // A certificate for a member node id, from another CA.
        let foreign = with_cert(&ca, &files(&other, 2)?)?;
        let s = vote(&addr, foreign, &c.name, 2, 1).await;
        ensure!(
            s.is_err(),
            "another CA's certificate must be refused: {s:?}"
        );

        // The cluster CA's certificate for node 9, which is not a member.
        let stranger = with_cert(&ca, &files(&pki, 9)?)?;
        let s = vote(&addr, stranger.clone(), &c.name, 9, 1).await;
        ensure!(
            matches!(&s, Ok(s) if s.code() == tonic::Code::PermissionDenied
                && s.message().contains("not a member")),
            "a non-member's certificate must be refused: {s:?}"
        );
        // ... nor may it claim a member's id.
        let s = vote(&addr, stranger, &c.name, 2, 1).await;
        ensure!(
            matches!(&s, Ok(s) if s.code() == tonic::Code::PermissionDenied
                && s.message().contains("certificate names node 9")),
            "a certificate must name the node id its holder claims: {s:?}"
        );
    }

    // The client side: node 3's identity dialling node 1's address as if it were node 2 refuses
    // node 1's certificate.
    let (cert, key) = files(&pki, 3)?;
    let tls = concord_tls::PeerTls::new(
        concord_tls::peer::TlsFiles {
            ca: ca.clone(),
            cert,
            key,
        },
        &c.name,
        3,
    )?;
    let s = vote(&addr, tls.client_config(2), &c.name, 3, 2).await;
    ensure!(
        s.is_err(),
        "a replica that is not the node dialled must be refused: {s:?}"
    );
    let s = vote(&addr, tls.client_config(1), &c.name, 3, 1).await;
    ensure!(s.is_ok(), "the right node id passes: {s:?}");

    // A replica refuses to start with another node's certificate.
    let (cert, key) = files(&pki, 2)?;
    let out = std::process::Command::new(concord_harness::concord_bin())
        .args(["serve", "--cluster", &c.name, "--node-id", "1"])
        .arg("--tls-ca")
        .arg(&ca)
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(2) && err.contains("does not name node 1"),
        "{:?}: {err}",
        out.status
    );

    // Counted on /metrics.
    let text = reqwest::get(format!("{}/metrics", c.nodes[&1].admin))
        .await?
        .text()
        .await?;
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    ensure!(
        value("concord_peer_tls_refused_total ") >= 10.0
            && value("concord_peer_calls_refused_total ") >= 10.0,
        "refusals should be counted:\n{text}"
    );

    let log = std::fs::read_to_string(c.dir().join("node-1.log"))?;
    ensure!(
        log.matches("refused a TLS connection").count() >= 2,
        "node 1 should log the refused handshakes:\n{}",
        c.logs()
    );
    stop_writer(w, 20).await.map_err(|e| e.context(c.logs()))?;
    Ok(())
}

/// The value of Envoy stat `name` as a number (0 when absent).
async fn stat(e: &Envoy, name: &str) -> u64 {
    e.stat(name)
        .await
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn envoy_streams_over_tls_with_health_checks() -> Result<()> {
    let c = Cluster::start(Options::default()).await?;
    let x: Vec<&str> = c.nodes.values().map(|r| r.xds.as_str()).collect();
    let e = Envoy::start(&c, "envoy-tls", &x, true).await?;
    let rev = c.put(1, "t1", 9).await?;
    c.all_acked(1, rev).await?;
    eventually(
        Duration::from_secs(10),
        "TLS handshakes and passing health checks",
        || async {
            let hs = stat(&e, "cluster.concord_xds.ssl.handshake").await;
            let ok = stat(&e, "cluster.concord_xds.health_check.success").await;
            let healthy = stat(&e, "cluster.concord_xds.membership_healthy").await;
            if hs == 0 || ok == 0 || healthy < 3 {
                bail!("handshakes {hs}, health check successes {ok}, healthy replicas {healthy}");
            }
            Ok(())
        },
    )
    .await
    .map_err(|err| err.context(e.log_tail()))?;
    Ok(())
}

#[tokio::test]
async fn mutual_tls_on_xds_refuses_clients_without_a_valid_certificate() -> Result<()> {
    let c = Cluster::start(Options {
        xds_client_certs: true,
        ..Options::default()
    })
    .await?;
    let pki = c.pki().context("TLS cluster")?.clone();
    let x: Vec<&str> = c.nodes.values().map(|r| r.xds.as_str()).collect();
    // A real Envoy with its client certificate streams.
    let e = Envoy::start(&c, "envoy-m", &x, true).await?;
    let rev = c.put(1, "m1", 9).await?;
    c.all_acked(1, rev)
        .await
        .map_err(|err| err.context(e.log_tail()))?;
    eventually(
        Duration::from_secs(10),
        "health checks over mutual TLS",
        || async {
            let ok = stat(&e, "cluster.concord_xds.health_check.success").await;
            ensure!(ok > 0, "no successful health check yet");
            Ok(())
        },
    )
    .await
    .map_err(|err| err.context(e.log_tail()))?;

    // A real Envoy whose bootstrap has the CA but no client certificate never streams.
    let bare = vec![
        "--tls-ca".to_string(),
        pki.ca().display().to_string(),
        "--cluster".to_string(),
        c.name.clone(),
    ];
    let e0 = Envoy::start_in(c.dir(), "envoy-nocert", &x, false, None, &bare).await?;
    // Awaited: the replicas have refused its handshakes, more than once.
    eventually(
        Duration::from_secs(20),
        "envoy-nocert's handshakes refused",
        || async {
            let mut refused = 0.0;
            for id in c.up() {
                let page = c.api(id).metrics().await?;
                refused += metric(&page, "concord_xds_tls_refused_total").unwrap_or(0.0);
            }
            ensure!(refused >= 2.0, "{refused} refused handshakes");
            Ok(())
        },
    )
    .await?;
    for id in c.up() {
        let on = c.envoys_on(id).await?;
        ensure!(
            !on.contains(&"envoy-nocert".to_string()),
            "envoy-nocert streams from node {id}"
        );
    }
    // Its TLS handshake completes on its side before the replica's refusal arrives, so its
    // connected state may blink; what matters is that it never got any config.
    ensure!(
        stat(&e0, "cluster_manager.cds.update_success").await == 0,
        "envoy-nocert received clusters"
    );
    ensure!(
        c.envoys_on(1).await?.len() + c.envoys_on(2).await?.len() + c.envoys_on(3).await?.len()
            == 1,
        "only envoy-m streams"
    );

    let xds = c.nodes[&1].xds.clone();
    let ca = pki.ca();
    let other = Pki::create(&c.dir().join("other-ca"), &c.name, &[1])?;
    let (mine, foreign) = (pki.envoy("envoy-x")?, other.envoy("envoy-x")?);
    let cases: Vec<(&str, Arc<rustls::ClientConfig>, &str, bool)> = vec![
        (
            "no client certificate",
            pki::client_config(&ca, None)?,
            "envoy-x",
            false,
        ),
        (
            "another CA's certificate",
            pki::client_config(&ca, Some((&foreign.0, &foreign.1)))?,
            "envoy-x",
            false,
        ),
        (
            "a certificate for another node id",
            pki::client_config(&ca, Some((&mine.0, &mine.1)))?,
            "envoy-y",
            false,
        ),
        (
            "a valid certificate",
            pki::client_config(&ca, Some((&mine.0, &mine.1)))?,
            "envoy-x",
            true,
        ),
    ];
    for (what, config, node_id, pass) in cases {
        let r = ads_first_response(&xds, config, node_id).await;
        ensure!(r.is_ok() == pass, "{what}: {r:?}");
    }
    Ok(())
}

/// Opens an ADS stream as `node_id` and waits for the first response.
async fn ads_first_response(
    addr: &str,
    config: Arc<rustls::ClientConfig>,
    node_id: &str,
) -> Result<()> {
    let fut = async {
        let channel = pki::channel(addr, config).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(DiscoveryRequest {
            node: Some(Node {
                id: node_id.into(),
                ..Default::default()
            }),
            type_url: CDS.into(),
            ..Default::default()
        })
        .await?;
        let mut stream = AggregatedDiscoveryServiceClient::new(channel)
            .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        match stream.message().await? {
            Some(_) => Ok(()),
            None => bail!("stream ended without a response"),
        }
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .context("no answer in 10 s")?
}

#[tokio::test]
async fn rotating_a_replica_certificate_keeps_envoys_and_writes() -> Result<()> {
    let mut c = Cluster::start(Options {
        // Envoys reconnect every ~2 s, so some reconnect to the rotated replica.
        extra: vec!["--max-stream-age-secs".into(), "2".into()],
        xds_client_certs: true,
        ..Options::default()
    })
    .await?;
    let pki = c.pki().context("TLS cluster")?.clone();
    let x: Vec<String> = c.nodes.values().map(|r| r.xds.clone()).collect();
    let e1 = Envoy::start(&c, "envoy-r1", &[&x[0], &x[1], &x[2]], true).await?;
    let e2 = Envoy::start(&c, "envoy-r2", &[&x[1], &x[2], &x[0]], true).await?;
    let rev = c.put(1, "r0", 9).await?;
    c.all_acked(2, rev).await?;

    // Envoys' connection state, sampled every 50 ms from now to the end.
    let watching = Arc::new(AtomicBool::new(true));
    let watcher = {
        let (admins, watching) = (vec![e1.admin.clone(), e2.admin.clone()], watching.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut longest = vec![Duration::ZERO; admins.len()];
            let mut down_since: Vec<Option<Instant>> = vec![None; admins.len()];
            while watching.load(Ordering::Relaxed) {
                for (i, a) in admins.iter().enumerate() {
                    let url = format!("{a}/stats?filter=^control_plane\\.connected_state$");
                    let up = match http.get(url).send().await {
                        Ok(r) => r.text().await.unwrap_or_default().contains(": 1"),
                        Err(_) => false,
                    };
                    match (up, down_since[i]) {
                        (false, None) => down_since[i] = Some(Instant::now()),
                        (true, Some(t)) => {
                            longest[i] = longest[i].max(t.elapsed());
                            down_since[i] = None;
                        }
                        _ => {}
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            for (i, d) in down_since.iter().enumerate() {
                if let Some(t) = d {
                    longest[i] = longest[i].max(t.elapsed());
                }
            }
            longest
        })
    };
    let w = writer(&c, 1, "r");

    // Rotate node 1's certificate: new connections to it get the new one within about a second.
    let (cert, key) = pki.node(2)?;
    let peer_client = pki::client_config(&pki.ca(), Some((&cert, &key)))?;
    let (ecert, ekey) = pki.envoy("probe")?;
    let xds_client = pki::client_config(&pki.ca(), Some((&ecert, &ekey)))?;
    let old_peer = pki::served_cert(&c.nodes[&1].peer, peer_client.clone()).await?;
    let old_xds = pki::served_cert(&c.nodes[&1].xds, xds_client.clone()).await?;
    ensure!(
        old_peer == old_xds,
        "node 1 serves peers and Envoys with its node certificate: {:?} / {:?}",
        concord_tls::identity::uris(&old_peer),
        concord_tls::identity::uris(&old_xds)
    );
    let handshakes = stat(&e1, "cluster.concord_xds.ssl.handshake").await;
    pki.certs(&["--nodes", "1"])?;
    let new = eventually(
        Duration::from_secs(5),
        "node 1 serves its new certificate",
        || async {
            let p = pki::served_cert(&c.nodes[&1].peer, peer_client.clone()).await?;
            let x = pki::served_cert(&c.nodes[&1].xds, xds_client.clone()).await?;
            ensure!(p != old_peer && x != old_xds, "still the old certificate");
            ensure!(p == x, "peer and xDS ports serve different certificates");
            Ok(p)
        },
    )
    .await
    .map_err(|e| e.context(c.logs()))?;
    ensure!(new != old_peer, "rotated");

    // New peer connections both ways: restart a follower that is not node 1, so node 1 dials it
    // with its new client certificate and it checks node 1's new server certificate.
    let leader = c.leader().await?;
    let f = [2, 3]
        .into_iter()
        .find(|&id| id != leader)
        .expect("a follower");
    c.node(f).terminate()?;
    c.node(f).start()?;
    eventually(
        Duration::from_secs(20),
        "the restarted follower catches up",
        || async {
            let (rev_f, _) = c.builders(f, false).await?;
            let (rev_1, _) = c.builders(1, false).await?;
            ensure!(
                rev_f > 0 && rev_f + 50 >= rev_1,
                "node {f} at {rev_f}, node 1 at {rev_1}"
            );
            Ok(())
        },
    )
    .await
    .map_err(|e| e.context(c.logs()))?;

    // Envoys keep streaming (after at least one reconnect each to a replica with a new handshake).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rev = c.put(3, "r-last", 9).await?;
    c.all_acked(2, rev).await?;
    stop_writer(w, 20).await.map_err(|e| e.context(c.logs()))?;
    watching.store(false, Ordering::Relaxed);
    let longest = watcher.await?;
    eprintln!("longest disconnection per Envoy: {longest:?}");
    for (i, d) in longest.iter().enumerate() {
        // One reconnect: the backoff is 0.1-1 s; a missed health check adds at most 1 s.
        ensure!(
            *d < Duration::from_millis(2000),
            "envoy {} was disconnected for {d:?}",
            i + 1
        );
    }
    // envoy-r1 prefers node 1: it is back there, over connections made after the rotation.
    eventually(
        Duration::from_secs(10),
        "envoy-r1 streams from node 1 again",
        || async {
            ensure!(
                c.envoys_on(1).await?.contains(&"envoy-r1".to_string()),
                "not on node 1"
            );
            Ok(())
        },
    )
    .await?;
    ensure!(
        stat(&e1, "cluster.concord_xds.ssl.handshake").await > handshakes,
        "envoy-r1 made new TLS connections after the rotation"
    );
    let log = std::fs::read_to_string(c.dir().join("node-1.log"))?;
    ensure!(
        log.contains("reloaded TLS certificates"),
        "node 1 logs the reload"
    );
    Ok(())
}
