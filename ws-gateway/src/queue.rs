//! A connection's send queue: bounded, single consumer (the writer), and free while idle.
//!
//! Why not `tokio::sync::mpsc`: its channel allocates a block of 32 slots up front, more than a
//! kilobyte per connection that is almost always empty. This queue allocates on the first
//! message and gives its buffer back whenever it drains, so an idle connection costs only the
//! struct. The lock is a plain mutex held for a push or a pop, never across an `.await`.
//!
//! Agent runs push with [`SendQueue::push_run`], which waits for room instead of failing, and
//! merges a run's delta into the run's delta already waiting at the tail: a slow reader of a
//! token stream gets fewer, larger frames and loses no text.

use std::{collections::VecDeque, sync::Mutex};

use tokio::sync::Notify;

use crate::protocol::Outbound;

/// The largest text one merged delta frame carries, in bytes.
pub const MAX_MERGED_DELTA_BYTES: usize = 32 * 1024;

/// Why a message was not queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The queue holds its capacity: the consumer is too slow.
    Full,
    /// The connection is over.
    Closed,
}

#[derive(Debug, Default)]
struct State {
    items: VecDeque<Outbound>,
    closed: bool,
}

#[derive(Debug)]
pub struct SendQueue {
    state: Mutex<State>,
    ready: Notify,
    /// Signalled when a full queue gets room, or closes (for [`SendQueue::push_run`]).
    room: Notify,
    capacity: usize,
}

impl SendQueue {
    pub fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            ready: Notify::new(),
            room: Notify::new(),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    pub fn push(&self, item: Outbound) -> Result<(), Refused> {
        {
            let mut state = self.lock();
            if state.closed {
                return Err(Refused::Closed);
            }
            if state.items.len() >= self.capacity {
                return Err(Refused::Full);
            }
            state.items.push_back(item);
        }
        // One consumer: a permit stored while it is not waiting wakes its next wait.
        self.ready.notify_one();
        Ok(())
    }

    /// Queues a run's message, merging a delta into the same run's delta at the tail of the
    /// queue, and waiting for room while the queue is full. `Err` once the queue is closed.
    pub async fn push_run(&self, mut item: Outbound) -> Result<(), Refused> {
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.try_push_run(item) {
                Ok(()) => return Ok(()),
                Err((Refused::Closed, _)) => return Err(Refused::Closed),
                Err((Refused::Full, back)) => item = back,
            }
            room.await;
        }
    }

    fn try_push_run(&self, item: Outbound) -> Result<(), (Refused, Outbound)> {
        {
            let mut state = self.lock();
            if state.closed {
                return Err((Refused::Closed, item));
            }
            let item = match (state.items.back_mut(), item) {
                (Some(Outbound::Delta(tail)), Outbound::Delta(delta))
                    if tail.run_id == delta.run_id
                        && tail.text.len() + delta.text.len() <= MAX_MERGED_DELTA_BYTES =>
                {
                    tail.text.push_str(&delta.text);
                    tail.seq = delta.seq;
                    return Ok(());
                }
                (_, item) => item,
            };
            if state.items.len() >= self.capacity {
                return Err((Refused::Full, item));
            }
            state.items.push_back(item);
        }
        self.ready.notify_one();
        Ok(())
    }

    /// The next message, waiting for one.
    pub async fn pop(&self) -> Outbound {
        loop {
            if let Some(item) = self.try_pop() {
                return item;
            }
            self.ready.notified().await;
        }
    }

    /// The next message, if one is queued.
    pub fn try_pop(&self) -> Option<Outbound> {
        let item = {
            let mut state = self.lock();
            let item = state.items.pop_front()?;
            if state.items.is_empty() && state.items.capacity() > 4 {
                state.items = VecDeque::new();
            }
            item
        };
        self.room.notify_waiters();
        Some(item)
    }

    /// Refuses every later message; what is queued is still delivered.
    pub fn close(&self) {
        self.lock().closed = true;
        self.room.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{agent::RunId, error::CloseCode, protocol::DeltaFrame};

    fn delta(run_id: RunId, text: &str) -> Outbound {
        Outbound::Delta(DeltaFrame {
            run_id,
            id: None,
            text: text.into(),
            seq: 0,
        })
    }

    #[tokio::test]
    async fn a_slow_reader_gets_a_run_s_deltas_merged_and_loses_no_text() {
        let queue = SendQueue::new(2);
        let (run, other) = (RunId::new(), RunId::new());
        let mut sent = String::new();
        for i in 0..1000 {
            let text = format!("token{i} ");
            sent.push_str(&text);
            queue.push_run(delta(run, &text)).await.unwrap();
        }
        queue.push_run(delta(other, "b")).await.unwrap();
        let Outbound::Delta(merged) = queue.pop().await else {
            panic!("a delta")
        };
        assert_eq!(merged.run_id, run);
        assert_eq!(merged.text, sent, "every fragment, in order, in one frame");
        assert_eq!(
            queue.pop().await,
            delta(other, "b"),
            "other runs are not merged in"
        );
    }

    #[tokio::test]
    async fn a_merged_delta_is_capped_and_then_waits_for_room() {
        let queue = std::sync::Arc::new(SendQueue::new(1));
        let run = RunId::new();
        let chunk = "x".repeat(MAX_MERGED_DELTA_BYTES / 2);
        queue.push_run(delta(run, &chunk)).await.unwrap();
        queue.push_run(delta(run, &chunk)).await.unwrap();
        let waiting = tokio::spawn({
            let (queue, chunk) = (queue.clone(), chunk.clone());
            async move { queue.push_run(delta(run, &chunk)).await }
        });
        tokio::task::yield_now().await;
        assert!(
            !waiting.is_finished(),
            "the frame is full and so is the queue"
        );
        let Outbound::Delta(first) = queue.pop().await else {
            panic!("a delta")
        };
        assert_eq!(first.text.len(), MAX_MERGED_DELTA_BYTES);
        waiting.await.unwrap().unwrap();
        assert_eq!(queue.pop().await, delta(run, &chunk));
    }

    #[tokio::test]
    async fn closing_releases_a_waiting_run() {
        let queue = std::sync::Arc::new(SendQueue::new(1));
        queue.push(Outbound::Ping).unwrap();
        let waiting = tokio::spawn({
            let queue = queue.clone();
            async move { queue.push_run(Outbound::Ping).await }
        });
        tokio::task::yield_now().await;
        queue.close();
        assert_eq!(waiting.await.unwrap(), Err(Refused::Closed));
    }

    #[tokio::test]
    async fn bounded_in_order_and_closable() {
        let queue = SendQueue::new(2);
        queue.push(Outbound::Ping).unwrap();
        queue.push(Outbound::Close(CloseCode::Normal)).unwrap();
        assert_eq!(queue.push(Outbound::Ping), Err(Refused::Full));
        assert_eq!(queue.pop().await, Outbound::Ping);
        assert_eq!(queue.pop().await, Outbound::Close(CloseCode::Normal));
        queue.push(Outbound::Ping).unwrap();
        queue.close();
        assert_eq!(queue.push(Outbound::Ping), Err(Refused::Closed));
        assert_eq!(
            queue.try_pop(),
            Some(Outbound::Ping),
            "queued before closing"
        );
    }

    #[tokio::test]
    async fn a_waiting_consumer_is_woken() {
        let queue = std::sync::Arc::new(SendQueue::new(4));
        let consumer = tokio::spawn({
            let queue = queue.clone();
            async move { queue.pop().await }
        });
        tokio::task::yield_now().await;
        queue.push(Outbound::Ping).unwrap();
        assert_eq!(consumer.await.unwrap(), Outbound::Ping);
    }
}
