//! Who is asking: the organization every lookup is scoped to, and what the events a
//! request causes record about it.

use std::cell::OnceCell;
use syncjobs_domain::Metadata;
use uuid::Uuid;

/// An authenticated client: an organization and the API key it used.
#[derive(Debug)]
pub struct Caller {
    pub organization_id: Uuid,
    pub key_id: Uuid,
    /// One id per request, recorded as the correlation id of every event it causes; made
    /// when the first event needs it (most requests only read, and a v7 id is not free).
    request_id: OnceCell<Uuid>,
}

impl Caller {
    pub fn new(organization_id: Uuid, key_id: Uuid) -> Self {
        Caller {
            organization_id,
            key_id,
            request_id: OnceCell::new(),
        }
    }

    /// The request's id: the same for every event the request causes.
    pub fn request_id(&self) -> Uuid {
        *self.request_id.get_or_init(Uuid::now_v7)
    }

    /// The principal recorded in events (`api-key:<key id>`): traceable, not secret.
    pub fn principal(&self) -> String {
        format!("api-key:{}", self.key_id)
    }

    pub fn metadata(&self) -> Metadata {
        let request_id = self.request_id();
        Metadata::caused_by(self.principal())
            .with_causation(request_id)
            .with_correlation(request_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_of_a_request_carries_the_same_request_id() {
        let caller = Caller::new(Uuid::now_v7(), Uuid::now_v7());
        let (first, second) = (caller.metadata(), caller.metadata());
        assert_eq!(first.correlation_id, second.correlation_id);
        assert_eq!(first.causation_id, Some(caller.request_id()));
        let other = Caller::new(caller.organization_id, caller.key_id);
        assert_ne!(
            other.request_id(),
            caller.request_id(),
            "one id per request"
        );
    }
}
