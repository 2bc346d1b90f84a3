//! The adaptation losses of SPEC §3 as differentiable functions of a logits tensor, plus host-side
//! softmax/entropy on `&[f32]` logits (what the edge's selection filters need).
//!
//! Every loss takes logits `[n, C]` and returns a one-element tensor, so it can be the closure of
//! [`crate::ResNet::backward`]. Weights are *constants* (SPEC §3: "no gradient through them"):
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
