//! The rules a key's fields follow, written once for every way a key is
//! made or changed: the admin API, the CLI, `keys import` (and the console
//! to come) parse their own syntax — JSON members, flags, import lines —
//! and hand the values here, which names every problem at once with the
//! field's path in the request (`scopes[1]`) and what to do about it.
//!
//! The checks need no store: an edge that must report its own syntax
//! problems in the same answer (the admin API's 422 lists every bad field)
//! calls [`KeyFields::problems`] before it calls `manage`, and `manage`
//! calls it again before it writes, so no caller can skip it.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};

use crate::keys::KeyPrefix;
use crate::keys::model::{validate_scope, validate_text};

/// One bad field of a request: where it is and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field's path in the request, e.g. `scopes[1]` or `limit`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl FieldError {
    /// A bad field and why.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// The fields of a key as a request gives them; `None` is a field the
/// request leaves out (the key keeps it, or gets its default).
#[derive(Debug, Clone, Copy, Default)]
pub struct KeyFields<'a> {
    /// Human name.
    pub name: Option<&'a str>,
    /// Owner (`None` also when a patch clears it).
    pub owner: Option<&'a str>,
    /// Scopes in request order, so a problem names its index.
    pub scopes: Option<&'a [String]>,
    /// Plan name.
    pub plan: Option<&'a str>,
    /// Expiry, already parsed from the request's syntax.
    pub expires_at: Option<DateTime<Utc>>,
    /// Key prefix for generated secrets.
    pub prefix: Option<&'a str>,
    /// Free-form metadata.
    pub metadata: Option<&'a serde_json::Value>,
}

impl KeyFields<'_> {
    /// Every problem of these fields, in field order: `plans` are the
    /// configured plan names; an expiry must lie after `now`.
    pub fn problems(&self, plans: &BTreeSet<String>, now: DateTime<Utc>) -> Vec<FieldError> {
        let mut problems = Vec::new();
        if let Some(name) = self.name {
            if let Err(e) = validate_text("name", name) {
                problems.push(FieldError::new("name", e.to_string()));
            }
        }
        if let Some(owner) = self.owner {
            if let Err(e) = validate_text("owner", owner) {
                problems.push(FieldError::new("owner", e.to_string()));
            }
        }
        for (i, scope) in self.scopes.unwrap_or_default().iter().enumerate() {
            if let Err(e) = validate_scope(scope) {
                problems.push(FieldError::new(format!("scopes[{i}]"), e.to_string()));
            }
        }
        if let Some(plan) = self.plan {
            if let Err(message) = plan_problem(plans, plan) {
                problems.push(FieldError::new("plan", message));
            }
        }
        if self.expires_at.is_some_and(|at| at <= now) {
            problems.push(FieldError::new("expires_at", "the expiry is in the past"));
        }
        if let Some(prefix) = self.prefix {
            if let Err(e) = KeyPrefix::new(prefix) {
                problems.push(FieldError::new("prefix", e.to_string()));
            }
        }
        if self.metadata.is_some_and(|m| !m.is_object()) {
            problems.push(FieldError::new("metadata", "metadata must be a JSON object"));
        }
        problems
    }
}

/// Whether `plan` is one of `plans`; if not, the message that lists them.
fn plan_problem(plans: &BTreeSet<String>, plan: &str) -> Result<(), String> {
    if plans.contains(plan) {
        return Ok(());
    }
    let known: Vec<&str> = plans.iter().map(String::as_str).collect();
    Err(format!(
        "unknown plan {plan:?}: configured plans are {}",
        known.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    fn plans() -> BTreeSet<String> {
        ["free".to_owned(), "pro".to_owned()].into()
    }

    fn fields_of(fields: &KeyFields<'_>) -> Vec<String> {
        fields
            .problems(&plans(), now())
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    #[test]
    fn good_fields_have_no_problem() {
        let scopes = vec!["read".to_owned(), "orders:write".to_owned()];
        let metadata = serde_json::json!({"team": "a"});
        let fields = KeyFields {
            name: Some("ci"),
            owner: Some("acme"),
            scopes: Some(&scopes),
            plan: Some("pro"),
            expires_at: Some(now() + chrono::Duration::seconds(1)),
            prefix: Some("sk_live_"),
            metadata: Some(&metadata),
        };
        assert_eq!(fields_of(&fields), Vec::<String>::new());
        assert_eq!(fields_of(&KeyFields::default()), Vec::<String>::new());
    }

    #[test]
    fn every_problem_is_named_at_once_in_field_order() {
        let scopes = vec!["a b".to_owned(), "ok".to_owned(), "c\nd".to_owned()];
        let metadata = serde_json::json!([1]);
        let fields = KeyFields {
            name: Some(""),
            owner: Some("x\u{7}"),
            scopes: Some(&scopes),
            plan: Some("platinum"),
            expires_at: Some(now()),
            prefix: Some("sk-live"),
            metadata: Some(&metadata),
        };
        assert_eq!(
            fields_of(&fields),
            [
                "name",
                "owner",
                "scopes[0]",
                "scopes[2]",
                "plan",
                "expires_at",
                "prefix",
                "metadata"
            ]
        );
    }

    #[test]
    fn an_unknown_plan_lists_the_configured_ones() {
        let fields = KeyFields {
            plan: Some("gold"),
            ..KeyFields::default()
        };
        let problems = fields.problems(&plans(), now());
        assert_eq!(
            problems,
            [FieldError::new(
                "plan",
                "unknown plan \"gold\": configured plans are free, pro"
            )]
        );
        assert_eq!(
            problems[0].to_string(),
            "plan: unknown plan \"gold\": configured plans are free, pro"
        );
    }
}
