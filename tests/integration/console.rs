//! The operator console (SPEC §14) over plain HTTP, as a browser without
//! JavaScript uses it: sign-in with an admin token, the cookie and CSRF
//! rules, creating a key whose secret works on the proxy, changing its
//! scopes, revoking it after typing its name, the audit rows, sign-out.
//! (The same in a real browser: `console_browser`.)

use http::{Method, StatusCode};

use crate::support::gateway::{ADMIN_TOKEN, DEFAULT_ROUTES, Reply, TestGateway};

/// A browser without JavaScript: keeps the console's cookies.
struct Visitor<'a> {
    gw: &'a TestGateway,
    cookies: Vec<(String, String)>,
}

impl<'a> Visitor<'a> {
    fn new(gw: &'a TestGateway) -> Self {
        Self {
            gw,
            cookies: Vec::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn keep_cookies(&mut self, reply: &Reply) {
        for value in reply.headers.get_all("set-cookie") {
            let text = value.to_str().unwrap();
            let (pair, _) = text.split_once(';').unwrap_or((text, ""));
            let (name, value) = pair.split_once('=').unwrap();
            self.cookies.retain(|(n, _)| n != name);
            if !text.contains("Max-Age=0") {
                self.cookies.push((name.to_owned(), value.to_owned()));
            }
        }
    }

    async fn get(&mut self, path: &str) -> Reply {
        let cookie = self.cookie_header();
        let reply = self
            .gw
            .admin_send_with(Method::GET, path, &[("cookie", &cookie)], "")
            .await;
        self.keep_cookies(&reply);
        reply
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Reply {
        let cookie = self.cookie_header();
        let body = serde_urlencoded::to_string(form).unwrap();
        let reply = self
            .gw
            .admin_send_with(
                Method::POST,
                path,
                &[
                    ("cookie", &cookie),
                    ("content-type", "application/x-www-form-urlencoded"),
                ],
                &body,
            )
            .await;
        self.keep_cookies(&reply);
        reply
    }
}

/// The value of the first hidden `csrf` field of a page.
fn csrf(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a csrf field") + "name=\"csrf\" value=\"".len();
    page[at..].split('"').next().unwrap().to_owned()
}

/// The text of `<output id="secret" …>`.
fn shown_secret(page: &str) -> String {
    let at = page.find("<output id=\"secret\"").expect("the secret");
    let start = at + page[at..].find('>').unwrap() + 1;
    page[start..].split('<').next().unwrap().to_owned()
}

fn location(reply: &Reply) -> String {
    reply.header("location").unwrap_or_default()
}

#[tokio::test]
async fn an_operator_signs_in_manages_a_key_and_signs_out_without_javascript() {
    let gw = TestGateway::with_admin_token(DEFAULT_ROUTES).await;
    let mut browser = Visitor::new(&gw);

    // Signed out: every page sends to the sign-in form.
    let home = browser.get("/console/").await;
    assert_eq!(
        (home.status, location(&home)),
        (StatusCode::SEE_OTHER, "/console/login".to_owned())
    );
    let form = browser.get("/console/login").await;
    assert_eq!(form.status, StatusCode::OK);
    let csp = form.header("content-security-policy").unwrap();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(form.header("cache-control").as_deref(), Some("no-store"));
    assert_eq!(form.header("x-frame-options").as_deref(), Some("DENY"));
    let login_csrf = csrf(&form.text());

    // A wrong token, then a form from elsewhere (no matching form cookie).
    let wrong = browser
        .post(
            "/console/login",
            &[("csrf", &login_csrf), ("token", "not-the-token")],
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(
        wrong.text().contains("That admin token is not valid"),
        "{}",
        wrong.text()
    );
    let forged = Visitor::new(&gw)
        .post("/console/login", &[("csrf", "guessed"), ("token", ADMIN_TOKEN)])
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    assert!(
        forged
            .header("set-cookie")
            .is_none_or(|c| !c.starts_with("kg_console="))
    );

    // The right token: a session cookie, HttpOnly and SameSite=Strict.
    let login_csrf = csrf(&browser.get("/console/login").await.text());
    let signed_in = browser
        .post("/console/login", &[("csrf", &login_csrf), ("token", ADMIN_TOKEN)])
        .await;
    assert_eq!(
        (signed_in.status, location(&signed_in)),
        (StatusCode::SEE_OTHER, "/console/".to_owned())
    );
    let session_cookie = signed_in
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with("kg_console="))
        .expect("a session cookie");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/console", "Max-Age=43200"] {
        assert!(session_cookie.contains(attribute), "{session_cookie}");
    }
    assert!(!location(&signed_in).contains(ADMIN_TOKEN));
    let overview = browser.get("/console/").await;
    assert_eq!(overview.status, StatusCode::OK);
    assert!(
        overview.text().contains("<h1>Overview</h1>"),
        "{}",
        overview.text()
    );
    assert!(
        overview
            .text()
            .contains("No key has been used in the last 24 hours")
    );

    // Create a key: scopes offered from the route table; the secret shown once.
    let new = browser.get("/console/keys/new").await.text();
    assert!(new.contains("value=\"can_read_order\""), "{new}");
    let token = csrf(&new);
    let created = browser
        .post(
            "/console/keys/new",
            &[
                ("csrf", &token),
                ("name", "orders app"),
                ("owner", "acme"),
                ("scopes", "can_read_order"),
                ("scopes", "extra:scope"),
                ("plan", "pro"),
                ("expires", "30d"),
            ],
        )
        .await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.text());
    assert_eq!(created.header("cache-control").as_deref(), Some("no-store"));
    let secret = shown_secret(&created.text());
    assert!(secret.starts_with("kg_"), "{secret}");
    let reply = gw.get("/v1/orders/1", &[("x-api-key", &secret)]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let key = gw
        .manager
        .list_all(&Default::default())
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(key.owner.as_deref(), Some("acme"));
    assert_eq!(
        key.scopes.iter().collect::<Vec<_>>(),
        ["can_read_order", "extra:scope"]
    );
    let page = browser.get(&format!("/console/keys/{}", key.id)).await.text();
    assert!(!page.contains(&secret), "the secret is never shown again");

    // A form without the session's CSRF token changes nothing.
    let forged = browser
        .post(
            &format!("/console/keys/{}/edit", key.id),
            &[("name", "x"), ("scopes", "")],
        )
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    assert_eq!(gw.manager.get(key.id.as_str()).await.unwrap().name, "orders app");

    // Take the read scope away: the proxy refuses the key.
    let edited = browser
        .post(
            &format!("/console/keys/{}/edit", key.id),
            &[
                ("csrf", &token),
                ("name", "orders app"),
                ("owner", "acme"),
                ("scopes", "extra:scope"),
                ("plan", "pro"),
                ("expires", "never"),
            ],
        )
        .await;
    assert_eq!(edited.status, StatusCode::SEE_OTHER, "{}", edited.text());
    let refused = gw
        .eventually("/v1/orders/1", &[("x-api-key", &secret)], |r| {
            r.status == StatusCode::FORBIDDEN
        })
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);

    // Revoking asks for the key's name.
    let unconfirmed = browser
        .post(
            &format!("/console/keys/{}/revoke", key.id),
            &[("csrf", &token), ("confirm", "orders")],
        )
        .await;
    assert_eq!(unconfirmed.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        unconfirmed.text().contains("type its name"),
        "{}",
        unconfirmed.text()
    );
    let revoked = browser
        .post(
            &format!("/console/keys/{}/revoke", key.id),
            &[("csrf", &token), ("confirm", "orders app")],
        )
        .await;
    assert_eq!(revoked.status, StatusCode::SEE_OTHER);
    let refused = gw
        .eventually("/v1/orders/1", &[("x-api-key", &secret)], |r| {
            r.status == StatusCode::UNAUTHORIZED
        })
        .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);

    // The audit log names the console's token.
    let audit = browser.get("/console/audit").await.text();
    for action in ["created", "updated", "revoked"] {
        assert!(audit.contains(&format!("<td>{action}</td>")), "{action}: {audit}");
    }
    assert!(audit.contains("console:env"), "{audit}");

    // Signing out ends the session on the server: the old cookie is dead.
    let old = browser.cookie_header();
    let out = browser.post("/console/logout", &[("csrf", &token)]).await;
    assert_eq!(
        (out.status, location(&out)),
        (StatusCode::SEE_OTHER, "/console/login".to_owned())
    );
    let replayed = gw
        .admin_send_with(Method::GET, "/console/keys", &[("cookie", &old)], "")
        .await;
    assert_eq!(replayed.status, StatusCode::SEE_OTHER);
    gw.stop().await;
}

#[tokio::test]
async fn without_an_admin_token_the_console_says_how_to_set_one() {
    let gw = TestGateway::start(DEFAULT_ROUTES).await;
    let page = gw.admin_get("/console/login").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.text().contains("KEYGATE_ADMIN_TOKEN"), "{}", page.text());
    assert!(
        !page
            .text()
            .contains("<form method=\"post\" action=\"/console/login\"")
    );
    let assets = gw.admin_get("/console/assets/app.css").await;
    assert_eq!(assets.status, StatusCode::OK);
    assert_eq!(
        assets.header("content-type").as_deref(),
        Some("text/css; charset=utf-8")
    );
    assert_eq!(
        gw.admin_get("/console/assets/other.js").await.status,
        StatusCode::NOT_FOUND
    );
    gw.stop().await;
}

/// Without `keys.default_plan`, a key made or edited in the console keeps
/// no plan unless one is chosen (the plan menu offers "none" first).
#[tokio::test]
async fn a_key_without_a_plan_keeps_none_through_the_forms() {
    let gw = TestGateway::start_with(DEFAULT_ROUTES, |c| {
        c.admin.env_token = Some(keygate::keys::SecretString::from(ADMIN_TOKEN));
        c.keys.default_plan = None;
    })
    .await;
    let mut browser = Visitor::new(&gw);
    let login_csrf = csrf(&browser.get("/console/login").await.text());
    browser
        .post("/console/login", &[("csrf", &login_csrf), ("token", ADMIN_TOKEN)])
        .await;
    let new = browser.get("/console/keys/new").await.text();
    assert!(
        new.contains("<option value=\"\" selected>none (no rate limits)</option>"),
        "{new}"
    );
    let token = csrf(&new);
    let created = browser
        .post(
            "/console/keys/new",
            &[
                ("csrf", &token),
                ("name", "planless"),
                ("plan", ""),
                ("expires", "never"),
            ],
        )
        .await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.text());
    let key = gw
        .manager
        .list_all(&Default::default())
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(key.plan, None);
    let page = browser.get(&format!("/console/keys/{}", key.id)).await.text();
    assert!(
        page.contains("<option value=\"\" selected>none (no rate limits)</option>"),
        "{page}"
    );
    let edited = browser
        .post(
            &format!("/console/keys/{}/edit", key.id),
            &[
                ("csrf", &token),
                ("name", "renamed"),
                ("owner", ""),
                ("scopes", ""),
                ("plan", ""),
                ("expires", "never"),
            ],
        )
        .await;
    assert_eq!(edited.status, StatusCode::SEE_OTHER, "{}", edited.text());
    let key = gw.manager.get(key.id.as_str()).await.unwrap();
    assert_eq!((key.name.as_str(), key.plan), ("renamed", None));
    gw.stop().await;
}
