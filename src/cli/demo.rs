//! `keygate demo`: one command for a newcomer. Starts an embedded store in a
//! temp dir, the built-in echo upstream and the gateway on loopback, issues a
//! demo key and an admin token, and prints the console's URL and curl lines
//! that work when pasted. Ctrl-C stops it all
//! and removes the temp dir.

use std::net::SocketAddr;
use std::sync::Arc;

use clap::Args;

use super::CliError;
use crate::app::{self, AppError, Gateway};
use crate::clock::SystemClock;
use crate::config::{self, Config};
use crate::echo::EchoServer;
use crate::manage::{CreateKey, KeyManager};
use crate::store::Actor;

/// Arguments of `demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Proxy port on 127.0.0.1 (0 = any free port; the admin listener takes
    /// the next one when free).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
}

/// The demo's configuration: routes that show every outcome.
const DEMO_CONFIG: &str = r#"
[server]
listen = "127.0.0.1:{PORT}"
admin_listen = "127.0.0.1:{ADMIN_PORT}"
shutdown_grace = "2s"

[database]
url = "{DATABASE}"

[upstream]
url = "{UPSTREAM}"

[[routes]]
path = "/public/**"
auth = false

[[routes]]
path = "/v1/orders/**"
methods = ["GET"]
scopes = ["can_read_order"]

[[routes]]
path = "/v1/orders/**"
methods = ["POST", "PUT", "PATCH", "DELETE"]
scopes = ["can_write_order"]
"#;

/// Runs `demo`.
pub async fn run(args: DemoArgs) -> Result<(), CliError> {
    crate::telemetry::init(crate::telemetry::LogFormat::Text, "warn");
    let dir = tempfile::Builder::new()
        .prefix("keygate-demo-")
        .tempdir()
        .map_err(|e| CliError::Failure(format!("cannot create a temp dir for the demo store: {e}")))?;
    let echo = EchoServer::start(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .map_err(|e| CliError::Failure(format!("cannot start the echo upstream: {e}")))?;
    let database = format!("sqlite://{}?mode=rwc", dir.path().join("demo.db").display());
    let upstream = format!("http://{}", echo.addr());

    let admin_port = if args.port == 0 {
        0
    } else {
        args.port.saturating_add(1)
    };
    // A fresh admin token each run: the console's sign-in.
    let admin_token = crate::admin::console::session::random_hex();
    let config = demo_config(args.port, admin_port, &database, &upstream, &admin_token)?;
    let gateway = match Gateway::start(&config, Arc::new(SystemClock)).await {
        Ok(gateway) => gateway,
        // The ports are taken: any free ones will do for a demo.
        Err(AppError::Bind { .. }) => Gateway::start(
            &demo_config(0, 0, &database, &upstream, &admin_token)?,
            Arc::new(SystemClock),
        )
        .await
        .map_err(|e| CliError::Failure(e.to_string()))?,
        Err(e) => return Err(CliError::Failure(e.to_string())),
    };

    let manager = KeyManager::new(
        gateway.store().clone(),
        config.keys.clone(),
        config.plans.keys().cloned().collect(),
        Arc::new(SystemClock),
    );
    let issued = manager
        .create(
            CreateKey {
                name: "demo".into(),
                scopes: ["can_read_order".to_owned()].into(),
                plan: Some("pro".into()),
                ..CreateKey::default()
            },
            &Actor::cli(),
        )
        .await?;
    let key = issued.secret.expose();
    let proxy = gateway.proxy_addr();
    let admin = gateway.admin_addr();
    println!("keygate demo is running");
    println!("  console      http://{admin}/console/  (open it; sign in with the admin token)");
    println!("  admin token  {admin_token}");
    println!("  gateway      http://{proxy}");
    println!("  upstream     {upstream} (echoes what it receives)");
    println!("  demo key     {key}  (scope can_read_order, plan pro)");
    println!();
    println!("# allowed: the upstream sees identity headers, never the key");
    println!("curl -i -H 'Authorization: Bearer {key}' http://{proxy}/v1/orders/42");
    println!("# the same key in X-API-Key");
    println!("curl -i -H 'X-API-Key: {key}' http://{proxy}/v1/orders/42");
    println!("# 401 missing_credentials");
    println!("curl -i http://{proxy}/v1/orders/42");
    println!("# 401 invalid_key (checksum fails before any lookup)");
    println!("curl -i -H 'X-API-Key: kg_live_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAA' http://{proxy}/v1/orders/42");
    println!("# 403 insufficient_scope: writing needs can_write_order");
    println!("curl -i -X POST -H 'X-API-Key: {key}' -d '{{}}' http://{proxy}/v1/orders");
    println!("# no key needed on a public route");
    println!("curl -i http://{proxy}/public/status");
    println!();
    println!("Press Ctrl-C to stop.");
    app::signal().await;
    gateway.shutdown().await;
    drop(echo);
    drop(dir);
    Ok(())
}

fn demo_config(
    port: u16,
    admin_port: u16,
    database: &str,
    upstream: &str,
    admin_token: &str,
) -> Result<Config, CliError> {
    let text = DEMO_CONFIG
        .replace("{PORT}", &port.to_string())
        .replace("{ADMIN_PORT}", &admin_port.to_string())
        .replace("{DATABASE}", database)
        .replace("{UPSTREAM}", upstream);
    // The demo ignores the environment: it must work whatever is set.
    let no_env = std::collections::BTreeMap::<String, String>::new();
    let mut config = config::load_str(&text, "demo", &no_env).map_err(|errors| CliError::Config {
        path: "demo".into(),
        errors,
    })?;
    config.admin.env_token = Some(admin_token.into());
    Ok(config)
}
