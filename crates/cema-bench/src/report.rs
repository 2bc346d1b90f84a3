//! The typed report of a run: what `results.json` holds, and its CSV and text-table forms.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use cema_adapt::Dropped;
use serde::Serialize;
use serde_json::Value;

use crate::stream::teacher_json;
use crate::{StreamResult, TeacherCounts};

/// One method on one stream.
#[derive(Debug, Clone, Serialize)]
pub struct StreamReport {
    pub accuracy: f64,
    pub upload_fraction: f64,
    pub uploaded: usize,
    pub selected: usize,
    pub selected_accuracy: Option<f64>,
    pub dropped: Option<Dropped>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub updates: u64,
    pub seconds: f64,
    pub cloud_seconds: f64,
    pub edge_images_per_s: f64,
    pub cloud_samples_per_s: Option<f64>,
    pub images: usize,
    pub severity: u8,
    /// Correct predictions per batch, in stream order.
    pub batch_correct: Vec<u32>,
    pub teacher_diagnosis: Value,
    #[serde(skip)]
    pub corruption: String,
}

impl StreamReport {
    pub fn new(r: &StreamResult, corruption: &str, severity: u8) -> Self {
        StreamReport {
            accuracy: r.accuracy(),
            upload_fraction: r.upload_fraction(),
            uploaded: r.uploaded,
            selected: r.selected,
            selected_accuracy: r.selected_accuracy(),
            dropped: r.dropped,
            bytes_up: r.bytes_up,
            bytes_down: r.bytes_down,
            updates: r.updates,
            seconds: r.seconds,
            cloud_seconds: r.cloud_seconds,
            edge_images_per_s: r.images as f64 / (r.seconds - r.cloud_seconds).max(1e-9),
            cloud_samples_per_s: (r.cloud_seconds > 0.0)
                .then(|| r.uploaded as f64 / r.cloud_seconds),
            images: r.images,
            severity,
            batch_correct: r.batch_correct.clone(),
            teacher_diagnosis: teacher_json(&r.teacher),
            corruption: corruption.to_string(),
        }
    }
}

/// One method over all streams: means of the per-stream fractions, sums of the counts.
#[derive(Debug, Clone, Serialize)]
pub struct MethodSummary {
    pub avg_accuracy: f64,
    pub upload_fraction: f64,
    pub uploaded: usize,
    pub selected: usize,
    pub selected_accuracy: Option<f64>,
    pub teacher_diagnosis: Value,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub updates: u64,
    pub seconds: f64,
    pub cloud_seconds: f64,
    pub edge_images_per_s: f64,
    pub cloud_samples_per_s: Option<f64>,
    /// By stream key.
    pub corruptions: BTreeMap<String, StreamReport>,
}

impl MethodSummary {
    /// `results` in stream order, with each stream's (key, corruption, severity).
    pub fn new(results: &[StreamResult], streams: &[(String, String, u8)]) -> Self {
        let rs = results;
        let k = rs.len().max(1) as f64;
        let selected: usize = rs.iter().map(|r| r.selected).sum();
        let selected_correct: usize = rs.iter().map(|r| r.selected_correct).sum();
        let teacher: Option<[TeacherCounts; 2]> =
            rs.iter().filter_map(|r| r.teacher).reduce(|mut a, b| {
                a[0].add(&b[0]);
                a[1].add(&b[1]);
                a
            });
        let seconds: f64 = rs.iter().map(|r| r.seconds).sum();
        let cloud_seconds: f64 = rs.iter().map(|r| r.cloud_seconds).sum();
        let images: usize = rs.iter().map(|r| r.images).sum();
        let uploaded: usize = rs.iter().map(|r| r.uploaded).sum();
        MethodSummary {
            avg_accuracy: rs.iter().map(StreamResult::accuracy).sum::<f64>() / k,
            upload_fraction: rs.iter().map(StreamResult::upload_fraction).sum::<f64>() / k,
            uploaded,
            selected,
            selected_accuracy: (selected > 0).then(|| selected_correct as f64 / selected as f64),
            teacher_diagnosis: teacher_json(&teacher),
            bytes_up: rs.iter().map(|r| r.bytes_up).sum(),
            bytes_down: rs.iter().map(|r| r.bytes_down).sum(),
            updates: rs.iter().map(|r| r.updates).sum(),
            seconds,
            cloud_seconds,
            edge_images_per_s: images as f64 / (seconds - cloud_seconds).max(1e-9),
            cloud_samples_per_s: (cloud_seconds > 0.0).then(|| uploaded as f64 / cloud_seconds),
            corruptions: streams
                .iter()
                .zip(rs)
                .map(|((key, c, s), r)| (key.clone(), StreamReport::new(r, c, *s)))
                .collect(),
        }
    }
}

/// A whole run: `results.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub protocol: String,
    /// How stream keys are formed: `<corruption>`, or `<corruption>-s<severity>` with several
    /// severities.
    pub stream_key: String,
    /// Stream keys in run order.
    pub streams: Vec<String>,
    pub severities: Vec<u8>,
    pub images_per_stream: usize,
    pub batch: usize,
    pub seed: u64,
    pub seconds: f64,
    /// By method key.
    pub methods: BTreeMap<String, MethodSummary>,
    /// Method keys in run (and report) order.
    #[serde(skip)]
    pub method_order: Vec<String>,
}

impl Report {
    /// `results.json`'s content.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).expect("a report serialises")
    }

    fn in_order(&self) -> impl Iterator<Item = (&str, &MethodSummary)> {
        self.method_order
            .iter()
            .map(|k| (k.as_str(), &self.methods[k]))
    }

    /// `results.csv`: one row per method and stream.
    pub fn csv(&self) -> String {
        let mut csv = String::from(
            "method,stream,corruption,severity,images,accuracy,upload_fraction,uploaded,selected,\
             bytes_up,bytes_down,updates,seconds\n",
        );
        for (m, summary) in self.in_order() {
            for key in &self.streams {
                let r = &summary.corruptions[key];
                let _ = writeln!(
                    csv,
                    "{m},{key},{},{},{},{:.6},{:.6},{},{},{},{},{},{:.3}",
                    r.corruption,
                    r.severity,
                    r.images,
                    r.accuracy,
                    r.upload_fraction,
                    r.uploaded,
                    r.selected,
                    r.bytes_up,
                    r.bytes_down,
                    r.updates,
                    r.seconds
                );
            }
        }
        csv
    }

    /// Methods as columns, streams as rows, then the mean and upload-% rows.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "online accuracy (%), {} protocol, {} images per stream, batch {}, seed {}",
            self.protocol, self.images_per_stream, self.batch, self.seed
        );
        let width = 13;
        let mut line = format!("{:<22}", "stream");
        for (m, _) in self.in_order() {
            line += &format!(" {m:>width$}");
        }
        let _ = writeln!(t, "{line}");
        for key in &self.streams {
            let mut line = format!("{key:<22}");
            for (_, s) in self.in_order() {
                line += &format!(" {:>width$.2}", s.corruptions[key].accuracy * 100.0);
            }
            let _ = writeln!(t, "{line}");
        }
        let k = self.streams.len().max(1) as f64;
        let mut mean = format!("{:<22}", "mean");
        let mut up = format!("{:<22}", "upload %");
        // Bytes matter beside the fraction: a method may send more than pixels (statistics).
        let mut bytes = format!("{:<22}", "bytes up / image");
        for (_, s) in self.in_order() {
            let (sent, seen) = self.streams.iter().fold((0u64, 0usize), |(b, n), k| {
                (b + s.corruptions[k].bytes_up, n + s.corruptions[k].images)
            });
            bytes += &format!(" {:>width$.0}", sent as f64 / seen.max(1) as f64);
            let acc: f64 = self.streams.iter().map(|k| s.corruptions[k].accuracy).sum();
            let frac: f64 = self
                .streams
                .iter()
                .map(|k| s.corruptions[k].upload_fraction)
                .sum();
            mean += &format!(" {:>width$.2}", acc / k * 100.0);
            up += &format!(" {:>width$.1}", frac / k * 100.0);
        }
        let _ = writeln!(t, "{mean}");
        let _ = writeln!(t, "{up}");
        let _ = writeln!(t, "{bytes}");
        t
    }
}
