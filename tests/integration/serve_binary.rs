//! `keygate serve` as a process: it serves, logs one line per request with
//! the SPEC fields and never a secret, and exits 0 after SIGTERM.

use std::time::Duration;

use crate::support::gateway::DEFAULT_ROUTES;
use crate::support::{Served, serve_sandbox};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_logs_without_secrets_and_drains_on_sigterm() {
    let (sb, _echo, proxy) = serve_sandbox("info", DEFAULT_ROUTES).await;
    let created = sb
        .run(&[
            "keys",
            "create",
            "--name",
            "logs",
            "--scopes",
            "can_read_order",
            "--json",
        ])
        .expect(0)
        .json();
    let secret = created["key"].as_str().unwrap().to_owned();

    let served = Served::start(&sb, proxy).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let send = |headers: Vec<(&'static str, String)>| {
        let client = client.clone();
        async move {
            let mut req = http::Request::get(format!("http://{proxy}/v1/orders/1"));
            for (k, v) in headers {
                req = req.header(k, v);
            }
            client
                .request(req.body(Default::default()).unwrap())
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(send(vec![("x-api-key", secret.clone())]).await, 200);
    assert_eq!(
        send(vec![("authorization", format!("Bearer {secret}"))]).await,
        200
    );
    assert_eq!(send(vec![]).await, 401);
    // Change the last character (never to itself) so the checksum fails.
    let last = if secret.ends_with('0') { '1' } else { '0' };
    let wrong = format!("{}{last}", &secret[..secret.len() - 1]);
    assert_eq!(send(vec![("x-api-key", wrong.clone())]).await, 401);

    // A CLI change reaches the running gateway through the change feed.
    let id = created["id"].as_str().unwrap();
    sb.run(&["keys", "disable", id]).expect(0);
    let disabled_at = std::time::Instant::now();
    let mut seen = None;
    while disabled_at.elapsed() < Duration::from_secs(5) {
        if send(vec![("x-api-key", secret.clone())]).await == 401 {
            seen = Some(disabled_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seen = seen.expect("the running gateway never saw the CLI disable");
    eprintln!("CLI disable seen by the running gateway after {seen:?}");

    let (code, logs) = served.stop().await;
    assert_eq!(code, Some(0), "exit after SIGTERM:\n{logs}");
    assert!(!logs.contains(&secret), "a secret reached the logs:\n{logs}");
    assert!(
        !logs.contains(&secret[8..]),
        "a secret's body reached the logs:\n{logs}"
    );
    assert!(
        !logs.contains(&wrong[8..]),
        "a presented key reached the logs:\n{logs}"
    );
    let requests: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["message"] == "request")
        .collect();
    assert!(requests.len() >= 5, "one line per request:\n{logs}");
    assert_eq!(requests.last().unwrap()["decision"], "key_inactive");
    for field in [
        "method",
        "route",
        "key_id",
        "short_prefix",
        "decision",
        "status",
        "duration_ms",
    ] {
        assert!(
            requests[0].get(field).is_some(),
            "missing {field}: {}",
            requests[0]
        );
    }
    assert_eq!(requests[0]["key_id"], created["id"]);
    assert_eq!(requests[0]["short_prefix"], created["short_prefix"]);
    assert_eq!(requests[2]["decision"], "missing_credentials");
    assert_eq!(requests[3]["decision"], "invalid_key");
}

/// Every refusal the gate and the token exchange make reaches the request
/// log with its route, code, reason and as much of the caller as was known
/// (key id, short prefix, session); pinned request by request, so the log
/// record cannot change when the code that builds it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_refusal_is_logged_with_its_reason_and_caller() {
    use base64::Engine;
    use http::Method;
    use serde_json::{Value, json};

    let (sb, _echo, proxy) = serve_sandbox(
        "info",
        &format!(
            "{DEFAULT_ROUTES}\n[plans.tiny]\nlimits = [{{ requests = 1, per = \"1h\" }}]\n\
             [tokens]\nenabled = true\nsigning_key = \"log-record-test-signing-key-0123456789abcdef\"\n"
        ),
    )
    .await;
    let create = |plan: &str| {
        sb.run(&[
            "keys",
            "create",
            "--name",
            plan,
            "--plan",
            plan,
            "--scopes",
            "can_read_order",
            "--json",
        ])
        .expect(0)
        .json()
    };
    let (pro, free, tiny) = (create("pro"), create("free"), create("tiny"));
    let secret = |key: &Value| key["key"].as_str().unwrap().to_owned();
    let last = if secret(&pro).ends_with('0') { '1' } else { '0' };
    let mistyped = format!("{}{last}", &secret(&pro)[..secret(&pro).len() - 1]);

    let served = Served::start(&sb, proxy).await;
    let http = &crate::support::gateway::JsonClient::new(proxy);
    let send = |method: Method, path: &'static str, headers: Vec<(&'static str, String)>, body: String| async move {
        let (status, json) = http.send(method, path, headers, body).await;
        (status.as_u16(), json)
    };
    let key_header = |key: &str| vec![("x-api-key", key.to_owned())];
    let json_body = || vec![("content-type", "application/json".to_owned())];
    let form_body = || vec![("content-type", "application/x-www-form-urlencoded".to_owned())];
    let get_orders = |headers| send(Method::GET, "/v1/orders/1", headers, String::new());
    let login = |body: Value| send(Method::POST, "/auth/login", json_body(), body.to_string());
    let refresh = |token: &str| {
        send(
            Method::POST,
            "/auth/refresh",
            json_body(),
            json!({ "refresh_token": token }).to_string(),
        )
    };

    let mut statuses = vec![
        get_orders(vec![]).await.0,
        get_orders(key_header(&mistyped)).await.0,
        send(
            Method::GET,
            "/v1/admin/x",
            key_header(&secret(&pro)),
            String::new(),
        )
        .await
        .0,
        get_orders(key_header(&secret(&free))).await.0,
        get_orders(key_header(&secret(&tiny))).await.0,
        get_orders(key_header(&secret(&tiny))).await.0,
        send(Method::POST, "/auth/login", json_body(), "{".into()).await.0,
        login(json!({ "api_key": mistyped })).await.0,
        login(json!({ "api_key": secret(&free) })).await.0,
    ];
    let (status, first) = login(json!({ "api_key": secret(&pro) })).await;
    statuses.push(status);
    let spent = first["refresh_token"].as_str().unwrap().to_owned();
    let grant = |body: String| send(Method::POST, "/oauth/token", form_body(), body);
    statuses.extend([
        refresh("kgr_not-a-token").await.0,
        refresh(&spent).await.0,
        refresh(&spent).await.0,
        send(Method::GET, "/auth/login", vec![], String::new()).await.0,
        grant("grant_type=password".into()).await.0,
    ]);
    let client_credentials = format!(
        "grant_type=client_credentials&client_id={}&client_secret={}",
        pro["id"].as_str().unwrap(),
        secret(&pro)
    );
    let (status, oauth) = grant(client_credentials).await;
    statuses.push(status);
    let (status, second) = login(json!({ "api_key": secret(&pro), "session_id": "s2" })).await;
    statuses.push(status);
    sb.run(&["keys", "disable", pro["id"].as_str().unwrap()])
        .expect(0);
    statuses.push(refresh(second["refresh_token"].as_str().unwrap()).await.0);

    let (code, logs) = served.stop().await;
    assert_eq!(code, Some(0), "{logs}");
    let sid = |tokens: &Value| {
        let payload = tokens["access_token"]
            .as_str()
            .unwrap()
            .split('.')
            .nth(1)
            .unwrap();
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap();
        serde_json::from_slice::<Value>(&payload).unwrap()["sid"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (sid1, sid2, oauth_sid) = (sid(&first), sid(&second), sid(&oauth));
    let field = |key: &Value, name: &str| key[name].as_str().unwrap().to_owned();
    let (pro_id, pro_short) = (field(&pro, "id"), field(&pro, "short_prefix"));
    let (free_id, free_short) = (field(&free, "id"), field(&free, "short_prefix"));
    let (tiny_id, tiny_short) = (field(&tiny, "id"), field(&tiny, "short_prefix"));
    let none = || "-".to_owned();
    let logged: Vec<[String; 7]> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["message"] == "request")
        .map(|r| {
            let text = |name: &str| match &r[name] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            [
                text("status"),
                text("route"),
                text("decision"),
                text("reason"),
                text("key_id"),
                text("short_prefix"),
                text("session_id"),
            ]
        })
        .collect();
    let row = |status: u16, route: &str, decision: &str, reason: &str, key: (String, String), sid: String| {
        [
            status.to_string(),
            route.to_owned(),
            decision.to_owned(),
            reason.to_owned(),
            key.0,
            key.1,
            sid,
        ]
    };
    let orders = "GET /v1/orders/**";
    let pro_key = || (pro_id.clone(), pro_short.clone());
    let nobody = || (none(), none());
    let expected = vec![
        row(
            401,
            orders,
            "missing_credentials",
            "no credential",
            nobody(),
            none(),
        ),
        row(401, orders, "invalid_key", "bad_checksum", nobody(), none()),
        row(
            403,
            "/v1/admin/**",
            "insufficient_scope",
            "scope missing",
            pro_key(),
            none(),
        ),
        row(
            403,
            orders,
            "plan_forbidden",
            "plan without API access",
            (free_id.clone(), free_short.clone()),
            none(),
        ),
        row(
            200,
            orders,
            "ok",
            "-",
            (tiny_id.clone(), tiny_short.clone()),
            none(),
        ),
        row(
            429,
            orders,
            "rate_limited",
            "rate limited",
            (tiny_id, tiny_short),
            none(),
        ),
        row(
            400,
            "POST /auth/login",
            "bad_request",
            "bad token request body",
            nobody(),
            none(),
        ),
        row(
            401,
            "POST /auth/login",
            "invalid_key",
            "bad_checksum",
            nobody(),
            none(),
        ),
        row(
            403,
            "POST /auth/login",
            "plan_forbidden",
            "plan without API access",
            (free_id, free_short),
            none(),
        ),
        row(200, "POST /auth/login", "ok", "-", pro_key(), sid1.clone()),
        row(
            401,
            "POST /auth/refresh",
            "invalid_key",
            "refresh token malformed",
            nobody(),
            none(),
        ),
        row(200, "POST /auth/refresh", "ok", "-", pro_key(), sid1.clone()),
        row(
            401,
            "POST /auth/refresh",
            "invalid_key",
            "refresh token reused: session revoked",
            pro_key(),
            sid1,
        ),
        row(
            405,
            "POST /auth/login",
            "bad_request",
            "method not allowed",
            nobody(),
            none(),
        ),
        row(
            400,
            "POST /oauth/token",
            "bad_request",
            "unsupported grant_type",
            nobody(),
            none(),
        ),
        row(200, "POST /oauth/token", "ok", "-", pro_key(), oauth_sid),
        row(200, "POST /auth/login", "ok", "-", pro_key(), sid2.clone()),
        row(
            401,
            "POST /auth/refresh",
            "key_inactive",
            "key inactive",
            pro_key(),
            sid2,
        ),
    ];
    assert_eq!(
        statuses,
        expected
            .iter()
            .map(|r| r[0].parse::<u16>().unwrap())
            .collect::<Vec<_>>(),
        "{logs}"
    );
    assert_eq!(logged, expected, "{logs}");
}

/// `keygate demo` prints the console's URL and an admin token that signs in
/// there, and the demo key works on the printed gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_prints_a_console_to_sign_in_to() {
    use std::io::BufRead as _;
    let mut child = crate::support::keygate()
        .args(["demo", "--port", "0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let printed = tokio::task::spawn_blocking(move || {
        let mut lines = Vec::new();
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let done = line.starts_with("Press Ctrl-C");
            lines.push(line);
            if done {
                break;
            }
        }
        lines
    });
    let printed = tokio::time::timeout(Duration::from_secs(30), printed)
        .await
        .unwrap()
        .unwrap();
    let field = |name: &str| -> String {
        let line = printed
            .iter()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or_else(|| panic!("{name}: {printed:#?}"));
        line.trim_start()[name.len()..]
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned()
    };
    let console = field("console");
    let token = field("admin token");
    assert!(
        console.starts_with("http://127.0.0.1:") && console.ends_with("/console/"),
        "{console}"
    );
    let client = reqwest_like::Client::new();
    let form = client.get(&format!("{console}login"), "").await;
    assert_eq!(form.0, 200);
    let cookie = form.1.split(';').next().unwrap().to_owned();
    let at = form.2.find("name=\"csrf\" value=\"").unwrap() + 19;
    let csrf = form.2[at..].split('"').next().unwrap().to_owned();
    let body = format!("csrf={csrf}&token={token}");
    let signed_in = client.post_form(&format!("{console}login"), &cookie, &body).await;
    assert_eq!(signed_in.0, 303, "{}", signed_in.2);
    assert!(signed_in.1.starts_with("kg_console="), "{}", signed_in.1);
    let _ = child.kill();
    let _ = child.wait();
}

/// Just enough of an HTTP client for the demo test: (status, first
/// Set-Cookie, body).
mod reqwest_like {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client as Hyper;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::TokioExecutor;

    pub struct Client(Hyper<HttpConnector, Full<Bytes>>);

    impl Client {
        pub fn new() -> Self {
            Self(Hyper::builder(TokioExecutor::new()).build_http())
        }

        pub async fn get(&self, url: &str, cookie: &str) -> (u16, String, String) {
            let request = http::Request::get(url)
                .header("cookie", cookie)
                .body(Full::default())
                .unwrap();
            self.send(request).await
        }

        pub async fn post_form(&self, url: &str, cookie: &str, body: &str) -> (u16, String, String) {
            let request = http::Request::post(url)
                .header("cookie", cookie)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(Full::new(Bytes::from(body.to_owned())))
                .unwrap();
            self.send(request).await
        }

        async fn send(&self, request: http::Request<Full<Bytes>>) -> (u16, String, String) {
            let response = self.0.request(request).await.unwrap();
            let status = response.status().as_u16();
            let cookie = response
                .headers()
                .get("set-cookie")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (status, cookie, String::from_utf8_lossy(&body).into_owned())
        }
    }
}
