//! Helpers shared by the binary's integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs the real `cema` binary with 2 worker threads.
pub fn cema(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cema"))
        .args(args)
        .env("CEMA_THREADS", "2")
        .output()
        .expect("run cema")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The shipped edge and foundation models, as arguments.
pub fn models() -> (String, String) {
    let r = repo();
    (
        r.join("models/edge.safetensors").display().to_string(),
        r.join("models/foundation.safetensors")
            .display()
            .to_string(),
    )
}

/// `cema -q edge` against `url` as `device` on `corruption`, `limit` images, one thread.
pub fn edge_cmd(url: &str, device: &str, token: &str, corruption: &str, limit: usize) -> Command {
    let (edge, _) = models();
    let mut c = Command::new(env!("CARGO_BIN_EXE_cema"));
    c.args([
        "-q", "edge", "--cloud", url, "--device", device, "--token", token,
    ])
    .args([
        "--edge",
        &edge,
        "--corruption",
        corruption,
        "--limit",
        &limit.to_string(),
    ])
    .env("CEMA_THREADS", "1");
    c
}

/// `cema bench --methods cema` on `corruptions` (comma-separated), `limit` images each, with the
/// shipped models: its results.json.
pub fn bench_cema(dir: &Path, corruptions: &str, limit: usize) -> serde_json::Value {
    bench_methods(dir, "cema", corruptions, limit, &[])
}

/// `cema bench --methods METHODS` (comma-separated) on `corruptions`, `limit` images each, with
/// the shipped models and `extra` flags, writing under `dir/bench-METHODS`: its results.json.
pub fn bench_methods(
    dir: &Path,
    methods: &str,
    corruptions: &str,
    limit: usize,
    extra: &[&str],
) -> serde_json::Value {
    let (edge, foundation) = models();
    let out = dir.join(format!("bench-{}", methods.replace(',', "-")));
    let limit = limit.to_string();
    let mut args = vec![
        "-q",
        "bench",
        "--methods",
        methods,
        "--corruptions",
        corruptions,
        "--limit",
        &limit,
        "--edge",
        &edge,
        "--foundation",
        &foundation,
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let o = cema(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap()
}

/// Waits for a synchronous `cema edge` child that wrote its report to `json`, and checks that it
/// reproduced `cema bench`'s record `bench` of the same stream exactly (`what` names the run).
pub fn assert_reproduces(
    child: &mut std::process::Child,
    json: &Path,
    bench: &serde_json::Value,
    limit: usize,
    what: &str,
) {
    assert!(child.wait().unwrap().success(), "edge {what}");
    let e: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    assert_eq!(e["images"], limit, "{what}");
    assert_eq!(
        e["accuracy"], bench["accuracy"],
        "{what}: edge {e} vs bench {bench}"
    );
    assert_eq!(e["uploaded"], bench["uploaded"], "{what}");
    assert_eq!(e["norm_version"], bench["updates"], "{what}");
}

/// `cema ARGS` exits 2 (a usage error) and its stderr names `names`.
pub fn assert_usage_error(args: &[&str], names: &str) {
    let o = cema(args);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    assert!(stderr(&o).contains(names), "{args:?}: {}", stderr(&o));
}
