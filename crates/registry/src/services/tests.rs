//! Validation, diff and apply of the services half's desired state.

use super::*;
use crate::{Command, Outcome, Registry, Rejection};
use serde_json::json;

/// The gRPC shop of seed 003: authority routing, gRPC health checks, a 15 s timeout, retries and
/// a circuit breaker, TLS terminated at Envoy.
fn grpc_shop() -> serde_json::Value {
    json!({
        "services": {
            "echo": {
                "protocol": "grpc",
                "lb": "least_request",
                "connect_timeout": "250ms",
                "circuit_breakers": {"max_requests": 1000, "max_pending_requests": 100},
                "outlier_detection": {"consecutive_5xx": 3},
                "health_check": {"kind": "grpc", "interval": "1s"},
                "endpoints": [{"addr": "127.0.0.1:50051"}, {"addr": "127.0.0.1:50052", "weight": 2}]
            },
            "echo-canary": {"protocol": "grpc"}
        },
        "route_tables": {
            "public": {"virtual_hosts": [{
                "name": "echo",
                "domains": ["echo.example.com", "echo.example.com:443"],
                "routes": [
                    {"match": {"grpc": {"service": "echo.v1.Echo", "method": "Stream"}},
                     "service": "echo", "timeout": "0s"},
                    {"match": {"grpc": {"service": "echo.v1.Echo"}},
                     "weighted": [{"service": "echo", "weight": 90}, {"service": "echo-canary", "weight": 10}],
                     "timeout": "15s",
                     "retry": {"retry_on": ["unavailable", "connect-failure"], "attempts": 2,
                               "per_try_timeout": "5s", "backoff": {"base": "25ms", "max": "250ms"}}}
                ]
            }]}
        },
        "listeners": {
            "public": {"address": "0.0.0.0:8443", "route_table": "public",
                       "tls": {"certificate": "wildcard"}},
            "internal": {"address": "127.0.0.1:8080", "route_table": "public", "internal": true}
        }
    })
}

fn desired(v: serde_json::Value) -> Desired {
    serde_json::from_value(v).expect("a desired state")
}

fn errors(v: serde_json::Value) -> Vec<String> {
    match validate(&desired(v)) {
        Ok(()) => vec![],
        Err(e) => e.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn the_seed_grpc_shop_is_valid_and_reads_back_the_same() {
    let d = desired(grpc_shop());
    assert_eq!(validate(&d), Ok(()));
    let again: Desired = serde_json::from_value(serde_json::to_value(&d).unwrap()).unwrap();
    assert_eq!(again, d);
    // Defaults are filled in, and durations print with their units.
    let echo = &d.services["echo"];
    assert_eq!(echo.drain_timeout, Duration::from_secs(30));
    assert_eq!(
        serde_json::to_value(echo).unwrap()["connect_timeout"],
        "250ms"
    );
}

/// Each bad field is named by its path, with what is wrong.
#[test]
fn every_problem_names_its_field() {
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        (
            "a route to an unknown service",
            json!({"/route_tables/public/virtual_hosts/0/routes/0/service": "nope"}),
            "route_tables.public.virtual_hosts[0].routes[0].service: no service \"nope\"",
        ),
        (
            "weights that do not add up",
            json!({"/route_tables/public/virtual_hosts/0/routes/1/weighted/1/weight": 20}),
            "route_tables.public.virtual_hosts[0].routes[1].weighted: the weights add up to 110",
        ),
        (
            "an out-of-range weight",
            json!({"/route_tables/public/virtual_hosts/0/routes/1/weighted/1/weight": 200}),
            "weighted[1].weight: weight 200 is outside 0-100",
        ),
        (
            "a listener's unknown route table",
            json!({"/listeners/public/route_table": "private"}),
            "listeners.public.route_table: no route table \"private\"",
        ),
        (
            "an internal listener on a public address",
            json!({"/listeners/internal/address": "8.8.8.8:80"}),
            "listeners.internal.address: 8.8.8.8 is not an internal address",
        ),
        (
            "an unknown retry condition",
            json!({"/route_tables/public/virtual_hosts/0/routes/1/retry/retry_on/0": "sometimes"}),
            "retry.retry_on[0]: \"sometimes\" is not one of Envoy's retry conditions",
        ),
        (
            "an http health check without a path",
            json!({"/services/echo/health_check/kind": "http"}),
            "services.echo.health_check.path: an http health check needs a path",
        ),
        (
            "a bad service name",
            json!({"/services/Echo": {"protocol": "http"}}),
            "services.Echo: service name \"Echo\" must be",
        ),
    ];
    for (what, patch, want) in cases {
        let mut v = grpc_shop();
        for (ptr, value) in patch.as_object().unwrap() {
            set(&mut v, ptr, value.clone());
        }
        let got = errors(v);
        assert!(
            got.iter().any(|e| e.contains(want)),
            "{what}: want {want:?} in {got:#?}"
        );
    }
}

/// A duplicate domain in one route table: Envoy would refuse the whole RouteConfiguration.
#[test]
fn a_domain_in_two_virtual_hosts_is_refused() {
    let mut v = grpc_shop();
    let vh = v["route_tables"]["public"]["virtual_hosts"][0].clone();
    let mut other = vh.clone();
    other["name"] = json!("other");
    other["domains"] = json!(["ECHO.example.com"]);
    v["route_tables"]["public"]["virtual_hosts"] = json!([vh, other]);
    let got = errors(v);
    assert!(
        got.iter().any(
            |e| e.starts_with("route_tables.public.virtual_hosts[1].domains[0]")
                && e.contains("also in virtual host \"echo\"")
        ),
        "{got:#?}"
    );
}

/// Unknown fields and unit-less durations are refused when the file is read.
#[test]
fn unknown_fields_and_bare_durations_do_not_decode() {
    let mut v = grpc_shop();
    v["services"]["echo"]["conect_timeout"] = json!("1s");
    let e = serde_json::from_value::<Desired>(v)
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field `conect_timeout`"), "{e}");
    let mut v = grpc_shop();
    v["route_tables"]["public"]["virtual_hosts"][0]["routes"][1]["timeout"] = json!(15);
    let e = serde_json::from_value::<Desired>(v)
        .unwrap_err()
        .to_string();
    assert!(e.contains("write `15s`"), "{e}");
}

fn set(v: &mut serde_json::Value, ptr: &str, value: serde_json::Value) {
    let (parent, key) = ptr.rsplit_once('/').unwrap();
    let parent = v.pointer_mut(parent).unwrap_or_else(|| panic!("{ptr}"));
    match parent {
        serde_json::Value::Array(a) => a[key.parse::<usize>().unwrap()] = value,
        serde_json::Value::Object(o) => {
            o.insert(key.to_string(), value);
        }
        _ => panic!("{ptr}"),
    }
}

#[test]
fn diff_names_each_changed_field() {
    let a = desired(grpc_shop());
    assert!(diff(&a, &a).is_empty());
    let mut v = grpc_shop();
    v["services"]["echo"]["connect_timeout"] = json!("1s");
    v["services"].as_object_mut().unwrap().remove("echo-canary");
    v["route_tables"]["public"]["virtual_hosts"][0]["routes"][1] =
        json!({"match": {"grpc": {"service": "echo.v1.Echo"}}, "service": "echo"});
    let b = desired(v);
    let paths: Vec<String> = diff(&a, &b).into_iter().map(|c| c.path).collect();
    assert_eq!(
        paths,
        [
            "route_tables.public.virtual_hosts[0].routes[1].retry",
            "route_tables.public.virtual_hosts[0].routes[1].service",
            "route_tables.public.virtual_hosts[0].routes[1].timeout",
            "route_tables.public.virtual_hosts[0].routes[1].weighted",
            "services.echo.connect_timeout",
            "services.echo-canary",
        ]
    );
}

/// Applying a desired state needs the cluster at format 2, is all or nothing, and moves the
/// revision only when something changed.
#[test]
fn applying_a_desired_state() {
    let mut r = Registry::new();
    let cmd = Command::apply_services(desired(grpc_shop()));
    assert!(matches!(
        r.apply(1, &cmd),
        Outcome::Rejected(Rejection::FormatNotEnabled { .. })
    ));
    r.apply(2, &Command::raise_format(2));
    let wildcard = CertificateChange::Put {
        name: "wildcard".into(),
        certificate: Certificate {
            cert_pem: "-----BEGIN CERTIFICATE-----".into(),
            key_pem: Secret::new("-----BEGIN PRIVATE KEY-----".into()),
            names: vec!["*.example.com".into()],
            not_after: 0,
        },
    };
    // The listener's certificate must be held first.
    assert!(matches!(
        r.apply(3, &cmd),
        Outcome::Rejected(Rejection::UnknownCertificate { .. })
    ));
    r.apply(3, &Command::certificates(vec![wildcard.clone()]));
    assert_eq!(
        r.apply(3, &cmd),
        Outcome::Applied {
            revision: 3,
            changed: true
        }
    );
    assert_eq!(**r.desired(), desired(grpc_shop()));
    assert_eq!(
        r.apply(4, &cmd),
        Outcome::Applied {
            revision: 3,
            changed: false
        }
    );
    let mut bad = grpc_shop();
    bad["listeners"]["public"]["route_table"] = json!("nope");
    let out = r.apply(5, &Command::apply_services(desired(bad)));
    assert!(
        matches!(&out, Outcome::Rejected(Rejection::InvalidServices { problems }) if problems[0].path == "listeners.public.route_table"),
        "{out:?}"
    );
    assert_eq!(**r.desired(), desired(grpc_shop()));
    // A certificate in use stays; the key never shows in Debug.
    let rm = Command::certificates(vec![CertificateChange::Remove {
        name: "wildcard".into(),
    }]);
    assert!(matches!(
        r.apply(5, &rm),
        Outcome::Rejected(Rejection::CertificateInUse { .. })
    ));
    assert!(!format!("{:?}", Command::certificates(vec![wildcard])).contains("PRIVATE"));
    // An empty state removes everything.
    assert_eq!(
        r.apply(6, &Command::apply_services(Desired::default())),
        Outcome::Applied {
            revision: 6,
            changed: true
        }
    );
    assert!(r.desired().services.is_empty());
}

/// Every rejection is stored with the state (remembered request outcomes) and travels to the
/// forwarding replica: each must encode and decode. The match makes a new variant fail to
/// compile until it is listed here.
#[test]
fn every_rejection_encodes() {
    let all = vec![
        Rejection::InvalidBuilder {
            message: "x".into(),
        },
        Rejection::DuplicateId { id: "b1".into() },
        Rejection::UpsertAndRemove { id: "b1".into() },
        Rejection::DuplicateSni {
            sni: "a".into(),
            ids: ("b1".into(), "b2".into()),
        },
        Rejection::SourceMismatch {
            id: "b1".into(),
            builder: crate::Source::Dns,
            command: crate::Source::Api,
        },
        Rejection::OwnedByOtherSource {
            id: "b1".into(),
            owner: crate::Source::Dns,
        },
        Rejection::EndpointOwnedByOtherSource {
            service: "s".into(),
            id: "dns@10.0.0.1:80".into(),
            owner: crate::Source::Dns,
        },
        Rejection::FormatNotEnabled {
            format: 2,
            cluster: 1,
        },
        Rejection::InvalidServices {
            problems: vec![crate::services::FieldError {
                path: "a".into(),
                message: "b".into(),
            }],
        },
        Rejection::UnknownService {
            service: "s".into(),
        },
        Rejection::UnknownEndpoint {
            service: "s".into(),
            id: "e".into(),
        },
        Rejection::InvalidEndpoint {
            service: "s".into(),
            id: "e".into(),
            problem: "p".into(),
        },
        Rejection::StaleRevision {
            expected: 1,
            actual: 2,
        },
        Rejection::UnknownCertificate {
            listener: "l".into(),
            certificate: "c".into(),
        },
        Rejection::CertificateInUse {
            certificate: "c".into(),
            listener: "l".into(),
        },
        Rejection::InvalidCertificateName { name: "C".into() },
        Rejection::InvalidRollout {
            service: "s".into(),
            problem: "p".into(),
        },
        Rejection::RolloutInProgress {
            service: "s".into(),
            phase: crate::services::Phase::Paused,
        },
        Rejection::NoRollout {
            service: "s".into(),
        },
        Rejection::RolloutPhase {
            service: "s".into(),
            phase: crate::services::Phase::Promoted,
            wanted: "w".into(),
        },
        Rejection::StageInProgress { at: 3 },
        Rejection::NoStage,
        Rejection::InvalidStage {
            problem: "p".into(),
        },
    ];
    for r in all {
        match &r {
            Rejection::InvalidBuilder { .. }
            | Rejection::DuplicateId { .. }
            | Rejection::UpsertAndRemove { .. }
            | Rejection::DuplicateSni { .. }
            | Rejection::SourceMismatch { .. }
            | Rejection::OwnedByOtherSource { .. }
            | Rejection::EndpointOwnedByOtherSource { .. }
            | Rejection::FormatNotEnabled { .. }
            | Rejection::InvalidServices { .. }
            | Rejection::UnknownService { .. }
            | Rejection::UnknownEndpoint { .. }
            | Rejection::InvalidEndpoint { .. }
            | Rejection::StaleRevision { .. }
            | Rejection::UnknownCertificate { .. }
            | Rejection::CertificateInUse { .. }
            | Rejection::InvalidCertificateName { .. }
            | Rejection::InvalidRollout { .. }
            | Rejection::RolloutInProgress { .. }
            | Rejection::NoRollout { .. }
            | Rejection::RolloutPhase { .. }
            | Rejection::StageInProgress { .. }
            | Rejection::NoStage
            | Rejection::InvalidStage { .. } => {}
        }
        let out = Outcome::Rejected(r.clone());
        let text = serde_json::to_string(&out).unwrap_or_else(|e| panic!("{r:?}: {e}"));
        let back: Outcome = serde_json::from_str(&text).unwrap();
        assert_eq!(back, out, "{text}");
    }
}

/// The DNS poller owns the endpoints it discovered (`dns@…`), the API the others: neither
/// changes the other's, so an operator's `endpoints rm` cannot fight the poller and a poll
/// cannot remove a registered instance.
#[test]
fn dns_and_api_endpoints_have_one_owner_each() {
    let mut r = Registry::new();
    r.apply(1, &Command::raise_format(2));
    let d = desired(json!({"services": {"echo": {"protocol": "grpc"}}}));
    assert!(matches!(
        r.apply(2, &Command::apply_services(d)),
        Outcome::Applied { changed: true, .. }
    ));
    let addr: std::net::SocketAddr = "10.0.0.7:8080".parse().unwrap();
    let register = |id: &str| EndpointChange::Register {
        service: "echo".into(),
        id: id.into(),
        addr,
        weight: 1,
        labels: Default::default(),
        ttl: None,
    };
    let dns_id = dns_endpoint_id(addr);
    assert_eq!(dns_id, "dns@10.0.0.7:8080");
    let by_dns = |changes| Command {
        source: crate::Source::Dns,
        ..Command::endpoints(changes)
    };
    // The API may neither register, drain nor remove a `dns@` id.
    for change in [
        register(&dns_id),
        EndpointChange::Drain {
            service: "echo".into(),
            id: dns_id.clone(),
        },
        EndpointChange::Deregister {
            service: "echo".into(),
            id: dns_id.clone(),
        },
    ] {
        let out = r.apply(3, &Command::endpoints(vec![change]));
        assert!(
            matches!(
                &out,
                Outcome::Rejected(Rejection::EndpointOwnedByOtherSource {
                    owner: crate::Source::Dns,
                    ..
                })
            ),
            "{out:?}"
        );
    }
    assert!(matches!(
        r.apply(3, &by_dns(vec![register(&dns_id)])),
        Outcome::Applied { changed: true, .. }
    ));
    let v6 = dns_endpoint_id("[fd00::7]:8080".parse().unwrap());
    assert!(matches!(
        r.apply(4, &by_dns(vec![register(&v6)])),
        Outcome::Applied { changed: true, .. }
    ));
    // The poller may not touch a registered instance, nor make an id without `dns@`.
    r.apply(5, &Command::endpoints(vec![register("i1")]));
    for change in [
        register("i1"),
        EndpointChange::Deregister {
            service: "echo".into(),
            id: "i1".into(),
        },
    ] {
        let out = r.apply(6, &by_dns(vec![change]));
        assert!(
            matches!(
                &out,
                Outcome::Rejected(Rejection::EndpointOwnedByOtherSource {
                    owner: crate::Source::Api,
                    ..
                })
            ),
            "{out:?}"
        );
    }
    // Brackets are for the poller's IPv6 ids only.
    let out = r.apply(6, &Command::endpoints(vec![register("[x]")]));
    assert!(
        matches!(&out, Outcome::Rejected(Rejection::InvalidEndpoint { .. })),
        "{out:?}"
    );
    assert_eq!(r.endpoints_of("echo").count(), 3);
    let dns: Vec<&str> = r.dns_endpoints_of("echo").map(|e| e.id.as_str()).collect();
    assert_eq!(dns, ["dns@10.0.0.7:8080", "dns@[fd00::7]:8080"]);
}
