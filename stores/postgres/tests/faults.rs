//! The database going away and coming back, through a proxy in front of the shared test
//! server: nothing hangs past its bound, the failure says what it is, and everything resumes
//! by itself with nothing lost or doubled.

use std::time::{Duration, Instant};
use syncjobs_domain::store::contract::sample;
use syncjobs_domain::{EventStore, ExpectedVersion, StoreError};
use syncjobs_store_postgres::testkit::{admin_url, Fault, FaultProxy, TestDb};
use syncjobs_store_postgres::{PgStore, Timeouts};

/// Short waits, so the test shows the bounds without sitting through the defaults.
const SHORT: Timeouts = Timeouts {
    connect: Duration::from_secs(1),
    pool_wait: Duration::from_secs(1),
    operation: Duration::from_secs(1),
    listener_check: Duration::from_millis(300),
};
/// What any failing call may take at most: a pool wait, a connect and an operation, plus
/// scheduling slack on a loaded machine.
const BOUND: Duration = Duration::from_secs(6);

/// `call`'s failure, which must come as unavailable and within [`BOUND`] (a hang fails the
/// test instead of stalling it).
async fn unavailable<T: std::fmt::Debug>(
    what: &str,
    call: impl std::future::Future<Output = Result<T, StoreError>>,
) -> String {
    let started = Instant::now();
    let r = tokio::time::timeout(BOUND, call)
        .await
        .unwrap_or_else(|_| panic!("{what} still waiting after {BOUND:?}"));
    assert!(started.elapsed() < BOUND);
    match r {
        Err(StoreError::Unavailable { cause }) => cause,
        other => panic!("expected unavailable, got {other:?}"),
    }
}

async fn until(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_or_stopped_database_fails_fast_and_everything_resumes_after() {
    let Some(admin) = admin_url("faults") else {
        return;
    };
    let db = TestDb::create(&admin).await;
    // The node under test reaches the database through the proxy; another node directly.
    let proxy = FaultProxy::start(&db.url).await;
    let node = PgStore::connect_with(&proxy.url, SHORT)
        .await
        .expect("opens");
    let other = db.store().await;
    let stream = "job-faults";
    node.append(stream, ExpectedVersion::Exact(0), vec![sample(1)])
        .await
        .expect("appends");
    let mut expected_events = 1;

    // The stream's version before each round: one event, then one more per round.
    for (version, fault) in (1..).zip([Fault::Blackhole, Fault::Refuse]) {
        proxy.set(fault);
        let cause = unavailable(
            "append",
            node.append(stream, ExpectedVersion::Exact(version), vec![sample(2)]),
        )
        .await;
        assert!(
            node.write_failure().is_some(),
            "{fault:?}: the failure is reported ({cause})"
        );
        until("the lost connection is reported", BOUND, async || {
            node.connection_failure().is_some()
        })
        .await;
        unavailable("read_all", node.read_all(0, 10)).await;
        unavailable("read_stream", node.read_stream(stream, 0)).await;
        // The other node is not held up: no lock is left behind.
        let other_head = other
            .append("job-other", ExpectedVersion::Any, vec![sample(3)])
            .await
            .expect("the other node appends meanwhile")[0]
            .global_position;
        expected_events += 1;

        proxy.set(Fault::Pass);
        // Back by itself: appends (the failed one never landed: its version is still free),
        // reads, the failure cleared, and the listener hears the other node again.
        let node2 = node.clone();
        until("appends work again", BOUND, async || {
            node2
                .append(stream, ExpectedVersion::Any, Vec::new())
                .await
                .is_ok()
        })
        .await;
        node.append(stream, ExpectedVersion::Exact(version), vec![sample(4)])
            .await
            .expect("the version the failed append wanted is free");
        expected_events += 1;
        assert!(
            node.write_failure().is_none(),
            "{fault:?}: recovery clears the failure"
        );
        let mut head = node.watch_head();
        tokio::time::timeout(BOUND, head.wait_for(|h| *h >= other_head))
            .await
            .unwrap_or_else(|_| panic!("{fault:?}: the listener resumes"))
            .expect("the store is open");
        let wake = other
            .append("job-other", ExpectedVersion::Any, vec![sample(5)])
            .await
            .expect("appends")[0]
            .global_position;
        expected_events += 1;
        tokio::time::timeout(BOUND, head.wait_for(|h| *h >= wake))
            .await
            .unwrap_or_else(|_| panic!("{fault:?}: woken by the other node's commit"))
            .expect("the store is open");
    }

    // Nothing lost, nothing doubled: dense positions, each event once.
    let all = node.read_all(0, 100).await.expect("reads");
    assert_eq!(all.len() as u64, expected_events);
    let positions: Vec<u64> = all.iter().map(|e| e.global_position).collect();
    assert_eq!(positions, (1..=expected_events).collect::<Vec<_>>());
    let mut ids: Vec<_> = all.iter().map(|e| e.event_id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len() as u64, expected_events);
}
