//! The adaptation losses (SPEC §3) against an independent f64 host implementation: values, and
//! autodiff gradients w.r.t. the logits against central finite differences of that implementation
//! (with the "constant" weights frozen at the unperturbed point, as the losses define them).

use burn::tensor::TensorData;
use cema_model::{
    cema_distill_grad, cema_distill_loss, cpu, cross_entropy, cross_entropy_grad, entropy_margin,
    entropy_rows, mean_entropy, mean_entropy_grad, reliability_weights, self_weighted_entropy,
    self_weighted_entropy_grad, softmax_rows, weighted_entropy, weighted_entropy_grad,
    weighted_hard_ce, weighted_kl, DistillWeights, Tensor,
};

const N: usize = 3;
const C: usize = 4;

fn logits() -> Vec<f32> {
    vec![
        0.5, -1.2, 2.0, 0.1, //
        -0.3, 0.4, 0.2, -0.8, //
        3.0, -2.0, 0.0, 1.5,
    ]
}

fn teacher() -> Vec<f32> {
    vec![
        1.0, 0.2, -0.5, 0.3, //
        -1.0, 2.5, 0.0, 0.1, //
        0.2, 0.1, 0.9, -0.4,
    ]
}

// ---- f64 reference -------------------------------------------------------------------------

fn log_softmax64(row: &[f64]) -> Vec<f64> {
    let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
    row.iter().map(|v| v - lse).collect()
}

fn entropy64(row: &[f64]) -> f64 {
    -log_softmax64(row).iter().map(|l| l.exp() * l).sum::<f64>()
}

fn rows(x: &[f64]) -> Vec<&[f64]> {
    x.chunks_exact(C).collect()
}

fn ref_weighted_entropy(x: &[f64], w: &[f64]) -> f64 {
    rows(x)
        .iter()
        .zip(w)
        .map(|(r, w)| entropy64(r) * w)
        .sum::<f64>()
        / N as f64
}

fn ref_kl(x: &[f64], t: &[f64], w: &[f64], beta: f64, temp: f64) -> f64 {
    let mut sum = 0.0;
    for i in 0..N {
        let s: Vec<f64> = x[i * C..(i + 1) * C].iter().map(|v| v / temp).collect();
        let tt: Vec<f64> = t[i * C..(i + 1) * C].iter().map(|v| v / temp).collect();
        let (ls, lt) = (log_softmax64(&s), log_softmax64(&tt));
        let kl: f64 = (0..C).map(|j| lt[j].exp() * (lt[j] - ls[j])).sum();
        sum += kl * w[i];
    }
    beta * temp * temp * sum / N as f64
}

fn ref_hard_ce(x: &[f64], t: &[f64], w: &[f64]) -> f64 {
    let mut sum = 0.0;
    for i in 0..N {
        let tr = &t[i * C..(i + 1) * C];
        let y = (0..C)
            .max_by(|&a, &b| tr[a].partial_cmp(&tr[b]).unwrap())
            .unwrap();
        sum += -log_softmax64(&x[i * C..(i + 1) * C])[y] * w[i];
    }
    sum / N as f64
}

fn w64(x: &[f64], e0: f64) -> Vec<f64> {
    rows(x)
        .iter()
        .map(|r| (-(entropy64(r) - e0)).exp())
        .collect()
}

fn to64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

// ---- harness -------------------------------------------------------------------------------

/// Value and gradient of a tensor loss at `x`.
fn autodiff<F: Fn(Tensor<2>) -> Tensor<1>>(x: &[f32], f: F) -> (f32, Vec<f32>) {
    let leaf = Tensor::<2>::from_data(TensorData::new(x.to_vec(), [N, C]), &cpu())
        .autodiff()
        .require_grad();
    let loss = f(leaf.clone());
    let grads = loss.backward();
    let g = leaf.grad(&grads).expect("gradient w.r.t. the logits");
    let value = loss
        .without_autodiff()
        .into_data()
        .as_slice::<f32>()
        .unwrap()[0];
    (value, g.into_data().as_slice::<f32>().unwrap().to_vec())
}

fn finite_diff<F: Fn(&[f64]) -> f64>(x: &[f32], f: F) -> Vec<f64> {
    let h = 1e-5;
    let x0 = to64(x);
    (0..x0.len())
        .map(|k| {
            let (mut p, mut m) = (x0.clone(), x0.clone());
            p[k] += h;
            m[k] -= h;
            (f(&p) - f(&m)) / (2.0 * h)
        })
        .collect()
}

fn check(name: &str, x: &[f32], value: f32, grad: &[f32], ref_value: f64, ref_grad: &[f64]) {
    assert!(
        (value as f64 - ref_value).abs() < 1e-5 * (1.0 + ref_value.abs()),
        "{name}: value {value} vs reference {ref_value}"
    );
    assert_eq!(grad.len(), x.len());
    for (k, (g, r)) in grad.iter().zip(ref_grad).enumerate() {
        assert!(
            (*g as f64 - r).abs() < 1e-4,
            "{name}: d/dx[{k}] autodiff {g} vs finite difference {r}"
        );
    }
}

// ---- tests ---------------------------------------------------------------------------------

#[test]
fn host_softmax_and_entropy_match_reference() {
    let x = logits();
    let p = softmax_rows(&x, C);
    for row in p.chunks_exact(C) {
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }
    let e = entropy_rows(&x, C);
    for (i, r) in rows(&to64(&x)).iter().enumerate() {
        assert!((e[i] as f64 - entropy64(r)).abs() < 1e-6);
    }
    // Uniform logits: ln C; a saturated row: 0, not NaN.
    let e = entropy_rows(&[0.0, 0.0, 0.0, 0.0, 1000.0, 0.0, 0.0, 0.0], C);
    assert!((e[0] - (C as f32).ln()).abs() < 1e-6);
    assert!(e[1].abs() < 1e-6 && e[1].is_finite());
    assert!((entropy_margin(1000) - 0.4 * 1000f32.ln()).abs() < 1e-6);
}

#[test]
fn tent_mean_entropy_value_and_gradient() {
    let x = logits();
    let w = [1.0; N];
    let (v, g) = autodiff(&x, mean_entropy);
    let fd = finite_diff(&x, |p| ref_weighted_entropy(p, &w));
    check(
        "mean_entropy",
        &x,
        v,
        &g,
        ref_weighted_entropy(&to64(&x), &w),
        &fd,
    );
}

#[test]
fn weighted_entropy_value_and_gradient() {
    let x = logits();
    let w = [0.5f32, 2.0, 1.25];
    let (v, g) = autodiff(&x, |l| weighted_entropy(l, &w));
    let w64: Vec<f64> = to64(&w);
    let fd = finite_diff(&x, |p| ref_weighted_entropy(p, &w64));
    check(
        "weighted_entropy",
        &x,
        v,
        &g,
        ref_weighted_entropy(&to64(&x), &w64),
        &fd,
    );
}

#[test]
fn self_weighted_entropy_treats_weights_as_constants() {
    let x = logits();
    let e0 = entropy_margin(C);
    let frozen = w64(&to64(&x), e0 as f64);
    let (v, g) = autodiff(&x, |l| self_weighted_entropy(l, e0));
    let fd = finite_diff(&x, |p| ref_weighted_entropy(p, &frozen));
    check(
        "self_weighted_entropy",
        &x,
        v,
        &g,
        ref_weighted_entropy(&to64(&x), &frozen),
        &fd,
    );
    // And the host weights agree with the reference.
    let hw = reliability_weights(&entropy_rows(&x, C), e0);
    for (a, b) in hw.iter().zip(&frozen) {
        assert!((*a as f64 - b).abs() < 1e-6);
    }
}

#[test]
fn weighted_kl_value_and_gradient_at_two_temperatures() {
    let x = logits();
    let t = teacher();
    let w = [0.7f32, 1.0, 0.3];
    for temp in [1.0f32, 2.0] {
        let (v, g) = autodiff(&x, |l| weighted_kl(l, &t, &w, 3.0, temp));
        let (t64, w64) = (to64(&t), to64(&w));
        let r = |p: &[f64]| ref_kl(p, &t64, &w64, 3.0, temp as f64);
        let fd = finite_diff(&x, r);
        check("weighted_kl", &x, v, &g, r(&to64(&x)), &fd);
    }
    // KL of a distribution with itself is zero.
    let (v, _) = autodiff(&t, |l| weighted_kl(l, &t, &w, 3.0, 1.0));
    assert!(v.abs() < 1e-6);
}

#[test]
fn weighted_hard_ce_value_and_gradient() {
    let x = logits();
    let t = teacher();
    let w = [0.7f32, 1.0, 0.3];
    let (v, g) = autodiff(&x, |l| weighted_hard_ce(l, &t, &w));
    let (t64, w64) = (to64(&t), to64(&w));
    let fd = finite_diff(&x, |p| ref_hard_ce(p, &t64, &w64));
    check(
        "weighted_hard_ce",
        &x,
        v,
        &g,
        ref_hard_ce(&to64(&x), &t64, &w64),
        &fd,
    );
}

#[test]
fn cema_distill_loss_is_the_weighted_sum_of_its_terms() {
    let x = logits();
    let t = teacher();
    let k = DistillWeights::default();
    assert_eq!(
        (k.alpha, k.beta, k.gamma, k.temperature),
        (3.0, 3.0, 1.0, 1.0)
    );
    let e0 = entropy_margin(C);
    let (x64, t64) = (to64(&x), to64(&t));
    let ws = w64(&x64, e0 as f64);
    let wt = w64(&t64, e0 as f64);
    let r = |p: &[f64]| {
        3.0 * ref_weighted_entropy(p, &ws)
            + ref_kl(p, &t64, &wt, 3.0, 1.0)
            + ref_hard_ce(p, &t64, &wt)
    };
    let (v, g) = autodiff(&x, |l| cema_distill_loss(l, &t, e0, k));
    let fd = finite_diff(&x, r);
    check("cema_distill_loss", &x, v, &g, r(&x64), &fd);
}

// ---- host losses with analytic gradients (what the hand-written backward pass consumes) ----

#[test]
fn host_entropy_losses_match_the_reference_and_finite_differences() {
    let x = logits();
    let x64 = to64(&x);
    let ones = [1.0; N];
    let (v, g) = mean_entropy_grad(&x, C);
    let fd = finite_diff(&x, |p| ref_weighted_entropy(p, &ones));
    check(
        "mean_entropy_grad",
        &x,
        v,
        &g,
        ref_weighted_entropy(&x64, &ones),
        &fd,
    );

    let w = [0.5f32, 2.0, 1.25];
    let w64v = to64(&w);
    let (v, g) = weighted_entropy_grad(&x, C, &w);
    let fd = finite_diff(&x, |p| ref_weighted_entropy(p, &w64v));
    check(
        "weighted_entropy_grad",
        &x,
        v,
        &g,
        ref_weighted_entropy(&x64, &w64v),
        &fd,
    );

    let e0 = entropy_margin(C);
    let frozen = w64(&x64, e0 as f64);
    let (v, g) = self_weighted_entropy_grad(&x, C, e0);
    let fd = finite_diff(&x, |p| ref_weighted_entropy(p, &frozen));
    check(
        "self_weighted_entropy_grad",
        &x,
        v,
        &g,
        ref_weighted_entropy(&x64, &frozen),
        &fd,
    );
}

#[test]
fn host_distill_gradient_matches_finite_differences_and_autodiff() {
    let x = logits();
    let t = teacher();
    let e0 = entropy_margin(C);
    let (x64, t64) = (to64(&x), to64(&t));
    let ws = w64(&x64, e0 as f64);
    let wt = w64(&t64, e0 as f64);
    for k in [
        DistillWeights::default(),
        DistillWeights {
            alpha: 0.5,
            beta: 2.0,
            gamma: 0.25,
            temperature: 2.0,
        },
    ] {
        let r = |p: &[f64]| {
            k.alpha as f64 * ref_weighted_entropy(p, &ws)
                + ref_kl(p, &t64, &wt, k.beta as f64, k.temperature as f64)
                + k.gamma as f64 * ref_hard_ce(p, &t64, &wt)
        };
        let (v, g) = cema_distill_grad(&x, &t, C, e0, k);
        let fd = finite_diff(&x, r);
        check("cema_distill_grad", &x, v, &g, r(&x64), &fd);
        let (va, ga) = autodiff(&x, |l| cema_distill_loss(l, &t, e0, k));
        assert!((v - va).abs() < 1e-5, "{v} vs autodiff {va}");
        for (a, b) in g.iter().zip(&ga) {
            assert!((a - b).abs() < 1e-5, "{a} vs autodiff {b}");
        }
    }
}

#[test]
fn host_cross_entropy_matches_autodiff() {
    let x = logits();
    let labels = [2u32, 0, 3];
    let (v, g) = cross_entropy_grad(&x, C, &labels);
    let (va, ga) = autodiff(&x, |l| cross_entropy(l, &labels));
    assert!((v - va).abs() < 1e-6, "{v} vs {va}");
    for (a, b) in g.iter().zip(&ga) {
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }
}
