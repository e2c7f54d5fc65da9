//! Forwarding an authorised request to the upstream and streaming the answer
//! back: a pooled keep-alive hyper client, bodies streamed both ways (never
//! buffered), and header hygiene:
//!
//! - hop-by-hop headers and every header named in `Connection` are removed,
//!   both ways (`Proxy-Authorization` included);
//! - credential headers and any client-sent `X-Keygate-*` header are removed,
//!   so the upstream never sees the key and cannot be lied to about identity;
//! - `X-Keygate-Key-Id`, `-Owner`, `-Scopes`, `-Plan` are added for
//!   authenticated requests;
//! - the client address is appended to `X-Forwarded-For`; `X-Forwarded-Proto`
//!   and `X-Forwarded-Host` are set, replacing what the client sent; `Host`
//!   becomes the upstream's authority.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use thiserror::Error;

use super::Peer;
use super::gate::Authorized;
use super::upstream::{PoolSettings, Upstream, UpstreamError, UpstreamSettings};
use crate::auth::IdentityHeader;

/// Settings of the forwarder (`[upstream]` and the credential header names).
#[derive(Debug, Clone)]
pub struct ForwardSettings {
    /// `[upstream]`.
    pub upstream: UpstreamSettings,
    /// Largest request body forwarded (`server.max_body_bytes`).
    pub max_body_bytes: Option<u64>,
    /// Credential headers, removed before forwarding.
    pub credential_headers: Vec<HeaderName>,
}

/// Why forwarding failed.
#[derive(Debug, Error)]
pub enum ForwardError {
    /// Refused, reset, or the connection broke before a response head.
    #[error("upstream unavailable: {0}")]
    Unavailable(String),
    /// No response head within `upstream.timeout`.
    #[error("upstream did not answer within {0:?}")]
    Timeout(Duration),
    /// The streamed request body outgrew `server.max_body_bytes`.
    #[error("request body larger than the configured limit")]
    BodyTooLarge,
    /// The upstream URI could not be built (a bug: inputs are validated).
    #[error("cannot build the upstream request: {0}")]
    Build(String),
}

/// The forwarder: builds the upstream request and sends it on the
/// connection pool it is given (each serving thread has its own, see
/// [`Forwarder::pool`]). Cheap to clone.
#[derive(Clone)]
pub struct Forwarder {
    settings: Arc<ForwardSettings>,
    upstream_host: HeaderValue,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Thirty years: a deadline that never comes.
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEY_ID: HeaderName = HeaderName::from_static("x-keygate-key-id");
static OWNER: HeaderName = HeaderName::from_static("x-keygate-owner");
static SCOPES: HeaderName = HeaderName::from_static("x-keygate-scopes");
static PLAN: HeaderName = HeaderName::from_static("x-keygate-plan");

impl Forwarder {
    /// A forwarder for `settings`.
    pub fn new(settings: ForwardSettings) -> Result<Self, ForwardError> {
        let upstream_host = HeaderValue::from_str(&settings.upstream.authority)
            .map_err(|e| ForwardError::Build(e.to_string()))?;
        Ok(Self {
            settings: Arc::new(settings),
            upstream_host,
        })
    }

    /// A new, empty connection pool for one of `of` serving threads, to be
    /// created and used on that thread only: its connections' tasks run on
    /// the runtime that opened them. The idle limit
    /// (`upstream.pool_max_idle_per_host`) is shared out among the pools,
    /// rounded up so that no thread is left without keep-alive: the gateway
    /// keeps at most the limit plus `of - 1` idle connections.
    pub fn pool(&self, of: usize) -> Upstream {
        let upstream = &self.settings.upstream;
        Upstream::new(PoolSettings {
            authority: upstream.authority.clone(),
            connect_timeout: upstream.connect_timeout,
            max_idle: upstream.pool_max_idle_per_host.div_ceil(of.max(1)),
            idle_timeout: upstream.pool_idle_timeout,
        })
    }

    /// Forwards `authorized` with the client's body on a connection of
    /// `upstream` (the serving thread's pool), returning the upstream's
    /// response (body streamed). `upstream.timeout` runs from `sent_at`.
    pub async fn forward(
        &self,
        upstream: &Upstream,
        authorized: Authorized,
        mut parts: http::request::Parts,
        body: Incoming,
        client: &Peer,
        sent_at: Instant,
    ) -> Result<Response<Body>, ForwardError> {
        let original_host = parts.headers.get(header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        let uri = self.upstream_uri(&authorized, &mut parts.uri)?;
        let headers = &mut parts.headers;
        strip_on_forward(headers, &self.settings.credential_headers);
        append_forwarded_for(headers, client);
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
        match original_host {
            Some(host) => {
                headers.insert(X_FORWARDED_HOST.clone(), host);
            }
            None => {
                headers.remove(&X_FORWARDED_HOST);
            }
        }
        headers.insert(header::HOST, self.upstream_host.clone());
        if let Some(principal) = authorized.principal() {
            // Built once per cached key (auth::Identity): clones share bytes.
            let identity = &principal.identity;
            for (name, value) in [
                (&KEY_ID, identity.header(IdentityHeader::KeyId)),
                (&OWNER, identity.header(IdentityHeader::Owner)),
                (&SCOPES, principal.scopes_header()),
                (&PLAN, identity.header(IdentityHeader::Plan)),
            ] {
                if let Some(value) = value {
                    headers.insert(name.clone(), value);
                }
            }
        }

        let body = match self.settings.max_body_bytes {
            Some(limit) => Body::new(Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX))),
            None => Body::new(body),
        };
        let mut request = Request::from_parts(parts, body);
        *request.uri_mut() = uri;
        *request.version_mut() = http::Version::HTTP_11;

        let started = tokio::time::Instant::from_std(sent_at);
        // A timeout too long to add is as good as none (what tokio's own
        // `timeout` does too).
        let deadline = started
            .checked_add(self.settings.upstream.timeout)
            .unwrap_or_else(|| started + FAR_FUTURE);
        let response = match tokio::time::timeout_at(deadline, upstream.send(request, sent_at)).await {
            Err(_) => return Err(ForwardError::Timeout(self.settings.upstream.timeout)),
            Ok(Err(e)) => {
                if is_body_limit(&e) {
                    return Err(ForwardError::BodyTooLarge);
                }
                return Err(ForwardError::Unavailable(error_chain(&e)));
            }
            Ok(Ok(response)) => response,
        };
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(
            parts,
            Body::new(body.map_err(axum::Error::new)),
        ))
    }

    /// The origin-form target the upstream receives: `upstream.url`'s base
    /// path, the normalised path, the client's query. When that is exactly
    /// what the client sent (no base path, the path already normal, origin
    /// form), the client's target is taken as it is, without rebuilding it.
    fn upstream_uri(&self, authorized: &Authorized, presented: &mut Uri) -> Result<Uri, ForwardError> {
        let path = authorized.path().as_str();
        if self.settings.upstream.base_path.is_empty()
            && presented.scheme().is_none()
            && presented.authority().is_none()
            && presented.path() == path
        {
            return Ok(std::mem::take(presented));
        }
        let query = presented.query();
        let mut target = String::with_capacity(
            self.settings.upstream.base_path.len() + path.len() + 1 + query.map_or(0, str::len),
        );
        target.push_str(&self.settings.upstream.base_path);
        target.push_str(path);
        if let Some(q) = query {
            target.push('?');
            target.push_str(q);
        }
        // Origin-form: the connection is to the upstream already, and `Host`
        // names it.
        Uri::try_from(target).map_err(|e| ForwardError::Build(e.to_string()))
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1 plus the legacy ones proxies
/// strip).
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The hop-by-hop header named `name` (lowercase), if it is one.
fn hop_by_hop(name: &str) -> Option<&'static HeaderName> {
    let index = match name {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "proxy-authenticate" => 3,
        "proxy-authorization" => 4,
        "te" => 5,
        "trailer" => 6,
        "transfer-encoding" => 7,
        "upgrade" => 8,
        _ => return None,
    };
    HOP_BY_HOP.get(index)
}

/// Removes hop-by-hop headers and those the `Connection` header names (on
/// a response: nothing else is the client's business to lose).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    strip(headers, |name| {
        hop_by_hop(name.as_str()).map_or(Verdict::Keep, Verdict::Remove)
    });
}

/// Removes what must not reach the upstream: hop-by-hop headers and those
/// the `Connection` header names, the `credentials` headers, and every
/// header whose name starts with `x-keygate-` (only keygate says who the
/// caller is).
fn strip_on_forward(headers: &mut HeaderMap, credentials: &[HeaderName]) {
    strip(headers, |name| {
        let text = name.as_str();
        if let Some(known) = hop_by_hop(text).or_else(|| credentials.iter().find(|c| *c == name)) {
            Verdict::Remove(known)
        } else if text.starts_with("x-keygate-") {
            Verdict::RemoveThis
        } else {
            Verdict::Keep
        }
    });
}

/// What [`strip`] does with a header name.
enum Verdict<'n> {
    Keep,
    /// Remove it; this is its name, from a list that outlives the pass (no
    /// copy of the name needed).
    Remove(&'n HeaderName),
    /// Remove it (its name is copied).
    RemoveThis,
}

/// Removes every header `verdict` says to and every header a `Connection`
/// header names. One pass over the headers present: a request with nothing
/// to remove costs no lookups, and the usual removals copy no names.
fn strip<'n>(headers: &mut HeaderMap, verdict: impl Fn(&HeaderName) -> Verdict<'n>) {
    // The usual removals fit in `listed` (no allocation); more are copied.
    let mut listed: [Option<&'n HeaderName>; 8] = [None; 8];
    let mut listed_len = 0;
    let mut copied: Vec<HeaderName> = Vec::new();
    let mut previous: Option<&HeaderName> = None;
    for (name, value) in headers.iter() {
        if name == header::CONNECTION {
            named_by_connection(value, &mut copied);
        }
        // The values of one name come together, under the same name: decide
        // once per name.
        if previous.is_some_and(|p| std::ptr::eq(p, name)) {
            continue;
        }
        previous = Some(name);
        match verdict(name) {
            Verdict::Keep => {}
            Verdict::Remove(known) => match listed.get_mut(listed_len) {
                Some(slot) => {
                    *slot = Some(known);
                    listed_len += 1;
                }
                None => copied.push(known.clone()),
            },
            Verdict::RemoveThis => copied.push(name.clone()),
        }
    }
    for name in listed.into_iter().flatten() {
        headers.remove(name);
    }
    for name in copied {
        headers.remove(name);
    }
}

/// Adds to `names` the headers one `Connection` value names, except the
/// hop-by-hop ones (removed by name anyway).
fn named_by_connection(value: &HeaderValue, names: &mut Vec<HeaderName>) {
    let bytes = value.as_bytes();
    // The usual values name no header: `keep-alive` (hop-by-hop itself)
    // and `close`.
    if bytes.eq_ignore_ascii_case(b"keep-alive") || bytes.eq_ignore_ascii_case(b"close") {
        return;
    }
    let Ok(value) = value.to_str() else {
        return;
    };
    for token in value.split(',').map(str::trim) {
        // `keep-alive` and `close` are the usual tokens: the first is
        // hop-by-hop, the second names no header.
        if token.eq_ignore_ascii_case("keep-alive") || token.eq_ignore_ascii_case("close") {
            continue;
        }
        if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
            if hop_by_hop(name.as_str()).is_none() {
                names.push(name);
            }
        }
    }
}

/// Appends the client's address to `X-Forwarded-For` (one header, comma-joined).
fn append_forwarded_for(headers: &mut HeaderMap, client: &Peer) {
    match headers.entry(&X_FORWARDED_FOR) {
        // The usual case: the value formatted once per connection.
        header::Entry::Vacant(entry) => {
            entry.insert(client.ip_header().clone());
        }
        header::Entry::Occupied(mut entry) => {
            let mut joined: Vec<u8> = Vec::new();
            for value in entry.iter() {
                joined.extend_from_slice(value.as_bytes());
                joined.extend_from_slice(b", ");
            }
            joined.extend_from_slice(client.ip_header().as_bytes());
            if let Ok(value) = HeaderValue::from_bytes(&joined) {
                entry.insert(value);
            }
        }
    }
}

fn is_body_limit(e: &UpstreamError) -> bool {
    let e: &(dyn std::error::Error + 'static) = e;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = err.source();
    }
    false
}

fn error_chain(e: &UpstreamError) -> String {
    let e: &(dyn std::error::Error + 'static) = e;
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(err) = source {
        out.push_str(": ");
        out.push_str(&err.to_string());
        source = err.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_idle_limit_is_shared_out_among_the_serving_threads() {
        let forwarder = |limit| {
            Forwarder::new(ForwardSettings {
                upstream: UpstreamSettings {
                    url: "http://127.0.0.1:9".into(),
                    authority: "127.0.0.1:9".into(),
                    base_path: String::new(),
                    timeout: Duration::from_secs(1),
                    connect_timeout: Duration::from_secs(1),
                    pool_max_idle_per_host: limit,
                    pool_idle_timeout: Duration::from_secs(1),
                },
                max_body_bytes: None,
                credential_headers: Vec::new(),
            })
            .unwrap()
        };
        assert_eq!(forwarder(256).pool(1).max_idle(), 256);
        assert_eq!(forwarder(256).pool(4).max_idle(), 64);
        assert_eq!(forwarder(256).pool(3).max_idle(), 86, "rounded up");
        assert_eq!(forwarder(1).pool(8).max_idle(), 1, "every thread keeps one");
        assert_eq!(forwarder(0).pool(8).max_idle(), 0, "none means none");
        assert_eq!(forwarder(10).pool(0).max_idle(), 10, "no threads counts as one");
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (k, v) in pairs {
            headers.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        headers
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut headers = map(&[
            ("connection", "keep-alive, X-Secret-Hop, proxy-authorization"),
            ("x-secret-hop", "1"),
            ("x-other-hop", "1"),
            ("x-other-hop", "2"),
            // A second Connection value is read as well as the first.
            ("connection", "close,x-other-hop"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic abc"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            // Nine hop-by-hop names in all: more than the pass lists
            // without allocating.
            ("transfer-encoding", "chunked"),
            ("trailer", "x-checksum"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authenticate", "Basic"),
            ("accept", "application/json"),
        ]);
        strip_hop_by_hop(&mut headers);
        let left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, vec!["accept"]);
    }

    #[test]
    fn keygate_headers_are_dropped_and_forwarded_for_appended() {
        let mut headers = map(&[
            ("x-keygate-key-id", "forged"),
            ("X-Keygate-Anything", "x"),
            ("x-keygate-anything", "y"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2"),
            ("x-api-key", "kg_live_secret"),
            ("accept", "*/*"),
        ]);
        strip_on_forward(&mut headers, &[HeaderName::from_static("x-api-key")]);
        append_forwarded_for(&mut headers, &Peer::new("192.0.2.7:5555".parse().unwrap()));
        assert!(headers.get("x-keygate-key-id").is_none());
        assert!(headers.get("x-keygate-anything").is_none());
        assert!(headers.get("x-api-key").is_none());
        assert_eq!(headers["accept"], "*/*");
        assert_eq!(headers.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(headers["x-forwarded-for"], "10.0.0.1, 10.0.0.2, 192.0.2.7");
    }
}
