//! Desired-state files: the README's example, and bad files with the line and field named.

use super::*;

const EXAMPLE: &str = include_str!("../../../../deploy/examples/grpc-shop.yaml");

#[test]
fn the_example_file_is_valid_and_prints_back_the_same() {
    let d = parse("grpc-shop.yaml", EXAMPLE).expect("valid");
    assert_eq!(d.services.len(), 2);
    let echo = &d.route_tables["public"].virtual_hosts[0].routes[0];
    assert_eq!(echo.timeout.map(|t| t.as_millis()), Some(15_000));
    let printed = to_yaml(&serde_json::to_value(&d).unwrap());
    assert_eq!(
        parse("printed", &printed).expect("reads back"),
        d,
        "{printed}"
    );
}

fn refused(text: &str) -> String {
    parse("f.yaml", text).expect_err("refused").to_string()
}

/// Each bad file is refused naming the file, the line and the field.
#[test]
fn bad_files_name_file_line_and_field() {
    let base = "services:\n  echo:\n    protocol: grpc\n";
    let route = |extra: &str| {
        format!(
            "{base}route_tables:\n  main:\n    virtual_hosts:\n      - name: echo\n        domains: [\"*\"]\n        routes:\n          - match: {{prefix: /}}\n{extra}"
        )
    };
    let cases = [
        (
            route("            service: echo\n            timeout: 15\n"),
            "f.yaml:12: route_tables.main.virtual_hosts[0].routes[0].timeout: a duration needs a unit: write `15s`",
        ),
        (
            route("            service: nope\n"),
            "f.yaml:11: route_tables.main.virtual_hosts[0].routes[0].service: no service \"nope\"",
        ),
        (
            format!("{base}    conect_timeout: 1s\n"),
            "f.yaml:4: services.echo.conect_timeout: unknown field `conect_timeout`",
        ),
        (
            format!("{base}    protocol: http\n"),
            "f.yaml:4: not YAML (column 5): services.echo.protocol appears twice",
        ),
        (
            format!("{base}    lb: fastest\n"),
            "f.yaml:4: services.echo.lb: unknown variant `fastest`",
        ),
        ("".to_string(), "f.yaml:1: the file is empty"),
        (
            "- a\n".to_string(),
            "f.yaml:1: a desired state is a mapping",
        ),
        (
            "services: {echo: {protocol: grpc}\n".to_string(),
            "f.yaml:2: not YAML",
        ),
    ];
    for (text, want) in cases {
        let got = refused(&text);
        assert!(
            got.starts_with(want),
            "want {want:?}\n got {got:?}\nin\n{text}"
        );
    }
}

#[test]
fn an_oversized_file_is_refused_before_it_is_parsed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.yaml");
    std::fs::write(&path, vec![b'#'; MAX_CONFIG_BYTES + 1]).unwrap();
    let e = read(&path).expect_err("too large");
    assert!(matches!(e, FileError::TooLarge { .. }), "{e}");
    let e = read(&dir.path().join("missing.yaml")).expect_err("missing");
    assert!(e.to_string().contains("cannot read"), "{e}");
}
