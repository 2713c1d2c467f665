//! concord: a replicated control plane for Envoy. One binary: `concord serve` runs a replica;
//! the other subcommands are the operator's client of a replica's admin API.

mod admin;
mod auth;
mod certs;
mod cli;
mod config;
mod desired;
mod serve;
mod ui;

use clap::{Parser, Subcommand, ValueEnum};
use std::io::IsTerminal;
use std::process::ExitCode;

/// A replicated control plane for Envoy: replicas agree on a registry of builders through Raft.
///
/// Run three replicas with `concord serve --node-id 1|2|3` (the defaults form a local cluster on
/// 127.0.0.1), then manage it with the `cluster` and `builders` subcommands.
///
/// Exit codes of the client subcommands: 0 done; 1 refused (bad input, conflict, not found, token
/// refused);
/// 2 usage error; 3 replica unreachable; 4 cluster unavailable (no leader, no quorum, timeout).
#[derive(Parser)]
#[command(name = "concord", version, propagate_version = true)]
struct Cli {
    /// Log format.
    #[arg(
        long,
        global = true,
        env = "CONCORD_LOG_FORMAT",
        default_value = "human"
    )]
    log_format: LogFormat,

    #[command(flatten)]
    target: cli::Target,

    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object a line.
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a replica.
    Serve(Box<config::ServeArgs>),
    /// Inspect and change the cluster's membership.
    Cluster(cli::ClusterCmd),
    /// List, put and remove builders.
    Builders(cli::BuildersCmd),
    /// Show the Envoys streaming from a replica (or, with --all, from every replica): versions
    /// sent and ACKed, in sync or not, NACKs.
    Envoys(cli::EnvoysArgs),
    /// Set the services, route tables and listeners to those of a YAML file, in one change.
    ///
    /// The file is validated first, and a bad one is refused naming its line and field; then the
    /// changes are printed and applied as one Raft entry. Everything the file does not hold is
    /// removed. See deploy/examples/grpc-shop.yaml.
    Apply(cli::ApplyArgs),
    /// Show what `apply -f FILE` would change: `+ added`, `- removed`, `~ changed: before → after`.
    Diff(cli::DiffArgs),
    /// Print the services, route tables or listeners the cluster holds (`all`: a whole file).
    Get(cli::GetArgs),
    /// Register, list, drain and remove a service's endpoints; `register` keeps an instance's
    /// lease until it stops, then drains it.
    Endpoints(cli::EndpointsCmd),
    /// Release rollouts: move a service's traffic from one version of its endpoints to another
    /// in steps judged on Envoy's own error rates, rolled back at once when the new version
    /// fails (`start`, `status`, `pause`, `resume`, `abort`).
    Rollout(cli::RolloutCmd),
    /// Config canaries: what `apply --canary` staged to a group of Envoys, how the last stage
    /// ended (a NACK's message), and an operator's `promote` or `abort`.
    Canary(cli::CanaryCmd),
    /// Add, rotate, list and remove the certificates listeners terminate TLS with (keys are
    /// write-only).
    Certificates(cli::CertificatesCmd),
    /// Write the Envoy resources a desired-state file makes into a bootstrap for `envoy --mode
    /// validate` (offline: no replica is asked).
    Render(cli::RenderArgs),
    /// Show DNS discovery: who polls, the last poll and its result, the last change, skips.
    Discovery,
    /// Print the URL of the replica's live status page (with the token, when one is given):
    /// members, Envoys, recent changes and their ACK times, the DNS poller.
    Ui,
    /// Print an Envoy bootstrap (YAML) that streams from every replica.
    EnvoyBootstrap(Box<cli::BootstrapArgs>),
    /// Write a development CA and node (and Envoy) certificates for a local cluster.
    ///
    /// Files in DIR: ca.pem and ca-key.pem (the CA; reused when present, created otherwise),
    /// node-<id>.pem and node-<id>-key.pem for each --nodes id, envoy-<id>.pem and envoy-<id>-key.pem
    /// for each --envoys id. A node certificate names its node by the URI SAN
    /// spiffe://concord/<cluster>/node/<id> (what peers check) and carries localhost, 127.0.0.1,
    /// ::1 and --san; an Envoy's names it by spiffe://concord/<cluster>/envoy/<id>.
    /// Certificates for the ids given are (re)issued every time: running it
    /// again for one node rotates that node's certificate (the replica reloads it within a second).
    ///
    /// Use them as `concord serve --tls-ca DIR/ca.pem --tls-cert DIR/node-<id>.pem --tls-key
    /// DIR/node-<id>-key.pem` and `concord envoy-bootstrap --tls-ca DIR/ca.pem [--tls-cert
    /// DIR/envoy-<id>.pem --tls-key DIR/envoy-<id>-key.pem]`. For development only: the CA key sits
    /// next to the certificates.
    Certs(certs::CertsArgs),
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,openraft=warn,sled=warn,h2=warn,tower=warn"));
    // Colour only on a terminal: log files and the journal get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match cli.command {
        Command::Serve(args) => {
            let config = match args.resolve() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("concord: invalid configuration: {e:#}");
                    return ExitCode::from(2);
                }
            };
            init_logging(cli.log_format);
            match runtime.block_on(serve::run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("concord: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Cluster(cmd) => runtime.block_on(cmd.run(&cli.target)),
        Command::Builders(cmd) => runtime.block_on(cmd.run(&cli.target)),
        Command::Envoys(args) => runtime.block_on(args.run(&cli.target)),
        Command::Discovery => runtime.block_on(cli::discovery(&cli.target)),
        Command::Ui => runtime.block_on(cli::ui(&cli.target)),
        Command::Apply(args) => runtime.block_on(args.run(&cli.target)),
        Command::Diff(args) => runtime.block_on(args.run(&cli.target)),
        Command::Get(args) => runtime.block_on(args.run(&cli.target)),
        Command::Render(args) => args.run(),
        Command::Endpoints(cmd) => runtime.block_on(cmd.run(&cli.target)),
        Command::Rollout(cmd) => runtime.block_on(cmd.run(&cli.target)),
        Command::Canary(cmd) => runtime.block_on(cmd.run(&cli.target)),
        Command::Certificates(cmd) => runtime.block_on(cmd.run(&cli.target)),
        Command::EnvoyBootstrap(args) => args.run(),
        Command::Certs(args) => args.run(),
    }
}
