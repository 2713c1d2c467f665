//! The admin HTTP API (JSON), on every replica.
//!
//! | method | path | what |
//! | --- | --- | --- |
//! | GET | `/healthz` | liveness |
//! | GET | `/v1/status` | node id, role, term, leader, log and applied index, revision, members |
//! | GET | `/v1/builders[?consistent=true]` | the registry (linearizable when asked) |
//! | POST | `/v1/builders` | `{"upserts":[{"id":…,"addr":…,"sni":…}],"removes":[…]}` in one entry |
//! | GET | `/v1/builders/{id}[?consistent=true]` | one builder |
//! | PUT | `/v1/builders/{id}` | put a builder (source `api`), answered after commit |
//! | DELETE | `/v1/builders/{id}` | remove a builder, answered after commit |
//! | POST | `/v1/cluster/learners` | `{"node_id":4,"addr":"host:port"}`: add a learner |
//! | POST | `/v1/cluster/voters` | `{"node_id":4}`: promote a learner |
//! | DELETE | `/v1/cluster/members/{id}` | remove a node |
//! | GET | `/v1/discovery` | the DNS poller: who polls, last poll and result, last change, skips |
//! | GET | `/v1/xds/resources` | the listener and clusters this replica serves now, decoded |
//! | GET | `/metrics` | Prometheus metrics: discovery-to-ACK, commit-to-ACK, pushes, polls, … |
//! | GET | `/v1/envoys` | the Envoys streaming from this replica: versions sent and ACKed, NACKs |
//!
//! Writes are accepted on any replica and forwarded to the leader. Errors are
//! `{"error":{"code":…,"message":…}}` with 400 (bad request), 404, 409 (refused by the registry or
//! membership rules), 503 (no leader, no quorum) or 504 (not committed in time).

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use concord_discovery::PollerStatus;
use concord_raft::{ClientError, ClientReply, ClientRequest, Node, NodeId};
use concord_registry::{Batch, Builder, Command, Outcome, Rejection, Source};
use concord_telemetry::trace::Span;
use concord_xds::XdsServer;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    node: Arc<Node>,
    xds: XdsServer,
    discovery: Option<Arc<Mutex<PollerStatus>>>,
}

/// Builds the admin router for `node` and its ADS server.
pub fn router(
    node: Arc<Node>,
    xds: XdsServer,
    discovery: Option<Arc<Mutex<PollerStatus>>>,
    fault_injection: bool,
) -> Router {
    let debug = if fault_injection {
        Router::new().route("/v1/debug/isolate", post(isolate))
    } else {
        Router::new()
    };
    Router::new()
        .merge(debug)
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/v1/status", get(status))
        .route("/v1/builders", get(list_builders).post(batch))
        .route(
            "/v1/builders/{id}",
            get(get_builder).put(put_builder).delete(remove_builder),
        )
        .route("/v1/cluster/learners", post(add_learner))
        .route("/v1/cluster/voters", post(promote))
        .route(
            "/v1/cluster/members/{id}",
            axum::routing::delete(remove_member),
        )
        .route("/v1/envoys", get(envoys))
        .route("/v1/cluster/envoys", get(cluster_envoys))
        .route("/metrics", get(metrics))
        .route("/v1/xds/resources", get(xds_resources))
        .route("/v1/discovery", get(discovery_status))
        .with_state(AppState {
            node,
            xds,
            discovery,
        })
}

/// An API error: HTTP status, a stable code, and a message for people.
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        (self.status, Json(body)).into_response()
    }
}

impl From<ClientError> for ApiError {
    fn from(e: ClientError) -> Self {
        let (status, code) = match &e {
            ClientError::NoLeader { .. } => (StatusCode::SERVICE_UNAVAILABLE, "no_leader"),
            ClientError::NoQuorum { .. } => (StatusCode::SERVICE_UNAVAILABLE, "no_quorum"),
            ClientError::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
            ClientError::LeaderUnreachable { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "leader_unreachable")
            }
            ClientError::Rejected(Rejection::InvalidBuilder(_)) => {
                (StatusCode::BAD_REQUEST, "invalid_builder")
            }
            ClientError::Rejected(_) => (StatusCode::CONFLICT, "rejected"),
            ClientError::Membership(_) => (StatusCode::CONFLICT, "membership"),
            ClientError::NotLeader { .. } => (StatusCode::SERVICE_UNAVAILABLE, "not_leader"),
            ClientError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

fn bad_json(e: JsonRejection) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text())
}

async fn status(State(AppState { node, .. }): State<AppState>) -> Json<concord_raft::Status> {
    Json(node.status())
}

/// What this replica serves Envoys right now (decoded from the encoded resources).
async fn xds_resources(
    State(AppState { node, xds, .. }): State<AppState>,
) -> Json<serde_json::Value> {
    Json(json!({ "node_id": node.id(), "resources": xds.snapshot().dump() }))
}

/// Prometheus text exposition: the counters and histograms, and gauges read now.
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let s = state.node.status();
    let polling = state
        .discovery
        .as_ref()
        .is_some_and(|d| d.lock().unwrap_or_else(|e| e.into_inner()).polling);
    let gauges = [
        (
            "concord_raft_is_leader",
            "1 if this replica is the Raft leader.",
            f64::from(u8::from(s.role == "leader")),
        ),
        ("concord_raft_term", "Current Raft term.", s.term as f64),
        (
            "concord_raft_applied_index",
            "Index of the last applied log entry.",
            s.applied_index.unwrap_or(0) as f64,
        ),
        (
            "concord_registry_revision",
            "Registry revision (log index of its last change).",
            s.revision as f64,
        ),
        (
            "concord_registry_builders",
            "Builders in the registry.",
            s.builders as f64,
        ),
        (
            "concord_xds_connected_envoys",
            "Envoys streaming from this replica.",
            state.xds.envoys().len() as f64,
        ),
        (
            "concord_xds_skipped_builders",
            "Builders the listener mode cannot route to (sni-cluster: SNI outside the suffix).",
            state.xds.snapshot().skipped_count() as f64,
        ),
        (
            "concord_dns_polling",
            "1 if this replica polls DNS (it leads).",
            f64::from(u8::from(polling)),
        ),
    ];
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        concord_telemetry::metrics().render(&gauges),
    )
}

async fn discovery_status(State(state): State<AppState>) -> Json<serde_json::Value> {
    let leader = state.node.status().leader;
    let poller = state
        .discovery
        .as_ref()
        .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).clone());
    let polling = poller.as_ref().is_some_and(|p| p.polling);
    Json(json!({
        "node_id": state.node.id(),
        "enabled": poller.is_some(),
        "leader": leader,
        "polling": polling,
        "note": match (&poller, polling) {
            (None, _) => "DNS discovery is off on this replica (no --dns-server)".to_string(),
            (Some(_), true) => "this replica leads and polls".to_string(),
            (Some(_), false) => match leader {
                Some(l) => format!("node {l} leads and polls; this replica stands by"),
                None => "no leader: nobody polls until one is elected".to_string(),
            },
        },
        "poller": poller,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Isolate {
    isolated: bool,
}

/// Fault injection (only with `--enable-fault-injection`): cut this replica off, or reconnect it.
async fn isolate(
    State(AppState { node, .. }): State<AppState>,
    body: Result<Json<Isolate>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Json(b) = body.map_err(bad_json)?;
    node.isolate(b.isolated);
    Ok(Json(json!({ "isolated": b.isolated })))
}

/// The Envoys streaming from this replica: the body of `/v1/envoys`, and what this replica
/// answers when another asks for cluster-wide status.
pub fn local_envoys(node_id: NodeId, xds: &XdsServer) -> serde_json::Value {
    json!({
        "node_id": node_id,
        "revision": xds.snapshot().revision(),
        "nacks_total": xds.nacks_total(),
        "envoys": xds.envoys(),
    })
}

async fn envoys(State(AppState { node, xds, .. }): State<AppState>) -> Json<serde_json::Value> {
    Json(local_envoys(node.id(), &xds))
}

/// Every Envoy on every member, each with the replica it streams from, like Istio's
/// `proxy-status`: one request to any replica, which asks the others over the peer channel.
/// A member that does not answer is listed with the error, never left out silently.
async fn cluster_envoys(State(AppState { node, .. }): State<AppState>) -> Json<serde_json::Value> {
    let status = node.status();
    let asks = status.members.iter().map(|m| {
        let node = node.clone();
        let id = m.id;
        async move { (id, node.local_status_of(id, Duration::from_secs(2)).await) }
    });
    let answers = futures::future::join_all(asks).await;
    let mut replicas = Vec::new();
    let mut envoys = Vec::new();
    for (id, answer) in answers {
        match answer {
            Ok(v) => {
                for e in v["envoys"].as_array().into_iter().flatten() {
                    let mut e = e.clone();
                    e["replica"] = json!(id);
                    e["replica_revision"] = v["revision"].clone();
                    envoys.push(e);
                }
                replicas.push(json!({
                    "node_id": id,
                    "revision": v["revision"],
                    "nacks_total": v["nacks_total"],
                    "envoys": v["envoys"].as_array().map_or(0, Vec::len),
                }));
            }
            Err(error) => replicas.push(json!({ "node_id": id, "error": error })),
        }
    }
    envoys.sort_by(|a, b| a["node_id"].as_str().cmp(&b["node_id"].as_str()));
    Json(json!({
        "asked": node.id(),
        "revision": status.revision,
        "replicas": replicas,
        "envoys": envoys,
    }))
}

#[derive(Deserialize)]
struct ReadQuery {
    /// Confirm with the leader before reading, so the read reflects every committed write.
    #[serde(default)]
    consistent: bool,
}

#[derive(Serialize)]
struct BuilderList {
    revision: u64,
    builders: Vec<Arc<Builder>>,
}

async fn list_builders(
    State(AppState { node, .. }): State<AppState>,
    Query(q): Query<ReadQuery>,
) -> Result<Json<BuilderList>, ApiError> {
    if q.consistent {
        node.read_barrier().await?;
    }
    let reg = node.registry().borrow().clone();
    Ok(Json(BuilderList {
        revision: reg.revision(),
        builders: reg.iter().cloned().collect(),
    }))
}

async fn get_builder(
    State(AppState { node, .. }): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<ReadQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if q.consistent {
        node.read_barrier().await?;
    }
    let reg = node.registry().borrow().clone();
    match reg.get(&id) {
        Some(b) => Ok(Json(json!({ "revision": reg.revision(), "builder": b }))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no builder {id:?} at revision {}", reg.revision()),
        )),
    }
}

/// The body of a put; the id comes from the path and the source is always `api`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutBuilder {
    addr: SocketAddr,
    sni: String,
    #[serde(default)]
    region: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Serialize)]
struct WriteResult {
    revision: u64,
    changed: bool,
    log_index: u64,
}

async fn write(node: &Node, batch: Batch) -> Result<Json<WriteResult>, ApiError> {
    let mut root = Span::root("api.change", std::time::SystemTime::now());
    if root.is_recording() {
        root.set("builders.upserts", batch.upserts.len() as i64);
        root.set("builders.removes", batch.removes.len() as i64);
    }
    let mut cmd = Command::new(Source::Api, batch);
    // When the change was asked for: the start of its discovery-to-ACK time.
    cmd.set_seen_at_us(concord_telemetry::unix_micros());
    // An API change starts a trace as a poll that found a change does; the proposal (forwarded
    // to the leader if need be) is its child.
    let mut span = root.child("raft.propose");
    span.inject(&mut cmd.trace);
    let result = node.execute(ClientRequest::Write(cmd)).await;
    match &result {
        Ok(ClientReply::Written {
            outcome: Outcome::Applied { revision, .. },
            ..
        }) => {
            span.set("registry.revision", *revision as i64);
            span.ok();
            root.ok();
        }
        Ok(_) => {}
        Err(e) => {
            span.fail(e.to_string());
            root.fail(e.to_string());
        }
    }
    match result? {
        ClientReply::Written {
            log_index,
            outcome: Outcome::Applied { revision, changed },
        } => Ok(Json(WriteResult {
            revision,
            changed,
            log_index,
        })),
        other => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("unexpected reply {other:?}"),
        )),
    }
}

/// A builder of source `api`, validated before it costs a log entry.
fn api_builder(id: String, p: PutBuilder) -> Result<Builder, ApiError> {
    let b = Builder {
        id,
        addr: p.addr,
        sni: p.sni,
        region: p.region,
        labels: p.labels,
        source: Source::Api,
    };
    b.validate()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_builder", e.to_string()))?;
    Ok(b)
}

async fn put_builder(
    State(AppState { node, .. }): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<PutBuilder>, JsonRejection>,
) -> Result<Json<WriteResult>, ApiError> {
    let Json(p) = body.map_err(bad_json)?;
    let b = api_builder(id, p)?;
    write(
        &node,
        Batch {
            upserts: vec![b],
            removes: vec![],
        },
    )
    .await
}

async fn remove_builder(
    State(AppState { node, .. }): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<WriteResult>, ApiError> {
    write(
        &node,
        Batch {
            upserts: vec![],
            removes: vec![id],
        },
    )
    .await
}

/// One builder of a batch: a put body with its id. (The fields are spelled out again because
/// serde cannot `flatten` together with `deny_unknown_fields`.)
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBuilder {
    id: String,
    addr: SocketAddr,
    sni: String,
    #[serde(default)]
    region: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    #[serde(default)]
    upserts: Vec<BatchBuilder>,
    #[serde(default)]
    removes: Vec<String>,
}

/// Puts and removes many builders in one log entry: all or nothing.
async fn batch(
    State(AppState { node, .. }): State<AppState>,
    body: Result<Json<BatchBody>, JsonRejection>,
) -> Result<Json<WriteResult>, ApiError> {
    let Json(body) = body.map_err(bad_json)?;
    let upserts = body
        .upserts
        .into_iter()
        .map(|b| {
            let spec = PutBuilder {
                addr: b.addr,
                sni: b.sni,
                region: b.region,
                labels: b.labels,
            };
            api_builder(b.id, spec)
        })
        .collect::<Result<Vec<_>, _>>()?;
    write(
        &node,
        Batch {
            upserts,
            removes: body.removes,
        },
    )
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddLearner {
    node_id: NodeId,
    addr: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Promote {
    node_id: NodeId,
}

async fn membership(node: &Node, req: ClientRequest) -> Result<Json<serde_json::Value>, ApiError> {
    match node.execute(req).await? {
        ClientReply::Membership { log_index } => Ok(Json(json!({ "log_index": log_index }))),
        other => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("unexpected reply {other:?}"),
        )),
    }
}

async fn add_learner(
    State(AppState { node, .. }): State<AppState>,
    body: Result<Json<AddLearner>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Json(a) = body.map_err(bad_json)?;
    if a.node_id == 0
        || a.addr
            .rsplit_once(':')
            .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!(
                "node id must be 1 or more and addr host:port (got {} and {:?})",
                a.node_id, a.addr
            ),
        ));
    }
    membership(
        &node,
        ClientRequest::AddLearner {
            node_id: a.node_id,
            addr: a.addr,
        },
    )
    .await
}

async fn promote(
    State(AppState { node, .. }): State<AppState>,
    body: Result<Json<Promote>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Json(p) = body.map_err(bad_json)?;
    membership(&node, ClientRequest::Promote { node_id: p.node_id }).await
}

async fn remove_member(
    State(AppState { node, .. }): State<AppState>,
    Path(id): Path<NodeId>,
) -> Result<Json<serde_json::Value>, ApiError> {
    membership(&node, ClientRequest::Remove { node_id: id }).await
}
