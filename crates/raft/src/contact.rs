//! Whether a replica is in contact with a quorum (DESIGN rule 6): [`judge`] decides from what the
//! replica knows ([`Contact`]); [`ContactClock`] collects that knowledge from openraft's metrics
//! (on the leader) and from the leaders' append-entries (on followers).
//!
//! Contact is counted from the last moment a leader is known to have had a quorum, not from the
//! last message of any leader: a leader cut off with a minority keeps heartbeating its side of
//! the partition (openraft 0.9 has no check-quorum step-down), so a follower learns, with each
//! append-entries, how long ago its leader last heard from a quorum (header
//! [`LEADER_QUORUM_HEADER`]).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Metadata key of append-entries: milliseconds since the sending leader was last acknowledged
/// by a quorum, or `none` if it has not been yet. A request without it (a peer of an older
/// version) counts as from a leader in contact.
pub const LEADER_QUORUM_HEADER: &str = "x-concord-leader-quorum-ack-ms";

/// What a replica knows of its contact with a quorum, at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Contact {
    /// While this node leads and a quorum has acknowledged it: how long ago it last did.
    pub leading_quorum_age: Option<Duration>,
    /// The latest moment at which a leader (this node, or one it heard from) is known to have
    /// had a quorum's acknowledgement.
    pub last_quorum_contact: Option<Instant>,
    /// Whether, since it started, this replica has confirmed with a leader that has a quorum
    /// and applied everything committed before (a read barrier). Until then its state may be
    /// older than what it served before a crash.
    pub caught_up: bool,
    /// When this replica started.
    pub boot: Instant,
}

/// The verdict of [`judge`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    /// Whether the replica may serve Envoys.
    pub fresh: bool,
    /// How long it has been out of contact with a quorum (since start if it never was).
    pub out_of_contact: Duration,
    /// Why it is stale, if it is.
    pub reason: Option<&'static str>,
}

/// Decides whether a replica that knows `c` at `now` is fresh: it has caught up since it started,
/// and a leader had a quorum no longer than `stale_after` ago.
pub fn judge(c: &Contact, now: Instant, stale_after: Duration) -> Freshness {
    let since = |t: Instant| now.saturating_duration_since(t);
    let gap = match (c.leading_quorum_age, c.last_quorum_contact) {
        (Some(age), Some(t)) => Some(age.min(since(t))),
        (Some(age), None) => Some(age),
        (None, Some(t)) => Some(since(t)),
        (None, None) => None,
    };
    let out_of_contact = gap.unwrap_or_else(|| since(c.boot));
    let reason = if gap.is_none() {
        Some("no leader with a quorum heard from since start")
    } else if out_of_contact > stale_after && !cfg!(feature = "mutant-no-stale-check") {
        Some("no leader with a quorum heard from recently")
    } else if !c.caught_up {
        Some("catching up with the cluster after start")
    } else {
        None
    };
    Freshness {
        fresh: reason.is_none(),
        out_of_contact,
        reason,
    }
}

/// Collects a replica's [`Contact`]; shared by the node and its network.
#[derive(Debug)]
pub struct ContactClock {
    boot: Instant,
    state: Mutex<State>,
}

#[derive(Debug, Default, Clone, Copy)]
struct State {
    last_quorum_contact: Option<Instant>,
    /// While this node leads: when a quorum last acknowledged it (for its append-entries).
    leading_quorum_at: Option<Instant>,
    caught_up: bool,
}

impl Default for ContactClock {
    fn default() -> Self {
        ContactClock::new(Instant::now())
    }
}

impl ContactClock {
    /// A clock for a replica started at `boot`: never in contact, not caught up.
    pub fn new(boot: Instant) -> Self {
        ContactClock {
            boot,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn saw_quorum_at(state: &mut State, at: Instant) {
        state.last_quorum_contact = Some(state.last_quorum_contact.map_or(at, |t| t.max(at)));
    }

    /// openraft's metrics at `now`: `leading_quorum_age` is `millis_since_quorum_ack` while this
    /// node leads, `None` otherwise.
    pub fn observe_leading(&self, leading_quorum_age: Option<Duration>, now: Instant) {
        let mut state = self.state();
        state.leading_quorum_at = leading_quorum_age.and_then(|age| now.checked_sub(age));
        if let Some(at) = state.leading_quorum_at {
            Self::saw_quorum_at(&mut state, at);
        }
    }

    /// A leader's append-entries was accepted at `now`; it said its quorum acknowledged it
    /// `leader_quorum_age` ago (`None`: not yet).
    pub fn heard_from_leader(&self, leader_quorum_age: Option<Duration>, now: Instant) {
        // The mutant believes every leader has a quorum, for partition-minority to catch.
        #[cfg(feature = "mutant-trust-any-leader")]
        let leader_quorum_age = Some(Duration::ZERO).or(leader_quorum_age);
        if let Some(at) = leader_quorum_age.and_then(|age| now.checked_sub(age)) {
            Self::saw_quorum_at(&mut self.state(), at);
        }
    }

    /// A read barrier begun at `started` passed: a leader had a quorum then, and everything
    /// committed before is applied here.
    pub fn caught_up(&self, started: Instant) {
        let mut state = self.state();
        state.caught_up = true;
        Self::saw_quorum_at(&mut state, started);
    }

    /// What this leader tells its followers: how long ago its quorum last acknowledged it.
    pub fn leader_quorum_age(&self, now: Instant) -> Option<Duration> {
        self.state()
            .leading_quorum_at
            .map(|t| now.saturating_duration_since(t))
    }

    /// What is known now, with `leading_quorum_age` fresh from openraft's metrics.
    pub fn contact(&self, leading_quorum_age: Option<Duration>) -> Contact {
        let state = *self.state();
        Contact {
            leading_quorum_age,
            last_quorum_contact: state.last_quorum_contact,
            caught_up: state.caught_up,
            boot: self.boot,
        }
    }
}

/// The header value for a leader whose quorum acknowledged it `age` ago.
pub fn encode_age(age: Option<Duration>) -> String {
    age.map_or_else(|| "none".into(), |a| a.as_millis().to_string())
}

/// Reads [`LEADER_QUORUM_HEADER`]: `None` if the leader has no quorum acknowledgement yet (or the
/// value is unreadable); a missing header (an older peer) counts as just acknowledged.
pub fn decode_age(value: Option<&str>) -> Option<Duration> {
    match value {
        None => Some(Duration::ZERO),
        Some(v) => v.parse::<u64>().ok().map(Duration::from_millis),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALE: Duration = Duration::from_millis(3000);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn contact(boot: Instant) -> Contact {
        Contact {
            leading_quorum_age: None,
            last_quorum_contact: None,
            caught_up: true,
            boot,
        }
    }

    #[test]
    fn a_replica_that_never_heard_from_a_quorum_is_stale_from_its_start() {
        let boot = Instant::now();
        let f = judge(&contact(boot), boot + ms(10), STALE);
        assert!(!f.fresh);
        assert_eq!(f.out_of_contact, ms(10));
        let f = judge(
            &Contact {
                caught_up: false,
                ..contact(boot)
            },
            boot + ms(10),
            STALE,
        );
        assert!(!f.fresh, "{f:?}");
    }

    #[test]
    fn a_replica_that_has_not_caught_up_since_start_is_stale_even_in_contact() {
        let boot = Instant::now();
        let c = Contact {
            last_quorum_contact: Some(boot + ms(5)),
            caught_up: false,
            ..contact(boot)
        };
        let f = judge(&c, boot + ms(10), STALE);
        assert!(!f.fresh);
        assert_eq!(f.reason, Some("catching up with the cluster after start"));
        assert!(
            judge(
                &Contact {
                    caught_up: true,
                    ..c
                },
                boot + ms(10),
                STALE
            )
            .fresh
        );
    }

    #[test]
    fn a_leader_counts_its_quorum_acknowledgements() {
        let boot = Instant::now();
        let now = boot + ms(60_000);
        let c = Contact {
            leading_quorum_age: Some(ms(40)),
            ..contact(boot)
        };
        assert_eq!(judge(&c, now, STALE).out_of_contact, ms(40));
        assert!(judge(&c, now, STALE).fresh);
        let c = Contact {
            leading_quorum_age: Some(ms(3001)),
            ..contact(boot)
        };
        assert!(!judge(&c, now, STALE).fresh);
    }

    #[test]
    fn a_leader_that_steps_down_stays_fresh_after_a_long_tenure() {
        let boot = Instant::now();
        let clock = ContactClock::new(boot);
        clock.caught_up(boot + ms(200));
        // Led for a minute, acknowledged by a quorum until the end.
        for t in (300..60_000).step_by(50) {
            clock.observe_leading(Some(ms(20)), boot + ms(t));
        }
        // Stepped down (a higher term), no leader yet.
        let now = boot + ms(60_100);
        clock.observe_leading(None, now);
        let f = judge(&clock.contact(None), now, STALE);
        assert!(f.fresh, "{f:?}");
        assert!(f.out_of_contact <= ms(200), "{f:?}");
        // A follower does not pass on a leader age it does not have.
        assert_eq!(clock.leader_quorum_age(now), None);
    }

    #[test]
    fn a_follower_of_a_minority_leader_goes_stale() {
        let boot = Instant::now();
        let clock = ContactClock::new(boot);
        clock.caught_up(boot);
        clock.heard_from_leader(Some(ms(10)), boot + ms(100));
        // The leader lost its quorum at 90 ms and keeps heartbeating.
        let mut t = 150;
        while t < 10_000 {
            clock.heard_from_leader(Some(ms(t - 90)), boot + ms(t));
            t += 50;
        }
        let f = judge(&clock.contact(None), boot + ms(t), STALE);
        assert!(!f.fresh, "{f:?}");
        assert_eq!(f.out_of_contact, ms(t - 90));
        // A leader with no quorum ack yet refreshes nothing either.
        clock.heard_from_leader(None, boot + ms(t));
        assert!(!judge(&clock.contact(None), boot + ms(t), STALE).fresh);
        // A majority leader's heartbeat brings it back.
        clock.heard_from_leader(Some(ms(30)), boot + ms(t));
        assert!(judge(&clock.contact(None), boot + ms(t), STALE).fresh);
    }

    #[test]
    fn contact_never_moves_backwards() {
        let boot = Instant::now();
        let clock = ContactClock::new(boot);
        clock.caught_up(boot);
        clock.heard_from_leader(Some(ms(0)), boot + ms(1000));
        // A late, delayed message says the leader was acknowledged long ago.
        clock.heard_from_leader(Some(ms(900)), boot + ms(1010));
        assert_eq!(
            judge(&clock.contact(None), boot + ms(1010), STALE).out_of_contact,
            ms(10)
        );
    }

    #[test]
    fn header_values() {
        assert_eq!(decode_age(None), Some(Duration::ZERO));
        assert_eq!(decode_age(Some("none")), None);
        assert_eq!(decode_age(Some("1234")), Some(ms(1234)));
        assert_eq!(decode_age(Some(&encode_age(Some(ms(77))))), Some(ms(77)));
        assert_eq!(decode_age(Some(&encode_age(None))), None);
    }
}
