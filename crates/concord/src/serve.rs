//! `concord serve`: parse config → start Raft and the admin API → wait for SIGTERM or Ctrl-C →
//! drain with a grace timeout.

use crate::admin;
use crate::config::ServeConfig;
use anyhow::{Context, Result};
use concord_raft::Node;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long shutdown may take before the process exits anyway.
const GRACE: Duration = Duration::from_secs(10);

/// Runs one replica until it is told to stop.
pub async fn run(config: ServeConfig) -> Result<()> {
    let shutdown = CancellationToken::new();
    let node_id = config.node.node_id;
    tracing::info!(
        node_id,
        cluster = %config.node.cluster,
        peer_addr = %config.node.listen_addr,
        admin_addr = %config.admin_addr,
        data_dir = %config.node.data_dir.display(),
        "starting concord"
    );
    // Bind the admin port first: a port clash is reported before the data dir is touched.
    let admin_listener = tokio::net::TcpListener::bind(config.admin_addr)
        .await
        .with_context(|| format!("cannot listen for the admin API on {}", config.admin_addr))?;
    let (node, peer_server) = Node::start(config.node, shutdown.child_token()).await?;

    let admin = axum::serve(admin_listener, admin::router(node.clone()))
        .with_graceful_shutdown(shutdown.child_token().cancelled_owned());
    let admin = tokio::spawn(async move {
        if let Err(error) = admin.await {
            tracing::error!(%error, "admin API failed");
        }
    });
    tracing::info!(node_id, "ready");

    wait_for_signal().await;
    tracing::info!(node_id, "shutting down");
    shutdown.cancel();
    let drain = async {
        node.shutdown().await;
        let _ = peer_server.await;
        let _ = admin.await;
    };
    if tokio::time::timeout(GRACE, drain).await.is_err() {
        tracing::warn!("shutdown took longer than {GRACE:?}; exiting anyway");
    }
    tracing::info!(node_id, "stopped");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
