//! `cema gateway`: a stateless front end of the fleet (issue #21): protocol v1 for edges, uploads
//! published to NATS JetStream, update streams from the norm-state bucket. Prints
//! `{"listening": "HOST:PORT"}` on stdout once it accepts connections, like `cema cloud`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use cema_cloud::HttpLimits;
use cema_fleet::{Gateway, GatewayOptions};

use crate::exit::{CliError, ResultExt};

use super::cloud::{announce, check_file, parse_devices, runtime, shutdown_signal};
use super::Context;

/// Runs a fleet gateway: edges talk to it as to `cema cloud`; workers (`cema worker`) learn.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The NATS server (JetStream enabled).
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub nats: String,
    /// Address to listen on (port 0: any free port, printed on stdout).
    #[arg(long, default_value = "127.0.0.1:7878")]
    pub listen: SocketAddr,
    /// The edge model whose norm states the fleet serves (its card name is the model id).
    #[arg(long, default_value = "models/edge.safetensors")]
    pub edge: PathBuf,
    /// A registered device as ID:TOKEN (repeatable).
    #[arg(long = "device", value_name = "ID:TOKEN")]
    pub devices: Vec<String>,
    /// A file of registered devices, one `ID TOKEN` per line (# comments).
    #[arg(long)]
    pub devices_file: Option<PathBuf>,
    /// Hard limit on a request body, bytes (at most the NATS server's max_payload).
    #[arg(long, default_value_t = 8 << 20)]
    pub max_body: usize,
    /// Uploads one device may have waiting for their rounds before the gateway answers 429.
    #[arg(long, default_value_t = 64)]
    pub max_queued_uploads: usize,
    /// Seconds a slot lease lasts (must match the workers').
    #[arg(long, default_value_t = 6.0)]
    pub lease_s: f64,
}

pub fn run(args: Args, _ctx: &Context) -> Result<(), CliError> {
    let devices = parse_devices(&args.devices, args.devices_file.as_deref())?;
    check_file(&args.edge, "--edge")?;
    let fleet = super::worker::fleet_config(args.lease_s)?;
    let options = GatewayOptions {
        nats: args.nats.clone(),
        edge_model: args.edge.clone(),
        devices,
        max_body: args.max_body,
        max_queued: args.max_queued_uploads,
        fleet,
    };
    let rt = runtime()?;
    rt.block_on(async move {
        let gateway = Gateway::open(options).await.usage_err(format!(
            "--nats {} / --edge {}",
            args.nats,
            args.edge.display()
        ))?;
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .usage_err(format!("--listen {}", args.listen))?;
        let addr = announce(&listener)?;
        tracing::info!(%addr, "gateway listening");
        cema_cloud::http::serve_with(listener, gateway, HttpLimits::default(), shutdown_signal())
            .await
            .context("serving")?;
        tracing::info!("gateway stopped");
        Ok(())
    })
}
