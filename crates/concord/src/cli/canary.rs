//! `concord canary …`: the configuration staged to a group of Envoys first (`concord apply
//! --canary`): what is staged and for whom, how the last stage ended (promoted, or aborted with
//! the NACK's message or the error rates), and an operator's promote or abort.

use super::Target;
use clap::{Args, Subcommand};
use concord_api::{StageStatus, Written};
use std::process::ExitCode;

/// `concord canary`.
#[derive(Args)]
pub struct CanaryCmd {
    #[command(subcommand)]
    cmd: Sub,
}

#[derive(Subcommand)]
enum Sub {
    /// Show what is staged, and how the last stage ended.
    Status,
    /// Give what is staged to every Envoy now.
    Promote,
    /// Drop what is staged: the group goes back to the current configuration.
    Abort,
}

fn render(s: &StageStatus) -> String {
    use concord_registry::services::select::describe;
    let mut out = match &s.stage {
        Some(st) => format!(
            "staged at revision {} to {} ({} services), promoted once the group holds it for {} \
             with at least {} requests and errors within {} points of the other Envoys'\n",
            st.at,
            describe(&st.group),
            st.desired.services.len(),
            st.hold,
            st.min_requests,
            st.max_error_increase
        ),
        None => "nothing staged\n".to_string(),
    };
    if let Some(l) = &s.last {
        out += &format!(
            "last stage (revision {}): {} at revision {}: {}\n",
            l.at,
            if l.promoted { "promoted" } else { "aborted" },
            l.ended_at,
            l.why
        );
    }
    out
}

impl CanaryCmd {
    /// Runs the subcommand and returns the process exit code.
    pub async fn run(self, t: &Target) -> ExitCode {
        let act = |action: &'static str, done: &'static str| async move {
            t.run(
                async |c| c.stage_action(action).await,
                |w: &Written| format!("ok: {done} (revision {})\n", w.revision),
            )
            .await
        };
        match self.cmd {
            Sub::Status => t.run(async |c| c.stage().await, render).await,
            Sub::Promote => act("promote", "every Envoy gets the staged configuration").await,
            Sub::Abort => act("abort", "the group is back on the current configuration").await,
        }
    }
}
