//! Required against granted: the plan-access and scope checks the proxy's
//! gate runs, in SPEC §4 order (plan access before scopes), after the key
//! is known to be valid, active and unexpired; and the method scopes
//! (`auth.method_scopes`) that [`super::routes::RouteTable`] folds into each
//! route's requirement.
//!
//! Which scopes a request requires is decided by the route table; rate
//! limits are left to `ratelimit`.

use std::collections::BTreeSet;

use http::Method;

use super::plans::PlanSettings;

/// Method scope of GET and HEAD.
pub const READ_SCOPE: &str = "read";
/// Method scope of POST, PUT and PATCH.
pub const WRITE_SCOPE: &str = "write";
/// Method scope of DELETE.
pub const DELETE_SCOPE: &str = "delete";

/// Which method scope, if any, a request method requires when
/// `auth.method_scopes` is on (SPEC §4, as in the TruCustom docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodClass {
    /// Every other method (OPTIONS, TRACE, CONNECT, extensions): no method
    /// scope; only the route's scopes apply.
    Other = 0,
    /// GET and HEAD.
    Read = 1,
    /// POST, PUT and PATCH.
    Write = 2,
    /// DELETE.
    Delete = 3,
}

impl MethodClass {
    /// How many classes there are.
    pub const COUNT: usize = 4;
    /// Every class, in discriminant order (so `ALL[c as usize] == c`).
    pub const ALL: [Self; Self::COUNT] = [Self::Other, Self::Read, Self::Write, Self::Delete];

    /// The class of a request method.
    pub fn of(method: &Method) -> Self {
        match *method {
            Method::GET | Method::HEAD => Self::Read,
            Method::POST | Method::PUT | Method::PATCH => Self::Write,
            Method::DELETE => Self::Delete,
            _ => Self::Other,
        }
    }
}

/// The scope a method class requires when `auth.method_scopes` is on.
pub fn method_scope(class: MethodClass) -> Option<&'static str> {
    match class {
        MethodClass::Read => Some(READ_SCOPE),
        MethodClass::Write => Some(WRITE_SCOPE),
        MethodClass::Delete => Some(DELETE_SCOPE),
        MethodClass::Other => None,
    }
}

/// The first scope of `required` (in its order) that `granted` lacks;
/// `None` when every one is granted. The gate answers 403
/// `insufficient_scope` naming it. Scopes compare exactly: no wildcards or
/// hierarchy, so `orders:*` granted does not satisfy `orders:read`.
pub fn first_missing<'a, S: AsRef<str>>(required: &'a [S], granted: &BTreeSet<String>) -> Option<&'a str> {
    required
        .iter()
        .map(AsRef::as_ref)
        .find(|scope| !granted.contains(*scope))
}

/// Whether a key on `plan` may call the API at all; `false` answers 403
/// `plan_forbidden`. `plan` is the key's plan looked up in the configured
/// plans; `None` — a plan that is not (or no longer) configured, e.g.
/// removed from the file after keys were issued on it — denies, because
/// keygate cannot know what access or limits the operator meant for it, and
/// failing open would hand those keys unlimited access.
pub fn plan_allows(plan: Option<&PlanSettings>) -> bool {
    plan.is_some_and(|p| p.api_access)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::plans::LimitScope;

    fn set(scopes: &[&str]) -> BTreeSet<String> {
        scopes.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn first_missing_table() {
        let cases: &[(&[&str], &[&str], Option<&str>)] = &[
            (&[], &[], None),
            (&[], &["a"], None),
            (&["a"], &["a", "b"], None),
            (&["a", "b"], &["a", "b"], None),
            (&["a", "b"], &["b"], Some("a")),
            (&["a", "b"], &["a"], Some("b")),
            (&["b", "a"], &[], Some("b")),
            (&["orders:read"], &["orders:*"], Some("orders:read")),
            (&["Read"], &["read"], Some("Read")),
        ];
        for &(required, granted, want) in cases {
            assert_eq!(
                first_missing(required, &set(granted)),
                want,
                "{required:?} vs {granted:?}"
            );
        }
        let owned = vec!["write".to_owned()];
        assert_eq!(first_missing(&owned, &set(&["read"])), Some("write"));
    }

    #[test]
    fn method_classes() {
        let cases = [
            (Method::GET, Some("read")),
            (Method::HEAD, Some("read")),
            (Method::POST, Some("write")),
            (Method::PUT, Some("write")),
            (Method::PATCH, Some("write")),
            (Method::DELETE, Some("delete")),
            (Method::OPTIONS, None),
            (Method::TRACE, None),
            (Method::CONNECT, None),
        ];
        for (method, want) in cases {
            assert_eq!(method_scope(MethodClass::of(&method)), want, "{method}");
        }
        for (i, class) in MethodClass::ALL.iter().enumerate() {
            assert_eq!(*class as usize, i);
        }
    }

    #[test]
    fn plan_access() {
        let plan = |api_access| PlanSettings {
            api_access,
            unlimited: false,
            per: LimitScope::Key,
            limits: Vec::new(),
        };
        assert!(plan_allows(Some(&plan(true))));
        assert!(!plan_allows(Some(&plan(false))));
        assert!(!plan_allows(None), "an unknown plan denies");
    }
}
