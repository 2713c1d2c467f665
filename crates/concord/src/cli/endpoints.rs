//! `concord endpoints …`: a service's registered endpoints. `register` is the one command an
//! instance runs to declare itself: it registers, renews the lease until it is stopped, and on
//! SIGTERM or Ctrl-C drains the endpoint (no new requests, in-flight ones finish), waits until
//! the leader has removed it after the service's drain timeout, and exits; a second signal
//! deregisters at once. While draining it never registers again (a lapsed lease during the
//! drain is the removal it waits for).

use super::{Failure, Target};
use clap::{Args, Subcommand};
use concord_api::{Client, EndpointList, RegisterEndpoint, Written};
use concord_registry::services::Duration;
use std::net::SocketAddr;
use std::process::ExitCode;
use tokio::signal::unix::{SignalKind, signal};

/// `concord endpoints`.
#[derive(Args)]
pub struct EndpointsCmd {
    #[command(subcommand)]
    cmd: Sub,
}

#[derive(Subcommand)]
enum Sub {
    /// Register an endpoint and keep its lease until stopped; then drain it and deregister.
    Register {
        /// The service.
        #[arg(long)]
        service: String,
        /// Where the instance serves.
        #[arg(long)]
        addr: SocketAddr,
        /// The lease: the endpoint leaves every Envoy if not renewed within it (renewed every
        /// third of it).
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        ttl: Duration,
        /// The endpoint's id (default: the address).
        #[arg(long)]
        id: Option<String>,
        /// Its load-balancing weight (1-128).
        #[arg(long, default_value_t = 1)]
        weight: u32,
        /// A label, `key=value` (repeatable).
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
    },
    /// List a service's registered endpoints.
    List {
        /// The service.
        service: String,
    },
    /// Drain an endpoint: no new requests; removed after the service's drain timeout.
    Drain {
        /// The service.
        service: String,
        /// The endpoint's id.
        id: String,
    },
    /// Remove an endpoint at once.
    Rm {
        /// The service.
        service: String,
        /// The endpoint's id.
        id: String,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    Duration::parse(s).map_err(|e| e.to_string())
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or("a label is key=value")?;
    Ok((k.to_string(), v.to_string()))
}

fn list(l: &EndpointList) -> String {
    let mut out = format!("service {} at revision {}\n", l.service, l.revision);
    for e in &l.endpoints {
        out += &format!(
            "  {:<24} {:<22} weight {:<3} {}{}\n",
            e.id,
            e.addr,
            e.weight,
            e.ttl
                .map_or("no lease".to_string(), |t| format!("lease {t}")),
            if e.draining { "  draining" } else { "" }
        );
    }
    out
}

impl EndpointsCmd {
    /// Runs the subcommand and returns the process exit code.
    pub async fn run(self, t: &Target) -> ExitCode {
        match self.cmd {
            Sub::List { service } => t.run(async |c| c.endpoints(&service).await, list).await,
            Sub::Drain { service, id } => {
                t.run(
                    async |c| c.drain_endpoint(&service, &id).await,
                    |w: &Written| format!("ok: {id} drains (revision {})\n", w.revision),
                )
                .await
            }
            Sub::Rm { service, id } => {
                t.run(
                    async |c| c.deregister_endpoint(&service, &id).await,
                    |w: &Written| format!("ok: {id} removed (revision {})\n", w.revision),
                )
                .await
            }
            Sub::Register {
                service,
                addr,
                ttl,
                id,
                weight,
                labels,
            } => {
                let body = RegisterEndpoint {
                    addr,
                    weight,
                    ttl: Some(ttl),
                    labels: labels.into_iter().collect(),
                };
                let id = id.unwrap_or_else(|| addr.to_string().replace(['[', ']'], ""));
                let result = match t.client() {
                    Ok(c) => register(t, &c, &service, &id, &body).await,
                    Err(f) => Err(f),
                };
                t.finish(result, |done: &String| done.clone())
            }
        }
    }
}

/// Registers, renews until a signal, drains, waits for the removal.
async fn register(
    t: &Target,
    c: &Client,
    service: &str,
    id: &str,
    body: &RegisterEndpoint,
) -> Result<String, Failure> {
    let fail = |e| t.failure(e);
    let mut term = signal(SignalKind::terminate()).map_err(|e| Failure::usage(e.to_string()))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| Failure::usage(e.to_string()))?;
    let w = c.register_endpoint(service, id, body).await.map_err(fail)?;
    eprintln!(
        "registered {id} ({}) in service {service} at revision {}; renewing every {}ms",
        body.addr,
        w.revision,
        renew_every(body).as_millis()
    );
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = tokio::time::sleep(renew_every(body)) => {}
        }
        renew(c, service, id, body).await;
    }
    // Stopped: drain, keep the lease while in-flight requests finish, leave when removed.
    match c.drain_endpoint(service, id).await {
        Ok(w) => eprintln!("draining {id} (revision {}): no new requests", w.revision),
        Err(e) => eprintln!("concord: draining {id} failed ({e}); deregistering"),
    }
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
        }
        // Renewed while it drains, but never registered again: a 404 is the leader's removal.
        match c.renew_endpoint(service, id).await {
            Err(e) if e.is_not_found() => return Ok(format!("{id} drained and removed\n")),
            Err(e) => eprintln!("concord: renewing {id} failed: {e}"),
            Ok(_) => {}
        }
    }
    c.deregister_endpoint(service, id).await.map_err(fail)?;
    Ok(format!("{id} deregistered\n"))
}

fn renew_every(body: &RegisterEndpoint) -> std::time::Duration {
    body.ttl
        .map_or(std::time::Duration::from_secs(3), |t| t.std() / 3)
}

/// Renews the lease; registers again if it lapsed (the endpoint is unknown). Errors are
/// reported and retried at the next renewal: a lease outlives a few missed ones.
async fn renew(c: &Client, service: &str, id: &str, body: &RegisterEndpoint) {
    match c.renew_endpoint(service, id).await {
        Ok(_) => {}
        Err(e) if e.is_not_found() => {
            eprintln!("concord: the lease of {id} lapsed; registering again");
            if let Err(e) = c.register_endpoint(service, id, body).await {
                eprintln!("concord: registering {id} again failed: {e}");
            }
        }
        Err(e) => eprintln!("concord: renewing {id} failed: {e}"),
    }
}
