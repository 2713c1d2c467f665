//! `concord discovery`: the DNS poller as one replica sees it.

use super::Target;
use concord_api::DiscoveryStatus;
use std::process::ExitCode;

/// `concord discovery` for people.
fn render(v: &DiscoveryStatus) -> String {
    let mut out = format!("node {}: {}\n", v.node_id, v.note);
    if let Some(p) = &v.poller {
        out += &format!(
            "server {}  sources {}  interval {} ms\npolls {}  errors {}  changes {}  held {}  \
             stale {}  discovered {}  skipped (last poll) {}\nlast result: {}\n",
            p.server,
            // As a JSON list, as it has always printed.
            serde_json::to_string(&p.sources).unwrap_or_default(),
            p.interval_ms,
            p.polls,
            p.errors,
            p.changes,
            p.held,
            p.stale,
            p.discovered,
            p.skipped.len(),
            p.last_result,
        );
        if let Some(c) = &p.last_change {
            out += &format!(
                "last change: revision {} (+{} ~{} -{})",
                c.revision, c.added, c.updated, c.removed
            );
            let e = (c.endpoints_added, c.endpoints_updated, c.endpoints_removed);
            if e != (0, 0, 0) {
                out += &format!("  endpoints (+{} ~{} -{})", e.0, e.1, e.2);
            }
            out += "\n";
        }
        for (service, result) in &p.services {
            out += &format!("  service {service}: {result}\n");
        }
        for s in &p.skipped {
            out += &format!("  skipped {}: {:?}: {}\n", s.name, s.entry, s.reason);
        }
    }
    out
}

/// `concord discovery`.
pub async fn discovery(t: &Target) -> ExitCode {
    t.run(async |c| c.discovery().await, render).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_api::PollerStatus;

    #[test]
    fn for_people() {
        let mut v = DiscoveryStatus {
            node_id: 2,
            enabled: false,
            leader: None,
            polling: false,
            note: "off".into(),
            poller: None,
        };
        assert_eq!(render(&v), "node 2: off\n");
        v.poller = Some(PollerStatus {
            server: "127.0.0.1:53".into(),
            sources: vec!["txt:x:1".into()],
            ..PollerStatus::default()
        });
        assert!(render(&v).contains("server 127.0.0.1:53  sources [\"txt:x:1\"]  interval 0 ms\n"));
    }
}
