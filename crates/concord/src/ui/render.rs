//! The status page's HTML, rendered here from a [`ClusterView`]: the whole page for `GET /ui`,
//! and each section alone for the live updates (`/ui/events`), which the page's script swaps in.
//! One renderer for both, so a reload and a live update show the same thing. Pure: every string
//! that came from outside (Envoy node ids, NACK messages, DNS names, errors) is escaped.

use concord_api::envoys::ClusterEnvoy;
use concord_api::envoys::ReplicaAnswer;
use concord_api::view::{ChangeAcks, ClusterView, ReplicaView};
use std::fmt::Write;

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The whole page of cluster `cluster`, around its [`sections`].
pub fn page(cluster: &str, sections: &[(&'static str, String)]) -> String {
    let mut body = String::new();
    for (id, html) in sections {
        let _ = writeln!(body, "<section id=\"{id}\">{html}</section>");
    }
    format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>concord · {cluster}</title>\n\
         <link rel=\"stylesheet\" href=\"/ui/style.css\">\n\
         <script src=\"/ui/app.js\" defer></script>\n</head>\n<body>\n\
         <header><h1>concord <span class=\"dim\">{cluster}</span></h1>\
         <span id=\"live\" class=\"down\">connecting…</span></header>\n{body}</body>\n</html>\n",
        cluster = esc(cluster),
    )
}

/// The sections as the live updates carry them: one JSON object, `{"replicas": "<h2>…", …}`.
pub fn sections_json(sections: &[(&'static str, String)]) -> String {
    let map: serde_json::Map<String, serde_json::Value> = sections
        .iter()
        .map(|(id, html)| (id.to_string(), serde_json::Value::String(html.clone())))
        .collect();
    serde_json::Value::Object(map).to_string()
}

/// Each section's inner HTML, by element id.
pub fn sections(view: &ClusterView) -> [(&'static str, String); 5] {
    [
        ("summary", summary(view)),
        ("replicas", replicas(view)),
        ("envoys", envoys(view)),
        ("changes", changes(view)),
        ("poller", poller(view)),
    ]
}

/// `HH:MM:SS` (UTC) of Unix milliseconds.
fn clock(ms: u64) -> String {
    let s = ms / 1000;
    format!("{:02}:{:02}:{:02}", s / 3600 % 24, s / 60 % 60, s % 60)
}

/// How long before `now_ms` that `ms` was, for people.
fn ago(now_ms: u64, ms: u64) -> String {
    let d = now_ms.saturating_sub(ms);
    if d < 10_000 {
        format!("{:.1} s ago", d as f64 / 1000.0)
    } else if d < 120_000 {
        format!("{} s ago", d / 1000)
    } else {
        format!("{} min ago", d / 60_000)
    }
}

fn millis(us: u64) -> String {
    if us < 10_000 {
        format!("{:.1} ms", us as f64 / 1000.0)
    } else {
        format!("{} ms", us / 1000)
    }
}

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "–".into(), |v| v.to_string())
}

fn summary(v: &ClusterView) -> String {
    let leader = v
        .leader
        .map_or_else(|| "none".into(), |l| format!("node {l}"));
    let answered = v
        .replicas
        .iter()
        .filter(|r| matches!(r.answer, ReplicaAnswer::Answered { .. }))
        .count();
    format!(
        "<p id=\"leader\" data-leader=\"{}\">Leader <b>{leader}</b> · term {} · {answered} of {} \
         replicas answered · {} Envoys · as node {} saw it at {} UTC</p>",
        v.leader.map(|l| l.to_string()).unwrap_or_default(),
        v.term,
        v.replicas.len(),
        v.envoys.len(),
        v.asked,
        clock(v.at_ms),
    )
}

fn replicas(v: &ClusterView) -> String {
    let mut h = String::from(
        "<h2>Replicas</h2><table><thead><tr><th>node</th><th>address</th><th>role</th>\
         <th>term</th><th>leader</th><th>log</th><th>applied</th><th>snapshot</th>\
         <th>revision</th><th>health</th><th>Envoys</th><th>NACKs</th></tr></thead><tbody>",
    );
    for r in &v.replicas {
        replica_row(&mut h, r);
    }
    h.push_str("</tbody></table>");
    h
}

fn replica_row(h: &mut String, r: &ReplicaView) {
    let voter = if r.voter { "" } else { " (learner)" };
    match &r.answer {
        ReplicaAnswer::Answered {
            revision,
            envoys,
            nacks_total,
            serving,
            not_serving,
        } => {
            let raft = &r.raft;
            let role = raft.as_ref().map_or("?", |s| s.role.as_str()).to_string();
            let health = match (serving, not_serving) {
                (Some(true), _) => "<span class=\"ok\">SERVING</span>".to_string(),
                (Some(false), why) => format!(
                    "<span class=\"bad\">NOT_SERVING</span> {}",
                    esc(why.as_deref().unwrap_or(""))
                ),
                (None, _) => "<span class=\"dim\">unknown</span>".to_string(),
            };
            let cell = |f: fn(&concord_api::Status) -> Option<u64>| {
                raft.as_deref().map_or_else(|| "–".into(), |s| opt(f(s)))
            };
            let _ = write!(
                h,
                "<tr data-replica=\"{id}\" data-role=\"{role}\"><td>{id}</td><td>{addr}</td>\
                 <td class=\"role-{role}\">{role}{voter}</td><td>{term}</td><td>{leader}</td>\
                 <td>{log}</td><td>{applied}</td><td>{snap}</td><td>{revision}</td>\
                 <td>{health}</td><td>{envoys}</td><td>{nacks_total}</td></tr>",
                id = r.node_id,
                addr = esc(&r.addr),
                term = cell(|s| Some(s.term)),
                leader = cell(|s| s.leader),
                log = cell(|s| s.last_log_index),
                applied = cell(|s| s.applied_index),
                snap = cell(|s| s.snapshot_index),
            );
        }
        ReplicaAnswer::Failed { error } => {
            let _ = write!(
                h,
                "<tr data-replica=\"{id}\" data-role=\"unanswered\" class=\"gone\"><td>{id}</td>\
                 <td>{addr}</td><td colspan=\"7\">–</td><td><span class=\"bad\">NO ANSWER</span> \
                 {error}</td><td>–</td><td>–</td></tr>",
                id = r.node_id,
                addr = esc(&r.addr),
                error = esc(error),
            );
        }
    }
}

fn envoys(v: &ClusterView) -> String {
    let mut h = format!(
        "<h2>Envoys <span class=\"dim\">{}</span></h2>",
        v.envoys.len()
    );
    if v.envoys.is_empty() {
        h.push_str("<p class=\"dim\">No Envoy streams from any replica that answered.</p>");
        return h;
    }
    h.push_str(
        "<table><thead><tr><th>Envoy</th><th>node cluster</th><th>replica</th><th>state</th>\
         <th>versions (sent / ACKed)</th><th>connected</th><th>last NACK</th></tr></thead><tbody>",
    );
    for e in &v.envoys {
        envoy_row(&mut h, e, v.at_ms);
    }
    h.push_str("</tbody></table>");
    h
}

fn envoy_row(h: &mut String, e: &ClusterEnvoy, now_ms: u64) {
    let state = e.sync_state().as_str();
    let mut versions = String::new();
    for (name, t) in &e.envoy.types {
        let pending = if t.pending { " …" } else { "" };
        let _ = write!(
            versions,
            "<span class=\"type\">{} {} / {}{pending}</span> ",
            esc(name),
            opt(t.sent),
            opt(t.acked)
        );
    }
    let nack = e.envoy.last_nack.as_ref().map_or_else(String::new, |n| {
        format!(
            "{} v{} at {}: <span class=\"nack\">{}</span>",
            esc(&n.type_name),
            n.version,
            clock(n.at_ms),
            esc(&n.message)
        )
    });
    let _ = write!(
        h,
        "<tr data-envoy=\"{id}\" data-state=\"{state}\" data-replica=\"{replica}\"><td>{id}</td>\
         <td>{cluster}</td><td>{replica} <span class=\"dim\">at {rev}</span></td>\
         <td class=\"state-{state}\">{state}</td><td>{versions}</td><td>{since}</td>\
         <td>{nack}</td></tr>",
        id = esc(&e.envoy.node_id),
        cluster = esc(&e.envoy.node_cluster),
        replica = e.replica,
        rev = e.replica_revision,
        since = ago(now_ms, e.envoy.connected_at_ms),
    );
}

/// Changes listed in the table (the chart shows every one of the last hour).
const LISTED: usize = 12;

fn changes(v: &ClusterView) -> String {
    let envoys = v.envoys.len() as u64;
    let mut h = format!(
        "<h2>Changes <span class=\"dim\">{} in the last hour</span></h2>",
        v.changes.len()
    );
    h.push_str(&chart(&v.changes, v.at_ms));
    if v.changes.is_empty() {
        h.push_str("<p class=\"dim\">No change in the last hour.</p>");
        return h;
    }
    h.push_str(
        "<table><thead><tr><th>revision</th><th>when (UTC)</th><th>what</th>\
         <th>ACKed by (on replicas that answered)</th><th>until the last ACK</th></tr></thead><tbody>",
    );
    for c in v.changes.iter().rev().take(LISTED) {
        let acked = if c.acked >= envoys && envoys > 0 {
            format!("all {} Envoys", c.acked)
        } else {
            format!("{} of {envoys} Envoys", c.acked)
        };
        let _ = write!(
            h,
            "<tr data-change=\"{rev}\"><td>{rev}</td><td>{at} <span class=\"dim\">{ago}</span></td>\
             <td>{what}</td><td>{acked}</td><td>{slowest}</td></tr>",
            rev = c.revision,
            at = clock(c.at_ms),
            ago = ago(v.at_ms, c.at_ms),
            what = esc(&c.what),
            slowest = c.slowest_ack_us.map_or_else(|| "–".into(), millis),
        );
    }
    h.push_str("</tbody></table>");
    h
}

/// The slowest ACK of each change of the last hour, as an SVG scatter chart (x: time, y: ms).
fn chart(changes: &[ChangeAcks], now_ms: u64) -> String {
    const W: f64 = 720.0;
    const H: f64 = 140.0;
    const LEFT: f64 = 56.0;
    const BOTTOM: f64 = 20.0;
    const HOUR_MS: f64 = 3_600_000.0;
    let points: Vec<(f64, f64, &ChangeAcks)> = changes
        .iter()
        .filter_map(|c| {
            let us = c.slowest_ack_us?;
            let age = now_ms.saturating_sub(c.at_ms) as f64;
            (age <= HOUR_MS).then_some((age, us as f64 / 1000.0, c))
        })
        .collect();
    // A round top of the y axis, at least 10 ms.
    let max = points.iter().map(|p| p.1).fold(10.0, f64::max);
    let top = [
        10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0,
    ]
    .into_iter()
    .find(|t| *t >= max)
    .unwrap_or(max.ceil());
    let mut s = format!(
        "<svg class=\"chart\" viewBox=\"0 0 {W} {H}\" role=\"img\" \
         aria-label=\"slowest ACK per change over the last hour\">\
         <line x1=\"{LEFT}\" y1=\"4\" x2=\"{LEFT}\" y2=\"{y0}\" class=\"axis\"/>\
         <line x1=\"{LEFT}\" y1=\"{y0}\" x2=\"{W}\" y2=\"{y0}\" class=\"axis\"/>\
         <text x=\"{lx}\" y=\"12\" class=\"label\">{top} ms</text>\
         <text x=\"{lx}\" y=\"{y0}\" class=\"label\">0</text>\
         <text x=\"{LEFT}\" y=\"{H}\" class=\"label\">−60 min</text>\
         <text x=\"{mid}\" y=\"{H}\" class=\"label\">−30 min</text>\
         <text x=\"{end}\" y=\"{H}\" class=\"label\">now</text>",
        y0 = H - BOTTOM,
        lx = 2,
        mid = LEFT + (W - LEFT) / 2.0 - 20.0,
        end = W - 24.0,
    );
    for (age, ms, c) in &points {
        // The right edge (now) sits inside the box, so a point there is drawn whole.
        let right = W - 6.0;
        let x = right - (right - LEFT) * age / HOUR_MS;
        let y = (H - BOTTOM) - (H - BOTTOM - 4.0) * (ms / top).min(1.0);
        let _ = write!(
            s,
            "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3\"><title>revision {}: {} · {:.1} ms</title>\
             </circle>",
            c.revision,
            esc(&c.what),
            ms
        );
    }
    s.push_str("</svg>");
    s
}

fn poller(v: &ClusterView) -> String {
    let mut h = String::from("<h2>DNS poller</h2>");
    let Some(p) = &v.poller else {
        let why = if v.leader.is_none() {
            "No leader: nobody polls until one is elected."
        } else {
            "No replica that answered polls DNS (discovery is off, or the leader has not started \
             polling)."
        };
        let _ = write!(
            h,
            "<p id=\"polling\" data-node=\"\" class=\"dim\">{why}</p>"
        );
        return h;
    };
    let s = &p.status;
    let last = s.last_poll_at_ms.map_or_else(
        || "never".to_string(),
        |at| {
            format!(
                "{} ({}, took {})",
                clock(at),
                ago(v.at_ms, at),
                s.last_poll_us.map_or_else(|| "–".into(), millis)
            )
        },
    );
    let _ = write!(
        h,
        "<p id=\"polling\" data-node=\"{node}\">Node <b>{node}</b> polls {server} for {sources} \
         every {interval} ms.</p><table class=\"facts\"><tbody>\
         <tr><th>last poll</th><td>{last}</td></tr>\
         <tr><th>last result</th><td>{result}</td></tr>\
         <tr><th>polls / errors</th><td>{polls} / {errors} ({consecutive} in a row now)</td></tr>\
         <tr><th>changes committed</th><td>{changes}</td></tr>\
         <tr><th>removal guard held</th><td>{held}</td></tr>\
         <tr><th>skipped entries</th><td>{skipped} now, {skipped_total} over all polls</td></tr>",
        node = p.node_id,
        server = esc(&s.server),
        sources = esc(&s.sources.join(", ")),
        interval = s.interval_ms,
        result = esc(&s.last_result),
        polls = s.polls,
        errors = s.errors,
        consecutive = s.consecutive_errors,
        changes = s.changes,
        held = s.held,
        skipped = s.skipped.len(),
        skipped_total = s.skipped_total,
    );
    if let Some((at, e)) = &s.last_error {
        let _ = write!(
            h,
            "<tr><th>last error</th><td>{} <span class=\"bad\">{}</span></td></tr>",
            clock(*at),
            esc(e)
        );
    }
    for (service, result) in &s.services {
        let _ = write!(
            h,
            "<tr><th>service {}</th><td>{}</td></tr>",
            esc(service),
            esc(result)
        );
    }
    h.push_str("</tbody></table>");
    if !s.skipped.is_empty() {
        h.push_str("<ul class=\"skipped\">");
        for k in s.skipped.iter().take(10) {
            let _ = write!(
                h,
                "<li>{} <code>{}</code>: {}</li>",
                esc(&k.name),
                esc(&k.entry),
                esc(&k.reason)
            );
        }
        h.push_str("</ul>");
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_api::envoys::{EnvoyStatus, NackStatus, TypeStatus};
    use concord_api::view::PollingReplica;
    use concord_api::{PollerStatus, Role, Status};

    fn status(id: u64, role: Role) -> Status {
        Status {
            cluster: "dev<1>".into(),
            node_id: id,
            role,
            term: 3,
            leader: Some(1),
            last_log_index: Some(20),
            applied_index: Some(19),
            snapshot_index: Some(10),
            purged_index: None,
            revision: 19,
            builders: 2,
            members: vec![],
            millis_since_quorum_ack: None,
            entry_format: None,
        }
    }

    fn view() -> ClusterView {
        let mut types = std::collections::BTreeMap::new();
        types.insert(
            "clusters".to_string(),
            Box::new(TypeStatus {
                sent: Some(19),
                acked: Some(18),
                ..TypeStatus::default()
            }),
        );
        ClusterView {
            asked: 2,
            at_ms: 3_600_000 * 5 + 61_000,
            cluster: "dev<1>".into(),
            leader: Some(1),
            term: 3,
            replicas: vec![
                ReplicaView {
                    node_id: 1,
                    addr: "127.0.0.1:7101".into(),
                    voter: true,
                    answer: ReplicaAnswer::Answered {
                        revision: 19,
                        envoys: 1,
                        nacks_total: 1,
                        serving: Some(true),
                        not_serving: None,
                    },
                    raft: Some(Box::new(status(1, Role::Leader))),
                },
                ReplicaView {
                    node_id: 3,
                    addr: "127.0.0.1:7103".into(),
                    voter: true,
                    answer: ReplicaAnswer::Failed {
                        error: "node 3 <gone>".into(),
                    },
                    raft: None,
                },
            ],
            envoys: vec![ClusterEnvoy {
                envoy: EnvoyStatus {
                    node_id: "envoy\"><script>alert(1)</script>".into(),
                    node_cluster: "edge".into(),
                    stream: 1,
                    peer: None,
                    connected_at_ms: 3_600_000 * 5,
                    types,
                    last_nack: Some(NackStatus {
                        type_name: "clusters".into(),
                        version: 19,
                        message: "bad <cluster> & worse".into(),
                        at_ms: 3_600_000 * 5 + 60_000,
                    }),
                    staged: None,
                },
                replica: 1,
                replica_revision: 19,
            }],
            changes: vec![ChangeAcks {
                revision: 19,
                at_ms: 3_600_000 * 5 + 60_000,
                what: "dns: put builder <b1>".into(),
                acked: 1,
                slowest_ack_us: Some(42_000),
            }],
            poller: Some(PollingReplica {
                node_id: 1,
                status: PollerStatus {
                    polling: true,
                    server: "127.0.0.1:5353".into(),
                    sources: vec!["builders.example.com".into()],
                    interval_ms: 100,
                    last_result: "held: would remove 3 of 4".into(),
                    held: 2,
                    ..PollerStatus::default()
                },
            }),
        }
    }

    fn html(v: &ClusterView) -> String {
        page(&v.cluster, &sections(v))
    }

    #[test]
    fn every_section_shows_what_the_view_holds() {
        let html = html(&view());
        for want in [
            "data-leader=\"1\"",
            "<tr data-replica=\"1\" data-role=\"leader\">",
            "<td>20</td><td>19</td><td>10</td>",
            "SERVING",
            "data-replica=\"3\" data-role=\"unanswered\"",
            "NO ANSWER</span> node 3 &lt;gone&gt;",
            "data-state=\"NACKED\"",
            "clusters 19 / 18",
            "bad &lt;cluster&gt; &amp; worse",
            "data-change=\"19\"",
            "all 1 Envoys",
            "42 ms",
            "<circle",
            "id=\"polling\" data-node=\"1\"",
            "held: would remove 3 of 4",
            "<title>concord · dev&lt;1&gt;</title>",
            "05:01:00",
        ] {
            assert!(html.contains(want), "{want:?} missing from\n{html}");
        }
    }

    #[test]
    fn nothing_from_outside_reaches_the_page_unescaped() {
        let html = html(&view());
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(html.contains("envoy&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(!html.contains("<b1>") && !html.contains("<gone>"));
    }

    #[test]
    fn an_empty_cluster_says_so() {
        let mut v = view();
        v.envoys.clear();
        v.changes.clear();
        v.poller = None;
        v.leader = None;
        let html = html(&v);
        assert!(html.contains("No Envoy streams"));
        assert!(html.contains("No change in the last hour"));
        assert!(html.contains("No leader: nobody polls"));
        assert!(html.contains("data-leader=\"\""));
    }
}
