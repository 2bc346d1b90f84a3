//! The live dashboard in a real browser: headless Chromium (Debian's `chromium`) loads `/` from a
//! cloud with two live edges, the test checks that every chart received data (in the DOM the
//! page's script built) and saves a screenshot.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cema_wire::EdgeTelemetry;
use common::*;

/// Runs headless Chromium on `url` with `args` (a fresh profile each time); its stdout.
fn chromium(url: &str, profile: &Path, args: &[&str]) -> String {
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1280,800",
            // Long enough for a few of the page's once-a-second refreshes.
            "--virtual-time-budget=4000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .expect("chromium (scripts/setup-tests.sh installs Debian's chromium)");
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The `data-points` attribute of the chart `<svg id=…>` in a dumped DOM.
fn points_of(dom: &str, id: &str) -> u64 {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no chart {id}"));
    let tag_start = dom[..at].rfind('<').unwrap();
    let tag = &dom[tag_start..tag_start + dom[tag_start..].find('>').unwrap()];
    let attr = tag
        .split("data-points=\"")
        .nth(1)
        .unwrap_or_else(|| panic!("chart {id} was never drawn: {tag}"));
    attr[..attr.find('"').unwrap()].parse().unwrap()
}

#[test]
fn the_dashboard_draws_every_chart_from_a_live_cloud() {
    let data = tempfile::tempdir().unwrap();
    let cloud = TestCloud::start(data.path(), |_| {});
    let stop = Arc::new(AtomicBool::new(false));
    // Two live edges: an upload of 16 samples (one round each) and their telemetry every 300 ms.
    let edges: Vec<_> = [("dev-a", "tok-a"), ("dev-b", "tok-b")]
        .into_iter()
        .map(|(d, t)| {
            let c = cloud.client(d, t);
            let stop = stop.clone();
            std::thread::spawn(move || {
                c.open_session(&edge_state(0).to_bytes()).unwrap();
                let mut seq = 0;
                while !stop.load(Ordering::Acquire) {
                    let ack = c.upload(&upload(seq, 16), true).unwrap();
                    seq += 1;
                    let images = 64 * seq;
                    c.telemetry(&EdgeTelemetry {
                        images,
                        correct: images * 6 / 10,
                        source_correct: Some(images / 2),
                        norm_version: ack.version.unwrap(),
                    })
                    .unwrap();
                    std::thread::sleep(Duration::from_millis(300));
                }
            })
        })
        .collect();
    // Three samples of history before the page loads, so rates have two points to differ.
    std::thread::sleep(Duration::from_millis(3500));
    let profile = tempfile::tempdir().unwrap();
    let dom = chromium(
        &format!("{}/", cloud.url()),
        profile.path(),
        &["--dump-dom"],
    );
    for id in [
        "version", "accuracy", "samples", "uploads", "bytes", "loss", "queued", "latency",
    ] {
        assert!(points_of(&dom, id) > 0, "chart {id} has no data");
    }
    assert!(dom.contains("dev-a") && dom.contains("dev-b"), "legend");
    assert!(
        dom.contains("<span id=\"status\"></span>"),
        "the page lost the cloud"
    );
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let profile = tempfile::tempdir().unwrap();
    chromium(
        &format!("{}/", cloud.url()),
        profile.path(),
        &[&format!("--screenshot={}", shot.display())],
    );
    stop.store(true, Ordering::Release);
    for e in edges {
        e.join().unwrap();
    }
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "{} bytes",
        png.len()
    );
    eprintln!("dashboard screenshot: {}", shot.display());
}
