//! `manage::import`: each line of a `keys import` file (or an admin API
//! import body) is a JSON object from outside, holding a secret.
//!
//! Properties, for any line:
//! - checking it never panics;
//! - a line that passes becomes exactly what it says: the key is the
//!   line's `key` string, its prefix is the named one (or the documented
//!   default: up to the last `_` in the first 16 characters), prefix and
//!   short prefix start the key, the name defaults to `imported`, the plan
//!   to the default and is a known one, every scope is valid, the status is
//!   `active` or `inactive` as asked, metadata is an object;
//! - a refused line's problem is non-empty and never echoes the secret (a
//!   long alphanumeric key the line spells only once).
#![no_main]

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use keygate::keys::format::{SHORT_PREFIX_LEN, default_imported_prefix};
use keygate::keys::model::validate_scope;
use keygate::keys::{KeySource, KeyStatus};
use keygate::manage::import::check_import_line;
use libfuzzer_sys::fuzz_target;

const DEFAULT_PLAN: &str = "free";

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_795_000_000, 0).expect("in range")
}

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let plans: BTreeSet<String> = ["free", "pro", "enterprise"].map(str::to_owned).into();
    let value: Option<serde_json::Value> = serde_json::from_str(raw).ok();
    let field = |name: &str| value.as_ref().and_then(|v| v.get(name)).cloned();
    match check_import_line(raw, now(), Some(DEFAULT_PLAN), &plans) {
        Ok((secret, key)) => {
            let plain = secret.expose();
            let given = field("key");
            assert_eq!(given.as_ref().and_then(|k| k.as_str()), Some(plain), "{raw:?}");
            let want_prefix = match field("prefix") {
                Some(serde_json::Value::String(p)) => p,
                _ => default_imported_prefix(plain).to_owned(),
            };
            assert_eq!(key.prefix, want_prefix, "{raw:?}");
            assert_eq!(key.short_prefix.len(), SHORT_PREFIX_LEN, "{raw:?}");
            assert!(
                plain.starts_with(&format!("{}{}", key.prefix, key.short_prefix)),
                "{raw:?}"
            );
            if field("name").is_none_or(|n| n.is_null()) {
                assert_eq!(key.name, "imported");
            }
            assert!(key.plan.as_ref().is_some_and(|p| plans.contains(p)), "{raw:?}");
            if field("plan").is_none_or(|p| p.is_null()) {
                assert_eq!(key.plan.as_deref(), Some(DEFAULT_PLAN));
            }
            assert!(key.scopes.iter().all(|s| validate_scope(s).is_ok()), "{raw:?}");
            let want_status = match field("status").as_ref().and_then(|s| s.as_str()) {
                Some("inactive") => KeyStatus::Inactive,
                _ => KeyStatus::Active,
            };
            assert_eq!(key.status, want_status, "{raw:?}");
            assert_eq!(key.source, KeySource::Imported);
            assert!(key.metadata.is_object(), "{raw:?}");
            assert_eq!(key.created_at, now());
        }
        Err(problem) => {
            assert!(!problem.trim().is_empty(), "{raw:?}");
            if let Some(serde_json::Value::String(plain)) = field("key") {
                let secret_like = plain.len() >= 16 && plain.bytes().all(|b| b.is_ascii_alphanumeric());
                if secret_like && raw.matches(plain.as_str()).count() == 1 {
                    assert!(!problem.contains(plain.as_str()), "the secret leaked: {problem}");
                }
            }
        }
    }
});
