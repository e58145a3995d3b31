//! The persisted checkpoint: a snapshot of the read model and the position it reflects,
//! written atomically (temp file, fsync, rename, fsync of the directory) so that a crash
//! leaves either the old snapshot or the new one, never half of one.
//!
//! A snapshot is only a shortcut: deleting it costs a rebuild from position 0, nothing more,
//! and so does any snapshot this build cannot use (another format, damaged, not a snapshot).
//!
//! The file is binary: a header (magic, format, CRC-32 of the body) and the model as
//! MessagePack. Format 1 was one JSON document; for 100,000 jobs (70 MB) its load was most
//! of a restart and peaked at 600 MB of memory (BENCHMARKS.md, #4).

use crate::model::ReadModel;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Bumped whenever the shape of [`ReadModel`] or the encoding changes; a snapshot of
/// another format is ignored (the model is rebuilt from the log). 1 was JSON.
pub const SNAPSHOT_FORMAT: u32 = 2;

/// The first bytes of every snapshot file.
const MAGIC: &[u8; 8] = b"SJREADMD";
/// Magic, format (u32 LE), CRC-32 of the body (u32 LE).
const HEADER_LEN: usize = MAGIC.len() + 4 + 4;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is no read-model snapshot of this kind (an older JSON one, or another file)")]
    NotASnapshot { path: PathBuf },
    #[error("snapshot {path} has format {found}, this build reads {SNAPSHOT_FORMAT}")]
    Format { path: PathBuf, found: u32 },
    #[error("snapshot {path} is damaged: its checksum does not match")]
    Checksum { path: PathBuf },
    #[error("snapshot {path} is unreadable: {source}")]
    Decode {
        path: PathBuf,
        source: rmp_serde::decode::Error,
    },
    #[error("the read model cannot be encoded: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
}

/// Serialises the model (the caller holds whatever lock guards it only for this call).
pub fn encode(model: &ReadModel) -> Result<Vec<u8>, SnapshotError> {
    let mut bytes = Vec::with_capacity(HEADER_LEN + 1024);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&SNAPSHOT_FORMAT.to_le_bytes());
    bytes.extend_from_slice(&[0; 4]); // the checksum, once the body is known
    rmp_serde::encode::write(&mut bytes, model)?;
    let crc = crc32fast::hash(&bytes[HEADER_LEN..]);
    bytes[HEADER_LEN - 4..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
    Ok(bytes)
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
    write_atomic(path, &encode(model)?)
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
    let body = check_header(path, &bytes)?;
    let mut model: ReadModel =
        rmp_serde::from_slice(body).map_err(|source| SnapshotError::Decode {
            path: path.to_owned(),
            source,
        })?;
    model.rebuild_indexes();
    Ok(Some(model))
}

/// The body of a snapshot whose header says it is one of ours, of this format, intact.
fn check_header<'a>(path: &Path, bytes: &'a [u8]) -> Result<&'a [u8], SnapshotError> {
    let (Some(header), Some(body)) = (bytes.get(..HEADER_LEN), bytes.get(HEADER_LEN..)) else {
        return Err(SnapshotError::NotASnapshot {
            path: path.to_owned(),
        });
    };
    let u32_at = |i: usize| {
        let mut b = [0; 4];
        b.copy_from_slice(&header[i..i + 4]);
        u32::from_le_bytes(b)
    };
    if &header[..MAGIC.len()] != MAGIC {
        return Err(SnapshotError::NotASnapshot {
            path: path.to_owned(),
        });
    }
    let found = u32_at(MAGIC.len());
    if found != SNAPSHOT_FORMAT {
        return Err(SnapshotError::Format {
            path: path.to_owned(),
            found,
        });
    }
    if crc32fast::hash(body) != u32_at(MAGIC.len() + 4) {
        return Err(SnapshotError::Checksum {
            path: path.to_owned(),
        });
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(format: u32, body: &[u8]) -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&format.to_le_bytes());
        b.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
        b.extend_from_slice(body);
        b
    }

    #[test]
    fn files_that_are_no_usable_snapshot_say_why() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("read_model.snapshot");
        type Expect = fn(&SnapshotError) -> bool;
        let cases: Vec<(Vec<u8>, Expect)> = vec![
            (br#"{"format":1,"model":null}"#.to_vec(), |e| {
                matches!(e, SnapshotError::NotASnapshot { .. })
            }),
            (b"SJRE".to_vec(), |e| {
                matches!(e, SnapshotError::NotASnapshot { .. })
            }),
            (header(999, b"\xc0"), |e| {
                matches!(e, SnapshotError::Format { found: 999, .. })
            }),
            (header(SNAPSHOT_FORMAT, b"\x93\x01"), |e| {
                matches!(e, SnapshotError::Decode { .. })
            }),
        ];
        for (bytes, expected) in cases {
            std::fs::write(&path, &bytes).unwrap();
            let err = load(&path).unwrap_err();
            assert!(expected(&err), "{bytes:?}: {err}");
        }
    }

    #[test]
    fn a_flipped_bit_is_caught_by_the_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("read_model.snapshot");
        let mut bytes = encode(&ReadModel::new()).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(load(&path), Err(SnapshotError::Checksum { .. })));
    }
}
