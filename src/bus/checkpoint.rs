//! The relay's durable checkpoint: the last global position JetStream acknowledged.
//!
//! A small JSON file `{"stream": "SYNCJOBS", "position": 42}` replaced atomically (temp file,
//! fsync, rename, fsync of the directory), so a crash leaves either the old or the new
//! checkpoint, never a torn one. The stream name is kept so that pointing the relay at another
//! stream republishes everything instead of silently starting half-way.

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("checkpoint task failed: {0}")]
    Join(String),
}

#[derive(Debug, Serialize, Deserialize)]
struct File {
    stream: String,
    position: u64,
}

/// The saved position for `stream`, or 0 when there is none. An unreadable or foreign file
/// also gives 0 (with a warning): republishing is safe, skipping is not.
pub async fn load(path: &Path, stream: &str) -> Result<u64, CheckpointError> {
    let path = path.to_owned();
    let stream = stream.to_owned();
    tokio::task::spawn_blocking(move || load_blocking(&path, &stream))
        .await
        .map_err(|e| CheckpointError::Join(e.to_string()))?
}

fn load_blocking(path: &Path, stream: &str) -> Result<u64, CheckpointError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(source) => {
            return Err(CheckpointError::Io {
                path: path.to_owned(),
                source,
            })
        }
    };
    match serde_json::from_str::<File>(&text) {
        Ok(f) if f.stream == stream => Ok(f.position),
        Ok(f) => {
            tracing::warn!(
                path = %path.display(),
                saved_stream = %f.stream,
                stream,
                "relay checkpoint is for another stream; republishing from the start"
            );
            Ok(0)
        }
        Err(e) => {
            tracing::warn!(
                path = %path.display(),
                error = %e,
                "relay checkpoint is unreadable; republishing from the start"
            );
            Ok(0)
        }
    }
}

/// Replaces the checkpoint with `position`, durably.
pub async fn save(path: &Path, stream: &str, position: u64) -> Result<(), CheckpointError> {
    let path = path.to_owned();
    let body = File {
        stream: stream.to_owned(),
        position,
    };
    tokio::task::spawn_blocking(move || save_blocking(&path, &body))
        .await
        .map_err(|e| CheckpointError::Join(e.to_string()))?
}

fn save_blocking(path: &Path, body: &File) -> Result<(), CheckpointError> {
    let io = |source| CheckpointError::Io {
        path: path.to_owned(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(io)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "relay-checkpoint".into());
    let tmp = dir.join(format!(".{name}.tmp"));
    let json = serde_json::to_vec(body).map_err(|e| io(std::io::Error::other(e)))?;
    {
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&json).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)?;
    // The rename itself must survive a power cut, or the old checkpoint comes back.
    #[cfg(unix)]
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_saved_checkpoint_is_read_back_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("relay.checkpoint");
        assert_eq!(load(&path, "S").await.unwrap(), 0, "no file means start");
        save(&path, "S", 41).await.unwrap();
        save(&path, "S", 42).await.unwrap();
        assert_eq!(load(&path, "S").await.unwrap(), 42);
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["relay.checkpoint".to_owned()]);
    }

    #[tokio::test]
    async fn a_torn_or_foreign_checkpoint_republishes_from_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c");
        std::fs::write(&path, b"{\"stream\":\"S\",\"posi").unwrap();
        assert_eq!(load(&path, "S").await.unwrap(), 0);
        save(&path, "OTHER", 7).await.unwrap();
        assert_eq!(load(&path, "S").await.unwrap(), 0);
        assert_eq!(load(&path, "OTHER").await.unwrap(), 7);
    }
}
