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

use crate::auth::extract::{CredentialHeaders, Presented};
use crate::auth::{AuthError, AuthFailure, Authenticator, Identity, Principal};
use crate::keys::Key;
use crate::policy::path::{NormalizedPath, normalize};
use crate::policy::routes::{Access, RouteTable};
use crate::policy::scopes;
use crate::policy::{LimitScope, PlanSettings};
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

/// What the request log records about the gate's decision.
#[derive(Debug, Default)]
pub struct Decision<'a> {
    /// Route label (`default` when no route matched).
    pub route: &'a str,
    /// The authenticated key's identity (its id, short prefix and usage
    /// counter), once known.
    pub identity: Option<Arc<Identity>>,
    /// The key's id, when known without an identity (the token exchange).
    pub key_id: Option<Arc<str>>,
    /// The presented key's short prefix, when known without an identity (a
    /// refused key, the token exchange).
    pub short_prefix: Option<Arc<str>>,
    /// The access token's session, when the caller presented one.
    pub session_id: Option<Arc<str>>,
    /// Why the request was refused (for the log only).
    pub reason: Option<&'static str>,
    /// The plan's tightest window after the rate limiter ran, for the
    /// `RateLimit-*` headers of whatever response follows (`None` when the
    /// limiter did not run: refused earlier, public route, unlimited plan).
    pub rate: Option<WindowStatus>,
    /// How long the upstream took to send its response head, once forwarded
    /// (for the latency metrics).
    pub upstream: Option<std::time::Duration>,
    /// When the upstream's response head (or the forwarding error) came.
    pub answered_at: Option<std::time::Instant>,
}

impl Decision<'_> {
    /// The key's id, once known.
    pub fn key_id(&self) -> Option<&str> {
        match &self.identity {
            Some(identity) => Some(&identity.key_id),
            None => self.key_id.as_deref(),
        }
    }

    /// The presented key's short prefix, once known.
    pub fn short_prefix(&self) -> Option<&str> {
        match &self.identity {
            Some(identity) => Some(&identity.short_prefix),
            None => self.short_prefix.as_deref(),
        }
    }
}

/// The checks, compiled once from config.
#[derive(Debug)]
pub struct Gate {
    authenticator: Arc<Authenticator>,
    routes: RouteTable,
    plans: BTreeMap<String, PlanSettings>,
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

    /// Runs every check on a request head. `decision` collects what the
    /// request log needs, whatever the outcome.
    pub async fn check<'a>(
        &'a self,
        parts: &Parts,
        decision: &mut Decision<'a>,
    ) -> Result<Authorized, Problem> {
        let path = normalize(parts.uri.path()).map_err(|e| {
            decision.reason = Some("bad path");
            Problem::new(Code::BadRequest).with_message(format!("Bad request path: {e}."))
        })?;
        let required = match self.routes.decide(&parts.method, &path) {
            Access::Public { route } => {
                decision.route = route;
                return Ok(Authorized {
                    principal: None,
                    path,
                });
            }
            Access::Protected { route, required } => {
                decision.route = route;
                required
            }
        };
        let presented = match self.credentials.extract(&parts.headers) {
            Presented::Credential(secret) => secret,
            Presented::Missing => {
                decision.reason = Some("no credential");
                return Err(Problem::new(Code::MissingCredentials));
            }
            Presented::Ambiguous => {
                decision.reason = Some("two different credentials");
                return Err(Problem::new(Code::AmbiguousCredentials));
            }
            Presented::Malformed => {
                decision.reason = Some("empty or malformed credential header");
                return Err(Problem::new(Code::InvalidKey));
            }
        };
        let principal = self
            .authenticator
            .authenticate(presented)
            .await
            .map_err(|error| refusal(error, decision))?;
        identify(decision, &principal);
        // The identity's hot record answers the plan and scope checks; the
        // key's own data is read only by a limited plan.
        let plan = self.check_plan(principal.identity.plan(), decision)?;
        if let Some(missing) = principal.first_missing_scope(required) {
            decision.reason = Some("scope missing");
            return Err(Problem::insufficient_scope(missing));
        }
        self.check_limits(principal.key(), plan, decision).await?;
        Ok(Authorized {
            principal: Some(principal),
            path,
        })
    }

    /// The key's plan (named `plan`), or `plan_forbidden` unless it has API
    /// access. The plan goes on to [`Gate::check_limits`], so a request
    /// looks it up once.
    pub fn check_plan(&self, plan: &str, decision: &mut Decision<'_>) -> Result<&PlanSettings, Problem> {
        match self.plans.get(plan) {
            Some(plan) if scopes::plan_allows(Some(plan)) => Ok(plan),
            _ => {
                decision.reason = Some("plan without API access");
                Err(Problem::new(Code::PlanForbidden))
            }
        }
    }

    /// Charges one request to the key's plan limits (`plan`, from
    /// [`Gate::check_plan`]; the last check: call it only once everything
    /// else passed). Records the tightest window in `decision` for the
    /// `RateLimit-*` headers.
    pub async fn check_limits(
        &self,
        key: &Key,
        plan: &PlanSettings,
        decision: &mut Decision<'_>,
    ) -> Result<(), Problem> {
        if plan.unlimited || plan.limits.is_empty() {
            return Ok(());
        }
        let subject = subject(plan, &key.plan, key.id.as_str(), key.owner.as_deref());
        let verdict = self.limiter.check(&subject, &plan.limits).await;
        decision.rate = verdict.window().copied();
        match verdict.retry_after_secs() {
            Some(retry_after) => {
                decision.reason = Some("rate limited");
                Err(Problem::rate_limited(retry_after))
            }
            None => Ok(()),
        }
    }
}

/// The problem answering a refused credential; the reason and short prefix
/// go to `decision` for the log.
pub fn refusal(error: AuthError, decision: &mut Decision<'_>) -> Problem {
    decision.short_prefix = error.short_prefix.map(Arc::from);
    let (code, reason) = match error.failure {
        AuthFailure::Invalid(why) => (Code::InvalidKey, why.as_str()),
        AuthFailure::Inactive => (Code::KeyInactive, "key inactive"),
        AuthFailure::Expired => (Code::KeyExpired, "key expired"),
        AuthFailure::Unavailable => (Code::AuthUnavailable, "key store unavailable"),
    };
    decision.reason = Some(reason);
    Problem::new(code)
}

/// Records who the caller is for the request log and usage counts.
pub fn identify(decision: &mut Decision<'_>, principal: &Principal) {
    decision.identity = Some(Arc::clone(&principal.identity));
    decision.session_id = principal.grant.as_ref().map(|g| Arc::from(g.claims.sid.as_str()));
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
        // a state through `AuthFailure::of_state` and then this map; it must
        // agree with the code `auth` names for the failure.
        let states = [
            (KeyState::Revoked, "invalid_key"),
            (KeyState::Inactive, "key_inactive"),
            (KeyState::Expired, "key_expired"),
        ];
        for (state, code) in states {
            let failure = AuthFailure::of_state(state).unwrap();
            let mut decision = Decision::default();
            let problem = refusal(AuthError::new(failure, Some("kg_abc")), &mut decision);
            assert_eq!((problem.code.as_str(), failure.code()), (code, code), "{state:?}");
            assert_eq!(decision.short_prefix.as_deref(), Some("kg_abc"));
        }
        assert_eq!(AuthFailure::of_state(KeyState::Active), None);
        for failure in [
            AuthFailure::Invalid(InvalidReason::WrongSecret),
            AuthFailure::Unavailable,
        ] {
            let problem = refusal(AuthError::new(failure, None), &mut Decision::default());
            assert_eq!(problem.code.as_str(), failure.code(), "{failure:?}");
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
