//! The admin HTTP API (JSON), on every replica.
//!
//! | method | path | what |
//! | --- | --- | --- |
//! | GET | `/healthz` | liveness |
//! | GET | `/readyz` | readiness: 200 while this replica serves Envoys (in contact with the quorum, caught up), else 503 and why |
//! | GET | `/v1/status` | node id, role, term, leader, log and applied index, revision, members |
//! | GET | `/v1/builders[?consistent=true]` | the registry (linearizable when asked) |
//! | POST | `/v1/builders` | `{"upserts":[{"id":…,"addr":…,"sni":…}],"removes":[…]}` in one entry |
//! | GET | `/v1/builders/{id}[?consistent=true]` | one builder |
//! | PUT | `/v1/builders/{id}` | put a builder (source `api`), answered after commit |
//! | DELETE | `/v1/builders/{id}` | remove a builder, answered after commit |
//! | POST | `/v1/cluster/learners` | `{"node_id":4,"addr":"host:port"}`: add a learner |
//! | POST | `/v1/cluster/voters` | `{"node_id":4}`: promote a learner |
//! | DELETE | `/v1/cluster/members/{id}` | remove a node |
//! | GET | `/v1/config` | the services half's desired state: services, route tables, listeners |
//! | PUT | `/v1/config` | set it as a whole (`concord apply`), validated first, in one entry |
//! | GET | `/v1/services/{svc}/endpoints` | a service's registered endpoints |
//! | PUT | `/v1/services/{svc}/endpoints/{id}` | `{"addr":…,"ttl":"10s"}`: register (grants the lease) |
//! | POST | `/v1/services/{svc}/endpoints/{id}/renew` | renew the lease (on the leader; no log entry) |
//! | POST | `/v1/services/{svc}/endpoints/{id}/drain` | no new requests; removed after the drain timeout |
//! | DELETE | `/v1/services/{svc}/endpoints/{id}` | deregister |
//! | GET | `/v1/certificates` | certificates for TLS termination: names, DNS names, expiry (never a key) |
//! | PUT | `/v1/certificates/{name}` | `{"cert_pem":…,"key_pem":…}`: add or rotate (the key must match) |
//! | DELETE | `/v1/certificates/{name}` | remove (refused while a listener uses it) |
//! | PUT | `/v1/config/stage` | `{"config":…,"group":["cluster=canary"],"hold":"30s"}`: a config canary: the group first, the rest once the group holds it |
//! | GET | `/v1/config/stage` | what is staged, and how the last stage ended |
//! | POST | `/v1/config/stage/promote`, `…/abort` | an operator's act on it |
//! | GET | `/v1/rollouts` | release rollouts: phase, step, weight, history, and the leader's judgement of running steps |
//! | GET | `/v1/rollouts/{svc}` | one |
//! | POST | `/v1/rollouts` | `{"service":…,"from":"v1","to":"v2"}` (steps, interval, max_error_increase, min_requests): start one |
//! | POST | `/v1/rollouts/{svc}/pause`, `…/resume`, `…/abort` | an operator's act on a rollout |
//! | GET | `/v1/discovery` | the DNS poller: who polls, last poll and result, last change, skips |
//! | GET | `/v1/xds/resources` | the listener and clusters this replica serves now, decoded |
//! | GET | `/metrics` | Prometheus metrics: discovery-to-ACK, commit-to-ACK, pushes, polls, … |
//! | GET | `/v1/envoys` | the Envoys streaming from this replica: versions sent and ACKed, NACKs |
//! | GET | `/v1/envoys/stats` | what this replica's Envoys streamed of their stats: per service cluster requests, errors, request times (rollouts are judged on their sum over replicas) |
//! | GET | `/v1/cluster/envoys` | every member's Envoys, asked over the peer channel (`proxy-status`) |
//! | POST | `/v1/debug/hold-forward-replies` | `{"count":1,"hold_ms":6000}`: the next writes forwarded here are answered late, as if the answer were lost (fault injection, with `--enable-fault-injection` only) |
//! | POST | `/v1/debug/isolate` | `{"isolated":true}` (from every peer, or `"from":[3,4]` only those): fault injection, with `--enable-fault-injection` only |
//! | GET | `/ui`, `/ui/events`, `/ui/state` | the live status page: see [`crate::ui`] |
//!
//! With an admin token file every request but `/healthz` and `/readyz` needs a bearer token, read (GET) or
//! write (everything else): see [`crate::auth`].
//!
//! Writes are accepted on any replica and forwarded to the leader. Errors are
//! `{"error":{"code":…,"message":…}}` with 400 (bad request), 404, 409 (refused by the registry or
//! membership rules), 503 (no leader, no quorum) or 504 (not committed in time).
//!
//! Every body, asked for or answered, is a type of `concord_api` (the contract the typed client
//! and the contract tests share); this module turns the daemon's own state into those types.

use crate::auth::{self, Auth};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use concord_api::view::{ChangeAcks, MAX_CHANGES, ReplicaReport};
use concord_api::{
    AddLearner, BatchBody, BuilderList, ClusterEnvoys, DiscoveryStatus, ErrorBody, ErrorCode,
    Isolate, Isolated, LocalEnvoys, MembershipChanged, OneBuilder, Promote, PutBuilder,
    RequestError, Written, XdsResources,
};
use concord_discovery::PollerStatus;
use concord_raft::{ClientError, ClientReply, ClientRequest, Node, NodeId};
use concord_registry::{Batch, Command, Outcome, Rejection, Source};
use concord_telemetry::trace::Span;
use concord_xds::XdsServer;
use serde::Deserialize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod rollouts;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    node: Arc<Node>,
    xds: XdsServer,
    discovery: Option<Arc<Mutex<PollerStatus>>>,
    stale_after: Duration,
}

/// The admin API's settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// Serve `POST /v1/debug/isolate`.
    pub fault_injection: bool,
    /// How long out of contact with the quorum makes the replica stale (`/readyz` says why).
    pub stale_after: Duration,
    /// Cancelled when the replica shuts down: ends the status page's event streams.
    pub shutdown: tokio_util::sync::CancellationToken,
}

/// Builds the admin router for `node` and its ADS server, behind `auth`.
pub fn router(
    node: Arc<Node>,
    xds: XdsServer,
    discovery: Option<Arc<Mutex<PollerStatus>>>,
    options: Options,
    auth: Auth,
) -> Router {
    let debug = if options.fault_injection {
        Router::new()
            .route("/v1/debug/isolate", post(isolate))
            .route("/v1/debug/hold-forward-replies", post(hold_forward_replies))
    } else {
        Router::new()
    };
    let ui_node = node.clone();
    Router::new()
        .merge(debug)
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/v1/status", get(status))
        .route("/v1/builders", get(list_builders).post(batch))
        .route(
            "/v1/builders/{id}",
            get(get_builder).put(put_builder).delete(remove_builder),
        )
        .route(
            "/v1/config",
            get(get_config)
                .put(put_config)
                .layer(axum::extract::DefaultBodyLimit::max(
                    concord_api::MAX_CONFIG_BYTES,
                )),
        )
        .route("/v1/services/{service}/endpoints", get(list_endpoints))
        .route(
            "/v1/services/{service}/endpoints/{id}",
            axum::routing::put(register_endpoint).delete(deregister_endpoint),
        )
        .route(
            "/v1/services/{service}/endpoints/{id}/renew",
            post(renew_endpoint),
        )
        .route(
            "/v1/services/{service}/endpoints/{id}/drain",
            post(drain_endpoint),
        )
        .route("/v1/certificates", get(list_certificates))
        .route(
            "/v1/certificates/{name}",
            axum::routing::put(put_certificate).delete(remove_certificate),
        )
        .route("/v1/cluster/learners", post(add_learner))
        .route("/v1/cluster/voters", post(promote))
        .route(
            "/v1/cluster/members/{id}",
            axum::routing::delete(remove_member),
        )
        .route("/v1/envoys", get(envoys))
        .route("/v1/envoys/stats", get(envoy_stats))
        .route("/v1/cluster/envoys", get(cluster_envoys))
        .route("/metrics", get(metrics))
        .route("/v1/xds/resources", get(xds_resources))
        .route("/v1/discovery", get(discovery_status))
        .merge(rollouts::routes())
        .fallback(unknown_path)
        .with_state(AppState {
            node,
            xds,
            discovery,
            stale_after: options.stale_after,
        })
        .merge(crate::ui::router(ui_node, options.shutdown))
        .layer(axum::middleware::from_fn_with_state(
            auth,
            auth::require_token,
        ))
}

/// An API error: HTTP status, a stable code, and a message for people.
pub struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(ErrorBody::new(self.code, self.message))).into_response()
    }
}

impl From<ClientError> for ApiError {
    fn from(e: ClientError) -> Self {
        let (status, code) = match &e {
            ClientError::NoLeader { .. } => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::NoLeader),
            ClientError::NoQuorum { .. } => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::NoQuorum),
            ClientError::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, ErrorCode::Timeout),
            ClientError::LeaderUnreachable { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::LeaderUnreachable,
            ),
            ClientError::Rejected(Rejection::InvalidBuilder { .. }) => {
                (StatusCode::BAD_REQUEST, ErrorCode::InvalidBuilder)
            }
            ClientError::Rejected(Rejection::InvalidServices { .. }) => {
                (StatusCode::BAD_REQUEST, ErrorCode::InvalidServices)
            }
            ClientError::Rejected(
                Rejection::UnknownEndpoint { .. }
                | Rejection::UnknownService { .. }
                | Rejection::NoRollout { .. },
            ) => (StatusCode::NOT_FOUND, ErrorCode::NotFound),
            ClientError::Rejected(Rejection::NoStage) => {
                (StatusCode::NOT_FOUND, ErrorCode::NotFound)
            }
            ClientError::Rejected(
                Rejection::InvalidRollout { .. } | Rejection::InvalidStage { .. },
            ) => (StatusCode::BAD_REQUEST, ErrorCode::BadRequest),
            ClientError::Rejected(
                Rejection::InvalidEndpoint { .. } | Rejection::InvalidCertificateName { .. },
            ) => (StatusCode::BAD_REQUEST, ErrorCode::BadRequest),
            ClientError::Rejected(_) => (StatusCode::CONFLICT, ErrorCode::Rejected),
            ClientError::Membership(_) => (StatusCode::CONFLICT, ErrorCode::Membership),
            ClientError::NotLeader { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::NotLeader)
            }
            ClientError::Unavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable)
            }
            ClientError::NotFound(_) => (StatusCode::NOT_FOUND, ErrorCode::NotFound),
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> Self {
        let code = match e {
            RequestError::InvalidBuilder(_) => ErrorCode::InvalidBuilder,
            RequestError::Malformed(_) | RequestError::Invalid(_) => ErrorCode::BadRequest,
        };
        ApiError::new(StatusCode::BAD_REQUEST, code, e.to_string())
    }
}

fn bad_json(e: JsonRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::TooLarge,
            format!(
                "the body is larger than the {} bytes this endpoint takes",
                concord_api::MAX_CONFIG_BYTES
            ),
        );
    }
    ApiError::new(
        StatusCode::BAD_REQUEST,
        ErrorCode::BadRequest,
        e.body_text(),
    )
}

async fn list_endpoints(
    State(AppState { node, .. }): State<AppState>,
    Path(service): Path<String>,
) -> Result<Json<concord_api::EndpointList>, ApiError> {
    let registry = node.registry().borrow().clone();
    if !registry.desired().services.contains_key(&service) {
        return Err(ClientError::Rejected(Rejection::UnknownService { service }).into());
    }
    Ok(Json(concord_api::EndpointList {
        revision: registry.revision(),
        endpoints: registry
            .endpoints_of(&service)
            .map(|e| concord_registry::services::Endpoint::clone(e))
            .collect(),
        service,
    }))
}

async fn register_endpoint(
    State(AppState { node, .. }): State<AppState>,
    Path((service, id)): Path<(String, String)>,
    body: Result<Json<concord_api::RegisterEndpoint>, JsonRejection>,
) -> Result<Json<Written>, ApiError> {
    let Json(r) = body.map_err(bad_json)?;
    let change = concord_registry::services::EndpointChange::Register {
        service,
        id,
        addr: r.addr,
        weight: r.weight,
        labels: r.labels,
        ttl: r.ttl,
    };
    write_endpoint(&node, change).await
}

async fn deregister_endpoint(
    State(AppState { node, .. }): State<AppState>,
    Path((service, id)): Path<(String, String)>,
) -> Result<Json<Written>, ApiError> {
    write_endpoint(
        &node,
        concord_registry::services::EndpointChange::Deregister { service, id },
    )
    .await
}

async fn drain_endpoint(
    State(AppState { node, .. }): State<AppState>,
    Path((service, id)): Path<(String, String)>,
) -> Result<Json<Written>, ApiError> {
    write_endpoint(
        &node,
        concord_registry::services::EndpointChange::Drain { service, id },
    )
    .await
}

/// An endpoint change needs the services half.
async fn write_endpoint(
    node: &Node,
    change: concord_registry::services::EndpointChange,
) -> Result<Json<Written>, ApiError> {
    write_services(node, Command::endpoints(vec![change])).await
}

/// A change of the services half: refused at once while the cluster is below format 2, as
/// `PUT /v1/config` is.
async fn write_services(node: &Node, cmd: Command) -> Result<Json<Written>, ApiError> {
    let cluster = node.registry().borrow().format();
    if cluster < 2 {
        return Err(
            ClientError::Rejected(Rejection::FormatNotEnabled { format: 2, cluster }).into(),
        );
    }
    write_command(node, cmd).await
}

async fn list_certificates(
    State(AppState { node, .. }): State<AppState>,
) -> Json<concord_api::CertificateList> {
    let registry = node.registry().borrow().clone();
    Json(concord_api::CertificateList {
        revision: registry.revision(),
        certificates: registry
            .certificates()
            .iter()
            .map(|(name, c)| concord_api::CertificateSummary {
                name: name.clone(),
                names: c.names.clone(),
                not_after: c.not_after,
            })
            .collect(),
    })
}

/// Checked here, before anything is proposed: the PEM parses and the key is the certificate's.
async fn put_certificate(
    State(AppState { node, .. }): State<AppState>,
    Path(name): Path<String>,
    body: Result<Json<concord_api::PutCertificate>, JsonRejection>,
) -> Result<Json<Written>, ApiError> {
    let Json(p) = body.map_err(bad_json)?;
    let info = concord_tls::served::check(&p.cert_pem, &p.key_pem).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            format!("certificate {name:?}: {e}"),
        )
    })?;
    let change = concord_registry::services::CertificateChange::Put {
        name,
        certificate: concord_registry::services::Certificate {
            cert_pem: p.cert_pem,
            key_pem: concord_registry::services::Secret::new(p.key_pem),
            names: info.names,
            not_after: info.not_after,
        },
    };
    write_services(&node, Command::certificates(vec![change])).await
}

async fn remove_certificate(
    State(AppState { node, .. }): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Written>, ApiError> {
    let change = concord_registry::services::CertificateChange::Remove { name };
    write_services(&node, Command::certificates(vec![change])).await
}

async fn renew_endpoint(
    State(AppState { node, .. }): State<AppState>,
    Path((service, id)): Path<(String, String)>,
) -> Result<Json<concord_api::Renewed>, ApiError> {
    match node.execute(ClientRequest::Renew { service, id }).await? {
        ClientReply::Renewed { ttl_ms } => Ok(Json(concord_api::Renewed { ttl_ms })),
        other => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            format!("unexpected answer to a renewal: {other:?}"),
        )),
    }
}

async fn get_config(State(AppState { node, .. }): State<AppState>) -> Json<concord_api::Config> {
    let registry = node.registry().borrow().clone();
    Json(concord_api::Config {
        revision: registry.revision(),
        format: registry.format(),
        desired: concord_registry::services::Desired::clone(registry.desired()),
    })
}

/// Sets the desired state: validated here first (a clear answer without a Raft entry), then
/// proposed; the state machine validates again when it applies, deterministically.
async fn put_config(
    State(AppState { node, .. }): State<AppState>,
    body: Result<Json<concord_registry::services::Desired>, JsonRejection>,
) -> Result<Json<Written>, ApiError> {
    let Json(desired) = body.map_err(bad_json)?;
    if let Err(errors) = concord_registry::services::validate(&desired) {
        return Err(ClientError::Rejected(Rejection::InvalidServices { problems: errors }).into());
    }
    let cluster = node.registry().borrow().format();
    if cluster < 2 {
        return Err(
            ClientError::Rejected(Rejection::FormatNotEnabled { format: 2, cluster }).into(),
        );
    }
    write_command(&node, Command::apply_services(desired)).await
}

/// Any other path: 404 with the error body, naming it.
async fn unknown_path(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::NotFound,
        format!(
            "no admin endpoint {method} {} (the endpoints are listed in the admin API's \
             docs; the status page is /ui)",
            uri.path()
        ),
    )
}

/// The wire form of a replica's status.
pub(crate) fn status_body(s: concord_raft::Status) -> concord_api::Status {
    concord_api::Status {
        cluster: s.cluster,
        node_id: s.node_id,
        role: concord_api::Role::from_name(s.role),
        term: s.term,
        leader: s.leader,
        last_log_index: s.last_log_index,
        applied_index: s.applied_index,
        snapshot_index: s.snapshot_index,
        purged_index: s.purged_index,
        revision: s.revision,
        builders: s.builders as u64,
        members: s
            .members
            .into_iter()
            .map(|m| concord_api::Member {
                id: m.id,
                addr: m.addr,
                voter: m.voter,
            })
            .collect(),
        millis_since_quorum_ack: s.millis_since_quorum_ack,
        entry_format: Some(s.entry_format),
    }
}

async fn status(State(AppState { node, .. }): State<AppState>) -> Json<concord_api::Status> {
    Json(status_body(node.status()))
}

/// The wire form of what a snapshot serves.
fn resources_body(d: concord_xds::dump::Dump) -> concord_api::xds::Resources {
    use concord_api::xds::{ClusterSummary, ListenerSummary, Resources};
    Resources {
        version_info: d.version_info,
        listener: d.listener.map(|l| ListenerSummary {
            name: l.name,
            address: l.address,
            filter_chains: l.filter_chains,
        }),
        clusters: d
            .clusters
            .into_iter()
            .map(|c| ClusterSummary {
                name: c.name,
                endpoint: c.endpoint,
            })
            .collect(),
        skipped: d.skipped,
    }
}

/// What this replica serves Envoys right now (decoded from the encoded resources).
async fn xds_resources(State(AppState { node, xds, .. }): State<AppState>) -> Json<XdsResources> {
    Json(XdsResources {
        node_id: node.id(),
        resources: resources_body(xds.snapshot().dump()),
    })
}

/// Readiness for load balancers and Kubernetes: ready exactly while the ADS server serves
/// Envoys. Not ready: 503 with the reason (out of contact with the quorum, not caught up since
/// start), so a probe's log says why. Liveness stays `/healthz`.
async fn readyz(State(state): State<AppState>) -> axum::response::Response {
    if state.xds.serving() {
        return "ready\n".into_response();
    }
    let body = format!(
        "not ready: {}\n",
        not_serving(&state.node, state.stale_after)
    );
    (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
}

/// Prometheus text exposition: the counters and histograms, and gauges read now.
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let s = state.node.status();
    let polling = state
        .discovery
        .as_ref()
        .is_some_and(|d| d.lock().unwrap_or_else(|e| e.into_inner()).polling);
    let envoys = state.xds.envoys();
    let revision = state.xds.snapshot().revision();
    let in_state = |want: concord_api::envoys::SyncState| {
        envoys
            .iter()
            .filter(|e| e.sync_state(revision) == want)
            .count() as f64
    };
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
            envoys.len() as f64,
        ),
        (
            "concord_xds_envoys_nacked",
            "Envoys streaming from this replica whose newest config was rejected (NACKED).",
            in_state(concord_api::envoys::SyncState::Nacked),
        ),
        (
            "concord_xds_envoys_stale",
            "Envoys streaming from this replica behind its revision with nothing under way (STALE).",
            in_state(concord_api::envoys::SyncState::Stale),
        ),
        (
            "concord_xds_serving",
            "1 while this replica serves Envoys (in contact with the quorum, caught up).",
            f64::from(u8::from(state.xds.serving())),
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
        {
            let mut out = concord_telemetry::metrics().render(&gauges);
            state.xds.render_stats_metrics(&mut out);
            rollouts::render_metrics(&state.node.registry().borrow(), &mut out);
            out
        },
    )
}

/// The wire form of the poller's status.
fn poller_body(p: PollerStatus) -> concord_api::PollerStatus {
    use concord_api::discovery::{Change, Skipped};
    concord_api::PollerStatus {
        polling: p.polling,
        server: p.server,
        sources: p.sources,
        interval_ms: p.interval_ms,
        polls: p.polls,
        errors: p.errors,
        consecutive_errors: p.consecutive_errors,
        last_poll_at_ms: p.last_poll_at_ms,
        last_poll_us: p.last_poll_us,
        last_result: p.last_result,
        last_error: p.last_error,
        last_change: p.last_change.map(|c| Change {
            at_ms: c.at_ms,
            revision: c.revision,
            added: c.added as u64,
            updated: c.updated as u64,
            removed: c.removed as u64,
            endpoints_added: c.endpoints.0 as u64,
            endpoints_updated: c.endpoints.1 as u64,
            endpoints_removed: c.endpoints.2 as u64,
        }),
        discovered: p.discovered as u64,
        skipped: p
            .skipped
            .into_iter()
            .map(|s| Skipped {
                name: s.name,
                entry: s.entry,
                reason: s.reason,
            })
            .collect(),
        skipped_total: p.skipped_total,
        changes: p.changes,
        held: p.held,
        stale: p.stale,
        services: p.services,
    }
}

async fn discovery_status(State(state): State<AppState>) -> Json<DiscoveryStatus> {
    let leader = state.node.status().leader;
    let poller = state
        .discovery
        .as_ref()
        .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).clone());
    let polling = poller.as_ref().is_some_and(|p| p.polling);
    let note = match (&poller, polling) {
        (None, _) => "DNS discovery is off on this replica (no --dns-server)".to_string(),
        (Some(_), true) => "this replica leads and polls".to_string(),
        (Some(_), false) => match leader {
            Some(l) => format!("node {l} leads and polls; this replica stands by"),
            None => "no leader: nobody polls until one is elected".to_string(),
        },
    };
    Json(DiscoveryStatus {
        node_id: state.node.id(),
        enabled: poller.is_some(),
        leader,
        polling,
        note,
        poller: poller.map(poller_body),
    })
}

/// Fault injection (only with `--enable-fault-injection`): cut this replica off, or reconnect it.
async fn isolate(
    State(AppState { node, .. }): State<AppState>,
    body: Result<Json<Isolate>, JsonRejection>,
) -> Result<Json<Isolated>, ApiError> {
    let Json(b) = body.map_err(bad_json)?;
    let members: Vec<NodeId> = node.status().members.iter().map(|m| m.id).collect();
    if let Some(bad) = b
        .from
        .iter()
        .find(|id| !members.contains(id) || **id == node.id())
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            format!(
                "cannot cut this replica off from node {bad}: not another member ({members:?})"
            ),
        ));
    }
    // One of the two at a time: every peer (no `from`), the peers named, or none.
    let from = if b.isolated { b.from } else { Vec::new() };
    node.isolate(b.isolated && from.is_empty());
    node.cut_off(from.iter().copied().collect());
    Ok(Json(Isolated {
        isolated: b.isolated,
        from,
    }))
}

/// Fault injection: the next writes forwarded to this replica are answered late.
async fn hold_forward_replies(
    State(AppState { node, .. }): State<AppState>,
    body: Result<Json<concord_api::request::HoldForwardReplies>, JsonRejection>,
) -> Result<Json<concord_api::request::HoldForwardReplies>, ApiError> {
    let Json(b) = body.map_err(bad_json)?;
    if b.count > 100 || b.hold_ms > 60_000 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            format!(
                "count {} and hold_ms {}: at most 100 writes, held at most 60000 ms",
                b.count, b.hold_ms
            ),
        ));
    }
    node.hold_forward_replies(b.count, Duration::from_millis(b.hold_ms));
    Ok(Json(b))
}

/// The Envoys streaming from this replica: the body of `/v1/envoys`, and what this replica
/// answers when another asks for cluster-wide status; with `judge` (the node and its
/// `--stale-after`), also whether it serves Envoys and why not.
pub fn local_envoys(
    node_id: NodeId,
    xds: &XdsServer,
    judge: Option<(&Node, Duration)>,
) -> LocalEnvoys {
    let serving = xds.serving();
    LocalEnvoys {
        node_id,
        revision: xds.snapshot().revision(),
        nacks_total: xds.nacks_total(),
        envoys: xds.envoys(),
        serving: judge.map(|_| serving),
        not_serving: judge
            .filter(|_| !serving)
            .map(|(node, stale_after)| not_serving(node, stale_after)),
        report: None,
    }
}

/// What this replica answers over the peer channel: its Envoys (as `GET /v1/envoys`) and, for
/// the status page, its Raft state, its DNS poller and the changes of the last hour with their
/// ACKs ([`concord_api::view`]).
pub fn peer_report(
    node: &Node,
    xds: &XdsServer,
    discovery: Option<&Mutex<PollerStatus>>,
    stale_after: Duration,
) -> LocalEnvoys {
    let mut local = local_envoys(node.id(), xds, Some((node, stale_after)));
    let poller =
        discovery.map(|d| poller_body(d.lock().unwrap_or_else(|e| e.into_inner()).clone()));
    local.report = Some(Box::new(ReplicaReport {
        raft: status_body(node.status()),
        poller,
        changes: recent_changes(node, xds),
    }));
    local
}

/// The changes this replica applied in the last hour (the newest [`MAX_CHANGES`]), oldest
/// first, with how many of its Envoys ACKed each and the slowest of them.
fn recent_changes(node: &Node, xds: &XdsServer) -> Vec<ChangeAcks> {
    const HOUR: Duration = Duration::from_secs(3600);
    let times = node.revision_times(0, u64::MAX);
    let start = times
        .len()
        .saturating_sub(MAX_CHANGES)
        .max(times.partition_point(|t| t.applied_at.elapsed() > HOUR));
    let recent = &times[start..];
    let Some(first) = recent.first() else {
        return Vec::new();
    };
    let acks: std::collections::BTreeMap<u64, concord_xds::acks::Acks> =
        xds.change_acks(first.revision).into_iter().collect();
    let now_ms = concord_telemetry::unix_micros() / 1000;
    recent
        .iter()
        .map(|t| {
            let a = acks.get(&t.revision).copied().unwrap_or_default();
            ChangeAcks {
                revision: t.revision,
                at_ms: now_ms.saturating_sub(t.applied_at.elapsed().as_millis() as u64),
                what: t.what.to_string(),
                acked: a.envoys,
                slowest_ack_us: (a.envoys > 0).then_some(a.slowest_us),
            }
        })
        .collect()
}

/// Why a replica does not serve Envoys, in a sentence.
fn not_serving(node: &Node, stale_after: Duration) -> String {
    let f = node.freshness(stale_after);
    format!(
        "{} (out of contact with the quorum for {} ms)",
        f.reason.unwrap_or("not serving Envoys"),
        f.out_of_contact.as_millis()
    )
}

async fn envoys(State(state): State<AppState>) -> Json<LocalEnvoys> {
    let judge = Some((&*state.node, state.stale_after));
    Json(local_envoys(state.node.id(), &state.xds, judge))
}

/// What this replica's Envoys streamed of their stats: per service cluster, the sums since it
/// started (the leader reads the same over the peer channel).
async fn envoy_stats(State(state): State<AppState>) -> Json<concord_api::StatsReport> {
    Json(state.xds.stats_report(&[]))
}

/// Every Envoy on every member, each with the replica it streams from, like Istio's
/// `proxy-status`: one request to any replica, which asks the others over the peer channel.
/// A member that does not answer is listed with the error, never left out silently.
async fn cluster_envoys(State(AppState { node, .. }): State<AppState>) -> Json<ClusterEnvoys> {
    let status = node.status();
    let asks = status.members.iter().map(|m| {
        let node = node.clone();
        let id = m.id;
        async move { (id, node.local_status_of(id, Duration::from_secs(2)).await) }
    });
    let answers = futures::future::join_all(asks).await;
    Json(ClusterEnvoys::assemble(node.id(), status.revision, answers))
}

#[derive(Deserialize)]
struct ReadQuery {
    /// Confirm with the leader before reading, so the read reflects every committed write.
    #[serde(default)]
    consistent: bool,
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
        builders: reg.iter().map(|b| b.as_ref().clone()).collect(),
    }))
}

async fn get_builder(
    State(AppState { node, .. }): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<ReadQuery>,
) -> Result<Json<OneBuilder>, ApiError> {
    if q.consistent {
        node.read_barrier().await?;
    }
    let reg = node.registry().borrow().clone();
    match reg.get(&id) {
        Some(b) => Ok(Json(OneBuilder {
            revision: reg.revision(),
            builder: b.as_ref().clone(),
        })),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            format!("no builder {id:?} at revision {}", reg.revision()),
        )),
    }
}

async fn write(node: &Node, batch: Batch) -> Result<Json<Written>, ApiError> {
    write_command(node, Command::new(Source::Api, batch)).await
}

async fn write_command(node: &Node, mut cmd: Command) -> Result<Json<Written>, ApiError> {
    let mut root = Span::root("api.change", std::time::SystemTime::now());
    if root.is_recording() {
        root.set("builders.upserts", cmd.batch.upserts.len() as i64);
        root.set("builders.removes", cmd.batch.removes.len() as i64);
        if let Some(d) = &cmd.desired {
            root.set("services", d.services.len() as i64);
        }
    }
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
        } => Ok(Json(Written {
            revision,
            changed,
            log_index,
        })),
        other => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            format!("unexpected reply {other:?}"),
        )),
    }
}

async fn put_builder(
    State(AppState { node, .. }): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<PutBuilder>, JsonRejection>,
) -> Result<Json<Written>, ApiError> {
    let Json(p) = body.map_err(bad_json)?;
    let b = p.into_builder(id)?;
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
) -> Result<Json<Written>, ApiError> {
    write(
        &node,
        Batch {
            upserts: vec![],
            removes: vec![id],
        },
    )
    .await
}

/// Puts and removes many builders in one log entry: all or nothing.
async fn batch(
    State(AppState { node, .. }): State<AppState>,
    body: Result<Json<BatchBody>, JsonRejection>,
) -> Result<Json<Written>, ApiError> {
    let Json(body) = body.map_err(bad_json)?;
    write(&node, body.into_batch()?).await
}

async fn membership(node: &Node, req: ClientRequest) -> Result<Json<MembershipChanged>, ApiError> {
    match node.execute(req).await? {
        ClientReply::Membership { log_index } => Ok(Json(MembershipChanged { log_index })),
        other => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            format!("unexpected reply {other:?}"),
        )),
    }
}

async fn add_learner(
    State(AppState { node, .. }): State<AppState>,
    body: Result<Json<AddLearner>, JsonRejection>,
) -> Result<Json<MembershipChanged>, ApiError> {
    let Json(a) = body.map_err(bad_json)?;
    a.validate()?;
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
) -> Result<Json<MembershipChanged>, ApiError> {
    let Json(p) = body.map_err(bad_json)?;
    membership(&node, ClientRequest::Promote { node_id: p.node_id }).await
}

async fn remove_member(
    State(AppState { node, .. }): State<AppState>,
    Path(id): Path<NodeId>,
) -> Result<Json<MembershipChanged>, ApiError> {
    membership(&node, ClientRequest::Remove { node_id: id }).await
}
