//! The never-backwards oracle over everything an Envoy was sent and answered: fed every ADS
//! request and response a [`crate::xds_tap`] proxy saw, in order, it checks each as it comes.
//!
//! What it knows of an Envoy is what the Envoy confirmed: the revision of each response it ACKed,
//! and the `version_info` it reports when it opens a state-of-the-world stream. A response of a
//! lower revision than the Envoy confirmed for that type, on any stream from any replica, is the
//! bug DESIGN rule 2 forbids (the replica was behind the Envoy and answered anyway). So is a NACK
//! (concord sent config the Envoy refused), an ACK of a revision below one already confirmed, an
//! Envoy reporting a version below what it confirmed, an ACK of a nonce the stream was never
//! sent, and a version that is not a decimal revision. Unlike sampling Envoy's readouts, nothing
//! between two samples is missed: every response is checked, whether or not the Envoy applied it.
//!
//! It assumes an Envoy keeps its state for the whole run (the chaos runs never restart Envoys).

use std::collections::{BTreeMap, HashMap, VecDeque};

/// Which ADS protocol a stream speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// `StreamAggregatedResources`.
    Sotw,
    /// `DeltaAggregatedResources`.
    Delta,
}

/// One ADS message as the oracle needs it, from either protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    /// Envoy → replica.
    Request {
        /// The type it is for.
        type_url: String,
        /// `version_info` (state of the world; empty in delta).
        version_info: String,
        /// The nonce of the response it answers (empty on a stream's first request of a type).
        response_nonce: String,
        /// `error_detail.message` when the request is a NACK.
        nack: Option<String>,
    },
    /// Replica → Envoy.
    Response {
        /// The type it carries.
        type_url: String,
        /// `version_info` or `system_version_info`.
        version: String,
        /// Its nonce, which the Envoy's ACK or NACK names.
        nonce: String,
    },
}

/// Where a message was seen: which Envoy, through which replica, on which stream.
#[derive(Clone, Debug)]
pub struct At {
    /// The Envoy's node id.
    pub envoy: String,
    /// The replica's node id.
    pub replica: u64,
    /// Unique per proxied stream for the whole run.
    pub stream: u64,
    /// The stream's protocol.
    pub protocol: Protocol,
}

/// Which rule a violation breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// An Envoy was sent, reported or ACKed a revision below one it had confirmed.
    NeverBackwards,
    /// The Envoy refused a response (NACK).
    Accepted,
    /// A message that breaks the protocol: an unknown nonce, a version that is not a revision.
    Protocol,
}

/// A broken rule, with its evidence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The rule.
    pub rule: Rule,
    /// The Envoy.
    pub envoy: String,
    /// The replica whose stream it was seen on.
    pub replica: u64,
    /// The stream.
    pub stream: u64,
    /// The type.
    pub type_url: String,
    /// What happened, with the revisions involved.
    pub what: String,
}

/// Counts per Envoy, so a blind oracle shows in a report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// ADS streams opened.
    pub streams: u64,
    /// Responses received.
    pub responses: u64,
    /// ACKs sent.
    pub acks: u64,
    /// NACKs sent.
    pub nacks: u64,
}

/// How many nonces a stream remembers: an Envoy ACKs or NACKs the newest few, never one older.
const NONCES_KEPT: usize = 64;

#[derive(Default)]
struct Stream {
    sent: VecDeque<(String, String, u64)>,
}

impl Stream {
    fn find(&self, nonce: &str) -> Option<(&str, u64)> {
        self.sent
            .iter()
            .rev()
            .find(|(n, ..)| n == nonce)
            .map(|(_, t, r)| (t.as_str(), *r))
    }
}

#[derive(Default)]
struct EnvoyState {
    /// The highest revision the Envoy confirmed holding, per type.
    confirmed: HashMap<String, u64>,
    counts: Counts,
}

/// The oracle: feed it with [`Oracle::see`] in the order the messages passed.
#[derive(Default)]
pub struct Oracle {
    envoys: BTreeMap<String, EnvoyState>,
    streams: HashMap<u64, Stream>,
}

impl Oracle {
    /// Checks `seen` at `at`; returns the rules it breaks (usually none).
    pub fn see(&mut self, at: &At, seen: &Seen) -> Vec<Violation> {
        let envoy = self.envoys.entry(at.envoy.clone()).or_default();
        let stream = match self.streams.entry(at.stream) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                envoy.counts.streams += 1;
                v.insert(Stream::default())
            }
        };
        let mut out = Vec::new();
        let mut violation = |rule: Rule, type_url: &str, what: String| {
            out.push(Violation {
                rule,
                envoy: at.envoy.clone(),
                replica: at.replica,
                stream: at.stream,
                type_url: type_url.to_string(),
                what,
            })
        };
        match seen {
            Seen::Response {
                type_url,
                version,
                nonce,
            } => {
                envoy.counts.responses += 1;
                let Some(rev) = revision(version) else {
                    violation(
                        Rule::Protocol,
                        type_url,
                        format!("response version {version:?} is not a revision"),
                    );
                    return out;
                };
                if let Some(&had) = envoy.confirmed.get(type_url)
                    && rev < had
                {
                    violation(
                        Rule::NeverBackwards,
                        type_url,
                        format!("sent revision {rev} to an Envoy that had confirmed {had}"),
                    );
                }
                if stream.sent.len() == NONCES_KEPT {
                    stream.sent.pop_front();
                }
                stream
                    .sent
                    .push_back((nonce.clone(), type_url.clone(), rev));
            }
            Seen::Request {
                type_url,
                version_info,
                response_nonce,
                nack,
            } => {
                if response_nonce.is_empty() {
                    // A stream's first request of a type: in state of the world it reports the
                    // version the Envoy holds.
                    if at.protocol == Protocol::Sotw && !version_info.is_empty() {
                        match revision(version_info) {
                            Some(v) => confirm(envoy, type_url, v, "reported", &mut violation),
                            None => violation(
                                Rule::Protocol,
                                type_url,
                                format!("Envoy reports version {version_info:?}, not a revision"),
                            ),
                        }
                    }
                    return out;
                }
                let Some((sent_type, rev)) = stream.find(response_nonce) else {
                    violation(
                        Rule::Protocol,
                        type_url,
                        format!("answers nonce {response_nonce:?}, which this stream was not sent"),
                    );
                    return out;
                };
                if sent_type != type_url {
                    violation(
                        Rule::Protocol,
                        type_url,
                        format!("answers nonce {response_nonce:?}, sent for {sent_type}"),
                    );
                }
                match nack {
                    Some(message) => {
                        envoy.counts.nacks += 1;
                        violation(
                            Rule::Accepted,
                            type_url,
                            format!("Envoy rejected revision {rev}: {message}"),
                        );
                    }
                    None => {
                        envoy.counts.acks += 1;
                        confirm(envoy, type_url, rev, "ACKed", &mut violation);
                    }
                }
            }
        }
        out
    }

    /// Counts per Envoy.
    pub fn counts(&self) -> BTreeMap<String, Counts> {
        self.envoys
            .iter()
            .map(|(k, v)| (k.clone(), v.counts.clone()))
            .collect()
    }

    /// The highest revision `envoy` confirmed for `type_url`.
    pub fn confirmed(&self, envoy: &str, type_url: &str) -> Option<u64> {
        self.envoys.get(envoy)?.confirmed.get(type_url).copied()
    }
}

/// Notes that the Envoy holds `rev` of `type_url`; holding less than it confirmed before is a
/// violation.
fn confirm(
    envoy: &mut EnvoyState,
    type_url: &str,
    rev: u64,
    how: &str,
    violation: &mut impl FnMut(Rule, &str, String),
) {
    let had = envoy.confirmed.entry(type_url.to_string()).or_insert(rev);
    if rev < *had {
        violation(
            Rule::NeverBackwards,
            type_url,
            format!("Envoy {how} revision {rev} after confirming {had}"),
        );
    }
    *had = (*had).max(rev);
}

/// A version as concord writes it: the registry revision in decimal.
fn revision(v: &str) -> Option<u64> {
    v.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CDS: &str = "cds";

    fn at(stream: u64, replica: u64, protocol: Protocol) -> At {
        At {
            envoy: "e1".into(),
            replica,
            stream,
            protocol,
        }
    }

    fn response(version: &str, nonce: &str) -> Seen {
        Seen::Response {
            type_url: CDS.into(),
            version: version.into(),
            nonce: nonce.into(),
        }
    }

    fn request(version: &str, nonce: &str, nack: Option<&str>) -> Seen {
        Seen::Request {
            type_url: CDS.into(),
            version_info: version.into(),
            response_nonce: nonce.into(),
            nack: nack.map(str::to_string),
        }
    }

    #[test]
    fn a_lower_revision_after_an_ack_on_another_replica_is_caught() {
        let mut o = Oracle::default();
        let (a, b) = (at(1, 1, Protocol::Delta), at(2, 3, Protocol::Delta));
        assert!(o.see(&a, &request("", "", None)).is_empty());
        assert!(o.see(&a, &response("7", "n1")).is_empty());
        assert!(o.see(&a, &request("", "n1", None)).is_empty());
        assert_eq!(o.confirmed("e1", CDS), Some(7));
        // The Envoy fails over to a lagging replica, which answers from revision 6.
        assert!(o.see(&b, &request("", "", None)).is_empty());
        let v = o.see(&b, &response("6", "m1"));
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!((v[0].replica, v[0].rule), (3, Rule::NeverBackwards));
        assert!(v[0].what.contains("sent revision 6"), "{}", v[0].what);
        // The same revision, or a newer one, is fine.
        assert!(o.see(&b, &response("7", "m2")).is_empty());
        assert!(o.see(&b, &response("8", "m3")).is_empty());
        assert_eq!(o.counts()["e1"].streams, 2);
    }

    #[test]
    fn a_reported_version_is_confirmed_and_an_unacked_response_is_not() {
        let mut o = Oracle::default();
        let a = at(1, 1, Protocol::Sotw);
        // Sent 9 but never ACKed (the stream broke): 8 is still allowed.
        assert!(o.see(&a, &request("5", "", None)).is_empty());
        assert!(o.see(&a, &response("9", "n1")).is_empty());
        assert!(
            o.see(&at(2, 2, Protocol::Sotw), &response("8", "x"))
                .is_empty()
        );
        // Not below what the Envoy reported when it opened the stream.
        assert_eq!(
            o.see(&at(3, 2, Protocol::Sotw), &response("4", "y")).len(),
            1
        );
        // Delta's first request carries no version: nothing is confirmed by it.
        assert!(
            o.see(&at(4, 2, Protocol::Delta), &request("3", "", None))
                .is_empty()
        );
    }

    #[test]
    fn nacks_unknown_nonces_regressions_and_bad_versions_are_caught() {
        let mut o = Oracle::default();
        let a = at(1, 1, Protocol::Sotw);
        o.see(&a, &response("7", "n1"));
        let v = o.see(&a, &request("6", "n1", Some("bad cluster")));
        assert!(
            v[0].what.contains("rejected revision 7: bad cluster"),
            "{v:?}"
        );
        assert_eq!(
            o.see(&a, &request("7", "n0", None)).len(),
            1,
            "unknown nonce"
        );
        assert_eq!(o.see(&a, &response("v7", "n2")).len(), 1, "not a revision");
        o.see(&a, &response("8", "n3"));
        assert!(o.see(&a, &request("8", "n3", None)).is_empty());
        // A new stream on which the Envoy says it holds 6: its state went backwards.
        let v = o.see(&at(2, 2, Protocol::Sotw), &request("6", "", None));
        assert!(
            v[0].what.contains("reported revision 6 after confirming 8"),
            "{v:?}"
        );
        let c = &o.counts()["e1"];
        assert_eq!((c.acks, c.nacks, c.responses), (1, 1, 3));
    }
}
