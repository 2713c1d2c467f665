//! The error body every failing admin request answers with:
//! `{"error":{"code":…,"message":…}}`, the code stable for programs, the message for people.

use serde::{Deserialize, Serialize};

/// The stable code of an error answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: the body or a parameter is not acceptable.
    BadRequest,
    /// 400: a builder breaks a rule of the registry.
    InvalidBuilder,
    /// 400: a desired state of services breaks a rule (every problem named by field).
    InvalidServices,
    /// 413: the body is larger than the endpoint takes.
    TooLarge,
    /// 404: no such builder (or route).
    NotFound,
    /// 409: the registry refused the command (duplicate SNI, wrong owner, …).
    Rejected,
    /// 409: the membership change is not possible.
    Membership,
    /// 503: no leader is known.
    NoLeader,
    /// 503: the leader has not heard from a quorum.
    NoQuorum,
    /// 503: the leader cannot be reached from this replica.
    LeaderUnreachable,
    /// 503: the node asked is not the leader.
    NotLeader,
    /// 503: the replica is shutting down.
    Unavailable,
    /// 504: not committed in time (it may still be).
    Timeout,
    /// 401: no token, or an unknown one.
    Unauthorized,
    /// 403: the token may only read.
    Forbidden,
    /// 500: the replica got an answer it did not expect.
    Internal,
    /// A code this client does not know (a newer replica).
    #[serde(other)]
    Unknown,
}

/// The inside of an [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable code.
    pub code: ErrorCode,
    /// What went wrong, for people.
    pub message: String,
}

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

impl ErrorBody {
    /// An error body of `code` saying `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorBody {
            error: ErrorDetail {
                code,
                message: message.into(),
            },
        }
    }
}
