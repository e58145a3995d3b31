//! Webhooks, Airweave's way (its `/webhooks` routes, which Svix serves there): an
//! organization's subscriptions are events of their own aggregate
//! (`syncjobs_domain::webhook`), folded into the read model; deliveries are signed the
//! Standard Webhooks way ([`sign`]).

pub mod dispatch;
pub mod sign;
