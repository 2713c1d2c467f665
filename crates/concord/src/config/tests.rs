//! Tests of the whole configuration: defaults, validation messages, and that every setting can
//! be given by flag, by environment variable and by file with the same effect.

use super::layer::{self, serve_command};
use super::*;
use concord_xds::ListenerMode;

/// Parses `concord serve ARGV`, ignoring the test process's environment.
fn parse(argv: &[&str]) -> Result<ServeArgs> {
    let cmd = serve_command().mut_args(|a| a.env(None));
    let m = cmd.try_get_matches_from(std::iter::once("serve").chain(argv.iter().copied()))?;
    Ok(ServeArgs::from_arg_matches(&m)?)
}

fn resolve(argv: &[&str]) -> Result<ServeConfig> {
    parse(argv)?.resolve()
}

/// `resolve` with `--insecure`, which the tests of everything but TLS need.
fn insecure(argv: &[&str]) -> Result<ServeConfig> {
    let mut all = vec!["--insecure"];
    all.extend(argv);
    resolve(&all)
}

fn err(r: Result<ServeConfig>) -> String {
    format!("{:#}", r.expect_err("should be refused"))
}

/// The layered settings of `ARGV`, before validation.
fn settings(argv: &[&str]) -> Settings {
    let args = parse(argv).unwrap_or_else(|e| panic!("{argv:?}: {e:#}"));
    layer::layer(&args.given)
        .unwrap_or_else(|e| panic!("{argv:?}: {e:#}"))
        .settings
}

#[test]
fn plaintext_needs_insecure() {
    let e = err(resolve(&[]));
    assert!(e.contains("TLS is required"), "{e}");
    let e = err(resolve(&["--tls-ca", "ca.pem"]));
    assert!(e.contains("go together"), "{e}");
}

#[test]
fn defaults_make_a_local_cluster() {
    let c = insecure(&[]).unwrap();
    assert_eq!(c.node.node_id, 1);
    assert_eq!(c.node.cluster, "concord");
    assert_eq!(c.node.listen_addr.to_string(), "127.0.0.1:7101");
    assert_eq!(c.admin_addr.to_string(), "127.0.0.1:8101");
    assert_eq!(c.xds_addr.to_string(), "127.0.0.1:18001");
    assert_eq!(c.node.initial_members.len(), 3);
    assert_eq!(c.node.heartbeat, Duration::from_millis(25));
    assert_eq!(c.node.election_timeout_max, Duration::from_millis(100));
    assert_eq!(c.xds.resources.listener_name, "builders");
    // Never under the working directory (see node::default_data_dir).
    assert!(
        c.node.data_dir.is_absolute() && c.node.data_dir.ends_with("concord/concord/node-1"),
        "{}",
        c.node.data_dir.display()
    );
    let c = insecure(&["--node-id", "3"]).unwrap();
    assert_eq!(c.node.listen_addr.to_string(), "127.0.0.1:7103");
    assert!(c.node.data_dir.ends_with("node-3"));
}

#[test]
fn bad_values_are_named() {
    let cases: &[(&[&str], &str)] = &[
        (&["--node-id", "0"], "node ids start at 1"),
        (
            &["--initial-members", "1=127.0.0.1:7101,2"],
            "expected id=host:port",
        ),
        (
            &["--initial-members", "1=127.0.0.1:7101,2=127.0.0.1:7101"],
            "twice",
        ),
        (&["--peer-addr", "127.0.0.1:9999"], "conflicting node id"),
        (
            &["--election-timeout-ms", "300-100"],
            "MIN must be above 0 and below MAX",
        ),
        (&["--cluster", "a b"], "invalid --cluster"),
        (&["--trace-sampling-ratio", "0.5"], "need --otlp-endpoint"),
        (
            &["--otlp-endpoint", "127.0.0.1:4317"],
            "invalid --otlp-endpoint",
        ),
        (&["--dns-source", "txt:a.internal:1"], "needs --dns-server"),
        (&["--stale-after-ms", "100"], "--stale-after-ms 100"),
    ];
    for (argv, want) in cases {
        let e = err(insecure(argv));
        assert!(e.contains(want), "{argv:?}: {e:?} should mention {want:?}");
    }
    // Modes are checked by clap, listing what is possible.
    let e = format!("{:#}", parse(&["--dns-nxdomain", "maybe"]).unwrap_err());
    assert!(e.contains("[possible values: empty, error]"), "{e}");
}

#[test]
fn listener_modes() {
    let mode = |argv: &[&str]| insecure(argv).map(|c| c.xds.resources.mode);
    let sni = |suffix: &str| ListenerMode::SniCluster {
        suffix: suffix.into(),
        on_demand: false,
    };
    assert_eq!(mode(&[]).unwrap(), ListenerMode::FilterChains);
    // A suffix alone chooses sni-cluster; filter-chains can still be asked for.
    assert_eq!(
        mode(&["--sni-suffix", "b.example.com"]).unwrap(),
        sni("b.example.com")
    );
    assert_eq!(
        mode(&[
            "--listener-mode",
            "filter-chains",
            "--sni-suffix",
            "b.example.com"
        ])
        .unwrap(),
        ListenerMode::FilterChains
    );
    // The suffix defaults to the SNI template's domain.
    assert_eq!(
        mode(&["--listener-mode", "sni-cluster"]).unwrap(),
        sni("builders.local")
    );
    assert_eq!(
        mode(&[
            "--listener-mode",
            "sni-cluster",
            "--sni-suffix",
            "*.b.example.com"
        ])
        .unwrap(),
        sni("b.example.com")
    );
    let e = format!("{:#}", parse(&["--listener-mode", "sni"]).unwrap_err());
    assert!(
        e.contains("invalid value 'sni' for '--listener-mode"),
        "{e}"
    );
    let e = err(insecure(&[
        "--listener-mode",
        "sni-cluster",
        "--sni-suffix",
        "a b",
    ]));
    assert!(e.contains("invalid --sni-suffix"), "{e}");
    let e = err(insecure(&[
        "--listener-mode",
        "sni-cluster",
        "--sni-suffix",
        "builders.test",
        "--dns-server",
        "127.0.0.1:53",
        "--dns-source",
        "txt:_i.internal:9443",
        "--dns-sni-template",
        "{id}.other.test",
    ]));
    assert!(e.contains("outside --sni-suffix"), "{e}");
}

#[test]
fn admin_exposure_needs_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let open = "0.0.0.0:8101";
    let e = err(insecure(&["--admin-addr", open]));
    assert!(e.contains("without tokens"), "{e}");
    let c = insecure(&["--admin-addr", open, "--insecure-admin"]).unwrap();
    assert!(c.insecure_admin && c.admin_tokens.is_none());
    let path = dir.path().join("tokens");
    let tokens = path.to_str().unwrap();
    std::fs::write(&path, "write 0123456789abcdef0123\n").unwrap();
    let c = insecure(&["--admin-addr", open, "--admin-token-file", tokens]).unwrap();
    assert!(c.admin_tokens.is_some());
    // A malformed file is refused before anything starts, naming the file and the line.
    std::fs::write(&path, "write 0123456789abcdef0123\nwrite\n").unwrap();
    let e = err(insecure(&["--admin-token-file", tokens]));
    assert!(
        e.contains("invalid admin token file") && e.contains("line 2"),
        "{e}"
    );
    // IPv6 loopback needs nothing.
    let c = insecure(&["--admin-addr", "[::1]:8101"]).unwrap();
    assert!(c.admin_tokens.is_none());
}

#[test]
fn file_is_overridden_by_flags() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    let config = path.to_str().unwrap();
    std::fs::write(
        &path,
        "node-id = 2\ncluster = \"prod\"\ninitial-members = \"none\"\n",
    )
    .unwrap();
    let c = insecure(&["--config", config, "--cluster", "flag"]).unwrap();
    assert_eq!(c.node.node_id, 2);
    assert_eq!(c.node.cluster, "flag");
    assert!(c.node.initial_members.is_empty());
}

#[test]
fn bad_files_name_the_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    let config = path.to_str().unwrap();
    let cases = [
        ("node_idd = 2\n", "unknown key \"node_idd\""),
        ("config = \"/etc/other.toml\"\n", "unknown key \"config\""),
        (
            "peer-addr = \"nowhere\"\n",
            "key \"peer-addr\": invalid value 'nowhere'",
        ),
        (
            "node-id = \"two\"\n",
            "key \"node-id\": invalid value 'two'",
        ),
        ("insecure = \"yes\"\n", "key \"insecure\""),
        (
            "cluster = [\"a\", \"b\"]\n",
            "key \"cluster\": expected one value",
        ),
        (
            "listener-mode = \"sni\"\n",
            "key \"listener-mode\": invalid value 'sni'",
        ),
        ("[raft]\nheartbeat-ms = 5\n", "unknown key \"raft\""),
        ("node-id = \n", "invalid config file"),
    ];
    for (text, want) in cases {
        std::fs::write(&path, text).unwrap();
        let e = err(insecure(&["--config", config]));
        assert!(
            e.contains(&format!("invalid config file {config}")) && e.contains(want),
            "{text:?}: {e:?} should mention {want:?}"
        );
    }
    let e = err(insecure(&["--config", "/nonexistent/concord.toml"]));
    assert!(e.contains("cannot read config file"), "{e}");
}

/// A sample value for each setting, other than its default. A new flag fails
/// `every_setting_by_flag_and_file` until it has one here.
fn sample(long: &str) -> Option<&'static [&'static str]> {
    Some(match long {
        "cluster" => &["prod-eu1"],
        "node-id" => &["2"],
        "data-dir" => &["/var/lib/concord/node-2"],
        "shutdown-grace-ms" => &["3000"],
        "peer-addr" => &["10.0.0.2:7100"],
        "advertise-addr" => &["concord-2.example.internal:7100"],
        "initial-members" => &["1=10.0.0.1:7100,2=10.0.0.2:7100"],
        "heartbeat-ms" => &["100"],
        "election-timeout-ms" => &["500-1000"],
        "snapshot-threshold" => &["100"],
        "request-timeout-ms" => &["7000"],
        "quorum-timeout-ms" => &["2000"],
        "admin-addr" => &["10.0.0.2:8100"],
        "admin-token-file" => &["/etc/concord/admin-tokens"],
        "insecure-admin" => &["true"],
        "enable-fault-injection" => &["true"],
        "xds-addr" => &["10.0.0.2:18000"],
        "envoy-listener-name" => &["edge"],
        "envoy-listener-addr" => &["0.0.0.0:443"],
        "listener-mode" => &["sni-cluster"],
        "sni-suffix" => &["builders.example.com"],
        "stale-after-ms" => &["5000"],
        "catch-up-timeout-ms" => &["3000"],
        "max-stream-age-secs" => &["600"],
        "serve-envoys" => &["cluster=canary"],
        "dns-server" => &["10.0.0.53:53"],
        "dns-source" => &["txt:_instances.internal:8372", "srv:_b._tcp.internal"],
        "dns-sni-template" => &["{id}.builders.example.com"],
        "dns-interval-ms" => &["500"],
        "dns-timeout-ms" => &["300"],
        "dns-error-backoff-ms" => &["5000"],
        "dns-max-removal-share" => &["0.25"],
        "dns-removal-hold-ms" => &["2500"],
        "dns-nxdomain" => &["error"],
        "tls-ca" => &["/etc/concord/tls/ca.pem"],
        "tls-cert" => &["/etc/concord/tls/node-2.pem"],
        "tls-key" => &["/etc/concord/tls/node-2-key.pem"],
        "insecure" => &["true"],
        "xds-tls-cert" => &["/etc/concord/tls/xds.pem"],
        "xds-tls-key" => &["/etc/concord/tls/xds-key.pem"],
        "xds-client-ca" => &["/etc/concord/tls/envoy-ca.pem"],
        "xds-bind-node-id" => &["true"],
        "otlp-endpoint" => &["http://10.0.0.9:4317"],
        "otlp-service-name" => &["concord-eu1"],
        "trace-sampling-ratio" => &["0.1"],
        "otlp-queue-size" => &["100"],
        _ => return None,
    })
}

/// Every setting (all of `concord serve`'s arguments but `--config`) with its sample values.
fn every_setting() -> Vec<(clap::Arg, &'static [&'static str])> {
    let cmd = serve_command();
    let settings: Vec<_> = cmd
        .get_arguments()
        .filter(|a| a.get_id() != layer::CONFIG)
        .cloned()
        .collect();
    assert!(settings.len() >= 44, "{} settings", settings.len());
    settings
        .into_iter()
        .map(|arg| {
            let long = arg
                .get_long()
                .expect("every setting has a --flag")
                .to_string();
            let vals = sample(&long)
                .unwrap_or_else(|| panic!("--{long} has no sample value: add one to sample()"));
            (arg, vals)
        })
        .collect()
}

fn is_switch(arg: &clap::Arg) -> bool {
    matches!(arg.get_action(), clap::ArgAction::SetTrue)
}

/// `--flag` (a switch) or `--flag=value` for each value.
fn flag_argv(arg: &clap::Arg, vals: &[&str]) -> Vec<String> {
    let long = arg.get_long().unwrap();
    if is_switch(arg) {
        assert_eq!(vals, ["true"], "--{long} is a switch");
        return vec![format!("--{long}")];
    }
    vals.iter().map(|v| format!("--{long}={v}")).collect()
}

/// The TOML value an operator would write for `vals`.
fn toml_value(arg: &clap::Arg, vals: &[&str]) -> toml::Value {
    let one = |v: &str| match v {
        "true" | "false" => toml::Value::Boolean(v == "true"),
        _ if v.parse::<i64>().is_ok() => toml::Value::Integer(v.parse().unwrap()),
        _ if v.parse::<f64>().is_ok() && v.contains('.') && !v.contains(':') => {
            toml::Value::Float(v.parse().unwrap())
        }
        _ => toml::Value::String(v.into()),
    };
    if matches!(arg.get_action(), clap::ArgAction::Append) {
        toml::Value::Array(vals.iter().map(|v| one(v)).collect())
    } else {
        assert_eq!(vals.len(), 1);
        one(vals[0])
    }
}

fn write_toml(path: &std::path::Path, entries: &[(&clap::Arg, toml::Value)]) {
    let table: toml::Table = entries
        .iter()
        .map(|(arg, v)| (arg.get_long().unwrap().to_string(), v.clone()))
        .collect();
    std::fs::write(path, toml::to_string(&table).unwrap()).unwrap();
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn every_setting_by_flag_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    let config = path.to_str().unwrap();
    let defaults = settings(&[]);
    for (arg, vals) in every_setting() {
        let long = arg.get_long().unwrap();
        let by_flag = settings(&strs(&flag_argv(&arg, vals)));
        assert_ne!(by_flag, defaults, "--{long} {vals:?} changed nothing");
        write_toml(&path, &[(&arg, toml_value(&arg, vals))]);
        let by_file = settings(&["--config", config]);
        assert_eq!(by_file, by_flag, "{long} in the file is not --{long}");
        // A flag wins over the file: given its default, the file's value is ignored.
        let default: Vec<&str> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        if !default.is_empty() {
            let mut argv = vec!["--config".to_string(), config.to_string()];
            argv.extend(flag_argv(&arg, &default));
            assert_eq!(
                settings(&strs(&argv)),
                defaults,
                "--{long} should win over the file"
            );
        }
    }
}

/// Set in a run of this test binary by `every_setting_by_environment`: parse the environment.
const CHILD: &str = "CONCORD_CONFIG_TEST_CHILD";

/// clap reads the process environment, which a test cannot change safely, so this test runs
/// itself again in a child process with every setting in `CONCORD_*` variables, and a config
/// file that holds every default the variables must win over.
#[test]
fn every_setting_by_environment() {
    if std::env::var_os(CHILD).is_some() {
        let m = serve_command()
            .try_get_matches_from(["serve"])
            .expect("parse the environment");
        let args = ServeArgs::from_arg_matches(&m).unwrap();
        let s = layer::layer(&args.given).unwrap().settings;
        println!("SETTINGS {s:?}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("defaults.toml");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap());
    let name = concat!(module_path!(), "::every_setting_by_environment");
    let name = name.split_once("::").unwrap().1; // libtest names omit the crate
    child.args([name, "--exact", "--nocapture", "--test-threads=1"]);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("CONCORD_") {
            child.env_remove(k);
        }
    }
    child.env(CHILD, "1");
    child.env("CONCORD_CONFIG", &path);
    let mut flags = vec![];
    let mut file = vec![];
    let all = every_setting();
    for (arg, vals) in &all {
        let long = arg.get_long().unwrap();
        let var = arg
            .get_env()
            .unwrap_or_else(|| panic!("--{long} has no environment variable"));
        assert!(var.to_string_lossy().starts_with("CONCORD_"), "{var:?}");
        if vals.len() > 1 {
            assert_eq!(arg.get_value_delimiter(), Some(','), "--{long}");
        }
        child.env(var, vals.join(","));
        flags.extend(flag_argv(arg, vals));
        let default: Vec<&str> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        match (is_switch(arg), default.is_empty()) {
            (true, _) => file.push((arg, toml::Value::Boolean(false))),
            (false, false) => file.push((arg, toml_value(arg, &default))),
            (false, true) => {}
        }
    }
    write_toml(&path, &file);
    let out = child.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = stdout
        .lines()
        .find_map(|l| Some(l.split_once("SETTINGS ")?.1))
        .unwrap_or_else(|| panic!("no settings printed: {stdout}"));
    assert_eq!(got, format!("{:?}", settings(&strs(&flags))));
}

/// The example the systemd unit reads keeps working: the file format is the flags' long names.
#[test]
fn the_systemd_example_file_is_read() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/systemd/node-1.toml.example"
    );
    let s = settings(&["--config", path]);
    assert_eq!(s.node.cluster, "prod-eu1");
    assert_eq!(s.node.node_id, 1);
    assert_eq!(s.raft.heartbeat_ms, 100);
    assert_eq!(s.raft.election_timeout_ms, "500-1000");
    assert_eq!(s.raft.quorum_timeout_ms, 2000);
    assert_eq!(
        s.raft.advertise_addr.as_deref(),
        Some("concord-1.cp.example.internal:7100")
    );
    assert!(s.tls.tls_ca.is_some() && !s.tls.insecure);
    // Flags given by the unit win over the same keys in the file.
    let s = settings(&["--config", path, "--node-id", "3", "--data-dir", "/d/3"]);
    assert_eq!(s.node.node_id, 3);
    assert_eq!(
        s.node.data_dir.as_deref(),
        Some(std::path::Path::new("/d/3"))
    );
}

#[test]
fn shutdown_grace_defaults_to_ten_seconds_and_refuses_zero() {
    let c = insecure(&[]).unwrap();
    assert_eq!(c.shutdown_grace, Duration::from_secs(10));
    let c = insecure(&["--shutdown-grace-ms", "2500"]).unwrap();
    assert_eq!(c.shutdown_grace, Duration::from_millis(2500));
    let e = insecure(&["--shutdown-grace-ms", "0"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("--shutdown-grace-ms"), "{e}");
}
