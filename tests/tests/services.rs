//! The services half's desired state on a real cluster (issue 14): `concord apply`, `diff` and
//! `get` through the CLI binary, one entry per apply, every replica holding the same state, and
//! bad files and bodies refused with nothing committed.

use anyhow::{Context, Result, ensure};
use concord_harness::{Cluster, Options, admin_client, concord_bin, eventually};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/grpc-shop.yaml")
}

/// Runs `concord <args>` against replica `id`.
fn concord(c: &Cluster, id: u64, args: &[&str]) -> Result<Output> {
    Ok(Command::new(concord_bin())
        .args(["--admin", &c.nodes[&id].admin])
        .args(args)
        .output()?)
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test]
async fn apply_diff_and_get_through_the_cli() -> Result<()> {
    let c = Cluster::start(Options::default()).await?;
    c.services_enabled().await?;
    // The example's listener terminates TLS with this certificate: uploaded first, through the
    // CLI (a listener naming one concord does not hold is refused).
    let ca = concord_harness::tls::TestCa::new()?;
    let (cert, key) = ca.leaf_pem(&["*.example.com"])?;
    let pems = tempfile::tempdir()?;
    std::fs::write(pems.path().join("c.pem"), &cert)?;
    std::fs::write(pems.path().join("k.pem"), &key)?;
    let dir_s = |f: &str| pems.path().join(f).display().to_string();
    let put = concord(
        &c,
        1,
        &[
            "certificates",
            "put",
            "wildcard-example-com",
            "--cert",
            &dir_s("c.pem"),
            "--key",
            &dir_s("k.pem"),
        ],
    )?;
    ensure!(put.status.success(), "{}", text(&put));
    let listed = concord(&c, 1, &["certificates", "list"])?;
    let shown = String::from_utf8_lossy(&listed.stdout);
    ensure!(
        shown.contains("wildcard-example-com")
            && shown.contains("*.example.com")
            && !shown.contains("PRIVATE"),
        "{}",
        text(&listed)
    );
    let file = example();
    let file = file.to_str().context("path")?;

    let first = concord(&c, 2, &["diff", "-f", file])?;
    ensure!(first.status.success(), "{}", text(&first));
    let shown = String::from_utf8_lossy(&first.stdout);
    ensure!(
        shown.contains("+ services.echo: ") && shown.contains("+ listeners.public: "),
        "{}",
        text(&first)
    );

    let applied = concord(&c, 2, &["apply", "-f", file])?;
    ensure!(applied.status.success(), "{}", text(&applied));
    let out = String::from_utf8_lossy(&applied.stdout);
    let revision: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("applied ")?.rsplit(' ').next()?.parse().ok())
        .with_context(|| text(&applied))?;

    // Every replica holds it at that revision: a diff against each shows nothing.
    for id in c.up() {
        eventually(T, &format!("node {id} holds the file"), || async {
            ensure!(c.status(id).await?.revision >= revision, "not applied yet");
            let o = concord(&c, id, &["diff", "-f", file])?;
            ensure!(
                o.status.success() && String::from_utf8_lossy(&o.stdout) == "no changes\n",
                "{}",
                text(&o)
            );
            Ok(())
        })
        .await?;
    }
    // Applying it again changes nothing and writes no entry.
    let again = concord(&c, 3, &["apply", "-f", file])?;
    ensure!(
        String::from_utf8_lossy(&again.stdout) == "no changes\n",
        "{}",
        text(&again)
    );
    ensure!(
        c.status(3).await?.revision == revision,
        "a no-op apply moved the revision"
    );

    // `get all -o yaml` is a file that `diff` finds equal.
    let got = concord(&c, 1, &["get", "all", "-o", "yaml"])?;
    ensure!(got.status.success(), "{}", text(&got));
    let dir = tempfile::tempdir()?;
    let printed = dir.path().join("printed.yaml");
    std::fs::write(&printed, &got.stdout)?;
    let o = concord(&c, 1, &["diff", "-f", printed.to_str().context("path")?])?;
    ensure!(
        String::from_utf8_lossy(&o.stdout) == "no changes\n",
        "get all printed {}\ndiff: {}",
        String::from_utf8_lossy(&got.stdout),
        text(&o)
    );
    let services = concord(&c, 1, &["get", "services"])?;
    let s = String::from_utf8_lossy(&services.stdout);
    ensure!(
        s.starts_with("services:") && s.contains("echo:") && !s.contains("route_tables"),
        "{}",
        text(&services)
    );

    // A change shows field by field, and applies.
    let changed = dir.path().join("changed.yaml");
    let body = std::fs::read_to_string(example())?
        .replace("connect_timeout: 250ms", "connect_timeout: 1s");
    std::fs::write(&changed, body)?;
    let changed = changed.to_str().context("path")?;
    let o = concord(&c, 1, &["apply", "-f", changed, "--dry-run"])?;
    let shown = String::from_utf8_lossy(&o.stdout);
    ensure!(
        shown.contains("~ services.echo.connect_timeout: \"250ms\" → \"1s\"")
            && shown.contains("dry run: 1 change(s), nothing applied"),
        "{}",
        text(&o)
    );
    ensure!(c.status(1).await?.revision == revision, "a dry run wrote");
    let o = concord(&c, 1, &["apply", "-f", changed])?;
    ensure!(o.status.success(), "{}", text(&o));
    // Node 1 may be a follower: the write is answered once the leader applied it, and node 1
    // applies it a moment later.
    eventually(T, "the change committed on node 1", || async {
        ensure!(
            c.status(1).await?.revision > revision,
            "the change did not commit"
        );
        Ok(())
    })
    .await?;
    Ok(())
}

/// A bad file exits 1 naming file, line and field, and commits nothing; a bad body to the API
/// is a 400 (413 when too large) with nothing committed either.
#[tokio::test]
async fn bad_files_and_bodies_commit_nothing() -> Result<()> {
    let c = Cluster::start(Options::default()).await?;
    c.services_enabled().await?;
    let (before, _) = c.builders(1, true).await?;
    let dir = tempfile::tempdir()?;
    let cases = [
        (
            "services:\n  echo:\n    protocol: grpc\n    connect_timeout: 15\n",
            ":4: services.echo.connect_timeout: a duration needs a unit: write `15s`",
        ),
        (
            "route_tables:\n  main:\n    virtual_hosts:\n      - name: a\n        domains: [a.example.com]\n        routes:\n          - match: {prefix: /}\n            service: missing\n",
            ":8: route_tables.main.virtual_hosts[0].routes[0].service: no service \"missing\"",
        ),
        ("services: [\n", ":2: not YAML"),
    ];
    for (i, (body, want)) in cases.iter().enumerate() {
        let f = dir.path().join(format!("bad-{i}.yaml"));
        std::fs::write(&f, body)?;
        let o = concord(&c, 2, &["apply", "-f", f.to_str().context("path")?])?;
        let err = String::from_utf8_lossy(&o.stderr);
        ensure!(
            o.status.code() == Some(1) && err.contains(&format!("bad-{i}.yaml{want}")),
            "want {want:?}: {}",
            text(&o)
        );
    }
    let missing = concord(&c, 2, &["apply", "-f", "/nonexistent.yaml"])?;
    ensure!(missing.status.code() == Some(2), "{}", text(&missing));

    let http = admin_client(None)?;
    let url = format!("{}/v1/config", c.nodes[&1].admin);
    for (body, status, code) in [
        ("{".to_string(), 400, "bad_request"),
        (r#"{"servces": {}}"#.to_string(), 400, "bad_request"),
        (
            r#"{"listeners": {"l": {"address": "127.0.0.1:8080", "route_table": "none"}}}"#
                .to_string(),
            400,
            "invalid_services",
        ),
        (
            format!(r#"{{"services": {{}}, "x": "{}"}}"#, "a".repeat(5 << 20)),
            413,
            "too_large",
        ),
    ] {
        let r = http
            .put(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?;
        let got = r.status().as_u16();
        let answer: serde_json::Value = r.json().await?;
        ensure!(
            got == status && answer["error"]["code"] == code,
            "want {status} {code}, got {got} {answer}"
        );
    }
    let (after, _) = c.builders(1, true).await?;
    ensure!(after == before, "a refused change was committed");
    Ok(())
}
