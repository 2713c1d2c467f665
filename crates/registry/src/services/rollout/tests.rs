//! Rollouts as the registry applies them: what a start checks, how steps are fenced, and what
//! Envoys are sent at each phase.

use super::*;
use crate::services::EndpointChange;
use crate::{Command, Outcome, Registry, Rejection};
use serde_json::json;

/// A registry with service `echo` (routed by table `public`, also in a weighted split with
/// `other`), two v1 endpoints and one v2 endpoint.
fn registry() -> Registry {
    let desired: Desired = serde_json::from_value(json!({
        "services": {"echo": {"protocol": "grpc"}, "other": {"protocol": "grpc"}},
        "route_tables": {"public": {"virtual_hosts": [{
            "name": "echo", "domains": ["echo.local"],
            "routes": [
                {"match": {"prefix": "/split"},
                 "weighted": [{"service": "echo", "weight": 60}, {"service": "other", "weight": 40}]},
                {"match": {"prefix": "/"}, "service": "echo"}
            ]
        }]}}
    }))
    .unwrap();
    let mut r = Registry::new();
    r.apply(1, &Command::raise_format(crate::FORMAT_ROLLOUTS));
    assert!(matches!(
        r.apply(2, &Command::apply_services(desired)),
        Outcome::Applied { .. }
    ));
    let register = |id: &str, port: u16, version: &str| EndpointChange::Register {
        service: "echo".into(),
        id: id.into(),
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
        weight: 1,
        labels: [("version".to_string(), version.to_string())].into(),
        ttl: None,
    };
    let cmd = Command::endpoints(vec![
        register("a", 9001, "v1"),
        register("b", 9002, "v1"),
        register("c", 9003, "v2"),
    ]);
    assert!(matches!(
        r.apply(3, &cmd),
        Outcome::Applied { changed: true, .. }
    ));
    r
}

fn spec(v: serde_json::Value) -> RolloutSpec {
    let mut base = json!({"service": "echo", "from": "v1", "to": "v2"});
    for (k, val) in v.as_object().unwrap() {
        base[k] = val.clone();
    }
    serde_json::from_value(base).unwrap()
}

fn start(s: RolloutSpec) -> Command {
    Command::rollouts(vec![RolloutChange::Start { spec: s, at_ms: 1 }])
}

fn rejected(r: &mut Registry, index: u64, cmd: &Command) -> Rejection {
    let before = r.clone();
    match r.apply(index, cmd) {
        Outcome::Rejected(why) => {
            assert_eq!(*r, before, "a refused change changed nothing");
            why
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
}

/// The routes of table `public` as Envoys get them: (prefix, [(service, weight)]).
fn routes(r: &Registry) -> Vec<(String, Vec<(String, u32)>)> {
    r.routed().route_tables["public"].virtual_hosts[0]
        .routes
        .iter()
        .map(|route| {
            let to = match &route.service {
                Some(s) => vec![(s.clone(), 100)],
                None => route
                    .weighted
                    .iter()
                    .map(|w| (w.service.clone(), w.weight))
                    .collect(),
            };
            (route.matches.prefix.clone().unwrap_or_default(), to)
        })
        .collect()
}

fn ids(r: &Registry, service: &str) -> Vec<String> {
    r.routed_endpoints_of(service)
        .map(|e| e.id.clone())
        .collect()
}

#[test]
fn a_start_splits_the_routes_and_the_endpoints_by_version() {
    let mut r = registry();
    assert!(
        Arc::ptr_eq(r.routed(), r.desired()),
        "no rollout: what Envoys get is the desired state"
    );
    let out = r.apply(4, &start(spec(json!({}))));
    assert_eq!(
        out,
        Outcome::Applied {
            revision: 4,
            changed: true
        }
    );
    let ro = &r.rollouts()["echo"];
    assert_eq!(
        (ro.phase, ro.step, ro.weight(), ro.started_at),
        (Phase::Running, 0, 10, 4)
    );
    assert_eq!(
        routes(&r),
        vec![
            (
                "/split".into(),
                vec![
                    ("echo~v1".into(), 27),
                    ("echo~v2".into(), 3),
                    ("other".into(), 20)
                ]
            ),
            (
                "/".into(),
                vec![("echo~v1".into(), 9), ("echo~v2".into(), 1)]
            ),
        ]
    );
    assert_eq!(ids(&r, "echo~v1"), ["a", "b"]);
    assert_eq!(ids(&r, "echo~v2"), ["c"]);
    assert_eq!(
        ids(&r, "echo"),
        ["a", "b", "c"],
        "the service itself keeps every endpoint"
    );
    let routed = r.routed();
    assert!(routed.services.contains_key("echo~v1") && routed.services.contains_key("echo~v2"));
    assert_eq!(
        r.desired().services.len(),
        2,
        "the operator's state is untouched"
    );

    // A new v2 instance joins the v2 cluster at once.
    let cmd = Command::endpoints(vec![EndpointChange::Register {
        service: "echo".into(),
        id: "d".into(),
        addr: "127.0.0.1:9004".parse().unwrap(),
        weight: 1,
        labels: [("version".to_string(), "v2".to_string())].into(),
        ttl: None,
    }]);
    r.apply(5, &cmd);
    assert_eq!(ids(&r, "echo~v2"), ["c", "d"]);
}

#[test]
fn steps_are_fenced_by_start_and_step_and_end_promoted() {
    let mut r = registry();
    r.apply(4, &start(spec(json!({"steps": [50, 100]}))));
    let promote = |step: usize, started_at: u64| {
        Command::rollouts(vec![RolloutChange::Promote {
            service: "echo".into(),
            started_at,
            step,
            at_ms: 2,
            why: "ok".into(),
        }])
    };
    // A decision about another rollout, or a step already left, changes nothing.
    assert_eq!(
        r.apply(5, &promote(0, 3)),
        Outcome::Applied {
            revision: 4,
            changed: false
        }
    );
    assert_eq!(
        r.apply(6, &promote(0, 4)),
        Outcome::Applied {
            revision: 6,
            changed: true
        }
    );
    assert_eq!(r.rollouts()["echo"].weight(), 100);
    assert_eq!(r.rollouts()["echo"].phase, Phase::Running);
    assert_eq!(
        r.apply(7, &promote(0, 4)),
        Outcome::Applied {
            revision: 6,
            changed: false
        }
    );
    assert_eq!(
        r.apply(8, &promote(1, 4)),
        Outcome::Applied {
            revision: 8,
            changed: true
        }
    );
    assert_eq!(r.rollouts()["echo"].phase, Phase::Promoted);
    assert_eq!(routes(&r)[1], ("/".into(), vec![("echo~v2".into(), 100)]));
    // A promoted rollout is over: a new one of the service may start.
    let next = spec(json!({"from": "v2", "to": "v1"}));
    assert!(matches!(
        r.apply(9, &start(next)),
        Outcome::Applied { changed: true, .. }
    ));
}

#[test]
fn a_rollback_sends_everything_to_the_old_version_and_stays() {
    let mut r = registry();
    r.apply(4, &start(spec(json!({}))));
    let back = Command::rollouts(vec![RolloutChange::RollBack {
        service: "echo".into(),
        started_at: 4,
        step: 0,
        at_ms: 3,
        why: "v2 errors 100.0% > v1 0.0% + 5 points".into(),
    }]);
    assert!(matches!(
        r.apply(5, &back),
        Outcome::Applied { changed: true, .. }
    ));
    let ro = &r.rollouts()["echo"];
    assert_eq!((ro.phase, ro.weight()), (Phase::RolledBack, 0));
    assert!(ro.reason.as_deref().unwrap().contains("100.0%"));
    assert_eq!(routes(&r)[1], ("/".into(), vec![("echo~v1".into(), 100)]));
    // Nothing moves it until an operator acts: a late promotion is fenced, resume refused.
    let promote = Command::rollouts(vec![RolloutChange::Promote {
        service: "echo".into(),
        started_at: 4,
        step: 0,
        at_ms: 4,
        why: "late".into(),
    }]);
    assert_eq!(
        r.apply(6, &promote),
        Outcome::Applied {
            revision: 5,
            changed: false
        }
    );
    let resume = Command::rollouts(vec![RolloutChange::Resume {
        service: "echo".into(),
        at_ms: 5,
    }]);
    assert!(matches!(
        rejected(&mut r, 7, &resume),
        Rejection::RolloutPhase { .. }
    ));
}

#[test]
fn pause_resume_and_abort() {
    let mut r = registry();
    r.apply(4, &start(spec(json!({}))));
    let op = |c: fn(String, u64) -> RolloutChange| Command::rollouts(vec![c("echo".into(), 9)]);
    let pause = op(|service, at_ms| RolloutChange::Pause { service, at_ms });
    let resume = op(|service, at_ms| RolloutChange::Resume { service, at_ms });
    let abort = op(|service, at_ms| RolloutChange::Abort { service, at_ms });
    r.apply(5, &pause);
    assert_eq!(r.rollouts()["echo"].phase, Phase::Paused);
    assert_eq!(
        r.rollouts()["echo"].weight(),
        10,
        "a paused rollout holds its step"
    );
    assert!(matches!(
        rejected(&mut r, 6, &pause),
        Rejection::RolloutPhase { .. }
    ));
    r.apply(7, &resume);
    assert_eq!(
        (r.rollouts()["echo"].phase, r.rollouts()["echo"].step_at),
        (Phase::Running, 7)
    );
    r.apply(8, &abort);
    assert_eq!(
        (r.rollouts()["echo"].phase, r.rollouts()["echo"].weight()),
        (Phase::Aborted, 0)
    );
    assert!(matches!(
        rejected(&mut r, 9, &abort),
        Rejection::RolloutPhase { .. }
    ));
    let other = Command::rollouts(vec![RolloutChange::Pause {
        service: "other".into(),
        at_ms: 1,
    }]);
    assert!(matches!(
        rejected(&mut r, 10, &other),
        Rejection::NoRollout { .. }
    ));
}

#[test]
fn bad_starts_are_refused_with_what_is_wrong_and_nothing_committed() {
    let mut r = registry();
    let problem = |r: &mut Registry, s: RolloutSpec| match rejected(r, 4, &start(s)) {
        Rejection::InvalidRollout { problem, .. } => problem,
        other => panic!("{other:?}"),
    };
    let p = problem(&mut r, spec(json!({"to": "v3"})));
    assert!(p.contains("has version=v3"), "{p}");
    let p = problem(&mut r, spec(json!({"service": "nope"})));
    assert!(p.contains("no service \"nope\""), "{p}");
    for (bad, says) in [
        (json!({"steps": [10, 5, 100]}), "increasing"),
        (json!({"steps": [10, 50]}), "ending at 100"),
        (json!({"steps": [0, 100]}), "1-100"),
        (json!({"steps": []}), "0 steps"),
        (json!({"interval": "10ms"}), "outside 1s-24h"),
        (json!({"max_error_increase": 101}), "outside 0-100"),
        (json!({"min_requests": 0}), "min_requests 0"),
        (json!({"to": "v1"}), "both \"v1\""),
        (json!({"to": "V.2"}), "to version"),
    ] {
        let p = problem(&mut r, spec(bad.clone()));
        assert!(p.contains(says), "{bad}: {p}");
    }
    // Overlapping rollouts of one service.
    r.apply(4, &start(spec(json!({}))));
    assert!(matches!(
        rejected(&mut r, 5, &start(spec(json!({})))),
        Rejection::RolloutInProgress {
            phase: Phase::Running,
            ..
        }
    ));
    // Before the cluster's format allows rollouts.
    let mut old = Registry::new();
    assert!(matches!(
        rejected(&mut old, 1, &start(spec(json!({})))),
        Rejection::FormatNotEnabled { format: 3, .. }
    ));
}

#[test]
fn removing_the_service_removes_its_rollout() {
    let mut r = registry();
    r.apply(4, &start(spec(json!({}))));
    let desired: Desired =
        serde_json::from_value(json!({"services": {"other": {"protocol": "grpc"}}})).unwrap();
    r.apply(5, &Command::apply_services(desired));
    assert!(r.rollouts().is_empty());
    assert!(r.routed_endpoint_map().is_empty());
    assert!(Arc::ptr_eq(r.routed(), r.desired()));
}
