//! The dispatcher: delivers webhook messages, at least once, from what the log recorded.
//!
//! Where deliveries come from: the projector folds an event with a webhook type into a
//! message when a subscription of its organization lists that type (none otherwise: no cost
//! for organizations that never subscribed), and a pending delivery for each enabled one
//! (the read model's `webhook_deliveries`, committed with the read model's position: its
//! durable checkpoint). Each attempt is then recorded as an event of the
//! delivery's own stream (`domain::webhook::WebhookDelivery`), which the projector folds
//! back into the delivery (attempts, next due time, success or failure). Why events and
//! not read-model rows only: the read model is derived data, rebuilt from the log at will;
//! attempts kept only there would be forgotten by a rebuild and every message sent again.
//! In the log, a rebuild folds them back, a restart finds every pending retry with its due
//! time, and two dispatchers racing on one delivery cannot both record an attempt.
//!
//! What this guarantees: a message is POSTed to each matching subscription until one
//! attempt gets a 2xx or the retry schedule is exhausted; a process that dies after a POST
//! and before its record sends it again (same `webhook-id`: receivers deduplicate by it).
//! Isolation: at most one attempt per subscription is in flight (its messages go in log
//! order), and at most `concurrency` in all, each bounded by `timeout`: a slow or dead
//! endpoint holds one slot of its own, never the API, another subscription or another
//! organization.

use super::sign;
use chrono::{DateTime, Utc};
use rand::Rng;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use syncjobs_actors::command::{self, CommandError};
use syncjobs_domain::events::stream;
use syncjobs_domain::webhook::{DeliveryCommand, DeliveryError, WebhookDelivery};
use syncjobs_domain::{EventStore, Metadata, SharedClock, WebhookEvent};
use syncjobs_projections::{DueDelivery, Projection};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Svix's retry schedule: the delays after the first attempt fails, then after each retry.
pub const SVIX_SCHEDULE: [Duration; 6] = [
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(5 * 3600),
    Duration::from_secs(10 * 3600),
];
/// The most of an endpoint's answer kept with an attempt (Airweave's "truncated to 1KB").
pub const RESPONSE_EXCERPT: usize = 1024;
/// Due deliveries read per pass.
const BATCH: usize = 256;
/// How long to wait before reading again after a read failed.
const ERROR_BACKOFF: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct DispatchConfig {
    /// How long one attempt may take, connection included.
    pub timeout: Duration,
    /// Delays before each retry; after the last, the delivery has failed.
    pub schedule: Vec<Duration>,
    /// Attempts in flight at once, over all subscriptions.
    pub concurrency: usize,
    /// Longest sleep between two reads of the due deliveries (new ones also wake it).
    pub poll_every: Duration,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            timeout: Duration::from_secs(15),
            schedule: SVIX_SCHEDULE.to_vec(),
            concurrency: 32,
            poll_every: Duration::from_secs(1),
        }
    }
}

/// When the attempt after `attempt` (1-based) is due, if any: the schedule's delay with
/// ±20% jitter, so that the retries of many messages failed together do not land together.
pub fn next_attempt(
    schedule: &[Duration],
    attempt: u32,
    now: DateTime<Utc>,
    rng: &mut impl Rng,
) -> Option<DateTime<Utc>> {
    let delay = *schedule.get(usize::try_from(attempt).ok()?.checked_sub(1)?)?;
    let jittered = delay.mul_f64(rng.random_range(0.8..=1.2));
    chrono::Duration::from_std(jittered)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
}

/// The running dispatcher.
pub struct DispatcherHandle {
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl DispatcherHandle {
    /// Stops taking deliveries and waits for the loop (attempts in flight are abandoned:
    /// unrecorded, they are made again after the next start).
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for DispatcherHandle {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct Shared {
    store: Arc<dyn EventStore>,
    clock: SharedClock,
    projection: Projection,
    config: DispatchConfig,
    client: HttpClient,
    /// Subscriptions with an attempt in flight, and when each last finished one.
    turns: Mutex<Turns>,
    /// An attempt ended: its subscription may take the next one.
    done: Notify,
    slots: Semaphore,
    stop: CancellationToken,
}

/// Why the dispatcher cannot start.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("TLS settings: {0}")]
    Tls(#[from] rustls::Error),
}

/// The HTTP client of every attempt.
type HttpClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Full<bytes::Bytes>,
>;

/// TLS for `https` subscriptions: rustls on ring (the provider the NATS client already
/// uses), trusting the system's root certificates.
fn tls_config() -> Result<rustls::ClientConfig, rustls::Error> {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!(error = %e, "a system root certificate could not be loaded");
    }
    let mut roots = rustls::RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        tracing::warn!("no system root certificates: https webhook deliveries will fail");
    }
    tracing::debug!(added, ignored, "root certificates for webhook deliveries");
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

/// The client every attempt uses, `http` and `https`; it follows no redirect (a signed POST
/// goes where the subscription says, or fails).
fn client(timeout: Duration) -> Result<HttpClient, DispatchError> {
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(timeout));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_config()?)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(https),
    )
}

/// Starts the dispatcher on the current actix arbiter. The read model must have caught up with
/// the log (as at start-up), so that every attempt an earlier process recorded is folded.
pub fn spawn_dispatcher(
    store: Arc<dyn EventStore>,
    clock: SharedClock,
    projection: Projection,
    config: DispatchConfig,
) -> Result<DispatcherHandle, DispatchError> {
    let client = client(config.timeout)?;
    Ok(spawn_with(store, clock, projection, config, client))
}

fn spawn_with(
    store: Arc<dyn EventStore>,
    clock: SharedClock,
    projection: Projection,
    config: DispatchConfig,
    client: HttpClient,
) -> DispatcherHandle {
    let stop = CancellationToken::new();
    let shared = Arc::new(Shared {
        store,
        clock,
        projection,
        slots: Semaphore::new(config.concurrency.max(1)),
        config,
        client,
        turns: Mutex::new(Turns::default()),
        done: Notify::new(),
        stop: stop.clone(),
    });
    // A read of the model holds its connection across awaits (not Send): the loop runs on
    // the current thread (an actix arbiter, as every reader of the model in the server).
    let task = actix_rt::spawn(run(shared));
    DispatcherHandle {
        stop,
        task: Some(task),
    }
}

/// The dispatcher as a duty of one node at a time ([`crate::duty`]): two dispatchers would
/// each POST every message (the log lets only one record each attempt, but both are made).
/// A new holder finds in the read model every delivery not recorded as done, those the last
/// holder had in flight included, and makes them again (at least once, same `webhook-id`).
pub struct DispatcherDuty {
    store: Arc<dyn EventStore>,
    clock: SharedClock,
    projection: Projection,
    config: DispatchConfig,
    client: HttpClient,
}

impl DispatcherDuty {
    /// Fails (at start-up, not at the first take) when TLS cannot be set up.
    pub fn new(
        store: Arc<dyn EventStore>,
        clock: SharedClock,
        projection: Projection,
        config: DispatchConfig,
    ) -> Result<DispatcherDuty, DispatchError> {
        Ok(DispatcherDuty {
            client: client(config.timeout)?,
            store,
            clock,
            projection,
            config,
        })
    }
}

#[async_trait::async_trait(?Send)]
impl crate::duty::Duty for DispatcherDuty {
    type Running = DispatcherHandle;

    /// The read model has caught up with the log (start-up waits for it), so every attempt
    /// recorded by an earlier holder is folded and none that succeeded is made again.
    fn start(
        &mut self,
        _lease: Arc<syncjobs_domain::store::Lease>,
    ) -> Result<DispatcherHandle, String> {
        Ok(spawn_with(
            self.store.clone(),
            self.clock.clone(),
            self.projection.clone(),
            self.config.clone(),
            self.client.clone(),
        ))
    }

    /// Either way at once: attempts in flight are abandoned (unrecorded: made again by the
    /// next holder).
    async fn stop(&mut self, dispatcher: DispatcherHandle, _lost: bool) {
        dispatcher.shutdown().await;
    }
}

/// Which subscriptions have an attempt in flight, and when each last finished one (a count
/// of finished attempts, over all subscriptions).
#[derive(Default)]
struct Turns {
    busy: HashSet<Uuid>,
    finished: u64,
    finished_at: HashMap<Uuid, u64>,
}

async fn run(shared: Arc<Shared>) {
    let mut position = shared.projection.watch_position();
    loop {
        position.borrow_and_update();
        let now = shared.clock.now();
        let read_after = lock(&shared.turns).finished;
        let due = shared
            .projection
            .read(async |m| m.due_webhook_deliveries(now, BATCH).await)
            .await;
        let wait = match due {
            Ok(due) => {
                for d in due {
                    start(&shared, d, read_after);
                }
                shared.config.poll_every
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read due webhook deliveries");
                ERROR_BACKOFF
            }
        };
        tokio::select! {
            _ = shared.stop.cancelled() => return,
            _ = position.changed() => {}
            _ = shared.done.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts the attempt unless its subscription has one in flight, or finished one after the
/// read that found `d` due began (`read_after` attempts had finished then): that read may
/// predate the attempt's record, and would make it again. The attempt's end wakes the loop,
/// whose next read is then fresh.
fn start(shared: &Arc<Shared>, d: DueDelivery, read_after: u64) {
    {
        let mut turns = lock(&shared.turns);
        let stale = turns
            .finished_at
            .get(&d.subscription_id)
            .is_some_and(|&at| at > read_after);
        if stale || !turns.busy.insert(d.subscription_id) {
            return;
        }
    }
    let shared = shared.clone();
    tokio::spawn(async move {
        let subscription_id = d.subscription_id;
        if let Ok(_slot) = shared.slots.acquire().await {
            tokio::select! {
                _ = shared.stop.cancelled() => {}
                _ = attempt(&shared, d) => {}
            }
        }
        {
            let mut turns = lock(&shared.turns);
            turns.finished += 1;
            let at = turns.finished;
            turns.finished_at.insert(subscription_id, at);
            turns.busy.remove(&subscription_id);
        }
        shared.done.notify_one();
    });
}

/// What an endpoint answered, or why it did not.
struct Outcome {
    status_code: u16,
    response: String,
}

/// POSTs the message, signed, and records the attempt.
async fn attempt(shared: &Shared, d: DueDelivery) {
    let span = tracing::info_span!(
        "webhook_attempt",
        message_id = %d.message_id,
        subscription_id = %d.subscription_id,
        attempt = d.attempts + 1
    );
    let outcome = post(shared, &d).await;
    let attempt = d.attempts.saturating_add(1);
    let now = shared.clock.now();
    let succeeded = (200..300).contains(&outcome.status_code);
    let next_attempt_at = if succeeded {
        None
    } else {
        // The schedule counts from the delivery's start, or from its last recovery.
        let in_round = attempt.saturating_sub(d.round_start);
        next_attempt(&shared.config.schedule, in_round, now, &mut rand::rng())
    };
    if succeeded {
        tracing::debug!(parent: &span, status = outcome.status_code, "webhook delivered");
    } else {
        tracing::warn!(
            parent: &span,
            status = outcome.status_code,
            response = %outcome.response,
            retry_at = ?next_attempt_at,
            "webhook attempt failed"
        );
    }
    let event = WebhookEvent::WebhookAttemptRecorded {
        message_id: d.message_id,
        subscription_id: d.subscription_id,
        organization_id: d.organization_id,
        attempt,
        url: d.url.clone(),
        status_code: outcome.status_code,
        response: outcome.response,
        next_attempt_at,
    };
    let recorded = command::execute::<WebhookDelivery>(
        &*shared.store,
        &*shared.clock,
        &stream::webhook_delivery(d.message_id, d.subscription_id),
        // Read, not assumed from the read model: the stream also holds recoveries.
        None,
        &DeliveryCommand::RecordAttempt(event),
        &Metadata::caused_by("webhook-dispatcher").with_causation(d.message_id),
    )
    .await;
    match recorded {
        Ok(executed) => {
            // The next read must see this attempt, or it would make it again.
            if let Err(lag) = shared
                .projection
                .wait_for(executed.position(), Duration::from_secs(10))
                .await
            {
                tracing::warn!(parent: &span, %lag, "read model lagging behind a webhook attempt");
            }
        }
        Err(CommandError::Rejected(e @ (DeliveryError::Ended | DeliveryError::OutOfTurn(_)))) => {
            // Another dispatcher recorded this attempt first.
            tracing::debug!(parent: &span, reason = %e, "webhook attempt already recorded");
        }
        Err(e) => {
            tracing::error!(parent: &span, error = %e, "cannot record a webhook attempt; it will be made again");
            tokio::time::sleep(ERROR_BACKOFF).await;
        }
    }
}

async fn post(shared: &Shared, d: &DueDelivery) -> Outcome {
    let id = d.message_id.to_string();
    let timestamp = shared.clock.now().timestamp();
    let signature = match sign::signature(&d.secret, &id, timestamp, d.payload.as_bytes()) {
        Ok(s) => s,
        Err(e) => {
            return Outcome {
                status_code: 0,
                response: e.to_string(),
            }
        }
    };
    let ts = timestamp.to_string();
    let headers = [
        ("webhook-id", id.as_str()),
        ("webhook-timestamp", &ts),
        ("webhook-signature", &signature),
        ("svix-id", &id),
        ("svix-timestamp", &ts),
        ("svix-signature", &signature),
    ];
    send(
        &shared.client,
        &d.url,
        &headers,
        d.payload.clone(),
        shared.config.timeout,
    )
    .await
}

/// POSTs `body` as JSON with `headers`, within `timeout` (connecting included).
async fn send(
    client: &HttpClient,
    url: &str,
    headers: &[(&str, &str)],
    body: String,
    timeout: Duration,
) -> Outcome {
    let failed = |response: String| Outcome {
        status_code: 0,
        response,
    };
    let mut request = http::Request::post(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(
            http::header::USER_AGENT,
            concat!("syncjobs-webhooks/", env!("CARGO_PKG_VERSION")),
        );
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = match request.body(http_body_util::Full::new(bytes::Bytes::from(body))) {
        Ok(r) => r,
        Err(e) => return failed(format!("invalid request: {e}")),
    };
    let exchange = async {
        let res = client.request(request).await?;
        let status_code = res.status().as_u16();
        Ok::<_, hyper_util::client::legacy::Error>(Outcome {
            status_code,
            response: excerpt(res.into_body()).await,
        })
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(e)) => failed(describe(&e)),
        Err(_) => failed(format!("timed out after {timeout:?}")),
    }
}

/// The first [`RESPONSE_EXCERPT`] bytes of the body (lossy UTF-8), reading no more.
async fn excerpt(mut body: hyper::body::Incoming) -> String {
    use http_body_util::BodyExt;
    let mut bytes = Vec::new();
    while bytes.len() < RESPONSE_EXCERPT {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    bytes.extend_from_slice(data);
                }
            }
            _ => break,
        }
    }
    bytes.truncate(RESPONSE_EXCERPT);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Why no answer came, without the URL (it may carry a token in its query).
fn describe(e: &hyper_util::client::legacy::Error) -> String {
    let kind = if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    let mut cause = String::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    if cause.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}: {cause}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// An `https` URL is spoken to with TLS: against a plain-HTTP listener the handshake
    /// fails (rather than the scheme being refused by a client built without TLS).
    #[tokio::test]
    async fn https_urls_are_delivered_over_tls() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut s, _)) = listener.accept().await {
                let mut head = [0u8; 4096];
                let _ = s.read(&mut head).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    .await;
            }
        });
        let c = client(Duration::from_secs(5)).unwrap();
        let timeout = Duration::from_secs(5);
        let tls = send(
            &c,
            &format!("https://127.0.0.1:{port}/hook"),
            &[],
            "{}".into(),
            timeout,
        )
        .await;
        assert_eq!(tls.status_code, 0);
        assert!(
            tls.response.starts_with("connection failed"),
            "{}",
            tls.response
        );
        // The same listener over plain HTTP answers.
        let plain = send(
            &c,
            &format!("http://127.0.0.1:{port}/hook"),
            &[],
            "{}".into(),
            timeout,
        )
        .await;
        assert_eq!(plain.status_code, 200, "{}", plain.response);
        // A listener that never answers: the attempt ends at its timeout.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", silent.local_addr().unwrap());
        let quick = Duration::from_millis(200);
        let hung = send(&c, &url, &[], "{}".into(), quick).await;
        assert_eq!(hung.status_code, 0);
        assert!(hung.response.starts_with("timed out"), "{}", hung.response);
    }

    #[test]
    fn retries_follow_svixs_schedule_with_bounded_jitter_then_stop() {
        let now = Utc::now();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for (i, delay) in SVIX_SCHEDULE.iter().enumerate() {
            let attempt = i as u32 + 1;
            for _ in 0..50 {
                let at = next_attempt(&SVIX_SCHEDULE, attempt, now, &mut rng).unwrap();
                let waited = (at - now).to_std().unwrap();
                assert!(
                    waited >= delay.mul_f64(0.8) && waited <= delay.mul_f64(1.2),
                    "attempt {attempt}: {waited:?} for {delay:?}"
                );
            }
        }
        // Seven attempts in all: the first and six retries.
        assert_eq!(next_attempt(&SVIX_SCHEDULE, 7, now, &mut rng), None);
        assert_eq!(next_attempt(&SVIX_SCHEDULE, 0, now, &mut rng), None);
        let spread: HashSet<_> = (0..20)
            .map(|_| next_attempt(&SVIX_SCHEDULE, 1, now, &mut rng))
            .collect();
        assert!(spread.len() > 10, "jitter spreads retries");
    }
}
