//! A real DNS server for the tests: BIND 9 (`named`, installed by `tests/setup`) on a free
//! loopback port, UDP and TCP, authoritative for `builders.test.` and `internal.`, changed with
//! dynamic updates (`nsupdate`) as an operator would, and stopped, paused or killed on demand.
//! The local cluster runs one on a fixed port with a kept directory, detached ([`BindOptions`]).

use crate::{Dir, Launch, Proc, eventually, free_port};
use anyhow::{Context, Result, bail};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

/// A running `named`.
pub struct Bind {
    /// Its port (UDP and TCP) on 127.0.0.1.
    pub port: u16,
    dir: Dir,
    launch: Launch,
    proc: Option<Proc>,
}

/// Where and how a `named` runs; the default is a test's: a free port, a temporary directory,
/// killed on drop.
#[derive(Debug, Clone, Default)]
pub struct BindOptions {
    /// A fixed port instead of a free one.
    pub port: Option<u16>,
    /// A kept directory (zones, journals, log) instead of a temporary one. Its zone files are
    /// written only when missing: named replays its journal of dynamic updates on start.
    pub dir: Option<PathBuf>,
    /// Detached from this process, with a pid file in `dir` (needs `dir`).
    pub detach: bool,
}

const ZONES: &[&str] = &["builders.test", "internal"];

impl Bind {
    /// Starts `named` with empty zones on a free port and waits until it answers.
    pub async fn start() -> Result<Bind> {
        let bind = Bind::open(&BindOptions::default())?.spawned()?;
        bind.ready().await?;
        Ok(bind)
    }

    /// The `named` these options describe, adopted if it runs (from its pid file), else not
    /// started; writes its configuration, and its zone files when they are missing.
    pub fn open(opts: &BindOptions) -> Result<Bind> {
        anyhow::ensure!(
            !opts.detach || opts.dir.is_some(),
            "a detached named needs a kept dir"
        );
        let dir = Dir::new("concord-dns", opts.dir.as_deref())?;
        let port = opts.port.unwrap_or_else(free_port);
        let d = dir.path().display();
        let mut conf = format!(
            r#"options {{
    directory "{d}";
    pid-file none;
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
            let zone = dir.path().join(format!("{z}.db"));
            if !zone.exists() {
                // A journal without the zone file it was made against cannot be replayed.
                let _ = std::fs::remove_file(dir.path().join(format!("{z}.db.jnl")));
                std::fs::write(
                    zone,
                    format!(
                        "$TTL 5\n@ IN SOA ns1.{z}. hostmaster.{z}. ( 1 3600 600 86400 5 )\n  IN NS ns1.{z}.\nns1 IN A 127.0.0.1\n"
                    ),
                )?;
            }
        }
        crate::process::write_atomically(&dir.path().join("named.conf"), &conf)?;
        let launch = match opts.detach {
            true => Launch::detached(dir.path().join("named.pid")),
            false => Launch::owned(),
        };
        let mut bind = Bind {
            port,
            dir,
            launch,
            proc: None,
        };
        if opts.detach {
            bind.proc = Proc::adopt(&bind.dir.path().join("named.pid"), &bind.marker());
        }
        Ok(bind)
    }

    /// This one, started unless it runs.
    pub fn spawned(mut self) -> Result<Bind> {
        if !self.is_running() {
            self.spawn()?;
        }
        Ok(self)
    }

    /// Whether it runs.
    pub fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(Proc::is_running)
    }

    /// Its pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::pid)
    }

    /// Its process, taken out of this handle (to stop it together with others).
    pub fn take_proc(&mut self) -> Option<Proc> {
        self.proc.take()
    }

    /// Its directory (configuration, zones, journals, log).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Its log file.
    pub fn log(&self) -> PathBuf {
        self.dir.path().join("named.log")
    }

    fn marker(&self) -> String {
        self.dir.path().join("named.conf").display().to_string()
    }

    fn spawn(&mut self) -> Result<()> {
        let mut cmd = Command::new(named_bin());
        cmd.args(["-g", "-4", "-c"])
            .arg(self.dir.path().join("named.conf"))
            .args(["-p", &self.port.to_string()]);
        let proc = Proc::spawn(cmd, &self.log(), &self.marker(), &self.launch)
            .context("spawn named (run tests/setup to install bind9)")?;
        self.proc = Some(proc);
        Ok(())
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) -> Result<()> {
        if let Some(mut p) = self.proc.take() {
            p.terminate(grace)?;
        }
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

    fn signal(&mut self, sig: &str) -> Result<()> {
        self.proc.as_mut().context("named not running")?.signal(sig)
    }

    /// SIGSTOP: the server stops answering (queries time out).
    pub fn pause(&mut self) -> Result<()> {
        self.signal("-STOP")
    }

    /// SIGCONT.
    pub fn resume(&mut self) -> Result<()> {
        self.signal("-CONT")
    }

    /// SIGKILL (queries are refused).
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// Starts it again after `kill`, with its zones and journals.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()?;
        self.ready().await
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log()).unwrap_or_default();
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
