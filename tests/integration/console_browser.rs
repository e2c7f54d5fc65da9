//! The operator console (SPEC §14) in headless Chromium, as a person uses
//! it: sign in, create a key and use its secret on the proxy, take a scope
//! away and see the proxy refuse, read the chart after traffic, rotate and
//! revoke; the same without JavaScript; a forged form refused; axe-core's
//! accessibility check on every page; screenshots at desktop and phone
//! widths into `target/screenshots/` (the README shows some).

use std::path::PathBuf;
use std::time::Duration;

use http::StatusCode;

use crate::support::browser::{Browser, BrowserOptions};
use crate::support::gateway::{ADMIN_TOKEN, DEFAULT_ROUTES, TestGateway};

/// Phone width (an iPhone 12–15's CSS pixels) and a desktop.
const PHONE: (u32, u32) = (390, 844 + 143);
const DESKTOP: (u32, u32) = (1280, 900);

fn shot(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/screenshots")
        .join(format!("{name}.png"))
}

/// Waits (up to 5 s) until the page's heading is `text`: a click that
/// submits a form returns before the next page has replaced this one, whose
/// heading may still be read.
async fn heading_becomes(browser: &Browser, text: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let heading = browser
            .execute(
                "const h = document.querySelector('main h1'); return h ? h.textContent : null",
                &[],
            )
            .await;
        if heading == text {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the heading stayed {heading}, not {text:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Signs in through the form.
async fn sign_in(browser: &Browser, console: &str) {
    browser.goto(&format!("{console}/")).await;
    assert!(
        browser.current_url().await.ends_with("/console/login"),
        "signed out goes to sign-in"
    );
    browser.find("#token").await.send_keys(ADMIN_TOKEN).await;
    browser.find("form.stack button[type=submit]").await.click().await;
    heading_becomes(browser, "Overview").await;
}

/// Fills the new-key form and returns the secret shown.
async fn create_key(browser: &Browser, console: &str, name: &str) -> String {
    browser.goto(&format!("{console}/keys/new")).await;
    browser.find("#name").await.send_keys(name).await;
    browser.find("#owner").await.send_keys("acme").await;
    browser
        .find("input[name=scopes][value=can_read_order]")
        .await
        .click()
        .await;
    browser
        .find("input[name=expires][value='90d']")
        .await
        .click()
        .await;
    browser.find("form.stack button[type=submit]").await.click().await;
    browser
        .wait_for("#secret", Duration::from_secs(5))
        .await
        .text()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Chromium: apt-get install chromium chromium-driver"]
async fn an_operator_manages_a_key_in_a_real_browser() {
    let gw = TestGateway::with_admin_token(DEFAULT_ROUTES).await;
    let console = format!("http://{}/console", gw.admin());
    let browser = Browser::start_with(BrowserOptions {
        javascript: true,
        window: DESKTOP,
    })
    .await;

    browser.goto(&format!("{console}/login")).await;
    browser.assert_no_serious_a11y_violations("sign-in").await;
    browser.screenshot(shot("console-sign-in")).await;
    // A wrong token: told so, still signed out.
    browser.find("#token").await.send_keys("wrong").await;
    browser.find("form.stack button[type=submit]").await.click().await;
    let alert = browser.wait_for("[role=alert]", Duration::from_secs(5)).await;
    assert!(alert.text().await.contains("not valid"));
    sign_in(&browser, &console).await;
    let cookies = browser.cookies().await;
    let session = cookies
        .iter()
        .find(|c| c["name"] == "kg_console")
        .expect("the session cookie");
    assert_eq!(session["httpOnly"], true);
    assert_eq!(session["sameSite"], "Strict");
    browser
        .assert_no_serious_a11y_violations("overview (empty)")
        .await;

    // Create a key; the secret is shown once and works on the proxy.
    let secret = create_key(&browser, &console, "orders app").await;
    assert!(secret.starts_with("kg_"), "{secret}");
    browser.assert_no_serious_a11y_violations("new secret").await;
    browser.screenshot(shot("console-secret")).await;
    // The copy button exists only with JavaScript; it says what it did.
    browser.find("button[data-copy]").await.click().await;
    let status = browser.find("#secret-status").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!status.text().await.is_empty(), "the copy button reports");
    assert!(!browser.current_url().await.contains(&secret));
    for _ in 0..5 {
        let ok = gw.get("/v1/orders/1", &[("x-api-key", &secret)]).await;
        assert_eq!(ok.status, StatusCode::OK);
    }
    let denied = gw
        .send(http::Method::POST, "/v1/orders", &[("x-api-key", &secret)], "{}")
        .await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    gw.gateway().flush_usage().await.unwrap();

    // The key's page: the chart drawn from the history, the audit rows.
    browser.find("a.button").await.click().await;
    browser.wait_for("figure.chart svg", Duration::from_secs(5)).await;
    let bars = browser.find_all("figure.chart svg rect").await;
    assert_eq!(bars.len(), 2, "one bucket: ok and insufficient_scope stacked");
    let legend = browser.find("ul.legend").await.text().await;
    assert!(
        legend.contains("ok: 5") && legend.contains("insufficient_scope: 1"),
        "{legend}"
    );
    browser.assert_no_serious_a11y_violations("key page").await;
    browser.screenshot(shot("console-key")).await;
    let key_url = browser.current_url().await;
    for range in ["7d", "30d"] {
        browser
            .find(&format!("nav.tabs a[href='?range={range}']"))
            .await
            .click()
            .await;
        // The link's page, once it has replaced this one.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !browser.current_url().await.ends_with(&format!("?range={range}")) {
            assert!(
                std::time::Instant::now() < deadline,
                "the {range} tab did not open"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        browser.wait_for("figure.chart svg", Duration::from_secs(5)).await;
    }

    // Take the read scope away: the proxy refuses the key.
    browser.goto(&key_url).await;
    let scopes = browser.find("#scopes").await;
    scopes.clear().await;
    scopes.send_keys("extra:scope").await;
    browser.find("form.stack button[type=submit]").await.click().await;
    heading_becomes(&browser, "orders app").await;
    let refused = gw
        .eventually("/v1/orders/1", &[("x-api-key", &secret)], |r| {
            r.status == StatusCode::FORBIDDEN
        })
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);

    // Rotate: a new secret; the old one keeps working through the grace.
    browser.find("#grace").await.send_keys("no time").await;
    browser.find("form[action$='/rotate'] button").await.click().await;
    let rotated = browser
        .wait_for("#secret", Duration::from_secs(5))
        .await
        .text()
        .await;
    assert_ne!(rotated, secret);
    browser.goto(&key_url).await;

    // Revoke: the button stays disabled until the name is typed.
    let revoke = browser.find("form[action$='/revoke'] button.danger").await;
    assert_eq!(revoke.prop("disabled").await, true);
    browser.find("#confirm").await.send_keys("orders app").await;
    assert_eq!(revoke.prop("disabled").await, false);
    revoke.click().await;
    browser.wait_for(".badge.revoked", Duration::from_secs(5)).await;
    let refused = gw
        .eventually("/v1/orders/1", &[("x-api-key", &rotated)], |r| {
            r.status == StatusCode::UNAUTHORIZED
        })
        .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);

    // A few more keys for the list and the overview.
    for name in ["billing worker", "mobile app"] {
        let secret = create_key(&browser, &console, name).await;
        gw.get("/v1/orders/1", &[("x-api-key", &secret)]).await;
    }
    gw.gateway().flush_usage().await.unwrap();
    browser.goto(&format!("{console}/keys")).await;
    assert_eq!(browser.find_all("table#keys tbody tr").await.len(), 3);
    let filter = browser.find("#live-filter").await;
    filter.send_keys("billing").await;
    let shown = browser.execute(
        "return [...document.querySelectorAll('table#keys tbody tr')].filter(r => !r.hidden).length",
        &[],
    );
    assert_eq!(shown.await, 1, "the live filter");
    browser.assert_no_serious_a11y_violations("keys").await;
    filter.clear().await;
    browser.goto(&format!("{console}/keys?status=revoked")).await;
    assert_eq!(browser.find_all("table#keys tbody tr").await.len(), 1);
    browser.goto(&format!("{console}/keys")).await;
    browser.screenshot(shot("console-keys")).await;
    browser.goto(&format!("{console}/")).await;
    browser.assert_no_serious_a11y_violations("overview").await;
    browser.screenshot(shot("console-overview")).await;
    browser.goto(&format!("{console}/audit")).await;
    browser.assert_no_serious_a11y_violations("audit").await;
    assert!(browser.source().await.contains("console:env"));
    browser.screenshot(shot("console-audit")).await;
    browser.goto(&format!("{console}/keys/new")).await;
    browser.assert_no_serious_a11y_violations("new key").await;
    browser.screenshot(shot("console-new-key")).await;

    // A form whose CSRF token was tampered with changes nothing.
    browser.goto(&format!("{console}/keys/new")).await;
    browser
        .execute(
            "document.querySelector('form.stack input[name=csrf]').value = 'forged'; return null",
            &[],
        )
        .await;
    browser.find("#name").await.send_keys("forged").await;
    browser.find("form.stack button[type=submit]").await.click().await;
    heading_becomes(&browser, "Nothing was changed").await;
    assert_eq!(gw.manager.list_all(&Default::default()).await.unwrap().len(), 3);

    // A phone: every page fits its width.
    browser.set_window_size(PHONE.0, PHONE.1).await;
    for (page, path) in [("overview", "/"), ("keys", "/keys"), ("new-key", "/keys/new")] {
        browser.goto(&format!("{console}{path}")).await;
        let overflow = browser
            .execute(
                "return document.documentElement.scrollWidth - document.documentElement.clientWidth",
                &[],
            )
            .await;
        assert!(
            overflow.as_i64().unwrap() <= 0,
            "{page} scrolls sideways on a phone: {overflow}"
        );
        browser.screenshot(shot(&format!("console-{page}-phone"))).await;
    }
    browser.goto(&key_url).await;
    browser.screenshot(shot("console-key-phone")).await;

    // Signing out ends the session.
    browser.find("header.top form button").await.click().await;
    browser.wait_for("#token", Duration::from_secs(5)).await;
    browser.goto(&format!("{console}/keys")).await;
    assert!(browser.current_url().await.ends_with("/console/login"));
    browser.quit().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Chromium: apt-get install chromium chromium-driver"]
async fn every_console_action_works_without_javascript() {
    let gw = TestGateway::with_admin_token(DEFAULT_ROUTES).await;
    let console = format!("http://{}/console", gw.admin());
    let browser = Browser::start_with(BrowserOptions {
        javascript: false,
        window: DESKTOP,
    })
    .await;
    sign_in(&browser, &console).await;
    let secret = create_key(&browser, &console, "no script").await;
    // No script: the copy button stays hidden, the secret is selectable text.
    assert!(!browser.find("button[data-copy]").await.is_displayed().await);
    assert_eq!(
        gw.get("/v1/orders/1", &[("x-api-key", &secret)]).await.status,
        StatusCode::OK
    );
    browser.find("a.button").await.click().await;
    browser.wait_for("#confirm", Duration::from_secs(5)).await;
    // Without script the revoke button is enabled; the server checks the name.
    browser
        .find("form[action$='/revoke'] button.danger")
        .await
        .click()
        .await;
    let alert = browser.wait_for("[role=alert]", Duration::from_secs(5)).await;
    assert!(alert.text().await.contains("type its name"));
    browser.find("#confirm").await.send_keys("no script").await;
    browser
        .find("form[action$='/revoke'] button.danger")
        .await
        .click()
        .await;
    browser.wait_for(".badge.revoked", Duration::from_secs(5)).await;
    browser
        .assert_no_serious_a11y_violations("key page without script")
        .await;
    let refused = gw
        .eventually("/v1/orders/1", &[("x-api-key", &secret)], |r| {
            r.status == StatusCode::UNAUTHORIZED
        })
        .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    browser.quit().await;
    gw.stop().await;
}
