//! The relay's durable cursor: the last global position JetStream acknowledged.
//!
//! On a store several nodes share (PostgreSQL) it is kept with the relay's lease
//! ([`load_shared`], [`save_shared`]): whichever node takes the relay over resumes where the
//! last holder's acknowledgements got to. Otherwise it is a file of the node's data dir,
//! a small JSON file `{"stream": "SYNCJOBS", "position": 42, "marks": [...]}` replaced
//! atomically (temp file, fsync, rename, fsync of the directory), so a crash leaves either the
//! old or the new cursor, never a torn one. The stream name is kept so that pointing the
//! relay at another stream republishes everything instead of silently starting half-way.
//!
//! The marks are the ids of a few events the relay passed, at positions spaced exponentially
//! back from the cursor. They let the relay tell that the log went back under it (a torn
//! WAL that lost the last commit, a restored older backup): the positions then hold other
//! events, or none, and [`agreed_position`] finds where the log and the relay still agree.

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use syncjobs_domain::store::{EventStore, Lease, StoreError};
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum CursorError {
    #[error("cursor {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cursor task failed: {0}")]
    Join(String),
    #[error("cursor kept with the relay's lease: {0}")]
    Lease(#[from] StoreError),
}

#[derive(Debug, Serialize, Deserialize)]
struct File {
    stream: String,
    position: u64,
    /// Absent in cursors of earlier releases: those can only tell a log that got shorter.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    marks: Vec<Mark>,
}

/// The event the relay passed at `position`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    pub position: u64,
    pub event_id: Uuid,
}

/// What a cursor holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Saved {
    pub position: u64,
    /// Newest first; the first is at `position` (none in an earlier release's cursor).
    pub marks: Vec<Mark>,
}

/// Ids of events the relay passed, newest first, ever sparser going back: the gap between two
/// marks is at most the first one's distance from the newest. So whatever tail of the log is
/// lost, the nearest mark before it is less than twice the tail's length back from the newest
/// (going back there republishes less than twice what was lost, and JetStream drops as
/// duplicates what it still has), and about 2·log2(position) marks are kept.
#[derive(Debug, Clone, Default)]
pub struct Marks {
    newest_first: Vec<Mark>,
}

impl Marks {
    pub fn from_saved(marks: &[Mark]) -> Self {
        let mut newest_first = marks.to_vec();
        newest_first.sort_by_key(|m| std::cmp::Reverse(m.position));
        newest_first.dedup_by_key(|m| m.position);
        Marks { newest_first }
    }

    /// Records that the relay passed `event_id` at `position` (increasing from call to call),
    /// and drops the marks no longer needed to keep the gaps within bounds.
    pub fn note(&mut self, position: u64, event_id: Uuid) {
        self.newest_first.insert(0, Mark { position, event_id });
        let marks = &mut self.newest_first;
        let mut i = 1;
        while i + 1 < marks.len() {
            let newer = marks[i - 1].position;
            let gap = newer.saturating_sub(marks[i + 1].position);
            if gap <= position.saturating_sub(newer).max(1) {
                marks.remove(i);
            } else {
                i += 1;
            }
        }
    }

    /// The marks, newest first.
    pub fn list(&self) -> Vec<Mark> {
        self.newest_first.clone()
    }

    /// Forgets the marks past `position` (the relay goes back to it).
    pub fn truncate(&mut self, position: u64) {
        self.newest_first.retain(|m| m.position <= position);
    }
}

/// The highest position up to which the log still holds what the relay published, given its
/// cursor and the log's head now: `saved.position` when nothing went back. Positions past
/// the head are gone; a mark whose position now holds another event was lost and taken by a
/// new one. Without marks (an earlier release's cursor) only a shorter log can be told.
/// No mark agreeing at all means the log was replaced: 0, everything is published again.
pub async fn agreed_position(
    store: &dyn EventStore,
    saved: &Saved,
    head: u64,
) -> Result<u64, StoreError> {
    if saved.marks.is_empty() {
        return Ok(saved.position.min(head));
    }
    for mark in &saved.marks {
        if mark.position == 0 || mark.position > head {
            continue;
        }
        let at = store.read_all(mark.position - 1, 1).await?;
        if let Some(e) = at.first() {
            if e.global_position == mark.position && e.event_id == mark.event_id {
                return Ok(mark.position);
            }
        }
    }
    Ok(0)
}

/// The saved position for `stream`, or 0 when there is none. An unreadable or foreign file
/// also gives 0 (with a warning): republishing is safe, skipping is not.
pub async fn load(path: &Path, stream: &str) -> Result<Saved, CursorError> {
    let path = path.to_owned();
    let stream = stream.to_owned();
    tokio::task::spawn_blocking(move || load_blocking(&path, &stream))
        .await
        .map_err(|e| CursorError::Join(e.to_string()))?
}

/// The cursor kept with the relay's lease, shared by every node that may hold it, or,
/// while the lease holds none yet (the first holder after an upgrade from one node), the
/// file at `fallback`: an older cursor only republishes (JetStream drops the duplicates).
pub async fn load_shared(
    lease: &Lease,
    fallback: &Path,
    stream: &str,
) -> Result<Saved, CursorError> {
    match lease.load_state().await? {
        Some(text) => Ok(decode(&text, stream, "the relay's lease")),
        None => load(fallback, stream).await,
    }
}

/// Saves the cursor with the relay's lease; fails once the lease is lost (its successor's
/// cursor is never overwritten).
pub async fn save_shared(
    lease: &Lease,
    stream: &str,
    position: u64,
    marks: Vec<Mark>,
) -> Result<(), CursorError> {
    let body = File {
        stream: stream.to_owned(),
        position,
        marks,
    };
    let json = serde_json::to_string(&body).map_err(|e| StoreError::Backend(e.to_string()))?;
    Ok(lease.save_state(&json).await?)
}

fn load_blocking(path: &Path, stream: &str) -> Result<Saved, CursorError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Saved::default()),
        Err(source) => {
            return Err(CursorError::Io {
                path: path.to_owned(),
                source,
            })
        }
    };
    Ok(decode(&text, stream, &path.display().to_string()))
}

/// A cursor's text read from `path` (a file, or the lease) as the cursor of `stream`.
fn decode(text: &str, stream: &str, path: &str) -> Saved {
    match serde_json::from_str::<File>(text) {
        Ok(f) if f.stream == stream => {
            let mut marks = f.marks;
            marks.sort_by_key(|m| std::cmp::Reverse(m.position));
            Saved {
                position: f.position,
                marks,
            }
        }
        Ok(f) => {
            tracing::warn!(
                path,
                saved_stream = %f.stream,
                stream,
                "relay cursor is for another stream; republishing from the start"
            );
            Saved::default()
        }
        Err(e) => {
            tracing::warn!(
                path,
                error = %e,
                "relay cursor is unreadable; republishing from the start"
            );
            Saved::default()
        }
    }
}

/// Replaces the cursor with `position` and `marks`, durably.
pub async fn save(
    path: &Path,
    stream: &str,
    position: u64,
    marks: Vec<Mark>,
) -> Result<(), CursorError> {
    let path = path.to_owned();
    let body = File {
        stream: stream.to_owned(),
        position,
        marks,
    };
    tokio::task::spawn_blocking(move || save_blocking(&path, &body))
        .await
        .map_err(|e| CursorError::Join(e.to_string()))?
}

fn save_blocking(path: &Path, body: &File) -> Result<(), CursorError> {
    let io = |source| CursorError::Io {
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
    // The rename itself must survive a power cut, or the old cursor comes back.
    #[cfg(unix)]
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use std::sync::Arc;
    use syncjobs_domain::events::{Metadata, NewEvent, SyncJobEvent};
    use syncjobs_domain::store::{ExpectedVersion, InMemoryStore};

    #[tokio::test]
    async fn a_saved_cursor_is_read_back_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("relay.checkpoint");
        assert_eq!(
            load(&path, "S").await.unwrap().position,
            0,
            "no file means start"
        );
        save(&path, "S", 41, vec![]).await.unwrap();
        let marks = vec![
            Mark {
                position: 42,
                event_id: Uuid::new_v4(),
            },
            Mark {
                position: 40,
                event_id: Uuid::new_v4(),
            },
        ];
        save(&path, "S", 42, marks.clone()).await.unwrap();
        assert_eq!(
            load(&path, "S").await.unwrap(),
            Saved {
                position: 42,
                marks
            }
        );
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["relay.checkpoint".to_owned()]);
    }

    #[tokio::test]
    async fn a_torn_or_foreign_cursor_republishes_from_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c");
        std::fs::write(&path, b"{\"stream\":\"S\",\"posi").unwrap();
        assert_eq!(load(&path, "S").await.unwrap(), Saved::default());
        save(&path, "OTHER", 7, vec![]).await.unwrap();
        assert_eq!(load(&path, "S").await.unwrap(), Saved::default());
        assert_eq!(load(&path, "OTHER").await.unwrap().position, 7);
        // An earlier release's cursor has no marks.
        std::fs::write(&path, br#"{"stream":"S","position":9}"#).unwrap();
        assert_eq!(
            load(&path, "S").await.unwrap(),
            Saved {
                position: 9,
                marks: vec![]
            }
        );
    }

    /// A lease whose state lives in memory (as PostgreSQL keeps it in `syncjobs_leases`).
    fn lease_in_memory() -> Lease {
        struct Memory(std::sync::Mutex<Option<String>>);
        #[async_trait::async_trait]
        impl syncjobs_domain::store::LeaseState for Memory {
            async fn load(&self) -> Result<Option<String>, StoreError> {
                Ok(self.0.lock().unwrap().clone())
            }
            async fn save(&self, state: &str) -> Result<(), StoreError> {
                *self.0.lock().unwrap() = Some(state.to_owned());
                Ok(())
            }
        }
        let (tx, lost) = tokio::sync::watch::channel(None);
        Lease::held(
            lost,
            Box::new(Memory(std::sync::Mutex::new(None))),
            Box::new(tx),
        )
    }

    /// The first holder after an upgrade from one node resumes from its cursor file; from
    /// then on the cursor is the lease's, whichever node's file says otherwise.
    #[tokio::test]
    async fn a_shared_cursor_starts_from_the_file_and_then_is_the_leases() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c");
        let lease = lease_in_memory();
        assert_eq!(
            load_shared(&lease, &file, "S").await.unwrap(),
            Saved::default()
        );
        save(&file, "S", 7, vec![]).await.unwrap();
        assert_eq!(load_shared(&lease, &file, "S").await.unwrap().position, 7);
        let marks = vec![Mark {
            position: 9,
            event_id: Uuid::new_v4(),
        }];
        save_shared(&lease, "S", 9, marks.clone()).await.unwrap();
        assert_eq!(
            load_shared(&lease, &file, "S").await.unwrap(),
            Saved { position: 9, marks }
        );
        assert_eq!(
            load(&file, "S").await.unwrap().position,
            7,
            "the file is left alone"
        );
        // A cursor of another stream is not resumed from.
        assert_eq!(
            load_shared(&lease, &file, "OTHER").await.unwrap(),
            Saved::default()
        );
    }

    /// Appends `n` events to `store`, returning their ids.
    async fn append(store: &InMemoryStore, n: usize) -> Vec<Uuid> {
        let mut ids = vec![];
        for _ in 0..n {
            let e = NewEvent::new(
                SyncJobEvent::JobStarted { worker: "w".into() },
                Utc::now(),
                Metadata::default(),
            );
            let r = store
                .append("job-x", ExpectedVersion::Any, vec![e])
                .await
                .unwrap();
            ids.push(r[0].event_id);
        }
        ids
    }

    fn saved(ids: &[Uuid]) -> Saved {
        let mut marks = Marks::default();
        for (i, id) in ids.iter().enumerate() {
            marks.note(i as u64 + 1, *id);
        }
        Saved {
            position: ids.len() as u64,
            marks: marks.list(),
        }
    }

    /// A store holding the same events as `ids` (same ids), then `more` new ones.
    async fn log_of(ids: &[Uuid], more: usize) -> Arc<InMemoryStore> {
        let store = InMemoryStore::new();
        for id in ids {
            let mut e = NewEvent::new(
                SyncJobEvent::JobStarted { worker: "w".into() },
                Utc::now(),
                Metadata::default(),
            );
            e.event_id = *id;
            store
                .append("job-x", ExpectedVersion::Any, vec![e])
                .await
                .unwrap();
        }
        append(&store, more).await;
        store
    }

    async fn agreed(s: &Saved, store: Arc<InMemoryStore>) -> u64 {
        let head = *store.watch_head().borrow();
        agreed_position(store.as_ref(), s, head).await.unwrap()
    }

    #[tokio::test]
    async fn the_agreed_position_is_where_the_log_still_holds_what_was_published() {
        let published = append(&InMemoryStore::new(), 100).await;
        let s = saved(&published);
        // Nothing went back, and the log went on.
        assert_eq!(agreed(&s, log_of(&published, 0).await).await, 100);
        assert_eq!(agreed(&s, log_of(&published, 7).await).await, 100);
        // The last commit (3 events) was lost: head behind the cursor...
        let at = agreed(&s, log_of(&published[..97], 0).await).await;
        assert!((95..=97).contains(&at), "{at}");
        // ...or new events took the lost positions and more: head past the cursor.
        assert_eq!(agreed(&s, log_of(&published[..97], 10).await).await, at);
        // An older backup restored: far back, but not to the start.
        let at = agreed(&s, log_of(&published[..30], 80).await).await;
        assert!((1..=30).contains(&at) && 100 - at < 2 * 70, "{at}");
        // Another log altogether: everything again.
        assert_eq!(agreed(&s, log_of(&[], 120).await).await, 0);
        // An earlier release's cursor (no marks) can only tell a shorter log.
        let old = Saved {
            position: 100,
            marks: vec![],
        };
        assert_eq!(agreed(&old, log_of(&published[..60], 0).await).await, 60);
        assert_eq!(agreed(&old, log_of(&published[..60], 50).await).await, 100);
    }

    #[test]
    fn marks_stay_few_and_spaced_exponentially_back_from_the_newest() {
        let mut marks = Marks::default();
        for p in 1..=1000 {
            marks.note(p, Uuid::from_u128(p as u128));
        }
        let positions: Vec<u64> = marks.list().iter().map(|m| m.position).collect();
        assert_eq!(positions[0], 1000, "{positions:?}");
        assert!(positions.len() <= 20, "{positions:?}");
        // Whatever tail is lost, the nearest mark before it is less than 2x its length back.
        for lost in 1..1000u64 {
            let start = 1000 - lost;
            let best = positions.iter().copied().find(|&p| p <= start).unwrap_or(0);
            assert!(
                1000 - best < 2 * lost,
                "lost {lost}: best {best} {positions:?}"
            );
        }
        for m in marks.list() {
            assert_eq!(m.event_id, Uuid::from_u128(m.position as u128));
        }
        for p in 1001..=100_000 {
            marks.note(p, Uuid::from_u128(p as u128));
        }
        assert!(marks.list().len() <= 40, "{}", marks.list().len());
        // A round trip through the file keeps them, and going back drops the newer ones.
        let mut again = Marks::from_saved(&marks.list());
        assert_eq!(again.list(), marks.list());
        again.truncate(90_000);
        assert!(again.list().iter().all(|m| m.position <= 90_000));
        assert!(!again.list().is_empty());
    }
}
