//! A benchmark run: its configuration, the loop over streams and methods, resume.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use cema_corrupt::Corruption;
use cema_data::ImageSet;
use cema_model::Model;
use serde_json::{json, Map, Value};

use crate::methods::{make, Runner};
use crate::records::{load_record, record_path, save_record};
use crate::report::MethodSummary;
use crate::{
    run_stream, stream, stream_order, MethodKey, Protocol, Report, Settings, StreamResult,
};

/// Why a run stopped. The first three are the caller's input or environment (a CLI's exit 2),
/// the last a failure of the run itself.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0:#}")]
    Input(anyhow::Error),
    #[error("cannot write results: {0:#}")]
    Output(anyhow::Error),
    #[error("resuming: {}: {why}; rerun without resume to start over, or use another output folder", .path.display())]
    Resume { path: PathBuf, why: String },
    #[error("{0:#}")]
    Run(anyhow::Error),
}

/// One stream: a corruption at a severity, and its key in the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSpec {
    pub corruption: Corruption,
    pub severity: u8,
    pub key: String,
}

impl StreamSpec {
    /// Every corruption × severity, corruption-major; keys are the corruption's name, with
    /// `-s<severity>` when there are several severities.
    pub fn grid(corruptions: &[Corruption], severities: &[u8]) -> Vec<StreamSpec> {
        let multi = severities.len() > 1;
        corruptions
            .iter()
            .flat_map(|&c| {
                severities.iter().map(move |&s| StreamSpec {
                    corruption: c,
                    severity: s,
                    key: if multi {
                        format!("{}-s{s}", c.name())
                    } else {
                        c.name().to_string()
                    },
                })
            })
            .collect()
    }
}

/// Random upload's rate on each stream.
#[derive(Debug, Clone)]
pub enum RandomRate {
    /// CEMA's measured upload fraction on the same stream (CEMA must be among the methods).
    FollowCema,
    /// The same rate on every stream.
    Fixed(f64),
    /// By stream key, e.g. from an earlier run ([`rates_from`]).
    PerStream(HashMap<String, f64>),
}

/// Everything a run is, besides the test set and the models.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// In any order; run and reported in [`MethodKey`] order, once each.
    pub methods: Vec<MethodKey>,
    pub protocol: Protocol,
    pub streams: Vec<StreamSpec>,
    /// Images per stream: the first N of the seed's shuffled test set (`None`: all).
    pub limit: Option<usize>,
    pub batch: usize,
    /// Seed of the stream order (and, through [`Settings`], of CEMA's replay and random upload).
    pub seed: u64,
    /// Seed of the corruptions generated on the fly.
    pub corruption_seed: u64,
    /// Where the corrupted images come from.
    pub corrupted: crate::Corrupted,
    pub settings: Settings,
    pub random_rate: RandomRate,
    /// Where each (method, stream) result is recorded as soon as it is measured.
    pub records: PathBuf,
    /// Reuse the records a run with the same fingerprint left; without it they are cleared.
    pub resume: bool,
    /// What else a result depends on (dataset, binary, thread count, backend, precision): part of every
    /// record's fingerprint.
    pub environment: Map<String, Value>,
}

/// The checkpoints a run needs (each with its sha256, for the fingerprints).
#[derive(Default)]
pub struct Models {
    pub edge: Option<(Model, String)>,
    pub foundation: Option<(Model, String)>,
}

/// Hears about a run's progress. Every method has a no-op default.
pub trait Observer {
    /// What is being done now (e.g. `fog: cema`).
    fn message(&self, _what: &str) {}
    /// `images` more images were scored (or reused from a record).
    fn advanced(&self, _images: u64) {}
}

impl Observer for () {}

/// A finished run.
#[derive(Debug)]
pub struct Outcome {
    pub report: Report,
    /// The stream order: test-set indices, in the order every stream presents them.
    pub order: Vec<usize>,
    /// Where each stream's images came from: `file` or `generated`.
    pub sources: Map<String, Value>,
    /// Random upload's rate per stream, when it ran.
    pub random_rates: Map<String, Value>,
    /// `method/stream` results taken from records.
    pub resumed: Vec<String>,
}

impl BenchConfig {
    /// The methods as run: sorted, once each.
    pub fn methods(&self) -> Vec<MethodKey> {
        let mut m = self.methods.clone();
        m.sort_unstable();
        m.dedup();
        m
    }

    /// Checks what can be checked before anything is loaded.
    pub fn check(&self) -> Result<(), BenchError> {
        let input = |m: String| Err(BenchError::Input(anyhow::anyhow!(m)));
        if self.batch == 0 {
            return input("the batch size must be positive".into());
        }
        if self.limit == Some(0) {
            return input("the images per stream must be positive".into());
        }
        if self.streams.is_empty() {
            return input("no streams: the corruption selection is empty".into());
        }
        let corruptions: Vec<Corruption> = self.streams.iter().map(|s| s.corruption).collect();
        self.corrupted
            .check(&corruptions)
            .map_err(BenchError::Input)?;
        let methods = self.methods();
        if methods.iter().any(|m| m.uploads_at_a_rate())
            && !methods.contains(&MethodKey::Cema)
            && matches!(self.random_rate, RandomRate::FollowCema)
            && self.settings.edge.byte_budget.is_none()
        {
            return input(
                "random and uncertain upload follow CEMA's measured rate: run cema too, or give \
                 the rate"
                    .into(),
            );
        }
        Ok(())
    }

    /// How many images each stream has.
    pub fn images_per_stream(&self, test_len: usize) -> usize {
        self.limit.unwrap_or(usize::MAX).min(test_len)
    }

    fn fingerprint(&self, images: usize) -> Value {
        let mut f = self.environment.clone();
        let set = |f: &mut Map<String, Value>, k: &str, v: Value| {
            f.insert(k.to_string(), v);
        };
        set(&mut f, "protocol", json!(self.protocol.name()));
        set(
            &mut f,
            "sequence",
            match self.protocol {
                Protocol::Episodic => Value::Null,
                Protocol::Continual => {
                    json!(self.streams.iter().map(|s| &s.key).collect::<Vec<_>>())
                }
            },
        );
        set(&mut f, "seed", json!(self.seed));
        set(&mut f, "corruption_seed", json!(self.corruption_seed));
        set(&mut f, "batch", json!(self.batch));
        set(&mut f, "images_per_stream", json!(images));
        set(&mut f, "corrupted", json!(self.corrupted.dir));
        set(
            &mut f,
            "diagnose_teacher",
            json!(self.settings.diagnose_teacher),
        );
        Value::Object(f)
    }
}

/// CEMA's measured upload fraction per stream key, from an earlier run's results.json that saw the
/// same streams (protocol, seed, batch, images per stream and every key of `streams`).
pub fn rates_from(
    path: &Path,
    config: &BenchConfig,
    images: usize,
) -> anyhow::Result<HashMap<String, f64>> {
    let text = std::fs::read_to_string(path)?;
    let v: Value = serde_json::from_str(&text)?;
    for (field, want) in [
        ("protocol", json!(config.protocol.name())),
        ("seed", json!(config.seed)),
        ("batch", json!(config.batch)),
        ("images_per_stream", json!(images)),
    ] {
        anyhow::ensure!(
            v.get(field) == Some(&want),
            "its {field} is {}, this run's is {want}: CEMA's rates there were measured on other \
             streams",
            v.get(field).unwrap_or(&Value::Null)
        );
    }
    let per = v
        .pointer("/methods/cema/corruptions")
        .and_then(Value::as_object)
        .ok_or_else(|| anyhow::anyhow!("it has no methods.cema.corruptions (was cema run?)"))?;
    config
        .streams
        .iter()
        .map(|s| {
            let key = &s.key;
            let r = per
                .get(key)
                .and_then(|r| r.get("upload_fraction"))
                .and_then(Value::as_f64)
                .ok_or_else(|| {
                    anyhow::anyhow!("it has no cema upload_fraction for stream {key}")
                })?;
            anyhow::ensure!(
                (0.0..=1.0).contains(&r),
                "cema's upload_fraction {r} on {key} is outside [0, 1]"
            );
            Ok((key.clone(), r))
        })
        .collect()
}

/// Runs every method of `config` on every stream of `test`.
pub fn run(
    config: &BenchConfig,
    test: &ImageSet,
    models: &Models,
    observer: &dyn Observer,
) -> Result<Outcome, BenchError> {
    config.check()?;
    let methods = config.methods();
    let edge = models.edge.as_ref().map(|(m, _)| m);
    let foundation = models.foundation.as_ref().map(|(m, _)| m);
    for m in &methods {
        let missing =
            |what: &str| BenchError::Input(anyhow::anyhow!("{} needs the {what} model", m.key()));
        if m.needs_edge() && edge.is_none() {
            return Err(missing("edge"));
        }
        if m.needs_foundation() && foundation.is_none() {
            return Err(missing("foundation"));
        }
    }
    let mut order = stream_order(test.len(), config.seed);
    order.truncate(config.images_per_stream(test.len()));

    let records = &config.records;
    if !config.resume {
        match std::fs::remove_dir_all(records) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(BenchError::Output(anyhow::anyhow!(
                    "cannot clear an earlier run's records in {}: {e}",
                    records.display()
                )))
            }
        }
    }
    let run_fingerprint = config.fingerprint(order.len());
    let sha = |m: &Option<(Model, String)>| m.as_ref().map(|(_, s)| s.clone());
    let (edge_sha, foundation_sha) = (sha(&models.edge), sha(&models.foundation));
    let fingerprint = |m: MethodKey, s: &crate::StreamSpec, rate: f64| {
        let mut f = run_fingerprint.clone();
        let o = f.as_object_mut().expect("an object");
        o.insert("method".into(), json!(m.key()));
        o.insert("stream".into(), json!(s.key));
        o.insert("corruption".into(), json!(s.corruption.name()));
        o.insert("severity".into(), json!(s.severity));
        o.insert(
            "edge_sha256".into(),
            json!(m.needs_edge().then_some(&edge_sha)),
        );
        o.insert(
            "foundation_sha256".into(),
            json!(m.needs_foundation().then_some(&foundation_sha)),
        );
        o.insert(
            "hyperparameters".into(),
            config.settings.to_json(&[m])[m.key()].clone(),
        );
        o.insert(
            "random_rate".into(),
            json!(m.uploads_at_a_rate().then_some(rate)),
        );
        f
    };
    // Continual: a method's state runs through every stream, so its records are reused only
    // when it was recorded on all of them.
    let reuse: Vec<bool> = methods
        .iter()
        .map(|&m| {
            config.resume
                && (config.protocol == Protocol::Episodic
                    || config
                        .streams
                        .iter()
                        .all(|s| record_path(records, m, &s.key).exists()))
        })
        .collect();

    let mut live: Vec<Option<Runner>> = methods.iter().map(|_| None).collect();
    let mut results: Vec<Vec<StreamResult>> = methods.iter().map(|_| Vec::new()).collect();
    let mut sources = Map::new();
    let mut random_rates = Map::new();
    let mut resumed = Vec::new();
    let t0 = Instant::now();
    for spec in &config.streams {
        let key = &spec.key;
        let mut set = None;
        for (mi, &m) in methods.iter().enumerate() {
            // A byte budget sets every method's quota; no rate is read.
            let by_rate = m.uploads_at_a_rate() && config.settings.edge.byte_budget.is_none();
            let rate = match (m, &config.random_rate) {
                _ if !by_rate => 0.0,
                (m, RandomRate::Fixed(r)) if m.uploads_at_a_rate() => *r,
                (m, RandomRate::PerStream(rates)) if m.uploads_at_a_rate() => {
                    *rates.get(key).ok_or_else(|| {
                        BenchError::Input(anyhow::anyhow!("no random-upload rate for {key}"))
                    })?
                }
                (m, RandomRate::FollowCema) if m.uploads_at_a_rate() => {
                    let cema = methods.iter().position(|&k| k == MethodKey::Cema);
                    let cema = cema.expect("checked: cema runs when random_upload has no rate");
                    results[cema]
                        .last()
                        .map_or(0.0, StreamResult::upload_fraction)
                }
                _ => 0.0,
            };
            if by_rate {
                random_rates.insert(key.clone(), json!(rate));
            }
            let fp = fingerprint(m, spec, rate);
            let path = record_path(records, m, key);
            if reuse[mi] {
                if let Some(record) = load_record(&path, &fp)? {
                    observer.advanced(record.result.images as u64);
                    sources.insert(key.clone(), json!(record.source));
                    resumed.push(format!("{}/{key}", m.key()));
                    results[mi].push(record.result);
                    continue;
                }
                if config.protocol == Protocol::Continual {
                    return Err(BenchError::Resume {
                        path,
                        why: "vanished while resuming".into(),
                    });
                }
            }
            if set.is_none() {
                observer.message(&format!("{key}: corrupting"));
                let loaded = stream(
                    &config.corrupted,
                    test,
                    &order,
                    spec.corruption,
                    spec.severity,
                    config.corruption_seed,
                )
                .map_err(|e| {
                    let what = format!("{} severity {}", spec.corruption.name(), spec.severity);
                    BenchError::Input(e.context(what))
                })?;
                sources.insert(key.clone(), json!(loaded.1));
                set = Some(loaded);
            }
            let (set, from) = set.as_ref().expect("loaded above");
            observer.message(&format!("{key}: {}", m.key()));
            let fresh = config.protocol == Protocol::Episodic || live[mi].is_none();
            if fresh {
                live[mi] = Some(
                    make(m, edge, foundation, &config.settings, rate)
                        .map_err(|e| BenchError::Input(e.context("edge and foundation")))?,
                );
            }
            let runner = live[mi].as_mut().expect("created above");
            if let Runner::Random(r) = runner {
                r.set_rate(rate);
            }
            let r = run_stream(runner.method(), set, config.batch, observer)
                .map_err(|e| BenchError::Run(e.context(format!("{} on {key}", m.key()))))?;
            save_record(&path, fp, from, &r)?;
            results[mi].push(r);
        }
    }
    let seconds = t0.elapsed().as_secs_f64();

    let streams: Vec<(String, String, u8)> = config
        .streams
        .iter()
        .map(|s| (s.key.clone(), s.corruption.name().to_string(), s.severity))
        .collect();
    let mut severities: Vec<u8> = config.streams.iter().map(|s| s.severity).collect();
    severities.sort_unstable();
    severities.dedup();
    let report = Report {
        protocol: config.protocol.name().to_string(),
        stream_key: if severities.len() > 1 {
            "<corruption>-s<severity>"
        } else {
            "<corruption>"
        }
        .to_string(),
        streams: streams.iter().map(|s| s.0.clone()).collect(),
        severities,
        images_per_stream: order.len(),
        batch: config.batch,
        seed: config.seed,
        seconds,
        methods: methods
            .iter()
            .zip(&results)
            .map(|(m, rs)| (m.key().to_string(), MethodSummary::new(rs, &streams)))
            .collect(),
        method_order: methods.iter().map(|m| m.key().to_string()).collect(),
    };
    Ok(Outcome {
        report,
        order,
        sources,
        random_rates,
        resumed,
    })
}
