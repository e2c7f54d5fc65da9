//! argon2id cost of the two parameter sets (SPEC §2): how long one
//! verification takes on this machine, which bounds cold-cache verifications,
//! restart warm-up and import speed. Run with `cargo bench --bench hash`.
//!
//! Target (issue 3): a generated-key verification ≤ 2 ms on one core.

use std::time::Instant;

use keygate::keys::format::generate;
use keygate::keys::hash::{ScratchPool, hash_secret, verify_secret};
use keygate::keys::{HashParams, KeyFormat, KeyHash, KeyPrefix};

/// A way to verify a secret against a stored hash.
type Verifier<'a> = dyn Fn(&str, &KeyHash) -> bool + 'a;

fn main() {
    let prefix = KeyPrefix::new("kg_live_").expect("valid prefix");
    // The gateway verifies through a scratch pool (reused, zeroed working
    // memory); the CLI through `verify_secret` (allocated per hash).
    let pool = ScratchPool::new(1);
    let pooled = |secret: &str, hash: &_| pool.verify(secret, hash);
    let allocating = |secret: &str, hash: &_| verify_secret(secret, hash);
    let verifiers: [(&str, &Verifier); 2] = [("pool", &pooled), ("alloc", &allocating)];
    for (label, params, rounds) in [
        ("generated (m=1MiB,t=1,p=1)", HashParams::GENERATED, 2000u32),
        ("imported  (m=19MiB,t=2,p=1)", HashParams::IMPORTED, 60),
    ] {
        for (how, verify) in verifiers {
            let label = format!("{label} {how}");
            let key = generate(&prefix, KeyFormat::Base62);
            let hash = hash_secret(&key.secret, &params).expect("hash");
            // Warm up allocator and caches.
            for _ in 0..rounds / 10 {
                assert!(verify(key.secret.expose(), &hash));
            }
            let mut samples = Vec::with_capacity(rounds as usize);
            for _ in 0..rounds {
                let start = Instant::now();
                let ok = verify(key.secret.expose(), &hash);
                samples.push(start.elapsed());
                assert!(ok);
            }
            samples.sort();
            let mean = samples.iter().sum::<std::time::Duration>() / rounds;
            let p50 = samples[samples.len() / 2];
            let p99 = samples[samples.len() * 99 / 100];
            println!(
                "verify {label}: mean {:.3} ms  p50 {:.3} ms  p99 {:.3} ms  ({:.0}/s on one core)",
                mean.as_secs_f64() * 1e3,
                p50.as_secs_f64() * 1e3,
                p99.as_secs_f64() * 1e3,
                1.0 / mean.as_secs_f64()
            );
        }
    }
}
