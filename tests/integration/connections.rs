//! Clients that cost the gateway connections rather than requests: many
//! slow clients at once (`server.header_read_timeout`), more clients than
//! `server.max_connections`, and HTTP/2 floods (rapid reset, CONTINUATION).
//! In each, a normal client beside the attack keeps being served.

use std::time::Duration;

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::task::JoinHandle;

use crate::support::gateway::{DEFAULT_ROUTES, TestGateway};

/// Bound on waits that succeed in milliseconds when the gateway works; a
/// guard against a hang, not a measurement.
const PATIENCE: Duration = Duration::from_secs(20);

/// Whether the server closed `stream` (EOF or reset), reading and
/// discarding whatever it sent first.
async fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(PATIENCE, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_slow_clients_are_cut_off_and_others_are_served() {
    let gw = TestGateway::start_with(DEFAULT_ROUTES, |config| {
        config.server.header_read_timeout = Duration::from_secs(1);
    })
    .await;
    // 200 clients that start a request head and never finish it.
    let mut slow = Vec::new();
    for _ in 0..200 {
        let mut stream = TcpStream::connect(gw.proxy()).await.unwrap();
        stream
            .write_all(b"GET /public/slow HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push(stream);
    }
    // Served while they hang. `Connection: close`: an idle keep-alive
    // connection is cut by the same 1 s header timeout while the loop
    // below waits, and the client's pool could then race that close when
    // reusing it for the last request.
    let reply = gw.get("/public/fine", &[("connection", "close")]).await;
    assert_eq!(reply.status, StatusCode::OK);
    // Every slow client is disconnected by the header timeout.
    let mut cut = 0;
    for stream in &mut slow {
        if closed_by_server(stream).await {
            cut += 1;
        }
    }
    assert_eq!(cut, slow.len(), "every slow client is disconnected");
    assert_eq!(
        gw.get("/public/fine", &[("connection", "close")]).await.status,
        StatusCode::OK
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_connections_new_clients_wait_for_a_free_slot() {
    let gw = TestGateway::start_with(DEFAULT_ROUTES, |config| {
        config.server.max_connections = 2;
    })
    .await;
    let gauge = |text: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix("keygate_proxy_connections "))
            .map(str::to_owned)
    };
    assert_eq!(
        gauge(&gw.admin_get("/metrics").await.text()).as_deref(),
        Some("0")
    );
    let request = b"GET /public/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    // Two open connections (each has sent half a head) take both slots.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(gw.proxy()).await.unwrap();
        stream.write_all(b"GET /public/x HTTP/1.1\r\n").await.unwrap();
        held.push(stream);
    }
    // Let both be accepted before the third arrives.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = TcpStream::connect(gw.proxy()).await.unwrap();
    third.write_all(request).await.unwrap();
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(500), third.read(&mut buf)).await;
    assert!(early.is_err(), "the third client was served past max_connections");
    assert_eq!(
        gauge(&gw.admin_get("/metrics").await.text()).as_deref(),
        Some("2"),
        "the gauge shows the full listener"
    );

    // One slot frees: the waiting client is served.
    drop(held.pop());
    let mut response = Vec::new();
    tokio::time::timeout(PATIENCE, third.read_to_end(&mut response))
        .await
        .unwrap()
        .unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    gw.stop().await;
}

/// One HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

/// The client preface and an empty SETTINGS frame.
fn preface() -> Vec<u8> {
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    out
}

/// An HPACK block for `GET http://x/public/flood`, literals without
/// indexing, so every block decodes alone.
fn request_block() -> Vec<u8> {
    let mut block = vec![0x82, 0x86]; // :method GET, :scheme http
    block.push(0x04); // :path, literal without indexing
    let path = b"/public/flood";
    block.push(u8::try_from(path.len()).unwrap());
    block.extend_from_slice(path);
    block.extend_from_slice(&[0x01, 0x01, b'x']); // :authority x
    block
}

/// Reads frames until the server closes the connection; answers whether a
/// GOAWAY came first. `None` when the connection stays open (a hang).
async fn goaway_then_close(mut reader: tokio::net::tcp::OwnedReadHalf) -> Option<bool> {
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout(PATIENCE, reader.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
            Err(_) => return None,
        }
    }
    // Walk the frames the server sent (after its own SETTINGS).
    let mut at = 0;
    let mut goaway = false;
    while at + 9 <= seen.len() {
        let len = usize::from(seen[at]) << 16 | usize::from(seen[at + 1]) << 8 | usize::from(seen[at + 2]);
        goaway |= seen[at + 3] == GOAWAY;
        at += 9 + len;
    }
    Some(goaway)
}

/// A raw HTTP/2 connection to the proxy with the preface sent, and a task
/// reporting how the server ends it ([`goaway_then_close`]).
async fn h2_attacker(gw: &TestGateway) -> (OwnedWriteHalf, JoinHandle<Option<bool>>) {
    let (reader, mut writer) = TcpStream::connect(gw.proxy()).await.unwrap().into_split();
    let watcher = tokio::spawn(goaway_then_close(reader));
    writer.write_all(&preface()).await.unwrap();
    (writer, watcher)
}

/// After a flood: a normal client is served, and the attacker's connection
/// was ended with a GOAWAY (`sent` says how much of the flood got out).
async fn assert_cut_off(
    gw: &TestGateway,
    writer: OwnedWriteHalf,
    watcher: JoinHandle<Option<bool>>,
    sent: &str,
) {
    assert_eq!(gw.get("/public/fine", &[]).await.status, StatusCode::OK);
    drop(writer);
    let goaway = watcher.await.unwrap();
    assert_eq!(
        goaway,
        Some(true),
        "GOAWAY, then the connection closed (after {sent})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_rapid_reset_flood_is_cut_off_and_others_are_served() {
    let gw = TestGateway::start(DEFAULT_ROUTES).await;
    let (mut writer, watcher) = h2_attacker(&gw).await;
    let block = request_block();
    let mut sent_streams = 0u32;
    let mut stream_id = 1u32;
    'flood: for _ in 0..200 {
        let mut batch = Vec::new();
        for _ in 0..100 {
            batch.extend(frame(HEADERS, END_HEADERS | END_STREAM, stream_id, &block));
            batch.extend(frame(RST_STREAM, 0, stream_id, &8u32.to_be_bytes())); // CANCEL
            stream_id += 2;
        }
        if writer.write_all(&batch).await.is_err() {
            break 'flood;
        }
        sent_streams += 100;
    }
    // The gateway serves a normal client beside the flood.
    assert_cut_off(&gw, writer, watcher, &format!("{sent_streams} streams")).await;
    assert!(sent_streams < 20_000, "the flood was cut off before it ended");
    assert_eq!(gw.get("/public/fine", &[]).await.status, StatusCode::OK);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_continuation_flood_is_cut_off_and_others_are_served() {
    let gw = TestGateway::start(DEFAULT_ROUTES).await;
    let (mut writer, watcher) = h2_attacker(&gw).await;
    writer
        .write_all(&frame(HEADERS, 0, 1, &request_block()))
        .await
        .unwrap();
    // CONTINUATION frames of 16 KiB of distinct header fields, never
    // ending the block: 64 MiB if nothing stops it.
    let mut field = vec![0x00, 0x03, b'x', b'-', b'f', 0x7e];
    field.extend(std::iter::repeat_n(b'v', 0x7e));
    let mut payload = Vec::new();
    while payload.len() + field.len() <= 16 * 1024 {
        payload.extend_from_slice(&field);
    }
    let continuation = frame(CONTINUATION, 0, 1, &payload);
    let mut sent = 0usize;
    for _ in 0..4096 {
        if writer.write_all(&continuation).await.is_err() {
            break;
        }
        sent += continuation.len();
    }
    assert_cut_off(&gw, writer, watcher, &format!("{sent} bytes")).await;
    assert!(
        sent < 4096 * continuation.len(),
        "the flood was cut off before it ended"
    );
    gw.stop().await;
}
