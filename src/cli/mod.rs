//! The command line: clap definitions and dispatch. One file per command;
//! every command that prints takes `--json`. Exit codes: 0 ok, 1 failure,
//! 2 usage or configuration error; errors go to stderr.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use thiserror::Error;

use crate::config::{self, Config, ConfigErrors};
use crate::manage::ManageError;

pub mod check_config;
pub mod demo;
pub mod keys;
pub mod migrate;
mod output;
pub mod serve;

/// keygate: an API-key authentication gateway.
#[derive(Debug, Parser)]
#[command(name = "keygate", version, about, propagate_version = true)]
pub struct Cli {
    /// Config file (default: $KEYGATE_CONFIG, else config/keygate.toml).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy and admin listeners until SIGTERM/SIGINT.
    Serve(serve::ServeArgs),
    /// Start a throwaway store, an echo upstream and the gateway on loopback.
    Demo(demo::DemoArgs),
    /// Apply pending migrations to the configured store and exit.
    Migrate(migrate::MigrateArgs),
    /// Validate the config file: exit 0, or print every problem and exit 2.
    CheckConfig(check_config::CheckConfigArgs),
    /// Manage API keys.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
}

/// A command failure, with its exit code.
#[derive(Debug, Error)]
pub enum CliError {
    /// Bad arguments (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The configuration is invalid (exit 2).
    #[error("invalid configuration in {path}:\n{errors}")]
    Config {
        /// The file.
        path: String,
        /// Every problem.
        errors: ConfigErrors,
    },
    /// The command failed (exit 1).
    #[error("{0}")]
    Failure(String),
}

impl CliError {
    /// The process exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) | Self::Config { .. } => 2,
            Self::Failure(_) => 1,
        }
    }
}

impl From<ManageError> for CliError {
    fn from(e: ManageError) -> Self {
        match e {
            ManageError::Invalid(errors) => {
                let lines: Vec<String> = errors
                    .iter()
                    .map(|e| format!("{}: {}", flag_of(&e.field), e.message))
                    .collect();
                Self::Usage(lines.join("\n"))
            }
            other => Self::Failure(other.to_string()),
        }
    }
}

/// The command-line spelling of a field `manage` names: `scopes[1]` is
/// `--scopes`, `expires_at` is `--expires`; other names stay as they are
/// (`id` is an argument, `file` the import file).
fn flag_of(field: &str) -> String {
    let member = field.split('[').next().unwrap_or(field);
    match member {
        "name" | "owner" | "scopes" | "plan" | "prefix" | "metadata" | "grace" | "from" | "to"
        | "granularity" => {
            format!("--{member}")
        }
        "expires_at" => "--expires".to_owned(),
        _ => field.to_owned(),
    }
}

impl From<crate::store::StoreError> for CliError {
    fn from(e: crate::store::StoreError) -> Self {
        Self::Failure(e.to_string())
    }
}

/// Runs the parsed command line and returns the exit code.
pub fn run(cli: Cli) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(dispatch(cli));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

async fn dispatch(cli: Cli) -> Result<(), CliError> {
    let config_path = config::config_path(cli.config.as_deref(), &config::env::ProcessEnv);
    match cli.command {
        Command::Serve(args) => serve::run(load_config(&config_path)?, args).await,
        Command::Demo(args) => demo::run(args).await,
        Command::CheckConfig(args) => check_config::run(&config_path, args),
        Command::Migrate(args) => migrate::run(load_config(&config_path)?, args).await,
        Command::Keys(cmd) => keys::run(load_config(&config_path)?, cmd).await,
    }
}

/// Loads and validates the config, or returns every problem (exit 2).
pub fn load_config(path: &std::path::Path) -> Result<Config, CliError> {
    let config = config::load(path, &config::env::ProcessEnv).map_err(|errors| CliError::Config {
        path: path.display().to_string(),
        errors,
    })?;
    crate::telemetry::init(config.log.format, &config.log.level);
    Ok(config)
}
