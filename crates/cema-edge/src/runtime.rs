//! The edge's inference loop: forward only, predictions first, selection, uploads handed to the
//! uplink thread, pushed norm states validated and swapped between batches.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cema_adapt::{gather, EdgeAdapter, EdgeConfig};
use cema_data::ImageSet;
use cema_model::{Model, NormMode, NormState};
use cema_wire::{EdgeTelemetry, ErrorCode, UploadStamp};
use serde::Serialize;

use crate::client::{ClientError, CloudClient};
use crate::downlink::{Downlink, Incoming};
use crate::uplink::{Uplink, UplinkConfig};

#[derive(Debug, Clone)]
pub struct EdgeOptions {
    /// Base URL of the cloud, e.g. `http://127.0.0.1:7878`.
    pub cloud: String,
    pub device: String,
    pub token: String,
    pub batch: usize,
    pub selection: EdgeConfig,
    /// Uplink budget, kilobits per second (`None`: unlimited).
    pub uplink_kbps: Option<f64>,
    /// Uplink queue bound, samples (older queued samples are dropped past it).
    pub max_queued_samples: usize,
    /// Synchronous mode: after each batch, wait until the cloud's round for it has run and
    /// install the resulting state before the next batch. Reproduces the in-process benchmark
    /// exactly; inference then does wait on the network, so it is for verification only.
    pub sync: bool,
    /// Also run the unadapted model on every batch, to report what Source would have scored.
    pub compare_source: bool,
    /// Sleep between batches (a camera's frame interval), to watch adaptation live.
    pub pace: Option<Duration>,
    /// After the stream, how long to wait for queued uploads and the last updates.
    pub drain: Duration,
    /// Report online accuracy (and the unadapted model's, with `compare_source`) to the cloud's
    /// dashboard: for edges that know their labels, such as the demo's.
    pub report_accuracy: bool,
}

impl EdgeOptions {
    pub fn new(cloud: &str, device: &str, token: &str) -> Self {
        EdgeOptions {
            cloud: cloud.to_string(),
            device: device.to_string(),
            token: token.to_string(),
            batch: 64,
            selection: EdgeConfig::default(),
            uplink_kbps: None,
            max_queued_samples: 4096,
            sync: false,
            compare_source: false,
            pace: None,
            drain: Duration::from_secs(10),
            report_accuracy: false,
        }
    }
}

/// Running totals, reported after every batch and at the end.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EdgeReport {
    pub device: String,
    pub images: u64,
    pub correct: u64,
    /// Correct predictions of the unadapted model on the same images (with `compare_source`).
    pub source_correct: Option<u64>,
    /// Samples the entropy filters selected.
    pub selected: u64,
    /// Samples the cloud acknowledged.
    pub uploaded: u64,
    /// Samples dropped by the uplink's queue bound.
    pub dropped: u64,
    /// Samples the cloud refused for good.
    pub refused: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub norm_version: u64,
    pub updates_applied: u64,
    pub updates_rejected: u64,
    /// Calls to the cloud that got no answer (unreachable, dropped, timed out), all retried.
    pub network_errors: u64,
    pub seconds: f64,
}

impl EdgeReport {
    pub fn accuracy(&self) -> f64 {
        ratio(self.correct, self.images)
    }
    pub fn source_accuracy(&self) -> Option<f64> {
        self.source_correct.map(|c| ratio(c, self.images))
    }
    pub fn upload_fraction(&self) -> f64 {
        ratio(self.uploaded, self.images)
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("model: {0}")]
    Adapt(#[from] cema_adapt::AdaptError),
    #[error("model: {0}")]
    Model(#[from] cema_model::ModelError),
    #[error("{0}")]
    Client(#[from] ClientError),
    #[error("{0}")]
    Input(String),
    /// The cloud refused this device in a way no retry fixes (its token, its model).
    #[error("the cloud refused this device: {0}")]
    Refused(ClientError),
}

impl EdgeError {
    /// A fault of the configuration (input, URL, token, model), not of the run: the CLI's exit 2.
    pub fn is_usage(&self) -> bool {
        match self {
            EdgeError::Input(_) | EdgeError::Refused(_) => true,
            EdgeError::Client(ClientError::Refused { error, .. }) => matches!(
                error.error_code(),
                Some(ErrorCode::Unauthorized | ErrorCode::UnknownModel | ErrorCode::NotFound)
            ),
            _ => false,
        }
    }
}

/// Runs `model` over `stream` (in order, batches of `options.batch`) against the cloud,
/// calling `on_batch` with the running totals after every batch.
pub fn run_stream(
    model: Model,
    stream: &ImageSet,
    options: &EdgeOptions,
    mut on_batch: impl FnMut(&EdgeReport),
) -> Result<EdgeReport, EdgeError> {
    model
        .check_geometry(stream)
        .map_err(|e| EdgeError::Input(e.to_string()))?;
    if options.batch == 0 {
        return Err(EdgeError::Input("batch size must be positive".into()));
    }
    CloudClient::check_base(&options.cloud).map_err(EdgeError::Input)?;
    let t0 = Instant::now();
    let model_id = model.card.name.clone();
    let i = model.card.input.clone();
    let mut source = options.compare_source.then(|| model.clone());
    let mut edge = EdgeAdapter::new(model, model_id.clone(), 0, options.selection);
    // Stream reads time out after 15 s: three missed heartbeats.
    let client = CloudClient::new(
        &options.cloud,
        &options.device,
        &options.token,
        Duration::from_secs(15),
    );
    let installed = Arc::new(AtomicU64::new(0));
    let (uplink, downlink) = if options.sync {
        (None, None)
    } else {
        (
            Some(Uplink::start(
                client.clone(),
                UplinkConfig {
                    stamp: stamp(&model_id, &i),
                    max_queued_samples: options.max_queued_samples,
                    kbps: options.uplink_kbps,
                },
            )),
            Some(Downlink::start(client.clone(), installed.clone())),
        )
    };
    // A synchronous upload waits for its round, which a loaded cloud may take far longer than a
    // heartbeat interval to run: only a hung cloud should time it out.
    let mut sync = options.sync.then(|| {
        let patient = CloudClient::new(
            &options.cloud,
            &options.device,
            &options.token,
            Duration::from_secs(300),
        );
        SyncLink::new(patient, stamp(&model_id, &i))
    });
    let mut report = EdgeReport {
        device: options.device.clone(),
        source_correct: source.as_ref().map(|_| 0),
        ..EdgeReport::default()
    };
    let per = stream.image_size();
    let b = options.batch;
    let total = stream.len();
    let mut start = 0;
    while start < total {
        let n = b.min(total - start);
        let pixels = &stream.images[start * per..(start + n) * per];
        let labels = &stream.labels[start..start + n];
        if let Some(d) = &downlink {
            install_pushed(&mut edge, d, &mut report, &installed, uplink.as_ref());
        }
        let out = edge.process(pixels, n)?;
        report.images += n as u64;
        report.correct += count_correct(&out.predictions, labels);
        if let Some(src) = &mut source {
            let p = src.predict(pixels, n, NormMode::Running)?;
            *report.source_correct.as_mut().expect("set") += count_correct(&p, labels);
        }
        report.selected += out.upload.len() as u64;
        if out.stats_initialised {
            let state = edge.export_norm_state().to_bytes();
            if let Some(u) = &uplink {
                u.set_session_state(state);
            } else if let Some(s) = &mut sync {
                s.open(&state)?;
                report.bytes_up += state.len() as u64;
            }
        }
        let up = gather(pixels, n, &out.upload);
        if let Some(u) = &uplink {
            u.push(up, out.upload.len(), edge.version());
            let c = u.counters();
            report.uploaded = c.acked_samples;
            report.dropped = c.dropped_samples;
            report.refused = c.refused_samples;
            report.bytes_up = c.bytes_up + c.session_bytes_up;
            report.network_errors = c.network_errors;
            if let Some(e) = u.fatal() {
                return Err(EdgeError::Refused(e));
            }
            if options.report_accuracy {
                u.set_telemetry(EdgeTelemetry {
                    images: report.images,
                    correct: report.correct,
                    source_correct: report.source_correct,
                    norm_version: edge.version(),
                });
            }
        } else if let Some(s) = &mut sync {
            if let Some(state) = s.round(&up, out.upload.len(), edge.version(), &mut report)? {
                report.bytes_down += state.to_bytes().len() as u64;
                apply(&mut edge, &state, &mut report, &installed, None);
            }
        }
        report.norm_version = edge.version();
        report.seconds = t0.elapsed().as_secs_f64();
        on_batch(&report);
        start += n;
        if let Some(p) = options.pace {
            std::thread::sleep(p);
        }
    }
    if let Some(u) = uplink {
        if let Some(e) = u.fatal() {
            return Err(EdgeError::Refused(e));
        }
        let c = u.finish(options.drain);
        report.network_errors = c.network_errors;
        report.uploaded = c.acked_samples;
        report.dropped = c.dropped_samples;
        report.refused = c.refused_samples;
        report.bytes_up = c.bytes_up + c.session_bytes_up;
    }
    if let Some(d) = &downlink {
        // Updates for the last uploads arrive shortly after; install what came in time.
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(500) {
            install_pushed(&mut edge, d, &mut report, &installed, None);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    report.norm_version = edge.version();
    report.seconds = t0.elapsed().as_secs_f64();
    Ok(report)
}

fn count_correct(pred: &[u32], labels: &[u32]) -> u64 {
    pred.iter().zip(labels).filter(|(p, l)| p == l).count() as u64
}

fn install_pushed(
    edge: &mut EdgeAdapter,
    d: &Downlink,
    report: &mut EdgeReport,
    installed: &AtomicU64,
    uplink: Option<&Uplink>,
) {
    while let Ok(msg) = d.rx.try_recv() {
        match msg {
            Incoming::State { state, bytes } => {
                report.bytes_down += bytes as u64;
                apply(edge, &state, report, installed, uplink);
            }
            Incoming::Garbage { reason, bytes } => {
                report.bytes_down += bytes as u64;
                report.updates_rejected += 1;
                tracing::warn!("rejected a pushed update: {reason}");
            }
        }
    }
}

/// Validated swap (model id, newer version, names, shapes, finiteness: all or nothing).
fn apply(
    edge: &mut EdgeAdapter,
    state: &NormState,
    report: &mut EdgeReport,
    installed: &AtomicU64,
    uplink: Option<&Uplink>,
) {
    match edge.apply_update(state) {
        Ok(()) => {
            report.updates_applied += 1;
            installed.store(edge.version(), Ordering::Release);
            if let Some(u) = uplink {
                // Should the cloud lose the session, it is reopened from what the edge runs now.
                u.set_session_state_quiet(edge.norm_state().to_bytes());
            }
        }
        Err(cema_adapt::AdaptError::StaleVersion { .. }) => {}
        Err(e) => {
            report.updates_rejected += 1;
            tracing::warn!("rejected update v{}: {e}", state.version);
        }
    }
}

fn stamp(model_id: &str, i: &cema_model::InputSpec) -> UploadStamp {
    UploadStamp {
        model_id: model_id.to_string(),
        height: i.height as u16,
        width: i.width as u16,
        channels: i.channels as u8,
    }
}

/// The synchronous link: every call waits for the cloud.
struct SyncLink {
    client: CloudClient,
    stamp: UploadStamp,
    next_seq: u64,
}

impl SyncLink {
    fn new(client: CloudClient, stamp: UploadStamp) -> Self {
        SyncLink {
            client,
            stamp,
            next_seq: 0,
        }
    }

    fn open(&mut self, state: &[u8]) -> Result<(), EdgeError> {
        let info = self.client.open_session(state)?;
        self.next_seq = info.next_seq;
        Ok(())
    }

    /// Uploads one batch, waits for its round, fetches the state if a newer one was published.
    fn round(
        &mut self,
        pixels: &[u8],
        n: usize,
        version: u64,
        report: &mut EdgeReport,
    ) -> Result<Option<NormState>, EdgeError> {
        let body = self.stamp.encode(self.next_seq, version, pixels);
        let ack = self.client.upload(&body, true)?;
        self.next_seq = ack.next_seq;
        report.uploaded += n as u64;
        report.bytes_up += body.len() as u64;
        match ack.version {
            Some(v) if v > version => {
                let bytes = self.client.latest_state()?;
                Ok(Some(NormState::from_bytes(&bytes, "cloud state")?))
            }
            _ => Ok(None),
        }
    }
}
