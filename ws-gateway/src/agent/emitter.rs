//! [`Emitter`]: a run's output channel and cancellation token, together.
//!
//! Why one type: the executor's promise ("stop promptly once cancelled, send nothing after
//! that, notice a vanished client") has to hold at every single await of a run. Routing every
//! send, gate call and delay through these few methods makes that one piece of code, tested
//! once, instead of a `select!` repeated at each step.

use std::time::Duration;

use tokio::sync::mpsc::Sender;
use tokio_util::sync::CancellationToken;

use super::{AgentEvent, Step};

/// Why a run stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Interrupted {
    Cancelled,
    /// The steps receiver was dropped.
    Disconnected,
}

/// Sends a run's steps, racing every await against its cancellation.
#[derive(Debug)]
pub(crate) struct Emitter<'a> {
    steps: &'a Sender<Step>,
    cancel: &'a CancellationToken,
}

impl<'a> Emitter<'a> {
    pub(crate) fn new(steps: &'a Sender<Step>, cancel: &'a CancellationToken) -> Self {
        Self { steps, cancel }
    }

    /// `Err(Cancelled)` once the run is cancelled.
    pub(crate) fn check(&self) -> Result<(), Interrupted> {
        if self.cancel.is_cancelled() {
            Err(Interrupted::Cancelled)
        } else {
            Ok(())
        }
    }

    /// Awaits `work` unless the run is cancelled first. Cancellation is polled first, so an
    /// already cancelled run never starts `work` (an async-trait gate does nothing until
    /// polled), and a cancellation that races a ready result wins.
    pub(crate) async fn guard<T>(&self, work: impl Future<Output = T>) -> Result<T, Interrupted> {
        tokio::select! {
            biased;
            () = self.cancel.cancelled() => Err(Interrupted::Cancelled),
            out = work => Ok(out),
        }
    }

    /// Sends one step, waiting for room in the channel (which is how a slow client applies
    /// backpressure to the run) unless cancelled meanwhile.
    pub(crate) async fn emit(&self, step: Step) -> Result<(), Interrupted> {
        self.check()?;
        self.guard(self.steps.send(step))
            .await?
            .map_err(|_closed| Interrupted::Disconnected)
    }

    pub(crate) async fn emit_event(&self, event: AgentEvent) -> Result<(), Interrupted> {
        self.emit(Step::Event(event)).await
    }

    /// Sleeps `delay` unless cancelled meanwhile; a zero delay only checks for cancellation.
    pub(crate) async fn pause(&self, delay: Duration) -> Result<(), Interrupted> {
        if delay.is_zero() {
            return self.check();
        }
        self.guard(tokio::time::sleep(delay)).await
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc;

    use super::*;
    use crate::agent::RunId;

    fn step() -> Step {
        Step::Event(AgentEvent::AgentCompleted {
            run_id: RunId::new(),
            output: "done".into(),
        })
    }

    #[tokio::test]
    async fn sends_while_live() {
        let (tx, mut rx) = mpsc::channel(1);
        let cancel = CancellationToken::new();
        let emitter = Emitter::new(&tx, &cancel);
        let sent = step();
        assert_eq!(emitter.emit(sent.clone()).await, Ok(()));
        assert_eq!(rx.recv().await, Some(sent));
        assert_eq!(emitter.pause(Duration::ZERO).await, Ok(()));
        assert_eq!(emitter.guard(async { 7 }).await, Ok(7));
    }

    #[tokio::test]
    async fn a_cancelled_run_sends_and_starts_nothing() {
        let (tx, mut rx) = mpsc::channel(8);
        let cancel = CancellationToken::new();
        cancel.cancel();
        let emitter = Emitter::new(&tx, &cancel);
        assert_eq!(emitter.emit(step()).await, Err(Interrupted::Cancelled));
        assert_eq!(
            emitter.pause(Duration::ZERO).await,
            Err(Interrupted::Cancelled)
        );
        let ready = async { 7 };
        assert_eq!(emitter.guard(ready).await, Err(Interrupted::Cancelled));
        drop(tx);
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn cancelling_unblocks_a_send_to_a_full_channel() {
        let (tx, mut rx) = mpsc::channel(1);
        let cancel = CancellationToken::new();
        let emitter = Emitter::new(&tx, &cancel);
        emitter.emit(step()).await.unwrap();
        let (blocked, ()) = tokio::join!(emitter.emit(step()), async { cancel.cancel() });
        assert_eq!(blocked, Err(Interrupted::Cancelled));
        drop(tx);
        assert!(rx.recv().await.is_some());
        assert_eq!(rx.recv().await, None, "the blocked step was never sent");
    }

    #[tokio::test]
    async fn cancelling_cuts_a_pause_short() {
        let (tx, _rx) = mpsc::channel(1);
        let cancel = CancellationToken::new();
        let emitter = Emitter::new(&tx, &cancel);
        let paused = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(emitter.pause(Duration::from_secs(3600)), async {
                cancel.cancel()
            })
        });
        let (result, ()) = paused.await.expect("returns without waiting out the pause");
        assert_eq!(result, Err(Interrupted::Cancelled));
    }

    #[tokio::test]
    async fn a_dropped_receiver_is_a_disconnect() {
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let cancel = CancellationToken::new();
        let emitter = Emitter::new(&tx, &cancel);
        assert_eq!(emitter.emit(step()).await, Err(Interrupted::Disconnected));
    }
}
