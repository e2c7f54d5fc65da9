//! `keygate serve` as a process: it serves, logs one line per request with
//! the SPEC fields and never a secret, and exits 0 after SIGTERM.

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::gateway::DEFAULT_ROUTES;
use crate::support::{Sandbox, Served, free_port};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_logs_without_secrets_and_drains_on_sigterm() {
    let echo = keygate::echo::EchoServer::start(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let (port, admin_port) = (free_port(), free_port());
    let sb = Sandbox::new(&format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\n\
         [upstream]\nurl = \"http://{}\"\n[log]\nformat = \"json\"\nlevel = \"info\"\n[keys]\ndefault_plan = \"pro\"\n{DEFAULT_ROUTES}",
        echo.addr()
    ));
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

    let proxy: SocketAddr = ([127, 0, 0, 1], port).into();
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
