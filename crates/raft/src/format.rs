//! The cluster's entry format (etcd's "cluster version"): the leader raises it once every member
//! reports that it applies the newer format, so no replica is ever sent an entry it would apply
//! only in part.
//!
//! Each replica answers [`ClientRequest::EntryFormat`] with the highest format it applies; a
//! build from before formats refuses the question, which counts as format 1. While it leads, a
//! node asks every member (voters and learners) every [`CHECK_EVERY`] and, when all of them
//! support a format above the committed one, commits [`Command::raise_format`]. What it last
//! heard from each member is kept for status. A learner with an older binary than the cluster's
//! format is refused before it is added (see [`Node::check_joiner_format`]).
//!
//! [`ClientRequest::EntryFormat`]: crate::ClientRequest::EntryFormat
//! [`Command::raise_format`]: concord_registry::Command::raise_format
//! [`Node::check_joiner_format`]: crate::Node

use crate::NodeId;
pub use concord_api::{EntryFormats, MemberFormat};
use std::collections::BTreeMap;
use std::time::Duration;

/// How often a leader asks the members for their formats while the cluster's is below its own.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// How long one member may take to answer.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(1);

/// The format the cluster may be raised to, if above `cluster`: the lowest that every member
/// supports, once all of them answered.
pub fn raise_to(members: &BTreeMap<NodeId, MemberFormat>, cluster: u32) -> Option<u32> {
    let mut lowest = u32::MAX;
    for f in members.values() {
        match f {
            MemberFormat::Supports(n) => lowest = lowest.min(*n),
            MemberFormat::Unknown(_) => return None,
        }
    }
    (lowest != u32::MAX && lowest > cluster).then_some(lowest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raised_only_when_every_member_answered_a_higher_format() {
        let s = MemberFormat::Supports;
        let all = |v: &[MemberFormat]| {
            v.iter()
                .cloned()
                .enumerate()
                .map(|(i, f)| (i as u64 + 1, f))
                .collect::<BTreeMap<_, _>>()
        };
        assert_eq!(raise_to(&all(&[s(2), s(2), s(2)]), 1), Some(2));
        assert_eq!(raise_to(&all(&[s(2), s(1), s(2)]), 1), None);
        assert_eq!(raise_to(&all(&[s(3), s(2)]), 1), Some(2));
        assert_eq!(raise_to(&all(&[s(2), s(2)]), 2), None);
        let down = MemberFormat::Unknown("unreachable".into());
        assert_eq!(raise_to(&all(&[s(2), down, s(2)]), 1), None);
        assert_eq!(raise_to(&BTreeMap::new(), 1), None);
    }
}
