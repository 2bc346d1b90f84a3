//! `cema eval`: accuracy of a checkpoint on clean data and on each corruption × severity.

use std::path::PathBuf;
use std::time::Instant;

use cema_corrupt::Corruption;
use cema_data::{ImageSet, Split};
use cema_model::{Model, NormMode};
use serde_json::{json, Map, Value};

use super::corrupt::{expand, parse_selection, Selection};
use super::{labelled, write_json, Context, DataArgs};
use crate::exit::{CliError, ResultExt};
use crate::ui::Progress;
use cema_bench::stream;

/// Accuracy of a checkpoint on the clean test set and on every corruption × severity of its
/// corrupted copy (Fashion-MNIST-C by default): read from --corrupted where that folder holds the
/// corruption, else generated on the fly with the same seed, which gives the same bytes as
/// `cema corrupt`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The checkpoint (safetensors or .pth; its model card `<model>.json` beside it).
    #[arg(long, default_value = "models/edge.safetensors")]
    model: PathBuf,
    /// Normalization statistics: `running` (the deployed model) or `batch` (each test batch's own
    /// statistics, no parameter update: the BN-adapt view).
    #[arg(long, default_value = "running")]
    norm: NormMode,
    /// Folder in the CIFAR-10-C layout (e.g. CIFAR-10-C itself with --dataset cifar10);
    /// corruptions missing there are generated in memory. Default: data/<dataset>-c.
    #[arg(long)]
    corrupted: Option<PathBuf>,
    /// Generate every corruption from the clean test set, reading no folder (not even the
    /// default one).
    #[arg(long, conflicts_with = "corrupted")]
    generate_corruptions: bool,
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
    #[command(flatten)]
    data: DataArgs,
    /// Write `clean_accuracy`, `corrupted.<corruption>.<severity>` and `norm` as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

pub fn run(args: Args, ctx: &Context) -> Result<(), CliError> {
    if args.batch == 0 {
        return Err(CliError::usage(anyhow::anyhow!("--batch must be positive")));
    }
    let device = ctx.device.clone();
    let mut model =
        Model::load(&args.model, &device).usage_err(format!("--model {}", args.model.display()))?;
    let (mut test, names) = args.data.load_named(Split::Test, &model)?;
    if let Some(n) = args.limit {
        test = test.take(n);
    }
    args.data
        .check_model(&model, &test, "--model", &args.model)?;
    let corrupted = args
        .data
        .corrupted(args.corrupted.as_deref(), args.generate_corruptions)
        .with_names(names);
    let all: Vec<usize> = (0..test.len()).collect();
    let corruptions = if args.clean_only {
        vec![]
    } else {
        expand(&args.corruptions)
    };
    corrupted.check(&corruptions).usage_err("--corrupted")?;
    let mut severities = args.severities.clone();
    severities.sort_unstable();
    severities.dedup();
    let total = (1 + corruptions.len() * severities.len()) * test.len();
    let progress = Progress::new(total as u64, "img", ctx.quiet);
    let t0 = Instant::now();
    let mut eval = |set: &ImageSet| -> Result<f64, CliError> {
        let acc = labelled(set)
            .and_then(|set| model.accuracy(set, args.norm, args.batch))
            .run_err("evaluating")?;
        progress.inc(set.len() as u64);
        Ok(acc)
    };
    let clean = eval(&test)?;
    let mut table: Vec<(Corruption, Vec<f64>)> = Vec::new();
    for &c in &corruptions {
        let mut row = Vec::new();
        for &s in &severities {
            let set = stream(&corrupted, &test, &all, c, s, args.seed)
                .usage_err(format!("{} severity {s}", c.name()))?;
            row.push(eval(&set.0)?);
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
        let mut corrupted_acc = Map::new();
        for (c, row) in &table {
            let per: Map<String, Value> = severities
                .iter()
                .zip(row)
                .map(|(s, a)| (s.to_string(), json!(a)))
                .collect();
            corrupted_acc.insert(c.name().to_string(), Value::Object(per));
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
            "dataset": args.data.name(),
            "data_dir": args.data.dir(),
            "corrupted_dir": corrupted.dir,
            "model_sha256": model.card.sha256,
            "norm": args.norm.name(),
            "batch": args.batch,
            "images": test.len(),
            "seed": args.seed,
            "clean_accuracy": clean,
            "corrupted": corrupted_acc,
            "mean_by_severity": mean_by_severity,
            "seconds": seconds,
            "command": super::shell_line(&ctx.argv),
        });
        write_json(path, &v, "--json")?;
    }
    Ok(())
}
