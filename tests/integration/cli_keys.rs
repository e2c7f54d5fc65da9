//! `keygate keys …` and `keygate migrate` as a user runs them.

use crate::support::{Run, Sandbox};

fn create(sb: &Sandbox, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["keys", "create", "--json"];
    all.extend_from_slice(args);
    sb.run(&all).expect(0).json()
}

#[test]
fn create_prints_the_secret_once_as_json() {
    let sb = Sandbox::new("");
    let created = create(
        &sb,
        &[
            "--name",
            "ci",
            "--scopes",
            "read,write",
            "--plan",
            "pro",
            "--owner",
            "acme",
        ],
    );
    let secret = created["key"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("kg_live_"), "{secret}");
    assert_eq!(secret.len(), "kg_live_".len() + 30);
    assert_eq!(created["prefix"], "kg_live_");
    assert_eq!(created["short_prefix"].as_str().unwrap(), &secret[8..16]);
    assert!(created["id"].as_str().unwrap().starts_with("key_"));
    insta::assert_json_snapshot!("keys_create_json", created, {
        ".id" => "[id]",
        ".key" => "[secret]",
        ".short_prefix" => "[short_prefix]",
        ".created_at" => "[timestamp]",
        ".updated_at" => "[timestamp]",
    });

    let id = created["id"].as_str().unwrap();
    // The secret never appears again: not in show, list, or their JSON.
    for args in [
        vec!["keys", "show", id],
        vec!["keys", "show", id, "--json"],
        vec!["keys", "list"],
        vec!["keys", "list", "--json"],
    ] {
        let run = sb.run(&args).expect(0);
        assert!(
            !run.stdout.contains(&secret) && !run.stderr.contains(&secret),
            "{args:?} leaked the secret"
        );
        assert!(
            run.stdout.contains(&secret[8..16]),
            "{args:?} shows the short prefix"
        );
    }
}

#[test]
fn human_create_output_shows_the_secret_and_a_warning() {
    let sb = Sandbox::new("");
    let run = sb.run(&["keys", "create", "--name", "human"]).expect(0);
    assert!(run.stdout.contains("kg_live_"), "{}", run.stdout);
    assert!(run.stdout.contains("only time"), "{}", run.stdout);
}

#[test]
fn hex64_format_and_custom_prefix() {
    let sb = Sandbox::new("[keys]\nformat = \"hex64\"\ndefault_prefix = \"tc_\"\n");
    let created = create(&sb, &["--name", "trucustom"]);
    let secret = created["key"].as_str().unwrap();
    let body = secret.strip_prefix("tc_").unwrap();
    assert_eq!(body.len(), 64);
    assert!(
        body.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    );
    let custom = create(&sb, &["--name", "sk", "--prefix", "sk_live_"]);
    assert!(custom["key"].as_str().unwrap().starts_with("sk_live_"));
    let bad = sb
        .run(&["keys", "create", "--name", "x", "--prefix", "sk-live"])
        .expect(2);
    assert!(bad.stderr.contains("prefix"), "{}", bad.stderr);
}

#[test]
fn expiry_forms_and_bad_expiries() {
    let sb = Sandbox::new("");
    assert!(create(&sb, &["--name", "a", "--expires", "30d"])["expires_at"].is_string());
    let at = create(&sb, &["--name", "b", "--expires", "2031-05-01T00:00:00Z"]);
    assert!(
        at["expires_at"]
            .as_str()
            .unwrap()
            .starts_with("2031-05-01T00:00:00")
    );
    assert!(create(&sb, &["--name", "c", "--expires", "never"])["expires_at"].is_null());
    for bad in ["tomorrow", "2001-01-01T00:00:00Z", "30x"] {
        let run = sb
            .run(&["keys", "create", "--name", "d", "--expires", bad])
            .expect(2);
        assert!(
            run.stderr.starts_with("error: --expires"),
            "{bad}: {}",
            run.stderr
        );
        assert_eq!(
            run.stderr.trim().lines().count(),
            1,
            "one-line error: {}",
            run.stderr
        );
    }
}

#[test]
fn update_disable_enable_revoke() {
    let sb = Sandbox::new("");
    let created = create(&sb, &["--name", "k", "--scopes", "read"]);
    let id = created["id"].as_str().unwrap();

    let updated = sb
        .run(&[
            "keys",
            "update",
            id,
            "--scopes",
            "read,write",
            "--plan",
            "enterprise",
            "--name",
            "renamed",
            "--json",
        ])
        .expect(0)
        .json();
    assert_eq!(updated["scopes"], serde_json::json!(["read", "write"]));
    assert_eq!(updated["plan"], "enterprise");
    assert_eq!(updated["name"], "renamed");

    let unknown_plan = sb.run(&["keys", "update", id, "--plan", "gold"]).expect(2);
    assert!(
        unknown_plan.stderr.contains("unknown plan \"gold\""),
        "{}",
        unknown_plan.stderr
    );
    sb.run(&["keys", "update", id]).expect(2);

    assert_eq!(
        sb.run(&["keys", "disable", id, "--json"]).expect(0).json()["status"],
        "inactive"
    );
    assert_eq!(
        sb.run(&["keys", "enable", id, "--json"]).expect(0).json()["status"],
        "active"
    );
    assert_eq!(
        sb.run(&["keys", "revoke", id, "--json"]).expect(0).json()["status"],
        "revoked"
    );
    let again = sb.run(&["keys", "enable", id]).expect(1);
    assert!(again.stderr.contains("revocation is final"), "{}", again.stderr);
    assert_eq!(
        sb.run(&["keys", "show", id, "--json"]).expect(0).json()["status"],
        "revoked"
    );

    let revoked = sb
        .run(&["keys", "list", "--status", "revoked", "--json"])
        .expect(0)
        .json();
    assert_eq!(revoked.as_array().unwrap().len(), 1);
    let active = sb
        .run(&["keys", "list", "--status", "active", "--json"])
        .expect(0)
        .json();
    assert_eq!(active.as_array().unwrap().len(), 0);
    sb.run(&["keys", "list", "--status", "gone"]).expect(2);
}

#[test]
fn rotate_issues_a_new_secret() {
    let sb = Sandbox::new("");
    let created = create(&sb, &["--name", "k"]);
    let id = created["id"].as_str().unwrap();
    let rotated = sb
        .run(&["keys", "rotate", id, "--grace", "24h", "--json"])
        .expect(0)
        .json();
    assert_eq!(rotated["id"], created["id"]);
    assert_ne!(rotated["key"], created["key"]);
    assert_ne!(rotated["short_prefix"], created["short_prefix"]);
    let human = sb.run(&["keys", "rotate", id]).expect(0);
    assert!(human.stdout.contains("no longer works"), "{}", human.stdout);
    sb.run(&["keys", "rotate", id, "--grace", "soon"]).expect(2);
}

#[test]
fn missing_and_malformed_ids() {
    let sb = Sandbox::new("");
    let missing = sb
        .run(&["keys", "show", "key_01jzzzzzzzzzzzzzzzzzzzzzzz"])
        .expect(1);
    assert!(missing.stderr.contains("no key with id"), "{}", missing.stderr);
    let malformed = sb.run(&["keys", "revoke", "123"]).expect(2);
    assert!(
        malformed.stderr.contains("is not a key id"),
        "{}",
        malformed.stderr
    );
}

#[test]
fn import_all_or_nothing() {
    let sb = Sandbox::new("");
    let bad = sb.file(
        "bad.jsonl",
        concat!(
            "{\"key\": \"sk_live_abcdefgh0001\", \"name\": \"one\"}\n",
            "{\"key\": \"sk_live_abcdefgh0002\", \"plan\": \"gold\"}\n",
            "{not json\n",
            "{\"key\": \"sk_live_abcdefgh0001\"}\n",
        ),
    );
    let run = sb.run(&["keys", "import", bad.to_str().unwrap()]).expect(1);
    for line in ["line 2:", "line 3:", "line 4:"] {
        assert!(run.stderr.contains(line), "{line}: {}", run.stderr);
    }
    assert!(
        !run.stderr.contains("sk_live_abcdefgh0001"),
        "no secret in errors: {}",
        run.stderr
    );
    assert_eq!(
        sb.run(&["keys", "list", "--json"]).expect(0).json(),
        serde_json::json!([])
    );

    let good = sb.file(
        "good.jsonl",
        concat!(
            "{\"key\": \"sk_live_abcdefgh0001\", \"name\": \"one\", \"scopes\": [\"read\"], \"plan\": \"pro\", \"owner\": \"acme\", \"expires_at\": null}\n",
            "\n",
            "{\"key\": \"legacykey123456\", \"name\": \"legacy\"}\n",
        ),
    );
    let imported = sb
        .run(&["keys", "import", good.to_str().unwrap(), "--json"])
        .expect(0)
        .json();
    assert_eq!(imported["imported"], 2);
    let listed = sb
        .run(&["keys", "list", "--owner", "acme", "--json"])
        .expect(0)
        .json();
    assert_eq!(listed[0]["prefix"], "sk_live_");
    assert_eq!(listed[0]["short_prefix"], "abcdefgh");
    assert_eq!(listed[0]["source"], "imported");
    let dup = sb.run(&["keys", "import", good.to_str().unwrap()]).expect(1);
    assert!(dup.stderr.contains("already in the store"), "{}", dup.stderr);
    let missing = sb.run(&["keys", "import", "/nonexistent/file.jsonl"]).expect(1);
    assert!(missing.stderr.contains("cannot read"), "{}", missing.stderr);
}

#[test]
fn migrate_is_idempotent() {
    let sb = Sandbox::new("");
    let first = sb.run(&["migrate", "--json"]).expect(0).json();
    assert!(!first["applied"].as_array().unwrap().is_empty());
    let second = sb.run(&["migrate", "--json"]).expect(0).json();
    assert_eq!(second["applied"], serde_json::json!([]));
    assert_eq!(second["current"], first["current"]);
    let human = sb.run(&["migrate"]).expect(0);
    assert!(human.stdout.contains("up to date"), "{}", human.stdout);
}

#[test]
fn an_unwritable_store_is_a_one_line_error() {
    let sb = Sandbox::new("");
    // A path under a regular file can never be created, even by root.
    let blocker = sb.file("blocker", "");
    sb.write_config(&format!(
        "[database]\nurl = \"sqlite://{}/keygate.db?mode=rwc\"\n",
        blocker.display()
    ));
    let run: Run = sb.run(&["keys", "list"]).expect(1);
    assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.stderr);
    assert!(run.stderr.contains("blocker"), "names the path: {}", run.stderr);
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
}

#[test]
fn usage_errors_exit_2() {
    let sb = Sandbox::new("");
    sb.run(&["keys", "create"]).expect(2);
    sb.run(&["keys", "frobnicate"]).expect(2);
    sb.run(&["nonsense"]).expect(2);
    let plan = sb
        .run(&["keys", "create", "--name", "x", "--plan", "gold"])
        .expect(2);
    assert!(plan.stderr.contains("unknown plan"), "{}", plan.stderr);
    let scope = sb
        .run(&["keys", "create", "--name", "x", "--scopes", "a b"])
        .expect(2);
    assert!(scope.stderr.contains("invalid scope"), "{}", scope.stderr);
}

#[test]
fn rust_log_with_spaces_is_read_as_written() {
    // tracing-subscriber's own parser panicked on `" é=info"` (its byte
    // offsets skip the leading space): RUST_LOG passes through the same
    // trimming as log.level (issue 18).
    let sb = Sandbox::new("");
    for filter in [" \u{e9}=info", "warn, keygate=debug", " , ", "not a filter[", "="] {
        let run = sb
            .run_with_env(&["migrate", "--json"], &[("RUST_LOG", filter)])
            .expect(0);
        assert!(!run.stderr.contains("panicked"), "{filter:?}: {}", run.stderr);
    }
    // One that does not parse is named, not silently replaced.
    let typo = sb
        .run_with_env(&["migrate", "--json"], &[("RUST_LOG", "keygate=degub")])
        .expect(0);
    assert!(
        typo.stderr.contains("RUST_LOG is not a valid log filter"),
        "{}",
        typo.stderr
    );
}

/// `keys usage`: what `keygate serve` counted (written at shutdown at the
/// latest) as a table, or as the admin API's JSON; bad flags named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_prints_the_history_as_a_table_or_json() {
    let (sb, _echo, proxy) =
        crate::support::serve_sandbox("warn", crate::support::gateway::DEFAULT_ROUTES).await;
    let created = create(&sb, &["--name", "history", "--scopes", "can_read_order"]);
    let id = created["id"].as_str().unwrap().to_owned();
    let secret = created["key"].as_str().unwrap().to_owned();
    let served = crate::support::Served::start(&sb, proxy).await;
    let client = crate::support::gateway::JsonClient::new(proxy);
    for (method, status) in [("GET", 200), ("GET", 200), ("GET", 200), ("POST", 403)] {
        let method: http::Method = method.parse().unwrap();
        let (got, body) = client
            .send(
                method,
                "/v1/orders/1",
                vec![("x-api-key", secret.clone())],
                "{}".into(),
            )
            .await;
        assert_eq!(got.as_u16(), status, "{body}");
    }
    let (code, logs) = served.stop().await;
    assert_eq!(code, Some(0), "{logs}");

    let json = sb.run(&["keys", "usage", &id, "--json"]).expect(0).json();
    assert_eq!(json["key_id"], id.as_str());
    assert_eq!(json["total"], 4);
    let series = &json["series"];
    assert_eq!(series["granularity"], "hour");
    let data = series["data"].as_array().unwrap();
    assert_eq!(data.len(), 25, "the last 24 h and the current hour");
    // (Summed: the requests may straddle an hour's edge.)
    let sum = |field: &str| data.iter().map(|p| p[field].as_u64().unwrap_or(0)).sum::<u64>();
    assert_eq!(
        (sum("total"), sum("ok"), sum("insufficient_scope")),
        (4, 3, 1),
        "{series}"
    );

    let text = sb.run(&["keys", "usage", &id, "--from", "2h"]).expect(0).stdout;
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with(&format!("key {id}: 4 requests all time")),
        "{text}"
    );
    assert!(lines[1].ends_with("per minute:"), "{text}");
    // Not a terminal: no sparkline; a header and a row per minute.
    let header: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(header, ["TIME", "TOTAL", "OK", "INSUFFICIENT_SCOPE"], "{text}");
    assert!((121..=122).contains(&(lines.len() - 3)), "{text}");
    let mut sums = [0_u64; 3];
    for line in &lines[3..] {
        let cells: Vec<&str> = line.split_whitespace().collect();
        for (sum, cell) in sums.iter_mut().zip(&cells[1..]) {
            *sum += cell.parse::<u64>().unwrap();
        }
    }
    assert_eq!(sums, [4, 3, 1], "{text}");

    let bad = sb
        .run(&["keys", "usage", &id, "--granularity", "week", "--to", "soon"])
        .expect(2);
    assert!(
        bad.stderr.contains("--granularity: unknown granularity"),
        "{}",
        bad.stderr
    );
    assert!(
        bad.stderr.contains("--to: \"soon\" is not an RFC 3339 instant"),
        "{}",
        bad.stderr
    );
    let retention = sb
        .run(&["keys", "usage", &id, "--granularity", "minute", "--from", "3d"])
        .expect(2);
    assert!(
        retention
            .stderr
            .contains("--granularity: minute buckets are kept for 2 days only"),
        "{}",
        retention.stderr
    );
}
