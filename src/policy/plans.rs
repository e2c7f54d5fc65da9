//! Plans: whether keys on a plan may call the API, and the rate-limit
//! windows that apply to them. `config` fills [`PlanSettings`] from
//! `[plans.<name>]`; [`super::scopes::plan_allows`] checks access and
//! `ratelimit` enforces the limits.

use std::time::Duration;

/// Whose requests share a plan's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitScope {
    /// Each key has its own counters (the default).
    Key,
    /// All keys of one owner share counters.
    Owner,
}

/// One rate-limit window of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanLimit {
    /// Requests allowed per window, at least 1.
    pub requests: u64,
    /// Window length, from 1 s to 30 d.
    pub per: Duration,
}

/// What a key without a plan gets (`keys.default_plan` unset): API access
/// and no rate limits.
pub const NO_PLAN: PlanSettings = PlanSettings {
    api_access: true,
    unlimited: true,
    per: LimitScope::Key,
    limits: Vec::new(),
};

/// One `[plans.<name>]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanSettings {
    /// Whether keys on the plan may call the API; `false` answers 403
    /// `plan_forbidden` (`plans.<name>.api_access`).
    pub api_access: bool,
    /// No rate limits at all (`plans.<name>.unlimited`).
    pub unlimited: bool,
    /// Whose requests share the limits (`plans.<name>.per`).
    pub per: LimitScope,
    /// Every window applies at once; empty = no limits. Windows are distinct.
    pub limits: Vec<PlanLimit>,
}
