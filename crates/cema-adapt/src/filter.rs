//! The edge's sample-selection criteria (SPEC §3, edge steps 2–4) on host logits, so they are
//! testable without a model and identical wherever the edge runs.

use cema_model::{entropy_margin, entropy_rows, softmax_rows};
use serde::{Deserialize, Serialize};

/// Every switch of the released code's edge selection, as an option.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EdgeConfig {
    /// Dynamic unreliable-sample exclusion (SPEC §3 step 2); off = `E_max` fixed at `E0`.
    pub dynamic_emax: bool,
    /// Samples seen before `Ē_warm` is fixed and `E_max` starts to move.
    pub warmup: usize,
    /// `E_max(t) = λ · E0 · Ē_t / Ē_warm` after warm-up.
    pub lambda: f32,
    /// Low-informative-sample exclusion, `E(x) > E_min` (SPEC §3 step 3).
    pub emin: bool,
    /// `E_min` as a fraction of `ln C` (0.02 in the paper's ablation).
    pub emin_fraction: f32,
    /// Redundancy exclusion `|cos(p(x), m)| < ε` (SPEC §3 step 4, from EATA).
    pub redundancy: bool,
    /// ε; `None` derives it from the class count ([`default_epsilon`]).
    pub epsilon: Option<f32>,
    /// Replace the source running statistics with the first test batch's (forward only), as
    /// the released code does (SPEC §3 "TBR"); the cloud's student then starts from that state.
    #[serde(default = "yes")]
    pub init_stats: bool,
    /// Forward-only statistics tracking: after predicting a batch from the running statistics,
    /// the edge moves them toward the batch's with this momentum, and cloud updates then install
    /// only γ and β. `None`: the statistics change only when the cloud sends new ones.
    #[serde(default)]
    pub track_stats: Option<f32>,
    /// With `track_stats`: the edge's running statistics travel up with its uploads and the
    /// cloud's student normalises with them, so it learns γ, β for the statistics the edge uses.
    #[serde(default)]
    pub share_stats: bool,
    /// An upload budget, as a fraction of the samples seen: each batch's `E_max` is chosen so
    /// that exactly its share of the budget passes (the lowest-entropy samples above `E_min` that
    /// are not redundant), instead of following `λ · E0 · Ē_t / Ē_warm`. Over a stream the
    /// uploaded fraction tracks the budget to within one sample, unless the other two criteria
    /// leave fewer candidates. `None`: the paper's thresholds.
    #[serde(default)]
    pub budget: Option<f64>,
    /// An uplink budget in bytes per sample seen, counting what the uploads carry (u8 pixels,
    /// and the statistics section when `share_stats`): the edge earns this credit with every
    /// sample, and a batch uploads as many samples as the credit pays for, its selection rule
    /// choosing which. So the bytes sent never exceed the budget times the samples seen, and an
    /// upload's fixed cost (the statistics) is paid once for several samples when the budget is
    /// small. Replaces `budget` and a selector's rate when set. `None`: no byte budget.
    #[serde(default)]
    pub byte_budget: Option<f64>,
}

fn yes() -> bool {
    true
}

impl Default for EdgeConfig {
    /// cema's defaults: the paper's method (SPEC §3, "cema's defaults").
    fn default() -> Self {
        EdgeConfig {
            dynamic_emax: true,
            warmup: 256,
            lambda: 1.0,
            emin: true,
            emin_fraction: 0.02,
            redundancy: true,
            epsilon: None,
            init_stats: true,
            track_stats: None,
            share_stats: false,
            budget: None,
            byte_budget: None,
        }
    }
}

impl EdgeConfig {
    /// The released code's switches: `E_max` fixed at `E0`, no `E_min`, redundancy filter on.
    pub fn released() -> Self {
        EdgeConfig {
            dynamic_emax: false,
            emin: false,
            ..EdgeConfig::default()
        }
    }
}

/// ε of the redundancy filter for `classes` classes: EATA's 0.4 at 10 classes, CEMA's 0.05 at
/// 1000, log-log interpolated between (cosines of probability vectors shrink as C grows) and
/// clamped to that range outside it.
pub fn default_epsilon(classes: usize) -> f32 {
    let (c0, e0, c1, e1) = (10f32, 0.4f32, 1000f32, 0.05f32);
    let c = (classes as f32).clamp(c0, c1);
    let t = (c.ln() - c0.ln()) / (c1.ln() - c0.ln());
    (e0.ln() + t * (e1.ln() - e0.ln())).exp()
}

/// What one call of [`EntropyFilter::select`] decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Selection {
    /// Indices (into the batch) of the samples to upload, ascending.
    pub kept: Vec<usize>,
    /// Entropy of every sample of the batch.
    pub entropies: Vec<f32>,
    /// The `E_max` this batch was judged against.
    pub e_max: f32,
    /// Dropped by `E ≥ E_max` (too uncertain: unreliable).
    pub too_uncertain: usize,
    /// Dropped by `E ≤ E_min` (too certain: near-zero gradient).
    pub too_certain: usize,
    /// Dropped by the redundancy filter.
    pub redundant: usize,
}

/// The selection state machine: thresholds, running entropy mean and the moving average of kept
/// probability vectors. Serialisable, so an edge can persist and restore it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntropyFilter {
    pub config: EdgeConfig,
    pub classes: usize,
    /// `E0 = 0.4 · ln C`.
    pub e0: f32,
    pub e_min: f32,
    pub epsilon: f32,
    /// Samples seen and the sum of their entropies (f64: no drift over long streams).
    pub seen: u64,
    pub entropy_sum: f64,
    /// `Ē_warm`, fixed when `seen` first reaches the warm-up length.
    pub warm_mean: Option<f64>,
    /// Moving average `m` of kept probability vectors; `None` until a batch keeps a sample.
    pub mean_probs: Option<Vec<f32>>,
    /// With a budget: the uploads owed so far and not yet made (fractional part carried).
    #[serde(default)]
    pub owed: f64,
}

impl EntropyFilter {
    pub fn new(config: EdgeConfig, classes: usize) -> Self {
        let ln_c = (classes as f32).ln();
        EntropyFilter {
            config,
            classes,
            e0: entropy_margin(classes),
            e_min: config.emin_fraction * ln_c,
            epsilon: config.epsilon.unwrap_or_else(|| default_epsilon(classes)),
            seen: 0,
            entropy_sum: 0.0,
            warm_mean: None,
            mean_probs: None,
            owed: 0.0,
        }
    }

    /// The current `E_max`: `E0` during warm-up (or when dynamic exclusion is off), then
    /// `λ · E0 · Ē_t / Ē_warm` (SPEC §3 step 2).
    pub fn e_max(&self) -> f32 {
        match (self.config.dynamic_emax, self.warm_mean) {
            (true, Some(warm)) if warm > 0.0 && self.seen > 0 => {
                let mean = self.entropy_sum / self.seen as f64;
                (self.config.lambda as f64 * self.e0 as f64 * mean / warm) as f32
            }
            _ => self.e0,
        }
    }

    /// Judges one batch of host logits (`n × classes`). The batch first joins the running entropy
    /// mean ("everything seen"), then is filtered against the updated `E_max`; each dropped
    /// sample is counted under the first criterion that drops it (E_max, E_min, redundancy).
    pub fn select(&mut self, logits: &[f32]) -> Selection {
        let c = self.classes;
        let entropies = self.observe(logits);
        if let Some(budget) = self.config.budget {
            let k = self.budget_quota(entropies.len(), budget);
            return self.select_lowest(logits, entropies, k);
        }
        let e_max = self.e_max();
        let mut sel = Selection {
            kept: Vec::new(),
            entropies,
            e_max,
            too_uncertain: 0,
            too_certain: 0,
            redundant: 0,
        };
        let mut candidates = Vec::new();
        for (i, &e) in sel.entropies.iter().enumerate() {
            if e >= e_max {
                sel.too_uncertain += 1;
            } else if self.config.emin && e <= self.e_min {
                sel.too_certain += 1;
            } else {
                candidates.push(i);
            }
        }
        if !self.config.redundancy {
            sel.kept = candidates;
            return sel;
        }
        let probs = softmax_rows(logits, c);
        let row = |i: usize| &probs[i * c..(i + 1) * c];
        // EATA: with no `m` yet (first batch) nothing is redundant; `m` starts at the mean of the
        // kept probabilities, then moves by `m ← 0.9 m + 0.1 · mean p` over each batch's kept ones.
        sel.kept = match &self.mean_probs {
            None => candidates,
            Some(m) => candidates
                .into_iter()
                .filter(|&i| cosine(row(i), m).abs() < self.epsilon)
                .collect(),
        };
        sel.redundant = sel.entropies.len() - sel.too_uncertain - sel.too_certain - sel.kept.len();
        self.remember(&sel.kept, &probs);
        sel
    }

    /// [`select`](Self::select) with at most `k` uploads chosen by the caller (the edge's byte
    /// budget, [`EdgeConfig::byte_budget`]): the batch joins the running entropy mean, then its
    /// `k` lowest-entropy samples above `E_min` that are not redundant are kept, as under
    /// [`EdgeConfig::budget`].
    pub fn select_count(&mut self, logits: &[f32], k: usize) -> Selection {
        let entropies = self.observe(logits);
        let k = k.min(entropies.len());
        self.select_lowest(logits, entropies, k)
    }

    /// The batch's entropies, after they join the running mean ("everything seen") and, at the
    /// end of warm-up, fix `Ē_warm`.
    fn observe(&mut self, logits: &[f32]) -> Vec<f32> {
        let entropies = entropy_rows(logits, self.classes);
        self.seen += entropies.len() as u64;
        self.entropy_sum += entropies.iter().map(|&e| e as f64).sum::<f64>();
        if self.warm_mean.is_none() && self.seen >= self.config.warmup as u64 && self.seen > 0 {
            self.warm_mean = Some(self.entropy_sum / self.seen as f64);
        }
        entropies
    }

    /// A batch of `n`'s share of a fractional [`EdgeConfig::budget`]: the whole part of what is
    /// owed, the fraction carried.
    fn budget_quota(&mut self, n: usize, budget: f64) -> usize {
        let budget = if budget.is_nan() {
            0.0
        } else {
            budget.clamp(0.0, 1.0)
        };
        self.owed += budget * n as f64;
        // The epsilon keeps e.g. 0.25 · 64 = 16.000000000000004 or 15.999999999999998 exact.
        let k = ((self.owed + 1e-9).floor().max(0.0) as usize).min(n);
        self.owed = (self.owed - k as f64).max(0.0);
        k
    }

    /// Keeps up to `k` samples from the lowest entropy up, past `E_min` and the redundant ones.
    fn select_lowest(&mut self, logits: &[f32], entropies: Vec<f32>, k: usize) -> Selection {
        let (c, n) = (self.classes, entropies.len());
        let mut order: Vec<usize> = (0..n)
            .filter(|&i| !(self.config.emin && entropies[i] <= self.e_min))
            .collect();
        order.sort_by(|&a, &b| entropies[a].total_cmp(&entropies[b]).then(a.cmp(&b)));
        let probs = softmax_rows(logits, c);
        let mut sel = Selection {
            kept: Vec::new(),
            e_max: (c as f32).ln(),
            too_uncertain: 0,
            too_certain: n - order.len(),
            redundant: 0,
            entropies,
        };
        for (pos, &i) in order.iter().enumerate() {
            if sel.kept.len() == k {
                // The threshold this batch was judged against: the first entropy left out.
                sel.e_max = sel.entropies[i];
                sel.too_uncertain = order.len() - pos;
                break;
            }
            let redundant = self.config.redundancy
                && self
                    .mean_probs
                    .as_ref()
                    .is_some_and(|m| cosine(&probs[i * c..(i + 1) * c], m).abs() >= self.epsilon);
            if redundant {
                sel.redundant += 1;
            } else {
                sel.kept.push(i);
            }
        }
        sel.kept.sort_unstable();
        self.remember(&sel.kept, &probs);
        sel
    }

    /// Moves `m` toward the mean probability vector of the kept samples (EATA: it starts at the
    /// first batch's mean, then `m ← 0.9 m + 0.1 · mean p`).
    fn remember(&mut self, kept: &[usize], probs: &[f32]) {
        let c = self.classes;
        if kept.is_empty() {
            return;
        }
        let mut mean = vec![0f32; c];
        for &i in kept {
            for (a, p) in mean.iter_mut().zip(&probs[i * c..(i + 1) * c]) {
                *a += p / kept.len() as f32;
            }
        }
        self.mean_probs = Some(match self.mean_probs.take() {
            None => mean,
            Some(m) => m
                .iter()
                .zip(&mean)
                .map(|(m, p)| 0.9 * m + 0.1 * p)
                .collect(),
        });
    }
}

/// Cosine similarity, with PyTorch's `F.cosine_similarity` epsilon (1e-8) on the norms.
fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-8);
    let nb = b.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-8);
    dot / (na * nb)
}
