//! Leases on one database shared by two nodes (two stores, each with its own connections):
//! one holds a duty at a time, a lease whose session ends passes to the other, and the node
//! that lost it is told so and can no longer save the duty's state.

use std::time::Duration;
use syncjobs_domain::store::{Lease, LeaseTry};
use syncjobs_domain::EventStore;
use syncjobs_store_postgres::lease::{LEASE_APP_PREFIX, RETRY};
use syncjobs_store_postgres::testkit::{admin_url, TestDb};

/// Tries until `store` takes `duty` (bounded), as a standby does.
async fn take(store: &dyn EventStore, duty: &str, holder: &str) -> Lease {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        match store.try_lease(duty, holder).await.expect("a try") {
            LeaseTry::Taken(lease) => return lease,
            LeaseTry::HeldBy(_) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{holder} never took {duty}"
                );
                tokio::time::sleep(RETRY / 4).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_holds_a_duty_and_the_other_takes_over_when_its_session_ends() {
    let Some(admin) =
        admin_url("one_node_holds_a_duty_and_the_other_takes_over_when_its_session_ends")
    else {
        return;
    };
    let db = TestDb::create(&admin).await;
    let (a, b) = (db.store().await, db.store().await);

    let lease_a = match a.try_lease("relay", "node-a").await.unwrap() {
        LeaseTry::Taken(l) => l,
        other => panic!("the first try on a free duty: {other:?}"),
    };
    assert!(lease_a.keeps_state());
    // The other node stands by, and is told who holds it; it tries again with no change.
    for _ in 0..3 {
        match b.try_lease("relay", "node-b").await.unwrap() {
            LeaseTry::HeldBy(who) => assert_eq!(who.as_deref(), Some("node-a")),
            LeaseTry::Taken(_) => panic!("two holders of one duty"),
        }
    }
    // Another duty is a lease of its own.
    let dispatcher = match b.try_lease("webhooks", "node-b").await.unwrap() {
        LeaseTry::Taken(l) => l,
        other => panic!("another duty is free: {other:?}"),
    };
    drop(dispatcher);

    // The holder's state is what the next holder resumes from.
    assert_eq!(lease_a.load_state().await.unwrap(), None);
    lease_a.save_state("cursor 41").await.unwrap();
    lease_a.save_state("cursor 42").await.unwrap();

    // The holder's session ends (as when its process dies or an operator ends it).
    let admin_client = db.client().await;
    let ended = admin_client
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name = $1 AND datname = current_database()",
            &[&format!("{LEASE_APP_PREFIX} relay node-a")],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(ended, 1, "the holder's lease session");

    // The old holder learns it lost the lease, promptly.
    let reason = tokio::time::timeout(Duration::from_secs(5), lease_a.lost())
        .await
        .expect("the holder is told it lost the lease");
    assert!(reason.contains("closed"), "{reason}");
    assert_eq!(lease_a.lost_reason(), Some(reason));

    // The standby takes it over and resumes from the saved state.
    let lease_b = take(b.as_ref(), "relay", "node-b").await;
    assert_eq!(
        lease_b.load_state().await.unwrap().as_deref(),
        Some("cursor 42")
    );
    lease_b.save_state("cursor 50").await.unwrap();

    // The old holder can no longer write the state its successor keeps.
    assert!(lease_a.save_state("cursor 43").await.is_err());
    assert_eq!(
        lease_b.load_state().await.unwrap().as_deref(),
        Some("cursor 50")
    );
    match a.try_lease("relay", "node-a").await.unwrap() {
        LeaseTry::HeldBy(who) => assert_eq!(who.as_deref(), Some("node-b")),
        LeaseTry::Taken(_) => panic!("two holders of one duty"),
    }
    drop(lease_a);

    // A holder that lets go (drops its lease: a graceful stop) hands it over at once.
    drop(lease_b);
    let again = take(a.as_ref(), "relay", "node-a").await;
    assert_eq!(
        again.load_state().await.unwrap().as_deref(),
        Some("cursor 50")
    );
    assert_eq!(again.lost_reason(), None);
}

/// A holder whose database stops answering (a partition: no error, no close) gives the
/// lease up within its check's bound rather than go on as if it held it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_whose_check_gets_no_answer_counts_the_lease_lost() {
    let Some(admin) = admin_url("a_holder_whose_check_gets_no_answer_counts_the_lease_lost") else {
        return;
    };
    let db = TestDb::create(&admin).await;
    let a = db.store().await;
    let lease = take(a.as_ref(), "relay", "node-a").await;
    // Its session is stopped (SIGSTOP): the socket stays open, nothing answers.
    let admin_client = db.client().await;
    let pid: i32 = admin_client
        .query_one(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database()",
            &[&format!("{LEASE_APP_PREFIX} relay node-a")],
        )
        .await
        .unwrap()
        .get(0);
    // SAFETY: a signal to a PostgreSQL backend of this machine's test server.
    let stopped = unsafe { libc::kill(pid, libc::SIGSTOP) };
    if stopped != 0 {
        eprintln!("skipped the partition half: cannot signal the server's backend {pid}");
        return;
    }
    let started = tokio::time::Instant::now();
    let lost = tokio::time::timeout(Duration::from_secs(10), lease.lost()).await;
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let reason = lost.expect("the holder counts a silent lease lost");
    assert!(reason.contains("did not answer"), "{reason}");
    assert!(
        started.elapsed() <= Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(lease.save_state("x").await.is_err());
}
