//! Bench helper: issues N generated keys into the store a keygate config
//! names, concurrently, and writes their secrets one per line to a file (for
//! `bench/proxy.sh`). Calling `keygate keys create` 10,000 times would spend
//! most of its time starting processes and opening the store.
//!
//! Usage: `cargo run --release --example mkkeys -- CONFIG N OUT.txt [SCOPES] [PLAN]`
//! (SCOPES comma-separated, default `bench`; PLAN default `keys.default_plan`).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use keygate::clock::SystemClock;
use keygate::config::{self, ProcessEnv};
use keygate::manage::{CreateKey, KeyManager};
use keygate::store::{self, Actor};

/// Keys created at once: argon2 runs off the runtime while other tasks wait
/// on SQLite, which serialises writes anyway.
const WORKERS: usize = 8;

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        bail!("usage: mkkeys CONFIG N OUT.txt [SCOPES] [PLAN]");
    }
    let config_path = PathBuf::from(&args[0]);
    let n: usize = args[1].parse().context("N must be a number")?;
    let out = PathBuf::from(&args[2]);
    let scopes = args.get(3).map_or("bench", String::as_str);
    let plan = args.get(4).cloned();

    let config = match config::load(&config_path, &ProcessEnv) {
        Ok(config) => config,
        Err(errors) => {
            for e in errors.iter() {
                eprintln!("{e}");
            }
            bail!("invalid config {}", config_path.display());
        }
    };
    let store = store::open(&config.database).await?;
    store.migrate().await?;
    let manager = KeyManager::new(
        store,
        config.keys.clone(),
        config.plans.keys().cloned().collect(),
        Arc::new(SystemClock),
    );
    let scopes = scopes
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let template = CreateKey {
        name: String::new(),
        scopes,
        plan,
        ..CreateKey::default()
    };

    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..WORKERS {
        let manager = manager.clone();
        let template = template.clone();
        workers.spawn(async move {
            let actor = Actor::cli();
            let mut secrets = Vec::new();
            for i in (w..n).step_by(WORKERS) {
                let req = CreateKey {
                    name: format!("bench {i}"),
                    ..template.clone()
                };
                let issued = manager.create(req, &actor).await?;
                secrets.push(issued.secret.expose().to_owned());
            }
            anyhow::Ok(secrets)
        });
    }
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(&out).with_context(|| format!("cannot create {}", out.display()))?,
    );
    let mut written = 0usize;
    while let Some(done) = workers.join_next().await {
        for secret in done?? {
            writeln!(file, "{secret}")?;
            written += 1;
        }
    }
    file.flush()?;
    eprintln!(
        "created {written} keys in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
