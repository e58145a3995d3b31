//! The KurrentDB store against the whole EventStore contract (its positions sparse), each
//! check in a namespace of its own (`syncjobsNamespace`, a fresh, empty store), on the server
//! at `KURRENTDB_URL` (e.g. `esdb://127.0.0.1:2113?tls=false`).
//!
//! Without `KURRENTDB_URL` the tests skip, saying so, even with `SYNCJOBS_REQUIRE_SERVICES=1`:
//! no KurrentDB server can be installed where CI runs, so requiring one would only make CI
//! fail; CI says once that these did not run (`.ci/run`).
#![cfg(feature = "kurrentdb")]

use async_trait::async_trait;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use syncjobs_domain::store::contract::{self, sample, Positions};
use syncjobs_domain::{EventStore, ExpectedVersion};
use syncjobs_store_kurrentdb::{with_namespace, KurrentStore, URL_VAR};
use uuid::Uuid;

/// The server to test against, or None (after saying why) when the test is to be skipped.
fn server(test: &str) -> Option<String> {
    match std::env::var(URL_VAR) {
        Ok(u) if !u.trim().is_empty() => Some(u),
        _ => {
            eprintln!(
                "skipping {test}: {URL_VAR} is not set (e.g. {URL_VAR}=esdb://127.0.0.1:2113?tls=false); \
                 these tests need a KurrentDB server"
            );
            None
        }
    }
}

/// A URL of a namespace nobody has used: a fresh, empty store.
fn fresh(url: &str) -> String {
    with_namespace(url, &format!("test-{}", Uuid::new_v4().simple()))
}

struct Harness {
    url: String,
    /// Every store opened, with its URL, so `reopen` finds the right namespace.
    opened: Mutex<Vec<(String, Arc<dyn EventStore>)>>,
}

#[async_trait]
impl contract::Harness for Harness {
    async fn open(&self) -> Arc<dyn EventStore> {
        let url = fresh(&self.url);
        let store: Arc<dyn EventStore> =
            KurrentStore::connect(&url).await.expect("the store opens");
        self.opened.lock().unwrap().push((url, store.clone()));
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
            entry.1 = Arc::new(syncjobs_domain::InMemoryStore::default());
            entry.0.clone()
        };
        drop(closed);
        let reopened: Arc<dyn EventStore> = KurrentStore::connect(&url)
            .await
            .expect("the store reopens");
        Some(reopened)
    }

    fn positions(&self) -> Positions {
        Positions::Sparse
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kurrentdb_store_passes_the_contract() {
    let Some(url) = server("the_kurrentdb_store_passes_the_contract") else {
        return;
    };
    let harness = Harness {
        url,
        opened: Mutex::new(Vec::new()),
    };
    contract::run_all(&harness).await;
}

/// Two nodes on one store: the second learns of the first's commit from its subscription,
/// not from an append of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_node_is_woken_by_its_subscription() {
    let Some(url) = server("another_node_is_woken_by_its_subscription") else {
        return;
    };
    let url = fresh(&url);
    let writer = KurrentStore::connect(&url).await.unwrap();
    let follower = KurrentStore::connect(&url).await.unwrap();
    let mut head = follower.watch_head();
    assert_eq!(*head.borrow_and_update(), 0, "a fresh store is empty");
    let written = writer
        .append("job-1", ExpectedVersion::Exact(0), vec![sample(1)])
        .await
        .unwrap();
    let position = written[0].global_position;
    tokio::time::timeout(Duration::from_secs(10), head.wait_for(|h| *h >= position))
        .await
        .expect("the other node's head moves within seconds")
        .unwrap();
    let read = follower.read_all(0, 10).await.unwrap();
    assert_eq!(read, written, "and it reads what was written, as written");
}
