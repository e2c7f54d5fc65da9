//! `TestGateway`: the real gateway in-process (proxy + admin on
//! `127.0.0.1:0`), the built-in echo upstream, a SQLite store in a temp dir,
//! a manual clock, and a key manager on the same store. Shut down on drop.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::TimeZone;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use keygate::app::Gateway;
use keygate::clock::ManualClock;
use keygate::config::Config;
use keygate::echo::EchoServer;
use keygate::manage::{CreateKey, Issued, KeyManager};
use keygate::store::Actor;

use super::FAST_HASH;

/// A response as the test sees it.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    /// Asserts an admin API problem: its status, code, content type and the
    /// documented shape (`type`, `status`, a `detail` ending in a period);
    /// returns the body.
    pub fn problem(&self, status: StatusCode, code: &str) -> serde_json::Value {
        assert_eq!(self.status, status, "{}", self.text());
        assert_eq!(
            self.header("content-type").as_deref(),
            Some("application/problem+json")
        );
        let parsed: keygate::admin::dto::ProblemBody = serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not the documented problem shape ({e}): {}", self.text()));
        assert_eq!(parsed.code, code);
        assert_eq!(parsed.status, status.as_u16());
        assert_eq!(parsed.type_uri, format!("urn:keygate:problem:{code}"));
        assert!(parsed.detail.ends_with('.'), "{}", parsed.detail);
        self.json()
    }

    /// What the echo upstream received (the reply of a forwarded request).
    pub fn echoed(&self) -> serde_json::Value {
        assert_eq!(
            self.status,
            StatusCode::OK,
            "not forwarded: {} {}",
            self.status,
            self.text()
        );
        self.json()
    }
}

/// The gateway under test.
pub struct TestGateway {
    gateway: Option<Gateway>,
    echo: EchoServer,
    pub clock: ManualClock,
    pub manager: KeyManager,
    client: Client<HttpConnector, Full<Bytes>>,
    default_plan: Option<String>,
    _dir: tempfile::TempDir,
}

/// The admin token of [`TestGateway::with_admin_token`].
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// The routes most tests use.
pub const DEFAULT_ROUTES: &str = r#"
[[routes]]
path = "/public/**"
auth = false

[[routes]]
path = "/v1/orders/**"
methods = ["GET"]
scopes = ["can_read_order"]

[[routes]]
path = "/v1/orders/**"
methods = ["POST", "PUT", "PATCH"]
scopes = ["can_write_order"]

[[routes]]
path = "/v1/admin/**"
scopes = ["admin"]

[plans.free]
api_access = false

[plans.pro]
limits = [{ requests = 10000, per = "1h" }]

[plans.enterprise]
unlimited = true
"#;

impl TestGateway {
    /// A gateway whose config is the defaults for tests plus `extra` TOML.
    pub async fn start(extra: &str) -> Self {
        Self::start_with(extra, |_| {}).await
    }

    /// A gateway like `start` whose admin API accepts [`ADMIN_TOKEN`] (as
    /// `KEYGATE_ADMIN_TOKEN` would set it).
    pub async fn with_admin_token(extra: &str) -> Self {
        Self::start_with(extra, |c| {
            c.admin.env_token = Some(keygate::keys::SecretString::from(ADMIN_TOKEN));
        })
        .await
    }

    /// Like `start`, letting the test adjust the resolved config.
    pub async fn start_with(extra: &str, adjust: impl FnOnce(&mut Config)) -> Self {
        let text = format!("[keys]\ndefault_plan = \"pro\"\n{FAST_HASH}\n{extra}");
        let no_env = std::collections::BTreeMap::<String, String>::new();
        let mut config = keygate::config::load_str(&text, "test", &no_env).unwrap_or_else(|e| panic!("{e}"));
        adjust(&mut config);
        Self::start_config(config).await
    }

    /// A gateway on a config file (e.g. `config/examples/…`), with the
    /// listeners, store, upstream and hash cost replaced for the test.
    pub async fn from_file(path: &str) -> Self {
        let no_env = std::collections::BTreeMap::<String, String>::new();
        let config =
            keygate::config::load(std::path::Path::new(path), &no_env).unwrap_or_else(|e| panic!("{e}"));
        Self::start_config(config).await
    }

    /// Starts a gateway on `config` after pointing it at loopback listeners,
    /// a temp-dir store and the echo upstream. Settings the test already
    /// changed from the defaults are kept.
    pub async fn start_config(config: Config) -> Self {
        Self::launch(config, true).await
    }

    /// Like `start_config`, but on the store `config.database.url` names
    /// (e.g. a Postgres schema shared by several gateways in one test).
    pub async fn start_config_on_its_database(config: Config) -> Self {
        Self::launch(config, false).await
    }

    async fn launch(mut config: Config, temp_store: bool) -> Self {
        let echo = EchoServer::start(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        config.server.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.server.admin_listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.server.shutdown_grace = Duration::from_secs(2);
        if temp_store {
            config.database.url = format!("sqlite://{}?mode=rwc", dir.path().join("keygate.db").display());
        }
        if config.upstream.authority == Config::default().upstream.authority {
            config.upstream.authority = echo.addr().to_string();
            config.upstream.url = format!("http://{}", echo.addr());
        }
        if config.upstream.timeout == Config::default().upstream.timeout {
            config.upstream.timeout = Duration::from_secs(2);
        }
        let fast = keygate::keys::HashParams {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        };
        config.keys.generated_hash = fast;
        config.keys.imported_hash = fast;
        let clock = ManualClock::new(chrono::Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap());
        let gateway = Gateway::start(&config, Arc::new(clock.clone())).await.unwrap();
        let manager = KeyManager::new(
            gateway.store().clone(),
            config.keys.clone(),
            config.plans.keys().cloned().collect(),
            Arc::new(clock.clone()),
        );
        Self {
            gateway: Some(gateway),
            echo,
            clock,
            manager,
            client: Client::builder(TokioExecutor::new()).build_http(),
            default_plan: config.keys.default_plan.clone(),
            _dir: dir,
        }
    }

    /// The proxy address.
    pub fn proxy(&self) -> SocketAddr {
        self.gateway.as_ref().unwrap().proxy_addr()
    }

    /// The admin address.
    pub fn admin(&self) -> SocketAddr {
        self.gateway.as_ref().unwrap().admin_addr()
    }

    /// The running gateway.
    pub fn gateway(&self) -> &Gateway {
        self.gateway.as_ref().unwrap()
    }

    /// The echo upstream's address.
    pub fn upstream(&self) -> SocketAddr {
        self.echo.addr()
    }

    /// Issues a key with these scopes on `plan`.
    pub async fn key(&self, scopes: &[&str], plan: &str) -> Issued {
        self.manager
            .create(
                CreateKey {
                    name: "test".into(),
                    scopes: scopes.iter().map(|s| (*s).to_owned()).collect::<BTreeSet<_>>(),
                    plan: Some(plan.into()),
                    ..CreateKey::default()
                },
                &Actor::cli(),
            )
            .await
            .unwrap()
    }

    /// The manual clock's time, in Unix seconds.
    pub fn clock_now(&self) -> i64 {
        use keygate::clock::Clock as _;
        self.clock.now().timestamp()
    }

    /// The plan new keys get by default (`keys.default_plan`).
    pub fn manager_default_plan(&self) -> String {
        self.default_plan
            .clone()
            .expect("this gateway has a keys.default_plan")
    }

    /// Sends a request to the proxy.
    pub async fn send(&self, method: Method, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        send(&self.client, self.proxy(), method, path, headers, body).await
    }

    /// GET on the proxy with headers.
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.send(Method::GET, path, headers, "").await
    }

    /// GET on the admin listener.
    pub async fn admin_get(&self, path: &str) -> Reply {
        send(&self.client, self.admin(), Method::GET, path, &[], "").await
    }

    /// A request to the admin listener with `Authorization: Bearer <token>`
    /// (when given) and, for a non-empty body, `Content-Type:
    /// application/json`.
    pub async fn admin_send(&self, method: Method, path: &str, token: Option<&str>, body: &str) -> Reply {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = Vec::new();
        if let Some(auth) = &auth {
            headers.push(("authorization", auth.as_str()));
        }
        if !body.is_empty() {
            headers.push(("content-type", "application/json"));
        }
        send(&self.client, self.admin(), method, path, &headers, body).await
    }

    /// A request to the admin listener with exactly these headers.
    pub async fn admin_send_with(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Reply {
        send(&self.client, self.admin(), method, path, headers, body).await
    }

    /// Waits (up to 5 s) until `check` holds, re-sending the request; for
    /// changes that travel through the change feed.
    pub async fn eventually(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        check: impl Fn(&Reply) -> bool,
    ) -> Reply {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let reply = self.get(path, headers).await;
            if check(&reply) || tokio::time::Instant::now() > deadline {
                return reply;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the gateway (drains) and waits for it.
    pub async fn stop(mut self) {
        if let Some(gateway) = self.gateway.take() {
            gateway.shutdown().await;
        }
    }

    /// Stops the gateway like [`Self::stop`] but keeps its files (the SQLite
    /// store) until the returned directory drops, so tests can read what the
    /// shutdown wrote.
    pub async fn stop_keeping_files(mut self) -> tempfile::TempDir {
        if let Some(gateway) = self.gateway.take() {
            gateway.shutdown().await;
        }
        self._dir
    }
}

/// Sends one request with the shared client.
pub async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let mut builder = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let request = builder.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

/// A client for tests that send many requests to one address: each answer
/// as its status and its body read as JSON (`null` when it is not JSON).
#[derive(Clone)]
pub struct JsonClient {
    client: Client<HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
}

impl JsonClient {
    /// A client of `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
            addr,
        }
    }

    /// Sends one request and reads the answer.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: Vec<(&'static str, String)>,
        body: String,
    ) -> (StatusCode, serde_json::Value) {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let reply = send(&self.client, self.addr, method, path, &headers, &body).await;
        let json = serde_json::from_slice(&reply.body).unwrap_or(serde_json::Value::Null);
        (reply.status, json)
    }
}

/// Sends raw bytes on a fresh connection and returns everything read until
/// the server closes or 2 s pass (for requests an HTTP client refuses to
/// build).
pub async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}
