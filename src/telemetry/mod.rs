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
    let from_env = std::env::var(EnvFilter::DEFAULT_ENV)
        .ok()
        .map(|raw| trim_directives(&raw))
        .filter(|filter| !filter.is_empty());
    // A RUST_LOG that does not parse falls back to `level`, and says so
    // once the subscriber is up (a typo must not silently change logging).
    let mut refused_env = None;
    let filter = match from_env.map(|env| (EnvFilter::try_new(&env), env)) {
        Some((Ok(filter), _)) => filter,
        Some((Err(e), env)) => {
            refused_env = Some((env, e));
            EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"))
        }
        None => EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // try_init fails only when a subscriber is already set: keep that one.
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    if let (Ok(()), Some((env, error))) = (installed, refused_env) {
        tracing::warn!(
            rust_log = %env,
            %error,
            level,
            "RUST_LOG is not a valid log filter; logging with log.level instead"
        );
    }
}

/// The filter with each `,`-separated directive trimmed and empty ones
/// dropped: what tracing-subscriber means by it, spelt so that it reads it
/// that way. Its parser trims a directive but then cuts the untrimmed text
/// at the trimmed text's offsets, so `info, keygate=debug` lost a character
/// of its target (a refusal, or a filter for target ` info`) and
/// `" é=info"` panicked (issue 18, found by the `config_load` fuzz target).
/// `log.level` and `RUST_LOG` both pass through it.
pub fn trim_directives(filter: &str) -> String {
    let directives: Vec<&str> = filter
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    directives.join(",")
}
