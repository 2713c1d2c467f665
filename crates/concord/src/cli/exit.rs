//! How a client subcommand ends: its process exit code, and which failure maps to which.

use concord_api::Error;
use std::process::ExitCode;

/// The exit code of a client subcommand (`cluster`, `builders`, `envoys`, `discovery`,
/// `envoy-bootstrap`). The numbers are a contract with scripts: 0 done, 1 refused, 2 usage
/// error, 3 replica unreachable, 4 cluster unavailable. [`Exit::NotFound`] and
/// [`Exit::AuthRefused`] are refusals a program may want to tell apart in the code, but exit
/// with 1 as they always have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: done.
    Success,
    /// 1: the replica refused the request: bad input, or a conflict with the registry's or
    /// the membership's rules.
    Refused,
    /// 1: no such builder (HTTP 404).
    NotFound,
    /// 1: no token, an unknown token (HTTP 401), or a read token for a write (HTTP 403).
    AuthRefused,
    /// 2: bad flags or arguments, an unreadable token file, an invalid admin address, or a
    /// bootstrap that cannot be rendered.
    Usage,
    /// 3: the replica did not answer (down, unreachable, or past the timeout).
    Unreachable,
    /// 4: the cluster could not serve the request: no leader, no quorum, not committed in
    /// time (any HTTP 5xx), or an answer this CLI does not understand.
    Unavailable,
}

impl Exit {
    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::Refused | Exit::NotFound | Exit::AuthRefused => 1,
            Exit::Usage => 2,
            Exit::Unreachable => 3,
            Exit::Unavailable => 4,
        }
    }

    /// How a failed call ends.
    pub fn of(e: &Error) -> Exit {
        match e {
            Error::InvalidAddress { .. } | Error::Setup(_) => Exit::Usage,
            Error::Unreachable { .. } => Exit::Unreachable,
            Error::Api {
                status: 401 | 403, ..
            } => Exit::AuthRefused,
            Error::Api { status: 404, .. } => Exit::NotFound,
            Error::Api { status, .. } if *status >= 500 => Exit::Unavailable,
            Error::Api { .. } => Exit::Refused,
            Error::Decode { .. } => Exit::Unavailable,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_api::ErrorCode;

    fn api(status: u16) -> Error {
        Error::Api {
            status,
            code: ErrorCode::Unknown,
            message: String::new(),
        }
    }

    #[test]
    fn codes_are_the_documented_numbers() {
        let cases = [
            (api(400), 1),
            (api(409), 1),
            (api(404), 1),
            (api(401), 1),
            (api(403), 1),
            (api(500), 4),
            (api(503), 4),
            (api(504), 4),
            (
                Error::Unreachable {
                    url: String::new(),
                    message: String::new(),
                    timeout: false,
                },
                3,
            ),
            (
                Error::InvalidAddress {
                    addr: String::new(),
                    reason: String::new(),
                },
                2,
            ),
        ];
        for (e, code) in cases {
            assert_eq!(Exit::of(&e).code(), code, "{e:?}");
        }
        assert_eq!(Exit::of(&api(404)), Exit::NotFound);
        assert_eq!(Exit::of(&api(403)), Exit::AuthRefused);
        assert_eq!(Exit::Success.code(), 0);
        assert_eq!(Exit::Usage.code(), 2);
    }
}
