//! A built-in echo upstream for `keygate demo` and the tests: it answers
//! every request with a JSON description of what it received (method, path,
//! query, headers, body size), so you can see exactly what keygate forwards.
//!
//! Special paths (after any prefix, matched on the last segments):
//! - `…/bytes/<n>` streams `n` bytes back (download tests, bounded memory);
//! - `…/delay/<ms>` waits before answering (timeout tests);
//! - `…/status/<code>` answers with that status.
//!
//! Bodies are counted as they stream in, never buffered.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Size of each chunk of a `/bytes/<n>` download.
const CHUNK: usize = 64 * 1024;

/// A running echo upstream.
#[derive(Debug)]
pub struct EchoServer {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
}

impl EchoServer {
    /// Binds `addr` (use port 0 for any) and serves until dropped.
    pub async fn start(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (stop, mut stopped) = watch::channel(false);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        tokio::spawn(async move {
                            let service = service_fn(|req| async move { Ok::<_, Infallible>(echo(req).await) });
                            let _ = auto::Builder::new(TokioExecutor::new())
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                    _ = stopped.changed() => break,
                }
            }
        });
        Ok(Self { addr, stop })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn echo(req: Request<Incoming>) -> Response<Body> {
    let (parts, mut body) = req.into_parts();
    let mut body_bytes: u64 = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    body_bytes += data.len() as u64;
                }
            }
            Err(_) => break,
        }
    }
    let segments: Vec<&str> = parts.uri.path().rsplit('/').take(2).collect();
    if let [arg, verb] = segments[..] {
        match (verb, arg.parse::<u64>()) {
            ("bytes", Ok(n)) => return download(n),
            ("delay", Ok(ms)) => tokio::time::sleep(Duration::from_millis(ms.min(600_000))).await,
            ("status", Ok(code)) => {
                if let Ok(status) = StatusCode::from_u16(u16::try_from(code).unwrap_or(500)) {
                    return Response::builder()
                        .status(status)
                        .body(Body::empty())
                        .unwrap_or_else(|_| Response::new(Body::empty()));
                }
            }
            _ => {}
        }
    }
    let mut headers = serde_json::Map::new();
    for (name, value) in &parts.headers {
        let entry = headers
            .entry(name.as_str().to_owned())
            .or_insert_with(|| serde_json::Value::Array(Vec::new()));
        if let serde_json::Value::Array(values) = entry {
            values.push(json!(String::from_utf8_lossy(value.as_bytes())));
        }
    }
    let report = json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "body_bytes": body_bytes,
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(report.to_string()))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

fn download(n: u64) -> Response<Body> {
    let chunk = Bytes::from(vec![b'x'; CHUNK]);
    let stream = futures_stream(n, chunk);
    Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, n)
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

/// `n` bytes as a stream of shared chunks (no allocation per chunk).
fn futures_stream(
    n: u64,
    chunk: Bytes,
) -> impl futures_core::Stream<Item = Result<Bytes, Infallible>> + Send {
    let mut left = n;
    futures_util::stream::poll_fn(move |_| {
        if left == 0 {
            return std::task::Poll::Ready(None);
        }
        let take = left.min(chunk.len() as u64);
        left -= take;
        std::task::Poll::Ready(Some(Ok(chunk.slice(..usize::try_from(take).unwrap_or(0)))))
    })
}
