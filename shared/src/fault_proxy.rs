//! A TCP proxy for fault-injection tests: it forwards to an upstream (PostgreSQL, Redis, another
//! service) until told to cut the link, which closes every open connection and refuses new
//! ones, like a network partition rather than a stopped server. `restore` heals it.
//!
//! Available with the `test-util` feature.

use std::{io, net::SocketAddr};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinSet,
};

#[derive(Debug)]
pub struct FaultProxy {
    address: SocketAddr,
    link_up: watch::Sender<bool>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let address = listener.local_addr()?;
        let (link_up, watch) = watch::channel(true);
        let accept_task = tokio::spawn(accept_loop(listener, upstream, watch));
        Ok(Self {
            address,
            link_up,
            accept_task,
        })
    }

    /// A proxy in front of the host and port of a `postgres://…` or `redis://…` URL, and the
    /// URL rewritten to go through it.
    pub async fn in_front_of(url: &str) -> io::Result<(Self, String)> {
        let invalid =
            |what: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("{what} in {url}"));
        let mut parsed = url::Url::parse(url).map_err(|_| invalid("not a URL"))?;
        let host = parsed.host_str().ok_or_else(|| invalid("no host"))?;
        let port = parsed
            .port_or_known_default()
            .ok_or_else(|| invalid("no port"))?;
        let upstream = tokio::net::lookup_host((host, port))
            .await?
            .next()
            .ok_or_else(|| invalid("unresolvable host"))?;
        let proxy = Self::start(upstream).await?;
        parsed
            .set_port(Some(proxy.address().port()))
            .map_err(|()| invalid("no port"))?;
        Ok((proxy, parsed.to_string()))
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Closes every proxied connection and refuses new ones.
    pub fn cut(&self) {
        self.link_up.send_replace(false);
    }

    pub fn restore(&self) {
        self.link_up.send_replace(true);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every connection task.
        self.accept_task.abort();
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, link_up: watch::Receiver<bool>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                if !*link_up.borrow() {
                    drop(client);
                    continue;
                }
                connections.spawn(forward(client, upstream, link_up.clone()));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn forward(mut client: TcpStream, upstream: SocketAddr, mut link_up: watch::Receiver<bool>) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = link_up.wait_for(|up| !*up) => {}
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut read, mut write) = socket.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        address
    }

    async fn round_trip(stream: &mut TcpStream) -> io::Result<()> {
        stream.write_all(b"ping").await?;
        let mut buffer = [0u8; 4];
        stream.read_exact(&mut buffer).await?;
        assert_eq!(&buffer, b"ping");
        Ok(())
    }

    #[tokio::test]
    async fn forwards_cuts_and_restores() {
        let proxy = FaultProxy::start(echo_server().await).await.unwrap();
        let mut open = TcpStream::connect(proxy.address()).await.unwrap();
        round_trip(&mut open).await.unwrap();

        proxy.cut();
        assert!(
            round_trip(&mut open).await.is_err(),
            "an open connection survives the cut"
        );
        let mut refused = TcpStream::connect(proxy.address()).await.unwrap();
        assert!(
            round_trip(&mut refused).await.is_err(),
            "a new connection gets through the cut"
        );

        proxy.restore();
        let mut healed = TcpStream::connect(proxy.address()).await.unwrap();
        round_trip(&mut healed).await.unwrap();
    }
}
