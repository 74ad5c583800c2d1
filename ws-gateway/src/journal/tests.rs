use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::*;
use crate::agent::AgentEvent;

fn journal(max_bytes: usize) -> Arc<RunJournal> {
    Arc::new(RunJournal::new(
        RunId::new(),
        Uuid::new_v4(),
        max_bytes,
        CancellationToken::new(),
        None,
    ))
}

fn delta(journal: &RunJournal, text: &str) -> Entry {
    Entry::Event(AgentEvent::AgentDelta {
        run_id: journal.run_id(),
        text: text.into(),
    })
}

fn completed(journal: &RunJournal) -> Entry {
    Entry::Event(AgentEvent::AgentCompleted {
        run_id: journal.run_id(),
        output: "done".into(),
    })
}

fn seqs(read: Read) -> Vec<u64> {
    match read {
        Read::Records(records) => records.iter().map(|record| record.seq).collect(),
        other => panic!("expected records, got {other:?}"),
    }
}

#[tokio::test]
async fn records_are_numbered_from_one_and_read_after_any_cursor() {
    let journal = journal(1 << 20);
    for text in ["a", "b", "c"] {
        journal.append(delta(&journal, text)).await;
    }
    let Attach::Follow(mut from_start) = journal.attach(0) else {
        panic!("the log holds everything")
    };
    assert_eq!(seqs(from_start.read()), [1, 2, 3]);
    from_start.advance(3);
    assert!(matches!(from_start.read(), Read::Wait));
    let Attach::Follow(late) = journal.attach(2) else {
        panic!("the log holds 3")
    };
    assert_eq!(
        seqs(late.read()),
        [3],
        "nothing it already has, nothing missing"
    );
    assert!(matches!(journal.attach(4), Attach::Ahead { last_seq: 3 }));
    assert!(matches!(journal.attach(3), Attach::Follow(_)), "caught up");
}

#[tokio::test]
async fn a_follower_that_has_read_everything_of_an_ended_run_is_done() {
    let journal = journal(1 << 20);
    journal.append(delta(&journal, "a")).await;
    journal.append(completed(&journal)).await;
    journal.finish();
    let Attach::Follow(mut follower) = journal.attach(0) else {
        panic!()
    };
    assert_eq!(seqs(follower.read()), [1, 2]);
    follower.advance(2);
    assert!(matches!(follower.read(), Read::Done));
}

#[tokio::test]
async fn an_unfollowed_run_trims_its_oldest_records_and_a_resume_behind_them_gets_a_snapshot() {
    let journal = journal(1024);
    let chunk = "x".repeat(200);
    for _ in 0..20 {
        journal.append(delta(&journal, &chunk)).await;
    }
    journal.append(completed(&journal)).await;
    journal.finish();
    let Attach::Snapshot(snapshot) = journal.attach(0) else {
        panic!("the first records are gone, and a part is never replayed")
    };
    assert_eq!(snapshot.last_seq, 21);
    assert!(snapshot.ended);
    assert_eq!(snapshot.outcome, Some(Outcome::Completed));
    assert_eq!(snapshot.output.as_deref(), Some("done"));
    let Attach::Follow(recent) = journal.attach(20) else {
        panic!("the newest records are kept")
    };
    assert_eq!(seqs(recent.read()), [21]);
}

#[tokio::test]
async fn the_log_waits_for_an_attached_reader_instead_of_dropping_what_it_has_not_read() {
    let journal = journal(1024);
    let Attach::Follow(mut reader) = journal.attach(0) else {
        panic!()
    };
    let chunk = "x".repeat(200);
    for _ in 0..3 {
        journal.append(delta(&journal, &chunk)).await;
    }
    let writer = tokio::spawn({
        let (journal, chunk) = (Arc::clone(&journal), chunk.clone());
        async move { journal.append(delta(&journal, &chunk)).await }
    });
    tokio::task::yield_now().await;
    assert!(!writer.is_finished(), "the log is full of unread records");
    assert_eq!(seqs(reader.read()), [1, 2, 3]);
    reader.advance(3);
    assert_eq!(writer.await.unwrap(), 4);
    assert_eq!(seqs(reader.read()), [4], "nothing was lost on the way");
}

#[tokio::test]
async fn a_reader_that_goes_away_releases_the_log_and_marks_the_run_detached() {
    let journal = journal(1024);
    let Attach::Follow(reader) = journal.attach(0) else {
        panic!()
    };
    let chunk = "x".repeat(400);
    for _ in 0..2 {
        journal.append(delta(&journal, &chunk)).await;
    }
    let writer = tokio::spawn({
        let journal = Arc::clone(&journal);
        async move { journal.append(delta(&journal, "more")).await }
    });
    tokio::task::yield_now().await;
    assert!(!writer.is_finished());
    let later = std::time::Instant::now() + Duration::from_secs(60);
    assert!(!journal.abandoned_for(Duration::from_secs(1), later));
    drop(reader);
    assert_eq!(writer.await.unwrap(), 3);
    assert!(journal.abandoned_for(Duration::from_secs(1), later));
}

#[tokio::test]
async fn a_terminal_record_and_a_stopped_run_never_wait() {
    let journal = journal(1024);
    let Attach::Follow(_reader) = journal.attach(0) else {
        panic!()
    };
    let chunk = "x".repeat(900);
    journal.append(delta(&journal, &chunk)).await;
    assert!(journal.stop(StopReason::Cancelled), "a running run stops");
    assert_eq!(
        journal.append(delta(&journal, &chunk)).await,
        2,
        "a stopped run writes on whatever the readers do"
    );
    assert_eq!(journal.append(Entry::Cancelled { reason: None }).await, 3);
    assert_eq!(journal.stop_reason(), Some(StopReason::Cancelled));
    assert!(
        !journal.stop(StopReason::Shutdown),
        "an ended run is not stopped again"
    );
    let other = self::journal(1024);
    let Attach::Follow(_other_reader) = other.attach(0) else {
        panic!()
    };
    other.append(delta(&other, &chunk)).await;
    assert_eq!(
        other.append(completed(&other)).await,
        2,
        "a terminal record never waits"
    );
}

#[tokio::test]
async fn the_snapshot_counts_tool_calls_and_keeps_a_failure_s_reason() {
    let journal = journal(1 << 20);
    let run_id = journal.run_id();
    journal
        .append(Entry::Event(AgentEvent::ToolExecuting {
            run_id,
            tool: "search".parse().unwrap(),
            input: serde_json::json!("q"),
        }))
        .await;
    journal
        .append(Entry::Event(AgentEvent::AgentFailed {
            run_id,
            reason: "agent_died".into(),
        }))
        .await;
    let snapshot = journal.lock().snapshot.clone();
    assert_eq!(snapshot.usage.tool_calls, 1);
    assert_eq!(snapshot.outcome, Some(Outcome::Failed));
    assert_eq!(snapshot.reason.as_deref(), Some("agent_died"));
    assert!(journal.is_terminated());
}

/// A run cancelled while one of its records is being written to Redis drops that append
/// half-way. The record is numbered and may be in Redis already, so it goes into the log
/// anyway: the run's next record gets the next seq, and Redis ends up holding exactly the log,
/// the terminal record included (before, the terminal took the dropped record's seq, Redis
/// kept the other one, and a resume on another node never saw the run end).
#[tokio::test]
async fn an_append_dropped_while_writing_to_redis_still_takes_its_seq() {
    let engine = tollgate_shared::engine::Engine::redis(
        &tollgate_shared::testing::redis_url(),
        &tollgate_shared::testing::redis_prefix(),
    )
    .await
    .unwrap();
    let minute = std::time::Duration::from_secs(60);
    let store = RunStore::new(&engine, 1 << 20, minute, minute).unwrap();
    let journal = Arc::new(RunJournal::new(
        RunId::new(),
        Uuid::new_v4(),
        1 << 20,
        CancellationToken::new(),
        Some(store.clone()),
    ));
    journal.append(delta(&journal, "a")).await;
    let mut cancelled = Box::pin(journal.append(delta(&journal, "b")));
    assert!(
        futures::poll!(cancelled.as_mut()).is_pending(),
        "waiting for Redis"
    );
    drop(cancelled);
    assert_eq!(journal.append(completed(&journal)).await, 3);

    let Attach::Follow(follower) = journal.attach(0) else {
        panic!("the log holds everything")
    };
    assert_eq!(seqs(follower.read()), [1, 2, 3]);
    let stored = store.range(journal.run_id(), 1).await.unwrap();
    let stored: Vec<(u64, bool)> = stored
        .iter()
        .map(|(seq, frame)| {
            let (_, entry) = Entry::from_wire(frame).unwrap();
            (*seq, entry.is_terminal())
        })
        .collect();
    assert_eq!(stored, [(1, false), (2, false), (3, true)]);
    let meta = store.meta(journal.run_id()).await.unwrap().unwrap();
    assert!(meta.ended && meta.last_seq == 3, "{meta:?}");
}
