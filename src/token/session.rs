//! Sessions: the pure decisions about the one stored row behind a family of
//! access and refresh tokens ([`Session`], whose data lives in
//! `keys::session`) — what a login does to it, what presenting a refresh
//! token means (rotate, or detect reuse and revoke), and whether it still
//! admits an access token.
//!
//! Storing the row, announcing changes on the change feed and caching rows
//! per replica belong to `store` and `auth`; [`Session`]'s docs say what
//! they must keep, and this file how to apply each decision (conditional on
//! the generation read).

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, Utc};
use rand::{CryptoRng, RngCore};

use super::claims::{AccessClaims, effective_scopes, new_jti};
use super::jwt::{CLOCK_SKEW_SECS, TokenError};
use super::refresh::{self, PresentedRefreshToken, RefreshError, RefreshToken};
use crate::keys::KeyId;
use crate::keys::session::{RevokeReason, Session, SessionId, SessionState};

/// A login returns the session's current access token only while it stays
/// valid for at least this long, in seconds; closer to its expiry a new one
/// is minted, so a client is not handed a token that dies in flight.
pub const REUSE_MIN_REMAINING_SECS: i64 = 60;

/// Lifetimes and the claims every token of this gateway carries, from
/// [`super::TokenSettings`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionPolicy {
    /// Access-token lifetime.
    pub access_ttl: Duration,
    /// Refresh-token lifetime, counted from each rotation (sliding): a
    /// session lives while it is refreshed at least this often, until its
    /// key is revoked or disabled or the session is revoked.
    pub refresh_ttl: Duration,
    /// `iss` of every token.
    pub issuer: String,
    /// `aud` of every token, if any.
    pub audience: Option<String>,
}

impl Session {
    /// Whether this session (the cached row for `claims.sid`) admits an
    /// access token whose signature and times already verified: same
    /// session and key, not revoked. Expiry needs no check here: access
    /// tokens never outlive the refresh token current when they were minted.
    /// The caller still checks the key's own state.
    pub fn admits(&self, claims: &AccessClaims) -> Result<(), TokenError> {
        if self.id != claims.sid || self.key_id != claims.sub {
            return Err(TokenError::SessionMismatch);
        }
        if self.revoked_at.is_some() {
            return Err(TokenError::SessionRevoked {
                session_id: self.id.clone(),
            });
        }
        Ok(())
    }

    /// The claims of the session's current access token, scoped to what the
    /// key holds now.
    fn current_access(&self, policy: &SessionPolicy, key_scopes: &BTreeSet<String>) -> AccessClaims {
        AccessClaims {
            iss: Some(policy.issuer.clone()),
            sub: self.key_id.clone(),
            aud: policy.audience.clone(),
            exp: self.access_expires_at,
            nbf: None,
            iat: self.access_issued_at,
            jti: self.access_jti.clone(),
            sid: self.id.clone(),
            scope: effective_scopes(&self.scopes, key_scopes),
        }
    }

    /// Starts a new access token at `now` (new `jti`), never outliving the
    /// current refresh token.
    fn start_access<R: RngCore + CryptoRng>(
        &mut self,
        policy: &SessionPolicy,
        now: DateTime<Utc>,
        rng: &mut R,
    ) {
        self.access_jti = new_jti(rng);
        self.access_issued_at = now;
        self.access_expires_at = after(now, policy.access_ttl).min(self.expires_at);
    }
}

/// What a client asks `/auth/login` (or `/oauth/token`) for, after the API
/// key verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginRequest {
    /// The verified key.
    pub key_id: KeyId,
    /// The client's `session_id`, if it sent one. `/oauth/token` can use a
    /// fixed label per scope set, so repeated client-credentials grants
    /// reuse one session instead of adding a row per call.
    pub client_session: Option<String>,
    /// Scopes to grant: the key's scopes, or a narrowed subset
    /// ([`super::claims::narrow_scopes`]).
    pub scopes: BTreeSet<String>,
}

/// The outcome of a login: write `session`, then answer with `access`
/// (signed) and `refresh_token`.
#[derive(Debug)]
pub struct Login {
    /// The row to write.
    pub session: Session,
    /// How to write it: `Some(g)` updates the existing row with the same
    /// id only while its `refresh_generation` is still `g` (else a
    /// concurrent login or refresh won: read again and redo); `None` inserts
    /// a new row.
    pub previous_generation: Option<u64>,
    /// An old row for the same key and client session that the new row
    /// replaces (revoked or expired): delete it in the same transaction and
    /// announce it, so caches stop admitting its tokens.
    pub replaces: Option<SessionId>,
    /// Claims of the access token to sign.
    pub access: AccessClaims,
    /// Whether `access` is the session's previous token (same `jti`), so
    /// signing it returns the identical string the client already holds.
    pub reused_access: bool,
    /// The new refresh token; it starts a new family, so earlier refresh
    /// tokens of the session stop working (refused, not treated as reuse:
    /// presenting the API key again is no sign of theft).
    pub refresh_token: RefreshToken,
}

/// What presenting a refresh token means.
#[derive(Debug)]
#[must_use = "a reuse verdict must be stored: it revokes the session"]
pub enum Redemption {
    /// The current token: write [`Rotation::session`] (conditionally), then
    /// answer with the new access and refresh tokens.
    Rotated(Box<Rotation>),
    /// A genuine but spent token of this session: theft is likely. Write
    /// `revoked` (its `revoked_at` is set) unconditionally and announce it,
    /// then answer `invalid_key` like any refusal.
    ReuseDetected {
        /// The session, revoked.
        revoked: Box<Session>,
        /// The generation the spent token claimed (for the log).
        presented_generation: u64,
    },
}

/// A successful rotation.
#[derive(Debug)]
pub struct Rotation {
    /// The row to write.
    pub session: Session,
    /// Update only while the stored `refresh_generation` is still this
    /// (and the row is not revoked). If the update touches no row, another
    /// replica redeemed the same token first: read the row again and
    /// redeem again, which now answers [`Redemption::ReuseDetected`] — two
    /// redemptions of one token are reuse.
    pub previous_generation: u64,
    /// Claims of the new access token to sign.
    pub access: AccessClaims,
    /// The new refresh token.
    pub refresh_token: RefreshToken,
}

impl SessionPolicy {
    /// Decides a login for `request` at `now`, given the stored row for the
    /// same key and client session, if any.
    ///
    /// - An active row continues under the same session id with a new
    ///   refresh family. Its access token comes back unchanged while the
    ///   scopes are the same and it has at least [`REUSE_MIN_REMAINING_SECS`]
    ///   left; otherwise a new access token is minted.
    /// - With no row, or a revoked or expired one, a new session id is
    ///   opened (replacing the unusable row): tokens of a revoked session
    ///   stay refused, and the API key, the root credential, opens a new one.
    pub fn login<R: RngCore + CryptoRng>(
        &self,
        existing: Option<&Session>,
        request: LoginRequest,
        now: DateTime<Utc>,
        rng: &mut R,
    ) -> Login {
        let now = whole_seconds(now);
        let continuing = existing.filter(|s| {
            s.state_at(now) == SessionState::Active
                && s.key_id == request.key_id
                && s.client_session == request.client_session
        });
        match continuing {
            Some(current) => {
                let mut session = current.clone();
                let generation = current.refresh_generation.saturating_add(1);
                let family = refresh::new_family(rng);
                let minted = refresh::mint(&session.id, generation, &family, rng);
                session.family_digest = minted.family_digest;
                session.refresh_digest = minted.token_digest;
                session.refresh_generation = generation;
                session.expires_at = after(now, self.refresh_ttl);
                let keep_access = current.scopes == request.scopes
                    && current.access_issued_at <= now + Duration::seconds(CLOCK_SKEW_SECS)
                    && current.access_expires_at > now + Duration::seconds(REUSE_MIN_REMAINING_SECS);
                session.scopes = request.scopes;
                if !keep_access {
                    session.start_access(self, now, rng);
                }
                let access = session.current_access(self, &session.scopes);
                Login {
                    session,
                    previous_generation: Some(current.refresh_generation),
                    replaces: None,
                    access,
                    reused_access: keep_access,
                    refresh_token: minted.token,
                }
            }
            None => {
                let id = SessionId::generate(now);
                let family = refresh::new_family(rng);
                let minted = refresh::mint(&id, 0, &family, rng);
                let mut session = Session {
                    id,
                    key_id: request.key_id,
                    client_session: request.client_session,
                    scopes: request.scopes,
                    created_at: now,
                    expires_at: after(now, self.refresh_ttl),
                    revoked_at: None,
                    revoked_reason: None,
                    family_digest: minted.family_digest,
                    refresh_digest: minted.token_digest,
                    refresh_generation: 0,
                    access_jti: String::new(),
                    access_issued_at: now,
                    access_expires_at: now,
                };
                session.start_access(self, now, rng);
                let access = session.current_access(self, &session.scopes);
                // Only the row this session collides with (same key and
                // client session); the caller looked it up by those.
                let replaces = existing
                    .filter(|s| s.key_id == session.key_id && s.client_session == session.client_session)
                    .map(|s| s.id.clone());
                Login {
                    session,
                    previous_generation: None,
                    replaces,
                    access,
                    reused_access: false,
                    refresh_token: minted.token,
                }
            }
        }
    }

    /// Decides what presenting `presented` means for `session` (the row
    /// stored under `presented.session_id()`; a missing row is the caller's
    /// [`RefreshError::UnknownSession`]) at `now`. `key_scopes` are the
    /// key's current scopes; the caller has already checked that the key is
    /// active and unexpired (else the key's own refusal without calling this).
    ///
    /// In order: a token without the session's family secret is refused and
    /// changes nothing (an outsider knowing the session id cannot revoke
    /// it); a revoked or expired session refuses; the current token
    /// rotates; any other token of the family — a spent one, or one edited
    /// by someone who held one — is reuse and revokes the session.
    pub fn redeem<R: RngCore + CryptoRng>(
        &self,
        session: &Session,
        presented: &PresentedRefreshToken,
        key_scopes: &BTreeSet<String>,
        now: DateTime<Utc>,
        rng: &mut R,
    ) -> Result<Redemption, RefreshError> {
        let now = whole_seconds(now);
        if session.id != *presented.session_id() || !presented.family_digest().matches(&session.family_digest)
        {
            return Err(RefreshError::NotInFamily {
                session_id: presented.session_id().clone(),
            });
        }
        match session.state_at(now) {
            SessionState::Revoked => {
                return Err(RefreshError::Revoked {
                    session_id: session.id.clone(),
                });
            }
            SessionState::Expired => {
                return Err(RefreshError::Expired {
                    session_id: session.id.clone(),
                });
            }
            SessionState::Active => {}
        }
        let current = presented.generation() == session.refresh_generation
            && presented.token_digest().matches(&session.refresh_digest);
        if !current {
            let mut revoked = session.clone();
            revoked.revoke(now, RevokeReason::RefreshReuse);
            return Ok(Redemption::ReuseDetected {
                revoked: Box::new(revoked),
                presented_generation: presented.generation(),
            });
        }
        let generation = session.refresh_generation.saturating_add(1);
        let minted = refresh::mint(&session.id, generation, presented.family(), rng);
        let mut next = session.clone();
        next.refresh_digest = minted.token_digest;
        next.refresh_generation = generation;
        next.expires_at = after(now, self.refresh_ttl);
        next.start_access(self, now, rng);
        let access = next.current_access(self, key_scopes);
        Ok(Redemption::Rotated(Box::new(Rotation {
            session: next,
            previous_generation: session.refresh_generation,
            access,
            refresh_token: minted.token,
        })))
    }
}

/// `now + ttl`, saturating at the largest instant (ttls are bounded by
/// settings validation, so this only guards arithmetic).
fn after(now: DateTime<Utc>, ttl: Duration) -> DateTime<Utc> {
    now.checked_add_signed(ttl).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// `now` without its fraction: JWT times are whole seconds, and the stored
/// instants must equal the ones in the token.
fn whole_seconds(now: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(now.timestamp(), 0).unwrap_or(now)
}
