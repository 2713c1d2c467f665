//! JSON access logs on the listeners concord sends (issue 18). An Envoy whose bootstrap asks
//! for them (`concord envoy-bootstrap --access-log stdout|stderr`, node metadata
//! [`ACCESS_LOG_KEY`]) gets every listener with a JSON access log on its stdout or stderr: one
//! line per TLS connection passed through to a builder, one per HTTP or gRPC request to a
//! service. The listeners of each choice are encoded once per revision and shared by the Envoys
//! that made it, like every resource.

use crate::resources::any;
use envoy_types::pb::envoy::config::accesslog::v3::{AccessLog as AccessLogPb, access_log};
use envoy_types::pb::envoy::config::core::v3::{
    SubstitutionFormatString, substitution_format_string,
};
use envoy_types::pb::envoy::extensions::access_loggers::stream::v3::{
    StderrAccessLog, StdoutAccessLog, stderr_access_log, stdout_access_log,
};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};

/// Node metadata key: where the Envoy wants its access logs (`stdout` or `stderr`).
pub const ACCESS_LOG_KEY: &str = "concord.access_log";

const STDOUT_TYPE: &str =
    "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog";
const STDERR_TYPE: &str =
    "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog";

/// Where an Envoy's access logs go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AccessLog {
    /// None (the default).
    #[default]
    Off,
    /// JSON lines on Envoy's stdout.
    Stdout,
    /// JSON lines on Envoy's stderr.
    Stderr,
}

/// An access log destination that is neither `stdout` nor `stderr` (nor `off`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid access log {0:?}: use stdout, stderr or off")]
pub struct UnknownAccessLog(pub String);

impl std::str::FromStr for AccessLog {
    type Err = UnknownAccessLog;
    fn from_str(s: &str) -> Result<Self, UnknownAccessLog> {
        match s {
            "off" => Ok(AccessLog::Off),
            "stdout" => Ok(AccessLog::Stdout),
            "stderr" => Ok(AccessLog::Stderr),
            other => Err(UnknownAccessLog(other.to_string())),
        }
    }
}

impl AccessLog {
    /// Its name in node metadata and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            AccessLog::Off => "off",
            AccessLog::Stdout => "stdout",
            AccessLog::Stderr => "stderr",
        }
    }
}

/// The fields of every line: Envoy's command operators, by key.
const CONNECTION_FIELDS: &[(&str, &str)] = &[
    ("start_time", "%START_TIME%"),
    ("downstream", "%DOWNSTREAM_REMOTE_ADDRESS%"),
    ("sni", "%REQUESTED_SERVER_NAME%"),
    ("upstream_cluster", "%UPSTREAM_CLUSTER%"),
    ("upstream_host", "%UPSTREAM_HOST%"),
    ("bytes_received", "%BYTES_RECEIVED%"),
    ("bytes_sent", "%BYTES_SENT%"),
    ("duration_ms", "%DURATION%"),
    ("response_flags", "%RESPONSE_FLAGS%"),
];

/// The fields of an HTTP request's line, beside the connection's.
const REQUEST_FIELDS: &[(&str, &str)] = &[
    ("method", "%REQ(:METHOD)%"),
    ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
    ("authority", "%REQ(:AUTHORITY)%"),
    ("protocol", "%PROTOCOL%"),
    ("status", "%RESPONSE_CODE%"),
    ("grpc_status", "%GRPC_STATUS%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"),
];

/// The access logs of a listener's filter (`http`: an HTTP connection manager, else a TCP
/// proxy) for `log`: none when it is off.
pub fn access_logs(log: AccessLog, http: bool) -> Vec<AccessLogPb> {
    if log == AccessLog::Off {
        return Vec::new();
    }
    let extra = if http { REQUEST_FIELDS } else { &[] };
    let fields = CONNECTION_FIELDS
        .iter()
        .chain(extra)
        .map(|(k, v)| {
            let value = Value {
                kind: Some(Kind::StringValue((*v).to_string())),
            };
            ((*k).to_string(), value)
        })
        .collect();
    let format = SubstitutionFormatString {
        format: Some(substitution_format_string::Format::JsonFormat(Struct {
            fields,
        })),
        ..Default::default()
    };
    let (name, config) = match log {
        AccessLog::Stderr => (
            "envoy.access_loggers.stderr",
            any(
                STDERR_TYPE,
                &StderrAccessLog {
                    access_log_format: Some(stderr_access_log::AccessLogFormat::LogFormat(format)),
                },
            ),
        ),
        _ => (
            "envoy.access_loggers.stdout",
            any(
                STDOUT_TYPE,
                &StdoutAccessLog {
                    access_log_format: Some(stdout_access_log::AccessLogFormat::LogFormat(format)),
                },
            ),
        ),
    };
    vec![AccessLogPb {
        name: name.into(),
        filter: None,
        config_type: Some(access_log::ConfigType::TypedConfig(config)),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_adds_nothing_and_each_destination_its_logger() {
        assert!(access_logs(AccessLog::Off, true).is_empty());
        let out = access_logs(AccessLog::Stdout, false);
        assert_eq!(out[0].name, "envoy.access_loggers.stdout");
        let Some(access_log::ConfigType::TypedConfig(a)) = &out[0].config_type else {
            panic!("typed config");
        };
        assert_eq!(a.type_url, STDOUT_TYPE);
        let err = access_logs(AccessLog::Stderr, true);
        assert_eq!(err[0].name, "envoy.access_loggers.stderr");
        assert_eq!("stderr".parse::<AccessLog>(), Ok(AccessLog::Stderr));
        assert!("file".parse::<AccessLog>().is_err());
    }
}
