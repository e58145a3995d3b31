//! The node's listener: one connection of its own `LISTEN`s on [`NOTIFY_CHANNEL`], and every
//! notification (a commit's last position, from any node) moves the head that followers
//! watch. When the connection drops it reconnects with backoff, and once listening again
//! reads the head, so whatever committed while it was away wakes the followers too: they
//! then read on from their own position and miss nothing.

use crate::store::Shared;
use crate::writer::NOTIFY_CHANNEL;
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use syncjobs_domain::redact::redact;
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::CancellationToken;

/// The listener's `application_name`, so an operator (or a test) can find its connection.
pub const LISTENER_NAME: &str = "syncjobs-listen";

const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Runs until `stop` is cancelled.
pub(crate) async fn run(
    shared: Arc<Shared>,
    mut config: tokio_postgres::Config,
    stop: CancellationToken,
) {
    config.application_name(LISTENER_NAME);
    let mut backoff = FIRST_BACKOFF;
    loop {
        let listened = tokio::select! {
            _ = stop.cancelled() => return,
            r = listen(&shared, &config) => r,
        };
        shared.listening.send_replace(false);
        match listened {
            // It listened, then lost the connection: try again at once.
            Ok(()) => backoff = FIRST_BACKOFF,
            Err(e) => {
                tracing::warn!(error = %redact(&e), retry_in = ?backoff, "event store listener cannot connect");
                *crate::store::lock(&shared.unreachable) = Some(redact(&e).into_owned());
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Connects, listens, catches up, then hands notifications on until the connection ends or
/// stops answering. `Err`: it never listened (the reason, for the log).
async fn listen(shared: &Shared, config: &tokio_postgres::Config) -> Result<(), String> {
    let limits = shared.timeouts;
    // Bounded as a whole: a server that accepts and then says nothing must not hold it.
    let (client, mut connection) = tokio::time::timeout(limits.connect, config.connect(NoTls))
        .await
        .map_err(|_| format!("no answer within {} s", limits.connect.as_secs()))?
        .map_err(|e| crate::describe(&e))?;
    let (tx, mut notified) = tokio::sync::mpsc::unbounded_channel();
    // The connection's messages, notifications among them, come only by polling it.
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send(n.payload().parse::<u64>().ok()).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %redact(&crate::describe(&e)), "event store listener lost its connection");
                    break;
                }
            }
        }
    });
    let caught_up = tokio::time::timeout(limits.operation, async {
        client
            .batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}"))
            .await?;
        // Listening from here on: whatever committed before is in this head.
        head(&client).await
    })
    .await
    .map_err(|_| format!("no answer within {} s", limits.operation.as_secs()))
    .and_then(|r| r.map_err(|e| crate::describe(&e)));
    match caught_up {
        Ok(head) => {
            tracing::debug!(head, "event store listener is listening");
            shared.committed(head);
            shared.listening.send_replace(true);
            *crate::store::lock(&shared.unreachable) = None;
        }
        Err(e) => {
            driver.abort();
            return Err(e);
        }
    }
    // An idle connection is proven alive now and then: one that died without a word (a
    // partition, a frozen server) would otherwise leave followers waiting for
    // notifications that never come.
    let mut check = tokio::time::interval(limits.listener_check);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    check.reset();
    loop {
        tokio::select! {
            position = notified.recv() => match position {
                Some(Some(p)) => shared.committed(p),
                // Not ours to understand: read the head instead of guessing.
                Some(None) => {
                    if let Ok(Ok(h)) = tokio::time::timeout(limits.operation, head(&client)).await {
                        shared.committed(h);
                    }
                }
                None => break,
            },
            _ = check.tick() => {
                let alive = tokio::time::timeout(limits.operation, client.simple_query("SELECT 1")).await;
                if !matches!(alive, Ok(Ok(_))) {
                    tracing::warn!(limit = ?limits.operation, "event store listener's connection does not answer; reconnecting");
                    *crate::store::lock(&shared.unreachable) = Some(format!(
                        "the database did not answer within {} s",
                        limits.operation.as_secs()
                    ));
                    break;
                }
            }
        }
    }
    driver.abort();
    Ok(())
}

/// The last committed position (0: an empty log).
pub(crate) async fn head(client: &tokio_postgres::Client) -> Result<u64, tokio_postgres::Error> {
    let row = client.query_one(crate::store::HEAD, &[]).await?;
    Ok(u64::try_from(row.try_get::<_, i64>(0)?).unwrap_or(0))
}
