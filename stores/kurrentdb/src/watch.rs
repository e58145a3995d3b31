//! The node's watcher: one subscription to `$all`, filtered to the store's streams, whose
//! events move [`syncjobs_domain::EventStore::watch_head`]. It only wakes followers (they
//! read on from their own position with `read_all`), so what matters is that every commit
//! is eventually announced, not which event carries the news.
//!
//! A dropped subscription (the server restarting, a network cut) is made again after a
//! pause from the last position it reported, an event's or a checkpoint's (a filtered
//! subscription sends checkpoints while it scans past other streams' events), and the head
//! is read again, so a commit made while it was away is announced too. A client that died
//! on a failed connect is rebuilt first (see `store`).

use crate::error::{client_is_dead, store_error};
use crate::store::Shared;
use kurrentdb::{Position, StreamPosition, SubscribeToAllOptions, SubscriptionEvent};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The first pause before subscribing again, doubled after each failure up to
/// [`MAX_PAUSE`], and back to the first after an event.
const FIRST_PAUSE: Duration = Duration::from_millis(200);
const MAX_PAUSE: Duration = Duration::from_secs(5);

/// Where a subscription picks up after `position` (exclusive; `Start` for none yet).
pub(crate) fn resume_from(position: Position) -> StreamPosition<Position> {
    if position == Position::start() {
        StreamPosition::Start
    } else {
        StreamPosition::Position(position)
    }
}

/// The next pause after one of `pause`.
pub(crate) fn next_pause(pause: Duration) -> Duration {
    (pause * 2).min(MAX_PAUSE)
}

/// Follows `$all` from after `from` until `stop`.
pub(crate) async fn run(shared: Arc<Shared>, mut from: Position, stop: CancellationToken) {
    let mut pause = FIRST_PAUSE;
    let mut first = true;
    loop {
        if !first {
            // Whatever committed while no subscription was listening.
            match shared.read_head().await {
                Ok(head) => shared.committed(head),
                Err(e) => {
                    tracing::warn!(error = %store_error(&e), "cannot read the KurrentDB head")
                }
            }
        }
        first = false;
        let (generation, client) = shared.client();
        let options = SubscribeToAllOptions::default()
            .position(resume_from(from))
            .filter(shared.scope.filter());
        let mut subscription = client.subscribe_to_all(&options).await;
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => return,
                next = subscription.next_subscription_event() => next,
            };
            match next {
                Ok(SubscriptionEvent::EventAppeared(event)) => {
                    let position = event.get_original_event().position;
                    from = from.max(position);
                    shared.committed(position.commit);
                    pause = FIRST_PAUSE;
                }
                Ok(SubscriptionEvent::Checkpoint(position)) => from = from.max(position),
                Ok(SubscriptionEvent::CaughtUp(_)) => {
                    tracing::debug!(position = %from, "KurrentDB subscription live");
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(
                        error = %store_error(&e),
                        position = %from,
                        ?pause,
                        "KurrentDB subscription dropped; subscribing again"
                    );
                    if client_is_dead(&e) {
                        shared.replace_dead(generation);
                    }
                    break;
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        pause = next_pause(pause);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscription_resumes_after_the_last_position_it_reported() {
        assert_eq!(resume_from(Position::start()), StreamPosition::Start);
        let p = Position {
            commit: 123_456,
            prepare: 123_456,
        };
        assert_eq!(resume_from(p), StreamPosition::Position(p));
    }

    #[test]
    fn pauses_between_subscriptions_grow_and_are_bounded() {
        let mut pause = FIRST_PAUSE;
        let mut seen = vec![pause];
        for _ in 0..8 {
            pause = next_pause(pause);
            seen.push(pause);
        }
        assert!(seen.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(seen[1], Duration::from_millis(400));
        assert_eq!(*seen.last().unwrap(), MAX_PAUSE);
    }
}
