//! `cema demo`: one cloud and N edges as separate OS processes on loopback, a live view, and a
//! final table. Children are this same binary (`cema cloud`, `cema edge`); they are stopped
//! (SIGTERM, then SIGKILL) whatever happens, so the demo leaves nothing running.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use cema_corrupt::Corruption;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};

use crate::exit::{CliError, ResultExt};

use super::children::{spawn_cloud, spawn_fleet, Reaper};
use super::{write_json, Context, DataArgs};

/// One cloud and N edges on loopback, each edge on its own corrupted stream (Fashion-MNIST-C by
/// default; `--dataset` for CIFAR-10/100 with models trained on them): live view and final table
/// (the README's first command).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Number of edge devices.
    #[arg(long, default_value_t = 3)]
    pub edges: usize,
    /// Corruption of each edge's stream, comma-separated, used in turn.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "gaussian_noise,fog,contrast"
    )]
    pub corruptions: Vec<Corruption>,
    /// The corruptions' severity, 1–5.
    #[arg(long, default_value_t = 5)]
    pub severity: u8,
    /// Images per edge stream.
    #[arg(long, default_value_t = 2000)]
    pub limit: usize,
    /// Milliseconds between an edge's batches: a camera's pace, which one 2-core cloud keeps up
    /// with for 3 edges, so the cloud's versions arrive while the streams run (0: as fast as
    /// the edges go, and the streams end before the cloud has adapted much).
    #[arg(long, default_value_t = 1200)]
    pub pace_ms: u64,
    /// Each edge's uplink budget, kilobits per second (default: unlimited).
    #[arg(long)]
    pub uplink_kbps: Option<f64>,
    /// How every edge picks its uploads (as `cema edge`).
    #[command(flatten)]
    pub pick: super::edge::SelectArgs,
    /// Cloud worker threads.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Run the cloud as a fleet instead (issue #21): a local nats-server (needs `nats-server` on
    /// PATH: apt-get install nats-server), 3 `cema worker`s and 2 `cema gateway`s; each edge
    /// knows both gateways.
    #[arg(long)]
    pub fleet: bool,
    /// The edge model every edge runs (and the cloud serves).
    #[arg(long, default_value = "models/edge.safetensors")]
    pub edge: PathBuf,
    /// The cloud's foundation model.
    #[arg(long, default_value = "models/foundation.safetensors")]
    pub foundation: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    /// Folder in the CIFAR-10-C layout the edges read their corruption from, if it holds it (else
    /// each edge generates it from the clean test set). Default: data/<dataset>-c.
    #[arg(long)]
    pub corrupted: Option<PathBuf>,
    /// The cloud's session store (default: a temporary folder, removed afterwards).
    #[arg(long)]
    pub cloud_data: Option<PathBuf>,
    /// Write `{edges: [...]}` here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

fn pct(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_f64)
        .map_or("–".into(), |x| format!("{:.1}%", 100.0 * x))
}

fn num(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// The final table (80 columns) and a sentence saying what happened.
fn print_table(edges: &[Value], limit: usize, seconds: f64) {
    println!(
        "\n{:<6} {:<14} {:>8} {:>7} {:>6} {:>7} {:>7} {:>7} {:>7}",
        "device",
        "corruption",
        "accuracy",
        "source",
        "gain",
        "upload",
        "version",
        "KB up",
        "KB down"
    );
    let mut gains = Vec::new();
    for e in edges {
        let gain = match (e["accuracy"].as_f64(), e["source_accuracy"].as_f64()) {
            (Some(a), Some(s)) => {
                gains.push(100.0 * (a - s));
                format!("{:+.1}", 100.0 * (a - s))
            }
            _ => "–".into(),
        };
        println!(
            "{:<6} {:<14} {:>8} {:>7} {:>6} {:>7} {:>7} {:>7.0} {:>7.0}",
            e["device"].as_str().unwrap_or(""),
            e["corruption"].as_str().unwrap_or(""),
            pct(e, "accuracy"),
            pct(e, "source_accuracy"),
            gain,
            pct(e, "upload_fraction"),
            num(e, "norm_version"),
            num(e, "bytes_up") as f64 / 1024.0,
            num(e, "bytes_down") as f64 / 1024.0,
        );
    }
    let upload = edges
        .iter()
        .filter_map(|e| e["upload_fraction"].as_f64())
        .sum::<f64>()
        / edges.len().max(1) as f64;
    println!(
        "\n{} edges × {limit} images in {seconds:.0} s; mean gain {:+.1} points, mean upload \
         {:.1}%.",
        edges.len(),
        gains.iter().sum::<f64>() / gains.len().max(1) as f64,
        100.0 * upload,
    );
    println!(
        "accuracy: online, on each edge's corrupted stream. source: the same model,\n\
         unadapted, on the same images. gain: accuracy - source, in points. upload:\n\
         share of images sent to the cloud. version: norm states received from it."
    );
}

pub fn run(args: Args, ctx: &Context) -> Result<(), CliError> {
    if args.edges == 0 || args.corruptions.is_empty() {
        return Err(CliError::usage(anyhow::anyhow!(
            "--edges and --corruptions must not be empty"
        )));
    }
    let pick = args.pick.to_args()?;
    for (p, flag) in [(&args.edge, "--edge"), (&args.foundation, "--foundation")] {
        if !p.is_file() {
            return Err(CliError::usage(anyhow::anyhow!(
                "{flag} {}: no such file",
                p.display()
            )));
        }
    }
    // Checked here, before any process starts, so that a model of another dataset is a usage
    // error naming the flag rather than N failed edges after the cloud came up.
    let mut test = None;
    for (p, flag) in [(&args.edge, "--edge"), (&args.foundation, "--foundation")] {
        let model = cema_model::Model::load(p, &cema_model::cpu())
            .usage_err(format!("{flag} {}", p.display()))?;
        // Loaded for the edge model (a folder of images takes its input size).
        if test.is_none() {
            test = Some(args.data.load_for(cema_data::Split::Test, &model)?);
        }
        args.data
            .check_model(&model, test.as_ref().expect("loaded"), flag, p)?;
    }
    drop(test);
    let exe = std::env::current_exe().context("locating the cema binary")?;
    let tmp = tempfile::tempdir().context("temporary folder")?;
    let cloud_data = args
        .cloud_data
        .clone()
        .unwrap_or_else(|| tmp.path().join("cloud"));
    let devices: Vec<(String, String, Corruption)> = (0..args.edges)
        .map(|i| {
            (
                format!("edge-{}", i + 1),
                format!("token-{}-{}", i + 1, std::process::id()),
                args.corruptions[i % args.corruptions.len()],
            )
        })
        .collect();

    // Declared before the reaper, so that on every path the children stop before nats-server.
    let fleet;
    let mut reaper = Reaper::default();
    let mut registered: Vec<std::ffi::OsString> = Vec::new();
    for (d, t, _) in &devices {
        registered.extend(["--device".into(), format!("{d}:{t}").into()]);
    }
    let models: Vec<std::ffi::OsString> = vec![
        "--edge".into(),
        args.edge.clone().into(),
        "--foundation".into(),
        args.foundation.clone().into(),
    ];
    let clouds: Vec<String> = if args.fleet {
        let mut gateway_args: Vec<std::ffi::OsString> =
            vec!["--edge".into(), args.edge.clone().into()];
        gateway_args.extend(registered);
        fleet = spawn_fleet(
            exe.as_os_str(),
            &cloud_data,
            2,
            3,
            &gateway_args,
            &models,
            &mut reaper,
        )
        .map_err(|e| CliError::usage(e.context("--fleet")))?;
        if !ctx.quiet {
            eprintln!(
                "fleet: nats-server {}, 3 workers, gateways {}",
                fleet.nats.url(),
                fleet.gateways.join(" ")
            );
        }
        (0..devices.len()).map(|i| fleet.cloud_for(i)).collect()
    } else {
        let mut cloud_args: Vec<std::ffi::OsString> = vec!["--store-dir".into(), cloud_data.into()];
        cloud_args.extend(models);
        cloud_args.extend(["--workers".into(), args.workers.to_string().into()]);
        cloud_args.extend(registered);
        let (url, _) = spawn_cloud(exe.as_os_str(), cloud_args, &mut reaper)?;
        if !ctx.quiet {
            eprintln!("live dashboard while the demo runs: {url}/");
        }
        vec![url; devices.len()]
    };
    let servers = reaper.0.len();

    let states: Arc<Mutex<Vec<Value>>> = Arc::new(Mutex::new(vec![Value::Null; devices.len()]));
    let mut readers = Vec::new();
    for (i, (d, t, c)) in devices.iter().enumerate() {
        let mut cmd = Command::new(&exe);
        cmd.env("CEMA_PRECISION", cema_model::precision().to_string())
            .arg("-q")
            .args(["edge", "--cloud", &clouds[i], "--device", d, "--token", t])
            .args([
                "--corruption",
                c.name(),
                "--severity",
                &args.severity.to_string(),
            ])
            .args([
                "--limit",
                &args.limit.to_string(),
                "--pace-ms",
                &args.pace_ms.to_string(),
            ])
            .arg("--edge")
            .arg(&args.edge)
            .args(["--compare-source", "--status-lines", "--report-accuracy"]);
        if let Some(k) = args.uplink_kbps {
            cmd.args(["--uplink-kbps", &k.to_string()]);
        }
        cmd.args(&pick);
        cmd.args(["--dataset", args.data.name()]);
        if let Some(dir) = &args.data.data_dir {
            cmd.arg("--data-dir").arg(dir);
        }
        if let Some(dir) = &args.corrupted {
            cmd.arg("--corrupted").arg(dir);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting `cema edge` {d}"))?;
        let out = child.stdout.take().expect("piped");
        reaper.0.push(child);
        let states = states.clone();
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    states.lock().expect("states lock")[i] = v;
                }
            }
        }));
    }

    let multi = MultiProgress::with_draw_target(if ctx.quiet {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    });
    // 80 columns: prefix 21, bar 12, count 9, message ≤ 34.
    let style = ProgressStyle::with_template("{prefix:<21} {bar:12} {pos:>4}/{len:<4} {msg}")
        .expect("template");
    let bars: Vec<ProgressBar> = devices
        .iter()
        .map(|(d, _, c)| {
            let b = multi.add(ProgressBar::new(args.limit as u64));
            b.set_style(style.clone());
            b.set_prefix(format!("{d} {}", c.name()));
            b
        })
        .collect();
    let started = Instant::now();
    loop {
        {
            let s = states.lock().expect("states lock");
            for (b, v) in bars.iter().zip(s.iter()) {
                if v.is_null() {
                    continue;
                }
                b.set_position(num(v, "images"));
                b.set_message(format!(
                    "acc {} src {} up {} v{}",
                    pct(v, "accuracy"),
                    pct(v, "source_accuracy"),
                    pct(v, "upload_fraction"),
                    num(v, "norm_version"),
                ));
            }
        }
        let edges_done = reaper.0[servers..]
            .iter_mut()
            .all(|c| matches!(c.try_wait(), Ok(Some(_))));
        if edges_done {
            break;
        }
        for c in &mut reaper.0[..servers] {
            if let Ok(Some(status)) = c.try_wait() {
                return Err(CliError::failed(anyhow::anyhow!(
                    "a cloud process exited early ({status})"
                )));
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    for r in readers {
        let _ = r.join();
    }
    for b in &bars {
        b.finish();
    }
    let edge_status: Vec<_> = reaper.0[servers..]
        .iter_mut()
        .map(|c| c.wait().map(|s| s.success()).unwrap_or(false))
        .collect();
    reaper.terminate(Duration::from_secs(5));

    let states = states.lock().expect("states lock").clone();
    let edges: Vec<Value> = states
        .iter()
        .zip(&devices)
        .map(|(v, (d, _, c))| {
            json!({
                "device": d,
                "corruption": c.name(),
                "images": num(v, "images"),
                "accuracy": v.get("accuracy").cloned().unwrap_or(Value::Null),
                "source_accuracy": v.get("source_accuracy").cloned().unwrap_or(Value::Null),
                "upload_fraction": v.get("upload_fraction").cloned().unwrap_or(Value::Null),
                "bytes_up": num(v, "bytes_up"),
                "bytes_down": num(v, "bytes_down"),
                "norm_version": num(v, "norm_version"),
                "dropped": num(v, "dropped"),
                "updates_rejected": num(v, "updates_rejected"),
            })
        })
        .collect();
    print_table(&edges, args.limit, started.elapsed().as_secs_f64());
    if let Some(path) = &args.json {
        write_json(
            path,
            &json!({ "edges": edges, "seconds": started.elapsed().as_secs_f64() }),
            "--json",
        )?;
    }
    if edge_status.iter().any(|ok| !ok) {
        return Err(CliError::failed(anyhow::anyhow!(
            "an edge process failed (see its message above)"
        )));
    }
    drop(tmp);
    Ok(())
}
