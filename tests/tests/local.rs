//! The local cluster's dev tool end to end, with the real binaries: `concord-local up` on ports
//! and a run directory of its own, a DNS builder routed through its Envoy, `kill-leader` (a new
//! leader is elected), `start`, `dns-add`, `dns-rm`, `status`, `down` (nothing is left running),
//! and `up` again from the kept state; plus the errors for a bad node and a changed setting.

use anyhow::{Context, Result, bail, ensure};
use concord_harness::tls::probe_pem;
use concord_harness::{eventually, free_port, free_ports, sibling_bin};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The tool with one run directory and one set of ports.
struct Local {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
    listener: SocketAddr,
    admin_base: u16,
}

/// What one command printed.
struct Out {
    ok: bool,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Local {
    fn new() -> Result<Local> {
        let dir = tempfile::Builder::new().prefix("concord-local").tempdir()?;
        let base3 = || (free_ports(3) - 1).to_string();
        let base1 = || (free_port() - 1).to_string();
        let (admin_base, listener_base) = (base3(), base1());
        let env = [
            ("CONCORD_LOCAL_RUN_DIR", dir.path().display().to_string()),
            ("CONCORD_LOCAL_NODES", "3".into()),
            ("CONCORD_LOCAL_ENVOYS", "1".into()),
            ("CONCORD_LOCAL_BUILDERS", "1".into()),
            ("CONCORD_LOCAL_PEER_BASE", base3()),
            ("CONCORD_LOCAL_ADMIN_BASE", admin_base.clone()),
            ("CONCORD_LOCAL_XDS_BASE", base3()),
            ("CONCORD_LOCAL_ENVOY_ADMIN_BASE", base1()),
            ("CONCORD_LOCAL_ENVOY_LISTENER_BASE", listener_base.clone()),
            ("CONCORD_LOCAL_BUILDER_BASE", base1()),
            ("CONCORD_LOCAL_DNS_PORT", free_port().to_string()),
            ("CONCORD_LOCAL_DNS_BUILDER_PORT", free_port().to_string()),
        ]
        .map(|(k, v)| (k.to_string(), v))
        .to_vec();
        Ok(Local {
            listener: SocketAddr::from(([127, 0, 0, 1], listener_base.parse::<u16>()? + 1)),
            admin_base: admin_base.parse()?,
            dir,
            env,
        })
    }

    async fn run(&self, args: &[&str]) -> Result<Out> {
        self.run_with(args, &[]).await
    }

    async fn run_with(&self, args: &[&str], env: &[(&str, &str)]) -> Result<Out> {
        let mut cmd = tokio::process::Command::new(sibling_bin("concord-local"));
        cmd.args(args).kill_on_drop(true);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = tokio::time::timeout(Duration::from_secs(180), cmd.output())
            .await
            .with_context(|| format!("concord-local {args:?} did not finish within 180 s"))??;
        let out = Out {
            ok: out.status.success(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        eprintln!(
            "$ concord-local {}\n{}{}",
            args.join(" "),
            out.stdout,
            out.stderr
        );
        Ok(out)
    }

    /// Runs a command that must succeed.
    async fn ok(&self, args: &[&str]) -> Result<Out> {
        let out = self.run(args).await?;
        ensure!(
            out.ok,
            "concord-local {args:?} failed ({:?}):\n{}",
            out.code,
            out.stderr
        );
        Ok(out)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The pids in the run directory's pid files.
    fn pids(&self) -> Vec<(PathBuf, u32)> {
        let mut out = Vec::new();
        for dir in [self.dir.path().to_path_buf(), self.path("dns")] {
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "pid")
                    && let Some(pid) = std::fs::read_to_string(&p)
                        .ok()
                        .and_then(|s| s.trim().parse().ok())
                {
                    out.push((p, pid));
                }
            }
        }
        out
    }

    fn api(&self, node: u64) -> Result<concord_api::Client> {
        let token = std::fs::read_to_string(self.path("admin-token"))?;
        Ok(
            concord_api::Client::builder(&format!("127.0.0.1:{}", self.admin_base + node as u16))
                .token(Some(token.trim().to_string()))
                .timeout(Duration::from_secs(5))
                .build()?,
        )
    }

    /// What the Envoy's listener answers for builder bN's SNI.
    async fn through_envoy(&self, n: u64) -> Result<String> {
        probe_pem(
            &self.path(&format!("builder-{n}.ca.pem")),
            self.listener,
            &format!("b{n}.builders.local"),
        )
        .await
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        // Whatever a failed test left running: SIGKILL from the pid files.
        for (_, pid) in self.pids() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

fn alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    !stat.is_empty() && !stat.contains(") Z")
}

async fn leader_of(local: &Local, nodes: &[u64]) -> Result<u64> {
    eventually(Duration::from_secs(20), "a leader", || async {
        for &n in nodes {
            if let Ok(s) = local.api(n)?.status().await
                && s.role == concord_api::Role::Leader
            {
                return Ok(n);
            }
        }
        bail!("none of {nodes:?} leads")
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn up_route_kill_leader_dns_add_and_down() -> Result<()> {
    let local = Local::new()?;
    local.ok(&["up"]).await?;
    ensure!(
        local.through_envoy(1).await? == "builder b1",
        "envoy-1 does not route b1"
    );
    let pids = local.pids();
    ensure!(
        pids.len() == 1 + 3 + 1 + 1 + 2 * 2,
        "named, 3 nodes, 1 Envoy, 1 builder, 2 gRPC instances and their registrars: {pids:?}"
    );

    let leader = leader_of(&local, &[1, 2, 3]).await?;
    let out = local.ok(&["kill-leader"]).await?;
    ensure!(
        out.stderr.contains(&format!("node {leader}: killed")),
        "{}",
        out.stderr
    );
    ensure!(
        !local.path(&format!("node-{leader}.pid")).exists(),
        "its pid file stays"
    );
    let rest: Vec<u64> = [1, 2, 3].into_iter().filter(|&n| n != leader).collect();
    let new = leader_of(&local, &rest).await?;
    ensure!(new != leader);
    local.ok(&["start", &leader.to_string()]).await?;

    let out = local.ok(&["dns-add", "2"]).await?;
    ensure!(
        out.stderr.contains("b2 routed by 1 Envoy"),
        "{}",
        out.stderr
    );
    ensure!(local.through_envoy(2).await? == "builder b2");
    local.ok(&["dns-rm", "1"]).await?;
    ensure!(
        local.through_envoy(1).await.is_err(),
        "b1 still routed after dns-rm"
    );

    let out = local.ok(&["status"]).await?;
    for want in [
        "== named: running",
        "== node 1: running",
        "== envoy-1: running",
        "== builder b2: running",
        "== grpc g1: pid",
        "== grpc g2: pid",
    ] {
        ensure!(
            out.stderr.contains(want),
            "status lacks {want:?}:\n{}",
            out.stderr
        );
    }

    // A gRPC instance drains and leaves; the other still answers.
    let out = local.ok(&["grpc-drain", "1"]).await?;
    ensure!(
        out.stderr.contains("g1 drained and removed"),
        "{}",
        out.stderr
    );
    let out = local.ok(&["status"]).await?;
    ensure!(
        out.stderr.contains("== grpc g1: not running") && out.stderr.contains("== grpc g2: pid"),
        "{}",
        out.stderr
    );

    // Bad input: a node the cluster does not have; a setting the saved world does not have.
    let out = local.run(&["kill", "7"]).await?;
    ensure!(
        !out.ok && out.stderr.contains("no node 7"),
        "{}",
        out.stderr
    );
    let out = local
        .run_with(&["status"], &[("CONCORD_LOCAL_NODES", "5")])
        .await?;
    ensure!(
        out.code == Some(2) && out.stderr.contains("reset"),
        "{}",
        out.stderr
    );

    let pids = local.pids();
    local.ok(&["down"]).await?;
    ensure!(
        local.pids().is_empty(),
        "pid files left: {:?}",
        local.pids()
    );
    for (file, pid) in pids {
        ensure!(
            !alive(pid),
            "{} (pid {pid}) still runs after down",
            file.display()
        );
    }

    // Up again from the kept state: the same cluster, the DNS list as dns-add and dns-rm left it.
    local.ok(&["up"]).await?;
    ensure!(local.through_envoy(2).await? == "builder b2");
    let (revision, ids) = {
        let l = local.api(1)?.builders(false).await?;
        (l.revision, l.ids())
    };
    ensure!(
        ids == ["b2"],
        "registry after up again: {ids:?} at {revision}"
    );
    local.ok(&["reset"]).await?;
    ensure!(!local.path("node-1").exists() && !local.path("settings.json").exists());
    ensure!(local.pids().is_empty());
    Ok(())
}
