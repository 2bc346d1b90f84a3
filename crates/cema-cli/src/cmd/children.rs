//! Child processes of `cema demo` and `cema load`: a `cema cloud` (or a local fleet: a
//! nats-server, gateways and workers) on loopback, each announcing itself on its first stdout
//! line, and a reaper that stops every child (SIGTERM, a grace period, then SIGKILL) however the
//! parent leaves, so no run leaves a process behind.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::Value;

/// Stops its children on drop.
#[derive(Default)]
pub struct Reaper(pub Vec<Child>);

impl Reaper {
    /// SIGTERM to every child still running, up to `grace` for them to exit, then SIGKILL.
    pub fn terminate(&mut self, grace: Duration) {
        for c in &mut self.0 {
            if let Ok(None) = c.try_wait() {
                // std has no SIGTERM; kill(1) is in every base system.
                let _ = Command::new("kill")
                    .arg("-TERM")
                    .arg(c.id().to_string())
                    .status();
            }
        }
        let t = Instant::now();
        for c in &mut self.0 {
            while t.elapsed() < grace {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        self.0.clear();
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        self.terminate(Duration::from_secs(5));
    }
}

/// Starts `exe -q cloud --listen 127.0.0.1:0 <args>` under `reaper` and returns its base URL
/// and pid once it has said where it listens.
pub fn spawn_cloud<I, S>(exe: &OsStr, args: I, reaper: &mut Reaper) -> anyhow::Result<(String, u32)>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    spawn_listening(exe, "cloud", args, reaper)
}

/// [`spawn_cloud`] for any subcommand that listens (`cloud`, `gateway`).
pub fn spawn_listening<I, S>(
    exe: &OsStr,
    subcommand: &str,
    args: I,
    reaper: &mut Reaper,
) -> anyhow::Result<(String, u32)>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut listen = vec![OsStr::new("--listen").to_os_string(), "127.0.0.1:0".into()];
    listen.extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
    let (first, pid) = spawn_announcing(exe, subcommand, listen, reaper)?;
    let addr = first["listening"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("`cema {subcommand}` did not start (said {first})"))?;
    Ok((format!("http://{addr}"), pid))
}

/// Starts `exe -q <subcommand> <args>` under `reaper` and returns the JSON of its first stdout
/// line (its announcement: where it listens, or that it is connected) and its pid.
pub fn spawn_announcing<I, S>(
    exe: &OsStr,
    subcommand: &str,
    args: I,
    reaper: &mut Reaper,
) -> anyhow::Result<(Value, u32)>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    // The process-wide matrix-product precision reaches every child (the cloud, workers).
    let mut child = Command::new(exe)
        .env("CEMA_PRECISION", cema_model::precision().to_string())
        .args(["-q", subcommand])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting `cema {subcommand}`"))?;
    let stdout = child.stdout.take().expect("piped");
    let pid = child.id();
    reaper.0.push(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .with_context(|| format!("reading what `cema {subcommand}` says"))?;
    let first = serde_json::from_str::<Value>(&line)
        .map_err(|_| anyhow::anyhow!("`cema {subcommand}` did not start (said {line:?})"))?;
    Ok((first, pid))
}

/// A fleet on loopback (issue #21): a nats-server on file storage in a folder, gateways and
/// workers as child processes of this binary.
pub struct LocalFleet {
    /// Stopped when dropped (after the reaper has stopped the children that use it).
    pub nats: cema_fleet::NatsServer,
    /// The gateways' base URLs.
    pub gateways: Vec<String>,
    /// Every gateway's and worker's pid.
    pub pids: Vec<u32>,
}

impl LocalFleet {
    /// The edges' `--cloud` for edge `i`: every gateway, starting at a different one per edge.
    pub fn cloud_for(&self, i: usize) -> String {
        let n = self.gateways.len();
        (0..n)
            .map(|k| self.gateways[(i + k) % n].as_str())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Starts nats-server in `dir`, `workers` workers (with `worker_args`) and `gateways` gateways
/// (with `gateway_args`), the workers first so that they own the slots before the first upload.
pub fn spawn_fleet(
    exe: &OsStr,
    dir: &std::path::Path,
    gateways: usize,
    workers: usize,
    gateway_args: &[std::ffi::OsString],
    worker_args: &[std::ffi::OsString],
    reaper: &mut Reaper,
) -> anyhow::Result<LocalFleet> {
    let nats = cema_fleet::NatsServer::start(dir)?;
    let url = nats.url();
    let mut pids = Vec::new();
    for w in 0..workers {
        let mut args: Vec<std::ffi::OsString> = vec!["--nats".into(), url.clone().into()];
        args.extend(["--id".into(), format!("worker-{}", w + 1).into()]);
        args.extend(worker_args.iter().cloned());
        pids.push(spawn_announcing(exe, "worker", args, reaper)?.1);
    }
    let mut urls = Vec::new();
    for _ in 0..gateways {
        let mut args: Vec<std::ffi::OsString> = vec!["--nats".into(), url.clone().into()];
        args.extend(gateway_args.iter().cloned());
        let (u, pid) = spawn_listening(exe, "gateway", args, reaper)?;
        urls.push(u);
        pids.push(pid);
    }
    // One lease round, so every worker sees the others before it takes slots for good.
    std::thread::sleep(Duration::from_millis(2500));
    Ok(LocalFleet {
        nats,
        gateways: urls,
        pids,
    })
}
