//! The admin API's bearer tokens, on real replicas: no token or an unknown one is 401, a read
//! token reads but cannot write (403), a write token does both, `/healthz` stays open, the token
//! file is re-read when it changes, the CLI sends the token from `CONCORD_TOKEN_FILE` or
//! `CONCORD_TOKEN`, and a replica refuses to start with its admin API exposed without tokens or
//! with a malformed token file.

use anyhow::{Context, Result, ensure};
use concord_harness::{Cluster, Options, admin_client, concord_bin, eventually, free_port, sni};
use reqwest::Method;
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const WRITE: &str = "write-token-0123456789abcdef";
const READ: &str = "read-token-0123456789abcdef";

fn token_file(path: &Path, read: &str) -> Result<()> {
    std::fs::write(path, format!("# test tokens\nwrite {WRITE}\nread {read}\n"))?;
    Ok(())
}

async fn start(tokens: &Path) -> Result<Cluster> {
    Cluster::start(Options {
        extra: vec!["--admin-token-file".into(), tokens.display().to_string()],
        admin_token: Some(WRITE.into()),
        ..Options::default()
    })
    .await
}

/// Sends a request with `token` (or none) to `base` and returns the status and JSON body.
async fn call(
    base: &str,
    token: Option<&str>,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Result<(u16, Value, Option<String>)> {
    let http = admin_client(token)?;
    let mut req = http.request(method, format!("{base}{path}"));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let text = resp.text().await?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
        challenge,
    ))
}

fn put_body(id: &str, port: u16) -> Value {
    json!({ "addr": format!("127.0.0.1:{port}"), "sni": sni(id) })
}

#[tokio::test]
async fn tokens_separate_reading_from_writing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let tokens = dir.path().join("admin-tokens");
    token_file(&tokens, READ)?;
    let c = start(&tokens).await?;
    let base = c.nodes[&1].admin.clone();

    // The probes stay open: liveness, and readiness (200 or 503, never 401).
    let (s, _, _) = call(&base, None, Method::GET, "/healthz", None).await?;
    ensure!(s == 200, "/healthz without a token: {s}");
    let (s, _, _) = call(&base, None, Method::GET, "/readyz", None).await?;
    ensure!(s == 200 || s == 503, "/readyz without a token: {s}");

    // No token, or an unknown one: 401 with a Bearer challenge, for reads and writes alike.
    for token in [None, Some("not-a-token-0123456789abcdef"), Some("")] {
        for (method, path, body) in [
            (Method::GET, "/v1/status", None),
            (Method::GET, "/metrics", None),
            (Method::GET, "/v1/builders", None),
            (Method::PUT, "/v1/builders/x", Some(put_body("x", 9001))),
            (Method::DELETE, "/v1/builders/x", None),
            (
                Method::POST,
                "/v1/cluster/voters",
                Some(json!({ "node_id": 9 })),
            ),
        ] {
            let (s, v, challenge) = call(&base, token, method.clone(), path, body).await?;
            ensure!(s == 401, "{method} {path} with {token:?}: {s} {v}");
            ensure!(v["error"]["code"] == "unauthorized", "{v}");
            ensure!(
                challenge
                    .as_deref()
                    .is_some_and(|c| c.starts_with("Bearer")),
                "{challenge:?}"
            );
        }
    }

    // A read token reads everything, /metrics included ...
    for path in [
        "/v1/status",
        "/v1/builders?consistent=true",
        "/v1/envoys",
        "/metrics",
    ] {
        let (s, v, _) = call(&base, Some(READ), Method::GET, path, None).await?;
        ensure!(s == 200, "GET {path} with the read token: {s} {v}");
    }
    // ... and writes nothing: 403.
    for (method, path, body) in [
        (Method::PUT, "/v1/builders/r", Some(put_body("r", 9002))),
        (
            Method::POST,
            "/v1/builders",
            Some(json!({ "removes": ["w"] })),
        ),
        (Method::DELETE, "/v1/builders/w", None),
        (
            Method::POST,
            "/v1/cluster/learners",
            Some(json!({ "node_id": 9, "addr": "127.0.0.1:1" })),
        ),
        (
            Method::POST,
            "/v1/cluster/voters",
            Some(json!({ "node_id": 9 })),
        ),
        (Method::DELETE, "/v1/cluster/members/3", None),
    ] {
        let (s, v, _) = call(&base, Some(READ), method.clone(), path, body).await?;
        ensure!(s == 403, "{method} {path} with the read token: {s} {v}");
        ensure!(v["error"]["code"] == "forbidden", "{v}");
    }

    // A write token writes, on any replica.
    let (s, v, _) = call(
        &c.nodes[&2].admin,
        Some(WRITE),
        Method::PUT,
        "/v1/builders/w",
        Some(put_body("w", 9003)),
    )
    .await?;
    ensure!(s == 200, "put with the write token: {s} {v}");
    // Nothing refused above reached the log; the membership is untouched.
    let (_, ids) = c.builders(1, true).await?;
    ensure!(ids == ["w"], "{ids:?}");
    let status = c.status(3).await?;
    ensure!(status.members.len() == 3, "{status:?}");
    Ok(())
}

#[tokio::test]
async fn token_file_is_reloaded_and_cli_sends_the_token() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let tokens = dir.path().join("admin-tokens");
    token_file(&tokens, READ)?;
    let c = start(&tokens).await?;
    let admin = c.nodes[&1].admin.clone();

    // The CLI: a file with the token alone, a line of the replicas' token file, or $CONCORD_TOKEN.
    let write_file = dir.path().join("write-token");
    std::fs::write(&write_file, format!("{WRITE}\n"))?;
    let cli = |env: &[(&str, &str)], args: &[&str]| -> Result<(i32, String)> {
        let mut cmd = Command::new(concord_bin());
        cmd.env_remove("CONCORD_TOKEN")
            .env_remove("CONCORD_TOKEN_FILE")
            .args(["--admin", &admin])
            .args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().context("run the concord CLI")?;
        Ok((
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ))
    };
    let put = [
        "builders",
        "put",
        "cli",
        "--addr",
        "127.0.0.1:9004",
        "--sni",
        "cli.builders.test",
    ];
    let (code, out) = cli(&[], &put)?;
    ensure!(
        code == 1 && out.contains("CONCORD_TOKEN_FILE"),
        "no token: {code} {out}"
    );
    let write_path = write_file.display().to_string();
    let (code, out) = cli(&[("CONCORD_TOKEN_FILE", &write_path)], &put)?;
    ensure!(
        code == 0 && out.contains("ok: revision"),
        "write token file: {code} {out}"
    );
    let (code, out) = cli(&[("CONCORD_TOKEN", READ)], &["builders", "list"])?;
    ensure!(code == 0 && out.contains("cli"), "read token: {code} {out}");
    let (code, out) = cli(&[("CONCORD_TOKEN", READ)], &["builders", "rm", "cli"])?;
    ensure!(
        code == 1 && out.contains("only read"),
        "read token writing: {code} {out}"
    );
    // The replicas' own token file works with --token-file (its first token, the write one).
    let server_file = tokens.display().to_string();
    let (code, out) = cli(
        &[],
        &["--token-file", &server_file, "builders", "rm", "cli"],
    )?;
    ensure!(
        code == 0,
        "--token-file with the server's file: {code} {out}"
    );
    let missing = dir.path().join("missing").display().to_string();
    let (code, out) = cli(&[("CONCORD_TOKEN_FILE", &missing)], &["cluster", "status"])?;
    ensure!(
        code == 2 && out.contains("cannot read token file"),
        "{code} {out}"
    );

    // Rotate the read token: the new one is accepted and the old one refused, without a restart.
    let new_read = "rotated-read-token-0123456789";
    token_file(&tokens, new_read)?;
    eventually(
        Duration::from_secs(15),
        "new read token accepted",
        || async {
            for id in [1, 2, 3] {
                let (s, v, _) = call(
                    &c.nodes[&id].admin,
                    Some(new_read),
                    Method::GET,
                    "/v1/status",
                    None,
                )
                .await?;
                ensure!(s == 200, "node {id}: {s} {v}");
            }
            Ok(())
        },
    )
    .await?;
    let (s, _, _) = call(&admin, Some(READ), Method::GET, "/v1/status", None).await?;
    ensure!(s == 401, "the replaced read token: {s}");
    // A malformed rewrite keeps the tokens in force (a half-written file locks nobody out).
    std::fs::write(&tokens, "write\n")?;
    eventually(
        Duration::from_secs(15),
        "malformed file reported",
        || async {
            let logs = c.logs();
            ensure!(logs.contains("invalid admin token file"), "not logged yet");
            Ok(())
        },
    )
    .await?;
    let (s, v, _) = call(&admin, Some(new_read), Method::GET, "/v1/status", None).await?;
    ensure!(
        s == 200,
        "tokens in force after a malformed rewrite: {s} {v}"
    );
    c.put(1, "after", 9005).await?;
    Ok(())
}

fn serve(args: &[&str]) -> Result<(i32, String)> {
    let out = Command::new(concord_bin())
        .arg("serve")
        .args(args)
        .env_remove("CONCORD_ADMIN_TOKEN_FILE")
        .env_remove("CONCORD_INSECURE_ADMIN")
        .output()
        .context("run concord serve")?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[test]
fn exposed_admin_without_tokens_or_with_a_bad_token_file_does_not_start() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data").display().to_string();
    let exposed = format!("0.0.0.0:{}", free_port());
    let (code, err) = serve(&["--data-dir", &data, "--admin-addr", &exposed])?;
    ensure!(
        code == 2 && err.contains("without tokens") && err.contains("--insecure-admin"),
        "{code} {err}"
    );
    let bad = dir.path().join("tokens");
    std::fs::write(&bad, format!("write {WRITE}\n\nread short\n"))?;
    let bad_path = bad.display().to_string();
    let (code, err) = serve(&["--data-dir", &data, "--admin-token-file", &bad_path])?;
    ensure!(
        code == 2 && err.contains("invalid admin token file") && err.contains("line 3"),
        "{code} {err}"
    );
    let (code, err) = serve(&[
        "--data-dir",
        &data,
        "--admin-token-file",
        &dir.path().join("missing").display().to_string(),
    ])?;
    ensure!(
        code == 2 && err.contains("cannot read admin token file"),
        "{code} {err}"
    );
    ensure!(
        !Path::new(&data).exists(),
        "nothing may start before the config is valid"
    );
    Ok(())
}
