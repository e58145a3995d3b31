//! Leases: the right to perform a duty that exactly one node may perform at a time (the
//! NATS relay, the webhook dispatcher), taken from the store that every node shares.
//!
//! A store one process owns (the embedded store behind its `serve.lock`, the in-memory
//! store) grants every lease at once and for ever: there is nobody to share it with. A store
//! several nodes share (PostgreSQL) grants it to one node at a time and tells the holder when
//! it lost it ([`Lease::lost`]), so that the holder stops the duty before another node
//! can take it over.

use super::StoreError;
use async_trait::async_trait;
use tokio::sync::watch;

/// What the backend behind a lease can do beyond telling it lost: keep a small state that
/// the next holder resumes from (the relay's cursor), written only while the lease is held.
#[async_trait]
pub trait LeaseState: Send + Sync {
    /// The state the last holder saved, if any.
    async fn load(&self) -> Result<Option<String>, StoreError>;
    /// Replaces the saved state; fails once the lease is lost (a fence: a holder that lost
    /// its lease cannot overwrite what its successor saves).
    async fn save(&self, state: &str) -> Result<(), StoreError>;
}

/// A held lease. Dropping it releases the lease (another node may take it at once).
pub struct Lease {
    lost: watch::Receiver<Option<String>>,
    /// Kept alive while the lease is held; `None`: held for ever by the only process.
    state: Option<Box<dyn LeaseState>>,
    /// Whatever keeps the lease held (a connection), released when dropped.
    _hold: Option<Box<dyn Send + Sync>>,
}

impl Lease {
    /// The lease of a store that one process owns: held until dropped, never lost, no
    /// shared state.
    pub fn sole() -> Lease {
        let (tx, lost) = watch::channel(None);
        // Never sends: the receiver keeps reading `None`, and `changed()` errs only when
        // the sender goes, which it does with the lease.
        Lease {
            lost,
            state: None,
            _hold: Some(Box::new(tx)),
        }
    }

    /// A lease that `hold` keeps held, whose loss `lost` reports (a reason, once lost),
    /// with a state kept by `state`.
    pub fn held(
        lost: watch::Receiver<Option<String>>,
        state: Box<dyn LeaseState>,
        hold: Box<dyn Send + Sync>,
    ) -> Lease {
        Lease {
            lost,
            state: Some(state),
            _hold: Some(hold),
        }
    }

    /// Why the lease was lost, if it was.
    pub fn lost_reason(&self) -> Option<String> {
        self.lost.borrow().clone()
    }

    /// Resolves when the lease is lost, with why; never for a lease that cannot be lost.
    pub async fn lost(&self) -> String {
        let mut lost = self.lost.clone();
        let waited = lost
            .wait_for(Option::is_some)
            .await
            .map(|reason| reason.clone().unwrap_or_default());
        match waited {
            Ok(reason) => reason,
            // The sender went without a word: nothing can tell any more, so it is lost.
            Err(_) => {
                if self.state.is_none() {
                    std::future::pending::<()>().await;
                }
                "the lease's keeper stopped".to_owned()
            }
        }
    }

    /// Whether a state shared with the other nodes is kept with the lease.
    pub fn keeps_state(&self) -> bool {
        self.state.is_some()
    }

    /// The state the last holder saved (None: none saved, or none kept).
    pub async fn load_state(&self) -> Result<Option<String>, StoreError> {
        match &self.state {
            Some(s) => s.load().await,
            None => Ok(None),
        }
    }

    /// Saves the state for the next holder (see [`LeaseState::save`]).
    pub async fn save_state(&self, state: &str) -> Result<(), StoreError> {
        match &self.state {
            Some(s) => s.save(state).await,
            None => Err(StoreError::Backend(
                "this store keeps no state with its leases".into(),
            )),
        }
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("lost", &*self.lost.borrow())
            .field("keeps_state", &self.keeps_state())
            .finish()
    }
}

/// The outcome of one try to take a lease.
#[derive(Debug)]
pub enum LeaseTry {
    Taken(Lease),
    /// Another node holds it (named when the backend can tell).
    HeldBy(Option<String>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_sole_lease_is_never_lost() {
        let lease = Lease::sole();
        assert_eq!(lease.lost_reason(), None);
        assert!(!lease.keeps_state());
        assert!(
            tokio::time::timeout(Duration::from_secs(3600), lease.lost())
                .await
                .is_err(),
            "a sole lease was lost"
        );
        assert!(lease.save_state("x").await.is_err());
        assert_eq!(lease.load_state().await.unwrap(), None);
    }
}
