//! The edge as a library: one [`Edge`] holds the model, its selection filters and (when connected)
//! the uplink and downlink threads. `predict` takes a batch of u8 frames and returns the
//! predictions at once; the samples worth learning from are queued for upload in the background,
//! and norm states the cloud pushes are validated and installed between calls.
//!
//! ```no_run
//! use cema_edge::{CloudLink, Edge};
//! let model = cema_model::Model::load("models/edge.safetensors".as_ref(), &cema_model::cpu())?;
//! let link = CloudLink::new("http://127.0.0.1:7878", "cam-1", "secret");
//! let mut edge = Edge::new(model, Default::default(), Some(&link))?;
//! let frames = vec![0u8; 64 * 28 * 28]; // 64 Fashion-MNIST-sized frames, u8, HWC
//! let batch = edge.predict(&frames)?;
//! println!("{:?}, {} queued for upload", &batch.predictions[..4], batch.selected.len());
//! let counters = edge.finish(std::time::Duration::from_secs(5))?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cema_adapt::{gather, EdgeAdapter};
use cema_model::{Model, NormState};
use cema_wire::{EdgeTelemetry, UploadStamp};
use serde::Serialize;

use crate::client::CloudClient;
use crate::downlink::{Downlink, Incoming};
use crate::runtime::EdgeError;
use crate::uplink::{Uplink, UplinkConfig};

/// How an edge reaches its cloud.
#[derive(Debug, Clone)]
pub struct CloudLink {
    /// Base URL, e.g. `http://127.0.0.1:7878`.
    pub cloud: String,
    pub device: String,
    pub token: String,
    /// Uplink budget, kilobits per second (`None`: unlimited).
    pub uplink_kbps: Option<f64>,
    /// Uplink queue bound, samples (the oldest queued samples are dropped past it).
    pub max_queued_samples: usize,
}

impl CloudLink {
    pub fn new(cloud: &str, device: &str, token: &str) -> Self {
        CloudLink {
            cloud: cloud.to_string(),
            device: device.to_string(),
            token: token.to_string(),
            uplink_kbps: None,
            max_queued_samples: 4096,
        }
    }
}

/// One batch's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// The predicted class of every frame, in order.
    pub predictions: Vec<u32>,
    /// Indices of the frames the filters selected: queued for upload when connected.
    pub selected: Vec<usize>,
    /// The norm-state version the predictions were made with.
    pub version: u64,
    /// This was the first batch, whose normalization statistics the edge adopted (a connected
    /// edge opens its session with the resulting norm state).
    pub stats_adopted: bool,
    /// From an edge that shares its statistics, for a batch that selected something: the
    /// statistics sent with the upload (queued with it when connected).
    pub stats: Option<NormState>,
}

/// Running totals of an [`Edge`].
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EdgeCounters {
    pub images: u64,
    /// Samples the filters selected.
    pub selected: u64,
    /// Samples the cloud acknowledged.
    pub uploaded: u64,
    /// Samples dropped by the uplink's queue bound.
    pub dropped: u64,
    /// Samples the cloud refused for good.
    pub refused: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub updates_applied: u64,
    pub updates_rejected: u64,
    /// Calls to the cloud that got no answer (all retried).
    pub network_errors: u64,
    pub version: u64,
}

struct Link {
    uplink: Uplink,
    downlink: Downlink,
    /// The version installed, which a downlink reconnect asks to be newer than.
    installed: Arc<AtomicU64>,
}

/// An edge device: forward-only predictions, background uploads, hot-swapped norm states.
pub struct Edge {
    adapter: EdgeAdapter,
    link: Option<Link>,
    image_size: usize,
    counters: EdgeCounters,
}

impl Edge {
    /// An edge running `model` with `selection`'s filters; with `cloud`, connected (the session
    /// opens after the first batch, whose statistics the edge adopts), else offline.
    pub fn new(
        model: Model,
        selection: cema_adapt::EdgeConfig,
        cloud: Option<&CloudLink>,
    ) -> Result<Edge, EdgeError> {
        let i = model.card.input.clone();
        let model_id = model.card.name.clone();
        let link = match cloud {
            Some(c) => {
                CloudClient::check_base(&c.cloud).map_err(EdgeError::Input)?;
                // Stream reads time out after 15 s: three missed heartbeats.
                let client =
                    CloudClient::new(&c.cloud, &c.device, &c.token, Duration::from_secs(15));
                let installed = Arc::new(AtomicU64::new(0));
                let stamp = UploadStamp {
                    model_id: model_id.clone(),
                    height: i.height as u16,
                    width: i.width as u16,
                    channels: i.channels as u8,
                };
                let config = UplinkConfig {
                    stamp,
                    max_queued_samples: c.max_queued_samples,
                    kbps: c.uplink_kbps,
                    share_stats: selection.track_stats.is_some() && selection.share_stats,
                };
                Some(Link {
                    uplink: Uplink::start(client.clone(), config),
                    downlink: Downlink::start(client, installed.clone()),
                    installed,
                })
            }
            None => None,
        };
        Ok(Edge {
            adapter: EdgeAdapter::new(model, model_id, 0, selection),
            link,
            image_size: i.height * i.width * i.channels,
            counters: EdgeCounters::default(),
        })
    }

    /// Predicts a batch of u8 frames (NHWC, the model's input size); installs the updates that
    /// arrived since the last call first, and queues the selected frames for upload. Never waits
    /// on the network.
    pub fn predict(&mut self, frames: &[u8]) -> Result<Prediction, EdgeError> {
        if frames.is_empty() || !frames.len().is_multiple_of(self.image_size) {
            return Err(EdgeError::Input(format!(
                "{} bytes are not whole frames of {} bytes",
                frames.len(),
                self.image_size
            )));
        }
        let n = frames.len() / self.image_size;
        self.install_pushed();
        let version = self.adapter.version();
        let out = self.adapter.process(frames, n)?;
        self.counters.images += n as u64;
        self.counters.selected += out.upload.len() as u64;
        if let Some(link) = &self.link {
            if out.stats_initialised {
                let state = self.adapter.export_norm_state().to_bytes();
                link.uplink.set_session_state(state);
            }
            let up = gather(frames, n, &out.upload);
            let stats = out.stats.as_ref().map(NormState::to_stats_bytes);
            link.uplink
                .push(up, out.upload.len(), self.adapter.version(), stats);
            if let Some(e) = link.uplink.fatal() {
                return Err(EdgeError::Refused(e));
            }
        }
        self.counters.version = self.adapter.version();
        Ok(Prediction {
            predictions: out.predictions,
            selected: out.upload,
            version,
            stats_adopted: out.stats_initialised,
            stats: out.stats,
        })
    }

    /// Picks uploads by `selector`'s quota instead of the entropy filters (random upload and
    /// issue #25's rule; see `cema_adapt::EdgeAdapter::set_selector`).
    pub fn set_selector(&mut self, selector: Option<cema_adapt::RandomSelector>) {
        self.adapter.set_selector(selector);
    }

    /// Reports running accuracy to the cloud's dashboard (for edges that know their labels).
    pub fn report(&self, telemetry: EdgeTelemetry) {
        if let Some(link) = &self.link {
            link.uplink.set_telemetry(telemetry);
        }
    }

    /// The norm-state version predictions are made with now.
    pub fn version(&self) -> u64 {
        self.adapter.version()
    }

    /// The norm state the edge predicts with now.
    pub fn norm_state(&self) -> NormState {
        self.adapter.norm_state()
    }

    pub fn counters(&self) -> EdgeCounters {
        let mut c = self.counters.clone();
        if let Some(link) = &self.link {
            let u = link.uplink.counters();
            c.uploaded = u.acked_samples;
            c.dropped = u.dropped_samples;
            c.refused = u.refused_samples;
            c.bytes_up = u.bytes_up + u.session_bytes_up;
            c.network_errors = u.network_errors;
        }
        c
    }

    /// Installs a norm state obtained some other way (validated as a pushed one is). A state not
    /// newer than the installed one is ignored.
    pub fn apply(&mut self, state: &NormState) {
        match self.adapter.apply_update(state) {
            Ok(()) => {
                self.counters.updates_applied += 1;
                self.counters.version = self.adapter.version();
                if let Some(link) = &self.link {
                    link.installed
                        .store(self.adapter.version(), Ordering::Release);
                    // Should the cloud lose the session, it is reopened from what the edge runs.
                    link.uplink
                        .set_session_state_quiet(self.adapter.norm_state().to_bytes());
                }
            }
            Err(cema_adapt::AdaptError::StaleVersion { .. }) => {}
            Err(e) => {
                self.counters.updates_rejected += 1;
                tracing::warn!("rejected update v{}: {e}", state.version);
            }
        }
    }

    fn install_pushed(&mut self) {
        let mut arrived = Vec::new();
        if let Some(link) = &self.link {
            while let Ok(msg) = link.downlink.rx.try_recv() {
                arrived.push(msg);
            }
        }
        for msg in arrived {
            self.take(msg);
        }
    }

    /// One message of the downlink: a state to validate and install, or garbage to count.
    fn take(&mut self, msg: Incoming) {
        match msg {
            Incoming::State { state, bytes } => {
                self.counters.bytes_down += bytes as u64;
                self.apply(&state);
            }
            Incoming::Garbage { reason, bytes } => {
                self.counters.bytes_down += bytes as u64;
                self.counters.updates_rejected += 1;
                tracing::warn!("rejected a pushed update: {reason}");
            }
        }
    }

    /// Waits up to `drain` for queued uploads, installs the updates that follow them (for half a
    /// second), and stops the link. The final counters, or the refusal that stopped the link
    /// (a token or model the cloud will never take).
    pub fn finish(mut self, drain: Duration) -> Result<EdgeCounters, EdgeError> {
        let Some(link) = self.link.take() else {
            return Ok(self.counters);
        };
        let Link {
            uplink,
            downlink,
            installed,
        } = link;
        let u = uplink.finish(drain).map_err(EdgeError::Refused)?;
        // Updates for the last uploads arrive shortly after; install what comes in time.
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(500) {
            while let Ok(msg) = downlink.rx.try_recv() {
                self.take(msg);
                installed.store(self.adapter.version(), Ordering::Release);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut c = self.counters;
        c.uploaded = u.acked_samples;
        c.dropped = u.dropped_samples;
        c.refused = u.refused_samples;
        c.bytes_up = u.bytes_up + u.session_bytes_up;
        c.network_errors = u.network_errors;
        c.version = self.adapter.version();
        Ok(c)
    }

    /// The adapter, for the synchronous verification mode of [`crate::run_stream`].
    pub(crate) fn adapter_mut(&mut self) -> &mut EdgeAdapter {
        &mut self.adapter
    }
}
