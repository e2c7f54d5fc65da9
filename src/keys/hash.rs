//! argon2id hashing of key secrets, stored as PHC strings.
//!
//! Two parameter sets exist (SPEC §2). Keys keygate generates carry at least
//! 128 random bits, so brute force is hopeless whatever the cost and a light
//! set (1 MiB, t = 1, p = 1: about a millisecond) keeps cold verifications and
//! restarts cheap. Imported keys have unknown entropy, so they get OWASP's
//! recommended set (19 MiB, t = 2, p = 1). The PHC string records the
//! parameters it was made with, so verification needs no configuration and
//! changing the configured sets only affects new hashes.
//!
//! Everything here is synchronous and CPU-bound: callers on the async runtime
//! move it to `spawn_blocking`.
//!
//! The gateway verifies through a [`ScratchPool`]: argon2's working memory
//! (1 MiB per generated-key verification) is reused instead of allocated per
//! hash. Allocating it each time let the allocator keep a megabyte-sized
//! free chunk per blocking thread that ever hashed, so a gateway's memory
//! grew with the number of distinct keys it verified rather than staying
//! bounded by its cache size.
//!
//! The gateway verifies through a [`ScratchPool`]: argon2's working memory
//! (1 MiB per generated-key verification) is reused instead of allocated per
//! hash. Allocating it each time let the allocator keep a megabyte-sized
//! free chunk per blocking thread that ever hashed, so a gateway's memory
//! grew with the number of distinct keys it verified rather than staying
//! bounded by its cache size.

use std::fmt;
use std::sync::Mutex;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use subtle::ConstantTimeEq;
use thiserror::Error;
use zeroize::Zeroize;

use super::secret::SecretString;

/// argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashParams {
    /// Memory cost in KiB (`m`).
    pub memory_kib: u32,
    /// Number of passes (`t`).
    pub iterations: u32,
    /// Lanes (`p`).
    pub parallelism: u32,
}

impl HashParams {
    /// The light set for generated keys (SPEC §2): m = 1 MiB, t = 1, p = 1.
    pub const GENERATED: Self = Self {
        memory_kib: 1024,
        iterations: 1,
        parallelism: 1,
    };
    /// OWASP's set for imported keys (SPEC §2): m = 19 MiB, t = 2, p = 1.
    pub const IMPORTED: Self = Self {
        memory_kib: 19 * 1024,
        iterations: 2,
        parallelism: 1,
    };

    /// Checks the parameters are acceptable to argon2 and to us; the message
    /// names what to change.
    pub fn validate(&self) -> Result<(), String> {
        if self.parallelism == 0 || self.parallelism > 16 {
            return Err("parallelism must be between 1 and 16".into());
        }
        if self.memory_kib < 8 * self.parallelism {
            return Err(format!(
                "memory_kib must be at least 8 × parallelism ({})",
                8 * self.parallelism
            ));
        }
        if self.memory_kib > 1024 * 1024 {
            return Err("memory_kib must be at most 1048576 (1 GiB)".into());
        }
        if self.iterations == 0 || self.iterations > 64 {
            return Err("iterations must be between 1 and 64".into());
        }
        Ok(())
    }

    fn argon2(&self) -> Result<Argon2<'static>, HashError> {
        let params = Params::new(self.memory_kib, self.iterations, self.parallelism, None)
            .map_err(|e| HashError::Params(e.to_string()))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }
}

/// A stored PHC hash string. Not a secret in itself, but kept out of logs.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyHash(String);

impl KeyHash {
    /// Wraps a PHC string read from the store.
    pub fn from_phc(phc: String) -> Self {
        Self(phc)
    }

    /// The PHC string, for the store.
    pub fn as_phc(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyHash([redacted])")
    }
}

/// Hashing failed: bad parameters, or a stored hash that is not a PHC string.
#[derive(Debug, Error)]
pub enum HashError {
    /// The configured parameters are unusable.
    #[error("invalid argon2 parameters: {0}")]
    Params(String),
    /// argon2 itself failed.
    #[error("argon2 failed: {0}")]
    Argon2(String),
}

/// Hashes a secret with argon2id and a fresh random salt.
pub fn hash_secret(secret: &SecretString, params: &HashParams) -> Result<KeyHash, HashError> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    let hash = params
        .argon2()?
        .hash_password(secret.expose().as_bytes(), &salt)
        .map_err(|e| HashError::Argon2(e.to_string()))?;
    Ok(KeyHash(hash.to_string()))
}

/// Verifies a presented secret against a stored hash, using the parameters
/// recorded in the hash. argon2 compares the outputs in constant time. An
/// unparsable hash verifies nothing.
pub fn verify_secret(presented: &str, hash: &KeyHash) -> bool {
    let Ok(parsed) = PasswordHash::new(&hash.0) else {
        return false;
    };
    Argon2::default()
        .verify_password(presented.as_bytes(), &parsed)
        .is_ok()
}

/// Reusable argon2 working memory for verifications running at once.
///
/// Holds at most `max_buffers` buffers (the caller's hashing concurrency),
/// each as large as the largest `m` it has served; buffers are zeroed after
/// every use, since they hold values derived from the presented secret.
#[derive(Debug)]
pub struct ScratchPool {
    max_buffers: usize,
    // std Mutex: held to pop or push one buffer, never while hashing and never
    // across an await (this module is synchronous).
    free: Mutex<Vec<Vec<Block>>>,
}

impl ScratchPool {
    /// A pool keeping up to `max_buffers` (at least 1) buffers.
    pub fn new(max_buffers: usize) -> Self {
        Self {
            max_buffers: max_buffers.max(1),
            free: Mutex::new(Vec::new()),
        }
    }

    /// Whether `presented` matches the PHC string `hash`, like
    /// [`verify_secret`], with working memory from the pool. The comparison
    /// with the stored output runs in constant time.
    pub fn verify(&self, presented: &str, hash: &KeyHash) -> bool {
        let Ok(parsed) = PasswordHash::new(&hash.0) else {
            return false;
        };
        let (Ok(algorithm), Ok(params), Some(salt), Some(expected)) = (
            Algorithm::try_from(parsed.algorithm),
            Params::try_from(&parsed),
            parsed.salt,
            parsed.hash,
        ) else {
            return false;
        };
        let version = match parsed.version.map(Version::try_from) {
            None => Version::default(),
            Some(Ok(version)) => version,
            Some(Err(_)) => return false,
        };
        let mut salt_bytes = [0u8; 64];
        let Ok(salt) = salt.decode_b64(&mut salt_bytes) else {
            return false;
        };
        let mut out = [0u8; 64];
        let Some(out) = out.get_mut(..expected.len()) else {
            return false;
        };
        let blocks = params.block_count();
        let mut scratch = self.take();
        if scratch.len() < blocks {
            scratch.resize(blocks, Block::default());
        }
        let computed = Argon2::new(algorithm, version, params).hash_password_into_with_memory(
            presented.as_bytes(),
            salt,
            out,
            &mut scratch[..blocks],
        );
        scratch[..blocks].iter_mut().for_each(Zeroize::zeroize);
        self.give_back(scratch);
        let matched = computed.is_ok() && bool::from(out.ct_eq(expected.as_bytes()));
        out.zeroize();
        matched
    }

    fn take(&self) -> Vec<Block> {
        self.free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .unwrap_or_default()
    }

    fn give_back(&self, scratch: Vec<Block>) {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        if free.len() < self.max_buffers {
            free.push(scratch);
        }
    }
}

/// The parameters a stored hash was made with, if it is an argon2id PHC string.
pub fn params_of(hash: &KeyHash) -> Option<HashParams> {
    let parsed = PasswordHash::new(&hash.0).ok()?;
    if parsed.algorithm.as_str() != "argon2id" {
        return None;
    }
    let params = Params::try_from(&parsed).ok()?;
    Some(HashParams {
        memory_kib: params.m_cost(),
        iterations: params.t_cost(),
        parallelism: params.p_cost(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TINY: HashParams = HashParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    #[test]
    fn hash_then_verify() {
        let secret = SecretString::from("kg_live_abc");
        let hash = hash_secret(&secret, &TINY).unwrap();
        assert!(hash.as_phc().starts_with("$argon2id$v=19$m=64,t=1,p=1$"));
        assert!(verify_secret("kg_live_abc", &hash));
        assert!(!verify_secret("kg_live_abd", &hash));
        assert!(!verify_secret("", &hash));
        assert!(!hash.as_phc().contains("kg_live_abc"));
    }

    #[test]
    fn the_scratch_pool_verifies_like_verify_secret_and_keeps_its_buffers() {
        let pool = ScratchPool::new(2);
        for params in [TINY, HashParams::GENERATED] {
            let hash = hash_secret(&SecretString::from("kg_live_abc"), &params).unwrap();
            assert!(pool.verify("kg_live_abc", &hash));
            assert!(!pool.verify("kg_live_abd", &hash));
            assert!(!pool.verify("", &hash));
        }
        assert_eq!(pool.free.lock().unwrap().len(), 1, "one buffer, reused");
        let grown = pool.free.lock().unwrap()[0].len();
        assert_eq!(grown, 1024, "as large as the largest m served, in 1 KiB blocks");
        assert!(
            pool.free.lock().unwrap()[0]
                .iter()
                .all(|b| b.as_ref().iter().all(|w| *w == 0)),
            "zeroed after use"
        );
        for bad in [
            "",
            "not a phc",
            "$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ",
            "$argon2id$v=99$m=64,t=1,p=1$c2FsdHNhbHQ$AAAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert!(!pool.verify("x", &KeyHash::from_phc(bad.into())), "{bad}");
        }
        // Hashes argon2 itself made with other variants still verify.
        let argon2i = Argon2::new(
            Algorithm::Argon2i,
            Version::V0x13,
            Params::new(64, 1, 1, None).unwrap(),
        )
        .hash_password(b"x", &SaltString::generate(&mut rand::rngs::OsRng))
        .unwrap()
        .to_string();
        assert!(pool.verify("x", &KeyHash::from_phc(argon2i.clone())));
        assert!(verify_secret("x", &KeyHash::from_phc(argon2i)));
    }

    #[test]
    fn salts_differ() {
        let secret = SecretString::from("same");
        assert_ne!(
            hash_secret(&secret, &TINY).unwrap(),
            hash_secret(&secret, &TINY).unwrap()
        );
    }

    #[test]
    fn both_parameter_sets_are_recorded_in_the_phc_string() {
        let secret = SecretString::from("x");
        for params in [HashParams::GENERATED, HashParams::IMPORTED] {
            let hash = hash_secret(&secret, &params).unwrap();
            assert_eq!(params_of(&hash), Some(params));
            assert!(verify_secret("x", &hash));
        }
    }

    #[test]
    fn garbage_hashes_verify_nothing() {
        for bad in ["", "plain", "$argon2id$v=19$m=64,t=1,p=1$bad"] {
            assert!(!verify_secret("x", &KeyHash::from_phc(bad.into())));
        }
    }

    #[test]
    fn params_validation() {
        assert!(HashParams::GENERATED.validate().is_ok());
        assert!(HashParams::IMPORTED.validate().is_ok());
        for bad in [
            HashParams {
                memory_kib: 4,
                ..TINY
            },
            HashParams {
                iterations: 0,
                ..TINY
            },
            HashParams {
                parallelism: 0,
                ..TINY
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn debug_is_redacted() {
        let hash = KeyHash::from_phc("$argon2id$secretish".into());
        assert!(!format!("{hash:?}").contains("secretish"));
    }
}
