//! What the cloud's integration tests share: tiny models written once per test process, a cloud
//! serving on a loopback port in its own thread, uploads of synthetic images.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cema_adapt::CloudConfig;
use cema_cloud::{Cloud, CloudOptions, HttpLimits, SessionView};
use cema_edge::{ClientError, CloudClient};
use cema_model::{cpu, Arch, Model, ModelCard, NormState};
use cema_wire::UploadStamp;
use tokio::sync::oneshot;

pub const IMAGE: usize = 28 * 28;
pub const MODEL_ID: &str = "tiny-edge";

pub fn card(name: &str, width: usize) -> ModelCard {
    let arch = Arch::CifarResnet {
        depth: 8,
        width,
        in_channels: 1,
        num_classes: 10,
    };
    ModelCard::fashion_mnist(name, "edge", arch, vec![])
}

/// Writes a tiny edge and foundation into `dir` (once).
pub fn models(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (e, f) = (
        dir.join("edge.safetensors"),
        dir.join("foundation.safetensors"),
    );
    if !e.exists() {
        Model::init(card(MODEL_ID, 4), &cpu(), 1)
            .unwrap()
            .save(&e)
            .unwrap();
        Model::init(card("tiny-foundation", 8), &cpu(), 2)
            .unwrap()
            .save(&f)
            .unwrap();
    }
    (e, f)
}

pub fn edge_state(version: u64) -> NormState {
    let m = Model::load(&models_dir().join("edge.safetensors"), &cpu()).unwrap();
    m.norm_state(MODEL_ID, version)
}

/// The tiny models, written once per test process (the tests run in parallel threads).
pub fn models_dir() -> std::path::PathBuf {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("cema-cloud-test-models-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        models(&d);
        d
    })
    .clone()
}

pub struct TestCloud {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestCloud {
    pub fn start(data: &Path, tweak: impl FnOnce(&mut CloudOptions)) -> TestCloud {
        TestCloud::start_with(data, tweak, HttpLimits::default())
    }

    /// A cloud whose transport runs under `limits`.
    pub fn start_with(
        data: &Path,
        tweak: impl FnOnce(&mut CloudOptions),
        limits: HttpLimits,
    ) -> TestCloud {
        let dir = models_dir();
        let mut opts = CloudOptions::new(
            dir.join("edge.safetensors"),
            dir.join("foundation.safetensors"),
            data.to_path_buf(),
        );
        opts.devices = [("dev-a", "tok-a"), ("dev-b", "tok-b")]
            .iter()
            .map(|(d, t)| (d.to_string(), t.to_string()))
            .collect();
        opts.config = CloudConfig {
            batch: 16,
            replay_min: 32,
            ..CloudConfig::default()
        };
        opts.max_body = 64 << 10;
        tweak(&mut opts);
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            // A worker thread of the previous cloud on the same folder may still be finishing
            // its last round (holding the store) for a moment after that cloud stopped.
            let t = Instant::now();
            let cloud: Arc<Cloud> = loop {
                match Cloud::open(opts.clone()) {
                    Ok(c) => break c,
                    Err(e) if t.elapsed() < Duration::from_secs(10) => {
                        eprintln!("retrying: {e:#}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    Err(e) => panic!("{e:#}"),
                }
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(l.local_addr().unwrap()).unwrap();
                cema_cloud::http::serve_with(l, cloud, limits, async {
                    let _ = stop_rx.await;
                })
                .await
                .unwrap();
            });
        });
        let addr = rx.recv_timeout(Duration::from_secs(60)).unwrap();
        TestCloud {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn client(&self, device: &str, token: &str) -> CloudClient {
        CloudClient::new(&self.url(), device, token, Duration::from_secs(10))
    }

    /// The body of a GET of `path` (e.g. "/metrics"; "" for the dashboard page).
    pub fn get(&self, path: &str) -> String {
        ureq::get(&format!("{}{path}", self.url()))
            .call()
            .unwrap()
            .into_body()
            .read_to_string()
            .unwrap()
    }

    pub fn sessions(&self) -> Vec<SessionViewLite> {
        serde_json::from_str(&self.get("/v1/sessions")).unwrap()
    }

    /// Stops serving and waits until the process-level state (the store) is released.
    pub fn stop(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        self.thread.take().unwrap().join().unwrap();
    }
}

impl Drop for TestCloud {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The fields of [`SessionView`] the tests compare (it is only `Serialize`).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct SessionViewLite {
    pub device: String,
    pub version: u64,
    pub next_seq: u64,
    pub uploads: u64,
    pub samples: u64,
    pub rounds: u64,
    pub queued: usize,
    pub replay: usize,
}

#[allow(dead_code)]
fn _view_has_these_fields(v: SessionView) -> (String, u64, u64, u64, u64, u64, usize, usize) {
    (
        v.device, v.version, v.next_seq, v.uploads, v.samples, v.rounds, v.queued, v.replay,
    )
}

pub fn images(offset: usize, n: usize) -> Vec<u8> {
    (0..n * IMAGE)
        .map(|i| ((i * 31 + offset * 17) % 251) as u8)
        .collect()
}

pub fn upload(seq: u64, n: usize) -> Vec<u8> {
    let stamp = UploadStamp {
        model_id: MODEL_ID.into(),
        height: 28,
        width: 28,
        channels: 1,
    };
    stamp.encode(seq, 0, &images(seq as usize, n), None)
}

pub fn refused_code(r: Result<impl std::fmt::Debug, ClientError>) -> (u16, String, Option<u64>) {
    match r {
        Err(ClientError::Refused { status, error, .. }) => (status, error.code, error.expected_seq),
        other => panic!("expected a refusal, got {other:?}"),
    }
}
