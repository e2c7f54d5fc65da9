//! What a key is: its format and checksum, its secret wrappers, its argon2id
//! hash and its metadata model with the time-dependent decisions (status,
//! expiry, rotation grace).
//!
//! Pure: no tokio, axum, hyper or sqlx. Callers pass `now` and parameters.

pub mod format;
pub mod hash;
pub mod model;
pub mod secret;
pub mod session;
pub mod usage;

pub use format::{KeyFormat, KeyFormatError, KeyParts, KeyPrefix};
pub use hash::{HashParams, KeyHash};
pub use model::{Key, KeyId, KeyPatch, KeySource, KeyState, KeyStatus, ModelError, SecretRecord};
pub use secret::{SecretStr, SecretString};
pub use session::{RevokeReason, Session, SessionId, SessionState, TokenDigest};

/// Settings for issuing keys (`[keys]`).
#[derive(Debug, Clone, PartialEq)]
pub struct KeySettings {
    /// Prefix of keys created without `--prefix` (`keys.default_prefix`).
    pub default_prefix: KeyPrefix,
    /// Body format of generated keys (`keys.format`).
    pub format: KeyFormat,
    /// Plan of keys created without `--plan` (`keys.default_plan`); `None`:
    /// such keys have no plan (API access, no rate limits).
    pub default_plan: Option<String>,
    /// argon2id parameters for generated keys (`keys.hash.generated`).
    pub generated_hash: HashParams,
    /// argon2id parameters for imported keys (`keys.hash.imported`).
    pub imported_hash: HashParams,
}
