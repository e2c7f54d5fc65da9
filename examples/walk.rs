//! Bench helper: sends one GET per key in a file (header `X-API-Key`), with
//! C requests in flight over keep-alive connections, and prints one JSON
//! line: requests, seconds, requests/s, and the count of each status. Used
//! by `bench/proxy.sh` to time the first pass over every key after a
//! restart (the cold-cache warm-up).
//!
//! Usage: `walk URL KEYS_FILE [CONCURRENCY]` (default concurrency 64).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        bail!("usage: walk URL KEYS_FILE [CONCURRENCY]");
    }
    let uri: Uri = args[0].parse().context("URL")?;
    let keys: Arc<Vec<String>> = Arc::new(
        std::fs::read_to_string(&args[1])
            .with_context(|| format!("cannot read {}", args[1]))?
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect(),
    );
    let concurrency: usize = args.get(2).map_or(Ok(64), |c| c.parse()).context("CONCURRENCY")?;

    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(concurrency)
        .build(connector);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, keys, next, uri) = (client.clone(), Arc::clone(&keys), Arc::clone(&next), uri.clone());
        tasks.spawn(async move {
            let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(key) = keys.get(i) else { break };
                let req = Request::get(uri.clone())
                    .header("x-api-key", key)
                    .body(Empty::new())?;
                let label = match client.request(req).await {
                    Ok(response) => {
                        let status = response.status().as_u16().to_string();
                        // Drain the body so the connection goes back to the pool.
                        let _ = response.into_body().collect().await;
                        status
                    }
                    Err(_) => "error".to_owned(),
                };
                *statuses.entry(label).or_default() += 1;
            }
            anyhow::Ok(statuses)
        });
    }
    let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
    while let Some(done) = tasks.join_next().await {
        for (status, count) in done?? {
            *statuses.entry(status).or_default() += count;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let requests: u64 = statuses.values().sum();
    println!(
        "{}",
        serde_json::json!({
            "requests": requests,
            "seconds": seconds,
            "requests_per_second": requests as f64 / seconds,
            "statuses": statuses,
        })
    );
    Ok(())
}
