//! Run-time dispatch on the CPU's features: the GEMM (`gemm`, AVX-512 / AVX2+FMA / scalar
//! kernels) and cema's element-wise passes (`multiversion`) pick their code on the CPU they find.
//! This test runs the same computation — eval-mode logits through the folded net and the
//! hand-written norm-affine backward, for a CIFAR ResNet (dense and pointwise convolutions,
//! residual adds), an EfficientNet-Lite (depthwise convolutions, ReLU6, SAME padding) and a ViT
//! (the token path: strided GEMMs, LayerNorm, GELU and softmax on cema's own exp/erf) — on
//! this machine and on older CPUs emulated by QEMU's user-mode emulator (Debian's `qemu-user`,
//! installed by scripts/setup-tests.sh): `-cpu Haswell` (AVX2+FMA, no AVX-512) and
//! `-cpu Nehalem` (SSE4.2, no AVX). Each child reports the features it saw, so a run that did
//! not leave this machine's path cannot pass.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

const CHILD: &str = "CEMA_PORTABLE_PATH_OUT";

/// Everything the two hand-written paths produce for three small models, as one flat list per
/// quantity, and the features this process saw.
fn compute() -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for (name, o) in hand_written_outputs([4, 2, 3]) {
        out.insert(
            name.into(),
            serde_json::json!({"logits": o.logits, "train_logits": o.train_logits, "grads": o.grads}),
        );
    }
    out.insert(
        "features".into(),
        serde_json::json!({
            "avx512f": std::arch::is_x86_feature_detected!("avx512f"),
            "avx2": std::arch::is_x86_feature_detected!("avx2"),
            "fma": std::arch::is_x86_feature_detected!("fma"),
        }),
    );
    serde_json::Value::Object(out)
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// This test binary, rerun under `qemu-x86_64 -cpu <model>`, computing in the child branch.
fn emulated(model: &str, dir: &Path) -> serde_json::Value {
    let out = dir.join(format!("{model}.json"));
    let exe = std::env::current_exe().unwrap();
    let o = Command::new("qemu-x86_64")
        .args(["-cpu", model])
        .arg(&exe)
        .args([
            "--exact",
            "levels_agree_with_this_machine",
            "--test-threads",
            "1",
        ])
        .env(CHILD, &out)
        .output()
        .expect("qemu-x86_64 (Debian's qemu-user; scripts/setup-tests.sh installs it)");
    assert!(
        o.status.success(),
        "under -cpu {model}: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap()
}

#[test]
fn levels_agree_with_this_machine() {
    if let Some(out) = std::env::var_os(CHILD) {
        std::fs::write(out, compute().to_string()).unwrap();
        return;
    }
    let native = compute();
    assert!(
        floats(&native["lite0"]["grads"])
            .iter()
            .any(|g| g.abs() > 1e-6),
        "the backward produced no gradient to compare"
    );
    let dir = tempfile::tempdir().unwrap();
    for (model, avx2, fma) in [("Haswell", true, true), ("Nehalem", false, false)] {
        let other = emulated(model, dir.path());
        let f = &other["features"];
        assert_eq!(f["avx512f"], false, "-cpu {model}: {f}");
        assert_eq!(
            (f["avx2"].as_bool(), f["fma"].as_bool()),
            (Some(avx2), Some(fma)),
            "-cpu {model}: {f}"
        );
        for net in ["resnet8", "lite0", "vit"] {
            for q in ["logits", "train_logits", "grads"] {
                let (a, b) = (floats(&native[net][q]), floats(&other[net][q]));
                let scale = a.iter().fold(1f32, |m, v| m.max(v.abs()));
                let d = max_abs_diff(&a, &b);
                assert!(
                    d <= 1e-4 * scale,
                    "{net} {q}: max |Δ| {d} between this CPU and -cpu {model} (scale {scale})"
                );
            }
        }
    }
}
