//! `concord-local`: a concord cluster on this machine's loopback interface, with a local BIND 9
//! the leader polls for builders, real Envoys streaming from the cluster and demo TLS builders
//! behind them — for development and for watching leader, DNS and Envoy failover by hand.
//!
//! Every part is the test harness's ([`concord_harness`]) with fixed ports, a run directory that
//! outlives the tool, and processes detached from it; each command finds the running parts again
//! from their pid files. `deploy/local/concord-local` builds it and runs it.

mod commands;
mod settings;
mod world;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use settings::{Settings, Waits};
use std::path::PathBuf;
use std::process::ExitCode;

/// Run a local concord cluster: replicas, DNS (BIND 9), Envoys and demo TLS builders on 127.0.0.1.
///
/// Node N listens for peers on 127.0.0.1:<peer-base+N>, serves its admin API on
/// <admin-base+N> and Envoy ADS on <xds-base+N>. envoy-N streams from node N first, serves its
/// admin on <envoy-admin-base+N> and the builders' TLS listener on <envoy-listener-base+N>.
/// Demo builder bN answers SNI bN.<builder-domain> on 127.0.0.<10+N>:<dns-builder-port> (DNS
/// builders) or on 127.0.0.1:<builder-base+N> (api builders). The first `up` saves the settings
/// in the run directory; later commands use them (`reset` to change them).
#[derive(Parser)]
#[command(version, about, long_about, name = "concord-local")]
struct Cli {
    /// Data, logs, pid files, certificates, tokens and the DNS zone of the local cluster.
    #[arg(long, env = "CONCORD_LOCAL_RUN_DIR", global = true)]
    run_dir: Option<PathBuf>,
    #[command(flatten)]
    settings: Settings,
    #[command(flatten)]
    waits: Waits,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start what is not running — named, the nodes (waits for a leader), the demo builders in
    /// the DNS list (b1..bB on the first `up`) and any api builder, the Envoys, the demo gRPC
    /// service — publish the DNS list, wait until every Envoy routes every builder and the gRPC
    /// service, and show the cluster.
    ///
    /// The demo gRPC service `echo` (concord.echo.v1.Echo) runs two instances, g1 and g2, on
    /// 127.0.0.1:<envoy-listener-base+200+N>, each declared by its own `concord endpoints
    /// register` process (a 5 s lease); envoy-N routes it by `:authority` echo.local on
    /// 127.0.0.1:<envoy-listener-base+80+N>, with gRPC health checks. To watch one instance
    /// drain: `demo-grpc call 127.0.0.1:10081 -n 20` (g1 and g2 answer), `grpc-drain 1`
    /// (g1's registrar gets SIGTERM: the endpoint drains, no new calls reach g1 while calls in
    /// flight finish, and it is removed after the 5 s drain timeout), the same call again (g2
    /// only), `grpc-start 1` to bring it back.
    Up,
    /// Whether named, each node, Envoy and builder runs, and what each node says.
    Status,
    /// Stop the Envoys and builders, then the nodes, then named (SIGTERM, then SIGKILL after
    /// --stop-timeout). Data and DNS changes are kept.
    #[command(alias = "stop")]
    Down,
    /// SIGKILL node N (its Envoys move to another node; if it led, a new leader polls DNS).
    Kill {
        /// Node id.
        n: u64,
    },
    /// SIGKILL the node that leads now.
    KillLeader,
    /// Start node N again and wait until its admin API answers.
    Start {
        /// Node id.
        n: u64,
    },
    /// Start demo builder bN on its DNS address, publish it in the TXT record and wait until
    /// every Envoy routes it.
    DnsAdd {
        /// Builder number (1..244).
        n: u64,
    },
    /// Remove bN from the TXT record and wait until no Envoy routes it (the process keeps
    /// running; `down` stops it).
    DnsRm {
        /// Builder number.
        n: u64,
    },
    /// The DNS list and what named answers for the TXT record.
    DnsShow,
    /// Start demo builder bN as an api builder (127.0.0.1:<builder-base+N>), register it with the
    /// admin API and wait until every Envoy routes it.
    AddBuilder {
        /// Builder number (not one in the DNS list).
        n: u64,
    },
    /// Issue node N a new certificate from the local CA; the node reloads it within a second.
    Rotate {
        /// Node id.
        n: u64,
    },
    /// Follow a log: node N, envoy-N, bN or named (tail -F).
    Logs {
        /// N, envoy-N, bN or named.
        what: String,
    },
    /// `down`, then delete the run directory's data, logs, certificates, tokens and DNS zone.
    Reset,
    /// Stop gRPC instance gN as its supervisor would: SIGTERM to its registrar, which drains
    /// the endpoint and exits once it is removed; then the instance.
    GrpcDrain {
        /// Instance number (1 or 2).
        n: u64,
    },
    /// Start gRPC instance gN and its registrar again.
    GrpcStart {
        /// Instance number (1 or 2).
        n: u64,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let dir = cli
        .run_dir
        .clone()
        .unwrap_or_else(settings::default_run_dir);
    let dir = std::path::absolute(&dir).unwrap_or(dir);
    let save = matches!(cli.command, Cmd::Up);
    let s = match Settings::resolve(cli.settings.clone(), &matches, &dir, save) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("concord-local: {e:#}");
            return ExitCode::from(2);
        }
    };
    let world = world::World { s, dir };
    match commands::run(&world, &cli.waits, cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("concord-local: {e:#}");
            ExitCode::FAILURE
        }
    }
}
