//! A connection's send queue: bounded, single consumer (the writer), and free while idle.
//!
//! Why not `tokio::sync::mpsc`: its channel allocates a block of 32 slots up front, more than a
//! kilobyte per connection that is almost always empty. This queue allocates on the first
//! message and gives its buffer back whenever it drains, so an idle connection costs only the
//! struct. The lock is a plain mutex held for a push or a pop, never across an `.await`.

use std::{collections::VecDeque, sync::Mutex};

use tokio::sync::Notify;

use crate::protocol::Outbound;

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
    capacity: usize,
}

impl SendQueue {
    pub fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            ready: Notify::new(),
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

    /// The next message, waiting for one.
    pub async fn pop(&self) -> Outbound {
        loop {
            {
                let mut state = self.lock();
                if let Some(item) = state.items.pop_front() {
                    if state.items.is_empty() && state.items.capacity() > 4 {
                        state.items = VecDeque::new();
                    }
                    return item;
                }
            }
            self.ready.notified().await;
        }
    }

    /// The next message, if one is queued.
    pub fn try_pop(&self) -> Option<Outbound> {
        self.lock().items.pop_front()
    }

    /// Refuses every later message; what is queued is still delivered.
    pub fn close(&self) {
        self.lock().closed = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::CloseCode;

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
