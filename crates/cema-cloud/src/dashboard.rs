//! The live dashboard's data: every second a sampler thread records, per device, the counters the
//! status view holds (and the cloud's queue depth and round latency) into a bounded history, which
//! `GET /v1/dashboard?since=T` serves incrementally and the page at `/` (dashboard.html, served
//! from the binary: no CDN) draws as charts.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::service::Cloud;

/// Seconds between samples.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Samples kept: ten minutes.
pub const KEEP: usize = 600;

/// One device at one sample. Counters are running totals; the page derives rates.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DevicePoint {
    pub device: String,
    pub version: u64,
    pub uploads: u64,
    pub samples: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub distill_loss: Option<f32>,
    pub foundation_loss: Option<f32>,
    /// From the edge's telemetry, when it sends one.
    pub images: Option<u64>,
    pub correct: Option<u64>,
    pub source_correct: Option<u64>,
}

/// One sample of the whole cloud.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Point {
    /// Seconds since the cloud started.
    pub t: f64,
    /// Uploads queued over all sessions.
    pub queued: usize,
    /// Mean wall time of the rounds run since the previous sample, milliseconds.
    pub round_ms: Option<f64>,
    pub rounds: u64,
    pub devices: Vec<DevicePoint>,
}

/// The bounded history, and the round timings gathered between two samples.
#[derive(Debug, Default)]
pub struct History {
    points: Mutex<VecDeque<Point>>,
    rounds: Mutex<(u64, f64)>,
}

impl History {
    /// Called by the workers after every round.
    pub fn round_ran(&self, seconds: f64) {
        let mut r = self.rounds.lock().expect("history lock");
        r.0 += 1;
        r.1 += seconds;
    }

    fn push(&self, p: Point) {
        let mut points = self.points.lock().expect("history lock");
        if points.len() == KEEP {
            points.pop_front();
        }
        points.push_back(p);
    }

    /// Samples taken after `since` (seconds since start), oldest first.
    pub fn since(&self, since: f64) -> Vec<Point> {
        let points = self.points.lock().expect("history lock");
        points.iter().filter(|p| p.t > since).cloned().collect()
    }

    fn take_rounds(&self) -> (u64, f64) {
        std::mem::take(&mut *self.rounds.lock().expect("history lock"))
    }
}

/// Takes one sample now.
pub fn sample(cloud: &Cloud) {
    let (rounds, seconds) = cloud.history.take_rounds();
    let devices = cloud
        .sessions_view()
        .into_iter()
        .map(|v| {
            let t = v.telemetry.as_ref();
            DevicePoint {
                version: v.version,
                uploads: v.uploads,
                samples: v.samples,
                bytes_up: v.bytes_up,
                bytes_down: v.bytes_down,
                distill_loss: v.last_distill_loss,
                foundation_loss: v.last_foundation_loss,
                images: t.map(|t| t.images),
                correct: t.map(|t| t.correct),
                source_correct: t.and_then(|t| t.source_correct),
                device: v.device,
            }
        })
        .collect();
    cloud.history.push(Point {
        t: cloud.uptime_s(),
        queued: cloud.queued_total(),
        round_ms: (rounds > 0).then(|| 1e3 * seconds / rounds as f64),
        rounds,
        devices,
    });
}

/// Samples every [`SAMPLE_EVERY`] for as long as the cloud lives.
pub(crate) fn start_sampler(cloud: &Arc<Cloud>) {
    let weak = Arc::downgrade(cloud);
    std::thread::Builder::new()
        .name("cema-dashboard".into())
        .spawn(move || loop {
            std::thread::sleep(SAMPLE_EVERY);
            let Some(cloud) = weak.upgrade() else { return };
            sample(&cloud);
        })
        .expect("spawn the dashboard sampler");
}

/// The page, with its script and styles inline.
pub const PAGE: &str = include_str!("dashboard.html");

#[cfg(test)]
mod tests {
    use super::*;

    fn point(t: f64) -> Point {
        Point {
            t,
            queued: 0,
            round_ms: None,
            rounds: 0,
            devices: vec![],
        }
    }

    #[test]
    fn history_is_bounded_and_served_incrementally() {
        let h = History::default();
        for i in 0..KEEP + 5 {
            h.push(point(i as f64));
        }
        let all = h.since(-1.0);
        assert_eq!(all.len(), KEEP);
        assert_eq!(all[0].t, 5.0);
        assert_eq!(h.since((KEEP + 2) as f64).len(), 2);
        h.round_ran(0.5);
        h.round_ran(1.5);
        assert_eq!(h.take_rounds(), (2, 2.0));
        assert_eq!(h.take_rounds(), (0, 0.0));
    }
}
