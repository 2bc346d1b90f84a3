//! `cema cloud`: the cloud service (docs/protocol.md). Prints one JSON line
//! `{"listening": "HOST:PORT"}` on stdout once it accepts connections (so scripts and `cema demo`
//! can use port 0), logs on stderr, stops cleanly on SIGINT/SIGTERM.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use cema_adapt::CloudConfig;
use cema_cloud::{Cloud, CloudOptions, HttpLimits, StoreError};

use crate::exit::{CliError, ResultExt};

use super::Context;

/// Runs the cloud service: per-device CEMA sessions over HTTP, durable in --data-dir.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on (port 0: any free port, printed on stdout).
    #[arg(long, default_value = "127.0.0.1:7878")]
    pub listen: SocketAddr,
    /// Folder of the session store (cloud.redb); sessions resume from it after a restart.
    /// (`--data-dir` elsewhere is a dataset's folder; here it is an old name of this flag.)
    #[arg(long, alias = "data-dir", default_value = "runs/cloud")]
    pub store_dir: PathBuf,
    /// Keep the sessions in NATS JetStream at this URL instead of --store-dir (the fleet's
    /// stream and buckets for this model; not while fleet workers serve it).
    #[arg(long, value_name = "URL")]
    pub store_nats: Option<String>,
    /// The edge model whose norm states this cloud serves (its card name is the model id).
    #[arg(long, default_value = "models/edge.safetensors")]
    pub edge: PathBuf,
    /// The foundation model.
    #[arg(long, default_value = "models/foundation.safetensors")]
    pub foundation: PathBuf,
    /// A registered device as ID:TOKEN (repeatable).
    #[arg(long = "device", value_name = "ID:TOKEN")]
    pub devices: Vec<String>,
    /// A file of registered devices, one `ID TOKEN` per line (# comments).
    #[arg(long)]
    pub devices_file: Option<PathBuf>,
    /// Worker threads running adaptation rounds.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Most sessions whose ready rounds a worker runs together, every model step batched across
    /// them (1: one at a time). Same results; on the CPU no faster (see docs/results).
    #[arg(long, default_value_t = 1)]
    pub batch_sessions: usize,
    /// Hard limit on a request body, bytes.
    #[arg(long, default_value_t = 8 << 20)]
    pub max_body: usize,
    /// Uploads one session may have queued before the cloud answers 429.
    #[arg(long, alias = "max-queued", default_value_t = 64)]
    pub max_queued_uploads: usize,
    /// CEMA's cloud batch B.
    #[arg(long, default_value_t = 32)]
    pub cloud_batch: usize,
    /// CEMA's student (distillation) learning rate (as `cema bench --cema-student-lr`).
    #[arg(long, alias = "student-lr", default_value_t = 0.0025)]
    pub cema_student_lr: f64,
    /// CEMA's foundation learning rate (as `cema bench --cema-foundation-lr`).
    #[arg(long, alias = "foundation-lr", default_value_t = 0.00025)]
    pub cema_foundation_lr: f64,
    /// Seed of every session's replay sampler.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Fault injection: every round takes this many extra milliseconds (a slow cloud).
    #[arg(long, default_value_t = 0)]
    pub slow_ms: u64,
    /// Open connections at most; past it a new connection gets 503 `unavailable`.
    #[arg(long, default_value_t = HttpLimits::default().max_connections)]
    pub max_connections: usize,
    /// Seconds a client has to send a request's headers; an idle connection closes after it.
    #[arg(long, default_value_t = HttpLimits::default().header_timeout.as_secs())]
    pub header_timeout_s: u64,
    /// On SIGTERM/SIGINT, seconds in-flight requests get to finish before the cloud exits.
    #[arg(long, default_value_t = HttpLimits::default().drain.as_secs())]
    pub drain_s: u64,
}

/// The registered devices of `--device ID:TOKEN` and `--devices-file` (also for `cema gateway`).
pub fn parse_devices(
    flags: &[String],
    file: Option<&Path>,
) -> Result<HashMap<String, String>, CliError> {
    let mut devices = HashMap::new();
    let mut add = |id: &str, token: &str, what: &str| -> Result<(), CliError> {
        if id.is_empty() || token.is_empty() || id.contains('/') {
            return Err(CliError::usage(anyhow::anyhow!(
                "{what}: a device needs a non-empty id without '/' and a non-empty token"
            )));
        }
        devices.insert(id.to_string(), token.to_string());
        Ok(())
    };
    for d in flags {
        let (id, token) = d
            .split_once(':')
            .ok_or_else(|| CliError::usage(anyhow::anyhow!("--device {d}: expected ID:TOKEN")))?;
        add(id, token, &format!("--device {d}"))?;
    }
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .usage_err(format!("--devices-file {}", path.display()))?;
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut it = line.split_whitespace();
            let (Some(id), Some(token), None) = (it.next(), it.next(), it.next()) else {
                return Err(CliError::usage(anyhow::anyhow!(
                    "--devices-file {}:{}: expected `ID TOKEN`",
                    path.display(),
                    i + 1
                )));
            };
            add(
                id,
                token,
                &format!("--devices-file {}:{}", path.display(), i + 1),
            )?;
        }
    }
    if devices.is_empty() {
        return Err(CliError::usage(anyhow::anyhow!(
            "no devices registered: give --device ID:TOKEN or --devices-file"
        )));
    }
    Ok(devices)
}

pub fn check_file(path: &Path, flag: &str) -> Result<(), CliError> {
    if !path.is_file() {
        return Err(CliError::usage(anyhow::anyhow!(
            "{flag} {}: no such file",
            path.display()
        )));
    }
    Ok(())
}

pub fn run(args: Args, ctx: &Context) -> Result<(), CliError> {
    let devices = parse_devices(&args.devices, args.devices_file.as_deref())?;
    check_file(&args.edge, "--edge")?;
    check_file(&args.foundation, "--foundation")?;
    if args.cloud_batch == 0
        || args.workers == 0
        || args.batch_sessions == 0
        || args.max_connections == 0
    {
        return Err(CliError::usage(anyhow::anyhow!(
            "--cloud-batch, --workers, --batch-sessions and --max-connections must be positive"
        )));
    }
    if args.header_timeout_s == 0 {
        return Err(CliError::usage(anyhow::anyhow!(
            "--header-timeout-s must be positive"
        )));
    }
    let limits = HttpLimits {
        max_connections: args.max_connections,
        header_timeout: Duration::from_secs(args.header_timeout_s),
        drain: Duration::from_secs(args.drain_s),
        ..HttpLimits::default()
    };
    let options = CloudOptions {
        devices,
        config: cloud_config(
            args.cloud_batch,
            args.cema_student_lr,
            args.cema_foundation_lr,
            args.seed,
        ),
        workers: args.workers,
        batch_sessions: args.batch_sessions,
        max_body: args.max_body,
        max_queued: args.max_queued_uploads,
        round_delay: std::time::Duration::from_millis(args.slow_ms),
        device: ctx.device.clone(),
        ..CloudOptions::new(
            args.edge.clone(),
            args.foundation.clone(),
            args.store_dir.clone(),
        )
    };
    let opened = match &args.store_nats {
        None => Cloud::open(options),
        Some(url) => {
            // Connected first (named by the model's id): a NATS server that does not answer is
            // the flag's fault, exit 2.
            let card = cema_model::Model::load(&args.edge, &cema_model::cpu())
                .usage_err(format!("--edge {}", args.edge.display()))?
                .card;
            let store = cema_fleet::JetStreamStore::connect(url, &card.name)
                .usage_err(format!("--store-nats {url}"))?;
            Cloud::open_with(options, move || {
                Ok(std::sync::Arc::new(store) as std::sync::Arc<dyn cema_cloud::SessionStore>)
            })
        }
    };
    let cloud = opened.map_err(|e| {
        if e.downcast_ref::<cema_adapt::AdaptError>().is_some() {
            CliError::usage(e.context("--edge / --foundation"))
        } else if e.downcast_ref::<StoreError>().is_some() {
            // A store that cannot be opened (empty, corrupted, unwritable) is bad input: exit 2.
            CliError::usage(e.context(format!("--store-dir {}", args.store_dir.display())))
        } else {
            CliError::from(e.context("starting the cloud"))
        }
    })?;
    let rt = runtime()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .usage_err(format!("--listen {}", args.listen))?;
        let addr = announce(&listener)?;
        tracing::info!(%addr, model = cloud.model_id, "cloud listening");
        cema_cloud::http::serve_with(listener, cloud, limits, shutdown_signal())
            .await
            .context("serving")?;
        tracing::info!("cloud stopped");
        Ok(())
    })
}

/// The async runtime the network commands serve on.
pub fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?)
}

/// Prints `{"listening": "HOST:PORT"}` on stdout (so scripts can listen on port 0).
pub fn announce(listener: &tokio::net::TcpListener) -> Result<SocketAddr, CliError> {
    let addr = listener.local_addr().context("local address")?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{}",
        serde_json::json!({ "listening": addr.to_string() })
    )
    .and_then(|()| out.flush())
    .context("stdout")?;
    Ok(addr)
}

/// CEMA's cloud settings from the flags `cema cloud` and `cema worker` share.
pub fn cloud_config(batch: usize, student_lr: f64, foundation_lr: f64, seed: u64) -> CloudConfig {
    CloudConfig {
        batch,
        student_lr,
        foundation_lr,
        seed,
        ..CloudConfig::default()
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
