//! The admin API's rollouts (issue 15): start one, list them with the leader's judgement of
//! each running step, pause, resume and abort. Every change is a committed entry; the leader
//! judges the steps (`concord_raft::rollouts`).

use super::{ApiError, AppState, bad_json, write_command};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Json, Router};
use concord_api::{ErrorCode, RolloutList, RolloutStatus, StepProgress, Written};
use concord_raft::{ClientError, ClientReply, ClientRequest, Node};
use concord_registry::services::{RolloutChange, RolloutSpec, StageChange};
use concord_registry::{Command, FORMAT_ROLLOUTS, Rejection};
use std::time::Duration;

/// How long a listing waits for the leader's judgement before answering without it.
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(1);

/// `/v1/rollouts…`.
pub(super) fn routes() -> Router<AppState> {
    use axum::routing::{get, post};
    Router::new()
        .route("/v1/rollouts", get(list).post(start))
        .route("/v1/rollouts/{service}", get(one))
        .route("/v1/rollouts/{service}/{action}", post(act))
        .route(
            "/v1/config/stage",
            get(stage_status)
                .put(stage)
                .layer(axum::extract::DefaultBodyLimit::max(
                    concord_api::MAX_CONFIG_BYTES,
                )),
        )
        .route("/v1/config/stage/{action}", post(stage_action))
}

async fn stage(
    State(AppState { node, .. }): State<AppState>,
    body: Result<Json<concord_api::StageBody>, JsonRejection>,
) -> Result<Json<Written>, ApiError> {
    let Json(b) = body.map_err(bad_json)?;
    if let Err(problems) = concord_registry::services::validate(&b.config) {
        return Err(ClientError::Rejected(Rejection::InvalidServices { problems }).into());
    }
    check_format(&node)?;
    let change = StageChange::Start {
        desired: Box::new(b.config),
        group: b.group,
        hold: b.hold,
        max_error_increase: b.max_error_increase,
        min_requests: b.min_requests,
        at_ms: now_ms(),
    };
    write_command(&node, Command::stage(change)).await
}

async fn stage_status(
    State(AppState { node, .. }): State<AppState>,
) -> Json<concord_api::StageStatus> {
    let r = node.registry().borrow().clone();
    Json(concord_api::StageStatus {
        revision: r.revision(),
        stage: r
            .stage()
            .map(|s| concord_registry::services::Stage::clone(s)),
        last: r
            .last_stage()
            .map(|s| concord_registry::services::StageEnd::clone(s)),
    })
}

async fn stage_action(
    State(AppState { node, .. }): State<AppState>,
    Path(action): Path<String>,
) -> Result<Json<Written>, ApiError> {
    let Some(at) = node.registry().borrow().stage().map(|s| s.at) else {
        return Err(ClientError::Rejected(Rejection::NoStage).into());
    };
    let (why, at_ms) = ("by an operator".to_string(), now_ms());
    let change = match action.as_str() {
        "promote" => StageChange::Promote { at, why, at_ms },
        "abort" => StageChange::Abort { at, why, at_ms },
        other => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                ErrorCode::NotFound,
                format!("no stage action {other:?}: promote or abort"),
            ));
        }
    };
    write_command(&node, Command::stage(change)).await
}

fn now_ms() -> u64 {
    concord_telemetry::unix_micros() / 1000
}

/// Rollouts need entry format 3: refused at once below it, naming what to do.
fn check_format(node: &Node) -> Result<(), ApiError> {
    let cluster = node.registry().borrow().format();
    if cluster < FORMAT_ROLLOUTS {
        return Err(ClientError::Rejected(Rejection::FormatNotEnabled {
            format: FORMAT_ROLLOUTS,
            cluster,
        })
        .into());
    }
    Ok(())
}

async fn start(
    State(AppState { node, .. }): State<AppState>,
    body: Result<Json<RolloutSpec>, JsonRejection>,
) -> Result<Json<Written>, ApiError> {
    let Json(spec) = body.map_err(bad_json)?;
    check_format(&node)?;
    let change = RolloutChange::Start {
        spec,
        at_ms: now_ms(),
    };
    write_command(&node, Command::rollouts(vec![change])).await
}

async fn act(
    State(AppState { node, .. }): State<AppState>,
    Path((service, action)): Path<(String, String)>,
) -> Result<Json<Written>, ApiError> {
    let at_ms = now_ms();
    let change = match action.as_str() {
        "pause" => RolloutChange::Pause { service, at_ms },
        "resume" => RolloutChange::Resume { service, at_ms },
        "abort" => RolloutChange::Abort { service, at_ms },
        other => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                ErrorCode::NotFound,
                format!("no rollout action {other:?}: pause, resume or abort"),
            ));
        }
    };
    check_format(&node)?;
    write_command(&node, Command::rollouts(vec![change])).await
}

/// The leader's judgement of every running step, asked over the peer channel.
async fn progress(node: &Node) -> Result<Vec<StepProgress>, String> {
    match tokio::time::timeout(
        PROGRESS_TIMEOUT,
        node.execute(ClientRequest::RolloutProgress),
    )
    .await
    {
        Ok(Ok(ClientReply::RolloutProgress { progress })) => Ok(progress),
        Ok(Ok(other)) => Err(format!("unexpected answer from the leader: {other:?}")),
        Ok(Err(e)) => Err(format!("the leader's judgement is not available: {e}")),
        Err(_) => Err(format!(
            "the leader did not answer within {} ms",
            PROGRESS_TIMEOUT.as_millis()
        )),
    }
}

async fn list(State(AppState { node, .. }): State<AppState>) -> Json<RolloutList> {
    let registry = node.registry().borrow().clone();
    let running = registry.rollouts().values().any(|r| r.phase.is_active());
    let (mut judged, progress_error) = match running {
        true => match progress(&node).await {
            Ok(p) => (p, None),
            Err(e) => (Vec::new(), Some(e)),
        },
        false => (Vec::new(), None),
    };
    let rollouts = registry
        .rollouts()
        .values()
        .map(|r| RolloutStatus {
            rollout: r.clone(),
            progress: judged
                .iter()
                .position(|p| p.service == r.spec.service && p.step == r.step)
                .map(|i| judged.swap_remove(i)),
        })
        .collect();
    Json(RolloutList {
        revision: registry.revision(),
        rollouts,
        progress_error,
    })
}

async fn one(
    state: State<AppState>,
    Path(service): Path<String>,
) -> Result<Json<RolloutStatus>, ApiError> {
    let Json(all) = list(state).await;
    all.rollouts
        .into_iter()
        .find(|r| r.rollout.spec.service == service)
        .map(Json)
        .ok_or_else(|| ClientError::Rejected(Rejection::NoRollout { service }).into())
}

/// The rollouts in `/metrics`: each one's share of traffic to the new version, its phase, and
/// its rollbacks (the event an alert fires on), labelled by service and versions.
pub(super) fn render_metrics(registry: &concord_registry::Registry, out: &mut String) {
    use std::fmt::Write;
    let rollouts = registry.rollouts();
    if rollouts.is_empty() {
        return;
    }
    let labels = |r: &concord_registry::services::Rollout| {
        format!(
            "service=\"{}\",from=\"{}\",to=\"{}\"",
            r.spec.service, r.spec.from, r.spec.to
        )
    };
    let _ = writeln!(
        out,
        "# HELP concord_rollout_weight_percent The new version's share of the service's traffic.\n\
         # TYPE concord_rollout_weight_percent gauge"
    );
    for r in rollouts.values() {
        let _ = writeln!(
            out,
            "concord_rollout_weight_percent{{{}}} {}",
            labels(r),
            r.weight()
        );
    }
    let _ = writeln!(
        out,
        "# HELP concord_rollout_phase 1 for the phase each rollout is in.\n\
         # TYPE concord_rollout_phase gauge"
    );
    for r in rollouts.values() {
        let phase = serde_json::to_value(r.phase)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "concord_rollout_phase{{{},phase=\"{phase}\"}} 1",
            labels(r)
        );
    }
    let _ = writeln!(
        out,
        "# HELP concord_rollout_rolled_back 1 when the rollout was rolled back (an alert: the new \
         version failed a step; `concord rollout status` says why).\n\
         # TYPE concord_rollout_rolled_back gauge"
    );
    for r in rollouts.values() {
        let back = r.phase == concord_registry::services::Phase::RolledBack;
        let _ = writeln!(
            out,
            "concord_rollout_rolled_back{{{}}} {}",
            labels(r),
            u8::from(back)
        );
    }
}
