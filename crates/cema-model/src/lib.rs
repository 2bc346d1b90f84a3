//! cema's models: networks whose normalization layers are the adaptable part.
//!
//! - [`Arch`]: what to build (CIFAR ResNet family, torchvision ResNet-18/34/50). Each emits a
//!   [`Graph`] — the one description of the network, from which every path below derives.
//! - [`Net`]: the graph, its weights on a burn device and a forward pass whose norm layers run
//!   in a [`NormMode`] chosen per call (running statistics, batch statistics, or TBR).
//! - [`Model`]: a network plus its [`ModelCard`]; loads/saves checkpoints (safetensors or `.pth`,
//!   by PyTorch names), predicts on u8 images, computes accuracy.
//! - [`NormState`]: the norm layers' γ, β, running mean and variance as one versioned
//!   safetensors blob — what the cloud sends an edge.
//! - [`Model::norm_affine_backward`] + [`Sgd`]: the adaptation step's gradients (norm γ/β only,
//!   convolutions frozen) through a hand-written pass on the inference kernels; host losses with
//!   their gradients (`*_grad`) feed it.
//! - [`Net::backward`]: burn's autodiff w.r.t. any parameter set ([`Trainable`]), everything
//!   else frozen; [`train`] for source training, and the reference the hand-written pass is
//!   tested against.
//!
//! **API boundary:** all tensor code of the workspace lives in this crate. Other crates see host
//! vectors, [`NormState`]s and this API; they never name a burn type except [`Device`]/[`Tensor`]
//! through the loss closures of [`Net::backward`].

mod affine_backward;
mod arch;
mod checkpoint;
mod efficientnet;
mod error;
mod folded;
mod gemm;
mod graph;
mod infer;
mod input;
mod labelled;
mod lanes;
mod losses;
mod model;
mod net;
mod nhwc;
mod norm;
mod normstate;
mod optim;
mod plan;
mod resnet;
mod store;
pub mod tensors;
mod train;

pub use affine_backward::HostBackward;
pub use arch::Arch;
pub use burn::tensor::{Device, Tensor};
pub use checkpoint::{
    card_path, sha256_file, sha256_hex, InputSpec, ModelCard, Preprocess, FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
};
pub use error::{ModelError, Result};
pub use folded::FoldedNet;
pub use graph::{Act, Graph, Node, Op, Padding, Shape, ValueId};
pub use infer::infer_arch;
pub use input::to_input;
pub use labelled::Labelled;
pub use losses::{
    cema_distill_grad, cema_distill_loss, cross_entropy_grad, entropy, entropy_margin,
    entropy_rows, mean_entropy, mean_entropy_grad, reliability_weights, self_weighted_entropy,
    self_weighted_entropy_grad, softmax_rows, weighted_entropy, weighted_entropy_grad,
    weighted_hard_ce, weighted_kl, DistillWeights,
};
pub use model::Model;
pub use net::{argmax_rows, cross_entropy, Backward, Net};
pub use norm::{NormKind, NormLayer, NormMode, BN_EPS, BN_MOMENTUM};
pub use normstate::NormState;
pub use optim::{Sgd, SgdConfig};
pub use store::{Kind, Store, Trainable};
pub use tensors::{HostTensor, NamedTensors};
pub use train::{checkpoint_dir, train, EpochReport, TrainConfig, TrainEvent};

/// The CPU device (burn's pure-Rust `flex` backend).
pub fn cpu() -> Device {
    Device::flex()
}

/// The device a `--backend` names: `cpu` (burn's `flex` backend, where the hand-written
/// inference and adaptation kernels run) or `cuda` / `cuda:N` (burn's CUDA backend, only in a
/// build with the `cuda` feature; the generic burn path then keeps every model's work on the GPU).
pub fn device(spec: &str) -> Result<Device> {
    let err = |reason: String| ModelError::Backend {
        spec: spec.to_string(),
        reason,
    };
    let (name, index) = match spec.split_once(':') {
        Some((name, index)) => {
            let index: usize = index
                .parse()
                .map_err(|_| err(format!("`{index}` is not a device index")))?;
            (name, Some(index))
        }
        None => (spec, None),
    };
    match name {
        "cpu" if index.is_none() => Ok(cpu()),
        "cpu" => Err(err("the CPU backend takes no device index".into())),
        "cuda" => cuda(index.unwrap_or(0)).map_err(err),
        _ => Err(err("expected `cpu`, `cuda` or `cuda:N`".into())),
    }
}

#[cfg(feature = "cuda")]
fn cuda(index: usize) -> std::result::Result<Device, String> {
    Ok(Device::cuda(index))
}

#[cfg(not(feature = "cuda"))]
fn cuda(_index: usize) -> std::result::Result<Device, String> {
    Err(
        "this build has no CUDA support; rebuild with `cargo build --release --features cuda`"
            .into(),
    )
}
