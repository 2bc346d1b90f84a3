//! `cema speed` through the real binary: the edge workloads and the logits file on tiny settings
//! (the JSON that `bench/compare` reads), and its usage errors.

mod common;

use common::{cema, repo, stderr};

#[test]
fn speed_edge_workloads_write_the_json_bench_compare_reads() {
    let dir = tempfile::tempdir().unwrap();
    let (out, logits) = (
        dir.path().join("speed.json"),
        dir.path().join("logits.json"),
    );
    let edge = repo().join("models/edge.safetensors");
    let o = cema(&[
        "speed",
        "--models",
        edge.to_str().unwrap(),
        "--workload",
        "edge_b1,edge_b64",
        "--seconds",
        "0.01",
        "--json",
        out.to_str().unwrap(),
        "--logits",
        logits.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert!(v["threads"].as_u64().unwrap() >= 1);
    assert_eq!(v["backend"], "cpu", "the default backend is recorded");
    assert_eq!(v["precision"], "f32", "the default precision is recorded");
    for w in ["edge_b1", "edge_b64"] {
        let e = &v["workloads"][w];
        for k in [
            "throughput",
            "throughput_mean",
            "median_ms",
            "iterations",
            "per_iteration",
            "peak_rss_mib",
            "rss_idle_mib",
            "what",
            "unit",
        ] {
            assert!(!e[k].is_null(), "{w}.{k} missing: {e}");
        }
        assert!(e["throughput"].as_f64().unwrap() > 0.0);
        assert!(e["iterations"].as_u64().unwrap() >= 3);
    }
    assert_eq!(v["workloads"]["edge_b64"]["per_iteration"], 64);
    let l: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&logits).unwrap()).unwrap();
    assert_eq!(l["input"]["images"], 64);
    let edge_logits = l["models"]["edge"]["logits"].as_array().unwrap();
    assert_eq!(edge_logits.len(), 64 * 10);
    assert!(edge_logits.iter().all(|x| x.as_f64().unwrap().is_finite()));
    // Only the edge checkpoint was given: no foundation logits.
    assert!(l["models"]["foundation"].is_null());
}

#[test]
fn speed_bad_workload_and_missing_foundation_are_usage_errors_naming_the_flag() {
    let o = cema(&["speed", "--workload", "edge_b2"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--workload"), "{}", stderr(&o));

    let edge = repo().join("models/edge.safetensors");
    let o = cema(&[
        "speed",
        "--models",
        edge.to_str().unwrap(),
        "--workload",
        "cloud_step",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--workload cloud_step"),
        "{}",
        stderr(&o)
    );

    let o = cema(&["speed", "--seconds", "0", "--workload", "edge_b1"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--seconds"), "{}", stderr(&o));
}

#[test]
fn a_bad_backend_is_a_usage_error_naming_the_flag() {
    for (spec, says) in [
        ("gpu", "expected `cpu`, `cuda` or `cuda:N`"),
        ("cuda:x", "not a device index"),
        ("cpu:1", "no device index"),
    ] {
        let o = cema(&["--backend", spec, "speed", "--workload", "edge_b1"]);
        assert_eq!(o.status.code(), Some(2), "{spec}: {}", stderr(&o));
        assert!(stderr(&o).contains("--backend"), "{spec}: {}", stderr(&o));
        assert!(stderr(&o).contains(says), "{spec}: {}", stderr(&o));
    }
    if !cfg!(feature = "cuda") {
        // A CPU-only build says how to get CUDA instead of failing somewhere inside burn.
        let o = cema(&["--backend", "cuda", "speed", "--workload", "edge_b1"]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains("--features cuda"), "{}", stderr(&o));
    }
}

#[test]
fn precision_is_validated_and_recorded() {
    let o = cema(&["--precision", "bf8", "speed", "--workload", "edge_b1"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("bf8"), "{}", stderr(&o));

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("speed.json");
    let edge = repo().join("models/edge.safetensors");
    let o = cema(&[
        "--precision",
        "bf16",
        "speed",
        "--models",
        edge.to_str().unwrap(),
        "--workload",
        "edge_b1",
        "--seconds",
        "0.01",
        "--json",
        out.to_str().unwrap(),
    ]);
    #[cfg(target_arch = "x86_64")]
    let has = std::arch::is_x86_feature_detected!("avx512bf16");
    #[cfg(not(target_arch = "x86_64"))]
    let has = false;
    if has {
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        assert_eq!(v["precision"], "bf16");
    } else {
        // Never a silent f32 run: exit 2, the instruction named, nothing written.
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains("AVX512_BF16"), "{}", stderr(&o));
        assert!(!out.exists());
    }
}
