//! cema's models: ResNets whose normalization layers are the adaptable part.
//!
//! - [`Arch`]: what to build (CIFAR ResNet family, torchvision ResNet-18/34/50).
//! - [`ResNet`]: weights on a burn device and a forward pass whose norm layers run in a
//!   [`NormMode`] chosen per call (running statistics, batch statistics, or TBR).
//! - [`Model`]: a network plus its [`ModelCard`]; loads/saves checkpoints (safetensors or `.pth`,
//!   by PyTorch names), predicts on u8 images, computes accuracy.
//! - [`NormState`]: the norm layers' γ, β, running mean and variance as one versioned
//!   safetensors blob — what the cloud sends an edge.
//! - [`Model::norm_affine_backward`] + [`Sgd`]: the adaptation step's gradients (norm γ/β only,
//!   convolutions frozen) through a hand-written pass on the inference kernels; host losses with
//!   their gradients (`*_grad`) feed it.
//! - [`ResNet::backward`]: burn's autodiff w.r.t. any parameter set ([`Trainable`]), everything
//!   else frozen; [`train`] for source training, and the reference the hand-written pass is
//!   tested against.
//!
//! **API boundary:** all tensor code of the workspace lives in this crate. Other crates see host
//! vectors, [`NormState`]s and this API; they never name a burn type except [`Device`]/[`Tensor`]
//! through the loss closures of [`ResNet::backward`].

mod affine_backward;
mod arch;
mod checkpoint;
mod error;
mod eval;
mod folded;
mod gemm;
mod input;
mod losses;
mod nhwc;
mod norm;
mod normstate;
mod optim;
mod resnet;
mod step;
mod store;
pub mod tensors;
mod train;

pub use affine_backward::HostBackward;
pub use arch::Arch;
pub use burn::tensor::{Device, Tensor};
pub use checkpoint::{
    card_path, sha256_file, sha256_hex, InputSpec, Model, ModelCard, FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
};
pub use error::{ModelError, Result};
pub use folded::FoldedNet;
pub use input::to_input;
pub use losses::{
    cema_distill_grad, cema_distill_loss, cross_entropy_grad, entropy, entropy_margin,
    entropy_rows, mean_entropy, mean_entropy_grad, reliability_weights, self_weighted_entropy,
    self_weighted_entropy_grad, softmax_rows, weighted_entropy, weighted_entropy_grad,
    weighted_hard_ce, weighted_kl, DistillWeights,
};
pub use norm::{NormKind, NormLayer, NormMode, BN_EPS, BN_MOMENTUM};
pub use normstate::NormState;
pub use optim::{Sgd, SgdConfig};
pub use resnet::ResNet;
pub use step::{argmax_rows, cross_entropy, Backward};
pub use store::{Kind, Store, Trainable};
pub use tensors::{HostTensor, NamedTensors};
pub use train::{checkpoint_dir, train, EpochReport, TrainConfig, TrainEvent};

/// The CPU device (burn's pure-Rust `flex` backend).
pub fn cpu() -> Device {
    Device::flex()
}
