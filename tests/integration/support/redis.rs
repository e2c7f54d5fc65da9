//! The `KEYGATE_TEST_REDIS` server for rate-limit tests. Those tests are
//! `#[ignore = "needs Redis: …"]`; run (`--include-ignored`) without the
//! variable they fail, and with Redis unreachable the gateway under test
//! falls back to local limits and their assertions on shared counts fail.

use std::net::SocketAddr;

pub const REDIS_ENV: &str = "KEYGATE_TEST_REDIS";

/// The Redis URL; panics, saying what to set, when `KEYGATE_TEST_REDIS` is
/// unset.
pub fn url() -> String {
    match std::env::var(REDIS_ENV) {
        Ok(url) if !url.trim().is_empty() => url,
        _ => panic!("{REDIS_ENV} is not set: set it to redis://127.0.0.1:6379 to run the Redis tests"),
    }
}

/// The `host:port` of a `redis://[…@]host:port[/db]` URL, for a chaos proxy.
pub fn addr(url: &str) -> SocketAddr {
    let rest = url.strip_prefix("redis://").expect("a redis:// URL");
    let authority = rest.split('/').next().unwrap_or(rest);
    let host_port = authority.rsplit('@').next().unwrap_or(authority);
    let host_port = if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:6379")
    };
    host_port
        .parse()
        .unwrap_or_else(|e| panic!("{REDIS_ENV} must name an IP:port ({host_port}): {e}"))
}

/// A key prefix no other test uses.
pub fn unique_prefix() -> String {
    format!("keygate-test:{}:", ulid::Ulid::new())
}
