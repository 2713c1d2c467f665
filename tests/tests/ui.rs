//! The status page (issue 18) in a real headless Chromium: a cluster with a read and a write
//! token, two Envoys on two replicas, DNS discovery from a real BIND and an API change. The page
//! is opened through the URL `concord ui` prints (its token becomes a cookie), its DOM is checked
//! for every replica, Envoy, change and the poller, the leader is SIGKILLed, and the same page —
//! not reloaded — shows the new leader and the killed replica as not answering. Screenshots of
//! both are saved (`$CARGO_TARGET_TMPDIR/ui/`). Bad input over HTTP: no token, an unknown
//! token, the cookie outside the page, unknown paths.

use anyhow::{Context, Result, ensure};
use concord_harness::browser::Browser;
use concord_harness::dns::Bind;
use concord_harness::envoy::Envoy;
use concord_harness::{Cluster, Options, concord_bin, eventually};
use serde_json::Value;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);
const WRITE: &str = "write-token-0123456789abcdef";
const READ: &str = "read+token/0123456789abcdef=";

/// Where the screenshots go.
fn shots() -> Result<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ui");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// `concord ui` against replica `id` with the read token: the URL it prints.
fn page_url(c: &Cluster, id: u64, token_file: &std::path::Path) -> Result<String> {
    let out = std::process::Command::new(concord_bin())
        .args(["--admin", &c.nodes[&id].admin, "--token-file"])
        .arg(token_file)
        .arg("ui")
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    ensure!(
        out.status.success(),
        "concord ui: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        text == format!(
            "{}/ui?token=read%2Btoken%2F0123456789abcdef%3D",
            c.nodes[&id].admin
        ),
        "{text}"
    );
    Ok(text)
}

/// The bad-input answers of the page's routes, over plain HTTP.
async fn bad_input(c: &Cluster, id: u64) -> Result<()> {
    let base = &c.nodes[&id].admin;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let r = http.get(format!("{base}/ui")).send().await?;
    ensure!(r.status() == 401, "no token: {}", r.status());
    let body = r.text().await?;
    ensure!(body.contains("concord ui"), "{body}");
    let r = http
        .get(format!("{base}/ui?token=not-a-token-at-all"))
        .send()
        .await?;
    ensure!(r.status() == 401, "unknown token: {}", r.status());
    ensure!(r.headers().get("set-cookie").is_none());

    // The printed URL: a cookie for /ui only, and a redirect that drops the token.
    let r = http
        .get(format!(
            "{base}/ui?token=read%2Btoken%2F0123456789abcdef%3D"
        ))
        .send()
        .await?;
    ensure!(r.status() == 303, "token in the URL: {}", r.status());
    ensure!(r.headers()["location"] == "/ui");
    let cookie = r.headers()["set-cookie"].to_str()?.to_string();
    ensure!(
        cookie == format!("concord_token={READ}; Path=/ui; HttpOnly; SameSite=Strict"),
        "{cookie}"
    );
    let with_cookie = |path: &str| {
        http.get(format!("{base}{path}"))
            .header("cookie", format!("concord_token={READ}"))
    };
    let r = with_cookie("/ui").send().await?;
    ensure!(r.status() == 200, "page with the cookie: {}", r.status());
    ensure!(r.text().await?.contains("data-replica=\"1\""));
    let r = with_cookie("/ui/state").send().await?;
    ensure!(r.status() == 200);
    let state: Value = r.json().await?;
    ensure!(
        state["replicas"].as_array().map(Vec::len) == Some(3),
        "{state}"
    );
    // The cookie is the page's: the API still needs the header.
    let r = with_cookie("/v1/status").send().await?;
    ensure!(r.status() == 401, "cookie on the API: {}", r.status());
    // A read token reads the page; nothing on it needs more.
    let r = http
        .get(format!("{base}/ui/state"))
        .bearer_auth(READ)
        .send()
        .await?;
    ensure!(r.status() == 200);
    let r = http
        .post(format!("{base}/ui/state"))
        .bearer_auth(READ)
        .send()
        .await?;
    ensure!(
        r.status() == 403,
        "a write with a read token: {}",
        r.status()
    );
    // Unknown paths: named, under the page and in the API.
    let r = with_cookie("/ui/nope").send().await?;
    ensure!(r.status() == 404);
    let body = r.text().await?;
    ensure!(
        body.contains("/ui/nope") && body.contains("href=\"/ui\""),
        "{body}"
    );
    let r = http
        .get(format!("{base}/v1/nope"))
        .bearer_auth(READ)
        .send()
        .await?;
    ensure!(r.status() == 404);
    let e: Value = r.json().await?;
    ensure!(e["error"]["code"] == "not_found", "{e}");
    ensure!(
        e["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("GET /v1/nope")),
        "{e}"
    );
    Ok(())
}

/// What the page shows, read from its DOM.
async fn dom(b: &Browser) -> Result<Value> {
    b.eval(
        r##"(() => {
            const rows = (sel, f) => Array.from(document.querySelectorAll(sel)).map(f);
            const polling = document.getElementById("polling");
            return {
                leader: document.getElementById("leader")?.dataset.leader ?? null,
                replicas: rows("#replicas tr[data-replica]", r => [r.dataset.replica, r.dataset.role]),
                envoys: rows("#envoys tr[data-envoy]", r => [r.dataset.envoy, r.dataset.state, r.dataset.replica]),
                changes: rows("#changes tr[data-change]", r => [r.cells[2].textContent, r.cells[3].textContent]),
                points: document.querySelectorAll("#changes svg circle").length,
                polling: polling ? polling.dataset.node : null,
                live: document.getElementById("live")?.textContent ?? null,
                marker: window.__concordMarker ?? null,
            };
        })()"##,
    )
    .await
}

fn role_of(d: &Value, id: u64) -> Option<String> {
    d["replicas"].as_array()?.iter().find_map(|r| {
        (r[0] == id.to_string().as_str()).then(|| r[1].as_str().unwrap_or("").to_string())
    })
}

#[tokio::test]
async fn the_status_page_follows_the_cluster_in_a_real_browser() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let tokens = dir.path().join("admin-tokens");
    std::fs::write(&tokens, format!("write {WRITE}\nread {READ}\n"))?;
    let read_token = dir.path().join("read-token");
    std::fs::write(&read_token, format!("{READ}\n"))?;
    let bind = Bind::start().await?;
    let mut c = Cluster::start(Options {
        extra: vec![
            "--admin-token-file".into(),
            tokens.display().to_string(),
            "--dns-server".into(),
            bind.addr(),
            "--dns-sni-template".into(),
            "{id}.dns.test".into(),
            "--dns-source".into(),
            "txt:_instances.internal:9443".into(),
        ],
        admin_token: Some(WRITE.into()),
        ..Options::default()
    })
    .await?;
    let leader = c.leader().await?;
    let page_on = c
        .nodes
        .keys()
        .copied()
        .find(|id| *id != leader)
        .context("a follower")?;
    let other = c
        .nodes
        .keys()
        .copied()
        .find(|id| *id != leader && *id != page_on)
        .context("another follower")?;
    // Two Envoys, on the leader and on the page's replica: one of them fails over.
    let on_leader = c.nodes[&leader].xds.clone();
    let on_page = c.nodes[&page_on].xds.clone();
    let on_other = c.nodes[&other].xds.clone();
    let _e1 = Envoy::start(&c, "envoy-a", &[&on_leader, &on_other], true).await?;
    let _e2 = Envoy::start(&c, "envoy-b", &[&on_page], true).await?;
    // A change from DNS and one from the API.
    bind.set_instances(&["instance=t1,app=builders,ip=127.0.0.11,region=ord".to_string()])?;
    c.put(page_on, "manual", 9001).await?;

    bad_input(&c, page_on).await?;
    let url = page_url(&c, page_on, &read_token)?;
    let b = Browser::start(&dir.path().join("chromium.log")).await?;
    b.navigate(&url).await?;
    let whole = |d: &Value| -> Result<()> {
        ensure!(
            d["leader"] == leader.to_string().as_str(),
            "leader {}",
            d["leader"]
        );
        for id in c.nodes.keys() {
            let want = if *id == leader { "leader" } else { "follower" };
            ensure!(role_of(d, *id).as_deref() == Some(want), "node {id}: {d}");
        }
        let envoys: Vec<(String, String)> = d["envoys"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                (
                    e[0].as_str().unwrap_or("").into(),
                    e[1].as_str().unwrap_or("").into(),
                )
            })
            .collect();
        ensure!(
            envoys
                == [
                    ("envoy-a".into(), "SYNCED".into()),
                    ("envoy-b".into(), "SYNCED".into())
                ],
            "envoys {envoys:?}"
        );
        // Both changes, each ACKed by both Envoys (on two replicas).
        let changes = d["changes"].to_string();
        for what in ["dns: put builder t1", "api: put builder manual"] {
            let row = format!("[\"{what}\",\"all 2 Envoys\"]");
            ensure!(changes.contains(&row), "changes {changes}: no {row}");
        }
        ensure!(
            d["points"].as_u64() >= Some(2),
            "chart points {}",
            d["points"]
        );
        ensure!(
            d["polling"] == leader.to_string().as_str(),
            "poller {}",
            d["polling"]
        );
        ensure!(d["live"] == "live", "live {}", d["live"]);
        Ok(())
    };
    let d = until(&b, "the page shows the whole cluster, live", whole).await?;
    println!("page before the kill: {d}");
    let before = shots()?.join("status-page-before-kill.png");
    b.screenshot(&before).await?;
    println!("screenshot: {}", before.display());

    // A marker a reload would wipe; then the leader dies.
    b.eval("window.__concordMarker = 'no reload'").await?;
    let killed_at = Instant::now();
    c.node(leader).kill();
    let moved = |d: &Value| -> Result<()> {
        let new = d["leader"].as_str().unwrap_or("");
        ensure!(
            !new.is_empty() && new != leader.to_string(),
            "leader {new:?}"
        );
        ensure!(
            role_of(d, leader).as_deref() == Some("unanswered"),
            "the killed node: {d}"
        );
        let new: u64 = new.parse()?;
        ensure!(role_of(d, new).as_deref() == Some("leader"), "{d}");
        ensure!(
            d["polling"] == new.to_string().as_str(),
            "poller {}",
            d["polling"]
        );
        ensure!(d["marker"] == "no reload", "the page was reloaded: {d}");
        ensure!(d["live"] == "live", "live {}", d["live"]);
        Ok(())
    };
    let d = until(&b, "the page shows the new leader without a reload", moved).await?;
    println!(
        "the page showed the new leader {:?} after {} ms: {d}",
        d["leader"],
        killed_at.elapsed().as_millis()
    );
    // The Envoy that streamed from the killed leader is back, from the other replica.
    until(&b, "envoy-a shows SYNCED on the surviving replica", |d| {
        let a = d["envoys"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e[0] == "envoy-a")
            .cloned()
            .unwrap_or_default();
        ensure!(
            a[1] == "SYNCED" && a[2] == other.to_string().as_str(),
            "{a}"
        );
        Ok(())
    })
    .await?;
    let after = shots()?.join("status-page-after-kill.png");
    b.screenshot(&after).await?;
    println!("screenshot: {}", after.display());
    Ok(())
}

/// Reads the page's DOM until `check` passes, for at most [`T`].
async fn until(b: &Browser, what: &str, check: impl Fn(&Value) -> Result<()>) -> Result<Value> {
    eventually(T, what, || async {
        let d = dom(b).await?;
        check(&d)?;
        Ok(d)
    })
    .await
}
