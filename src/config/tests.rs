//! Loader tests: error collection, env overrides, defaults, and every shipped
//! config file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use crate::telemetry::LogFormat;

fn no_env() -> BTreeMap<String, String> {
    BTreeMap::new()
}

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn ok(text: &str, env: &BTreeMap<String, String>) -> Config {
    match load_str(text, "test.toml", env) {
        Ok(config) => config,
        Err(errors) => panic!("unexpected errors:\n{errors}"),
    }
}

fn errors(text: &str, env: &BTreeMap<String, String>) -> Vec<(String, String)> {
    match load_str(text, "test.toml", env) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(errors) => errors.0.into_iter().map(|e| (e.path, e.message)).collect(),
    }
}

fn paths(errors: &[(String, String)]) -> Vec<&str> {
    errors.iter().map(|(p, _)| p.as_str()).collect()
}

#[test]
fn every_mistake_is_reported_with_its_path() {
    let text = r#"
        lisen = "127.0.0.1:1"

        [server]
        lisen = "127.0.0.1:8080"
        max_header_bytes = "16k"

        [upstream]
        timeout = "30 seconds"

        [keys]
        default_plan = "gold"

        [[routes]]
        path = "/v1/**x"

        [[routes]]
        path = "/public/**"
        auth = false
        scopes = ["read"]

        [[routes]]
        path = "/v1/orders/**"
        scope = ["read"]

        [plans.pro]
        limits = [ { requests = 10, requests_per = "1h" } ]
    "#;
    let found = errors(text, &no_env());
    let got = paths(&found);
    for want in [
        "lisen",
        "server.lisen",
        "server.max_header_bytes",
        "upstream.timeout",
        "keys.default_plan",
        "routes[0].path",
        "routes[1].scopes",
        "routes[2].scope",
        "plans.pro.limits[0].requests_per",
        "plans.pro.limits[0].per",
    ] {
        assert!(got.contains(&want), "missing {want} in {got:#?}");
    }
    assert_eq!(got.len(), 10, "{found:#?}");
    let message = |path: &str| &found.iter().find(|(p, _)| p == path).unwrap().1;
    assert!(message("lisen").contains("unknown key"));
    assert!(message("server.max_header_bytes").contains("string"));
    assert!(message("upstream.timeout").contains("invalid duration"));
    assert!(message("keys.default_plan").contains("\"gold\""));
    assert!(message("routes[0].path").contains("whole segment"));
    assert!(message("plans.pro.limits[0].per").contains("required"));
    // Unknown top-level keys come first, then sections in file order.
    assert_eq!(got[0], "lisen");
}

#[test]
fn value_checks_table() {
    // (snippet, path with the error, a word the message contains)
    let cases: &[(&str, &str, &str)] = &[
        (
            "usage.flush_interval = \"500ms\"",
            "usage.flush_interval",
            "too short",
        ),
        (
            "usage.flush_interval = \"1h\"",
            "usage.flush_interval",
            "too long",
        ),
        ("usage.flush_interval = 5", "usage.flush_interval", "string"),
        (
            "usage.flush_intervals = \"5s\"",
            "usage.flush_intervals",
            "unknown key",
        ),
        (
            "usage.retention.minute = \"10m\"",
            "usage.retention.minute",
            "too short",
        ),
        (
            "usage.retention.hour = \"1h\"",
            "usage.retention.hour",
            "too short",
        ),
        (
            "usage.retention.hour = \"24h\"\nusage.retention.minute = \"48h\"",
            "usage.retention.hour",
            "at least usage.retention.minute",
        ),
        (
            "usage.retention.day = \"30d\"",
            "usage.retention.day",
            "at least usage.retention.hour",
        ),
        (
            "usage.retention.weeks = \"30d\"",
            "usage.retention.weeks",
            "unknown key",
        ),
        (
            "server.listen = \"localhost:80\"",
            "server.listen",
            "socket address",
        ),
        (
            "server.admin_listen = \"127.0.0.1:8080\"",
            "server.admin_listen",
            "same address",
        ),
        (
            "server.max_header_bytes = 10",
            "server.max_header_bytes",
            "out of range",
        ),
        ("server.max_body_bytes = 0", "server.max_body_bytes", "refuse"),
        (
            "server.max_connections = 0",
            "server.max_connections",
            "out of range",
        ),
        (
            "server.header_read_timeout = \"10ms\"",
            "server.header_read_timeout",
            "too short",
        ),
        (
            "server.shutdown_grace = \"soon\"",
            "server.shutdown_grace",
            "invalid duration",
        ),
        ("database.url = \"mysql://x\"", "database.url", "unsupported"),
        (
            "database.url = \"postgres://u:hunter2@db/x\"\ndatabase.max_connections = 0",
            "database.max_connections",
            "too small",
        ),
        (
            "database.connect_timeout = \"0s\"",
            "database.connect_timeout",
            "too short",
        ),
        (
            "upstream.url = \"https://api.example.com\"",
            "upstream.url",
            "https upstreams are not supported yet",
        ),
        ("upstream.url = \"api:9000\"", "upstream.url", "http://"),
        (
            "keys.default_prefix = \"kg-live\"",
            "keys.default_prefix",
            "prefix",
        ),
        ("keys.format = \"hex\"", "keys.format", "hex64"),
        (
            "keys.hash.generated.parallelism = 0",
            "keys.hash.generated",
            "parallelism",
        ),
        (
            "keys.hash.imported.memory_kib = -1",
            "keys.hash.imported.memory_kib",
            "u32",
        ),
        ("auth.headers = []", "auth.headers", "no header"),
        ("auth.headers = [\"X Key\"]", "auth.headers[0]", "header name"),
        (
            "auth.headers = [\"X-Key\", \"x-key\"]",
            "auth.headers[1]",
            "twice",
        ),
        ("auth.headers = [\"Host\"]", "auth.headers[0]", "cannot carry"),
        (
            "auth.default_scopes = [\"a b\"]",
            "auth.default_scopes[0]",
            "scope",
        ),
        (
            "auth.max_failures_per_prefix = 0",
            "auth.max_failures_per_prefix",
            "too small",
        ),
        (
            "auth.hash_concurrency = 0",
            "auth.hash_concurrency",
            "out of range",
        ),
        (
            "cache.poll_interval = \"5s\"",
            "cache.poll_interval",
            "at most 1s",
        ),
        ("cache.ttl = \"0s\"", "cache.ttl", "too short"),
        (
            "rate_limit.backend = \"memcached\"",
            "rate_limit.backend",
            "\"local\" or \"redis\"",
        ),
        (
            "rate_limit.redis_url = \"http://x\"",
            "rate_limit.redis_url",
            "redis://",
        ),
        (
            "rate_limit.redis_url = \"rediss://cache:6380\"",
            "rate_limit.redis_url",
            "not supported yet",
        ),
        (
            "rate_limit.redis_pool_size = 0",
            "rate_limit.redis_pool_size",
            "out of range",
        ),
        (
            "rate_limit.redis_timeout = \"0s\"",
            "rate_limit.redis_timeout",
            "too short",
        ),
        (
            "rate_limit.redis_connect_timeout = \"2m\"",
            "rate_limit.redis_connect_timeout",
            "too long",
        ),
        (
            "rate_limit.headers = \"ietf\"",
            "rate_limit.headers",
            "x-ratelimit",
        ),
        ("[[routes]]\nmethods = [\"GET\"]", "routes[0].path", "required"),
        ("[[routes]]\npath = \"v1\"", "routes[0].path", "start with"),
        (
            "[[routes]]\npath = \"/a\"\nmethods = []",
            "routes[0].methods",
            "empty",
        ),
        (
            "[[routes]]\npath = \"/a\"\nmethods = [\"GET POST\"]",
            "routes[0].methods[0]",
            "method",
        ),
        (
            "[[routes]]\npath = \"/a\"\nscopes = [\"ok\", \"not ok\"]",
            "routes[0].scopes[1]",
            "scope",
        ),
        ("routes = [1]", "routes[0]", "table"),
        ("routes = \"/a\"", "routes", "array of tables"),
        ("[plans.Pro]\n[plans.free]", "plans.Pro", "plan name"),
        ("[plans.free]\nper = \"account\"", "plans.free.per", "\"owner\""),
        (
            "[plans.free]\nunlimited = true\nlimits = [{ requests = 1, per = \"1s\" }]",
            "plans.free.limits",
            "unlimited",
        ),
        (
            "[plans.free]\nlimits = [{ requests = 0, per = \"1s\" }]",
            "plans.free.limits[0].requests",
            "at least 1",
        ),
        (
            "[plans.free]\nlimits = [{ requests = 1, per = \"500ms\" }]",
            "plans.free.limits[0].per",
            "at least 1s",
        ),
        (
            "[plans.free]\nlimits = [{ requests = 1, per = \"31d\" }]",
            "plans.free.limits[0].per",
            "at most 30d",
        ),
        (
            "[plans.free]\nlimits = [{ requests = 1, per = \"1m\" }, { requests = 2, per = \"60s\" }]",
            "plans.free.limits[1].per",
            "duplicate window 1m",
        ),
        (
            "[plans.free]\nlimits = [{ per = \"1m\" }]",
            "plans.free.limits[0].requests",
            "required",
        ),
        ("plans = 3", "plans", "table"),
        (
            "[keys]\ndefault_plan = \"free\"\n[plans]",
            "keys.default_plan",
            "no plans are defined",
        ),
        (
            "[errors.not_a_code]\nstatus = 400",
            "errors.not_a_code",
            "unknown error code",
        ),
        (
            "[errors.invalid_key]\nstatus = 700",
            "errors.invalid_key.status",
            "100 to 599",
        ),
        (
            "[errors.invalid_key]\nbody = '{\"e\":\"{mesage}\"}'",
            "errors.invalid_key.body",
            "{mesage}",
        ),
        (
            "[errors.invalid_key]\nbody = 'x'\ncontent_type = \"json\"",
            "errors.invalid_key.content_type",
            "media type",
        ),
        ("log.format = \"xml\"", "log.format", "\"json\""),
        ("log.level = \"verbose\"", "log.level", "not a level"),
        ("tokens.enabled = true", "tokens.signing_key", "required"),
        (
            "tokens.enabled = true\ntokens.keys = []",
            "tokens.signing_key",
            "[[tokens.keys]]",
        ),
        ("tokens.issuer = \"\"", "tokens.issuer", "must not be empty"),
        ("tokens.audience = \"\"", "tokens.audience", "must not be empty"),
        ("tokens.refresh_ttl = \"3651d\"", "tokens.refresh_ttl", "too long"),
        ("tokens.keys = { kid = \"a\" }", "tokens.keys", "array of tables"),
        (
            "tokens.signing_key = \"short\"",
            "tokens.signing_key",
            "too short",
        ),
        (
            "tokens.access_ttl = \"forever\"",
            "tokens.access_ttl",
            "invalid duration",
        ),
        (
            "admin.tokens = [\"plaintext-token\"]",
            "admin.tokens[0]",
            "argon2id PHC",
        ),
        (
            "admin.tokens = [\"$argon2i$v=19$m=16,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2g\"]",
            "admin.tokens[0]",
            "argon2id PHC",
        ),
        ("server = 5", "server", "table"),
    ];
    for &(snippet, path, word) in cases {
        let found = errors(snippet, &no_env());
        let hit = found.iter().find(|(p, _)| p == path);
        let Some((_, message)) = hit else {
            panic!("{snippet:?}: no error at {path}; got {found:#?}");
        };
        assert!(
            message.contains(word),
            "{snippet:?}: {path}: {message:?} lacks {word:?}"
        );
    }
}

#[test]
fn secrets_never_appear_in_errors() {
    let text = r#"
        database.url = "mysql://app:hunter2@db/keys"
        rate_limit.redis_url = "http://:redispass@cache"
        tokens.signing_key = "tooshortsecret"
        admin.tokens = ["plain-admin-secret", 42]
    "#;
    let printed = load_str(text, "t", &no_env()).unwrap_err().to_string();
    for secret in [
        "hunter2",
        "redispass",
        "tooshortsecret",
        "plain-admin-secret",
        "42",
    ] {
        assert!(!printed.contains(secret), "{secret} leaked in:\n{printed}");
    }
    let printed = load_str("admin.tokens = [\"plain-admin-secret\"]", "t", &no_env())
        .unwrap_err()
        .to_string();
    assert!(!printed.contains("plain-admin-secret"), "{printed}");
}

#[test]
fn the_usage_flush_interval_is_read_from_the_file_or_the_environment() {
    assert_eq!(ok("", &no_env()).usage.flush_interval, Duration::from_secs(5));
    let config = ok("[usage]\nflush_interval = \"1s\"\n", &no_env());
    assert_eq!(config.usage.flush_interval, Duration::from_secs(1));
    let config = ok("", &env(&[("KEYGATE_USAGE__FLUSH_INTERVAL", "10m")]));
    assert_eq!(config.usage.flush_interval, Duration::from_secs(600));
}

#[test]
fn usage_retention_is_read_from_the_file_or_the_environment() {
    use crate::keys::usage::Retention;
    assert_eq!(ok("", &no_env()).usage.retention, Retention::DEFAULT);
    let config = ok(
        "[usage.retention]\nminute = \"6h\"\nhour = \"30d\"\nday = \"365d\"\n",
        &no_env(),
    );
    let days = chrono::Duration::days;
    assert_eq!(
        config.usage.retention,
        Retention {
            minute: chrono::Duration::hours(6),
            hour: days(30),
            day: days(365),
        }
    );
    let config = ok("", &env(&[("KEYGATE_USAGE__RETENTION__DAY", "3650d")]));
    assert_eq!(config.usage.retention.day, days(3650));
}

#[test]
fn plans_without_free_need_no_default_plan() {
    // Issue 19: no plan named `free` is required; keys created without a
    // plan then have none.
    let config = ok("[plans.gold]\nunlimited = true\n", &no_env());
    assert_eq!(config.keys.default_plan, None);
    assert_eq!(config.plans.keys().collect::<Vec<_>>(), ["gold"]);
    let named = ok("[keys]\ndefault_plan = \"gold\"\n[plans.gold]\n", &no_env());
    assert_eq!(named.keys.default_plan.as_deref(), Some("gold"));
}

#[test]
fn missing_sections_take_the_defaults() {
    let config = ok("", &no_env());
    assert_eq!(config.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(config.server.admin_listen.to_string(), "127.0.0.1:8081");
    assert_eq!(config.server.shutdown_grace, Duration::from_secs(30));
    assert_eq!(config.server.max_header_bytes, 16384);
    assert_eq!(config.server.max_body_bytes, None);
    assert_eq!(config.server.max_connections, 10_000);
    assert_eq!(config.server.header_read_timeout, Duration::from_secs(10));
    assert_eq!(config.database.url, "sqlite://keygate.db?mode=rwc");
    assert!(config.database.auto_migrate);
    assert_eq!(config.database.max_connections, 10);
    assert_eq!(config.database.connect_timeout, Duration::from_secs(5));
    assert_eq!(config.database.statement_timeout, Duration::from_secs(5));
    assert_eq!(config.upstream.url, "http://127.0.0.1:9000");
    assert_eq!(config.upstream.authority, "127.0.0.1:9000");
    assert_eq!(config.upstream.base_path, "");
    assert_eq!(config.upstream.timeout, Duration::from_secs(30));
    assert_eq!(config.upstream.pool_max_idle_per_host, 256);
    assert_eq!(config.upstream.pool_idle_timeout, Duration::from_secs(90));
    assert_eq!(config.keys.default_prefix.as_str(), "kg_live_");
    assert_eq!(config.keys.format, crate::keys::KeyFormat::Base62);
    // No default plan: keys created without one have none.
    assert_eq!(config.keys.default_plan, None);
    assert_eq!(config.keys.generated_hash, crate::keys::HashParams::GENERATED);
    assert_eq!(config.keys.imported_hash, crate::keys::HashParams::IMPORTED);
    assert_eq!(
        config.auth.headers,
        [
            CredentialHeader {
                name: "authorization".into(),
                scheme: CredentialScheme::Bearer
            },
            CredentialHeader {
                name: "x-api-key".into(),
                scheme: CredentialScheme::Raw
            },
        ]
    );
    assert!(config.auth.default_scopes.is_empty());
    assert!(!config.auth.method_scopes);
    assert_eq!(config.authenticator.max_failures_per_prefix, 20);
    assert_eq!(config.authenticator.max_failures_per_second, 200);
    assert!(config.authenticator.hash_concurrency >= 1);
    assert_eq!(config.authenticator.cache_ttl, Duration::from_secs(300));
    assert_eq!(config.authenticator.negative_ttl, Duration::from_secs(30));
    assert_eq!(config.authenticator.max_entries, 100_000);
    assert_eq!(config.authenticator.stale_if_error, Duration::from_secs(300));
    assert_eq!(config.authenticator.poll_interval, Duration::from_millis(500));
    assert_eq!(config.rate_limit.backend, RateLimitBackend::Local);
    assert_eq!(config.rate_limit.headers, RateLimitHeaders::Ietf);
    assert_eq!(
        config.rate_limit,
        RateLimitSettings::default(),
        "local by default"
    );
    assert!(config.routes.is_empty());
    assert!(config.errors.is_empty());
    assert_eq!(
        config.log,
        LogSettings {
            format: LogFormat::Text,
            level: "info".into()
        }
    );
    assert!(config.tokens.is_none(), "the token exchange is off by default");
    assert!(config.token_settings().is_none());
    assert!(!config.admin.has_tokens());

    // The seed plans.
    let names: Vec<&str> = config.plans.keys().map(String::as_str).collect();
    assert_eq!(names, ["enterprise", "free", "pro"]);
    let windows = |plan: &str| -> Vec<(u64, u64)> {
        config.plans[plan]
            .limits
            .iter()
            .map(|l| (l.requests, l.per.as_secs()))
            .collect()
    };
    assert_eq!(windows("free"), [(1000, 3600), (50, 60)]);
    assert_eq!(windows("pro"), [(10_000, 3600), (500, 60)]);
    assert!(config.plans["enterprise"].unlimited && config.plans["enterprise"].limits.is_empty());
    assert!(config.has_plan("pro") && !config.has_plan("gold"));

    // Config::default() is the same thing.
    let default = Config::default();
    assert_eq!(default.plans, config.plans);
    assert_eq!(default.server, config.server);
}

#[test]
fn partial_sections_keep_their_other_defaults() {
    let config = ok(
        r#"
        keys.hash.imported.memory_kib = 65536
        [plans.team]
        per = "owner"
        limits = [ { requests = 1000, per = "1h" } ]
        [plans.free]
        api_access = false
        [errors.invalid_key]
        body = '{"error":"Invalid API key"}'
        status = 403
        [errors.rate_limited]
        content_type = "application/json"
        "#,
        &no_env(),
    );
    assert_eq!(config.keys.imported_hash.memory_kib, 65536);
    assert_eq!(config.keys.imported_hash.iterations, 2);
    assert_eq!(config.plans.len(), 2);
    assert_eq!(config.plans["team"].per, LimitScope::Owner);
    assert!(!config.plans["free"].api_access && config.plans["free"].limits.is_empty());
    let invalid_key = &config.errors["invalid_key"];
    assert_eq!(invalid_key.status, Some(403));
    assert_eq!(invalid_key.content_type.as_deref(), Some("application/json"));
    assert_eq!(config.errors["rate_limited"].body, None);
}

#[test]
fn env_overrides_apply_by_type() {
    let text = r#"
        [server]
        max_header_bytes = 8192
        [[routes]]
        path = "/v1/**"
        scopes = ["read"]
        [plans.pro]
        limits = [ { requests = 10, per = "1m" } ]
        [plans.free]
        [plans.2024]
    "#;
    let config = ok(
        text,
        &env(&[
            // string
            ("KEYGATE_DATABASE__URL", "postgres://keygate:pw@db:5432/keygate"),
            // number replacing a number
            ("KEYGATE_SERVER__MAX_HEADER_BYTES", "32768"),
            // bool
            ("KEYGATE_DATABASE__AUTO_MIGRATE", "false"),
            ("KEYGATE_PLANS__PRO__API_ACCESS", "false"),
            // array
            ("KEYGATE_AUTH__HEADERS", r#"["X-Key", "Authorization"]"#),
            ("KEYGATE_ROUTES__0__METHODS", r#"["get", "head"]"#),
            // nested
            ("KEYGATE_KEYS__HASH__GENERATED__MEMORY_KIB", "2048"),
            ("KEYGATE_PLANS__PRO__LIMITS__0__REQUESTS", "99"),
            // a new array entry
            ("KEYGATE_ROUTES__1__PATH", "/healthz"),
            ("KEYGATE_ROUTES__1__AUTH", "false"),
            // strings that read as other TOML types where the field is a string
            ("KEYGATE_KEYS__DEFAULT_PREFIX", "tc_"),
            ("KEYGATE_TOKENS__SIGNING_KEY", "12345678901234567890123456789012"),
            ("KEYGATE_TOKENS__ENABLED", "true"),
            ("KEYGATE_LOG__LEVEL", "debug"),
            ("KEYGATE_LOG__FORMAT", "\"json\""),
            // a number that must be a string: the field is unset in the file,
            // so the TOML reading is tried first and then the plain string
            ("KEYGATE_KEYS__DEFAULT_PLAN", "2024"),
            // not overrides
            ("KEYGATE_CONFIG", "elsewhere.toml"),
            ("KEYGATE_TEST_PG", "postgres://x"),
            ("KEYGATE_TEST_REDIS", "redis://x"),
            ("KEYGATE_ADMIN_TOKEN", "an-admin-token-from-the-env"),
            ("UNRELATED__VAR", "x"),
        ]),
    );
    assert_eq!(config.database.url, "postgres://keygate:pw@db:5432/keygate");
    assert_eq!(config.server.max_header_bytes, 32768);
    assert!(!config.database.auto_migrate);
    assert!(!config.plans["pro"].api_access);
    assert_eq!(config.auth.headers[0].name, "x-key");
    assert_eq!(config.routes[0].methods, ["GET", "HEAD"]);
    assert_eq!(config.keys.generated_hash.memory_kib, 2048);
    assert_eq!(config.plans["pro"].limits[0].requests, 99);
    assert_eq!(config.routes.len(), 2);
    assert_eq!(config.routes[1].path.as_str(), "/healthz");
    assert!(!config.routes[1].auth);
    assert_eq!(config.keys.default_prefix.as_str(), "tc_");
    let tokens = config.token_settings().expect("enabled from the environment");
    assert_eq!(tokens.keys.len(), 1);
    assert_eq!(
        tokens.keys[0].material.expose(),
        "12345678901234567890123456789012"
    );
    assert_eq!(config.log.level, "debug");
    assert_eq!(config.log.format, LogFormat::Json);
    assert_eq!(config.keys.default_plan.as_deref(), Some("2024"));
    assert_eq!(
        config.admin.env_token.as_ref().map(|t| t.expose()),
        Some("an-admin-token-from-the-env")
    );
}

#[test]
fn env_override_problems_name_the_variable() {
    let found = errors(
        "",
        &env(&[
            ("KEYGATE_SERVER__LISEN", "0.0.0.0:80"),
            ("KEYGATE_SERVR__LISTEN", "0.0.0.0:80"),
            ("KEYGATE_SERVER__MAX_HEADER_BYTES", "lots"),
            ("KEYGATE_DATABASE__MAX_CONNECTIONS", "-3"),
            ("KEYGATE_KEYS__DEFAULT_PLAN", "gold"),
            ("KEYGATE_ROUTES__3__PATH", "/x"),
            ("KEYGATE_SERVER____LISTEN", "x"),
        ]),
    );
    let got = paths(&found);
    for want in [
        "KEYGATE_SERVER__LISEN (server.lisen)",
        "KEYGATE_SERVR__LISTEN (servr.listen)",
        "KEYGATE_SERVER__MAX_HEADER_BYTES (server.max_header_bytes)",
        "KEYGATE_DATABASE__MAX_CONNECTIONS (database.max_connections)",
        "KEYGATE_KEYS__DEFAULT_PLAN (keys.default_plan)",
        "KEYGATE_ROUTES__3__PATH (routes.3.path)",
        "KEYGATE_SERVER____LISTEN",
    ] {
        assert!(got.contains(&want), "missing {want} in {got:#?}");
    }
    assert_eq!(got.len(), 7, "{found:#?}");
    let message = |path: &str| &found.iter().find(|(p, _)| p.starts_with(path)).unwrap().1;
    assert!(message("KEYGATE_SERVER__LISEN").contains("unknown key"));
    // A negative number stays a number, so the message says what is wrong with it.
    assert!(
        message("KEYGATE_DATABASE__MAX_CONNECTIONS").contains("integer `-3`"),
        "{found:#?}"
    );
    // A number where a string belongs is retried as the string, so the
    // message is about the string's meaning, not its type.
    let short = errors("", &env(&[("KEYGATE_TOKENS__SIGNING_KEY", "1234567890")]));
    assert_eq!(
        paths(&short),
        ["KEYGATE_TOKENS__SIGNING_KEY (tokens.signing_key)"]
    );
    assert!(short[0].1.contains("too short"), "{short:#?}");
}

#[test]
fn unknown_key_in_the_file_and_an_override_both_reported() {
    let found = errors("[servr]\nlisten = \"x\"", &env(&[("KEYGATE_SERVR__PORT", "1")]));
    assert_eq!(paths(&found), ["servr", "KEYGATE_SERVR__PORT (servr.port)"]);
    let found = errors("[server]\nlisen = \"x\"", &env(&[("KEYGATE_SERVER__LISEN", "y")]));
    assert_eq!(
        paths(&found),
        ["server.lisen", "KEYGATE_SERVER__LISEN (server.lisen)"]
    );
}

#[test]
fn syntax_errors_carry_line_and_column() {
    let found = errors("[server]\nlisten = \"127.0.0.1:8080\"\nbad line\n", &no_env());
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(found[0].0.starts_with("test.toml:3:"), "{found:#?}");
    assert!(found[0].1.starts_with("TOML syntax error"), "{found:#?}");
}

#[test]
fn missing_file_says_how_to_fix_it() {
    let path = Path::new("/nonexistent/keygate-test/keygate.toml");
    let errors = load(path, &no_env()).unwrap_err();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors.0[0].path, path.display().to_string());
    assert!(errors.0[0].message.contains("--config"), "{errors}");
}

#[test]
fn config_path_precedence() {
    let with_var = env(&[("KEYGATE_CONFIG", "/etc/keygate.toml")]);
    assert_eq!(
        config_path(Some(Path::new("x.toml")), &with_var),
        PathBuf::from("x.toml")
    );
    assert_eq!(config_path(None, &with_var), PathBuf::from("/etc/keygate.toml"));
    assert_eq!(config_path(None, &no_env()), PathBuf::from("config/keygate.toml"));
}

#[test]
fn display_is_one_line_per_problem() {
    let errors = load_str("lisen = 1\n[server]\nlisen = 2", "t", &no_env()).unwrap_err();
    let shown = errors.to_string();
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), 2, "{shown}");
    assert!(lines[0].starts_with("lisen: unknown key"), "{shown}");
    assert!(lines[1].starts_with("server.lisen: unknown key"), "{shown}");
}

#[test]
fn debug_never_prints_secrets() {
    let config = ok(
        r#"
        database.url = "postgres://app:hunter2@db/keys"
        rate_limit.redis_url = "redis://:redispass@cache:6379"
        tokens.signing_key = "a-signing-key-that-is-long-enough-to-use"
        admin.tokens = ["$argon2id$v=19$m=16,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo"]
        "#,
        &env(&[("KEYGATE_ADMIN_TOKEN", "plain-admin-token")]),
    );
    let printed = format!("{config:?}");
    for secret in [
        "hunter2",
        "redispass",
        "long-enough",
        "aGFzaGhhc2hoYXNo",
        "plain-admin-token",
    ] {
        assert!(!printed.contains(secret), "{secret} leaked in {printed}");
    }
    assert_eq!(config.admin.tokens.len(), 1);
}

/// Every `*.toml` under `config/` (the default and `config/examples/`,
/// recursively) parses and validates.
#[test]
fn shipped_config_files_are_valid() {
    fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                collect(&path, out);
            } else if path.extension().is_some_and(|e| e == "toml") {
                out.push(path);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut files = Vec::new();
    collect(&root, &mut files);
    assert!(
        files.iter().any(|f| f.ends_with("config/keygate.toml")),
        "{files:?}"
    );
    for file in &files {
        if let Err(errors) = load(file, &no_env()) {
            panic!("{} is invalid:\n{errors}", file.display());
        }
    }
}

#[test]
fn default_file_matches_the_built_in_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/keygate.toml");
    let file = load(&path, &no_env()).unwrap();
    let built_in = Config::default();
    assert_eq!(file.server, built_in.server);
    assert_eq!(file.database, built_in.database);
    assert_eq!(file.upstream, built_in.upstream);
    assert_eq!(file.keys, built_in.keys);
    assert_eq!(file.authenticator, built_in.authenticator);
    assert_eq!(file.rate_limit, built_in.rate_limit);
    assert_eq!(file.plans, built_in.plans);
    assert_eq!(file.usage, built_in.usage);
    assert_eq!(file.log, built_in.log);
    assert_eq!(file.auth.headers, built_in.auth.headers);
    assert!(file.tokens.is_none() && built_in.tokens.is_none());
    assert_eq!(file.routes.len(), 4);
    let route = |method: &str, path: &str| file.routes.iter().find(|r| r.matches(method, path));
    assert!(
        route("GET", "/v1/orders/1")
            .unwrap()
            .scopes
            .contains("can_read_order")
    );
    assert!(
        route("PATCH", "/v1/orders")
            .unwrap()
            .scopes
            .contains("can_write_order")
    );
    assert!(!route("GET", "/public/logo.png").unwrap().auth);
    assert!(!route("GET", "/healthz").unwrap().auth);
    assert!(route("DELETE", "/v1/orders/1").is_none());
}

#[test]
fn the_redis_backend_settings_reach_the_limiter() {
    let config = ok(
        r#"
        [rate_limit]
        backend = "redis"
        redis_url = "redis://:hunter2@cache:6379/2"
        redis_key_prefix = "edge:"
        redis_pool_size = 8
        redis_connect_timeout = "2s"
        redis_timeout = "50ms"
    "#,
        &no_env(),
    );
    assert!(
        !format!("{config:?}").contains("hunter2"),
        "Debug redacts the password"
    );
    let RateLimitBackend::Redis(redis) = config.rate_limit.backend else {
        panic!("not the redis backend");
    };
    assert_eq!(redis.url, "redis://:hunter2@cache:6379/2");
    assert_eq!(redis.key_prefix, "edge:");
    assert_eq!(redis.pool_size, 8);
    assert_eq!(redis.connect_timeout, Duration::from_secs(2));
    assert_eq!(redis.timeout, Duration::from_millis(50));
    assert_eq!(
        redis.probe_interval,
        crate::ratelimit::RedisSettings::DEFAULT_PROBE_INTERVAL
    );
}

// ---------------------------------------------------------------------------
// [tokens]
// ---------------------------------------------------------------------------

/// A 40-byte HS256 secret that is easy to look for in printed output.
const HS_SECRET: &str = "hs256-secret-that-must-never-be-printed!!";

/// A PKCS#8 PEM Ed25519 private key.
fn ed25519_pem(seed: u8) -> String {
    use ed25519_dalek::pkcs8::EncodePrivateKey as _;
    ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
        .to_pkcs8_pem(p256::pkcs8::LineEnding::LF)
        .unwrap()
        .to_string()
}

/// A PKCS#8 PEM P-256 private key.
fn p256_pem(seed: u8) -> String {
    use p256::pkcs8::EncodePrivateKey as _;
    p256::ecdsa::SigningKey::from_slice(&[seed; 32])
        .unwrap()
        .to_pkcs8_pem(p256::pkcs8::LineEnding::LF)
        .unwrap()
        .to_string()
}

/// The base64 body of a PEM: what must never be printed.
fn pem_body(pem: &str) -> String {
    pem.lines().filter(|l| !l.starts_with("-----")).collect()
}

/// `text` with every secret in it checked absent from the errors' text.
fn token_errors(text: &str, secrets: &[&str]) -> Vec<(String, String)> {
    let found = errors(text, &no_env());
    let printed = format!("{found:?}");
    for secret in secrets {
        assert!(!printed.contains(secret), "{secret} leaked in {printed}");
    }
    found
}

fn message_at<'a>(found: &'a [(String, String)], path: &str) -> &'a str {
    match found.iter().find(|(p, _)| p == path) {
        Some((_, message)) => message,
        None => panic!("no error at {path}: {found:#?}"),
    }
}

#[test]
fn tokens_defaults_with_a_bare_signing_key() {
    let config = ok(
        &format!("[tokens]\nenabled = true\nsigning_key = \"{HS_SECRET}\""),
        &no_env(),
    );
    let settings = config.token_settings().unwrap();
    assert_eq!(settings.access_ttl, Duration::from_secs(2 * 3600));
    assert_eq!(settings.refresh_ttl, Duration::from_secs(30 * 86_400));
    assert_eq!(settings.issuer, "keygate");
    assert_eq!(settings.audience, None);
    assert_eq!(settings.keys.len(), 1);
    let key = &settings.keys[0];
    assert_eq!(key.algorithm, crate::token::Algorithm::Hs256);
    assert_eq!(key.material.expose(), HS_SECRET);
    // The same kid the token module derives, so tokens stay valid across
    // replicas and restarts.
    let derived = crate::token::KeySpec::hs256(crate::keys::SecretString::from(HS_SECRET));
    assert_eq!(key.kid, derived.kid);
    assert!(crate::token::Tokens::new(&settings).is_ok());

    // Disabled: no settings, but a written key is still checked.
    let off = ok(
        &format!("[tokens]\nsigning_key = \"{HS_SECRET}\"\naudience = \"api\""),
        &no_env(),
    );
    assert!(off.token_settings().is_none());
    let found = token_errors("tokens.signing_key = \"short\"", &["short\""]);
    assert_eq!(paths(&found), ["tokens.signing_key"]);
}

#[test]
fn tokens_keys_are_listed_in_order_and_the_signing_key_comes_last() {
    let ed = ed25519_pem(7);
    let es = p256_pem(9);
    let text = format!(
        r#"
        [tokens]
        enabled = true
        signing_key = "{HS_SECRET}"
        access_ttl = "15m"
        refresh_ttl = "7d"
        audience = "orders-api"
        issuer = "https://gateway.example"

        [[tokens.keys]]
        kid = "ed-2026-11"
        algorithm = "EdDSA"
        private_key = """
{ed}"""

        [[tokens.keys]]
        kid = "es-2026-10"
        algorithm = "ES256"
        private_key = '''{es}'''

        [[tokens.keys]]
        algorithm = "HS256"
        kid = "hs-old"
        secret = "another-hs256-secret-of-at-least-32-bytes"
        "#
    );
    let config = ok(&text, &no_env());
    let settings = config.token_settings().unwrap();
    let kids: Vec<&str> = settings.keys.iter().map(|k| k.kid.as_str()).collect();
    assert_eq!(kids[..3], ["ed-2026-11", "es-2026-10", "hs-old"]);
    assert!(kids[3].starts_with("hs256-"), "{kids:?}");
    assert_eq!(settings.access_ttl, Duration::from_secs(15 * 60));
    assert_eq!(settings.refresh_ttl, Duration::from_secs(7 * 86_400));
    assert_eq!(settings.audience.as_deref(), Some("orders-api"));
    assert_eq!(settings.issuer, "https://gateway.example");

    let tokens = crate::token::Tokens::new(&settings).unwrap();
    assert_eq!(tokens.keys().signing_kid(), "ed-2026-11");
    assert_eq!(tokens.jwks()["keys"].as_array().map(Vec::len), Some(2));

    let printed = format!("{config:?}");
    for secret in [HS_SECRET, "another-hs256-secret", &pem_body(&ed), &pem_body(&es)] {
        assert!(!printed.contains(secret), "secret leaked in {printed}");
    }
}

#[test]
fn tokens_key_mistakes_are_reported_at_their_paths() {
    let ed = ed25519_pem(1);
    let es = p256_pem(2);
    // (the [[tokens.keys]] entries, path with the error, a word the message contains)
    let cases: &[(String, &str, &str)] = &[
        (
            format!("algorithm = \"RS256\"\nsecret = \"{HS_SECRET}\""),
            "tokens.keys[0].algorithm",
            "not a supported signing algorithm",
        ),
        (
            format!("algorithm = \"hs256\"\nsecret = \"{HS_SECRET}\""),
            "tokens.keys[0].algorithm",
            "HS256, EdDSA or ES256",
        ),
        (
            format!("secret = \"{HS_SECRET}\""),
            "tokens.keys[0].algorithm",
            "required",
        ),
        (
            "algorithm = \"HS256\"\nsecret = \"too-short\"".to_owned(),
            "tokens.keys[0].secret",
            "too short",
        ),
        (
            "algorithm = \"HS256\"\nkid = \"a\"".to_owned(),
            "tokens.keys[0].secret",
            "required",
        ),
        (
            format!("algorithm = \"HS256\"\nsecret = \"{HS_SECRET}\"\nprivate_key = \"x\""),
            "tokens.keys[0].private_key",
            "EdDSA and ES256",
        ),
        (
            format!("algorithm = \"EdDSA\"\nkid = \"a\"\nsecret = \"{HS_SECRET}\""),
            "tokens.keys[0].secret",
            "HS256 keys",
        ),
        (
            "algorithm = \"EdDSA\"\nkid = \"a\"".to_owned(),
            "tokens.keys[0].private_key",
            "openssl genpkey -algorithm ed25519",
        ),
        (
            format!("algorithm = \"EdDSA\"\nprivate_key = '''{ed}'''"),
            "tokens.keys[0].kid",
            "required",
        ),
        (
            format!("algorithm = \"EdDSA\"\nkid = \"a\"\nprivate_key = '''{ed}'''\nprivate_key_file = \"k.pem\""),
            "tokens.keys[0].private_key_file",
            "both set",
        ),
        (
            "algorithm = \"EdDSA\"\nkid = \"a\"\nprivate_key = \"-----BEGIN PRIVATE KEY-----\\nbm9wZQ==\\n-----END PRIVATE KEY-----\\n\""
                .to_owned(),
            "tokens.keys[0].private_key",
            "is not a PKCS#8 PEM Ed25519 private key",
        ),
        (
            // A P-256 key where an Ed25519 one belongs.
            format!("algorithm = \"EdDSA\"\nkid = \"a\"\nprivate_key = '''{es}'''"),
            "tokens.keys[0].private_key",
            "Ed25519",
        ),
        (
            format!("algorithm = \"ES256\"\nkid = \"a\"\nprivate_key = '''{ed}'''"),
            "tokens.keys[0].private_key",
            "is not a PKCS#8 PEM P-256 private key",
        ),
        (
            format!("algorithm = \"HS256\"\nkid = \"has space\"\nsecret = \"{HS_SECRET}\""),
            "tokens.keys[0].kid",
            "not a usable key id",
        ),
        (
            format!("algorithm = \"HS256\"\nsecret = \"{HS_SECRET}\"\nprivate_key_path = \"x\""),
            "tokens.keys[0].private_key_path",
            "unknown key",
        ),
        (
            format!(
                "algorithm = \"HS256\"\nkid = \"k1\"\nsecret = \"{HS_SECRET}\"\n[[tokens.keys]]\nalgorithm = \"EdDSA\"\nkid = \"k1\"\nprivate_key = '''{ed}'''"
            ),
            "tokens.keys[1].kid",
            "duplicate key id \"k1\": tokens.keys[0] already uses it",
        ),
        (
            format!(
                "algorithm = \"HS256\"\nsecret = \"{HS_SECRET}\"\n[[tokens.keys]]\nalgorithm = \"HS256\"\nsecret = \"{HS_SECRET}\""
            ),
            "tokens.keys[1].secret",
            "list each secret once",
        ),
    ];
    for (entry, path, word) in cases {
        let text = format!("[tokens]\nenabled = true\n[[tokens.keys]]\n{entry}");
        let found = token_errors(&text, &[HS_SECRET, "too-short", &pem_body(&ed), &pem_body(&es)]);
        let message = message_at(&found, path);
        assert!(
            message.contains(word),
            "{entry:?}: {path}: {message:?} lacks {word:?}"
        );
    }

    // The bare signing_key repeating a listed secret.
    let found = token_errors(
        &format!(
            "[tokens]\nsigning_key = \"{HS_SECRET}\"\n[[tokens.keys]]\nalgorithm = \"HS256\"\nsecret = \"{HS_SECRET}\""
        ),
        &[HS_SECRET],
    );
    assert_eq!(paths(&found), ["tokens.signing_key"]);
    assert!(found[0].1.contains("tokens.keys[0] already uses"), "{found:#?}");
}

#[test]
fn tokens_every_key_problem_is_collected() {
    let text = format!(
        r#"
        [tokens]
        enabled = true
        signing_key = "short"
        [[tokens.keys]]
        kid = "bad kid"
        algorithm = "HS256"
        secret = "also-short"
        [[tokens.keys]]
        kid = "fine"
        algorithm = "HS512"
        secret = "{HS_SECRET}"
        [[tokens.keys]]
        kid = "ed"
        algorithm = "EdDSA"
        private_key = "not pem at all"
        "#
    );
    let found = token_errors(&text, &[HS_SECRET, "also-short", "short\"", "not pem at all"]);
    assert_eq!(
        paths(&found),
        [
            "tokens.keys[0].kid",
            "tokens.keys[0].secret",
            "tokens.keys[1].algorithm",
            "tokens.keys[2].private_key",
            "tokens.signing_key",
        ],
        "{found:#?}"
    );
}

#[test]
fn the_type_check_reads_no_key_file() {
    // The loader asks which env overrides land on a value of another type
    // (`KEYGATE_KEYS__DEFAULT_PLAN=2024` reads as an integer) by a type
    // check of the mirror: it must find the same type errors as resolving
    // and read no file, so only the one resolution reads key files.
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.pem").display().to_string();
    let text = format!(
        "[tokens]\nenabled = true\n[[tokens.keys]]\nkid = 7\nalgorithm = \"ES256\"\nprivate_key_file = {missing:?}\n[keys]\ndefault_plan = 2024\n"
    );
    let tree: toml::Table = toml::from_str(&text).unwrap();
    let (raw, _) = raw::from_tree(tree).unwrap();
    let (type_errors, problems) = resolve::check_types(&raw, None);
    let want: std::collections::BTreeSet<String> = ["keys.default_plan", "tokens.keys[0].kid"]
        .map(String::from)
        .into();
    assert_eq!(type_errors, want);
    let read: Vec<&ConfigError> = problems
        .iter()
        .filter(|e| e.message.contains("cannot read"))
        .collect();
    assert!(read.is_empty(), "no file is read: {read:?}");
    // Resolving reads it, and names it.
    let resolved = resolve::resolve(&raw, None);
    assert!(
        resolved
            .errors
            .iter()
            .any(|e| e.path == "tokens.keys[0].private_key_file" && e.message.contains("cannot read")),
        "{:#?}",
        resolved.errors
    );
}

#[test]
fn tokens_private_key_file_is_read_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let es = p256_pem(3);
    let good = dir.path().join("es256.pem");
    std::fs::write(&good, &es).unwrap();
    let text = format!(
        "[tokens]\nenabled = true\n[[tokens.keys]]\nkid = \"es\"\nalgorithm = \"ES256\"\nprivate_key_file = {:?}",
        good.display().to_string()
    );
    let config = ok(&text, &no_env());
    let settings = config.token_settings().unwrap();
    assert_eq!(settings.keys[0].material.expose(), es);
    assert!(!format!("{config:?}").contains(&pem_body(&es)));

    // A missing file names the file.
    let missing = dir.path().join("nope.pem").display().to_string();
    let found = token_errors(
        &format!("[[tokens.keys]]\nkid = \"ed\"\nalgorithm = \"EdDSA\"\nprivate_key_file = {missing:?}"),
        &[],
    );
    let message = message_at(&found, "tokens.keys[0].private_key_file");
    assert!(
        message.contains("cannot read") && message.contains(&missing),
        "{message}"
    );

    // A file that is not a key is named, and its content never printed.
    let wrong = dir.path().join("wrong.pem");
    std::fs::write(&wrong, "FILE-CONTENT-SECRET-1234\n").unwrap();
    let wrong = wrong.display().to_string();
    let found = token_errors(
        &format!("[[tokens.keys]]\nkid = \"ed\"\nalgorithm = \"EdDSA\"\nprivate_key_file = {wrong:?}"),
        &["FILE-CONTENT-SECRET"],
    );
    let message = message_at(&found, "tokens.keys[0].private_key_file");
    assert!(
        message.contains(&wrong) && message.contains("PKCS#8 PEM Ed25519"),
        "{message}"
    );

    // So is a file of the wrong size or encoding.
    let big = dir.path().join("big.pem");
    std::fs::write(&big, vec![b'A'; 70 * 1024]).unwrap();
    let binary = dir.path().join("key.der");
    std::fs::write(&binary, [0x30, 0x82, 0xff, 0xfe]).unwrap();
    for (file, word) in [(big, "too large"), (binary, "not text")] {
        let file = file.display().to_string();
        let found = errors(
            &format!("[[tokens.keys]]\nkid = \"ed\"\nalgorithm = \"EdDSA\"\nprivate_key_file = {file:?}"),
            &no_env(),
        );
        let message = message_at(&found, "tokens.keys[0].private_key_file");
        assert!(message.contains(word), "{message}");
    }
}

#[test]
fn tokens_secrets_from_the_environment() {
    // The bare key, with the file enabling the exchange.
    let config = ok(
        "[tokens]\nenabled = true",
        &env(&[("KEYGATE_TOKENS__SIGNING_KEY", HS_SECRET)]),
    );
    let settings = config.token_settings().unwrap();
    assert_eq!(settings.keys[0].material.expose(), HS_SECRET);
    assert!(!format!("{config:?}").contains(HS_SECRET));

    // A listed key's secret.
    let listed = "[tokens]\nenabled = true\n[[tokens.keys]]\nkid = \"k1\"\nalgorithm = \"HS256\"";
    let config = ok(listed, &env(&[("KEYGATE_TOKENS__KEYS__0__SECRET", HS_SECRET)]));
    let settings = config.token_settings().unwrap();
    assert_eq!(settings.keys[0].kid, "k1");
    assert_eq!(settings.keys[0].material.expose(), HS_SECRET);

    // Problems name the variable, never the value.
    let found = errors(
        "[tokens]\nenabled = true",
        &env(&[("KEYGATE_TOKENS__SIGNING_KEY", "env-short-secret")]),
    );
    assert_eq!(
        paths(&found),
        ["KEYGATE_TOKENS__SIGNING_KEY (tokens.signing_key)"]
    );
    assert!(found[0].1.contains("too short"), "{found:#?}");
    assert!(!format!("{found:?}").contains("env-short-secret"));
    let found = errors(listed, &env(&[("KEYGATE_TOKENS__KEYS__0__SECRET", "env-short")]));
    assert_eq!(
        paths(&found),
        ["KEYGATE_TOKENS__KEYS__0__SECRET (tokens.keys[0].secret)"]
    );
    assert!(!format!("{found:?}").contains("env-short"));
}
