//! Key lifecycle operations — create, read, list, update, enable/disable,
//! revoke, rotate, import — and the revocation of token-exchange sessions,
//! shared by the CLI and the admin API, so both edges stay thin and write
//! the same audit rows.
//!
//! This module validates input against the configured plans and key
//! settings, generates and hashes secrets (off the async runtime), and calls
//! the [`KeyStore`](crate::store::KeyStore). It knows nothing of HTTP or of
//! terminals.

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use thiserror::Error;

use crate::clock::SharedClock;
use crate::keys::format::{self, GeneratedKey};
use crate::keys::{
    Key, KeyFormat, KeyId, KeyPatch, KeyPrefix, KeySettings, KeySource, KeyState, KeyStatus, ModelError,
    RevokeReason, SecretString, Session, SessionId, hash,
};
use crate::store::{Actor, AuditEntry, KeyFilter, NewKey, Page, PageRequest, SharedStore, StoreError, Usage};

mod fields;
pub mod history;
pub mod import;
pub mod series;

pub use fields::{FieldError, KeyFields};
pub use import::{ImportError, ImportLine, ImportProgress};

/// How many times `create`/`rotate` draw a new key when the short prefix is
/// already taken. With 62^8 short prefixes a second draw is already rare;
/// eight consecutive collisions mean something is wrong (e.g. a broken RNG).
const MAX_DRAWS: usize = 8;

/// Draws a new key for a prefix and format. Injectable so tests can force a
/// short-prefix collision.
pub type KeyGenerator = Arc<dyn Fn(&KeyPrefix, KeyFormat) -> GeneratedKey + Send + Sync>;

/// What a caller asks for when creating a key.
#[derive(Debug, Clone, Default)]
pub struct CreateKey {
    /// Human name (required).
    pub name: String,
    /// Owner (account / tenant).
    pub owner: Option<String>,
    /// Granted scopes.
    pub scopes: BTreeSet<String>,
    /// Plan; `None` = `keys.default_plan` (if that is unset too, the key
    /// has no plan).
    pub plan: Option<String>,
    /// Expiry; `None` = never.
    pub expires_at: Option<DateTime<Utc>>,
    /// Prefix; `None` = `keys.default_prefix`.
    pub prefix: Option<String>,
    /// Free-form JSON object.
    pub metadata: Option<serde_json::Value>,
}

/// A key together with its plain secret, returned once by create and rotate.
#[derive(Debug)]
pub struct Issued {
    /// The key's metadata.
    pub key: Key,
    /// The plain secret: show it once, never store it.
    pub secret: SecretString,
}

/// A key as users see it (CLI `--json`, admin API), never with its secret.
// The admin API's OpenAPI schema `Key` is derived from this type, so the
// description cannot drift from what both edges print.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = Key)]
pub struct KeyView {
    /// Stable id.
    #[schema(value_type = String, example = "key_01kaqz3m5v8x2c4n6b7d9f0g1h")]
    pub id: KeyId,
    /// Name.
    pub name: String,
    /// Owner.
    pub owner: Option<String>,
    /// Scopes, sorted.
    pub scopes: BTreeSet<String>,
    /// Plan; `null`: none (API access, no rate limits).
    pub plan: Option<String>,
    /// Stored status.
    #[schema(schema_with = status_schema)]
    pub status: KeyStatus,
    /// Whether `expires_at` has passed.
    pub expired: bool,
    /// Expiry; `null` = never.
    pub expires_at: Option<DateTime<Utc>>,
    /// The key's prefix, e.g. `kg_live_`.
    pub prefix: String,
    /// The public short prefix.
    pub short_prefix: String,
    /// `generated` or `imported`.
    #[schema(schema_with = source_schema)]
    pub source: KeySource,
    /// Free-form metadata.
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    /// Creation instant.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Last use through the gateway.
    pub last_used_at: Option<DateTime<Utc>>,
    /// Requests through the gateway.
    pub request_count: u64,
}

impl KeyView {
    /// The view of `key` at `now`.
    pub fn new(key: &Key, now: DateTime<Utc>) -> Self {
        Self {
            id: key.id.clone(),
            name: key.name.clone(),
            owner: key.owner.clone(),
            scopes: key.scopes.clone(),
            plan: key.plan.clone(),
            status: key.status,
            expired: key.state_at(now) == KeyState::Expired,
            expires_at: key.expires_at,
            prefix: key.prefix.clone(),
            short_prefix: key.short_prefix.clone(),
            source: key.source,
            metadata: key.metadata.clone(),
            created_at: key.created_at,
            updated_at: key.updated_at,
            last_used_at: key.last_used_at,
            request_count: key.request_count,
        }
    }
}

/// The spellings of [`KeyStatus`], for schemas.
pub const STATUS_NAMES: [&str; 3] = ["active", "inactive", "revoked"];

/// The schema of a [`KeyStatus`]: one of [`STATUS_NAMES`].
fn status_schema() -> utoipa::openapi::Object {
    enum_schema(
        &STATUS_NAMES,
        "Stored status: `inactive` can be re-enabled, `revoked` is final.",
    )
}

/// The schema of a [`KeySource`].
fn source_schema() -> utoipa::openapi::Object {
    enum_schema(&["generated", "imported"], "Where the current secret came from.")
}

fn enum_schema(names: &[&str], description: &str) -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::String)
        .enum_values(Some(names.iter().copied()))
        .description(Some(description))
        .build()
}

/// Why an operation failed. Edges map each variant to one exit code or
/// status.
#[derive(Debug, Error)]
pub enum ManageError {
    /// Bad input: every bad field and why (CLI exit 2, HTTP 422); never
    /// empty.
    #[error("{}", join(.0))]
    Invalid(Vec<FieldError>),
    /// No such key (exit 1, HTTP 404).
    #[error("no key with id {0}")]
    NotFound(String),
    /// No key has this owner, and it has no usage history (exit 1, HTTP
    /// 404).
    #[error("no key or usage history has the owner {0:?}")]
    OwnerNotFound(String),
    /// No token-exchange session with this (well-formed) id (exit 1, HTTP
    /// 404).
    #[error("no session with id {0}")]
    SessionNotFound(String),
    /// The key's state forbids the change (exit 1, HTTP 409).
    #[error("{0}")]
    Conflict(String),
    /// An import file had bad lines; nothing was written.
    #[error("{0}")]
    Import(#[from] ImportError),
    /// The store failed (exit 1, HTTP 503/500).
    #[error(transparent)]
    Store(StoreError),
    /// Hashing failed (bad parameters or a panicked worker).
    #[error("hashing failed: {0}")]
    Hash(String),
}

impl ManageError {
    fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::Invalid(vec![FieldError::new(field, message)])
    }
}

/// Field errors as one line: `name: …; plan: …`.
fn join(errors: &[FieldError]) -> String {
    let parts: Vec<String> = errors.iter().map(ToString::to_string).collect();
    parts.join("; ")
}

impl From<StoreError> for ManageError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(id) => Self::NotFound(id.to_string()),
            StoreError::Model(ModelError::RevokedIsFinal) => {
                Self::Conflict(ModelError::RevokedIsFinal.to_string())
            }
            other => Self::Store(other),
        }
    }
}

/// The key lifecycle service: cheap to clone.
#[derive(Clone)]
pub struct KeyManager {
    store: SharedStore,
    settings: Arc<KeySettings>,
    plans: Arc<BTreeSet<String>>,
    clock: SharedClock,
    generator: KeyGenerator,
    retention: series::Retention,
}

impl std::fmt::Debug for KeyManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyManager")
            .field("store", &self.store)
            .field("settings", &self.settings)
            .field("plans", &self.plans)
            .finish_non_exhaustive()
    }
}

impl KeyManager {
    /// A manager over `store`, issuing keys per `settings`; `plans` are the
    /// configured plan names.
    pub fn new(
        store: SharedStore,
        settings: KeySettings,
        plans: BTreeSet<String>,
        clock: SharedClock,
    ) -> Self {
        Self {
            store,
            settings: Arc::new(settings),
            plans: Arc::new(plans),
            clock,
            generator: Arc::new(format::generate),
            retention: series::Retention::DEFAULT,
        }
    }

    /// Sets how long the usage history keeps each tier
    /// (`usage.retention.*`; SPEC §13's defaults otherwise).
    pub fn with_retention(mut self, retention: series::Retention) -> Self {
        self.retention = retention;
        self
    }

    /// Replaces the key generator (tests force short-prefix collisions).
    pub fn with_generator(mut self, generator: KeyGenerator) -> Self {
        self.generator = generator;
        self
    }

    /// The store this manager writes to.
    pub fn store(&self) -> &SharedStore {
        &self.store
    }

    /// Now, from the injected clock.
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Creates a key and returns it with its secret (shown once).
    pub async fn create(&self, req: CreateKey, actor: &Actor) -> Result<Issued, ManageError> {
        let now = self.clock.now();
        let plan = req.plan.or_else(|| self.settings.default_plan.clone());
        let scopes: Vec<String> = req.scopes.iter().cloned().collect();
        self.check(&KeyFields {
            name: Some(&req.name),
            owner: req.owner.as_deref(),
            scopes: Some(&scopes),
            plan: plan.as_deref(),
            expires_at: req.expires_at,
            prefix: req.prefix.as_deref(),
            metadata: req.metadata.as_ref(),
        })?;
        let prefix = match &req.prefix {
            Some(p) => KeyPrefix::new(p).map_err(|e| ManageError::invalid("prefix", e.to_string()))?,
            None => self.settings.default_prefix.clone(),
        };
        let metadata = req.metadata.unwrap_or_else(|| serde_json::json!({}));
        let template = Key {
            id: KeyId::generate(now),
            name: req.name,
            owner: req.owner,
            scopes: req.scopes,
            plan,
            status: KeyStatus::Active,
            expires_at: req.expires_at,
            prefix: prefix.as_str().to_owned(),
            short_prefix: String::new(),
            source: KeySource::Generated,
            metadata,
            created_at: now,
            updated_at: now,
            last_used_at: None,
            request_count: 0,
        };
        for _ in 0..MAX_DRAWS {
            let (generated, key_hash) = self.draw(&prefix).await?;
            let mut key = template.clone();
            key.short_prefix = generated.parts.short_prefix.clone();
            match self.store.create_key(NewKey { key, hash: key_hash }, actor).await {
                Ok(key) => {
                    return Ok(Issued {
                        key,
                        secret: generated.secret,
                    });
                }
                Err(StoreError::ShortPrefixTaken) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ManageError::Store(StoreError::Database(format!(
            "could not draw an unused short prefix in {MAX_DRAWS} attempts"
        ))))
    }

    /// One key.
    pub async fn get(&self, id: &str) -> Result<Key, ManageError> {
        let id = parse_id(id)?;
        Ok(self.store.get_key(&id).await?)
    }

    /// One page of keys.
    pub async fn list(
        &self,
        filter: &KeyFilter,
        page: PageRequest<KeyId>,
    ) -> Result<Page<Key, KeyId>, ManageError> {
        Ok(self.store.list_keys(filter, page).await?)
    }

    /// Every key matching `filter` (walks the pages).
    pub async fn list_all(&self, filter: &KeyFilter) -> Result<Vec<Key>, ManageError> {
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let page = self.list(filter, PageRequest { limit: 500, after }).await?;
            all.extend(page.items);
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(all),
            }
        }
    }

    /// A key's usage: request counts by outcome and last use, from the
    /// batched usage counters (so up to one flush interval behind).
    pub async fn usage(&self, id: &str) -> Result<Usage, ManageError> {
        let id = parse_id(id)?;
        Ok(self.store.usage(&id).await?)
    }

    /// A key's latest `limit` audit entries, newest first.
    pub async fn key_audit(&self, id: &KeyId, limit: u32) -> Result<Vec<AuditEntry>, ManageError> {
        Ok(self.store.key_audit(id, limit).await?)
    }

    /// The configured plan names.
    pub fn plans(&self) -> &BTreeSet<String> {
        &self.plans
    }

    /// The plan of keys created without one (`keys.default_plan`).
    pub fn default_plan(&self) -> Option<String> {
        self.settings.default_plan.clone()
    }

    /// One page of the audit trail.
    pub async fn audit(&self, page: PageRequest<i64>) -> Result<Page<AuditEntry, i64>, ManageError> {
        Ok(self.store.audit(page).await?)
    }

    /// Applies a metadata/status patch after validating it.
    pub async fn update(&self, id: &str, patch: KeyPatch, actor: &Actor) -> Result<Key, ManageError> {
        let id = parse_id(id)?;
        let scopes: Option<Vec<String>> = patch.scopes.as_ref().map(|s| s.iter().cloned().collect());
        self.check(&KeyFields {
            name: patch.name.as_deref(),
            owner: patch.owner.as_ref().and_then(Option::as_deref),
            scopes: scopes.as_deref(),
            plan: patch.plan.as_deref(),
            expires_at: patch.expires_at.flatten(),
            prefix: None,
            metadata: patch.metadata.as_ref(),
        })?;
        let now = self.clock.now();
        Ok(self.store.update_key(&id, &patch, now, actor).await?)
    }

    /// Sets the stored status (enable = active, disable = inactive, revoke).
    pub async fn set_status(&self, id: &str, status: KeyStatus, actor: &Actor) -> Result<Key, ManageError> {
        let patch = KeyPatch {
            status: Some(status),
            ..KeyPatch::default()
        };
        self.update(id, patch, actor).await
    }

    /// Issues a new secret for the key; the old one keeps working for
    /// `grace` (zero = stops at once). A revoked key cannot be rotated.
    pub async fn rotate(&self, id: &str, grace: Duration, actor: &Actor) -> Result<Issued, ManageError> {
        let id = parse_id(id)?;
        if grace < Duration::zero() {
            return Err(ManageError::invalid(
                "grace",
                "the grace period cannot be negative",
            ));
        }
        let current = self.store.get_key(&id).await?;
        if current.status == KeyStatus::Revoked {
            return Err(ManageError::Conflict(
                "the key is revoked, and revocation is final: issue a new key instead".into(),
            ));
        }
        // Imported keys may carry prefixes our format cannot; those rotate
        // onto the default prefix.
        let prefix = KeyPrefix::new(&current.prefix).unwrap_or_else(|_| self.settings.default_prefix.clone());
        let now = self.clock.now();
        let grace_until = (grace > Duration::zero()).then(|| now + grace);
        for _ in 0..MAX_DRAWS {
            let (generated, key_hash) = self.draw(&prefix).await?;
            let result = self
                .store
                .rotate_key(
                    &id,
                    &generated.parts.prefix,
                    &generated.parts.short_prefix,
                    key_hash,
                    grace_until,
                    now,
                    actor,
                )
                .await;
            match result {
                Ok(key) => {
                    return Ok(Issued {
                        key,
                        secret: generated.secret,
                    });
                }
                Err(StoreError::ShortPrefixTaken) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ManageError::Store(StoreError::Database(format!(
            "could not draw an unused short prefix in {MAX_DRAWS} attempts"
        ))))
    }

    /// Revokes a token-exchange session at once (reason `admin`): the
    /// tokens it issued stop working on every gateway sharing the store, and
    /// `session_revoked` is audited. Revoking a revoked session changes
    /// nothing and returns it with its first revocation instant and reason.
    /// An id that is not `ses_` + a ULID is refused before any store call.
    pub async fn revoke_session(&self, id: &str, actor: &Actor) -> Result<Session, ManageError> {
        let id = parse_session_id(id)?;
        let now = self.clock.now();
        self.store
            .revoke_session(&id, RevokeReason::Admin, now, actor)
            .await?
            .ok_or_else(|| ManageError::SessionNotFound(id.to_string()))
    }

    /// Draws a key and hashes it with the generated parameter set, off the
    /// async runtime.
    async fn draw(&self, prefix: &KeyPrefix) -> Result<(GeneratedKey, crate::keys::KeyHash), ManageError> {
        let generated = (self.generator)(prefix, self.settings.format);
        let secret = generated.secret.clone();
        let params = self.settings.generated_hash;
        let key_hash = tokio::task::spawn_blocking(move || hash::hash_secret(&secret, &params))
            .await
            .map_err(|e| ManageError::Hash(e.to_string()))?
            .map_err(|e| ManageError::Hash(e.to_string()))?;
        Ok((generated, key_hash))
    }

    /// Every problem of a key's fields against the configured plans, now:
    /// what an edge reports beside its own syntax problems, in one answer.
    pub fn problems(&self, fields: &KeyFields<'_>) -> Vec<FieldError> {
        fields.problems(&self.plans, self.clock.now())
    }

    /// [`Self::problems`] as an error, before a write.
    fn check(&self, fields: &KeyFields<'_>) -> Result<(), ManageError> {
        let problems = self.problems(fields);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ManageError::Invalid(problems))
        }
    }
}

/// Parses a key id, as a validation error naming the field.
pub fn parse_id(id: &str) -> Result<KeyId, ManageError> {
    id.parse()
        .map_err(|e: ModelError| ManageError::invalid("id", e.to_string()))
}

/// Parses a session id, as a validation error on `session_id`. The
/// message does not repeat the id: it comes from a path of any length.
pub fn parse_session_id(id: &str) -> Result<SessionId, ManageError> {
    id.parse().map_err(|_| {
        ManageError::invalid(
            "session_id",
            format!(
                "session ids are '{}' followed by {} letters and digits",
                SessionId::PREFIX,
                SessionId::ULID_LEN
            ),
        )
    })
}

#[cfg(test)]
mod tests;
