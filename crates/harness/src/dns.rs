//! A real DNS server for the tests: BIND 9 (`named`, installed by `tests/setup`) on a free
//! loopback port, UDP and TCP, authoritative for `builders.test.` and `internal.`, changed with
//! dynamic updates (`nsupdate`) as an operator would, and stopped, paused or killed on demand.

use crate::{eventually, free_port};
use anyhow::{Context, Result, bail};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tempfile::TempDir;

/// A running `named`.
pub struct Bind {
    /// Its port (UDP and TCP) on 127.0.0.1.
    pub port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl Drop for Bind {
    fn drop(&mut self) {
        self.kill();
    }
}

const ZONES: &[&str] = &["builders.test", "internal"];

impl Bind {
    /// Starts `named` with empty zones and waits until it answers.
    pub async fn start() -> Result<Bind> {
        let dir = tempfile::Builder::new().prefix("concord-dns").tempdir()?;
        let port = free_port();
        let d = dir.path().display();
        let mut conf = format!(
            r#"options {{
    directory "{d}";
    pid-file "{d}/named.pid";
    session-keyfile "{d}/session.key";
    managed-keys-directory "{d}";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
    notify no;
    max-records-per-type 0;
    max-types-per-name 0;
}};
controls {{ }};
"#
        );
        for z in ZONES {
            conf += &format!(
                "zone \"{z}\" {{ type primary; file \"{z}.db\"; allow-update {{ 127.0.0.1; }}; }};\n"
            );
            std::fs::write(
                dir.path().join(format!("{z}.db")),
                format!(
                    "$TTL 5\n@ IN SOA ns1.{z}. hostmaster.{z}. ( 1 3600 600 86400 5 )\n  IN NS ns1.{z}.\nns1 IN A 127.0.0.1\n"
                ),
            )?;
        }
        std::fs::write(dir.path().join("named.conf"), conf)?;
        let mut bind = Bind {
            port,
            dir,
            child: None,
        };
        bind.spawn()?;
        Ok(bind)
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("named.log"))?;
        let child = Command::new(named_bin())
            .args(["-g", "-4", "-c"])
            .arg(self.dir.path().join("named.conf"))
            .args(["-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn named (run tests/setup to install bind9)")?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until it answers for its zones (after start or restart).
    pub async fn ready(&self) -> Result<()> {
        eventually(Duration::from_secs(20), "named answers", || async {
            let out = Command::new("dig")
                .args([
                    "@127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "+time=1",
                    "+tries=1",
                ])
                .args(["SOA", "builders.test."])
                .output()?;
            let text = String::from_utf8_lossy(&out.stdout);
            if !text.contains("status: NOERROR") {
                bail!(
                    "not ready: {}",
                    text.lines().take(3).collect::<Vec<_>>().join(" ")
                );
            }
            Ok(())
        })
        .await
        .map_err(|e| e.context(self.log_tail()))
    }

    /// The address for `--dns-server`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Applies a dynamic update: `script` is nsupdate input for one zone (`zone …`, `update …`
    /// lines); this adds the server line and `send`.
    pub fn update(&self, script: &str) -> Result<()> {
        let mut child = Command::new("nsupdate")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawn nsupdate")?;
        let input = format!("server 127.0.0.1 {}\n{script}\nsend\n", self.port);
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(input.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "nsupdate failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Sets the Fly-style TXT record at `_instances.internal.` to these entries (none deletes it).
    pub fn set_instances(&self, entries: &[String]) -> Result<()> {
        let mut script = "zone internal.\nupdate delete _instances.internal. TXT\n".to_string();
        if !entries.is_empty() {
            // One record; the value split into strings of at most 255 bytes, as Fly does.
            let joined = entries.join(";");
            let strings: Vec<String> = joined
                .as_bytes()
                .chunks(255)
                .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
                .collect();
            script += &format!(
                "update add _instances.internal. 5 TXT {}\n",
                strings.join(" ")
            );
        }
        self.update(&script)
    }

    fn signal(&self, sig: &str) -> Result<()> {
        let pid = self.child.as_ref().context("named not running")?.id();
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()?
            .success();
        if !ok {
            bail!("kill {sig} {pid} failed");
        }
        Ok(())
    }

    /// SIGSTOP: the server stops answering (queries time out).
    pub fn pause(&self) -> Result<()> {
        self.signal("-STOP")
    }

    /// SIGCONT.
    pub fn resume(&self) -> Result<()> {
        self.signal("-CONT")
    }

    /// SIGKILL (queries are refused).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again after `kill`, with its zones and journals.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()?;
        self.ready().await
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("named.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

fn named_bin() -> PathBuf {
    for p in ["/usr/sbin/named", "/usr/bin/named"] {
        if std::path::Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    PathBuf::from("named")
}
