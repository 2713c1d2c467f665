//! The operator's client: `concord cluster …`, `concord builders …`, `concord envoys` and
//! `concord discovery`, `concord apply|diff|get` talk to any replica's admin API (which forwards writes to the leader)
//! through the typed [`concord_api::Client`]; `concord envoy-bootstrap` only prints YAML. One
//! module per subcommand; each renders its answer for people with a pure function, or prints
//! the JSON with `--json`. [`Exit`] is how each ends.

mod bootstrap;
mod builders;
mod canary;
mod certificates;
mod cluster;
mod config;
mod discovery;
mod endpoints;
mod envoys;
mod exit;
mod rollout;
mod ui;

pub use bootstrap::BootstrapArgs;
pub use builders::BuildersCmd;
pub use canary::CanaryCmd;
pub use certificates::CertificatesCmd;
pub use cluster::ClusterCmd;
pub use config::{ApplyArgs, DiffArgs, GetArgs, RenderArgs};
pub use discovery::discovery;
pub use endpoints::EndpointsCmd;
pub use envoys::EnvoysArgs;
pub use exit::Exit;
pub use rollout::RolloutCmd;
pub use ui::ui;

use clap::Args;
use concord_api::Client;
use serde::Serialize;
use std::process::ExitCode;

/// Where to send a client command, and how to print the answer.
#[derive(Args, Clone)]
pub struct Target {
    /// Admin API of any replica (`host:port` or `http://host:port`).
    #[arg(
        long,
        env = "CONCORD_ADMIN",
        default_value = "127.0.0.1:8101",
        global = true
    )]
    admin: String,
    /// File holding the admin API token: the token alone, or a `read|write <token>` line of a
    /// replica's token file (the first token in it). Without it, the token is taken from
    /// $CONCORD_TOKEN, if set.
    #[arg(long, env = "CONCORD_TOKEN_FILE", value_name = "FILE", global = true)]
    token_file: Option<std::path::PathBuf>,
    /// Print the raw JSON answer.
    #[arg(long, global = true)]
    json: bool,
}

/// A failed client command: how it ends and what to say.
pub(crate) struct Failure {
    exit: Exit,
    message: String,
}

impl Failure {
    fn usage(message: String) -> Self {
        Failure {
            exit: Exit::Usage,
            message,
        }
    }
}

/// The first token of a client token file: a line holding the token alone, or `read|write
/// <token>`; blank lines and `#` comments are skipped.
fn token_in(text: &str) -> Result<String, String> {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .ok_or("no token in it")?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    match fields[..] {
        [token] | ["read" | "write", token] => Ok(token.to_string()),
        _ => Err("expected the token alone on a line, or `read|write <token>`".into()),
    }
}

impl Target {
    /// The bearer token to send: from --token-file / $CONCORD_TOKEN_FILE, else $CONCORD_TOKEN.
    fn token(&self) -> Result<Option<String>, Failure> {
        if let Some(path) = &self.token_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                Failure::usage(format!("cannot read token file {}: {e}", path.display()))
            })?;
            return token_in(&text).map(Some).map_err(|e| {
                Failure::usage(format!("invalid token file {}: {e}", path.display()))
            });
        }
        Ok(std::env::var("CONCORD_TOKEN")
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty()))
    }

    /// The typed client of the target replica.
    fn client(&self) -> Result<Client, Failure> {
        Client::builder(&self.admin)
            .token(self.token()?)
            .build()
            .map_err(|e| self.failure(e))
    }

    /// How a failed call ends, and the message: the server's, with a hint where one helps.
    fn failure(&self, e: concord_api::Error) -> Failure {
        let exit = Exit::of(&e);
        let message = match &e {
            concord_api::Error::Unreachable { message, .. } => {
                format!("cannot reach replica at {}: {message}", self.admin)
            }
            concord_api::Error::Api {
                status: 401,
                message,
                ..
            } => format!(
                "{message} (give a token with --token-file, $CONCORD_TOKEN_FILE or $CONCORD_TOKEN)"
            ),
            other => other.to_string(),
        };
        Failure { exit, message }
    }

    /// Runs `call` against the target replica and prints its answer: `human(answer)`, or the
    /// JSON with `--json`.
    async fn run<T, F>(
        &self,
        call: impl AsyncFnOnce(Client) -> Result<T, concord_api::Error>,
        human: F,
    ) -> ExitCode
    where
        T: Serialize,
        F: FnOnce(&T) -> String,
    {
        let result = match self.client() {
            Ok(client) => call(client).await.map_err(|e| self.failure(e)),
            Err(f) => Err(f),
        };
        self.finish(result, human)
    }

    fn finish<T: Serialize>(
        &self,
        result: Result<T, Failure>,
        human: impl FnOnce(&T) -> String,
    ) -> ExitCode {
        match result {
            Ok(v) if self.json => {
                // Through a `Value`, whose keys are sorted: the output is what it was when the
                // CLI printed the answer as it parsed it.
                let v = serde_json::to_value(&v).unwrap_or_default();
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                Exit::Success.into()
            }
            Ok(v) => {
                print!("{}", human(&v));
                Exit::Success.into()
            }
            Err(f) => {
                eprintln!("concord: {}", f.message);
                f.exit.into()
            }
        }
    }
}

/// An optional index or id as the CLI prints it: the number, or `-`.
fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::token_in;

    #[test]
    fn token_files() {
        assert_eq!(token_in("abc\n").unwrap(), "abc");
        assert_eq!(
            token_in("# mine\n\n  write abc  \nread def\n").unwrap(),
            "abc"
        );
        assert_eq!(token_in("read def").unwrap(), "def");
        assert!(token_in("# none\n").is_err());
        assert!(token_in("admin abc").is_err());
        assert!(token_in("a b c").is_err());
    }
}
