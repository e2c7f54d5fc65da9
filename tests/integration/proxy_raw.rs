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
