//! The hand-written norm-affine backward pass (`Model::norm_affine_backward`) against burn's
//! autodiff of the generic forward on the same weights: loss, logits, every γ/β gradient and the
//! running statistics it leaves behind, in batch-statistics, TBR and running mode, on every
//! architecture family (basic and bottleneck blocks, strided and identity shortcuts, the
//! torchvision stem with its max pool).

mod common;

use cema_model::{
    cema_distill_grad, cema_distill_loss, cpu, entropy_margin, mean_entropy, mean_entropy_grad,
    Arch, DistillWeights, HostBackward, InputSpec, Model, ModelError, NormMode, Trainable,
};
use common::*;

fn compare(a: &HostBackward, b: &HostBackward, m: &Model, what: &str) {
    assert!(
        (a.loss - b.loss).abs() <= 1e-4 * (1.0 + b.loss.abs()),
        "{what}: loss {} vs {}",
        a.loss,
        b.loss
    );
    assert_close(&a.logits, &b.logits, 1e-4, &format!("{what}: logits"));
    let ids = |h: &HostBackward| h.grads.iter().map(|(i, _)| *i).collect::<Vec<_>>();
    let mut ib = ids(b);
    ib.sort();
    assert_eq!(ids(a), ib, "{what}: the same parameters get gradients");
    // A gradient that is zero analytically (β of a BatchNorm whose output feeds a 1×1
    // convolution and another batch-statistics BatchNorm: the shift cancels) holds only rounding
    // noise, of the order of the other gradients times ε; it is compared at that scale.
    let largest = b
        .grads
        .iter()
        .flat_map(|(_, g)| g.iter())
        .fold(0f32, |m, v| m.max(v.abs()));
    for (i, g) in &a.grads {
        let other = &b.grads.iter().find(|(j, _)| j == i).unwrap().1;
        let name = m.store().name(*i).to_string();
        let floor = vec![0.01 * largest];
        let with_floor: Vec<f32> = other.iter().chain(&floor).copied().collect();
        let mine: Vec<f32> = g.iter().chain(&floor).copied().collect();
        assert_close(&mine, &with_floor, 2e-3, &format!("{what}: ∂L/∂{name}"));
    }
    assert!(
        a.grads
            .iter()
            .any(|(_, g)| g.iter().any(|v| v.abs() > 1e-6)),
        "{what}: all gradients vanished, the comparison is empty"
    );
}

/// Native and autodiff on two copies of the same model, same pixels, same host loss.
fn check(arch: Arch, input: InputSpec, n: usize, mode: NormMode, update: bool) {
    let mut card = fmnist_card(arch.clone());
    card.input = input;
    let per = card.input.height * card.input.width * card.input.channels;
    let mut native = Model::init(card, &cpu(), 3).unwrap();
    native.hand_written_paths().unwrap();
    perturb_norms(&mut native, 1);
    let mut reference = native.clone();
    reference.set_native_backward(false);
    let px = pixels(n, per, n);
    let c = arch.num_classes();
    let e0 = entropy_margin(c);
    // The distillation loss against a fixed "teacher": every term of the cloud's loss.
    let teacher: Vec<f32> = (0..n * c)
        .map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.4)
        .collect();
    let loss = |l: &[f32]| cema_distill_grad(l, &teacher, c, e0, DistillWeights::default());
    let what = format!("{arch:?} batch {n} {mode:?} update {update}");
    let a = native
        .norm_affine_backward(&px, n, mode, update, loss)
        .unwrap();
    let b = reference
        .norm_affine_backward(&px, n, mode, update, loss)
        .unwrap();
    compare(&a, &b, &native, &what);
    for ((name, x), (_, y)) in norm_state(&native).iter().zip(&norm_state(&reference)) {
        assert_close(x, y, 1e-4, &format!("{what}: {name} after the step"));
    }
}

#[test]
fn cifar_resnet_matches_autodiff_in_every_mode() {
    let arch = Arch::CifarResnet {
        depth: 8,
        width: 8,
        in_channels: 1,
        num_classes: 10,
    };
    check(arch.clone(), gray(28), 6, NormMode::Tbr, true);
    check(arch.clone(), gray(28), 5, NormMode::Batch, false);
    check(arch.clone(), gray(12), 3, NormMode::Batch, true);
    check(arch, gray(12), 4, NormMode::Running, false);
}

#[test]
fn torchvision_basic_and_bottleneck_resnets_match_autodiff() {
    let rgb = InputSpec {
        height: 33,
        width: 29,
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
        3,
        NormMode::Tbr,
        true,
    );
    check(
        Arch::TorchvisionResnet {
            depth: 18,
            in_channels: 3,
            num_classes: 7,
        },
        rgb.clone(),
        4,
        NormMode::Batch,
        false,
    );
    // TBR only for the 50-layer net: in batch mode its last stage normalises 2×2 maps of 4 images
    // (16 values per channel) of a random, untrained net, where some channels are constant and
    // rounding decides the ReLU masks, so the two paths legitimately differ by a few percent.
    check(
        Arch::TorchvisionResnet {
            depth: 50,
            in_channels: 3,
            num_classes: 5,
        },
        rgb,
        4,
        NormMode::Tbr,
        true,
    );
}

#[test]
fn shipped_edge_model_tbr_step_matches_autodiff_with_burns_own_loss() {
    // The cloud's student step end to end: burn's tensor loss on one side, the host loss and the
    // hand-written pass on the other.
    let mut native = Model::load(&repo_root().join("models/edge.safetensors"), &cpu()).unwrap();
    let mut reference = native.clone();
    let n = 32;
    let px = pixels(n, 28 * 28, 11);
    let teacher: Vec<f32> = (0..n * 10)
        .map(|i| ((i * 5 % 13) as f32 - 6.0) * 0.3)
        .collect();
    let (e0, k) = (entropy_margin(10), DistillWeights::default());
    let a = native
        .norm_affine_backward(&px, n, NormMode::Tbr, true, |l| {
            cema_distill_grad(l, &teacher, 10, e0, k)
        })
        .unwrap();
    let x = cema_model::to_input(&reference.card.input, &px, n, &cpu()).unwrap();
    let out = reference.backward(x, NormMode::Tbr, true, Trainable::NormAffine, |s| {
        cema_distill_loss(s, &teacher, e0, k)
    });
    let b = HostBackward {
        loss: out.loss,
        logits: out
            .logits
            .into_data()
            .convert::<f32>()
            .as_slice::<f32>()
            .unwrap()
            .to_vec(),
        grads: out
            .grads
            .into_iter()
            .map(|(i, g)| (i, g.into_data().as_slice::<f32>().unwrap().to_vec()))
            .collect(),
    };
    compare(&a, &b, &native, "shipped edge, TBR, distillation");
    for ((name, x), (_, y)) in norm_state(&native).iter().zip(&norm_state(&reference)) {
        assert_close(x, y, 1e-4, &format!("{name} after the step"));
    }
}

#[test]
fn tent_loss_through_both_paths_gives_the_same_step() {
    let arch = Arch::resnet8(1, 10);
    let mut native = Model::init(fmnist_card(arch), &cpu(), 0).unwrap();
    perturb_norms(&mut native, 4);
    let mut reference = native.clone();
    let px = pixels(8, 28 * 28, 2);
    let a = native
        .norm_affine_backward(&px, 8, NormMode::Batch, false, |l| mean_entropy_grad(l, 10))
        .unwrap();
    let x = cema_model::to_input(&reference.card.input, &px, 8, &cpu()).unwrap();
    let out = reference.backward(
        x,
        NormMode::Batch,
        false,
        Trainable::NormAffine,
        mean_entropy,
    );
    assert!(
        (a.loss - out.loss).abs() < 1e-5,
        "{} vs {}",
        a.loss,
        out.loss
    );
    // Batch mode without update leaves the running statistics alone.
    assert_eq!(norm_state(&native), norm_state(&reference));
}

#[test]
fn bad_input_is_an_error_and_changes_nothing() {
    let mut m = Model::init(fmnist_card(Arch::resnet8(1, 10)), &cpu(), 0).unwrap();
    let before = norm_state(&m);
    let err = m
        .norm_affine_backward(&[0u8; 100], 1, NormMode::Tbr, true, |l| {
            mean_entropy_grad(l, 10)
        })
        .unwrap_err();
    assert!(matches!(err, ModelError::Input(_)), "{err}");
    assert_eq!(norm_state(&m), before);
}

#[test]
fn the_native_path_is_the_default_on_the_cpu() {
    // A model on the CPU runs the hand-written pass: its result differs from autodiff's in the
    // last bits, which it would not if both calls took the same path.
    let mut m = Model::init(fmnist_card(Arch::resnet8(1, 10)), &cpu(), 0).unwrap();
    perturb_norms(&mut m, 2);
    let mut r = m.clone();
    r.set_native_backward(false);
    let px = pixels(4, 28 * 28, 3);
    let a = m
        .norm_affine_backward(&px, 4, NormMode::Tbr, false, |l| mean_entropy_grad(l, 10))
        .unwrap();
    let b = r
        .norm_affine_backward(&px, 4, NormMode::Tbr, false, |l| mean_entropy_grad(l, 10))
        .unwrap();
    assert_ne!(a.grads, b.grads, "both calls took the same path");
    compare(&a, &b, &m, "default vs autodiff");
}

#[test]
fn forward_only_passes_match_burns() {
    // BN-adapt's batch-statistics logits, an edge replacing its statistics with its first batch's,
    // and an edge tracking its statistics forward-only: logits and the state left behind.
    for arch in [
        Arch::resnet8(1, 10),
        Arch::TorchvisionResnet {
            depth: 18,
            in_channels: 1,
            num_classes: 10,
        },
    ] {
        let mut native = Model::init(fmnist_card(arch.clone()), &cpu(), 1).unwrap();
        perturb_norms(&mut native, 5);
        let mut reference = native.clone();
        reference.set_native_backward(false);
        let px = pixels(6, 28 * 28, 9);
        let what = format!("{arch:?}");
        let (a, b) = (
            native.logits(&px, 6, NormMode::Batch).unwrap(),
            reference.logits(&px, 6, NormMode::Batch).unwrap(),
        );
        assert_close(&a, &b, 1e-4, &format!("{what}: batch-statistics logits"));
        let (a, b) = (
            native.logits_tracking(&px, 6, 0.3).unwrap(),
            reference.logits_tracking(&px, 6, 0.3).unwrap(),
        );
        assert_close(&a, &b, 1e-4, &format!("{what}: tracking logits"));
        let (a, b) = (
            native.init_running_stats(&px[..4 * 784], 4).unwrap(),
            reference.init_running_stats(&px[..4 * 784], 4).unwrap(),
        );
        assert_close(&a, &b, 1e-4, &format!("{what}: init logits"));
        for ((name, x), (_, y)) in norm_state(&native).iter().zip(&norm_state(&reference)) {
            assert_close(x, y, 1e-4, &format!("{what}: {name}"));
        }
    }
}

#[test]
fn efficientnet_lite_matches_autodiff() {
    // Depthwise convolutions (their input gradient is a scatter), TensorFlow "SAME" padding
    // (asymmetric at 40 px, partly symmetric at 33), ReLU6 masks, residuals with no activation.
    let arch = Arch::efficientnet_lite(0, 6);
    check(arch.clone(), rgb(40), 3, NormMode::Tbr, true);
    check(arch, rgb(33), 2, NormMode::Batch, false);
}
