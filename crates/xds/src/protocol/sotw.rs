//! The state-of-the-world protocol of one ADS stream, as plain data: what was sent per type, what
//! the Envoy ACKed or NACKed, and what to do with each request. No I/O, no clock; the SotW
//! driver (`stream::sotw`) drives it.
//!
//! The rules (DESIGN 3–5): answer the first request of every type, even at an equal version;
//! never answer with a revision lower than the one the Envoy reports (wait for it instead); an
//! ACK is a request with the last nonce and no `error_detail`; a NACK has `error_detail` and the
//! NACKed version is not sent to that Envoy again; requests with an older nonce are stale and
//! ignored.

use super::type_state;
use std::collections::BTreeMap;

/// What the server should do with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Send the current resources of this type.
    Respond,
    /// The Envoy holds a newer revision than this replica has applied: wait until it has (or
    /// give up and end the stream, so the Envoy tries another replica).
    WaitFor(u64),
    /// The Envoy accepted `version`.
    Acked(u64),
    /// The Envoy rejected `version` with `message`.
    Nacked {
        /// The rejected version.
        version: u64,
        /// Envoy's error message.
        message: String,
    },
    /// Nothing to do: a stale nonce, or a first request for a version this Envoy NACKed.
    Ignore,
}

/// What one type's subscription has seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TypeState {
    /// Version and nonce of the last response.
    pub sent: Option<(u64, String)>,
    /// The last version the Envoy ACKed on this stream.
    pub acked: Option<u64>,
    /// The last version the Envoy NACKed, with its message.
    pub nacked: Option<(u64, String)>,
}

impl TypeState {
    /// True when a response is out and neither ACKed nor NACKed yet.
    pub fn pending(&self) -> bool {
        match &self.sent {
            Some((v, _)) => self.acked != Some(*v) && self.nacked.as_ref().map(|n| n.0) != Some(*v),
            None => false,
        }
    }
}

/// The protocol state of one stream.
#[derive(Debug, Default)]
pub struct StreamState {
    nonces: u64,
    /// Boxed: a map's first node holds eleven entries inline, about 1 KiB of `TypeState`s for
    /// the few types an Envoy subscribes to, on every stream (issue 17).
    types: BTreeMap<String, Box<TypeState>>,
}

/// Parses a `version_info` this control plane sent (a revision); anything else counts as none.
pub fn parse_version(v: &str) -> Option<u64> {
    if v.is_empty() { None } else { v.parse().ok() }
}

impl StreamState {
    /// A new stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// The subscribed types and their state, ordered by type URL (clusters before listeners).
    pub fn types(&self) -> &BTreeMap<String, Box<TypeState>> {
        &self.types
    }

    /// Decides what to do with a request. `current` is this replica's applied revision and
    /// `nacked_before` the version this Envoy last NACKed for this type on this replica (from an
    /// earlier stream), if any.
    pub fn on_request(
        &mut self,
        type_url: &str,
        version_info: &str,
        nonce: &str,
        error: Option<&str>,
        current: u64,
        nacked_before: Option<u64>,
    ) -> Decision {
        let known = self.types.get(type_url).and_then(|t| t.sent.clone());
        match known {
            Some((sent_version, sent_nonce)) if !nonce.is_empty() => {
                if nonce != sent_nonce {
                    return Decision::Ignore;
                }
                let t = self.types.get_mut(type_url).expect("known type");
                match error {
                    Some(message) => {
                        t.nacked = Some((sent_version, message.to_string()));
                        Decision::Nacked {
                            version: sent_version,
                            message: message.to_string(),
                        }
                    }
                    None => {
                        t.acked = Some(sent_version);
                        Decision::Acked(sent_version)
                    }
                }
            }
            _ => {
                // A first request for this type (or one with a nonce we never sent, which only a
                // confused client sends): always answered, unless that would move the Envoy
                // backwards or repeat a version it rejected.
                let t = type_state(&mut self.types, type_url);
                let reported = parse_version(version_info);
                if t.acked.is_none() {
                    t.acked = reported;
                }
                match reported {
                    // The mutant answers an Envoy ahead of it, for lagging-replica to catch.
                    Some(v) if v > current && !cfg!(feature = "mutant-no-never-backwards") => {
                        Decision::WaitFor(v)
                    }
                    _ if nacked_before == Some(current) => {
                        t.nacked = Some((current, "NACKed on an earlier stream".into()));
                        Decision::Ignore
                    }
                    _ => Decision::Respond,
                }
            }
        }
    }

    /// Records a response about to be sent and returns its nonce.
    pub fn record_sent(&mut self, type_url: &str, version: u64) -> String {
        self.nonces += 1;
        let nonce = self.nonces.to_string();
        type_state(&mut self.types, type_url).sent = Some((version, nonce.clone()));
        nonce
    }

    /// The subscribed types that should be sent `current` now: those whose last response is
    /// older and answered. A NACKed version is never re-sent; the next revision is — also to a
    /// type whose first request went unanswered because it asked for a version NACKed on an
    /// earlier stream (nothing was sent on this one; the NACKed version stands for it).
    ///
    /// Flow control (xDS's own): while a response is neither ACKed nor NACKed, nothing more of
    /// its type is sent; the revisions that come meanwhile coalesce into the one response sent
    /// when the Envoy answers, so a slow Envoy never has a queue of responses to work through.
    pub fn stale_types(&self, current: u64) -> Vec<String> {
        self.types
            .iter()
            .filter(|(_, t)| {
                let sent = t.sent.as_ref().map(|s| s.0);
                let nacked = t.nacked.as_ref().map(|n| n.0);
                sent.or(nacked).is_some_and(|v| v < current)
                    && nacked != Some(current)
                    && !t.pending()
            })
            .map(|(k, _)| k.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{CLUSTER_TYPE, LISTENER_TYPE};

    #[test]
    fn first_request_is_always_answered() {
        let mut s = StreamState::new();
        assert_eq!(
            s.on_request(CLUSTER_TYPE, "", "", None, 5, None),
            Decision::Respond
        );
        // Reconnecting Envoy at our own version: still answered (it may be warming).
        let mut s = StreamState::new();
        assert_eq!(
            s.on_request(CLUSTER_TYPE, "5", "", None, 5, None),
            Decision::Respond
        );
        // Behind us: answered.
        let mut s = StreamState::new();
        assert_eq!(
            s.on_request(CLUSTER_TYPE, "3", "", None, 5, None),
            Decision::Respond
        );
    }

    #[test]
    fn envoy_ahead_of_replica_waits() {
        let mut s = StreamState::new();
        assert_eq!(
            s.on_request(LISTENER_TYPE, "9", "", None, 5, None),
            Decision::WaitFor(9)
        );
        // A version this control plane never sent (another control plane's) is treated as none.
        let mut s = StreamState::new();
        assert_eq!(
            s.on_request(LISTENER_TYPE, "abc", "", None, 5, None),
            Decision::Respond
        );
    }

    #[test]
    fn ack_nack_and_stale_nonces() {
        let mut s = StreamState::new();
        s.on_request(CLUSTER_TYPE, "", "", None, 5, None);
        let n1 = s.record_sent(CLUSTER_TYPE, 5);
        assert!(s.types()[CLUSTER_TYPE].pending());
        assert_eq!(
            s.on_request(CLUSTER_TYPE, "5", &n1, None, 5, None),
            Decision::Acked(5)
        );
        assert!(!s.types()[CLUSTER_TYPE].pending());
        let n2 = s.record_sent(CLUSTER_TYPE, 6);
        // A request carrying the old nonce is stale.
        assert_eq!(
            s.on_request(CLUSTER_TYPE, "5", &n1, None, 6, None),
            Decision::Ignore
        );
        assert_eq!(
            s.on_request(CLUSTER_TYPE, "5", &n2, Some("bad cluster"), 6, None),
            Decision::Nacked {
                version: 6,
                message: "bad cluster".into()
            }
        );
        assert_eq!(s.types()[CLUSTER_TYPE].acked, Some(5));
        // The NACKed version is not sent again; the next one is.
        assert!(s.stale_types(6).is_empty());
        assert_eq!(s.stale_types(7), [CLUSTER_TYPE]);
    }

    #[test]
    fn version_nacked_on_an_earlier_stream_is_not_resent() {
        let mut s = StreamState::new();
        assert_eq!(
            s.on_request(CLUSTER_TYPE, "5", "", None, 6, Some(6)),
            Decision::Ignore
        );
        assert!(s.stale_types(6).is_empty());
        assert_eq!(
            s.stale_types(7),
            [CLUSTER_TYPE],
            "the next revision is sent"
        );
    }

    #[test]
    fn pushes_only_subscribed_types_that_are_behind() {
        let mut s = StreamState::new();
        assert!(s.stale_types(3).is_empty(), "nothing subscribed");
        s.on_request(LISTENER_TYPE, "", "", None, 3, None);
        let lds = s.record_sent(LISTENER_TYPE, 3);
        s.on_request(CLUSTER_TYPE, "", "", None, 3, None);
        let cds = s.record_sent(CLUSTER_TYPE, 3);
        assert!(s.stale_types(4).is_empty(), "both responses are unanswered");
        s.on_request(LISTENER_TYPE, "3", &lds, None, 4, None);
        s.on_request(CLUSTER_TYPE, "3", &cds, None, 4, None);
        assert!(s.stale_types(3).is_empty());
        assert_eq!(
            s.stale_types(4),
            [CLUSTER_TYPE, LISTENER_TYPE],
            "clusters first"
        );
    }
}
