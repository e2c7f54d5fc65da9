//! `keygate migrate`: apply pending migrations and exit.

use clap::Args;
use serde_json::json;

use super::{CliError, output};
use crate::config::Config;
use crate::store;

/// Arguments of `migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `migrate`.
pub async fn run(config: Config, args: MigrateArgs) -> Result<(), CliError> {
    let store = store::open(&config.database).await?;
    let report = store.migrate().await?;
    if args.json {
        output::json(&json!({ "applied": report.applied, "current": report.current }))
    } else {
        if report.applied.is_empty() {
            output::line(format_args!("schema is up to date (version {})", report.current))?;
        } else {
            for version in &report.applied {
                output::line(format_args!("applied migration {version}"))?;
            }
            output::line(format_args!("schema is at version {}", report.current))?;
        }
        Ok(())
    }
}
