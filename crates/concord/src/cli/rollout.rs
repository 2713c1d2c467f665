//! `concord rollout …`: release rollouts. `start` moves a service's traffic from one version
//! of its registered endpoints (label `version` by default) to another in weighted steps, each
//! judged by the leader on Envoy's own stats; `status` shows each rollout's phase, step and
//! history and how the leader judges the running step; `pause`, `resume` and `abort` are an
//! operator's acts.

use super::Target;
use clap::{Args, Subcommand};
use concord_api::{RolloutList, RolloutStatus, Written};
use concord_registry::services::{Duration, Phase, RolloutSpec};
use std::process::ExitCode;

/// `concord rollout`.
#[derive(Args)]
pub struct RolloutCmd {
    #[command(subcommand)]
    cmd: Sub,
}

#[derive(Subcommand)]
enum Sub {
    /// Start moving a service's traffic from one version to another.
    Start {
        /// The service.
        service: String,
        /// The version traffic moves from (endpoints labelled `<label>=<from>`).
        #[arg(long)]
        from: String,
        /// The version traffic moves to.
        #[arg(long)]
        to: String,
        /// The endpoint label naming versions.
        #[arg(long, default_value = "version")]
        label: String,
        /// The new version's share at each step, in percent, comma-separated, ending at 100.
        #[arg(long, default_value = "10,25,50,100", value_delimiter = ',')]
        steps: Vec<u32>,
        /// How long each step is held before it is judged (1s-24h).
        #[arg(long, default_value = "1m", value_parser = parse_duration)]
        interval: Duration,
        /// How many percentage points the new version's error rate may be above the old one's
        /// before the rollout rolls back.
        #[arg(long, default_value_t = 5)]
        max_error_increase: u32,
        /// The fewest requests to the new version a step needs to be promoted (or rolled back).
        #[arg(long, default_value_t = 100)]
        min_requests: u64,
    },
    /// Show every rollout, or one service's.
    Status {
        /// The service (all when absent).
        service: Option<String>,
    },
    /// Hold a running rollout at its step.
    Pause {
        /// The service.
        service: String,
    },
    /// Let a paused rollout go on; its step is judged afresh.
    Resume {
        /// The service.
        service: String,
    },
    /// Stop a rollout and send all traffic to the old version.
    Abort {
        /// The service.
        service: String,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    Duration::parse(s).map_err(|e| e.to_string())
}

/// One rollout for people.
fn render_one(s: &RolloutStatus) -> String {
    let r = &s.rollout;
    let spec = &r.spec;
    let mut out = format!(
        "{}: {} → {} ({}), {} at step {} of {} — {}% to {}\n",
        spec.service,
        spec.from,
        spec.to,
        spec.label,
        r.phase,
        r.step + 1,
        spec.steps.len(),
        r.weight(),
        spec.to
    );
    out += &format!(
        "  steps {:?}, each held {}, rolls back above {} points more errors, needs {} requests\n",
        spec.steps, spec.interval, spec.max_error_increase, spec.min_requests
    );
    if let Some(why) = &r.reason
        && matches!(r.phase, Phase::RolledBack | Phase::Aborted)
    {
        out += &format!("  why: {why}\n");
    }
    if let Some(p) = &s.progress {
        out += &format!(
            "  judged for {} of {} ms: {} {}/{} errors/requests, {} {}/{}; {} replicas, {} Envoys reporting\n  latency: {} {}, {} {}\n  {}\n",
            p.judged_for_ms,
            p.interval_ms,
            spec.from,
            p.from.errors,
            p.from.requests,
            spec.to,
            p.to.errors,
            p.to.requests,
            p.replicas_reporting,
            p.stat_streams,
            spec.from,
            p.from_latency.describe(),
            spec.to,
            p.to_latency.describe(),
            p.verdict
        );
    }
    for e in &r.events {
        out += &format!("  revision {:<8} {}\n", e.index, e.what);
    }
    out
}

fn render(list: &RolloutList, only: Option<&str>) -> String {
    let mut out = String::new();
    for s in &list.rollouts {
        if only.is_none_or(|o| o == s.rollout.spec.service) {
            out += &render_one(s);
        }
    }
    if out.is_empty() {
        out = match only {
            Some(s) => format!("no rollout of service {s:?}\n"),
            None => "no rollouts\n".into(),
        };
    }
    if let Some(e) = &list.progress_error {
        out += &format!("({e})\n");
    }
    out
}

impl RolloutCmd {
    /// Runs the subcommand and returns the process exit code.
    pub async fn run(self, t: &Target) -> ExitCode {
        match self.cmd {
            Sub::Start {
                service,
                from,
                to,
                label,
                steps,
                interval,
                max_error_increase,
                min_requests,
            } => {
                let spec = RolloutSpec {
                    service: service.clone(),
                    label,
                    from,
                    to,
                    steps,
                    interval,
                    max_error_increase,
                    min_requests,
                };
                t.run(
                    async |c| c.start_rollout(&spec).await,
                    |w: &Written| {
                        format!(
                            "ok: rollout of {service} started at revision {} \
                             (`concord rollout status {service}` follows it)\n",
                            w.revision
                        )
                    },
                )
                .await
            }
            Sub::Status { service } => {
                t.run(
                    async |c| c.rollouts().await,
                    |l: &RolloutList| render(l, service.as_deref()),
                )
                .await
            }
            Sub::Pause { service } => act(t, service, "pause", "paused").await,
            Sub::Resume { service } => act(t, service, "resume", "resumed").await,
            Sub::Abort { service } => {
                act(
                    t,
                    service,
                    "abort",
                    "aborted: all traffic to the old version",
                )
                .await
            }
        }
    }
}

async fn act(t: &Target, service: String, action: &str, done: &str) -> ExitCode {
    t.run(
        async |c| c.rollout_action(&service, action).await,
        |w: &Written| {
            format!(
                "ok: rollout of {service} {done} (revision {})\n",
                w.revision
            )
        },
    )
    .await
}
