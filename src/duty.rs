//! Duties that one node performs at a time: the NATS relay and the webhook dispatcher.
//!
//! Every node contends for every duty it is configured for, whatever its role (`all`, `api`
//! and `worker` nodes all follow the log, which is all either duty needs): the relay on
//! each node with `NATS_URL`, the dispatcher on every node. The node holding the duty's
//! lease ([`syncjobs_domain::store::lease`]) runs it; the others stand by and try again
//! every [`RETRY`]. On the embedded store (one process) the lease is granted at once and
//! never lost. Two nodes never run a duty at once on PostgreSQL; when the holder dies a
//! standby takes over within about [`RETRY`] (PostgreSQL ends a killed holder's session at
//! once), and resumes where the log says: the relay from the cursor kept with the lease,
//! the dispatcher from the deliveries recorded in the log.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use syncjobs_domain::store::{Lease, LeaseTry};
use syncjobs_domain::EventStore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a standby waits between two tries to take a duty (and a holder that lost it
/// before it tries again).
pub const RETRY: Duration = Duration::from_secs(1);

/// The duties' names (their leases' names in the store).
pub const RELAY: &str = "nats-relay";
pub const DISPATCHER: &str = "webhook-dispatcher";

/// What a node does about a duty right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DutyState {
    /// Not decided yet (the first try has not answered).
    Starting,
    /// This node holds the lease and runs the duty.
    Holding,
    /// Another node holds it (or the store could not be asked): this node waits.
    Standby,
    /// The node is stopping.
    Stopped,
}

/// A duty's line on `/health`.
#[derive(Debug, Clone, Serialize)]
pub struct DutyStatus {
    pub state: DutyState,
    /// The node holding it, when this node stands by and the store could tell.
    pub held_by: Option<String>,
    /// When this node took it, while it holds it.
    pub since: Option<DateTime<Utc>>,
    /// How many times this node took it since it started.
    pub taken: u64,
    /// Why this node last lost it, or could not ask for it.
    pub last_error: Option<String>,
    /// The last try could not ask the store at all (nobody may be running the duty).
    #[serde(skip)]
    pub unreachable: bool,
}

/// A cheap view of a duty's status, for `/health` and `/metrics`.
#[derive(Clone)]
pub struct DutyMonitor {
    name: &'static str,
    status: Arc<Mutex<DutyStatus>>,
}

impl DutyMonitor {
    fn new(name: &'static str) -> DutyMonitor {
        DutyMonitor {
            name,
            status: Arc::new(Mutex::new(DutyStatus {
                state: DutyState::Starting,
                held_by: None,
                since: None,
                taken: 0,
                last_error: None,
                unreachable: false,
            })),
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn status(&self) -> DutyStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn holding(&self) -> bool {
        self.status().state == DutyState::Holding
    }

    fn update(&self, f: impl FnOnce(&mut DutyStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

/// What runs while the lease is held.
#[async_trait(?Send)]
pub trait Duty: 'static {
    type Running;
    /// Starts the duty; the lease is the duty's for as long as it runs (the relay keeps its
    /// cursor with it).
    fn start(&mut self, lease: Arc<Lease>) -> Result<Self::Running, String>;
    /// Stops it: at once when the lease is `lost` (another node may already run it), or
    /// gracefully (saving what it can) when the node stops.
    async fn stop(&mut self, running: Self::Running, lost: bool);
}

/// A duty's contender on this node.
pub struct DutyHandle {
    monitor: DutyMonitor,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl DutyHandle {
    pub fn monitor(&self) -> DutyMonitor {
        self.monitor.clone()
    }

    /// Stops the duty gracefully if held, releases the lease, and stops contending.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            if let Err(e) = task.await {
                tracing::error!(duty = self.monitor.name, error = %e, "a duty's task ended abnormally");
            }
        }
    }
}

impl Drop for DutyHandle {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Starts contending for `name` on the current (actix) thread: the duties' tasks need not
/// be `Send` (the dispatcher reads the read model on its arbiter).
pub fn spawn_duty<D: Duty>(
    store: Arc<dyn EventStore>,
    name: &'static str,
    node_id: String,
    duty: D,
) -> DutyHandle {
    let monitor = DutyMonitor::new(name);
    let stop = CancellationToken::new();
    let task = actix_rt::spawn(contend(
        store,
        name,
        node_id,
        duty,
        monitor.clone(),
        stop.clone(),
    ));
    DutyHandle {
        monitor,
        stop,
        task: Some(task),
    }
}

async fn contend<D: Duty>(
    store: Arc<dyn EventStore>,
    name: &'static str,
    node_id: String,
    mut duty: D,
    monitor: DutyMonitor,
    stop: CancellationToken,
) {
    let span = tracing::info_span!("duty", duty = name, node_id = %node_id);
    // The holder last reported, so that a standby says once who it waits for.
    let mut reported: Option<Option<String>> = None;
    loop {
        let tried = tokio::select! {
            _ = stop.cancelled() => break,
            t = store.try_lease(name, &node_id) => t,
        };
        match tried {
            Ok(LeaseTry::Taken(lease)) => {
                reported = None;
                let lease = Arc::new(lease);
                let running = match duty.start(lease.clone()) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(parent: &span, error = %e, "cannot start the duty; letting the lease go");
                        monitor.update(|s| {
                            s.state = DutyState::Standby;
                            s.last_error = Some(e);
                        });
                        drop(lease);
                        if !pause(&stop).await {
                            break;
                        }
                        continue;
                    }
                };
                monitor.update(|s| {
                    s.unreachable = false;
                    s.state = DutyState::Holding;
                    s.held_by = Some(node_id.clone());
                    s.since = Some(Utc::now());
                    s.taken += 1;
                });
                tracing::info!(parent: &span, node_id = %node_id, duty = name, "took the duty: this node runs it");
                tokio::select! {
                    reason = lease.lost() => {
                        tracing::warn!(parent: &span, node_id = %node_id, duty = name, %reason, "lost the duty: stopping it");
                        duty.stop(running, true).await;
                        monitor.update(|s| {
                            s.state = DutyState::Standby;
                            s.held_by = None;
                            s.since = None;
                            s.last_error = Some(reason);
                        });
                    }
                    _ = stop.cancelled() => {
                        duty.stop(running, false).await;
                        drop(lease);
                        tracing::info!(parent: &span, node_id = %node_id, duty = name, "released the duty");
                        break;
                    }
                }
            }
            Ok(LeaseTry::HeldBy(holder)) => {
                if reported.as_ref() != Some(&holder) {
                    tracing::info!(parent: &span, node_id = %node_id, duty = name, held_by = ?holder, "standing by: another node runs the duty");
                    reported = Some(holder.clone());
                }
                monitor.update(|s| {
                    s.unreachable = false;
                    s.state = DutyState::Standby;
                    s.held_by = holder;
                });
            }
            Err(e) => {
                tracing::warn!(parent: &span, error = %e, "cannot ask for the duty's lease; retrying");
                reported = None;
                monitor.update(|s| {
                    s.unreachable = true;
                    s.state = DutyState::Standby;
                    s.held_by = None;
                    s.last_error = Some(e.to_string());
                });
            }
        }
        if !pause(&stop).await {
            break;
        }
    }
    monitor.update(|s| {
        s.state = DutyState::Stopped;
        s.since = None;
    });
}

/// Waits [`RETRY`]; false when stopped first.
async fn pause(stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(RETRY) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;
    use syncjobs_domain::InMemoryStore;

    struct Counting(Rc<RefCell<Vec<&'static str>>>);

    #[async_trait(?Send)]
    impl Duty for Counting {
        type Running = ();
        fn start(&mut self, _lease: Arc<Lease>) -> Result<(), String> {
            self.0.borrow_mut().push("start");
            Ok(())
        }
        async fn stop(&mut self, _running: (), lost: bool) {
            self.0
                .borrow_mut()
                .push(if lost { "stop lost" } else { "stop" });
        }
    }

    /// A store that one process owns grants the duty at once and for ever; a stop stops it
    /// gracefully.
    #[actix_rt::test]
    async fn on_a_store_one_process_owns_the_duty_is_held_until_the_node_stops() {
        let log = Rc::new(RefCell::new(Vec::new()));
        let handle = spawn_duty(
            InMemoryStore::new(),
            RELAY,
            "node-1".into(),
            Counting(log.clone()),
        );
        let monitor = handle.monitor();
        for _ in 0..100 {
            if monitor.holding() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let s = monitor.status();
        assert_eq!((s.state, s.taken), (DutyState::Holding, 1), "{s:?}");
        assert_eq!(s.held_by.as_deref(), Some("node-1"));
        handle.shutdown().await;
        assert_eq!(*log.borrow(), vec!["start", "stop"]);
        assert_eq!(monitor.status().state, DutyState::Stopped);
    }
}
