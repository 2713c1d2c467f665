//! A demo TLS builder for `deploy/local`: listens on an address with a certificate for its SNI
//! name (from a throwaway CA) and greets every TLS connection with `builder <id>`.
//!
//! `demo-builder <ID> <SNI> <LISTEN-ADDR>`; runs until killed.

use anyhow::{Context, Result};
use concord_harness::tls::{TestCa, TlsBuilder};

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: demo-builder <ID> <SNI> <LISTEN-ADDR>";
    let id = args.next().context(usage)?;
    let sni = args.next().context(usage)?;
    let listen: std::net::SocketAddr = args.next().context(usage)?.parse().context(usage)?;
    let ca = TestCa::new()?;
    let builder = TlsBuilder::start_on(&ca, &id, &sni, listen).await?;
    println!("demo builder {id} ({sni}) listening on {}", builder.addr);
    tokio::signal::ctrl_c().await?;
    Ok(())
}
