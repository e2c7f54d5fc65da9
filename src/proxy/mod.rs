//! The proxy listener: every request goes through [`stack`]: limits, the
//! [`gate`] (authentication and policy), then [`forward`] to the upstream;
//! the outcome of the step that answered becomes the request's
//! [`record::RequestRecord`].

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use http::{HeaderMap, HeaderName, HeaderValue, Response};

use self::upstream::Upstream;
use crate::auth::usage::UsageRecorder;
use crate::problem::{Problem, ProblemRenderer};
use crate::ratelimit::{RateLimitHeaders, WindowStatus};
use crate::telemetry::metrics::Metrics;

pub mod exchange;
pub mod forward;
pub mod gate;
pub mod record;
pub mod serve;
pub mod sniff;
pub mod stack;
pub mod upstream;

/// Everything a proxied request needs, built once in `app`.
#[derive(Debug)]
pub struct ProxyState {
    /// Authentication and policy.
    pub gate: gate::Gate,
    /// The upstream client.
    pub forwarder: forward::Forwarder,
    /// Error responses.
    pub renderer: ProblemRenderer,
    /// `server.max_header_bytes`.
    pub max_header_bytes: usize,
    /// `server.max_body_bytes`.
    pub max_body_bytes: Option<u64>,
    /// Usage counting (in memory; flushed to the store in the background).
    pub usage: Arc<UsageRecorder>,
    /// Names of the rate-limit headers, `None` when `rate_limit.headers = false`.
    pub rate_limit_headers: Option<RateLimitHeaderNames>,
    /// Request counts and latencies.
    pub metrics: Arc<Metrics>,
    /// The token exchange endpoints, when `[tokens]` is on.
    pub exchange: Option<exchange::Exchange>,
}

/// The client end of a proxy connection, its address formatted once per
/// connection for `X-Forwarded-For`.
#[derive(Debug, Clone)]
pub struct Peer {
    addr: SocketAddr,
    ip: HeaderValue,
}

impl Peer {
    /// The peer at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        let ip = HeaderValue::try_from(addr.ip().to_string())
            // An IP address always formats to a legal header value.
            .unwrap_or(HeaderValue::from_static("unknown"));
        Self { addr, ip }
    }

    /// The client's socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The client's IP address as a header value.
    pub fn ip_header(&self) -> &HeaderValue {
        &self.ip
    }
}

/// The three rate-limit header names in the configured spelling, built once.
#[derive(Debug, Clone)]
pub struct RateLimitHeaderNames {
    limit: HeaderName,
    remaining: HeaderName,
    reset: HeaderName,
}

impl RateLimitHeaderNames {
    /// The names for `style`; `None` when headers are off.
    pub fn new(style: RateLimitHeaders) -> Option<Self> {
        let [limit, remaining, reset] = style.names()?;
        Some(Self {
            limit: HeaderName::from_static(limit),
            remaining: HeaderName::from_static(remaining),
            reset: HeaderName::from_static(reset),
        })
    }

    /// Sets the headers for `window` (the tightest window of the plan),
    /// replacing any the upstream sent: clients must see the gateway's
    /// numbers, not a mix.
    pub fn apply(&self, headers: &mut HeaderMap, window: &WindowStatus) {
        headers.insert(self.limit.clone(), HeaderValue::from(window.limit));
        headers.insert(self.remaining.clone(), HeaderValue::from(window.remaining));
        headers.insert(self.reset.clone(), HeaderValue::from(window.reset_secs()));
    }
}

impl ProxyState {
    /// Renders a problem and tags the response with its code (for the log
    /// and metrics).
    pub fn render(&self, problem: &Problem) -> Response<Body> {
        let mut response = self.renderer.render(problem);
        response.extensions_mut().insert(problem.code);
        response
    }
}

/// What the requests of one client connection share: the gateway's state,
/// the client's address, and the upstream pool of the serving thread the
/// connection runs on (each thread has its own, so a request never leaves
/// its thread). Built once per connection.
#[derive(Debug)]
pub struct Connection {
    state: Arc<ProxyState>,
    peer: Peer,
    upstream: Upstream,
}

impl Connection {
    /// The connection from `client`, served with `upstream`'s connections.
    pub fn new(state: Arc<ProxyState>, client: SocketAddr, upstream: Upstream) -> Self {
        Self {
            state,
            peer: Peer::new(client),
            upstream,
        }
    }

    /// Handles one request (see [`stack::handle`]).
    pub async fn handle(&self, req: http::Request<hyper::body::Incoming>) -> Response<Body> {
        stack::handle(&self.state, req, &self.peer, &self.upstream).await
    }
}
