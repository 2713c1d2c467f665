//! `concord certificates …`: certificates concord holds for TLS termination at Envoy (sent by
//! SDS). The key is write-only: `list` shows names, DNS names and expiry, never a key.

use super::{Failure, Target};
use clap::{Args, Subcommand};
use concord_api::{CertificateList, PutCertificate, Written};
use std::path::PathBuf;
use std::process::ExitCode;

/// `concord certificates`.
#[derive(Args)]
pub struct CertificatesCmd {
    #[command(subcommand)]
    cmd: Sub,
}

#[derive(Subcommand)]
enum Sub {
    /// Add or rotate a certificate (a rotation changes no listener).
    Put {
        /// Its name, as listeners' `tls.certificate` names it.
        name: String,
        /// The chain, leaf first (PEM).
        #[arg(long, value_name = "FILE")]
        cert: PathBuf,
        /// Its private key (PEM).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
    },
    /// List the certificates: names, DNS names, expiry.
    List,
    /// Remove a certificate (refused while a listener uses it).
    Rm {
        /// Its name.
        name: String,
    },
}

fn list(l: &CertificateList) -> String {
    let mut out = format!(
        "{} certificate(s) at revision {}\n",
        l.certificates.len(),
        l.revision
    );
    for c in &l.certificates {
        let days = (c.not_after
            - std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64))
            / 86_400;
        out += &format!(
            "  {:<24} {:<40} expires in {days} days\n",
            c.name,
            c.names.join(",")
        );
    }
    out
}

impl CertificatesCmd {
    /// Runs the subcommand and returns the process exit code.
    pub async fn run(self, t: &Target) -> ExitCode {
        match self.cmd {
            Sub::List => t.run(async |c| c.certificates().await, list).await,
            Sub::Rm { name } => {
                t.run(
                    async |c| c.remove_certificate(&name).await,
                    |w: &Written| format!("ok: {name} removed (revision {})\n", w.revision),
                )
                .await
            }
            Sub::Put { name, cert, key } => {
                let read = |p: &PathBuf| {
                    std::fs::read_to_string(p)
                        .map_err(|e| Failure::usage(format!("cannot read {}: {e}", p.display())))
                };
                let body = match (read(&cert), read(&key)) {
                    (Ok(cert_pem), Ok(key_pem)) => PutCertificate { cert_pem, key_pem },
                    (Err(f), _) | (_, Err(f)) => {
                        return t.finish(Err::<Written, _>(f), |_| String::new());
                    }
                };
                t.run(
                    async |c| c.put_certificate(&name, &body).await,
                    |w: &Written| format!("ok: certificate {name} at revision {}\n", w.revision),
                )
                .await
            }
        }
    }
}
