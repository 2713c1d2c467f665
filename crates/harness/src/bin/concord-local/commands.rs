//! The local cluster's commands: each opens the world from the run directory, does one thing,
//! and says what it did on stderr (what it shows of the cluster, from the `concord` CLI, on
//! stdout).

use crate::Cmd;
use crate::settings::{DNS_TXT_NAME, Kind, Waits};
use crate::world::World;
use anyhow::{Context, Result, bail, ensure};
use concord_harness::envoy::Envoy;
use concord_harness::process::{Stopped, stop_all};
use concord_harness::tls::probe_pem;
use concord_harness::{Cluster, Proc, concord_bin, eventually};
use std::future::Future;
use std::time::{Duration, Instant};

/// Runs one command.
pub async fn run(w: &World, waits: &Waits, cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Up => up(w, waits).await,
        Cmd::Status => status(w).await,
        Cmd::Down => down(w, waits),
        Cmd::Kill { n } => kill(w, n),
        Cmd::KillLeader => kill_leader(w).await,
        Cmd::Start { n } => start(w, waits, n).await,
        Cmd::DnsAdd { n } => dns_add(w, waits, n).await,
        Cmd::DnsRm { n } => dns_rm(w, waits, n).await,
        Cmd::DnsShow => dns_show(w),
        Cmd::AddBuilder { n } => add_builder(w, waits, n).await,
        Cmd::Rotate { n } => rotate(w, n),
        Cmd::Logs { what } => logs(w, &what),
        Cmd::Reset => reset(w, waits),
        Cmd::GrpcDrain { n } => grpc_drain(w, waits, n).await,
        Cmd::GrpcStart { n } => grpc_start(w, waits, n).await,
    }
}

fn say(msg: impl std::fmt::Display) {
    eprintln!("concord-local: {msg}");
}

/// `fut` within `secs` seconds, or an error naming `what`.
async fn within<T>(secs: u64, what: &str, fut: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .with_context(|| format!("{what}: not within {secs}s"))?
}

async fn up(w: &World, waits: &Waits) -> Result<()> {
    w.ensure_tokens()?;
    if w.s.dns {
        let mut bind = w.bind()?;
        match bind.pid() {
            Some(pid) => say(format!("named: already running (pid {pid})")),
            None => {
                bind = bind.spawned()?;
                say(format!(
                    "named: started (pid {}), 127.0.0.1:{}, zone {}. in {}",
                    bind.pid().unwrap_or_default(),
                    w.s.dns_port,
                    crate::settings::DNS_ZONE,
                    bind.dir().display()
                ));
            }
        }
        within(waits.up_timeout, "named answers", bind.ready()).await?;
        if !w.dns_list_file().exists() {
            for n in 1..=w.s.builders {
                w.change_dns_list(n, true)?;
            }
        }
    }
    let mut cluster = w.cluster()?;
    for r in cluster.nodes.values_mut() {
        match r.pid() {
            Some(pid) => say(format!("node {}: already running (pid {pid})", r.id)),
            None => {
                r.start()?;
                say(format!(
                    "node {}: started (pid {}), peer {}, admin {}, ADS {}, log {}",
                    r.id,
                    r.pid().unwrap_or_default(),
                    r.peer,
                    r.admin,
                    r.xds,
                    r.log().display()
                ));
            }
        }
    }
    say(format!(
        "waiting up to {}s for a leader and for every node to serve Envoys...",
        waits.up_timeout
    ));
    let ready = within(waits.up_timeout, "the cluster is ready", async {
        cluster.leader().await?;
        for id in cluster.nodes.keys() {
            cluster.serving(*id).await?;
        }
        Ok(())
    })
    .await;
    if let Err(e) = ready {
        eprintln!("{}", cluster.logs());
        bail!("{e:#}\nwhat did start is left running: `status` shows it, `down` stops it");
    }

    let builders = wanted_builders(w)?;
    for &(n, kind) in &builders {
        let b = w.start_builder(n, kind)?;
        say(format!(
            "builder b{n}: running (pid {}), {}, SNI {}, {} builder",
            b.proc.as_ref().map(Proc::pid).unwrap_or_default(),
            w.s.builder_addr(n, kind),
            w.s.sni(n),
            kind.name()
        ));
    }
    for &(n, kind) in &builders {
        builder_listens(w, n, kind).await?;
    }
    if w.s.dns {
        publish(w)?;
    }
    let mut envoys = Vec::new();
    for n in 1..=w.s.envoys {
        let mut e = w.envoy(n)?;
        if e.is_running() {
            say(format!(
                "envoy-{n}: already running (pid {})",
                e.pid().unwrap_or_default()
            ));
        } else {
            e = within(
                waits.up_timeout,
                &format!("envoy-{n} starts"),
                w.start_envoy(&cluster, n),
            )
            .await?;
            say(format!(
                "envoy-{n}: started (pid {}), streams from {} (first preferred), admin {}, listener {}",
                e.pid().unwrap_or_default(),
                w.s.envoy_servers(n).join(","),
                e.admin,
                e.listener
            ));
        }
        envoys.push(e);
    }
    for &(n, kind) in &builders {
        if kind == Kind::Api {
            register(w, &cluster, n).await?;
        }
    }
    let t0 = Instant::now();
    for &(n, _) in &builders {
        routed(w, waits, &envoys, n, true).await?;
    }
    if !builders.is_empty() && !envoys.is_empty() {
        say(format!(
            "every Envoy routes every builder ({:.0?} after they started)",
            t0.elapsed()
        ));
    }
    let admin = first_admin(&cluster);
    grpc_up(w, waits, &cluster, &admin).await?;
    println!();
    cli(w, &admin, &["cluster", "status"]);
    if w.s.dns {
        let leader = cluster
            .leader_now()
            .await
            .ok()
            .map(|l| cluster.nodes[&l].admin.clone());
        println!();
        cli(w, leader.as_deref().unwrap_or(&admin), &["discovery"]);
    }
    examples(w, &envoys);
    Ok(())
}

/// Applies the demo gRPC service's desired state, starts its instances and their registrars,
/// and waits until every Envoy routes calls to each instance.
async fn grpc_up(w: &World, waits: &Waits, cluster: &Cluster, admin: &str) -> Result<()> {
    use crate::world::{GRPC_INSTANCES, GRPC_SERVICE};
    let leader = within(
        waits.up_timeout,
        "entry format 2 (services)",
        cluster.services_enabled(),
    )
    .await?;
    let written = cluster.api(leader).apply_config(&w.grpc_desired()?).await?;
    say(format!(
        "services: service {GRPC_SERVICE} (gRPC, health-checked), routed by :authority {} (revision {})",
        crate::world::GRPC_AUTHORITY,
        written.revision
    ));
    for n in 1..=GRPC_INSTANCES {
        let g = w.start_grpc(n, admin)?;
        say(format!(
            "grpc g{n}: running (pid {}), {}, registered by `concord endpoints register` (pid {})",
            g.server.as_ref().map(Proc::pid).unwrap_or_default(),
            w.grpc_addr(n),
            g.registrar.as_ref().map(Proc::pid).unwrap_or_default()
        ));
    }
    for e in 1..=w.s.envoys {
        grpc_routed(w, waits, e, GRPC_INSTANCES).await?;
    }
    if w.s.envoys > 0 {
        say("every Envoy routes gRPC calls to every instance");
    }
    Ok(())
}

/// Waits until envoy-E's calls reach `instances` distinct instances.
async fn grpc_routed(w: &World, waits: &Waits, e: u64, instances: u64) -> Result<()> {
    let listener = w.grpc_listener(e);
    eventually(
        Duration::from_secs(waits.route_timeout),
        &format!("envoy-{e} routes {}", crate::world::GRPC_AUTHORITY),
        || async {
            let mut client =
                concord_harness::grpc::echo_client(listener, crate::world::GRPC_AUTHORITY).await?;
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..(4 * instances) {
                let r = client
                    .say(concord_harness::grpc::proto::SayRequest {
                        message: "up".into(),
                        delay_ms: 0,
                    })
                    .await?;
                seen.insert(r.into_inner().instance);
            }
            ensure!(seen.len() as u64 >= instances, "answered by {seen:?}");
            Ok(())
        },
    )
    .await
}

/// `grpc-drain N`: stops instance gN the way its supervisor would: SIGTERM to its registrar,
/// which drains the endpoint (no new calls; calls in flight finish) and exits once the leader
/// removed it after the drain timeout; then the instance itself stops.
async fn grpc_drain(w: &World, waits: &Waits, n: u64) -> Result<()> {
    let g = w.grpc(n);
    let Some(registrar) = g.registrar else {
        bail!("g{n}: its registrar is not running (`grpc-start {n}` starts it)");
    };
    say(format!(
        "g{n}: SIGTERM to its registrar (pid {}): draining, then removed after the 5 s drain timeout",
        registrar.pid()
    ));
    let grace = Duration::from_secs(waits.stop_timeout.max(15));
    report(
        stop_all(vec![(format!("registrar of g{n}"), registrar)], grace),
        "",
    );
    if let Some(server) = g.server {
        report(stop_all(vec![(format!("grpc g{n}"), server)], grace), "");
    }
    let log =
        std::fs::read_to_string(w.dir.join(format!("grpc-{n}.register.log"))).unwrap_or_default();
    if let Some(last) = log.lines().last() {
        say(format!("g{n}'s registrar said: {last}"));
    }
    Ok(())
}

/// `grpc-start N`: starts instance gN and its registrar again.
async fn grpc_start(w: &World, waits: &Waits, n: u64) -> Result<()> {
    let cluster = w.cluster()?;
    let admin = first_admin(&cluster);
    let g = w.start_grpc(n, &admin)?;
    say(format!(
        "grpc g{n}: running (pid {}), {}",
        g.server.as_ref().map(Proc::pid).unwrap_or_default(),
        w.grpc_addr(n)
    ));
    for e in 1..=w.s.envoys {
        grpc_routed(w, waits, e, 1).await?;
    }
    Ok(())
}

/// The admin address of the cluster's first node (the CLI's default target).
fn first_admin(cluster: &Cluster) -> String {
    cluster
        .nodes
        .values()
        .next()
        .map(|r| r.admin.clone())
        .unwrap_or_default()
}

/// The builders `up` runs: the DNS list (DNS on) and every api builder started before; without
/// DNS, b1..bB as api builders on the first `up`.
fn wanted_builders(w: &World) -> Result<Vec<(u64, Kind)>> {
    let mut out: Vec<(u64, Kind)> = Vec::new();
    if w.s.dns {
        out.extend(w.dns_list()?.into_iter().map(|n| (n, Kind::Dns)));
    }
    let known = w.builders();
    let api: Vec<(u64, Kind)> = known
        .iter()
        .filter(|b| b.kind == Kind::Api && !out.iter().any(|(n, _)| *n == b.n))
        .map(|b| (b.n, Kind::Api))
        .collect();
    out.extend(api);
    if !w.s.dns && known.is_empty() {
        out.extend((1..=w.s.builders).map(|n| (n, Kind::Api)));
    }
    out.sort_unstable_by_key(|(n, _)| *n);
    Ok(out)
}

/// Waits until demo builder bN answers its own SNI with its greeting.
async fn builder_listens(w: &World, n: u64, kind: Kind) -> Result<()> {
    let addr = w.s.builder_addr(n, kind);
    eventually(
        Duration::from_secs(10),
        &format!("builder b{n} listens on {addr}"),
        || async {
            let got = probe_pem(&w.builder_ca(n), addr, &w.s.sni(n)).await?;
            ensure!(
                got == format!("builder b{n}"),
                "b{n} at {addr} greets {got:?}"
            );
            Ok(())
        },
    )
    .await
    .map_err(|e| e.context(tail(&w.builder_log(n), 5)))
}

/// Publishes the DNS list as the TXT record.
fn publish(w: &World) -> Result<()> {
    let bind = w.bind()?;
    let lines = w.dns_lines();
    bind.set_instances(&lines)?;
    let ids: Vec<String> = w.dns_list()?.iter().map(|n| format!("b{n}")).collect();
    say(format!(
        "DNS: published {DNS_TXT_NAME}. TXT listing {}",
        if ids.is_empty() {
            "nothing".to_string()
        } else {
            ids.join(" ")
        }
    ));
    Ok(())
}

/// Registers api builder bN through the admin API.
async fn register(w: &World, cluster: &Cluster, n: u64) -> Result<()> {
    let leader = cluster.leader().await?;
    let body = concord_api::PutBuilder::new(w.s.builder_addr(n, Kind::Api), w.s.sni(n));
    let written = cluster
        .api(leader)
        .put_builder(&format!("b{n}"), &body)
        .await
        .with_context(|| format!("register b{n}"))?;
    say(format!(
        "api builder b{n}: registered at revision {}",
        written.revision
    ));
    Ok(())
}

/// Waits until every Envoy in `envoys` routes bN (`true`) or none does (`false`).
async fn routed(w: &World, waits: &Waits, envoys: &[Envoy], n: u64, want: bool) -> Result<()> {
    let timeout = Duration::from_secs(waits.route_timeout);
    for e in envoys {
        let what = format!(
            "{} {} b{n}",
            e.node_id,
            if want { "routes" } else { "stops routing" }
        );
        eventually(timeout, &what, || async {
            let got = probe_pem(&w.builder_ca(n), e.listener, &w.s.sni(n)).await;
            match (want, got) {
                (true, Ok(g)) if g == format!("builder b{n}") => Ok(()),
                (true, Ok(g)) => bail!("reached {g:?}"),
                (true, Err(e)) => Err(e),
                (false, Ok(g)) => bail!("still reached {g:?}"),
                (false, Err(_)) => Ok(()),
            }
        })
        .await
        .map_err(|err| err.context(tail(e.log(), 10)))?;
    }
    Ok(())
}

/// The Envoys that run.
fn running_envoys(w: &World) -> Result<Vec<Envoy>> {
    let mut out = Vec::new();
    for n in 1..=w.s.envoys {
        let mut e = w.envoy(n)?;
        if e.is_running() {
            out.push(e);
        }
    }
    Ok(out)
}

/// Runs `concord --admin <admin> <args>` with the write token, its output on ours; whether it
/// succeeded.
fn cli(w: &World, admin: &str, args: &[&str]) -> bool {
    std::process::Command::new(concord_bin())
        .args(["--admin", admin])
        .args(args)
        .env("CONCORD_TOKEN_FILE", w.token_file())
        .status()
        .is_ok_and(|s| s.success())
}

fn examples(w: &World, envoys: &[Envoy]) {
    let bin = concord_bin();
    let bin = bin.display();
    let token = w.token_file();
    println!();
    println!("Try:");
    if let (Some(e), Some(n)) = (
        envoys.first(),
        w.dns_list().ok().and_then(|l| l.first().copied()),
    ) {
        println!(
            "  openssl s_client -quiet -servername {} -connect {} </dev/null   # -> builder b{n}",
            w.s.sni(n),
            e.listener
        );
    }
    println!("  export CONCORD_TOKEN_FILE={}", token.display());
    println!(
        "  {bin} --admin 127.0.0.1:{} builders list",
        w.s.admin_base + 1
    );
    println!(
        "  {bin} --admin 127.0.0.1:{} ui   # the live status page's URL: open it in a browser",
        w.s.admin_base + 2
    );
    println!(
        "  deploy/local/concord-local kill-leader     # and watch: deploy/local/concord-local status, or the page"
    );
    if w.s.dns {
        println!("  deploy/local/concord-local dns-add 4       # routed within a poll or two");
        println!("  deploy/local/concord-local dns-rm 1");
    }
    if !envoys.is_empty() {
        let call = concord_harness::sibling_bin("demo-grpc");
        println!(
            "  {} call {} -n 20          # gRPC through envoy-1: g1 and g2 answer",
            call.display(),
            w.grpc_listener(1)
        );
        println!(
            "  deploy/local/concord-local grpc-drain 1    # g1 drains: no new calls, then it leaves; call again"
        );
        println!(
            "  {bin} endpoints list echo   # g1 draining, then gone; grpc-start 1 brings it back"
        );
    }
    println!("  deploy/local/concord-local down            # data kept; reset deletes it");
}

async fn status(w: &World) -> Result<()> {
    if w.s.dns {
        let bind = w.bind()?;
        match bind.pid() {
            Some(pid) => say(format!(
                "== named: running (pid {pid}), 127.0.0.1:{}",
                w.s.dns_port
            )),
            None => say("== named: not running"),
        }
        let ids: Vec<String> = w.dns_list()?.iter().map(|n| format!("b{n}")).collect();
        say(format!("   DNS list: {}", ids.join(" ")));
    }
    let cluster = w.cluster()?;
    for r in cluster.nodes.values() {
        match r.pid() {
            Some(pid) => say(format!(
                "== node {}: running (pid {pid}), admin {}, ADS {}",
                r.id, r.admin, r.xds
            )),
            None => say(format!("== node {}: not running", r.id)),
        }
        if r.pid().is_some() && cli(w, &r.admin, &["cluster", "status"]) {
            if w.s.dns {
                cli(w, &r.admin, &["discovery"]);
            }
            cli(w, &r.admin, &["envoys"]);
        }
    }
    for n in 1..=w.s.envoys {
        let mut e = w.envoy(n)?;
        if e.is_running() {
            let ready = e
                .ready()
                .await
                .unwrap_or_else(|_| "admin does not answer".into());
            say(format!(
                "== envoy-{n}: running (pid {}, {ready}), admin {}, listener {}, prefers node {}",
                e.pid().unwrap_or_default(),
                e.admin,
                e.listener,
                w.s.envoy_home(n)
            ));
        } else {
            say(format!("== envoy-{n}: not running"));
        }
    }
    let listed = w.dns_list()?;
    for b in w.builders() {
        let where_ = match b.kind {
            Kind::Api => "api builder",
            Kind::Dns if listed.contains(&b.n) => "dns builder, in DNS",
            Kind::Dns => "dns builder, not in DNS",
        };
        match &b.proc {
            Some(p) => say(format!(
                "== builder b{}: running (pid {}), {}, SNI {}, {where_}",
                b.n,
                p.pid(),
                w.s.builder_addr(b.n, b.kind),
                w.s.sni(b.n)
            )),
            None => say(format!("== builder b{}: not running ({where_})", b.n)),
        }
    }
    for n in 1..=crate::world::GRPC_INSTANCES {
        let g = w.grpc(n);
        let pid = |p: &Option<Proc>| {
            p.as_ref()
                .map_or("not running".to_string(), |p| format!("pid {}", p.pid()))
        };
        say(format!(
            "== grpc g{n}: {} on {}; its registrar: {}",
            pid(&g.server),
            w.grpc_addr(n),
            pid(&g.registrar)
        ));
    }
    Ok(())
}

fn down(w: &World, waits: &Waits) -> Result<()> {
    let grace = Duration::from_secs(waits.stop_timeout);
    // The gRPC registrars first (each drains its endpoint and waits for its removal), then the
    // instances.
    let (mut registrars, mut servers) = (Vec::new(), Vec::new());
    for n in 1..=crate::world::GRPC_INSTANCES {
        let g = w.grpc(n);
        registrars.extend(g.registrar.map(|p| (format!("registrar of g{n}"), p)));
        servers.extend(g.server.map(|p| (format!("grpc g{n}"), p)));
    }
    report(stop_all(registrars, grace.max(Duration::from_secs(15))), "");
    report(stop_all(servers, grace), "");
    // The Envoys and builders next, so the Envoys do not log the nodes going away; named last,
    // so the leader's poller does not log failed polls.
    let mut first = Vec::new();
    for n in 1..=w.s.envoys {
        if let Some(p) = w.envoy(n)?.take_proc() {
            first.push((format!("envoy-{n}"), p));
        }
    }
    for b in w.builders() {
        if let Some(p) = b.proc {
            first.push((format!("builder b{}", b.n), p));
        }
    }
    report(
        stop_all(first, grace),
        "no Envoy or demo builder was running",
    );
    let mut cluster = w.cluster()?;
    let nodes = cluster
        .nodes
        .values_mut()
        .filter_map(|r| Some((format!("node {}", r.id), r.take_proc()?)))
        .collect();
    report(stop_all(nodes, grace), "no node was running");
    if let Some(p) = w.bind()?.take_proc() {
        report(stop_all(vec![("named".into(), p)], grace), "");
    }
    say(format!("data kept in {}", w.dir.display()));
    Ok(())
}

fn report(stopped: Vec<(String, Stopped)>, none: &str) {
    if stopped.is_empty() && !none.is_empty() {
        say(none);
    }
    for (what, how) in stopped {
        match how {
            Stopped::Exited => say(format!("{what}: stopped")),
            Stopped::Killed => say(format!("{what}: did not exit after SIGTERM; killed")),
        }
    }
}

fn node_in_range(w: &World, n: u64) -> Result<()> {
    ensure!(
        (1..=w.s.nodes).contains(&n),
        "no node {n}: the local cluster has nodes 1..{}",
        w.s.nodes
    );
    Ok(())
}

fn kill(w: &World, n: u64) -> Result<()> {
    node_in_range(w, n)?;
    let mut cluster = w.cluster()?;
    let r = cluster.node(n);
    match r.pid() {
        Some(pid) => {
            r.kill();
            say(format!("node {n}: killed (SIGKILL pid {pid})"));
            say("its Envoys move to another node (`status` shows where they stream from)");
        }
        None => say(format!("node {n}: not running")),
    }
    Ok(())
}

async fn kill_leader(w: &World) -> Result<()> {
    let cluster = w.cluster()?;
    let mut leader = None;
    for r in cluster.nodes.values().filter(|r| r.pid().is_some()) {
        if let Ok(s) = cluster.status(r.id).await
            && let Some(l) = s.leader
        {
            say(format!("node {} says the leader is node {l}", r.id));
            leader = Some(l);
            break;
        }
    }
    let leader = leader.context("no running node knows a leader")?;
    ensure!(
        cluster.nodes.contains_key(&leader),
        "the leader, node {leader}, is not one this tool runs"
    );
    drop(cluster);
    kill(w, leader)
}

async fn start(w: &World, waits: &Waits, n: u64) -> Result<()> {
    node_in_range(w, n)?;
    let mut cluster = w.cluster()?;
    let r = cluster.node(n);
    if let Some(pid) = r.pid() {
        say(format!("node {n}: already running (pid {pid})"));
        return Ok(());
    }
    r.start()?;
    say(format!(
        "node {n}: started (pid {})",
        r.pid().unwrap_or_default()
    ));
    let api = cluster.api(n);
    let answered = eventually(
        Duration::from_secs(waits.up_timeout),
        "the node answers",
        || async {
            ensure!(cluster.nodes[&n].pid().is_some(), "node {n} exited");
            api.healthz().await?;
            Ok(())
        },
    )
    .await;
    if let Err(e) = answered {
        eprintln!("{}", cluster.nodes[&n].log_tail());
        return Err(e);
    }
    say(format!("node {n}: answers on {}", cluster.nodes[&n].admin));
    Ok(())
}

fn builder_number(w: &World, n: u64, kind: Kind) -> Result<()> {
    let max = w.s.max_builder(kind);
    ensure!(
        (1..=max).contains(&n),
        "builder number {n} is not in 1..{max}"
    );
    Ok(())
}

fn need_dns(w: &World) -> Result<()> {
    ensure!(
        w.s.dns,
        "DNS discovery is off in this local cluster (--dns false)"
    );
    let mut bind = w.bind()?;
    ensure!(bind.is_running(), "named is not running; run `up` first");
    Ok(())
}

/// The source of registry builder bN, if any replica that runs answers.
async fn registered_source(w: &World, n: u64) -> Option<String> {
    let cluster = w.cluster().ok()?;
    for r in cluster.nodes.values().filter(|r| r.pid().is_some()) {
        match cluster.api(r.id).get_builder(&format!("b{n}"), false).await {
            Ok(b) => return Some(b.builder.source.to_string()),
            Err(e) if e.is_not_found() => return None,
            Err(_) => continue,
        }
    }
    None
}

async fn dns_add(w: &World, waits: &Waits, n: u64) -> Result<()> {
    need_dns(w)?;
    builder_number(w, n, Kind::Dns)?;
    if registered_source(w, n).await.as_deref() == Some("api") {
        bail!(
            "the registry has an api builder b{n}; the poller skips DNS entries whose id belongs to one. Remove it first (concord builders rm b{n}) or pick another number"
        );
    }
    w.start_builder(n, Kind::Dns)?;
    builder_listens(w, n, Kind::Dns).await?;
    w.change_dns_list(n, true)?;
    let t0 = Instant::now();
    publish(w)?;
    let envoys = running_envoys(w)?;
    routed(w, waits, &envoys, n, true).await?;
    say(format!(
        "b{n} routed by {} Envoy(s) {:.0?} after the DNS update",
        envoys.len(),
        t0.elapsed()
    ));
    Ok(())
}

async fn dns_rm(w: &World, waits: &Waits, n: u64) -> Result<()> {
    need_dns(w)?;
    builder_number(w, n, Kind::Dns)?;
    if !w.dns_list()?.contains(&n) {
        say(format!("DNS list: b{n} is not in it"));
    }
    w.change_dns_list(n, false)?;
    let t0 = Instant::now();
    publish(w)?;
    let envoys = running_envoys(w)?;
    routed(w, waits, &envoys, n, false).await?;
    say(format!(
        "b{n} unrouted by {} Envoy(s) {:.0?} after the DNS update; its process keeps running (`dns-add {n}` publishes it again)",
        envoys.len(),
        t0.elapsed()
    ));
    Ok(())
}

fn dns_show(w: &World) -> Result<()> {
    ensure!(
        w.s.dns,
        "DNS discovery is off in this local cluster (--dns false)"
    );
    say(format!("DNS list ({}):", w.dns_list_file().display()));
    for l in w.dns_lines() {
        println!("  {l}");
    }
    need_dns(w)?;
    let out = std::process::Command::new("dig")
        .args(["@127.0.0.1", "-p", &w.s.dns_port.to_string()])
        .args(["+time=1", "+tries=2", "+noall", "+answer", "TXT"])
        .arg(format!("{DNS_TXT_NAME}."))
        .output()
        .context("run dig (bind9-dnsutils)")?;
    ensure!(
        out.status.success(),
        "dig failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer = String::from_utf8_lossy(&out.stdout);
    say(format!("named answers for {DNS_TXT_NAME}. TXT:"));
    if answer.trim().is_empty() {
        println!("  (no TXT record)");
    }
    for l in answer.lines() {
        println!("  {l}");
    }
    Ok(())
}

async fn add_builder(w: &World, waits: &Waits, n: u64) -> Result<()> {
    builder_number(w, n, Kind::Api)?;
    if w.s.dns && w.dns_list()?.contains(&n) {
        bail!(
            "b{n} is in the DNS list (a dns builder); pick another number, or `dns-rm {n}` first"
        );
    }
    if registered_source(w, n).await.as_deref() == Some("dns") {
        bail!("the registry has b{n} from DNS; the API cannot change it; pick another number");
    }
    let cluster = w.cluster()?;
    w.start_builder(n, Kind::Api)?;
    builder_listens(w, n, Kind::Api).await?;
    register(w, &cluster, n).await?;
    routed(w, waits, &running_envoys(w)?, n, true).await?;
    say(format!(
        "b{n} routed; remove it: concord builders rm b{n} (`down` stops its process)"
    ));
    Ok(())
}

fn rotate(w: &World, n: u64) -> Result<()> {
    node_in_range(w, n)?;
    ensure!(w.s.tls, "TLS is off in this local cluster (--tls false)");
    let cluster = w.cluster()?;
    let pki = cluster.pki().context("no certificates")?;
    pki.certs(&["--nodes", &n.to_string()])?;
    say(format!(
        "node {n}: new certificate {}; the node reloads it within a second (its log says \"reloaded TLS certificates\")",
        pki.dir.join(format!("node-{n}.pem")).display()
    ));
    Ok(())
}

fn logs(w: &World, what: &str) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let file = w.log_of(what)?;
    ensure!(file.exists(), "no log yet at {}", file.display());
    let err = std::process::Command::new("tail")
        .args(["-n", "50", "-F"])
        .arg(&file)
        .exec();
    Err(err).context("exec tail")
}

fn reset(w: &World, waits: &Waits) -> Result<()> {
    down(w, waits)?;
    // Only what this tool creates, in case the run directory is shared.
    let ours = |name: &str| {
        name.starts_with("node-")
            || name.starts_with("envoy-")
            || name.starts_with("builder-")
            || matches!(
                name,
                "dns"
                    | "certs"
                    | "admin-tokens"
                    | "admin-token"
                    | "admin-auth-header"
                    | "settings.json"
            )
    };
    for entry in std::fs::read_dir(&w.dir).into_iter().flatten().flatten() {
        if ours(&entry.file_name().to_string_lossy()) {
            let path = entry.path();
            let gone = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            gone.with_context(|| format!("delete {}", path.display()))?;
        }
    }
    let _ = std::fs::remove_dir(&w.dir);
    say(format!(
        "deleted the data, logs, pid files, certificates, tokens and DNS zone in {}",
        w.dir.display()
    ));
    Ok(())
}

/// The last `n` lines of a file, for error messages.
fn tail(path: &std::path::Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    format!(
        "last lines of {}:\n{}",
        path.display(),
        lines[lines.len().saturating_sub(n)..].join("\n")
    )
}
