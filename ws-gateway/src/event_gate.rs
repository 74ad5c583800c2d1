//! The seam between a connection's replayed events and its live ones: no gap, no duplicate,
//! in seq order.
//!
//! A connection joins the hub with its gate *holding*: live events of its user are kept aside
//! (at most a send queue's worth; beyond that the connection is a slow consumer) while the
//! connection sends `connected` and reads the history. [`EventGate::open`] then sends, in one
//! critical section, the optional `events_resumed` frame, the replayed events, and the held
//! live ones that the replay did not already cover (a live event read back from the history is
//! sent once). Until a live event beyond the replay arrives, live events at or below it are
//! dropped; after that every live event passes (the user's events reach a node in seq order,
//! and numbers restart only after the user's counter was forgotten).
//!
//! An event without a number (published while Redis was unreachable, see
//! [`crate::delivery`]) is never taken for a duplicate and moves no watermark.
//!
//! The lock is a plain mutex, held while frames are offered to the send queue (which never
//! waits), never across an `.await`.

use std::sync::Mutex;

use axum::extract::ws::Utf8Bytes;

/// What became of a live event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Passed {
    /// Offered to the connection (`true` if queued).
    Sent(bool),
    /// Kept aside until the gate opens.
    Held,
    /// Already sent by the replay.
    Duplicate,
    /// The gate held as many as it may: the connection cannot keep up.
    Overflow,
}

#[derive(Debug)]
pub struct EventGate {
    state: Mutex<State>,
    hold_max: usize,
}

#[derive(Debug)]
struct State {
    /// `Some` while holding.
    held: Option<Vec<(Option<u64>, Utf8Bytes)>>,
    /// Live events up to here were sent by the replay.
    replayed_through: Option<u64>,
}

impl EventGate {
    /// A holding gate that keeps at most `hold_max` live events aside.
    pub fn holding(hold_max: usize) -> Self {
        Self {
            state: Mutex::new(State {
                held: Some(Vec::new()),
                replayed_through: None,
            }),
            hold_max,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// A live event (`seq` `None`: unnumbered): held, dropped as a duplicate, or handed to
    /// `send`.
    pub fn live(
        &self,
        seq: Option<u64>,
        frame: &Utf8Bytes,
        send: impl FnOnce(Utf8Bytes) -> bool,
    ) -> Passed {
        let mut state = self.lock();
        if let Some(held) = &mut state.held {
            if held.len() >= self.hold_max {
                return Passed::Overflow;
            }
            held.push((seq, frame.clone()));
            return Passed::Held;
        }
        if let Some(seq) = seq {
            if state.replayed_through.is_some_and(|through| seq <= through) {
                return Passed::Duplicate;
            }
            state.replayed_through = None;
        }
        Passed::Sent(send(frame.clone()))
    }

    /// Opens the gate: sends `first`, then `replayed` (in seq order, after `through`), then
    /// the held live events not already sent. `send` returning false (the queue refused)
    /// stops it.
    pub fn open(
        &self,
        first: Option<Utf8Bytes>,
        through: u64,
        replayed: Vec<(u64, Utf8Bytes)>,
        mut send: impl FnMut(Utf8Bytes) -> bool,
    ) {
        let mut state = self.lock();
        let held = state.held.take().unwrap_or_default();
        let mut through = through;
        state.replayed_through = Some(through);
        if let Some(first) = first
            && !send(first)
        {
            return;
        }
        let replayed = replayed.into_iter().map(|(seq, frame)| (Some(seq), frame));
        for (seq, frame) in replayed.chain(held) {
            if let Some(seq) = seq {
                if seq <= through {
                    continue;
                }
                through = seq;
                state.replayed_through = Some(through);
            }
            if !send(frame) {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seq: u64) -> Utf8Bytes {
        seq.to_string().into()
    }

    fn collect(sent: &mut Vec<String>) -> impl FnMut(Utf8Bytes) -> bool + '_ {
        |frame| {
            sent.push(frame.as_str().to_owned());
            true
        }
    }

    #[test]
    fn replay_then_held_then_live_without_gap_or_duplicate() {
        let gate = EventGate::holding(8);
        let mut sent = Vec::new();
        // Live 4 and 5 arrive while the history is read; the history already holds 4.
        assert_eq!(
            gate.live(Some(4), &frame(4), collect(&mut sent)),
            Passed::Held
        );
        assert_eq!(
            gate.live(Some(5), &frame(5), collect(&mut sent)),
            Passed::Held
        );
        gate.open(
            Some("resumed".into()),
            2,
            vec![(3, frame(3)), (4, frame(4))],
            collect(&mut sent),
        );
        assert_eq!(sent, ["resumed", "3", "4", "5"]);
        // A late live copy of a replayed event is dropped; the next one passes.
        assert_eq!(
            gate.live(Some(5), &frame(5), collect(&mut sent)),
            Passed::Duplicate
        );
        assert_eq!(
            gate.live(Some(6), &frame(6), collect(&mut sent)),
            Passed::Sent(true)
        );
        // From then on numbers are not second-guessed (a forgotten counter restarts at 1).
        assert_eq!(
            gate.live(Some(1), &frame(1), collect(&mut sent)),
            Passed::Sent(true)
        );
        assert_eq!(sent, ["resumed", "3", "4", "5", "6", "1"]);
    }

    #[test]
    fn unnumbered_events_always_pass_and_move_no_watermark() {
        let gate = EventGate::holding(8);
        let mut sent = Vec::new();
        gate.live(None, &"local".into(), collect(&mut sent));
        gate.live(Some(3), &frame(3), collect(&mut sent));
        gate.open(None, 2, vec![(3, frame(3))], collect(&mut sent));
        gate.live(None, &"again".into(), collect(&mut sent));
        assert_eq!(
            gate.live(Some(3), &frame(3), collect(&mut sent)),
            Passed::Duplicate
        );
        assert_eq!(sent, ["3", "local", "again"]);
    }

    #[test]
    fn a_gate_holds_a_bounded_number_of_events() {
        let gate = EventGate::holding(2);
        let mut sent = Vec::new();
        gate.live(Some(1), &frame(1), collect(&mut sent));
        gate.live(Some(2), &frame(2), collect(&mut sent));
        assert_eq!(
            gate.live(Some(3), &frame(3), collect(&mut sent)),
            Passed::Overflow
        );
        assert!(sent.is_empty());
    }

    #[test]
    fn without_a_replay_every_held_event_goes_out_in_order() {
        let gate = EventGate::holding(8);
        let mut sent = Vec::new();
        gate.live(Some(7), &frame(7), collect(&mut sent));
        gate.open(None, 0, Vec::new(), collect(&mut sent));
        gate.live(Some(8), &frame(8), collect(&mut sent));
        assert_eq!(sent, ["7", "8"]);
    }
}
