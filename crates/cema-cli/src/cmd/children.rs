//! Child processes of `cema demo` and `cema load`: a `cema cloud` on loopback whose address is
//! read from its first stdout line, and a reaper that stops every child (SIGTERM, a grace
//! period, then SIGKILL) however the parent leaves, so no run leaves a process behind.

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
    let mut child = Command::new(exe)
        .args(["-q", "cloud", "--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting `cema cloud`")?;
    let stdout = child.stdout.take().expect("piped");
    let pid = child.id();
    reaper.0.push(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .context("reading the cloud's address")?;
    let addr = serde_json::from_str::<Value>(&line)
        .ok()
        .and_then(|v| v["listening"].as_str().map(String::from))
        .ok_or_else(|| anyhow::anyhow!("the cloud did not start (said {line:?})"))?;
    Ok((format!("http://{addr}"), pid))
}
