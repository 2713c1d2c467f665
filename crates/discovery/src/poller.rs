//! The DNS poller: runs on the leader only (DESIGN rule 7). It starts polling the moment this
//! replica becomes leader (first poll at once) and stops when it steps down. Each poll asks every
//! source ([`Discover`]), lets the pure [`decide`](crate::decide) diff the answer against the
//! registry's `dns` builders under the mass-removal guard, and — only when something changed —
//! proposes one batch through its [`Replica`], fenced by `if_revision` so a late proposal never
//! undoes a newer change. A poll error changes nothing and backs the poller off until a poll
//! succeeds. This file is the I/O around the decision: status, metrics, traces, the schedule.

use crate::decide::{Decision, Proposal, decide, skip_api_clashes};
use crate::endpoints::{EndpointsDecision, ServiceAnswer, decide_endpoints};
use crate::guard::{Guard, GuardConfig, Held};
use crate::parse::{Parsed, Skipped};
use crate::resolve::{NxDomain, PollError, Resolver, ResolverError, SourceSpec};
use crate::template::SniTemplate;
use concord_registry::services::DnsEndpoints;
use concord_registry::{Batch, Command, Outcome, Registry, Rejection, Source};
use concord_telemetry::trace::Span;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Poller settings, validated by the daemon.
#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    /// The nameserver to ask.
    pub server: SocketAddr,
    /// The names to poll.
    pub sources: Vec<SourceSpec>,
    /// SNI names of discovered builders.
    pub template: SniTemplate,
    /// Time between polls.
    pub interval: Duration,
    /// Timeout of one query (below the interval).
    pub timeout: Duration,
    /// Time between polls after an error, until one succeeds.
    pub error_backoff: Duration,
    /// The mass-removal guard.
    pub guard: GuardConfig,
    /// What NXDOMAIN means.
    pub nxdomain: NxDomain,
}

/// Why a proposal did not go through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProposeError {
    /// This replica is not the leader any more.
    NotLeader,
    /// Anything else (no quorum, timeout, shutting down).
    Other(String),
}

/// What the poller needs from its replica.
pub trait Replica: Send + Sync + 'static {
    /// Whether this replica leads, updated as elections happen.
    fn leadership(&self) -> watch::Receiver<bool>;
    /// The applied registry.
    fn registry(&self) -> watch::Receiver<Arc<Registry>>;
    /// Proposes `cmd` as leader; resolves once it is committed and applied.
    fn propose(&self, cmd: Command) -> impl Future<Output = Result<Outcome, ProposeError>> + Send;
    /// Confirms with a quorum that this replica still leads. A replica restarted from disk may
    /// believe it leads for a moment (its own committed vote) before it hears of a newer term.
    fn confirm_leadership(&self) -> impl Future<Output = bool> + Send;
}

/// Where the poller's answers come from: the configured sources through the resolver
/// ([`DnsSources`]), or a script in tests.
pub trait Discover: Send + Sync + 'static {
    /// Asks every source once. One failing source fails the whole poll: its builders must not
    /// look removed.
    fn discover(&self) -> impl Future<Output = Result<Parsed, PollError>> + Send;
    /// Asks the name a service takes its endpoints from.
    fn service(
        &self,
        dns: &DnsEndpoints,
    ) -> impl Future<Output = Result<ServiceAnswer, PollError>> + Send;
}

/// The configured sources, asked through the configured nameserver.
pub struct DnsSources {
    resolver: Resolver,
    sources: Vec<SourceSpec>,
    template: SniTemplate,
}

impl DnsSources {
    /// The sources of `config`; fails only if the resolver cannot be built.
    pub fn new(config: &DiscoveryConfig) -> Result<Self, ResolverError> {
        Ok(DnsSources {
            resolver: Resolver::new(config.server, config.timeout, config.nxdomain)?,
            sources: config.sources.clone(),
            template: config.template.clone(),
        })
    }
}

impl Discover for DnsSources {
    async fn discover(&self) -> Result<Parsed, PollError> {
        let mut all = Parsed::default();
        for s in &self.sources {
            all.merge(self.resolver.poll(s, &self.template).await?);
        }
        Ok(all)
    }

    async fn service(&self, dns: &DnsEndpoints) -> Result<ServiceAnswer, PollError> {
        self.resolver.service(dns).await
    }
}

/// The last change the poller made.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    /// When (Unix milliseconds).
    pub at_ms: u64,
    /// The registry revision it produced.
    pub revision: u64,
    /// Builders added.
    pub added: usize,
    /// Builders changed.
    pub updated: usize,
    /// Builders removed.
    pub removed: usize,
    /// Services' endpoints added, changed and removed.
    pub endpoints: (usize, usize, usize),
}

/// What the poller is doing, for the status endpoint and the CLI.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PollerStatus {
    /// True while this replica polls (it leads).
    pub polling: bool,
    /// The nameserver.
    pub server: String,
    /// The sources.
    pub sources: Vec<String>,
    /// Poll interval.
    pub interval_ms: u64,
    /// Polls made while leading, since start.
    pub polls: u64,
    /// Polls that failed, since start.
    pub errors: u64,
    /// Failed polls in a row now.
    pub consecutive_errors: u64,
    /// When the last poll started (Unix milliseconds).
    pub last_poll_at_ms: Option<u64>,
    /// How long it took.
    pub last_poll_us: Option<u64>,
    /// `unchanged`, `changed`, `held …`, `stale`, or `error: …`.
    pub last_result: String,
    /// The last error and when.
    pub last_error: Option<(u64, String)>,
    /// The last change proposed and committed.
    pub last_change: Option<Change>,
    /// Builders the last successful poll found.
    pub discovered: usize,
    /// What the last successful poll skipped.
    pub skipped: Vec<Skipped>,
    /// Entries skipped, summed over polls.
    pub skipped_total: u64,
    /// Changes committed.
    pub changes: u64,
    /// Polls held back by the mass-removal guard.
    pub held: u64,
    /// Proposals refused because the registry moved meanwhile (retried at once).
    pub stale: u64,
    /// Services taking endpoints from DNS, and each one's last result.
    pub services: BTreeMap<String, String>,
}

fn now_ms() -> u64 {
    concord_telemetry::unix_micros() / 1000
}

/// A poll's result, deciding when the next one runs.
enum Next {
    Interval,
    Now,
    Backoff,
    Stop,
}

/// The poller of one replica.
pub struct Poller<R: Replica, D: Discover = DnsSources> {
    config: DiscoveryConfig,
    replica: Arc<R>,
    status: Arc<Mutex<PollerStatus>>,
    discover: D,
    guard: Guard,
    /// True while the guard holds a removal, so that its start is logged once.
    holding: bool,
    /// The guard of each service taking endpoints from DNS.
    service_guards: BTreeMap<String, Guard>,
    /// Services whose guard holds a removal, so that its start is logged once.
    holding_services: BTreeSet<String>,
    last_skipped: BTreeSet<Skipped>,
}

impl<R: Replica> Poller<R> {
    /// A poller asking DNS; fails only if the resolver cannot be built.
    pub fn new(config: DiscoveryConfig, replica: Arc<R>) -> Result<Self, ResolverError> {
        let dns = DnsSources::new(&config)?;
        Ok(Poller::with_discover(config, replica, dns))
    }
}

impl<R: Replica, D: Discover> Poller<R, D> {
    /// A poller taking its answers from `discover` (`config`'s nameserver, timeout and
    /// NXDOMAIN settings are then unused).
    pub fn with_discover(config: DiscoveryConfig, replica: Arc<R>, discover: D) -> Self {
        let status = PollerStatus {
            server: config.server.to_string(),
            sources: config.sources.iter().map(ToString::to_string).collect(),
            interval_ms: config.interval.as_millis() as u64,
            last_result: "not polled yet".into(),
            ..PollerStatus::default()
        };
        Poller {
            guard: Guard::new(config.guard),
            config,
            replica,
            status: Arc::new(Mutex::new(status)),
            discover,
            holding: false,
            service_guards: BTreeMap::new(),
            holding_services: BTreeSet::new(),
            last_skipped: BTreeSet::new(),
        }
    }

    /// The status, shared with the admin API.
    pub fn status(&self) -> Arc<Mutex<PollerStatus>> {
        self.status.clone()
    }

    fn update(&self, f: impl FnOnce(&mut PollerStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Polls while this replica leads, until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut leadership = self.replica.leadership();
        loop {
            let became_leader = async {
                let _ = leadership.wait_for(|l| *l).await;
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = became_leader => {}
            }
            if !self.replica.confirm_leadership().await {
                // Not really leading (or no quorum): look again after a moment.
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(self.config.interval) => {}
                }
                continue;
            }
            tracing::info!(server = %self.config.server, "leader: DNS polling starts");
            self.update(|s| s.polling = true);
            self.guard.reset();
            self.holding = false;
            self.service_guards.clear();
            self.holding_services.clear();
            let mut lost = leadership.clone();
            let stepped_down = async move {
                let _ = lost.wait_for(|l| !*l).await;
            };
            tokio::pin!(stepped_down);
            let mut next = tokio::time::Instant::now();
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = &mut stepped_down => break,
                    _ = tokio::time::sleep_until(next) => {}
                }
                let started = tokio::time::Instant::now();
                next = match self.poll().await {
                    Next::Interval => started + self.config.interval,
                    Next::Now => tokio::time::Instant::now(),
                    Next::Backoff => started + self.config.error_backoff,
                    Next::Stop => break,
                };
            }
            tracing::info!("no longer leader: DNS polling stops");
            self.update(|s| s.polling = false);
        }
    }

    /// One poll: ask, decide, and propose what changed.
    async fn poll(&mut self) -> Next {
        let t0 = tokio::time::Instant::now();
        let started = std::time::SystemTime::now();
        let at = now_ms();
        // When this poll saw the DNS state: carried in the command to time discovery-to-ACK.
        let seen_at_us = concord_telemetry::unix_micros();
        let m = concord_telemetry::metrics();
        m.polls.inc();
        let registry = self.replica.registry().borrow().clone();
        let result = self.discover.discover().await;
        m.poll_duration.observe(t0.elapsed());
        self.update(|s| {
            s.polls += 1;
            s.last_poll_at_ms = Some(at);
            s.last_poll_us = Some(t0.elapsed().as_micros() as u64);
        });
        let mut parsed = match result {
            Ok(p) => p,
            Err(e) => return self.failed(at, e),
        };
        let (answers, mut results, service_error) = self.ask_services(&registry).await;
        parsed
            .skipped
            .extend(answers.values().flat_map(|a| a.skipped.iter().cloned()));
        if service_error.is_none() && self.status.lock().is_ok_and(|s| s.consecutive_errors > 0) {
            tracing::info!("DNS polls succeed again");
        }
        skip_api_clashes(&registry, &mut parsed);
        self.note_skipped(&parsed.skipped);
        m.skipped_records.add(parsed.skipped.len() as u64);
        self.update(|s| {
            if service_error.is_none() {
                s.consecutive_errors = 0;
            }
            s.discovered = parsed.builders.len();
            s.skipped_total += parsed.skipped.len() as u64;
            s.skipped = parsed.skipped.clone();
        });
        // The guard's clock is the runtime's: paused in tests, and monotonic.
        let now = t0.into_std();
        let decision = decide(&registry, &parsed.builders, &mut self.guard, now);
        let held = match &decision {
            Decision::Hold(h) => Some(h),
            Decision::Propose(p) => p.held.as_ref(),
            Decision::Unchanged => None,
        };
        let holds = held.is_some();
        match held {
            Some(h) => self.note_held(h, &registry),
            None => self.holding = false,
        }
        let endpoints = decide_endpoints(
            &registry,
            &answers,
            &mut self.service_guards,
            self.config.guard,
            now,
        );
        self.note_service_holds(&endpoints, &mut results);
        self.update(|s| s.services = results);
        let proposal = match decision {
            Decision::Propose(p) => Some(*p),
            Decision::Unchanged | Decision::Hold(_) => None,
        };
        let next = match (proposal, endpoints.changes.is_empty()) {
            (None, true) => {
                if !holds {
                    self.update(|s| s.last_result = "unchanged".into());
                }
                Next::Interval
            }
            (p, _) => {
                // Endpoints alone changed: a command with no builder changes, fenced the same.
                let p = p.unwrap_or_else(|| Proposal {
                    command: Command {
                        if_revision: Some(registry.revision()),
                        ..Command::new(Source::Dns, Batch::default())
                    },
                    added: 0,
                    updated: 0,
                    removed: 0,
                    held: None,
                });
                let when = (started, at, seen_at_us);
                self.propose(p, endpoints, &registry, when).await
            }
        };
        // A service whose name failed kept its endpoints; the rest of the poll went through,
        // and the poller backs off as after any failed poll.
        match (next, service_error) {
            (Next::Interval, Some(e)) => self.failed(at, e),
            (next, _) => next,
        }
    }

    /// Asks the name of every service that takes endpoints from DNS: the answers of those that
    /// answered, each one's result for the status, and the first error.
    async fn ask_services(
        &self,
        registry: &Registry,
    ) -> (
        BTreeMap<String, ServiceAnswer>,
        BTreeMap<String, String>,
        Option<PollError>,
    ) {
        let mut answers = BTreeMap::new();
        let mut results = BTreeMap::new();
        let mut first_error = None;
        for (name, s) in &registry.desired().services {
            let Some(dns) = &s.dns else { continue };
            match self.discover.service(dns).await {
                Ok(a) => {
                    results.insert(name.clone(), format!("{} endpoints", a.endpoints.len()));
                    answers.insert(name.clone(), a);
                }
                Err(e) => {
                    results.insert(name.clone(), format!("error: {e}"));
                    first_error.get_or_insert(PollError {
                        name: e.name,
                        reason: format!("{} (service {name})", e.reason),
                    });
                }
            }
        }
        (answers, results, first_error)
    }

    /// Reports services whose large endpoint removal the guard holds: logged when the hold
    /// starts, shown on every poll.
    fn note_service_holds(
        &mut self,
        d: &EndpointsDecision,
        results: &mut BTreeMap<String, String>,
    ) {
        let now: BTreeSet<String> = d.held.iter().map(|(n, _)| n.clone()).collect();
        for (name, h) in &d.held {
            if !self.holding_services.contains(name) {
                tracing::warn!(
                    service = %name,
                    removals = h.removals,
                    hold_ms = h.needed.as_millis() as u64,
                    "DNS answer would remove a large share of a service's endpoints; holding the removals until they persist"
                );
            }
            results.insert(
                name.clone(),
                format!(
                    "held: would remove {} (missing for {} of {} ms)",
                    h.removals,
                    h.missing_for.as_millis(),
                    h.needed.as_millis()
                ),
            );
        }
        self.holding_services = now;
    }

    /// A failed poll changes nothing: it is counted, logged once per outage, and backs off.
    fn failed(&mut self, at: u64, e: PollError) -> Next {
        let first = self
            .status
            .lock()
            .map(|s| s.consecutive_errors == 0)
            .unwrap_or(true);
        if first {
            tracing::warn!(error = %e, "DNS poll failed; nothing changes, backing off");
        }
        // The guard's clock keeps running: a removal still needs an answer that shows the
        // builders missing after the hold, and resetting here would let a flaky nameserver (one
        // timeout every few seconds) hold a real removal forever.
        concord_telemetry::metrics().poll_errors.inc();
        self.update(|s| {
            s.errors += 1;
            s.consecutive_errors += 1;
            s.last_result = format!("error: {e}");
            s.last_error = Some((at, e.to_string()));
        });
        Next::Backoff
    }

    /// Reports a held removal: logged when the hold starts (it lasts many polls), counted and
    /// shown on every poll.
    fn note_held(&mut self, h: &Held, registry: &Registry) {
        let current = registry.iter().filter(|b| b.source == Source::Dns).count();
        if !std::mem::replace(&mut self.holding, true) {
            tracing::warn!(
                removals = h.removals,
                of = current,
                hold_ms = h.needed.as_millis() as u64,
                "DNS answer would remove a large share of the builders; holding the removals until they persist"
            );
        }
        self.update(|s| {
            s.held += 1;
            s.last_result = format!(
                "held: would remove {} of {current} (missing for {} of {} ms)",
                h.removals,
                h.missing_for.as_millis(),
                h.needed.as_millis()
            );
        });
    }

    /// Proposes `p` through Raft, in a trace started by this poll.
    async fn propose(
        &mut self,
        p: Proposal,
        endpoints: EndpointsDecision,
        registry: &Registry,
        (started, at, seen_at_us): (std::time::SystemTime, u64, u64),
    ) -> Next {
        let Proposal {
            mut command,
            added,
            updated,
            removed,
            held,
        } = p;
        let eps = (endpoints.added, endpoints.updated, endpoints.removed);
        if !endpoints.changes.is_empty() {
            // Endpoints need the services entry format.
            command = Command {
                source: Source::Dns,
                batch: std::mem::take(&mut command.batch),
                if_revision: command.if_revision,
                ..Command::endpoints(endpoints.changes)
            };
        }
        command.set_seen_at_us(seen_at_us);
        // The poll that found a change starts its trace; polls that find none leave no trace.
        let mut poll_span = Span::root("discovery.poll", started);
        if poll_span.is_recording() {
            let sources: Vec<String> = self.config.sources.iter().map(|s| s.to_string()).collect();
            poll_span.set("discovery.sources", sources.join(","));
            poll_span.set("builders.added", added as i64);
            poll_span.set("builders.updated", updated as i64);
            poll_span.set("builders.removed", removed as i64);
            poll_span.set("endpoints.added", eps.0 as i64);
            poll_span.set("endpoints.updated", eps.1 as i64);
            poll_span.set("endpoints.removed", eps.2 as i64);
            poll_span.set("registry.base_revision", registry.revision() as i64);
        }
        let mut span = poll_span.child("raft.propose");
        poll_span.ok();
        span.inject(&mut command.trace);
        let outcome = self.replica.propose(command).await;
        match &outcome {
            Ok(Outcome::Applied { revision, .. }) => {
                span.set("registry.revision", *revision as i64);
                span.ok();
            }
            Ok(Outcome::Rejected(r)) => span.fail(r.to_string()),
            Err(ProposeError::NotLeader) => span.fail("not the leader any more"),
            Err(ProposeError::Other(e)) => span.fail(e.clone()),
        }
        match outcome {
            Ok(Outcome::Applied { revision, .. }) => {
                let (endpoints_added, endpoints_updated, endpoints_removed) = eps;
                tracing::info!(
                    added,
                    updated,
                    removed,
                    endpoints_added,
                    endpoints_updated,
                    endpoints_removed,
                    revision,
                    "DNS change committed"
                );
                concord_telemetry::metrics().changes_proposed.inc();
                self.update(|s| {
                    s.changes += 1;
                    // A held removal stays the headline while the rest of its answer lands.
                    if held.is_none() {
                        s.last_result = "changed".into();
                    }
                    s.last_change = Some(Change {
                        at_ms: at,
                        revision,
                        added,
                        updated,
                        removed,
                        endpoints: eps,
                    });
                });
                Next::Interval
            }
            Ok(Outcome::Rejected(Rejection::StaleRevision { .. })) => {
                // The registry moved between our read and the commit: diff again at once.
                self.update(|s| {
                    s.stale += 1;
                    s.last_result = "stale".into();
                });
                Next::Now
            }
            Ok(Outcome::Rejected(r)) => {
                tracing::error!(reason = %r, "the registry refused the DNS change");
                self.update(|s| {
                    s.errors += 1;
                    s.consecutive_errors += 1;
                    s.last_result = format!("error: refused: {r}");
                    s.last_error = Some((at, r.to_string()));
                });
                Next::Backoff
            }
            Err(ProposeError::NotLeader) => {
                self.update(|s| s.last_result = "not leader any more; stopped".into());
                Next::Stop
            }
            Err(ProposeError::Other(e)) => {
                tracing::warn!(error = %e, "proposing the DNS change failed");
                self.update(|s| {
                    s.errors += 1;
                    s.consecutive_errors += 1;
                    s.last_result = format!("error: {e}");
                    s.last_error = Some((at, e));
                });
                Next::Backoff
            }
        }
    }

    /// Logs skipped entries when the set changes, not on every poll.
    fn note_skipped(&mut self, skipped: &[Skipped]) {
        let set: BTreeSet<Skipped> = skipped.iter().cloned().collect();
        if set != self.last_skipped {
            for s in set.difference(&self.last_skipped) {
                tracing::warn!(name = %s.name, entry = %s.entry, reason = %s.reason, "skipping a malformed DNS entry");
            }
            self.last_skipped = set;
        }
    }
}

#[cfg(test)]
mod tests;
