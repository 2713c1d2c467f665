//! Answers of the registry and membership endpoints: listings, one builder, and what a write
//! or a membership change committed.

use concord_registry::Builder;
use serde::{Deserialize, Serialize};

/// `GET /v1/builders`: the registry as this replica has applied it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuilderList {
    /// The registry revision.
    pub revision: u64,
    /// Every builder, by id.
    pub builders: Vec<Builder>,
}

impl BuilderList {
    /// The builders' ids, in order.
    pub fn ids(&self) -> Vec<String> {
        self.builders.iter().map(|b| b.id.clone()).collect()
    }
}

/// `GET /v1/builders/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OneBuilder {
    /// The registry revision it was read at.
    pub revision: u64,
    /// The builder.
    pub builder: Builder,
}

/// `PUT`/`DELETE /v1/builders/{id}` and `POST /v1/builders`: the write was committed and
/// applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Written {
    /// The registry revision after it.
    pub revision: u64,
    /// Whether it changed the registry (a put of the same builder does not).
    pub changed: bool,
    /// Its log index.
    pub log_index: u64,
}

/// `POST /v1/cluster/learners`, `POST /v1/cluster/voters`, `DELETE /v1/cluster/members/{id}`:
/// the membership change was committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipChanged {
    /// Its log index.
    pub log_index: u64,
}
