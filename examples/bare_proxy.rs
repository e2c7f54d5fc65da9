//! Bench helper: the floor cost of any Rust reverse proxy. A minimal hyper 1
//! proxy (auto server builder, hyper-util legacy client with a keep-alive
//! pool, tokio's default multi-thread runtime) that forwards every request
//! to one upstream with no authentication and no header hygiene beyond what
//! HTTP requires (`Host`, an absolute URI for the client). `bench/proxy.sh`
//! compares keygate against it.
//!
//! With `current-thread`, the same proxy runs on a current-thread runtime
//! instead, as keygate's serving threads do (a reference row: how much of
//! keygate's standing is the runtime).
//!
//! Usage: `bare_proxy LISTEN_ADDR UPSTREAM_ADDR [current-thread]` (addresses
//! as `ip:port`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use http::{HeaderValue, Request, Response, StatusCode, Uri, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

type ProxyBody = BoxBody<Bytes, hyper::Error>;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut runtime = match args.get(2).map(String::as_str) {
        None if args.len() == 2 => tokio::runtime::Builder::new_multi_thread(),
        Some("current-thread") if args.len() == 3 => tokio::runtime::Builder::new_current_thread(),
        _ => bail!("usage: bare_proxy LISTEN_ADDR UPSTREAM_ADDR [current-thread]"),
    };
    runtime.enable_all().build()?.block_on(serve(&args))
}

async fn serve(args: &[String]) -> Result<()> {
    let listen: SocketAddr = args[0].parse().context("LISTEN_ADDR")?;
    let upstream: SocketAddr = args[1].parse().context("UPSTREAM_ADDR")?;
    let authority = upstream.to_string();
    let host = HeaderValue::from_str(&authority)?;

    // hyper-util's pooled client, what a plain hyper proxy uses (keygate
    // has its own single-upstream pool, proxy/upstream.rs), with the same
    // limits keygate's defaults set: keep-alive, nodelay, 256 idle, 90 s.
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .pool_idle_timeout(Duration::from_secs(90))
        .build(connector);

    let listener = TcpListener::bind(listen).await?;
    eprintln!("bare_proxy listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let client = client.clone();
        let authority = authority.clone();
        let host = host.clone();
        tokio::spawn(async move {
            let service = service_fn(move |mut req: Request<Incoming>| {
                let client = client.clone();
                let authority = authority.clone();
                let host = host.clone();
                async move {
                    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
                    let uri = Uri::builder()
                        .scheme("http")
                        .authority(authority.as_str())
                        .path_and_query(path)
                        .build();
                    let Ok(uri) = uri else {
                        return Ok::<_, Infallible>(status(StatusCode::BAD_REQUEST));
                    };
                    *req.uri_mut() = uri;
                    *req.version_mut() = http::Version::HTTP_11;
                    req.headers_mut().insert(header::HOST, host);
                    Ok(match client.request(req).await {
                        Ok(response) => response.map(BodyExt::boxed),
                        Err(_) => status(StatusCode::BAD_GATEWAY),
                    })
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn status(code: StatusCode) -> Response<ProxyBody> {
    let mut response = Response::new(Empty::new().map_err(|never| match never {}).boxed());
    *response.status_mut() = code;
    response
}
