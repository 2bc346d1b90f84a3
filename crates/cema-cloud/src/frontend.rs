//! The transport seam (docs/design/past-one-machine.md): what the HTTP layer of protocol v1
//! needs from whatever holds the sessions. Two implementations: the one-process [`Cloud`], and
//! the fleet's gateway (`cema-fleet`), which keeps no session and talks to NATS JetStream.

use std::future::Future;
use std::sync::Arc;

use axum::body::Bytes;
use cema_wire::{SessionInfo, UploadAck};
use tokio::sync::watch;

use crate::dashboard::History;
use crate::metrics::Metrics;
use crate::service::{Cloud, Published, Refusal, SessionView};

/// The device endpoints' work, transport-free. Every method that may block or wait is async;
/// `body` has been read whole under [`Frontend::max_body`] and the device authorised.
pub trait Frontend: Send + Sync + 'static {
    fn model_id(&self) -> &str;
    /// Hard limit on any request body, bytes.
    fn max_body(&self) -> usize;
    fn metrics(&self) -> &Metrics;
    fn uptime_s(&self) -> f64;
    /// Checks a device's bearer token.
    fn authorize(&self, device: &str, token: Option<&str>) -> Result<(), Refusal>;
    /// `PUT …/session`: creates the session on first contact, or resumes it unchanged.
    fn open_session(
        self: Arc<Self>,
        device: String,
        body: Bytes,
    ) -> impl Future<Output = Result<SessionInfo, Refusal>> + Send;
    /// `POST …/uploads`: validated, durably stored, queued; nothing changes unless `Ok`.
    fn upload(
        self: Arc<Self>,
        device: String,
        body: Bytes,
    ) -> impl Future<Output = Result<UploadAck, Refusal>> + Send;
    /// Resolves once the round of upload `seq` has run, with the version published then.
    fn wait_applied(
        self: Arc<Self>,
        device: String,
        seq: u64,
    ) -> impl Future<Output = Result<u64, Refusal>> + Send;
    /// `PUT …/telemetry`: what the edge says of itself (not durable).
    fn telemetry(
        self: Arc<Self>,
        device: String,
        body: Bytes,
    ) -> impl Future<Output = Result<(), Refusal>> + Send;
    /// The device's published norm states, the latest first; the channel closes when the
    /// frontend can no longer follow them.
    fn updates(
        self: Arc<Self>,
        device: String,
    ) -> impl Future<Output = Result<watch::Receiver<Published>, Refusal>> + Send;
    /// The device's latest published norm state (`GET …/state`).
    fn latest(
        self: Arc<Self>,
        device: String,
    ) -> impl Future<Output = Result<Published, Refusal>> + Send;
    /// Counts norm-state bytes sent to a device.
    fn sent(&self, device: &str, bytes: usize);
    /// Whether uploads can be taken now.
    fn ready(self: Arc<Self>) -> impl Future<Output = Result<(), String>> + Send;
    /// Sessions this frontend knows of.
    fn session_count(&self) -> usize;
    fn sessions_view(&self) -> Vec<SessionView>;
    fn history(&self) -> &History;
}

/// Runs blocking work (the store fsyncs) off the async threads.
async fn blocking<T: Send + 'static>(
    what: &str,
    work: impl FnOnce() -> Result<T, Refusal> + Send + 'static,
) -> Result<T, Refusal> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Refusal::bad_request(format!("{what} task: {e}")))?
}

impl Frontend for Cloud {
    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn max_body(&self) -> usize {
        self.options().max_body
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn uptime_s(&self) -> f64 {
        Cloud::uptime_s(self)
    }

    fn authorize(&self, device: &str, token: Option<&str>) -> Result<(), Refusal> {
        Cloud::authorize(self, device, token)
    }

    async fn open_session(
        self: Arc<Self>,
        device: String,
        body: Bytes,
    ) -> Result<SessionInfo, Refusal> {
        blocking("session", move || {
            Cloud::open_session(&self, &device, &body)
        })
        .await
    }

    async fn upload(self: Arc<Self>, device: String, body: Bytes) -> Result<UploadAck, Refusal> {
        blocking("upload", move || {
            Cloud::upload(&self, &device, &body).map(|(ack, _)| ack)
        })
        .await
    }

    async fn wait_applied(self: Arc<Self>, device: String, seq: u64) -> Result<u64, Refusal> {
        let session = self.session(&device)?;
        session.wait_applied(seq).await;
        Ok(session.latest().version)
    }

    async fn telemetry(self: Arc<Self>, device: String, body: Bytes) -> Result<(), Refusal> {
        Cloud::telemetry(&self, &device, &body)
    }

    async fn updates(
        self: Arc<Self>,
        device: String,
    ) -> Result<watch::Receiver<Published>, Refusal> {
        Ok(self.session(&device)?.subscribe())
    }

    async fn latest(self: Arc<Self>, device: String) -> Result<Published, Refusal> {
        Ok(self.session(&device)?.latest())
    }

    fn sent(&self, device: &str, bytes: usize) {
        if let Ok(s) = self.session(device) {
            s.sent(bytes);
        }
    }

    async fn ready(self: Arc<Self>) -> Result<(), String> {
        tokio::task::spawn_blocking(move || Cloud::ready(&self))
            .await
            .map_err(|e| format!("readiness check: {e}"))?
    }

    fn session_count(&self) -> usize {
        Cloud::session_count(self)
    }

    fn sessions_view(&self) -> Vec<SessionView> {
        Cloud::sessions_view(self)
    }

    fn history(&self) -> &History {
        &self.history
    }
}
