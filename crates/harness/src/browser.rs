//! A real headless Chromium (Debian's `chromium`, or `$CONCORD_CHROMIUM`), driven over the
//! DevTools protocol through `--remote-debugging-pipe`: commands go in on the browser's fd 3 and
//! answers come out of its fd 4, each a JSON message ended by a NUL byte. No WebDriver, no
//! websocket: a shell wrapper puts the two pipes on those descriptors (`3<&0 4>&1`).
//!
//! One page, driven one command at a time (the pipe is held for each command and its answer, so
//! the methods take `&self` and can be awaited inside [`crate::eventually`]):
//! [`Browser::navigate`], [`Browser::eval`] (a script's value, for DOM checks),
//! [`Browser::screenshot`]. Events the browser sends between answers are skipped. The process is
//! killed on drop.

use anyhow::{Context, Result, bail};
use base64::Engine;
use serde_json::{Value, json};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};

/// How long one DevTools command may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A headless Chromium with one page attached.
pub struct Browser {
    child: Child,
    pipe: tokio::sync::Mutex<Pipe>,
    /// The page's session (flattened: its commands carry `sessionId`).
    session: String,
    _profile: TempDir,
}

/// The DevTools pipe: commands in, answers out, and the id of the last command.
struct Pipe {
    commands: ChildStdin,
    answers: BufReader<ChildStdout>,
    next_id: u64,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

impl Browser {
    /// Starts Chromium (its log in `log`) with a fresh profile, and attaches to its page.
    pub async fn start(log: &Path) -> Result<Browser> {
        let bin = std::env::var("CONCORD_CHROMIUM").unwrap_or_else(|_| "chromium".into());
        let profile = tempfile::tempdir()?;
        let child = tokio::process::Command::new("bash")
            .arg("-c")
            // fd 3: the commands (our stdin pipe); fd 4: the answers (our stdout pipe).
            .arg(r#"exec "$0" "$@" 3<&0 4>&1 0</dev/null 1>/dev/null"#)
            .arg(&bin)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--hide-scrollbars",
                "--window-size=1280,1400",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log)?)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {bin} (tests/setup installs Debian's chromium)"))?;
        let mut child = child;
        let commands = child.stdin.take().context("chromium's command pipe")?;
        let answers = BufReader::new(child.stdout.take().context("chromium's answer pipe")?);
        let mut b = Browser {
            child,
            pipe: tokio::sync::Mutex::new(Pipe {
                commands,
                answers,
                next_id: 0,
            }),
            session: String::new(),
            _profile: profile,
        };
        let targets = b.send(None, "Target.getTargets", json!({})).await?;
        let page = targets["targetInfos"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t["type"] == "page")
            .and_then(|t| t["targetId"].as_str())
            .map(String::from);
        let page = match page {
            Some(p) => p,
            None => b
                .send(None, "Target.createTarget", json!({"url": "about:blank"}))
                .await?["targetId"]
                .as_str()
                .context("a new page's id")?
                .to_string(),
        };
        let attached = b
            .send(
                None,
                "Target.attachToTarget",
                json!({"targetId": page, "flatten": true}),
            )
            .await?;
        b.session = attached["sessionId"]
            .as_str()
            .context("the page's session id")?
            .to_string();
        b.call("Page.enable", json!({})).await?;
        Ok(b)
    }

    /// Sends one command (to the browser, or to session `session`) and returns its result.
    async fn send(&self, session: Option<&str>, method: &str, params: Value) -> Result<Value> {
        let mut pipe = self.pipe.lock().await;
        pipe.next_id += 1;
        let id = pipe.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg)?;
        bytes.push(0);
        pipe.commands.write_all(&bytes).await?;
        pipe.commands.flush().await?;
        tokio::time::timeout(CALL_TIMEOUT, pipe.answer(id))
            .await
            .with_context(|| format!("chromium did not answer {method} in {CALL_TIMEOUT:?}"))?
            .with_context(|| format!("DevTools {method}"))
    }

    /// A command to the page.
    pub async fn call(&self, method: &str, params: Value) -> Result<Value> {
        self.send(Some(&self.session), method, params).await
    }

    /// Opens `url` in the page (returns once the navigation is under way; await the DOM).
    pub async fn navigate(&self, url: &str) -> Result<()> {
        let r = self.call("Page.navigate", json!({"url": url})).await?;
        if let Some(e) = r.get("errorText") {
            bail!("navigate to {url}: {e}");
        }
        Ok(())
    }

    /// The value of `expression` evaluated in the page (JSON-serialisable results only).
    pub async fn eval(&self, expression: &str) -> Result<Value> {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true}),
            )
            .await?;
        if let Some(e) = r.get("exceptionDetails") {
            bail!("{expression}: {e}");
        }
        Ok(r["result"]["value"].clone())
    }

    /// Saves a PNG of the whole page to `path`.
    pub async fn screenshot(&self, path: &Path) -> Result<()> {
        let r = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .await?;
        let data = r["data"].as_str().context("screenshot data")?;
        let png = base64::engine::general_purpose::STANDARD.decode(data)?;
        std::fs::write(path, png).with_context(|| format!("write {}", path.display()))
    }
}

impl Pipe {
    /// Reads messages until the answer to `id`, skipping events.
    async fn answer(&mut self, id: u64) -> Result<Value> {
        loop {
            let mut buf = Vec::new();
            let n = self.answers.read_until(0, &mut buf).await?;
            if n == 0 {
                bail!("chromium closed its DevTools pipe (it exited)");
            }
            buf.pop_if(|b| *b == 0);
            let msg: Value = serde_json::from_slice(&buf).context("a DevTools message")?;
            if msg["id"] != id {
                continue;
            }
            if let Some(e) = msg.get("error") {
                bail!("{e}");
            }
            return Ok(msg["result"].clone());
        }
    }
}
