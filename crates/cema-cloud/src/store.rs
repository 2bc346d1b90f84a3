//! Durable session state. The cloud acknowledges an upload only after [`SessionStore::append_upload`]
//! returned, and publishes a version only after [`SessionStore::commit_round`] returned, so a
//! process killed at any instant restarts with every acknowledged upload and no version
//! regression. Behind a trait so that a fleet store (`docs/design/past-one-machine.md`) is an
//! addition, not a rewrite.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

/// (device, seq) → uploaded u8 pixels (possibly empty: a round with nothing selected).
const UPLOADS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("uploads");
/// device → JSON [`SessionRecord`].
const SESSIONS: TableDefinition<&str, &str> = TableDefinition::new("sessions");
/// device → [`cema_adapt::CloudSnapshot`] bytes after the last committed round.
const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub model_id: String,
    /// The sequence number expected next from the device.
    pub next_seq: u64,
    /// The last upload whose round is in the snapshot (`None`: no round yet).
    pub applied_seq: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
#[error("session store: {0}")]
pub struct StoreError(String);

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Where sessions live between rounds and across restarts.
pub trait SessionStore: Send + Sync {
    /// Every session with its record.
    fn sessions(&self) -> Result<Vec<(String, SessionRecord)>>;
    /// Creates a session with its initial snapshot, atomically.
    fn create(&self, device: &str, record: &SessionRecord, snapshot: &[u8]) -> Result<()>;
    /// Appends upload `seq` and advances `next_seq` to `seq + 1`, durably, atomically.
    fn append_upload(&self, device: &str, seq: u64, pixels: &[u8]) -> Result<()>;
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
    /// Uploads with sequence number greater than `after` (all when `None`), in order.
    fn uploads_after(&self, device: &str, after: Option<u64>) -> Result<Vec<(u64, Vec<u8>)>>;
    /// The last `max_samples` uploaded samples with sequence number ≤ `upto`, oldest first.
    fn replay_tail(
        &self,
        device: &str,
        upto: Option<u64>,
        image_size: usize,
        max_samples: usize,
    ) -> Result<Vec<u8>>;
}

/// [`SessionStore`] in one redb file (fsync on every commit: redb's `Durability::Immediate`).
pub struct RedbStore {
    db: Database,
}

impl RedbStore {
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError(format!("{}: {e}", dir.display())))?;
        }
        let db =
            Database::create(path).map_err(|e| StoreError(format!("{}: {e}", path.display())))?;
        let w = db.begin_write().map_err(err)?;
        {
            w.open_table(UPLOADS).map_err(err)?;
            w.open_table(SESSIONS).map_err(err)?;
            w.open_table(SNAPSHOTS).map_err(err)?;
        }
        w.commit().map_err(err)?;
        Ok(RedbStore { db })
    }
}

fn read_record(
    t: &impl ReadableTable<&'static str, &'static str>,
    device: &str,
) -> Result<SessionRecord> {
    let v = t
        .get(device)
        .map_err(err)?
        .ok_or_else(|| StoreError(format!("no session for `{device}`")))?;
    serde_json::from_str(v.value()).map_err(err)
}

impl SessionStore for RedbStore {
    fn sessions(&self) -> Result<Vec<(String, SessionRecord)>> {
        let r = self.db.begin_read().map_err(err)?;
        let t = r.open_table(SESSIONS).map_err(err)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(err)? {
            let (k, v) = row.map_err(err)?;
            out.push((
                k.value().to_string(),
                serde_json::from_str(v.value()).map_err(err)?,
            ));
        }
        Ok(out)
    }

    fn create(&self, device: &str, record: &SessionRecord, snapshot: &[u8]) -> Result<()> {
        let w = self.db.begin_write().map_err(err)?;
        {
            let json = serde_json::to_string(record).map_err(err)?;
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
    }

    fn append_upload(&self, device: &str, seq: u64, pixels: &[u8]) -> Result<()> {
        // Read-modify-write inside one write transaction: redb serialises writers, so a round
        // committing concurrently cannot interleave with this and write back a stale record.
        let w = self.db.begin_write().map_err(err)?;
        {
            let mut sessions = w.open_table(SESSIONS).map_err(err)?;
            let mut record = read_record(&sessions, device)?;
            if record.next_seq != seq {
                return Err(StoreError(format!(
                    "upload {seq} out of order (next is {})",
                    record.next_seq
                )));
            }
            record.next_seq = seq + 1;
            let mut uploads = w.open_table(UPLOADS).map_err(err)?;
            if uploads.get((device, seq)).map_err(err)?.is_some() {
                return Err(StoreError(format!(
                    "upload {seq} of `{device}` is already stored"
                )));
            }
            uploads.insert((device, seq), pixels).map_err(err)?;
            let json = serde_json::to_string(&record).map_err(err)?;
            sessions.insert(device, json.as_str()).map_err(err)?;
        }
        w.commit().map_err(err)
    }

    fn commit_round(
        &self,
        device: &str,
        seq: u64,
        snapshot: &[u8],
        image_size: usize,
        keep_samples: usize,
    ) -> Result<()> {
        let w = self.db.begin_write().map_err(err)?;
        {
            let mut sessions = w.open_table(SESSIONS).map_err(err)?;
            let mut record = read_record(&sessions, device)?;
            record.applied_seq = Some(seq);
            let json = serde_json::to_string(&record).map_err(err)?;
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
        }
        w.commit().map_err(err)
    }

    fn snapshot(&self, device: &str) -> Result<Option<Vec<u8>>> {
        let r = self.db.begin_read().map_err(err)?;
        let t = r.open_table(SNAPSHOTS).map_err(err)?;
        Ok(t.get(device).map_err(err)?.map(|g| g.value().to_vec()))
    }

    fn uploads_after(&self, device: &str, after: Option<u64>) -> Result<Vec<(u64, Vec<u8>)>> {
        let r = self.db.begin_read().map_err(err)?;
        let t = r.open_table(UPLOADS).map_err(err)?;
        let start = after.map_or(0, |a| a + 1);
        let mut out = Vec::new();
        for row in t.range((device, start)..=(device, u64::MAX)).map_err(err)? {
            let (k, v) = row.map_err(err)?;
            out.push((k.value().1, v.value().to_vec()));
        }
        Ok(out)
    }

    fn replay_tail(
        &self,
        device: &str,
        upto: Option<u64>,
        image_size: usize,
        max_samples: usize,
    ) -> Result<Vec<u8>> {
        let Some(upto) = upto else {
            return Ok(Vec::new());
        };
        let r = self.db.begin_read().map_err(err)?;
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
    }
}
