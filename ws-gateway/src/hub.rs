//! Who is connected to this node: user → that user's connections.
//!
//! Delivery never waits on a connection: a message is offered to each of the user's send
//! queues with `try_send`, and a full queue closes that connection as a slow consumer (4010)
//! instead of growing memory or holding up the others. The map's lock is a plain mutex held
//! only to copy a user's handles, never across an `.await`.
//!
//! Published events pass each connection's [`EventGate`], which holds them while the
//! connection is catching up from the history (`since`) and keeps replayed and live events
//! apart.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::watch;
use uuid::Uuid;

use crate::{
    error::CloseCode,
    event_gate::{EventGate, Passed},
    metrics::GatewayMetrics,
    protocol::Outbound,
    queue::{Refused, SendQueue},
};

/// How the rest of the gateway reaches one connection.
#[derive(Debug)]
pub struct ConnectionHandle {
    pub connection_id: Arc<str>,
    queue: SendQueue,
    close: watch::Sender<Option<CloseCode>>,
    /// Published events, held until the connection has caught up.
    events: EventGate,
}

/// The receiving end a connection's writer keeps.
#[derive(Debug)]
pub struct Mailbox {
    pub(crate) handle: Arc<ConnectionHandle>,
    /// Set once, by whoever closes the connection first; the writer sends that close frame
    /// ahead of anything still queued.
    pub close: watch::Receiver<Option<CloseCode>>,
}

impl Mailbox {
    /// The next queued message, waiting for one.
    pub async fn next(&self) -> Outbound {
        self.handle.next_queued().await
    }

    /// The next queued message, if any.
    pub fn try_next(&self) -> Option<Outbound> {
        self.handle.queue.try_pop()
    }
}

impl ConnectionHandle {
    pub fn new(connection_id: Arc<str>, queue: usize) -> (Arc<Self>, Mailbox) {
        let (close_tx, close) = watch::channel(None);
        let handle = Arc::new(Self {
            connection_id,
            queue: SendQueue::new(queue),
            close: close_tx,
            events: EventGate::holding(queue),
        });
        let mailbox = Mailbox {
            handle: Arc::clone(&handle),
            close,
        };
        (handle, mailbox)
    }

    /// Queues a message; a full queue closes the connection as a slow consumer. Returns
    /// whether the message was queued.
    pub fn offer(&self, message: Outbound, metrics: &GatewayMetrics) -> bool {
        match self.queue.push(message) {
            Ok(()) => true,
            Err(Refused::Full) => {
                metrics.send_queue_drops.inc();
                self.close_now(CloseCode::SlowConsumer);
                false
            }
            Err(Refused::Closed) => false,
        }
    }

    /// Offers the user's published event `seq` (`None`: unnumbered) through the connection's
    /// gate; a gate that overflows closes the connection as a slow consumer. Returns whether
    /// it was queued.
    pub fn offer_event(
        &self,
        seq: Option<u64>,
        frame: &Utf8Bytes,
        metrics: &GatewayMetrics,
    ) -> bool {
        let passed = self.events.live(seq, frame, |frame| {
            self.offer(Outbound::Text(frame), metrics)
        });
        match passed {
            Passed::Sent(queued) => queued,
            Passed::Held | Passed::Duplicate => false,
            Passed::Overflow => {
                metrics.send_queue_drops.inc();
                self.close_now(CloseCode::SlowConsumer);
                false
            }
        }
    }

    /// Lets published events through: `first` (the `events_resumed` frame), the `replayed`
    /// events after `through`, then whatever was held (see [`EventGate::open`]).
    pub fn open_events(
        &self,
        first: Option<Utf8Bytes>,
        through: u64,
        replayed: Vec<(u64, Utf8Bytes)>,
        metrics: &GatewayMetrics,
    ) {
        self.events.open(first, through, replayed, |frame| {
            self.offer(Outbound::Text(frame), metrics)
        });
    }

    /// Queues a run's message, waiting while the queue is full (a run slows down with its
    /// reader instead of closing the connection) and merging a delta into the run's delta at
    /// the tail. Returns false once the connection is over.
    pub async fn offer_run(&self, message: Outbound) -> bool {
        self.queue.push_run(message).await.is_ok()
    }

    /// Closes after whatever is already queued (falling back to [`Self::close_now`] when the
    /// queue is full).
    pub fn close_after_queue(&self, code: CloseCode) {
        if self.queue.push(Outbound::Close(code)).is_err() {
            self.close_now(code);
        }
    }

    /// Closes ahead of the queue. The first close wins.
    pub fn close_now(&self, code: CloseCode) {
        self.close.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(code);
                true
            } else {
                false
            }
        });
    }

    pub fn is_closing(&self) -> bool {
        self.close.borrow().is_some()
    }

    /// The close signalled so far, if any.
    pub fn close_code(&self) -> Option<CloseCode> {
        *self.close.borrow()
    }

    /// The next queued message, waiting for one (for the writer).
    pub(crate) async fn next_queued(&self) -> Outbound {
        self.queue.pop().await
    }

    /// Refuses every later message: the connection is over.
    pub fn shut(&self) {
        self.queue.close();
    }

    /// Another receiver of the close signal, for the connection's own loop.
    pub fn closing(&self) -> watch::Receiver<Option<CloseCode>> {
        self.close.subscribe()
    }
}

#[derive(Debug)]
struct Entry {
    session_id: Uuid,
    handle: Arc<ConnectionHandle>,
}

#[derive(Debug)]
pub struct Hub {
    users: Mutex<HashMap<Uuid, Vec<Entry>>>,
    metrics: GatewayMetrics,
}

/// A connection's place in the hub; dropping it removes the connection.
#[derive(Debug)]
pub struct Registration {
    hub: Arc<Hub>,
    user: Uuid,
    connection_id: Arc<str>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut users = self.hub.lock();
        if let Some(handles) = users.get_mut(&self.user) {
            handles.retain(|entry| entry.handle.connection_id != self.connection_id);
            if handles.is_empty() {
                users.remove(&self.user);
            }
        }
    }
}

impl Hub {
    pub fn new(metrics: GatewayMetrics) -> Arc<Self> {
        Arc::new(Self {
            users: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Vec<Entry>>> {
        self.users
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    pub fn register(
        self: &Arc<Self>,
        user: Uuid,
        session_id: Uuid,
        handle: Arc<ConnectionHandle>,
    ) -> Registration {
        let connection_id = handle.connection_id.clone();
        self.lock()
            .entry(user)
            .or_default()
            .push(Entry { session_id, handle });
        Registration {
            hub: Arc::clone(self),
            user,
            connection_id,
        }
    }

    fn handles(&self, user: Uuid, session: Option<Uuid>) -> Vec<Arc<ConnectionHandle>> {
        self.lock().get(&user).map_or_else(Vec::new, |entries| {
            entries
                .iter()
                .filter(|entry| session.is_none_or(|session| entry.session_id == session))
                .map(|entry| Arc::clone(&entry.handle))
                .collect()
        })
    }

    /// Offers the user's published event `seq` (`None`: unnumbered) to every connection of
    /// `user` on this node; returns how many queued it.
    pub fn deliver_event(&self, user: Uuid, seq: Option<u64>, frame: &Utf8Bytes) -> usize {
        let mut delivered = 0;
        for handle in self.handles(user, None) {
            if !handle.is_closing() && handle.offer_event(seq, frame, &self.metrics) {
                delivered += 1;
            }
        }
        self.metrics.events_delivered.inc_by(delivered as u64);
        delivered
    }

    /// Closes every connection of one session, ahead of their queues; returns how many.
    pub fn close_session(&self, user: Uuid, session: Uuid, code: CloseCode) -> usize {
        let handles = self.handles(user, Some(session));
        for handle in &handles {
            handle.close_now(code);
        }
        handles.len()
    }

    /// The user's connections on this node.
    pub fn connections_of(&self, user: Uuid) -> usize {
        self.lock().get(&user).map_or(0, Vec::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect(hub: &Arc<Hub>, user: Uuid, session: Uuid, queue: usize) -> (Registration, Mailbox) {
        let (handle, mailbox) = ConnectionHandle::new(Uuid::new_v4().to_string().into(), queue);
        handle.open_events(None, 0, Vec::new(), &GatewayMetrics::default());
        (hub.register(user, session, handle), mailbox)
    }

    #[test]
    fn delivery_reaches_every_connection_of_the_user_and_no_other() {
        let hub = Hub::new(GatewayMetrics::default());
        let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
        let (_a1, box_a1) = connect(&hub, alice, Uuid::new_v4(), 4);
        let (_a2, box_a2) = connect(&hub, alice, Uuid::new_v4(), 4);
        let (_b, box_b) = connect(&hub, bob, Uuid::new_v4(), 4);
        assert_eq!(
            hub.deliver_event(alice, Some(1), &Utf8Bytes::from_static("hi")),
            2
        );
        assert!(box_a1.try_next().is_some());
        assert!(box_a2.try_next().is_some());
        assert!(box_b.try_next().is_none());
    }

    #[test]
    fn a_full_queue_closes_that_connection_only() {
        let hub = Hub::new(GatewayMetrics::default());
        let user = Uuid::new_v4();
        let (_slow, slow) = connect(&hub, user, Uuid::new_v4(), 1);
        let (_fast, fast) = connect(&hub, user, Uuid::new_v4(), 8);
        for seq in 1..=3 {
            hub.deliver_event(user, Some(seq), &Utf8Bytes::from_static("x"));
            let _ = fast.try_next();
        }
        assert_eq!(*slow.close.borrow(), Some(CloseCode::SlowConsumer));
        assert_eq!(*fast.close.borrow(), None);
    }

    #[test]
    fn sessions_close_selectively_and_registrations_unregister() {
        let hub = Hub::new(GatewayMetrics::default());
        let (user, revoked, kept) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let (first, first_box) = connect(&hub, user, revoked, 4);
        let (_second, second_box) = connect(&hub, user, kept, 4);
        assert_eq!(
            hub.close_session(user, revoked, CloseCode::SessionRevoked),
            1
        );
        assert_eq!(*first_box.close.borrow(), Some(CloseCode::SessionRevoked));
        assert_eq!(*second_box.close.borrow(), None);
        drop(first);
        assert_eq!(hub.connections_of(user), 1);
    }
}
