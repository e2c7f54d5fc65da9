//! A small TCP fault proxy for outage tests (STYLE.md §4): listens on
//! `127.0.0.1:0`, forwards every connection to a target, and on demand cuts
//! the link in one of the [`Fault`] modes until [`Chaos::restore`].

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How the link fails while cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Live connections are closed; new ones are accepted and closed at once
    /// (what a stopped server or a firewall sending RST looks like).
    Refuse,
    /// Live connections are closed; new ones are accepted and never
    /// forwarded nor answered (a server that hangs during connect).
    Blackhole,
    /// Live connections stay open but nothing passes either way, and new
    /// ones are black-holed (a network partition: no FIN, no RST).
    Freeze,
}

/// The link's state, watched by every connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Up,
    Cut(Fault),
}

/// The proxy. Dropping it ends every connection it holds.
pub struct Chaos {
    addr: SocketAddr,
    link: watch::Sender<Link>,
    accept: JoinHandle<()>,
}

impl Chaos {
    /// A proxy to `target`, forwarding.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (link, _) = watch::channel(Link::Up);
        let watched = link.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(serve(client, target, watched.subscribe()));
            }
        });
        Self { addr, link, accept }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cuts the link.
    pub fn cut(&self, fault: Fault) {
        self.link.send_replace(Link::Cut(fault));
    }

    /// Forwards new connections again (connections cut meanwhile stay gone).
    pub fn restore(&self) {
        self.link.send_replace(Link::Up);
    }
}

impl Drop for Chaos {
    fn drop(&mut self) {
        self.accept.abort();
        // Dropping `link` afterwards ends every connection's wait.
    }
}

/// One client connection, for as long as the link lets it live.
async fn serve(mut client: TcpStream, target: SocketAddr, mut link: watch::Receiver<Link>) {
    let at_accept = *link.borrow_and_update();
    match at_accept {
        Link::Cut(Fault::Refuse) => return,
        Link::Cut(Fault::Blackhole | Fault::Freeze) => {
            // Held, unanswered, until the link is back (then closed: the
            // client gave up on it long ago) or the proxy goes.
            let _ = link.wait_for(|l| *l == Link::Up).await;
            return;
        }
        Link::Up => {}
    }
    let Ok(mut server) = TcpStream::connect(target).await else {
        return;
    };
    let fault = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => return,
        cut = link.wait_for(|l| *l != Link::Up) => match cut {
            Ok(l) => *l,
            Err(_) => return,
        },
    };
    if fault == Link::Cut(Fault::Freeze) {
        // Nothing is copied any more, but both sockets stay open.
        let _ = link.wait_for(|l| *l == Link::Up).await;
    }
}
