//! Several models through one pass (`Model::norm_affine_backward_many`, `Model::logits_many`):
//! every convolution runs once over all the images, each model's BatchNorms see only its own.
//! The result must be, within float rounding, each model's own pass: loss, logits, every γ/β
//! gradient and the running statistics left behind.

mod common;

use cema_model::{
    cema_distill_grad, cpu, entropy_margin, Arch, DistillWeights, InputSpec, Model, NormMode,
};
use common::*;

/// Three sessions of one model: the same frozen weights, different norm states, different
/// numbers of images (so the segments are uneven).
fn sessions(arch: Arch, input: InputSpec) -> Vec<Model> {
    let mut card = fmnist_card(arch);
    card.input = input;
    let base = Model::init(card, &cpu(), 5).unwrap();
    base.hand_written_paths().unwrap();
    (1..=3)
        .map(|seed| {
            let mut m = base.clone();
            perturb_norms(&mut m, seed);
            m
        })
        .collect()
}

fn teacher(n: usize, c: usize, seed: usize) -> Vec<f32> {
    (0..n * c)
        .map(|i| (((i + seed) * 7 % 11) as f32 - 5.0) * 0.4)
        .collect()
}

fn check(arch: Arch, input: InputSpec, counts: &[usize], mode: NormMode, update: bool) {
    let what = format!("{arch:?} {counts:?} {mode:?} update {update}");
    let c = arch.num_classes();
    let e0 = entropy_margin(c);
    let mut batched = sessions(arch, input);
    let mut alone: Vec<Model> = batched.clone();
    let per = {
        let i = &batched[0].card.input;
        i.height * i.width * i.channels
    };
    let px: Vec<Vec<u8>> = counts
        .iter()
        .enumerate()
        .map(|(k, &n)| pixels(n, per, 11 * k + 1))
        .collect();
    let teachers: Vec<Vec<f32>> = counts
        .iter()
        .enumerate()
        .map(|(k, &n)| teacher(n, c, k))
        .collect();
    let inputs: Vec<(&[u8], usize)> = px.iter().map(|p| &p[..]).zip(counts.to_vec()).collect();

    let mut refs: Vec<&mut Model> = batched.iter_mut().collect();
    assert!(Model::batches(&refs), "{what}: clones share one pass");
    let losses: Vec<_> = teachers
        .iter()
        .map(|t| move |l: &[f32]| cema_distill_grad(l, t, c, e0, DistillWeights::default()))
        .collect();
    let many = Model::norm_affine_backward_many(&mut refs, &inputs, mode, update, losses).unwrap();
    assert_eq!(many.len(), counts.len());

    for (k, m) in alone.iter_mut().enumerate() {
        let t = &teachers[k];
        let one = m
            .norm_affine_backward(&px[k], counts[k], mode, update, |l| {
                cema_distill_grad(l, t, c, e0, DistillWeights::default())
            })
            .unwrap();
        let b = &many[k];
        let w = format!("{what}: session {k}");
        assert!(
            (b.loss - one.loss).abs() <= 1e-5 * (1.0 + one.loss.abs()),
            "{w}: loss {} vs {}",
            b.loss,
            one.loss
        );
        assert_close(&b.logits, &one.logits, 1e-5, &format!("{w}: logits"));
        assert_eq!(
            b.grads.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            one.grads.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            "{w}: the same parameters get gradients"
        );
        let largest = one
            .grads
            .iter()
            .flat_map(|(_, g)| g.iter())
            .fold(0f32, |m, v| m.max(v.abs()));
        assert!(largest > 1e-6, "{w}: all gradients vanished");
        for ((i, x), (_, y)) in b.grads.iter().zip(&one.grads) {
            let name = m.store().name(*i);
            // Scaled like the autodiff comparison: a gradient that is zero analytically holds
            // only rounding noise of the order of the others.
            let floor = [0.01 * largest];
            let x: Vec<f32> = x.iter().chain(&floor).copied().collect();
            let y: Vec<f32> = y.iter().chain(&floor).copied().collect();
            assert_close(&x, &y, 1e-4, &format!("{w}: ∂L/∂{name}"));
        }
        for ((name, x), (_, y)) in norm_state(&batched[k]).iter().zip(&norm_state(m)) {
            assert_close(x, y, 1e-5, &format!("{w}: {name} after the step"));
        }
    }
    // The sessions really differ: a batched pass that mixed their statistics or affines up
    // would have failed above only if they did.
    assert_ne!(norm_state(&batched[0]), norm_state(&batched[1]));
}

fn resnet8() -> Arch {
    Arch::CifarResnet {
        depth: 8,
        width: 8,
        in_channels: 1,
        num_classes: 10,
    }
}

#[test]
fn a_batched_pass_is_each_models_own_pass() {
    // Strided shortcuts (reborder of a residual), ReLU masks, every mode the cloud and the
    // baselines use, uneven segments and a one-image segment.
    check(resnet8(), gray(28), &[4, 7, 2], NormMode::Tbr, true);
    check(resnet8(), gray(12), &[3, 1, 5], NormMode::Batch, false);
    check(resnet8(), gray(12), &[2, 3, 4], NormMode::Running, false);
    // Depthwise convolutions (input gradient by scatter), ReLU6, residuals without activation.
    check(
        Arch::efficientnet_lite(0, 6),
        rgb(33),
        &[2, 3, 1],
        NormMode::Tbr,
        true,
    );
}

#[test]
fn batched_logits_are_each_models_logits() {
    let mut batched = sessions(resnet8(), gray(20));
    let mut alone = batched.clone();
    let counts = [3usize, 6, 2];
    let px: Vec<Vec<u8>> = counts.iter().map(|&n| pixels(n, 400, n)).collect();
    let inputs: Vec<(&[u8], usize)> = px.iter().map(|p| &p[..]).zip(counts).collect();
    // Eval mode batches only with folding off (folded, each model runs its own net).
    batched.iter_mut().for_each(|m| m.set_fold_inference(false));
    for mode in [NormMode::Running, NormMode::Batch] {
        let mut refs: Vec<&mut Model> = batched.iter_mut().collect();
        let many = Model::logits_many(&mut refs, &inputs, mode).unwrap();
        for (k, m) in alone.iter_mut().enumerate() {
            // Eval mode alone goes through the folded net: the same numbers, another rounding.
            let one = m.logits(&px[k], counts[k], mode).unwrap();
            assert_close(&many[k], &one, 1e-5, &format!("{mode:?} session {k}"));
        }
    }
    assert_eq!(
        norm_state(&batched[0]),
        norm_state(&alone[0]),
        "logits change nothing"
    );
}

#[test]
fn models_with_other_weights_run_one_pass_each_with_the_same_result() {
    let mut a = sessions(resnet8(), gray(12));
    // Another initialisation: the same architecture, other frozen weights.
    let mut other = Model::init(a[0].card.clone(), &cpu(), 99).unwrap();
    assert!(!a[0].shares_frozen_weights(&other));
    assert!(a[0].shares_frozen_weights(&a[1]));
    let px = pixels(4, 144, 3);
    let want_a = a[0].logits(&px[..288], 2, NormMode::Batch).unwrap();
    let want_o = other.logits(&px[288..], 2, NormMode::Batch).unwrap();
    let mut refs: Vec<&mut Model> = vec![&mut a[0], &mut other];
    assert!(!Model::batches(&refs));
    let got = Model::logits_many(
        &mut refs,
        &[(&px[..288], 2), (&px[288..], 2)],
        NormMode::Batch,
    )
    .unwrap();
    assert_eq!(got, vec![want_a, want_o]);
    // A model whose frozen weights were written is no longer the same net.
    let mut changed = a[1].clone();
    let w = (0..changed.store().len())
        .find(|&i| !changed.store().kind(i).is_norm_state())
        .unwrap();
    let v = changed.store().values(w);
    changed.store_mut().set_values(w, v);
    assert!(!a[0].shares_frozen_weights(&changed));
}

#[test]
fn mismatched_inputs_are_refused_and_change_nothing() {
    let mut m = sessions(resnet8(), gray(12));
    let before: Vec<_> = m.iter().map(norm_state).collect();
    let px = pixels(2, 144, 0);
    let mut refs: Vec<&mut Model> = m.iter_mut().collect();
    // Three models, two inputs.
    let e = Model::logits_many(&mut refs, &[(&px[..], 2), (&px[..], 2)], NormMode::Batch)
        .unwrap_err()
        .to_string();
    assert!(e.contains("3 models, 2 inputs"), "{e}");
    // One input short of its image count.
    let short = &px[..200];
    type Loss = fn(&[f32]) -> (f32, Vec<f32>);
    let losses: Vec<Loss> = vec![|l| (0.0, vec![0.0; l.len()]); 3];
    let e = Model::norm_affine_backward_many(
        &mut refs,
        &[(&px[..], 2), (short, 2), (&px[..], 2)],
        NormMode::Tbr,
        true,
        losses,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("200"), "{e}");
    let after: Vec<_> = m.iter().map(norm_state).collect();
    assert_eq!(before, after);
}
