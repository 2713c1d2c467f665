//! Admin API settings: where it listens, its tokens, and the fault-injection endpoint.

use crate::auth::Tokens;
use anyhow::{Result, bail};
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;

/// The admin HTTP API.
#[derive(Debug, Clone, PartialEq, Args)]
#[command(next_help_heading = "Admin API")]
pub struct AdminArgs {
    /// Address of the admin HTTP API. A non-loopback address needs --admin-token-file (or
    /// --insecure-admin). [default: 127.0.0.1:<8100+id>]
    #[arg(long, env = "CONCORD_ADMIN_ADDR", value_name = "IP:PORT")]
    pub admin_addr: Option<SocketAddr>,

    /// File of admin API tokens, one `read <token>` or `write <token>` a line (write implies
    /// read; `#` comments). With it, every admin request but /healthz needs `Authorization:
    /// Bearer <token>`. Re-read when it changes.
    #[arg(long, env = "CONCORD_ADMIN_TOKEN_FILE", value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// Serve the admin API on a non-loopback address without tokens: anyone who reaches it may
    /// change the registry. Logs a warning.
    #[arg(long, env = "CONCORD_INSECURE_ADMIN")]
    pub insecure_admin: bool,

    /// Allow `POST /v1/debug/isolate` on the admin API, which cuts this replica off from its
    /// peers and Envoys as a network partition would. For chaos tests; never in production.
    #[arg(long, env = "CONCORD_ENABLE_FAULT_INJECTION")]
    pub enable_fault_injection: bool,
}

impl AdminArgs {
    /// The tokens (loaded, so a malformed file is refused now), checked against the address:
    /// off loopback, no tokens needs --insecure-admin.
    pub fn tokens(&self, admin_addr: SocketAddr) -> Result<Option<(PathBuf, Tokens)>> {
        let tokens = match &self.admin_token_file {
            Some(path) => Some((
                path.clone(),
                Tokens::load(path).map_err(anyhow::Error::msg)?,
            )),
            None => None,
        };
        if tokens.is_none() && !admin_addr.ip().is_loopback() && !self.insecure_admin {
            bail!(
                "refusing to serve the admin API on {admin_addr} without tokens: anyone who \
                 reaches it could change the registry; set --admin-token-file, or \
                 --insecure-admin to accept that"
            );
        }
        Ok(tokens)
    }
}
