//! The persisted checkpoint: a snapshot of the read model and the position it reflects,
//! written atomically (temp file, fsync, rename, fsync of the directory) so that a crash
//! leaves either the old snapshot or the new one, never half of one.
//!
//! A snapshot is only a shortcut: deleting it costs a rebuild from position 0, nothing more.

use crate::model::ReadModel;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Bumped whenever the shape of [`ReadModel`] changes; an older snapshot is ignored (rebuilt).
pub const SNAPSHOT_FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("snapshot {path} is unreadable: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("snapshot {path} has format {found}, this build writes {SNAPSHOT_FORMAT}")]
    Format { path: PathBuf, found: u32 },
}

#[derive(Serialize)]
struct Out<'a> {
    format: u32,
    model: &'a ReadModel,
}

#[derive(Deserialize)]
struct In {
    format: u32,
    model: Option<ReadModel>,
}

/// Serialises the model (the caller holds whatever lock guards it only for this call).
pub fn encode(model: &ReadModel) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(&Out {
        format: SNAPSHOT_FORMAT,
        model,
    })
}

/// Writes `bytes` to `path` atomically and durably.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), SnapshotError> {
    let io = |source| SnapshotError::Io {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)?;
    // The rename is durable only once the directory entry is.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Saves a snapshot of `model` at `path`.
pub fn save(path: &Path, model: &ReadModel) -> Result<(), SnapshotError> {
    let bytes = encode(model).map_err(|source| SnapshotError::Json {
        path: path.to_owned(),
        source,
    })?;
    write_atomic(path, &bytes)
}

/// Loads the snapshot at `path`: `Ok(None)` if there is none.
pub fn load(path: &Path) -> Result<Option<ReadModel>, SnapshotError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(SnapshotError::Io {
                path: path.to_owned(),
                source,
            })
        }
    };
    let json = |source| SnapshotError::Json {
        path: path.to_owned(),
        source,
    };
    // Read the format first so that a snapshot of another shape reports as such.
    let head: serde_json::Value = serde_json::from_slice(&bytes).map_err(json)?;
    let found = head
        .get("format")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0) as u32;
    if found != SNAPSHOT_FORMAT {
        return Err(SnapshotError::Format {
            path: path.to_owned(),
            found,
        });
    }
    let parsed: In = serde_json::from_value(head).map_err(json)?;
    debug_assert_eq!(parsed.format, SNAPSHOT_FORMAT);
    Ok(parsed.model.map(|mut m| {
        m.rebuild_indexes();
        m
    }))
}
