//! A demo TLS builder for the local cluster (`concord-local`): listens on an address with a
//! certificate for its SNI name (from a throwaway CA) and greets every TLS connection with
//! `builder <id>`; runs until SIGTERM or Ctrl-C.

use anyhow::Result;
use clap::Parser;
use concord_harness::tls::{TestCa, TlsBuilder};
use std::net::SocketAddr;
use std::path::PathBuf;

/// A TLS server that greets every connection with `builder <ID>`.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// The builder id it greets with.
    id: String,
    /// The SNI name its certificate is for.
    sni: String,
    /// Where it listens.
    listen: SocketAddr,
    /// Write the CA that signed its certificate here (PEM), for clients that verify it.
    #[arg(long)]
    ca_out: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let ca = TestCa::new()?;
    if let Some(path) = &args.ca_out {
        concord_harness::process::write_atomically(path, &ca.pem())?;
    }
    let builder = TlsBuilder::start_on(&ca, &args.id, &args.sni, args.listen).await?;
    println!(
        "demo builder {} ({}) listening on {}",
        args.id, args.sni, builder.addr
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(())
}
