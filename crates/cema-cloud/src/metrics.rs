//! Prometheus metrics at `/metrics`: the classic text format by default, OpenMetrics on request.

use cema_wire::ErrorCode;
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
    /// Failed store writes (e.g. a full disk).
    pub store_errors: Counter,
    /// Open client connections.
    pub connections: Gauge,
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
            store_errors: Counter::default(),
            connections: Gauge::default(),
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
        registry.register(
            "store_errors",
            "Session-store writes that failed (disk full, I/O error)",
            m.store_errors.clone(),
        );
        registry.register(
            "connections",
            "Client connections open",
            m.connections.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    pub fn reject(&self, code: ErrorCode) {
        self.rejected
            .get_or_create(&vec![("code".to_string(), code.as_str().to_string())])
            .inc();
    }

    /// OpenMetrics 1.0 text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    /// Prometheus' classic text format (0.0.4), what most scrapers and `promtool` read.
    pub fn render_classic(&self) -> String {
        openmetrics_to_classic(&self.render())
    }
}

/// The classic format from OpenMetrics text: a counter family `x` has samples `x_total`, and
/// there the family's HELP and TYPE lines name `x_total` too; no UNIT lines, no `# EOF`.
fn openmetrics_to_classic(text: &str) -> String {
    let counters: std::collections::HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "].into_iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(meta.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_text_names_counters_by_their_samples() {
        let m = Metrics::default();
        m.uploads.inc();
        m.reject(ErrorCode::Unauthorized);
        let open = m.render();
        assert!(open.contains("# TYPE cema_cloud_uploads counter"));
        assert!(open.ends_with("# EOF\n"));
        let classic = m.render_classic();
        assert!(classic.contains("# HELP cema_cloud_uploads_total Uploads acknowledged"));
        assert!(classic
            .contains("# TYPE cema_cloud_uploads_total counter\ncema_cloud_uploads_total 1\n"));
        assert!(classic.contains("cema_cloud_rejected_total{code=\"unauthorized\"} 1"));
        assert!(classic.contains("# TYPE cema_cloud_queued_uploads gauge"));
        assert!(!classic.contains("# EOF"));
    }
}
