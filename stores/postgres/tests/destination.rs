//! PgDestination against the destination contract (`syncjobs_actors::pipeline::contract`),
//! each check on a fresh database; plus what only a database server has.

use async_trait::async_trait;
use std::sync::Arc;
use syncjobs_actors::pipeline::contract::{record, Harness};
use syncjobs_actors::pipeline::{DestinationError, EntitySink, WriteAction};
use syncjobs_domain::EntityCounts;
use syncjobs_store_postgres::testkit::{self, admin_url, TestDb};
use syncjobs_store_postgres::PgDestination;
use uuid::Uuid;

struct Pg(TestDb);

#[async_trait]
impl Harness for Pg {
    async fn open(&self) -> Arc<dyn EntitySink> {
        PgDestination::connect(&self.0.url)
            .await
            .expect("the destination opens")
    }

    async fn fail_writes_of(&self, entity_id: &str) {
        let name = format!("fail_{}", Uuid::new_v4().simple());
        let literal = entity_id.replace('\'', "''");
        self.0
            .client()
            .await
            .batch_execute(&format!(
                "CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS
                   $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$;
                 CREATE TRIGGER {name} BEFORE INSERT OR UPDATE ON syncjobs_entities
                   FOR EACH ROW WHEN (NEW.entity_id = '{literal}') EXECUTE FUNCTION {name}();"
            ))
            .await
            .expect("the trigger is created");
    }
}

async fn harness(test: &str) -> Option<Pg> {
    let admin = admin_url(test)?;
    Some(Pg(TestDb::create(&admin).await))
}

syncjobs_actors::destination_contract!(harness);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_is_an_error_naming_it_without_its_password() {
    // Port 1: nothing listens there, the connection is refused at once.
    let err = PgDestination::connect("postgres://app:s3cret@127.0.0.1:1/jobs")
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, DestinationError::Connect { .. }), "{err:?}");
    assert!(
        text.contains("postgres://app:***@127.0.0.1:1/jobs"),
        "{text}"
    );
    assert!(text.contains("the database is unreachable"), "{text}");
    assert!(!text.contains("s3cret"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_gone_mid_way_fails_writes_with_context_and_no_panic() {
    let Some(admin) = admin_url("a_database_gone_mid_way_fails_writes_with_context_and_no_panic")
    else {
        return;
    };
    let h = Pg(TestDb::create(&admin).await);
    let dest = h.open().await;
    let scid = Uuid::new_v4();
    dest.write(
        scid,
        Uuid::new_v4(),
        vec![record("a", "T", serde_json::json!({}))],
        0,
    )
    .await
    .unwrap();
    // Cut every connection of the destination and refuse new ones.
    testkit::client(&admin)
        .await
        .batch_execute(&format!(
            "ALTER DATABASE {db} WITH ALLOW_CONNECTIONS false;
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = '{db}' AND pid <> pg_backend_pid();",
            db = h.0.name
        ))
        .await
        .expect("the database is cut off");
    let err = dest
        .write(
            scid,
            Uuid::new_v4(),
            vec![record("b", "T", serde_json::json!({}))],
            0,
        )
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&format!("writing 1 entities of source connection {scid}")),
        "{text}"
    );
    assert!(matches!(err, DestinationError::Storage(_)), "{err:?}");
    assert!(dest.stats(scid).await.is_err());
}

/// A write that PostgreSQL picks as a deadlock's victim is rolled back whole and made again,
/// so it succeeds once the other transaction ends, counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_rolled_back_by_a_deadlock_is_retried_and_counted_once() {
    let Some(h) = harness("a_write_rolled_back_by_a_deadlock_is_retried_and_counted_once").await
    else {
        return;
    };
    let dest = h.open().await;
    let scid = Uuid::new_v4();
    let v = |n: i64| {
        vec![
            record("a", "T", serde_json::json!({ "v": n })),
            record("b", "T", serde_json::json!({ "v": n })),
        ]
    };
    dest.write(scid, Uuid::new_v4(), v(1), 0).await.unwrap();
    // Another transaction holds "b"; the write locks "a" (ids in order), then waits for "b".
    let mut other = h.0.client().await;
    // Whichever backend's deadlock check runs first is the victim: this one checks late,
    // so the write is always the one rolled back (else, on a loaded machine, the test's
    // own transaction could be, and nothing would be retried).
    other
        .batch_execute("SET deadlock_timeout = '30s'")
        .await
        .unwrap();
    let tx = other.transaction().await.unwrap();
    let lock = "UPDATE syncjobs_entities SET content = content WHERE entity_id = $1";
    tx.execute(lock, &[&"b"]).await.unwrap();
    let job = Uuid::new_v4();
    let write = tokio::spawn({
        let dest = dest.clone();
        let records = v(2);
        async move { dest.write(scid, job, records, 0).await }
    });
    let watcher = h.0.client().await;
    while watcher
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = 'syncjobs'
               AND wait_event_type = 'Lock'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
        == 0
    {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // Now the other transaction wants "a": a cycle. The write waited first, so its backend
    // finds the deadlock first and is the victim; the other gets "a" and commits.
    tx.execute(lock, &[&"a"]).await.unwrap();
    tx.commit().await.unwrap();
    let actions = write
        .await
        .unwrap()
        .expect("the write is retried and succeeds");
    assert_eq!(actions, vec![WriteAction::Updated, WriteAction::Updated]);
    assert_eq!(
        dest.counts_for_job(job).await.unwrap(),
        EntityCounts {
            updated: 2,
            ..Default::default()
        },
        "the rolled-back try counted nothing"
    );
}
