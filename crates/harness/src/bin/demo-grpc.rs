//! `demo-grpc`: the local cluster's small gRPC service. `serve NAME ADDR` runs one instance of
//! `concord.echo.v1.Echo` (answers name the instance) with the standard gRPC health service
//! until SIGTERM or Ctrl-C; `call ADDR --authority A` calls it through an Envoy and prints who
//! answered.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use concord_harness::grpc::proto::SayRequest;
use concord_harness::grpc::{GrpcBackend, echo_client};
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// The local cluster's demo gRPC service (concord.echo.v1.Echo).
#[derive(Parser)]
#[command(name = "demo-grpc")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run instance NAME on ADDR until SIGTERM or Ctrl-C.
    Serve {
        /// The instance name every answer carries.
        name: String,
        /// Where to listen (IP:PORT).
        addr: SocketAddr,
    },
    /// Call the service at ADDR (an Envoy listener) and print which instance answered.
    Call {
        /// Where to send the calls.
        addr: SocketAddr,
        /// The `:authority` to send.
        #[arg(long, default_value = "echo.local")]
        authority: String,
        /// How many calls.
        #[arg(short = 'n', long, default_value_t = 10)]
        count: usize,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    match Args::parse().cmd {
        Cmd::Serve { name, addr } => {
            let backend = GrpcBackend::start_on(&name, addr).await?;
            eprintln!(
                "{name}: serving concord.echo.v1.Echo and grpc.health.v1 on {}",
                backend.addr
            );
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            eprintln!("{name}: stopping");
            Ok(())
        }
        Cmd::Call {
            addr,
            authority,
            count,
        } => {
            let mut client = echo_client(addr, &authority).await?;
            let mut seen: BTreeMap<String, usize> = BTreeMap::new();
            for i in 0..count {
                let r = client
                    .say(SayRequest {
                        message: format!("call {i}"),
                        delay_ms: 0,
                    })
                    .await
                    .with_context(|| format!("call {i} through {addr} ({authority})"))?;
                *seen.entry(r.into_inner().instance).or_default() += 1;
            }
            for (instance, n) in seen {
                println!("{instance}: {n}");
            }
            Ok(())
        }
    }
}
