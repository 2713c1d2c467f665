//! DNS discovery: the leader's poller ([`poller`]) resolves the configured names every interval,
//! turns the answers into builders ([`parse`], with SNI names from a [`template`]), diffs them
//! against the registry's `dns` builders, and proposes what changed through Raft — unless the
//! mass-removal [`guard`] holds it back. Only the leader polls (DESIGN rule 7).

pub mod guard;
pub mod parse;
pub mod poller;
pub mod resolve;
pub mod template;

pub use guard::{Guard, GuardConfig, Verdict};
pub use parse::{Parsed, Skipped};
pub use poller::{
    Discover, DiscoveryConfig, DnsSources, Poller, PollerStatus, ProposeError, Replica,
};
pub use resolve::{Kind, NxDomain, PollError, ResolverError, SourceError, SourceSpec};
pub use template::{RenderError, SniTemplate, TemplateError};
