//! The contract every [`EntitySink`] backend passes (feature `testkit`): what a write,
//! delete-unseen, purge, the stats and a job's counts do, alone, under concurrent writers
//! and under the pipeline (first sync, re-runs, cancel, an engine error).
//!
//! A backend's tests implement [`Harness`] and expand [`destination_contract!`] with a
//! function making one harness per test (or None to skip, saying why): one `#[tokio::test]`
//! per check, each on fresh storage, with the clock each check needs.
//!
//! [`destination_contract!`]: crate::destination_contract

use super::destination::{DestinationError, EntitySink, WriteAction};
use super::entity::{Entity, EntityRecord};
use super::Pipeline;
use crate::runner::{ProgressSink, RunOutcome, RunSpec, SyncRunner};
use async_trait::async_trait;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use syncjobs_domain::EntityCounts;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// One check's storage.
#[async_trait]
pub trait Harness: Send + Sync {
    /// Opens the destination: the first call on fresh, empty storage, later calls on the
    /// same storage again (a restart; the caller has dropped what it opened before).
    async fn open(&self) -> Arc<dyn EntitySink>;
    /// Makes the engine itself refuse every later write of `entity_id` (a trigger), with an
    /// error whose message contains "injected failure".
    async fn fail_writes_of(&self, entity_id: &str);
}

/// Expands to one `#[tokio::test]` per check of the contract. `$make` is an async function
/// `(test name) -> Option<impl Harness>`; None skips the test (it says why).
#[macro_export]
macro_rules! destination_contract {
    ($make:path) => {
        $crate::destination_contract!(@each $make, [tokio::test],
            a_write_reports_inserted_updated_and_kept_per_source_connection,
            an_id_twice_in_one_write_is_written_as_if_one_after_the_other,
            delete_unseen_and_purge_touch_only_their_source_connection,
            deletes_and_purges_bigger_than_a_batch_remove_exactly_their_rows,
            entities_survive_a_reopen,
            each_jobs_counts_are_kept_with_its_writes_and_survive_a_reopen,
            a_write_that_fails_counts_nothing_for_its_job
        );
        $crate::destination_contract!(@each $make,
            [tokio::test(flavor = "multi_thread", worker_threads = 2)],
            concurrent_writers_of_distinct_ids_lose_nothing,
            writers_of_the_same_ids_at_once_leave_one_row_each_and_counts_that_add_up,
            many_entities_through_the_pipeline_on_a_threaded_runtime
        );
        $crate::destination_contract!(@each $make, [tokio::test(start_paused = true)],
            first_sync_inserts_every_entity_and_the_stats_show_them,
            a_completed_runs_counts_are_the_destinations,
            rerun_of_the_same_seed_keeps_everything,
            changed_seed_inserts_the_new_ids_and_deletes_the_old,
            changed_count_updates_what_changed_and_deletes_what_is_gone,
            runs_of_other_source_connections_do_not_touch_each_other,
            cancel_midway_keeps_what_was_written_and_reports_exactly_that,
            an_engine_error_rolls_back_its_batch_and_is_not_counted
        );
    };
    (@each $make:path, [$attr:meta], $($name:ident),+) => {
        $(
            #[$attr]
            async fn $name() {
                if let Some(harness) = $make(stringify!($name)).await {
                    $crate::pipeline::contract::$name(&harness).await;
                }
            }
        )+
    };
}

const JOB: Uuid = Uuid::from_u128(7);

/// A record of type `ty` with content `v`, hashed as the pipeline hashes it.
pub fn record(id: &str, ty: &str, v: Value) -> EntityRecord {
    Entity {
        entity_id: id.into(),
        entity_type: ty.into(),
        content: v,
    }
    .into_record()
    .expect("a valid entity")
}

fn records(ids: std::ops::Range<usize>, v: i64) -> Vec<EntityRecord> {
    ids.map(|i| record(&i.to_string(), "T", json!({"i": i, "v": v})))
        .collect()
}

fn ids(list: &[&str]) -> HashSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// What a write's actions add to a job's counts.
fn tally(actions: &[WriteAction]) -> EntityCounts {
    let mut c = EntityCounts::default();
    for a in actions {
        match a {
            WriteAction::Inserted => c.inserted += 1,
            WriteAction::Updated => c.updated += 1,
            WriteAction::Kept => c.kept += 1,
        }
    }
    c
}

fn add(a: &mut EntityCounts, b: EntityCounts) {
    a.inserted += b.inserted;
    a.updated += b.updated;
    a.kept += b.kept;
    a.deleted += b.deleted;
    a.failed += b.failed;
}

/// A run of the timed source on `scid` with `config`.
pub fn spec(scid: Uuid, config: Value) -> RunSpec {
    RunSpec {
        job_id: Uuid::new_v4(),
        source_connection_id: scid,
        organization_id: Uuid::new_v4(),
        short_name: "timed".into(),
        config,
    }
}

pub fn counts(inserted: u64, updated: u64, deleted: u64, kept: u64) -> EntityCounts {
    EntityCounts {
        inserted,
        updated,
        deleted,
        kept,
        ..EntityCounts::default()
    }
}

/// Runs `spec` to its end.
pub async fn run(
    pipeline: &Pipeline,
    spec: RunSpec,
) -> (RunOutcome, watch::Receiver<EntityCounts>) {
    let (progress, rx) = ProgressSink::new();
    let outcome = pipeline.run(spec, CancellationToken::new(), progress).await;
    (outcome, rx)
}

/// Starts a run in a task and cancels it after `after` (tokio time); the outcome and how
/// long the run took to stop.
pub async fn run_and_cancel_after(
    pipeline: Arc<Pipeline>,
    spec: RunSpec,
    after: Duration,
) -> (RunOutcome, Duration) {
    let cancel = CancellationToken::new();
    let (progress, _rx) = ProgressSink::new();
    let task = {
        let cancel = cancel.clone();
        tokio::spawn(async move { pipeline.run(spec, cancel, progress).await })
    };
    tokio::time::sleep(after).await;
    let signalled = Instant::now();
    cancel.cancel();
    let outcome = task.await.expect("the run task ends");
    (outcome, Instant::now() - signalled)
}

pub async fn a_write_reports_inserted_updated_and_kept_per_source_connection(h: &dyn Harness) {
    let dest = h.open().await;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let first = dest
        .write(
            a,
            JOB,
            vec![
                record("1", "T", json!({"v": 1})),
                record("2", "U", json!({"v": 2})),
            ],
            0,
        )
        .await
        .unwrap();
    assert_eq!(first, vec![WriteAction::Inserted, WriteAction::Inserted]);
    let second = dest
        .write(
            a,
            JOB,
            vec![
                record("1", "T", json!({"v": 1})),
                record("2", "U", json!({"v": 3})),
            ],
            0,
        )
        .await
        .unwrap();
    assert_eq!(second, vec![WriteAction::Kept, WriteAction::Updated]);
    // The same id under another source connection is another entity.
    let other = dest
        .write(b, JOB, vec![record("1", "T", json!({"v": 1}))], 0)
        .await
        .unwrap();
    assert_eq!(other, vec![WriteAction::Inserted]);

    let stats = dest.stats(a).await.unwrap();
    assert_eq!(stats.total_entities, 2);
    assert_eq!(stats.by_type["T"].count, 1);
    assert_eq!(stats.by_type["U"].count, 1);
    assert!(stats.by_type["U"].last_updated.is_some());
    let wire = serde_json::to_value(&stats).unwrap();
    assert_eq!(wire["by_type"]["T"]["count"], 1);
    assert!(wire["by_type"]["T"]["last_updated"].is_string());
    assert_eq!(
        dest.stats(Uuid::new_v4()).await.unwrap(),
        Default::default()
    );
}

pub async fn an_id_twice_in_one_write_is_written_as_if_one_after_the_other(h: &dyn Harness) {
    let dest = h.open().await;
    let scid = Uuid::new_v4();
    let actions = dest
        .write(
            scid,
            JOB,
            vec![
                record("a", "T", json!({"v": 1})),
                record("a", "T", json!({"v": 2})),
                record("b", "T", json!({"v": 1})),
                record("a", "T", json!({"v": 2})),
            ],
            0,
        )
        .await
        .unwrap();
    use WriteAction::*;
    assert_eq!(actions, vec![Inserted, Updated, Inserted, Kept]);
    assert_eq!(dest.counts_for_job(JOB).await.unwrap(), counts(2, 1, 0, 1));
    assert_eq!(dest.stats(scid).await.unwrap().total_entities, 2);
    // The last content won: writing it again keeps it.
    let again = dest
        .write(scid, JOB, vec![record("a", "T", json!({"v": 2}))], 0)
        .await
        .unwrap();
    assert_eq!(again, vec![Kept]);
}

pub async fn delete_unseen_and_purge_touch_only_their_source_connection(h: &dyn Harness) {
    let dest = h.open().await;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    dest.write(a, JOB, records(0..5, 0), 0).await.unwrap();
    dest.write(b, JOB, records(0..3, 0), 0).await.unwrap();
    assert_eq!(
        dest.delete_unseen(a, JOB, ids(&["0", "2"])).await.unwrap(),
        3
    );
    assert_eq!(dest.stats(a).await.unwrap().total_entities, 2);
    assert_eq!(dest.stats(b).await.unwrap().total_entities, 3);
    assert_eq!(dest.purge(b).await.unwrap(), 3);
    assert_eq!(dest.stats(b).await.unwrap().total_entities, 0);
    assert_eq!(dest.stats(a).await.unwrap().total_entities, 2);
    assert_eq!(dest.purge(b).await.unwrap(), 0, "nothing left to purge");
}

/// Bigger than one delete batch of any backend here (PostgreSQL deletes 5,000 per
/// transaction), so the batching itself is checked.
pub async fn deletes_and_purges_bigger_than_a_batch_remove_exactly_their_rows(h: &dyn Harness) {
    const N: usize = 12_000;
    let dest = h.open().await;
    let (a, b, other) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    for scid in [a, b] {
        for start in (0..N).step_by(2_000) {
            dest.write(scid, JOB, records(start..start + 2_000, 0), 0)
                .await
                .unwrap();
        }
    }
    dest.write(other, JOB, records(0..10, 0), 0).await.unwrap();
    // Every third id seen: two thirds go.
    let seen: HashSet<String> = (0..N).step_by(3).map(|i| i.to_string()).collect();
    let job = Uuid::new_v4();
    assert_eq!(dest.delete_unseen(a, job, seen).await.unwrap(), 8_000);
    assert_eq!(dest.stats(a).await.unwrap().total_entities, 4_000);
    assert_eq!(dest.counts_for_job(job).await.unwrap().deleted, 8_000);
    assert_eq!(dest.purge(b).await.unwrap(), N as u64);
    assert_eq!(dest.stats(b).await.unwrap().total_entities, 0);
    assert_eq!(dest.stats(other).await.unwrap().total_entities, 10);
}

pub async fn entities_survive_a_reopen(h: &dyn Harness) {
    let scid = Uuid::new_v4();
    {
        let dest = h.open().await;
        dest.write(scid, JOB, vec![record("x", "T", json!({}))], 0)
            .await
            .unwrap();
    }
    let dest = h.open().await;
    assert_eq!(dest.stats(scid).await.unwrap().total_entities, 1);
    let again = dest
        .write(scid, JOB, vec![record("x", "T", json!({}))], 0)
        .await
        .unwrap();
    assert_eq!(again, vec![WriteAction::Kept]);
}

pub async fn each_jobs_counts_are_kept_with_its_writes_and_survive_a_reopen(h: &dyn Harness) {
    let scid = Uuid::new_v4();
    let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
    {
        let dest = h.open().await;
        dest.write(scid, first, records(0..5, 1), 2).await.unwrap();
        // A second run: 3 changed, 2 the same, 1 new; then a delete of the unseen.
        let mut again = records(0..3, 2);
        again.extend(records(3..6, 1));
        dest.write(scid, second, again, 0).await.unwrap();
        let seen = ids(&["0", "1", "2", "3"]);
        assert_eq!(dest.delete_unseen(scid, second, seen).await.unwrap(), 2);
        // Only failures in a batch: counted all the same.
        dest.write(scid, second, vec![], 1).await.unwrap();
        // Purging the connection's entities leaves what its jobs did on record.
        dest.purge(scid).await.unwrap();
    }
    let dest = h.open().await;
    assert_eq!(
        dest.counts_for_job(first).await.unwrap(),
        EntityCounts {
            inserted: 5,
            failed: 2,
            ..Default::default()
        }
    );
    assert_eq!(
        dest.counts_for_job(second).await.unwrap(),
        EntityCounts {
            inserted: 1,
            updated: 3,
            kept: 2,
            deleted: 2,
            failed: 1,
            ..Default::default()
        }
    );
    assert_eq!(
        dest.counts_for_job(Uuid::new_v4()).await.unwrap(),
        EntityCounts::default()
    );
}

pub async fn a_write_that_fails_counts_nothing_for_its_job(h: &dyn Harness) {
    let dest = h.open().await;
    let scid = Uuid::new_v4();
    dest.write(scid, JOB, vec![record("a", "T", json!({}))], 0)
        .await
        .unwrap();
    h.fail_writes_of("b").await;
    let err = dest
        .write(
            scid,
            JOB,
            vec![record("c", "T", json!({})), record("b", "T", json!({}))],
            3,
        )
        .await;
    match err {
        Err(DestinationError::Storage(message)) => {
            assert!(message.contains("injected failure"), "{message}")
        }
        other => panic!("expected a storage error, got {other:?}"),
    }
    assert_eq!(
        dest.counts_for_job(JOB).await.unwrap(),
        counts(1, 0, 0, 0),
        "neither the rows nor the counts of the failed request"
    );
    assert_eq!(dest.stats(scid).await.unwrap().total_entities, 1);
}

pub async fn concurrent_writers_of_distinct_ids_lose_nothing(h: &dyn Harness) {
    let dest = h.open().await;
    let scid = Uuid::new_v4();
    let mut tasks = Vec::new();
    for w in 0..16 {
        let dest = Arc::clone(&dest);
        tasks.push(tokio::spawn(async move {
            let mut inserted = 0;
            for i in 0..50 {
                let id = format!("{w}-{i}");
                let r = dest
                    .write(scid, JOB, vec![record(&id, "T", json!({"i": i}))], 0)
                    .await;
                if r.unwrap() == vec![WriteAction::Inserted] {
                    inserted += 1;
                }
            }
            inserted
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, 800);
    assert_eq!(dest.stats(scid).await.unwrap().total_entities, 800);
    assert_eq!(dest.counts_for_job(JOB).await.unwrap().inserted, 800);
}

/// Several writers (jobs) write the same 300 ids at once, each in batches of its own order
/// and half of them with other content, through two instances of the destination on one
/// storage (as two processes would): one row per id, every id inserted exactly once over
/// all writers, and each job's counts are what its writes returned.
pub async fn writers_of_the_same_ids_at_once_leave_one_row_each_and_counts_that_add_up(
    h: &dyn Harness,
) {
    const IDS: usize = 300;
    const WRITERS: usize = 8;
    const BATCH: usize = 25;
    let instances = [h.open().await, h.open().await];
    let dest = &instances[0];
    let scid = Uuid::new_v4();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let dest = Arc::clone(&instances[w % 2]);
        tasks.push(tokio::spawn(async move {
            let job = Uuid::new_v4();
            // Every writer starts elsewhere and half go backwards, so batches overlap in
            // every way; within a batch the order is the writer's too.
            let mut order: Vec<usize> = (0..IDS).map(|i| (i + w * 37) % IDS).collect();
            if w % 2 == 1 {
                order.reverse();
            }
            let mut done = EntityCounts::default();
            for chunk in order.chunks(BATCH) {
                let batch = chunk
                    .iter()
                    .map(|i| record(&format!("e{i}"), "T", json!({"v": w % 2})))
                    .collect();
                let actions = dest.write(scid, job, batch, 0).await.unwrap();
                assert_eq!(actions.len(), chunk.len());
                add(&mut done, tally(&actions));
            }
            (job, done)
        }));
    }
    let mut all = EntityCounts::default();
    for t in tasks {
        let (job, done) = t.await.unwrap();
        assert_eq!(
            dest.counts_for_job(job).await.unwrap(),
            done,
            "a job's counts are what its writes did"
        );
        add(&mut all, done);
    }
    assert_eq!(dest.stats(scid).await.unwrap().total_entities, IDS as u64);
    assert_eq!(all.inserted, IDS as u64, "each id inserted once: {all:?}");
    assert_eq!(
        all.updated + all.kept,
        ((WRITERS - 1) * IDS) as u64,
        "every other write of an id updated or kept it: {all:?}"
    );
    assert!(all.updated > 0 && all.kept > 0, "{all:?}");
}

pub async fn first_sync_inserts_every_entity_and_the_stats_show_them(h: &dyn Harness) {
    let dest = h.open().await;
    let pipeline = Pipeline::new(dest.clone(), 4);
    let scid = Uuid::new_v4();
    let (outcome, progress) = run(&pipeline, spec(scid, json!({"entity_count": 50}))).await;
    assert_eq!(outcome, RunOutcome::Completed(counts(51, 0, 0, 0)));
    assert_eq!(
        *progress.borrow(),
        outcome.counts(),
        "progress ends at the final counts"
    );

    let stats = dest.stats(scid).await.unwrap();
    assert_eq!(stats.total_entities, 51);
    assert_eq!(stats.by_type["TimedEntity"].count, 50);
    assert_eq!(stats.by_type["TimedContainerEntity"].count, 1);
    assert!(stats.by_type["TimedEntity"].last_updated.is_some());
}

pub async fn a_completed_runs_counts_are_the_destinations(h: &dyn Harness) {
    let dest = h.open().await;
    let pipeline = Pipeline::new(dest.clone(), 4);
    let scid = Uuid::new_v4();
    run(
        &pipeline,
        spec(scid, json!({"entity_count": 30, "seed": 1})),
    )
    .await;
    let second = spec(scid, json!({"entity_count": 20, "seed": 1}));
    let job_id = second.job_id;
    let (outcome, _) = run(&pipeline, second).await;
    assert_eq!(outcome.counts().deleted, 10, "{outcome:?}");
    assert_eq!(
        pipeline.durable_counts(job_id).await,
        Some(outcome.counts())
    );
}

pub async fn rerun_of_the_same_seed_keeps_everything(h: &dyn Harness) {
    let dest = h.open().await;
    let pipeline = Pipeline::new(dest.clone(), 4);
    let scid = Uuid::new_v4();
    let config = json!({"entity_count": 40, "duration_seconds": 2, "seed": 9});
    run(&pipeline, spec(scid, config.clone())).await;
    let (outcome, _) = run(&pipeline, spec(scid, config)).await;
    assert_eq!(outcome, RunOutcome::Completed(counts(0, 0, 0, 41)));
    assert_eq!(dest.stats(scid).await.unwrap().total_entities, 41);
}

pub async fn changed_seed_inserts_the_new_ids_and_deletes_the_old(h: &dyn Harness) {
    let dest = h.open().await;
    let pipeline = Pipeline::new(dest.clone(), 4);
    let scid = Uuid::new_v4();
    run(
        &pipeline,
        spec(scid, json!({"entity_count": 30, "seed": 1})),
    )
    .await;
    let (outcome, _) = run(
        &pipeline,
        spec(scid, json!({"entity_count": 30, "seed": 2})),
    )
    .await;
    // Ids carry the seed (`timed-<seed>-<i>`), so no id survives a seed change.
    assert_eq!(outcome, RunOutcome::Completed(counts(31, 0, 31, 0)));
    assert_eq!(dest.stats(scid).await.unwrap().total_entities, 31);
}

pub async fn changed_count_updates_what_changed_and_deletes_what_is_gone(h: &dyn Harness) {
    let dest = h.open().await;
    let pipeline = Pipeline::new(dest.clone(), 4);
    let scid = Uuid::new_v4();
    run(&pipeline, spec(scid, json!({"entity_count": 20}))).await;
    // Every entity's text says "Entity i of <count>", the container's says the count too.
    let (outcome, _) = run(&pipeline, spec(scid, json!({"entity_count": 10}))).await;
    assert_eq!(outcome, RunOutcome::Completed(counts(0, 11, 10, 0)));
    let stats = dest.stats(scid).await.unwrap();
    assert_eq!(stats.total_entities, 11);
    assert_eq!(stats.by_type["TimedEntity"].count, 10);
}

pub async fn runs_of_other_source_connections_do_not_touch_each_other(h: &dyn Harness) {
    let dest = h.open().await;
    let pipeline = Pipeline::new(dest.clone(), 4);
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    run(&pipeline, spec(a, json!({"entity_count": 10}))).await;
    let (outcome, _) = run(&pipeline, spec(b, json!({"entity_count": 5, "seed": 3}))).await;
    assert_eq!(outcome, RunOutcome::Completed(counts(6, 0, 0, 0)));
    assert_eq!(dest.stats(a).await.unwrap().total_entities, 11);
}

pub async fn cancel_midway_keeps_what_was_written_and_reports_exactly_that(h: &dyn Harness) {
    let dest = h.open().await;
    let pipeline = Arc::new(Pipeline::new(dest.clone(), 4));
    let scid = Uuid::new_v4();
    // A full earlier run of 200 lets us check that a cancelled run deletes nothing.
    run(
        &pipeline,
        spec(scid, json!({"entity_count": 200, "seed": 5})),
    )
    .await;
    let config = json!({"entity_count": 100, "duration_seconds": 10, "seed": 6});
    let (outcome, _) = run_and_cancel_after(
        pipeline.clone(),
        spec(scid, config.clone()),
        Duration::from_millis(5050),
    )
    .await;
    let RunOutcome::Cancelled(c) = outcome else {
        panic!("expected Cancelled, got {outcome:?}");
    };
    // Entities 0..=50 were due by 5.05 s; the clock may run ahead of the engine's thread, so
    // fewer may have been written, never more, and never nothing (the first write was in
    // flight).
    assert!(c.inserted >= 1 && c.inserted <= 52, "{c:?}");
    assert_eq!((c.updated, c.deleted, c.failed), (0, 0, 0));
    let stats = dest.stats(scid).await.unwrap();
    assert_eq!(
        stats.total_entities,
        201 + c.inserted,
        "counts equal the new rows; old rows stay"
    );

    // Running it to the end afterwards finds what the cancelled run wrote.
    let (outcome, _) = run(&pipeline, spec(scid, config)).await;
    assert_eq!(
        outcome,
        RunOutcome::Completed(counts(101 - c.inserted, 0, 201, c.inserted))
    );
}

pub async fn an_engine_error_rolls_back_its_batch_and_is_not_counted(h: &dyn Harness) {
    let dest = h.open().await;
    let pipeline = Pipeline::new(dest.clone(), 4);
    let scid = Uuid::new_v4();
    // A real engine failure on one entity in the middle of the run.
    h.fail_writes_of("timed-42-30").await;
    let (outcome, _) = run(&pipeline, spec(scid, json!({"entity_count": 60}))).await;
    let RunOutcome::Failed { error, counts } = outcome else {
        panic!("expected Failed, got {outcome:?}");
    };
    assert!(error.contains("injected failure"), "{error}");
    // The clock may run ahead of the engine's thread, so how many got in first varies; what
    // must hold is that the counts are exactly the rows.
    assert!(counts.inserted < 61, "{counts:?}");
    assert_eq!(
        dest.stats(scid).await.unwrap().total_entities,
        counts.inserted
    );
}

pub async fn many_entities_through_the_pipeline_on_a_threaded_runtime(h: &dyn Harness) {
    let dest = h.open().await;
    let pipeline = Pipeline::new(dest.clone(), Pipeline::default_workers());
    let scid = Uuid::new_v4();
    let config = json!({"entity_count": 3000, "duration_seconds": 0.1});
    let (outcome, _) = run(&pipeline, spec(scid, config.clone())).await;
    assert_eq!(outcome, RunOutcome::Completed(counts(3001, 0, 0, 0)));
    let (outcome, _) = run(&pipeline, spec(scid, config)).await;
    assert_eq!(outcome, RunOutcome::Completed(counts(0, 0, 0, 3001)));
    assert_eq!(dest.purge(scid).await.unwrap(), 3001);
    assert_eq!(dest.stats(scid).await.unwrap().total_entities, 0);
}
