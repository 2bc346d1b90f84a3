//! The BatchNorm-folded inference path (`Model::logits` in eval mode) against burn's generic
//! forward on the same weights: every architecture family, non-trivial norm state, batch sizes
//! that do and do not split across threads, and refolding after the weights change.

mod common;

use cema_model::{cpu, Arch, InputSpec, Model, ModelError, NormMode};
use common::*;

fn both(m: &mut Model, px: &[u8], n: usize) -> (Vec<f32>, Vec<f32>) {
    m.set_fold_inference(true);
    let folded = m.logits(px, n, NormMode::Running).unwrap();
    m.set_fold_inference(false);
    let generic = m.logits(px, n, NormMode::Running).unwrap();
    m.set_fold_inference(true);
    (folded, generic)
}

fn assert_close(folded: &[f32], generic: &[f32], what: &str) {
    let scale = generic.iter().fold(1.0f32, |a, v| a.max(v.abs()));
    let d = max_abs_diff(folded, generic);
    assert!(
        d <= 1e-4 * scale,
        "{what}: max |Δ| {d} (logit scale {scale})"
    );
}

fn check(arch: Arch, input: InputSpec, batches: &[usize]) {
    let mut card = fmnist_card(arch.clone());
    card.input = input;
    let per = card.input.height * card.input.width * card.input.channels;
    let mut m = Model::init(card, &cpu(), 3).unwrap();
    m.hand_written_paths().unwrap();
    perturb_norms(&mut m, 1);
    for &n in batches {
        let px = pixels(n, per, n);
        let (f, g) = both(&mut m, &px, n);
        assert_eq!(f.len(), n * arch.num_classes());
        assert_close(&f, &g, &format!("{arch:?}, batch {n}"));
    }
}

#[test]
fn cifar_resnet_matches_the_generic_forward() {
    let arch = Arch::CifarResnet {
        depth: 8,
        width: 8,
        in_channels: 1,
        num_classes: 10,
    };
    // 1 and 2 run as one group; 9 and 37 are split over the pool with a ragged last group.
    check(arch, gray(28), &[1, 2, 9, 37]);
}

#[test]
fn torchvision_basic_and_bottleneck_resnets_match_the_generic_forward() {
    let rgb = InputSpec {
        height: 40,
        width: 36,
        channels: 3,
        mean: vec![0.4, 0.5, 0.6],
        std: vec![0.2, 0.25, 0.3],
    };
    check(
        Arch::TorchvisionResnet {
            depth: 18,
            in_channels: 3,
            num_classes: 7,
        },
        rgb.clone(),
        &[1, 3],
    );
    check(
        Arch::TorchvisionResnet {
            depth: 50,
            in_channels: 3,
            num_classes: 5,
        },
        rgb,
        &[2],
    );
}

#[test]
fn shipped_edge_model_matches_the_generic_forward() {
    let mut m = Model::load(&repo_root().join("models/edge.safetensors"), &cpu()).unwrap();
    let px = pixels(64, 28 * 28, 5);
    let (f, g) = both(&mut m, &px, 64);
    assert!(max_abs_diff(&f, &g) <= 1e-4, "{}", max_abs_diff(&f, &g));
}

#[test]
fn refolds_when_the_norm_state_or_weights_change() {
    let arch = Arch::resnet8(1, 10);
    let mut m = Model::init(fmnist_card(arch), &cpu(), 0).unwrap();
    let px = pixels(4, 28 * 28, 1);
    let before = m.logits(&px, 4, NormMode::Running).unwrap();
    // A new norm state arrives, as from the cloud.
    perturb_norms(&mut m, 7);
    let (f, g) = both(&mut m, &px, 4);
    assert_close(&f, &g, "after a norm-state change");
    assert!(
        max_abs_diff(&before, &f) > 1e-3,
        "the cached fold was reused"
    );
    // A non-norm weight changes too.
    let store = m.store_mut();
    let fc = store.index_of("fc.bias").unwrap();
    store.set_values(fc, vec![1.0; 10]);
    let (f2, g2) = both(&mut m, &px, 4);
    assert_close(&f2, &g2, "after a weight change");
    assert!(max_abs_diff(&f, &f2) > 0.5);
    // A clone folds independently of the original.
    let mut c = m.clone();
    perturb_norms(&mut c, 9);
    assert_close(
        &m.logits(&px, 4, NormMode::Running).unwrap(),
        &f2,
        "original",
    );
}

#[test]
fn wrong_pixel_count_is_an_input_error() {
    let mut m = Model::init(fmnist_card(Arch::resnet8(1, 10)), &cpu(), 0).unwrap();
    let err = m.logits(&[0u8; 100], 1, NormMode::Running).unwrap_err();
    assert!(matches!(err, ModelError::Input(_)), "{err}");
    assert!(err.to_string().contains("expected 784"), "{err}");
}

#[test]
fn efficientnet_lite_matches_the_generic_forward() {
    // Depthwise 3×3 and 5×5 convolutions, inverted residuals without an activation after the
    // add, ReLU6. At 48 px TensorFlow's "SAME" pads every stride-2 layer asymmetrically; at 33 px
    // the odd sizes make some of them symmetric.
    check(Arch::efficientnet_lite(0, 7), rgb(48), &[1, 3]);
    check(Arch::efficientnet_lite(2, 5), rgb(33), &[2]);
}
