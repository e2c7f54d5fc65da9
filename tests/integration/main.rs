//! keygate's integration tests: one binary, one file per surface.
//! The binary is driven as a binary (`CARGO_BIN_EXE_keygate`) against real
//! SQLite files in temp dirs.

#![expect(
    clippy::unwrap_used,
    reason = "test harness helpers: a panic is a test failure with its message"
)]

mod admin_errors;
mod admin_keys;
mod admin_openapi;
mod admin_sessions;
mod browser_smoke;
mod cli_check_config;
mod cli_keys;
mod connections;
mod console;
mod console_browser;
mod error_shapes;
mod metrics;
mod outage;
mod proxy_auth;
mod proxy_raw;
mod ratelimit;
mod replicas;
mod serve_binary;
mod support;
mod tokens;
mod usage_history;
