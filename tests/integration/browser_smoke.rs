//! The browser harness itself (support/browser.rs): headless Chromium over
//! WebDriver against a tiny page served here under a strict
//! Content-Security-Policy: a labelled form posted and echoed, a button that
//! an external script enhances, a cookie, a screenshot and axe-core's
//! accessibility check; and the same form with JavaScript disabled.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::support::browser::{Browser, BrowserOptions};

const CSP: &str = "default-src 'self'";

const INDEX: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Smoke form</title>
<script src="/app.js" defer></script>
</head>
<body>
<main>
<h1>Smoke form</h1>
<form method="post" action="/echo">
<label for="name">Name</label>
<input id="name" name="name" type="text" autocomplete="off">
<button type="submit">Send</button>
</form>
<button type="button" id="reveal" aria-controls="hint" aria-expanded="false" hidden>Show hint</button>
<p id="hint" hidden>Any text will do.</p>
<noscript><p id="noscript">The hint needs JavaScript.</p></noscript>
<script>document.title = "inline script ran";</script>
</main>
</body>
</html>
"#;

/// The enhancement: shows the hint button and makes it toggle the hint.
const APP_JS: &str = r#"document.documentElement.dataset.js = "on";
const button = document.getElementById("reveal");
const hint = document.getElementById("hint");
button.hidden = false;
button.addEventListener("click", () => {
  hint.hidden = !hint.hidden;
  button.setAttribute("aria-expanded", String(!hint.hidden));
});
"#;

/// An input without a label: axe must call it out.
const UNLABELLED: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Unlabelled</title></head>
<body><main><h1>Unlabelled</h1><input type="text" name="q"></main></body></html>
"#;

fn html(body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
        ],
        body,
    )
        .into_response()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

async fn echo(form: String) -> Response {
    let fields: Vec<(String, String)> = serde_urlencoded::from_str(&form).unwrap();
    let name = fields
        .iter()
        .find(|(k, _)| k == "name")
        .map(|(_, v)| v.as_str())
        .unwrap_or("");
    let mut resp = html(format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>Echo</title></head><body><main><h1>Echo</h1>\
         <p id=\"result\">Hello, {}!</p><p><a href=\"/\">Again</a></p></main></body></html>\n",
        escape(name)
    ));
    resp.headers_mut().insert(
        header::SET_COOKIE,
        "smoke=posted; Path=/; HttpOnly; SameSite=Strict".parse().unwrap(),
    );
    resp
}

/// Serves the pages on a free loopback port.
async fn serve() -> SocketAddr {
    let app = Router::new()
        .route("/", get(|| async { html(INDEX.to_owned()) }))
        .route("/echo", axum::routing::post(echo))
        .route("/unlabelled", get(|| async { html(UNLABELLED.to_owned()) }))
        .route(
            "/app.js",
            get(|| async { ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], APP_JS) }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn shot(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/browser-smoke")
        .join(name)
}

/// Fills the form with `value` and submits it; returns the echoed text.
async fn submit(browser: &Browser, value: &str) -> String {
    let input = browser.find("#name").await;
    input.send_keys("to be cleared").await;
    input.clear().await;
    input.send_keys(value).await;
    assert_eq!(input.prop("value").await, json!(value));
    browser.find("form button[type=submit]").await.click().await;
    browser
        .wait_for("#result", Duration::from_secs(5))
        .await
        .text()
        .await
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Chromium: apt-get install chromium chromium-driver"]
async fn form_flow_with_javascript() {
    let addr = serve().await;
    let browser = Browser::start().await;
    let home = format!("http://{addr}/");
    browser.goto(&home).await;

    // The CSP is in force: the inline script did not run, the external one did.
    assert_eq!(browser.title().await, "Smoke form");
    let root = browser.find("html").await;
    assert_eq!(root.attr("data-js").await.as_deref(), Some("on"));
    assert_eq!(root.attr("data-missing").await, None);
    assert!(browser.source().await.contains("<h1>Smoke form</h1>"));
    assert_eq!(browser.find_all("button").await.len(), 2);
    assert!(browser.try_find("#nothing-here").await.is_none());
    assert!(browser.try_find("#noscript").await.is_none());
    let form = browser.find("form").await;
    assert_eq!(form.find_all("input").await.len(), 1);
    assert_eq!(form.find("label").await.text().await, "Name");

    // The enhanced button toggles the hint.
    let reveal = browser.find("#reveal").await;
    let hint = browser.find("#hint").await;
    assert!(reveal.is_displayed().await);
    assert!(!hint.is_displayed().await);
    reveal.click().await;
    assert!(hint.is_displayed().await);
    assert_eq!(hint.text().await, "Any text will do.");
    assert_eq!(reveal.attr("aria-expanded").await.as_deref(), Some("true"));

    // WebDriver's scripts run under the page's CSP, with element arguments.
    let sum = browser
        .execute("return arguments[0] + arguments[1];", &[json!(2), json!(3)])
        .await;
    assert_eq!(sum, json!(5));
    let id = browser.execute("return arguments[0].id;", &[hint.json()]).await;
    assert_eq!(id, json!("hint"));
    let later = browser
        .execute_async(
            "const done = arguments[arguments.length - 1]; setTimeout(() => done('later'), 10);",
            &[],
        )
        .await;
    assert_eq!(later, json!("later"));

    browser.assert_no_serious_a11y_violations("smoke form").await;

    // The form, posted and echoed (escaped).
    let echoed = submit(&browser, "<b>Ada & \"Bob\"</b>").await;
    assert_eq!(echoed, "Hello, <b>Ada & \"Bob\"</b>!");
    assert_eq!(browser.current_url().await, format!("http://{addr}/echo"));
    assert_eq!(browser.title().await, "Echo");
    let cookies = browser.cookies().await;
    let smoke = cookies
        .iter()
        .find(|c| c["name"] == "smoke")
        .unwrap_or_else(|| panic!("no smoke cookie in {cookies:?}"));
    assert_eq!(smoke["value"], "posted");
    assert_eq!(smoke["httpOnly"], true);
    assert_eq!(smoke["sameSite"], "Strict");
    browser.assert_no_serious_a11y_violations("echo page").await;

    let path = shot("echo.png");
    let _ = std::fs::remove_file(&path);
    browser.screenshot(&path).await;
    let png = std::fs::read(&path).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");

    browser.back().await;
    assert_eq!(browser.current_url().await, home);
    browser.refresh().await;
    assert_eq!(browser.title().await, "Smoke form");

    browser.set_window_size(400, 800).await;
    let width = browser.execute("return window.innerWidth;", &[]).await;
    assert_eq!(width, json!(400));
    browser.screenshot(shot("narrow.png")).await;

    // axe reports what it should: an unlabelled input is critical.
    browser.goto(&format!("http://{addr}/unlabelled")).await;
    let results = browser.axe().await;
    let label = results["violations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["id"] == "label")
        .unwrap_or_else(|| panic!("axe missed the unlabelled input: {results}"));
    assert_eq!(label["impact"], "critical");
    assert_eq!(label["nodes"][0]["target"], json!(["input"]));

    browser.quit().await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Chromium: apt-get install chromium chromium-driver"]
async fn form_flow_without_javascript() {
    let addr = serve().await;
    let browser = Browser::start_with(BrowserOptions {
        javascript: false,
        window: (800, 600),
    })
    .await;
    let home = format!("http://{addr}/");
    browser.goto(&home).await;

    // The page's scripts never ran: no enhancement, the button stays hidden,
    // the <noscript> text shows.
    assert_eq!(browser.title().await, "Smoke form");
    assert_eq!(browser.find("html").await.attr("data-js").await, None);
    assert!(!browser.find("#reveal").await.is_displayed().await);
    assert!(browser.find("#noscript").await.is_displayed().await);
    browser
        .assert_no_serious_a11y_violations("smoke form without JavaScript")
        .await;

    // The form works all the same.
    let echoed = submit(&browser, "no script").await;
    assert_eq!(echoed, "Hello, no script!");
    assert!(browser.cookies().await.iter().any(|c| c["name"] == "smoke"));
    browser.screenshot(shot("echo-nojs.png")).await;
    browser
        .assert_no_serious_a11y_violations("echo page without JavaScript")
        .await;

    // axe turned scripting on for its run only.
    browser.goto(&home).await;
    assert_eq!(browser.title().await, "Smoke form");
    assert_eq!(browser.find("html").await.attr("data-js").await, None);
    // Dropped without quit: the session is deleted in Drop.
}
