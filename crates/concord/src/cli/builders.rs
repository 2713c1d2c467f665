//! `concord builders …`: list, show, put and remove builders.

use super::{Exit, Target};
use clap::{Args, Subcommand};
use concord_api::{BuilderList, OneBuilder, PutBuilder, Written};
use std::collections::BTreeMap;
use std::process::ExitCode;

/// `concord builders`.
#[derive(Args)]
pub struct BuildersCmd {
    #[command(subcommand)]
    cmd: BuildersSub,
}

#[derive(Subcommand)]
enum BuildersSub {
    /// List the registry.
    List {
        /// Confirm with the leader first, so the list includes every committed write.
        #[arg(long)]
        consistent: bool,
    },
    /// Show one builder.
    Get {
        /// Builder id.
        id: String,
        /// Confirm with the leader first.
        #[arg(long)]
        consistent: bool,
    },
    /// Put a builder (source `api`); returns once the cluster has committed it.
    Put {
        /// Builder id.
        id: String,
        /// Address Envoy connects to, ip:port.
        #[arg(long)]
        addr: std::net::SocketAddr,
        /// TLS server name clients use to reach it.
        #[arg(long)]
        sni: String,
        /// Region.
        #[arg(long, default_value = "")]
        region: String,
        /// Label key=value; repeatable.
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
    },
    /// Remove a builder; returns once the cluster has committed it.
    Rm {
        /// Builder id.
        id: String,
    },
}

/// What a write committed, for people.
fn written(w: &Written) -> String {
    format!(
        "ok: revision {} (log index {}{})\n",
        w.revision,
        w.log_index,
        if w.changed { "" } else { ", no change" }
    )
}

/// `builders list` for people.
fn list(l: &BuilderList) -> String {
    let mut out = format!(
        "revision {}\n{:<20} {:<24} {:<40} {:<8} SOURCE\n",
        l.revision, "ID", "ADDR", "SNI", "REGION"
    );
    for b in &l.builders {
        out += &format!(
            "{:<20} {:<24} {:<40} {:<8} {}\n",
            b.id,
            b.addr.to_string(),
            b.sni,
            b.region,
            b.source
        );
    }
    out
}

/// `builders get` for people: the builder's JSON (keys sorted, as it always printed).
fn one(b: &OneBuilder) -> String {
    let v = serde_json::to_value(&b.builder).unwrap_or_default();
    format!("{}\n", serde_json::to_string_pretty(&v).unwrap_or_default())
}

impl BuildersCmd {
    /// Runs the subcommand and returns the process exit code.
    pub async fn run(self, t: &Target) -> ExitCode {
        match self.cmd {
            BuildersSub::List { consistent } => {
                t.run(async |c| c.builders(consistent).await, list).await
            }
            BuildersSub::Get { id, consistent } => {
                t.run(async |c| c.get_builder(&id, consistent).await, one)
                    .await
            }
            BuildersSub::Put {
                id,
                addr,
                sni,
                region,
                labels,
            } => {
                let mut map = BTreeMap::new();
                for l in &labels {
                    let Some((k, v)) = l.split_once('=') else {
                        eprintln!("concord: invalid --label {l:?}: expected KEY=VALUE");
                        return Exit::Usage.into();
                    };
                    map.insert(k.to_string(), v.to_string());
                }
                let body = PutBuilder {
                    addr,
                    sni,
                    region,
                    labels: map,
                };
                t.run(async |c| c.put_builder(&id, &body).await, written)
                    .await
            }
            BuildersSub::Rm { id } => t.run(async |c| c.remove_builder(&id).await, written).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_registry::{Builder, Source};

    #[test]
    fn answers_for_people() {
        let w = Written {
            revision: 4,
            changed: false,
            log_index: 6,
        };
        assert_eq!(written(&w), "ok: revision 4 (log index 6, no change)\n");
        let b = Builder {
            id: "b1".into(),
            addr: "127.0.0.1:9001".parse().unwrap(),
            sni: "b1.example.com".into(),
            region: "ord".into(),
            labels: BTreeMap::new(),
            source: Source::Api,
        };
        let l = BuilderList {
            revision: 4,
            builders: vec![b.clone()],
        };
        assert!(list(&l).ends_with(&format!(
            "{:<20} {:<24} {:<40} {:<8} api\n",
            "b1", "127.0.0.1:9001", "b1.example.com", "ord"
        )));
        let text = one(&OneBuilder {
            revision: 4,
            builder: b,
        });
        assert!(
            text.starts_with("{\n  \"addr\": \"127.0.0.1:9001\",\n  \"id\": \"b1\""),
            "{text}"
        );
    }
}
