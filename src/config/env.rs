//! `KEYGATE_<SECTION>__<KEY>` overrides, laid over the parsed TOML tree
//! before it is read into the mirror, so an override is checked exactly like
//! the file (unknown keys and wrong types included).
//!
//! Only variables whose name contains `__` after `KEYGATE_` are overrides;
//! `KEYGATE_CONFIG`, `KEYGATE_ADMIN_TOKEN`, `KEYGATE_TEST_PG` and the like are
//! not. Segments are lowercased; a number segment indexes an array
//! (`KEYGATE_ROUTES__0__PATH`). A value is used as a TOML value (number,
//! boolean, array, quoted string) when it parses as one and the file's value
//! at that key, if any, has the same type; otherwise it is a plain string.
//! When a key is absent from the file, [`super::load_str`] retries an
//! override as a string if its TOML reading is the wrong type for the field.
//!
//! Variables are read through [`EnvSource`], once, at load: the process
//! environment in production, a map in tests. Nothing here writes the
//! environment.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use super::ConfigError;
use super::raw::{Seg, dotted, index_path};

/// The prefix every keygate variable starts with.
pub const PREFIX: &str = "KEYGATE_";
/// The separator between segments of an override name.
pub const SEPARATOR: &str = "__";

/// Where environment variables come from.
pub trait EnvSource {
    /// One variable; `None` when unset or not valid UTF-8.
    fn var(&self, name: &str) -> Option<String>;
    /// Every variable whose name and value are valid UTF-8, in any order.
    fn vars(&self) -> Vec<(String, String)>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }

    fn vars(&self) -> Vec<(String, String)> {
        std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect()
    }
}

/// A fixed set of variables (tests, and callers that build their own).
impl EnvSource for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }

    fn vars(&self) -> Vec<(String, String)> {
        self.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// One override variable.
#[derive(Debug, Clone)]
pub(crate) struct Override {
    /// The variable name, e.g. `KEYGATE_SERVER__LISTEN`.
    pub var: String,
    /// Lowercased segments, e.g. `["server", "listen"]`.
    pub segments: Vec<String>,
    /// The value as given.
    pub text: String,
    /// The value read as a TOML value, when it is one (a quoted string
    /// included, which is then unquoted).
    pub typed: Option<toml::Value>,
}

/// An override once laid over the tree: where it landed and how.
#[derive(Debug, Clone)]
pub(crate) struct Applied {
    /// The variable name.
    pub var: String,
    /// Where it landed, e.g. `routes[0].path`.
    pub path: Vec<Seg>,
    /// Whether the TOML reading (not the plain string) was used.
    pub used_typed: bool,
}

impl Applied {
    /// How errors name this override: `KEYGATE_SERVER__LISEN (server.lisen)`.
    pub(crate) fn label(&self, path: &str) -> String {
        format!("{} ({path})", self.var)
    }
}

/// Reads the override variables, sorted by name (so the result does not
/// depend on the environment's order). Malformed names are errors.
pub(crate) fn collect(env: &dyn EnvSource) -> (Vec<Override>, Vec<ConfigError>) {
    let mut vars = env.vars();
    vars.sort();
    let mut overrides = Vec::new();
    let mut errors = Vec::new();
    for (var, text) in vars {
        let Some(rest) = var.strip_prefix(PREFIX) else {
            continue;
        };
        if !rest.contains(SEPARATOR) {
            continue;
        }
        let segments: Vec<String> = rest.split(SEPARATOR).map(str::to_ascii_lowercase).collect();
        if segments.iter().any(String::is_empty) {
            errors.push(ConfigError::new(
                var.clone(),
                "malformed override name: segments are separated by exactly two underscores and none may be empty, e.g. KEYGATE_SERVER__LISTEN",
            ));
            continue;
        }
        let typed = parse_value(&text);
        overrides.push(Override {
            var,
            segments,
            text,
            typed,
        });
    }
    (overrides, errors)
}

/// `text` read as a single TOML value, if it is one.
fn parse_value(text: &str) -> Option<toml::Value> {
    toml::Value::deserialize(toml::de::ValueDeserializer::new(text.trim())).ok()
}

/// Lays the overrides over `tree`. `as_string` lists (by index) overrides to
/// use as plain strings whatever they parse as. Returns where each override
/// landed (`None` for one that could not be applied) and the errors.
pub(crate) fn apply(
    tree: &mut toml::Table,
    overrides: &[Override],
    as_string: &BTreeSet<usize>,
) -> (Vec<Option<Applied>>, Vec<ConfigError>) {
    let mut applied = Vec::with_capacity(overrides.len());
    let mut errors = Vec::new();
    for (i, o) in overrides.iter().enumerate() {
        let existing = lookup(tree, &o.segments);
        let typed = match (&o.typed, existing) {
            _ if as_string.contains(&i) => None,
            (Some(v), Some(old)) if v.same_type(old) => Some(v.clone()),
            (Some(_), Some(_)) | (None, _) => None,
            (Some(v), None) => Some(v.clone()),
        };
        let used_typed = typed.is_some();
        let value = typed.unwrap_or_else(|| toml::Value::String(o.text.clone()));
        let mut path = Vec::new();
        match set(tree, &o.segments, value, &mut path) {
            Ok(()) => applied.push(Some(Applied {
                var: o.var.clone(),
                path,
                used_typed,
            })),
            Err(message) => {
                let label = format!("{} ({})", o.var, o.segments.join("."));
                errors.push(ConfigError::new(label, message));
                applied.push(None);
            }
        }
    }
    (applied, errors)
}

/// The value at `segments` in the tree, if any (a number segment indexes an
/// array).
fn lookup<'t>(tree: &'t toml::Table, segments: &[String]) -> Option<&'t toml::Value> {
    let (first, rest) = segments.split_first()?;
    let mut node = tree.get(first)?;
    for seg in rest {
        node = match node {
            toml::Value::Table(t) => t.get(seg)?,
            toml::Value::Array(items) => items.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(node)
}

/// An empty container for the segment after `next`: an array when `next` is
/// a number, else a table.
fn container_for(next: &str) -> toml::Value {
    if next.parse::<usize>().is_ok() {
        toml::Value::Array(Vec::new())
    } else {
        toml::Value::Table(toml::Table::new())
    }
}

/// Sets `value` at `segments` under `table`, creating missing tables (and
/// arrays, for a number segment), recording the path taken.
fn set(
    table: &mut toml::Table,
    segments: &[String],
    value: toml::Value,
    path: &mut Vec<Seg>,
) -> Result<(), String> {
    let Some((key, rest)) = segments.split_first() else {
        return Err("empty override path".into());
    };
    path.push(Seg::Key(key.clone()));
    let Some(next) = rest.first() else {
        table.insert(key.clone(), value);
        return Ok(());
    };
    let node = table.entry(key.clone()).or_insert_with(|| container_for(next));
    set_in(node, rest, value, path)
}

fn set_in(
    node: &mut toml::Value,
    segments: &[String],
    value: toml::Value,
    path: &mut Vec<Seg>,
) -> Result<(), String> {
    match node {
        toml::Value::Table(table) => set(table, segments, value, path),
        toml::Value::Array(items) => {
            let Some((seg, rest)) = segments.split_first() else {
                return Err("empty override path".into());
            };
            let here = dotted(path);
            let Ok(index) = seg.parse::<usize>() else {
                return Err(format!(
                    "{here} is an array: name an entry by its index, e.g. {}",
                    index_path(&here, 0)
                ));
            };
            let len = items.len();
            if index > len {
                return Err(format!(
                    "{here} has {len} entries: index {index} would leave a gap (use {len} to add one)"
                ));
            }
            path.push(Seg::Index(index));
            match rest.first() {
                None if index == len => items.push(value),
                None => items[index] = value,
                Some(next) => {
                    if index == len {
                        items.push(container_for(next));
                    }
                    set_in(&mut items[index], rest, value, path)?;
                }
            }
            Ok(())
        }
        other => Err(format!(
            "{} is a {}, not a table: it has no key {:?}",
            dotted(path),
            other.type_str(),
            segments.first().map_or("", String::as_str)
        )),
    }
}

/// Renders an override's own path, e.g. `routes[0].path`.
pub(crate) fn render(a: &Applied) -> String {
    dotted(&a.path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn only_double_underscore_names_are_overrides() {
        let (overrides, errors) = collect(&env(&[
            ("KEYGATE_CONFIG", "x.toml"),
            ("KEYGATE_ADMIN_TOKEN", "t"),
            ("KEYGATE_TEST_PG", "postgres://"),
            ("OTHER__X", "1"),
            ("KEYGATE_SERVER__LISTEN", "0.0.0.0:1"),
            ("KEYGATE_ROUTES__0__PATH", "/x"),
        ]));
        assert!(errors.is_empty());
        let names: Vec<_> = overrides.iter().map(|o| o.var.as_str()).collect();
        assert_eq!(names, ["KEYGATE_ROUTES__0__PATH", "KEYGATE_SERVER__LISTEN"]);
        assert_eq!(overrides[0].segments, ["routes", "0", "path"]);
    }

    #[test]
    fn malformed_names_are_errors() {
        let (_, errors) = collect(&env(&[
            ("KEYGATE_SERVER____LISTEN", "x"),
            ("KEYGATE_SERVER__", "x"),
        ]));
        assert_eq!(errors.len(), 2);
    }

    #[test]
    fn values_take_the_files_type() {
        let mut tree: toml::Table = toml::from_str(
            r#"
            [server]
            listen = "127.0.0.1:1"
            max_header_bytes = 100
            [keys]
            default_prefix = "kg_"
            "#,
        )
        .unwrap();
        let (overrides, _) = collect(&env(&[
            ("KEYGATE_SERVER__MAX_HEADER_BYTES", "2048"),
            ("KEYGATE_KEYS__DEFAULT_PREFIX", "123"),
            ("KEYGATE_AUTH__HEADERS", r#"["X-Key"]"#),
            ("KEYGATE_ROUTES__0__PATH", "/a"),
            ("KEYGATE_ROUTES__1__PATH", "/b"),
        ]));
        let (applied, errors) = apply(&mut tree, &overrides, &BTreeSet::new());
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(tree["server"]["max_header_bytes"].as_integer(), Some(2048));
        assert_eq!(tree["keys"]["default_prefix"].as_str(), Some("123"));
        assert_eq!(tree["auth"]["headers"][0].as_str(), Some("X-Key"));
        assert_eq!(tree["routes"][1]["path"].as_str(), Some("/b"));
        let paths: Vec<_> = applied.iter().flatten().map(render).collect();
        assert_eq!(
            paths,
            [
                "auth.headers",
                "keys.default_prefix",
                "routes[0].path",
                "routes[1].path",
                "server.max_header_bytes"
            ]
        );
    }

    #[test]
    fn impossible_paths_are_errors() {
        let mut tree: toml::Table =
            toml::from_str("server.listen = \"x\"\nroutes = [{ path = \"/\" }]").unwrap();
        let (overrides, _) = collect(&env(&[
            ("KEYGATE_SERVER__LISTEN__PORT", "1"),
            ("KEYGATE_ROUTES__5__PATH", "/x"),
            ("KEYGATE_ROUTES__PATH", "/x"),
        ]));
        let (_, errors) = apply(&mut tree, &overrides, &BTreeSet::new());
        let paths: Vec<_> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "KEYGATE_ROUTES__5__PATH (routes.5.path)",
                "KEYGATE_ROUTES__PATH (routes.path)",
                "KEYGATE_SERVER__LISTEN__PORT (server.listen.port)",
            ]
        );
        assert!(errors[0].message.contains("gap"), "{}", errors[0].message);
    }
}
