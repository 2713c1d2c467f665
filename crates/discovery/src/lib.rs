//! DNS discovery: the leader's poller ([`poller`]) resolves the configured names every interval,
//! turns the answers into builders ([`parse`], with SNI names from a [`template`]), [`decide`]s
//! what changed against the registry's `dns` builders — large removals held back by the
//! mass-removal [`guard`] until they persist — and proposes it through Raft. The same poll
//! resolves the names services take their [`endpoints`] from. Only the leader polls (DESIGN
//! rule 7).

// The mutants are deliberately broken builds for the chaos runner's mutation checks
// (chaos/mutants); a release build with one is refused.
#[cfg(all(feature = "mutant-poller-ignores-removals", not(debug_assertions)))]
compile_error!("mutant features are for debug builds of the chaos mutation checks only");

pub mod decide;
pub mod endpoints;
pub mod guard;
pub mod parse;
pub mod poller;
pub mod resolve;
pub mod template;

pub use decide::{Decision, Proposal, decide};
pub use endpoints::{EndpointsDecision, Found, ServiceAnswer, decide_endpoints};
pub use guard::{Guard, GuardConfig, Held, Verdict};
pub use parse::{Parsed, Skipped};
pub use poller::{
    Discover, DiscoveryConfig, DnsSources, Poller, PollerStatus, ProposeError, Replica,
};
pub use resolve::{Kind, NxDomain, PollError, ResolverError, SourceError, SourceSpec};
pub use template::{RenderError, SniTemplate, TemplateError};
