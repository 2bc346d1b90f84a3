//! Prometheus metrics at `/metrics`: the classic text format by default, OpenMetrics on request.

use cema_wire::ErrorCode;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// How a round ended.
#[derive(Debug, Clone, Copy)]
pub enum RoundOutcome {
    /// Learned and published a new version.
    Published,
    /// Nothing to learn from yet (fewer than B samples, no warm replay buffer).
    Idle,
    /// Adaptation failed (logged).
    Failed,
    /// The round ran but its snapshot could not be written (a full disk): nothing published.
    CommitFailed,
}

impl RoundOutcome {
    fn as_str(self) -> &'static str {
        match self {
            RoundOutcome::Published => "published",
            RoundOutcome::Idle => "idle",
            RoundOutcome::Failed => "failed",
            RoundOutcome::CommitFailed => "commit_failed",
        }
    }
}

type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

fn request_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 4.0, 9))
}

pub struct Metrics {
    registry: Registry,
    pub uploads: Counter,
    pub samples: Counter,
    pub upload_bytes: Counter,
    pub rejected: Family<Labels, Counter>,
    pub rounds: Counter,
    round_outcomes: Family<Labels, Counter>,
    pub published: Counter,
    pub queued: Gauge,
    pub sessions: Gauge,
    pub round_seconds: Histogram,
    /// Sessions whose rounds ran together in one batched pass.
    pub round_sessions: Histogram,
    /// Failed store writes (e.g. a full disk).
    pub store_errors: Counter,
    /// Open client connections.
    pub connections: Gauge,
    /// Open update streams.
    pub update_streams: Gauge,
    /// Norm-state bytes sent (update frames and `GET state`).
    pub bytes_down: Counter,
    requests: Family<Labels, Counter>,
    request_seconds: HistogramFamily,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut root = Registry::default();
        let m = Metrics {
            uploads: Counter::default(),
            samples: Counter::default(),
            upload_bytes: Counter::default(),
            rejected: Family::default(),
            rounds: Counter::default(),
            round_outcomes: Family::default(),
            published: Counter::default(),
            queued: Gauge::default(),
            sessions: Gauge::default(),
            round_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            round_sessions: Histogram::new(exponential_buckets(1.0, 2.0, 8)),
            store_errors: Counter::default(),
            connections: Gauge::default(),
            update_streams: Gauge::default(),
            bytes_down: Counter::default(),
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(request_histogram),
            registry: Registry::default(),
        };
        let r = root.sub_registry_with_prefix("cema_cloud");
        let info: Family<Labels, Gauge> = Family::default();
        info.get_or_create(&labels(&[
            ("version", env!("CARGO_PKG_VERSION")),
            ("protocol", &cema_wire::PROTOCOL_VERSION.to_string()),
        ]))
        .set(1);
        r.register("build_info", "Version of this build (value 1)", info);
        let counters: [(&str, &str, &Counter); 7] = [
            (
                "uploads",
                "Uploads acknowledged (durably queued)",
                &m.uploads,
            ),
            ("samples", "Samples acknowledged", &m.samples),
            ("upload_bytes", "Pixel bytes acknowledged", &m.upload_bytes),
            ("rounds", "Adaptation rounds run", &m.rounds),
            ("published", "Norm-state versions published", &m.published),
            (
                "store_errors",
                "Session-store writes that failed (disk full, I/O error)",
                &m.store_errors,
            ),
            (
                "bytes_down",
                "Norm-state bytes sent to edges",
                &m.bytes_down,
            ),
        ];
        for (name, help, c) in counters {
            r.register(name, help, c.clone());
        }
        let gauges: [(&str, &str, &Gauge); 4] = [
            (
                "queued_uploads",
                "Uploads acknowledged but not yet learned from",
                &m.queued,
            ),
            ("sessions", "Edge sessions held", &m.sessions),
            ("connections", "Client connections open", &m.connections),
            ("update_streams", "Update streams open", &m.update_streams),
        ];
        for (name, help, g) in gauges {
            r.register(name, help, g.clone());
        }
        r.register(
            "rejected",
            "Requests refused, by error code",
            m.rejected.clone(),
        );
        r.register(
            "round_outcomes",
            "Rounds by outcome",
            m.round_outcomes.clone(),
        );
        r.register(
            "round_seconds",
            "Wall time of one adaptation round",
            m.round_seconds.clone(),
        );
        r.register(
            "round_sessions",
            "Sessions whose rounds ran together in one batched pass",
            m.round_sessions.clone(),
        );
        r.register(
            "http_requests",
            "HTTP requests answered, by route, method and status",
            m.requests.clone(),
        );
        r.register(
            "http_request_seconds",
            "Time to answer (to the response head, for streams), by route and method",
            m.request_seconds.clone(),
        );
        root.register_collector(Box::new(ProcessCollector));
        Metrics {
            registry: root,
            ..m
        }
    }
}

impl Metrics {
    pub fn reject(&self, code: ErrorCode) {
        self.rejected
            .get_or_create(&labels(&[("code", code.as_str())]))
            .inc();
    }

    pub fn round(&self, outcome: RoundOutcome) {
        self.round_outcomes
            .get_or_create(&labels(&[("outcome", outcome.as_str())]))
            .inc();
    }

    /// One answered request. `route` is the route's template (bounded), `method` one of the
    /// methods the API knows or `other` (so a client cannot grow the label set).
    pub fn request(&self, route: &str, method: &str, status: u16, seconds: f64) {
        let method = match method {
            "GET" | "PUT" | "POST" | "HEAD" | "DELETE" | "OPTIONS" | "PATCH" => method,
            _ => "other",
        };
        self.requests
            .get_or_create(&labels(&[
                ("route", route),
                ("method", method),
                ("status", &status.to_string()),
            ]))
            .inc();
        self.request_seconds
            .get_or_create(&labels(&[("route", route), ("method", method)]))
            .observe(seconds);
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

/// The process metrics every Prometheus client exports, read from /proc at each scrape.
#[derive(Debug, Default)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let Some(p) = ProcessStats::read() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(p.cpu_seconds);
        let e = encoder.encode_descriptor(
            "process_cpu_seconds",
            "User and system CPU time spent, seconds",
            None,
            cpu.metric_type(),
        )?;
        cpu.encode(e)?;
        for (name, help, v) in [
            (
                "process_resident_memory_bytes",
                "Resident memory size, bytes",
                p.rss_bytes,
            ),
            ("process_open_fds", "Open file descriptors", p.open_fds),
        ] {
            let g = ConstGauge::new(v as i64);
            let e = encoder.encode_descriptor(name, help, None, g.metric_type())?;
            g.encode(e)?;
        }
        Ok(())
    }
}

struct ProcessStats {
    cpu_seconds: f64,
    rss_bytes: u64,
    open_fds: u64,
}

impl ProcessStats {
    fn read() -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name (which may hold spaces) start at the state, field 3.
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = rustix::param::clock_ticks_per_second() as f64;
        let cpu_seconds =
            (f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?) as f64 / ticks;
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
        Some(ProcessStats {
            cpu_seconds,
            rss_bytes: pages * rustix::param::page_size() as u64,
            open_fds,
        })
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
