//! A local nats-server with JetStream on file storage, on loopback: started by `cema demo
//! --fleet` and by the tests, stopped when dropped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
}

impl NatsServer {
    /// Starts `nats-server` (from PATH) storing in `dir`, on a free loopback port.
    pub fn start(dir: &Path) -> anyhow::Result<NatsServer> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        Self::start_on(dir, port)
    }

    /// Starts it on `port` (a restart keeps the port, so clients reconnect).
    pub fn start_on(dir: &Path, port: u16) -> anyhow::Result<NatsServer> {
        std::fs::create_dir_all(dir)?;
        let conf = dir.join("nats.conf");
        // Snapshots of large models exceed the default 1 MiB message.
        std::fs::write(
            &conf,
            format!(
                "listen: \"127.0.0.1:{port}\"\nmax_payload: 8MB\njetstream {{\n  store_dir: \"{}\"\n}}\n",
                dir.join("js").display()
            ),
        )?;
        let log = std::fs::File::create(dir.join("nats.log"))?;
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context(
                "starting nats-server (install it: apt-get install nats-server, or scripts/setup-tests.sh)",
            )?;
        let mut server = NatsServer {
            child: Some(child),
            port,
            dir: dir.to_path_buf(),
        };
        server.wait_listening()?;
        Ok(server)
    }

    fn wait_listening(&mut self) -> anyhow::Result<()> {
        let t = Instant::now();
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                let log = std::fs::read_to_string(self.dir.join("nats.log")).unwrap_or_default();
                anyhow::bail!("nats-server exited ({status}): {log}");
            }
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(15),
                "nats-server did not listen within 15 s"
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops it (SIGKILL: file storage must survive a crash) and waits.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills it and starts it again on the same port and storage.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        let again = Self::start_on(&self.dir, self.port)?;
        *self = again;
        Ok(())
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
