use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

use super::*;
use crate::usage::{Consumed, Denial, Unavailable, Verdict};

fn allowed(limit: u64, rate_only: bool) -> Consumed {
    Consumed {
        verdict: Verdict::Allowed,
        replayed: false,
        rate_only,
        limit,
    }
}

fn denied(retry_after: Duration) -> Consumed {
    Consumed {
        verdict: Verdict::Denied {
            reason: Denial::RateLimited,
            retry_after,
            upgrade_to: None,
        },
        replayed: false,
        rate_only: true,
        limit: 300,
    }
}

/// A book that knows `user` is on a plan of `limit` rate-only messages a minute, and the size
/// of its reservations.
fn learned(max: u64, limit: u64, now: Instant) -> (Book, Uuid, u64) {
    let (book, user) = (Book::new(max), Uuid::new_v4());
    book.learn(user, &allowed(limit, true), now);
    let Take::Reserve { size, .. } = book.take(user, now) else {
        panic!("a rate-only meter is reserved")
    };
    (book, user, size)
}

/// Answers `user`'s reservation at `now`, as the budgets' task does.
fn answer(book: &Book, user: Uuid, size: u64, answer: Result<Consumed, Unavailable>, now: Instant) {
    let key = book.next_key();
    assert_eq!(book.reserved(user, key, size, answer, now), None);
}

#[test]
fn a_user_s_first_message_and_a_billable_meter_s_are_counted_alone() {
    let (book, user, now) = (Book::new(64), Uuid::new_v4(), Instant::now());
    assert!(
        matches!(book.take(user, now), Take::Alone),
        "nothing known yet"
    );
    book.learn(user, &allowed(3000, false), now);
    assert!(matches!(book.take(user, now), Take::Alone), "billable");
    // A plan under 32 a minute would reserve one at a time: no better than alone.
    book.learn(user, &allowed(30, true), now);
    assert!(matches!(book.take(user, now), Take::Alone));
    // Nor does a node whose budgets are off.
    let off = Book::new(1);
    off.learn(user, &allowed(3000, true), now);
    assert!(matches!(off.take(user, now), Take::Alone));
}

#[test]
fn a_reservation_is_a_sixteenth_of_the_rate_at_most_the_node_s_maximum() {
    let now = Instant::now();
    assert_eq!(learned(64, 300, now).2, 18);
    assert_eq!(learned(64, 3000, now).2, 64);
    assert_eq!(learned(10, 3000, now).2, 10);
}

#[test]
fn a_budget_spends_exactly_what_was_reserved_then_reserves_again() {
    let now = Instant::now();
    let (book, user, size) = learned(64, 300, now);
    // Meanwhile another message of the user waits for the reservation, and no second one
    // is made.
    let Take::Wait(reserved) = book.take(user, now) else {
        panic!("one reservation at a time")
    };
    answer(&book, user, size, Ok(allowed(300, true)), now);
    assert!(reserved.is_cancelled(), "waiting messages are woken");
    for _ in 0..size {
        assert!(matches!(book.take(user, now), Take::Spent));
    }
    assert!(matches!(
        book.take(user, now),
        Take::Reserve { size: 18, .. }
    ));
}

#[test]
fn a_reservation_the_limiter_refuses_sends_messages_alone_until_it_could_grant_one() {
    let now = Instant::now();
    let (book, user, size) = learned(64, 300, now);
    answer(&book, user, size, Ok(denied(Duration::from_secs(2))), now);
    assert!(matches!(book.take(user, now), Take::Alone));
    assert!(matches!(
        book.take(user, now + Duration::from_millis(1999)),
        Take::Alone
    ));
    assert!(matches!(
        book.take(user, now + Duration::from_secs(2)),
        Take::Reserve { .. }
    ));
    // A message alone that is refused puts reservations off the same way.
    answer(
        &book,
        user,
        size,
        Err(Unavailable {
            code: tonic::Code::Unavailable,
        }),
        now,
    );
    let later = now + Duration::from_secs(10);
    book.learn(user, &denied(Duration::from_secs(3)), later);
    assert!(matches!(
        book.take(user, later + Duration::from_secs(2)),
        Take::Alone
    ));
}

#[test]
fn unspent_messages_go_back_when_idle_or_old_and_spent_ones_stay_counted() {
    let now = Instant::now();
    let (book, user, size) = learned(64, 3000, now);
    answer(&book, user, size, Ok(allowed(3000, true)), now);
    for _ in 0..10 {
        book.take(user, now);
    }
    assert_eq!(book.leftovers(now + IDLE / 2, false), vec![]);
    let back = book.leftovers(now + IDLE, false);
    assert_eq!(back.len(), 1);
    assert_eq!(
        (back[0].user, back[0].reserved, back[0].spent),
        (user, 64, 10)
    );

    // In steady use, a budget still goes back at MAX_AGE.
    let Take::Reserve { size, .. } = book.take(user, now + IDLE) else {
        panic!("reserves again")
    };
    let start = now + IDLE;
    let key = book.next_key();
    book.reserved(user, key, size, Ok(allowed(3000, true)), start);
    let mut at = start;
    while at < start + MAX_AGE {
        assert_eq!(book.leftovers(at, false), vec![]);
        book.take(user, at);
        at += Duration::from_millis(100);
    }
    assert_eq!(book.leftovers(at, false).len(), 1);
    // Given back once: nothing is left for a stopping node to give back.
    assert_eq!(book.leftovers(at, true), vec![]);
}

#[test]
fn a_reservation_of_a_billable_meter_is_given_back_whole_and_never_made_again() {
    let now = Instant::now();
    let (book, user, size) = learned(64, 3000, now);
    let key = book.next_key();
    let unusable = book.reserved(user, key.clone(), size, Ok(allowed(3000, false)), now);
    assert_eq!(
        unusable,
        Some(Leftover {
            user,
            key,
            reserved: 64,
            spent: 0
        })
    );
    assert!(matches!(book.take(user, now), Take::Alone));
}

#[test]
fn users_who_stop_sending_are_forgotten() {
    let now = Instant::now();
    let (book, user, size) = learned(64, 3000, now);
    answer(&book, user, size, Ok(allowed(3000, true)), now);
    book.take(user, now);
    assert_eq!(book.leftovers(now + MAX_AGE, false).len(), 1);
    assert_eq!(book.leftovers(now + MAX_AGE, false), vec![]);
    assert!(matches!(book.take(user, now + MAX_AGE), Take::Alone));
}

#[test]
fn a_plan_change_changes_the_size_of_the_next_reservation() {
    let now = Instant::now();
    let (book, user, size) = learned(64, 3000, now);
    // Downgraded to free meanwhile: the reservation's answer says so.
    answer(&book, user, size, Ok(allowed(30, true)), now);
    for _ in 0..size {
        assert!(matches!(book.take(user, now), Take::Spent));
    }
    assert!(
        matches!(book.take(user, now), Take::Alone),
        "30 a minute: one by one"
    );
}

#[test]
fn a_reservation_lost_without_an_answer_does_not_keep_messages_waiting() {
    let now = Instant::now();
    let (book, user, _) = learned(64, 3000, now);
    let Take::Wait(reserving) = book.take(user, now) else {
        panic!("a reservation is under way")
    };
    // Its task ends without an answer (it fires `done` as it is dropped).
    reserving.cancel();
    assert!(matches!(book.take(user, now), Take::Reserve { .. }));
}
