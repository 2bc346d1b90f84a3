#![allow(dead_code)]
use std::path::{Path, PathBuf};

use cema_model::{cpu, mean_entropy_grad, Arch, InputSpec, Kind, Model, ModelCard, NormMode};

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

/// What the hand-written paths produce for one small model: eval logits (the folded net), and the
/// train-mode logits and norm γ/β gradients of the norm-affine backward (mean entropy).
pub struct PathOutputs {
    pub logits: Vec<f32>,
    pub train_logits: Vec<f32>,
    pub grads: Vec<f32>,
}

/// [`PathOutputs`] of a CIFAR ResNet-8 (dense 3×3, strided and pointwise convolutions, residual
/// adds), an EfficientNet-Lite0 at 40 px (depthwise convolutions, ReLU6, SAME padding, an RGB
/// stem) and a tiny ViT (the token path: strided GEMMs, LayerNorm, GELU, softmax), on batches of
/// `n[0]`, `n[1]`, `n[2]` deterministic images, norms perturbed away from the identity.
pub fn hand_written_outputs(n: [usize; 3]) -> Vec<(&'static str, PathOutputs)> {
    let vit = Arch::Vit {
        image_size: 16,
        patch: 4,
        in_channels: 3,
        dim: 32,
        depth: 2,
        heads: 4,
        mlp_dim: 64,
        num_classes: 7,
    };
    let models = [
        ("resnet8", Arch::resnet8(1, 10), None),
        ("lite0", Arch::efficientnet_lite(0, 7), Some(rgb(40))),
        ("vit", vit, Some(rgb(16))),
    ];
    models
        .into_iter()
        .zip(n)
        .map(|((name, arch, input), n)| {
            let mut card = fmnist_card(arch);
            if let Some(i) = input {
                card.input = i;
            }
            let per = card.input.height * card.input.width * card.input.channels;
            let mut m = Model::init(card, &cpu(), 3).unwrap();
            m.hand_written_paths().unwrap();
            perturb_norms(&mut m, 1);
            let px = pixels(n, per, 5);
            let logits = m.logits(&px, n, NormMode::Running).unwrap();
            let classes = m.card.architecture.num_classes();
            let b = m
                .norm_affine_backward(&px, n, NormMode::Batch, false, |l| {
                    mean_entropy_grad(l, classes)
                })
                .unwrap();
            let grads = b.grads.iter().flat_map(|(_, g)| g.clone()).collect();
            let out = PathOutputs {
                logits,
                train_logits: b.logits,
                grads,
            };
            (name, out)
        })
        .collect()
}
