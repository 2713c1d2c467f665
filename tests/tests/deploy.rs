//! The deploy files are checked (issue 18): the container image definition by hadolint, the
//! Kubernetes manifests against the Kubernetes schemas (kubernetes-validate, offline), the
//! systemd unit by `systemd-analyze verify` — each checker shown to refuse a broken copy — and
//! all of them against the real binary: every `concord serve` flag they pass is one it takes, and
//! the ports they open are the ones it serves. What only a real cluster can check is listed in
//! deploy/README.md.

use anyhow::{Context, Result, ensure};
use concord_harness::concord_bin;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

fn read(path: &str) -> Result<String> {
    std::fs::read_to_string(deploy(path)).with_context(|| format!("read deploy/{path}"))
}

/// Runs `tool args…`: whether it succeeded, and what it printed.
fn run(tool: &str, args: &[&str]) -> Result<(bool, String)> {
    let out = Command::new(tool)
        .args(args)
        .output()
        .with_context(|| format!("run {tool} (tests/setup installs it)"))?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    Ok((out.status.success(), text))
}

/// A copy of deploy file `path` with `from` replaced by `to`, in `dir`.
fn broken(dir: &Path, path: &str, from: &str, to: &str) -> Result<PathBuf> {
    let text = read(path)?;
    ensure!(text.contains(from), "deploy/{path} has no {from:?}");
    let name = Path::new(path).file_name().context("a file name")?;
    let out = dir.join(name);
    std::fs::write(&out, text.replacen(from, to, 1))?;
    Ok(out)
}

/// The long flags `concord serve` takes.
fn serve_flags() -> Result<BTreeSet<String>> {
    let (ok, help) = run(&concord_bin().display().to_string(), &["serve", "--help"])?;
    ensure!(ok, "{help}");
    Ok(long_flags(&help))
}

fn long_flags(text: &str) -> BTreeSet<String> {
    text.split(|c: char| c.is_whitespace() || c == '"' || c == '=')
        .filter_map(|w| w.strip_prefix("--"))
        .map(|w| w.trim_end_matches([',', '\\', ']']).to_string())
        .filter(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_lowercase() || c == '-'))
        .collect()
}

/// The `concord serve` part of a file: from `concord serve` to the end of its command.
fn serve_command(text: &str, end: &str) -> Result<String> {
    let start = text.find("concord serve").context("no `concord serve`")?;
    let rest = &text[start..];
    Ok(rest[..rest.find(end).unwrap_or(rest.len())].to_string())
}

#[test]
fn the_dockerfile_passes_hadolint_and_opens_the_replicas_ports() -> Result<()> {
    let file = deploy("container/Dockerfile").display().to_string();
    let (ok, out) = run("hadolint", &[&file])?;
    ensure!(ok, "hadolint: {out}");
    // The checker refuses what it should: an unpinned apt install without the reasoned ignore.
    let dir = tempfile::tempdir()?;
    let bad = broken(
        dir.path(),
        "container/Dockerfile",
        "# hadolint ignore=DL3008\n",
        "",
    )?;
    let (ok, out) = run("hadolint", &[&bad.display().to_string()])?;
    ensure!(
        !ok && out.contains("DL3008"),
        "hadolint passed a broken copy: {out}"
    );
    let text = read("container/Dockerfile")?;
    ensure!(
        text.contains("EXPOSE 7100 8100 18000"),
        "the replicas' ports"
    );
    ensure!(
        text.contains("USER 65532:65532"),
        "the manifest's runAsUser"
    );
    ensure!(
        std::fs::read_to_string(deploy("../.dockerignore"))?.contains("target/"),
        "the build context leaves build output out"
    );
    Ok(())
}

#[test]
fn the_kubernetes_manifests_pass_the_schemas_and_match_the_binary() -> Result<()> {
    let file = deploy("kubernetes/concord.yaml").display().to_string();
    let (ok, out) = run("kubernetes-validate", &["--strict", &file])?;
    ensure!(ok, "kubernetes-validate: {out}");
    ensure!(
        out.matches("passed for resource").count() == 3,
        "three resources: {out}"
    );
    let dir = tempfile::tempdir()?;
    let bad = broken(
        dir.path(),
        "kubernetes/concord.yaml",
        "containerPort: 7100",
        "containerPort: peer-port",
    )?;
    let (ok, out) = run(
        "kubernetes-validate",
        &["--strict", &bad.display().to_string()],
    )?;
    ensure!(!ok, "kubernetes-validate passed a broken copy: {out}");

    let text = read("kubernetes/concord.yaml")?;
    let flags = long_flags(&serve_command(&text, "ports:")?);
    let known = serve_flags()?;
    ensure!(flags.len() >= 10, "{flags:?}");
    for f in &flags {
        ensure!(
            known.contains(f),
            "the manifest passes --{f}, which `concord serve` does not take"
        );
    }
    for port in [
        "containerPort: 7100",
        "containerPort: 8100",
        "containerPort: 18000",
    ] {
        ensure!(text.contains(port), "{port}");
    }
    ensure!(
        text.contains("path: /readyz") && text.contains("path: /healthz"),
        "readiness on /readyz, liveness on /healthz"
    );
    ensure!(
        !text.contains("Nothing listens on it yet"),
        "the stale xDS comment"
    );
    ensure!(
        text.contains("deploy/container/Dockerfile"),
        "where the image comes from"
    );
    Ok(())
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_and_matches_the_binary() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // verify checks that ExecStart's binary exists: point it at the one the tests built.
    let bin = concord_bin().display().to_string();
    let unit_text = read("systemd/concord@.service")?.replace("/usr/local/bin/concord", &bin);
    let unit = dir.path().join("concord@.service");
    std::fs::write(&unit, &unit_text)?;
    let (ok, out) = run("systemd-analyze", &["verify", &unit.display().to_string()])?;
    ensure!(ok && out.trim().is_empty(), "systemd-analyze verify: {out}");
    let bad_dir = tempfile::tempdir()?;
    let bad = bad_dir.path().join("concord@.service");
    std::fs::write(&bad, unit_text.replacen("Type=simple", "Type=simpel", 1))?;
    let (_, out) = run("systemd-analyze", &["verify", &bad.display().to_string()])?;
    ensure!(
        out.contains("simpel"),
        "systemd-analyze said nothing of a broken copy: {out}"
    );

    let text = read("systemd/concord@.service")?;
    let flags = long_flags(&serve_command(&text, "\n# ")?);
    let known = serve_flags()?;
    ensure!(
        flags.contains("config") && flags.contains("node-id"),
        "{flags:?}"
    );
    for f in &flags {
        ensure!(
            known.contains(f),
            "the unit passes --{f}, which `concord serve` does not take"
        );
    }
    // The example config file is one `concord serve` reads.
    let example = deploy("systemd/node-1.toml.example");
    let toml = std::fs::read_to_string(&example)?;
    for key in toml
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim().to_string()))
        .filter(|k| !k.is_empty() && !k.starts_with('['))
    {
        ensure!(
            known.contains(&key),
            "node-1.toml.example sets {key:?}, which is no `concord serve` flag"
        );
    }
    Ok(())
}
