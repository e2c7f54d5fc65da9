//! The proxy's request pipeline, in order, with the reason for each step.
//! Order is the security model, so it lives here and nowhere else.
//!
//! 1. **Head limits** — a request head over `server.max_header_bytes` gets 431
//!    and a declared body over `server.max_body_bytes` 413, before any work.
//! 2. **Framing** — `Content-Length` together with `Transfer-Encoding` is a
//!    smuggling attempt: 400, nothing forwarded (seen by [`super::sniff`]).
//! 3. **Token exchange** ([`super::exchange`]) — with `[tokens]` on, the
//!    exchange paths (`/auth/login`, `/auth/refresh`, `/oauth/token`, the
//!    JWKS) are answered here: they authenticate the key in their body, check
//!    its plan and charge its rate limits themselves.
//! 4. **Gate** ([`super::gate`]) — path normalisation (which runs before
//!    routing, so routing and the upstream see the same path), route
//!    decision, authentication, plan access, scopes, rate limits (last, so
//!    a request refused for any other reason costs no allowance). Every
//!    response to a request that passed the limiter, a 429 included, gets
//!    the `RateLimit-*` headers of the plan's tightest window.
//! 5. **Forward** ([`super::forward`]) — only an `Authorized` request; header
//!    hygiene, streaming, upstream errors mapped to 502/504.
//! 6. **Log** — one line per request with method, route, key id, short
//!    prefix, decision, status and duration; never a secret. Built from the
//!    [`super::record::RequestRecord`] the answering step's outcome became.
//! 7. **Usage and metrics** — a request whose key was identified is counted
//!    by outcome in memory ([`crate::auth::usage`]; the store is written off
//!    this path), and every request by outcome and route, with its latency,
//!    in [`crate::telemetry::metrics`].

use std::time::Instant;

use axum::body::Body;
use http::{HeaderMap, Request, Response, header};
use hyper::body::Incoming;
use tracing::Instrument;

use super::forward::ForwardError;
use super::record::RequestRecord;
use super::sniff::AmbiguousFraming;
use super::upstream::Upstream;
use super::{Peer, ProxyState};
use crate::policy::path::normalize;
use crate::problem::{Code, Problem};

/// Handles one proxied request end to end; never fails (every failure is a
/// problem response).
pub async fn handle(
    state: &ProxyState,
    req: Request<Incoming>,
    client: &Peer,
    upstream: &Upstream,
) -> Response<Body> {
    let started = Instant::now();
    let span = tracing::info_span!("request", method = %req.method(), client = %client.addr().ip());
    async move {
        let method = req.method().clone();
        let (mut response, record) = pipeline(state, req, client, upstream).await;
        if let (Some(names), Some(window)) = (&state.rate_limit_headers, &record.rate) {
            names.apply(response.headers_mut(), window);
        }
        let status = response.status().as_u16();
        let outcome = response
            .extensions()
            .get::<Code>()
            .map_or("ok", |code| code.as_str());
        // Only identified keys are counted; the recorder never waits on the store.
        if let Some(identity) = &record.caller.identity {
            state.usage.record_identity_now(identity, outcome);
        } else if let Some(key_id) = &record.caller.key_id {
            state.usage.record_now(key_id, outcome);
        }
        // The forwarded request's clock reading when its response head
        // arrived serves as the end too (what follows it takes nanoseconds).
        let duration = record
            .answered_at
            .unwrap_or_else(Instant::now)
            .duration_since(started);
        state
            .metrics
            .observe_request(outcome, record.route, duration, record.upstream);
        tracing::info!(
            method = %method,
            route = record.route,
            key_id = record.caller.key_id().unwrap_or("-"),
            short_prefix = record.caller.short_prefix().unwrap_or("-"),
            session_id = record.caller.session_id.as_deref().unwrap_or("-"),
            decision = outcome,
            reason = record.reason.unwrap_or("-"),
            status,
            duration_ms = duration.as_secs_f64() * 1000.0,
            "request"
        );
        response
    }
    .instrument(span)
    .await
}

/// Answers the request and says what happened: the response, and the
/// record built from the outcome of the step that answered.
async fn pipeline<'a>(
    state: &'a ProxyState,
    req: Request<Incoming>,
    client: &Peer,
    upstream: &Upstream,
) -> (Response<Body>, RequestRecord<'a>) {
    let (parts, body) = req.into_parts();

    // 1. Head limits.
    if head_size(&parts.headers) + parts.uri.path_and_query().map_or(0, |p| p.as_str().len())
        > state.max_header_bytes
    {
        let record = RequestRecord::unrouted("request head too large");
        return (state.render(&Problem::new(Code::HeadersTooLarge)), record);
    }
    let content_length = parts.headers.get(header::CONTENT_LENGTH);
    if let (Some(limit), Some(declared)) = (state.max_body_bytes, content_length) {
        if declared
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|n| n > limit)
        {
            let record = RequestRecord::unrouted("declared body too large");
            return (state.render(&Problem::new(Code::PayloadTooLarge)), record);
        }
    }
    // 2. Framing.
    // hyper drops Content-Length when Transfer-Encoding is present, so the
    // connection observer (super::sniff) is what sees the pair.
    let ambiguous = parts.extensions.get::<AmbiguousFraming>().is_some()
        || (content_length.is_some() && parts.headers.contains_key(header::TRANSFER_ENCODING));
    if ambiguous {
        let problem = Problem::new(Code::BadRequest)
            .with_message("A request may not carry both Content-Length and Transfer-Encoding.");
        let record = RequestRecord::unrouted("Content-Length with Transfer-Encoding");
        return (state.render(&problem), record);
    }

    // 3. Token exchange.
    if let Some(exchange) = &state.exchange {
        let endpoint = normalize(parts.uri.path())
            .ok()
            .and_then(|path| exchange.endpoint(path.as_str()));
        if let Some(endpoint) = endpoint {
            // Boxed: the exchange's state machine is large and rare, and
            // unboxed it would size (and be copied with) every request's
            // future.
            return Box::pin(exchange.handle(state, endpoint, parts, body)).await;
        }
    }

    // 4. Gate.
    let checked = state.gate.check(&parts).await;
    let mut record = RequestRecord::new(checked.route, checked.caller, checked.rate, None);
    let authorized = match checked.verdict {
        Ok(authorized) => authorized,
        Err(refusal) => {
            record.reason = Some(refusal.reason);
            return (state.render(&refusal.problem), record);
        }
    };

    // 5. Forward.
    let forwarded_at = Instant::now();
    let forwarded = state
        .forwarder
        .forward(upstream, authorized, parts, body, client, forwarded_at)
        .await;
    let answered_at = Instant::now();
    record.upstream = Some(answered_at.duration_since(forwarded_at));
    record.answered_at = Some(answered_at);
    let response = match forwarded {
        Ok(response) => response,
        Err(e) => {
            let code = match &e {
                ForwardError::Timeout(_) => Code::UpstreamTimeout,
                ForwardError::BodyTooLarge => Code::PayloadTooLarge,
                ForwardError::Unavailable(_) | ForwardError::Build(_) => Code::UpstreamUnavailable,
            };
            // The cause goes to the log, never to the client.
            tracing::warn!(error = %e, "forwarding failed");
            record.reason = Some(match code {
                Code::UpstreamTimeout => "upstream timeout",
                Code::PayloadTooLarge => "streamed body too large",
                _ => "upstream unavailable",
            });
            state.render(&Problem::new(code))
        }
    };
    (response, record)
}

/// Bytes of the header section as sent (names, values, separators).
fn head_size(headers: &HeaderMap) -> usize {
    headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum()
}
