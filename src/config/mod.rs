//! Configuration: one TOML file plus `KEYGATE_<SECTION>__<KEY>` environment
//! overrides → a validated [`Config`] that builds every module's own
//! settings.
//!
//! Loading runs in four steps, each collecting every problem rather than
//! stopping at the first (STYLE §3.11):
//! 1. the file is parsed as TOML (a syntax error is the one problem that
//!    stops here, reported with its line and column);
//! 2. [`env`](mod@env) lays the overrides over the parsed tree;
//! 3. `raw` reads the tree into a lenient serde mirror, noting every
//!    unknown key and every value of the wrong type;
//! 4. `resolve` fills defaults, parses durations, compiles globs and checks
//!    every value and cross-reference, once per load (an override whose
//!    reading is ambiguous is settled before, by a type check of the mirror
//!    that reads no file).
//!
//! Each problem is a [`ConfigError`] with its TOML key path
//! (`routes[2].path`), or, when the value came from the environment, the
//! variable and the path (`KEYGATE_SERVER__LISEN (server.lisen)`).
//!
//! This is wiring: nothing below it imports `config`. Settings types whose
//! owning module has not landed yet live in [`settings`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::keys::KeySettings;
use crate::store::StoreSettings;

pub mod env;
mod raw;
mod resolve;
pub mod settings;
#[cfg(test)]
mod tests;

pub use env::{EnvSource, ProcessEnv};
pub use settings::{
    AdminSettings, AuthRules, CredentialHeader, CredentialScheme, ERROR_CODES, LogSettings, ServerSettings,
};
// The owning modules' settings types that `Config` holds, re-exported so
// wiring code can name every field's type from here.
pub use crate::auth::AuthSettings;
pub use crate::auth::usage::UsageSettings;
pub use crate::policy::{LimitScope, PathGlob, PlanLimit, PlanSettings, RouteSettings};
pub use crate::problem::{ErrorTemplate, TEMPLATE_PLACEHOLDERS};
pub use crate::proxy::upstream::UpstreamSettings;
pub use crate::ratelimit::{Backend as RateLimitBackend, RateLimitHeaders, RateLimitSettings, RedisSettings};
pub use crate::token::TokenSettings;

/// The config file used when neither `--config` nor `KEYGATE_CONFIG` names one.
pub const DEFAULT_CONFIG_PATH: &str = "config/keygate.toml";
/// The variable naming the config file.
pub const CONFIG_PATH_VAR: &str = "KEYGATE_CONFIG";
/// The variable carrying a plain admin token (SPEC §7).
pub const ADMIN_TOKEN_VAR: &str = "KEYGATE_ADMIN_TOKEN";

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[server]`.
    pub server: ServerSettings,
    /// `[database]`.
    pub database: StoreSettings,
    /// `[upstream]`.
    pub upstream: UpstreamSettings,
    /// `[keys]`.
    pub keys: KeySettings,
    /// `[auth]`: credential headers and default scopes.
    pub auth: AuthRules,
    /// The authenticator's settings: `[auth]`'s failure throttles and
    /// argon2 concurrency, and `[cache]`.
    pub authenticator: AuthSettings,
    /// `[rate_limit]`.
    pub rate_limit: RateLimitSettings,
    /// `[[routes]]`, first match wins, in file order.
    pub routes: Vec<RouteSettings>,
    /// `[plans.<name>]` (the seed plans free, pro and enterprise when the
    /// file has no `[plans]`).
    pub plans: BTreeMap<String, PlanSettings>,
    /// `[errors.<code>]`, by code.
    pub errors: BTreeMap<String, ErrorTemplate>,
    /// `[usage]`.
    pub usage: UsageSettings,
    /// `[log]`.
    pub log: LogSettings,
    /// `[tokens]`: the token exchange's settings, every key already parsed
    /// once; `None` when `tokens.enabled = false`. Read it through
    /// [`Config::token_settings`].
    pub tokens: Option<TokenSettings>,
    /// `[admin]` and `KEYGATE_ADMIN_TOKEN`.
    pub admin: AdminSettings,
}

impl Config {
    /// Whether a plan of this name is defined.
    pub fn has_plan(&self, name: &str) -> bool {
        self.plans.contains_key(name)
    }

    /// The token exchange's settings, from `[tokens]`: `None` when
    /// `tokens.enabled = false`. The keys are `[[tokens.keys]]` in file order
    /// (the first signs), then `tokens.signing_key` as one more HS256 key;
    /// [`crate::token::Tokens::new`] accepts them (resolution built them).
    pub fn token_settings(&self) -> Option<TokenSettings> {
        self.tokens.clone()
    }
}

impl Default for Config {
    /// The configuration of an empty file with no environment overrides.
    fn default() -> Self {
        resolve::resolve(&raw::RawConfig::default(), None)
            .config
            .expect("the built-in defaults are valid (checked by config::tests)")
    }
}

/// One problem in the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    /// Where: a TOML key path (`routes[2].path`), an override
    /// (`KEYGATE_SERVER__LISEN (server.lisen)`), or the file itself
    /// (`config/keygate.toml:3:7` for a syntax error).
    pub path: String,
    /// What is wrong and how to fix it. Never contains a secret.
    pub message: String,
}

impl ConfigError {
    /// A problem at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Every problem found; displays as one `path: message` line per problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    /// The problems, in order.
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.0.iter()
    }

    /// How many problems.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none (never true for an error returned by [`load`]).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(error: ConfigError) -> Self {
        Self(vec![error])
    }
}

/// The config file to read: `explicit` (`--config`), else `$KEYGATE_CONFIG`,
/// else `config/keygate.toml`.
pub fn config_path(explicit: Option<&Path>, env: &dyn EnvSource) -> PathBuf {
    if let Some(path) = explicit {
        return path.to_path_buf();
    }
    match env.var(CONFIG_PATH_VAR) {
        Some(path) if !path.trim().is_empty() => PathBuf::from(path),
        _ => PathBuf::from(DEFAULT_CONFIG_PATH),
    }
}

/// Reads, overrides and validates the config file at `path`.
pub fn load(path: &Path, env: &dyn EnvSource) -> Result<Config, ConfigErrors> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        let message = if e.kind() == std::io::ErrorKind::NotFound {
            format!(
                "no such config file: create it (the commented default is {DEFAULT_CONFIG_PATH} in the keygate repository), or name another with --config PATH or {CONFIG_PATH_VAR}"
            )
        } else {
            format!("cannot read the config file: {e}")
        };
        ConfigError::new(origin.clone(), message)
    })?;
    load_str(&text, &origin, env)
}

/// Validates config text; `origin` names it in syntax errors (a file path).
pub fn load_str(text: &str, origin: &str, env: &dyn EnvSource) -> Result<Config, ConfigErrors> {
    let file: toml::Table = toml::from_str(text).map_err(|e| syntax_error(text, origin, &e))?;
    let (overrides, name_errors) = env::collect(env);
    let admin_token = env.var(ADMIN_TOKEN_VAR);

    // An override that reads as a number, boolean or array but lands on a
    // string field (one the file leaves unset, so its type could not be
    // checked up front) is used as the plain string; if the string is the
    // wrong type too, the first reading's message stands. Which readings
    // land wrong is asked of the mirror alone (a type check that reads no
    // file), so the file is resolved, and its key files read, once.
    let mut as_string = BTreeSet::new();
    let mut overlay = Overlay::new(&file, &overrides, &as_string);
    let retry = overlay.typed_mismatches(&admin_token);
    if !retry.is_empty() {
        let strings = Overlay::new(&file, &overrides, &retry);
        let still = strings.string_mismatches(&retry, &admin_token);
        as_string = retry.difference(&still).copied().collect();
        overlay = if still.is_empty() {
            strings
        } else {
            Overlay::new(&file, &overrides, &as_string)
        };
    }
    let pass = overlay.resolve(&file, &admin_token);

    let mut errors: Vec<(usize, ConfigError)> = name_errors.into_iter().map(|e| (0, e)).collect();
    errors.extend(pass.errors);
    errors.sort_by_key(|(rank, _)| *rank);
    match pass.config {
        Some(config) if errors.is_empty() => Ok(config),
        _ => Err(ConfigErrors(errors.into_iter().map(|(_, e)| e).collect())),
    }
}

/// The file with the overrides laid over it, read into the mirror.
struct Overlay {
    applied: Vec<Option<env::Applied>>,
    /// Overrides that could not be applied.
    errors: Vec<ConfigError>,
    /// The mirror and the unknown keys, or why the tree is no config.
    read: Result<(raw::RawConfig, Vec<Vec<raw::Seg>>), String>,
}

impl Overlay {
    /// Lays `overrides` over `file`, those in `as_string` as plain strings.
    fn new(file: &toml::Table, overrides: &[env::Override], as_string: &BTreeSet<usize>) -> Self {
        let mut tree = file.clone();
        let (applied, errors) = env::apply(&mut tree, overrides, as_string);
        Self {
            applied,
            errors,
            read: raw::from_tree(tree),
        }
    }

    /// Paths of values with the wrong type, from a type check of the
    /// mirror that reads no file.
    fn type_errors(&self, admin_token: &Option<String>) -> BTreeSet<String> {
        match &self.read {
            Ok((raw, _)) => resolve::type_errors(raw, admin_token.clone()),
            Err(_) => BTreeSet::new(),
        }
    }

    /// Overrides whose TOML reading landed on a value of the wrong type.
    fn typed_mismatches(&self, admin_token: &Option<String>) -> BTreeSet<usize> {
        if !self.applied.iter().flatten().any(|a| a.used_typed) {
            return BTreeSet::new();
        }
        let type_errors = self.type_errors(admin_token);
        self.applied
            .iter()
            .enumerate()
            .filter_map(|(i, a)| {
                let a = a.as_ref()?;
                (a.used_typed && type_errors.contains(&env::render(a))).then_some(i)
            })
            .collect()
    }

    /// Of `tried` (overrides used as strings here), those still of the
    /// wrong type.
    fn string_mismatches(&self, tried: &BTreeSet<usize>, admin_token: &Option<String>) -> BTreeSet<usize> {
        let type_errors = self.type_errors(admin_token);
        tried
            .iter()
            .copied()
            .filter(|&i| {
                self.applied
                    .get(i)
                    .and_then(Option::as_ref)
                    .is_some_and(|a| type_errors.contains(&env::render(a)))
            })
            .collect()
    }

    /// Resolves the mirror: the config, or every problem, paths attributed
    /// to the overrides that set them.
    fn resolve(self, file: &toml::Table, admin_token: &Option<String>) -> Pass {
        let applied = self.applied;
        let mut errors: Vec<(usize, ConfigError)> = self.errors.into_iter().map(|e| (0, e)).collect();
        let (raw, unknown) = match self.read {
            Ok(read) => read,
            Err(message) => {
                errors.push((0, ConfigError::new("(file)", message)));
                return Pass { config: None, errors };
            }
        };
        report_unknown(file, &applied, unknown, &mut errors);
        let outcome = resolve::resolve(&raw, admin_token.clone());
        for mut error in outcome.errors {
            let rank = section_rank(&error.path);
            if let Some(a) = covering(&applied, &error.path) {
                error.path = a.label(&error.path);
            }
            errors.push((rank, error));
        }
        Pass {
            config: outcome.config,
            errors,
        }
    }
}

/// What loading produced.
struct Pass {
    config: Option<Config>,
    /// Errors with their section rank (for ordering), paths already
    /// attributed to overrides.
    errors: Vec<(usize, ConfigError)>,
}

/// Reports each unknown key where the user wrote it: the file, the
/// override that set it, or both.
fn report_unknown(
    file: &toml::Table,
    applied: &[Option<env::Applied>],
    unknown: Vec<Vec<raw::Seg>>,
    errors: &mut Vec<(usize, ConfigError)>,
) {
    const UNKNOWN: &str = "unknown key: keygate has no such setting (check the spelling and the section; config/keygate.toml lists every key)";
    for segs in unknown {
        let path = raw::dotted(&segs);
        let rank = section_rank(&path);
        let in_file = raw::exists(file, &segs);
        if let Some(a) = covering(applied, &path) {
            // The override replaced the file's value; both are mistakes.
            if in_file {
                errors.push((rank, ConfigError::new(path.clone(), UNKNOWN)));
            }
            errors.push((rank, ConfigError::new(a.label(&path), UNKNOWN)));
            continue;
        }
        if in_file {
            errors.push((rank, ConfigError::new(path.clone(), UNKNOWN)));
        }
        let below: Vec<&env::Applied> = applied
            .iter()
            .flatten()
            .filter(|a| is_under(&env::render(a), &path))
            .collect();
        for a in &below {
            errors.push((rank, ConfigError::new(a.label(&env::render(a)), UNKNOWN)));
        }
        if !in_file && below.is_empty() {
            errors.push((rank, ConfigError::new(path, UNKNOWN)));
        }
    }
}

/// Whether `path` is `ancestor` or inside it (`routes[0].path` is inside
/// `routes[0]` and `routes`, not inside `route`).
fn is_under(path: &str, ancestor: &str) -> bool {
    path.strip_prefix(ancestor)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
}

/// The override, if any, whose value `path` lies in (the last one applied
/// wins, as it overwrote the others).
fn covering<'a>(applied: &'a [Option<env::Applied>], path: &str) -> Option<&'a env::Applied> {
    applied
        .iter()
        .rev()
        .flatten()
        .find(|a| is_under(path, &env::render(a)))
}

/// Orders errors by section as the default file lists them; unknown top-level
/// keys and environment problems first.
fn section_rank(path: &str) -> usize {
    const SECTIONS: [&str; 14] = [
        "server",
        "database",
        "upstream",
        "keys",
        "auth",
        "cache",
        "rate_limit",
        "routes",
        "plans",
        "errors",
        "usage",
        "log",
        "tokens",
        "admin",
    ];
    let top = path.split(['.', '[']).next().unwrap_or(path);
    SECTIONS.iter().position(|s| *s == top).map_or(0, |i| i + 1)
}

/// A TOML syntax error, located by line and column.
fn syntax_error(text: &str, origin: &str, error: &toml::de::Error) -> ConfigErrors {
    let start = error.span().map_or(0, |span| span.start).min(text.len());
    let before = text.get(..start).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    ConfigError::new(
        format!("{origin}:{line}:{column}"),
        format!("TOML syntax error: {}", error.message().trim_end()),
    )
    .into()
}
