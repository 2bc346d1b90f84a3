//! `cema load`: many synthetic edges against one `cema cloud` child for a bounded time. Each
//! device uploads B real test images per interval (one full cloud batch, so upload `k` yields
//! version `k + 1`) and holds its update stream; reported: acknowledged upload throughput, 429s,
//! update delivery latency (upload acknowledged → that version arrives on the device's stream),
//! the cloud's resident memory before and after.

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use cema_data::Split;
use cema_edge::{ClientError, CloudClient};
use cema_model::{cpu, Model};
use cema_wire::{ErrorCode, FrameDecoder, UploadStamp};
use serde_json::{json, Value};

use crate::exit::{CliError, ResultExt};

use super::children::{spawn_cloud, spawn_fleet, Reaper};
use super::{write_json, Context, DataArgs};

/// Load test: N synthetic edges uploading to one cloud for a bounded time (loopback only).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Synthetic edge devices, each with its own session.
    #[arg(long, default_value_t = 50)]
    pub edges: usize,
    /// How long the edges upload, seconds.
    #[arg(long, default_value_t = 30)]
    pub seconds: u64,
    /// Each edge uploads one cloud batch this often, milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub interval_ms: u64,
    /// Cloud worker threads.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// The cloud's `--batch-sessions`: most sessions' rounds in one batched pass.
    #[arg(long, default_value_t = 1)]
    pub batch_sessions: usize,
    /// After the one-process cloud, run the same load against a local fleet (issue #21): a
    /// nats-server, `--workers` worker processes and `--gateways` gateways; report both.
    #[arg(long)]
    pub fleet: bool,
    /// The fleet's gateways (with `--fleet`).
    #[arg(long, default_value_t = 2)]
    pub gateways: usize,
    /// The edge model the cloud serves.
    #[arg(long, default_value = "models/edge.safetensors")]
    pub edge: PathBuf,
    /// The cloud's foundation model.
    #[arg(long, default_value = "models/foundation.safetensors")]
    pub foundation: PathBuf,
    /// The images the edges upload: this dataset's test split.
    #[command(flatten)]
    pub data: DataArgs,
    /// Write the report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// From the cloud's session list: sessions that ran a round, the bytes all sessions say they
/// hold besides the shared models (state, and replay pixels), and the rounds all have run.
fn session_memory(url: &str) -> (u64, u64, u64, u64) {
    let body = ureq::get(&format!("{url}/v1/sessions"))
        .call()
        .ok()
        .and_then(|r| r.into_body().read_to_string().ok())
        .unwrap_or_default();
    let sessions: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap_or_default();
    let sum = |k: &str| sessions.iter().filter_map(|s| s[k].as_u64()).sum::<u64>();
    let rounded = sessions
        .iter()
        .filter(|s| s["rounds"].as_u64().is_some_and(|r| r > 0))
        .count() as u64;
    (
        rounded,
        sum("session_bytes"),
        sum("replay_bytes"),
        sum("rounds"),
    )
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    Some(sorted[i])
}

#[derive(Default)]
struct Tally {
    acked: u64,
    overloaded: u64,
    errors: u64,
    /// (device, version) → when the upload that yields it was acknowledged.
    acked_at: HashMap<(usize, u64), Instant>,
    latencies_ms: Vec<f64>,
}

pub fn run(args: Args, ctx: &Context) -> Result<(), CliError> {
    if args.edges == 0 || args.seconds == 0 || args.workers == 0 || args.gateways == 0 {
        return Err(CliError::usage(anyhow::anyhow!(
            "--edges, --seconds, --workers and --gateways must be positive"
        )));
    }
    let model =
        Model::load(&args.edge, &cpu()).usage_err(format!("--edge {}", args.edge.display()))?;
    if !args.foundation.is_file() {
        return Err(CliError::usage(anyhow::anyhow!(
            "--foundation {}: no such file",
            args.foundation.display()
        )));
    }
    let test = args.data.load_for(Split::Test, &model)?;
    args.data.check_model(&model, &test, "--edge", &args.edge)?;
    let foundation = Model::load(&args.foundation, &cpu())
        .usage_err(format!("--foundation {}", args.foundation.display()))?;
    args.data
        .check_model(&foundation, &test, "--foundation", &args.foundation)?;
    drop(foundation);
    let state = model.norm_state(&model.card.name, 0).to_bytes();
    let batch = 32usize; // the cloud's default B: one upload, one round, one version
    let per = test.image_size();
    let i = &model.card.input;
    let stamp = UploadStamp {
        model_id: model.card.name.clone(),
        height: i.height as u16,
        width: i.width as u16,
        channels: i.channels as u8,
    };

    let tmp = tempfile::tempdir().context("temporary folder")?;
    let exe = std::env::current_exe().context("locating the cema binary")?;
    let devices: Vec<(String, String)> = (0..args.edges)
        .map(|k| (format!("load-{k}"), format!("tok-{k}")))
        .collect();
    let dev_file = tmp.path().join("devices.txt");
    let listing: String = devices.iter().map(|(d, t)| format!("{d} {t}\n")).collect();
    std::fs::write(&dev_file, listing).context("devices file")?;
    let load = Load {
        args: &args,
        exe: &exe,
        dir: tmp.path(),
        dev_file: &dev_file,
        devices: &devices,
        state: &state,
        stamp: &stamp,
        images: &test.images,
        per,
        batch,
        quiet: ctx.quiet,
    };
    let cloud = load.drive(None)?;
    let report = if args.fleet {
        let fleet = load.drive(Some(args.gateways))?;
        let ratio = |k: &str| match (fleet[k].as_f64(), cloud[k].as_f64()) {
            (Some(f), Some(c)) if c > 0.0 => json!(f / c),
            _ => Value::Null,
        };
        json!({
            "cloud": cloud,
            "fleet": fleet,
            "fleet_over_cloud": {
                "uploads_per_s": ratio("uploads_per_s"),
                "cloud_samples_per_s": ratio("cloud_samples_per_s"),
                "update_latency_ms_p50": ratio("update_latency_ms_p50"),
                "rss_kib_end": ratio("cloud_rss_kib_end"),
            },
        })
    } else {
        cloud
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&report).context("report")?
    );
    if let Some(p) = &args.json {
        write_json(p, &report, "--json")?;
    }
    Ok(())
}

/// One load run's fixed inputs: the devices, their first norm state, the images they upload.
struct Load<'a> {
    args: &'a Args,
    exe: &'a std::path::Path,
    dir: &'a std::path::Path,
    dev_file: &'a std::path::Path,
    devices: &'a [(String, String)],
    state: &'a [u8],
    stamp: &'a UploadStamp,
    images: &'a [u8],
    per: usize,
    batch: usize,
    quiet: bool,
}

impl Load<'_> {
    /// Runs the load against a one-process cloud (`None`) or a fleet with this many gateways.
    fn drive(&self, gateways: Option<usize>) -> Result<Value, CliError> {
        let args = self.args;
        let (exe, batch, per) = (self.exe, self.batch, self.per);
        let mut reaper = Reaper::default();
        let models: Vec<std::ffi::OsString> = vec![
            "--edge".into(),
            args.edge.clone().into(),
            "--foundation".into(),
            args.foundation.clone().into(),
        ];
        let registered: Vec<std::ffi::OsString> = vec![
            "--devices-file".into(),
            self.dev_file.into(),
            "--max-queued-uploads".into(),
            "8".into(),
        ];
        // Declared after the reaper: dropped (nats-server stopped) before it on an early return,
        // which only makes the children's shutdown quicker.
        let fleet;
        let (urls, pids, kind) = match gateways {
            None => {
                let mut cloud_args: Vec<std::ffi::OsString> =
                    vec!["--workers".into(), args.workers.to_string().into()];
                cloud_args.extend([
                    "--batch-sessions".into(),
                    args.batch_sessions.to_string().into(),
                ]);
                cloud_args.extend(["--store-dir".into(), self.dir.join("cloud").into()]);
                cloud_args.extend(registered);
                cloud_args.extend(models);
                let (url, pid) = spawn_cloud(exe.as_os_str(), cloud_args, &mut reaper)
                    .map_err(CliError::failed)?;
                (vec![url; self.devices.len()], vec![pid], "cloud")
            }
            Some(g) => {
                let mut gateway_args: Vec<std::ffi::OsString> =
                    vec!["--edge".into(), args.edge.clone().into()];
                gateway_args.extend(registered);
                fleet = spawn_fleet(
                    exe.as_os_str(),
                    &self.dir.join("nats"),
                    g,
                    args.workers,
                    &gateway_args,
                    &models,
                    &mut reaper,
                )
                .map_err(|e| CliError::usage(e.context("--fleet")))?;
                let mut pids = fleet.pids.clone();
                pids.extend(fleet.nats.pid());
                let urls = (0..self.devices.len())
                    .map(|k| fleet.cloud_for(k))
                    .collect();
                (urls, pids, "fleet")
            }
        };
        let url = urls[0].split(',').next().expect("a URL").to_string();
        let rss = |pids: &[u32]| pids.iter().map(|&p| rss_kib(p)).sum::<Option<u64>>();
        let rss_idle = rss(&pids);

        let tally = Arc::new(Mutex::new(Tally::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let t0 = Instant::now();
        let mut threads = Vec::new();
        for (k, (d, t)) in self.devices.iter().enumerate() {
            let client = CloudClient::new(&urls[k], d, t, Duration::from_secs(15));
            if let Err(e) = client.open_session(self.state) {
                return Err(CliError::failed(anyhow::anyhow!("{d}: {e}")));
            }
            // Downlink: time each version's arrival.
            let (c2, tally2, stop2) = (client.clone(), tally.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                let Ok(mut s) = c2.updates(0) else { return };
                let mut dec = FrameDecoder::new(1 << 24);
                let mut buf = vec![0u8; 1 << 16];
                while !stop2.load(Ordering::Acquire) {
                    let n = match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    dec.push(&buf[..n]);
                    while let Ok(Some(f)) = dec.next_frame() {
                        if f.is_empty() {
                            continue;
                        }
                        let Ok(st) = cema_model::NormState::from_bytes(&f, "frame") else {
                            continue;
                        };
                        let now = Instant::now();
                        let mut t = tally2.lock().expect("tally");
                        if let Some(at) = t.acked_at.remove(&(k, st.version)) {
                            t.latencies_ms.push((now - at).as_secs_f64() * 1e3);
                        }
                    }
                }
            }));
            // Uplink: one cloud batch of real images per interval, in sequence.
            let (tally3, stop3) = (tally.clone(), stop.clone());
            let (images, stamp) = (self.images.to_vec(), self.stamp.clone());
            let (secs, interval) = (args.seconds, Duration::from_millis(args.interval_ms));
            threads.push(std::thread::spawn(move || {
                let mut seq = 0u64;
                // Spread the devices over the interval.
                std::thread::sleep(interval.mul_f64(k as f64 / 50.0).min(interval));
                while t0.elapsed() < Duration::from_secs(secs) && !stop3.load(Ordering::Acquire) {
                    let start = ((seq as usize * batch + k * 977) % (10_000 - batch)) * per;
                    let body = stamp.encode(seq, 0, &images[start..start + batch * per], None);
                    let sent = Instant::now();
                    match client.upload(&body, false) {
                        Ok(_) => {
                            let mut t = tally3.lock().expect("tally");
                            t.acked += 1;
                            t.acked_at.insert((k, seq + 1), Instant::now());
                            seq += 1;
                        }
                        Err(ClientError::Refused { error, .. })
                            if error.error_code() == Some(ErrorCode::Overloaded) =>
                        {
                            tally3.lock().expect("tally").overloaded += 1;
                        }
                        Err(_) => tally3.lock().expect("tally").errors += 1,
                    }
                    std::thread::sleep(interval.saturating_sub(sent.elapsed()));
                }
            }));
        }
        if !self.quiet {
            eprintln!(
                "{} edges uploading to the {kind} ({url} …) for {} s …",
                args.edges, args.seconds
            );
        }
        // The cloud's own pace: rounds finished over the last three quarters of the upload time (the
        // first quarter fills the queues), each learning from B new samples. Rounds batched across
        // sessions finish together, so a window shorter than a few batches miscounts them.
        let warm = Duration::from_secs_f64(args.seconds as f64 / 4.0);
        std::thread::sleep(warm);
        let (rounds_before, window_start) = (session_memory(&url).3, Instant::now());
        std::thread::sleep(Duration::from_secs(args.seconds).saturating_sub(t0.elapsed()));
        let rounds_in_time = session_memory(&url).3 - rounds_before;
        let window_s = window_start.elapsed().as_secs_f64();
        // Let versions for the last acknowledged uploads arrive, then stop.
        std::thread::sleep(Duration::from_secs(5));
        let rss_end = rss(&pids);
        let held = session_memory(&url);
        stop.store(true, Ordering::Release);
        reaper.terminate(Duration::from_secs(10));
        for th in threads {
            let _ = th.join();
        }

        let t = tally.lock().expect("tally");
        let mut lat = t.latencies_ms.clone();
        lat.sort_by(|a, b| a.total_cmp(b));
        let elapsed = args.seconds as f64;
        Ok(json!({
            "target": kind,
            "gateways": gateways,
            "edges": args.edges,
            "seconds": args.seconds,
            "interval_ms": args.interval_ms,
            "workers": args.workers,
            "batch_sessions": args.batch_sessions,
            "samples_per_upload": batch,
            "uploads_acked": t.acked,
            "uploads_per_s": t.acked as f64 / elapsed,
            "samples_per_s": (t.acked as usize * batch) as f64 / elapsed,
            "cloud_rounds_in_window": rounds_in_time,
            "cloud_window_s": window_s,
            "cloud_samples_per_s": (rounds_in_time as usize * batch) as f64 / window_s,
            "overloaded_429": t.overloaded,
            "errors": t.errors,
            "versions_delivered": lat.len(),
            "update_latency_ms_p50": percentile(&lat, 0.5),
            "update_latency_ms_p99": percentile(&lat, 0.99),
            // Growth over the run includes each worker's buffers (fixed, hundreds of MiB once the
            // first rounds ran), so it is not a per-session cost: bench/session_memory.sh takes
            // the difference between two edge counts for that.
            "cloud_rss_kib_idle": rss_idle,
            "cloud_rss_kib_end": rss_end,
            "sessions_with_rounds": held.0,
            "session_state_bytes": held.1,
            "replay_bytes": held.2,
        }))
    }
}
