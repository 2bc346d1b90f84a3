//! Normalization layers: the adaptable part of every cema model.
//!
//! A BatchNorm layer can run in three modes, chosen per forward call:
//! - [`NormMode::Running`]: normalise by the running statistics (eval; what an edge runs).
//! - [`NormMode::Batch`]: normalise by the test batch's own statistics (BN-adapt, Tent; train mode).
//! - [`NormMode::Tbr`]: test-time batch renormalisation (SPEC §3): the forward *value* equals
//!   normalisation by running statistics, while the gradient flows through the batch statistics.
//!
//! In `Batch` and `Tbr` mode the running statistics may also move toward the batch's
//! (`update_stats`), with PyTorch's momentum convention (`running ← (1−m)·running + m·batch`, the
//! variance unbiased).
//!
//! A LayerNorm layer normalises each token by its own statistics over the channels, so it has no
//! running statistics and the mode does not apply: every mode computes the same thing, and the
//! statistics updates of `Batch`/`Tbr` leave it alone. Its norm state is γ and β only, carried by
//! the same norm-state format; adapting a ViT means adapting its LayerNorm γ/β by gradient
//! (docs/spec.md, "LayerNorm models").

use burn::tensor::module::{batch_norm, batch_norm_train, layer_norm};
use burn::tensor::Tensor;

use crate::store::{Kind, Store};

/// How normalization layers compute their statistics in one forward call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NormMode {
    Running,
    Batch,
    Tbr,
}

impl std::str::FromStr for NormMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "running" | "eval" => Ok(NormMode::Running),
            "batch" | "train" => Ok(NormMode::Batch),
            "tbr" => Ok(NormMode::Tbr),
            _ => Err(format!(
                "unknown norm mode {s:?}: expected running, batch or tbr"
            )),
        }
    }
}

impl NormMode {
    pub fn name(self) -> &'static str {
        match self {
            NormMode::Running => "running",
            NormMode::Batch => "batch",
            NormMode::Tbr => "tbr",
        }
    }
}

/// The kind of a normalization layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NormKind {
    BatchNorm2d,
    /// Over the channels of each token (a ViT's): γ/β only, no running statistics.
    LayerNorm,
}

/// One normalization layer: its PyTorch name prefix and where its tensors live in the [`Store`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct NormLayer {
    pub name: String,
    pub kind: NormKind,
    pub channels: usize,
    /// Added to the variance before the square root (PyTorch's default 1e-5; TensorFlow-trained
    /// models such as EfficientNet-Lite use 1e-3).
    pub eps: f64,
    #[serde(skip)]
    pub(crate) weight: usize,
    #[serde(skip)]
    pub(crate) bias: usize,
    #[serde(skip)]
    pub(crate) running_mean: Option<usize>,
    #[serde(skip)]
    pub(crate) running_var: Option<usize>,
}

/// PyTorch's BatchNorm defaults.
pub const BN_EPS: f64 = 1e-5;
pub const BN_MOMENTUM: f32 = 0.1;

impl NormLayer {
    /// `{name}.weight` (γ, ones) and `{name}.bias` (β, zeros): every norm layer's affine part.
    fn affine(store: &mut Store, name: &str, channels: usize) -> (usize, usize) {
        let weight = store.push(
            format!("{name}.weight"),
            Kind::NormWeight,
            vec![channels],
            vec![1.0; channels],
        );
        let bias = store.push(
            format!("{name}.bias"),
            Kind::NormBias,
            vec![channels],
            vec![0.0; channels],
        );
        (weight, bias)
    }

    pub(crate) fn batch_norm(store: &mut Store, name: &str, channels: usize, eps: f64) -> Self {
        let (weight, bias) = Self::affine(store, name, channels);
        let rm = store.push(
            format!("{name}.running_mean"),
            Kind::RunningMean,
            vec![channels],
            vec![0.0; channels],
        );
        let rv = store.push(
            format!("{name}.running_var"),
            Kind::RunningVar,
            vec![channels],
            vec![1.0; channels],
        );
        NormLayer {
            name: name.to_string(),
            kind: NormKind::BatchNorm2d,
            channels,
            eps,
            weight,
            bias,
            running_mean: Some(rm),
            running_var: Some(rv),
        }
    }

    /// A LayerNorm over `channels` (γ 1, β 0) with this `eps` (timm's ViTs use 1e-6).
    pub(crate) fn layer_norm(store: &mut Store, name: &str, channels: usize, eps: f64) -> Self {
        let (weight, bias) = Self::affine(store, name, channels);
        NormLayer {
            name: name.to_string(),
            kind: NormKind::LayerNorm,
            channels,
            eps,
            weight,
            bias,
            running_mean: None,
            running_var: None,
        }
    }

    /// Forward through this LayerNorm on `[n, tokens, channels]`.
    pub(crate) fn forward_tokens(&self, store: &Store, x: Tensor<3>) -> Tensor<3> {
        debug_assert_eq!(self.kind, NormKind::LayerNorm);
        layer_norm(
            x,
            store.get1(self.weight),
            Some(store.get1(self.bias)),
            self.eps,
        )
    }

    /// Forward through this BatchNorm layer on an NCHW tensor.
    pub(crate) fn forward(
        &self,
        store: &mut Store,
        x: Tensor<4>,
        mode: NormMode,
        update_stats: Option<f32>,
    ) -> Tensor<4> {
        let gamma = store.get1(self.weight);
        let beta = store.get1(self.bias);
        let (rm_i, rv_i) = (
            self.running_mean.expect("batch norm"),
            self.running_var.expect("batch norm"),
        );
        match mode {
            NormMode::Running => {
                batch_norm(x, gamma, beta, store.get1(rm_i), store.get1(rv_i), self.eps)
            }
            NormMode::Batch => {
                let [n, _, h, w] = x.dims();
                let out = batch_norm_train(x, gamma, beta, self.eps);
                if let Some(m) = update_stats {
                    self.update_running(store, out.mean, out.variance, n * h * w, m);
                }
                out.output
            }
            NormMode::Tbr => {
                let [n, c, h, w] = x.dims();
                let rm = store.get1(rm_i).reshape([1, c, 1, 1]);
                let rv = store.get1(rv_i).reshape([1, c, 1, 1]);
                let mu = x.clone().mean_dims(&[0, 2, 3]);
                let centered = x - mu.clone();
                let var = centered.clone().powf_scalar(2.0).mean_dims(&[0, 2, 3]);
                let sigma = (var.clone() + self.eps).sqrt();
                let sigma_run = (rv + self.eps).sqrt();
                // r and d are constants (stop-gradient): the value equals running-statistics
                // normalisation, the gradient is that of batch normalisation scaled by r.
                let r = sigma.clone().detach() / sigma_run.clone();
                let d = (mu.clone().detach() - rm) / sigma_run;
                let xhat = centered / sigma * r + d;
                let out = xhat * gamma.reshape([1, c, 1, 1]) + beta.reshape([1, c, 1, 1]);
                if let Some(m) = update_stats {
                    let mu = mu.detach().without_autodiff().reshape([c]);
                    let var = var.detach().without_autodiff().reshape([c]);
                    self.update_running(store, mu, var, n * h * w, m);
                }
                out
            }
        }
    }

    /// `batch_var` is the biased (population) variance; PyTorch stores the unbiased one.
    fn update_running(
        &self,
        store: &mut Store,
        batch_mean: Tensor<1>,
        batch_var: Tensor<1>,
        count: usize,
        m: f32,
    ) {
        let (rm_i, rv_i) = (
            self.running_mean.expect("batch norm"),
            self.running_var.expect("batch norm"),
        );
        let unbias = if count > 1 {
            count as f32 / (count as f32 - 1.0)
        } else {
            1.0
        };
        let batch_mean = batch_mean.without_autodiff();
        let batch_var = batch_var.without_autodiff();
        let rm = store.get1(rm_i).without_autodiff() * (1.0 - m) + batch_mean * m;
        let rv = store.get1(rv_i).without_autodiff() * (1.0 - m) + batch_var * (m * unbias);
        store.set(rm_i, rm);
        store.set(rv_i, rv);
    }
}
