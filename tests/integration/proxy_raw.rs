//! Inputs an HTTP client would refuse to send, over a raw socket: smuggling
//! pairs, bad encodings, CR/LF tricks. Each is refused with 400 and nothing
//! reaches the upstream.

use crate::support::gateway::{DEFAULT_ROUTES, TestGateway, raw};

fn status_line(response: &str) -> &str {
    response.lines().next().unwrap_or("")
}

#[tokio::test]
async fn smuggling_and_malformed_requests_are_refused() {
    let gw = TestGateway::start(DEFAULT_ROUTES).await;
    let issued = gw.key(&["can_read_order", "can_write_order"], "pro").await;
    let key = issued.secret.expose();
    let cases = [
        (
            "two different content-lengths",
            format!(
                "POST /v1/orders HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"
            ),
        ),
        (
            "overlong utf-8 dot segment",
            format!("GET /v1/orders/%C0%AE%C0%AE/admin HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n\r\n"),
        ),
        (
            "encoded slash",
            format!("GET /v1/orders%2F..%2Fadmin HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n\r\n"),
        ),
        (
            "bare LF inside a header value",
            format!("GET /v1/orders/1 HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\nX-Evil: a\rb\r\n\r\n"),
        ),
        (
            "space in the request target",
            format!("GET /v1/orders/1 /admin HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n\r\n"),
        ),
    ];
    for (name, request) in cases {
        let response = raw(gw.proxy(), request.as_bytes()).await;
        assert!(status_line(&response).contains(" 400 "), "{name}: {response}");
        assert!(
            !response.contains("\"method\""),
            "{name}: forwarded to the upstream: {response}"
        );
        assert!(!response.contains(key), "{name}: echoed the key");
    }
}

/// Content-Length with Transfer-Encoding is refused with 400 and nothing
/// reaches the upstream — also when it is the second request on a kept-alive
/// connection, and without touching the request before it.
#[tokio::test]
async fn content_length_with_transfer_encoding_is_refused() {
    let gw = TestGateway::start(DEFAULT_ROUTES).await;
    let issued = gw.key(&["can_read_order", "can_write_order"], "pro").await;
    let key = issued.secret.expose();
    let smuggled = "GET /v1/admin/users HTTP/1.1\r\nHost: x\r\n\r\n";
    let pair = format!(
        "POST /v1/orders HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}",
        5 + smuggled.len()
    );
    let response = raw(gw.proxy(), pair.as_bytes()).await;
    assert!(status_line(&response).contains(" 400 "), "{response}");
    assert!(!response.contains("\"method\""), "forwarded: {response}");
    assert_eq!(
        response.matches("HTTP/1.1 ").count(),
        1,
        "one response only: {response}"
    );

    let first = format!("GET /v1/orders/1 HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n\r\n");
    let response = raw(gw.proxy(), format!("{first}{pair}").as_bytes()).await;
    let statuses: Vec<&str> = response
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &response[i..i + 12])
        .collect();
    assert_eq!(statuses, vec!["HTTP/1.1 200", "HTTP/1.1 400"], "{response}");
    assert_eq!(
        response.matches("\"method\"").count(),
        1,
        "only the first was forwarded: {response}"
    );

    // The same pair with bare-LF line ends throughout, which hyper's parser
    // accepts: refused all the same.
    let lf_pair = format!(
        "POST /v1/orders HTTP/1.1\nHost: x\nX-API-Key: {key}\nContent-Length: 5\nTransfer-Encoding: chunked\n\n0\n\n"
    );
    let response = raw(gw.proxy(), lf_pair.as_bytes()).await;
    assert!(status_line(&response).contains(" 400 "), "bare LF: {response}");
    assert!(!response.contains("\"method\""), "bare LF: forwarded: {response}");
}

#[tokio::test]
async fn a_key_in_a_chunked_request_still_flows() {
    let gw = TestGateway::start(DEFAULT_ROUTES).await;
    let issued = gw.key(&["can_write_order"], "pro").await;
    let key = issued.secret.expose();
    let request = format!(
        "POST /v1/orders HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    );
    let response = raw(gw.proxy(), request.as_bytes()).await;
    assert!(status_line(&response).contains(" 200 "), "{response}");
    assert!(response.contains("\"body_bytes\":5"), "{response}");
}

#[tokio::test]
async fn a_streamed_body_over_the_limit_is_refused() {
    let gw = TestGateway::start_with(DEFAULT_ROUTES, |config| {
        config.server.max_body_bytes = Some(1024);
    })
    .await;
    let issued = gw.key(&["can_write_order"], "pro").await;
    let key = issued.secret.expose();
    let chunk = "z".repeat(800);
    let request = format!(
        "POST /v1/orders HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n320\r\n{chunk}\r\n320\r\n{chunk}\r\n0\r\n\r\n"
    );
    let response = raw(gw.proxy(), request.as_bytes()).await;
    assert!(status_line(&response).contains(" 413 "), "{response}");
    assert!(response.contains("payload_too_large"), "{response}");
}

/// Issue 18: `/public/..;/v1/orders/1` was forwarded as is and answered
/// 200 without a credential; a Tomcat, Jetty or Spring upstream strips
/// `;…` before resolving `..` and serves `/v1/orders/1`. Every spelling of
/// that trick, and its siblings, is refused before the upstream sees it.
#[tokio::test]
async fn path_parameter_traversal_and_its_siblings_are_refused() {
    let gw = TestGateway::start(DEFAULT_ROUTES).await;
    let targets = [
        "/public/..;/v1/orders/1",
        "/public/..;x=1/v1/orders/1",
        "/public/%2e%2e;/v1/orders/1",
        "/public/%2E%2E;jsessionid=0/v1/orders/1",
        "/public/..%3B/v1/orders/1",
        "/public/.;/../v1/orders/1",
        "/public/x/..;/..;/v1/orders/1",
        "/public/%252e%252e/v1/orders/1",
        "/public/%EF%BC%8E%EF%BC%8E/v1/orders/1",
        "/public/%EF%BC%8Fv1/orders/1",
        "/public/..%EF%BC%BCv1/orders/1",
        "/v1/admin./users",
        "/v1/admin%20/users",
        "/public/.../v1/orders/1",
    ];
    for target in targets {
        let request = format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let response = raw(gw.proxy(), request.as_bytes()).await;
        assert!(status_line(&response).contains(" 400 "), "{target}: {response}");
        assert!(response.contains("bad_request"), "{target}: {response}");
        assert!(
            !response.contains("\"method\""),
            "{target}: forwarded to the upstream: {response}"
        );
    }
}

/// Path parameters on an ordinary segment are forwarded as sent, but the
/// route that guards the resource a parameter-stripping upstream serves
/// guards this spelling too.
#[tokio::test]
async fn routes_match_without_segment_parameters() {
    let gw = TestGateway::start(DEFAULT_ROUTES).await;
    let reader = gw.key(&["can_read_order"], "pro").await;
    let other = gw.key(&["something_else"], "pro").await;
    for target in ["/v1/orders;x=1/1", "/v1/orders%3Bx/1", "/v1;v=2/orders/1"] {
        let get = |key: &str| {
            format!("GET {target} HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\nConnection: close\r\n\r\n")
        };
        let response = raw(gw.proxy(), get(other.secret.expose()).as_bytes()).await;
        assert!(status_line(&response).contains(" 403 "), "{target}: {response}");
        assert!(response.contains("insufficient_scope"), "{target}: {response}");
        let response = raw(gw.proxy(), get(reader.secret.expose()).as_bytes()).await;
        assert!(status_line(&response).contains(" 200 "), "{target}: {response}");
        assert!(
            response.contains(&format!("\"path\":\"{target}\"")),
            "forwarded as sent: {response}"
        );
    }
    // Without a credential, a parameter on a public prefix stays public
    // only for what it names.
    let response = raw(
        gw.proxy(),
        b"GET /public;x/../v1/orders/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(status_line(&response).contains(" 401 "), "{response}");
}
