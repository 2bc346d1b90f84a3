//! `cema cloud` and `cema edge` as real processes on loopback with the shipped models: the
//! network reproduces the in-process benchmark, survives a SIGKILLed cloud, a missing cloud and
//! a slow one.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// A `cema cloud` child, killed on drop.
struct CloudProc {
    child: Child,
    addr: String,
}

impl CloudProc {
    fn start(data: &Path, listen: &str, extra: &[&str]) -> CloudProc {
        let (edge, foundation) = models();
        let mut child = Command::new(env!("CARGO_BIN_EXE_cema"))
            .args([
                "-q",
                "cloud",
                "--listen",
                listen,
                "--edge",
                &edge,
                "--foundation",
                &foundation,
            ])
            .arg("--store-dir")
            .arg(data)
            .args(["--device", "dev-a:tok-a", "--device", "dev-b:tok-b"])
            .args(extra)
            .env("CEMA_THREADS", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let v: Value =
            serde_json::from_str(&line).unwrap_or_else(|_| panic!("cloud said {line:?}"));
        CloudProc {
            child,
            addr: v["listening"].as_str().unwrap().to_string(),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn sessions(&self) -> Vec<Value> {
        let body = ureq::get(&format!("{}/v1/sessions", self.url()))
            .call()
            .unwrap()
            .into_body()
            .read_to_string()
            .unwrap();
        serde_json::from_str(&body).unwrap()
    }

    fn sigkill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for CloudProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run_json(mut cmd: Command, json: &Path) -> Value {
    let out = cmd.arg("--json").arg(json).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap()
}

#[test]
fn two_synchronous_edges_over_the_network_reproduce_the_in_process_benchmark() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = CloudProc::start(&dir.path().join("cloud"), "127.0.0.1:0", &[]);
    let limit = 384;
    let edges: Vec<_> = [("dev-a", "tok-a", "fog"), ("dev-b", "tok-b", "contrast")]
        .iter()
        .map(|(d, t, c)| {
            let json = dir.path().join(format!("{d}.json"));
            let mut cmd = edge_cmd(&cloud.url(), d, t, c, limit);
            cmd.arg("--sync").arg("--json").arg(&json);
            (cmd.spawn().unwrap(), json, *c)
        })
        .collect();
    let b = bench_cema(dir.path(), "fog,contrast", limit);
    for (mut child, json, c) in edges {
        let m = &b["methods"]["cema"]["corruptions"][c];
        assert_reproduces(&mut child, &json, m, limit, c);
    }
}

#[test]
fn rate_matched_edges_over_the_network_reproduce_random_and_uncertain_upload() {
    // Issue #25's rule needs the edge's statistics on the wire (`edge-stats`); random upload
    // needs none. Both, synchronous, must give exactly what `cema bench` gives in one process.
    let dir = tempfile::tempdir().unwrap();
    let cloud = CloudProc::start(&dir.path().join("cloud"), "127.0.0.1:0", &[]);
    // On contrast, 512 images are enough for the uncertain edge to score otherwise when its
    // statistics do not reach the cloud (checked by dropping them).
    let limit = 512;
    let edges: Vec<_> = [
        ("dev-a", "tok-a", "random"),
        ("dev-b", "tok-b", "uncertain"),
    ]
    .iter()
    .map(|(d, t, select)| {
        let json = dir.path().join(format!("{d}.json"));
        let mut cmd = edge_cmd(&cloud.url(), d, t, "contrast", limit);
        cmd.args(["--sync", "--select", select, "--rate", "0.3", "--json"])
            .arg(&json);
        (cmd.spawn().unwrap(), json, *select)
    })
    .collect();
    let b = bench_methods(
        dir.path(),
        "random_upload,uncertain_upload",
        "contrast",
        limit,
        &["--random-rate", "0.3"],
    );
    for (mut child, json, select) in edges {
        let m = &b["methods"][format!("{select}_upload")]["corruptions"]["contrast"];
        assert_reproduces(&mut child, &json, m, limit, select);
    }
}

#[test]
fn edges_within_a_byte_budget_reproduce_the_bench_and_stay_within_it() {
    // 60 bytes per image: less than a tenth of an image, the uncertain edge's statistics
    // included, so both edges save up over batches; CEMA's filters pick within the same credit.
    let dir = tempfile::tempdir().unwrap();
    let cloud = CloudProc::start(&dir.path().join("cloud"), "127.0.0.1:0", &[]);
    let (limit, budget) = (512, 60);
    let edges: Vec<_> = [("dev-a", "tok-a", "cema"), ("dev-b", "tok-b", "uncertain")]
        .iter()
        .map(|(d, t, select)| {
            let json = dir.path().join(format!("{d}.json"));
            let mut cmd = edge_cmd(&cloud.url(), d, t, "contrast", limit);
            cmd.args([
                "--sync",
                "--select",
                select,
                "--byte-budget",
                "60",
                "--json",
            ])
            .arg(&json);
            (cmd.spawn().unwrap(), json, *select)
        })
        .collect();
    let b = bench_methods(
        dir.path(),
        "cema,uncertain_upload",
        "contrast",
        limit,
        &["--byte-budget", "60"],
    );
    for (mut child, json, select) in edges {
        let key = if select == "cema" {
            "cema"
        } else {
            "uncertain_upload"
        };
        let m = &b["methods"][key]["corruptions"]["contrast"];
        assert_reproduces(&mut child, &json, m, limit, select);
        // The bench counts pixels and statistics (and the session's first norm state, which
        // the budget leaves aside): the samples themselves stay within the budget.
        let uploaded = m["uploaded"].as_u64().unwrap();
        assert!(uploaded > 0, "{select}: {m}");
        assert!(uploaded * 784 <= budget * limit as u64, "{select}: {m}");
    }
}

#[test]
fn a_sigkilled_cloud_restarts_and_resumes_while_the_edge_keeps_predicting() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cloud");
    let cloud = CloudProc::start(&data, "127.0.0.1:0", &[]);
    let addr = cloud.addr.clone();
    let json = dir.path().join("edge.json");
    let mut cmd = edge_cmd(&cloud.url(), "dev-a", "tok-a", "gaussian_noise", 1280);
    // Paced so that the stream (20 batches, at least 4 s) outlasts the first published version
    // plus the 1.5 s outage below even on a loaded machine.
    cmd.args(["--pace-ms", "200", "--json"]).arg(&json);
    let mut edge = cmd.spawn().unwrap();
    // Let the session publish something, then kill the cloud without warning.
    let t = Instant::now();
    let before = loop {
        let s = cloud.sessions();
        if let Some(v) = s
            .first()
            .and_then(|s| s["version"].as_u64())
            .filter(|&v| v >= 1)
        {
            break v;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "no version published"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    cloud.sigkill();
    std::thread::sleep(Duration::from_millis(1500));
    // The edge is still running on its last good state.
    assert!(
        edge.try_wait().unwrap().is_none(),
        "the edge stopped with the cloud"
    );
    let cloud = CloudProc::start(&data, &addr, &[]);
    let resumed = cloud.sessions()[0]["version"].as_u64().unwrap();
    assert!(resumed >= before, "version regressed: {resumed} < {before}");
    assert!(edge.wait().unwrap().success());
    let e: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(e["images"], 1280);
    // Every sample the cloud acknowledged is learned from exactly once (an upload counts as
    // queued until its round is committed).
    let t = Instant::now();
    let s = loop {
        let s = cloud.sessions()[0].clone();
        if s["queued"] == 0 || t.elapsed() > Duration::from_secs(120) {
            break s;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(s["queued"], 0, "{s}");
    assert_eq!(s["samples"], e["uploaded"], "cloud {s} vs edge {e}");
    assert!(e["norm_version"].as_u64().unwrap() >= before);
    assert_eq!(e["updates_rejected"], 0);
}

#[test]
fn an_edge_without_a_cloud_keeps_predicting_and_counts_what_it_drops() {
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = edge_cmd(
        &format!("http://127.0.0.1:{port}"),
        "dev-a",
        "tok-a",
        "fog",
        640,
    );
    cmd.args(["--max-queued-samples", "64"]);
    let e = run_json(cmd, &dir.path().join("edge.json"));
    assert_eq!(e["images"], 640);
    assert_eq!(e["uploaded"], 0);
    assert_eq!(e["norm_version"], 0);
    let (selected, dropped) = (
        e["selected"].as_u64().unwrap(),
        e["dropped"].as_u64().unwrap(),
    );
    assert!(selected > 64 && dropped >= selected - 64 - 64, "{e}");
    assert!(e["accuracy"].as_f64().unwrap() > 0.3, "{e}");
    assert!(e["network_errors"].as_u64().unwrap() > 0, "{e}");
}

#[test]
fn a_slow_cloud_pushes_back_and_the_edge_drops_by_its_policy() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = CloudProc::start(
        &dir.path().join("cloud"),
        "127.0.0.1:0",
        &["--slow-ms", "400", "--max-queued-uploads", "2"],
    );
    let mut cmd = edge_cmd(&cloud.url(), "dev-a", "tok-a", "gaussian_noise", 1280);
    cmd.args(["--max-queued-samples", "48"]);
    let e = run_json(cmd, &dir.path().join("edge.json"));
    assert_eq!(e["images"], 1280);
    assert!(e["dropped"].as_u64().unwrap() > 0, "{e}");
    let metrics = ureq::get(&format!("{}/metrics", cloud.url()))
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap();
    assert!(
        metrics.contains("cema_cloud_rejected_total{code=\"overloaded\"}"),
        "{metrics}"
    );
}

#[test]
fn cloud_and_edge_usage_errors_exit_2_naming_the_flag() {
    let (edge, foundation) = models();
    let o = cema(&["cloud", "--edge", &edge, "--foundation", &foundation]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--device"), "{}", stderr(&o));
    let o = cema(&["cloud", "--device", "nocolon"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--device nocolon"), "{}", stderr(&o));
    let o = cema(&[
        "cloud",
        "--device",
        "a:b",
        "--edge",
        "/nonexistent.safetensors",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--edge"), "{}", stderr(&o));
    let o = cema(&[
        "cloud",
        "--device",
        "a:b",
        "--edge",
        &edge,
        "--foundation",
        &foundation,
        "--batch-sessions",
        "0",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--batch-sessions"), "{}", stderr(&o));
    let o = cema(&[
        "edge",
        "--device",
        "a",
        "--token",
        "b",
        "--corruption",
        "nope",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let o = cema(&["load", "--edges", "0"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--edges"), "{}", stderr(&o));
    let o = cema(&["demo", "--edge", "/nonexistent.safetensors"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = cema(&["edge", "--device", "a", "--token", "b", "--severity", "9"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--severity"), "{}", stderr(&o));
    let o = cema(&[
        "edge",
        "--device",
        "a",
        "--token",
        "b",
        "--cema-track-stats",
        "0",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--cema-track-stats"), "{}", stderr(&o));

    for (extra, names) in [
        (&["--select", "random"][..], "--rate"),
        (&["--select", "uncertain", "--rate", "0"][..], "--rate 0"),
        (&["--select", "random", "--rate", "1.5"][..], "--rate 1.5"),
        (&["--rate", "0.3"][..], "--rate 0.3"),
        (&["--share-stats"][..], "--cema-track-stats"),
        (&["--select", "sometimes"][..], "--select"),
        (&["--cema-budget", "0"][..], "--cema-budget 0"),
        (&["--byte-budget", "0"][..], "--byte-budget 0"),
        (
            &["--select", "random", "--byte-budget", "NaN"][..],
            "--byte-budget NaN",
        ),
        (
            &["--select", "random", "--rate", "0.2", "--byte-budget", "40"][..],
            "--byte-budget 40",
        ),
        (
            &["--cema-budget", "0.2", "--byte-budget", "40"][..],
            "--byte-budget 40",
        ),
        (
            &[
                "--select",
                "random",
                "--rate",
                "0.2",
                "--cema-budget",
                "0.1",
            ][..],
            "--cema-budget",
        ),
    ] {
        let mut args = vec!["edge", "--device", "a", "--token", "b"];
        args.extend_from_slice(extra);
        assert_usage_error(&args, names);
    }
    assert_usage_error(&["demo", "--select", "random"], "--rate");
}

#[test]
fn a_refused_token_or_a_malformed_cloud_url_is_exit_2_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = CloudProc::start(&dir.path().join("cloud"), "127.0.0.1:0", &[]);
    // Not `-q`: the log goes to a pipe here, so it must carry no colour codes.
    let mut cmd = edge_cmd(&cloud.url(), "dev-a", "wrong-token", "fog", 10_000);
    cmd.args(["--pace-ms", "20"]);
    let args: Vec<String> = cmd
        .get_args()
        .filter(|a| *a != "-q")
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let t = Instant::now();
    let o = Command::new(env!("CARGO_BIN_EXE_cema"))
        .args(&args)
        .env("CEMA_THREADS", "1")
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("unauthorized") && err.contains("--token"),
        "{err}"
    );
    assert!(!err.contains('\u{1b}'), "colour codes in a pipe: {err:?}");
    // 10 000 images at 20 ms a batch of 64 would take 3 s; refused, it stops at the first
    // session opening.
    assert!(t.elapsed() < Duration::from_secs(60), "{:?}", t.elapsed());
    for url in [cloud.addr.as_str(), "https://127.0.0.1:1", "http://"] {
        let o = edge_cmd(url, "dev-a", "tok-a", "fog", 64).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{url}: {}", stderr(&o));
        assert!(stderr(&o).contains("cloud URL"), "{url}: {}", stderr(&o));
    }
}

#[test]
fn an_empty_store_file_is_exit_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cloud.redb"), b"").unwrap();
    let (edge, foundation) = models();
    let data = dir.path().display().to_string();
    let o = cema(&[
        "cloud",
        "--edge",
        &edge,
        "--foundation",
        &foundation,
        "--device",
        "a:b",
        "--store-dir",
        &data,
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("cloud.redb"), "{}", stderr(&o));
    assert!(stderr(&o).contains("--store-dir"), "{}", stderr(&o));
}

#[test]
fn sigterm_with_a_half_sent_request_open_exits_within_the_drain_deadline() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let mut cloud = CloudProc::start(
        &dir.path().join("cloud"),
        "127.0.0.1:0",
        &["--drain-s", "1"],
    );
    let mut half = std::net::TcpStream::connect(&cloud.addr).unwrap();
    half.write_all(b"POST /v1/devices/dev-a/uploads HTTP/1.1\r\nhost: t\r\nauthorization: Bearer tok-a\r\ncontent-length: 1000\r\n\r\nCEMA")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let kill = Command::new("kill")
        .args(["-TERM", &cloud.child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = loop {
        if let Some(s) = cloud.child.try_wait().unwrap() {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "still running");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

#[test]
fn the_edge_library_predicts_like_the_model_uploads_and_installs_updates() {
    use cema_edge::{CloudLink, Edge};
    let dir = tempfile::tempdir().unwrap();
    let cloud = CloudProc::start(&dir.path().join("cloud"), "127.0.0.1:0", &[]);
    let (edge_path, _) = models();
    let model = cema_model::Model::load(edge_path.as_ref(), &cema_model::cpu()).unwrap();
    let test = cema_data::Dataset::FashionMnist
        .load(None, cema_data::Split::Test)
        .unwrap();
    let mut order = cema_bench::stream_order(test.len(), 0);
    order.truncate(1280);
    let corrupted = cema_bench::Corrupted::generated();
    let fog = cema_corrupt::Corruption::Fog;
    let (set, _) = cema_bench::stream(&corrupted, &test, &order, fog, 5, 0).unwrap();
    let link = CloudLink::new(&cloud.url(), "dev-a", "tok-a");
    let mut edge = Edge::new(model.clone(), Default::default(), Some(&link)).unwrap();
    let mut offline = Edge::new(model, Default::default(), None).unwrap();
    let mut compared = 0;
    for batch in set.images.chunks(64 * set.image_size()) {
        let (a, b) = (
            edge.predict(batch).unwrap(),
            offline.predict(batch).unwrap(),
        );
        // Until the first update lands, the connected edge is the offline one.
        if a.version == 0 {
            assert_eq!(a.predictions, b.predictions);
            assert_eq!(a.selected, b.selected);
            compared += 1;
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    assert!(compared > 0);
    let c = edge.finish(Duration::from_secs(10)).unwrap();
    assert_eq!(c.images, 1280);
    assert!(c.selected > 0 && c.uploaded > 0, "{c:?}");
    assert!(c.updates_applied > 0 && c.version > 0, "{c:?}");
    // Every batch's upload was acknowledged (one per batch, empty or not); the cloud learns from
    // them in order, so what it has learned from is a prefix of what was uploaded.
    let s = &cloud.sessions()[0];
    assert_eq!(s["next_seq"], 20, "{s}");
    assert!(s["samples"].as_u64().unwrap() <= c.uploaded, "{s}");
    assert_eq!(offline.finish(Duration::ZERO).unwrap().version, 0);
}

/// `n` Fashion-MNIST test images as PNG files: in class folders (`0/`, `1/`, …) or flat.
fn png_folder(root: &Path, n: usize, labelled: bool) {
    let test = cema_data::Dataset::FashionMnist
        .load(None, cema_data::Split::Test)
        .unwrap();
    for i in 0..n {
        // Class folders by index, and for class 9 by the card's name for it.
        let dir = if labelled && test.labels[i] == 9 {
            root.join("Ankle boot")
        } else if labelled {
            root.join(test.labels[i].to_string())
        } else {
            root.to_path_buf()
        };
        std::fs::create_dir_all(&dir).unwrap();
        let img = image::GrayImage::from_raw(28, 28, test.image(i).to_vec()).unwrap();
        // Every third image at twice the size: the edge resizes what it is given.
        let img = if i % 3 == 0 {
            image::imageops::resize(&img, 56, 56, image::imageops::FilterType::Triangle)
        } else {
            img
        };
        img.save(dir.join(format!("img{i:04}.png"))).unwrap();
    }
}

#[test]
fn the_edge_runs_on_a_folder_of_images_labelled_or_not() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = CloudProc::start(&dir.path().join("cloud"), "127.0.0.1:0", &[]);
    let (edge, _) = models();
    let labelled = dir.path().join("labelled");
    png_folder(&labelled, 300, true);
    let json = dir.path().join("edge.json");
    let o = Command::new(env!("CARGO_BIN_EXE_cema"))
        .args(["-q", "edge", "--cloud", &cloud.url(), "--device", "dev-a"])
        .args(["--token", "tok-a", "--edge", &edge, "--input"])
        .arg(&labelled)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(
        (r["images"].as_u64(), r["labelled"].as_bool()),
        (Some(300), Some(true))
    );
    assert!(r["accuracy"].as_f64().unwrap() > 0.7, "{r}");
    assert_eq!(r["network_errors"], 0, "{r}");
    assert_eq!(
        cloud.sessions()[0]["next_seq"],
        5,
        "one upload per batch of 64"
    );

    let flat = dir.path().join("flat");
    png_folder(&flat, 30, false);
    let o = Command::new(env!("CARGO_BIN_EXE_cema"))
        .args(["-q", "edge", "--cloud", &cloud.url(), "--device", "dev-b"])
        .args(["--token", "tok-b", "--edge", &edge, "--input"])
        .arg(&flat)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 30);
    assert!(lines[0]["file"].as_str().unwrap().ends_with("img0000.png"));
    assert!(lines.iter().all(|l| l["class"].as_u64().unwrap() < 10));

    // A class folder that is not a class index, and an empty folder: exit 2 naming them.
    std::fs::create_dir_all(labelled.join("cat")).unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    for (input, says) in [(&labelled, "`cat`"), (&empty, "empty")] {
        let o = edge_cmd(&cloud.url(), "dev-a", "tok-a", "fog", 64)
            .arg("--input")
            .arg(input)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(
            stderr(&o).contains("--input") && stderr(&o).contains(says),
            "{}",
            stderr(&o)
        );
    }
}

#[test]
fn the_edge_reads_raw_frames_on_stdin() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let cloud = CloudProc::start(&dir.path().join("cloud"), "127.0.0.1:0", &[]);
    let (edge, _) = models();
    let test = cema_data::Dataset::FashionMnist
        .load(None, cema_data::Split::Test)
        .unwrap();
    let run = |bytes: Vec<u8>| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cema"))
            .args(["-q", "edge", "--cloud", &cloud.url(), "--device", "dev-a"])
            .args([
                "--token", "tok-a", "--edge", &edge, "--input", "-", "--batch", "32",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Written from a thread: the edge answers while frames still arrive.
        let mut stdin = child.stdin.take().unwrap();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&bytes);
        });
        let o = child.wait_with_output().unwrap();
        writer.join().unwrap();
        o
    };
    let o = run(test.images[..200 * 784].to_vec());
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 200);
    assert_eq!(lines[199]["frame"], 199);
    // Predictions are the model's: most of these clean images are classified right.
    let right = lines
        .iter()
        .zip(&test.labels)
        .filter(|(l, y)| l["class"].as_u64() == Some(**y as u64))
        .count();
    assert!(right > 150, "{right} of 200");
    // A truncated last frame is an error saying so.
    let o = run(test.images[..2 * 784 + 100].to_vec());
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("100 bytes into a frame of 784"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn the_edge_watches_a_folder_until_its_limit_or_sigterm() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let cloud = CloudProc::start(&dir.path().join("cloud"), "127.0.0.1:0", &[]);
    let (edge, _) = models();
    let watched = dir.path().join("in");
    png_folder(&watched, 10, false);
    let start = |limit: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cema"));
        c.args(["-q", "edge", "--cloud", &cloud.url(), "--device", "dev-a"])
            .args([
                "--token", "tok-a", "--edge", &edge, "--batch", "8", "--watch",
            ])
            .arg("--input")
            .arg(&watched)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(l) = limit {
            c.args(["--limit", l]);
        }
        c.spawn().unwrap()
    };
    let mut child = start(Some("40"));
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for _ in 0..10 {
        lines.next().unwrap().unwrap();
    }
    // 30 more images arrive while it runs; it stops at its limit of 40.
    let more = dir.path().join("more");
    png_folder(&more, 40, false);
    for i in 10..40 {
        let name = format!("img{i:04}.png");
        std::fs::copy(more.join(&name), watched.join(&name)).unwrap();
    }
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    assert_eq!(rest.len(), 30);
    assert!(rest[29].contains("img0039.png"), "{}", rest[29]);
    assert!(child.wait().unwrap().success());

    // Without a limit, SIGTERM ends the watch cleanly.
    let mut child = start(None);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for _ in 0..40 {
        lines.next().unwrap().unwrap();
    }
    let t = Instant::now();
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
}

#[test]
fn eval_and_bench_take_a_folder_of_your_own_labelled_images() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("mine");
    png_folder(&images, 200, true);
    let (edge, foundation) = models();
    let data = images.to_str().unwrap();
    let json = dir.path().join("eval.json");
    let o = cema(&[
        "-q",
        "eval",
        "--dataset",
        "folder",
        "--data-dir",
        data,
        "--model",
        &edge,
        "--corruptions",
        "fog",
        "--severities",
        "5",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["dataset"], "folder");
    assert!(v["clean_accuracy"].as_f64().unwrap() > 0.7, "{v}");
    assert!(v["corrupted"]["fog"]["5"].as_f64().unwrap() < v["clean_accuracy"].as_f64().unwrap());

    let out = dir.path().join("bench");
    let o = cema(&[
        "-q",
        "bench",
        "--dataset",
        "folder",
        "--data-dir",
        data,
        "--edge",
        &edge,
        "--foundation",
        &foundation,
        "--methods",
        "source,bn_adapt",
        "--corruptions",
        "fog",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(r["images_per_stream"], 200);
    let m: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["stream_sources"]["fog"], "generated");

    // A corrupted copy in the ImageNet-C layout (<corruption>/<severity>/<class>/<file>), made
    // with the same corruption the stream generates for each image: read from files, it scores
    // what the generated stream scores.
    let opts = cema_data::folder::FolderOptions {
        color: cema_data::folder::ColorMode::Luma,
        size: cema_data::folder::SizePolicy::Resize {
            height: 28,
            width: 28,
        },
    };
    let clean = cema_data::folder::load_class_folders(&images, &opts).unwrap();
    let fog = cema_corrupt::Corruption::Fog;
    let plan =
        cema_corrupt::Plan::new(fog, 5, cema_corrupt::Table::for_size(28, 28), 28, 28, 1).unwrap();
    let copy = dir.path().join("mine-c");
    for (i, file) in clean.files.iter().enumerate() {
        let rel = file.strip_prefix(&images).unwrap();
        let to = copy.join("fog").join("5").join(rel);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        let px = plan.apply(clean.set.image(i), 0, i as u64).unwrap();
        image::GrayImage::from_raw(28, 28, px)
            .unwrap()
            .save(&to)
            .unwrap();
    }
    let eval = |source: &[&str], json: &Path| {
        let mut a = vec![
            "-q",
            "eval",
            "--dataset",
            "folder",
            "--data-dir",
            data,
            "--model",
            &edge,
            "--corruptions",
            "fog",
            "--severities",
            "5",
            "--json",
            json.to_str().unwrap(),
        ];
        a.extend(source);
        let o = cema(&a);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: Value = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
        v["corrupted"]["fog"]["5"].as_f64().unwrap()
    };
    let from_files = eval(
        &["--corrupted", copy.to_str().unwrap()],
        &dir.path().join("a.json"),
    );
    let generated = eval(&["--generate-corruptions"], &dir.path().join("b.json"));
    assert_eq!(from_files, generated);
    // A copy missing an image the test set has: refused, naming it.
    let gone = clean.files[7].strip_prefix(&images).unwrap().to_path_buf();
    std::fs::remove_file(copy.join("fog").join("5").join(&gone)).unwrap();
    let o = cema(&[
        "eval",
        "--dataset",
        "folder",
        "--data-dir",
        data,
        "--model",
        &edge,
        "--corruptions",
        "fog",
        "--severities",
        "5",
        "--corrupted",
        copy.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let name = gone.file_name().unwrap().to_str().unwrap();
    assert!(stderr(&o).contains(name), "{}", stderr(&o));

    // Commands that need fixed-size images, and a folder without --data-dir: exit 2 saying so.
    let o = cema(&["corrupt", "--dataset", "folder", "--data-dir", data]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--dataset folder"), "{}", stderr(&o));
    let o = cema(&["eval", "--dataset", "folder", "--model", &edge]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--data-dir"), "{}", stderr(&o));
}
