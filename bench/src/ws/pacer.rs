//! The agent backend of the delta phase: a `tollgate.agent.v1.AgentBackend` served from this
//! process whose runs stream `delta`s at a set rate, open loop, and then `completed`.
//!
//! Why here and not in the demo agent: the phase needs deltas at a controlled rate that carry
//! their own send time ([`super::pace`]), stamped when the backend hands them to gRPC.
//!
//! **Open loop.** One pacer task, ticking every millisecond, sends each run's due deltas
//! whatever the gateway does; a delta is never dropped here: if a run's outbound channel is full
//! (the gateway is not reading) it waits for the next tick and the wait shows as *lag* (send
//! time minus due time) and as *blocked* ticks. A run ends with `completed {output: <deltas
//! sent>}` at the end of its window.
//!
//! The backend runs on a Tokio runtime of its own (threads named `backend`), so its CPU can be
//! told apart from the clients' in this process.

use std::{net::SocketAddr, thread::JoinHandle, time::Duration};

use anyhow::Context as _;
use futures::stream::{self, BoxStream, StreamExt as _};
use hdrhistogram::Histogram;
use tokio::{
    net::TcpListener,
    sync::{mpsc, oneshot},
};
use tollgate_proto::agent::v1::{
    AgentMessage, Completed, Delta, GatewayMessage,
    agent_backend_server::{AgentBackend, AgentBackendServer},
    agent_message::Kind,
    gateway_message::Kind as FromGateway,
};
use tollgate_shared::shutdown::Shutdown;
use tonic::{Request, Response, Status, Streaming, transport::server::TcpIncoming};

use super::pace::{Clock, Pace, record};
use crate::{cores, load::new_histogram};

/// Messages a run may have queued for the gateway before the pacer waits.
const OUTBOUND_CAPACITY: usize = 64;
/// Runs waiting to be taken up by the pacer.
const ARRIVALS_CAPACITY: usize = 1024;
/// How long the gateway may take to send `start` after opening a stream.
const START_TIMEOUT: Duration = Duration::from_secs(5);

/// What the backend did since the last [`DeltaBackend::take_tally`].
#[derive(Debug)]
pub struct Tally {
    pub runs_started: u64,
    pub runs_completed: u64,
    /// Runs whose gateway side went away before `completed` was sent.
    pub runs_cut: u64,
    /// Deltas sent inside their run's measured window.
    pub measured: u64,
    /// Deltas sent outside it (warm-up).
    pub unmeasured: u64,
    /// Send time minus due time of the measured deltas, in µs.
    pub lag: Histogram<u64>,
    /// Times a run found its outbound channel full (the gateway not reading) and waited.
    pub blocked: u64,
}

impl Default for Tally {
    fn default() -> Self {
        Self {
            runs_started: 0,
            runs_completed: 0,
            runs_cut: 0,
            measured: 0,
            unmeasured: 0,
            lag: new_histogram(),
            blocked: 0,
        }
    }
}

/// A run handed to the pacer by the gRPC handler.
struct Arrival {
    pace: Pace,
    outbound: mpsc::Sender<Result<AgentMessage, Status>>,
    /// Held so the gateway's side of the stream stays open; nothing more is read from it.
    _inbound: Option<Streaming<GatewayMessage>>,
}

enum ToPacer {
    Run(Box<Arrival>),
    Tally(oneshot::Sender<Tally>),
}

/// The backend, serving on its own runtime and thread until [`DeltaBackend::stop`].
#[derive(Debug)]
pub struct DeltaBackend {
    pub addr: SocketAddr,
    clock: Clock,
    requests: mpsc::Sender<ToPacer>,
    shutdown: Shutdown,
    thread: JoinHandle<anyhow::Result<()>>,
}

impl DeltaBackend {
    /// Binds 127.0.0.1:0 and serves.
    pub fn start(clock: Clock) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cores())
            .thread_name("backend")
            .enable_all()
            .build()?;
        // Bound here so the address is known at once; registered with the runtime in its thread.
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (requests, received) = mpsc::channel(ARRIVALS_CAPACITY);
        let shutdown = Shutdown::new();
        let stop = shutdown.clone();
        let service = AgentBackendServer::new(Handler {
            requests: requests.clone(),
        });
        let thread = std::thread::Builder::new()
            .name("backend-main".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = TcpListener::from_std(listener)?;
                    let server = tonic::transport::Server::builder()
                        .add_service(service)
                        .serve_with_incoming_shutdown(
                            TcpIncoming::from(listener).with_nodelay(Some(true)),
                            {
                                let stop = stop.clone();
                                async move { stop.wait().await }
                            },
                        );
                    let (served, ()) = tokio::join!(server, pace(received, clock, stop));
                    served.context("serving the delta backend")
                })
            })?;
        Ok(Self {
            addr,
            clock,
            requests,
            shutdown,
            thread,
        })
    }

    /// The clock the deltas are stamped with.
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// What the runs did since the last call, and a fresh tally from now on.
    pub async fn take_tally(&self) -> anyhow::Result<Tally> {
        let (reply, tally) = oneshot::channel();
        self.requests
            .send(ToPacer::Tally(reply))
            .await
            .map_err(|_| anyhow::anyhow!("the delta backend stopped"))?;
        tokio::time::timeout(Duration::from_secs(5), tally)
            .await
            .context("the delta backend did not answer")?
            .context("the delta backend stopped")
    }

    /// Stops serving and joins the thread (runs still going are dropped).
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.trigger();
        let thread = self.thread;
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .context("joining the delta backend's thread")?
            .map_err(|_| anyhow::anyhow!("the delta backend's thread panicked"))?
    }
}

struct Handler {
    requests: mpsc::Sender<ToPacer>,
}

type Outbound = BoxStream<'static, Result<AgentMessage, Status>>;

#[tonic::async_trait]
impl AgentBackend for Handler {
    type RunStream = Outbound;

    async fn run(
        &self,
        request: Request<Streaming<GatewayMessage>>,
    ) -> Result<Response<Outbound>, Status> {
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(START_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no start in time"))??;
        let Some(GatewayMessage {
            kind: Some(FromGateway::Start(start)),
        }) = first
        else {
            return Err(Status::invalid_argument("expected start"));
        };
        let pace = Pace::parse(&start.input).map_err(Status::invalid_argument)?;
        let (outbound, messages) = mpsc::channel(OUTBOUND_CAPACITY);
        let arrival = Arrival {
            pace,
            outbound,
            _inbound: Some(inbound),
        };
        self.requests
            .send(ToPacer::Run(Box::new(arrival)))
            .await
            .map_err(|_| Status::unavailable("the backend is stopping"))?;
        let messages = stream::unfold(messages, |mut messages| async move {
            let message = messages.recv().await?;
            Some((message, messages))
        });
        Ok(Response::new(messages.boxed()))
    }
}

/// A run being paced.
struct Paced {
    arrival: Box<Arrival>,
    started_us: u64,
    seq: u64,
}

/// What the pacer did with a run on one tick.
enum Turn {
    /// Nothing more is due before a later tick.
    Wait,
    /// `completed` was sent, or the gateway's side is gone.
    Done,
}

impl Paced {
    fn due_us(&self) -> u64 {
        self.arrival.pace.due_us(self.started_us, self.seq)
    }

    /// Sends what is due at `now_us`, stamped with `now_us`.
    fn advance(&mut self, now_us: u64, tally: &mut Tally) -> Turn {
        let pace = self.arrival.pace;
        loop {
            let due = self.due_us();
            let (kind, last) = if due >= pace.until_us() {
                let output = self.seq.to_string();
                (Kind::Completed(Completed { output }), true)
            } else if due <= now_us {
                let text = record(self.seq, now_us);
                (Kind::Delta(Delta { text }), false)
            } else {
                return Turn::Wait;
            };
            let message = AgentMessage { kind: Some(kind) };
            match self.arrival.outbound.try_send(Ok(message)) {
                Ok(()) if last => {
                    tally.runs_completed += 1;
                    return Turn::Done;
                }
                Ok(()) => {
                    self.seq += 1;
                    if pace.measures(now_us) {
                        tally.measured += 1;
                        tally.lag.saturating_record(now_us - due);
                    } else {
                        tally.unmeasured += 1;
                    }
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tally.blocked += 1;
                    return Turn::Wait;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    tally.runs_cut += 1;
                    return Turn::Done;
                }
            }
        }
    }
}

/// The pacer: takes runs in, sends every run's due deltas each millisecond, hands out tallies.
async fn pace(mut requests: mpsc::Receiver<ToPacer>, clock: Clock, shutdown: Shutdown) {
    let mut runs: Vec<Paced> = Vec::new();
    let mut tally = Tally::default();
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            () = shutdown.wait() => return,
            request = requests.recv() => match request {
                Some(ToPacer::Run(arrival)) => {
                    tally.runs_started += 1;
                    let mut run = Paced { arrival, started_us: clock.micros(), seq: 0 };
                    if let Turn::Wait = run.advance(clock.micros(), &mut tally) {
                        runs.push(run);
                    }
                }
                Some(ToPacer::Tally(reply)) => {
                    let _ = reply.send(std::mem::take(&mut tally));
                }
                None => return,
            },
            _ = ticker.tick() => {
                let now_us = clock.micros();
                runs.retain_mut(|run| matches!(run.advance(now_us, &mut tally), Turn::Wait));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_run_sends_every_due_delta_in_order_then_completes_with_its_count() {
        let pace = Pace::new(1000.0, 0, 5_000).unwrap();
        let (outbound, mut messages) = mpsc::channel(OUTBOUND_CAPACITY);
        let mut tally = Tally::default();
        let mut run = Paced {
            arrival: Box::new(Arrival {
                pace,
                outbound,
                _inbound: None,
            }),
            started_us: 0,
            seq: 0,
        };
        // 1 ms per delta: at 2.5 ms, deltas 0, 1 and 2 are due.
        assert!(matches!(run.advance(2_500, &mut tally), Turn::Wait));
        // Late: the rest of the window is due at once, then `completed`.
        assert!(matches!(run.advance(9_000, &mut tally), Turn::Done));
        let mut texts = Vec::new();
        while let Ok(Ok(message)) = messages.try_recv() {
            texts.push(message.kind);
        }
        let expected: Vec<Option<Kind>> =
            [(0, 2_500), (1, 2_500), (2, 2_500), (3, 9_000), (4, 9_000)]
                .into_iter()
                .map(|(seq, at)| {
                    Some(Kind::Delta(Delta {
                        text: record(seq, at),
                    }))
                })
                .chain([Some(Kind::Completed(Completed { output: "5".into() }))])
                .collect();
        assert_eq!(texts, expected);
        assert_eq!(
            (tally.measured, tally.unmeasured),
            (3, 2),
            "sent at 9 ms is past the window"
        );
        assert_eq!(tally.runs_completed, 1);
    }

    fn paced(pace: Pace, capacity: usize) -> (Paced, mpsc::Receiver<Result<AgentMessage, Status>>) {
        let (outbound, messages) = mpsc::channel(capacity);
        let arrival = Box::new(Arrival {
            pace,
            outbound,
            _inbound: None,
        });
        let run = Paced {
            arrival,
            started_us: 0,
            seq: 0,
        };
        (run, messages)
    }

    #[test]
    fn a_run_whose_gateway_does_not_read_waits_and_one_whose_gateway_left_is_cut() {
        let pace = Pace::new(1000.0, 0, 10_000).unwrap();
        let (mut run, mut messages) = paced(pace, 2);
        let mut tally = Tally::default();
        assert!(matches!(run.advance(4_000, &mut tally), Turn::Wait));
        assert_eq!(
            (tally.measured, tally.blocked),
            (2, 1),
            "two fit, the third waits"
        );
        // Once there is room the waiting deltas go, in order, late: their lag shows it.
        while messages.try_recv().is_ok() {}
        assert!(matches!(run.advance(4_500, &mut tally), Turn::Wait));
        assert_eq!(run.seq, 4, "deltas 2 and 3 fit; 4 waits again");
        assert_eq!((tally.lag.len(), tally.blocked), (4, 2));
        assert_eq!(
            tally.lag.min(),
            1_500,
            "delta 3 was due at 3 ms and sent at 4.5 ms"
        );
        assert!(
            tally.lag.equivalent(tally.lag.max(), 4_000),
            "delta 0 waited 4 ms"
        );
        drop(messages);
        assert!(matches!(run.advance(9_000, &mut tally), Turn::Done));
        assert_eq!((tally.runs_cut, tally.runs_completed), (1, 0));
    }
}
