//! HTTP backends for the services tests (issue 14): an axum server on loopback that answers
//! every request with what it saw — its instance name, the path, the `Host` and the request's
//! headers — so a test can tell which instance Envoy chose and what Envoy rewrote; and a
//! `/healthz` the test flips to 503, for Envoy's HTTP health checks.

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio_util::sync::CancellationToken;

/// What a backend saw of one request (its answer's body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    /// The instance that answered.
    pub instance: String,
    /// The request's path.
    pub path: String,
    /// Its `Host` header.
    pub host: String,
    /// Its headers (lower-case names; the last value of each).
    pub headers: BTreeMap<String, String>,
}

struct Inner {
    name: String,
    healthy: AtomicBool,
}

/// One running HTTP backend; stopped on drop.
pub struct HttpBackend {
    /// Its instance name.
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    stop: CancellationToken,
}

async fn healthz(State(s): State<Arc<Inner>>) -> StatusCode {
    match s.healthy.load(Ordering::SeqCst) {
        true => StatusCode::OK,
        false => StatusCode::SERVICE_UNAVAILABLE,
    }
}

async fn echo(State(s): State<Arc<Inner>>, req: Request) -> impl IntoResponse {
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| {
            let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
            (k.as_str().to_string(), v)
        })
        .collect::<BTreeMap<_, _>>();
    Json(Seen {
        instance: s.name.clone(),
        path: req.uri().path().to_string(),
        host: headers.get("host").cloned().unwrap_or_default(),
        headers,
    })
}

impl HttpBackend {
    /// Starts instance `name` on a free loopback port, healthy.
    pub async fn start(name: &str) -> Result<HttpBackend> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("bind an HTTP backend")?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            name: name.to_string(),
            healthy: AtomicBool::new(true),
        });
        let app = Router::new()
            .route("/healthz", axum::routing::get(healthz))
            .fallback(echo)
            .with_state(inner.clone());
        let stop = CancellationToken::new();
        let shutdown = stop.clone().cancelled_owned();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await;
        });
        Ok(HttpBackend {
            name: name.to_string(),
            addr,
            inner,
            stop,
        })
    }

    /// Answers `/healthz` with 200 (true) or 503 (false).
    pub fn set_healthy(&self, healthy: bool) {
        self.inner.healthy.store(healthy, Ordering::SeqCst);
    }
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
