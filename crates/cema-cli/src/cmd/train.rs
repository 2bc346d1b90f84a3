//! `cema train`: source-train a model on a clean dataset (Fashion-MNIST, CIFAR-10 or CIFAR-100);
//! writes checkpoint + model card + run JSON.

use std::path::PathBuf;

use cema_data::{Dataset, ImageSet, Split};
use cema_model::{
    checkpoint_dir, train, Arch, InputSpec, Model, ModelCard, TrainConfig, TrainEvent,
};
use serde_json::json;

use super::{labelled, write_json, Context, DataArgs};
use crate::exit::{CliError, ResultExt};
use crate::ui::Progress;

/// Source-train a ResNet on a clean dataset, Fashion-MNIST by default (SGD + Nesterov momentum, cosine schedule, weight
/// decay, random crop + horizontal flip). Checkpoints every epoch to `<out>.ckpt/`; `--resume`
/// continues from there with identical results.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to write the weights; the model card goes beside it as `<out>.json`.
    #[arg(long, default_value = "models/edge.safetensors")]
    out: PathBuf,
    /// CIFAR-style ResNet depth (6n+2: 8, 14, 20, ...).
    #[arg(long, default_value_t = 8)]
    depth: usize,
    /// Width of the first stage (stages are width, 2·width, 4·width).
    #[arg(long, default_value_t = 16)]
    width: usize,
    /// Role recorded in the model card (edge or foundation).
    #[arg(long, default_value = "edge")]
    role: String,
    /// Epochs the cosine schedule spans.
    #[arg(long, default_value_t = 15)]
    epochs: usize,
    /// Images per SGD step.
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Peak learning rate (cosine-annealed to 0).
    #[arg(long, default_value_t = 0.1)]
    lr: f64,
    /// Weight decay on convolution and linear weights.
    #[arg(long, default_value_t = 5e-4)]
    weight_decay: f64,
    /// Random-crop padding in pixels (0 disables the crop).
    #[arg(long, default_value_t = 2)]
    pad: usize,
    /// Seed of the initial weights and of the data order and augmentation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop after this many epochs (the cosine schedule still spans --epochs); continue later
    /// with --resume.
    #[arg(long)]
    stop_after: Option<usize>,
    /// Continue from `<out>.ckpt/` if it exists.
    #[arg(long)]
    resume: bool,
    /// Train on the first N images only (quick runs).
    #[arg(long)]
    limit: Option<usize>,
    #[command(flatten)]
    data: DataArgs,
    /// Write the run (config, per-epoch history, final accuracy, time) as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

pub fn run(args: Args, ctx: &Context) -> Result<(), CliError> {
    let dataset = args.data.dataset()?;
    let (height, width, channels) = dataset.geometry();
    let arch = Arch::CifarResnet {
        depth: args.depth,
        width: args.width,
        in_channels: channels,
        num_classes: dataset.num_classes(),
    };
    arch.validate()
        .map_err(|e| CliError::usage(anyhow::anyhow!("--depth/--width: {e}")))?;
    let mut train_set = args.data.load(Split::Train)?;
    let test_set = args.data.load(Split::Test)?;
    if let Some(n) = args.limit {
        train_set = train_set.take(n);
    }
    if args.batch == 0 || args.batch > train_set.len() {
        return Err(CliError::usage(anyhow::anyhow!(
            "--batch {} must be in 1..={}",
            args.batch,
            train_set.len()
        )));
    }
    super::ensure_writable_dir(super::parent_dir(&args.out), "--out")?;
    let name = args
        .out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let classes = dataset.class_names(args.data.data_dir.as_deref());
    let card = if dataset == Dataset::FashionMnist {
        // The shared constants, so that tools/train_torch.py's checkpoints get the same input spec.
        ModelCard::fashion_mnist(&name, &args.role, arch, classes)
    } else {
        let (mean, std) = channel_stats(&train_set);
        let input = InputSpec {
            height,
            width,
            channels,
            mean,
            std,
        };
        ModelCard::new(&name, &args.role, arch, input, classes, dataset.name())
    };
    let device = ctx.device.clone();
    let mut model = Model::init(card, &device, args.seed).run_err("building the model")?;
    let cfg = TrainConfig {
        epochs: args.epochs,
        batch: args.batch,
        lr: args.lr,
        momentum: 0.9,
        weight_decay: args.weight_decay,
        nesterov: true,
        pad: args.pad,
        flip: true,
        seed: args.seed,
        stop_after: args.stop_after,
    };
    let ckpt = checkpoint_dir(&args.out);
    let steps = train_set.len() / args.batch;
    let progress = Progress::new((args.epochs * steps) as u64, "steps", ctx.quiet);
    progress.note(format!(
        "training {} ({} parameters) on {} images for {} epochs; checkpoint {}",
        args.out.display(),
        model.store().parameter_count(),
        train_set.len(),
        args.epochs,
        ckpt.display()
    ));
    let t0 = std::time::Instant::now();
    let mut ema_loss = None::<f32>;
    let mut first = true;
    let (train_view, test_view) = labelled(&train_set)
        .and_then(|a| Ok((a, labelled(&test_set)?)))
        .run_err("reading the training data")?;
    let history = train(
        &mut model,
        train_view,
        Some(test_view),
        &cfg,
        Some(&ckpt),
        args.resume,
        &mut |ev| match ev {
            TrainEvent::Step {
                epoch,
                step,
                loss,
                acc,
                ..
            } => {
                if first {
                    // Resumed runs start past zero.
                    progress.inc((epoch * steps + step) as u64);
                    first = false;
                }
                let l = ema_loss.map_or(loss, |e| 0.98 * e + 0.02 * loss);
                ema_loss = Some(l);
                progress.inc(1);
                progress.set_message(format!(
                    "epoch {} loss {l:.3} acc {:.1}%",
                    epoch + 1,
                    100.0 * acc
                ));
            }
            TrainEvent::Epoch(r) => progress.note(format!(
                "epoch {:>3}: loss {:.4} train acc {:.2}% test acc {} ({:.0} s)",
                r.epoch,
                r.train_loss,
                100.0 * r.train_acc,
                r.test_acc
                    .map_or("-".into(), |a| format!("{:.2}%", 100.0 * a)),
                r.seconds
            )),
        },
    )
    .run_err("training")?;
    progress.finish();
    let seconds = t0.elapsed().as_secs_f64();
    let clean = history.last().and_then(|r| r.test_acc);
    let train_seconds: f64 = history.iter().map(|r| r.seconds).sum();
    model.card.clean_accuracy = clean;
    model.card.training = json!({
        "trainer": format!("cema train {}", env!("CARGO_PKG_VERSION")),
        "command": super::shell_line(&ctx.argv),
        "recipe": "random crop (pad {pad}) + horizontal flip",
        "config": cfg,
        "device": format!("{} ({})", ctx.backend, ctx.engine()),
        "threads": rayon::current_num_threads(),
        "wall_time_s": (train_seconds * 10.0).round() / 10.0,
    });
    model.card.training["recipe"] =
        json!(format!("random crop (pad {}) + horizontal flip", args.pad));
    model.card.history = Some(serde_json::to_value(&history).run_err("history")?);
    model
        .save(&args.out)
        .usage_err(format!("--out {}", args.out.display()))?;
    println!(
        "wrote {} ({} parameters): clean test accuracy {:.2}% after {} epochs, {:.0} s",
        args.out.display(),
        model.card.parameters.unwrap_or(0),
        100.0 * clean.unwrap_or(f64::NAN),
        history.len(),
        seconds
    );
    if let Some(path) = &args.json {
        let v = json!({"out": args.out, "card": model.card, "seconds_this_run": seconds});
        write_json(path, &v, "--json")?;
    }
    Ok(())
}

/// Per-channel mean and standard deviation of the training pixels scaled to [0, 1]: the input
/// normalisation of a model trained on a dataset without published constants (accumulated in f64
/// so that 50 000 CIFAR images lose nothing to rounding).
fn channel_stats(set: &ImageSet) -> (Vec<f32>, Vec<f32>) {
    let c = set.channels;
    let mut sum = vec![0f64; c];
    let mut sq = vec![0f64; c];
    for (i, &p) in set.images.iter().enumerate() {
        let v = f64::from(p) / 255.0;
        sum[i % c] += v;
        sq[i % c] += v * v;
    }
    let n = (set.images.len() / c.max(1)).max(1) as f64;
    let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
    let std = sq
        .iter()
        .zip(&mean)
        // A constant channel would give std 0, which the model card rejects.
        .map(|(q, m)| ((q / n - m * m).max(0.0).sqrt()).max(1e-3) as f32)
        .collect();
    (mean.into_iter().map(|m| m as f32).collect(), std)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_stats_are_per_channel_over_interleaved_pixels() {
        // Two RGB pixels: R = 0 and 255, G = 51 twice, B = 255 twice.
        let set = ImageSet {
            images: vec![0, 51, 255, 255, 51, 255],
            labels: vec![0],
            height: 1,
            width: 2,
            channels: 3,
        };
        let (mean, std) = channel_stats(&set);
        assert!((mean[0] - 0.5).abs() < 1e-6 && (std[0] - 0.5).abs() < 1e-6);
        assert!((mean[1] - 0.2).abs() < 1e-6 && std[1] == 1e-3);
        assert!((mean[2] - 1.0).abs() < 1e-6);
    }
}
