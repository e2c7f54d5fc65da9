//! `Browser`: headless Chromium driven over W3C WebDriver (Debian's
//! `chromium` and `chromium-driver`), for the web dashboard's tests.
//!
//! A small client of our own over hyper: chromedriver is spawned on a free
//! loopback port, one session per `Browser`, and both are ended on drop.
//! Every method panics with the WebDriver error on a protocol error: these
//! are test helpers, a panic is the test's failure.
//!
//! The tests that use it are `#[ignore = "needs Chromium: apt-get install
//! chromium chromium-driver"]`; CI runs them with `--include-ignored`, where a
//! missing browser fails them.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

/// What to install when the browser is missing.
const INSTALL: &str = "apt-get install chromium chromium-driver";
/// The W3C key of an element reference.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
/// How long chromedriver may take to answer `/status` ready.
const DRIVER_START: Duration = Duration::from_secs(10);
/// An upper bound on any one WebDriver command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// How often `wait_for` looks again.
const POLL: Duration = Duration::from_millis(50);

/// How a session is started.
#[derive(Clone, Copy, Debug)]
pub struct BrowserOptions {
    /// JavaScript on. False: the page's scripts never run (inline, external,
    /// event attributes; `<noscript>` renders), for the no-JS checks, in
    /// this session's window (a window the page opens has it on);
    /// WebDriver's own scripts (`execute`, `axe`) still run.
    pub javascript: bool,
    /// The outer window size in CSS pixels (`--window-size`). The viewport
    /// is as wide but shorter: headless Chromium 156 keeps 143 px for its
    /// invisible browser UI (1280×900 gives a 1280×757 viewport).
    pub window: (u32, u32),
}

impl Default for BrowserOptions {
    fn default() -> Self {
        Self {
            javascript: true,
            window: (1280, 900),
        }
    }
}

/// One headless Chromium session and the chromedriver serving it.
pub struct Browser {
    driver: Child,
    /// `http://127.0.0.1:PORT`, chromedriver's address.
    addr: SocketAddr,
    session: String,
    client: Client<HttpConnector, Full<Bytes>>,
    /// The session was deleted (`quit`).
    closed: bool,
    options: BrowserOptions,
    /// chromedriver's log (its stdout and stderr), for failure messages.
    log: tempfile::NamedTempFile,
}

/// An element of the current page.
pub struct Element<'a> {
    browser: &'a Browser,
    id: String,
}

impl Browser {
    /// A session with JavaScript on and a 1280×900 window.
    pub async fn start() -> Self {
        Self::start_with(BrowserOptions::default()).await
    }

    /// Spawns chromedriver on a free loopback port and starts a session.
    /// Panics, saying what to install, when chromedriver or chromium is
    /// missing.
    pub async fn start_with(options: BrowserOptions) -> Self {
        let driver_bin = find_binary(
            "chromedriver",
            &["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"],
        );
        let chromium_bin = find_binary("chromium", &["/usr/bin/chromium"]);
        let client = Client::builder(TokioExecutor::new()).build_http();

        // The port is bound and released, so another process may take it
        // first: then chromedriver exits and the next port is tried.
        let mut tries = 0;
        let (driver, addr, log) = loop {
            tries += 1;
            let log = tempfile::NamedTempFile::new().expect("chromedriver log file");
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free loopback port")
                .port();
            let mut driver = Command::new(&driver_bin)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(log.as_file().try_clone().expect("chromedriver log"))
                .stderr(log.as_file().try_clone().expect("chromedriver log"))
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", driver_bin.display()));
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            match wait_ready(&client, addr, &mut driver).await {
                Ok(()) => break (driver, addr, log),
                Err(why) => {
                    let _ = driver.kill();
                    let _ = driver.wait();
                    if tries >= 3 || !why.exited {
                        panic!(
                            "chromedriver ({}) did not get ready on {addr}: {}\n{}",
                            driver_bin.display(),
                            why.message,
                            read_log(log.path())
                        );
                    }
                }
            }
        };

        let (width, height) = options.window;
        let chrome = json!({
            "binary": chromium_bin,
            "args": [
                "--headless=new",
                // Needed as root (CI and the dev machines run as root).
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                format!("--window-size={width},{height}"),
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        });
        let caps = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "pageLoadStrategy": "normal",
                    "goog:chromeOptions": chrome,
                },
            },
        });
        let reply = raw_call(&client, addr, Method::POST, "/session".to_owned(), Some(caps)).await;
        let session = match &reply {
            Ok((status, body)) if status.is_success() => {
                body["value"]["sessionId"].as_str().map(str::to_owned)
            }
            _ => None,
        };
        let Some(session) = session else {
            let mut driver = driver;
            let _ = driver.kill();
            let _ = driver.wait();
            let why = match reply {
                Ok((_, body)) => webdriver_error(&body),
                Err(e) => e,
            };
            panic!(
                "cannot start a Chromium session ({} with {}): {why}\n\
                 (is Chromium installed? {INSTALL})\n{}",
                driver_bin.display(),
                chromium_bin.display(),
                read_log(log.path())
            );
        };
        let browser = Self {
            driver,
            addr,
            session,
            client,
            closed: false,
            options,
            log,
        };
        if !options.javascript {
            browser.set_scripting(false).await;
        }
        browser
    }

    /// Turns the page's scripting off or on through DevTools (chromedriver's
    /// `goog/cdp/execute`), for the current window, across navigations.
    ///
    /// Not the `webkit.webprefs.javascript_enabled` preference: under it
    /// timers never fire, not even for WebDriver's scripts (axe needs them),
    /// and it cannot be lifted for a moment; this can.
    async fn set_scripting(&self, on: bool) {
        let body = json!({
            "cmd": "Emulation.setScriptExecutionDisabled",
            "params": { "value": !on },
        });
        self.cmd(Method::POST, "/goog/cdp/execute", Some(body)).await;
    }

    /// Deletes the session (closing Chromium) and stops chromedriver.
    pub async fn quit(mut self) {
        self.delete_session().await;
    }

    async fn delete_session(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        let path = format!("/session/{}", self.session);
        if let Err(e) = raw_call(&self.client, self.addr, Method::DELETE, path, None).await {
            panic!("delete session: {e}");
        }
    }

    /// Sends one command of this session (`path` after `/session/{id}`) and
    /// returns its `value`; panics with the WebDriver error.
    async fn cmd(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        match self.try_cmd(method.clone(), path, body).await {
            Ok(value) => value,
            Err(e) => panic!("WebDriver {method} {path}: {}", e.message),
        }
    }

    /// Like `cmd`, the WebDriver error (`error`, `message`) as an `Err`.
    async fn try_cmd(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, WebDriverError> {
        let full = format!("/session/{}{path}", self.session);
        let (status, mut reply) = raw_call(&self.client, self.addr, method, full, body)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", read_log(self.log.path())));
        if status.is_success() {
            Ok(reply["value"].take())
        } else {
            Err(WebDriverError {
                error: reply["value"]["error"]
                    .as_str()
                    .unwrap_or("unknown error")
                    .to_owned(),
                message: webdriver_error(&reply),
            })
        }
    }

    /// Navigates to `url` and waits for the page's load event.
    pub async fn goto(&self, url: &str) {
        self.cmd(Method::POST, "/url", Some(json!({ "url": url }))).await;
    }

    /// The current page's URL.
    pub async fn current_url(&self) -> String {
        string(self.cmd(Method::GET, "/url", None).await)
    }

    /// The current page's title.
    pub async fn title(&self) -> String {
        string(self.cmd(Method::GET, "/title", None).await)
    }

    /// The current page's DOM serialized as HTML.
    pub async fn source(&self) -> String {
        string(self.cmd(Method::GET, "/source", None).await)
    }

    /// The first element matching `css`; panics when there is none.
    pub async fn find(&self, css: &str) -> Element<'_> {
        let value = self.cmd(Method::POST, "/element", Some(by_css(css))).await;
        self.element(value)
    }

    /// Every element matching `css`, in document order.
    pub async fn find_all(&self, css: &str) -> Vec<Element<'_>> {
        let value = self.cmd(Method::POST, "/elements", Some(by_css(css))).await;
        self.elements(value)
    }

    /// The first element matching `css`, if any.
    pub async fn try_find(&self, css: &str) -> Option<Element<'_>> {
        match self.try_cmd(Method::POST, "/element", Some(by_css(css))).await {
            Ok(value) => Some(self.element(value)),
            Err(e) if e.error == "no such element" => None,
            Err(e) => panic!("WebDriver find {css:?}: {}", e.message),
        }
    }

    /// Waits until an element matches `css` (polling), and returns it.
    pub async fn wait_for(&self, css: &str, timeout: Duration) -> Element<'_> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(el) = self.try_find(css).await {
                return el;
            }
            if Instant::now() >= deadline {
                panic!(
                    "no element matches {css:?} after {timeout:?} on {}",
                    self.current_url().await
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Runs `script` as a function body with `args` as `arguments` and
    /// returns its result (elements as `{"element-6066-…": id}`).
    pub async fn execute(&self, script: &str, args: &[Value]) -> Value {
        let body = json!({ "script": script, "args": args });
        self.cmd(Method::POST, "/execute/sync", Some(body)).await
    }

    /// Runs `script` with a callback as its last argument and returns what
    /// it passes to it (the session's script timeout applies, 30 s).
    pub async fn execute_async(&self, script: &str, args: &[Value]) -> Value {
        let body = json!({ "script": script, "args": args });
        self.cmd(Method::POST, "/execute/async", Some(body)).await
    }

    /// Resizes the outer window (CSS pixels; see `BrowserOptions::window`).
    pub async fn set_window_size(&self, width: u32, height: u32) {
        let body = json!({ "width": width, "height": height });
        self.cmd(Method::POST, "/window/rect", Some(body)).await;
    }

    /// Writes a PNG of the viewport to `path`, creating its parent dirs.
    pub async fn screenshot(&self, path: impl AsRef<Path>) {
        let path = path.as_ref();
        let png = string(self.cmd(Method::GET, "/screenshot", None).await);
        let png = base64::engine::general_purpose::STANDARD
            .decode(png)
            .expect("screenshot is base64");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        }
        std::fs::write(path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// The current page's cookies (WebDriver's shape: `name`, `value`,
    /// `path`, `domain`, `secure`, `httpOnly`, `sameSite`, `expiry`).
    pub async fn cookies(&self) -> Vec<Value> {
        match self.cmd(Method::GET, "/cookie", None).await {
            Value::Array(cookies) => cookies,
            other => panic!("cookies are not a list: {other}"),
        }
    }

    /// History back, waiting for the load.
    pub async fn back(&self) {
        self.cmd(Method::POST, "/back", Some(json!({}))).await;
    }

    /// Reloads the page, waiting for the load.
    pub async fn refresh(&self) {
        self.cmd(Method::POST, "/refresh", Some(json!({}))).await;
    }

    /// Runs axe-core on the current page and returns its results (`violations`,
    /// `incomplete`, …). axe is injected with WebDriver's execute, which the
    /// page's Content-Security-Policy does not restrict. In a session without
    /// JavaScript, scripting is turned on for the run only (axe needs timers):
    /// the page's own scripts, skipped at load, stay unrun.
    pub async fn axe(&self) -> Value {
        if !self.options.javascript {
            self.set_scripting(true).await;
        }
        let results = self.run_axe().await;
        if !self.options.javascript {
            self.set_scripting(false).await;
        }
        results
    }

    async fn run_axe(&self) -> Value {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/axe-core/axe.min.js");
        let source = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "cannot read {} ({e}): run .ci/run, or fetch it by hand: \
                 `npm pack axe-core@4` and extract package/axe.min.js there",
                path.display()
            )
        });
        let loaded = self
            .execute(&format!("{source}\n;return typeof window.axe;"), &[])
            .await;
        assert_eq!(loaded, "object", "axe-core did not load into the page");
        let results = self
            .execute_async(
                "const done = arguments[arguments.length - 1];\n\
                 window.axe.run(document, { resultTypes: ['violations'] })\n\
                   .then(r => done(r), e => done({ axeError: String(e && e.stack || e) }));",
                &[],
            )
            .await;
        if let Some(err) = results.get("axeError") {
            panic!("axe.run failed: {}", string(err.clone()));
        }
        results
    }

    /// Runs axe and panics listing every violation of impact `serious` or
    /// `critical`: rule id, help and the targets of each node.
    pub async fn assert_no_serious_a11y_violations(&self, page_name: &str) {
        let results = self.axe().await;
        let violations = results["violations"]
            .as_array()
            .unwrap_or_else(|| panic!("axe results without violations: {results}"));
        let serious: Vec<String> = violations
            .iter()
            .filter(|v| matches!(v["impact"].as_str(), Some("serious" | "critical")))
            .map(|v| {
                let targets: Vec<String> = v["nodes"]
                    .as_array()
                    .map(|nodes| nodes.iter().map(|n| n["target"].to_string()).collect())
                    .unwrap_or_default();
                format!(
                    "- {} ({}): {}\n    {}",
                    v["id"].as_str().unwrap_or("?"),
                    v["impact"].as_str().unwrap_or("?"),
                    v["help"].as_str().unwrap_or("?"),
                    targets.join("\n    ")
                )
            })
            .collect();
        assert!(
            serious.is_empty(),
            "{page_name} ({}): {} serious or critical accessibility violation(s):\n{}",
            self.current_url().await,
            serious.len(),
            serious.join("\n")
        );
    }

    fn element(&self, value: Value) -> Element<'_> {
        match value[ELEMENT_KEY].as_str() {
            Some(id) => Element {
                browser: self,
                id: id.to_owned(),
            },
            None => panic!("not an element reference: {value}"),
        }
    }

    fn elements(&self, value: Value) -> Vec<Element<'_>> {
        match value {
            Value::Array(items) => items.into_iter().map(|v| self.element(v)).collect(),
            other => panic!("not a list of elements: {other}"),
        }
    }
}

impl Drop for Browser {
    /// Deletes the session if `quit` was not called (a blocking request: drop
    /// cannot await, and a test may be unwinding), then kills chromedriver.
    fn drop(&mut self) {
        if !self.closed {
            self.closed = true;
            delete_session_blocking(self.addr, &self.session);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl<'a> Element<'a> {
    /// The element as an `execute` argument.
    pub fn json(&self) -> Value {
        json!({ ELEMENT_KEY: self.id })
    }

    async fn cmd(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let path = format!("/element/{}{path}", self.id);
        self.browser.cmd(method, &path, body).await
    }

    /// Clicks it (scrolled into view; fails if another element covers it).
    pub async fn click(&self) {
        self.cmd(Method::POST, "/click", Some(json!({}))).await;
    }

    /// Types `text` into it.
    pub async fn send_keys(&self, text: &str) {
        self.cmd(Method::POST, "/value", Some(json!({ "text": text })))
            .await;
    }

    /// Empties an input or textarea.
    pub async fn clear(&self) {
        self.cmd(Method::POST, "/clear", Some(json!({}))).await;
    }

    /// Its rendered text (what a person sees; hidden text is left out).
    pub async fn text(&self) -> String {
        string(self.cmd(Method::GET, "/text", None).await)
    }

    /// An attribute as written in the HTML, if present.
    pub async fn attr(&self, name: &str) -> Option<String> {
        match self.cmd(Method::GET, &format!("/attribute/{name}"), None).await {
            Value::Null => None,
            other => Some(string(other)),
        }
    }

    /// A DOM property (`value`, `checked`, …).
    pub async fn prop(&self, name: &str) -> Value {
        self.cmd(Method::GET, &format!("/property/{name}"), None).await
    }

    /// Whether it is rendered visible.
    pub async fn is_displayed(&self) -> bool {
        match self.cmd(Method::GET, "/displayed", None).await {
            Value::Bool(b) => b,
            other => panic!("displayed is not a bool: {other}"),
        }
    }

    /// The first descendant matching `css`; panics when there is none.
    pub async fn find(&self, css: &str) -> Element<'a> {
        let value = self.cmd(Method::POST, "/element", Some(by_css(css))).await;
        self.browser.element(value)
    }

    /// Every descendant matching `css`.
    pub async fn find_all(&self, css: &str) -> Vec<Element<'a>> {
        let value = self.cmd(Method::POST, "/elements", Some(by_css(css))).await;
        self.browser.elements(value)
    }
}

/// A WebDriver error reply.
struct WebDriverError {
    error: String,
    message: String,
}

/// Why chromedriver did not get ready.
struct NotReady {
    /// It exited (e.g. the port was taken): worth another port.
    exited: bool,
    message: String,
}

/// Polls `GET /status` until it says ready, the driver exits or
/// `DRIVER_START` passes.
async fn wait_ready(
    client: &Client<HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
    driver: &mut Child,
) -> Result<(), NotReady> {
    let deadline = Instant::now() + DRIVER_START;
    loop {
        if let Ok(Some(status)) = driver.try_wait() {
            return Err(NotReady {
                exited: true,
                message: format!("chromedriver exited ({status})"),
            });
        }
        let last = match raw_call(client, addr, Method::GET, "/status".to_owned(), None).await {
            Ok((_, body)) if body["value"]["ready"] == true => return Ok(()),
            Ok((_, body)) => format!("not ready: {body}"),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(NotReady {
                exited: false,
                message: format!("after {DRIVER_START:?}: {last}"),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// One HTTP exchange with chromedriver: the status and the JSON body.
async fn raw_call(
    client: &Client<HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
    method: Method,
    path: String,
    body: Option<Value>,
) -> Result<(http::StatusCode, Value), String> {
    let uri = format!("http://{addr}{path}");
    let mut req = Request::builder().method(method.clone()).uri(&uri);
    let body = match body {
        Some(body) => {
            req = req.header("content-type", "application/json; charset=utf-8");
            Bytes::from(body.to_string())
        }
        None => Bytes::new(),
    };
    let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
    let exchange = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| format!("{method} {uri}: {e}"))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{method} {uri}: reading the reply: {e}"))?
            .to_bytes();
        let json = serde_json::from_slice(&bytes).map_err(|e| {
            format!(
                "{method} {uri}: reply is not JSON ({e}): {}",
                String::from_utf8_lossy(&bytes)
            )
        })?;
        Ok((status, json))
    };
    tokio::time::timeout(COMMAND_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("{method} {uri}: no reply in {COMMAND_TIMEOUT:?}"))?
}

/// `DELETE /session/{id}` over a plain blocking socket (for `Drop`).
fn delete_session_blocking(addr: SocketAddr, session: &str) {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    let request = format!(
        "DELETE /session/{session} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).is_ok() {
        // chromedriver answers once Chromium has quit: the first bytes of
        // the reply are enough (it may keep the connection open after it).
        let mut first = [0u8; 64];
        let _ = stream.read(&mut first);
    }
}

/// The WebDriver error of a reply as `error: message`.
fn webdriver_error(body: &Value) -> String {
    let value = &body["value"];
    match (value["error"].as_str(), value["message"].as_str()) {
        (Some(error), Some(message)) => format!("{error}: {message}"),
        _ => body.to_string(),
    }
}

fn by_css(css: &str) -> Value {
    json!({ "using": "css selector", "value": css })
}

fn string(value: Value) -> String {
    match value {
        Value::String(s) => s,
        other => panic!("not a string: {other}"),
    }
}

/// `name` on PATH, else the first of `fallbacks` that exists; panics saying
/// what to install.
fn find_binary(name: &str, fallbacks: &[&str]) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let executable = |p: &Path| {
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    let on_path: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|dir| dir.join(name)).collect())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain(fallbacks.iter().map(PathBuf::from))
        .find(|p| executable(p))
        .unwrap_or_else(|| {
            panic!(
                "{name} not found (on PATH, {}): the browser tests need Chromium and \
                 ChromeDriver: {INSTALL}",
                fallbacks.join(", ")
            )
        })
}

/// The end of chromedriver's log, for a failure message.
fn read_log(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(30).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    format!("chromedriver log (last lines):\n{}", tail.join("\n"))
}
