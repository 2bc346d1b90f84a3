//! [`SessionStore`] on NATS JetStream: `cema cloud --store-nats URL` keeps its sessions in the
//! fleet's stream and buckets instead of a local redb file (a cloud on a machine without a
//! durable disk). The cloud still owns every session alone: no leases, and it must not share a
//! model's buckets with running fleet workers.

use std::future::Future;

use bytes::Bytes;
use cema_adapt::CloudSnapshot;
use cema_cloud::store::{PendingUpload, Result};
use cema_cloud::{SessionRecord, SessionStore, StoreError};

use crate::entry::{Head, Kind, SessionEntry};
use crate::layout::{replay_tail, token, Fleet, FleetConfig, LoggedUpload, Progress};

pub struct JetStreamStore {
    fleet: Fleet,
    /// Drives the NATS client; the store's callers are plain or blocking threads.
    rt: tokio::runtime::Runtime,
}

fn nats_err(e: anyhow::Error) -> StoreError {
    // JetStream unreachable or refusing: the same request may succeed later.
    StoreError::new(format!("NATS: {e:#}"), true)
}

impl JetStreamStore {
    /// Connects to the NATS server at `url` and creates the model's stream and buckets if
    /// missing.
    pub fn connect(url: &str, model_id: &str) -> anyhow::Result<JetStreamStore> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("cema-nats-store")
            .enable_all()
            .build()?;
        let fleet = rt.block_on(Fleet::connect(url, model_id, FleetConfig::default()))?;
        Ok(JetStreamStore { fleet, rt })
    }

    /// Runs `f` on the store's runtime and waits for it; callable from any thread, including
    /// another runtime's blocking threads (where `block_on` is not).
    fn run<T: Send + 'static>(
        &self,
        fut: impl Future<Output = anyhow::Result<T>> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.rt.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv()
            .map_err(|_| StoreError::new("the NATS task ended", true))?
            .map_err(nats_err)
    }

    fn record(&self, device: &str) -> Result<Option<SessionEntry>> {
        let key = Fleet::session_key(device);
        let bytes = {
            let f = self.fleet.clone();
            self.run(async move { Ok(f.sessions.get(key).await?) })?
        };
        bytes
            .map(|b| {
                SessionEntry::from_bytes(&b)
                    .map_err(|e| StoreError::new(format!("session `{device}`: {e:#}"), false))
            })
            .transpose()
    }

    fn log(&self, device: &str) -> Result<Vec<LoggedUpload>> {
        let device = device.to_string();
        let f = self.fleet.clone();
        self.run(async move { f.read_log(&device).await })
    }

    fn write(&self, device: &str, record: SessionEntry, create: bool) -> Result<()> {
        let version = record.head.version;
        let meta = if record.head.kind == Kind::Snapshot {
            CloudSnapshot::from_bytes(&record.blob)
                .map(|s| s.meta.counters)
                .map_err(|e| StoreError::new(format!("snapshot of `{device}`: {e}"), false))?
        } else {
            Default::default()
        };
        let progress = Progress {
            applied_seq: record.head.applied_seq,
            version,
            samples: meta.samples_received,
            rounds: meta.rounds,
            record_bytes: record.blob.len() as u64,
        };
        let (key, dev) = (Fleet::session_key(device), token(device));
        let bytes: Bytes = record.to_bytes().into();
        let f = self.fleet.clone();
        self.run(async move {
            if create {
                f.sessions.create(&key, bytes).await?;
            } else {
                f.sessions.put(&key, bytes).await?;
            }
            // After the record: progress never leads it.
            f.progress.put(&dev, progress.to_bytes()).await?;
            Ok(())
        })
    }
}

fn version_of(snapshot: &[u8], device: &str) -> Result<u64> {
    CloudSnapshot::from_bytes(snapshot)
        .map(|s| s.meta.version)
        .map_err(|e| StoreError::new(format!("snapshot of `{device}`: {e}"), false))
}

impl SessionStore for JetStreamStore {
    fn sessions(&self) -> Result<Vec<(String, SessionRecord)>> {
        let f = self.fleet.clone();
        let devices = self.run(async move { f.devices().await })?;
        let mut out = Vec::new();
        for d in devices {
            let Some(record) = self.record(&d)? else {
                continue;
            };
            if record.head.kind != Kind::Snapshot {
                return Err(StoreError::new(
                    format!(
                        "session `{d}` was opened by a fleet gateway; a cloud cannot resume it"
                    ),
                    false,
                ));
            }
            let dev = d.clone();
            let last = {
                let f = self.fleet.clone();
                self.run(async move { f.last_upload(&dev).await })?
            };
            out.push((
                d,
                SessionRecord {
                    model_id: self.fleet.model_id.clone(),
                    next_seq: last.map_or(0, |(_, s)| s + 1),
                    applied_seq: record.head.applied_seq,
                },
            ));
        }
        Ok(out)
    }

    fn create(&self, device: &str, record: &SessionRecord, snapshot: &[u8]) -> Result<()> {
        let entry = SessionEntry {
            head: Head {
                kind: Kind::Snapshot,
                applied_seq: record.applied_seq,
                version: version_of(snapshot, device)?,
                owner: None,
                epoch: 0,
            },
            blob: snapshot.to_vec(),
        };
        self.write(device, entry, true)
    }

    fn append_upload(
        &self,
        device: &str,
        seq: u64,
        pixels: &[u8],
        stats: Option<&[u8]>,
    ) -> Result<()> {
        let (dev, pixels) = (device.to_string(), Bytes::copy_from_slice(pixels));
        let stats = stats.map(<[u8]>::to_vec);
        let f = self.fleet.clone();
        let appended = self.run(async move {
            let last = f.last_upload(&dev).await?;
            f.append_upload(&dev, seq, last, pixels, stats.as_deref())
                .await
        })?;
        if appended {
            Ok(())
        } else {
            Err(StoreError::new(
                format!("upload {seq} of `{device}` is already stored"),
                false,
            ))
        }
    }

    /// Old uploads are not deleted here: the stream keeps `FleetConfig::uploads_per_device` per
    /// device.
    fn commit_round(
        &self,
        device: &str,
        seq: u64,
        snapshot: &[u8],
        _image_size: usize,
        _keep_samples: usize,
    ) -> Result<()> {
        let entry = SessionEntry {
            head: Head {
                kind: Kind::Snapshot,
                applied_seq: Some(seq),
                version: version_of(snapshot, device)?,
                owner: None,
                epoch: 0,
            },
            blob: snapshot.to_vec(),
        };
        self.write(device, entry, false)
    }

    fn snapshot(&self, device: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.record(device)?.map(|r| r.blob))
    }

    fn uploads_after(&self, device: &str, after: Option<u64>) -> Result<Vec<PendingUpload>> {
        let from = after.map_or(0, |a| a + 1);
        Ok(self
            .log(device)?
            .into_iter()
            .filter(|u| u.seq >= from)
            .map(|u| PendingUpload {
                seq: u.seq,
                pixels: u.pixels.to_vec(),
                stats: u.stats.map(|s| s.to_vec()),
            })
            .collect())
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
        let log = self.log(device)?;
        let done: Vec<&LoggedUpload> = log.iter().filter(|u| u.seq <= upto).collect();
        Ok(replay_tail(&done, image_size, max_samples))
    }

    fn ready(&self, _room: u64) -> Result<()> {
        if self.fleet.client.connection_state() == async_nats::connection::State::Connected {
            Ok(())
        } else {
            Err(StoreError::new("not connected to NATS", true))
        }
    }
}
