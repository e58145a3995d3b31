//! The `timed` source, Airweave's test source with the same config: one container entity,
//! then `entity_count` entities spread evenly over `duration_seconds`, deterministic for a
//! `seed` (ids `timed-<seed>-<i>`, content a function of the index and the config).
//!
//! Entity `i` is due at `start + i * duration / entity_count` (as in Airweave, where it sleeps
//! that step after each entity but the last). Waiting for a deadline rather than sleeping a
//! step keeps the schedule from drifting, and lets steps shorter than the timer's
//! millisecond resolution come out in small bursts instead of stretching the run.
//!
//! `ignore_cancel: true` (ours, for fault tests) makes the stream deaf to the stop token, as
//! a hung upstream API would be: it runs to its natural end whatever the pipeline asks.

use super::entity::Entity;
use super::source::{EntityStream, Source, SourceConfigError};
use futures::StreamExt;
use serde_json::{json, Map, Value};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub const CONTAINER_TYPE: &str = "TimedContainerEntity";
pub const ENTITY_TYPE: &str = "TimedEntity";

const MIN_COUNT: i64 = 1;
const MAX_COUNT: i64 = 10_000;
const MIN_DURATION: f64 = 0.1;
const MAX_DURATION: f64 = 600.0;
const DEFAULT_COUNT: u64 = 100;
const DEFAULT_DURATION: f64 = 10.0;
const DEFAULT_SEED: i64 = 42;
const FIELDS: &[&str] = &["entity_count", "duration_seconds", "seed", "ignore_cancel"];

const NOUNS: [&str; 10] = [
    "project", "task", "document", "report", "meeting", "analysis", "review", "strategy", "plan",
    "update",
];
const ADJECTIVES: [&str; 10] = [
    "important",
    "urgent",
    "detailed",
    "comprehensive",
    "preliminary",
    "final",
    "quarterly",
    "annual",
    "weekly",
    "daily",
];
const VERBS: [&str; 10] = [
    "created",
    "updated",
    "reviewed",
    "completed",
    "started",
    "assigned",
    "submitted",
    "approved",
    "rejected",
    "archived",
];

/// The validated config of a timed source.
#[derive(Debug, Clone, PartialEq)]
pub struct TimedConfig {
    pub entity_count: u64,
    pub duration_seconds: f64,
    pub seed: i64,
    pub ignore_cancel: bool,
}

impl Default for TimedConfig {
    fn default() -> Self {
        TimedConfig {
            entity_count: DEFAULT_COUNT,
            duration_seconds: DEFAULT_DURATION,
            seed: DEFAULT_SEED,
            ignore_cancel: false,
        }
    }
}

/// An integer as JSON Schema (and Airweave's pydantic) sees one: `5` or `5.0`, not `5.5`.
/// The OpenAPI document says `integer`, which admits `5.0`, so the server must too.
fn json_integer(v: &Value) -> Option<i64> {
    match v.as_i64() {
        Some(n) => Some(n),
        None => v
            .as_f64()
            // Strictly inside ±2^63: an integer literal just past i64 reads as ±2^63 here.
            .filter(|f| f.fract() == 0.0 && *f > i64::MIN as f64 && *f < i64::MAX as f64)
            .map(|f| f as i64),
    }
}

fn shorten(key: &str) -> String {
    key.chars().take(64).collect()
}

impl TimedConfig {
    /// Parses and checks a config object (`null` = all defaults).
    pub fn from_json(config: &Value) -> Result<TimedConfig, SourceConfigError> {
        let mut out = TimedConfig::default();
        let map = match config {
            Value::Null => return Ok(out),
            Value::Object(map) => map,
            _ => {
                return Err(SourceConfigError::invalid(
                    "config",
                    "config must be an object",
                ))
            }
        };
        if let Some(key) = map.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            let field = format!("config.{}", shorten(key));
            return Err(SourceConfigError::invalid(
                &field,
                format!(
                    "{field} is not a field of the timed source (fields: entity_count, duration_seconds, seed)"
                ),
            ));
        }
        if let Some(v) = map.get("entity_count") {
            let field = "config.entity_count";
            // Past i64 is out of range, not "not an integer".
            let n = match v {
                Value::Number(n) if n.is_u64() => n.as_i64().unwrap_or(i64::MAX),
                v => json_integer(v).ok_or_else(|| {
                    SourceConfigError::invalid(
                        field,
                        format!("{field} must be an integer between {MIN_COUNT} and {MAX_COUNT}"),
                    )
                })?,
            };
            if !(MIN_COUNT..=MAX_COUNT).contains(&n) {
                return Err(SourceConfigError::invalid(
                    field,
                    format!("{field} must be between {MIN_COUNT} and {MAX_COUNT}"),
                ));
            }
            out.entity_count = n.unsigned_abs();
        }
        if let Some(v) = map.get("duration_seconds") {
            let field = "config.duration_seconds";
            let d = match v.as_f64() {
                Some(d) => d,
                None => {
                    return Err(SourceConfigError::invalid(
                        field,
                        format!("{field} must be a number between 0.1 and 600"),
                    ))
                }
            };
            if !(MIN_DURATION..=MAX_DURATION).contains(&d) {
                return Err(SourceConfigError::invalid(
                    field,
                    format!("{field} must be between 0.1 and 600"),
                ));
            }
            out.duration_seconds = d;
        }
        if let Some(v) = map.get("seed") {
            let field = "config.seed";
            out.seed = json_integer(v).ok_or_else(|| {
                SourceConfigError::invalid(
                    field,
                    format!(
                        "{field} must be an integer between {} and {}",
                        i64::MIN,
                        i64::MAX
                    ),
                )
            })?;
        }
        if let Some(v) = map.get("ignore_cancel") {
            let field = "config.ignore_cancel";
            out.ignore_cancel = v.as_bool().ok_or_else(|| {
                SourceConfigError::invalid(field, format!("{field} must be a boolean"))
            })?;
        }
        Ok(out)
    }

    /// The normalised config as stored and shown. `ignore_cancel` appears only when set: it
    /// is a fault-testing switch, not part of Airweave's config.
    pub fn to_json(&self) -> Value {
        let mut map = Map::new();
        map.insert("entity_count".into(), json!(self.entity_count));
        map.insert("duration_seconds".into(), json!(self.duration_seconds));
        map.insert("seed".into(), json!(self.seed));
        if self.ignore_cancel {
            map.insert("ignore_cancel".into(), json!(true));
        }
        Value::Object(map)
    }

    /// When entity `i` is due, counted from the container.
    pub fn offset(&self, i: u64) -> Duration {
        if self.entity_count <= 1 {
            return Duration::ZERO;
        }
        let total_ns = (self.duration_seconds * 1e9).round() as u128;
        let ns = total_ns * u128::from(i) / u128::from(self.entity_count);
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }

    fn container_id(&self) -> String {
        format!("timed-container-{}", self.seed)
    }

    fn container_name(&self) -> String {
        format!("Timed Container (seed={})", self.seed)
    }

    /// The container entity every run starts with.
    pub fn container(&self) -> Entity {
        let id = self.container_id();
        Entity {
            content: json!({
                "container_id": id,
                "container_name": self.container_name(),
                "description": format!(
                    "Timed test container: {} entities over {:?}s",
                    self.entity_count, self.duration_seconds
                ),
                "created_at": "2024-01-01T00:00:00Z",
                "breadcrumbs": [],
                "web_url": format!("timed://container/{id}"),
            }),
            entity_id: id,
            entity_type: CONTAINER_TYPE.to_string(),
        }
    }

    /// Entity `i` (0-based) of the run.
    pub fn entity(&self, i: u64) -> Entity {
        let idx = (i % 10) as usize;
        let adj = ADJECTIVES[idx];
        let noun = NOUNS[idx];
        let verb = VERBS[idx];
        let adj2 = ADJECTIVES[((i + 3) % 10) as usize];
        let mut title_adj = adj.to_string();
        if let Some(first) = title_adj.get_mut(0..1) {
            first.make_ascii_uppercase();
        }
        let id = format!("timed-{}-{}", self.seed, i);
        Entity {
            content: json!({
                "entity_id": id,
                "name": format!("{title_adj} {noun} #{}", i + 1),
                "content": format!(
                    "This {adj2} {noun} was {verb} as part of timed test generation (seed-{}). \
                     Entity {} of {}, generated over {:?} seconds. \
                     The content is deterministic and reproducible for testing purposes.",
                    self.seed, i + 1, self.entity_count, self.duration_seconds
                ),
                "sequence_number": i,
                "created_at": format!("2024-01-01T00:00:{:02}Z", i % 60),
                "breadcrumbs": [{
                    "entity_id": self.container_id(),
                    "name": self.container_name(),
                    "entity_type": CONTAINER_TYPE,
                }],
                "web_url": format!("timed://entity/{id}"),
            }),
            entity_id: id,
            entity_type: ENTITY_TYPE.to_string(),
        }
    }
}

/// The timed source for one run.
pub struct TimedSource {
    config: TimedConfig,
}

impl TimedSource {
    pub fn new(config: TimedConfig) -> Self {
        TimedSource { config }
    }
}

struct TimedStream {
    config: TimedConfig,
    stop: CancellationToken,
    /// 0 = the container is next; `n` = entity `n - 1` is next.
    next: u64,
    start: Option<Instant>,
}

impl TimedStream {
    fn stopped(&self) -> bool {
        !self.config.ignore_cancel && self.stop.is_cancelled()
    }

    async fn next_entity(&mut self) -> Option<Entity> {
        if self.stopped() {
            return None;
        }
        let start = match self.start {
            Some(start) => start,
            None => {
                self.start = Some(Instant::now());
                self.next = 1;
                return Some(self.config.container());
            }
        };
        let i = self.next.checked_sub(1)?;
        if i >= self.config.entity_count {
            return None;
        }
        let deadline = start + self.config.offset(i);
        if Instant::now() < deadline {
            if self.config.ignore_cancel {
                tokio::time::sleep_until(deadline).await;
            } else {
                tokio::select! {
                    biased;
                    _ = self.stop.cancelled() => return None,
                    _ = tokio::time::sleep_until(deadline) => {}
                }
            }
        }
        self.next += 1;
        Some(self.config.entity(i))
    }
}

impl Source for TimedSource {
    fn short_name(&self) -> &str {
        "timed"
    }

    fn stream(&self, stop: CancellationToken) -> EntityStream {
        let state = TimedStream {
            config: self.config.clone(),
            stop,
            next: 0,
            start: None,
        };
        futures::stream::unfold(state, |mut state| async move {
            let entity = state.next_entity().await?;
            Some((Ok(entity), state))
        })
        .fuse()
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(count: u64, duration: f64, seed: i64) -> TimedConfig {
        TimedConfig {
            entity_count: count,
            duration_seconds: duration,
            seed,
            ignore_cancel: false,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn yields_a_container_then_entities_spread_over_the_duration() {
        let source = TimedSource::new(config(5, 10.0, 7));
        let mut stream = source.stream(CancellationToken::new());
        let t0 = Instant::now();
        let container = stream.next().await.unwrap().unwrap();
        assert_eq!(container.entity_id, "timed-container-7");
        assert_eq!(container.entity_type, CONTAINER_TYPE);
        let mut seen = Vec::new();
        while let Some(item) = stream.next().await {
            let entity = item.unwrap();
            seen.push((
                entity.entity_id.clone(),
                (Instant::now() - t0).as_secs_f64(),
            ));
            assert_eq!(entity.entity_type, ENTITY_TYPE);
        }
        let expected: Vec<(String, f64)> = (0..5)
            .map(|i| (format!("timed-7-{i}"), 2.0 * i as f64))
            .collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn content_is_deterministic_for_a_seed_and_differs_across_seeds() {
        let a = config(100, 10.0, 42);
        let b = config(100, 10.0, 43);
        assert_eq!(a.entity(3), a.clone().entity(3));
        assert_ne!(a.entity(3).content, b.entity(3).content);
        let e = a.entity(3);
        assert_eq!(e.content["name"], "Comprehensive report #4");
        assert_eq!(
            e.content["content"],
            "This quarterly report was completed as part of timed test generation (seed-42). \
             Entity 4 of 100, generated over 10.0 seconds. \
             The content is deterministic and reproducible for testing purposes."
        );
        assert_eq!(
            e.content["breadcrumbs"][0]["entity_id"],
            "timed-container-42"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn stop_ends_the_stream_before_the_next_entity_is_due() {
        let stop = CancellationToken::new();
        let mut stream = TimedSource::new(config(100, 100.0, 1)).stream(stop.clone());
        let t0 = Instant::now();
        assert!(stream.next().await.is_some()); // container
        assert!(stream.next().await.is_some()); // entity 0, due at once
        let stopper = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            stopper.cancel();
        });
        assert!(stream.next().await.is_none(), "entity 1 is due at 1 s");
        assert_eq!(Instant::now() - t0, Duration::from_millis(300));
        assert!(stream.next().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn ignore_cancel_runs_to_the_natural_end() {
        let mut cfg = config(10, 5.0, 1);
        cfg.ignore_cancel = true;
        let stop = CancellationToken::new();
        stop.cancel();
        let t0 = Instant::now();
        let items: Vec<_> = TimedSource::new(cfg).stream(stop).collect().await;
        assert_eq!(items.len(), 11);
        assert_eq!(Instant::now() - t0, Duration::from_millis(4500));
    }

    #[tokio::test(start_paused = true)]
    async fn steps_below_timer_resolution_do_not_stretch_the_run() {
        let mut stream = TimedSource::new(config(10_000, 0.1, 1)).stream(CancellationToken::new());
        let t0 = Instant::now();
        let mut n = 0;
        while let Some(item) = stream.next().await {
            item.unwrap();
            n += 1;
        }
        assert_eq!(n, 10_001);
        let took = Instant::now() - t0;
        assert!(took <= Duration::from_millis(101), "took {took:?}");
    }
}
