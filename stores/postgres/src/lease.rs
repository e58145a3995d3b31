//! Leases on PostgreSQL: one node at a time performs a duty (the NATS relay, the webhook
//! dispatcher) because it holds a **session advisory lock** on a connection of its own.
//!
//! # Why a session advisory lock
//!
//! The server itself releases it when the session ends, however it ends: the holder drops
//! its lease, the process exits or is killed (the kernel closes its socket: the server
//! sees it at once), `pg_terminate_backend`, a server restart. Nothing has to expire on a
//! clock, and no two sessions can hold it at once. Standbys try it (`pg_try_advisory_lock`)
//! every [`RETRY`]: a holder killed with SIGKILL is replaced within about that.
//!
//! # A network partition
//!
//! A holder cut off from the database gets no error from a socket that simply goes quiet,
//! and the server keeps its session (and the lock) until it notices the client is gone.
//! Both sides are bounded so that the holder always stops first:
//! - the holder proves its lease every [`CHECK_EVERY`] (a query on the lease's connection
//!   asking `pg_locks` whether this session still holds the lock); a check without an
//!   answer within [`CHECK_TIMEOUT`], or the connection closing, is a loss: the holder
//!   closes the connection and stops the duty. So it stops within
//!   `CHECK_EVERY + CHECK_TIMEOUT` (4 s) of the partition;
//! - the server drops a silent session only after TCP keepalives set for the lease's
//!   session (`tcp_keepalives_idle` 6 s, then 4 probes 1 s apart: ~10 s after the last
//!   packet, and `tcp_user_timeout` 10 s for data it cannot deliver), and only then can a
//!   standby take the lock.
//!
//! The 6 s between the two is the margin (more than a check's round trip). What is not
//! fenced: a NATS publish or a webhook POST the old holder had already sent completes;
//! both are idempotent for their receivers (`Nats-Msg-Id`, `webhook-id`), and both duties are
//! at least once anyway. What is fenced: the state kept with the lease (the relay's
//! cursor) is written only through the lease's connection, with the lock re-checked in the
//! same statement, so a holder that lost the lease cannot overwrite its successor's.
//!
//! # Cost
//!
//! One connection per duty per node (holder or standby: a standby keeps its connection for
//! its next try), one query per second on each, and one row per duty in `syncjobs_leases`.
//! A holder that the database leaves unanswered for 3 s (a very loaded server, not only a
//! partition) gives the duty up; another node (or itself) takes it again: duplicates, never
//! a gap.

use crate::error::store_error;
use crate::store::Shared;
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use syncjobs_domain::redact::redact;
use syncjobs_domain::store::{Lease, LeaseState, LeaseTry};
use syncjobs_domain::StoreError;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;

/// How often a standby tries to take a lease (the app's loop waits this between tries).
pub const RETRY: Duration = Duration::from_secs(1);
/// How often a holder proves it still holds its lease.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How long a holder's check may go unanswered before the lease counts as lost.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(3);
/// The server side of a silent holder's session (see the module docs): keepalives after
/// 6 s idle, 4 probes 1 s apart, and 10 s for data the client does not acknowledge.
const SERVER_KEEPALIVE: &str = "-c tcp_keepalives_idle=6 -c tcp_keepalives_interval=1 \
                                -c tcp_keepalives_count=4 -c tcp_user_timeout=10000";

/// The first key of every lease's lock ("sync"); the second is the duty's hash.
const LEASE_CLASS: i32 = 0x7379_6e63;
/// The `application_name` of a lease's connection starts so (an operator, or a test, finds
/// a holder's session by it).
pub const LEASE_APP_PREFIX: &str = "syncjobs-lease";

const TAKE: &str = "SELECT pg_try_advisory_lock($1, $2)";
/// The lock held by this session: the holder's proof, and the fence of every save.
const HOLDS: &str = "EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' \
                     AND pid = pg_backend_pid() AND granted AND objsubid = 2 \
                     AND classid = $1::int4::oid AND objid = $2::int4::oid)";

/// The second key of `duty`'s lock: FNV-1a of its name, made non-negative so that it reads
/// the same as an `oid` in `pg_locks`.
pub fn duty_key(duty: &str) -> i32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in duty.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    (h & 0x7fff_ffff) as i32
}

/// A standby's connection, kept for its next try. Dropping the client ends the connection
/// (and its driver).
pub(crate) struct Standby {
    client: Client,
    driver: JoinHandle<()>,
}

/// Standbys' connections by duty.
#[derive(Default)]
pub(crate) struct Standbys(Mutex<HashMap<String, Standby>>);

impl Standbys {
    fn take(&self, duty: &str) -> Option<Standby> {
        crate::store::lock(&self.0)
            .remove(duty)
            .filter(|s| !s.client.is_closed() && !s.driver.is_finished())
    }

    fn keep(&self, duty: &str, s: Standby) {
        crate::store::lock(&self.0).insert(duty.to_owned(), s);
    }
}

/// A connection of the lease's own: its `application_name` names the duty and the holder,
/// and the server gives up on it soon after it goes silent.
async fn connect(shared: &Shared, duty: &str, holder: &str) -> Result<Standby, StoreError> {
    let mut config = shared.config.clone();
    let mut name = format!("{LEASE_APP_PREFIX} {duty} {holder}");
    // The server keeps 63 bytes of it.
    while name.len() > 63 {
        name.pop();
    }
    config.application_name(&name);
    let options = config.get_options().unwrap_or("").to_owned();
    config.options(format!("{options} {SERVER_KEEPALIVE}").trim_start());
    let limit = shared.timeouts.connect;
    let (client, connection) = tokio::time::timeout(limit, config.connect(NoTls))
        .await
        .map_err(|_| StoreError::Unavailable {
            cause: format!("the database did not answer within {} s", limit.as_secs()),
        })?
        .map_err(|e| store_error(&e))?;
    let driver = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %redact(&crate::describe(&e)), "a lease's connection ended");
        }
    });
    Ok(Standby { client, driver })
}

/// `f`'s outcome, unless it takes longer than `limit`.
async fn within<T>(
    limit: Duration,
    f: impl std::future::Future<Output = T>,
) -> Result<T, StoreError> {
    tokio::time::timeout(limit, f)
        .await
        .map_err(|_| crate::store::timed_out(limit))
}

/// One try to take `duty` for `holder` (runs on the store's runtime).
pub(crate) async fn try_lease(
    shared: Arc<Shared>,
    duty: String,
    holder: String,
) -> Result<LeaseTry, StoreError> {
    let conn = match shared.standbys.take(&duty) {
        Some(c) => c,
        None => connect(&shared, &duty, &holder).await?,
    };
    let key = duty_key(&duty);
    let limit = shared.timeouts.operation;
    let taken: bool = within(limit, conn.client.query_one(TAKE, &[&LEASE_CLASS, &key]))
        .await?
        .and_then(|r| r.try_get(0))
        .map_err(|e| store_error(&e))?;
    if !taken {
        let held_by = within(
            limit,
            conn.client.query_opt(
                "SELECT holder FROM syncjobs_leases WHERE duty = $1",
                &[&duty],
            ),
        )
        .await?
        .map_err(|e| store_error(&e))?
        .and_then(|r| r.try_get::<_, String>(0).ok());
        shared.standbys.keep(&duty, conn);
        return Ok(LeaseTry::HeldBy(held_by));
    }
    // Held from here: say who holds it. A failure drops the connection, which releases it.
    within(
        limit,
        conn.client.execute(
            "INSERT INTO syncjobs_leases (duty, holder, taken_at) VALUES ($1, $2, now()) \
         ON CONFLICT (duty) DO UPDATE SET holder = EXCLUDED.holder, taken_at = EXCLUDED.taken_at",
            &[&duty, &holder],
        ),
    )
    .await?
    .map_err(|e| store_error(&e))?;
    let Standby { client, driver } = conn;
    let client = Arc::new(client);
    let (lost_tx, lost) = watch::channel(None);
    let lost_tx = Arc::new(lost_tx);
    let stop = CancellationToken::new();
    tokio::spawn(keep(
        client.clone(),
        driver,
        key,
        lost_tx.clone(),
        stop.clone(),
    ));
    let state = Held {
        client,
        duty,
        key,
        lost: lost_tx,
        limit,
    };
    Ok(LeaseTry::Taken(Lease::held(
        lost,
        Box::new(state),
        Box::new(stop.drop_guard()),
    )))
}

/// The holder's keeper: proves the lease every [`CHECK_EVERY`] and reports its loss; ends
/// (closing the connection, which releases the lock) when lost or when the lease is dropped.
async fn keep(
    client: Arc<Client>,
    mut driver: JoinHandle<()>,
    key: i32,
    lost: Arc<watch::Sender<Option<String>>>,
    stop: CancellationToken,
) {
    let check = format!("SELECT {HOLDS}");
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.reset();
    let reason = loop {
        tokio::select! {
            _ = stop.cancelled() => break None,
            _ = &mut driver => break Some("the lease's connection to the database closed".to_owned()),
            _ = tick.tick() => {
                let proof = tokio::time::timeout(
                    CHECK_TIMEOUT,
                    client.query_one(check.as_str(), &[&LEASE_CLASS, &key]),
                )
                .await;
                match proof {
                    Ok(Ok(row)) if row.try_get::<_, bool>(0).unwrap_or(false) => {}
                    Ok(Ok(_)) => break Some("the lease's lock is no longer held".to_owned()),
                    Ok(Err(e)) => break Some(format!(
                        "the lease's check failed: {}",
                        redact(&crate::describe(&e))
                    )),
                    Err(_) => break Some(format!(
                        "the database did not answer the lease's check within {} s",
                        CHECK_TIMEOUT.as_secs()
                    )),
                }
            }
        }
    };
    if let Some(reason) = reason {
        lost.send_replace(Some(reason));
    }
    // Closing the connection releases the lock (if the server still counts it).
    driver.abort();
}

/// The state kept with a held lease, written through the lease's connection.
struct Held {
    client: Arc<Client>,
    duty: String,
    key: i32,
    lost: Arc<watch::Sender<Option<String>>>,
    limit: Duration,
}

impl Held {
    fn check_held(&self) -> Result<(), StoreError> {
        match &*self.lost.borrow() {
            Some(reason) => Err(StoreError::Backend(format!(
                "the lease on {} was lost: {reason}",
                self.duty
            ))),
            None => Ok(()),
        }
    }
}

#[async_trait]
impl LeaseState for Held {
    async fn load(&self) -> Result<Option<String>, StoreError> {
        self.check_held()?;
        let row = tokio::time::timeout(
            self.limit,
            self.client.query_opt(
                "SELECT state FROM syncjobs_leases WHERE duty = $1",
                &[&self.duty],
            ),
        )
        .await
        .map_err(|_| crate::store::timed_out(self.limit))?
        .map_err(|e| store_error(&e))?;
        Ok(row.and_then(|r| r.try_get::<_, Option<String>>(0).ok().flatten()))
    }

    async fn save(&self, state: &str) -> Result<(), StoreError> {
        self.check_held()?;
        let sql = format!(
            "UPDATE syncjobs_leases SET state = $3, saved_at = now() WHERE duty = $4 AND {HOLDS}"
        );
        let updated = tokio::time::timeout(
            self.limit,
            self.client
                .execute(sql.as_str(), &[&LEASE_CLASS, &self.key, &state, &self.duty]),
        )
        .await
        .map_err(|_| crate::store::timed_out(self.limit))?
        .map_err(|e| store_error(&e))?;
        if updated == 1 {
            Ok(())
        } else {
            Err(StoreError::Backend(format!(
                "the lease on {} is not held by this session: state not saved",
                self.duty
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duty_keys_are_stable_distinct_and_non_negative() {
        assert_eq!(duty_key("nats-relay"), duty_key("nats-relay"));
        assert_ne!(duty_key("nats-relay"), duty_key("webhook-dispatcher"));
        for d in ["", "a", "nats-relay", "webhook-dispatcher"] {
            assert!(duty_key(d) >= 0);
        }
    }
}
