//! `keygate check-config`: validate the file, print every problem.

use std::path::Path;

use clap::Args;
use serde_json::json;

use super::{CliError, output};
use crate::config;

/// Arguments of `check-config`.
#[derive(Debug, Args)]
pub struct CheckConfigArgs {
    /// Print the result as JSON (`{"ok": bool, "path": …, "errors": [{"path", "message"}]}`).
    #[arg(long)]
    pub json: bool,
}

/// Runs `check-config`.
pub fn run(path: &Path, args: CheckConfigArgs) -> Result<(), CliError> {
    let result = config::load(path, &config::env::ProcessEnv);
    if args.json {
        let errors: Vec<_> = match &result {
            Ok(_) => Vec::new(),
            Err(errors) => errors
                .0
                .iter()
                .map(|e| json!({ "path": e.path, "message": e.message }))
                .collect(),
        };
        output::json(&json!({ "ok": result.is_ok(), "path": path.display().to_string(), "errors": errors }))?;
    }
    match result {
        Ok(_) => {
            if !args.json {
                output::line(format_args!("{}: configuration is valid", path.display()))?;
            }
            Ok(())
        }
        Err(errors) => {
            if args.json {
                // The JSON on stdout already lists the problems; exit 2.
                Err(CliError::Usage(format!(
                    "{} problem(s) in {}",
                    errors.0.len(),
                    path.display()
                )))
            } else {
                Err(CliError::Config {
                    path: path.display().to_string(),
                    errors,
                })
            }
        }
    }
}
