//! The request's log record and the typed outcomes it is built from.
//!
//! Each step that can answer a request (the head checks in
//! [`super::stack`], the [`super::gate`], the [`super::exchange`],
//! forwarding) returns what it decided: a [`Refusal`] (the problem for the
//! client, the reason for the log), who the [`Caller`] was as far as it got,
//! and the plan's rate window once the limiter ran. Only the stack builds
//! a [`RequestRecord`], from the outcome of the step that answered (and the
//! forwarder's timings), and from it writes the log line, the metrics and
//! the usage count.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::auth::{AuthError, Identity, Principal};
use crate::problem::Problem;
use crate::ratelimit::WindowStatus;

/// A refused request: the problem the client gets, and why, for the log
/// only (STYLE §3.3: the client gets the code, the log the cause).
#[derive(Debug)]
pub struct Refusal {
    /// What the client is answered.
    pub problem: Problem,
    /// Why (the log's `reason`).
    pub reason: &'static str,
}

impl Refusal {
    /// A refusal answered with `problem` for `reason`.
    pub fn new(problem: impl Into<Problem>, reason: &'static str) -> Self {
        Self {
            problem: problem.into(),
            reason,
        }
    }
}

/// Who made a request, as far as the checks got: for the log's key id,
/// short prefix and session, and for usage counting.
#[derive(Debug, Default, Clone)]
pub struct Caller {
    /// The authenticated key's identity (its id, short prefix and usage
    /// counter).
    pub identity: Option<Arc<Identity>>,
    /// The key's id, when known without an identity (a refresh, a refused
    /// key).
    pub key_id: Option<Arc<str>>,
    /// The presented key's short prefix, when known without an identity (a
    /// refused key, a refresh).
    pub short_prefix: Option<Arc<str>>,
    /// The session of the access token presented, or of the tokens an
    /// exchange issued or was asked to refresh.
    pub session_id: Option<Arc<str>>,
}

impl Caller {
    /// An authenticated caller: the key's identity, and the access token's
    /// session when it presented one.
    pub fn of(principal: &Principal) -> Self {
        Self {
            identity: Some(Arc::clone(&principal.identity)),
            session_id: principal.grant.as_ref().map(|g| Arc::from(g.claims.sid.as_str())),
            ..Self::default()
        }
    }

    /// A refused credential: its short prefix, when it had one, and the
    /// key it was found to be, if any (so the refusal counts in that key's
    /// usage).
    pub fn refused(error: &AuthError) -> Self {
        Self {
            short_prefix: error.short_prefix.as_deref().map(Arc::from),
            key_id: error.key_id.clone(),
            ..Self::default()
        }
    }

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

/// What the request log, metrics and usage record about one request.
#[derive(Debug)]
pub struct RequestRecord<'a> {
    /// Route label (`-` before routing, `default` when no route matched).
    pub route: &'a str,
    /// Who called.
    pub caller: Caller,
    /// Why the request was refused (for the log only).
    pub reason: Option<&'static str>,
    /// The plan's tightest window after the rate limiter ran, for the
    /// `RateLimit-*` headers of whatever response follows (`None` when the
    /// limiter did not run: refused earlier, public route, unlimited plan).
    pub rate: Option<WindowStatus>,
    /// How long the upstream took to send its response head, once forwarded
    /// (for the latency metrics).
    pub upstream: Option<Duration>,
    /// When the upstream's response head (or the forwarding error) came.
    pub answered_at: Option<Instant>,
}

impl<'a> RequestRecord<'a> {
    /// A request answered on `route` by `caller`, for `reason` when refused.
    pub fn new(
        route: &'a str,
        caller: Caller,
        rate: Option<WindowStatus>,
        reason: Option<&'static str>,
    ) -> Self {
        Self {
            route,
            caller,
            reason,
            rate,
            upstream: None,
            answered_at: None,
        }
    }

    /// A request refused before routing, for `reason`.
    pub fn unrouted(reason: &'static str) -> Self {
        Self::new("-", Caller::default(), None, Some(reason))
    }
}
