//! Bench helper: keygate's built-in echo upstream on its own (for
//! `bench/stream.sh`). Paths ending in `/bytes/<n>` stream `n` bytes back;
//! request bodies are counted and discarded.
//!
//! Usage: `echo LISTEN_ADDR` (`127.0.0.1:0` picks a port; the bound address
//! is printed on stdout).

use std::net::SocketAddr;

use anyhow::{Context, Result, bail};
use keygate::echo::EchoServer;

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen] = args.as_slice() else {
        bail!("usage: echo LISTEN_ADDR");
    };
    let listen: SocketAddr = listen.parse().context("LISTEN_ADDR")?;
    let server = EchoServer::start(listen).await?;
    println!("{}", server.addr());
    tokio::signal::ctrl_c().await?;
    drop(server);
    Ok(())
}
