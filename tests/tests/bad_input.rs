//! Bad input gets a clear error and changes nothing: invalid config, invalid builders, duplicate
//! SNI names, writes without a quorum, and data dirs of another node or cluster.

use anyhow::{Result, ensure};
use concord_api::{ErrorCode, PutBuilder, Role};
use concord_harness::{Cluster, Options, concord_bin, eventually};
use reqwest::Method;
use serde_json::json;
use std::process::Command;
use std::time::{Duration, Instant};

fn serve(args: &[&str]) -> (i32, String) {
    let out = Command::new(concord_bin())
        .arg("serve")
        .args(args)
        .output()
        .expect("run concord");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn invalid_config_exits_before_starting() {
    let cases: &[(&[&str], &str)] = &[
        (&["--node-id", "0"], "node ids start at 1"),
        (
            &["--initial-members", "1=127.0.0.1:7101,2"],
            "expected id=host:port",
        ),
        (&["--peer-addr", "not-an-address"], "invalid value"),
        (
            &["--election-timeout-ms", "300-100"],
            "MIN must be above 0 and below MAX",
        ),
        (
            &["--node-id", "2", "--peer-addr", "127.0.0.1:7999"],
            "conflicting node id",
        ),
        (
            &["--config", "/nonexistent/concord.toml"],
            "cannot read config file",
        ),
        (&[], "TLS is required"),
        (&["--tls-ca", "/nonexistent/ca.pem"], "go together"),
        (
            &[
                "--tls-ca",
                "/nonexistent/ca.pem",
                "--tls-cert",
                "/nonexistent/node-1.pem",
                "--tls-key",
                "/nonexistent/node-1-key.pem",
            ],
            "cannot read /nonexistent/",
        ),
        (
            &["--insecure", "--xds-client-ca", "/nonexistent/ca.pem"],
            "need TLS on the xDS port",
        ),
    ];
    for (args, want) in cases {
        let (code, err) = serve(args);
        assert!(code != 0, "{args:?} should fail");
        assert!(
            err.contains(want),
            "{args:?}: {err:?} should mention {want:?}"
        );
    }
}

#[test]
fn bad_config_file_exits_before_starting() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("concord.toml");
    let data = dir.path().join("data");
    let cases = [
        ("heartbeat_ms = 100\n", "unknown key \"heartbeat_ms\""),
        (
            "heartbeat-ms = \"fast\"\n",
            "key \"heartbeat-ms\": invalid value 'fast'",
        ),
        (
            "dns-nxdomain = \"maybe\"\n",
            "key \"dns-nxdomain\": invalid value 'maybe'",
        ),
        // A valid file that validation refuses, as the same flag would be.
        ("insecure = true\nnode-id = 0\n", "node ids start at 1"),
    ];
    for (text, want) in cases {
        std::fs::write(&config, format!("data-dir = {data:?}\n{text}")).expect("write");
        let (code, err) = serve(&["--config", config.to_str().expect("utf-8")]);
        assert!(
            code == 2 && err.contains(want),
            "{text:?}: exit {code}, {err:?} should mention {want:?}"
        );
        assert!(!data.exists(), "{text:?}: nothing may start");
    }
}

#[tokio::test]
async fn invalid_builders_and_duplicate_sni_are_refused() -> Result<()> {
    let c = Cluster::start(Options::default()).await?;
    let cases = [
        (
            "b1",
            json!({ "addr": "127.0.0.1", "sni": "b1.example.com" }),
            400,
        ),
        (
            "b1",
            json!({ "addr": "0.0.0.0:80", "sni": "b1.example.com" }),
            400,
        ),
        (
            "b1",
            json!({ "addr": "127.0.0.1:80", "sni": "Not A Name" }),
            400,
        ),
        (
            "b%20x",
            json!({ "addr": "127.0.0.1:80", "sni": "bx.example.com" }),
            400,
        ),
        ("b1", json!({ "addr": "127.0.0.1:80" }), 400),
        (
            "b1",
            json!({ "addr": "127.0.0.1:80", "sni": "b1.example.com", "bogus": 1 }),
            400,
        ),
    ];
    for (id, body, want) in cases {
        let (s, v) = c
            .send(
                1,
                Method::PUT,
                &format!("/v1/builders/{id}"),
                Some(body.clone()),
            )
            .await?;
        ensure!(s == want, "{body}: {s} {v}");
        ensure!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{v}"
        );
    }
    c.put(2, "a", 9001).await?;
    // A well-formed body the registry refuses: the typed error carries status, code and message.
    let dup = PutBuilder::new(([127, 0, 0, 1], 9002).into(), concord_harness::sni("a"));
    let e = c.api(3).put_builder("b", &dup).await.unwrap_err();
    ensure!(
        e.status() == Some(409)
            && e.code() == Some(ErrorCode::Rejected)
            && e.to_string().contains("already used"),
        "{e:?}"
    );
    let (_, ids) = c.builders(1, true).await?;
    ensure!(ids == ["a"], "only the valid builder exists: {ids:?}");
    // Fault injection exists only when a replica is started for chaos tests.
    let r = c.api(1).isolate(true).await;
    ensure!(
        r.as_ref().is_err_and(|e| e.is_not_found()),
        "fault injection must be off by default: {r:?}"
    );
    Ok(())
}

#[tokio::test]
async fn write_without_quorum_fails_in_time_and_applies_nothing() -> Result<()> {
    let mut c = Cluster::start(Options::default()).await?;
    let leader = c.leader().await?;
    c.put(leader, "before", 9001).await?;
    let others: Vec<u64> = c.nodes.keys().copied().filter(|&i| i != leader).collect();
    for &id in &others {
        c.node(id).kill();
    }
    // Once the lone leader knows it has lost its quorum, a write is refused at once.
    eventually(
        Duration::from_secs(10),
        "leader notices it lost the quorum",
        || async {
            let s = c.status(leader).await?;
            let age = s.millis_since_quorum_ack.unwrap_or(u64::MAX);
            ensure!(s.role != Role::Leader || age > 1000, "{s:?}");
            Ok(())
        },
    )
    .await?;
    let t0 = Instant::now();
    let body = PutBuilder::new(([127, 0, 0, 1], 9002).into(), concord_harness::sni("lost"));
    let e = c.api(leader).put_builder("lost", &body).await.unwrap_err();
    let took = t0.elapsed();
    ensure!(e.status() == Some(503), "{e:?}");
    let msg = e.to_string();
    ensure!(
        msg.contains("no quorum") || msg.contains("no leader"),
        "{msg}"
    );
    ensure!(took < Duration::from_secs(7), "took {took:?}");
    // Bring the quorum back: the refused write never appears.
    for &id in &others {
        c.node(id).start()?;
    }
    c.leader().await?;
    c.put(others[0], "after", 9003).await?;
    let (_, ids) = c.builders(leader, true).await?;
    ensure!(ids == ["after", "before"], "{ids:?}");
    Ok(())
}

#[tokio::test]
async fn data_dir_of_another_node_or_cluster_is_refused() -> Result<()> {
    let mut c = Cluster::start(Options::default()).await?;
    let dir = c.nodes[&1].data_dir.display().to_string();
    // A second process on a live replica's data dir.
    let (admin2, xds2, peer2) = (
        format!("127.0.0.1:{}", concord_harness::free_port()),
        format!("127.0.0.1:{}", concord_harness::free_port()),
        format!("127.0.0.1:{}", concord_harness::free_port()),
    );
    let (code, err) = serve(&[
        "--cluster",
        &c.name,
        "--node-id",
        "1",
        "--data-dir",
        &dir,
        "--peer-addr",
        &peer2,
        "--admin-addr",
        &admin2,
        "--xds-addr",
        &xds2,
        "--initial-members",
        "none",
        // Plaintext: these runs are about the data dir (a certificate would have to name the
        // other cluster's or node's identity first).
        "--insecure",
    ]);
    ensure!(
        code != 0 && err.contains("in use by another process"),
        "{code} {err}"
    );
    c.node(1).terminate()?;
    let members = c.members().to_string();
    let peer1 = c.nodes[&1].peer.clone();
    let admin = format!("127.0.0.1:{}", concord_harness::free_port());
    let xds = format!("127.0.0.1:{}", concord_harness::free_port());
    let base = [
        "--xds-addr",
        &xds,
        "--data-dir",
        &dir,
        "--initial-members",
        &members,
        "--admin-addr",
        &admin,
        "--insecure",
    ];
    // Another cluster's name on this data dir.
    let mut args = base.to_vec();
    args.extend([
        "--cluster",
        "someone-else",
        "--node-id",
        "1",
        "--peer-addr",
        &peer1,
    ]);
    let (code, err) = serve(&args);
    ensure!(
        code != 0 && err.contains("belongs to cluster"),
        "{code} {err}"
    );
    // Another node id on this data dir.
    let peer = format!("127.0.0.1:{}", concord_harness::free_port());
    let mut args = base.to_vec();
    args.extend(["--cluster", &c.name, "--node-id", "7", "--peer-addr", &peer]);
    let (code, err) = serve(&args);
    ensure!(
        code != 0 && err.contains("belongs to node 1"),
        "{code} {err}"
    );
    // The rightful owner still starts from it.
    c.node(1).start()?;
    eventually(Duration::from_secs(20), "node 1 back", || async {
        c.status(1).await.map(|_| ())
    })
    .await?;
    Ok(())
}

/// A batch that names one builder twice, or puts and removes it at once, is refused with 409 on
/// every replica alike, and the cluster goes on: the refusal is remembered with its request id
/// (issue 16) and travels back to a forwarding replica, so it must encode (it did not: the
/// replicas stopped applying, issue 14).
#[tokio::test]
async fn contradictory_batches_are_refused_and_the_cluster_goes_on() -> Result<()> {
    let c = Cluster::start(Options::default()).await?;
    let leader = c.leader().await?;
    let follower = *c.nodes.keys().find(|&&id| id != leader).unwrap();
    let b = json!({ "id": "b1", "addr": "127.0.0.1:9001", "sni": "b1.example.com" });
    for (via, body) in [
        (leader, json!({ "upserts": [b.clone(), b.clone()] })),
        (follower, json!({ "upserts": [b.clone(), b.clone()] })),
        (
            follower,
            json!({ "upserts": [b.clone()], "removes": ["b1"] }),
        ),
    ] {
        let (s, v) = c
            .send(via, Method::POST, "/v1/builders", Some(body.clone()))
            .await?;
        ensure!(s == 409, "{body} via node {via}: {s} {v}");
    }
    // Every replica still applies writes.
    let rev = c.put(follower, "b2", 9002).await?;
    for id in c.up() {
        eventually(
            Duration::from_secs(10),
            "the write applies everywhere",
            || async {
                let (r, ids) = c.builders(id, false).await?;
                ensure!(r >= rev && ids == ["b2"], "node {id}: {r} {ids:?}");
                Ok(())
            },
        )
        .await?;
    }
    Ok(())
}
