//! A TCP proxy for fault-injection tests, in front of PostgreSQL, Redis or another service. It
//! forwards until told otherwise, and can then misbehave the way networks do:
//!
//! - [`cut`](FaultProxy::cut): a partition that the peers notice. Every open connection is
//!   closed and new ones are refused (accepted, then closed at once), like a network partition
//!   rather than a stopped server.
//! - [`blackhole`](FaultProxy::blackhole): a partition that the peers do not notice. Open
//!   connections stay open but bytes are dropped in both directions; new connections are
//!   accepted and held without ever reaching the upstream. Only the peers' own timeouts end
//!   them, which is what a silently dropping firewall or a dead host looks like.
//! - [`delay`](FaultProxy::delay): added latency. Every chunk of bytes read from then on is
//!   forwarded `latency` later, in order, in both directions (throughput is kept: later chunks
//!   are read while earlier ones wait).
//!
//! - [`blackhole_before_reply`](FaultProxy::blackhole_before_reply): a black hole that opens
//!   when the upstream answers with a chunk containing a marker (a command tag such as
//!   `UPDATE 1`, say): the upstream has acted, and its answer is lost.
//!
//! [`restore`](FaultProxy::restore) heals all of it: new connections are forwarded again
//! without delay. Connections held by a black hole are closed then, since the bytes they lost
//! leave their protocol stream unusable; a client reconnects as it would after a real outage.
//! Those caught by [`blackhole_before_reply`](FaultProxy::blackhole_before_reply) are closed on the client's
//! side only: the upstream's side stays open and silent until the proxy is dropped, like a
//! peer whose goodbye was lost in the partition (a database then keeps that session's
//! transaction, and its locks, until its own timeouts end it).
//!
//! Available with the `test-util` feature.

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpListener, TcpStream,
        tcp::{ReadHalf, WriteHalf},
    },
    sync::{mpsc, watch},
    task::JoinSet,
    time::Instant,
};

/// What the link does with connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    Up,
    Cut,
    Blackhole,
}

#[derive(Clone, Debug)]
struct State {
    link: Link,
    /// Added to every forwarded chunk, in each direction.
    delay: Duration,
    /// The black hole opens instead of forwarding an upstream's chunk containing this.
    marker: Option<Arc<[u8]>>,
    /// Connections held by the black hole are closed on the client's side only.
    strand: bool,
}

const HEALTHY: State = State {
    link: Link::Up,
    delay: Duration::ZERO,
    marker: None,
    strand: false,
};

#[derive(Debug)]
pub struct FaultProxy {
    address: SocketAddr,
    state: Arc<watch::Sender<State>>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let address = listener.local_addr()?;
        let state = Arc::new(watch::Sender::new(HEALTHY));
        let accept_task = tokio::spawn(accept_loop(listener, upstream, Arc::clone(&state)));
        Ok(Self {
            address,
            state,
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
        self.state.send_modify(|state| state.link = Link::Cut);
    }

    /// Drops every byte from now on without closing anything; new connections are accepted and
    /// held, never forwarded.
    pub fn blackhole(&self) {
        self.state.send_modify(|state| state.link = Link::Blackhole);
    }

    /// Opens a black hole instead of forwarding the upstream's first chunk that contains
    /// `marker`. Connections it holds are stranded (see the module documentation).
    pub fn blackhole_before_reply(&self, marker: &[u8]) {
        self.state
            .send_modify(|state| state.marker = Some(marker.into()));
    }

    /// Forwards every chunk read from now on `latency` late (in both directions). Combines with
    /// the other faults; `Duration::ZERO` removes it.
    pub fn delay(&self, latency: Duration) {
        self.state.send_modify(|state| state.delay = latency);
    }

    /// Forwards new connections again, without delay (held connections are closed).
    pub fn restore(&self) {
        self.state.send_replace(HEALTHY);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every connection task.
        self.accept_task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    control: Arc<watch::Sender<State>>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                let link = control.borrow().link;
                match link {
                    Link::Cut => drop(client),
                    Link::Blackhole => {
                        connections.spawn(hold(vec![client], control.subscribe()));
                    }
                    Link::Up => {
                        connections.spawn(forward(client, upstream, Arc::clone(&control)));
                    }
                }
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn forward(mut client: TcpStream, upstream: SocketAddr, control: Arc<watch::Sender<State>>) {
    let mut state = control.subscribe();
    let mut server = tokio::select! {
        connected = TcpStream::connect(upstream) => match connected {
            Ok(server) => server,
            Err(_) => return,
        },
        _ = state.wait_for(|state| state.link != Link::Up) => return,
    };
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    let link = {
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = server.split();
        let (upstream_state, downstream_state) = (state.clone(), state.clone());
        let pumps = async {
            tokio::join!(
                pump(client_read, server_write, upstream_state, None),
                pump(server_read, client_write, downstream_state, Some(&control))
            )
        };
        tokio::select! {
            _ = pumps => return,
            changed = state.wait_for(|state| state.link != Link::Up) => {
                changed.map_or(Link::Cut, |state| state.link)
            }
        }
    };
    if link != Link::Blackhole {
        return;
    }
    if state.borrow().strand {
        hold(vec![client], state).await;
        // Never closed from here: the upstream waits on a silent peer until the proxy drops.
        let mut buffer = [0u8; 4096];
        while matches!(server.read(&mut buffer).await, Ok(n) if n > 0) {}
        std::future::pending::<()>().await;
    } else {
        hold(vec![client, server], state).await;
    }
}

/// Copies `from` to `to`, each chunk held until its due time (the delay when it was read).
/// The upstream-to-client pump gets the `control`, to open a black hole at a marked chunk.
async fn pump(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    state: watch::Receiver<State>,
    control: Option<&watch::Sender<State>>,
) {
    let (queue, mut due) = mpsc::channel::<(Instant, Vec<u8>)>(64);
    let read = async move {
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            let read = tokio::select! {
                read = from.read(&mut buffer) => read,
                // The writer gave up: nothing more can be delivered.
                () = queue.closed() => return,
            };
            let n = match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let at = Instant::now() + state.borrow().delay;
            if queue.send((at, buffer[..n].to_vec())).await.is_err() {
                return;
            }
        }
    };
    let write = async move {
        while let Some((at, bytes)) = due.recv().await {
            tokio::time::sleep_until(at).await;
            if let Some(control) = control {
                let marked = control.send_if_modified(|state| {
                    let marked = state.marker.as_deref().is_some_and(|marker| {
                        bytes.windows(marker.len()).any(|window| window == marker)
                    });
                    if marked {
                        *state = State {
                            link: Link::Blackhole,
                            marker: None,
                            strand: true,
                            ..state.clone()
                        };
                    }
                    marked
                });
                if marked {
                    return;
                }
            }
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}

/// Keeps `streams` open, reading and discarding whatever arrives, until the black hole ends;
/// then closes them.
async fn hold(mut streams: Vec<TcpStream>, mut state: watch::Receiver<State>) {
    let discard = async {
        futures::future::join_all(streams.iter_mut().map(|stream| async move {
            let mut buffer = [0u8; 4096];
            while matches!(stream.read(&mut buffer).await, Ok(n) if n > 0) {}
        }))
        .await;
        // A peer that closed its side gets nothing back: the other peers are still held.
        std::future::pending::<()>().await;
    };
    tokio::select! {
        () = discard => {}
        _ = state.wait_for(|state| state.link != Link::Blackhole) => {}
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

    /// Whether `stream` stays silent and open for a while: nothing to read, no close.
    async fn stays_silent(stream: &mut TcpStream) -> bool {
        let mut buffer = [0u8; 4];
        tokio::time::timeout(Duration::from_millis(300), stream.read(&mut buffer))
            .await
            .is_err()
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

    #[tokio::test]
    async fn delays_every_chunk_until_restored() {
        let proxy = FaultProxy::start(echo_server().await).await.unwrap();
        let mut open = TcpStream::connect(proxy.address()).await.unwrap();
        round_trip(&mut open).await.unwrap();

        proxy.delay(Duration::from_millis(200));
        let started = Instant::now();
        round_trip(&mut open).await.unwrap();
        // There and back: two delayed chunks.
        assert!(started.elapsed() >= Duration::from_millis(400));

        proxy.restore();
        let mut fresh = TcpStream::connect(proxy.address()).await.unwrap();
        let started = Instant::now();
        round_trip(&mut fresh).await.unwrap();
        assert!(started.elapsed() < Duration::from_millis(400));
    }

    #[tokio::test]
    async fn a_black_hole_holds_connections_silently_then_closes_them() {
        let proxy = FaultProxy::start(echo_server().await).await.unwrap();
        let mut open = TcpStream::connect(proxy.address()).await.unwrap();
        round_trip(&mut open).await.unwrap();

        proxy.blackhole();
        open.write_all(b"ping").await.unwrap();
        assert!(stays_silent(&mut open).await, "bytes got through");
        let mut held = TcpStream::connect(proxy.address()).await.unwrap();
        held.write_all(b"ping").await.unwrap();
        assert!(
            stays_silent(&mut held).await,
            "a new connection got through"
        );

        proxy.restore();
        for stream in [&mut open, &mut held] {
            let mut buffer = [0u8; 4];
            let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
                .await
                .expect("a held connection is closed on restore");
            assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        }
        let mut healed = TcpStream::connect(proxy.address()).await.unwrap();
        round_trip(&mut healed).await.unwrap();
    }

    #[tokio::test]
    async fn a_marked_reply_is_lost_and_its_peer_stranded() {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let upstream = listener.local_addr().unwrap();
        let proxy = FaultProxy::start(upstream).await.unwrap();
        proxy.blackhole_before_reply(b"LOCKED");

        let mut client = TcpStream::connect(proxy.address()).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        round_trip_through(&mut client, &mut server, b"ping").await;

        client.write_all(b"lock it").await.unwrap();
        let mut buffer = [0u8; 16];
        let n = server.read(&mut buffer).await.unwrap();
        assert_eq!(&buffer[..n], b"lock it", "the request arrives");
        server.write_all(b"LOCKED").await.unwrap();
        assert!(stays_silent(&mut client).await, "the answer got through");

        proxy.restore();
        let read = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buffer))
            .await
            .expect("the client's side is closed on restore");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        assert!(
            stays_silent(&mut server).await,
            "the upstream's side is closed or written to"
        );
        let mut healed = TcpStream::connect(proxy.address()).await.unwrap();
        let (mut fresh, _) = listener.accept().await.unwrap();
        round_trip_through(&mut healed, &mut fresh, b"LOCKED").await;
    }

    /// `message` from client to server and back through the proxy.
    async fn round_trip_through(client: &mut TcpStream, server: &mut TcpStream, message: &[u8]) {
        let mut buffer = [0u8; 16];
        client.write_all(message).await.unwrap();
        let n = server.read(&mut buffer).await.unwrap();
        assert_eq!(&buffer[..n], message);
        server.write_all(message).await.unwrap();
        let n = client.read(&mut buffer).await.unwrap();
        assert_eq!(&buffer[..n], message);
    }
}
