//! Services' endpoints from DNS (issue 14, the Consul-DNS case): a service whose desired state
//! names an SRV or A/AAAA name gets one endpoint per address the name answers with. The leader's
//! poller asks ([`crate::poller`]), the mass-removal guard holds back a large removal per
//! service as it does for builders, and what changed joins the poll's one fenced command. The
//! endpoints are the poller's (`dns@ADDR` ids, [`dns_endpoint_id`]): the API cannot change them,
//! and the poller never touches a registered one. Pure: no I/O and no clock.

use crate::guard::{Guard, GuardConfig, Held, Verdict};
use crate::parse::{Skipped, SrvTarget};
use concord_registry::Registry;
use concord_registry::services::{EndpointChange, dns_endpoint_id};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

/// One endpoint a name answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    /// Where it serves.
    pub addr: SocketAddr,
    /// Its load-balancing weight (1–128).
    pub weight: u32,
}

/// What one service's name answered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceAnswer {
    /// Endpoints by id.
    pub endpoints: BTreeMap<String, Found>,
    /// What could not be an endpoint, and why.
    pub skipped: Vec<Skipped>,
}

impl ServiceAnswer {
    fn add(&mut self, name: &str, ip: IpAddr, port: u16, weight: u32) {
        let entry = SocketAddr::new(ip, port);
        let reason = if port == 0 {
            Some("port 0")
        } else if ip.is_unspecified() || ip.is_multicast() {
            Some("not an address to send to")
        } else {
            None
        };
        match reason {
            Some(reason) => self.skipped.push(Skipped {
                name: name.to_string(),
                entry: entry.to_string(),
                reason: reason.into(),
            }),
            // An address listed twice is one endpoint: the first record's weight wins.
            None => {
                self.endpoints
                    .entry(dns_endpoint_id(entry))
                    .or_insert(Found {
                        addr: entry,
                        weight,
                    });
            }
        }
    }
}

/// SRV: one endpoint per target address, on the record's port, weighted by the record's weight
/// brought into Envoy's 1–128 (0, "rarely", becomes 1).
pub fn from_srv(name: &str, targets: &[SrvTarget]) -> ServiceAnswer {
    let mut out = ServiceAnswer::default();
    for t in targets {
        if t.addrs.is_empty() {
            out.skipped.push(Skipped {
                name: name.to_string(),
                entry: format!("{} {}", t.port, t.target),
                reason: "target has no addresses".into(),
            });
        }
        let weight = u32::from(t.weight).clamp(1, 128);
        for ip in &t.addrs {
            out.add(name, *ip, t.port, weight);
        }
    }
    out
}

/// A/AAAA: every address is an endpoint on `port`, of weight 1.
pub fn from_addresses(name: &str, ips: &[IpAddr], port: u16) -> ServiceAnswer {
    let mut out = ServiceAnswer::default();
    for ip in ips {
        out.add(name, *ip, port, 1);
    }
    out
}

/// What one poll changes in services' DNS endpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointsDecision {
    /// The changes, for the poll's command.
    pub changes: Vec<EndpointChange>,
    /// Endpoints added.
    pub added: usize,
    /// Endpoints whose weight changed.
    pub updated: usize,
    /// Endpoints removed.
    pub removed: usize,
    /// Services whose large removal the guard holds back.
    pub held: Vec<(String, Held)>,
}

/// Decides what `answers` (seen at `now`) change in the DNS endpoints of `registry`'s services.
///
/// A service in `answers` gets its answer, less the removals its guard holds; a service whose
/// desired state names no DNS any more loses its DNS endpoints at once; a service whose lookup
/// failed (absent from `answers`) keeps what it has. Guards of services that no longer poll DNS
/// are dropped.
pub fn decide_endpoints(
    registry: &Registry,
    answers: &BTreeMap<String, ServiceAnswer>,
    guards: &mut BTreeMap<String, Guard>,
    config: GuardConfig,
    now: Instant,
) -> EndpointsDecision {
    let mut out = EndpointsDecision::default();
    let services = &registry.desired().services;
    guards.retain(|name, _| services.get(name).is_some_and(|s| s.dns.is_some()));
    for (name, s) in services {
        // Runs every poll on the leader: only the poller's own endpoints are visited.
        let current: BTreeMap<String, u32> = registry
            .dns_endpoints_of(name)
            .map(|e| (e.id.clone(), e.weight))
            .collect();
        let deregister = |id: &String| EndpointChange::Deregister {
            service: name.clone(),
            id: id.clone(),
        };
        if s.dns.is_none() {
            out.removed += current.len();
            out.changes.extend(current.keys().map(deregister));
            continue;
        }
        let Some(answer) = answers.get(name) else {
            continue;
        };
        let guard = guards
            .entry(name.clone())
            .or_insert_with(|| Guard::new(config));
        let kept = match guard.judge(&current, &answer.endpoints, now) {
            Verdict::Apply => BTreeSet::new(),
            Verdict::Hold(h) => {
                let kept = h.kept.clone();
                out.held.push((name.clone(), h));
                kept
            }
        };
        for id in current.keys() {
            if !answer.endpoints.contains_key(id) && !kept.contains(id) {
                out.removed += 1;
                out.changes.push(deregister(id));
            }
        }
        for (id, f) in &answer.endpoints {
            match current.get(id) {
                Some(w) if *w == f.weight => continue,
                Some(_) => out.updated += 1,
                None => out.added += 1,
            }
            out.changes.push(EndpointChange::Register {
                service: name.clone(),
                id: id.clone(),
                addr: f.addr,
                weight: f.weight,
                labels: BTreeMap::new(),
                ttl: None,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_registry::services::Desired;
    use concord_registry::{Command, Source};
    use std::time::Duration;

    fn registry(services: serde_json::Value) -> Registry {
        let mut r = Registry::new();
        r.apply(1, &Command::raise_format(2));
        let d: Desired = serde_json::from_value(serde_json::json!({ "services": services }))
            .expect("desired state");
        let out = r.apply(2, &Command::apply_services(d));
        assert!(
            matches!(out, concord_registry::Outcome::Applied { .. }),
            "{out:?}"
        );
        r
    }

    fn srv_service() -> serde_json::Value {
        serde_json::json!({"protocol": "grpc", "dns": {"name": "_grpc._tcp.echo.test", "kind": "srv"}})
    }

    fn answer(addrs: &[&str]) -> ServiceAnswer {
        let ips: Vec<IpAddr> = addrs.iter().map(|a| a.parse().unwrap()).collect();
        from_addresses("echo.test", &ips, 8080)
    }

    /// Applies `d` as the poller would (a `dns` command).
    fn commit(r: &mut Registry, index: u64, d: &EndpointsDecision) {
        let cmd = Command {
            source: Source::Dns,
            ..Command::endpoints(d.changes.clone())
        };
        let out = r.apply(index, &cmd);
        assert!(
            matches!(out, concord_registry::Outcome::Applied { .. }),
            "{out:?}"
        );
    }

    fn ids(r: &Registry) -> Vec<String> {
        r.endpoints_of("echo").map(|e| e.id.clone()).collect()
    }

    #[test]
    fn srv_records_become_weighted_endpoints_and_bad_ones_are_skipped() {
        let t = |target: &str, port, weight, addrs: &[&str]| SrvTarget {
            target: target.into(),
            port,
            weight,
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        };
        let a = from_srv(
            "_grpc._tcp.echo.test",
            &[
                t("g1.test", 9001, 0, &["10.0.0.1"]),
                t("g2.test", 9002, 500, &["10.0.0.2", "fd00::2"]),
                t("g3.test", 0, 1, &["10.0.0.3"]),
                t("g4.test", 9004, 1, &[]),
                t("g5.test", 9005, 1, &["0.0.0.0"]),
                t("g1-again.test", 9001, 7, &["10.0.0.1"]),
            ],
        );
        let got: Vec<(&str, u32)> = a
            .endpoints
            .iter()
            .map(|(id, f)| (id.as_str(), f.weight))
            .collect();
        assert_eq!(
            got,
            [
                ("dns@10.0.0.1:9001", 1),
                ("dns@10.0.0.2:9002", 128),
                ("dns@[fd00::2]:9002", 128)
            ]
        );
        assert_eq!(a.skipped.len(), 3, "{:?}", a.skipped);
    }

    #[test]
    fn an_answer_adds_updates_and_removes_only_dns_endpoints() {
        let mut r = registry(serde_json::json!({ "echo": srv_service() }));
        let mut guards = BTreeMap::new();
        let off = GuardConfig {
            hold: Duration::ZERO,
            ..GuardConfig::default()
        };
        let now = Instant::now();
        let answers = BTreeMap::from([("echo".to_string(), answer(&["10.0.0.1", "10.0.0.2"]))]);
        let d = decide_endpoints(&r, &answers, &mut guards, off, now);
        assert_eq!((d.added, d.updated, d.removed), (2, 0, 0));
        commit(&mut r, 3, &d);
        // A registered instance is never the poller's to remove.
        r.apply(
            4,
            &Command::endpoints(vec![EndpointChange::Register {
                service: "echo".into(),
                id: "i1".into(),
                addr: "10.0.0.9:1".parse().unwrap(),
                weight: 1,
                labels: BTreeMap::new(),
                ttl: None,
            }]),
        );
        let d = decide_endpoints(&r, &answers, &mut guards, off, now);
        assert_eq!(d, EndpointsDecision::default(), "unchanged");
        let answers = BTreeMap::from([("echo".to_string(), answer(&["10.0.0.2", "10.0.0.3"]))]);
        let d = decide_endpoints(&r, &answers, &mut guards, off, now);
        assert_eq!((d.added, d.updated, d.removed), (1, 0, 1));
        commit(&mut r, 5, &d);
        assert_eq!(ids(&r), ["dns@10.0.0.2:8080", "dns@10.0.0.3:8080", "i1"]);
        // A failed lookup (no answer) keeps everything.
        let d = decide_endpoints(&r, &BTreeMap::new(), &mut guards, off, now);
        assert_eq!(d, EndpointsDecision::default());
    }

    #[test]
    fn a_large_removal_is_held_per_service_and_dropping_dns_removes_its_endpoints() {
        let mut r = registry(serde_json::json!({ "echo": srv_service() }));
        let mut guards = BTreeMap::new();
        let hold = Duration::from_secs(5);
        let config = GuardConfig {
            hold,
            ..GuardConfig::default()
        };
        let t0 = Instant::now();
        let all = BTreeMap::from([(
            "echo".to_string(),
            answer(&["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"]),
        )]);
        let d = decide_endpoints(&r, &all, &mut guards, config, t0);
        commit(&mut r, 3, &d);
        // An empty answer (a zone reload) is held back for the hold, then applied.
        let empty = BTreeMap::from([("echo".to_string(), ServiceAnswer::default())]);
        let d = decide_endpoints(&r, &empty, &mut guards, config, t0);
        assert!(d.changes.is_empty() && d.held.len() == 1, "{d:?}");
        let d = decide_endpoints(&r, &empty, &mut guards, config, t0 + hold);
        assert_eq!((d.removed, d.held.len()), (4, 0));
        // A service that stops naming DNS loses its DNS endpoints at once, guard or not.
        let d = decide_endpoints(&r, &all, &mut guards, config, t0 + hold);
        assert_eq!(d.changes.len(), 0, "nothing was removed yet: {d:?}");
        let mut plain = srv_service();
        plain.as_object_mut().unwrap().remove("dns");
        let d: Desired =
            serde_json::from_value(serde_json::json!({"services": {"echo": plain}})).unwrap();
        r.apply(4, &Command::apply_services(d));
        let d = decide_endpoints(&r, &all, &mut guards, config, t0 + hold);
        assert_eq!(d.removed, 4);
        assert!(guards.is_empty());
        commit(&mut r, 5, &d);
        assert!(ids(&r).is_empty());
    }
}
