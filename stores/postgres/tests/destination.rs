//! PgDestination against the destination contract (`syncjobs_actors::pipeline::contract`),
//! each check on a fresh database; plus what only a database server has.

use async_trait::async_trait;
use std::sync::Arc;
use syncjobs_actors::pipeline::contract::{record, Harness};
use syncjobs_actors::pipeline::{DestinationError, EntitySink};
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
