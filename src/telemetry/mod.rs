//! Logging: the tracing subscriber (text or JSON lines on stderr); and
//! [`metrics`], the Prometheus registry.
//!
//! Logs never carry secrets: call sites log key ids and short prefixes only,
//! and secret types redact themselves in `Debug`.

use tracing_subscriber::EnvFilter;

pub mod metrics;

/// How log lines are written (`log.format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber writing to stderr. `level` is a tracing
/// filter (`info`, `keygate=debug,warn`); `RUST_LOG` overrides it. Calling it
/// twice is harmless (the second call does nothing), so tests and embedded
/// uses can call it freely.
pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // try_init fails only when a subscriber is already set: keep that one.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
