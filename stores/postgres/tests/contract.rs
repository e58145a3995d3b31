//! The PostgreSQL store against the whole EventStore contract, each check on a fresh
//! database (see `support`).

use async_trait::async_trait;
use std::sync::{Arc, Mutex};
use syncjobs_domain::store::contract;
use syncjobs_domain::EventStore;
use syncjobs_store_postgres::testkit::{admin_url, TestDb};

struct Harness {
    admin: String,
    /// Every database opened, with the store on it, so `reopen` finds the right one.
    opened: Mutex<Vec<(TestDb, Arc<dyn EventStore>)>>,
}

#[async_trait]
impl contract::Harness for Harness {
    async fn open(&self) -> Arc<dyn EventStore> {
        let db = TestDb::create(&self.admin).await;
        let store: Arc<dyn EventStore> = db.store().await;
        self.opened.lock().unwrap().push((db, store.clone()));
        store
    }

    async fn reopen(&self, closed: Arc<dyn EventStore>) -> Option<Arc<dyn EventStore>> {
        let url = {
            let mut opened = self.opened.lock().unwrap();
            let entry = opened
                .iter_mut()
                .find(|(_, s)| Arc::ptr_eq(s, &closed))
                .expect("reopen is given a store this harness opened");
            // The harness lets go of its reference too: `closed` is the last one.
            let url = entry.0.url.clone();
            entry.1 = Arc::new(syncjobs_domain::InMemoryStore::default());
            url
        };
        drop(closed);
        let reopened: Arc<dyn EventStore> = syncjobs_store_postgres::PgStore::connect(&url)
            .await
            .expect("the store reopens");
        Some(reopened)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_store_passes_the_contract() {
    let Some(admin) = admin_url("the_postgres_store_passes_the_contract") else {
        return;
    };
    let harness = Harness {
        admin,
        opened: Mutex::new(Vec::new()),
    };
    contract::run_all(&harness).await;
}
