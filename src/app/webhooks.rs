//! Webhook subscriptions: create, patch and delete one of the caller's organization (each a
//! command on the subscription's own stream), answered from the read model once it shows
//! the append.

use super::{last_position, App, Caller, Error};
use crate::webhooks::sign;
use chrono::{DateTime, Utc};
use syncjobs_actors::command;
use syncjobs_domain::events::stream;
use syncjobs_domain::webhook::{DeliveryCommand, SubscriptionPatch, WebhookCommand};
use syncjobs_domain::WebhookDelivery;
use syncjobs_domain::WebhookSubscription as Aggregate;
use syncjobs_projections::WebhookSubscription;
use uuid::Uuid;

/// What a subscriber asks for when it creates a subscription.
#[derive(Debug, Clone, Default)]
pub struct NewSubscription {
    pub url: String,
    pub event_types: Vec<String>,
    pub description: Option<String>,
    /// A secret of the subscriber's own (`whsec_<base64>`); one is generated without it.
    pub secret: Option<String>,
    /// Also deliver the organization's messages recorded since then (not in the future).
    pub recover_since: Option<DateTime<Utc>>,
}

impl App {
    /// Creates a subscription for the caller's organization.
    pub async fn create_webhook_subscription(
        &self,
        caller: &Caller,
        new: NewSubscription,
    ) -> Result<WebhookSubscription, Error> {
        let secret = match &new.secret {
            Some(given) => sign::normalize_secret(given)?,
            None => sign::generate_secret(),
        };
        let id = Uuid::now_v7();
        let create = WebhookCommand::Create {
            subscription_id: id,
            organization_id: caller.organization_id,
            url: new.url.clone(),
            event_types: new.event_types.clone(),
            description: new.description.clone(),
            secret: secret.clone(),
            recover_since: new.recover_since,
            now: self.clock.now(),
        };
        let recorded = self
            .execute::<Aggregate>(caller, &stream::webhook_subscription(id), &create)
            .await?;
        let position = last_position(&recorded);
        self.settle(position).await;
        tracing::info!(subscription_id = %id, "webhook subscription created");
        let at = recorded
            .first()
            .map_or_else(|| self.clock.now(), |r| r.recorded_at);
        let shown = self.webhook_subscription(caller, id).await;
        match shown {
            Ok(s) => Ok(s),
            // The read model lags past the read-your-writes bound: answer what was recorded.
            Err(Error::WebhookSubscriptionNotFound) => Ok(WebhookSubscription {
                id,
                organization_id: caller.organization_id,
                url: new.url,
                event_types: new.event_types,
                disabled: false,
                description: new.description,
                secret,
                created_at: at,
                updated_at: at,
                created_position: position,
                disabled_reason: None,
                failing_since: None,
            }),
            Err(e) => Err(e),
        }
    }

    /// The caller's subscription `id` (another organization's is not found).
    pub async fn webhook_subscription(
        &self,
        caller: &Caller,
        id: Uuid,
    ) -> Result<WebhookSubscription, Error> {
        self.projection
            .read(async |m| {
                m.webhook_subscription(caller.organization_id, id)
                    .await?
                    .ok_or(Error::WebhookSubscriptionNotFound)
            })
            .await
    }

    /// Patches the caller's subscription `id`; returns it as it is afterwards.
    pub async fn update_webhook_subscription(
        &self,
        caller: &Caller,
        id: Uuid,
        patch: SubscriptionPatch,
    ) -> Result<WebhookSubscription, Error> {
        let before = self.webhook_subscription(caller, id).await?;
        let update = WebhookCommand::Update {
            organization_id: caller.organization_id,
            patch: patch.clone(),
            now: self.clock.now(),
        };
        let recorded = self
            .execute::<Aggregate>(caller, &stream::webhook_subscription(id), &update)
            .await?;
        self.settle(last_position(&recorded)).await;
        if !recorded.is_empty() {
            tracing::info!(subscription_id = %id, "webhook subscription updated");
        }
        match self.webhook_subscription(caller, id).await {
            Ok(s) if recorded.is_empty() || s.updated_at >= recorded[0].recorded_at => Ok(s),
            Ok(_) | Err(Error::WebhookSubscriptionNotFound) => {
                // The read model lags: the row as it was, patched as recorded.
                let mut s = before;
                if let Some(url) = patch.url {
                    s.url = url;
                }
                if let Some(types) = patch.event_types {
                    s.event_types = types;
                }
                if let Some(disabled) = patch.disabled {
                    s.disabled = disabled;
                    s.disabled_reason = None;
                    s.failing_since = None;
                }
                if let Some(d) = patch.description {
                    s.description = Some(d);
                }
                if let Some(r) = recorded.first() {
                    s.updated_at = r.recorded_at;
                }
                Ok(s)
            }
            Err(e) => Err(e),
        }
    }

    /// Deletes the caller's subscription `id`; returns it as it was.
    pub async fn delete_webhook_subscription(
        &self,
        caller: &Caller,
        id: Uuid,
    ) -> Result<WebhookSubscription, Error> {
        let before = self.webhook_subscription(caller, id).await?;
        let delete = WebhookCommand::Delete {
            organization_id: caller.organization_id,
        };
        let recorded = self
            .execute::<Aggregate>(caller, &stream::webhook_subscription(id), &delete)
            .await?;
        self.settle(last_position(&recorded)).await;
        tracing::info!(subscription_id = %id, "webhook subscription deleted");
        Ok(before)
    }

    /// Tries again every failed delivery to the caller's subscription `id` of a message
    /// recorded in `[since, until)` (Airweave's `recover`): each becomes due now and goes
    /// through the retry schedule from its start. Returns how many were recovered.
    pub async fn recover_webhook_messages(
        &self,
        caller: &Caller,
        id: Uuid,
        since: DateTime<Utc>,
        until: Option<DateTime<Utc>>,
    ) -> Result<usize, Error> {
        self.webhook_subscription(caller, id).await?;
        let failed = self
            .projection
            .read(async |m| m.failed_webhook_deliveries(id, since, until).await)
            .await?;
        let meta = caller.metadata();
        let mut recovered = 0;
        let mut position = 0;
        for message_id in failed {
            let recover = DeliveryCommand::Recover {
                message_id,
                subscription_id: id,
                organization_id: caller.organization_id,
            };
            let executed = command::execute::<WebhookDelivery>(
                &*self.store,
                &*self.clock,
                &stream::webhook_delivery(message_id, id),
                None,
                &recover,
                &meta,
            )
            .await?;
            if !executed.events.is_empty() {
                recovered += 1;
                position = executed.position();
            }
        }
        self.settle(position).await;
        tracing::info!(subscription_id = %id, recovered, "failed webhook deliveries recovered");
        Ok(recovered)
    }
}
