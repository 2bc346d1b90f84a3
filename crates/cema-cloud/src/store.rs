//! Durable session state. The cloud acknowledges an upload only after [`SessionStore::append_upload`]
//! returned, and publishes a version only after [`SessionStore::commit_round`] returned, so a
//! process killed at any instant restarts with every acknowledged upload and no version
//! regression. Behind a trait so that a fleet store (`docs/design/past-one-machine.md`) is an
//! addition, not a rewrite.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

/// (device, seq) → uploaded u8 pixels (possibly empty: a round with nothing selected).
const UPLOADS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("uploads");
/// (device, seq) → the edge's running statistics sent with upload `seq` (issue #25's
/// extension), kept until that upload's round is committed: only pending rounds need them. A
/// table of its own so that stores written before it open unchanged.
const UPLOAD_STATS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("upload_stats");
/// device → JSON [`SessionRecord`].
const SESSIONS: TableDefinition<&str, &str> = TableDefinition::new("sessions");
/// device → [`cema_adapt::CloudSnapshot`] bytes after the last committed round.
const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");

/// An upload whose round has not been committed, as a store gives it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingUpload {
    pub seq: u64,
    /// u8 pixels, NHWC (possibly empty: a round with nothing selected).
    pub pixels: Vec<u8>,
    /// The edge's statistics, if it sent them (`cema_wire::Upload::stats`).
    pub stats: Option<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub model_id: String,
    /// The sequence number expected next from the device.
    pub next_seq: u64,
    /// The last upload whose round is in the snapshot (`None`: no round yet).
    pub applied_seq: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
#[error("session store: {message}")]
pub struct StoreError {
    message: String,
    /// The storage failed (disk full, I/O error): the request may succeed later, unchanged.
    /// Otherwise the request or the stored data is at fault.
    pub io: bool,
}

impl StoreError {
    /// `io`: the storage failed and the same request may succeed later (a 503 with a retry
    /// hint); otherwise the request or the stored data is at fault.
    pub fn new(message: impl Into<String>, io: bool) -> Self {
        StoreError {
            message: message.into(),
            io,
        }
    }

    fn other(message: impl Into<String>) -> Self {
        StoreError {
            message: message.into(),
            io: false,
        }
    }
}

fn err(e: impl Into<redb::Error>) -> StoreError {
    let e: redb::Error = e.into();
    StoreError {
        io: matches!(e, redb::Error::Io(_) | redb::Error::PreviousIo),
        message: e.to_string(),
    }
}

fn json_err(e: serde_json::Error) -> StoreError {
    StoreError::other(e.to_string())
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Where sessions live between rounds and across restarts.
pub trait SessionStore: Send + Sync {
    /// Every session with its record.
    fn sessions(&self) -> Result<Vec<(String, SessionRecord)>>;
    /// Creates a session with its initial snapshot, atomically.
    fn create(&self, device: &str, record: &SessionRecord, snapshot: &[u8]) -> Result<()>;
    /// Appends upload `seq` (its pixels and, if the edge sent them, its statistics) and
    /// advances `next_seq` to `seq + 1`, durably, atomically.
    fn append_upload(
        &self,
        device: &str,
        seq: u64,
        pixels: &[u8],
        stats: Option<&[u8]>,
    ) -> Result<()>;
    /// Records that the round of upload `seq` is done, with the snapshot after it, durably,
    /// atomically; uploads no longer needed for the replay buffer (older than the newest
    /// `keep_samples` samples) are deleted in the same transaction.
    fn commit_round(
        &self,
        device: &str,
        seq: u64,
        snapshot: &[u8],
        image_size: usize,
        keep_samples: usize,
    ) -> Result<()>;
    fn snapshot(&self, device: &str) -> Result<Option<Vec<u8>>>;
    /// Uploads with sequence number greater than `after` (all when `None`), in order, with
    /// their statistics.
    fn uploads_after(&self, device: &str, after: Option<u64>) -> Result<Vec<PendingUpload>>;
    /// The last `max_samples` uploaded samples with sequence number ≤ `upto`, oldest first.
    fn replay_tail(
        &self,
        device: &str,
        upto: Option<u64>,
        image_size: usize,
        max_samples: usize,
    ) -> Result<Vec<u8>>;
    /// Whether the store can take a write of `room` bytes now; after a storage failure, tries
    /// to recover first (a full disk with space back is writable again without a restart).
    fn ready(&self, room: u64) -> Result<()>;
}

/// Bytes of redb's page cache.
const STORE_CACHE: usize = 32 << 20;

/// [`SessionStore`] in one redb file (fsync on every commit: redb's `Durability::Immediate`).
///
/// After an I/O error redb refuses every later operation until the database is reopened, so a
/// storage failure marks the handle failed and the next operation reopens the file (redb
/// repairs it from the last commit). A full disk thus costs the requests made while it is full,
/// each refused with nothing changed, and no restart.
pub struct RedbStore {
    path: PathBuf,
    db: RwLock<Option<Database>>,
    failed: AtomicBool,
}

impl RedbStore {
    /// Opens (or creates) the store. An existing file that is not a session store, including
    /// an empty one, is refused naming the file: starting empty over it would lose every session.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::other(format!("{}: {e}", dir.display())))?;
        }
        if std::fs::metadata(path).is_ok_and(|m| m.len() == 0) {
            return Err(StoreError::other(format!(
                "{}: the file is empty, not a session store (a truncated store?); \
                 move it away to start with no sessions",
                path.display()
            )));
        }
        let store = RedbStore {
            path: path.to_path_buf(),
            db: RwLock::new(None),
            failed: AtomicBool::new(false),
        };
        store.reopen()?;
        Ok(store)
    }

    fn reopen(&self) -> Result<()> {
        let mut slot = self.db.write().expect("store lock");
        // The old handle holds the file lock: it goes before the file is opened again.
        *slot = None;
        // redb's page cache defaults to 1 GiB and fills with upload pages that are read once (at
        // a restart): bounded, so the store does not grow the cloud by the uploads it holds.
        let db = redb::Builder::new()
            .set_cache_size(STORE_CACHE)
            .create(&self.path)
            .map_err(|e| {
                let e = err(e);
                StoreError {
                    message: format!("{}: {}", self.path.display(), e.message),
                    ..e
                }
            })?;
        let w = db.begin_write().map_err(err)?;
        {
            w.open_table(UPLOADS).map_err(err)?;
            w.open_table(UPLOAD_STATS).map_err(err)?;
            w.open_table(SESSIONS).map_err(err)?;
            w.open_table(SNAPSHOTS).map_err(err)?;
        }
        w.commit().map_err(err)?;
        *slot = Some(db);
        self.failed.store(false, Ordering::Release);
        Ok(())
    }

    /// Runs `f` on the database, reopening it first after a storage failure.
    fn with<T>(&self, f: impl FnOnce(&Database) -> Result<T>) -> Result<T> {
        if self.failed.load(Ordering::Acquire) {
            self.reopen()?;
        }
        let slot = self.db.read().expect("store lock");
        let db = slot.as_ref().ok_or_else(|| StoreError {
            message: "the store is being reopened".into(),
            io: true,
        })?;
        let out = f(db);
        if out.as_ref().is_err_and(|e| e.io) {
            self.failed.store(true, Ordering::Release);
        }
        out
    }
}

fn read_record(
    t: &impl ReadableTable<&'static str, &'static str>,
    device: &str,
) -> Result<SessionRecord> {
    let v = t
        .get(device)
        .map_err(err)?
        .ok_or_else(|| StoreError::other(format!("no session for `{device}`")))?;
    serde_json::from_str(v.value()).map_err(json_err)
}

impl SessionStore for RedbStore {
    fn sessions(&self) -> Result<Vec<(String, SessionRecord)>> {
        self.with(|db| {
            let r = db.begin_read().map_err(err)?;
            let t = r.open_table(SESSIONS).map_err(err)?;
            let mut out = Vec::new();
            for row in t.iter().map_err(err)? {
                let (k, v) = row.map_err(err)?;
                out.push((
                    k.value().to_string(),
                    serde_json::from_str(v.value()).map_err(json_err)?,
                ));
            }
            Ok(out)
        })
    }

    fn create(&self, device: &str, record: &SessionRecord, snapshot: &[u8]) -> Result<()> {
        self.with(|db| {
            let w = db.begin_write().map_err(err)?;
            {
                let json = serde_json::to_string(record).map_err(json_err)?;
                w.open_table(SESSIONS)
                    .map_err(err)?
                    .insert(device, json.as_str())
                    .map_err(err)?;
                w.open_table(SNAPSHOTS)
                    .map_err(err)?
                    .insert(device, snapshot)
                    .map_err(err)?;
            }
            w.commit().map_err(err)
        })
    }

    fn append_upload(
        &self,
        device: &str,
        seq: u64,
        pixels: &[u8],
        stats: Option<&[u8]>,
    ) -> Result<()> {
        self.with(|db| {
            // Read-modify-write inside one write transaction: redb serialises writers, so a round
            // committing concurrently cannot interleave with this and write back a stale record.
            let w = db.begin_write().map_err(err)?;
            {
                let mut sessions = w.open_table(SESSIONS).map_err(err)?;
                let mut record = read_record(&sessions, device)?;
                if record.next_seq != seq {
                    return Err(StoreError::other(format!(
                        "upload {seq} out of order (next is {})",
                        record.next_seq
                    )));
                }
                record.next_seq = seq + 1;
                let mut uploads = w.open_table(UPLOADS).map_err(err)?;
                if uploads.get((device, seq)).map_err(err)?.is_some() {
                    return Err(StoreError::other(format!(
                        "upload {seq} of `{device}` is already stored"
                    )));
                }
                uploads.insert((device, seq), pixels).map_err(err)?;
                if let Some(stats) = stats {
                    w.open_table(UPLOAD_STATS)
                        .map_err(err)?
                        .insert((device, seq), stats)
                        .map_err(err)?;
                }
                let json = serde_json::to_string(&record).map_err(json_err)?;
                sessions.insert(device, json.as_str()).map_err(err)?;
            }
            w.commit().map_err(err)
        })
    }

    fn commit_round(
        &self,
        device: &str,
        seq: u64,
        snapshot: &[u8],
        image_size: usize,
        keep_samples: usize,
    ) -> Result<()> {
        self.with(|db| {
            let w = db.begin_write().map_err(err)?;
            {
                let mut sessions = w.open_table(SESSIONS).map_err(err)?;
                let mut record = read_record(&sessions, device)?;
                record.applied_seq = Some(seq);
                let json = serde_json::to_string(&record).map_err(json_err)?;
                sessions.insert(device, json.as_str()).map_err(err)?;
                w.open_table(SNAPSHOTS)
                    .map_err(err)?
                    .insert(device, snapshot)
                    .map_err(err)?;
                // Prune: walk back from `seq` until `keep_samples` are covered; older uploads are
                // neither pending nor in the replay buffer any more.
                let mut uploads = w.open_table(UPLOADS).map_err(err)?;
                let mut held = 0usize;
                let mut cut = None;
                for row in uploads
                    .range((device, 0)..=(device, seq))
                    .map_err(err)?
                    .rev()
                {
                    let (k, v) = row.map_err(err)?;
                    if held >= keep_samples {
                        cut = Some(k.value().1);
                        break;
                    }
                    held += v.value().len() / image_size.max(1);
                }
                if let Some(cut) = cut {
                    uploads
                        .retain_in((device, 0)..=(device, cut), |_, _| false)
                        .map_err(err)?;
                }
                w.open_table(UPLOAD_STATS)
                    .map_err(err)?
                    .retain_in((device, 0)..=(device, seq), |_, _| false)
                    .map_err(err)?;
            }
            w.commit().map_err(err)
        })
    }

    fn snapshot(&self, device: &str) -> Result<Option<Vec<u8>>> {
        self.with(|db| {
            let r = db.begin_read().map_err(err)?;
            let t = r.open_table(SNAPSHOTS).map_err(err)?;
            Ok(t.get(device).map_err(err)?.map(|g| g.value().to_vec()))
        })
    }

    fn uploads_after(&self, device: &str, after: Option<u64>) -> Result<Vec<PendingUpload>> {
        self.with(|db| {
            let r = db.begin_read().map_err(err)?;
            let t = r.open_table(UPLOADS).map_err(err)?;
            let stats = r.open_table(UPLOAD_STATS).map_err(err)?;
            let start = after.map_or(0, |a| a + 1);
            let mut out = Vec::new();
            for row in t.range((device, start)..=(device, u64::MAX)).map_err(err)? {
                let (k, v) = row.map_err(err)?;
                let seq = k.value().1;
                out.push(PendingUpload {
                    seq,
                    pixels: v.value().to_vec(),
                    stats: stats
                        .get((device, seq))
                        .map_err(err)?
                        .map(|g| g.value().to_vec()),
                });
            }
            Ok(out)
        })
    }

    fn replay_tail(
        &self,
        device: &str,
        upto: Option<u64>,
        image_size: usize,
        max_samples: usize,
    ) -> Result<Vec<u8>> {
        self.with(|db| {
            let Some(upto) = upto else {
                return Ok(Vec::new());
            };
            let r = db.begin_read().map_err(err)?;
            let t = r.open_table(UPLOADS).map_err(err)?;
            let mut chunks: Vec<Vec<u8>> = Vec::new();
            let mut held = 0usize;
            for row in t.range((device, 0)..=(device, upto)).map_err(err)?.rev() {
                let (_, v) = row.map_err(err)?;
                let px = v.value();
                let n = px.len() / image_size.max(1);
                let take = n.min(max_samples - held);
                chunks.push(px[(n - take) * image_size..].to_vec());
                held += take;
                if held >= max_samples {
                    break;
                }
            }
            Ok(chunks.into_iter().rev().flatten().collect())
        })
    }

    fn ready(&self, room: u64) -> Result<()> {
        // A commit can succeed on a full disk (in pages the file already has), so the file
        // system's free space is checked too.
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let vfs = rustix::fs::statvfs(dir).map_err(|e| StoreError {
            message: format!("{}: {e}", dir.display()),
            io: true,
        })?;
        let free = vfs.f_bavail.saturating_mul(vfs.f_frsize);
        if free < room {
            return Err(StoreError {
                message: format!(
                    "{}: {free} bytes free, fewer than one largest upload ({room})",
                    dir.display()
                ),
                io: true,
            });
        }
        self.with(|db| {
            // A write transaction that commits: the one thing that proves the store writable.
            let w = db.begin_write().map_err(err)?;
            w.open_table(SESSIONS).map_err(err)?;
            w.commit().map_err(err)
        })
    }
}
