//! `keygate keys …`: the key lifecycle from the command line, a thin edge over
//! [`crate::manage::KeyManager`]. The secret is printed once, by `create` and
//! `rotate`, and never again.

use std::collections::BTreeSet;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use serde_json::json;

use super::{CliError, output};
use crate::clock::SystemClock;
use crate::config::Config;
use crate::keys::model::{parse_duration, parse_expiry};
use crate::keys::{Key, KeyPatch, KeyStatus};
use crate::manage::history::{PointView, UsageView};
use crate::manage::series::{SeriesQuery, parse_instant};
use crate::manage::{CreateKey, FieldError, Issued, KeyManager, KeyView, ManageError};
use crate::store::{self, Actor, KeyFilter};

/// `keys` subcommands.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Issue a key and print its secret (shown once).
    Create(CreateArgs),
    /// List keys (never secrets).
    List(ListArgs),
    /// Show one key.
    Show(IdArgs),
    /// Change a key's name, scopes, plan, expiry, owner or metadata.
    Update(UpdateArgs),
    /// Disable a key (it can be enabled again).
    Disable(IdArgs),
    /// Re-enable a disabled key (a revoked key cannot be).
    Enable(IdArgs),
    /// Revoke a key permanently.
    Revoke(IdArgs),
    /// Issue a new secret for a key; the old one works for --grace.
    Rotate(RotateArgs),
    /// Import existing keys from a JSON-lines file, all or nothing.
    Import(ImportArgs),
    /// Show a key's requests per minute, hour or day, by outcome.
    Usage(UsageArgs),
}

/// Arguments of `keys create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Human name.
    #[arg(long)]
    pub name: String,
    /// Comma-separated scopes.
    #[arg(long, default_value = "")]
    pub scopes: String,
    /// Plan (default: keys.default_plan).
    #[arg(long)]
    pub plan: Option<String>,
    /// RFC 3339 instant, a duration such as 30d, or never.
    #[arg(long, default_value = "never", value_name = "WHEN")]
    pub expires: String,
    /// Owner (account / tenant).
    #[arg(long)]
    pub owner: Option<String>,
    /// Key prefix (default: keys.default_prefix).
    #[arg(long)]
    pub prefix: Option<String>,
    /// Free-form JSON object.
    #[arg(long)]
    pub metadata: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `keys list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this owner's keys.
    #[arg(long)]
    pub owner: Option<String>,
    /// Only keys with this status (active, inactive, revoked).
    #[arg(long)]
    pub status: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// A command on one key.
#[derive(Debug, Args)]
pub struct IdArgs {
    /// The key id (key_…).
    pub id: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `keys update`.
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// The key id (key_…).
    pub id: String,
    /// New name.
    #[arg(long)]
    pub name: Option<String>,
    /// New comma-separated scopes (replaces the set; "" clears it).
    #[arg(long)]
    pub scopes: Option<String>,
    /// New plan.
    #[arg(long)]
    pub plan: Option<String>,
    /// New expiry: RFC 3339, a duration such as 30d, or never.
    #[arg(long, value_name = "WHEN")]
    pub expires: Option<String>,
    /// New owner ("" clears it).
    #[arg(long)]
    pub owner: Option<String>,
    /// New metadata (a JSON object; replaces it).
    #[arg(long)]
    pub metadata: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `keys rotate`.
#[derive(Debug, Args)]
pub struct RotateArgs {
    /// The key id (key_…).
    pub id: String,
    /// How long the old secret keeps working (e.g. 24h; default 0 = stops now).
    #[arg(long, default_value = "0", value_name = "DURATION")]
    pub grace: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `keys usage`.
#[derive(Debug, Args)]
pub struct UsageArgs {
    /// The key id (key_…).
    pub id: String,
    /// Start: RFC 3339, or a duration ago such as 7d (default: --to minus 24h).
    #[arg(long, value_name = "WHEN")]
    pub from: Option<String>,
    /// End (exclusive): RFC 3339, or a duration ago (default: now).
    #[arg(long, value_name = "WHEN")]
    pub to: Option<String>,
    /// minute, hour or day (default: the finest giving at most 1,000 rows).
    #[arg(long)]
    pub granularity: Option<String>,
    /// Print JSON (the admin API's GET /v1/keys/{id}/usage body).
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `keys import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// JSON-lines file: {"key": "…", "name", "scopes", "plan", "expires_at", "owner", "prefix"?}.
    pub file: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs a `keys` subcommand.
pub async fn run(config: Config, cmd: KeysCommand) -> Result<(), CliError> {
    let manager = open_manager(&config).await?;
    let actor = Actor::cli();
    match cmd {
        KeysCommand::Create(args) => create(&manager, args, &actor).await,
        KeysCommand::List(args) => list(&manager, args).await,
        KeysCommand::Show(args) => {
            let key = manager.get(&args.id).await?;
            print_key(&manager, &key, args.json)
        }
        KeysCommand::Update(args) => update(&manager, args, &actor).await,
        KeysCommand::Disable(args) => set_status(&manager, args, KeyStatus::Inactive, &actor).await,
        KeysCommand::Enable(args) => set_status(&manager, args, KeyStatus::Active, &actor).await,
        KeysCommand::Revoke(args) => set_status(&manager, args, KeyStatus::Revoked, &actor).await,
        KeysCommand::Rotate(args) => rotate(&manager, args, &actor).await,
        KeysCommand::Import(args) => import(&manager, args, &actor).await,
        KeysCommand::Usage(args) => usage(&manager, args).await,
    }
}

/// Opens the store (migrating it when `database.auto_migrate` is on, as
/// `serve` does) and builds the key manager.
async fn open_manager(config: &Config) -> Result<KeyManager, CliError> {
    let store = store::open(&config.database).await?;
    if config.database.auto_migrate {
        store.migrate().await?;
    }
    Ok(KeyManager::new(
        store,
        config.keys.clone(),
        config.plans.keys().cloned().collect(),
        Arc::new(SystemClock),
    )
    .with_retention(config.usage.retention))
}

async fn create(manager: &KeyManager, args: CreateArgs, actor: &Actor) -> Result<(), CliError> {
    let now = manager.now();
    let req = CreateKey {
        scopes: split_scopes(&args.scopes),
        expires_at: parse_expiry(&args.expires, now)
            .map_err(|e| CliError::Usage(format!("--expires: {e}")))?,
        metadata: args.metadata.as_deref().map(parse_metadata).transpose()?,
        name: args.name,
        owner: args.owner,
        plan: args.plan,
        prefix: args.prefix,
    };
    let issued = manager.create(req, actor).await?;
    print_issued(manager, &issued, args.json, "Created")
}

async fn list(manager: &KeyManager, args: ListArgs) -> Result<(), CliError> {
    let status = args
        .status
        .as_deref()
        .map(str::parse::<KeyStatus>)
        .transpose()
        .map_err(|e| CliError::Usage(format!("--status: {e}")))?;
    let filter = KeyFilter {
        owner: args.owner,
        status,
        ..KeyFilter::default()
    };
    let keys = manager.list_all(&filter).await?;
    let now = manager.now();
    if args.json {
        let views: Vec<KeyView> = keys.iter().map(|k| KeyView::new(k, now)).collect();
        return output::json(&views);
    }
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|k| {
            let view = KeyView::new(k, now);
            vec![
                k.id.to_string(),
                k.name.clone(),
                format!("{}{}…", k.prefix, k.short_prefix),
                display_status(&view),
                k.plan.clone().unwrap_or_else(|| "-".into()),
                k.owner.clone().unwrap_or_else(|| "-".into()),
                k.expires_at.map_or_else(|| "never".into(), |t| t.to_rfc3339()),
            ]
        })
        .collect();
    let table = output::table(
        &["ID", "NAME", "KEY", "STATUS", "PLAN", "OWNER", "EXPIRES"],
        &rows,
    );
    output::line(format_args!("{}", table.trim_end()))
}

async fn update(manager: &KeyManager, args: UpdateArgs, actor: &Actor) -> Result<(), CliError> {
    let now = manager.now();
    let patch = KeyPatch {
        name: args.name,
        owner: args.owner.map(|o| (!o.is_empty()).then_some(o)),
        scopes: args.scopes.as_deref().map(split_scopes),
        plan: args.plan,
        expires_at: args
            .expires
            .as_deref()
            .map(|w| parse_expiry(w, now))
            .transpose()
            .map_err(|e| CliError::Usage(format!("--expires: {e}")))?,
        status: None,
        metadata: args.metadata.as_deref().map(parse_metadata).transpose()?,
    };
    if patch.is_empty() {
        return Err(CliError::Usage(
            "nothing to update: pass at least one of --name, --scopes, --plan, --expires, --owner, --metadata".into(),
        ));
    }
    let key = manager.update(&args.id, patch, actor).await?;
    print_key(manager, &key, args.json)
}

async fn set_status(
    manager: &KeyManager,
    args: IdArgs,
    status: KeyStatus,
    actor: &Actor,
) -> Result<(), CliError> {
    let key = manager.set_status(&args.id, status, actor).await?;
    print_key(manager, &key, args.json)
}

async fn rotate(manager: &KeyManager, args: RotateArgs, actor: &Actor) -> Result<(), CliError> {
    let grace = parse_duration(&args.grace).map_err(|e| CliError::Usage(format!("--grace: {e}")))?;
    let issued = manager.rotate(&args.id, grace, actor).await?;
    print_issued(manager, &issued, args.json, "Rotated")?;
    if !args.json {
        match issued.key.updated_at.checked_add_signed(grace) {
            Some(until) if grace > chrono::Duration::zero() => {
                output::line(format_args!(
                    "The previous secret keeps working until {}.",
                    until.to_rfc3339()
                ))?;
            }
            _ => output::line(format_args!("The previous secret no longer works."))?,
        }
    }
    Ok(())
}

async fn import(manager: &KeyManager, args: ImportArgs, actor: &Actor) -> Result<(), CliError> {
    let text = std::fs::read_to_string(&args.file)
        .map_err(|e| CliError::Failure(format!("cannot read {}: {e}", args.file.display())))?;
    let started = Instant::now();
    let show_progress = std::io::stderr().is_terminal();
    let progress = |done: usize, total: usize| {
        if show_progress {
            eprint!(
                "\r{}",
                progress_line(done, total, started.elapsed().as_secs_f64())
            );
            let _ = std::io::stderr().flush();
        }
    };
    let keys = manager.import(&text, actor, &progress).await?;
    if show_progress {
        eprintln!();
    }
    let seconds = started.elapsed().as_secs_f64();
    let rate = if seconds > 0.0 {
        keys.len() as f64 / seconds
    } else {
        0.0
    };
    if args.json {
        let ids: Vec<&str> = keys.iter().map(|k| k.id.as_str()).collect();
        return output::json(&json!({
            "imported": keys.len(),
            "ids": ids,
            "seconds": (seconds * 1000.0).round() / 1000.0,
            "keys_per_second": rate.round(),
        }));
    }
    output::line(format_args!(
        "imported {} keys in {seconds:.1}s ({rate:.0} keys/s)",
        keys.len()
    ))?;
    Ok(())
}

/// `done/total keys  rate keys/s  time left`.
fn progress_line(done: usize, total: usize, elapsed: f64) -> String {
    let rate = if elapsed > 0.0 { done as f64 / elapsed } else { 0.0 };
    let left = if rate > 0.0 {
        format!("{:.0}s left", (total - done.min(total)) as f64 / rate)
    } else {
        "estimating…".into()
    };
    format!("hashing {done}/{total} keys  {rate:.0} keys/s  {left}   ")
}

fn parse_metadata(text: &str) -> Result<serde_json::Value, CliError> {
    serde_json::from_str(text).map_err(|e| CliError::Usage(format!("--metadata: not valid JSON: {e}")))
}

fn display_status(view: &KeyView) -> String {
    if view.expired {
        "expired".into()
    } else {
        view.status.to_string()
    }
}

fn print_key(manager: &KeyManager, key: &Key, json: bool) -> Result<(), CliError> {
    let view = KeyView::new(key, manager.now());
    if json {
        return output::json(&view);
    }
    output::line(format_args!("id:            {}", view.id))?;
    output::line(format_args!("name:          {}", view.name))?;
    output::line(format_args!(
        "key:           {}{}… ({})",
        view.prefix,
        view.short_prefix,
        view.source.as_str()
    ))?;
    output::line(format_args!("status:        {}", display_status(&view)))?;
    output::line(format_args!(
        "plan:          {}",
        view.plan.as_deref().unwrap_or("none")
    ))?;
    output::line(format_args!(
        "scopes:        {}",
        view.scopes.iter().cloned().collect::<Vec<_>>().join(",")
    ))?;
    output::line(format_args!(
        "owner:         {}",
        view.owner.as_deref().unwrap_or("-")
    ))?;
    output::line(format_args!(
        "expires:       {}",
        view.expires_at.map_or_else(|| "never".into(), |t| t.to_rfc3339())
    ))?;
    output::line(format_args!("created:       {}", view.created_at.to_rfc3339()))?;
    output::line(format_args!("updated:       {}", view.updated_at.to_rfc3339()))?;
    output::line(format_args!(
        "last used:     {}",
        view.last_used_at
            .map_or_else(|| "never".into(), |t| t.to_rfc3339())
    ))?;
    output::line(format_args!("requests:      {}", view.request_count))?;
    if view.metadata.as_object().is_some_and(|m| !m.is_empty()) {
        output::line(format_args!("metadata:      {}", view.metadata))?;
    }
    Ok(())
}

async fn usage(manager: &KeyManager, args: UsageArgs) -> Result<(), CliError> {
    let now = manager.now();
    let query = SeriesQuery::parse_with(
        args.from.as_deref(),
        args.to.as_deref(),
        args.granularity.as_deref(),
        |field, text| instant_or_ago(field, text, now),
    )
    .map_err(ManageError::Invalid)?;
    let history = manager.key_history(&args.id, &query).await?;
    let view = UsageView::new(&args.id, history);
    if args.json {
        return output::json(&view);
    }
    let series = &view.series;
    output::line(format_args!(
        "key {}: {} requests all time, last used {}",
        view.key_id,
        view.usage.total,
        view.usage
            .last_used_at
            .map_or_else(|| "never".into(), |t| t.to_rfc3339())
    ))?;
    output::line(format_args!(
        "{} to {}, per {}:",
        series.from.to_rfc3339(),
        series.to.to_rfc3339(),
        series.granularity
    ))?;
    if std::io::stdout().is_terminal() {
        let totals: Vec<u64> = series.data.iter().map(|p| p.total).collect();
        output::line(format_args!("{}", sparkline(&totals)))?;
    }
    output::line(format_args!("{}", series_table(&series.data).trim_end()))
}

/// `text` as an instant: RFC 3339, or a duration (`7d`) before `now`.
fn instant_or_ago(field: &str, text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, FieldError> {
    if let Ok(ago) = parse_duration(text) {
        return Ok(now.checked_sub_signed(ago).unwrap_or(DateTime::<Utc>::MIN_UTC));
    }
    parse_instant(field, text)
        .map_err(|e| FieldError::new(field, format!("{}, or a duration ago such as 7d", e.message)))
}

/// A series as a table: one row per bucket, a column per outcome seen.
fn series_table(points: &[PointView]) -> String {
    let codes: BTreeSet<&str> = points
        .iter()
        .flat_map(|p| p.refused.keys().map(String::as_str))
        .collect();
    let upper: Vec<String> = codes.iter().map(|c| c.to_uppercase()).collect();
    let mut header = vec!["TIME", "TOTAL", "OK"];
    header.extend(upper.iter().map(String::as_str));
    let rows: Vec<Vec<String>> = points
        .iter()
        .map(|p| {
            let mut row = vec![p.time.to_rfc3339(), p.total.to_string(), p.ok.to_string()];
            row.extend(
                codes
                    .iter()
                    .map(|c| p.refused.get(*c).copied().unwrap_or(0).to_string()),
            );
            row
        })
        .collect();
    output::table(&header, &rows)
}

/// One character per value, `▁` (zero) to `█` (the largest).
fn sparkline(values: &[u64]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let max = values.iter().copied().max().unwrap_or(0);
    values
        .iter()
        .map(|&v| {
            if max == 0 {
                BARS[0]
            } else {
                // Any request shows above the baseline.
                let level = (u128::from(v) * 7).div_ceil(u128::from(max));
                BARS[usize::try_from(level).unwrap_or(7).min(7)]
            }
        })
        .collect()
}

fn print_issued(manager: &KeyManager, issued: &Issued, json: bool, verb: &str) -> Result<(), CliError> {
    if json {
        let mut value = serde_json::to_value(KeyView::new(&issued.key, manager.now()))
            .map_err(|e| CliError::Failure(format!("cannot render JSON: {e}")))?;
        if let Some(object) = value.as_object_mut() {
            object.insert("key".into(), json!(issued.secret.expose()));
        }
        return output::json(&value);
    }
    output::line(format_args!("{verb} key {} ({})", issued.key.id, issued.key.name))?;
    output::line(format_args!(""))?;
    output::line(format_args!("    {}", issued.secret.expose()))?;
    output::line(format_args!(""))?;
    output::line(format_args!(
        "This is the only time the secret is shown: store it now."
    ))?;
    Ok(())
}

/// The scopes of a comma-separated `--scopes` list (`a, b`), blanks
/// dropped; `manage` checks each one.
fn split_scopes(list: &str) -> BTreeSet<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_lists_split_on_commas() {
        assert_eq!(
            split_scopes("read, write,,orders:write ,"),
            ["orders:write", "read", "write"].map(String::from).into()
        );
        assert_eq!(split_scopes(" "), BTreeSet::new());
    }

    #[test]
    fn progress_line_shows_rate_and_time_left() {
        assert_eq!(
            progress_line(50, 100, 2.0),
            "hashing 50/100 keys  25 keys/s  2s left   "
        );
        assert!(progress_line(0, 100, 0.0).contains("estimating"));
    }
}
