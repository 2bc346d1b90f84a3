//! The cloud's sessions and workers, independent of HTTP: one [`Cloud`] holds the frozen models
//! once, a [`Session`] per edge device, a durable store, and a pool of worker threads that run
//! adaptation rounds off the request path.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use cema_adapt::{AdaptError, CloudAdapter, CloudConfig, CloudSnapshot};
use cema_model::{cpu, Device, Model, NormState};
use cema_wire::{
    decode_upload, Dtype, EdgeTelemetry, ErrorCode, SessionInfo, Upload, UploadAck, WireError,
    FEATURE_EDGE_STATS, MAX_NORM_VERSION, PROTOCOL_VERSION,
};
use serde::Serialize;
use tokio::sync::watch;

use crate::dashboard::History;
use crate::metrics::{Metrics, RoundOutcome};
use crate::store::{PendingUpload, RedbStore, SessionRecord, SessionStore, StoreError};

/// Everything `cema cloud` is configured with.
#[derive(Debug, Clone)]
pub struct CloudOptions {
    pub edge_model: PathBuf,
    pub foundation: PathBuf,
    pub data_dir: PathBuf,
    /// Registered devices: id → token.
    pub devices: HashMap<String, String>,
    pub config: CloudConfig,
    /// Worker threads running adaptation rounds.
    pub workers: usize,
    /// Most sessions whose ready rounds one worker runs together, every model step batched
    /// across them (`CloudAdapter::step_many`); 1 runs one session's round at a time.
    pub batch_sessions: usize,
    /// Hard limit on any request body, bytes.
    pub max_body: usize,
    /// Acknowledged-but-unprocessed uploads one session may hold before uploads get 429.
    pub max_queued: usize,
    /// Fault injection: extra time every round takes (a slow or overloaded cloud), for tests
    /// and demos of backpressure.
    pub round_delay: std::time::Duration,
    /// Where the foundation and the per-session students run (`cema --backend`).
    pub device: Device,
}

impl CloudOptions {
    pub fn new(edge_model: PathBuf, foundation: PathBuf, data_dir: PathBuf) -> Self {
        CloudOptions {
            edge_model,
            foundation,
            data_dir,
            devices: HashMap::new(),
            config: CloudConfig::default(),
            workers: 1,
            batch_sessions: 1,
            max_body: 8 << 20,
            max_queued: 64,
            round_delay: std::time::Duration::ZERO,
            device: cpu(),
        }
    }
}

/// Why a request was refused: a stable code (which fixes the HTTP status) and a message naming
/// the fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
    pub expected_seq: Option<u64>,
    pub retry_after_s: Option<u64>,
}

impl Refusal {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
            expected_seq: None,
            retry_after_s: None,
        }
    }
    pub fn unauthorized() -> Self {
        Refusal::new(ErrorCode::Unauthorized, "unknown device or bad token")
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Refusal::new(ErrorCode::BadRequest, message)
    }
    pub fn too_large(size: usize, limit: usize) -> Self {
        Refusal::new(
            ErrorCode::TooLarge,
            format!("body of {size} bytes exceeds the limit of {limit}"),
        )
    }
    /// The store cannot write now; nothing was changed and the client should retry.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Refusal {
            retry_after_s: Some(2),
            ..Refusal::new(ErrorCode::Unavailable, message)
        }
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Refusal::new(ErrorCode::Internal, message)
    }

    /// Upload `seq` is not the one expected next.
    pub fn bad_sequence(seq: u64, next: u64) -> Self {
        let what = if seq < next {
            "already received"
        } else {
            "out of order"
        };
        Refusal {
            expected_seq: Some(next),
            ..Refusal::new(
                ErrorCode::BadSequence,
                format!("upload {seq} is {what}: the next expected is {next}"),
            )
        }
    }

    /// The device already has `queued` uploads waiting for their rounds.
    pub fn overloaded(queued: usize) -> Self {
        Refusal {
            retry_after_s: Some(1),
            ..Refusal::new(
                ErrorCode::Overloaded,
                format!("{queued} uploads of this device are waiting to be learned from"),
            )
        }
    }

    pub fn no_session(device: &str) -> Self {
        Refusal::new(
            ErrorCode::NoSession,
            format!("device `{device}` has no session: PUT /v1/devices/{device}/session first"),
        )
    }

    pub fn status(&self) -> u16 {
        self.code.status()
    }
}

impl From<WireError> for Refusal {
    fn from(e: WireError) -> Self {
        match e {
            WireError::TooLarge { size, limit } => {
                Refusal::too_large(size as usize, limit as usize)
            }
            e => Refusal::bad_request(e.to_string()),
        }
    }
}

/// The checks of the norm state a device opens its session with, made by every frontend before
/// anything is stored.
pub fn check_session_state(bytes: &[u8], model_id: &str) -> Result<NormState, Refusal> {
    let state = NormState::from_bytes(bytes, "session body")
        .map_err(|e| Refusal::bad_request(e.to_string()))?;
    if state.model_id != model_id {
        return Err(Refusal::new(
            ErrorCode::UnknownModel,
            format!(
                "model `{}` is not served here (this cloud serves `{model_id}`)",
                state.model_id
            ),
        ));
    }
    if state.version >= MAX_NORM_VERSION {
        return Err(Refusal::bad_request(format!(
            "norm state version {} leaves no next version (the last is {MAX_NORM_VERSION})",
            state.version
        )));
    }
    Ok(state)
}

/// The optional extensions of v1 every frontend of this version takes
/// ([`SessionInfo::features`], `/health`).
pub fn features() -> Vec<String> {
    vec![FEATURE_EDGE_STATS.to_string()]
}

/// An upload that passed [`check_upload`]: the wire message and its statistics, decoded and
/// validated against the edge model.
#[derive(Debug, Clone)]
pub struct CheckedUpload {
    pub upload: Upload,
    pub stats: Option<NormState>,
}

/// The checks of an upload body that need no session: the wire format, the model, raw u8
/// pixels of the model's image geometry (height, width, channels), and, when the edge sent
/// them, statistics that are exactly `edge`'s running means and variances, finite, variances
/// not negative.
pub fn check_upload(body: &[u8], max_body: usize, edge: &Model) -> Result<CheckedUpload, Refusal> {
    let model_id = edge.card.name.as_str();
    let up = decode_upload(body, max_body)?;
    let h = &up.header;
    if h.model_id != model_id {
        return Err(Refusal::new(
            ErrorCode::UnknownModel,
            format!(
                "model `{}` is not served here (this cloud serves `{model_id}`)",
                h.model_id
            ),
        ));
    }
    if h.dtype != Dtype::U8 {
        return Err(Refusal::bad_request(format!(
            "dtype {:?}: uploads carry raw u8 pixels",
            h.dtype
        )));
    }
    let i = &edge.card.input;
    let image = (i.height, i.width, i.channels);
    let geometry = (h.height as usize, h.width as usize, h.channels as usize);
    if geometry != image {
        return Err(Refusal::bad_request(format!(
            "images are {}×{}×{}, model `{model_id}` takes {}×{}×{}",
            geometry.0, geometry.1, geometry.2, image.0, image.1, image.2
        )));
    }
    let stats = up
        .stats
        .as_ref()
        .map(|b| edge.norm_stats_from_bytes(b, model_id, h.norm_version))
        .transpose()
        .map_err(|e| Refusal::bad_request(format!("upload {}: edge statistics: {e}", h.seq)))?;
    Ok(CheckedUpload { upload: up, stats })
}

/// A published norm state.
#[derive(Debug, Clone)]
pub struct Published {
    pub version: u64,
    pub bytes: Arc<Vec<u8>>,
}

/// What the status page shows of a session.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SessionView {
    pub device: String,
    pub version: u64,
    pub next_seq: u64,
    pub uploads: u64,
    pub samples: u64,
    pub rounds: u64,
    pub queued: usize,
    pub replay: usize,
    pub last_foundation_loss: Option<f32>,
    pub last_distill_loss: Option<f32>,
    /// Bytes of per-session state besides the frozen weights and the replay buffer.
    pub session_bytes: usize,
    /// Bytes of u8 pixels in the replay buffer.
    pub replay_bytes: usize,
    pub last_upload_unix_s: Option<u64>,
    /// Upload bodies acknowledged, bytes.
    pub bytes_up: u64,
    /// Norm-state bytes sent to this device (update frames and `GET state`).
    pub bytes_down: u64,
    /// The edge's own report, if it sends one (`PUT …/telemetry`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub telemetry: Option<EdgeTelemetry>,
}

#[derive(Clone)]
struct Queued {
    seq: u64,
    pixels: Vec<u8>,
    /// The edge's statistics, installed in the student before this round (issue #25).
    stats: Option<NormState>,
}

impl Queued {
    /// A stored pending upload; its statistics were validated when it arrived.
    fn restore(device: &str, p: PendingUpload, edge: &Model) -> anyhow::Result<Queued> {
        let stats = p
            .stats
            .map(|b| edge.norm_stats_from_bytes(&b, &edge.card.name, 0))
            .transpose()
            .with_context(|| format!("session `{device}`, upload {}", p.seq))?;
        Ok(Queued {
            seq: p.seq,
            pixels: p.pixels,
            stats,
        })
    }
}

/// One edge device's session.
pub struct Session {
    pub device: String,
    adapter: Mutex<CloudAdapter>,
    /// Next expected sequence number; held across the durable write so uploads of one device
    /// are appended strictly in order.
    next_seq: Mutex<u64>,
    queue: Mutex<VecDeque<Queued>>,
    scheduled: AtomicBool,
    published: watch::Sender<Published>,
    applied: watch::Sender<Option<u64>>,
    view: Mutex<SessionView>,
}

impl Session {
    pub fn subscribe(&self) -> watch::Receiver<Published> {
        self.published.subscribe()
    }

    pub fn latest(&self) -> Published {
        self.published.borrow().clone()
    }

    /// Resolves once the round of upload `seq` has run (and, if it published, after the new
    /// version is visible to subscribers).
    pub async fn wait_applied(&self, seq: u64) {
        let mut rx = self.applied.subscribe();
        // The sender lives as long as the session, which outlives this borrow.
        let _ = rx.wait_for(|a| a.is_some_and(|a| a >= seq)).await;
    }

    fn queued(&self) -> usize {
        self.queue.lock().expect("queue lock").len()
    }

    /// Counts norm-state bytes sent to this device.
    pub fn sent(&self, bytes: usize) {
        self.view.lock().expect("view lock").bytes_down += bytes as u64;
    }
}

/// The cloud service.
pub struct Cloud {
    pub model_id: String,
    edge: Model,
    foundation: Model,
    image: (usize, usize, usize),
    options: CloudOptions,
    sessions: RwLock<HashMap<String, Arc<Session>>>,
    store: Arc<dyn SessionStore>,
    work: Mutex<Sender<Arc<Session>>>,
    pub metrics: Metrics,
    pub history: History,
    started: Instant,
}

impl Cloud {
    /// Loads the models, opens the store in `data_dir`, resumes every persisted session and
    /// starts the workers.
    pub fn open(options: CloudOptions) -> anyhow::Result<Arc<Cloud>> {
        let path = options.data_dir.join("cloud.redb");
        Self::open_with(options, move || {
            Ok(Arc::new(RedbStore::open(&path)?) as Arc<dyn SessionStore>)
        })
    }

    /// [`Cloud::open`] with another [`SessionStore`] (e.g. `cema-fleet`'s JetStream store),
    /// opened once the models have loaded.
    pub fn open_with(
        options: CloudOptions,
        store: impl FnOnce() -> anyhow::Result<Arc<dyn SessionStore>>,
    ) -> anyhow::Result<Arc<Cloud>> {
        let device = options.device.clone();
        let edge = Model::load(&options.edge_model, &device)
            .with_context(|| format!("edge model {}", options.edge_model.display()))?;
        let foundation = Model::load(&options.foundation, &device)
            .with_context(|| format!("foundation {}", options.foundation.display()))?;
        // Refused here, not at the first session: a cloud that cannot teach its edge model must
        // not start and answer every device with a 500.
        cema_adapt::check_compatible(&foundation, &edge).with_context(|| {
            format!(
                "foundation {} cannot teach edge model {}",
                options.foundation.display(),
                options.edge_model.display()
            )
        })?;
        let store = store()?;
        let (tx, rx) = channel();
        let i = &edge.card.input;
        let cloud = Arc::new(Cloud {
            model_id: edge.card.name.clone(),
            image: (i.height, i.width, i.channels),
            edge,
            foundation,
            options,
            sessions: RwLock::new(HashMap::new()),
            store,
            work: Mutex::new(tx),
            metrics: Metrics::default(),
            history: History::default(),
            started: Instant::now(),
        });
        cloud.resume_sessions()?;
        crate::dashboard::start_sampler(&cloud);
        let rx = Arc::new(Mutex::new(rx));
        for w in 0..cloud.options.workers.max(1) {
            let (c, rx) = (Arc::downgrade(&cloud), rx.clone());
            std::thread::Builder::new()
                .name(format!("cema-worker-{w}"))
                .spawn(move || worker(c, rx))?;
        }
        Ok(cloud)
    }

    pub fn options(&self) -> &CloudOptions {
        &self.options
    }

    pub fn uptime_s(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    fn image_size(&self) -> usize {
        self.image.0 * self.image.1 * self.image.2
    }

    fn new_adapter(&self, version: u64) -> anyhow::Result<CloudAdapter> {
        Ok(CloudAdapter::new(
            self.foundation.clone(),
            self.edge.clone(),
            self.model_id.clone(),
            version,
            self.options.config,
        )?)
    }

    fn resume_sessions(&self) -> anyhow::Result<()> {
        for (device, record) in self.store.sessions()? {
            let bytes = self
                .store
                .snapshot(&device)?
                .with_context(|| format!("session `{device}` has no snapshot"))?;
            let snap = CloudSnapshot::from_bytes(&bytes)?;
            let mut adapter = self.new_adapter(0)?;
            let replay = self.store.replay_tail(
                &device,
                record.applied_seq,
                self.image_size(),
                self.options.config.replay_capacity,
            )?;
            adapter.restore(&snap, &replay)?;
            let pending = self.store.uploads_after(&device, record.applied_seq)?;
            tracing::info!(
                device,
                version = adapter.version(),
                requeued = pending.len(),
                "resumed session"
            );
            let session = self.make_session(&device, adapter, &record);
            {
                let mut q = session.queue.lock().expect("queue lock");
                for p in pending {
                    q.push_back(Queued::restore(&device, p, &self.edge)?);
                }
            }
            self.metrics.queued.inc_by(session.queued() as i64);
            self.schedule(&session);
            self.sessions
                .write()
                .expect("sessions lock")
                .insert(device, session);
        }
        self.metrics
            .sessions
            .set(self.sessions.read().expect("sessions lock").len() as i64);
        Ok(())
    }

    fn make_session(
        &self,
        device: &str,
        adapter: CloudAdapter,
        record: &SessionRecord,
    ) -> Arc<Session> {
        let version = adapter.version();
        let state = adapter.student().norm_state(&self.model_id, version);
        let view = SessionView {
            device: device.to_string(),
            version,
            next_seq: record.next_seq,
            samples: adapter.counters().samples_received,
            rounds: adapter.counters().rounds,
            replay: adapter.replay().len(),
            session_bytes: adapter.session_bytes(),
            replay_bytes: adapter.replay().len() * adapter.image_size(),
            ..SessionView::default()
        };
        Arc::new(Session {
            device: device.to_string(),
            adapter: Mutex::new(adapter),
            next_seq: Mutex::new(record.next_seq),
            queue: Mutex::new(VecDeque::new()),
            scheduled: AtomicBool::new(false),
            published: watch::Sender::new(Published {
                version,
                bytes: Arc::new(state.to_bytes()),
            }),
            applied: watch::Sender::new(record.applied_seq),
            view: Mutex::new(view),
        })
    }

    /// Checks a device's bearer token.
    pub fn authorize(&self, device: &str, token: Option<&str>) -> Result<(), Refusal> {
        match (self.options.devices.get(device), token) {
            (Some(expected), Some(t)) if constant_time_eq(expected.as_bytes(), t.as_bytes()) => {
                Ok(())
            }
            _ => Err(Refusal::unauthorized()),
        }
    }

    pub fn session(&self, device: &str) -> Result<Arc<Session>, Refusal> {
        self.sessions
            .read()
            .expect("sessions lock")
            .get(device)
            .cloned()
            .ok_or_else(|| Refusal::no_session(device))
    }

    /// Creates the session on first contact (the student starts from the edge's norm state),
    /// or resumes the existing one unchanged. Blocking (a durable write).
    pub fn open_session(&self, device: &str, state_bytes: &[u8]) -> Result<SessionInfo, Refusal> {
        let state = check_session_state(state_bytes, &self.model_id)?;
        let mut sessions = self.sessions.write().expect("sessions lock");
        if let Some(s) = sessions.get(device) {
            let (version, next_seq) = (s.latest().version, *s.next_seq.lock().expect("seq lock"));
            return Ok(SessionInfo {
                protocol: PROTOCOL_VERSION,
                device: device.into(),
                model_id: self.model_id.clone(),
                version,
                next_seq,
                created: false,
                features: features(),
            });
        }
        // The lineage continues from the edge's version, so nothing published here is stale to it.
        let mut adapter = self
            .new_adapter(state.version)
            .map_err(|e| Refusal::internal(e.to_string()))?;
        adapter
            .sync_student(&state)
            .map_err(|e| Refusal::bad_request(format!("norm state: {e}")))?;
        let record = SessionRecord {
            model_id: self.model_id.clone(),
            next_seq: 0,
            applied_seq: None,
        };
        self.store
            .create(device, &record, &adapter.snapshot().to_bytes())
            .map_err(|e| self.store_refusal(e))?;
        let session = self.make_session(device, adapter, &record);
        sessions.insert(device.to_string(), session);
        self.metrics.sessions.set(sessions.len() as i64);
        tracing::info!(device, "created session");
        Ok(SessionInfo {
            protocol: PROTOCOL_VERSION,
            device: device.into(),
            model_id: self.model_id.clone(),
            version: state.version,
            next_seq: 0,
            created: true,
            features: features(),
        })
    }

    /// Validates, durably appends and queues an upload. Blocking (a durable write). Nothing
    /// changes unless it returns `Ok`.
    pub fn upload(&self, device: &str, body: &[u8]) -> Result<(UploadAck, Arc<Session>), Refusal> {
        let CheckedUpload { upload: up, stats } =
            check_upload(body, self.options.max_body, &self.edge)?;
        let h = &up.header;
        let session = self.session(device)?;
        let mut next = session.next_seq.lock().expect("seq lock");
        if h.seq != *next {
            return Err(Refusal::bad_sequence(h.seq, *next));
        }
        let queued = session.queued();
        if queued >= self.options.max_queued {
            return Err(Refusal::overloaded(queued));
        }
        self.store
            .append_upload(device, h.seq, &up.pixels, up.stats.as_deref())
            .map_err(|e| self.store_refusal(e))?;
        *next = h.seq + 1;
        let n = h.n as u64;
        session.queue.lock().expect("queue lock").push_back(Queued {
            seq: h.seq,
            pixels: up.pixels,
            stats,
        });
        drop(next);
        {
            let mut v = session.view.lock().expect("view lock");
            v.uploads += 1;
            v.bytes_up += body.len() as u64;
            v.next_seq = h.seq + 1;
            v.last_upload_unix_s = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .ok()
                .map(|d| d.as_secs());
        }
        self.metrics.uploads.inc();
        self.metrics.samples.inc_by(n);
        self.metrics.upload_bytes.inc_by(body.len() as u64);
        self.metrics.queued.inc();
        self.schedule(&session);
        Ok((
            UploadAck {
                seq: h.seq,
                next_seq: h.seq + 1,
                queued: (queued + 1) as u64,
                version: None,
            },
            session,
        ))
    }

    /// Records what the edge says of itself (for the dashboard; not durable).
    pub fn telemetry(&self, device: &str, body: &[u8]) -> Result<(), Refusal> {
        if body.len() > cema_wire::MAX_TELEMETRY {
            return Err(Refusal::too_large(body.len(), cema_wire::MAX_TELEMETRY));
        }
        let t: EdgeTelemetry = serde_json::from_slice(body)
            .map_err(|e| Refusal::bad_request(format!("telemetry: {e}")))?;
        t.check().map_err(Refusal::bad_request)?;
        let session = self.session(device)?;
        session.view.lock().expect("view lock").telemetry = Some(t);
        Ok(())
    }

    /// A storage failure (disk full) is 503 with a retry hint: nothing changed and the same
    /// request succeeds once the store can write again. Anything else is the cloud's fault.
    fn store_refusal(&self, e: StoreError) -> Refusal {
        self.metrics.store_errors.inc();
        if e.io {
            Refusal::unavailable(e.to_string())
        } else {
            Refusal::internal(e.to_string())
        }
    }

    /// Whether this cloud can take uploads now: its store writes (trying to recover it first).
    pub fn ready(&self) -> Result<(), String> {
        let room = self.options.max_body as u64;
        self.store.ready(room).map_err(|e| e.to_string())
    }

    fn schedule(&self, session: &Arc<Session>) {
        if session.queued() > 0 && !session.scheduled.swap(true, Ordering::AcqRel) {
            // The receiver lives in the workers, which live as long as the cloud.
            let _ = self.work.lock().expect("work lock").send(session.clone());
        }
    }

    /// One round for each of `sessions` (distinct, each held by this worker): the oldest queued
    /// upload of each is received, the rounds run batched (`CloudAdapter::step_many`), and each
    /// session's snapshot is committed durably before its new version is published.
    fn run_rounds(&self, sessions: &[Arc<Session>]) {
        let t = Instant::now();
        if !self.options.round_delay.is_zero() {
            std::thread::sleep(self.options.round_delay);
        }
        // Peeked, not popped: an upload counts as queued until its round is committed. Only one
        // worker holds a session at a time (the `scheduled` flag), so the front cannot change.
        let ready: Vec<(&Arc<Session>, Queued)> = sessions
            .iter()
            .filter_map(|s| Some((s, s.queue.lock().expect("queue lock").front().cloned()?)))
            .collect();
        let mut adapters: Vec<_> = ready
            .iter()
            .map(|(s, _)| s.adapter.lock().expect("adapter lock"))
            .collect();
        let mut results: Vec<Option<Result<Option<NormState>, AdaptError>>> = ready
            .iter()
            .zip(adapters.iter_mut())
            .map(|((_, item), adapter)| {
                let n = item.pixels.len() / self.image_size();
                let received = match &item.stats {
                    Some(stats) => adapter.sync_student_stats(stats),
                    None => Ok(()),
                };
                received
                    .and_then(|()| adapter.receive(&item.pixels, n))
                    .err()
                    .map(Err)
            })
            .collect();
        {
            let mut stepping: Vec<&mut CloudAdapter> = adapters
                .iter_mut()
                .zip(&results)
                .filter(|(_, r)| r.is_none())
                .map(|(a, _)| &mut **a)
                .collect();
            self.metrics.round_sessions.observe(stepping.len() as f64);
            let stepped = CloudAdapter::step_many(&mut stepping);
            drop(stepping);
            let mut stepped = stepped.into_iter();
            for r in results.iter_mut().filter(|r| r.is_none()) {
                *r = stepped.next();
            }
        }
        for (((session, item), adapter), result) in ready.into_iter().zip(adapters).zip(results) {
            let result = result.expect("every session received or stepped");
            self.finish_round(session, item, adapter, result, t);
        }
    }

    /// The rest of one session's round: commit its snapshot, then publish.
    fn finish_round(
        &self,
        session: &Session,
        item: Queued,
        mut adapter: std::sync::MutexGuard<'_, CloudAdapter>,
        result: Result<Option<NormState>, AdaptError>,
        t: Instant,
    ) {
        adapter.release_caches();
        let (published, outcome) = match result {
            Ok(Some(state)) => (Some(state), RoundOutcome::Published),
            Ok(None) => (None, RoundOutcome::Idle),
            Err(e) => {
                tracing::error!(device = session.device, seq = item.seq, "round failed: {e}");
                (None, RoundOutcome::Failed)
            }
        };
        let snapshot = adapter.snapshot().to_bytes();
        let committed = self.store.commit_round(
            &session.device,
            item.seq,
            &snapshot,
            self.image_size(),
            self.options.config.replay_capacity,
        );
        session.queue.lock().expect("queue lock").pop_front();
        self.metrics.queued.dec();
        if let Err(e) = committed {
            self.metrics.store_errors.inc();
            self.metrics.round(RoundOutcome::CommitFailed);
            // Not committed: nothing is published (so no version is seen that a restart could
            // take back); the upload stays in the log and the next commit covers this round.
            tracing::error!(device = session.device, "commit failed: {e}");
            session.applied.send_replace(Some(item.seq));
            return;
        }
        {
            let mut v = session.view.lock().expect("view lock");
            let c = adapter.counters();
            v.samples = c.samples_received;
            v.rounds = c.rounds;
            v.version = adapter.version();
            v.replay = adapter.replay().len();
            v.replay_bytes = adapter.replay().len() * adapter.image_size();
            v.session_bytes = snapshot.len() - adapter.pending() * adapter.image_size();
            v.queued = session.queued();
            if let Some(step) = adapter.last_round().steps.last() {
                v.last_distill_loss = Some(step.distill_loss);
                if step.foundation_loss.is_some() {
                    v.last_foundation_loss = step.foundation_loss;
                }
            }
        }
        drop(adapter);
        self.metrics.rounds.inc();
        self.metrics.round(outcome);
        self.metrics
            .round_seconds
            .observe(t.elapsed().as_secs_f64());
        self.history.round_ran(t.elapsed().as_secs_f64());
        if let Some(state) = published {
            session.published.send_replace(Published {
                version: state.version,
                bytes: Arc::new(state.to_bytes()),
            });
            self.metrics.published.inc();
        }
        session.applied.send_replace(Some(item.seq));
    }

    pub fn sessions_view(&self) -> Vec<SessionView> {
        let sessions = self.sessions.read().expect("sessions lock");
        let mut out: Vec<SessionView> = sessions
            .values()
            .map(|s| {
                let mut v = s.view.lock().expect("view lock").clone();
                v.queued = s.queued();
                v
            })
            .collect();
        out.sort_by(|a, b| a.device.cmp(&b.device));
        out
    }

    /// Uploads queued over all sessions.
    pub fn queued_total(&self) -> usize {
        let sessions = self.sessions.read().expect("sessions lock");
        sessions.values().map(|s| s.queued()).sum()
    }

    pub fn session_count(&self) -> usize {
        self.sessions.read().expect("sessions lock").len()
    }
}

fn worker(cloud: std::sync::Weak<Cloud>, rx: Arc<Mutex<Receiver<Arc<Session>>>>) {
    loop {
        // Every session with a round ready, up to the batch size, without waiting for more.
        let sessions = {
            let rx = rx.lock().expect("work queue lock");
            let Ok(first) = rx.recv() else { return };
            let most = cloud
                .upgrade()
                .map_or(1, |c| c.options.batch_sessions.max(1));
            let mut sessions = vec![first];
            while sessions.len() < most {
                match rx.try_recv() {
                    Ok(s) => sessions.push(s),
                    Err(_) => break,
                }
            }
            sessions
        };
        let Some(cloud) = cloud.upgrade() else { return };
        cloud.run_rounds(&sessions);
        // One round per turn, then to the back of the line: sessions share workers fairly.
        for session in &sessions {
            session.scheduled.store(false, Ordering::Release);
            cloud.schedule(session);
        }
    }
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
