//! `cema bench`: the evaluation protocol of SPEC §4 (the `cema-bench` library) from the command
//! line. This file parses flags into a `BenchConfig`, loads the data and models, runs it, and writes
//! results.json, results.csv, stream_order.npy, manifest.json and the figures into --out.

use std::path::{Path, PathBuf};

use cema_adapt::{CloudConfig, GradConfig, Pick};
use cema_bench::{
    BenchConfig, BenchError, MethodKey, Models, Preset, Protocol, RandomRate, Settings, StreamSpec,
};
use cema_data::Split;
use cema_model::{sha256_file, Device, Model};
use serde_json::{json, Map, Value};

use super::corrupt::{expand, parse_selection, Selection};
use super::{
    ensure_writable_dir, parent_dir, shell_line, utc_now, write_atomic, write_json, Context,
    DataArgs,
};
use crate::exit::{CliError, ResultExt};
use crate::ui::Progress;

/// Tent's and EATA's learning rate in every reported table: the best of 0.00025, 0.001 and
/// 0.004 on the held-out corruptions (bench/tune_lr.sh).
const TUNED_LR: f64 = 0.004;

/// Runs the baselines and CEMA on the same corrupted streams and reports online accuracy,
/// uploads, bytes, updates and wall time per method and stream (SPEC §4).
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
    /// random_upload, uncertain_upload (reported in that order). uncertain_upload is issue #25's
    /// selection rule: random upload's quota filled with the most uncertain samples, the edge's
    /// own statistics tracked (--cema-track-stats, default 0.1) and shared with the cloud; it
    /// takes random upload's rate (--random-rate, --random-rates-from, or CEMA's measured rate).
    #[arg(long, value_delimiter = ',', value_parser = str::parse::<MethodKey>,
          default_value = "source,bn_adapt,tent,eata,cema,foundation,random_upload")]
    methods: Vec<MethodKey>,
    /// episodic: every method restarts from the source model for each stream; continual: the
    /// streams back to back with no reset.
    #[arg(long, default_value = "episodic", value_parser = str::parse::<Protocol>)]
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
    /// Generate every corruption from the clean test set, reading no folder (not even the
    /// default one).
    #[arg(long, conflicts_with = "corrupted")]
    generate_corruptions: bool,
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
    #[arg(long, default_value = "paper", value_parser = str::parse::<Preset>)]
    cema_preset: Preset,
    /// CEMA's edge follows its own input statistics forward-only with this momentum (see
    /// `EdgeConfig::track_stats`); also used by random_upload.
    #[arg(long)]
    cema_track_stats: Option<f32>,
    /// With --cema-track-stats (in-process only for now): the edge's statistics travel with its uploads and the student
    /// normalises with them.
    #[arg(long)]
    cema_share_stats: bool,
    /// An upload budget for cema, as a fraction of each stream (0–1): each batch's E_max is
    /// chosen so the budget is met (the lowest-entropy samples above E_min that are not
    /// redundant) instead of the paper's dynamic E_max. With --random-rate at the same value,
    /// one point of the accuracy-against-budget curve (bench/budget_curve.sh).
    #[arg(long, value_name = "FRACTION")]
    cema_budget: Option<f64>,
    /// random_upload's (and uncertain_upload's) rate for every stream, instead of CEMA's
    /// measured rate on that stream.
    #[arg(long, conflicts_with = "random_rates_from")]
    random_rate: Option<f64>,
    /// An uplink budget for cema, random_upload and uncertain_upload, in bytes per image of the
    /// stream (pixels and shared statistics counted), instead of --cema-budget and the random
    /// rate: every image earns the budget, and a batch uploads as many samples as the unspent
    /// credit pays for, each method choosing which (cema: its lowest-entropy candidates). The
    /// byte-budget points of the curve (bench/budget_curve.sh --bytes).
    #[arg(long, value_name = "BYTES", conflicts_with_all = ["cema_budget", "random_rate", "random_rates_from"])]
    byte_budget: Option<f64>,
    /// random_upload's rate per stream from an earlier run's results.json: CEMA's measured
    /// `upload_fraction` on each stream, so that random upload can run in a separate process (in
    /// parallel, or later) and still follow CEMA stream by stream. That run must have had the same
    /// protocol, seed, batch and images per stream, and cema on every stream of this one.
    #[arg(long, value_name = "RESULTS_JSON")]
    random_rates_from: Option<PathBuf>,
    /// How random_upload fills each batch's quota: `uniform` (the baseline), `highest-entropy`
    /// (an ablation: the same number of uploads per batch, the most uncertain samples first, i.e.
    /// CEMA's E_max criterion inverted) or `entropy-strata` (one uniform draw from each of k equal
    /// strata of the batch's entropy ranks). The results keep the key random_upload; the manifest
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

fn parse_pick(s: &str) -> Result<Pick, String> {
    match s {
        "uniform" => Ok(Pick::Uniform),
        "highest-entropy" => Ok(Pick::HighestEntropy),
        "entropy-strata" => Ok(Pick::EntropyStrata),
        _ => Err(format!(
            "'{s}': expected uniform, highest-entropy or entropy-strata"
        )),
    }
}

impl cema_bench::Observer for Progress {
    fn message(&self, what: &str) {
        self.set_message(what.to_string());
    }
    fn advanced(&self, images: u64) {
        self.inc(images);
    }
}

/// Exit 2 for what the user gave (input, output folder, a record to resume), 1 for the run.
fn exit(e: BenchError) -> CliError {
    match e {
        BenchError::Run(e) => CliError::failed(e),
        e @ BenchError::Resume { .. } => CliError::usage(anyhow::anyhow!("--resume: {e}")),
        BenchError::Output(e) => CliError::usage(e.context("--out")),
        BenchError::Input(e) => CliError::usage(e),
    }
}

fn load_model(path: &Path, flag: &str, device: &Device) -> Result<(Model, String), CliError> {
    let ctx = || format!("{flag} {}", path.display());
    let model = Model::load(path, device).usage_err(ctx())?;
    let sha = sha256_file(path).usage_err(ctx())?;
    Ok((model, sha))
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

fn settings(args: &Args) -> Settings {
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
        edge: cema_adapt::EdgeConfig {
            track_stats: args.cema_track_stats,
            share_stats: args.cema_share_stats,
            budget: args.cema_budget,
            byte_budget: args.byte_budget,
            ..args.cema_preset.edge_config()
        },
        cloud,
        random_seed: Settings::random_seed_for(args.seed),
        random_pick: args.random_pick,
        diagnose_teacher: args.diagnose_teacher,
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
    if let Some(b) = args.cema_budget {
        if !(0.0..=1.0).contains(&b) {
            return Err(CliError::usage(anyhow::anyhow!(
                "--cema-budget {b} is outside [0, 1]"
            )));
        }
    }
    if let Some(b) = args.byte_budget {
        if !(b.is_finite() && b > 0.0) {
            return Err(CliError::usage(anyhow::anyhow!(
                "--byte-budget {b}: expected a positive number of bytes per image"
            )));
        }
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
    if let Some(m) = methods.iter().find(|m| m.uploads_at_a_rate()) {
        if !methods.contains(&MethodKey::Cema)
            && args.random_rate.is_none()
            && args.random_rates_from.is_none()
            && args.byte_budget.is_none()
        {
            return Err(CliError::usage(anyhow::anyhow!(
                "--methods {} uploads at CEMA's measured rate: add cema to --methods, or give the \
                 rate with --random-rate or --random-rates-from",
                m.key()
            )));
        }
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

    let mut models = Models::default();
    if methods.iter().any(|m| m.needs_edge()) {
        models.edge = Some(load_model(&args.edge, "--edge", &ctx.device)?);
    }
    if methods.iter().any(|m| m.needs_foundation()) {
        models.foundation = Some(load_model(&args.foundation, "--foundation", &ctx.device)?);
    }
    let reference = models
        .edge
        .as_ref()
        .or(models.foundation.as_ref())
        .map(|(m, _)| m)
        .expect("every method needs a model");
    let (test, names) = args.data.load_named(Split::Test, reference)?;
    for (model, flag, path) in [
        (&models.edge, "--edge", &args.edge),
        (&models.foundation, "--foundation", &args.foundation),
    ] {
        if let Some((m, _)) = model {
            args.data.check_model(m, &test, flag, path)?;
        }
    }
    let corrupted = args
        .data
        .corrupted(args.corrupted.as_deref(), args.generate_corruptions)
        .with_names(names);
    corrupted.check(&corruptions).usage_err("--corrupted")?;

    // Taken before the run, not after: a run lasts hours, and the checkout may move meanwhile. The
    // binary's own hash pins what actually ran (it may have been built from another commit).
    let (git, dirty) = git_revision();
    let binary = std::env::current_exe().ok().map(|p| {
        let sha = sha256_file(&p).ok();
        json!({ "path": p, "sha256": sha })
    });
    let binary_sha = binary
        .as_ref()
        .and_then(|b| b.get("sha256"))
        .cloned()
        .unwrap_or(Value::Null);
    let mut environment = Map::new();
    environment.insert("dataset".into(), json!(args.data.name()));
    environment.insert("data_dir".into(), json!(args.data.dir()));
    environment.insert("binary_sha256".into(), binary_sha);
    environment.insert("threads".into(), json!(rayon::current_num_threads()));
    environment.insert("backend".into(), json!(ctx.backend));
    environment.insert(
        "precision".into(),
        json!(cema_model::precision().to_string()),
    );

    let mut config = BenchConfig {
        methods: methods.clone(),
        protocol: args.protocol,
        streams: StreamSpec::grid(&corruptions, &severities),
        limit: args.limit,
        batch: args.batch,
        seed: args.seed,
        corruption_seed: args.corruption_seed,
        corrupted: corrupted.clone(),
        settings: settings(&args),
        random_rate: match args.random_rate {
            Some(r) => RandomRate::Fixed(r),
            None => RandomRate::FollowCema,
        },
        records: args.out.join("streams"),
        resume: args.resume,
        environment,
    };
    let images = config.images_per_stream(test.len());
    if let Some(path) = &args.random_rates_from {
        if methods.iter().any(|m| m.uploads_at_a_rate()) {
            let rates = cema_bench::rates_from(path, &config, images)
                .usage_err(format!("--random-rates-from {}", path.display()))?;
            config.random_rate = RandomRate::PerStream(rates);
        }
    }

    let total = (config.streams.len() * methods.len() * images) as u64;
    let progress = Progress::new(total, "img", ctx.quiet);
    let outcome = cema_bench::run(&config, &test, &models, &progress).map_err(exit)?;
    progress.finish();
    let report = &outcome.report;

    let results_json = report.to_json();
    write_json(&args.out.join("results.json"), &results_json, "--out")?;
    if let Some(j) = &args.json {
        write_json(j, &results_json, "--json")?;
    }
    let csv_path = args.out.join("results.csv");
    write_atomic(&csv_path, report.csv().as_bytes())
        .usage_err(format!("--out {}", csv_path.display()))?;

    // stream_order.npy: the exact order, so another implementation can replay the same stream
    // (bench/torch_cema_stream.py does).
    let order_path = args.out.join("stream_order.npy");
    let order_u32: Vec<u32> = outcome.order.iter().map(|&i| i as u32).collect();
    cema_data::npy::write_labels(&order_path, &order_u32, cema_data::npy::Dtype::I64)
        .usage_err(format!("--out {}", order_path.display()))?;

    // manifest.json
    let checkpoint = |path: &Path, model: &Option<(Model, String)>| match model {
        Some((m, sha)) => json!({
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
        "precision": cema_model::precision().to_string(),
        "protocol": args.protocol.name(),
        "methods": methods.iter().map(|m| m.key()).collect::<Vec<_>>(),
        "corruptions": corruptions.iter().map(|c| c.name()).collect::<Vec<_>>(),
        "severities": severities,
        "stream_key": report.stream_key,
        "streams": report.streams,
        "stream_sources": outcome.sources,
        "limit": args.limit,
        "images_per_stream": report.images_per_stream,
        "batch": args.batch,
        "seed": args.seed,
        "stream_order": "ChaCha8 shuffle of the test set seeded by `seed`, first `images_per_stream`; the indices are in stream_order.npy (int64) beside this file",
        "corruption_seed": args.corruption_seed,
        "dataset": args.data.name(),
        "corrupted": corrupted.dir,
        "data_dir": args.data.dir(),
        "checkpoints": {
            "edge": checkpoint(&args.edge, &models.edge),
            "foundation": checkpoint(&args.foundation, &models.foundation),
        },
        "hyperparameters": config.settings.to_json(&methods),
        "random_rates_from": args.random_rates_from.as_ref().map(|p| json!({
            "path": p,
            "sha256": sha256_file(p).ok(),
        })),
        "random_upload_rates": if methods.iter().any(|m| m.uploads_at_a_rate()) {
            Value::Object(outcome.random_rates.clone())
        } else {
            Value::Null
        },
        "online_accuracy": "predictions each method returned for a batch, made before any update that batch triggered",
        "upload_fraction": "selected / images: uploads for cema, random_upload, uncertain_upload and foundation; the samples EATA's filters pass; 0 for source, bn_adapt, tent",
        "edge_images_per_s": "images / (seconds - cloud_seconds): the edge side's throughput, predicting and selecting (and for tent and eata their backward pass)",
        "cloud_samples_per_s": "uploaded samples / cloud_seconds: how many uploads per second one cloud session absorbs, its rounds (foundation step, distillation with replay) included",
        "dropped": "samples the selection dropped, per criterion (too_uncertain: E >= E_max; too_certain: E <= E_min; redundant: the cosine filter); cema and eata only, null otherwise",
        "selected_accuracy": "the method's own online accuracy on the samples it selected (null when none): what is left for a teacher to correct there",
        "teacher_diagnosis": "with --diagnose-teacher (cema, random_upload, uncertain_upload): on the uploaded and on the dropped samples, the edge's and the teacher's accuracy (the cloud's foundation before that batch's round) and the fraction where the teacher is right and the edge wrong; null otherwise",
        "records": "every (method, stream) result is also in streams/<method>/<stream>.json beside this file, with the configuration it was measured under; `cema bench --resume` reuses them",
        "resumed": outcome.resumed,
        "seconds": report.seconds,
    });
    write_json(&args.out.join("manifest.json"), &manifest, "--out")?;

    let figures = crate::plots::write_all(&results_json, &args.out).run_err("plots")?;
    print!("{}", report.table());
    if !ctx.quiet {
        for f in figures {
            eprintln!("wrote {}", f.display());
        }
    }
    Ok(())
}
