//! `cema edge`: one edge device against a cloud, over a corrupted test stream (Fashion-MNIST-C by
//! default; the same stream `cema bench` builds for that dataset, corruption, severity and seed).

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use cema_adapt::{EdgeConfig, RandomSelector, UploadRule};
use cema_corrupt::Corruption;
use cema_data::Split;
use cema_edge::{run_stream, EdgeOptions, EdgeReport};
use cema_model::{cpu, Model};
use serde_json::json;

use crate::exit::{CliError, ResultExt};

use super::{write_json, Context, DataArgs};
use cema_bench::{stream, stream_order};

/// Runs an edge device: forward-only inference over a corrupted stream, uploads to and updates
/// from a cloud.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The cloud's base URL; several, comma-separated, for a fleet's gateways (the edge moves
    /// to the next when one stops answering).
    #[arg(long, default_value = "http://127.0.0.1:7878")]
    pub cloud: String,
    /// This device's id (registered at the cloud).
    #[arg(long)]
    pub device: String,
    /// This device's token.
    #[arg(long, env = "CEMA_DEVICE_TOKEN")]
    pub token: String,
    /// The edge checkpoint.
    #[arg(long, default_value = "models/edge.safetensors")]
    pub edge: PathBuf,
    /// Your own images instead of a corrupted test stream: a folder of JPEG/PNG files of any
    /// size (the centre square, or the card's crop recipe, resized to the model's input), in name
    /// order. With class sub-folders (named by class index, `0/`, `1/`, …, or by the model card's
    /// class names) the labels are known and accuracy is reported; without, one JSON line per
    /// image gives its predicted class. `-`: raw frames on stdin, each exactly the model's input
    /// (H×W×C bytes, u8), e.g. from `ffmpeg -i cam.mp4 -vf scale=28:28,format=gray -f rawvideo -`.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["corrupted", "generate_corruptions", "sync", "compare_source"])]
    pub input: Option<PathBuf>,
    /// With --input DIR: keep watching the folder and predict on images as they arrive, until
    /// SIGINT/SIGTERM or --limit images.
    #[arg(long, requires = "input")]
    pub watch: bool,
    /// The stream's corruption.
    #[arg(long, default_value = "gaussian_noise")]
    pub corruption: Corruption,
    /// The corruption's severity, 1–5.
    #[arg(long, default_value_t = 5)]
    pub severity: u8,
    /// Images of the stream (the first N of the seed's shuffled test set).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Seed of the stream order (as `cema bench --seed`).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Seed of the corruptions (as `cema bench --corruption-seed`).
    #[arg(long, default_value_t = 0)]
    pub corruption_seed: u64,
    /// Folder in the CIFAR-10-C layout to read the corruption from, if it holds it (else it is
    /// generated from the clean test set). Default: data/<dataset>-c.
    #[arg(long)]
    pub corrupted: Option<PathBuf>,
    /// Generate every corruption from the clean test set, reading no folder (not even the
    /// default one).
    #[arg(long, conflicts_with = "corrupted")]
    pub generate_corruptions: bool,
    #[command(flatten)]
    pub data: DataArgs,
    /// Images per batch: one forward pass, one selection, one upload.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Uplink budget, kilobits per second (default: unlimited).
    #[arg(long)]
    pub uplink_kbps: Option<f64>,
    /// Uplink queue bound, samples; past it the oldest queued samples are dropped and counted.
    #[arg(long, alias = "max-queued", default_value_t = 4096)]
    pub max_queued_samples: usize,
    /// Wait for the cloud's round after every batch (reproduces `cema bench` exactly).
    #[arg(long)]
    pub sync: bool,
    /// Also run the unadapted model, to report Source's accuracy on the same images.
    #[arg(long)]
    pub compare_source: bool,
    /// Milliseconds to sleep between batches (a camera's frame interval).
    #[arg(long, default_value_t = 0)]
    pub pace_ms: u64,
    /// Print one JSON status line per batch on stdout.
    #[arg(long)]
    pub status_lines: bool,
    /// Report online accuracy (the stream's labels are known here) to the cloud's dashboard.
    #[arg(long)]
    pub report_accuracy: bool,
    /// The edge's selection switches: paper or released (as `cema bench --cema-preset`).
    #[arg(long, alias = "preset", default_value = "paper")]
    pub cema_preset: String,
    /// Follow the stream's normalization statistics forward-only with this momentum in (0, 1];
    /// cloud updates then set only γ and β (as `cema bench --cema-track-stats`).
    #[arg(long, alias = "track-stats")]
    pub cema_track_stats: Option<f32>,
    #[command(flatten)]
    pub pick: SelectArgs,
    /// With --select cema: an upload budget, a fraction of the stream in (0, 1]; each batch's
    /// E_max is chosen so that the budget is met (as `cema bench --cema-budget`).
    #[arg(long)]
    pub cema_budget: Option<f64>,
    /// Send the edge's running statistics with every upload that carries samples, so the
    /// cloud's student normalises as the edge does (needs --cema-track-stats; implied by
    /// --select uncertain; the cloud must list the `edge-stats` extension).
    #[arg(long)]
    pub share_stats: bool,
    /// Write the final report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// How an edge picks its uploads (`cema edge`, and every edge of `cema demo`).
#[derive(Debug, Clone, clap::Args)]
pub struct SelectArgs {
    /// How the edge picks its uploads: cema (the paper's entropy filters); random (a uniformly
    /// random --rate of every batch, the random-upload baseline); uncertain (issue #25's rule:
    /// the --rate most uncertain samples of every batch, statistics tracked and shared, as
    /// `cema bench --methods uncertain_upload`). Any of the three within --byte-budget instead.
    /// The draws are seeded from --seed as in `cema bench`.
    #[arg(long, value_enum, default_value = "cema")]
    pub select: Select,
    /// With --select random or uncertain: the fraction of every batch to upload, in (0, 1].
    #[arg(long)]
    pub rate: Option<f64>,
    /// Instead of --rate (and of --cema-budget with --select cema): an uplink budget in bytes
    /// per image seen, pixels and shared statistics counted. Every image earns the budget; a
    /// batch uploads as many samples as the unspent credit pays for, the rule choosing which, so
    /// the uploads never exceed the budget over the stream (as `cema bench --byte-budget`).
    #[arg(long, value_name = "BYTES")]
    pub byte_budget: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Select {
    Cema,
    Random,
    Uncertain,
}

impl Select {
    fn name(self) -> &'static str {
        match self {
            Select::Cema => "cema",
            Select::Random => "random",
            Select::Uncertain => "uncertain",
        }
    }
}

impl SelectArgs {
    /// The same flags for a child `cema edge`, checked.
    pub fn to_args(&self) -> Result<Vec<String>, CliError> {
        self.rule()?;
        let mut args = vec!["--select".to_string(), self.select.name().to_string()];
        if let Some(r) = self.rate {
            args.extend(["--rate".to_string(), r.to_string()]);
        }
        if let Some(b) = self.byte_budget {
            args.extend(["--byte-budget".to_string(), b.to_string()]);
        }
        Ok(args)
    }

    fn rule(&self) -> Result<UploadRule, CliError> {
        UploadRule::from_choice(self.select.name(), self.rate, self.byte_budget, "--")
            .map_err(|e| CliError::usage(anyhow::anyhow!(e)))
    }
}

/// The edge's selection switches and, for --select random/uncertain, its rate-matched selector.
pub(crate) fn selection(args: &Args) -> Result<(EdgeConfig, Option<RandomSelector>), CliError> {
    let usage = |m: String| CliError::usage(anyhow::anyhow!(m));
    let preset = match args.cema_preset.as_str() {
        "paper" => EdgeConfig::default(),
        "released" => EdgeConfig::released(),
        p => {
            return Err(usage(format!(
                "--cema-preset {p}: expected paper or released"
            )))
        }
    };
    if let Some(b) = args.cema_budget {
        if !(b > 0.0 && b <= 1.0) || args.pick.select != Select::Cema {
            return Err(usage(format!(
                "--cema-budget {b}: a fraction in (0, 1], with --select cema"
            )));
        }
        if let Some(bytes) = args.pick.byte_budget {
            return Err(usage(format!(
                "--cema-budget {b} and --byte-budget {bytes}: give one of the two"
            )));
        }
    }
    let config = EdgeConfig {
        track_stats: super::check_momentum(args.cema_track_stats, "--cema-track-stats")?,
        share_stats: args.share_stats,
        budget: args.cema_budget,
        ..preset
    };
    let picked = args
        .pick
        .rule()?
        .configure(config, UploadRule::seed_for(args.seed));
    if picked.0.share_stats && picked.0.track_stats.is_none() {
        return Err(usage(
            "--share-stats: needs --cema-track-stats (the edge shares statistics it tracks)".into(),
        ));
    }
    Ok(picked)
}

pub fn report_json(r: &EdgeReport, corruption: &str) -> serde_json::Value {
    json!({
        "device": r.device,
        "corruption": corruption,
        "images": r.images,
        "accuracy": r.accuracy(),
        "source_accuracy": r.source_accuracy(),
        "upload_fraction": r.upload_fraction(),
        "selected": r.selected,
        "uploaded": r.uploaded,
        "dropped": r.dropped,
        "refused": r.refused,
        "bytes_up": r.bytes_up,
        "bytes_down": r.bytes_down,
        "norm_version": r.norm_version,
        "updates_applied": r.updates_applied,
        "updates_rejected": r.updates_rejected,
        "network_errors": r.network_errors,
        "seconds": r.seconds,
    })
}

pub fn run(args: Args, ctx: &Context) -> Result<(), CliError> {
    let (selection, selector) = selection(&args)?;
    if !(1..=5).contains(&args.severity) {
        return Err(CliError::usage(anyhow::anyhow!(
            "--severity {}: expected 1..5",
            args.severity
        )));
    }
    let model =
        Model::load(&args.edge, &cpu()).usage_err(format!("--edge {}", args.edge.display()))?;
    if let Some(dir) = &args.input {
        return super::edge_input::run(&args, dir, model, selection, selector, ctx);
    }
    let (test, names) = args.data.load_named(Split::Test, &model)?;
    args.data.check_model(&model, &test, "--edge", &args.edge)?;
    let mut order = stream_order(test.len(), args.seed);
    order.truncate(args.limit.unwrap_or(usize::MAX));
    let corrupted = args
        .data
        .corrupted(args.corrupted.as_deref(), args.generate_corruptions)
        .with_names(names);
    corrupted
        .check(&[args.corruption])
        .usage_err("--corrupted")?;
    let (set, _) = stream(
        &corrupted,
        &test,
        &order,
        args.corruption,
        args.severity,
        args.corruption_seed,
    )
    .usage_err(format!("{} severity {}", args.corruption, args.severity))?;
    let options = EdgeOptions {
        batch: args.batch,
        selection,
        selector,
        uplink_kbps: args.uplink_kbps,
        max_queued_samples: args.max_queued_samples,
        sync: args.sync,
        compare_source: args.compare_source,
        pace: (args.pace_ms > 0).then(|| Duration::from_millis(args.pace_ms)),
        report_accuracy: args.report_accuracy,
        ..EdgeOptions::new(&args.cloud, &args.device, &args.token)
    };
    let name = args.corruption.name();
    let status = args.status_lines;
    let report = run_stream(model, &set, &options, |r| {
        if status {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}", report_json(r, name));
            let _ = out.flush();
        }
    })
    .map_err(|e| {
        if e.is_usage() {
            CliError::usage(anyhow::anyhow!(e).context("--cloud / --device / --token"))
        } else {
            CliError::failed(anyhow::anyhow!(e))
        }
    })?;
    let value = report_json(&report, name);
    if status {
        let mut done = value.clone();
        done["done"] = json!(true);
        println!("{done}");
    }
    if let Some(path) = &args.json {
        write_json(path, &value, "--json")?;
    }
    if report.network_errors > 0 {
        tracing::warn!(
            "{} calls to the cloud at {} got no answer; uploads and updates were retried",
            report.network_errors,
            args.cloud
        );
    }
    if !status && !ctx.quiet {
        eprintln!(
            "{}: {} images, accuracy {:.2}%, uploaded {:.1}%, version {}, {} B up, {} B down",
            report.device,
            report.images,
            100.0 * report.accuracy(),
            100.0 * report.upload_fraction(),
            report.norm_version,
            report.bytes_up,
            report.bytes_down
        );
    }
    Ok(())
}
