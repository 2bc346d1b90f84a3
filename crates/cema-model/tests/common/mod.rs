#![allow(dead_code)]
use std::path::{Path, PathBuf};

use cema_model::{Arch, InputSpec, Kind, Model, ModelCard};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn golden() -> serde_json::Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

pub fn golden_vec(g: &serde_json::Value, key: &str) -> Vec<f32> {
    g[key]
        .as_array()
        .unwrap_or_else(|| panic!("{key}"))
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect()
}

pub fn fmnist_card(arch: Arch) -> ModelCard {
    ModelCard::fashion_mnist("test", "edge", arch, vec![])
}

/// The first 8 Fashion-MNIST test images and labels, or None (with a note) if the package is absent.
pub fn first_test_images(n: usize) -> Option<(Vec<u8>, Vec<u32>)> {
    match cema_data::fashion_mnist::load(None, cema_data::Split::Test) {
        Ok(s) => {
            let s = s.take(n);
            Some((s.images, s.labels))
        }
        Err(e) => {
            eprintln!("note: skipping, Fashion-MNIST not available: {e}");
            None
        }
    }
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Deterministic non-trivial values: γ around 1, β and means around 0, variances positive.
pub fn perturb_norms(m: &mut Model, seed: u32) {
    let store = m.store_mut();
    for i in 0..store.len() {
        let kind = store.kind(i);
        if !kind.is_norm_state() {
            continue;
        }
        let n: usize = store.shape(i).iter().product();
        let v: Vec<f32> = (0..n)
            .map(|j| {
                let u = (((j as u32).wrapping_mul(2_654_435_761) ^ seed.wrapping_mul(97)) % 1000)
                    as f32
                    / 1000.0;
                match kind {
                    Kind::NormWeight => 0.5 + u,
                    Kind::RunningVar => 0.2 + 2.0 * u,
                    _ => u - 0.5,
                }
            })
            .collect();
        store.set_values(i, v);
    }
}

pub fn pixels(n: usize, per: usize, seed: usize) -> Vec<u8> {
    (0..n * per)
        .map(|i| ((i + seed).wrapping_mul(2_654_435_761) >> 9) as u8)
        .collect()
}

/// A grey input of `side`×`side` with Fashion-MNIST's normalisation.
pub fn gray(side: usize) -> InputSpec {
    InputSpec {
        height: side,
        width: side,
        channels: 1,
        mean: vec![0.286],
        std: vec![0.353],
    }
}

/// An RGB input of `side`×`side` with EfficientNet-Lite's normalisation, (x − 127)/128.
pub fn rgb(side: usize) -> InputSpec {
    InputSpec {
        height: side,
        width: side,
        channels: 3,
        mean: vec![127.0 / 255.0; 3],
        std: vec![128.0 / 255.0; 3],
    }
}

/// The running statistics and γ/β of `m`, by name.
pub fn norm_state(m: &Model) -> Vec<(String, Vec<f32>)> {
    let s = m.store();
    (0..s.len())
        .filter(|&i| s.kind(i).is_norm_state())
        .map(|i| (s.name(i).to_string(), s.values(i)))
        .collect()
}

/// Relative closeness, scaled by the larger of the two vectors' magnitudes.
pub fn assert_close(a: &[f32], b: &[f32], tol: f32, what: &str) {
    let scale = b.iter().chain(a).fold(1e-3f32, |m, v| m.max(v.abs()));
    let d = max_abs_diff(a, b);
    assert!(d <= tol * scale, "{what}: max |Δ| {d} (scale {scale})");
}
