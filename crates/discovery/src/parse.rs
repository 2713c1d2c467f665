//! DNS answers → builders, for each record format. Pure and total: any input, however malformed,
//! yields the builders it validly describes plus a list of what was skipped and why — never a
//! panic, never an error that discards the rest of the answer.

use crate::template::SniTemplate;
use concord_registry::{Builder, Source};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

/// Something in an answer that did not make a builder.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Skipped {
    /// The DNS name it came from.
    pub name: String,
    /// The offending entry (truncated), for the log.
    pub entry: String,
    /// Why.
    pub reason: String,
}

/// What one name's answer yields.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// Valid builders, by id.
    pub builders: BTreeMap<String, Builder>,
    /// What was skipped.
    pub skipped: Vec<Skipped>,
}

impl Parsed {
    fn skip(&mut self, name: &str, entry: &str, reason: impl Into<String>) {
        let entry: String = entry.chars().take(120).collect();
        self.skipped.push(Skipped {
            name: name.to_string(),
            entry,
            reason: reason.into(),
        });
    }

    /// Adds a builder unless its id is taken (first one wins) or it is invalid.
    fn add(&mut self, name: &str, entry: &str, b: Builder) {
        if let Err(e) = b.validate() {
            self.skip(name, entry, e.to_string());
        } else if self.builders.contains_key(&b.id) {
            self.skip(name, entry, format!("duplicate id {:?}", b.id));
        } else {
            self.builders.insert(b.id.clone(), b);
        }
    }

    /// Adds builder `id` at `ip:port` with no other fields (SRV and A/AAAA records).
    fn add_at(
        &mut self,
        name: &str,
        entry: &str,
        id: &str,
        ip: IpAddr,
        port: u16,
        template: &SniTemplate,
    ) {
        let fields = Fields {
            id,
            ip: ip.to_string(),
            name,
            ..Fields::default()
        };
        match template.render(&fields) {
            Ok(sni) => self.add(name, entry, builder(&fields, ip, port, sni)),
            Err(e) => self.skip(name, entry, e.to_string()),
        }
    }

    /// Merges another name's builders into these; an id seen twice is skipped the second time.
    pub fn merge(&mut self, other: Parsed) {
        self.skipped.extend(other.skipped);
        for (id, b) in other.builders {
            match self.builders.entry(id) {
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(b);
                }
                std::collections::btree_map::Entry::Occupied(o) => {
                    let reason = format!("duplicate id {:?} across names", o.key());
                    self.skipped.push(Skipped {
                        name: b.sni.clone(),
                        entry: b.id.clone(),
                        reason,
                    });
                }
            }
        }
    }
}

/// Fields a record offers to the SNI template and labels.
#[derive(Debug, Default)]
pub struct Fields<'a> {
    /// Builder id.
    pub id: &'a str,
    /// Address, as text.
    pub ip: String,
    /// Region, or empty.
    pub region: &'a str,
    /// App, or empty.
    pub app: &'a str,
    /// The DNS name the record came from (no trailing dot).
    pub name: &'a str,
}

fn builder(fields: &Fields<'_>, ip: IpAddr, port: u16, sni: String) -> Builder {
    let mut labels = BTreeMap::new();
    if !fields.app.is_empty() {
        labels.insert("app".to_string(), fields.app.to_string());
    }
    Builder {
        id: fields.id.to_string(),
        addr: SocketAddr::new(ip, port),
        sni,
        region: fields.region.to_string(),
        labels,
        source: Source::Dns,
    }
}

/// Fly-style TXT: each record's strings are concatenated (a long value is split into strings of
/// at most 255 bytes), then split on `;` into entries of `key=value` pairs separated by `,`.
/// Keys: `instance` (the id, required), `ip` (required), `app`, `region`; any other key makes the
/// entry malformed. Builders listen on `port`.
pub fn fly_txt(name: &str, records: &[Vec<Vec<u8>>], port: u16, template: &SniTemplate) -> Parsed {
    let mut out = Parsed::default();
    for strings in records {
        let joined: Vec<u8> = strings.concat();
        let text = match std::str::from_utf8(&joined) {
            Ok(t) => t,
            Err(_) => {
                out.skip(name, &String::from_utf8_lossy(&joined), "not UTF-8");
                continue;
            }
        };
        for entry in text.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            match fly_entry(entry) {
                Ok((instance, ip, app, region)) => {
                    let fields = Fields {
                        id: instance,
                        ip: ip.to_string(),
                        region,
                        app,
                        name,
                    };
                    match template.render(&fields) {
                        Ok(sni) => out.add(name, entry, builder(&fields, ip, port, sni)),
                        Err(e) => out.skip(name, entry, e.to_string()),
                    }
                }
                Err(reason) => out.skip(name, entry, reason),
            }
        }
    }
    out
}

type FlyEntry<'a> = (&'a str, IpAddr, &'a str, &'a str);

fn fly_entry(entry: &str) -> Result<FlyEntry<'_>, String> {
    let (mut instance, mut ip, mut app, mut region) = (None, None, "", "");
    let mut seen = BTreeSet::new();
    for pair in entry.split(',').map(str::trim) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?} is not key=value"))?;
        let (k, v) = (k.trim(), v.trim());
        if !seen.insert(k) {
            return Err(format!("key {k:?} twice"));
        }
        match k {
            "instance" => instance = Some(v),
            "ip" => {
                ip = Some(
                    v.parse::<IpAddr>()
                        .map_err(|_| format!("invalid ip {v:?}"))?,
                )
            }
            "app" => app = v,
            "region" => region = v,
            other => return Err(format!("unknown key {other:?}")),
        }
    }
    let instance = instance
        .filter(|i| !i.is_empty())
        .ok_or("missing instance")?;
    let ip = ip.ok_or("missing ip")?;
    Ok((instance, ip, app, region))
}

/// One SRV record, with the addresses its target resolved to.
#[derive(Debug, Clone)]
pub struct SrvTarget {
    /// Target host name (no trailing dot).
    pub target: String,
    /// Port.
    pub port: u16,
    /// The record's weight (services' endpoints take it; builders have none).
    pub weight: u16,
    /// The target's A/AAAA addresses.
    pub addrs: Vec<IpAddr>,
}

/// SRV: one builder per target address, on the record's port. The id is the target's first
/// label, with `-<n>` appended when the target has several addresses.
pub fn srv(name: &str, records: &[SrvTarget], template: &SniTemplate) -> Parsed {
    let mut out = Parsed::default();
    for r in records {
        let entry = format!("{} {}", r.port, r.target);
        let label = r.target.split('.').next().unwrap_or("");
        if label.is_empty() || r.port == 0 {
            out.skip(name, &entry, "empty target or port 0");
            continue;
        }
        if r.addrs.is_empty() {
            out.skip(name, &entry, "target has no addresses");
            continue;
        }
        for (i, ip) in r.addrs.iter().enumerate() {
            let id = if r.addrs.len() == 1 {
                label.to_string()
            } else {
                format!("{label}-{i}")
            };
            out.add_at(name, &entry, &id, *ip, r.port, template);
        }
    }
    out
}

/// The id of an address builder: its address with `.` and `:` turned into `-`.
pub fn addr_id(ip: IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

/// A/AAAA: every address of the name is a builder on `port`.
pub fn addresses(name: &str, addrs: &[IpAddr], port: u16, template: &SniTemplate) -> Parsed {
    let mut out = Parsed::default();
    for ip in addrs {
        out.add_at(name, &ip.to_string(), &addr_id(*ip), *ip, port, template);
    }
    out
}

#[cfg(test)]
mod tests;
