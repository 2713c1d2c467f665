//! `concord certs`: a development CA and certificates for the local cluster, with rcgen.
//!
//! Node certificates name their node by URI SAN (`spiffe://concord/<cluster>/node/<id>`, what
//! peers check) and carry `localhost`, 127.0.0.1 and ::1 (plus `--san`) for clients that check
//! host names; Envoy client certificates name the Envoy (`spiffe://concord/<cluster>/envoy/<id>`).
//! An existing CA in the directory is reused, so certificates issued later (a node added to the
//! cluster, a rotated certificate) are trusted by every replica that trusts the first ones.

use anyhow::{Context, Result, bail};
use clap::Args;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use time::{Duration, OffsetDateTime};

/// Flags of `concord certs` (its help text is on the subcommand in `main.rs`).
#[derive(Debug, Args)]
pub struct CertsArgs {
    /// Directory to write to (created if missing).
    #[arg(long, default_value = "concord-certs", value_name = "DIR")]
    pub dir: PathBuf,

    /// Cluster name the certificates are for (as `concord serve --cluster`).
    #[arg(long, default_value = "concord")]
    pub cluster: String,

    /// Node ids to issue node certificates for, comma separated. [default: 1,2,3 when
    /// --envoys is not given either; with --envoys alone, no node certificate is (re)issued]
    #[arg(long, value_delimiter = ',', value_name = "IDS")]
    pub nodes: Vec<u64>,

    /// Envoy node ids to issue client certificates for, comma separated (as
    /// `concord envoy-bootstrap --node-id`).
    #[arg(long, value_delimiter = ',', value_name = "IDS")]
    pub envoys: Vec<String>,

    /// Extra host names or IP addresses for the node certificates (repeatable, comma separated),
    /// beyond localhost, 127.0.0.1 and ::1.
    #[arg(long, value_delimiter = ',', value_name = "NAME")]
    pub san: Vec<String>,

    /// Days the node and Envoy certificates are valid.
    #[arg(long, default_value_t = 365)]
    pub days: u32,
}

impl CertsArgs {
    /// Runs the subcommand.
    pub fn run(self) -> ExitCode {
        match self.write() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("concord certs: {e:#}");
                ExitCode::FAILURE
            }
        }
    }

    fn write(&self) -> Result<()> {
        check_name("cluster", &self.cluster)?;
        for e in &self.envoys {
            check_name("Envoy id", e)?;
        }
        if self.nodes.contains(&0) {
            bail!("node ids start at 1");
        }
        if self.days == 0 {
            bail!("--days must be at least 1");
        }
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        let ca = self.ca()?;
        let now = OffsetDateTime::now_utc();
        // Only what was asked for: re-issuing a running node's certificate rotates it.
        let nodes = if self.nodes.is_empty() && self.envoys.is_empty() {
            vec![1, 2, 3]
        } else {
            self.nodes.clone()
        };
        for &id in &nodes {
            let mut p = self.leaf_params(now, &format!("concord node {id}"))?;
            p.subject_alt_names
                .push(uri(&concord_tls::node_uri(&self.cluster, id))?);
            for name in ["localhost", "127.0.0.1", "::1"]
                .into_iter()
                .chain(self.san.iter().map(String::as_str))
            {
                p.subject_alt_names.push(match name.parse() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName(
                        name.try_into()
                            .with_context(|| format!("invalid --san {name:?}"))?,
                    ),
                });
            }
            p.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            self.issue(&ca, p, &format!("node-{id}"))?;
        }
        for e in &self.envoys {
            let mut p = self.leaf_params(now, &format!("concord envoy {e}"))?;
            p.subject_alt_names
                .push(uri(&concord_tls::envoy_uri(&self.cluster, e))?);
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            self.issue(&ca, p, &format!("envoy-{e}"))?;
        }
        Ok(())
    }

    /// The CA in the directory, or a new one.
    fn ca(&self) -> Result<Issuer<'static, KeyPair>> {
        let (cert, key) = (self.dir.join("ca.pem"), self.dir.join("ca-key.pem"));
        if cert.exists() && key.exists() {
            let key_pem = std::fs::read_to_string(&key)
                .with_context(|| format!("cannot read {}", key.display()))?;
            let cert_pem = std::fs::read_to_string(&cert)
                .with_context(|| format!("cannot read {}", cert.display()))?;
            let key = KeyPair::from_pem(&key_pem)
                .with_context(|| format!("{}: not a usable key", key.display()))?;
            let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)
                .with_context(|| format!("{}: not a usable CA certificate", cert.display()))?;
            println!("reusing the CA in {}", cert.display());
            return Ok(issuer);
        }
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.distinguished_name
            .push(DnType::CommonName, "concord development CA");
        let now = OffsetDateTime::now_utc();
        p.not_before = now - Duration::hours(1);
        p.not_after = now + Duration::days(3650);
        let key_pair = KeyPair::generate()?;
        let ca = p.self_signed(&key_pair)?;
        write_file(&key, &key_pair.serialize_pem(), true)?;
        write_file(&cert, &ca.pem(), false)?;
        println!("wrote a new CA: {}", cert.display());
        Ok(Issuer::new(p, key_pair))
    }

    fn leaf_params(&self, now: OffsetDateTime, cn: &str) -> Result<CertificateParams> {
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name.push(DnType::CommonName, cn);
        p.not_before = now - Duration::hours(1);
        p.not_after = now + Duration::days(i64::from(self.days));
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        Ok(p)
    }

    fn issue(&self, ca: &Issuer<'_, KeyPair>, p: CertificateParams, name: &str) -> Result<()> {
        let key_pair = KeyPair::generate()?;
        let cert = p.signed_by(&key_pair, ca)?;
        let (c, k) = (
            self.dir.join(format!("{name}.pem")),
            self.dir.join(format!("{name}-key.pem")),
        );
        write_file(&k, &key_pair.serialize_pem(), true)?;
        write_file(&c, &cert.pem(), false)?;
        println!("wrote {} and {}", c.display(), k.display());
        Ok(())
    }
}

fn uri(s: &str) -> Result<SanType> {
    Ok(SanType::URI(
        s.try_into().with_context(|| format!("invalid URI {s:?}"))?,
    ))
}

fn check_name(what: &str, s: &str) -> Result<()> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
    if !ok {
        bail!("invalid {what} {s:?}: use 1 to 63 ASCII letters, digits, '-', '_' or '.'");
    }
    Ok(())
}

/// Writes `text` to `path` through a temporary file and a rename, so a replica that reloads the
/// file never reads half of it; keys are readable by their owner only.
fn write_file(path: &Path, text: &str, secret: bool) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("pem.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        certs: CertsArgs,
    }

    fn certs(dir: &std::path::Path, args: &[&str]) -> CertsArgs {
        let mut argv = vec!["certs", "--dir", dir.to_str().unwrap()];
        argv.extend_from_slice(args);
        Cli::parse_from(argv).certs
    }

    #[test]
    fn an_envoy_certificate_leaves_the_node_certificates_alone() {
        let dir = tempfile::tempdir().unwrap();
        certs(dir.path(), &[]).write().unwrap();
        let node1 = std::fs::read(dir.path().join("node-1.pem")).unwrap();
        certs(dir.path(), &["--envoys", "e1"]).write().unwrap();
        assert!(dir.path().join("envoy-e1.pem").exists());
        assert_eq!(
            std::fs::read(dir.path().join("node-1.pem")).unwrap(),
            node1,
            "issuing an Envoy certificate re-issued node 1's (running nodes reload it)"
        );
    }

    #[test]
    fn without_ids_it_issues_nodes_1_to_3() {
        let dir = tempfile::tempdir().unwrap();
        certs(dir.path(), &[]).write().unwrap();
        for id in 1..=3 {
            assert!(dir.path().join(format!("node-{id}.pem")).exists());
        }
        assert!(!dir.path().join("node-4.pem").exists());
    }
}
