//! `cema speed`: images/s of the shipped models on this machine (forward and one TBR adaptation
//! step), for side-by-side comparison with PyTorch (`bench/compare`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cema_model::{cpu, cross_entropy, to_input, Model, NormMode, Sgd, SgdConfig, Trainable};
use serde_json::{json, Value};

use super::{write_json, Context};
use crate::exit::{CliError, ResultExt};

/// Measure forward (eval mode) and norm-affine TBR adaptation-step throughput of checkpoints.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Checkpoints to measure.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "models/edge.safetensors,models/foundation.safetensors"
    )]
    models: Vec<PathBuf>,
    /// Seconds per measurement (after two warm-up iterations).
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Forward batch sizes.
    #[arg(long, value_delimiter = ',', default_value = "64,1")]
    forward_batches: Vec<usize>,
    /// Batch size of the adaptation step.
    #[arg(long, default_value_t = 128)]
    step_batch: usize,
    /// Write the numbers as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn measure(seconds: f64, batch: usize, mut f: impl FnMut()) -> f64 {
    f();
    f();
    let budget = Duration::from_secs_f64(seconds);
    let t0 = Instant::now();
    let mut n = 0usize;
    while n < 3 || t0.elapsed() < budget {
        f();
        n += 1;
    }
    (n * batch) as f64 / t0.elapsed().as_secs_f64()
}

pub fn run(args: Args, _ctx: &Context) -> Result<(), CliError> {
    let device = cpu();
    let mut results = serde_json::Map::new();
    for path in &args.models {
        let mut model =
            Model::load(path, &device).usage_err(format!("--models {}", path.display()))?;
        let spec = model.card.input.clone();
        let per = spec.height * spec.width * spec.channels;
        let max_b = args
            .forward_batches
            .iter()
            .copied()
            .chain([args.step_batch])
            .max()
            .unwrap_or(1);
        // Deterministic pseudo-images; content does not change the cost.
        let px: Vec<u8> = (0..max_b * per)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
            .collect();
        let labels: Vec<u32> = (0..args.step_batch as u32)
            .map(|i| i % model.card.architecture.num_classes() as u32)
            .collect();
        let mut entry = serde_json::Map::new();
        for &b in &args.forward_batches {
            let ips = measure(args.seconds, b, || {
                model
                    .logits(&px[..b * per], b, NormMode::Running)
                    .expect("forward");
            });
            entry.insert(format!("forward_b{b}"), json!(ips));
            println!("{:<40} forward  b{b:<4} {ips:>9.1} img/s", path.display());
        }
        let b = args.step_batch;
        let mut sgd = Sgd::new(SgdConfig::momentum(0.00025, 0.9));
        let ips = measure(args.seconds, b, || {
            let x = to_input(&spec, &px[..b * per], b, &device).expect("input");
            let out = model
                .net
                .backward(x, NormMode::Tbr, true, Trainable::NormAffine, |l| {
                    cross_entropy(l, &labels)
                });
            sgd.step(model.net.store_mut(), out.grads, 0.00025);
        });
        entry.insert(format!("tbr_step_b{b}"), json!(ips));
        println!("{:<40} tbr step b{b:<4} {ips:>9.1} img/s", path.display());
        let key = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        results.insert(key, Value::Object(entry));
    }
    let v = json!({"engine": "cema (burn 0.22 flex)", "threads": rayon::current_num_threads(), "results": results});
    if let Some(p) = &args.json {
        write_json(p, &v, "--json")?;
    }
    Ok(())
}
