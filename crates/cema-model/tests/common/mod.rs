#![allow(dead_code)]
use std::path::{Path, PathBuf};

use cema_model::{Arch, ModelCard};

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
