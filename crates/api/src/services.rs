//! `GET`/`PUT /v1/config`: the services half's desired state (services, route tables,
//! listeners), read and set as a whole (`concord get`, `concord apply`).

use concord_registry::services::Desired;
use serde::{Deserialize, Serialize};

/// `GET /v1/config`: the desired state as this replica has applied it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// The registry revision it was read at.
    pub revision: u64,
    /// The cluster's entry format (services need 2).
    pub format: u32,
    /// The desired state.
    pub desired: Desired,
}

/// The largest body `PUT /v1/config` takes (and file `concord apply` reads).
pub const MAX_CONFIG_BYTES: usize = 4 * 1024 * 1024;
