//! The adaptation losses of SPEC §3 as differentiable functions of a logits tensor, plus host-side
//! softmax/entropy on `&[f32]` logits (what the edge's selection filters need).
//!
//! Every loss takes logits `[n, C]` and returns a one-element tensor, so it can be the closure of
//! [`crate::Net::backward`]. Weights are *constants* (SPEC §3: "no gradient through them"):
//! weights passed in are built as plain tensors; weights derived from the logits themselves are
//! computed on detached values.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Tensor, TensorData};

/// CEMA's distillation constants (SPEC §3, cloud step 2): `α = 3, β = 3, γ = 1, T = 1`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DistillWeights {
    /// Weight of the student's own (reliability-weighted) entropy.
    pub alpha: f32,
    /// Weight of the KL(teacher ‖ student) term.
    pub beta: f32,
    /// Weight of the cross-entropy against the teacher's argmax.
    pub gamma: f32,
    /// Distillation temperature.
    pub temperature: f32,
}

impl Default for DistillWeights {
    fn default() -> Self {
        DistillWeights {
            alpha: 3.0,
            beta: 3.0,
            gamma: 1.0,
            temperature: 1.0,
        }
    }
}

/// `E0 = 0.4 · ln C` (SPEC §3 notation): the entropy margin of EATA/CEMA.
pub fn entropy_margin(classes: usize) -> f32 {
    0.4 * (classes as f32).ln()
}

/// Row-wise softmax of host logits (`n × classes`, row-major), numerically stable.
pub fn softmax_rows(logits: &[f32], classes: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(logits.len());
    for row in logits.chunks_exact(classes) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let start = out.len();
        let mut sum = 0f32;
        for &v in row {
            let e = (v - max).exp();
            sum += e;
            out.push(e);
        }
        for v in &mut out[start..] {
            *v /= sum;
        }
    }
    out
}

/// Entropy `−Σ p log p` of each row of host logits, via log-softmax (exact for saturated rows).
pub fn entropy_rows(logits: &[f32], classes: usize) -> Vec<f32> {
    logits
        .chunks_exact(classes)
        .map(|row| {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let lse = max + row.iter().map(|v| (v - max).exp()).sum::<f32>().ln();
            -row.iter()
                .map(|&v| {
                    let logp = v - lse;
                    logp.exp() * logp
                })
                .sum::<f32>()
        })
        .collect()
}

/// Reliability weights `1/exp(E − E0)` of SPEC §3 from host entropies.
pub fn reliability_weights(entropies: &[f32], e0: f32) -> Vec<f32> {
    entropies.iter().map(|e| (-(e - e0)).exp()).collect()
}

/// Per-row entropy of a logits tensor, `[n]`, differentiable.
pub fn entropy(logits: Tensor<2>) -> Tensor<1> {
    let [n, _] = logits.dims();
    let logp = log_softmax(logits, 1);
    let p = logp.clone().exp();
    (p * logp).sum_dim(1).reshape([n]).neg()
}

fn constant(values: Vec<f32>, device: &Device) -> Tensor<1> {
    let n = values.len();
    Tensor::<1>::from_data(TensorData::new(values, [n]), device)
}

/// Tent's loss: the mean entropy of the batch.
pub fn mean_entropy(logits: Tensor<2>) -> Tensor<1> {
    entropy(logits).mean()
}

/// (a) `mean_x[E(x) · w(x)]` with per-sample constant weights (`weights.len() == n`).
pub fn weighted_entropy(logits: Tensor<2>, weights: &[f32]) -> Tensor<1> {
    let [n, _] = logits.dims();
    assert_eq!(weights.len(), n, "one weight per sample");
    let w = constant(weights.to_vec(), &logits.device());
    (entropy(logits) * w).mean()
}

/// `mean_x[E(x) · 1/exp(E(x) − E0)]`, the weights computed from the detached entropies: the
/// foundation's loss (SPEC §3 cloud step 1) and the α-term of the distillation loss.
pub fn self_weighted_entropy(logits: Tensor<2>, e0: f32) -> Tensor<1> {
    let e = entropy(logits);
    // Constant weights: detach, so no gradient flows through 1/exp(E − E0).
    let w = e.clone().detach().sub_scalar(e0).neg().exp();
    (e * w).mean()
}

/// Teacher log-probabilities at temperature `t` and the teacher's weights, on the host.
fn teacher_host(teacher: &[f32], classes: usize, t: f32) -> Vec<f32> {
    let scaled: Vec<f32> = teacher.iter().map(|v| v / t).collect();
    let mut out = Vec::with_capacity(teacher.len());
    for row in scaled.chunks_exact(classes) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let lse = max + row.iter().map(|v| (v - max).exp()).sum::<f32>().ln();
        out.extend(row.iter().map(|v| v - lse));
    }
    out
}

/// (b) `β · T² · mean_x[KL(softmax(t/T) ‖ softmax(s/T)) · w_t(x)]`; `teacher` logits are host
/// constants (`n × C`), `w_t` one weight per sample.
pub fn weighted_kl(
    student: Tensor<2>,
    teacher: &[f32],
    w_t: &[f32],
    beta: f32,
    temperature: f32,
) -> Tensor<1> {
    let [n, c] = student.dims();
    assert_eq!(teacher.len(), n * c, "teacher logits must be n × C");
    assert_eq!(w_t.len(), n, "one weight per sample");
    let log_pt = teacher_host(teacher, c, temperature);
    let p_t: Vec<f32> = log_pt.iter().map(|v| v.exp()).collect();
    let dev = student.device();
    let log_pt = Tensor::<2>::from_data(TensorData::new(log_pt, [n, c]), &dev);
    let p_t = Tensor::<2>::from_data(TensorData::new(p_t, [n, c]), &dev);
    let log_ps = log_softmax(student / temperature, 1);
    let kl = (p_t * (log_pt - log_ps)).sum_dim(1).reshape([n]);
    (kl * constant(w_t.to_vec(), &dev))
        .mean()
        .mul_scalar(beta * temperature * temperature)
}

/// (c) `mean_x[CE(s(x), argmax t(x)) · w(x)]`: cross-entropy against the teacher's hard labels.
pub fn weighted_hard_ce(student: Tensor<2>, teacher: &[f32], weights: &[f32]) -> Tensor<1> {
    let [n, c] = student.dims();
    assert_eq!(teacher.len(), n * c, "teacher logits must be n × C");
    assert_eq!(weights.len(), n, "one weight per sample");
    // One-hot of the teacher's argmax, scaled by the sample's weight: Σ_j onehot·w·(−log p_s).
    let mut target = vec![0f32; n * c];
    for (i, (row, w)) in teacher.chunks_exact(c).zip(weights).enumerate() {
        let mut best = 0;
        for (j, v) in row.iter().enumerate() {
            if *v > row[best] {
                best = j;
            }
        }
        target[i * c + best] = *w;
    }
    let target = Tensor::<2>::from_data(TensorData::new(target, [n, c]), &student.device());
    (log_softmax(student, 1) * target).sum().neg() / n as f32
}

/// (d) CEMA's distillation loss (SPEC §3 cloud step 2):
/// `α·mean(E(s)·w_s) + β·T²·mean(KL(softmax(t/T) ‖ softmax(s/T))·w_t) + γ·mean(CE(s, argmax t)·w_t)`
/// with `w_s = 1/exp(E(s) − E0)` (from the detached student entropies) and
/// `w_t = 1/exp(E(t) − E0)` (from the teacher's logits), both constants.
pub fn cema_distill_loss(
    student: Tensor<2>,
    teacher: &[f32],
    e0: f32,
    k: DistillWeights,
) -> Tensor<1> {
    let [_, c] = student.dims();
    let w_t = reliability_weights(&entropy_rows(teacher, c), e0);
    let ent = self_weighted_entropy(student.clone(), e0).mul_scalar(k.alpha);
    let kl = weighted_kl(student.clone(), teacher, &w_t, k.beta, k.temperature);
    let ce = weighted_hard_ce(student, teacher, &w_t).mul_scalar(k.gamma);
    ent + kl + ce
}

// ---- The same losses with their gradients, on host logits ----
//
// [`crate::Model::norm_affine_backward`] takes the loss as `logits → (value, ∂value/∂logits)`.
// These are the analytic gradients of the tensor losses above (tests hold them to autodiff):
// with `p = softmax(s)`, `∂E/∂s_j = −p_j (log p_j + E)`, `∂KL(q‖softmax(s/T))/∂s = (softmax(s/T) − q)/T`
// and `∂CE(s, y)/∂s = p − onehot(y)`.

/// `log softmax` of one row.
fn log_softmax_row(row: &[f32], out: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = max + row.iter().map(|v| (v - max).exp()).sum::<f32>().ln();
    out.iter_mut().zip(row).for_each(|(o, v)| *o = v - lse);
}

/// Adds `scale · ∂E/∂s` of one row to `grad` and returns `E`.
fn entropy_row_grad(row: &[f32], scale: f32, logp: &mut [f32], grad: &mut [f32]) -> f32 {
    log_softmax_row(row, logp);
    let e = -logp.iter().map(|l| l.exp() * l).sum::<f32>();
    for (g, l) in grad.iter_mut().zip(logp.iter()) {
        *g -= scale * l.exp() * (l + e);
    }
    e
}

/// `mean_x[E(x) · w(x)]` with constant weights (`w.len() == n`), and its gradient.
pub fn weighted_entropy_grad(logits: &[f32], classes: usize, w: &[f32]) -> (f32, Vec<f32>) {
    let n = w.len();
    assert_eq!(logits.len(), n * classes, "logits must be n × C");
    let mut grad = vec![0f32; logits.len()];
    let mut logp = vec![0f32; classes];
    let mut loss = 0f64;
    for ((row, g), wi) in logits
        .chunks_exact(classes)
        .zip(grad.chunks_exact_mut(classes))
        .zip(w)
    {
        let e = entropy_row_grad(row, wi / n as f32, &mut logp, g);
        loss += (e * wi) as f64;
    }
    ((loss / n.max(1) as f64) as f32, grad)
}

/// Tent's loss, the mean entropy, and its gradient.
pub fn mean_entropy_grad(logits: &[f32], classes: usize) -> (f32, Vec<f32>) {
    weighted_entropy_grad(logits, classes, &vec![1.0; logits.len() / classes])
}

/// [`self_weighted_entropy`] (weights `1/exp(E − E0)` held constant) and its gradient.
pub fn self_weighted_entropy_grad(logits: &[f32], classes: usize, e0: f32) -> (f32, Vec<f32>) {
    let w = reliability_weights(&entropy_rows(logits, classes), e0);
    weighted_entropy_grad(logits, classes, &w)
}

/// [`cema_distill_loss`] and its gradient with respect to the student's logits.
pub fn cema_distill_grad(
    student: &[f32],
    teacher: &[f32],
    classes: usize,
    e0: f32,
    k: DistillWeights,
) -> (f32, Vec<f32>) {
    assert_eq!(student.len(), teacher.len(), "teacher logits must be n × C");
    let n = student.len() / classes;
    let nf = n.max(1) as f32;
    let w_t = reliability_weights(&entropy_rows(teacher, classes), e0);
    let w_s = reliability_weights(&entropy_rows(student, classes), e0);
    let t = k.temperature;
    let mut grad = vec![0f32; student.len()];
    let (mut ent, mut kl, mut ce) = (0f64, 0f64, 0f64);
    let mut logp = vec![0f32; classes];
    let mut log_pt = vec![0f32; classes];
    let mut scaled = vec![0f32; classes];
    for i in 0..n {
        let (s, tr) = (
            &student[i * classes..(i + 1) * classes],
            &teacher[i * classes..(i + 1) * classes],
        );
        let g = &mut grad[i * classes..(i + 1) * classes];
        // α · E(s) · w_s
        let e = entropy_row_grad(s, k.alpha * w_s[i] / nf, &mut logp, g);
        ent += (e * w_s[i]) as f64;
        // γ · CE(s, argmax t) · w_t, with log p_s still in `logp`.
        let mut y = 0;
        for (j, v) in tr.iter().enumerate() {
            if *v > tr[y] {
                y = j;
            }
        }
        ce += (-logp[y] * w_t[i]) as f64;
        let cs = k.gamma * w_t[i] / nf;
        for (j, gj) in g.iter_mut().enumerate() {
            *gj += cs * (logp[j].exp() - if j == y { 1.0 } else { 0.0 });
        }
        // β · T² · KL(softmax(t/T) ‖ softmax(s/T)) · w_t
        scaled.iter_mut().zip(tr).for_each(|(o, v)| *o = v / t);
        log_softmax_row(&scaled, &mut log_pt);
        scaled.iter_mut().zip(s).for_each(|(o, v)| *o = v / t);
        log_softmax_row(&scaled, &mut logp);
        let row_kl: f32 = log_pt
            .iter()
            .zip(&logp)
            .map(|(lt, ls)| lt.exp() * (lt - ls))
            .sum();
        kl += (row_kl * w_t[i]) as f64;
        let ks = k.beta * t * w_t[i] / nf;
        for ((gj, lt), ls) in g.iter_mut().zip(&log_pt).zip(&logp) {
            *gj += ks * (ls.exp() - lt.exp());
        }
    }
    let loss = k.alpha as f64 * ent / nf as f64
        + (k.beta * t * t) as f64 * kl / nf as f64
        + k.gamma as f64 * ce / nf as f64;
    (loss as f32, grad)
}

/// Softmax cross-entropy against integer labels, mean over the batch, and its gradient
/// (the host twin of [`crate::cross_entropy`]).
pub fn cross_entropy_grad(logits: &[f32], classes: usize, labels: &[u32]) -> (f32, Vec<f32>) {
    let n = labels.len();
    assert_eq!(logits.len(), n * classes, "logits must be n × C");
    let mut grad = vec![0f32; logits.len()];
    let mut loss = 0f64;
    for ((row, g), &y) in logits
        .chunks_exact(classes)
        .zip(grad.chunks_exact_mut(classes))
        .zip(labels)
    {
        log_softmax_row(row, g);
        loss -= g[y as usize] as f64;
        for (j, v) in g.iter_mut().enumerate() {
            *v = (v.exp() - if j == y as usize { 1.0 } else { 0.0 }) / n as f32;
        }
    }
    ((loss / n.max(1) as f64) as f32, grad)
}
