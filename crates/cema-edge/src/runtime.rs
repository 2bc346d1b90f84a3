//! The edge's inference loop: forward only, predictions first, selection, uploads handed to the
//! uplink thread, pushed norm states validated and swapped between batches.

use std::time::{Duration, Instant};

use cema_adapt::{gather, EdgeConfig, RandomSelector};
use cema_data::ImageSet;
use cema_model::{Model, NormMode, NormState};
use cema_wire::{EdgeTelemetry, ErrorCode, UploadStamp};
use serde::Serialize;

use crate::client::{ClientError, CloudClient};
use crate::edge::{CloudLink, Edge, EdgeCounters};
use crate::uplink::check_features;

#[derive(Debug, Clone)]
pub struct EdgeOptions {
    /// Base URL of the cloud, e.g. `http://127.0.0.1:7878`.
    pub cloud: String,
    pub device: String,
    pub token: String,
    pub batch: usize,
    pub selection: EdgeConfig,
    /// Rate-matched selection instead of the entropy filters (`EdgeAdapter::set_selector`).
    pub selector: Option<RandomSelector>,
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
            selector: None,
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
        .check_geometry(stream.geometry())
        .map_err(|e| EdgeError::Input(e.to_string()))?;
    if options.batch == 0 {
        return Err(EdgeError::Input("batch size must be positive".into()));
    }
    CloudClient::check_base(&options.cloud).map_err(EdgeError::Input)?;
    let t0 = Instant::now();
    let model_id = model.card.name.clone();
    let i = model.card.input.clone();
    let mut source = options.compare_source.then(|| model.clone());
    let link = CloudLink {
        uplink_kbps: options.uplink_kbps,
        max_queued_samples: options.max_queued_samples,
        ..CloudLink::new(&options.cloud, &options.device, &options.token)
    };
    // The synchronous mode drives the cloud itself, batch by batch; the edge is then offline.
    let mut edge = Edge::new(model, options.selection, (!options.sync).then_some(&link))?;
    edge.set_selector(options.selector.clone());
    // A synchronous upload waits for its round, which a loaded cloud may take far longer than a
    // heartbeat interval to run: only a hung cloud should time it out.
    let mut sync = options.sync.then(|| {
        let patient = CloudClient::new(
            &options.cloud,
            &options.device,
            &options.token,
            Duration::from_secs(300),
        );
        let share = options.selection.track_stats.is_some() && options.selection.share_stats;
        SyncLink::new(patient, stamp(&model_id, &i), share)
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
        let out = edge.predict(pixels)?;
        report.images += n as u64;
        report.correct += count_correct(&out.predictions, labels);
        if let Some(src) = &mut source {
            let p = src.predict(pixels, n, NormMode::Running)?;
            *report.source_correct.as_mut().expect("set") += count_correct(&p, labels);
        }
        if let Some(s) = &mut sync {
            if out.stats_adopted {
                let state = edge.adapter_mut().export_norm_state().to_bytes();
                s.open(&state)?;
                report.bytes_up += state.len() as u64;
            }
            let up = gather(pixels, n, &out.selected);
            let stats = out.stats.as_ref().map(NormState::to_stats_bytes);
            let k = out.selected.len();
            if let Some(state) = s.round(&up, k, stats.as_deref(), edge.version(), &mut report)? {
                report.bytes_down += state.to_bytes().len() as u64;
                edge.apply(&state);
            }
        } else if options.report_accuracy {
            edge.report(EdgeTelemetry {
                images: report.images,
                correct: report.correct,
                source_correct: report.source_correct,
                norm_version: edge.version(),
            });
        }
        merge(&mut report, &edge.counters(), options.sync);
        report.seconds = t0.elapsed().as_secs_f64();
        on_batch(&report);
        start += n;
        if let Some(p) = options.pace {
            std::thread::sleep(p);
        }
    }
    let c = edge.finish(options.drain)?;
    merge(&mut report, &c, options.sync);
    report.seconds = t0.elapsed().as_secs_f64();
    Ok(report)
}

/// The edge's counters into the report. In synchronous mode the link's are the report's own (the
/// edge itself is offline then), so only what the edge counts is taken.
fn merge(report: &mut EdgeReport, c: &EdgeCounters, sync: bool) {
    report.selected = c.selected;
    report.norm_version = c.version;
    report.updates_applied = c.updates_applied;
    report.updates_rejected = c.updates_rejected;
    if !sync {
        report.uploaded = c.uploaded;
        report.dropped = c.dropped;
        report.refused = c.refused;
        report.bytes_up = c.bytes_up;
        report.bytes_down = c.bytes_down;
        report.network_errors = c.network_errors;
    }
}

fn count_correct(pred: &[u32], labels: &[u32]) -> u64 {
    pred.iter().zip(labels).filter(|(p, l)| p == l).count() as u64
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
    share_stats: bool,
}

impl SyncLink {
    fn new(client: CloudClient, stamp: UploadStamp, share_stats: bool) -> Self {
        SyncLink {
            client,
            stamp,
            next_seq: 0,
            share_stats,
        }
    }

    fn open(&mut self, state: &[u8]) -> Result<(), EdgeError> {
        let info = self.client.open_session(state)?;
        let info = check_features(info, self.share_stats, self.client.base())
            .map_err(EdgeError::Refused)?;
        self.next_seq = info.next_seq;
        Ok(())
    }

    /// Uploads one batch, waits for its round, fetches the state if a newer one was published.
    fn round(
        &mut self,
        pixels: &[u8],
        n: usize,
        stats: Option<&[u8]>,
        version: u64,
        report: &mut EdgeReport,
    ) -> Result<Option<NormState>, EdgeError> {
        let body = self.stamp.encode(self.next_seq, version, pixels, stats);
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
