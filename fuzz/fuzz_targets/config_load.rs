//! `config::load_str`: the TOML text plus `KEYGATE_*` overrides, read
//! through the `EnvSource` trait from a map.
//!
//! Input: the TOML text, then optionally a NUL byte and environment lines
//! `NAME=VALUE`; a name without the `KEYGATE_` prefix gets it, so the
//! fuzzer reaches the override paths (`SERVER__LISTEN=...`,
//! `ADMIN_TOKEN=...`).
//!
//! Properties:
//! - loading never panics;
//! - it yields a `Config` or a non-empty list of errors, each with a
//!   non-empty path (a TOML key path, an override label or the file's
//!   `origin:line:column`) and a non-empty message;
//! - a loaded config's derived settings are usable as promised: the token
//!   exchange accepts its keys (`Config::token_settings`), the route table
//!   builds, the limiter and authenticator settings derive;
//! - a plain admin token from the environment never appears in an error.
#![no_main]

use std::collections::BTreeMap;

use keygate::config::{ADMIN_TOKEN_VAR, load_str};
use keygate::policy::RouteTable;
use keygate::token::Tokens;
use libfuzzer_sys::fuzz_target;

const ORIGIN: &str = "fuzz.toml";

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // `private_key_file` opens whatever path it names: keep the fuzzer away
    // from device files (a FIFO or terminal would block the run).
    if ["/dev", "/proc", "/sys"].iter().any(|p| text.contains(p)) {
        return;
    }
    let (toml, env_text) = text.split_once('\0').unwrap_or((&text, ""));
    let mut env = BTreeMap::new();
    for line in env_text.lines() {
        let (name, value) = line.split_once('=').unwrap_or((line, ""));
        let name = if name.starts_with("KEYGATE_") {
            name.to_owned()
        } else {
            format!("KEYGATE_{name}")
        };
        env.insert(name, value.to_owned());
    }

    match load_str(toml, ORIGIN, &env) {
        Ok(config) => {
            if let Some(tokens) = config.token_settings()
                && let Err(e) = Tokens::new(&tokens)
            {
                panic!("a loaded config's token settings are refused: {e}");
            }
            let table = RouteTable::new(
                config.routes.clone(),
                config.auth.default_scopes.clone(),
                config.auth.method_scopes,
            );
            assert_eq!(table.len(), config.routes.len());
        }
        Err(errors) => {
            assert!(!errors.is_empty(), "an error result without errors");
            for error in &errors {
                assert!(
                    !error.path.trim().is_empty(),
                    "an error without a path: {error:?}"
                );
                assert!(
                    !error.message.trim().is_empty(),
                    "an error without a message: {error:?}"
                );
            }
            // The admin token is a secret: a long random-looking one that
            // the input does not spell anywhere else must not be echoed.
            if let Some(token) = env.get(ADMIN_TOKEN_VAR) {
                let elsewhere = toml.contains(token.as_str())
                    || env.iter().any(|(k, v)| {
                        k.contains(token.as_str()) || (k != ADMIN_TOKEN_VAR && v.contains(token.as_str()))
                    });
                if token.len() >= 16 && token.bytes().all(|b| b.is_ascii_alphanumeric()) && !elsewhere {
                    let printed = errors.to_string();
                    assert!(
                        !printed.contains(token.as_str()),
                        "the admin token leaked:\n{printed}"
                    );
                }
            }
        }
    }
});
