//! `cema worker`: a fleet worker (issue #21): owns slots of devices by lease, runs their rounds,
//! commits snapshots and publishes norm states over NATS JetStream. Prints `{"worker": ID}` on
//! stdout once connected; stops on SIGINT/SIGTERM after the round in progress, giving its slots
//! back. With `--listen`, serves `/metrics` and `/health` and says where in that line.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use cema_cloud::metrics::Metrics;
use cema_fleet::{FleetConfig, Worker, WorkerOptions};

use crate::exit::{CliError, ResultExt};

use super::cloud::{check_file, cloud_config, runtime, shutdown_signal};
use super::Context;

/// Runs a fleet worker (with `cema gateway` in front of the same NATS server).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The NATS server (JetStream enabled).
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub nats: String,
    /// This worker's id, unique among the live workers.
    #[arg(long)]
    pub id: String,
    /// The edge model.
    #[arg(long, default_value = "models/edge.safetensors")]
    pub edge: PathBuf,
    /// The foundation model.
    #[arg(long, default_value = "models/foundation.safetensors")]
    pub foundation: PathBuf,
    /// CEMA's cloud batch B.
    #[arg(long, default_value_t = 32)]
    pub cloud_batch: usize,
    /// CEMA's student (distillation) learning rate.
    #[arg(long, default_value_t = 0.0025)]
    pub cema_student_lr: f64,
    /// CEMA's foundation learning rate.
    #[arg(long, default_value_t = 0.00025)]
    pub cema_foundation_lr: f64,
    /// Seed of every session's replay sampler.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Seconds a slot lease lasts without renewal (must match the gateways').
    #[arg(long, default_value_t = 6.0)]
    pub lease_s: f64,
    /// Serve `/metrics` (Prometheus) and `/health` here (port 0: any free port, printed).
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// Fault injection: every round takes this many extra milliseconds.
    #[arg(long, default_value_t = 0)]
    pub slow_ms: u64,
}

/// The fleet settings of `--lease-s`, checked.
pub fn fleet_config(lease_s: f64) -> Result<FleetConfig, CliError> {
    if !(lease_s.is_finite() && (0.3..=3600.0).contains(&lease_s)) {
        return Err(CliError::usage(anyhow::anyhow!(
            "--lease-s {lease_s}: expected seconds in [0.3, 3600]"
        )));
    }
    Ok(FleetConfig {
        lease: Duration::from_secs_f64(lease_s),
        ..FleetConfig::default()
    })
}

pub fn run(args: Args, ctx: &Context) -> Result<(), CliError> {
    check_file(&args.edge, "--edge")?;
    check_file(&args.foundation, "--foundation")?;
    if args.id.is_empty() || args.cloud_batch == 0 {
        return Err(CliError::usage(anyhow::anyhow!(
            "--id must be non-empty and --cloud-batch positive"
        )));
    }
    let options = WorkerOptions {
        nats: args.nats.clone(),
        id: args.id.clone(),
        edge_model: args.edge.clone(),
        foundation: args.foundation.clone(),
        config: cloud_config(
            args.cloud_batch,
            args.cema_student_lr,
            args.cema_foundation_lr,
            args.seed,
        ),
        fleet: fleet_config(args.lease_s)?,
        round_delay: Duration::from_millis(args.slow_ms),
        device: ctx.device.clone(),
    };
    let rt = runtime()?;
    rt.block_on(async move {
        let metrics = Arc::new(Metrics::default());
        let mut hello = serde_json::json!({ "worker": args.id });
        if let Some(listen) = args.listen {
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .usage_err(format!("--listen {listen}"))?;
            hello["listening"] = listener
                .local_addr()
                .context("local address")?
                .to_string()
                .into();
            tokio::spawn(cema_cloud::http::serve_metrics(
                listener,
                metrics.clone(),
                shutdown_signal(),
            ));
        }
        Worker::run(options, metrics, async move {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{hello}").and_then(|()| out.flush());
            drop(out);
            shutdown_signal().await
        })
        .await
        .usage_err(format!("--nats {}", args.nats))
    })
}
