//! Staged configurations as the registry applies them.

use super::*;
use crate::services::Duration;
use crate::{Command, Outcome, Registry, Rejection};
use serde_json::json;

fn desired(routes_to: &str) -> Desired {
    serde_json::from_value(json!({
        "services": {"echo": {"protocol": "grpc"}, "echo-next": {"protocol": "grpc"}},
        "route_tables": {"main": {"virtual_hosts": [{
            "name": "echo", "domains": ["echo.local"],
            "routes": [{"match": {"prefix": "/"}, "service": routes_to}]
        }]}}
    }))
    .unwrap()
}

fn registry() -> Registry {
    let mut r = Registry::new();
    r.apply(1, &Command::raise_format(crate::FORMAT));
    r.apply(2, &Command::apply_services(desired("echo")));
    r
}

fn start(d: Desired) -> Command {
    Command::stage(StageChange::Start {
        desired: Box::new(d),
        group: vec!["cluster=canary".parse().unwrap()],
        hold: Duration::from_secs(5),
        max_error_increase: 5,
        min_requests: 0,
        at_ms: 1,
    })
}

fn routes_to(d: &Desired) -> String {
    d.route_tables["main"].virtual_hosts[0].routes[0]
        .service
        .clone()
        .unwrap()
}

#[test]
fn a_stage_is_seen_by_its_group_only_until_promoted() {
    let mut r = registry();
    assert_eq!(
        r.apply(3, &start(desired("echo-next"))),
        Outcome::Applied {
            revision: 3,
            changed: true
        }
    );
    assert_eq!(
        routes_to(r.desired()),
        "echo",
        "everyone else keeps the current state"
    );
    let view = r.staged_view().expect("a stage");
    assert_eq!(
        (routes_to(view.routed()), view.revision()),
        ("echo-next".into(), 3)
    );
    // An apply waits for the stage; so does a second stage.
    for cmd in [
        Command::apply_services(desired("echo")),
        start(desired("echo")),
    ] {
        assert_eq!(
            r.apply(4, &cmd),
            Outcome::Rejected(Rejection::StageInProgress { at: 3 })
        );
    }
    // A decision about another stage changes nothing; the promotion moves everyone.
    let promote = |at| {
        Command::stage(StageChange::Promote {
            at,
            why: "ok".into(),
            at_ms: 2,
        })
    };
    assert_eq!(
        r.apply(5, &promote(2)),
        Outcome::Applied {
            revision: 3,
            changed: false
        }
    );
    assert_eq!(
        r.apply(6, &promote(3)),
        Outcome::Applied {
            revision: 6,
            changed: true
        }
    );
    assert_eq!(routes_to(r.desired()), "echo-next");
    assert!(r.stage().is_none() && r.staged_view().is_none());
    let end = r.last_stage().unwrap();
    assert!(end.promoted && end.at == 3 && end.ended_at == 6);
}

#[test]
fn an_aborted_stage_leaves_the_current_state_and_says_why() {
    let mut r = registry();
    r.apply(3, &start(desired("echo-next")));
    let abort = Command::stage(StageChange::Abort {
        at: 3,
        why: "envoy-canary NACKed routes: bad".into(),
        at_ms: 2,
    });
    assert_eq!(
        r.apply(4, &abort),
        Outcome::Applied {
            revision: 4,
            changed: true
        }
    );
    assert_eq!(routes_to(r.desired()), "echo");
    let end = r.last_stage().unwrap();
    assert!(!end.promoted && end.why.contains("NACKed"));
    // A late promotion of it is fenced.
    let promote = Command::stage(StageChange::Promote {
        at: 3,
        why: "late".into(),
        at_ms: 3,
    });
    assert_eq!(
        r.apply(5, &promote),
        Outcome::Applied {
            revision: 4,
            changed: false
        }
    );
}

#[test]
fn bad_stages_are_refused() {
    let mut r = registry();
    let mut bad = desired("nope");
    assert!(matches!(
        r.apply(3, &start(bad.clone())),
        Outcome::Rejected(Rejection::InvalidServices { .. })
    ));
    bad = desired("echo");
    let no_group = Command::stage(StageChange::Start {
        desired: Box::new(bad.clone()),
        group: vec![],
        hold: Duration::from_secs(1),
        max_error_increase: 5,
        min_requests: 0,
        at_ms: 1,
    });
    assert!(matches!(
        r.apply(3, &no_group),
        Outcome::Rejected(Rejection::InvalidStage { .. })
    ));
    // Thresholds out of range.
    for (max_error_increase, min_requests, names) in [
        (101, 0, "max_error_increase 101"),
        (5, 10_000_001, "min_requests 10000001"),
    ] {
        let c = Command::stage(StageChange::Start {
            desired: Box::new(bad.clone()),
            group: vec!["cluster=canary".parse().unwrap()],
            hold: Duration::from_secs(1),
            max_error_increase,
            min_requests,
            at_ms: 1,
        });
        match r.apply(3, &c) {
            Outcome::Rejected(Rejection::InvalidStage { problem }) => {
                assert!(problem.contains(names), "{problem}")
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(r.stage().is_none());
    // Entries staged before the thresholds existed read with the defaults.
    let old = json!({"op": "start", "desired": desired("echo"), "group": ["cluster=canary"],
        "hold": "5s", "at_ms": 1});
    match serde_json::from_value::<StageChange>(old).unwrap() {
        StageChange::Start {
            max_error_increase,
            min_requests,
            ..
        } => assert_eq!((max_error_increase, min_requests), (5, 0)),
        other => panic!("{other:?}"),
    }
}
