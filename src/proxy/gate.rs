//! The gate: authentication, then policy, in SPEC §4's order. It is the only
//! place that can build an [`Authorized`] request, and [`super::forward`]
//! accepts nothing else, so a request that skipped a check cannot reach the
//! upstream.
//!
//! Order (the first failure answers): path well-formed → route decision
//! (`auth = false` routes pass here) → credential present and well-formed →
//! key known, secret right, not revoked → not inactive → not expired → plan
//! has API access → scopes → rate limits. The limiter runs last so that a
//! request refused for any other reason consumes none of the plan's
//! allowance.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::request::Parts;

use super::record::{Caller, Refusal};
use crate::auth::extract::{CredentialHeaders, Presented};
use crate::auth::{AuthError, AuthFailure, Authenticator, Principal};
use crate::keys::Key;
use crate::policy::path::{NormalizedPath, normalize};
use crate::policy::routes::{Access, RouteTable};
use crate::policy::scopes;
use crate::policy::{LimitScope, NO_PLAN, PlanSettings};
use crate::problem::{Code, Problem};
use crate::ratelimit::{RateLimiter, WindowStatus};

/// A request that passed every check; only [`Gate::check`] builds one.
#[derive(Debug)]
pub struct Authorized {
    principal: Option<Principal>,
    path: NormalizedPath,
}

impl Authorized {
    /// The caller, or `None` on an `auth = false` route.
    pub fn principal(&self) -> Option<&Principal> {
        self.principal.as_ref()
    }

    /// The normalised path, which is what the upstream receives.
    pub fn path(&self) -> &NormalizedPath {
        &self.path
    }
}

/// What the gate decided about a request, whatever the verdict: the route
/// it matched, who called as far as the checks got, and the plan's
/// tightest window once the limiter ran (for the `RateLimit-*` headers).
#[derive(Debug)]
pub struct Checked<'a> {
    /// Route label (`-` for a path refused before routing).
    pub route: &'a str,
    /// Who called.
    pub caller: Caller,
    /// The plan's tightest window, once the limiter ran.
    pub rate: Option<WindowStatus>,
    /// Pass or refusal.
    pub verdict: Result<Authorized, Refusal>,
}

/// One request charged to a plan's limits.
#[derive(Debug)]
pub struct Charge {
    /// The plan's tightest window (`None` for an unlimited plan).
    pub rate: Option<WindowStatus>,
    /// Whether the request may go on.
    pub verdict: Result<(), Refusal>,
}

/// The checks, compiled once from config.
#[derive(Debug)]
pub struct Gate {
    authenticator: Arc<Authenticator>,
    routes: RouteTable,
    plans: BTreeMap<String, PlanSettings>,
    /// [`NO_PLAN`], for keys without a plan.
    no_plan: PlanSettings,
    credentials: CredentialHeaders,
    limiter: Arc<RateLimiter>,
}

impl Gate {
    /// A gate over these parts.
    pub fn new(
        authenticator: Arc<Authenticator>,
        routes: RouteTable,
        plans: BTreeMap<String, PlanSettings>,
        credentials: CredentialHeaders,
        limiter: Arc<RateLimiter>,
    ) -> Self {
        Self {
            authenticator,
            routes,
            plans,
            no_plan: NO_PLAN,
            credentials,
            limiter,
        }
    }

    /// The credential header names (stripped before forwarding).
    pub fn credentials(&self) -> &CredentialHeaders {
        &self.credentials
    }

    /// The authenticator (readiness, metrics).
    pub fn authenticator(&self) -> &Arc<Authenticator> {
        &self.authenticator
    }

    /// Runs every check on a request head and says what it decided.
    pub async fn check<'a>(&'a self, parts: &Parts) -> Checked<'a> {
        let refused = |route, caller, refusal| Checked {
            route,
            caller,
            rate: None,
            verdict: Err(refusal),
        };
        let path = match normalize(parts.uri.path()) {
            Ok(path) => path,
            Err(e) => {
                let problem = Problem::new(Code::BadRequest).with_message(format!("Bad request path: {e}."));
                return refused("-", Caller::default(), Refusal::new(problem, "bad path"));
            }
        };
        let (route, required) = match self.routes.decide(&parts.method, &path) {
            Access::Public { route } => {
                return Checked {
                    route,
                    caller: Caller::default(),
                    rate: None,
                    verdict: Ok(Authorized {
                        principal: None,
                        path,
                    }),
                };
            }
            Access::Protected { route, required } => (route, required),
        };
        let presented = match self.credentials.extract(&parts.headers) {
            Presented::Credential(secret) => secret,
            Presented::Missing => {
                return refused(
                    route,
                    Caller::default(),
                    Refusal::new(Code::MissingCredentials, "no credential"),
                );
            }
            Presented::Ambiguous => {
                let refusal = Refusal::new(Code::AmbiguousCredentials, "two different credentials");
                return refused(route, Caller::default(), refusal);
            }
            Presented::Malformed => {
                let refusal = Refusal::new(Code::InvalidKey, "empty or malformed credential header");
                return refused(route, Caller::default(), refusal);
            }
        };
        let principal = match self.authenticator.authenticate(presented).await {
            Ok(principal) => principal,
            Err(error) => return refused(route, Caller::refused(&error), refusal(&error)),
        };
        let caller = Caller::of(&principal);
        // The identity's hot record answers the plan and scope checks; the
        // key's own data is read only by a limited plan.
        let plan = match self.check_plan(principal.identity.plan()) {
            Ok(plan) => plan,
            Err(refusal) => return refused(route, caller, refusal),
        };
        if let Some(missing) = principal.first_missing_scope(required) {
            return refused(
                route,
                caller,
                Refusal::new(Problem::insufficient_scope(missing), "scope missing"),
            );
        }
        let charge = self.check_limits(principal.key(), plan).await;
        Checked {
            route,
            caller,
            rate: charge.rate,
            verdict: charge.verdict.map(|()| Authorized {
                principal: Some(principal),
                path,
            }),
        }
    }

    /// The key's plan (named `plan`), or `plan_forbidden` unless it has API
    /// access; a key without a plan has [`NO_PLAN`](crate::policy::NO_PLAN).
    /// The plan goes on to [`Gate::check_limits`], so a request looks it up
    /// once.
    pub fn check_plan(&self, plan: Option<&str>) -> Result<&PlanSettings, Refusal> {
        let Some(plan) = plan else {
            return Ok(&self.no_plan);
        };
        match self.plans.get(plan) {
            Some(plan) if scopes::plan_allows(Some(plan)) => Ok(plan),
            _ => Err(Refusal::new(Code::PlanForbidden, "plan without API access")),
        }
    }

    /// Charges one request to the key's plan limits (`plan`, from
    /// [`Gate::check_plan`]; the last check: call it only once everything
    /// else passed), with the tightest window for the `RateLimit-*` headers.
    pub async fn check_limits(&self, key: &Key, plan: &PlanSettings) -> Charge {
        if plan.unlimited || plan.limits.is_empty() {
            return Charge {
                rate: None,
                verdict: Ok(()),
            };
        }
        let plan_name = key.plan.as_deref().unwrap_or_default();
        let subject = subject(plan, plan_name, key.id.as_str(), key.owner.as_deref());
        let verdict = self.limiter.check(&subject, &plan.limits).await;
        Charge {
            rate: verdict.window().copied(),
            verdict: match verdict.retry_after_secs() {
                Some(retry_after) => Err(Refusal::new(Problem::rate_limited(retry_after), "rate limited")),
                None => Ok(()),
            },
        }
    }
}

/// The refusal answering a refused credential: the one map from an
/// [`AuthFailure`] to its SPEC code and log reason (the short prefix goes
/// to the log through [`Caller::refused`]).
pub fn refusal(error: &AuthError) -> Refusal {
    let reason = match error.failure {
        AuthFailure::Invalid(why) => why.as_str(),
        AuthFailure::Inactive => "key inactive",
        AuthFailure::Expired => "key expired",
        AuthFailure::Unavailable => "key store unavailable",
    };
    // `AuthFailure::code` is the one map from a failure to its SPEC code;
    // every code it names is one of `Code`'s (the test below walks them).
    let code = Code::from_name(error.failure.code()).unwrap_or(Code::InternalError);
    Refusal::new(code, reason)
}

/// Whose counters a request of key `key_id` (owned by `owner`) on `plan`
/// (named `plan_name`) counts against: the key's own, or its owner's within
/// the plan for `per = "owner"` plans (a key without an owner counts alone).
/// The plan name's length prefixes it, so no plan/owner pair can spell
/// another pair's subject.
fn subject(plan: &PlanSettings, plan_name: &str, key_id: &str, owner: Option<&str>) -> String {
    match (plan.per, owner) {
        (LimitScope::Owner, Some(owner)) => format!("o:{}:{plan_name}:{owner}", plan_name.len()),
        // Every request of a per-key plan builds this one: two copies, not
        // the formatting machinery.
        _ => ["k:", key_id].concat(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::InvalidReason;
    use crate::keys::KeyState;

    #[test]
    fn a_refused_key_answers_the_code_its_state_maps_to() {
        // The gate, the exchange and the verification API refuse a key in
        // a state through `AuthFailure::of_state`; the problem carries the
        // code `auth` names for the failure, never the fallback.
        let states = [
            (KeyState::Revoked, "invalid_key"),
            (KeyState::Inactive, "key_inactive"),
            (KeyState::Expired, "key_expired"),
        ];
        for (state, code) in states {
            let failure = AuthFailure::of_state(state).unwrap();
            let error = AuthError::new(failure, Some("kg_abc"));
            let problem = refusal(&error).problem;
            assert_eq!((problem.code.as_str(), failure.code()), (code, code), "{state:?}");
            assert_eq!(Caller::refused(&error).short_prefix(), Some("kg_abc"));
        }
        assert_eq!(AuthFailure::of_state(KeyState::Active), None);
        for failure in [
            AuthFailure::Invalid(InvalidReason::WrongSecret),
            AuthFailure::Inactive,
            AuthFailure::Expired,
            AuthFailure::Unavailable,
        ] {
            let problem = refusal(&AuthError::new(failure, None)).problem;
            assert_eq!(problem.code.as_str(), failure.code(), "{failure:?}");
            assert_ne!(problem.code, Code::InternalError, "{failure:?}");
        }
    }

    #[test]
    fn subjects_separate_keys_and_owners_per_plan() {
        let plan = |per| PlanSettings {
            api_access: true,
            unlimited: false,
            per,
            limits: Vec::new(),
        };
        let (by_key, by_owner) = (plan(LimitScope::Key), plan(LimitScope::Owner));
        assert_eq!(subject(&by_key, "pro", "key_1", Some("acme")), "k:key_1");
        assert_eq!(subject(&by_owner, "team", "key_1", Some("acme")), "o:4:team:acme");
        assert_eq!(
            subject(&by_owner, "team", "key_1", None),
            "k:key_1",
            "no owner: alone"
        );
        assert_ne!(
            subject(&by_owner, "team:b", "key_1", Some("acme")),
            subject(&by_owner, "team", "key_1", Some("b:acme")),
        );
    }
}
