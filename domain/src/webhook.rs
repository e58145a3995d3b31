//! A webhook subscription as an aggregate: where an organization wants its events POSTed,
//! which of them, and the secret they are signed with (Airweave's `/webhooks/subscriptions`,
//! which Svix's endpoints serve there).
//!
//! Each subscription is a stream of its own (`webhook_subscription-<id>`): created, updated
//! (a patch of any of its fields), deleted. It belongs to one organization, and every command
//! names the caller's organization, so that another organization's subscription is "not
//! found" in the decision itself, not only in the reads.
//!
//! Ids and secrets are chosen by the caller (the secret is random bytes the app draws), so
//! `decide` stays pure.

use crate::aggregate::{Aggregate, FoldError};
use crate::events::{
    CollectionEvent, Event, RecordedEvent, SourceConnectionEvent, SyncJobEvent, WebhookEvent,
};
use uuid::Uuid;

/// The prefix of a Standard Webhooks secret (`whsec_<base64>`).
pub const SECRET_PREFIX: &str = "whsec_";
/// The longest URL a subscription takes (Svix's limit on an endpoint's URL).
pub const MAX_URL_LEN: usize = 2048;
/// The longest description kept.
pub const MAX_DESCRIPTION_LEN: usize = 1024;

/// The event types a subscription may ask for: Airweave's webhook event types that syncjobs
/// records something for (`source_connection.auth_completed` and the search/query/
/// organization families have no event here yet, so asking for them is refused rather than
/// accepted and never delivered).
pub const EVENT_TYPES: [&str; 11] = [
    "sync.pending",
    "sync.running",
    "sync.cancelling",
    "sync.completed",
    "sync.failed",
    "sync.cancelled",
    "collection.created",
    "collection.updated",
    "collection.deleted",
    "source_connection.created",
    "source_connection.deleted",
];

/// The webhook event type an event of the log becomes, if any: each change of a job's
/// status (Airweave's `SyncLifecycleEvent`), the creation, update and deletion of
/// collections, and the creation and deletion of source connections, except a deletion with
/// the connection's collection (Airweave announces only the collection's). Progress reports
/// and everything else become none.
pub fn webhook_event_type(event: &Event) -> Option<&'static str> {
    Some(match event {
        Event::Job(e) => match e {
            // A resumed job (its worker was lost) is pending again: a status change.
            SyncJobEvent::JobCreated { .. } | SyncJobEvent::JobResumed { .. } => "sync.pending",
            SyncJobEvent::JobStarted { .. } => "sync.running",
            SyncJobEvent::CancelRequested { .. } => "sync.cancelling",
            SyncJobEvent::JobCompleted { .. } => "sync.completed",
            SyncJobEvent::JobFailed { .. } => "sync.failed",
            SyncJobEvent::Cancelled { .. } | SyncJobEvent::ForceCancelled { .. } => {
                "sync.cancelled"
            }
            SyncJobEvent::ProgressRecorded { .. } => return None,
        },
        Event::Collection(CollectionEvent::CollectionCreated { .. }) => "collection.created",
        Event::Collection(CollectionEvent::CollectionUpdated { .. }) => "collection.updated",
        Event::Collection(CollectionEvent::CollectionDeleted { .. }) => "collection.deleted",
        Event::SourceConnection(SourceConnectionEvent::SourceConnectionCreated { .. }) => {
            "source_connection.created"
        }
        Event::SourceConnection(SourceConnectionEvent::SourceConnectionDeleted {
            with_collection,
            ..
        }) => match with_collection {
            true => return None,
            false => "source_connection.deleted",
        },
        Event::Access(_) | Event::Webhook(_) | Event::Worker(_) => return None,
    })
}

/// Checks a delivery URL: absolute `http` or `https` with a host, no credentials in it, at
/// most [`MAX_URL_LEN`] characters. The error says what is wrong, in the user's words.
pub fn check_url(url: &str) -> Result<(), WebhookError> {
    if url.len() > MAX_URL_LEN {
        return Err(WebhookError::InvalidUrl(format!(
            "url must be at most {MAX_URL_LEN} characters"
        )));
    }
    // The URL parser silently drops tabs and line breaks and trims spaces: what is stored
    // must be what is called, so such a URL is refused (and never echoed back).
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(WebhookError::InvalidUrl(
            "url must not contain spaces or control characters".into(),
        ));
    }
    let bad = |why: &str| WebhookError::InvalidUrl(format!("{why}: {url:.200}"));
    // As written, not as the parser normalises it (`HTTP://` would pass that).
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(bad("url must use http or https"));
    }
    let parsed = url::Url::parse(url).map_err(|e| bad(&format!("url is not valid ({e})")))?;
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad("url must name a host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(bad("url must not carry credentials"));
    }
    Ok(())
}

/// Checks a list of event types: at least one, each known ([`EVENT_TYPES`]).
pub fn check_event_types(types: &[String]) -> Result<(), WebhookError> {
    if types.is_empty() {
        return Err(WebhookError::NoEventTypes);
    }
    match types.iter().find(|t| !EVENT_TYPES.contains(&t.as_str())) {
        Some(unknown) => Err(WebhookError::UnknownEventType(unknown.clone())),
        None => Ok(()),
    }
}

/// The subscription as its stream says it is now.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscriptionState {
    pub organization_id: Uuid,
    pub url: String,
    pub event_types: Vec<String>,
    pub disabled: bool,
    pub description: Option<String>,
    pub secret: String,
}

/// The stream of one subscription.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WebhookSubscription {
    pub version: u64,
    /// None before its creation and after its deletion.
    pub live: Option<SubscriptionState>,
    pub deleted: bool,
}

/// A patch: each `Some` field replaces the subscription's.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SubscriptionPatch {
    pub url: Option<String>,
    pub event_types: Option<Vec<String>>,
    pub disabled: Option<bool>,
    pub description: Option<String>,
}

impl SubscriptionPatch {
    pub fn is_empty(&self) -> bool {
        self.url.is_none()
            && self.event_types.is_none()
            && self.disabled.is_none()
            && self.description.is_none()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum WebhookCommand {
    Create {
        subscription_id: Uuid,
        organization_id: Uuid,
        url: String,
        event_types: Vec<String>,
        description: Option<String>,
        /// `whsec_<base64>`, already checked and normalised by the caller.
        secret: String,
    },
    Update {
        organization_id: Uuid,
        patch: SubscriptionPatch,
    },
    Delete {
        organization_id: Uuid,
    },
}

/// Why a subscription command was refused. The API words these its own way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("no such subscription")]
    NotFound,
    #[error("the subscription exists already")]
    AlreadyExists,
    #[error("{0}")]
    InvalidUrl(String),
    #[error("event_types cannot be empty")]
    NoEventTypes,
    #[error("unknown event type {0:?}")]
    UnknownEventType(String),
    #[error("description must be at most {MAX_DESCRIPTION_LEN} characters")]
    DescriptionTooLong,
}

fn check_description(d: Option<&str>) -> Result<(), WebhookError> {
    match d {
        Some(d) if d.chars().count() > MAX_DESCRIPTION_LEN => Err(WebhookError::DescriptionTooLong),
        _ => Ok(()),
    }
}

impl WebhookSubscription {
    /// The live subscription if it is `organization_id`'s.
    fn owned_by(&self, organization_id: Uuid) -> Result<&SubscriptionState, WebhookError> {
        self.live
            .as_ref()
            .filter(|s| s.organization_id == organization_id)
            .ok_or(WebhookError::NotFound)
    }
}

impl Aggregate for WebhookSubscription {
    const NAME: &'static str = "webhook subscription";
    type Event = WebhookEvent;
    type Command = WebhookCommand;
    type Error = WebhookError;

    fn initial() -> Self {
        WebhookSubscription::default()
    }

    fn version(&self) -> u64 {
        self.version
    }

    fn evolve(&mut self, e: &RecordedEvent) -> Result<(), FoldError> {
        let Event::Webhook(event) = &e.event else {
            return Err(FoldError::Foreign(e.event_type()));
        };
        let does_not_fit = |why| FoldError::DoesNotFit {
            event: e.event_type(),
            why,
        };
        match event {
            WebhookEvent::WebhookSubscriptionCreated {
                organization_id,
                url,
                event_types,
                description,
                secret,
                ..
            } => {
                if self.live.is_some() || self.deleted {
                    return Err(does_not_fit("the subscription exists already"));
                }
                self.live = Some(SubscriptionState {
                    organization_id: *organization_id,
                    url: url.clone(),
                    event_types: event_types.clone(),
                    disabled: false,
                    description: description.clone(),
                    secret: secret.clone(),
                });
            }
            WebhookEvent::WebhookSubscriptionUpdated {
                url,
                event_types,
                disabled,
                description,
                ..
            } => {
                let Some(s) = self.live.as_mut() else {
                    return Err(does_not_fit("no such subscription"));
                };
                if let Some(url) = url {
                    s.url = url.clone();
                }
                if let Some(types) = event_types {
                    s.event_types = types.clone();
                }
                if let Some(disabled) = disabled {
                    s.disabled = *disabled;
                }
                if let Some(d) = description {
                    s.description = Some(d.clone());
                }
            }
            WebhookEvent::WebhookSubscriptionDeleted { .. } => {
                if self.live.take().is_none() {
                    return Err(does_not_fit("no such subscription"));
                }
                self.deleted = true;
            }
            WebhookEvent::WebhookAttemptRecorded { .. }
            | WebhookEvent::WebhookDeliveryRecovered { .. } => {
                return Err(FoldError::Foreign(e.event_type()))
            }
        }
        self.version = e.version;
        Ok(())
    }

    fn decide(&self, command: &WebhookCommand) -> Result<Vec<WebhookEvent>, WebhookError> {
        match command {
            WebhookCommand::Create {
                subscription_id,
                organization_id,
                url,
                event_types,
                description,
                secret,
            } => {
                if self.version > 0 {
                    return Err(WebhookError::AlreadyExists);
                }
                check_url(url)?;
                check_event_types(event_types)?;
                check_description(description.as_deref())?;
                Ok(vec![WebhookEvent::WebhookSubscriptionCreated {
                    subscription_id: *subscription_id,
                    organization_id: *organization_id,
                    url: url.clone(),
                    event_types: event_types.clone(),
                    description: description.clone(),
                    secret: secret.clone(),
                }])
            }
            WebhookCommand::Update {
                organization_id,
                patch,
            } => {
                let s = self.owned_by(*organization_id)?;
                if let Some(url) = &patch.url {
                    check_url(url)?;
                }
                if let Some(types) = &patch.event_types {
                    check_event_types(types)?;
                }
                check_description(patch.description.as_deref())?;
                // Only what changes is recorded; a patch that changes nothing records nothing.
                let update = WebhookEvent::WebhookSubscriptionUpdated {
                    organization_id: *organization_id,
                    url: patch.url.clone().filter(|u| *u != s.url),
                    event_types: patch.event_types.clone().filter(|t| *t != s.event_types),
                    disabled: patch.disabled.filter(|d| *d != s.disabled),
                    description: patch
                        .description
                        .clone()
                        .filter(|d| Some(d) != s.description.as_ref()),
                };
                match &update {
                    WebhookEvent::WebhookSubscriptionUpdated {
                        url: None,
                        event_types: None,
                        disabled: None,
                        description: None,
                        ..
                    } => Ok(vec![]),
                    _ => Ok(vec![update]),
                }
            }
            WebhookCommand::Delete { organization_id } => {
                self.owned_by(*organization_id)?;
                Ok(vec![WebhookEvent::WebhookSubscriptionDeleted {
                    organization_id: *organization_id,
                }])
            }
        }
    }
}

/// The delivery of one message to one subscription: its attempts, each recorded once, in
/// turn, until one succeeds or the last one fails. Recording them as events (rather than in
/// read-model tables only) is what keeps a delivery exact across a restart and a rebuild
/// of the read model: the log says which messages were delivered, so none is sent again
/// after a rebuild, and a pending retry keeps its due time; and two dispatchers racing on
/// one delivery cannot both record an attempt (the expected version decides).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WebhookDelivery {
    pub version: u64,
    /// It succeeded, or its last attempt failed: nothing more is sent.
    pub done: bool,
    /// Its last attempt failed and no other is due.
    pub failed: bool,
    /// Attempts made so far (the stream also holds its recoveries).
    pub attempts: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum DeliveryCommand {
    /// Record one attempt (the dispatcher made it; `decide` checks it is this delivery's
    /// next).
    RecordAttempt(WebhookEvent),
    /// Try a failed delivery again; nothing to do for one that has not failed.
    Recover {
        message_id: Uuid,
        subscription_id: Uuid,
        organization_id: Uuid,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    #[error("the delivery has ended")]
    Ended,
    #[error("attempt {0} is not the delivery's next")]
    OutOfTurn(u32),
    #[error("not an attempt")]
    NotAnAttempt,
}

impl Aggregate for WebhookDelivery {
    const NAME: &'static str = "webhook delivery";
    type Event = WebhookEvent;
    type Command = DeliveryCommand;
    type Error = DeliveryError;

    fn initial() -> Self {
        WebhookDelivery::default()
    }

    fn version(&self) -> u64 {
        self.version
    }

    fn evolve(&mut self, e: &RecordedEvent) -> Result<(), FoldError> {
        let does_not_fit = |why| FoldError::DoesNotFit {
            event: e.event_type(),
            why,
        };
        match &e.event {
            Event::Webhook(WebhookEvent::WebhookAttemptRecorded {
                status_code,
                next_attempt_at,
                ..
            }) => {
                if self.done {
                    return Err(does_not_fit("the delivery has ended"));
                }
                self.done = next_attempt_at.is_none();
                self.failed = self.done && !(200..300).contains(status_code);
                self.attempts = self.attempts.saturating_add(1);
            }
            Event::Webhook(WebhookEvent::WebhookDeliveryRecovered { .. }) => {
                if !self.failed {
                    return Err(does_not_fit("the delivery has not failed"));
                }
                self.done = false;
                self.failed = false;
            }
            _ => return Err(FoldError::Foreign(e.event_type())),
        }
        self.version = e.version;
        Ok(())
    }

    fn decide(&self, command: &DeliveryCommand) -> Result<Vec<WebhookEvent>, DeliveryError> {
        match command {
            DeliveryCommand::RecordAttempt(event) => {
                let WebhookEvent::WebhookAttemptRecorded { attempt, .. } = event else {
                    return Err(DeliveryError::NotAnAttempt);
                };
                if self.done {
                    return Err(DeliveryError::Ended);
                }
                if *attempt != self.attempts.saturating_add(1) {
                    return Err(DeliveryError::OutOfTurn(*attempt));
                }
                Ok(vec![event.clone()])
            }
            DeliveryCommand::Recover {
                message_id,
                subscription_id,
                organization_id,
            } => Ok(if self.failed {
                vec![WebhookEvent::WebhookDeliveryRecovered {
                    message_id: *message_id,
                    subscription_id: *subscription_id,
                    organization_id: *organization_id,
                }]
            } else {
                vec![]
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::AggregateTest;

    const ORG: Uuid = Uuid::from_u128(7);
    const OTHER: Uuid = Uuid::from_u128(8);
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn create(url: &str, types: &[&str]) -> WebhookCommand {
        WebhookCommand::Create {
            subscription_id: Uuid::from_u128(1),
            organization_id: ORG,
            url: url.into(),
            event_types: types.iter().map(|t| t.to_string()).collect(),
            description: None,
            secret: SECRET.into(),
        }
    }

    fn created() -> WebhookEvent {
        WebhookEvent::WebhookSubscriptionCreated {
            subscription_id: Uuid::from_u128(1),
            organization_id: ORG,
            url: "https://example.com/hook".into(),
            event_types: vec!["sync.completed".into()],
            description: None,
            secret: SECRET.into(),
        }
    }

    #[test]
    fn a_subscription_is_created_once_with_a_valid_url_and_known_event_types() {
        let s = AggregateTest::<WebhookSubscription>::given([])
            .when(create("https://example.com/hook", &["sync.completed"]))
            .then([created()]);
        assert_eq!(s.live.as_ref().map(|l| l.disabled), Some(false));
        AggregateTest::<WebhookSubscription>::given([created()])
            .when(create("https://example.com/hook", &["sync.completed"]))
            .then_err(WebhookError::AlreadyExists);

        let refused = |url: &str, types: &[&str]| {
            AggregateTest::<WebhookSubscription>::given([])
                .when(create(url, types))
                .rejected()
        };
        for url in [
            "ftp://example.com/x",
            "not a url",
            "/relative",
            "https://user:pw@example.com/",
            "file:///etc/passwd",
            "http://exa\tmple.com/",
            " https://example.com/",
            "HTTPS://example.com/",
        ] {
            assert!(
                matches!(
                    refused(url, &["sync.completed"]),
                    WebhookError::InvalidUrl(_)
                ),
                "{url}"
            );
        }
        assert_eq!(
            refused("http://127.0.0.1:9/x", &["sync.completed", "sync.exploded"]),
            WebhookError::UnknownEventType("sync.exploded".into())
        );
        assert_eq!(
            refused("http://127.0.0.1:9/x", &[]),
            WebhookError::NoEventTypes
        );
    }

    #[test]
    fn a_patch_records_only_what_changes_and_only_for_its_organization() {
        let given = AggregateTest::<WebhookSubscription>::given([created()]);
        let patch = |p: SubscriptionPatch| WebhookCommand::Update {
            organization_id: ORG,
            patch: p,
        };
        let s = given
            .when(patch(SubscriptionPatch {
                url: Some("https://example.com/hook".into()), // unchanged
                disabled: Some(true),
                ..Default::default()
            }))
            .then([WebhookEvent::WebhookSubscriptionUpdated {
                organization_id: ORG,
                url: None,
                event_types: None,
                disabled: Some(true),
                description: None,
            }]);
        assert_eq!(s.live.map(|l| l.disabled), Some(true));
        given
            .when(patch(SubscriptionPatch {
                disabled: Some(false),
                ..Default::default()
            }))
            .then([]);
        given
            .when(patch(SubscriptionPatch {
                event_types: Some(vec!["nope".into()]),
                ..Default::default()
            }))
            .then_err(WebhookError::UnknownEventType("nope".into()));
        given
            .when(WebhookCommand::Update {
                organization_id: OTHER,
                patch: SubscriptionPatch::default(),
            })
            .then_err(WebhookError::NotFound);
        given
            .when(WebhookCommand::Delete {
                organization_id: OTHER,
            })
            .then_err(WebhookError::NotFound);
    }

    #[test]
    fn a_deleted_subscription_is_gone_for_good() {
        let deleted = AggregateTest::<WebhookSubscription>::given([
            created(),
            WebhookEvent::WebhookSubscriptionDeleted {
                organization_id: ORG,
            },
        ]);
        deleted
            .when(WebhookCommand::Delete {
                organization_id: ORG,
            })
            .then_err(WebhookError::NotFound);
        deleted
            .when(create("https://example.com/hook", &["sync.completed"]))
            .then_err(WebhookError::AlreadyExists);
        assert!(matches!(
            AggregateTest::<WebhookSubscription>::fold_error([created(), created()]),
            FoldError::DoesNotFit { .. }
        ));
    }

    fn attempt(n: u32, next: Option<i64>) -> WebhookEvent {
        WebhookEvent::WebhookAttemptRecorded {
            message_id: Uuid::from_u128(3),
            subscription_id: Uuid::from_u128(1),
            organization_id: ORG,
            attempt: n,
            url: "https://example.com/hook".into(),
            status_code: if next.is_some() { 500 } else { 200 },
            response: String::new(),
            next_attempt_at: next.map(crate::testkit::at),
        }
    }

    #[test]
    fn attempts_are_recorded_in_turn_until_one_ends_the_delivery() {
        let s = AggregateTest::<WebhookDelivery>::given([])
            .when(DeliveryCommand::RecordAttempt(attempt(1, Some(5))))
            .then([attempt(1, Some(5))]);
        assert!(!s.done);
        let retrying = AggregateTest::<WebhookDelivery>::given([attempt(1, Some(5))]);
        retrying
            .when(DeliveryCommand::RecordAttempt(attempt(1, Some(5))))
            .then_err(DeliveryError::OutOfTurn(1));
        retrying
            .when(DeliveryCommand::RecordAttempt(attempt(3, None)))
            .then_err(DeliveryError::OutOfTurn(3));
        let s = retrying
            .when(DeliveryCommand::RecordAttempt(attempt(2, None)))
            .then([attempt(2, None)]);
        assert!(s.done);
        AggregateTest::<WebhookDelivery>::given([attempt(1, Some(5)), attempt(2, None)])
            .when(DeliveryCommand::RecordAttempt(attempt(3, None)))
            .then_err(DeliveryError::Ended);
    }

    #[test]
    fn only_a_failed_delivery_is_recovered_and_its_attempts_go_on() {
        let recover = DeliveryCommand::Recover {
            message_id: Uuid::from_u128(3),
            subscription_id: Uuid::from_u128(1),
            organization_id: ORG,
        };
        let recovered = WebhookEvent::WebhookDeliveryRecovered {
            message_id: Uuid::from_u128(3),
            subscription_id: Uuid::from_u128(1),
            organization_id: ORG,
        };
        // Failed: the last attempt (500) had no next.
        let mut failed_last = attempt(2, None);
        if let WebhookEvent::WebhookAttemptRecorded { status_code, .. } = &mut failed_last {
            *status_code = 500;
        }
        let failed = AggregateTest::<WebhookDelivery>::given([attempt(1, Some(5)), failed_last]);
        let s = failed.when(recover.clone()).then([recovered.clone()]);
        assert!(!s.done && !s.failed && s.attempts == 2);
        AggregateTest::<WebhookDelivery>::given([attempt(1, Some(5)), attempt(2, None)])
            .when(recover.clone())
            .then([]);
        AggregateTest::<WebhookDelivery>::given([attempt(1, Some(5))])
            .when(recover)
            .then([]);
        let mut again = attempt(2, None);
        if let WebhookEvent::WebhookAttemptRecorded { status_code, .. } = &mut again {
            *status_code = 500;
        }
        AggregateTest::<WebhookDelivery>::given([attempt(1, Some(5)), again, recovered])
            .when(DeliveryCommand::RecordAttempt(attempt(3, None)))
            .then([attempt(3, None)]);
    }

    #[test]
    fn lifecycle_events_map_to_airweaves_webhook_types() {
        use crate::events::EntityCounts;
        let job = |e: SyncJobEvent| webhook_event_type(&Event::Job(e));
        assert_eq!(
            job(SyncJobEvent::JobStarted { worker: "w".into() }),
            Some("sync.running")
        );
        assert_eq!(
            job(SyncJobEvent::ProgressRecorded {
                counts: EntityCounts::default()
            }),
            None
        );
        assert_eq!(
            job(SyncJobEvent::ForceCancelled {
                error: "forced".into(),
                timeout_seconds: 1,
                requested_at: crate::testkit::at(0),
                counts: EntityCounts::default(),
                counts_reconciled: false,
            }),
            Some("sync.cancelled")
        );
        assert_eq!(
            job(SyncJobEvent::JobResumed {
                attempt: 1,
                lost_worker: "w".into(),
                last_seen: None,
                counts: EntityCounts::default(),
                counts_reconciled: true,
                handed_back: false,
            }),
            Some("sync.pending"),
            "a resumed job is pending again"
        );
        assert_eq!(
            webhook_event_type(&Event::Worker(crate::WorkerEvent::WorkerStopped {
                id: "w".into(),
                handed_back: 0,
            })),
            None
        );
        let deleted = |with_collection| {
            webhook_event_type(&Event::SourceConnection(
                SourceConnectionEvent::SourceConnectionDeleted {
                    source_connection_id: Uuid::nil(),
                    with_collection,
                },
            ))
        };
        assert_eq!(deleted(false), Some("source_connection.deleted"));
        assert_eq!(
            deleted(true),
            None,
            "a collection's deletion announces only itself"
        );
        assert_eq!(
            webhook_event_type(&Event::Collection(CollectionEvent::CollectionUpdated {
                collection_id: Uuid::nil(),
                name: None,
            })),
            Some("collection.updated")
        );
        for t in [
            "sync.pending",
            "sync.cancelling",
            "collection.updated",
            "collection.deleted",
        ] {
            assert!(EVENT_TYPES.contains(&t));
        }
    }
}
