//! The processes of a world: started by this process and killed with it (tests), or detached
//! into their own process group with a pid file so that they outlive it and a later run can
//! adopt them again (the local cluster's dev tool).

use anyhow::{Context, Result, bail};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How a process is launched.
#[derive(Debug, Clone, Default)]
pub struct Launch {
    /// Detached: its own process group (a Ctrl-C of the launcher does not reach it), left running
    /// when its handle is dropped, and its pid written to `pid_file`.
    pub detach: bool,
    /// Where the pid goes (required with `detach`; optional otherwise).
    pub pid_file: Option<PathBuf>,
}

impl Launch {
    /// A process that dies with its handle.
    pub fn owned() -> Launch {
        Launch::default()
    }

    /// A detached process whose pid goes to `pid_file`.
    pub fn detached(pid_file: PathBuf) -> Launch {
        Launch {
            detach: true,
            pid_file: Some(pid_file),
        }
    }
}

/// A running (or exited) process of the world.
#[derive(Debug)]
pub struct Proc {
    pid: u32,
    /// Set when this process started it: the exit status is read from here, and it is reaped.
    child: Option<Child>,
    /// A string its command line contains, so that a reused pid is not mistaken for it.
    marker: String,
    pid_file: Option<PathBuf>,
    detached: bool,
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.detached {
            self.kill();
        }
    }
}

impl Proc {
    /// Spawns `cmd` with stdin from /dev/null and stdout and stderr appended to `log`.
    /// `marker` is a string of its arguments that identifies it (see [`Proc::adopt`]).
    pub fn spawn(mut cmd: Command, log: &Path, marker: &str, how: &Launch) -> Result<Proc> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("open log {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .env("NO_COLOR", "1");
        if how.detach {
            // Its own process group: a terminal's Ctrl-C to the launcher does not reach it.
            cmd.process_group(0);
        }
        let program = cmd.get_program().to_string_lossy().into_owned();
        let child = cmd.spawn().with_context(|| format!("spawn {program}"))?;
        let proc = Proc {
            pid: child.id(),
            child: Some(child),
            marker: marker.to_string(),
            pid_file: how.pid_file.clone(),
            detached: how.detach,
        };
        if let Some(f) = &proc.pid_file {
            write_atomically(f, &format!("{}\n", proc.pid))?;
        }
        Ok(proc)
    }

    /// The process a pid file names, if it is alive and its command line contains `marker`
    /// (a pid reused by another program is not adopted). Adopted processes are detached.
    pub fn adopt(pid_file: &Path, marker: &str) -> Option<Proc> {
        let pid: u32 = std::fs::read_to_string(pid_file)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let proc = Proc {
            pid,
            child: None,
            marker: marker.to_string(),
            pid_file: Some(pid_file.to_path_buf()),
            detached: true,
        };
        proc.alive().then_some(proc)
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether it still runs.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => self.alive(),
        }
    }

    /// For a process this one did not start: alive, not a zombie, and still the same program.
    fn alive(&self) -> bool {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        // The state follows the parenthesised command name: "pid (comm) S ...".
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim().chars().next());
        if matches!(state, None | Some('Z') | Some('X')) {
            return false;
        }
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", self.pid)).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        cmdline.contains(&self.marker)
    }

    /// Sends `signal` (`-KILL`, `-TERM`, `-STOP`, `-CONT`).
    pub fn signal(&mut self, signal: &str) -> Result<()> {
        if !self.is_running() {
            bail!("pid {} is not running", self.pid);
        }
        let ok = Command::new("kill")
            .args([signal, &self.pid.to_string()])
            .stderr(Stdio::null())
            .status()
            .context("run kill")?
            .success();
        if !ok {
            bail!("kill {signal} {} failed", self.pid);
        }
        Ok(())
    }

    /// SIGKILL, and wait until it is gone.
    pub fn kill(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        } else if self.signal("-KILL").is_ok() {
            let _ = self.wait_gone(Duration::from_secs(5));
        }
        self.forget_pid_file();
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`; the exit status when this
    /// process started it (an adopted one's is its parent's to read).
    pub fn terminate(&mut self, grace: Duration) -> Result<Option<ExitStatus>> {
        if !self.is_running() {
            self.forget_pid_file();
            return Ok(self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten()));
        }
        self.signal("-TERM")?;
        let exited = self.wait_gone(grace)?;
        let status = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten());
        if !exited {
            self.kill();
            bail!("pid {} did not exit within {grace:?} of SIGTERM", self.pid);
        }
        self.forget_pid_file();
        Ok(status)
    }

    /// Waits until it has exited, for at most `timeout`; whether it did.
    pub fn wait_gone(&mut self, timeout: Duration) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        while self.is_running() {
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(true)
    }

    fn forget_pid_file(&mut self) {
        if let Some(f) = self.pid_file.take() {
            // Only our own: a newer process may have written it since.
            if std::fs::read_to_string(&f).is_ok_and(|s| s.trim() == self.pid.to_string()) {
                let _ = std::fs::remove_file(f);
            }
        }
    }
}

/// How [`stop_all`] ended a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// It exited after SIGTERM.
    Exited,
    /// It was still running after the grace period and was killed.
    Killed,
}

/// SIGTERM to every process at once, then SIGKILL to those still running after `grace`.
pub fn stop_all(procs: Vec<(String, Proc)>, grace: Duration) -> Vec<(String, Stopped)> {
    let mut procs = procs;
    for (_, p) in &mut procs {
        let _ = p.signal("-TERM");
    }
    let deadline = Instant::now() + grace;
    procs
        .into_iter()
        .map(|(what, mut p)| {
            let left = deadline.saturating_duration_since(Instant::now());
            let how = match p.wait_gone(left) {
                Ok(true) => Stopped::Exited,
                _ => Stopped::Killed,
            };
            p.kill();
            (what, how)
        })
        .collect()
}

/// Writes `text` to `path` through a rename, so a reader never sees half of it.
pub fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleeper(marker: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "exec sleep 30", marker]);
        cmd
    }

    #[test]
    fn a_detached_process_outlives_its_handle_and_is_adopted_by_pid_file() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("p.pid");
        let log = dir.path().join("p.log");
        let how = Launch::detached(pid_file.clone());
        let first = Proc::spawn(sleeper("marker-a"), &log, "sleep 30", &how).unwrap();
        let pid = first.pid();
        drop(first);
        // Until the child has exec'd, its command line is still ours.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut again = loop {
            match Proc::adopt(&pid_file, "sleep 30") {
                Some(p) => break p,
                None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                None => panic!("not adopted: not running, or not its command line"),
            }
        };
        assert_eq!(again.pid(), pid);
        assert!(Proc::adopt(&pid_file, "something else").is_none());
        again.kill();
        assert!(!pid_file.exists(), "the pid file goes with the process");
        assert!(Proc::adopt(&pid_file, "sleep 30").is_none());
    }

    #[test]
    fn an_owned_process_dies_with_its_handle() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("p.pid");
        let how = Launch {
            detach: false,
            pid_file: Some(pid_file.clone()),
        };
        let p = Proc::spawn(sleeper("b"), &dir.path().join("log"), "sleep 30", &how).unwrap();
        let pid = p.pid();
        drop(p);
        assert!(
            !Path::new(&format!("/proc/{pid}/cmdline")).exists() || {
                let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                s.contains(") Z")
            }
        );
    }
}
