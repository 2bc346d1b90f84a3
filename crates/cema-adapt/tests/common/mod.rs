#![allow(dead_code)]
//! Tiny randomly initialised models and a few Fashion-MNIST test images (or deterministic noise
//! when the dataset package is absent), so model-level tests stay fast.

use cema_model::{cpu, Arch, Model, ModelCard, NamedTensors};
use rand::{Rng, SeedableRng};

pub const CLASSES: usize = 10;
pub const IMAGE: usize = 28 * 28;

pub fn card(name: &str, width: usize) -> ModelCard {
    let arch = Arch::CifarResnet {
        depth: 8,
        width,
        in_channels: 1,
        num_classes: CLASSES,
    };
    ModelCard::fashion_mnist(name, "edge", arch, vec![])
}

/// ResNet-8 of width 4 (edge/student) — a few thousand parameters.
pub fn tiny_edge(seed: u64) -> Model {
    Model::init(card("tiny-edge", 4), &cpu(), seed).unwrap()
}

/// ResNet-8 of width 8 (stands in for the foundation).
pub fn tiny_foundation(seed: u64) -> Model {
    Model::init(card("tiny-foundation", 8), &cpu(), seed).unwrap()
}

/// Scales the classifier so predictions are confident (low entropy): a random model's outputs
/// are near uniform and every sample would fail `E < E_max`.
pub fn sharpen(model: &mut Model, factor: f32) {
    let store = model.store_mut();
    for name in ["fc.weight", "fc.bias"] {
        let i = store.index_of(name).unwrap();
        let v: Vec<f32> = store.values(i).iter().map(|x| x * factor).collect();
        store.set_values(i, v);
    }
}

/// `n` test images (u8, 28×28×1): Fashion-MNIST's test set from `offset`, or noise with a note.
pub fn images(offset: usize, n: usize) -> Vec<u8> {
    match cema_data::fashion_mnist::load(None, cema_data::Split::Test) {
        Ok(set) => set.images[offset * IMAGE..(offset + n) * IMAGE].to_vec(),
        Err(e) => {
            eprintln!("note: Fashion-MNIST not available ({e}); using deterministic noise");
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(offset as u64);
            (0..n * IMAGE).map(|_| rng.random::<u8>()).collect()
        }
    }
}

/// Names whose values differ between two state dicts.
pub fn changed(before: &NamedTensors, after: &NamedTensors) -> Vec<String> {
    before
        .iter()
        .filter(|(k, t)| t.data != after[*k].data)
        .map(|(k, _)| k.clone())
        .collect()
}

/// Asserts that exactly the tensors `allowed(kind)` may change, and that `must` kinds did.
pub fn assert_only(
    model: &Model,
    before: &NamedTensors,
    allowed: impl Fn(cema_model::Kind) -> bool,
) {
    let after = model.state_dict();
    let store = model.store();
    for name in changed(before, &after) {
        let kind = store.kind(store.index_of(&name).unwrap());
        assert!(allowed(kind), "{name} ({kind:?}) changed but must not");
    }
}

pub fn kind_changed(model: &Model, before: &NamedTensors, kind: cema_model::Kind) -> bool {
    let after = model.state_dict();
    let store = model.store();
    changed(before, &after)
        .iter()
        .any(|n| store.kind(store.index_of(n).unwrap()) == kind)
}
