//! Message budgets: this node's share of a user's message rate, reserved at usage-service a
//! few messages at a time and spent here, so that a message waits for no call.
//!
//! Why: a chat product meters every message. Asking usage-service for each one puts a round
//! trip (and a remembered idempotency key) behind every frame, while a rate-only meter needs
//! neither: its count is all there is of it, and it can be counted ahead and given back.
//!
//! How it stays exact within a bound:
//! - Only a rate-only meter is reserved; usage-service says which meters are in every answer
//!   (`rate_only`). A user's first message, and every message of a billable meter, is counted
//!   on its own, as is every message of a plan whose rate is under `2 × BUDGET_SHARE`.
//! - A reservation is `B = min(GATEWAY_MESSAGE_BUDGET, rate / BUDGET_SHARE)` messages, counted
//!   by the same limiter as everything else. When the limiter cannot grant `B`, messages go
//!   one by one again until it could (its `retry_after`), so the last messages of a minute are
//!   judged exactly.
//! - What a budget did not spend goes back (`Refund` with `keep`) once it has been idle for
//!   [`IDLE`], is [`MAX_AGE`] old, or the node stops.
//!
//! So a node holds at most `B` unspent messages of a user at any moment, and over N nodes a user
//! gets at most `N × B` messages beyond what the limiter grants in any window (k = N × B),
//! spent at most [`MAX_AGE`] (and one sweep, [`SWEEP`]) after the limiter counted them.
//!
//! A reservation is made on a task of this module's, not of the connection that needed it: a
//! connection that goes away mid-call leaves a budget to give back, not units counted and lost.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use uuid::Uuid;

use crate::{
    consumes::Consumes,
    usage::{Consume, Consumed, Unavailable, UsageClient, Verdict},
};

/// The meter budgets are kept for.
pub const MESSAGES: &str = "messages";
/// A budget is at most this share of the plan's rate (1/16: 18 of pro's 300 a minute).
pub const BUDGET_SHARE: u64 = 16;
/// A budget unused this long is given back.
pub const IDLE: Duration = Duration::from_secs(1);
/// A budget this old is given back, used or not: it bounds how late a counted unit is spent.
pub const MAX_AGE: Duration = Duration::from_secs(5);
/// How often budgets are looked over.
pub const SWEEP: Duration = Duration::from_millis(250);

/// What a message gets from the budgets.
#[derive(Debug)]
pub enum Take {
    /// Spent from this node's budget: allowed, nothing to ask.
    Spent,
    /// Count it on its own (no budget for this user or meter, or the limiter is short).
    Alone,
    /// Another message of the user is reserving; try again once this fires.
    Wait(CancellationToken),
    /// Reserve `size` (see [`Budgets::reserve`]), fire `done` when answered, then try again.
    Reserve { size: u64, done: CancellationToken },
}

/// The node's message budgets, shared by its connections.
#[derive(Debug)]
pub struct Budgets {
    book: Book,
    consumes: Consumes,
    usage: UsageClient,
    reservations: TaskTracker,
}

/// What the budgets hold, and the rules they are kept by (no I/O).
#[derive(Debug)]
pub struct Book {
    max: u64,
    node: Uuid,
    next_key: AtomicU64,
    users: Mutex<HashMap<Uuid, Slot>>,
}

/// One user's budget on this node, and what is known of their plan.
#[derive(Debug)]
struct Slot {
    /// Messages per reservation (from the plan's rate); 1 or less: count one by one.
    size: u64,
    budget: Option<Budget>,
    /// Set while a reservation is under way; fired when it ends.
    reserving: Option<CancellationToken>,
    /// Until then, messages go one by one (the limiter had no room for a budget).
    alone_until: Option<Instant>,
    last_used: Instant,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Budget {
    key: String,
    reserved: u64,
    spent: u64,
    taken_at: Instant,
}

impl Budget {
    /// What is left of it to give back, if anything.
    fn leftover(self, user: Uuid) -> Option<Leftover> {
        (self.spent < self.reserved).then_some(Leftover {
            user,
            key: self.key,
            reserved: self.reserved,
            spent: self.spent,
        })
    }
}

/// A budget to give back: `reserved` counted under `key`, `spent` of them used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leftover {
    pub user: Uuid,
    pub key: String,
    pub reserved: u64,
    pub spent: u64,
}

impl Budgets {
    /// Budgets of at most `max` messages (0 or 1: none, every message counted on its own),
    /// reserved through `consumes` and given back through `usage`.
    pub fn new(max: u64, consumes: Consumes, usage: UsageClient) -> Self {
        Self {
            book: Book::new(max),
            consumes,
            usage,
            reservations: TaskTracker::new(),
        }
    }

    /// Takes one message of `user` from this node's budget, if it can.
    pub fn take(&self, user: Uuid, now: Instant) -> Take {
        self.book.take(user, now)
    }

    /// See [`Book::learn`].
    pub fn learn(&self, user: Uuid, consumed: &Consumed, now: Instant) {
        self.book.learn(user, consumed, now);
    }

    /// Reserves `size` messages of `user` on a task of the budgets' (see the module docs) and
    /// waits for it; whatever the answer, and even if the task is lost, `done` fires so that
    /// waiting messages try again.
    pub async fn reserve(self: &Arc<Self>, user: Uuid, size: u64, done: CancellationToken) {
        let key = self.book.next_key();
        let budgets = Arc::clone(self);
        let reservation = self.reservations.spawn(async move {
            let _done = done.drop_guard();
            let consume = Consume {
                user,
                meter: MESSAGES.to_owned(),
                amount: size,
                key: key.clone(),
            };
            let answer = budgets.consumes.consume(consume).await;
            let now = Instant::now();
            if let Some(unusable) = budgets.book.reserved(user, key, size, answer, now) {
                give_back(&budgets.usage, vec![unusable]).await;
            }
        });
        let _ = reservation.await;
    }

    /// Gives back what budgets did not spend, every [`SWEEP`], until `stop`; then waits for
    /// the reservations under way and gives back every budget left.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut sweep = tokio::time::interval(SWEEP);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = sweep.tick() => {
                    give_back(&self.usage, self.book.leftovers(Instant::now(), false)).await;
                }
                () = stop.cancelled() => break,
            }
        }
        self.reservations.close();
        self.reservations.wait().await;
        give_back(&self.usage, self.book.leftovers(Instant::now(), true)).await;
    }
}

impl Book {
    pub fn new(max: u64) -> Self {
        Self {
            max,
            node: Uuid::new_v4(),
            next_key: AtomicU64::new(0),
            users: Mutex::new(HashMap::new()),
        }
    }

    /// A key no reservation of this node has used.
    fn next_key(&self) -> String {
        let n = self.next_key.fetch_add(1, Ordering::Relaxed);
        format!("budget:{}:{n}", self.node.simple())
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Uuid, Slot>> {
        self.users
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Takes one message of `user` from this node's budget, if it can.
    pub fn take(&self, user: Uuid, now: Instant) -> Take {
        if self.max <= 1 {
            return Take::Alone;
        }
        let mut users = self.lock();
        let Some(slot) = users.get_mut(&user) else {
            return Take::Alone;
        };
        slot.last_used = now;
        if let Some(budget) = &mut slot.budget
            && budget.spent < budget.reserved
        {
            budget.spent += 1;
            return Take::Spent;
        }
        // A reservation that fired without an answer (its task was lost) is none.
        if let Some(reserving) = &slot.reserving
            && !reserving.is_cancelled()
        {
            return Take::Wait(reserving.clone());
        }
        if slot.size <= 1 || slot.alone_until.is_some_and(|until| now < until) {
            return Take::Alone;
        }
        let done = CancellationToken::new();
        slot.reserving = Some(done.clone());
        Take::Reserve {
            size: slot.size,
            done,
        }
    }

    /// Learns from a message counted on its own whether `user`'s messages can be reserved,
    /// and how many at a time.
    pub fn learn(&self, user: Uuid, consumed: &Consumed, now: Instant) {
        if self.max <= 1 {
            return;
        }
        let size = self.size_for(consumed);
        let mut users = self.lock();
        let slot = users.entry(user).or_insert_with(|| Slot {
            size,
            budget: None,
            reserving: None,
            alone_until: None,
            last_used: now,
        });
        slot.size = size;
        slot.last_used = now;
        if let Verdict::Denied { retry_after, .. } = &consumed.verdict {
            slot.alone_until = Some(now + *retry_after);
        }
    }

    /// How many of a user's messages to reserve at once, by what usage-service last said of
    /// the meter and the plan (which may have changed since the last reservation).
    fn size_for(&self, consumed: &Consumed) -> u64 {
        if consumed.rate_only {
            (consumed.limit / BUDGET_SHARE).min(self.max)
        } else {
            0
        }
    }

    /// Installs a reservation's answer and wakes the messages waiting for it. Returns a
    /// reservation that cannot be used, to give back whole: one of a meter that turned out
    /// billable (whose units are never reserved), or one whose user was forgotten meanwhile.
    pub fn reserved(
        &self,
        user: Uuid,
        key: String,
        size: u64,
        answer: Result<Consumed, Unavailable>,
        now: Instant,
    ) -> Option<Leftover> {
        let unusable = |consumed: &Consumed| {
            (consumed.verdict == Verdict::Allowed && !consumed.replayed).then(|| Leftover {
                user,
                key: key.clone(),
                reserved: size,
                spent: 0,
            })
        };
        let mut users = self.lock();
        let Some(slot) = users.get_mut(&user) else {
            return answer.ok().as_ref().and_then(unusable);
        };
        if let Some(reserving) = slot.reserving.take() {
            reserving.cancel();
        }
        if let Ok(consumed) = &answer {
            slot.size = self.size_for(consumed);
        }
        match answer {
            Ok(Consumed {
                verdict: Verdict::Allowed,
                replayed: false,
                rate_only: true,
                ..
            }) => {
                slot.budget = Some(Budget {
                    key,
                    reserved: size,
                    spent: 0,
                    taken_at: now,
                });
                None
            }
            Ok(consumed) if !consumed.rate_only => {
                tracing::warn!("messages are billable now: they are counted one by one");
                unusable(&consumed)
            }
            Ok(Consumed {
                verdict: Verdict::Denied { retry_after, .. },
                ..
            }) => {
                slot.alone_until = Some(now + retry_after);
                None
            }
            // A replay (of a key this node never reuses) or no answer: one by one for a while.
            Ok(_) | Err(_) => {
                slot.alone_until = Some(now + IDLE);
                None
            }
        }
    }

    /// Takes out the budgets to give back at `now` (idle, too old, or all of them), and
    /// forgets users idle for longer than a budget lives.
    pub fn leftovers(&self, now: Instant, all: bool) -> Vec<Leftover> {
        let mut leftovers = Vec::new();
        self.lock().retain(|user, slot| {
            let idle = now.duration_since(slot.last_used);
            let due = |budget: &mut Budget| {
                all || idle >= IDLE || now.duration_since(budget.taken_at) >= MAX_AGE
            };
            if let Some(budget) = slot.budget.take_if(due) {
                leftovers.extend(budget.leftover(*user));
            }
            slot.reserving.is_some() || slot.budget.is_some() || idle < MAX_AGE
        });
        leftovers
    }
}

/// Refunds each leftover's unspent units. Best effort: one usage-service cannot take stays
/// counted until the rate refills.
async fn give_back(usage: &UsageClient, leftovers: Vec<Leftover>) {
    let refunds = leftovers.into_iter().map(|leftover| async move {
        let Leftover {
            user,
            key,
            reserved,
            spent,
        } = leftover;
        if usage
            .refund(user, MESSAGES, (reserved, spent), key)
            .await
            .is_err()
        {
            tracing::debug!("unspent messages could not be given back; they stay counted");
        }
    });
    futures::future::join_all(refunds).await;
}

#[cfg(test)]
mod tests;
