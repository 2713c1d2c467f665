//! The poller against a fake replica and scripted DNS answers, on tokio's paused clock: every
//! poll and proposal is stamped with virtual time, so the schedule is checked exactly.

use super::*;
use concord_registry::Builder;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::task::JoinHandle;
use tokio::time::Instant as VInstant;

const INTERVAL: Duration = Duration::from_millis(100);
const BACKOFF: Duration = Duration::from_millis(1000);

fn builder(id: &str) -> Builder {
    Builder {
        id: id.to_string(),
        addr: "10.0.0.1:8443".parse().unwrap(),
        sni: format!("{id}.b.test"),
        region: String::new(),
        labels: Default::default(),
        source: Source::Dns,
    }
}

fn answer(ids: &[&str]) -> Result<Parsed, PollError> {
    Ok(Parsed {
        builders: ids.iter().map(|id| (id.to_string(), builder(id))).collect(),
        skipped: Vec::new(),
    })
}

fn outage() -> Result<Parsed, PollError> {
    Err(PollError {
        name: "_instances.test.".into(),
        reason: "SERVFAIL for TXT".into(),
    })
}

fn config(guard: GuardConfig) -> DiscoveryConfig {
    DiscoveryConfig {
        server: "127.0.0.1:53".parse().unwrap(),
        sources: vec!["txt:_instances.test:8443".parse().unwrap()],
        template: SniTemplate::parse("{id}.b.test").unwrap(),
        interval: INTERVAL,
        timeout: Duration::from_millis(80),
        error_backoff: BACKOFF,
        guard,
        nxdomain: NxDomain::Empty,
    }
}

/// One call of [`Replica::propose`].
#[derive(Debug, Clone)]
struct Proposal {
    at: Duration,
    cmd: Command,
    outcome: Result<Outcome, ProposeError>,
}

/// A replica with an in-memory registry; its log index counts every committed command.
struct FakeReplica {
    t0: VInstant,
    leader: watch::Sender<bool>,
    registry: watch::Sender<Arc<Registry>>,
    index: Mutex<u64>,
    proposals: Mutex<Vec<Proposal>>,
    /// Committed just before the next proposal: another write racing the poller's.
    race: Mutex<Option<Command>>,
    /// Raft has already moved on: proposals fail with `NotLeader` and leadership cannot be
    /// confirmed, while the leadership watch still says leader.
    deposed: AtomicBool,
}

impl FakeReplica {
    fn commit(&self, cmd: &Command) -> Outcome {
        let mut index = self.index.lock().unwrap();
        *index += 1;
        let mut reg = Registry::clone(&self.registry.borrow());
        let outcome = reg.apply(*index, cmd);
        self.registry.send_replace(Arc::new(reg));
        outcome
    }
}

impl Replica for FakeReplica {
    fn leadership(&self) -> watch::Receiver<bool> {
        self.leader.subscribe()
    }

    fn registry(&self) -> watch::Receiver<Arc<Registry>> {
        self.registry.subscribe()
    }

    async fn propose(&self, cmd: Command) -> Result<Outcome, ProposeError> {
        let outcome = if self.deposed.load(Ordering::SeqCst) {
            Err(ProposeError::NotLeader)
        } else {
            if let Some(other) = self.race.lock().unwrap().take() {
                self.commit(&other);
            }
            Ok(self.commit(&cmd))
        };
        self.proposals.lock().unwrap().push(Proposal {
            at: self.t0.elapsed(),
            cmd,
            outcome: outcome.clone(),
        });
        outcome
    }

    async fn confirm_leadership(&self) -> bool {
        *self.leader.borrow() && !self.deposed.load(Ordering::SeqCst)
    }
}

/// Scripted DNS: answers with whatever the test set last, and stamps each poll.
#[derive(Clone)]
struct Script {
    t0: VInstant,
    answer: Arc<Mutex<Result<Parsed, PollError>>>,
    /// What every service's name answers.
    service: Arc<Mutex<Result<ServiceAnswer, PollError>>>,
    polls: Arc<Mutex<Vec<Duration>>>,
}

impl Discover for Script {
    async fn discover(&self) -> Result<Parsed, PollError> {
        self.polls.lock().unwrap().push(self.t0.elapsed());
        self.answer.lock().unwrap().clone()
    }

    async fn service(&self, _: &DnsEndpoints) -> Result<ServiceAnswer, PollError> {
        self.service.lock().unwrap().clone()
    }
}

/// A running poller, its fake replica and its DNS script, all timed from `t0`.
struct Harness {
    t0: VInstant,
    replica: Arc<FakeReplica>,
    dns: Script,
    status: Arc<Mutex<PollerStatus>>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Harness {
    /// A leading replica whose registry holds `dns` builders `ids` at revision 1, DNS answering
    /// the same, and the poller started at `t0`.
    fn start(ids: &[&str], guard: GuardConfig) -> Harness {
        let t0 = VInstant::now();
        let registry = Registry::from_parts(ids.iter().map(|id| builder(id)), 1).unwrap();
        let replica = Arc::new(FakeReplica {
            t0,
            leader: watch::Sender::new(true),
            registry: watch::Sender::new(Arc::new(registry)),
            index: Mutex::new(1),
            proposals: Mutex::default(),
            race: Mutex::default(),
            deposed: AtomicBool::new(false),
        });
        let dns = Script {
            t0,
            answer: Arc::new(Mutex::new(answer(ids))),
            service: Arc::new(Mutex::new(Ok(ServiceAnswer::default()))),
            polls: Arc::default(),
        };
        let poller = Poller::with_discover(config(guard), replica.clone(), dns.clone());
        let status = poller.status();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(poller.run(shutdown.clone()));
        Harness {
            t0,
            replica,
            dns,
            status,
            shutdown,
            task,
        }
    }

    /// Sleeps (virtually) until `ms` after the start. Pick times between polls, so that the
    /// order of a poll and the test's next step is never a tie.
    async fn at(&self, ms: u64) {
        tokio::time::sleep_until(self.t0 + Duration::from_millis(ms)).await;
    }

    fn set(&self, a: Result<Parsed, PollError>) {
        *self.dns.answer.lock().unwrap() = a;
    }

    fn set_service(&self, a: Result<ServiceAnswer, PollError>) {
        *self.dns.service.lock().unwrap() = a;
    }

    /// Commits service `echo`, taking its endpoints from an A name.
    fn add_dns_service(&self) {
        self.replica.commit(&Command::raise_format(2));
        let d = serde_json::from_value(serde_json::json!({"services": {"echo": {
            "protocol": "grpc", "dns": {"name": "echo.test", "kind": "a", "port": 8080}}}}))
        .unwrap();
        let out = self.replica.commit(&Command::apply_services(d));
        assert!(matches!(out, Outcome::Applied { .. }), "{out:?}");
    }

    /// The ids of service `echo`'s endpoints.
    fn endpoints(&self) -> Vec<String> {
        let r = self.replica.registry.borrow();
        r.endpoints_of("echo").map(|e| e.id.clone()).collect()
    }

    /// When each poll happened, in milliseconds from the start.
    fn polls(&self) -> Vec<u64> {
        ms(&self.dns.polls.lock().unwrap())
    }

    fn proposals(&self) -> Vec<Proposal> {
        self.replica.proposals.lock().unwrap().clone()
    }

    fn status(&self) -> PollerStatus {
        self.status.lock().unwrap().clone()
    }

    /// The replica's registry: its revision and its builders' ids.
    fn registry(&self) -> (u64, Vec<String>) {
        let r = self.replica.registry.borrow();
        (r.revision(), r.iter().map(|b| b.id.clone()).collect())
    }

    /// Cancels the poller and waits for it to end (bounded: a poller that ignores its token
    /// fails the test instead of hanging it).
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(1), self.task)
            .await
            .expect("the poller ends on shutdown")
            .expect("the poller does not panic");
    }
}

fn ms(ds: &[Duration]) -> Vec<u64> {
    ds.iter().map(|d| d.as_millis() as u64).collect()
}

fn ids(ids: &[&str]) -> Vec<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(start_paused = true)]
async fn first_poll_is_immediate_then_one_every_interval() {
    let h = Harness::start(&["a"], GuardConfig::default());
    h.at(450).await;
    assert_eq!(h.polls(), [0, 100, 200, 300, 400]);
    assert!(h.proposals().is_empty(), "DNS agrees with the registry");
    let s = h.status();
    assert!(s.polling);
    assert_eq!((s.polls, s.last_result.as_str()), (5, "unchanged"));
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_change_is_proposed_fenced_by_the_revision_it_was_computed_against() {
    let h = Harness::start(&["a"], GuardConfig::default());
    h.at(50).await;
    h.set(answer(&["a", "b"]));
    h.at(150).await;
    let p = h.proposals();
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].at, Duration::from_millis(100));
    assert_eq!(p[0].cmd.source, Source::Dns);
    assert_eq!(p[0].cmd.if_revision, Some(1));
    assert_eq!(p[0].cmd.batch.upserts, vec![builder("b")]);
    assert!(p[0].cmd.seen_at_us().is_some(), "discovery time is carried");
    assert_eq!(h.registry(), (2, ids(&["a", "b"])));
    let s = h.status();
    assert_eq!((s.changes, s.last_result.as_str()), (1, "changed"));
    let c = s.last_change.expect("the change is reported");
    assert_eq!((c.revision, c.added, c.updated, c.removed), (2, 1, 0, 0));
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_stale_proposal_is_recomputed_at_once_against_the_new_revision() {
    let h = Harness::start(&["a"], GuardConfig::default());
    // An API write commits between the poller's read and its proposal.
    let mut put = builder("x");
    put.source = Source::Api;
    *h.replica.race.lock().unwrap() = Some(Command::new(
        Source::Api,
        concord_registry::Batch {
            upserts: vec![put],
            removes: vec![],
        },
    ));
    h.set(answer(&["a", "b"]));
    h.at(50).await;
    let p = h.proposals();
    assert_eq!(p.len(), 2, "{p:?}");
    assert_eq!(p[0].cmd.if_revision, Some(1));
    assert!(matches!(
        p[0].outcome,
        Ok(Outcome::Rejected(Rejection::StaleRevision {
            expected: 1,
            actual: 2
        }))
    ));
    // Retried at once, not a poll interval later, and fenced by the revision it saw.
    assert_eq!((p[0].at, p[1].at), (Duration::ZERO, Duration::ZERO));
    assert_eq!(p[1].cmd.if_revision, Some(2));
    // The refused entry took log index 3 without changing the registry.
    assert!(matches!(
        p[1].outcome,
        Ok(Outcome::Applied { revision: 4, .. })
    ));
    assert_eq!(h.polls(), [0, 0]);
    assert_eq!(h.registry(), (4, ids(&["a", "b", "x"])));
    let s = h.status();
    assert_eq!((s.stale, s.changes), (1, 1));
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_dns_error_changes_nothing_and_backs_off_until_a_poll_succeeds() {
    let h = Harness::start(&["a", "b"], GuardConfig::default());
    h.set(outage());
    h.at(2500).await;
    assert_eq!(h.polls(), [0, 1000, 2000], "one poll per backoff");
    assert!(h.proposals().is_empty());
    assert_eq!(h.registry(), (1, ids(&["a", "b"])));
    let s = h.status();
    assert_eq!((s.errors, s.consecutive_errors), (3, 3));
    assert!(s.last_result.contains("SERVFAIL"), "{}", s.last_result);
    assert!(s.last_error.is_some());

    h.set(answer(&["a", "b", "c"]));
    h.at(3250).await;
    assert_eq!(
        h.polls(),
        [0, 1000, 2000, 3000, 3100, 3200],
        "back to the interval"
    );
    let p = h.proposals();
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].at, Duration::from_millis(3000));
    assert_eq!(h.registry(), (2, ids(&["a", "b", "c"])));
    assert_eq!(h.status().consecutive_errors, 0);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn polling_stops_when_leadership_ends_and_restarts_at_once() {
    let h = Harness::start(&["a"], GuardConfig::default());
    h.at(250).await;
    h.replica.leader.send_replace(false);
    h.at(1050).await;
    assert_eq!(h.polls(), [0, 100, 200]);
    assert!(!h.status().polling);
    // DNS changes while this replica follows: not its business.
    h.set(answer(&["a", "b"]));
    h.at(1100).await;
    assert!(h.proposals().is_empty());

    h.replica.leader.send_replace(true);
    h.at(1175).await;
    assert_eq!(h.polls(), [0, 100, 200, 1100]);
    let p = h.proposals();
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].at, Duration::from_millis(1100));
    assert!(h.status().polling);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_not_leader_answer_stops_polling_until_leadership_is_confirmed() {
    let h = Harness::start(&["a"], GuardConfig::default());
    h.at(50).await;
    h.replica.deposed.store(true, Ordering::SeqCst);
    h.set(answer(&["a", "b"]));
    h.at(1050).await;
    // The poll at 100 ms proposed, heard "not leader", and stopped; leadership is then
    // confirmed with a quorum before polling again, which fails while deposed.
    assert_eq!(h.polls(), [0, 100]);
    let p = h.proposals();
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].outcome, Err(ProposeError::NotLeader));
    let s = h.status();
    assert!(!s.polling);
    assert_eq!(h.registry(), (1, ids(&["a"])));

    h.replica.deposed.store(false, Ordering::SeqCst);
    h.at(1250).await;
    let polls = h.polls();
    assert_eq!(polls.len(), 4, "{polls:?}");
    assert!((1050..=1150).contains(&polls[2]), "{polls:?}");
    assert_eq!(h.registry().1, ids(&["a", "b"]));
    h.stop().await;
}
#[tokio::test(start_paused = true)]
async fn a_300ms_empty_answer_removes_no_builder() {
    // A zone reload: the name answers with nothing for about 300 ms, then everything is back.
    let h = Harness::start(&["a", "b", "c", "d"], GuardConfig::default());
    h.at(50).await;
    h.set(answer(&[]));
    h.at(350).await;
    h.set(answer(&["a", "b", "c", "d"]));
    h.at(1050).await;
    let removals: Vec<_> = h
        .proposals()
        .into_iter()
        .filter(|p| !p.cmd.batch.removes.is_empty())
        .map(|p| (p.at, p.cmd.batch.removes))
        .collect();
    assert!(removals.is_empty(), "builders removed: {removals:?}");
    assert_eq!(h.registry(), (1, ids(&["a", "b", "c", "d"])));
    assert_eq!(
        h.status().held,
        3,
        "the polls at 100, 200 and 300 ms were held"
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_large_removal_that_persists_for_the_hold_is_applied() {
    let guard = GuardConfig {
        max_removal_share: 0.5,
        hold: Duration::from_secs(1),
    };
    let h = Harness::start(&["a", "b", "c", "d"], guard);
    h.at(50).await;
    h.set(answer(&["a"]));
    // First seen missing at 100 ms: held by every poll until 1100 ms.
    h.at(1050).await;
    assert!(h.proposals().is_empty(), "{:?}", h.proposals());
    let s = h.status();
    assert_eq!(s.held, 10);
    assert_eq!(
        s.last_result, "held: would remove 3 of 4 (missing for 900 of 1000 ms)",
        "{s:?}"
    );
    h.at(1150).await;
    let p = h.proposals();
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].at, Duration::from_millis(1100));
    assert_eq!(p[0].cmd.batch.removes, ["b", "c", "d"]);
    assert_eq!(h.registry(), (2, ids(&["a"])));
    assert_eq!(h.status().last_result, "changed");
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn additions_in_a_held_answer_go_through_without_its_removals() {
    let h = Harness::start(&["a", "b", "c", "d"], GuardConfig::default());
    h.at(50).await;
    // Mid-reload the zone holds only a new builder.
    h.set(answer(&["e"]));
    h.at(150).await;
    let p = h.proposals();
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].cmd.batch.upserts, [builder("e")]);
    assert!(p[0].cmd.batch.removes.is_empty(), "{p:?}");
    assert_eq!(h.registry(), (2, ids(&["a", "b", "c", "d", "e"])));
    assert!(h.status().last_result.starts_with("held:"));
    // The reload completes: nothing more to do, nothing was lost.
    h.set(answer(&["a", "b", "c", "d", "e"]));
    h.at(6050).await;
    assert_eq!(h.proposals().len(), 1);
    assert_eq!(h.registry(), (2, ids(&["a", "b", "c", "d", "e"])));
    assert_eq!(h.status().last_result, "unchanged");
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_dns_error_neither_applies_nor_restarts_the_hold() {
    let guard = GuardConfig {
        max_removal_share: 0.5,
        hold: Duration::from_secs(1),
    };
    let h = Harness::start(&["a", "b", "c", "d"], guard);
    h.at(50).await;
    h.set(answer(&["a"]));
    h.at(550).await;
    h.set(outage());
    h.at(650).await;
    h.set(answer(&["a"]));
    // Missing since the poll at 100 ms; the poll at 600 ms failed and backed off, so the hold
    // (1 s) ends without an answer. The next answer, at 1600 ms, still shows them missing.
    h.at(1550).await;
    assert!(h.proposals().is_empty(), "{:?}", h.proposals());
    h.at(1650).await;
    let p = h.proposals();
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].at, Duration::from_millis(1600));
    assert_eq!(h.registry().1, ids(&["a"]));
    h.stop().await;
}

fn service_answer(ips: &[&str]) -> Result<ServiceAnswer, PollError> {
    let ips: Vec<std::net::IpAddr> = ips.iter().map(|ip| ip.parse().unwrap()).collect();
    Ok(crate::endpoints::from_addresses("echo.test", &ips, 8080))
}

#[tokio::test(start_paused = true)]
async fn services_endpoints_join_the_polls_command_and_a_failing_name_keeps_its_own() {
    let h = Harness::start(&["a"], GuardConfig::default());
    h.add_dns_service();
    let revision = h.registry().0;
    h.at(50).await;
    h.set_service(service_answer(&["10.0.0.1", "10.0.0.2"]));
    h.at(150).await;
    let p = h.proposals();
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(
        (p[0].cmd.source, p[0].cmd.if_revision, p[0].cmd.format),
        (Source::Dns, Some(revision), 2)
    );
    assert!(p[0].cmd.batch.upserts.is_empty() && p[0].cmd.batch.removes.is_empty());
    assert_eq!(h.endpoints(), ["dns@10.0.0.1:8080", "dns@10.0.0.2:8080"]);
    let s = h.status();
    assert_eq!(s.services["echo"], "2 endpoints");
    assert_eq!(s.last_change.expect("a change").endpoints, (2, 0, 0));
    // The service's name fails while the builders change: the builder goes through, the
    // endpoints stay, and the poller backs off.
    h.set_service(Err(PollError {
        name: "echo.test.".into(),
        reason: "SERVFAIL for A".into(),
    }));
    h.set(answer(&["a", "b"]));
    h.at(250).await;
    let p = h.proposals();
    assert_eq!(p.len(), 2, "{p:?}");
    assert_eq!(p[1].cmd.batch.upserts, vec![builder("b")]);
    assert!(p[1].cmd.endpoints.is_empty(), "{:?}", p[1].cmd.endpoints);
    assert_eq!(h.endpoints(), ["dns@10.0.0.1:8080", "dns@10.0.0.2:8080"]);
    let s = h.status();
    assert!(s.services["echo"].starts_with("error: "), "{s:?}");
    assert_eq!(s.consecutive_errors, 1);
    h.set_service(service_answer(&["10.0.0.2"]));
    h.at(1150).await;
    assert_eq!(h.polls(), [0, 100, 200], "backed off after the error");
    h.at(1250).await;
    assert_eq!(h.polls(), [0, 100, 200, 1200]);
    assert_eq!(h.endpoints(), ["dns@10.0.0.2:8080"]);
    assert_eq!(h.status().consecutive_errors, 0);
    h.stop().await;
}
