//! `keys import`: existing keys, one JSON object per line, so a gateway put in
//! front of a running API accepts the keys its customers already hold.
//!
//! The whole file is checked before anything is written: every bad line is
//! reported with its line number, duplicates inside the file and against the
//! store are refused, and the keys are written in one transaction. Imported
//! secrets have unknown entropy, so they are hashed with the (expensive)
//! imported parameter set, on all cores.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::{DateTime, Utc};
use rayon::prelude::*;
use serde::Deserialize;

use super::{KeyFields, KeyManager, ManageError};
use crate::keys::format::split_imported;
use crate::keys::{Key, KeyHash, KeyId, KeySource, KeyStatus, SecretString, hash};
use crate::store::{Actor, NewKey};

/// One line of an import file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportLine {
    /// The plain existing key.
    pub key: String,
    /// Name (default: "imported").
    #[serde(default)]
    pub name: Option<String>,
    /// Scopes.
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// Plan (default: `keys.default_plan`).
    #[serde(default)]
    pub plan: Option<String>,
    /// RFC 3339 expiry or null.
    #[serde(default)]
    pub expires_at: Option<String>,
    /// Owner.
    #[serde(default)]
    pub owner: Option<String>,
    /// The key's prefix, when the default rule (up to the last `_` in the
    /// first 16 characters) would be wrong.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Status: `active` (default) or `inactive`.
    #[serde(default)]
    pub status: Option<String>,
    /// Free-form JSON object.
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
}

/// Every bad line of an import file; nothing was written.
#[derive(Debug)]
pub struct ImportError {
    /// `(line number, problem)`, in file order.
    pub problems: Vec<(usize, String)>,
}

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "{n} bad line{}; nothing was imported",
            if n == 1 { "" } else { "s" }
        )?;
        for (line, problem) in &self.problems {
            write!(f, "\nline {line}: {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ImportError {}

/// Progress of the hashing phase: `(keys done, keys total)`.
pub type ImportProgress<'a> = &'a (dyn Fn(usize, usize) + Sync);

/// A line that parsed and validated, not yet hashed.
struct Checked {
    line: usize,
    secret: SecretString,
    key: Key,
}

impl KeyManager {
    /// Imports the JSON lines in `text`. `progress` is called from this task
    /// a few times a second while hashing. Returns the imported keys.
    pub async fn import(
        &self,
        text: &str,
        actor: &Actor,
        progress: ImportProgress<'_>,
    ) -> Result<Vec<Key>, ManageError> {
        let now = self.now();
        let mut problems = Vec::new();
        let mut checked = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            if raw.trim().is_empty() {
                continue;
            }
            match self.check_line(raw, now) {
                Ok(c) => match seen.get(c.secret.expose()) {
                    Some(first) => {
                        problems.push((line, format!("duplicate key: the same key is on line {first}")))
                    }
                    None => {
                        seen.insert(c.secret.expose().to_owned(), line);
                        checked.push(Checked { line, ..c });
                    }
                },
                Err(problem) => problems.push((line, problem)),
            }
        }
        drop(seen);
        if checked.is_empty() && problems.is_empty() {
            return Err(ManageError::invalid(
                "file",
                "the file holds no keys (one JSON object per line)",
            ));
        }

        // Keys already in the store: verify each line against stored secrets
        // sharing its short prefix (rarely any).
        let mut candidates = Vec::with_capacity(checked.len());
        for c in &checked {
            let found = self.store.find_candidates(&c.key.short_prefix).await?;
            candidates.push(found);
        }
        let (checked, duplicates) = tokio::task::spawn_blocking(move || {
            let duplicates: Vec<(usize, String)> = checked
                .par_iter()
                .zip(candidates.par_iter())
                .filter_map(|(c, found)| {
                    found
                        .iter()
                        .find(|cand| hash::verify_secret(c.secret.expose(), &cand.secret.hash))
                        .map(|cand| {
                            (
                                c.line,
                                format!("duplicate key: already in the store as {}", cand.key.id),
                            )
                        })
                })
                .collect();
            (checked, duplicates)
        })
        .await
        .map_err(|e| ManageError::Hash(e.to_string()))?;
        problems.extend(duplicates);
        if !problems.is_empty() {
            problems.sort_by_key(|(line, _)| *line);
            return Err(ImportError { problems }.into());
        }

        let hashed = self.hash_all(checked, progress).await?;
        let new_keys = hashed
            .into_iter()
            .map(|(key, hash)| NewKey { key, hash })
            .collect();
        Ok(self.store.import_keys(new_keys, actor).await?)
    }

    /// Parses and validates one line.
    fn check_line(&self, raw: &str, now: DateTime<Utc>) -> Result<Checked, String> {
        let (secret, key) = check_import_line(raw, now, self.settings.default_plan.as_deref(), &self.plans)?;
        Ok(Checked { line: 0, secret, key })
    }

    /// Hashes every secret with the imported parameter set on all cores,
    /// reporting progress from this task while the pool works.
    async fn hash_all(
        &self,
        checked: Vec<Checked>,
        progress: ImportProgress<'_>,
    ) -> Result<Vec<(Key, KeyHash)>, ManageError> {
        let total = checked.len();
        let done = Arc::new(AtomicUsize::new(0));
        let params = self.settings.imported_hash;
        let counter = Arc::clone(&done);
        let mut work = tokio::task::spawn_blocking(move || {
            checked
                .into_par_iter()
                .map(|c| {
                    let hashed = hash::hash_secret(&c.secret, &params);
                    counter.fetch_add(1, Ordering::Relaxed);
                    hashed.map(|h| (c.key, h))
                })
                .collect::<Result<Vec<_>, _>>()
        });
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
        let result = loop {
            tokio::select! {
                result = &mut work => break result,
                _ = tick.tick() => progress(done.load(Ordering::Relaxed), total),
            }
        };
        progress(total, total);
        result
            .map_err(|e| ManageError::Hash(e.to_string()))?
            .map_err(|e| ManageError::Hash(e.to_string()))
    }
}

/// Parses and validates one import line as `keys import` does, without a
/// store: the plain key and the key it would become at `now`, or the
/// problems reported for the line. `default_plan` fills a missing `plan`;
/// `plans` are the configured plan names.
///
/// The import command's own check; public (hidden) as the entry point of
/// the `import_line` fuzz target, which has no store to build a
/// [`KeyManager`] over.
#[doc(hidden)]
pub fn check_import_line(
    raw: &str,
    now: DateTime<Utc>,
    default_plan: Option<&str>,
    plans: &BTreeSet<String>,
) -> Result<(SecretString, Key), String> {
    // serde reads a struct from an array of its fields too (`["sk_…"]`);
    // a line is one JSON object (issue 18: found by the `import_line` fuzz
    // target). JSON that starts with `{` can only be an object.
    if !raw.trim_start().starts_with('{') {
        return Err("not a valid import object: a line must be one JSON object, {\"key\": ...}".to_owned());
    }
    let line: ImportLine =
        serde_json::from_str(raw).map_err(|e| format!("not a valid import object: {e}"))?;
    let secret = SecretString::new(line.key);
    let parts = split_imported(secret.expose(), line.prefix.as_deref()).map_err(|e| e.to_string())?;
    let name = line.name.unwrap_or_else(|| "imported".to_owned());
    let scopes = line.scopes.unwrap_or_default();
    let plan = line.plan.or_else(|| default_plan.map(str::to_owned));
    // An imported key may already have expired: its expiry is kept as
    // given, so only the other fields follow the rules of a new key.
    let problems = KeyFields {
        name: Some(&name),
        owner: line.owner.as_deref(),
        scopes: Some(&scopes),
        plan: plan.as_deref(),
        expires_at: None,
        prefix: None,
        metadata: line.metadata.as_ref(),
    }
    .problems(plans, now);
    if !problems.is_empty() {
        // Each message names its value; a line number locates them.
        let messages: Vec<String> = problems.into_iter().map(|e| e.message).collect();
        return Err(messages.join("; "));
    }
    let expires_at = match line.expires_at.as_deref() {
        None => None,
        Some(s) => Some(
            DateTime::parse_from_rfc3339(s)
                .map_err(|_| {
                    format!("expires_at {s:?} is not an RFC 3339 instant (e.g. 2027-01-31T00:00:00Z)")
                })?
                .with_timezone(&Utc),
        ),
    };
    let status = match line.status.as_deref() {
        None | Some("active") => KeyStatus::Active,
        Some("inactive") => KeyStatus::Inactive,
        Some(other) => {
            return Err(format!(
                "status {other:?} cannot be imported: use \"active\" or \"inactive\""
            ));
        }
    };
    let metadata = line.metadata.unwrap_or_else(|| serde_json::json!({}));
    let key = Key {
        id: KeyId::generate(now),
        name,
        owner: line.owner,
        scopes: scopes.into_iter().collect(),
        plan,
        status,
        expires_at,
        prefix: parts.prefix,
        short_prefix: parts.short_prefix,
        source: KeySource::Imported,
        metadata,
        created_at: now,
        updated_at: now,
        last_used_at: None,
        request_count: 0,
    };
    Ok((secret, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(raw: &str) -> Result<(SecretString, Key), String> {
        let now = DateTime::from_timestamp(1_795_000_000, 0).unwrap();
        check_import_line(raw, now, Some("free"), &["free".to_owned()].into())
    }

    /// Issue 18 (found by the `import_line` fuzz target): serde accepts a
    /// struct written as the array of its fields, so `["sk_live_…"]` was
    /// imported as a key; a line must be an object.
    #[test]
    fn a_line_is_one_json_object() {
        let (secret, key) = check(r#"  {"key": "sk_live_abcdefgh0001"}"#).unwrap();
        assert_eq!(secret.expose(), "sk_live_abcdefgh0001");
        assert_eq!(
            (key.prefix.as_str(), key.short_prefix.as_str()),
            ("sk_live_", "abcdefgh")
        );
        for bad in [
            r#"["sk_live_abcdefgh0001"]"#,
            r#"["sk_live_abcdefgh0001", "name", ["read"], "free"]"#,
            r#""sk_live_abcdefgh0001""#,
            "not json",
        ] {
            let problem = check(bad).map(|_| ()).unwrap_err();
            assert!(
                problem.starts_with("not a valid import object"),
                "{bad}: {problem}"
            );
        }
    }
}
