//! `concord apply -f FILE`, `concord diff -f FILE` and `concord get …`: the services half's
//! desired state, set as a whole from a YAML file, compared with what the cluster holds, and
//! printed back. A file is read and validated here first, so a bad one is refused with its line
//! and field before anything is sent; the replica validates again before it commits.

use super::{Failure, Target};
use crate::cli::Exit;
use crate::desired::{self, FileError};
use clap::{Args, ValueEnum};
use concord_registry::services::{Change, Desired, diff};
use std::path::PathBuf;
use std::process::ExitCode;

/// `concord apply`.
#[derive(Args)]
pub struct ApplyArgs {
    /// The desired state: a YAML file of `services`, `route_tables` and `listeners` (`-`:
    /// standard input). Everything not in it is removed.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    file: PathBuf,
    /// Show what would change, and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// A config canary: give the change to these Envoys first (`cluster=NAME`, their node
    /// cluster, or `metadata.KEY=VALUE`; comma-separated), and to the rest once every one of
    /// them has ACKed it and held it for --hold with their error rate within
    /// --max-error-increase of the other Envoys'; a NACK from any of them, or a higher error
    /// rate, stops it (`concord canary status` follows it).
    #[arg(long, value_name = "GROUP", value_delimiter = ',')]
    canary: Vec<concord_registry::services::select::EnvoySelector>,
    /// With --canary: how long the group must hold the change.
    #[arg(long, default_value = "30s", value_parser = parse_duration, requires = "canary")]
    hold: concord_registry::services::Duration,
    /// With --canary: how many percentage points the group's error rate (5xx, gRPC errors,
    /// from the stats their Envoys stream) may be above the other Envoys' before the change
    /// is stopped.
    #[arg(long, default_value_t = concord_registry::services::stage::default_max_error_increase(), requires = "canary")]
    max_error_increase: u32,
    /// With --canary: the fewest requests the group must serve in the hold before the rest
    /// get the change, and before its errors can stop it (0: promoted on ACKs and the hold).
    #[arg(long, default_value_t = 0, requires = "canary")]
    min_requests: u64,
}

fn parse_duration(s: &str) -> Result<concord_registry::services::Duration, String> {
    concord_registry::services::Duration::parse(s).map_err(|e| e.to_string())
}

/// `concord diff`.
#[derive(Args)]
pub struct DiffArgs {
    /// The desired state to compare with the cluster's (`-`: standard input).
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    file: PathBuf,
}

/// What `concord get` prints.
#[derive(Clone, Copy, ValueEnum)]
enum What {
    /// The services.
    Services,
    /// The route tables.
    Routes,
    /// The listeners.
    Listeners,
    /// All of it: a file `concord apply` takes back.
    All,
}

/// How `concord get` prints it.
#[derive(Clone, Copy, ValueEnum)]
enum Output {
    /// YAML, as `concord apply` reads it.
    Yaml,
    /// JSON.
    Json,
}

/// `concord get`.
#[derive(Args)]
pub struct GetArgs {
    /// What to print.
    what: What,
    /// The format.
    #[arg(short = 'o', long, default_value = "yaml")]
    output: Output,
}

fn file_failure(e: FileError) -> Failure {
    let exit = match e {
        FileError::Problems { .. } => Exit::Refused,
        _ => Exit::Usage,
    };
    Failure {
        exit,
        message: e.to_string(),
    }
}

/// The changes for people: `+ path: value`, `- path`, `~ path: before → after`.
fn render(changes: &[Change]) -> String {
    let compact = |v: &serde_json::Value| serde_json::to_string(v).unwrap_or_default();
    let mut out = String::new();
    for c in changes {
        out += &match (&c.before, &c.after) {
            (None, Some(a)) => format!("+ {}: {}\n", c.path, compact(a)),
            (Some(_), None) => format!("- {}\n", c.path),
            (Some(b), Some(a)) => format!("~ {}: {} → {}\n", c.path, compact(b), compact(a)),
            (None, None) => String::new(),
        };
    }
    out
}

/// What `concord apply` did.
#[derive(serde::Serialize)]
struct Applied {
    changes: Vec<Change>,
    /// The revision it was committed at; none when nothing changed or on a dry run.
    revision: Option<u64>,
    dry_run: bool,
}

impl ApplyArgs {
    /// Reads the file, shows what changes, and sets it (unless nothing changes, or `--dry-run`).
    pub async fn run(self, t: &Target) -> ExitCode {
        let result = async {
            let want = desired::read(&self.file).map_err(file_failure)?;
            let client = t.client()?;
            let have = client.config().await.map_err(|e| t.failure(e))?;
            let changes = diff(&have.desired, &want);
            let revision = if changes.is_empty() || self.dry_run {
                None
            } else {
                let written = match self.canary.is_empty() {
                    true => client.apply_config(&want).await,
                    false => {
                        let body = concord_api::StageBody {
                            config: want.clone(),
                            group: self.canary.clone(),
                            hold: self.hold,
                            max_error_increase: self.max_error_increase,
                            min_requests: self.min_requests,
                        };
                        client.stage_config(&body).await
                    }
                };
                Some(written.map_err(|e| t.failure(e))?.revision)
            };
            Ok(Applied {
                changes,
                revision,
                dry_run: self.dry_run,
            })
        }
        .await;
        let canary = concord_registry::services::select::describe(&self.canary);
        t.finish(result, |a: &Applied| {
            let mut out = render(&a.changes);
            out += &match (a.revision, a.dry_run, a.changes.len()) {
                (_, _, 0) => "no changes\n".to_string(),
                (_, true, n) => format!("dry run: {n} change(s), nothing applied\n"),
                (Some(r), _, n) if !canary.is_empty() => format!(
                    "staged {n} change(s) to {canary} at revision {r}; the rest get them once \
                     the group holds them (`concord canary status`)\n"
                ),
                (Some(r), _, n) => format!("applied {n} change(s) at revision {r}\n"),
                (None, false, _) => String::new(),
            };
            out
        })
    }
}

impl DiffArgs {
    /// Prints what applying the file would change.
    pub async fn run(self, t: &Target) -> ExitCode {
        let result = async {
            let want = desired::read(&self.file).map_err(file_failure)?;
            let have = t.client()?.config().await.map_err(|e| t.failure(e))?;
            Ok(diff(&have.desired, &want))
        }
        .await;
        t.finish(result, |changes: &Vec<Change>| match changes.is_empty() {
            true => "no changes\n".to_string(),
            false => render(changes),
        })
    }
}

/// The part of `d` that `what` names, under its key in the file.
fn part(d: &Desired, what: What) -> serde_json::Value {
    let all = serde_json::to_value(d).unwrap_or_default();
    let key = match what {
        What::All => return all,
        What::Services => "services",
        What::Routes => "route_tables",
        What::Listeners => "listeners",
    };
    serde_json::json!({ key: all[key] })
}

impl GetArgs {
    /// Prints the services, route tables or listeners the replica holds.
    pub async fn run(self, t: &Target) -> ExitCode {
        let result = async {
            let config = t.client()?.config().await.map_err(|e| t.failure(e))?;
            Ok(part(&config.desired, self.what))
        }
        .await;
        let output = self.output;
        t.finish(result, |v: &serde_json::Value| match output {
            Output::Yaml => desired::to_yaml(v),
            Output::Json => format!("{}\n", serde_json::to_string_pretty(v).unwrap_or_default()),
        })
    }
}

/// `concord render`.
#[derive(Args)]
pub struct RenderArgs {
    /// The desired state to render (`-`: standard input).
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    file: PathBuf,
    /// Where to write an Envoy bootstrap (binary proto; name it `*.pb`) holding every resource
    /// of the file as static resources, for `envoy --mode validate -c FILE`.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

impl RenderArgs {
    /// Validates the file and writes the Envoy resources it makes, for Envoy's own validation.
    pub fn run(self) -> ExitCode {
        use prost::Message;
        let d = match desired::read(&self.file) {
            Ok(d) => d,
            Err(e) => {
                let f = file_failure(e);
                eprintln!("concord: {}", f.message);
                return f.exit.into();
            }
        };
        let bytes = concord_xds::services::validation_bootstrap(&d).encode_to_vec();
        if let Err(e) = std::fs::write(&self.out, bytes) {
            eprintln!("concord: cannot write {}: {e}", self.out.display());
            return Exit::Usage.into();
        }
        println!(
            "wrote {}: {} service(s), {} route table(s), {} listener(s); check it with \
             `envoy --mode validate -c {}`",
            self.out.display(),
            d.services.len(),
            d.route_tables.len(),
            d.listeners.len(),
            self.out.display()
        );
        Exit::Success.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn changes_for_people() {
        let changes = vec![
            Change {
                path: "services.a".into(),
                before: None,
                after: Some(json!({"protocol": "grpc"})),
            },
            Change {
                path: "services.b".into(),
                before: Some(json!({})),
                after: None,
            },
            Change {
                path: "services.c.connect_timeout".into(),
                before: Some(json!("1s")),
                after: Some(json!("2s")),
            },
        ];
        assert_eq!(
            render(&changes),
            "+ services.a: {\"protocol\":\"grpc\"}\n- services.b\n\
             ~ services.c.connect_timeout: \"1s\" → \"2s\"\n"
        );
    }
}
