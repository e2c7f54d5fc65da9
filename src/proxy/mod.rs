//! The proxy listener: every request goes through [`stack`]: limits, the
//! [`gate`] (authentication and policy), then [`forward`] to the upstream.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use http::Response;

use crate::auth::usage::UsageRecorder;
use crate::problem::{Problem, ProblemRenderer};

pub mod forward;
pub mod gate;
pub mod sniff;
pub mod stack;

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
}

impl ProxyState {
    /// Renders a problem and tags the response with its code (for the log
    /// and metrics).
    pub fn render(&self, problem: &Problem) -> Response<Body> {
        let mut response = self.renderer.render(problem);
        response.extensions_mut().insert(problem.code);
        response
    }

    /// Handles one request (see [`stack::handle`]).
    pub async fn handle(
        &self,
        req: http::Request<hyper::body::Incoming>,
        client: SocketAddr,
    ) -> Response<Body> {
        stack::handle(self, req, client).await
    }
}
