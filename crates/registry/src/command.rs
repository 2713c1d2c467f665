//! Commands that change the registry, and what applying one yields.

use crate::Source;
use crate::builder::Builder;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Builders to put and ids to remove, applied together.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// Builders to insert or replace, by id.
    #[serde(default)]
    pub upserts: Vec<Builder>,
    /// Ids of builders to remove; absent ids are ignored.
    #[serde(default)]
    pub removes: Vec<String>,
}

impl Batch {
    /// True when the batch would change nothing in any registry.
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.removes.is_empty()
    }
}

/// The entry format of the builds before services: builder commands only. Every stored entry
/// and snapshot of those builds is of this format.
pub const FORMAT_BUILDERS: u32 = 1;

/// The highest entry format this build applies. Format 2 adds services (issue 14), format 3
/// rollouts (issue 15).
///
/// Older builds decode a newer entry without complaint (JSON fields they do not know are
/// ignored) and would apply only the part they understand: a silent divergence. So a command of
/// a format above [`FORMAT_BUILDERS`] is proposed only once the cluster's format (the lowest every
/// member supports, committed by the leader with [`Command::raise_format`]) reaches it, and a
/// replica that meets an entry of a format it does not know stops applying instead of guessing.
pub const FORMAT: u32 = 3;

/// The entry format of rollout commands.
pub const FORMAT_ROLLOUTS: u32 = 3;

fn is_builders_format(f: &u32) -> bool {
    *f == FORMAT_BUILDERS
}

fn builders_format() -> u32 {
    FORMAT_BUILDERS
}

/// The payload of one Raft log entry that changes the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// Who proposes it; a command may only change builders of its own source.
    pub source: Source,
    /// What to change.
    pub batch: Batch,
    /// Apply only if the registry is still at this revision. The DNS poller sets it to the
    /// revision its diff was computed against, so a late proposal (from a deposed leader, or
    /// racing another write) cannot undo a newer change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_revision: Option<u64>,
    /// Trace context (W3C `traceparent`, …) of the change, so every replica's apply and push
    /// continue the trace that proposed it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub trace: BTreeMap<String, String>,
    /// Identifies the client request that proposed the command, made once per request and kept
    /// through forwarding and retries. A retry whose first attempt already committed is answered
    /// with the first outcome instead of applying again (issue 16: a timed-out forward retried
    /// after writer B's change would otherwise put writer A's value back). Entries of earlier
    /// versions have none and are never deduplicated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The lowest entry format a replica must apply to apply this command as every other does
    /// (see [`FORMAT`]); absent in entries of earlier versions, which are all builder commands.
    #[serde(
        default = "builders_format",
        skip_serializing_if = "is_builders_format"
    )]
    pub format: u32,
    /// Raises the cluster's entry format to this value (never lowers it). Proposed by the leader
    /// only once every member reported that it supports the format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raise_format: Option<u32>,
    /// Replaces the whole desired state of the services half (`concord apply`); format 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<Box<crate::services::Desired>>,
    /// Registers, drains and removes endpoints of services; format 2.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<crate::services::EndpointChange>,
    /// Puts and removes certificates; format 2.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<crate::services::CertificateChange>,
    /// Starts, steps, rolls back, pauses and ends rollouts; format 3.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rollouts: Vec<crate::services::RolloutChange>,
    /// Stages a desired state to a group of Envoys, promotes or aborts it; format 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<Box<crate::services::StageChange>>,
}

impl Command {
    /// Key in [`Command::trace`] of the time the change was first seen (Unix microseconds).
    pub const SEEN_AT_KEY: &'static str = "seen_at_us";

    /// Records when the change was first seen (a DNS poll, an API request), so every replica can
    /// time how long it took to reach its Envoys.
    pub fn set_seen_at_us(&mut self, unix_micros: u64) {
        self.trace
            .insert(Self::SEEN_AT_KEY.to_string(), unix_micros.to_string());
    }

    /// When the change was first seen, if recorded.
    pub fn seen_at_us(&self) -> Option<u64> {
        self.trace.get(Self::SEEN_AT_KEY)?.parse().ok()
    }

    /// A command of `source` applying `batch` unconditionally.
    pub fn new(source: Source, batch: Batch) -> Self {
        Command {
            source,
            batch,
            if_revision: None,
            trace: BTreeMap::new(),
            request_id: None,
            format: FORMAT_BUILDERS,
            raise_format: None,
            desired: None,
            endpoints: Vec::new(),
            certificates: Vec::new(),
            rollouts: Vec::new(),
            stage: None,
        }
    }

    /// The command that makes `change` to the stage (config canaries).
    pub fn stage(change: crate::services::StageChange) -> Self {
        Command {
            format: FORMAT_ROLLOUTS,
            stage: Some(Box::new(change)),
            ..Command::new(Source::Api, Batch::default())
        }
    }

    /// The command that makes `changes` to rollouts.
    pub fn rollouts(changes: Vec<crate::services::RolloutChange>) -> Self {
        Command {
            format: FORMAT_ROLLOUTS,
            rollouts: changes,
            ..Command::new(Source::Api, Batch::default())
        }
    }

    /// The command that makes `changes` to the certificates.
    pub fn certificates(changes: Vec<crate::services::CertificateChange>) -> Self {
        Command {
            format: 2,
            certificates: changes,
            ..Command::new(Source::Api, Batch::default())
        }
    }

    /// The command that makes `changes` to registered endpoints.
    pub fn endpoints(changes: Vec<crate::services::EndpointChange>) -> Self {
        Command {
            format: 2,
            endpoints: changes,
            ..Command::new(Source::Api, Batch::default())
        }
    }

    /// The command that sets the services half's desired state to `desired` (`concord apply`).
    pub fn apply_services(desired: crate::services::Desired) -> Self {
        Command {
            format: 2,
            desired: Some(Box::new(desired)),
            ..Command::new(Source::Api, Batch::default())
        }
    }

    /// The command that raises the cluster's entry format to `format`.
    pub fn raise_format(format: u32) -> Self {
        Command {
            format,
            raise_format: Some(format),
            ..Command::new(Source::Api, Batch::default())
        }
    }

    /// Whether applying the command may replace the desired state (an apply, or a stage's
    /// promotion).
    pub fn may_replace_desired(&self) -> bool {
        self.desired.is_some()
            || matches!(
                self.stage.as_deref(),
                Some(crate::services::StageChange::Promote { .. })
            )
    }

    /// What the command changes, in a few words for people (the status page's list of
    /// changes): its source, then each part, e.g. `dns: put builder b1, removed 2 builders`.
    pub fn summary(&self) -> String {
        use crate::services::{CertificateChange, EndpointChange};
        fn counted(n: usize, one: String, many: &str) -> Option<String> {
            match n {
                0 => None,
                1 => Some(one),
                n => Some(many.replace("{n}", &n.to_string())),
            }
        }
        let b = &self.batch;
        let first = |v: &[crate::Builder]| v.first().map_or_else(String::new, |b| b.id.clone());
        let endpoint = |c: &EndpointChange| {
            let (service, id) = c.key();
            let verb = match c {
                EndpointChange::Register { .. } => "registered",
                EndpointChange::Deregister { .. } => "deregistered",
                EndpointChange::Drain { .. } => "draining",
                EndpointChange::Expire { .. } => "expired",
            };
            format!("{verb} endpoint {service}/{id}")
        };
        let certificate = |c: &CertificateChange| match c {
            CertificateChange::Put { name, .. } => format!("put certificate {name}"),
            CertificateChange::Remove { name } => format!("removed certificate {name}"),
        };
        let parts: Vec<String> = [
            counted(
                b.upserts.len(),
                format!("put builder {}", first(&b.upserts)),
                "put {n} builders",
            ),
            counted(
                b.removes.len(),
                format!(
                    "removed builder {}",
                    b.removes.first().cloned().unwrap_or_default()
                ),
                "removed {n} builders",
            ),
            self.desired
                .as_ref()
                .map(|d| format!("config of {} services", d.services.len())),
            counted(
                self.endpoints.len(),
                self.endpoints.first().map(endpoint).unwrap_or_default(),
                "{n} endpoint changes",
            ),
            counted(
                self.certificates.len(),
                self.certificates
                    .first()
                    .map(certificate)
                    .unwrap_or_default(),
                "{n} certificate changes",
            ),
            counted(
                self.rollouts.len(),
                self.rollouts
                    .first()
                    .map(|r| r.summary())
                    .unwrap_or_default(),
                "{n} rollout changes",
            ),
            self.stage.as_ref().map(|s| s.summary()),
            self.raise_format
                .map(|f| format!("entry format raised to {f}")),
        ]
        .into_iter()
        .flatten()
        .collect();
        if parts.is_empty() {
            return format!("{}: no change", self.source);
        }
        format!("{}: {}", self.source, parts.join(", "))
    }

    /// Refuses a command this build cannot apply as the builds that proposed it do.
    pub fn check_format(&self) -> Result<(), UnknownFormat> {
        let format = self.format.max(self.raise_format.unwrap_or(0));
        if format > FORMAT {
            return Err(UnknownFormat { format });
        }
        Ok(())
    }
}

/// An entry of a newer format than this build applies (a replica was downgraded below the
/// cluster's format, or joined with an older binary than the others).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "a committed entry has format {format} but this build applies formats up to {FORMAT}: \
     run the version the rest of the cluster runs on this replica (it stops applying rather than \
     diverge)"
)]
pub struct UnknownFormat {
    /// The entry's format.
    pub format: u32,
}

/// The result of applying one command; every replica computes the same one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum Outcome {
    /// The command was valid; `changed` says whether it changed anything.
    Applied {
        /// The registry revision after the command.
        revision: u64,
        /// False when the command was a no-op.
        changed: bool,
    },
    /// The command was refused as a whole; nothing changed.
    Rejected(Rejection),
}

/// Why a command was refused. Deterministic: it depends only on the command and the state.
///
/// Every variant has named fields: an internally tagged variant holding a bare string or list
/// cannot be serialised, and a rejection is stored with the state (a remembered request's
/// outcome) and sent back to a forwarding replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case", tag = "reason")]
pub enum Rejection {
    /// A builder in the batch failed validation.
    #[error("{message}")]
    InvalidBuilder {
        /// What is wrong with it.
        message: String,
    },
    /// Two upserts in one batch have the same id.
    #[error("builder {id:?} appears twice in one batch")]
    DuplicateId {
        /// The builder.
        id: String,
    },
    /// One batch both upserts and removes the same id.
    #[error("builder {id:?} is both put and removed in one batch")]
    UpsertAndRemove {
        /// The builder.
        id: String,
    },
    /// The SNI name would belong to two builders.
    #[error("SNI name {sni:?} is already used by builder {:?} (wanted by {:?})", ids.0, ids.1)]
    DuplicateSni {
        /// The contested name.
        sni: String,
        /// The current owner and the builder that wanted it.
        ids: (String, String),
    },
    /// An upsert's builder names another source than the command.
    #[error("builder {id:?} has source {builder} but the command comes from {command}")]
    SourceMismatch {
        /// The builder.
        id: String,
        /// Its declared source.
        builder: Source,
        /// The command's source.
        command: Source,
    },
    /// The builder is managed by another source.
    #[error("builder {id:?} is managed by {owner}; change it there")]
    OwnedByOtherSource {
        /// The builder.
        id: String,
        /// Who manages it.
        owner: Source,
    },
    /// The endpoint is managed by another source: the DNS poller owns the endpoints it
    /// discovered (ids starting `dns@`), the API every other one.
    #[error("endpoint {id:?} of service {service:?} is managed by {owner}; change it there")]
    EndpointOwnedByOtherSource {
        /// Its service.
        service: String,
        /// The endpoint.
        id: String,
        /// Who manages it.
        owner: Source,
    },
    /// The command is of an entry format the cluster has not reached yet: some member may not
    /// apply it as the others would.
    #[error(
        "this change needs entry format {format}, but the cluster is at format {cluster}: every \
         replica must run a version that supports it first (`concord cluster status` shows each \
         one's)"
    )]
    FormatNotEnabled {
        /// The command's format.
        format: u32,
        /// The cluster's format when it was applied.
        cluster: u32,
    },
    /// The desired state of the services half is invalid; every problem, by field.
    #[error("{}", problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    InvalidServices {
        /// Every problem, by field path.
        problems: Vec<crate::services::FieldError>,
    },
    /// An endpoint change names a service the desired state does not have.
    #[error(
        "no service {service:?}: `concord apply` one first (`concord get services` lists them)"
    )]
    UnknownService {
        /// The service named.
        service: String,
    },
    /// A drain names an endpoint that is not registered.
    #[error("no endpoint {id:?} of service {service:?} is registered")]
    UnknownEndpoint {
        /// The service.
        service: String,
        /// The endpoint id.
        id: String,
    },
    /// A registration is invalid.
    #[error("endpoint {id:?} of service {service:?}: {problem}")]
    InvalidEndpoint {
        /// The service.
        service: String,
        /// The endpoint id.
        id: String,
        /// What is wrong.
        problem: String,
    },
    /// A listener names a certificate that is not held.
    #[error(
        "listener {listener:?} uses certificate {certificate:?}, which concord does not hold: \
         `concord certificates put {certificate} --cert FILE --key FILE` first"
    )]
    UnknownCertificate {
        /// The listener.
        listener: String,
        /// The certificate it names.
        certificate: String,
    },
    /// A certificate still used by a listener cannot be removed.
    #[error(
        "certificate {certificate:?} is used by listener {listener:?}; change the listener first"
    )]
    CertificateInUse {
        /// The certificate.
        certificate: String,
        /// A listener that uses it.
        listener: String,
    },
    /// A certificate's name is not acceptable.
    #[error("certificate name {name:?} must be 1-63 lower-case letters, digits and '-'")]
    InvalidCertificateName {
        /// The name.
        name: String,
    },
    /// A rollout cannot start: its spec is out of range or names what does not exist.
    #[error("rollout of service {service:?}: {problem}")]
    InvalidRollout {
        /// The service.
        service: String,
        /// Every problem, in one message.
        problem: String,
    },
    /// The service already has a rollout running or paused.
    #[error(
        "service {service:?} already has a rollout {phase}: `concord rollout abort {service}` \
         it first (`concord rollout status {service}` shows it)"
    )]
    RolloutInProgress {
        /// The service.
        service: String,
        /// Its phase.
        phase: crate::services::Phase,
    },
    /// The service has no rollout.
    #[error("service {service:?} has no rollout: `concord rollout start` one first")]
    NoRollout {
        /// The service.
        service: String,
    },
    /// The rollout is not in a phase the change applies to.
    #[error("the rollout of service {service:?} is {phase}; {wanted}")]
    RolloutPhase {
        /// The service.
        service: String,
        /// Its phase.
        phase: crate::services::Phase,
        /// What the change needs.
        wanted: String,
    },
    /// A configuration is staged already: it must be promoted or aborted first.
    #[error(
        "a configuration is staged to a group of Envoys (since revision {at}): `concord canary \
         promote` or `concord canary abort` it first (`concord canary status` shows it)"
    )]
    StageInProgress {
        /// The stage's start index.
        at: u64,
    },
    /// Nothing is staged.
    #[error("no configuration is staged")]
    NoStage,
    /// A stage cannot start: what is wrong.
    #[error("cannot stage this configuration: {problem}")]
    InvalidStage {
        /// What is wrong.
        problem: String,
    },
    /// `if_revision` did not match: the registry moved since the command was computed.
    #[error("registry is at revision {actual}, the command expected {expected}")]
    StaleRevision {
        /// The revision the command was computed against.
        expected: u64,
        /// The registry's revision when it was applied.
        actual: u64,
    },
}
