//! `keygate check-config` and configuration loading as seen from outside.

use crate::support::{Sandbox, keygate};

#[test]
fn a_valid_file_exits_0() {
    let sb = Sandbox::new("");
    let run = sb.run(&["check-config"]).expect(0);
    assert!(run.stdout.contains("valid"), "{}", run.stdout);
    assert_eq!(sb.run(&["check-config", "--json"]).expect(0).json()["ok"], true);
}

#[test]
fn the_shipped_default_config_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/keygate.toml");
    let out = keygate()
        .args(["check-config", "--config", path])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_problem_is_printed_with_its_path() {
    let sb = Sandbox::new("");
    sb.write_config(
        r#"
bogus = 1

[server]
listen = "not an address"
lisen = "127.0.0.1:1"

[database]
url = "mysql://nope"

[keys]
default_plan = "gold"
format = "hex65"

[[routes]]
path = "v1/**"
scopes = ["read"]

[[routes]]
path = "/v1/**"
scope = ["typo"]

[plans.pro]
limits = [{ requests = 0, per = "1 hour" }]
"#,
    );
    let run = sb.run(&["check-config"]).expect(2);
    for path in [
        "bogus",
        "server.listen",
        "server.lisen",
        "database.url",
        "keys.default_plan",
        "keys.format",
        "routes[0].path",
        "routes[1].scope",
        "plans.pro.limits[0].requests",
        "plans.pro.limits[0].per",
    ] {
        assert!(run.stderr.contains(path), "missing {path}:\n{}", run.stderr);
    }
    let json = sb.run(&["check-config", "--json"]).expect(2).json();
    assert_eq!(json["ok"], false);
    assert!(json["errors"].as_array().unwrap().len() >= 10, "{json}");
}

#[test]
fn env_overrides_apply_and_unknown_ones_are_errors() {
    let sb = Sandbox::new("");
    sb.run_with_env(&["check-config"], &[("KEYGATE_SERVER__LISTEN", "127.0.0.1:9999")])
        .expect(0);
    let bad = sb
        .run_with_env(&["check-config"], &[("KEYGATE_SERVER__LISTEN", "nowhere")])
        .expect(2);
    assert!(bad.stderr.contains("server.listen"), "{}", bad.stderr);
    let unknown = sb
        .run_with_env(&["check-config"], &[("KEYGATE_SERVER__LISEN", "x")])
        .expect(2);
    assert!(
        unknown.stderr.contains("KEYGATE_SERVER__LISEN"),
        "{}",
        unknown.stderr
    );
    // An override reaches commands: a plan-less key on an overridden default plan.
    let run = sb
        .run_with_env(
            &["keys", "create", "--name", "x", "--json"],
            &[("KEYGATE_KEYS__DEFAULT_PLAN", "pro")],
        )
        .expect(0);
    assert_eq!(run.json()["plan"], "pro");
}

#[test]
fn config_path_comes_from_keygate_config_env() {
    let sb = Sandbox::new("");
    let out = keygate()
        .arg("check-config")
        .env("KEYGATE_CONFIG", sb.config())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let missing = keygate()
        .arg("check-config")
        .env("KEYGATE_CONFIG", sb.path().join("nope.toml"))
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("nope.toml"));
}
