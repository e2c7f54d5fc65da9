//! `keygate serve`: run the proxy and admin listeners until SIGTERM/SIGINT,
//! then drain in-flight requests and exit 0.

use std::sync::Arc;

use clap::Args;

use super::CliError;
use crate::app::{self, Gateway};
use crate::clock::SystemClock;
use crate::config::Config;

/// Arguments of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {}

/// Runs `serve`.
pub async fn run(config: Config, _args: ServeArgs) -> Result<(), CliError> {
    let gateway = Gateway::start(&config, Arc::new(SystemClock))
        .await
        .map_err(|e| CliError::Failure(e.to_string()))?;
    app::signal().await;
    tracing::info!(
        grace_ms = config.server.shutdown_grace.as_millis() as u64,
        "stopping: draining in-flight requests"
    );
    gateway.shutdown().await;
    Ok(())
}
