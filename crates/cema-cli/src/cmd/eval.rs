//! `cema eval`: accuracy of a checkpoint on clean data and on each corruption × severity.

use std::path::{Path, PathBuf};
use std::time::Instant;

use cema_corrupt::Corruption;
use cema_data::cifar_c::CorruptedDir;
use cema_data::{fashion_mnist, ImageSet, Split};
use cema_model::{Model, NormMode};
use serde_json::{json, Map, Value};

use super::corrupt::{expand, parse_selection, Selection};
use super::{write_json, Context};
use crate::exit::{CliError, ResultExt};
use crate::ui::Progress;

/// Accuracy of a checkpoint on the clean test set and on every corruption × severity of
/// Fashion-MNIST-C (read from --corrupted if present there, else generated on the fly with the same
/// seed, which gives the same bytes as `cema corrupt`).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The checkpoint (safetensors or .pth; its model card `<model>.json` beside it).
    #[arg(long, default_value = "models/edge.safetensors")]
    model: PathBuf,
    /// Normalization statistics: `running` (the deployed model) or `batch` (each test batch's own
    /// statistics, no parameter update: the BN-adapt view).
    #[arg(long, default_value = "running")]
    norm: NormMode,
    /// Folder in the CIFAR-10-C layout; corruptions missing there are generated in memory.
    #[arg(long, default_value = "data/fashion-mnist-c")]
    corrupted: PathBuf,
    /// Corruptions (names or the groups benchmark, held-out, all), comma-separated.
    #[arg(long, value_delimiter = ',', value_parser = parse_selection, default_value = "benchmark")]
    corruptions: Vec<Selection>,
    /// Severities to evaluate, comma-separated (e.g. 5 or 1,2,3,4,5).
    #[arg(long, value_delimiter = ',', default_value = "1,2,3,4,5",
          value_parser = clap::value_parser!(u8).range(1..=5))]
    severities: Vec<u8>,
    /// Evaluate on the first N test images only (quick runs).
    #[arg(long)]
    limit: Option<usize>,
    /// Batch size (matters for `--norm batch`: the statistics are per batch).
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Only the clean test set.
    #[arg(long)]
    clean_only: bool,
    /// Seed of the corruptions generated on the fly (cema corrupt's default is 0).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Folder with the Fashion-MNIST .gz files.
    #[arg(long, env = "CEMA_FASHION_MNIST_DIR")]
    data_dir: Option<PathBuf>,
    /// Write `clean_accuracy`, `corrupted.<corruption>.<severity>` and `norm` as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// The test set under one corruption and severity: from `dir` when it holds that corruption, else
/// generated (identically to `cema corrupt --seed seed`).
pub(crate) fn corrupted_stream(
    dir: &Path,
    clean: &ImageSet,
    c: Corruption,
    severity: u8,
    seed: u64,
) -> anyhow::Result<ImageSet> {
    if dir.join(format!("{}.npy", c.name())).exists() {
        let d = CorruptedDir::open(dir)?;
        let set = d.load(c.name(), severity)?;
        anyhow::ensure!(
            set.len() >= clean.len() && set.labels[..clean.len()] == clean.labels[..],
            "{}: labels do not match the clean test set (generated from another split or dataset?)",
            dir.display()
        );
        return Ok(set.take(clean.len()));
    }
    Ok(cema_corrupt::corrupt_set(clean, c, severity, None, seed)?)
}

pub fn run(args: Args, ctx: &Context) -> Result<(), CliError> {
    if args.batch == 0 {
        return Err(CliError::usage(anyhow::anyhow!("--batch must be positive")));
    }
    let device = ctx.device.clone();
    let mut model =
        Model::load(&args.model, &device).usage_err(format!("--model {}", args.model.display()))?;
    let mut test =
        fashion_mnist::load(args.data_dir.as_deref(), Split::Test).usage_err("--data-dir")?;
    if let Some(n) = args.limit {
        test = test.take(n);
    }
    model
        .check_geometry(&test)
        .usage_err(format!("--model {}", args.model.display()))?;
    let corruptions = if args.clean_only {
        vec![]
    } else {
        expand(&args.corruptions)
    };
    let mut severities = args.severities.clone();
    severities.sort_unstable();
    severities.dedup();
    let total = (1 + corruptions.len() * severities.len()) * test.len();
    let progress = Progress::new(total as u64, "img", ctx.quiet);
    let t0 = Instant::now();
    let mut eval = |set: &ImageSet| -> Result<f64, CliError> {
        let acc = model
            .accuracy(set, args.norm, args.batch)
            .run_err("evaluating")?;
        progress.inc(set.len() as u64);
        Ok(acc)
    };
    let clean = eval(&test)?;
    let mut table: Vec<(Corruption, Vec<f64>)> = Vec::new();
    for &c in &corruptions {
        let mut row = Vec::new();
        for &s in &severities {
            let set = corrupted_stream(&args.corrupted, &test, c, s, args.seed)
                .run_err(format!("{} severity {s}", c.name()))?;
            row.push(eval(&set)?);
        }
        progress.set_message(c.name());
        table.push((c, row));
    }
    progress.finish();
    let seconds = t0.elapsed().as_secs_f64();

    println!(
        "{} ({}), norm = {}, {} test images",
        args.model.display(),
        model.card.name,
        args.norm.name(),
        test.len()
    );
    println!("clean accuracy: {:.2}%", clean * 100.0);
    if !table.is_empty() {
        let mut header = format!("{:<20}", "corruption");
        for s in &severities {
            header += &format!(" {:>7}", format!("s{s}"));
        }
        println!("{header}");
        for (c, row) in &table {
            let mut line = format!("{:<20}", c.name());
            for a in row {
                line += &format!(" {:>7.2}", a * 100.0);
            }
            println!("{line}");
        }
        let mut line = format!("{:<20}", "mean");
        for j in 0..severities.len() {
            let m = table.iter().map(|(_, r)| r[j]).sum::<f64>() / table.len() as f64;
            line += &format!(" {:>7.2}", m * 100.0);
        }
        println!("{line}");
    }
    if let Some(path) = &args.json {
        let mut corrupted = Map::new();
        for (c, row) in &table {
            let per: Map<String, Value> = severities
                .iter()
                .zip(row)
                .map(|(s, a)| (s.to_string(), json!(a)))
                .collect();
            corrupted.insert(c.name().to_string(), Value::Object(per));
        }
        let mean_by_severity: Map<String, Value> = severities
            .iter()
            .enumerate()
            .map(|(j, s)| {
                (
                    s.to_string(),
                    json!(table.iter().map(|(_, r)| r[j]).sum::<f64>() / table.len().max(1) as f64),
                )
            })
            .collect();
        let v = json!({
            "model": args.model,
            "model_sha256": model.card.sha256,
            "norm": args.norm.name(),
            "batch": args.batch,
            "images": test.len(),
            "seed": args.seed,
            "clean_accuracy": clean,
            "corrupted": corrupted,
            "mean_by_severity": mean_by_severity,
            "seconds": seconds,
            "command": super::shell_line(&ctx.argv),
        });
        write_json(path, &v, "--json")?;
    }
    Ok(())
}
