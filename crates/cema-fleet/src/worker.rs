//! `cema worker`: owns slots of devices by lease and runs their rounds.
//!
//! A lease task keeps this worker in the members bucket, computes which slots it should own
//! (rendezvous hashing over the live members), acquires those (a KV create that fails while
//! another holds the slot), renews them (a compare-and-set on the lease's revision) and reports
//! losses. The round loop, on acquiring a slot, claims each of its sessions (rewrites its record
//! with a compare-and-set, so a deposed owner's next commit fails), rebuilds it from the record
//! and the device's upload log, and follows the slot's uploads with an ordered consumer from
//! where that read began. Each round: receive + step off the async threads, commit the snapshot
//! with `applied_seq` (CAS on the record's revision), then publish the norm state (CAS on the
//! norm key, never a version older than the one there). A worker that cannot commit has been
//! deposed: it drops the slot at once and publishes nothing.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use async_nats::jetstream::kv;
use bytes::Bytes;
use cema_adapt::{AdaptError, CloudAdapter, CloudConfig, CloudSnapshot};
use cema_model::{Device, Model, NormState};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use cema_cloud::metrics::{Metrics, RoundOutcome};

use crate::entry::{Head, Kind, SessionEntry};
use crate::layout::{
    device_of, owner_of, token, Fleet, FleetConfig, LoggedUpload, Progress, SLOTS,
};

#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub nats: String,
    /// Unique among live workers.
    pub id: String,
    pub edge_model: PathBuf,
    pub foundation: PathBuf,
    pub config: CloudConfig,
    pub fleet: FleetConfig,
    /// Fault injection: extra time every round takes.
    pub round_delay: Duration,
    pub device: Device,
}

struct Lease {
    revision: u64,
    renewed: Instant,
}

enum Event {
    Acquired(u32, u64),
    /// The lease could not be renewed, or this worker should no longer own the slot.
    Lost(u32),
    Release(u32),
    Upload {
        slot: u32,
        device: String,
        upload: LoggedUpload,
    },
    /// The slot's consumer failed; the slot is given up and taken again.
    FeedEnded(u32),
}

struct Sess {
    /// Taken out while its round runs on a blocking thread.
    adapter: Option<CloudAdapter>,
    /// The record's revision after this worker's last claim or commit.
    revision: u64,
    queue: VecDeque<LoggedUpload>,
    /// The next upload seq to queue.
    next: u64,
}

struct Slot {
    epoch: u64,
    sessions: HashMap<String, Sess>,
    feed: tokio::task::JoinHandle<()>,
}

pub struct Worker {
    fleet: Fleet,
    options: WorkerOptions,
    foundation: Model,
    edge: Model,
    image_size: usize,
    leases: Arc<Mutex<HashMap<u32, Lease>>>,
    slots: HashMap<u32, Slot>,
    turn: VecDeque<(u32, String)>,
    events: mpsc::UnboundedSender<Event>,
    metrics: Arc<Metrics>,
}

impl Worker {
    /// Runs until `shutdown` resolves; then finishes the round in progress, gives its slots
    /// back and leaves the members.
    /// Counts into `metrics` (rounds by outcome, round time, published versions, sessions and
    /// queued uploads held, failed commits).
    pub async fn run(
        options: WorkerOptions,
        metrics: Arc<Metrics>,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let edge = Model::load(&options.edge_model, &options.device)
            .with_context(|| format!("edge model {}", options.edge_model.display()))?;
        let foundation = Model::load(&options.foundation, &options.device)
            .with_context(|| format!("foundation {}", options.foundation.display()))?;
        cema_adapt::check_compatible(&foundation, &edge)?;
        let fleet = Fleet::connect(&options.nats, &edge.card.name, options.fleet.clone()).await?;
        let i = &edge.card.input;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut w = Worker {
            image_size: i.height * i.width * i.channels,
            fleet,
            options,
            foundation,
            edge,
            leases: Arc::default(),
            slots: HashMap::new(),
            turn: VecDeque::new(),
            events: tx.clone(),
            metrics,
        };
        let leasing = tokio::spawn(lease_loop(
            w.fleet.clone(),
            w.options.id.clone(),
            w.leases.clone(),
            tx,
        ));
        tracing::info!(
            worker = w.options.id,
            model = w.fleet.model_id,
            "worker started"
        );
        tokio::pin!(shutdown);
        loop {
            // Everything that arrived, then one round; wait only when there is no work.
            while let Ok(ev) = rx.try_recv() {
                w.handle(ev).await;
            }
            w.gauges();
            if let Some((slot, device)) = w.next_ready() {
                w.round(slot, &device).await;
                continue;
            }
            tokio::select! {
                ev = rx.recv() => match ev {
                    Some(ev) => w.handle(ev).await,
                    None => break,
                },
                () = &mut shutdown => break,
            }
        }
        leasing.abort();
        let slots: Vec<u32> = w.slots.keys().copied().collect();
        for slot in slots {
            w.drop_slot(slot, true).await;
        }
        let _ = w.fleet.members.delete(token(&w.options.id)).await;
        tracing::info!(worker = w.options.id, "worker stopped");
        Ok(())
    }

    async fn handle(&mut self, ev: Event) {
        match ev {
            Event::Acquired(slot, epoch) => {
                if let Err(e) = self.take_slot(slot, epoch).await {
                    tracing::error!(slot, "taking the slot: {e:#}");
                    self.drop_slot(slot, true).await;
                }
            }
            Event::Lost(slot) => {
                tracing::warn!(worker = self.options.id, slot, "lease lost: slot dropped");
                self.drop_slot(slot, false).await;
            }
            Event::Release(slot) | Event::FeedEnded(slot) => self.drop_slot(slot, true).await,
            Event::Upload {
                slot,
                device,
                upload,
            } => self.queue_upload(slot, device, upload).await,
        }
    }

    async fn take_slot(&mut self, slot: u32, epoch: u64) -> anyhow::Result<()> {
        // Everything up to `start` is read per device below; the consumer follows from there
        // (uploads in both are told apart by their seq).
        let start = self.fleet.uploads.get_info().await?.state.last_sequence + 1;
        let prefix = format!("{slot}.");
        let mut keys = self.fleet.sessions.keys().await?;
        let mut devices = Vec::new();
        while let Some(k) = keys.next().await {
            if let Some(t) = k?.strip_prefix(&prefix) {
                devices.extend(device_of(t));
            }
        }
        let consumer = self
            .fleet
            .uploads
            .create_consumer(pull::OrderedConfig {
                filter_subject: self.fleet.slot_subjects(slot),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                },
                ..Default::default()
            })
            .await?;
        let mut messages = consumer.messages().await?;
        let tx = self.events.clone();
        let feed = tokio::spawn(async move {
            while let Some(m) = messages.next().await {
                let Ok(m) = m else { break };
                let Some(device) = m.subject.rsplit('.').next().and_then(device_of) else {
                    continue;
                };
                let at = m.info().map_or(0, |i| i.stream_sequence);
                let upload = match LoggedUpload::parse(m.headers.as_ref(), m.payload.clone(), at) {
                    Ok(u) => u,
                    Err(e) => {
                        tracing::warn!(device, "skipped a malformed upload message: {e:#}");
                        continue;
                    }
                };
                if tx
                    .send(Event::Upload {
                        slot,
                        device,
                        upload,
                    })
                    .is_err()
                {
                    return;
                }
            }
            let _ = tx.send(Event::FeedEnded(slot));
        });
        self.slots.insert(
            slot,
            Slot {
                epoch,
                sessions: HashMap::new(),
                feed,
            },
        );
        for device in devices {
            self.restore(slot, &device).await?;
        }
        tracing::info!(
            worker = self.options.id,
            slot,
            epoch,
            sessions = self.slots[&slot].sessions.len(),
            "slot taken"
        );
        Ok(())
    }

    async fn drop_slot(&mut self, slot: u32, release: bool) {
        if let Some(s) = self.slots.remove(&slot) {
            s.feed.abort();
        }
        self.turn.retain(|(s, _)| *s != slot);
        let held = self.leases.lock().expect("lease lock").remove(&slot);
        if let (true, Some(lease)) = (release, held) {
            // Only if still ours (a CAS would be ideal; KV delete has none, so the revision is
            // checked first and a lapse in between costs the next owner one lease time).
            if let Ok(Some(e)) = self.fleet.leases.entry(Fleet::lease_key(slot)).await {
                if e.revision == lease.revision {
                    let _ = self.fleet.leases.delete(Fleet::lease_key(slot)).await;
                }
            }
        }
    }

    /// Claims the device's record for this worker's epoch, rebuilds its adapter from it and
    /// the device's upload log, and queues the uploads after its last round.
    async fn restore(&mut self, slot: u32, device: &str) -> anyhow::Result<()> {
        let Some(epoch) = self.slots.get(&slot).map(|s| s.epoch) else {
            return Ok(());
        };
        let key = Fleet::session_key(device);
        let (revision, record) = loop {
            let entry = self
                .fleet
                .sessions
                .entry(&key)
                .await?
                .with_context(|| format!("session `{device}` has no record"))?;
            let mut record = SessionEntry::from_bytes(&entry.value)?;
            record.head.owner = Some(self.options.id.clone());
            record.head.epoch = epoch;
            match self
                .fleet
                .sessions
                .update(&key, record.to_bytes().into(), entry.revision)
                .await
            {
                Ok(revision) => break (revision, record),
                Err(e) if matches!(e.kind(), kv::UpdateErrorKind::WrongLastRevision) => continue,
                Err(e) => return Err(e.into()),
            }
        };
        let log = self.fleet.read_log(device).await?;
        let applied = record.head.applied_seq;
        let mut adapter = match record.head.kind {
            Kind::Genesis => {
                let state = NormState::from_bytes(&record.blob, "genesis record")?;
                let mut a = self.new_adapter(state.version)?;
                a.sync_student(&state)?;
                a
            }
            Kind::Snapshot => {
                let snap = CloudSnapshot::from_bytes(&record.blob)?;
                let mut a = self.new_adapter(0)?;
                let upto = applied.unwrap_or(0);
                let done: Vec<&LoggedUpload> = log
                    .iter()
                    .filter(|u| applied.is_some() && u.seq <= upto)
                    .collect();
                a.restore(
                    &snap,
                    &crate::layout::replay_tail(
                        &done,
                        self.image_size,
                        self.options.config.replay_capacity,
                    ),
                )?;
                a
            }
        };
        adapter.release_caches();
        if record.head.kind == Kind::Snapshot {
            // The previous owner may have died between its commit and its publish.
            let state = adapter
                .student()
                .norm_state(&self.fleet.model_id, adapter.version());
            publish(&self.fleet, device, &state).await?;
        }
        let after = applied.map_or(0, |a| a + 1);
        let queue: VecDeque<LoggedUpload> = log.into_iter().filter(|u| u.seq >= after).collect();
        let next = queue.back().map_or(after, |u| u.seq + 1);
        tracing::info!(
            device,
            version = adapter.version(),
            requeued = queue.len(),
            "restored session"
        );
        if !queue.is_empty() {
            self.turn.push_back((slot, device.to_string()));
        }
        let slot = self.slots.get_mut(&slot).expect("slot checked above");
        slot.sessions.insert(
            device.to_string(),
            Sess {
                adapter: Some(adapter),
                revision,
                queue,
                next,
            },
        );
        Ok(())
    }

    fn new_adapter(&self, version: u64) -> anyhow::Result<CloudAdapter> {
        Ok(CloudAdapter::new(
            self.foundation.clone(),
            self.edge.clone(),
            self.fleet.model_id.clone(),
            version,
            self.options.config,
        )?)
    }

    async fn queue_upload(&mut self, slot: u32, device: String, upload: LoggedUpload) {
        let seq = upload.seq;
        if !self.slots.contains_key(&slot) {
            return;
        }
        let known = self.slots[&slot].sessions.contains_key(&device);
        if !known {
            // Its record and log include this upload.
            if let Err(e) = self.restore(slot, &device).await {
                tracing::error!(device, "restoring the session: {e:#}");
            }
            return;
        }
        let s = self
            .slots
            .get_mut(&slot)
            .and_then(|s| s.sessions.get_mut(&device))
            .expect("known");
        if seq < s.next {
            return;
        }
        if seq > s.next {
            tracing::warn!(
                device,
                seq,
                expected = s.next,
                "gap in the upload feed: session rebuilt"
            );
            if let Err(e) = self.restore(slot, &device).await {
                tracing::error!(device, "restoring the session: {e:#}");
            }
            return;
        }
        s.next = seq + 1;
        s.queue.push_back(upload);
        if s.queue.len() == 1 {
            self.turn.push_back((slot, device));
        }
    }

    /// Sessions held and uploads queued, into the metrics.
    fn gauges(&self) {
        let sessions = self.slots.values().flat_map(|s| s.sessions.values());
        let (n, queued) = sessions.fold((0, 0), |(n, q), s| (n + 1, q + s.queue.len()));
        self.metrics.sessions.set(n as i64);
        self.metrics.queued.set(queued as i64);
    }

    fn next_ready(&mut self) -> Option<(u32, String)> {
        while let Some((slot, device)) = self.turn.pop_front() {
            let ready = self
                .slots
                .get(&slot)
                .and_then(|s| s.sessions.get(&device))
                .is_some_and(|s| !s.queue.is_empty());
            if ready {
                return Some((slot, device));
            }
        }
        None
    }

    fn lease_fresh(&self, slot: u32) -> bool {
        self.leases
            .lock()
            .expect("lease lock")
            .get(&slot)
            .is_some_and(|l| l.renewed.elapsed() < self.options.fleet.lease)
    }

    /// One round of one session: learn from its oldest queued upload, commit, publish.
    async fn round(&mut self, slot: u32, device: &str) {
        let t = Instant::now();
        let (epoch, image_size, delay) = (
            self.slots[&slot].epoch,
            self.image_size,
            self.options.round_delay,
        );
        let s = self
            .slots
            .get_mut(&slot)
            .and_then(|s| s.sessions.get_mut(device))
            .expect("ready");
        let LoggedUpload { seq, pixels, stats } = s.queue.front().cloned().expect("ready");
        // Validated by the gateway before it was published.
        let stats = stats
            .map(|b| self.edge.norm_stats_from_bytes(&b, &self.fleet.model_id, 0))
            .transpose();
        let mut adapter = s.adapter.take().expect("one round at a time");
        let (adapter, result) = tokio::task::spawn_blocking(move || {
            if !delay.is_zero() {
                std::thread::sleep(delay);
            }
            let synced = match stats {
                Ok(Some(s)) => adapter.sync_student_stats(&s),
                Ok(None) => Ok(()),
                Err(e) => Err(AdaptError::from(e)),
            };
            let r: Result<Option<NormState>, AdaptError> = synced
                .and_then(|()| adapter.receive(&pixels, pixels.len() / image_size))
                .and_then(|()| adapter.step());
            adapter.release_caches();
            (adapter, r)
        })
        .await
        .expect("a round does not panic");
        let s = self
            .slots
            .get_mut(&slot)
            .and_then(|s| s.sessions.get_mut(device))
            .expect("ready");
        s.adapter = Some(adapter);
        if !self.lease_fresh(slot) {
            // Past the lease: another worker may own the slot now. Commit nothing.
            tracing::warn!(
                worker = self.options.id,
                slot,
                "lease lapsed during a round: slot dropped"
            );
            self.metrics.round(RoundOutcome::CommitFailed);
            self.drop_slot(slot, false).await;
            return;
        }
        let s = self
            .slots
            .get_mut(&slot)
            .and_then(|s| s.sessions.get_mut(device))
            .expect("ready");
        let (published, outcome) = match result {
            Ok(Some(p)) => (Some(p), RoundOutcome::Published),
            Ok(None) => (None, RoundOutcome::Idle),
            Err(e) => {
                tracing::error!(device, seq, "round failed: {e}");
                (None, RoundOutcome::Failed)
            }
        };
        let record = SessionEntry {
            head: Head {
                kind: Kind::Snapshot,
                applied_seq: Some(seq),
                version: s.adapter.as_ref().expect("put back").version(),
                owner: Some(self.options.id.clone()),
                epoch,
            },
            blob: s.adapter.as_ref().expect("put back").snapshot().to_bytes(),
        };
        let key = Fleet::session_key(device);
        match self
            .fleet
            .sessions
            .update(&key, record.to_bytes().into(), s.revision)
            .await
        {
            Ok(revision) => {
                s.revision = revision;
                s.queue.pop_front();
                if !s.queue.is_empty() {
                    self.turn.push_back((slot, device.to_string()));
                }
            }
            Err(e) if matches!(e.kind(), kv::UpdateErrorKind::WrongLastRevision) => {
                tracing::warn!(
                    worker = self.options.id,
                    slot,
                    device,
                    "deposed (the record was claimed): slot dropped"
                );
                self.metrics.round(RoundOutcome::CommitFailed);
                self.drop_slot(slot, false).await;
                return;
            }
            Err(e) => {
                // Not committed, not published: the session is rebuilt from its last commit and
                // runs this round again.
                tracing::error!(device, "commit failed: {e}");
                self.metrics.store_errors.inc();
                self.metrics.round(RoundOutcome::CommitFailed);
                if let Err(e) = self.restore(slot, device).await {
                    tracing::error!(device, "restoring the session: {e:#}");
                }
                return;
            }
        }
        self.metrics.rounds.inc();
        self.metrics.round(outcome);
        self.metrics
            .round_seconds
            .observe(t.elapsed().as_secs_f64());
        if let Some(state) = &published {
            match publish(&self.fleet, device, state).await {
                Ok(()) => {
                    self.metrics.published.inc();
                }
                Err(e) => tracing::error!(device, "publishing version {}: {e:#}", state.version),
            }
        }
        let counters = s.adapter.as_ref().expect("put back").counters();
        let progress = Progress {
            applied_seq: Some(seq),
            version: record.head.version,
            samples: counters.samples_received,
            rounds: counters.rounds,
            record_bytes: record.blob.len() as u64,
        };
        if let Err(e) = self
            .fleet
            .progress
            .put(token(device), progress.to_bytes())
            .await
        {
            tracing::error!(device, "writing progress: {e}");
        }
        tracing::debug!(device, seq, "round committed");
    }
}

/// Puts `state` as the device's norm state unless a version as new is there already.
async fn publish(fleet: &Fleet, device: &str, state: &NormState) -> anyhow::Result<()> {
    let key = token(device);
    let bytes: Bytes = state.to_bytes().into();
    for _ in 0..16 {
        let current = fleet.norm.entry(&key).await?;
        let put = match current {
            Some(e) => {
                let there = NormState::from_bytes(&e.value, "norm bucket")?.version;
                if there >= state.version {
                    return Ok(());
                }
                fleet
                    .norm
                    .update(&key, bytes.clone(), e.revision)
                    .await
                    .map(|_| ())
            }
            None => fleet
                .norm
                .create(&key, bytes.clone())
                .await
                .map(|_| ())
                .map_err(|e| {
                    async_nats::jetstream::kv::UpdateError::with_source(
                        kv::UpdateErrorKind::WrongLastRevision,
                        e,
                    )
                }),
        };
        match put {
            Ok(()) => return Ok(()),
            Err(e) if matches!(e.kind(), kv::UpdateErrorKind::WrongLastRevision) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    anyhow::bail!("the norm key kept changing under 16 compare-and-set tries")
}

/// Membership, slot choice, acquisition and renewal, every third of the lease time.
async fn lease_loop(
    fleet: Fleet,
    id: String,
    leases: Arc<Mutex<HashMap<u32, Lease>>>,
    events: mpsc::UnboundedSender<Event>,
) {
    let period = fleet.config.lease / 3;
    let me = token(&id);
    loop {
        let t = Instant::now();
        if let Err(e) = lease_tick(&fleet, &id, &me, &leases, &events).await {
            tracing::warn!(worker = id, "lease round: {e:#}");
        }
        tokio::time::sleep(period.saturating_sub(t.elapsed())).await;
    }
}

async fn lease_tick(
    fleet: &Fleet,
    id: &str,
    me: &str,
    leases: &Mutex<HashMap<u32, Lease>>,
    events: &mpsc::UnboundedSender<Event>,
) -> anyhow::Result<()> {
    fleet.members.put(me, Bytes::from(id.to_string())).await?;
    let mut live: Vec<String> = Vec::new();
    let mut keys = fleet.members.keys().await?;
    while let Some(k) = keys.next().await {
        live.extend(device_of(&k?));
    }
    if !live.iter().any(|w| w == id) {
        live.push(id.to_string());
    }
    let held: Vec<(u32, u64)> = leases
        .lock()
        .expect("lease lock")
        .iter()
        .map(|(s, l)| (*s, l.revision))
        .collect();
    let held_set: HashSet<u32> = held.iter().map(|(s, _)| *s).collect();
    for (slot, revision) in held {
        let renewed = fleet
            .leases
            .update(
                Fleet::lease_key(slot),
                Bytes::from(id.to_string()),
                revision,
            )
            .await;
        match renewed {
            Ok(revision) => {
                if let Some(l) = leases.lock().expect("lease lock").get_mut(&slot) {
                    *l = Lease {
                        revision,
                        renewed: Instant::now(),
                    };
                }
            }
            Err(e) if matches!(e.kind(), kv::UpdateErrorKind::WrongLastRevision) => {
                leases.lock().expect("lease lock").remove(&slot);
                let _ = events.send(Event::Lost(slot));
                continue;
            }
            Err(e) => tracing::warn!(slot, "renewing the lease: {e}"),
        }
        if owner_of(slot, &live) != Some(id) {
            let _ = events.send(Event::Release(slot));
        }
    }
    for slot in 0..SLOTS {
        if held_set.contains(&slot) || owner_of(slot, &live) != Some(id) {
            continue;
        }
        if let Ok(revision) = fleet
            .leases
            .create(Fleet::lease_key(slot), Bytes::from(id.to_string()))
            .await
        {
            leases.lock().expect("lease lock").insert(
                slot,
                Lease {
                    revision,
                    renewed: Instant::now(),
                },
            );
            let _ = events.send(Event::Acquired(slot, revision));
        }
    }
    Ok(())
}
