//! The `stub` source, Airweave's other test source, with its config: one container entity,
//! then `entity_count - 1` entities of six kinds (small, medium and large records; small,
//! large and code files) picked by weight, deterministic for a `seed`, `generation_delay_ms`
//! apart; with `fail_after` >= 0 the run fails on purpose once that many entities have been
//! yielded (at least one), with Airweave's error text, so that a failed sync (and its
//! `sync.failed` webhook) can be produced at will.
//!
//! Ids and kinds follow Airweave's (`stub-container-<seed>`, `small-<seed>-<i>`,
//! `code-file-<seed>-<i>`, ...; content sizes as its config describes them). The content
//! itself is ours: Airweave draws it from Python's random generator, which is not worth
//! reproducing byte for byte; what a test relies on (counts, ids, kinds, determinism, the
//! failure) is the same.

use super::entity::Entity;
use super::source::{EntityStream, Source, SourceConfigError, SourceError};
use futures::StreamExt;
use serde_json::{json, Map, Value};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub const CONTAINER_TYPE: &str = "StubContainerEntity";

const MAX_COUNT: i64 = 100_000;
const MAX_DELAY_MS: i64 = 10_000;
const DEFAULT_COUNT: u64 = 10;
const DEFAULT_SEED: i64 = 42;

/// The six kinds, in Airweave's order (the order the weights are laid out on [0, 1) in):
/// config key of the weight, default weight, id prefix, entity type, content size range.
const KINDS: [Kind; 6] = [
    Kind {
        weight_key: "small_entity_weight",
        default_weight: 30,
        id_prefix: "small",
        entity_type: "SmallStubEntity",
        size: (100, 200),
    },
    Kind {
        weight_key: "medium_entity_weight",
        default_weight: 30,
        id_prefix: "medium",
        entity_type: "MediumStubEntity",
        size: (500, 1000),
    },
    Kind {
        weight_key: "large_entity_weight",
        default_weight: 10,
        id_prefix: "large",
        entity_type: "LargeStubEntity",
        size: (3000, 5000),
    },
    Kind {
        weight_key: "small_file_weight",
        default_weight: 15,
        id_prefix: "small-file",
        entity_type: "SmallStubFileEntity",
        size: (1024, 5 * 1024),
    },
    Kind {
        weight_key: "large_file_weight",
        default_weight: 5,
        id_prefix: "large-file",
        entity_type: "LargeStubFileEntity",
        size: (50 * 1024, 100 * 1024),
    },
    Kind {
        weight_key: "code_file_weight",
        default_weight: 10,
        id_prefix: "code-file",
        entity_type: "CodeStubFileEntity",
        size: (2 * 1024, 10 * 1024),
    },
];

struct Kind {
    weight_key: &'static str,
    default_weight: u8,
    id_prefix: &'static str,
    entity_type: &'static str,
    /// Content length in characters, inclusive.
    size: (usize, usize),
}

const OTHER_FIELDS: [&str; 7] = [
    "entity_count",
    "seed",
    "generation_delay_ms",
    "inject_special_tokens",
    "custom_content_prefix",
    "fail_after",
    // Ours, as on `timed`: the stream ignores the stop token (fault tests).
    "ignore_cancel",
];

/// What `inject_special_tokens` puts into content (tokenizer edge cases, as Airweave's).
const SPECIAL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

const WORDS: [&str; 24] = [
    "project",
    "task",
    "document",
    "report",
    "meeting",
    "analysis",
    "review",
    "strategy",
    "plan",
    "update",
    "milestone",
    "feature",
    "implement",
    "deploy",
    "configure",
    "optimize",
    "important",
    "urgent",
    "critical",
    "detailed",
    "preliminary",
    "final",
    "automated",
    "secure",
];

/// The validated config of a stub source.
#[derive(Debug, Clone, PartialEq)]
pub struct StubConfig {
    pub entity_count: u64,
    pub seed: i64,
    pub generation_delay_ms: u64,
    /// In [`KINDS`] order.
    pub weights: [u8; 6],
    pub inject_special_tokens: bool,
    pub custom_content_prefix: Option<String>,
    /// -1: never fail.
    pub fail_after: i64,
    pub ignore_cancel: bool,
}

impl Default for StubConfig {
    fn default() -> Self {
        StubConfig {
            entity_count: DEFAULT_COUNT,
            seed: DEFAULT_SEED,
            generation_delay_ms: 0,
            weights: KINDS.map(|k| k.default_weight),
            inject_special_tokens: false,
            custom_content_prefix: None,
            fail_after: -1,
            ignore_cancel: false,
        }
    }
}

/// An integer as JSON Schema (and pydantic) sees one: `5` or `5.0`, not `5.5`.
fn json_integer(v: &Value) -> Option<i64> {
    match v.as_i64() {
        Some(n) => Some(n),
        None => v
            .as_f64()
            .filter(|f| f.fract() == 0.0 && *f > i64::MIN as f64 && *f < i64::MAX as f64)
            .map(|f| f as i64),
    }
}

/// An integer field within `min..=max`; the message names the field and the range.
fn ranged(
    map: &Map<String, Value>,
    key: &str,
    min: i64,
    max: i64,
) -> Result<Option<i64>, SourceConfigError> {
    let Some(v) = map.get(key) else {
        return Ok(None);
    };
    let field = format!("config.{key}");
    let n = match v {
        // Past i64 is out of range, not "not an integer".
        Value::Number(n) if n.is_u64() => n.as_i64().unwrap_or(i64::MAX),
        v => json_integer(v).ok_or_else(|| {
            SourceConfigError::invalid(
                &field,
                format!("{field} must be an integer between {min} and {max}"),
            )
        })?,
    };
    if !(min..=max).contains(&n) {
        return Err(SourceConfigError::invalid(
            &field,
            format!("{field} must be between {min} and {max}"),
        ));
    }
    Ok(Some(n))
}

fn boolean(map: &Map<String, Value>, key: &str) -> Result<Option<bool>, SourceConfigError> {
    match map.get(key) {
        None => Ok(None),
        Some(v) => v.as_bool().map(Some).ok_or_else(|| {
            let field = format!("config.{key}");
            SourceConfigError::invalid(&field, format!("{field} must be a boolean"))
        }),
    }
}

/// A weight: an integer 0 to 100, or (as Airweave's `parse_weight`) a string holding one,
/// an empty one meaning 0.
fn weight(map: &Map<String, Value>, key: &str) -> Result<Option<u8>, SourceConfigError> {
    let parsed = match map.get(key) {
        Some(Value::String(s)) if s.trim().is_empty() => Some(json!(0)),
        Some(Value::String(s)) => match s.trim().parse::<i64>() {
            Ok(n) => Some(json!(n)),
            Err(_) => {
                let field = format!("config.{key}");
                return Err(SourceConfigError::invalid(
                    &field,
                    format!("{field} must be an integer between 0 and 100"),
                ));
            }
        },
        other => other.cloned(),
    };
    let Some(v) = parsed else {
        return Ok(None);
    };
    let one = Map::from_iter([(key.to_owned(), v)]);
    Ok(ranged(&one, key, 0, 100)?.map(|n| n as u8))
}

impl StubConfig {
    /// The fields of the config, as the refusal of an unknown one lists them.
    fn fields() -> impl Iterator<Item = &'static str> {
        OTHER_FIELDS
            .into_iter()
            .take(6)
            .chain(KINDS.iter().map(|k| k.weight_key))
    }

    /// Parses and checks a config object (`null` = all defaults). Unknown keys are refused.
    pub fn from_json(config: &Value) -> Result<StubConfig, SourceConfigError> {
        let mut out = StubConfig::default();
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
        let known =
            |k: &str| OTHER_FIELDS.contains(&k) || KINDS.iter().any(|kind| kind.weight_key == k);
        if let Some(key) = map.keys().find(|k| !known(k)) {
            let field = format!("config.{}", key.chars().take(64).collect::<String>());
            let fields: Vec<&str> = Self::fields().collect();
            return Err(SourceConfigError::invalid(
                &field,
                format!(
                    "{field} is not a field of the stub source (fields: {})",
                    fields.join(", ")
                ),
            ));
        }
        if let Some(n) = ranged(map, "entity_count", 1, MAX_COUNT)? {
            out.entity_count = n.unsigned_abs();
        }
        if let Some(v) = map.get("seed") {
            out.seed = json_integer(v).ok_or_else(|| {
                SourceConfigError::invalid(
                    "config.seed",
                    format!(
                        "config.seed must be an integer between {} and {}",
                        i64::MIN,
                        i64::MAX
                    ),
                )
            })?;
        }
        if let Some(n) = ranged(map, "generation_delay_ms", 0, MAX_DELAY_MS)? {
            out.generation_delay_ms = n.unsigned_abs();
        }
        for (i, kind) in KINDS.iter().enumerate() {
            if let Some(w) = weight(map, kind.weight_key)? {
                out.weights[i] = w;
            }
        }
        if let Some(b) = boolean(map, "inject_special_tokens")? {
            out.inject_special_tokens = b;
        }
        match map.get("custom_content_prefix") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => out.custom_content_prefix = Some(s.clone()),
            Some(_) => {
                return Err(SourceConfigError::invalid(
                    "config.custom_content_prefix",
                    "config.custom_content_prefix must be a string or null",
                ))
            }
        }
        if let Some(n) = ranged(map, "fail_after", -1, MAX_COUNT)? {
            out.fail_after = n;
        }
        if let Some(b) = boolean(map, "ignore_cancel")? {
            out.ignore_cancel = b;
        }
        Ok(out)
    }

    /// The normalised config as stored and shown: every field of Airweave's config with its
    /// value; `ignore_cancel` only when set.
    pub fn to_json(&self) -> Value {
        let mut map = Map::new();
        map.insert("entity_count".into(), json!(self.entity_count));
        map.insert("seed".into(), json!(self.seed));
        map.insert(
            "generation_delay_ms".into(),
            json!(self.generation_delay_ms),
        );
        for (kind, w) in KINDS.iter().zip(self.weights) {
            map.insert(kind.weight_key.into(), json!(w));
        }
        map.insert(
            "inject_special_tokens".into(),
            json!(self.inject_special_tokens),
        );
        map.insert(
            "custom_content_prefix".into(),
            json!(self.custom_content_prefix),
        );
        map.insert("fail_after".into(), json!(self.fail_after));
        if self.ignore_cancel {
            map.insert("ignore_cancel".into(), json!(true));
        }
        Value::Object(map)
    }

    fn container_id(&self) -> String {
        format!("stub-container-{}", self.seed)
    }

    /// The container entity every run starts with.
    pub fn container(&self) -> Entity {
        let id = self.container_id();
        Entity {
            content: json!({
                "container_id": id,
                "container_name": format!("Stub Container (seed={})", self.seed),
                "description": format!("Test container with {} entities", self.entity_count),
                "created_at": "2024-01-01T00:00:00Z",
                "seed": self.seed,
                "entity_count": self.entity_count,
                "breadcrumbs": [],
            }),
            entity_id: id,
            entity_type: CONTAINER_TYPE.to_string(),
        }
    }

    /// The kind of entity `i` (0-based, after the container): a roll in [0, 1) drawn from
    /// the seed and the index, against the weights laid end to end (all zero: equal).
    fn kind(&self, i: u64) -> &'static Kind {
        let weights = if self.weights.iter().all(|w| *w == 0) {
            [1; 6]
        } else {
            self.weights
        };
        let total: u32 = weights.iter().map(|w| u32::from(*w)).sum();
        let roll = (mix(self.seed as u64 ^ i.rotate_left(32)) % u64::from(total)) as u32;
        let mut upto = 0;
        for (kind, w) in KINDS.iter().zip(weights) {
            upto += u32::from(w);
            if roll < upto {
                return kind;
            }
        }
        &KINDS[KINDS.len() - 1]
    }

    /// Entity `i` (0-based, after the container).
    pub fn entity(&self, i: u64) -> Entity {
        let kind = self.kind(i);
        let id = format!("{}-{}-{}", kind.id_prefix, self.seed, i);
        let mut state = mix(self.seed as u64 ^ i.wrapping_mul(0x9E37_79B9));
        let (min, max) = kind.size;
        let len = min + (state % (max - min + 1) as u64) as usize;
        let mut content = self.custom_content_prefix.clone().unwrap_or_default();
        if self.inject_special_tokens {
            content.push_str(SPECIAL_TOKENS[(i % 3) as usize]);
            content.push(' ');
        }
        // The words are ASCII: each adds its length in characters.
        let mut chars = content.chars().count();
        while chars < len {
            state = mix(state);
            let word = WORDS[(state % WORDS.len() as u64) as usize];
            content.push_str(word);
            content.push(' ');
            chars += word.len() + 1;
        }
        let title = format!("{} {} #{}", kind.id_prefix, WORDS[(i % 24) as usize], i + 1);
        Entity {
            content: json!({
                "stub_id": id,
                "title": title,
                "content": content,
                "sequence_number": i,
                "created_at": format!("2024-01-01T00:00:{:02}Z", i % 60),
                "breadcrumbs": [{
                    "entity_id": self.container_id(),
                    "name": format!("Stub Container (seed={})", self.seed),
                    "entity_type": CONTAINER_TYPE,
                }],
            }),
            entity_id: id,
            entity_type: kind.entity_type.to_string(),
        }
    }

    /// Airweave's failure text once `yielded` entities (not counting the container) are out.
    pub fn failure(&self, yielded: u64) -> String {
        format!(
            "Stub source simulated failure after {yielded} entities (fail_after={})",
            self.fail_after
        )
    }
}

/// SplitMix64's finaliser: a cheap, well-spread hash for deterministic picks.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The stub source for one run.
pub struct StubSource {
    config: StubConfig,
}

impl StubSource {
    pub fn new(config: StubConfig) -> Self {
        StubSource { config }
    }
}

struct StubStream {
    config: StubConfig,
    stop: CancellationToken,
    /// 0 = the container is next; `n` = entity `n - 1` is next.
    next: u64,
    /// The failure is due next: it ends the stream.
    failing: bool,
}

impl StubStream {
    fn stopped(&self) -> bool {
        !self.config.ignore_cancel && self.stop.is_cancelled()
    }

    async fn next_item(&mut self) -> Option<Result<Entity, SourceError>> {
        if self.stopped() {
            return None;
        }
        if self.failing {
            self.failing = false;
            self.next = u64::MAX;
            let yielded = self.config.fail_after.max(1).unsigned_abs();
            return Some(Err(SourceError(self.config.failure(yielded))));
        }
        if self.next == 0 {
            self.next = 1;
            return Some(Ok(self.config.container()));
        }
        let i = self.next - 1;
        if i.saturating_add(1) >= self.config.entity_count {
            return None;
        }
        // `generation_delay_ms` between two entities (Airweave sleeps after each one; the
        // wait after the last one delays nothing here). A stop during the wait ends the
        // stream at once.
        if i > 0 && self.config.generation_delay_ms > 0 {
            let delay = tokio::time::sleep(Duration::from_millis(self.config.generation_delay_ms));
            if self.config.ignore_cancel {
                delay.await;
            } else {
                tokio::select! {
                    biased;
                    _ = self.stop.cancelled() => return None,
                    _ = delay => {}
                }
            }
        }
        self.next += 1;
        let yielded = i + 1;
        if self.config.fail_after >= 0 && yielded >= self.config.fail_after.unsigned_abs() {
            self.failing = true;
        }
        Some(Ok(self.config.entity(i)))
    }
}

impl Source for StubSource {
    fn short_name(&self) -> &str {
        "stub"
    }

    fn stream(&self, stop: CancellationToken) -> EntityStream {
        let state = StubStream {
            config: self.config.clone(),
            stop,
            next: 0,
            failing: false,
        };
        futures::stream::unfold(state, |mut state| async move {
            let item = state.next_item().await?;
            Some((item, state))
        })
        .fuse()
        .boxed()
    }
}

/// Checks direct credentials for a source: Airweave's auth config of the source, whose
/// one field (`stub_key`, `timed_key`) takes any string and has a default; other keys are
/// ignored, as pydantic ignores them there.
pub(crate) fn check_key(
    key: &str,
    credentials: &Map<String, Value>,
) -> Result<(), SourceConfigError> {
    match credentials.get(key) {
        None | Some(Value::String(_)) => Ok(()),
        Some(_) => {
            let field = format!("authentication.credentials.{key}");
            Err(SourceConfigError::invalid(
                &field,
                format!("{field} must be a string"),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    fn config(v: Value) -> StubConfig {
        StubConfig::from_json(&v).unwrap()
    }

    async fn run(cfg: StubConfig) -> Vec<Result<Entity, SourceError>> {
        StubSource::new(cfg)
            .stream(CancellationToken::new())
            .collect()
            .await
    }

    #[tokio::test(start_paused = true)]
    async fn yields_a_container_then_entity_count_minus_one_entities_apart_by_the_delay() {
        let t0 = Instant::now();
        let items = run(config(
            json!({"entity_count": 5, "seed": 7, "generation_delay_ms": 250}),
        ))
        .await;
        assert_eq!(Instant::now() - t0, Duration::from_millis(750));
        let ids: Vec<String> = items.into_iter().map(|e| e.unwrap().entity_id).collect();
        assert_eq!(ids.len(), 5, "the container counts as one, as in Airweave");
        assert_eq!(ids[0], "stub-container-7");
        for (i, id) in ids[1..].iter().enumerate() {
            assert!(id.ends_with(&format!("-7-{i}")), "{id}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn fail_after_fails_the_stream_with_airweaves_text_after_that_many_entities() {
        let items = run(config(json!({"entity_count": 100, "fail_after": 3}))).await;
        assert_eq!(items.len(), 1 + 3 + 1, "container, 3 entities, the failure");
        assert!(items[..4].iter().all(Result::is_ok));
        assert_eq!(
            items[4].as_ref().unwrap_err().0,
            "Stub source simulated failure after 3 entities (fail_after=3)"
        );
        // 0 fails after the first entity, as Airweave's check comes after a yield.
        let items = run(config(json!({"entity_count": 100, "fail_after": 0}))).await;
        assert_eq!(items.len(), 3);
        assert!(items[2].is_err());
        // Past the count: the run ends first.
        let items = run(config(json!({"entity_count": 4, "fail_after": 10}))).await;
        assert!(items.iter().all(Result::is_ok));
        assert_eq!(items.len(), 4);
    }

    #[test]
    fn content_is_deterministic_weighted_and_sized_by_kind() {
        let a = config(json!({"seed": 42}));
        assert_eq!(a.entity(5), a.clone().entity(5));
        assert_ne!(
            a.entity(5).content,
            config(json!({"seed": 43})).entity(5).content
        );
        // Only code files.
        let code = config(json!({
            "small_entity_weight": 0, "medium_entity_weight": "0", "large_entity_weight": "",
            "small_file_weight": 0, "large_file_weight": 0, "code_file_weight": 1,
            "custom_content_prefix": "PFX", "inject_special_tokens": true
        }));
        for i in 0..50 {
            let e = code.entity(i);
            assert_eq!(e.entity_type, "CodeStubFileEntity");
            assert!(e.entity_id.starts_with("code-file-42-"));
            let text = e.content["content"].as_str().unwrap();
            assert!(text.starts_with("PFX<|"), "{text:.20}");
            assert!((2048..=10 * 1024 + 16).contains(&text.chars().count()));
        }
        // The default weights reach every kind.
        let d = StubConfig::default();
        let kinds: std::collections::HashSet<String> =
            (0..400).map(|i| d.entity(i).entity_type).collect();
        assert_eq!(kinds.len(), 6, "{kinds:?}");
    }

    #[test]
    fn the_config_is_checked_and_normalised() {
        let out = StubConfig::from_json(&Value::Null).unwrap().to_json();
        assert_eq!(
            out,
            json!({"entity_count": 10, "seed": 42, "generation_delay_ms": 0,
                   "small_entity_weight": 30, "medium_entity_weight": 30, "large_entity_weight": 10,
                   "small_file_weight": 15, "large_file_weight": 5, "code_file_weight": 10,
                   "inject_special_tokens": false, "custom_content_prefix": null, "fail_after": -1})
        );
        let invalid = |v: Value| match StubConfig::from_json(&v) {
            Err(SourceConfigError::Invalid { message, .. }) => message,
            other => panic!("{v}: {other:?}"),
        };
        assert_eq!(
            invalid(json!({"entity_count": 0})),
            "config.entity_count must be between 1 and 100000"
        );
        assert_eq!(
            invalid(json!({"fail_after": -2})),
            "config.fail_after must be between -1 and 100000"
        );
        assert_eq!(
            invalid(json!({"generation_delay_ms": 10001})),
            "config.generation_delay_ms must be between 0 and 10000"
        );
        assert_eq!(
            invalid(json!({"fail_after": "3"})),
            "config.fail_after must be an integer between -1 and 100000"
        );
        assert_eq!(
            invalid(json!({"small_file_weight": "lots"})),
            "config.small_file_weight must be an integer between 0 and 100"
        );
        assert_eq!(
            invalid(json!({"code_file_weight": 101})),
            "config.code_file_weight must be between 0 and 100"
        );
        assert_eq!(
            invalid(json!({"custom_content_prefix": 5})),
            "config.custom_content_prefix must be a string or null"
        );
        let unknown = invalid(json!({"duration_seconds": 5}));
        assert!(
            unknown.starts_with("config.duration_seconds is not a field of the stub source (fields: entity_count, seed, generation_delay_ms, inject_special_tokens, custom_content_prefix, fail_after, small_entity_weight"),
            "{unknown}"
        );
    }

    #[test]
    fn credentials_take_a_string_key_and_ignore_others() {
        let creds = |v: Value| v.as_object().cloned().unwrap();
        assert!(check_key("stub_key", &creds(json!({}))).is_ok());
        assert!(check_key("stub_key", &creds(json!({"stub_key": "x", "other": 1}))).is_ok());
        assert_eq!(
            check_key("stub_key", &creds(json!({"stub_key": 5})))
                .unwrap_err()
                .to_string(),
            "authentication.credentials.stub_key must be a string"
        );
    }
}
