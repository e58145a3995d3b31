//! What flows through the pipeline: an [`Entity`] as a source yields it, and the
//! [`EntityRecord`] a worker makes of it (canonical content plus its hash) for the destination.
//!
//! The hash is taken over a canonical serialisation (object keys sorted, no whitespace), so
//! that the same content always hashes the same whatever order a source builds its fields in;
//! that stability is what lets a re-run of an unchanged source report every entity as kept.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Longest entity id accepted; a longer one is a processing error, not a destination error.
pub const MAX_ENTITY_ID_LEN: usize = 1024;
/// Largest canonical content accepted for one entity (bytes).
pub const MAX_CONTENT_BYTES: usize = 1 << 20;

/// One entity as a source yields it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entity {
    /// Unique within its source connection; the destination's key.
    pub entity_id: String,
    /// The entity class (`TimedEntity`), reported per type in the source connection's stats.
    pub entity_type: String,
    /// The entity's fields, hashed and stored as they are.
    pub content: Value,
}

/// An entity ready for the destination: canonical content and its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntityRecord {
    pub entity_id: String,
    pub entity_type: String,
    /// Lowercase hex SHA-256 over the entity type and the canonical content.
    pub hash: String,
    /// The canonical JSON text of the content.
    pub content: String,
}

/// Why one entity could not be processed. The run counts it as failed and goes on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProcessingError {
    #[error("entity has an empty id")]
    EmptyId,
    #[error("entity id is {len} bytes long (at most {MAX_ENTITY_ID_LEN})")]
    IdTooLong { len: usize },
    #[error("entity {entity_id} has an empty type")]
    EmptyType { entity_id: String },
    /// PostgreSQL's text cannot hold a NUL byte: refused on every destination alike, so a
    /// source behaves the same whichever store it writes to.
    #[error("entity {what} contains a NUL byte")]
    NulByte { what: &'static str },
    #[error("entity {entity_id} content is {len} bytes (at most {MAX_CONTENT_BYTES})")]
    ContentTooLarge { entity_id: String, len: usize },
}

impl Entity {
    /// Validates the entity and turns it into a record with its content hash.
    pub fn into_record(self) -> Result<EntityRecord, ProcessingError> {
        if self.entity_id.is_empty() {
            return Err(ProcessingError::EmptyId);
        }
        if self.entity_id.len() > MAX_ENTITY_ID_LEN {
            return Err(ProcessingError::IdTooLong {
                len: self.entity_id.len(),
            });
        }
        for (what, text) in [("id", &self.entity_id), ("type", &self.entity_type)] {
            if text.contains('\0') {
                return Err(ProcessingError::NulByte { what });
            }
        }
        if self.entity_type.is_empty() {
            return Err(ProcessingError::EmptyType {
                entity_id: self.entity_id,
            });
        }
        let content = canonical_json(&self.content);
        if content.len() > MAX_CONTENT_BYTES {
            return Err(ProcessingError::ContentTooLarge {
                entity_id: self.entity_id,
                len: content.len(),
            });
        }
        let hash = content_hash(&self.entity_type, &content);
        Ok(EntityRecord {
            entity_id: self.entity_id,
            entity_type: self.entity_type,
            hash,
            content,
        })
    }
}

/// SHA-256 over `type \0 canonical content`, as lowercase hex. The type is part of the hash so
/// that an entity that changes class counts as updated even if its fields did not change.
pub fn content_hash(entity_type: &str, canonical_content: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(entity_type.as_bytes());
    hasher.update([0u8]);
    hasher.update(canonical_content.as_bytes());
    const_hex::encode(hasher.finalize())
}

/// Serialises a JSON value with object keys sorted at every level and no whitespace.
/// Does not rely on serde_json's map order, which a feature elsewhere in the build could change.
pub fn canonical_json(value: &Value) -> String {
    let mut out = Vec::with_capacity(256);
    write_canonical(value, &mut out);
    // serde_json writes only UTF-8, so the lossy branch is never taken.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Writes straight into `out`: no string per key or scalar, no second lookup per key (the
/// canonical form was a fifth of the pipeline's CPU before, BENCHMARKS.md #6).
fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (key, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_leaf(key, out);
                out.push(b':');
                write_canonical(v, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => write_leaf(scalar, out),
    }
}

/// A string or scalar in serde_json's compact form. Serialising one into a Vec cannot fail;
/// should it ever, `null` keeps the output valid JSON rather than panicking.
fn write_leaf<T: serde::Serialize + ?Sized>(leaf: &T, out: &mut Vec<u8>) {
    let start = out.len();
    if serde_json::to_writer(&mut *out, leaf).is_err() {
        out.truncate(start);
        out.extend_from_slice(b"null");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_form_ignores_key_order_and_whitespace() {
        let a: Value = serde_json::from_str(r#"{"b": 1, "a": {"y": [1, 2], "x": "s"}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":{"x":"s","y":[1,2]},"b":1}"#).unwrap();
        assert_eq!(canonical_json(&a), r#"{"a":{"x":"s","y":[1,2]},"b":1}"#);
        assert_eq!(canonical_json(&a), canonical_json(&b));
    }

    #[test]
    fn escapes_and_numbers_are_written_as_serde_json_writes_them() {
        // Stored hashes depend on these exact bytes: a change here marks every entity updated.
        let v = json!({"b": "q\"uote\n\u{1}", "a": [1.5, -2, true, null, "é"], "c": {"z": 1e300, "y": {}}});
        assert_eq!(
            canonical_json(&v),
            r#"{"a":[1.5,-2,true,null,"é"],"b":"q\"uote\n\u0001","c":{"y":{},"z":1e+300}}"#
        );
    }

    #[test]
    fn hash_changes_with_content_and_type_but_not_key_order() {
        let e = |t: &str, v: Value| Entity {
            entity_id: "x".into(),
            entity_type: t.into(),
            content: v,
        };
        let h1 = e("T", json!({"a": 1, "b": 2})).into_record().unwrap().hash;
        let h2 = e("T", json!({"b": 2, "a": 1})).into_record().unwrap().hash;
        let h3 = e("T", json!({"a": 1, "b": 3})).into_record().unwrap().hash;
        let h4 = e("U", json!({"a": 1, "b": 2})).into_record().unwrap().hash;
        assert_eq!(h1, h2);
        assert_ne!(h1, h3);
        assert_ne!(h1, h4);
        assert_eq!(h1.len(), 64);
    }

    #[test]
    fn invalid_entities_are_processing_errors() {
        let e = |id: &str, t: &str, v: Value| Entity {
            entity_id: id.into(),
            entity_type: t.into(),
            content: v,
        };
        assert_eq!(
            e("", "T", json!({})).into_record(),
            Err(ProcessingError::EmptyId)
        );
        assert!(matches!(
            e("x", "", json!({})).into_record(),
            Err(ProcessingError::EmptyType { .. })
        ));
        let long = "i".repeat(MAX_ENTITY_ID_LEN + 1);
        assert!(matches!(
            e(&long, "T", json!({})).into_record(),
            Err(ProcessingError::IdTooLong { .. })
        ));
        assert_eq!(
            e("a\0b", "T", json!({})).into_record(),
            Err(ProcessingError::NulByte { what: "id" })
        );
        assert_eq!(
            e("x", "T\0", json!({})).into_record(),
            Err(ProcessingError::NulByte { what: "type" })
        );
        // In content a NUL is escaped (`\u0000`), which every destination stores.
        let nul = e("x", "T", json!({"s": "a\0b"})).into_record().unwrap();
        assert!(!nul.content.contains('\0'), "{}", nul.content);
        let big = json!({ "blob": "z".repeat(MAX_CONTENT_BYTES) });
        assert!(matches!(
            e("x", "T", big).into_record(),
            Err(ProcessingError::ContentTooLarge { .. })
        ));
    }
}
