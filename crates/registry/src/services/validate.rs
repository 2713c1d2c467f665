//! Validation of a whole [`Desired`] state before it is committed (DESIGN rule 12): names,
//! ranges, references between objects, and what Envoy itself would refuse. Every problem is
//! reported with the path of the field it is about (`route_tables.main.virtual_hosts[0].domains`),
//! which the CLI turns into a line of the operator's file. Deterministic: the leader validates
//! before proposing and every replica again when it applies.

use super::model::*;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FieldError {
    /// The field's path from the top of the file.
    pub path: String,
    /// What is wrong with it, and what to write instead where that is known.
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Envoy's retry conditions (`x-envoy-retry-on` and `x-envoy-retry-grpc-on`).
const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// The longest timeout or interval accepted anywhere.
const LONGEST_MS: u64 = 3_600_000;

struct Check {
    errors: Vec<FieldError>,
}

impl Check {
    fn fail(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }

    fn ensure(&mut self, ok: bool, path: &str, message: impl FnOnce() -> String) {
        if !ok {
            self.fail(path, message());
        }
    }

    fn name(&mut self, path: &str, kind: &str, name: &str) {
        let ok = !name.is_empty()
            && name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !name.starts_with('-')
            && !name.ends_with('-');
        self.ensure(ok, path, || {
            format!(
                "{kind} name {name:?} must be 1-63 lower-case letters, digits and '-', not \
                 starting or ending with '-'"
            )
        });
    }

    fn duration(&mut self, path: &str, d: super::Duration, zero_ok: bool) {
        let ms = d.as_millis();
        if ms == 0 && !zero_ok {
            self.fail(path, "must be longer than 0s");
        } else if ms > LONGEST_MS {
            self.fail(path, format!("{d} is longer than the longest accepted, 1h"));
        }
    }
}

/// Checks `d` as a whole; every problem found, ordered by path.
pub fn validate(d: &Desired) -> Result<(), Vec<FieldError>> {
    let mut c = Check { errors: Vec::new() };
    for (name, s) in &d.services {
        let p = format!("services.{name}");
        c.name(&p, "service", name);
        service(&mut c, &p, s);
    }
    for (name, t) in &d.route_tables {
        let p = format!("route_tables.{name}");
        c.name(&p, "route table", name);
        route_table(&mut c, &p, t, &d.services);
    }
    let mut addresses: BTreeMap<std::net::SocketAddr, &str> = BTreeMap::new();
    for (name, l) in &d.listeners {
        let p = format!("listeners.{name}");
        c.name(&p, "listener", name);
        listener(&mut c, &p, l, d);
        if let Some(other) = addresses.insert(l.address, name) {
            c.fail(
                format!("{p}.address"),
                format!("{} is also the address of listener {other:?}", l.address),
            );
        }
    }
    c.errors.sort();
    match c.errors.is_empty() {
        true => Ok(()),
        false => Err(c.errors),
    }
}

fn service(c: &mut Check, p: &str, s: &Service) {
    c.duration(&format!("{p}.connect_timeout"), s.connect_timeout, false);
    c.duration(&format!("{p}.drain_timeout"), s.drain_timeout, true);
    let cb = &s.circuit_breakers;
    for (field, v) in [
        ("max_connections", cb.max_connections),
        ("max_pending_requests", cb.max_pending_requests),
        ("max_requests", cb.max_requests),
        ("max_retries", cb.max_retries),
    ] {
        c.ensure(
            v != Some(0),
            &format!("{p}.circuit_breakers.{field}"),
            || "must be at least 1 (leave it out for Envoy's default)".into(),
        );
    }
    if let Some(o) = &s.outlier_detection {
        let q = format!("{p}.outlier_detection");
        c.ensure(
            o.consecutive_5xx >= 1,
            &format!("{q}.consecutive_5xx"),
            || "must be at least 1".into(),
        );
        c.duration(&format!("{q}.interval"), o.interval, false);
        c.duration(
            &format!("{q}.base_ejection_time"),
            o.base_ejection_time,
            false,
        );
        c.ensure(
            o.max_ejection_percent <= 100,
            &format!("{q}.max_ejection_percent"),
            || format!("{} is not a percentage (0-100)", o.max_ejection_percent),
        );
    }
    if let Some(h) = &s.health_check {
        health_check(c, &format!("{p}.health_check"), h);
    }
    if let Some(dns) = &s.dns {
        let q = format!("{p}.dns");
        c.ensure(is_query_name(&dns.name), &format!("{q}.name"), || {
            format!("{:?} is not a DNS name", dns.name)
        });
        match (dns.kind, dns.port) {
            (DnsKind::A, None | Some(0)) => {
                c.fail(format!("{q}.port"), "A/AAAA names need the endpoints' port")
            }
            (DnsKind::Srv, Some(_)) => c.fail(
                format!("{q}.port"),
                "SRV records carry their own ports; leave port out",
            ),
            _ => {}
        }
    }
    let mut seen = BTreeSet::new();
    for (i, e) in s.endpoints.iter().enumerate() {
        let q = format!("{p}.endpoints[{i}]");
        c.ensure(
            (1..=128).contains(&e.weight),
            &format!("{q}.weight"),
            || format!("weight {} is outside 1-128", e.weight),
        );
        c.ensure(e.addr.port() != 0, &format!("{q}.addr"), || {
            "port 0 is not an endpoint's port".into()
        });
        c.ensure(seen.insert(e.addr), &format!("{q}.addr"), || {
            format!("{} is listed twice", e.addr)
        });
    }
}

fn health_check(c: &mut Check, q: &str, h: &HealthCheck) {
    match h.kind {
        HealthCheckKind::Http => match &h.path {
            Some(path) if path.starts_with('/') => {}
            Some(path) => c.fail(format!("{q}.path"), format!("{path:?} must start with '/'")),
            None => c.fail(format!("{q}.path"), "an http health check needs a path"),
        },
        _ if h.path.is_some() => c.fail(format!("{q}.path"), "only http health checks have a path"),
        _ => {}
    }
    if h.service_name.is_some() && h.kind != HealthCheckKind::Grpc {
        c.fail(
            format!("{q}.service_name"),
            "only grpc health checks name a service",
        );
    }
    c.duration(&format!("{q}.interval"), h.interval, false);
    c.duration(&format!("{q}.timeout"), h.timeout, false);
    for (field, v) in [
        ("unhealthy_threshold", h.unhealthy_threshold),
        ("healthy_threshold", h.healthy_threshold),
    ] {
        c.ensure(v >= 1, &format!("{q}.{field}"), || {
            "must be at least 1".into()
        });
    }
}

fn route_table(c: &mut Check, p: &str, t: &RouteTable, services: &BTreeMap<String, Service>) {
    c.ensure(
        !t.virtual_hosts.is_empty(),
        &format!("{p}.virtual_hosts"),
        || "a route table needs at least one virtual host".into(),
    );
    let mut names = BTreeSet::new();
    let mut domains: BTreeMap<String, &str> = BTreeMap::new();
    for (i, vh) in t.virtual_hosts.iter().enumerate() {
        let q = format!("{p}.virtual_hosts[{i}]");
        c.name(&format!("{q}.name"), "virtual host", &vh.name);
        c.ensure(names.insert(&vh.name), &format!("{q}.name"), || {
            format!("virtual host {:?} appears twice", vh.name)
        });
        c.ensure(!vh.domains.is_empty(), &format!("{q}.domains"), || {
            "a virtual host needs at least one domain".into()
        });
        for (j, d) in vh.domains.iter().enumerate() {
            let path = format!("{q}.domains[{j}]");
            c.ensure(is_domain(d), &path, || {
                format!("{d:?} is not a domain (a host name, `*.example.com`, or `*`)")
            });
            if let Some(other) = domains.insert(d.to_ascii_lowercase(), &vh.name) {
                c.fail(
                    path,
                    format!("domain {d:?} is also in virtual host {other:?} of this route table"),
                );
            }
        }
        c.ensure(!vh.routes.is_empty(), &format!("{q}.routes"), || {
            "a virtual host needs at least one route".into()
        });
        for (j, r) in vh.routes.iter().enumerate() {
            route(c, &format!("{q}.routes[{j}]"), r, services);
        }
    }
}

/// A name to resolve: a DNS name whose labels may also hold '_' (`_grpc._tcp.echo.service.consul`).
fn is_query_name(name: &str) -> bool {
    crate::is_dns_name(&name.trim_end_matches('.').replace('_', "x"))
}

/// `*`, `*.suffix`, or a host name, each with an optional `:port`.
fn is_domain(d: &str) -> bool {
    let host = match d.rsplit_once(':') {
        Some((h, port)) if port.parse::<u16>().is_ok() => h,
        _ => d,
    };
    host == "*" || crate::is_dns_name(host.strip_prefix("*.").unwrap_or(host))
}

fn route(c: &mut Check, q: &str, r: &Route, services: &BTreeMap<String, Service>) {
    let m = &r.matches;
    let kinds = [m.prefix.is_some(), m.path.is_some(), m.grpc.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    c.ensure(kinds == 1, &format!("{q}.match"), || {
        "a match has exactly one of prefix, path and grpc".into()
    });
    for (field, v) in [("prefix", &m.prefix), ("path", &m.path)] {
        if let Some(v) = v {
            c.ensure(v.starts_with('/'), &format!("{q}.match.{field}"), || {
                format!("{v:?} must start with '/'")
            });
        }
    }
    if let Some(g) = &m.grpc {
        let ok = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_')
        };
        c.ensure(ok(&g.service), &format!("{q}.match.grpc.service"), || {
            format!(
                "{:?} is not a gRPC service name (package.Service)",
                g.service
            )
        });
        if let Some(method) = &g.method {
            c.ensure(ok(method), &format!("{q}.match.grpc.method"), || {
                format!("{method:?} is not a gRPC method name")
            });
        }
    }
    for (k, h) in m.headers.iter().enumerate() {
        let path = format!("{q}.match.headers[{k}]");
        c.ensure(is_header_name(&h.name), &format!("{path}.name"), || {
            format!("{:?} is not a lower-case header name", h.name)
        });
        let kinds = [h.exact.is_some(), h.prefix.is_some(), h.present.is_some()]
            .iter()
            .filter(|b| **b)
            .count();
        c.ensure(kinds == 1, &path, || {
            "a header match has exactly one of exact, prefix and present".into()
        });
    }
    match (&r.service, r.weighted.is_empty()) {
        (Some(s), true) => known(c, &format!("{q}.service"), s, services),
        (None, false) => {
            let mut total = 0u64;
            let mut seen = BTreeSet::new();
            for (k, w) in r.weighted.iter().enumerate() {
                let path = format!("{q}.weighted[{k}]");
                known(c, &format!("{path}.service"), &w.service, services);
                c.ensure(seen.insert(&w.service), &format!("{path}.service"), || {
                    format!("service {:?} appears twice in one split", w.service)
                });
                c.ensure(w.weight <= 100, &format!("{path}.weight"), || {
                    format!("weight {} is outside 0-100", w.weight)
                });
                total += u64::from(w.weight);
            }
            c.ensure(total == 100, &format!("{q}.weighted"), || {
                format!("the weights add up to {total}, not 100")
            });
        }
        _ => c.fail(
            q.to_string(),
            "a route goes to exactly one of service and weighted",
        ),
    }
    if let Some(t) = r.timeout {
        c.duration(&format!("{q}.timeout"), t, true);
    }
    if let Some(retry) = &r.retry {
        let p = format!("{q}.retry");
        c.ensure(!retry.retry_on.is_empty(), &format!("{p}.retry_on"), || {
            "name at least one condition (5xx, connect-failure, unavailable, …)".into()
        });
        for (k, cond) in retry.retry_on.iter().enumerate() {
            c.ensure(
                RETRY_ON.contains(&cond.as_str()),
                &format!("{p}.retry_on[{k}]"),
                || {
                    format!(
                        "{cond:?} is not one of Envoy's retry conditions: {}",
                        RETRY_ON.join(", ")
                    )
                },
            );
        }
        c.ensure(
            (1..=10).contains(&retry.attempts),
            &format!("{p}.attempts"),
            || format!("{} retries is outside 1-10", retry.attempts),
        );
        if let Some(t) = retry.per_try_timeout {
            c.duration(&format!("{p}.per_try_timeout"), t, false);
        }
        if let Some(b) = &retry.backoff {
            c.duration(&format!("{p}.backoff.base"), b.base, false);
            if let Some(max) = b.max {
                c.ensure(max >= b.base, &format!("{p}.backoff.max"), || {
                    format!("{max} is shorter than the base, {}", b.base)
                });
            }
        }
    }
    for name in r.request_headers_to_add.keys() {
        c.ensure(
            is_header_name(name) && name != "host",
            &format!("{q}.request_headers_to_add"),
            || format!("{name:?} cannot be added (lower-case names; not pseudo-headers or host)"),
        );
    }
    for (k, name) in r.request_headers_to_remove.iter().enumerate() {
        c.ensure(
            is_header_name(name) && name != "host",
            &format!("{q}.request_headers_to_remove[{k}]"),
            || format!("{name:?} cannot be removed (lower-case names; not pseudo-headers or host)"),
        );
    }
    if let Some(p) = &r.prefix_rewrite {
        c.ensure(p.starts_with('/'), &format!("{q}.prefix_rewrite"), || {
            format!("{p:?} must start with '/'")
        });
    }
    if let Some(h) = &r.host_rewrite {
        c.ensure(
            is_domain(h) && !h.contains('*'),
            &format!("{q}.host_rewrite"),
            || format!("{h:?} is not a host name"),
        );
    }
}

fn known(c: &mut Check, path: &str, service: &str, services: &BTreeMap<String, Service>) {
    c.ensure(services.contains_key(service), path, || {
        let names: Vec<&str> = services.keys().map(String::as_str).collect();
        format!(
            "no service {service:?} in this file (services: {})",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        )
    });
}

fn is_header_name(n: &str) -> bool {
    !n.is_empty()
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn listener(c: &mut Check, p: &str, l: &Listener, d: &Desired) {
    c.ensure(l.address.port() != 0, &format!("{p}.address"), || {
        "a listener needs a port".into()
    });
    c.ensure(
        d.route_tables.contains_key(&l.route_table),
        &format!("{p}.route_table"),
        || format!("no route table {:?} in this file", l.route_table),
    );
    if l.internal && !is_internal(l.address.ip()) {
        c.fail(
            format!("{p}.address"),
            format!(
                "{} is not an internal address (loopback, private or link-local) for an \
                 internal listener",
                l.address.ip()
            ),
        );
    }
    if let Some(tls) = &l.tls {
        c.name(
            &format!("{p}.tls.certificate"),
            "certificate",
            &tls.certificate,
        );
        c.ensure(!tls.alpn.is_empty(), &format!("{p}.tls.alpn"), || {
            "offer at least one protocol (h2, http/1.1)".into()
        });
        for (k, a) in tls.alpn.iter().enumerate() {
            c.ensure(
                a == "h2" || a == "http/1.1",
                &format!("{p}.tls.alpn[{k}]"),
                || format!("{a:?} is not h2 or http/1.1"),
            );
        }
    }
}

fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_private() || v4.is_link_local(),
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}
