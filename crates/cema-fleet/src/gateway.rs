//! `cema gateway`: protocol v1 for edges (cema-cloud's HTTP layer over [`Gateway`]), keeping no
//! session state. An upload is checked, its sequence number compared with the last one in the
//! device's subject, and published with that subject's expected last sequence, so a racing
//! duplicate fails instead of appending; the 202 goes out on JetStream's publish ack. Update
//! streams follow the device's key in the norm bucket, so an edge can hold its stream on any
//! gateway and not notice a worker change.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context as _;
use async_nats::jetstream::kv;
use bytes::Bytes;
use cema_cloud::dashboard::History;
use cema_cloud::metrics::Metrics;
use cema_cloud::service::{check_session_state, check_upload};
use cema_cloud::{Frontend, Published, Refusal, SessionView};
use cema_model::{Model, NormState};
use cema_wire::{EdgeTelemetry, SessionInfo, UploadAck, PROTOCOL_VERSION};
use futures_util::StreamExt;
use tokio::sync::watch;

use crate::entry::{Head, Kind, SessionEntry};
use crate::layout::{Fleet, FleetConfig, Progress};

#[derive(Debug, Clone)]
pub struct GatewayOptions {
    pub nats: String,
    pub edge_model: PathBuf,
    /// Registered devices: id → token.
    pub devices: HashMap<String, String>,
    pub max_body: usize,
    /// Uploads of one device published but not yet learned from, past which uploads get 429.
    pub max_queued: usize,
    pub fleet: FleetConfig,
}

pub struct Gateway {
    fleet: Fleet,
    options: GatewayOptions,
    /// The edge model, to check the norm states and statistics edges send (never run).
    edge: Model,
    metrics: Metrics,
    history: History,
    started: Instant,
    /// What edges said of themselves through this gateway (not durable, as in `cema cloud`),
    /// and what it sent and received for them.
    seen: Mutex<HashMap<String, SessionView>>,
    /// Every session of the fleet as its records say, refreshed every [`FLEET_VIEW_PERIOD`].
    fleet_view: Mutex<Vec<SessionView>>,
}

/// How often a gateway reads every session record for `/v1/sessions` and `/health`.
const FLEET_VIEW_PERIOD: std::time::Duration = std::time::Duration::from_secs(2);

/// Refreshes the gateway's view of the fleet's sessions until the gateway is dropped.
async fn refresh_fleet_view(gateway: std::sync::Weak<Gateway>) {
    loop {
        let Some(g) = gateway.upgrade() else { return };
        let fleet = g.fleet.clone();
        drop(g);
        let mut views = Vec::new();
        match fleet.devices().await {
            Ok(devices) => {
                for d in devices {
                    match fleet.session_view(&d).await {
                        Ok(Some(v)) => views.push(v),
                        Ok(None) => {}
                        Err(e) => tracing::warn!(device = d, "reading the session: {e:#}"),
                    }
                }
                let Some(g) = gateway.upgrade() else { return };
                *g.fleet_view.lock().expect("view lock") = views;
            }
            Err(e) => tracing::warn!("listing the fleet's sessions: {e:#}"),
        }
        tokio::time::sleep(FLEET_VIEW_PERIOD).await;
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> Refusal {
    Refusal {
        retry_after_s: Some(1),
        ..Refusal::unavailable(format!("{what}: {e}"))
    }
}

/// The last upload in a device's subject: (its stream sequence, its device sequence number).
async fn last_upload(fleet: &Fleet, device: &str) -> Result<Option<(u64, u64)>, Refusal> {
    fleet
        .last_upload(device)
        .await
        .map_err(|e| unavailable("reading the upload log", e))
}

impl Gateway {
    pub async fn open(options: GatewayOptions) -> anyhow::Result<Arc<Gateway>> {
        let edge = Model::load(&options.edge_model, &cema_model::cpu())
            .with_context(|| format!("edge model {}", options.edge_model.display()))?;
        let fleet = Fleet::connect(&options.nats, &edge.card.name, options.fleet.clone()).await?;
        let gateway = Arc::new(Gateway {
            fleet,
            options,
            edge,
            metrics: Metrics::default(),
            history: History::default(),
            started: Instant::now(),
            seen: Mutex::new(HashMap::new()),
            fleet_view: Mutex::new(Vec::new()),
        });
        tokio::spawn(refresh_fleet_view(Arc::downgrade(&gateway)));
        Ok(gateway)
    }

    async fn progress(&self, device: &str) -> Result<Progress, Refusal> {
        let bytes = self
            .fleet
            .progress
            .get(device_key(device))
            .await
            .map_err(|e| unavailable("reading the session's progress", e))?
            .ok_or_else(|| Refusal::no_session(device))?;
        Progress::from_bytes(&bytes)
            .map_err(|e| Refusal::internal(format!("session `{device}`: {e}")))
    }

    async fn latest_entry(&self, device: &str) -> Result<Option<kv::Entry>, Refusal> {
        self.fleet
            .norm
            .entry(device_key(device))
            .await
            .map_err(|e| unavailable("reading the norm state", e))
    }

    fn note(&self, device: &str, f: impl FnOnce(&mut SessionView)) {
        let mut seen = self.seen.lock().expect("seen lock");
        let v = seen
            .entry(device.to_string())
            .or_insert_with(|| SessionView {
                device: device.to_string(),
                ..SessionView::default()
            });
        f(v);
    }
}

fn device_key(device: &str) -> String {
    crate::layout::token(device)
}

fn published(entry: &kv::Entry) -> Result<Published, Refusal> {
    let state = NormState::from_bytes(&entry.value, "norm bucket")
        .map_err(|e| Refusal::internal(format!("published norm state: {e}")))?;
    Ok(Published {
        version: state.version,
        bytes: Arc::new(entry.value.to_vec()),
    })
}

impl Frontend for Gateway {
    fn model_id(&self) -> &str {
        &self.fleet.model_id
    }

    fn max_body(&self) -> usize {
        self.options.max_body
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn uptime_s(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    fn authorize(&self, device: &str, token: Option<&str>) -> Result<(), Refusal> {
        match (self.options.devices.get(device), token) {
            (Some(expected), Some(t))
                if cema_cloud::service::constant_time_eq(expected.as_bytes(), t.as_bytes()) =>
            {
                Ok(())
            }
            _ => Err(Refusal::unauthorized()),
        }
    }

    async fn open_session(
        self: Arc<Self>,
        device: String,
        body: Bytes,
    ) -> Result<SessionInfo, Refusal> {
        let state = check_session_state(&body, &self.fleet.model_id)?;
        self.edge
            .clone()
            .apply_norm_state(&state)
            .map_err(|e| Refusal::bad_request(format!("norm state: {e}")))?;
        // The norm key first: a session record always has a published state to stream. A
        // second open, or a racing one, leaves both as the first wrote them.
        let created_norm = self
            .fleet
            .norm
            .create(device_key(&device), body.clone())
            .await;
        if let Err(e) = &created_norm {
            if !matches!(e.kind(), kv::CreateErrorKind::AlreadyExists) {
                return Err(unavailable("publishing the first norm state", e));
            }
        }
        let genesis = SessionEntry {
            head: Head {
                kind: Kind::Genesis,
                applied_seq: None,
                version: state.version,
                owner: None,
                epoch: 0,
            },
            blob: body.to_vec(),
        };
        let created = match self
            .fleet
            .sessions
            .create(Fleet::session_key(&device), genesis.to_bytes().into())
            .await
        {
            Ok(_) => true,
            Err(e) if matches!(e.kind(), kv::CreateErrorKind::AlreadyExists) => false,
            Err(e) => return Err(unavailable("creating the session", e)),
        };
        // Also after a crash between the two writes above: the progress key is what uploads look
        // for.
        let progress = Progress {
            applied_seq: None,
            version: state.version,
            samples: 0,
            rounds: 0,
            record_bytes: 0,
        };
        if let Err(e) = self
            .fleet
            .progress
            .create(device_key(&device), progress.to_bytes())
            .await
        {
            if !matches!(e.kind(), kv::CreateErrorKind::AlreadyExists) {
                return Err(unavailable("creating the session's progress", e));
            }
        }
        let (version, next_seq) = if created {
            (state.version, 0)
        } else {
            let latest = self
                .latest_entry(&device)
                .await?
                .ok_or_else(|| Refusal::no_session(&device))?;
            let next = last_upload(&self.fleet, &device)
                .await?
                .map_or(0, |(_, seq)| seq + 1);
            (published(&latest)?.version, next)
        };
        self.note(&device, |v| {
            v.version = version;
            v.next_seq = next_seq;
        });
        Ok(SessionInfo {
            protocol: PROTOCOL_VERSION,
            device,
            model_id: self.fleet.model_id.clone(),
            version,
            next_seq,
            created,
            features: cema_cloud::service::features(),
        })
    }

    async fn upload(self: Arc<Self>, device: String, body: Bytes) -> Result<UploadAck, Refusal> {
        let up = check_upload(&body, self.options.max_body, &self.edge)?.upload;
        let seq = up.header.seq;
        let progress = self.progress(&device).await?;
        let last = last_upload(&self.fleet, &device).await?;
        let expected = last.map_or(0, |(_, s)| s + 1);
        if seq != expected {
            return Err(Refusal::bad_sequence(seq, expected));
        }
        let learned = progress.applied_seq.map_or(0, |a| a + 1);
        let queued = expected.saturating_sub(learned) as usize;
        if queued >= self.options.max_queued {
            return Err(Refusal::overloaded(queued));
        }
        let appended = self
            .fleet
            .append_upload(
                &device,
                seq,
                last,
                Bytes::from(up.pixels),
                up.stats.as_deref(),
            )
            .await
            .map_err(|e| unavailable("publishing the upload", e))?;
        if !appended {
            // Another request with this seq got in first.
            let next = last_upload(&self.fleet, &device)
                .await?
                .map_or(0, |(_, s)| s + 1);
            return Err(Refusal::bad_sequence(seq, next.max(seq + 1)));
        }
        self.metrics.uploads.inc();
        self.metrics.samples.inc_by(up.header.n as u64);
        self.metrics.upload_bytes.inc_by(body.len() as u64);
        self.note(&device, |v| {
            v.uploads += 1;
            v.bytes_up += body.len() as u64;
            v.next_seq = seq + 1;
        });
        Ok(UploadAck {
            seq,
            next_seq: seq + 1,
            queued: queued as u64 + 1,
            version: None,
        })
    }

    async fn wait_applied(self: Arc<Self>, device: String, seq: u64) -> Result<u64, Refusal> {
        let key = device_key(&device);
        // Read, then watch from the next revision: a watch does not deliver the value that
        // existed before it started.
        let entry = self
            .fleet
            .progress
            .entry(&key)
            .await
            .map_err(|e| unavailable("reading the session's progress", e))?
            .ok_or_else(|| Refusal::no_session(&device))?;
        let applied = |value: &[u8]| {
            Progress::from_bytes(value)
                .ok()
                .filter(|p| p.applied_seq.is_some_and(|a| a >= seq))
                .map(|p| p.version)
        };
        let target = match applied(&entry.value) {
            Some(v) => v,
            None => {
                let mut watch = self
                    .fleet
                    .progress
                    .watch_from_revision(&key, entry.revision + 1)
                    .await
                    .map_err(|e| unavailable("watching the session", e))?;
                loop {
                    match watch.next().await {
                        Some(Ok(e)) => {
                            if let Some(v) = applied(&e.value) {
                                break v;
                            }
                        }
                        Some(Err(e)) => return Err(unavailable("watching the session", e)),
                        None => return Err(unavailable("watching the session", "the watch ended")),
                    }
                }
            }
        };
        // The worker writes progress after publishing; a version as new is there, or (after a
        // crash between the two) will be once the slot's next owner republishes it.
        let mut rx = self.clone().updates(device).await?;
        let version = rx
            .wait_for(|p| p.version >= target)
            .await
            .map_err(|_| unavailable("watching the norm state", "the watch ended"))?
            .version;
        Ok(version)
    }

    async fn telemetry(self: Arc<Self>, device: String, body: Bytes) -> Result<(), Refusal> {
        if body.len() > cema_wire::MAX_TELEMETRY {
            return Err(Refusal::too_large(body.len(), cema_wire::MAX_TELEMETRY));
        }
        let t: EdgeTelemetry = serde_json::from_slice(&body)
            .map_err(|e| Refusal::bad_request(format!("telemetry: {e}")))?;
        t.check().map_err(Refusal::bad_request)?;
        self.progress(&device).await?;
        self.note(&device, |v| v.telemetry = Some(t));
        Ok(())
    }

    async fn updates(
        self: Arc<Self>,
        device: String,
    ) -> Result<watch::Receiver<Published>, Refusal> {
        let entry = self
            .latest_entry(&device)
            .await?
            .ok_or_else(|| Refusal::no_session(&device))?;
        let (tx, rx) = watch::channel(published(&entry)?);
        let mut watch = self
            .fleet
            .norm
            .watch_from_revision(device_key(&device), entry.revision + 1)
            .await
            .map_err(|e| unavailable("watching the norm state", e))?;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tx.closed() => return,
                    next = watch.next() => match next {
                        Some(Ok(e)) => {
                            let Ok(p) = published(&e) else { continue };
                            // Versions only move forward, whatever order entries arrive in.
                            tx.send_if_modified(|cur| {
                                let newer = p.version > cur.version;
                                if newer {
                                    *cur = p;
                                }
                                newer
                            });
                        }
                        // The stream ends; the edge reconnects and gets a fresh watch.
                        _ => return,
                    },
                }
            }
        });
        Ok(rx)
    }

    async fn latest(self: Arc<Self>, device: String) -> Result<Published, Refusal> {
        let entry = self
            .latest_entry(&device)
            .await?
            .ok_or_else(|| Refusal::no_session(&device))?;
        published(&entry)
    }

    fn sent(&self, device: &str, bytes: usize) {
        self.note(device, |v| v.bytes_down += bytes as u64);
    }

    async fn ready(self: Arc<Self>) -> Result<(), String> {
        if self.fleet.client.connection_state() != async_nats::connection::State::Connected {
            return Err("not connected to NATS".into());
        }
        self.fleet
            .js
            .get_stream(self.fleet.uploads.cached_info().config.name.clone())
            .await
            .map(|_| ())
            .map_err(|e| format!("JetStream: {e}"))
    }

    /// The fleet's sessions (as of the last refresh).
    fn session_count(&self) -> usize {
        self.fleet_view.lock().expect("view lock").len()
    }

    /// The fleet's sessions from their records; uploads, bytes and telemetry as this gateway
    /// saw them.
    fn sessions_view(&self) -> Vec<SessionView> {
        let seen = self.seen.lock().expect("seen lock");
        let mut out = self.fleet_view.lock().expect("view lock").clone();
        for v in &mut out {
            if let Some(here) = seen.get(&v.device) {
                v.uploads = here.uploads;
                v.bytes_up = here.bytes_up;
                v.bytes_down = here.bytes_down;
                v.telemetry = here.telemetry.clone();
            }
        }
        out
    }

    fn history(&self) -> &History {
        &self.history
    }
}
