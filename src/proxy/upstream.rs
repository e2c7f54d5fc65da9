//! The upstream connection pool: HTTP/1.1 keep-alive connections to the one
//! upstream, built on hyper's connection-level client.
//!
//! Why not hyper-util's pooled client: it is general (any host, HTTP/2,
//! proxies), and pays for it on every request — a hashed pool key, a
//! checkout future, and a task spawned per request to hand the connection
//! back once the response ends. keygate talks to one upstream, so the pool
//! is a stack of idle senders behind an uncontended lock, one pool per
//! serving thread (`app`'s lanes: a connection's task runs on the runtime
//! that opened it, and a request never leaves its thread):
//!
//! - **checkout** pops the most recently used idle connection (its socket
//!   and buffers are the warmest) that is ready; a connection still busy
//!   finishing a request body is parked until it is ready, never waited on;
//! - **check-in** happens when the response body ends (or is dropped after
//!   its end): [`PooledBody`] carries the sender home;
//! - a request a reused connection never started (the upstream closed it
//!   while idle) is retried on another connection, so an idle close is not
//!   a 502; a request that started is never replayed;
//! - idle connections past `upstream.pool_idle_timeout` are dropped, at
//!   checkout and by a sweep, and at most `upstream.pool_max_idle_per_host`
//!   are kept.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use thiserror::Error;
use tokio::net::TcpStream;

/// `[upstream]`: the API keygate stands in front of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamSettings {
    /// The URL as configured, without a trailing `/` (`upstream.url`).
    pub url: String,
    /// `host:port` to connect to (port 80 when the URL names none).
    pub authority: String,
    /// Path prefix to put before every forwarded path: empty, or `/base`
    /// without a trailing `/`.
    pub base_path: String,
    /// Time until the upstream's response head; then 504 `upstream_timeout`
    /// (`upstream.timeout`).
    pub timeout: Duration,
    /// Time allowed to connect; then 502 `upstream_unavailable`
    /// (`upstream.connect_timeout`).
    pub connect_timeout: Duration,
    /// Idle pooled connections kept per host (`upstream.pool_max_idle_per_host`).
    pub pool_max_idle_per_host: usize,
    /// How long an idle pooled connection is kept (`upstream.pool_idle_timeout`).
    pub pool_idle_timeout: Duration,
}

/// How the pool reaches and keeps connections: one serving thread's share
/// of [`UpstreamSettings`] (see `Forwarder::pool`).
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// `host:port` to connect to.
    pub authority: String,
    /// TCP connect timeout (name resolution included).
    pub connect_timeout: Duration,
    /// Idle connections kept.
    pub max_idle: usize,
    /// How long an idle connection is kept.
    pub idle_timeout: Duration,
}

/// Why a request could not be sent or answered.
#[derive(Debug, Error)]
pub enum UpstreamError {
    /// No TCP connection within the connect timeout.
    #[error("connect to {authority} timed out after {timeout:?}")]
    ConnectTimeout {
        /// The upstream's authority.
        authority: String,
        /// The configured timeout.
        timeout: Duration,
    },
    /// The TCP connection was refused or could not be set up.
    #[error("connect to {authority}: {source}")]
    Connect {
        /// The upstream's authority.
        authority: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The HTTP exchange failed (reset, closed early, bad response, or the
    /// request body failed).
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

/// The pool (cheap to clone).
#[derive(Clone)]
pub struct Upstream {
    pool: Arc<Pool>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("settings", &self.pool.settings)
            .field("idle", &self.pool.idle().len())
            .finish()
    }
}

struct Pool {
    settings: PoolSettings,
    // std `Mutex`: held for a push or a pop, never across an `.await`.
    idle: Mutex<VecDeque<Idle>>,
}

struct Idle {
    sender: SendRequest<Body>,
    since: Instant,
}

impl Upstream {
    /// An empty pool. Inside a Tokio runtime, a task sweeps idle
    /// connections past their timeout (it ends with the pool).
    pub fn new(settings: PoolSettings) -> Self {
        let pool = Arc::new(Pool {
            settings,
            idle: Mutex::new(VecDeque::new()),
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(sweep(Arc::downgrade(&pool)));
        }
        Self { pool }
    }

    /// Sends `request` (origin-form URI, `Host` set) on an idle connection
    /// or a new one, and returns the response head; the body streams from
    /// the connection, which goes back to the pool when the body ends.
    /// `now` is the caller's reading of the clock (it decides which idle
    /// connections have expired), so a request reads it once.
    pub async fn send(
        &self,
        mut request: Request<Body>,
        now: Instant,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        loop {
            let (mut sender, reused) = match self.pool.checkout(now) {
                Some(sender) => (sender, true),
                None => (self.pool.connect().await?, false),
            };
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let home = Some((sender, Arc::clone(&self.pool)));
                    return Ok(response.map(|body| PooledBody { body, home }));
                }
                Err(mut failed) => match failed.take_message() {
                    // Never written to a connection that had been idle: the
                    // upstream closed it meanwhile. Try the next one (or a
                    // new one); each pass consumes an idle connection, so
                    // this ends.
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(UpstreamError::Http(failed.into_error())),
                },
            }
        }
    }

    /// Idle connections held (for tests).
    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.pool.idle().len()
    }

    /// The most idle connections this pool keeps (for tests).
    #[cfg(test)]
    pub(super) fn max_idle(&self) -> usize {
        self.pool.settings.max_idle
    }
}

impl Pool {
    fn idle(&self) -> MutexGuard<'_, VecDeque<Idle>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently used idle connection that is ready. Closed and
    /// expired ones are dropped; busy ones (the upstream answered before the
    /// request body ended) wait for readiness off to the side.
    fn checkout(self: &Arc<Self>, now: Instant) -> Option<SendRequest<Body>> {
        let mut busy = Vec::new();
        let found = {
            let mut idle = self.idle();
            loop {
                let Some(entry) = idle.pop_back() else {
                    break None;
                };
                if entry.sender.is_closed() || now.duration_since(entry.since) >= self.settings.idle_timeout {
                    continue;
                }
                if entry.sender.is_ready() {
                    break Some(entry.sender);
                }
                busy.push(entry.sender);
            }
        };
        for sender in busy {
            tokio::spawn(Arc::clone(self).checkin_when_ready(sender));
        }
        found
    }

    async fn checkin_when_ready(self: Arc<Self>, mut sender: SendRequest<Body>) {
        if sender.ready().await.is_ok() {
            self.checkin(sender);
        }
    }

    /// Returns a connection whose exchange is over.
    fn checkin(&self, sender: SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle();
        if idle.len() < self.settings.max_idle {
            idle.push_back(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Drops idle connections past the idle timeout (the oldest are at the
    /// front).
    fn expire(&self, now: Instant) {
        let mut idle = self.idle();
        while idle.front().is_some_and(|e| {
            e.sender.is_closed() || now.duration_since(e.since) >= self.settings.idle_timeout
        }) {
            idle.pop_front();
        }
    }

    /// A new connection, its HTTP/1 state machine running on its own task.
    async fn connect(&self) -> Result<SendRequest<Body>, UpstreamError> {
        let authority = &self.settings.authority;
        let stream = match tokio::time::timeout(
            self.settings.connect_timeout,
            TcpStream::connect(authority.as_str()),
        )
        .await
        {
            Err(_) => {
                return Err(UpstreamError::ConnectTimeout {
                    authority: authority.clone(),
                    timeout: self.settings.connect_timeout,
                });
            }
            Ok(Err(source)) => {
                return Err(UpstreamError::Connect {
                    authority: authority.clone(),
                    source,
                });
            }
            Ok(Ok(stream)) => stream,
        };
        let _ = stream.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "upstream connection closed with an error");
            }
        });
        Ok(sender)
    }
}

/// Every so often, drops idle connections past their timeout, until the
/// pool is gone.
async fn sweep(pool: Weak<Pool>) {
    let every = match pool.upgrade() {
        Some(pool) => {
            (pool.settings.idle_timeout / 2).clamp(Duration::from_millis(500), Duration::from_secs(30))
        }
        None => return,
    };
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        pool.expire(Instant::now());
    }
}

/// A response body from the upstream that hands its connection back to the
/// pool once it has ended. Dropped before its end, it takes the connection
/// with it (hyper closes it: the rest of the body is unread).
pub struct PooledBody {
    body: Incoming,
    home: Option<(SendRequest<Body>, Arc<Pool>)>,
}

impl std::fmt::Debug for PooledBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledBody")
            .field("pooled", &self.home.is_some())
            .finish_non_exhaustive()
    }
}

impl PooledBody {
    fn release(&mut self) {
        if let Some((sender, pool)) = self.home.take() {
            pool.checkin(sender);
        }
    }
}

impl hyper::body::Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.release(),
            Poll::Ready(Some(Err(_))) => this.home = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // A body nobody read because it was empty (204, 304, a HEAD
        // answer, `Content-Length: 0`) still ended.
        if self.body.is_end_stream() {
            self.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn settings(addr: std::net::SocketAddr) -> PoolSettings {
        PoolSettings {
            authority: addr.to_string(),
            connect_timeout: Duration::from_secs(2),
            max_idle: 4,
            idle_timeout: Duration::from_secs(30),
        }
    }

    fn get(path: &str, addr: std::net::SocketAddr) -> Request<Body> {
        Request::get(path)
            .header(http::header::HOST, addr.to_string())
            .body(Body::empty())
            .unwrap()
    }

    /// An upstream that answers `requests_per_connection` requests per
    /// connection, then closes it; counts connections.
    async fn upstream(requests_per_connection: usize) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&connections);
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut held = Vec::new();
                    let mut answered = 0;
                    while answered < requests_per_connection {
                        let n = socket.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        held.extend_from_slice(&buf[..n]);
                        while let Some(end) = held.windows(4).position(|w| w == b"\r\n\r\n") {
                            held.drain(..end + 4);
                            answered += 1;
                            let _ = socket
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                                .await;
                        }
                    }
                    // Closing an idle keep-alive connection, as upstreams do.
                });
            }
        });
        (addr, connections)
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_response_ends() {
        let (addr, connections) = upstream(usize::MAX).await;
        let pool = Upstream::new(settings(addr));
        for _ in 0..5 {
            let response = pool.send(get("/x", addr), Instant::now()).await.unwrap();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"ok");
        }
        assert_eq!(connections.load(Ordering::SeqCst), 1);
        assert_eq!(pool.idle_count(), 1);
    }

    #[tokio::test]
    async fn a_body_dropped_unread_takes_its_connection_along() {
        let (addr, connections) = upstream(usize::MAX).await;
        let pool = Upstream::new(settings(addr));
        let response = pool.send(get("/x", addr), Instant::now()).await.unwrap();
        // Content-Length 2 not yet read: the connection cannot be reused.
        let unread = response.into_body();
        let ended = unread.is_end_stream();
        drop(unread);
        if !ended {
            assert_eq!(pool.idle_count(), 0);
        }
        let response = pool.send(get("/x", addr), Instant::now()).await.unwrap();
        response.into_body().collect().await.unwrap();
        assert!(connections.load(Ordering::SeqCst) <= 2);
    }

    #[tokio::test]
    async fn an_idle_connection_the_upstream_closed_is_not_a_failure() {
        // One request per connection: every pooled connection is closed by
        // the time it is checked out again.
        let (addr, connections) = upstream(1).await;
        let pool = Upstream::new(settings(addr));
        for _ in 0..3 {
            let response = pool.send(get("/x", addr), Instant::now()).await.unwrap();
            response.into_body().collect().await.unwrap();
            // Let the close arrive while the connection sits idle.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(connections.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn idle_connections_expire() {
        let (addr, connections) = upstream(usize::MAX).await;
        let mut short = settings(addr);
        short.idle_timeout = Duration::from_millis(100);
        let pool = Upstream::new(short);
        let response = pool.send(get("/x", addr), Instant::now()).await.unwrap();
        response.into_body().collect().await.unwrap();
        assert_eq!(pool.idle_count(), 1);
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(pool.idle_count(), 0, "the sweep dropped it");
        let response = pool.send(get("/x", addr), Instant::now()).await.unwrap();
        response.into_body().collect().await.unwrap();
        assert_eq!(connections.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn at_most_max_idle_connections_are_kept() {
        let (addr, _) = upstream(usize::MAX).await;
        let pool = Upstream::new(settings(addr));
        let mut open = Vec::new();
        for _ in 0..6 {
            open.push(pool.send(get("/x", addr), Instant::now()).await.unwrap());
        }
        for response in open {
            response.into_body().collect().await.unwrap();
        }
        assert_eq!(pool.idle_count(), 4);
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let pool = Upstream::new(settings(addr));
        let err = pool.send(get("/x", addr), Instant::now()).await.unwrap_err();
        assert!(matches!(err, UpstreamError::Connect { .. }), "{err}");
    }
}
