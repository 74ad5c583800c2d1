//! Coalesced calls. Many connections asking usage-service the same kind of question at once
//! (a burst of connects or closes) would cost a gRPC round trip each on both sides; a batcher
//! sends whatever queued up while its previous call was in flight as one call, so a lone
//! request still goes out at once and a burst goes out in a few calls. Each caller waits for
//! its own answer. A call runs in the span of its first request, so a lone request's call stays
//! in its caller's trace.

use std::future::Future;

use futures::{StreamExt, stream::FuturesUnordered};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span};

struct Job<T, R> {
    item: T,
    answer: oneshot::Sender<R>,
    span: Span,
}

/// The callers' side.
pub struct Batcher<T, R> {
    queue: mpsc::Sender<Job<T, R>>,
}

impl<T, R> Clone for Batcher<T, R> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

impl<T, R> std::fmt::Debug for Batcher<T, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").finish_non_exhaustive()
    }
}

/// The sending side, run by [`BatchQueue::run`].
pub struct BatchQueue<T, R> {
    queue: mpsc::Receiver<Job<T, R>>,
    max_batch: usize,
}

impl<T, R> std::fmt::Debug for BatchQueue<T, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchQueue")
            .field("max_batch", &self.max_batch)
            .finish_non_exhaustive()
    }
}

/// A batcher of at most `max_batch` items per call, with room for `capacity` waiting items
/// (callers beyond that wait for room).
pub fn batcher<T, R>(max_batch: usize, capacity: usize) -> (Batcher<T, R>, BatchQueue<T, R>) {
    let (queue, receiver) = mpsc::channel(capacity);
    (
        Batcher { queue },
        BatchQueue {
            queue: receiver,
            max_batch,
        },
    )
}

impl<T, R> Batcher<T, R> {
    /// The answer to `item`; `None` once the queue has stopped.
    pub async fn submit(&self, item: T) -> Option<R> {
        let (answer, answered) = oneshot::channel();
        let span = Span::current();
        self.queue.send(Job { item, answer, span }).await.ok()?;
        answered.await.ok()
    }
}

impl<T, R> BatchQueue<T, R> {
    /// Sends batches through `call` (which answers each item, in order), at most `in_flight`
    /// calls at a time, until `stop` fires; then sends what is still queued and returns. Later
    /// submissions get `None`.
    pub async fn run<F, Fut>(mut self, in_flight: usize, mut call: F, stop: CancellationToken)
    where
        F: FnMut(Vec<T>) -> Fut,
        Fut: Future<Output = Vec<R>>,
    {
        let mut calls = FuturesUnordered::new();
        // One buffer for the whole run: each batch is moved out of it into its call.
        let mut jobs = Vec::new();
        loop {
            tokio::select! {
                received = self.queue.recv_many(&mut jobs, self.max_batch), if calls.len() < in_flight => {
                    if received == 0 {
                        break;
                    }
                    calls.push(dispatch(&mut jobs, &mut call));
                }
                Some(()) = calls.next(), if !calls.is_empty() => {}
                () = stop.cancelled() => {
                    self.queue.close();
                    while self.queue.recv_many(&mut jobs, self.max_batch).await > 0 {
                        calls.push(dispatch(&mut jobs, &mut call));
                    }
                    break;
                }
            }
        }
        while calls.next().await.is_some() {}
    }
}

fn dispatch<T, R, F, Fut>(
    jobs: &mut Vec<Job<T, R>>,
    call: &mut F,
) -> impl Future<Output = ()> + use<T, R, F, Fut>
where
    F: FnMut(Vec<T>) -> Fut,
    Fut: Future<Output = Vec<R>>,
{
    let mut span = None;
    let (items, answers): (Vec<T>, Vec<oneshot::Sender<R>>) = jobs
        .drain(..)
        .map(|job| {
            span.get_or_insert(job.span);
            (job.item, job.answer)
        })
        .unzip();
    let span = span.unwrap_or_else(Span::none);
    let answered = span.in_scope(|| call(items)).instrument(span);
    async move {
        for (answer, result) in answers.into_iter().zip(answered.await) {
            let _ = answer.send(result);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use super::*;

    #[tokio::test]
    async fn a_burst_is_sent_in_few_calls_and_each_caller_gets_its_own_answer() {
        let (batcher, queue) = batcher::<u32, u32>(8, 64);
        let calls = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let counted = Arc::clone(&calls);
        let worker = tokio::spawn(queue.run(
            1,
            move |items: Vec<u32>| {
                counted.fetch_add(1, Ordering::SeqCst);
                async move { items.into_iter().map(|item| item * 10).collect() }
            },
            stop.clone(),
        ));
        let callers: Vec<_> = (0..40)
            .map(|item| {
                let batcher = batcher.clone();
                tokio::spawn(async move { (item, batcher.submit(item).await) })
            })
            .collect();
        for caller in callers {
            let (item, answer) = caller.await.unwrap();
            assert_eq!(answer, Some(item * 10));
        }
        let calls = calls.load(Ordering::SeqCst);
        assert!(
            (5..40).contains(&calls),
            "40 items, at most 8 per call: {calls} calls"
        );
        stop.cancel();
        worker.await.unwrap();
        assert_eq!(
            batcher.submit(1).await,
            None,
            "a stopped queue answers nothing"
        );
    }

    #[tokio::test]
    async fn what_is_queued_when_stopped_is_still_sent() {
        let (batcher, queue) = batcher::<u32, u32>(4, 64);
        let stop = CancellationToken::new();
        stop.cancel();
        let waiting: Vec<_> = (0..10)
            .map(|item| {
                let batcher = batcher.clone();
                tokio::spawn(async move { batcher.submit(item).await })
            })
            .collect();
        while batcher.queue.capacity() > 64 - 10 {
            tokio::task::yield_now().await;
        }
        queue
            .run(2, |items: Vec<u32>| async move { items }, stop)
            .await;
        for (item, waiting) in (0..).zip(waiting) {
            assert_eq!(waiting.await.unwrap(), Some(item));
        }
        assert_eq!(
            batcher.submit(1).await,
            None,
            "a stopped queue answers nothing"
        );
    }
}
