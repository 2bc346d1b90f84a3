//! `cema bench`: the evaluation protocol of SPEC §4. Every method sees the same streams (the
//! test set under one corruption and severity, in a fixed shuffled order, in batches), and is
//! scored on the predictions it returned for each batch before any update that batch triggered
//! (online accuracy), with its uploads, bytes on the wire, updates and wall time.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use cema_adapt::{
    BnAdapt, Cema, CloudConfig, Dropped, Eata, EdgeConfig, Foundation, GradConfig, Method, Pick,
    RandomUpload, Source, Tent,
};
use cema_corrupt::{Corruption, Plan, Table};
use cema_data::cifar_c::CorruptedDir;
use cema_data::{ImageSet, Split};
use cema_model::{sha256_file, Device, Model};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::corrupt::{expand, parse_selection, Selection};
use super::{
    ensure_writable_dir, parent_dir, shell_line, utc_now, write_atomic, write_json, Context,
    DataArgs,
};
use crate::exit::{CliError, ResultExt};
use crate::ui::Progress;

/// A method of SPEC §3, by its `--methods` key. The declaration order is the execution and
/// report order (CEMA runs before random upload, which needs CEMA's measured rate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum MethodKey {
    Source,
    BnAdapt,
    Tent,
    Eata,
    Cema,
    Foundation,
    RandomUpload,
}

impl MethodKey {
    pub const ALL: [MethodKey; 7] = [
        MethodKey::Source,
        MethodKey::BnAdapt,
        MethodKey::Tent,
        MethodKey::Eata,
        MethodKey::Cema,
        MethodKey::Foundation,
        MethodKey::RandomUpload,
    ];

    pub fn key(self) -> &'static str {
        match self {
            MethodKey::Source => "source",
            MethodKey::BnAdapt => "bn_adapt",
            MethodKey::Tent => "tent",
            MethodKey::Eata => "eata",
            MethodKey::Cema => "cema",
            MethodKey::Foundation => "foundation",
            MethodKey::RandomUpload => "random_upload",
        }
    }

    fn needs_edge(self) -> bool {
        self != MethodKey::Foundation
    }

    fn needs_foundation(self) -> bool {
        matches!(
            self,
            MethodKey::Cema | MethodKey::Foundation | MethodKey::RandomUpload
        )
    }
}

fn parse_method(s: &str) -> Result<MethodKey, String> {
    let s = s.trim();
    MethodKey::ALL
        .into_iter()
        .find(|m| m.key() == s)
        .ok_or_else(|| {
            format!(
                "unknown method {s:?}; valid methods: {}",
                MethodKey::ALL.map(MethodKey::key).join(", ")
            )
        })
}

/// Whether methods restart from the source model for every stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// Each corruption × severity is its own stream; every method starts from the source model.
    Episodic,
    /// All streams back to back (corruption-major, in --corruptions order), no reset.
    Continual,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Episodic => "episodic",
            Protocol::Continual => "continual",
        }
    }
}

/// CEMA's edge selection switches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// The paper's method (cema's default): dynamic E_max, E_min on, redundancy filter.
    Paper,
    /// The released code's switches: E_max fixed at E0, no E_min, redundancy filter.
    Released,
}

/// Runs the baselines and CEMA on the same corrupted streams and reports online accuracy,
/// uploads, bytes, updates and wall time per method and stream (SPEC §4).
/// Tent's and EATA's learning rate in every reported table: the best of 0.00025, 0.001 and
/// 0.004 on the held-out corruptions (bench/tune_lr.sh).
const TUNED_LR: f64 = 0.004;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The edge checkpoint (its model card `<model>.json` beside it): the source model of every
    /// method but the foundation.
    #[arg(long, default_value = "models/edge.safetensors")]
    edge: PathBuf,
    /// The foundation checkpoint (the cloud model of cema and random_upload; the foundation
    /// baseline).
    #[arg(long, default_value = "models/foundation.safetensors")]
    foundation: PathBuf,
    /// Methods to run, comma-separated: source, bn_adapt, tent, eata, cema, foundation,
    /// random_upload (reported in that order).
    #[arg(long, value_delimiter = ',', value_parser = parse_method,
          default_value = "source,bn_adapt,tent,eata,cema,foundation,random_upload")]
    methods: Vec<MethodKey>,
    /// episodic: every method restarts from the source model for each stream; continual: the
    /// streams back to back with no reset.
    #[arg(long, value_enum, default_value = "episodic")]
    protocol: Protocol,
    /// Corruptions (names or the groups benchmark, held-out, all), comma-separated.
    #[arg(long, value_delimiter = ',', value_parser = parse_selection, default_value = "benchmark")]
    corruptions: Vec<Selection>,
    /// Severities, comma-separated; one stream per corruption × severity.
    #[arg(long = "severities", alias = "severity", value_delimiter = ',', default_value = "5",
          value_parser = clap::value_parser!(u8).range(1..=5))]
    severity: Vec<u8>,
    /// Images per stream: the first N of the seed's shuffled order of the test set.
    #[arg(long)]
    limit: Option<usize>,
    /// Batch size of the stream.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Seed of the stream order (a fixed shuffle of the test set, the same for every method and
    /// corruption), of CEMA's replay sampler and of random upload's selection.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Seed of the corruptions generated on the fly (as `cema corrupt --seed` and
    /// `cema eval --seed`; 0 matches the shipped data/fashion-mnist-c).
    #[arg(long, default_value_t = 0)]
    corruption_seed: u64,
    /// Folder in the CIFAR-10-C layout (any: CIFAR-10-C itself with --dataset cifar10, or what
    /// `cema corrupt` writes); corruptions missing there are generated in memory from the clean
    /// test set. Default: data/<dataset>-c.
    #[arg(long)]
    corrupted: Option<PathBuf>,
    #[command(flatten)]
    data: DataArgs,
    /// Output folder: results.json, results.csv, manifest.json and the SVG figures.
    #[arg(long, default_value = "runs/bench")]
    out: PathBuf,
    /// Also write results.json's content here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Tent's learning rate: chosen on the held-out corruptions (bench/tune_lr.sh, docs/results);
    /// the paper's is 0.00025.
    #[arg(long, default_value_t = TUNED_LR)]
    tent_lr: f64,
    /// EATA's learning rate: chosen on the held-out corruptions, as Tent's; the paper's is 0.00025.
    #[arg(long, default_value_t = TUNED_LR)]
    eata_lr: f64,
    /// CEMA's student (distillation) learning rate (default 0.0025); also used by random_upload.
    #[arg(long)]
    cema_student_lr: Option<f64>,
    /// CEMA's foundation learning rate (default 0.00025); also used by random_upload.
    #[arg(long)]
    cema_foundation_lr: Option<f64>,
    /// CEMA's cloud batch B (default 32); also used by random_upload.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    cloud_batch: Option<u64>,
    /// CEMA's edge selection switches.
    #[arg(long, value_enum, default_value = "paper")]
    cema_preset: Preset,
    /// CEMA's edge follows its own input statistics forward-only with this momentum (see
    /// `EdgeConfig::track_stats`); also used by random_upload.
    #[arg(long)]
    cema_track_stats: Option<f32>,
    /// With --cema-track-stats (in-process only for now): the edge's statistics travel with its uploads and the student
    /// normalises with them.
    #[arg(long)]
    cema_share_stats: bool,
    /// random_upload's rate for every stream, instead of CEMA's measured rate on that stream.
    #[arg(long, conflicts_with = "random_rates_from")]
    random_rate: Option<f64>,
    /// random_upload's rate per stream from an earlier run's results.json: CEMA's measured
    /// `upload_fraction` on each stream, so that random upload can run in a separate process (in
    /// parallel, or later) and still follow CEMA stream by stream. That run must have had the same
    /// protocol, seed, batch and images per stream, and cema on every stream of this one.
    #[arg(long, value_name = "RESULTS_JSON")]
    random_rates_from: Option<PathBuf>,
    /// How random_upload fills each batch's quota: `uniform` (the baseline) or `highest-entropy`
    /// (an ablation: the same number of uploads per batch, the most uncertain samples first, i.e.
    /// CEMA's E_max criterion inverted). The results keep the key random_upload; the manifest
    /// records the pick.
    #[arg(long, default_value = "uniform", value_parser = parse_pick)]
    random_pick: Pick,
    /// For cema and random_upload, also run the cloud's teacher on every sample and report how
    /// often it is right (and right where the edge is wrong) on the uploaded and on the dropped
    /// samples (`teacher_diagnosis` in results.json). A diagnostic: one extra foundation forward
    /// per batch, outside the method's timings.
    #[arg(long)]
    diagnose_teacher: bool,
    /// Continue an interrupted run in the same --out. Every (method, stream) result is recorded
    /// in --out/streams/<method>/<stream>.json as soon as it is measured; with --resume, those
    /// recorded by a run with the same configuration, checkpoints, binary and thread count are
    /// loaded instead of rerun (continual protocol: only a method recorded on every stream; the
    /// others start over). A record from another configuration is refused (exit 2). Without
    /// --resume, an earlier run's records in --out are cleared first.
    #[arg(long)]
    resume: bool,
}

/// One method's numbers on one stream.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct StreamResult {
    images: usize,
    correct: usize,
    uploaded: usize,
    selected: usize,
    /// Selected samples the method itself predicted correctly.
    selected_correct: usize,
    bytes_up: u64,
    bytes_down: u64,
    updates: u64,
    seconds: f64,
    /// Of `seconds`, the cloud side's (CEMA and random upload).
    cloud_seconds: f64,
    /// Correct predictions per batch, in stream order (the continual plot's curve).
    batch_correct: Vec<u32>,
    /// With `--diagnose-teacher`: [uploaded, dropped] samples.
    teacher: Option<[TeacherCounts; 2]>,
    /// Dropped samples per selection criterion (cema, eata).
    dropped: Option<Dropped>,
}

/// The teacher against the edge on one group of samples (`--diagnose-teacher`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct TeacherCounts {
    samples: usize,
    edge_correct: usize,
    teacher_correct: usize,
    /// Teacher right where the edge is wrong: what distilling on these could correct.
    teacher_corrects_edge: usize,
}

impl TeacherCounts {
    fn add(&mut self, o: &TeacherCounts) {
        self.samples += o.samples;
        self.edge_correct += o.edge_correct;
        self.teacher_correct += o.teacher_correct;
        self.teacher_corrects_edge += o.teacher_corrects_edge;
    }
    fn to_json(self) -> Value {
        let f = |k: usize| (self.samples > 0).then(|| k as f64 / self.samples as f64);
        json!({
            "samples": self.samples,
            "edge_accuracy": f(self.edge_correct),
            "teacher_accuracy": f(self.teacher_correct),
            "teacher_corrects_edge": f(self.teacher_corrects_edge),
        })
    }
}

fn teacher_json(t: &Option<[TeacherCounts; 2]>) -> Value {
    match t {
        Some([up, dropped]) => json!({ "uploaded": up.to_json(), "dropped": dropped.to_json() }),
        None => Value::Null,
    }
}

impl StreamResult {
    fn accuracy(&self) -> f64 {
        self.correct as f64 / self.images.max(1) as f64
    }
    fn upload_fraction(&self) -> f64 {
        self.selected as f64 / self.images.max(1) as f64
    }
    /// The method's own accuracy on the samples it selected (none selected: `None`): how much
    /// of what it uploads it already gets right, i.e. how little a teacher can correct there.
    fn selected_accuracy(&self) -> Option<f64> {
        (self.selected > 0).then(|| self.selected_correct as f64 / self.selected as f64)
    }
    fn to_json(&self, severity: u8) -> Value {
        json!({
            "accuracy": self.accuracy(),
            "upload_fraction": self.upload_fraction(),
            "uploaded": self.uploaded,
            "selected": self.selected,
            "selected_accuracy": self.selected_accuracy(),
            "dropped": self.dropped,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "updates": self.updates,
            "seconds": self.seconds,
            "cloud_seconds": self.cloud_seconds,
            "edge_images_per_s": self.images as f64 / (self.seconds - self.cloud_seconds).max(1e-9),
            "cloud_samples_per_s": (self.cloud_seconds > 0.0)
                .then(|| self.uploaded as f64 / self.cloud_seconds),
            "images": self.images,
            "severity": severity,
            "batch_correct": self.batch_correct,
            "teacher_diagnosis": teacher_json(&self.teacher),
        })
    }
}

/// The fixed stream order for `seed`: a ChaCha8 shuffle of `0..len`.
pub(crate) fn stream_order(len: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    order
}

/// The test images at `indices` under one corruption: read from `dir` when it holds that
/// corruption, else generated image by image with the image's index in the test set, which gives
/// the same bytes as `cema corrupt --seed seed` (and `corrupt_set`) without corrupting the rest.
pub(crate) fn stream(
    dir: &Path,
    test: &ImageSet,
    indices: &[usize],
    c: Corruption,
    severity: u8,
    seed: u64,
) -> anyhow::Result<(ImageSet, &'static str)> {
    if dir.join(format!("{}.npy", c.name())).exists() {
        let set = CorruptedDir::open(dir)?.load(c.name(), severity)?;
        anyhow::ensure!(
            (set.height, set.width, set.channels) == (test.height, test.width, test.channels),
            "{}: {}×{}×{} images, but the clean test set's are {}×{}×{} (a corrupted copy of \
             another dataset? check --dataset and --corrupted)",
            dir.join(format!("{}.npy", c.name())).display(),
            set.height,
            set.width,
            set.channels,
            test.height,
            test.width,
            test.channels
        );
        anyhow::ensure!(
            set.len() >= test.len() && set.labels[..test.len()] == test.labels[..],
            "{}: labels do not match the clean test set (generated from another split or dataset?)",
            dir.display()
        );
        return Ok((set.select(indices), "file"));
    }
    let (h, w, ch) = (test.height, test.width, test.channels);
    let plan = Plan::new(c, severity, Table::for_size(h, w), h, w, ch)?;
    let images = indices
        .par_iter()
        .map(|&i| plan.apply(test.image(i), seed, i as u64))
        .collect::<Result<Vec<_>, _>>()?
        .concat();
    let set = ImageSet {
        images,
        labels: indices.iter().map(|&i| test.labels[i]).collect(),
        height: h,
        width: w,
        channels: ch,
    };
    Ok((set, "generated"))
}

/// CEMA's measured upload fraction per stream key, from an earlier run's results.json that saw the
/// same streams (protocol, seed, batch, images per stream and every key of `streams`).
fn rates_from(
    path: &Path,
    args: &Args,
    streams: &[(Corruption, u8, String)],
    images: usize,
) -> anyhow::Result<std::collections::HashMap<String, f64>> {
    let text = std::fs::read_to_string(path)?;
    let v: Value = serde_json::from_str(&text)?;
    for (field, want) in [
        ("protocol", json!(args.protocol.name())),
        ("seed", json!(args.seed)),
        ("batch", json!(args.batch)),
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
    streams
        .iter()
        .map(|(_, _, key)| {
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

fn parse_pick(s: &str) -> Result<Pick, String> {
    match s {
        "uniform" => Ok(Pick::Uniform),
        "highest-entropy" => Ok(Pick::HighestEntropy),
        _ => Err(format!("'{s}': expected uniform or highest-entropy")),
    }
}

/// Resolved hyperparameters of every method.
struct Settings {
    tent: GradConfig,
    eata: GradConfig,
    edge: EdgeConfig,
    cloud: CloudConfig,
    random_seed: u64,
    random_pick: Pick,
    diagnose_teacher: bool,
}

impl Settings {
    fn from_args(args: &Args) -> Self {
        let grad = |lr: f64| GradConfig {
            lr,
            ..GradConfig::default()
        };
        let mut cloud = CloudConfig {
            seed: args.seed,
            ..CloudConfig::default()
        };
        if let Some(lr) = args.cema_student_lr {
            cloud.student_lr = lr;
        }
        if let Some(lr) = args.cema_foundation_lr {
            cloud.foundation_lr = lr;
        }
        if let Some(b) = args.cloud_batch {
            cloud.batch = b as usize;
        }
        Settings {
            tent: grad(args.tent_lr),
            eata: grad(args.eata_lr),
            edge: EdgeConfig {
                track_stats: args.cema_track_stats,
                share_stats: args.cema_share_stats,
                ..match args.cema_preset {
                    Preset::Paper => EdgeConfig::default(),
                    Preset::Released => EdgeConfig::released(),
                }
            },
            cloud,
            random_seed: args.seed ^ 0x5EED_0F0A_1D00,
            random_pick: args.random_pick,
            diagnose_teacher: args.diagnose_teacher,
        }
    }

    fn to_json(&self, methods: &[MethodKey]) -> Value {
        let mut m = Map::new();
        for key in methods {
            let v = match key {
                MethodKey::Source | MethodKey::BnAdapt | MethodKey::Foundation => json!({}),
                MethodKey::Tent => json!(self.tent),
                MethodKey::Eata => {
                    json!({ "grad": self.eata, "epsilon": "default_epsilon(classes)", "fisher": false })
                }
                MethodKey::Cema => json!({ "edge": self.edge, "cloud": self.cloud }),
                MethodKey::RandomUpload => json!({
                    "edge": self.edge,
                    "cloud": self.cloud,
                    "selection_seed": self.random_seed,
                    "pick": self.random_pick,
                }),
            };
            m.insert(key.key().to_string(), v);
        }
        Value::Object(m)
    }
}

/// A live method; random upload is kept concrete so its rate can be set per stream.
enum Runner {
    Plain(Box<dyn Method>),
    Random(Box<RandomUpload>),
}

impl Runner {
    fn method(&mut self) -> &mut dyn Method {
        match self {
            Runner::Plain(m) => m.as_mut(),
            Runner::Random(r) => r.as_mut(),
        }
    }
}

fn make(
    key: MethodKey,
    edge: Option<&Model>,
    foundation: Option<&Model>,
    s: &Settings,
    rate: f64,
) -> anyhow::Result<Runner> {
    let edge = || edge.cloned().expect("edge loaded for this method");
    let foundation = || {
        foundation
            .cloned()
            .expect("foundation loaded for this method")
    };
    Ok(match key {
        MethodKey::Source => Runner::Plain(Box::new(Source { model: edge() })),
        MethodKey::BnAdapt => Runner::Plain(Box::new(BnAdapt { model: edge() })),
        MethodKey::Tent => Runner::Plain(Box::new(Tent::new(edge(), s.tent))),
        MethodKey::Eata => Runner::Plain(Box::new(Eata::new(edge(), s.eata, None))),
        MethodKey::Cema => {
            let mut m = Cema::new(edge(), foundation(), s.edge, s.cloud)?;
            m.set_diagnose_teacher(s.diagnose_teacher);
            Runner::Plain(Box::new(m))
        }
        MethodKey::Foundation => Runner::Plain(Box::new(Foundation {
            model: foundation(),
        })),
        MethodKey::RandomUpload => {
            let mut m =
                RandomUpload::new(edge(), foundation(), s.edge, s.cloud, rate, s.random_seed)?
                    .with_pick(s.random_pick);
            m.set_diagnose_teacher(s.diagnose_teacher);
            Runner::Random(Box::new(m))
        }
    })
}

/// Feeds `set` to `method` batch by batch and scores the predictions it returns.
fn run_stream(
    method: &mut dyn Method,
    set: &ImageSet,
    batch: usize,
    progress: &Progress,
) -> anyhow::Result<StreamResult> {
    let size = set.image_size();
    let mut r = StreamResult {
        images: set.len(),
        ..StreamResult::default()
    };
    let t0 = Instant::now();
    for start in (0..set.len()).step_by(batch) {
        let n = batch.min(set.len() - start);
        let pixels = &set.images[start * size..(start + n) * size];
        let out = method.process(pixels, n)?;
        anyhow::ensure!(
            out.predictions.len() == n,
            "{} returned {} predictions for {n} images",
            method.name(),
            out.predictions.len()
        );
        let labels = &set.labels[start..start + n];
        let correct = out
            .predictions
            .iter()
            .zip(labels)
            .filter(|(p, l)| p == l)
            .count();
        r.selected_correct += out
            .selected
            .iter()
            .filter(|&&i| out.predictions[i] == labels[i])
            .count();
        if let Some(teacher) = &out.teacher {
            let t = r.teacher.get_or_insert_with(Default::default);
            let mut uploaded = vec![false; n];
            out.selected.iter().for_each(|&i| uploaded[i] = true);
            for i in 0..n {
                let g = &mut t[usize::from(!uploaded[i])];
                let (e, te) = (out.predictions[i] == labels[i], teacher[i] == labels[i]);
                g.samples += 1;
                g.edge_correct += usize::from(e);
                g.teacher_correct += usize::from(te);
                g.teacher_corrects_edge += usize::from(te && !e);
            }
        }
        r.correct += correct;
        r.batch_correct.push(correct as u32);
        r.uploaded += out.uploaded;
        r.selected += out.selected.len();
        r.bytes_up += out.bytes_up;
        r.bytes_down += out.bytes_down;
        r.updates += u64::from(out.updated);
        r.cloud_seconds += out.cloud_seconds;
        if let Some(d) = &out.dropped {
            r.dropped.get_or_insert_with(Dropped::default).add(d);
        }
        progress.inc(n as u64);
    }
    r.seconds = t0.elapsed().as_secs_f64();
    Ok(r)
}

fn load_model(path: &Path, flag: &str, device: &Device) -> Result<(Model, String), CliError> {
    let ctx = || format!("{flag} {}", path.display());
    let model = Model::load(path, device).usage_err(ctx())?;
    let sha = sha256_file(path).usage_err(ctx())?;
    Ok((model, sha))
}

/// Where `cema bench` records one (method, stream) result as soon as it is measured, under the
/// run's `records` folder (`<out>/streams`).
fn record_path(records: &Path, method: MethodKey, stream: &str) -> PathBuf {
    records.join(method.key()).join(format!("{stream}.json"))
}

/// One recorded (method, stream) result: what it was measured under, where its stream's images
/// came from (`file` or `generated`), and the numbers.
#[derive(Serialize, Deserialize)]
struct Record {
    fingerprint: Value,
    source: String,
    result: StreamResult,
}

/// `value` as it reads back from its JSON text. serde_json's default float parser may differ
/// from the written value in the last bit, so a fingerprint is compared only after the same trip
/// through text that the recorded one made.
fn through_text(value: &Value) -> Value {
    serde_json::from_str(&value.to_string()).expect("a Value serialises to valid JSON")
}

fn save_record(
    path: &Path,
    fingerprint: Value,
    source: &str,
    result: &StreamResult,
) -> Result<(), CliError> {
    let record = Record {
        fingerprint,
        source: source.to_string(),
        result: result.clone(),
    };
    let text = serde_json::to_string(&record).run_err("serialising a stream record")?;
    write_atomic(path, text.as_bytes()).usage_err(format!("--out {}", path.display()))
}

/// The result recorded at `path` if there is one, provided it was measured under `fingerprint`.
fn load_record(path: &Path, fingerprint: &Value) -> Result<Option<Record>, CliError> {
    let refuse = |why: String| {
        CliError::usage(anyhow::anyhow!(
            "--resume: {}: {why}; rerun without --resume to start over, or choose another --out",
            path.display()
        ))
    };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(refuse(e.to_string())),
    };
    let record: Record = serde_json::from_str(&text)
        .map_err(|e| refuse(format!("not a stream record of cema bench ({e})")))?;
    let now = through_text(fingerprint);
    if record.fingerprint != now {
        let clip = |v: &Value| {
            let t = v.to_string();
            match t.char_indices().nth(160) {
                Some((i, _)) => format!("{}…", &t[..i]),
                None => t,
            }
        };
        let diff = now
            .as_object()
            .into_iter()
            .flatten()
            .find(|(k, v)| record.fingerprint.get(k.as_str()) != Some(*v))
            .map_or_else(
                || "its fingerprint has other fields".to_string(),
                |(k, v)| {
                    let was = record.fingerprint.get(k.as_str()).unwrap_or(&Value::Null);
                    format!("{k} was {}, now {}", clip(was), clip(v))
                },
            );
        return Err(refuse(format!(
            "measured under another configuration ({diff})"
        )));
    }
    Ok(Some(record))
}

fn git_revision() -> (String, Option<bool>) {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "HEAD"]) {
        Some(rev) if !rev.is_empty() => {
            let dirty =
                git(&["status", "--porcelain", "--untracked-files=no"]).map(|s| !s.is_empty());
            (rev, dirty)
        }
        _ => ("unknown".into(), None),
    }
}

pub fn run(args: Args, ctx: &Context) -> Result<(), CliError> {
    if args.batch == 0 {
        return Err(CliError::usage(anyhow::anyhow!("--batch must be positive")));
    }
    if args.limit == Some(0) {
        return Err(CliError::usage(anyhow::anyhow!("--limit must be positive")));
    }
    super::check_momentum(args.cema_track_stats, "--cema-track-stats")?;
    if args.cema_share_stats && args.cema_track_stats.is_none() {
        return Err(CliError::usage(anyhow::anyhow!(
            "--cema-share-stats shares the statistics that --cema-track-stats tracks: add it"
        )));
    }
    if let Some(r) = args.random_rate {
        if !(0.0..=1.0).contains(&r) {
            return Err(CliError::usage(anyhow::anyhow!(
                "--random-rate {r} is outside [0, 1]"
            )));
        }
    }
    for (flag, lr) in [
        ("--tent-lr", Some(args.tent_lr)),
        ("--eata-lr", Some(args.eata_lr)),
        ("--cema-student-lr", args.cema_student_lr),
        ("--cema-foundation-lr", args.cema_foundation_lr),
    ] {
        if let Some(lr) = lr {
            if !(lr.is_finite() && lr >= 0.0) {
                return Err(CliError::usage(anyhow::anyhow!(
                    "{flag} {lr} must be a finite non-negative number"
                )));
            }
        }
    }
    let mut methods = args.methods.clone();
    methods.sort_unstable();
    methods.dedup();
    if methods.contains(&MethodKey::RandomUpload)
        && !methods.contains(&MethodKey::Cema)
        && args.random_rate.is_none()
        && args.random_rates_from.is_none()
    {
        return Err(CliError::usage(anyhow::anyhow!(
            "--methods random_upload uploads at CEMA's measured rate: add cema to --methods, or \
             give the rate with --random-rate or --random-rates-from"
        )));
    }
    let corruptions = expand(&args.corruptions);
    if corruptions.is_empty() {
        return Err(CliError::usage(anyhow::anyhow!(
            "--corruptions selects nothing"
        )));
    }
    let mut severities = args.severity.clone();
    severities.sort_unstable();
    severities.dedup();
    ensure_writable_dir(&args.out, "--out")?;
    if let Some(j) = &args.json {
        ensure_writable_dir(parent_dir(j), "--json")?;
    }

    let (edge, edge_sha) = if methods.iter().any(|m| m.needs_edge()) {
        let (m, s) = load_model(&args.edge, "--edge", &ctx.device)?;
        (Some(m), Some(s))
    } else {
        (None, None)
    };
    let (foundation, foundation_sha) = if methods.iter().any(|m| m.needs_foundation()) {
        let (m, s) = load_model(&args.foundation, "--foundation", &ctx.device)?;
        (Some(m), Some(s))
    } else {
        (None, None)
    };
    let test = args.data.load(Split::Test)?;
    for (model, flag, path) in [
        (&edge, "--edge", &args.edge),
        (&foundation, "--foundation", &args.foundation),
    ] {
        if let Some(m) = model {
            args.data.check_model(m, &test, flag, path)?;
        }
    }
    let corrupted = args.data.corrupted_dir(args.corrupted.as_deref());
    let settings = Settings::from_args(&args);

    let mut order = stream_order(test.len(), args.seed);
    order.truncate(args.limit.unwrap_or(usize::MAX));
    let multi = severities.len() > 1;
    let streams: Vec<(Corruption, u8, String)> = corruptions
        .iter()
        .flat_map(|&c| {
            severities.iter().map(move |&s| {
                let key = if multi {
                    format!("{}-s{s}", c.name())
                } else {
                    c.name().to_string()
                };
                (c, s, key)
            })
        })
        .collect();

    let given_rates = match &args.random_rates_from {
        Some(path) if methods.contains(&MethodKey::RandomUpload) => Some(
            rates_from(path, &args, &streams, order.len())
                .usage_err(format!("--random-rates-from {}", path.display()))?,
        ),
        _ => None,
    };

    // Taken before the run, not after: a run lasts hours, and the checkout may move meanwhile. The
    // binary's own hash pins what actually ran (it may have been built from another commit).
    let (git, dirty) = git_revision();
    let binary = std::env::current_exe().ok().map(|p| {
        let sha = sha256_file(&p).ok();
        json!({ "path": p, "sha256": sha })
    });

    let records = args.out.join("streams");
    if !args.resume {
        match std::fs::remove_dir_all(&records) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(CliError::usage(anyhow::anyhow!(
                    "--out: cannot clear an earlier run's records in {}: {e}",
                    records.display()
                )))
            }
        }
    }
    // What a recorded result depends on besides its method and stream (see `fingerprint`).
    let binary_sha = binary
        .as_ref()
        .and_then(|b| b.get("sha256"))
        .cloned()
        .unwrap_or(Value::Null);
    let run_fingerprint = json!({
        "protocol": args.protocol.name(),
        "sequence": match args.protocol {
            Protocol::Episodic => Value::Null,
            Protocol::Continual => json!(streams.iter().map(|(_, _, k)| k).collect::<Vec<_>>()),
        },
        "seed": args.seed,
        "corruption_seed": args.corruption_seed,
        "batch": args.batch,
        "images_per_stream": order.len(),
        "dataset": args.data.dataset().name(),
        "data_dir": args.data.dir(),
        "corrupted": corrupted,
        "binary_sha256": binary_sha,
        "threads": rayon::current_num_threads(),
        "backend": ctx.backend,
        "diagnose_teacher": args.diagnose_teacher,
    });
    let fingerprint = |m: MethodKey, c: Corruption, s: u8, key: &str, rate: f64| {
        let mut f = run_fingerprint.clone();
        let o = f.as_object_mut().expect("an object");
        o.insert("method".into(), json!(m.key()));
        o.insert("stream".into(), json!(key));
        o.insert("corruption".into(), json!(c.name()));
        o.insert("severity".into(), json!(s));
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
            settings.to_json(&[m])[m.key()].clone(),
        );
        o.insert(
            "random_rate".into(),
            json!((m == MethodKey::RandomUpload).then_some(rate)),
        );
        f
    };
    // Continual: a method's state runs through every stream, so its records are reused only
    // when it was recorded on all of them.
    let reuse: Vec<bool> = methods
        .iter()
        .map(|&m| {
            args.resume
                && (args.protocol == Protocol::Episodic
                    || streams
                        .iter()
                        .all(|(_, _, key)| record_path(&records, m, key).exists()))
        })
        .collect();

    let total = (streams.len() * methods.len() * order.len()) as u64;
    let progress = Progress::new(total, "img", ctx.quiet);
    let mut live: Vec<Option<Runner>> = methods.iter().map(|_| None).collect();
    let mut results: Vec<Vec<StreamResult>> = methods.iter().map(|_| Vec::new()).collect();
    let mut sources = Map::new();
    let mut random_rates = Map::new();
    let mut resumed = Vec::new();
    let t0 = Instant::now();
    for (c, s, key) in &streams {
        let mut set = None;
        for (mi, &m) in methods.iter().enumerate() {
            let rate = match (m, args.random_rate) {
                (MethodKey::RandomUpload, Some(r)) => r,
                (MethodKey::RandomUpload, None) if given_rates.is_some() => {
                    given_rates.as_ref().expect("checked")[key]
                }
                (MethodKey::RandomUpload, None) => {
                    let cema = methods.iter().position(|&k| k == MethodKey::Cema);
                    let cema = cema.expect("checked: cema runs when random_upload has no rate");
                    results[cema]
                        .last()
                        .map_or(0.0, StreamResult::upload_fraction)
                }
                _ => 0.0,
            };
            if m == MethodKey::RandomUpload {
                random_rates.insert(key.clone(), json!(rate));
            }
            let fp = fingerprint(m, *c, *s, key, rate);
            let path = record_path(&records, m, key);
            if reuse[mi] {
                if let Some(record) = load_record(&path, &fp)? {
                    progress.inc(record.result.images as u64);
                    sources.insert(key.clone(), json!(record.source));
                    resumed.push(format!("{}/{key}", m.key()));
                    results[mi].push(record.result);
                    continue;
                }
                if args.protocol == Protocol::Continual {
                    return Err(CliError::failed(anyhow::anyhow!(
                        "--resume: {} vanished while resuming",
                        path.display()
                    )));
                }
            }
            if set.is_none() {
                progress.set_message(format!("{key}: corrupting"));
                let loaded = stream(&corrupted, &test, &order, *c, *s, args.corruption_seed)
                    .usage_err(format!("{} severity {s}", c.name()))?;
                sources.insert(key.clone(), json!(loaded.1));
                set = Some(loaded);
            }
            let (set, from) = set.as_ref().expect("loaded above");
            progress.set_message(format!("{key}: {}", m.key()));
            let fresh = args.protocol == Protocol::Episodic || live[mi].is_none();
            if fresh {
                live[mi] = Some(
                    make(m, edge.as_ref(), foundation.as_ref(), &settings, rate)
                        .usage_err("--edge/--foundation")?,
                );
            }
            let runner = live[mi].as_mut().expect("created above");
            if let Runner::Random(r) = runner {
                r.set_rate(rate);
            }
            let r = run_stream(runner.method(), set, args.batch, &progress)
                .run_err(format!("{} on {key}", m.key()))?;
            save_record(&path, fp, from, &r)?;
            results[mi].push(r);
        }
    }
    progress.finish();
    let seconds = t0.elapsed().as_secs_f64();

    // results.json
    let mut by_method = Map::new();
    for (mi, m) in methods.iter().enumerate() {
        let rs = &results[mi];
        let k = rs.len().max(1) as f64;
        let mut per = Map::new();
        for ((_, s, key), r) in streams.iter().zip(rs) {
            per.insert(key.clone(), r.to_json(*s));
        }
        let selected: usize = rs.iter().map(|r| r.selected).sum();
        let selected_correct: usize = rs.iter().map(|r| r.selected_correct).sum();
        let selected_accuracy = (selected > 0).then(|| selected_correct as f64 / selected as f64);
        let teacher = rs.iter().filter_map(|r| r.teacher).reduce(|mut a, b| {
            a[0].add(&b[0]);
            a[1].add(&b[1]);
            a
        });
        let seconds: f64 = rs.iter().map(|r| r.seconds).sum();
        let cloud_seconds: f64 = rs.iter().map(|r| r.cloud_seconds).sum();
        let images: usize = rs.iter().map(|r| r.images).sum();
        let uploaded: usize = rs.iter().map(|r| r.uploaded).sum();
        by_method.insert(
            m.key().to_string(),
            json!({
                "avg_accuracy": rs.iter().map(StreamResult::accuracy).sum::<f64>() / k,
                "upload_fraction": rs.iter().map(StreamResult::upload_fraction).sum::<f64>() / k,
                "uploaded": uploaded,
                "selected": rs.iter().map(|r| r.selected).sum::<usize>(),
                "selected_accuracy": selected_accuracy,
                "teacher_diagnosis": teacher_json(&teacher),
                "bytes_up": rs.iter().map(|r| r.bytes_up).sum::<u64>(),
                "bytes_down": rs.iter().map(|r| r.bytes_down).sum::<u64>(),
                "updates": rs.iter().map(|r| r.updates).sum::<u64>(),
                "seconds": seconds,
                "cloud_seconds": cloud_seconds,
                "edge_images_per_s": images as f64 / (seconds - cloud_seconds).max(1e-9),
                "cloud_samples_per_s": (cloud_seconds > 0.0).then(|| uploaded as f64 / cloud_seconds),
                "corruptions": per,
            }),
        );
    }
    let stream_key = if multi {
        "<corruption>-s<severity>"
    } else {
        "<corruption>"
    };
    let results_json = json!({
        "protocol": args.protocol.name(),
        "stream_key": stream_key,
        "streams": streams.iter().map(|(_, _, k)| k.clone()).collect::<Vec<_>>(),
        "severities": severities,
        "images_per_stream": order.len(),
        "batch": args.batch,
        "seed": args.seed,
        "seconds": seconds,
        "methods": by_method,
    });
    write_json(&args.out.join("results.json"), &results_json, "--out")?;
    if let Some(j) = &args.json {
        write_json(j, &results_json, "--json")?;
    }

    // results.csv
    let mut csv = String::from(
        "method,stream,corruption,severity,images,accuracy,upload_fraction,uploaded,selected,\
         bytes_up,bytes_down,updates,seconds\n",
    );
    for (mi, m) in methods.iter().enumerate() {
        for ((c, s, key), r) in streams.iter().zip(&results[mi]) {
            let _ = writeln!(
                csv,
                "{},{key},{},{s},{},{:.6},{:.6},{},{},{},{},{},{:.3}",
                m.key(),
                c.name(),
                r.images,
                r.accuracy(),
                r.upload_fraction(),
                r.uploaded,
                r.selected,
                r.bytes_up,
                r.bytes_down,
                r.updates,
                r.seconds
            );
        }
    }
    let csv_path = args.out.join("results.csv");
    write_atomic(&csv_path, csv.as_bytes()).usage_err(format!("--out {}", csv_path.display()))?;

    // stream_order.npy: the exact order, so another implementation can replay the same stream
    // (bench/torch_cema_stream.py does).
    let order_path = args.out.join("stream_order.npy");
    let order_u32: Vec<u32> = order.iter().map(|&i| i as u32).collect();
    cema_data::npy::write_labels(&order_path, &order_u32, cema_data::npy::Dtype::I64)
        .usage_err(format!("--out {}", order_path.display()))?;

    // manifest.json
    let checkpoint = |path: &Path, model: &Option<Model>, sha: &Option<String>| match (model, sha) {
        (Some(m), Some(sha)) => json!({
            "path": path,
            "sha256": sha,
            "name": m.card.name,
            "architecture": m.card.architecture,
        }),
        _ => Value::Null,
    };
    let manifest = json!({
        "command": shell_line(&ctx.argv),
        "argv": ctx.argv,
        "date": utc_now(),
        "git_revision": git,
        "git_dirty": dirty,
        "binary": binary,
        "cema_version": env!("CARGO_PKG_VERSION"),
        "backend": ctx.backend,
        "threads": rayon::current_num_threads(),
        "protocol": args.protocol.name(),
        "methods": methods.iter().map(|m| m.key()).collect::<Vec<_>>(),
        "corruptions": corruptions.iter().map(|c| c.name()).collect::<Vec<_>>(),
        "severities": severities,
        "stream_key": stream_key,
        "streams": streams.iter().map(|(_, _, k)| k.clone()).collect::<Vec<_>>(),
        "stream_sources": sources,
        "limit": args.limit,
        "images_per_stream": order.len(),
        "batch": args.batch,
        "seed": args.seed,
        "stream_order": "ChaCha8 shuffle of the test set seeded by `seed`, first `images_per_stream`; the indices are in stream_order.npy (int64) beside this file",
        "corruption_seed": args.corruption_seed,
        "dataset": args.data.dataset().name(),
        "corrupted": corrupted,
        "data_dir": args.data.dir(),
        "checkpoints": {
            "edge": checkpoint(&args.edge, &edge, &edge_sha),
            "foundation": checkpoint(&args.foundation, &foundation, &foundation_sha),
        },
        "hyperparameters": settings.to_json(&methods),
        "random_rates_from": args.random_rates_from.as_ref().map(|p| json!({
            "path": p,
            "sha256": sha256_file(p).ok(),
        })),
        "random_upload_rates": if methods.contains(&MethodKey::RandomUpload) {
            Value::Object(random_rates)
        } else {
            Value::Null
        },
        "online_accuracy": "predictions each method returned for a batch, made before any update that batch triggered",
        "upload_fraction": "selected / images: uploads for cema, random_upload and foundation; the samples EATA's filters pass; 0 for source, bn_adapt, tent",
        "edge_images_per_s": "images / (seconds - cloud_seconds): the edge side's throughput, predicting and selecting (and for tent and eata their backward pass)",
        "cloud_samples_per_s": "uploaded samples / cloud_seconds: how many uploads per second one cloud session absorbs, its rounds (foundation step, distillation with replay) included",
        "dropped": "samples the selection dropped, per criterion (too_uncertain: E >= E_max; too_certain: E <= E_min; redundant: the cosine filter); cema and eata only, null otherwise",
        "selected_accuracy": "the method's own online accuracy on the samples it selected (null when none): what is left for a teacher to correct there",
        "teacher_diagnosis": "with --diagnose-teacher (cema, random_upload): on the uploaded and on the dropped samples, the edge's and the teacher's accuracy (the cloud's foundation before that batch's round) and the fraction where the teacher is right and the edge wrong; null otherwise",
        "records": "every (method, stream) result is also in streams/<method>/<stream>.json beside this file, with the configuration it was measured under; `cema bench --resume` reuses them",
        "resumed": resumed,
        "seconds": seconds,
    });
    write_json(&args.out.join("manifest.json"), &manifest, "--out")?;

    let figures = crate::plots::write_all(&results_json, &args.out).run_err("plots")?;
    print!(
        "{}",
        table(&methods, &streams, &results, &args, order.len())
    );
    if !ctx.quiet {
        for f in figures {
            eprintln!("wrote {}", f.display());
        }
    }
    Ok(())
}

/// Methods as columns, streams as rows, then the mean and upload-% rows.
fn table(
    methods: &[MethodKey],
    streams: &[(Corruption, u8, String)],
    results: &[Vec<StreamResult>],
    args: &Args,
    images: usize,
) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "online accuracy (%), {} protocol, {} images per stream, batch {}, seed {}",
        args.protocol.name(),
        images,
        args.batch,
        args.seed
    );
    let width = 13;
    let mut line = format!("{:<22}", "stream");
    for m in methods {
        line += &format!(" {:>width$}", m.key());
    }
    let _ = writeln!(t, "{line}");
    for (si, (_, _, key)) in streams.iter().enumerate() {
        let mut line = format!("{key:<22}");
        for rs in results {
            line += &format!(" {:>width$.2}", rs[si].accuracy() * 100.0);
        }
        let _ = writeln!(t, "{line}");
    }
    let k = streams.len().max(1) as f64;
    let mut mean = format!("{:<22}", "mean");
    let mut up = format!("{:<22}", "upload %");
    for rs in results {
        mean += &format!(
            " {:>width$.2}",
            rs.iter().map(StreamResult::accuracy).sum::<f64>() / k * 100.0
        );
        up += &format!(
            " {:>width$.1}",
            rs.iter().map(StreamResult::upload_fraction).sum::<f64>() / k * 100.0
        );
    }
    let _ = writeln!(t, "{mean}");
    let _ = writeln!(t, "{up}");
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_order_is_a_seeded_permutation() {
        let a = stream_order(100, 0);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_eq!(a, stream_order(100, 0));
        assert_ne!(a, stream_order(100, 1));
        assert_ne!(a, sorted);
    }

    #[test]
    fn method_keys_parse_exactly() {
        for m in MethodKey::ALL {
            assert_eq!(parse_method(m.key()), Ok(m));
        }
        let e = parse_method("tentt").unwrap_err();
        assert!(e.contains("random_upload") && e.contains("bn_adapt"), "{e}");
    }

    #[test]
    fn generated_streams_equal_corrupt_set_on_the_same_indices() {
        let test = ImageSet {
            images: (0..6 * 16).map(|i| (i * 7 % 251) as u8).collect(),
            labels: (0..6).collect(),
            height: 4,
            width: 4,
            channels: 1,
        };
        let c = Corruption::GaussianNoise;
        let whole = cema_corrupt::corrupt_set(&test, c, 3, None, 9).unwrap();
        let idx = [4, 1, 5];
        let (s, from) = stream(Path::new("/nonexistent"), &test, &idx, c, 3, 9).unwrap();
        assert_eq!(from, "generated");
        assert_eq!(s.images, whole.select(&idx).images);
        assert_eq!(s.labels, vec![4, 1, 5]);
    }
}
