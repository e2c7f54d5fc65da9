//! The token exchange as a use case (SPEC §8): a verified key opens or
//! continues a session and gets tokens (login, client credentials), and a
//! refresh token is redeemed for new ones, with reuse revoking its session.
//!
//! This file owns the orchestration around `token`'s pure decisions: it
//! reads session rows and keys from the store (never from a cache: a login
//! or refresh decides on the current generation), writes them
//! conditionally, and when a write loses a race with another writer of the
//! same session it reads again and decides again, at most [`MAX_ATTEMPTS`]
//! times. A refresh's key is refused in its state through
//! [`AuthFailure::of_state`], as every other credential is.
//!
//! It returns typed outcomes ([`Issued`], [`ExchangeError`]) and logs the
//! causes a client is not told (store failures, reuse, contention). It
//! leaves to the edge (`proxy::exchange`) the parsing of requests, the key's
//! authentication, plan and rate-limit checks (the gate's), and rendering,
//! including the SPEC code and log reason of each failure.

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use rand::rngs::OsRng;
use thiserror::Error;
use tracing::{error, info, warn};

use super::{AuthError, AuthFailure};
use crate::clock::SharedClock;
use crate::keys::Key;
use crate::store::{Actor, SessionWrite, SharedStore, StoreError};
use crate::token::claims::format_scope;
use crate::token::{
    AccessClaims, AccessToken, IssueError, LoginRequest, PresentedRefreshToken, Redemption, RefreshError,
    RefreshToken, RevokeReason, Rotation, SessionId, Tokens,
};

/// `client_session` values starting with this are `/oauth/token`'s (one
/// session per key and scope set), so a login's `session_id` must not
/// start with it (the edge refuses those).
pub const OAUTH_SESSION_PREFIX: &str = "oauth:";

/// Times a login or refresh writes its session, re-reading and re-deciding
/// after each write lost a race with another writer of the same session,
/// before giving up with [`ExchangeFailure::Contended`].
pub const MAX_ATTEMPTS: usize = 5;

/// The token exchange over a store, signing with the configured keys. Built
/// once; shared by the requests of the proxy listener.
#[derive(Debug)]
pub struct TokenExchange {
    tokens: Arc<Tokens>,
    store: SharedStore,
    clock: SharedClock,
}

/// Tokens issued by a login, a client-credentials grant or a refresh.
#[derive(Debug)]
pub struct Issued {
    /// The session the tokens belong to (their `sid`).
    pub session_id: SessionId,
    /// The signed access token.
    pub access: AccessToken,
    /// Seconds until the access token expires ([`Tokens::expires_in`]).
    pub expires_in: u64,
    /// The scopes the access token carries.
    pub scope: BTreeSet<String>,
    /// The new refresh token; `None` for client credentials (RFC 6749
    /// §4.4.3: the client asks again with its secret).
    pub refresh: Option<RefreshToken>,
}

/// A refresh token that redeems: the session's next state, decided but not
/// yet written. The edge checks the key's plan and charges its limits in
/// between, so a refresh refused there rotates nothing.
#[derive(Debug)]
#[must_use = "nothing is written until TokenExchange::rotate"]
pub struct Redeemed<'p> {
    presented: &'p PresentedRefreshToken,
    decided: Decided,
}

/// One read-and-decide of a refresh.
#[derive(Debug)]
struct Decided {
    key: Arc<Key>,
    rotation: Box<Rotation>,
    now: DateTime<Utc>,
}

impl Redeemed<'_> {
    /// The key behind the refresh token (active at the decision).
    pub fn key(&self) -> &Arc<Key> {
        &self.decided.key
    }
}

/// Why an exchange failed, with the key it read when there was one (a
/// refresh reads it from the session; a login's caller already has it).
#[derive(Debug, Error)]
#[error("token exchange failed: {failure}")]
pub struct ExchangeError {
    /// What failed.
    pub failure: ExchangeFailure,
    /// The refresh token's key, once read (for the request log).
    pub key: Option<Arc<Key>>,
}

/// What failed in an exchange. The client learns only the SPEC code the
/// edge maps each to; the variant is for the log.
#[derive(Debug, Error)]
pub enum ExchangeFailure {
    /// The refresh token names no stored session.
    #[error("the refresh token's session is unknown")]
    UnknownSession,
    /// The refresh token's session belongs to a key that no longer exists.
    #[error("the refresh token's key is unknown")]
    UnknownKey,
    /// The refresh token does not redeem (not of the session's family,
    /// session revoked or expired); nothing was written.
    #[error("the refresh token was refused: {0}")]
    RefreshRefused(RefreshError),
    /// A spent refresh token was presented again: the session is now
    /// revoked (possible theft).
    #[error("a spent refresh token was presented again; the session is revoked")]
    RefreshReused,
    /// The refresh token redeems, but its key is refused in its state
    /// (revoked, inactive, expired), as the gate would refuse it.
    #[error(transparent)]
    KeyRefused(AuthError),
    /// The store failed.
    #[error("key store: {0}")]
    Store(StoreError),
    /// Every attempt lost its conditional write to another writer of the
    /// same session.
    #[error("gave up after {MAX_ATTEMPTS} concurrent changes to one session")]
    Contended,
    /// The session was written, but its access token could not be signed.
    #[error("cannot sign an access token of session {session_id}: {error}")]
    Signing {
        /// The session written.
        session_id: SessionId,
        /// Why signing failed.
        error: IssueError,
    },
}

impl ExchangeError {
    fn new(failure: ExchangeFailure, key: Option<&Arc<Key>>) -> Self {
        Self {
            failure,
            key: key.cloned(),
        }
    }
}

impl TokenExchange {
    /// The exchange over `store`, signing with `tokens`, at `clock`'s time.
    pub fn new(tokens: Arc<Tokens>, store: SharedStore, clock: SharedClock) -> Self {
        Self { tokens, store, clock }
    }

    /// `POST /auth/login` for a verified, admitted `key`: opens or continues
    /// the session of `client_session` (the client's `session_id`, already
    /// checked by the edge) with all the key's scopes.
    pub async fn login(&self, key: &Key, client_session: Option<String>) -> Result<Issued, ExchangeError> {
        let request = LoginRequest {
            key_id: key.id.clone(),
            client_session,
            scopes: key.scopes.clone(),
        };
        self.open_session(request, true).await
    }

    /// `POST /oauth/token` with `grant_type=client_credentials` for a
    /// verified, admitted `key`: one session per key and scope set
    /// (`scopes`, already narrowed to the key's), no refresh token.
    pub async fn client_credentials(
        &self,
        key: &Key,
        scopes: BTreeSet<String>,
    ) -> Result<Issued, ExchangeError> {
        let request = LoginRequest {
            key_id: key.id.clone(),
            client_session: Some(format!("{OAUTH_SESSION_PREFIX}{}", format_scope(&scopes))),
            scopes,
        };
        self.open_session(request, false).await
    }

    /// The first half of `POST /auth/refresh`: reads the session named by
    /// `presented` and its key, and decides. The refresh token is checked
    /// before the key's state (redeeming has no side effects): the session
    /// id is no secret (it is every access token's `sid`), so a caller who
    /// knows only it learns nothing of the key. A spent token revokes the
    /// session here. Nothing else is written until [`TokenExchange::rotate`].
    pub async fn redeem<'p>(
        &self,
        presented: &'p PresentedRefreshToken,
    ) -> Result<Redeemed<'p>, ExchangeError> {
        let decided = self.decide_refresh(presented).await?;
        Ok(Redeemed { presented, decided })
    }

    /// The second half of `POST /auth/refresh`: writes the rotation on the
    /// generation read. When another writer moved the session meanwhile,
    /// reads and decides again: a second redemption of one token is then
    /// reuse (the session is revoked), a login's new family refuses the
    /// token, an admin's revocation refuses it.
    pub async fn rotate(&self, redeemed: Redeemed<'_>) -> Result<Issued, ExchangeError> {
        let Redeemed {
            presented,
            mut decided,
        } = redeemed;
        for attempt in 1..=MAX_ATTEMPTS {
            let written = self
                .store
                .save_session(
                    &decided.rotation.session,
                    Some(decided.rotation.previous_generation),
                    None,
                    &Actor::key(&decided.key.id),
                )
                .await
                .map_err(|e| store_failed(e, Some(&decided.key)))?;
            if written == SessionWrite::Written {
                let Decided { key, rotation, now } = decided;
                let access = self
                    .sign(&rotation.session.id, &rotation.access)
                    .map_err(|failure| ExchangeError::new(failure, Some(&key)))?;
                let Rotation {
                    session,
                    access: claims,
                    refresh_token,
                    ..
                } = *rotation;
                return Ok(Issued {
                    session_id: session.id,
                    access,
                    expires_in: Tokens::expires_in(&claims, now),
                    scope: claims.scope,
                    refresh: Some(refresh_token),
                });
            }
            if attempt == MAX_ATTEMPTS {
                break;
            }
            // Another writer won: reading again makes a second redemption
            // of this token reuse.
            decided = self.decide_refresh(presented).await?;
        }
        Err(contended(Some(&decided.key)))
    }

    /// Reads the session and key of `presented` and decides what presenting
    /// it means now; a reuse verdict is written (revoking) before it returns.
    async fn decide_refresh(&self, presented: &PresentedRefreshToken) -> Result<Decided, ExchangeError> {
        let now = self.clock.now();
        let session = self
            .store
            .session(presented.session_id())
            .await
            .map_err(|e| store_failed(e, None))?;
        let Some(session) = session else {
            return Err(ExchangeError::new(ExchangeFailure::UnknownSession, None));
        };
        let key = match self.store.get_key(&session.key_id).await {
            Ok(key) => Arc::new(key),
            Err(StoreError::NotFound(_)) => {
                return Err(ExchangeError::new(ExchangeFailure::UnknownKey, None));
            }
            Err(e) => return Err(store_failed(e, None)),
        };
        let redemption = self
            .tokens
            .policy()
            .redeem(&session, presented, &key.scopes, now, &mut OsRng)
            .map_err(|e| {
                info!(error = %e, key_id = %key.id, "refresh refused");
                ExchangeError::new(ExchangeFailure::RefreshRefused(e), Some(&key))
            })?;
        match redemption {
            Redemption::Rotated(rotation) => {
                if let Some(failure) = AuthFailure::of_state(key.state_at(now)) {
                    let error = AuthError::new(failure, Some(&key.short_prefix));
                    return Err(ExchangeError::new(ExchangeFailure::KeyRefused(error), Some(&key)));
                }
                Ok(Decided { key, rotation, now })
            }
            Redemption::ReuseDetected {
                revoked,
                presented_generation,
            } => {
                let reason = revoked.revoked_reason.unwrap_or(RevokeReason::RefreshReuse);
                self.store
                    .revoke_session(&revoked.id, reason, now, &Actor::key(&key.id))
                    .await
                    .map_err(|e| store_failed(e, Some(&key)))?;
                warn!(
                    session_id = %revoked.id,
                    key_id = %key.id,
                    presented_generation,
                    current_generation = session.refresh_generation,
                    "a spent refresh token was presented again; the session is revoked (possible token theft)"
                );
                Err(ExchangeError::new(ExchangeFailure::RefreshReused, Some(&key)))
            }
        }
    }

    /// Opens or continues the session of `request` and issues its tokens,
    /// deciding again on the row read after each lost conditional write.
    async fn open_session(&self, request: LoginRequest, with_refresh: bool) -> Result<Issued, ExchangeError> {
        let actor = Actor::key(&request.key_id);
        for _ in 0..MAX_ATTEMPTS {
            let now = self.clock.now();
            let existing = self
                .store
                .session_for(&request.key_id, request.client_session.as_deref())
                .await
                .map_err(|e| store_failed(e, None))?;
            let login = self
                .tokens
                .policy()
                .login(existing.as_ref(), request.clone(), now, &mut OsRng);
            let written = self
                .store
                .save_session(
                    &login.session,
                    login.previous_generation,
                    login.replaces.as_ref(),
                    &actor,
                )
                .await
                .map_err(|e| store_failed(e, None))?;
            if written == SessionWrite::Conflict {
                continue;
            }
            let access = self
                .sign(&login.session.id, &login.access)
                .map_err(|failure| ExchangeError::new(failure, None))?;
            return Ok(Issued {
                session_id: login.session.id,
                access,
                expires_in: Tokens::expires_in(&login.access, now),
                scope: login.access.scope,
                refresh: with_refresh.then_some(login.refresh_token),
            });
        }
        Err(contended(None))
    }

    fn sign(&self, session_id: &SessionId, claims: &AccessClaims) -> Result<AccessToken, ExchangeFailure> {
        self.tokens.sign(claims).map_err(|e| {
            error!(error = %e, "cannot sign an access token");
            ExchangeFailure::Signing {
                session_id: session_id.clone(),
                error: e,
            }
        })
    }
}

/// A store failure, logged as the gateway's own problem when it is not an
/// outage.
fn store_failed(e: StoreError, key: Option<&Arc<Key>>) -> ExchangeError {
    match e {
        StoreError::Unavailable(_) => warn!(error = %e, "token exchange: key store unavailable"),
        _ => error!(error = %e, "token exchange: key store error"),
    }
    ExchangeError::new(ExchangeFailure::Store(e), key)
}

fn contended(key: Option<&Arc<Key>>) -> ExchangeError {
    warn!("token exchange: gave up after repeated concurrent changes to one session");
    ExchangeError::new(ExchangeFailure::Contended, key)
}

#[cfg(test)]
mod tests;
