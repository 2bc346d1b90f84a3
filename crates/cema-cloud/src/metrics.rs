//! Prometheus metrics (text format at `/metrics`).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

pub struct Metrics {
    registry: Registry,
    pub uploads: Counter,
    pub samples: Counter,
    pub upload_bytes: Counter,
    pub rejected: Family<Labels, Counter>,
    pub rounds: Counter,
    pub published: Counter,
    pub queued: Gauge,
    pub sessions: Gauge,
    pub round_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("cema_cloud");
        let m = Metrics {
            uploads: Counter::default(),
            samples: Counter::default(),
            upload_bytes: Counter::default(),
            rejected: Family::default(),
            rounds: Counter::default(),
            published: Counter::default(),
            queued: Gauge::default(),
            sessions: Gauge::default(),
            round_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            registry: Registry::default(),
        };
        registry.register(
            "uploads",
            "Uploads acknowledged (durably queued)",
            m.uploads.clone(),
        );
        registry.register("samples", "Samples acknowledged", m.samples.clone());
        registry.register(
            "upload_bytes",
            "Pixel bytes acknowledged",
            m.upload_bytes.clone(),
        );
        registry.register(
            "rejected",
            "Requests refused, by error code",
            m.rejected.clone(),
        );
        registry.register("rounds", "Adaptation rounds run", m.rounds.clone());
        registry.register(
            "published",
            "Norm-state versions published",
            m.published.clone(),
        );
        registry.register(
            "queued_uploads",
            "Uploads acknowledged but not yet learned from",
            m.queued.clone(),
        );
        registry.register("sessions", "Edge sessions held", m.sessions.clone());
        registry.register(
            "round_seconds",
            "Wall time of one adaptation round",
            m.round_seconds.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    pub fn reject(&self, code: &str) {
        self.rejected
            .get_or_create(&vec![("code".to_string(), code.to_string())])
            .inc();
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
