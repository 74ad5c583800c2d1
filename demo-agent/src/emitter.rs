//! [`Emitter`]: a run's two streams and its stop signal, together.
//!
//! Why one type: the agent's promise ("stop promptly once cancelled, send nothing after that,
//! notice a gateway that went away") has to hold at every single await of a run. Every send,
//! pause and wait for a decision goes through [`Emitter::race`], which reads the gateway's
//! messages while it waits: a `cancel`, the end of the inbound stream, a closed outbound
//! channel or the server's stop signal interrupts the wait, and the inbound stream is checked
//! first, so a cancel already received wins over a send that could also go ahead. That is one
//! piece of code, tested once, instead of a `select!` repeated at each step.

use std::{future::Future, pin::pin, time::Duration};

use futures::{Stream, StreamExt};
use tokio::sync::mpsc::Sender;
use tokio_util::sync::CancellationToken;
use tollgate_proto::agent::v1::{
    AgentMessage, GatewayMessage, Start, ToolDecision, agent_message, gateway_message,
};

/// Why a run stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Interrupted {
    /// The gateway sent `cancel`.
    Cancelled,
    /// The gateway's stream ended: nothing more can be decided.
    InboundEnded,
    /// The outbound channel was closed: nobody reads the run any more.
    Disconnected,
    /// The server is shutting down.
    Stopped,
    /// No decision came for a tool request within the allowed time.
    DecisionTimedOut,
}

/// Sends a run's messages, racing every await against the ways a run stops.
#[derive(Debug)]
pub(crate) struct Emitter<S> {
    inbound: S,
    outbound: Sender<AgentMessage>,
    stop: CancellationToken,
}

impl<S> Emitter<S>
where
    S: Stream<Item = GatewayMessage> + Unpin + Send,
{
    pub(crate) fn new(inbound: S, outbound: Sender<AgentMessage>, stop: CancellationToken) -> Self {
        Self {
            inbound,
            outbound,
            stop,
        }
    }

    /// Sends one message, waiting for room in the channel (which is how a slow gateway applies
    /// backpressure to the run) unless the run stops meanwhile.
    pub(crate) async fn send(&mut self, kind: agent_message::Kind) -> Result<(), Interrupted> {
        let Self {
            inbound,
            outbound,
            stop,
        } = self;
        let reserve = async {
            outbound
                .reserve()
                .await
                .map_err(|_closed| Interrupted::Disconnected)
        };
        let permit = race(inbound, outbound, stop, reserve, ignore).await?;
        permit.send(AgentMessage { kind: Some(kind) });
        Ok(())
    }

    /// Waits `delay` unless the run stops meanwhile; a zero delay still takes note of a
    /// `cancel` that has already arrived.
    pub(crate) async fn pause(&mut self, delay: Duration) -> Result<(), Interrupted> {
        let Self {
            inbound,
            outbound,
            stop,
        } = self;
        let sleep = async {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Ok(())
        };
        race(inbound, outbound, stop, sleep, ignore).await
    }

    /// Waits for the gateway's decision on `call_id`, at most `timeout`. Decisions for other
    /// call ids (stale, duplicated or made up) and any other message are ignored, and so is a
    /// decision read while no request is waiting: the gateway decides only on a request it
    /// has received, and a run reads nothing between sending its request and this wait.
    pub(crate) async fn decision(
        &mut self,
        call_id: &str,
        timeout: Duration,
    ) -> Result<ToolDecision, Interrupted> {
        let Self {
            inbound,
            outbound,
            stop,
        } = self;
        let expire = async {
            tokio::time::sleep(timeout).await;
            Err(Interrupted::DecisionTimedOut)
        };
        let take = |kind| match kind {
            gateway_message::Kind::ToolDecision(decision) if decision.call_id == call_id => {
                Some(decision)
            }
            _ => None,
        };
        race(inbound, outbound, stop, expire, take).await
    }

    /// The run's first message: `Ok(Some(start))`, or `Ok(None)` when it is anything else (a
    /// `cancel` included: a run that has not started has nothing to cancel).
    pub(crate) async fn first(&mut self) -> Result<Option<Start>, Interrupted> {
        let Self {
            inbound,
            outbound,
            stop,
        } = self;
        tokio::select! {
            biased;
            message = inbound.next() => match message {
                None => Err(Interrupted::InboundEnded),
                Some(GatewayMessage { kind: Some(gateway_message::Kind::Start(start)) }) => {
                    Ok(Some(start))
                }
                Some(_) => Ok(None),
            },
            () = stop.cancelled() => Err(Interrupted::Stopped),
            () = outbound.closed() => Err(Interrupted::Disconnected),
        }
    }

    /// The outbound channel, for the one last message a run sends after it was stopped.
    pub(crate) fn outbound(&self) -> &Sender<AgentMessage> {
        &self.outbound
    }
}

/// Reads nothing useful from the inbound stream: only a stop matters.
fn ignore<T>(_: gateway_message::Kind) -> Option<T> {
    None
}

/// Awaits `work` while reading `inbound`. A `cancel`, the stream's end, a closed `outbound`
/// or `stop` interrupts; any other message is offered to `take`, which may end the wait with
/// a value. Polled in that order, so a stop already signalled wins over `work`.
async fn race<S, T>(
    inbound: &mut S,
    outbound: &Sender<AgentMessage>,
    stop: &CancellationToken,
    work: impl Future<Output = Result<T, Interrupted>>,
    mut take: impl FnMut(gateway_message::Kind) -> Option<T>,
) -> Result<T, Interrupted>
where
    S: Stream<Item = GatewayMessage> + Unpin,
{
    let mut work = pin!(work);
    loop {
        tokio::select! {
            biased;
            message = inbound.next() => match message.map(|message| message.kind) {
                None => return Err(Interrupted::InboundEnded),
                Some(Some(gateway_message::Kind::Cancel(_))) => return Err(Interrupted::Cancelled),
                Some(Some(kind)) => {
                    if let Some(value) = take(kind) {
                        return Ok(value);
                    }
                }
                // A kind this build does not know (a newer gateway): nothing to act on.
                Some(None) => {}
            },
            () = stop.cancelled() => return Err(Interrupted::Stopped),
            () = outbound.closed() => return Err(Interrupted::Disconnected),
            result = &mut work => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::stream;
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;
    use tollgate_proto::agent::v1::{Cancel, Delta};

    use super::*;

    fn delta() -> agent_message::Kind {
        agent_message::Kind::Delta(Delta { text: "x".into() })
    }

    fn message(kind: gateway_message::Kind) -> GatewayMessage {
        GatewayMessage { kind: Some(kind) }
    }

    fn cancel() -> GatewayMessage {
        message(gateway_message::Kind::Cancel(Cancel::default()))
    }

    fn decision(call_id: &str, allowed: bool) -> GatewayMessage {
        message(gateway_message::Kind::ToolDecision(ToolDecision {
            call_id: call_id.into(),
            allowed,
            ..ToolDecision::default()
        }))
    }

    /// An emitter whose inbound stream stays open until the returned sender is dropped.
    fn open_emitter(
        capacity: usize,
    ) -> (
        Emitter<ReceiverStream<GatewayMessage>>,
        mpsc::Sender<GatewayMessage>,
        mpsc::Receiver<AgentMessage>,
    ) {
        let (gateway, inbound) = mpsc::channel(8);
        let (outbound, agent) = mpsc::channel(capacity);
        let emitter = Emitter::new(
            ReceiverStream::new(inbound),
            outbound,
            CancellationToken::new(),
        );
        (emitter, gateway, agent)
    }

    #[tokio::test]
    async fn sends_while_live() {
        let (mut emitter, _gateway, mut agent) = open_emitter(1);
        assert_eq!(emitter.send(delta()).await, Ok(()));
        assert_eq!(agent.recv().await.and_then(|m| m.kind), Some(delta()));
        assert_eq!(emitter.pause(Duration::ZERO).await, Ok(()));
    }

    #[tokio::test]
    async fn a_cancel_already_received_wins_over_a_send_that_could_go_ahead() {
        let (mut emitter, gateway, mut agent) = open_emitter(8);
        gateway.send(cancel()).await.unwrap();
        assert_eq!(emitter.send(delta()).await, Err(Interrupted::Cancelled));
        drop(emitter);
        assert!(agent.recv().await.is_none(), "nothing was sent");
    }

    #[tokio::test]
    async fn a_cancel_unblocks_a_send_to_a_full_channel() {
        let (mut emitter, gateway, mut agent) = open_emitter(1);
        emitter.send(delta()).await.unwrap();
        let (blocked, ()) = tokio::join!(emitter.send(delta()), async {
            gateway.send(cancel()).await.unwrap();
        });
        assert_eq!(blocked, Err(Interrupted::Cancelled));
        drop(emitter);
        assert!(agent.recv().await.is_some());
        assert!(
            agent.recv().await.is_none(),
            "the blocked message was never sent"
        );
    }

    #[tokio::test]
    async fn a_cancel_cuts_a_pause_short() {
        let (mut emitter, gateway, _agent) = open_emitter(1);
        let paused = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(emitter.pause(Duration::from_secs(3600)), async {
                gateway.send(cancel()).await.unwrap();
            })
        });
        let (result, ()) = paused.await.expect("returns without waiting out the pause");
        assert_eq!(result, Err(Interrupted::Cancelled));
    }

    #[tokio::test]
    async fn the_stop_signal_interrupts_a_pause() {
        let (mut emitter, _gateway, _agent) = open_emitter(1);
        emitter.stop.cancel();
        let result = emitter.pause(Duration::from_secs(3600)).await;
        assert_eq!(result, Err(Interrupted::Stopped));
    }

    #[tokio::test]
    async fn a_decision_is_picked_out_of_noise() {
        let (mut emitter, gateway, _agent) = open_emitter(1);
        for noise in [
            decision("1", false),
            decision("", true),
            decision("22", true),
            GatewayMessage { kind: None },
            message(gateway_message::Kind::Start(Default::default())),
            decision("2", true),
            decision("2", false),
        ] {
            gateway.send(noise).await.unwrap();
        }
        let got = emitter.decision("2", Duration::from_secs(10)).await;
        assert_eq!(got.map(|d| d.allowed), Ok(true), "the first decision for 2");
    }

    #[tokio::test(start_paused = true)]
    async fn a_decision_that_never_comes_times_out() {
        let (mut emitter, _gateway, _agent) = open_emitter(1);
        let got = emitter.decision("1", Duration::from_secs(30)).await;
        assert_eq!(got, Err(Interrupted::DecisionTimedOut));
    }

    #[tokio::test]
    async fn the_end_of_the_inbound_stream_interrupts() {
        let (outbound, _agent) = mpsc::channel(1);
        let mut emitter = Emitter::new(stream::empty(), outbound, CancellationToken::new());
        let got = emitter.decision("1", Duration::from_secs(3600)).await;
        assert_eq!(got, Err(Interrupted::InboundEnded));
    }

    #[tokio::test]
    async fn a_closed_outbound_channel_is_a_disconnect() {
        let (mut emitter, _gateway, agent) = open_emitter(1);
        drop(agent);
        assert_eq!(emitter.send(delta()).await, Err(Interrupted::Disconnected));
        let got = emitter.decision("1", Duration::from_secs(3600)).await;
        assert_eq!(
            got,
            Err(Interrupted::Disconnected),
            "noticed while waiting too"
        );
    }
}
