//! cema's models: networks whose normalization layers are the adaptable part.
//!
//! - [`Arch`]: what to build (CIFAR ResNet family, torchvision ResNet-18/34/50, EfficientNet-Lite,
//!   timm's ViT). Each emits a
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
//! - [`set_precision`]: the matrix products in f32 (default) or bf16 ([`Precision`]; AVX512_BF16).
//!
//! **API boundary:** all tensor code of the workspace lives in this crate. Other crates see host
//! vectors, [`NormState`]s and this API; they never name a burn type except [`Device`]/[`Tensor`]
//! through the loss closures of [`Net::backward`].

mod affine_backward;
mod arch;
mod bf16;
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
mod tokens;
mod train;
mod vit;

pub use affine_backward::HostBackward;
pub use arch::Arch;
pub use bf16::{bf16_supported, precision, set_precision, Precision};
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
    cuda_probe::check(index)?;
    Ok(Device::cuda(index))
}

#[cfg(feature = "cuda")]
mod cuda_probe {
    //! cudarc loads the CUDA driver and NVRTC at first use and panics when either is missing.
    //! burn first touches them on a device thread of its own, where nothing can catch that panic,
    //! and the process dies with a backtrace. Probing here, on the caller's thread, turns a
    //! missing library, a machine without a GPU or a device index past the last into the error
    //! `--backend cuda` reports (exit 2 from the CLI).

    /// `Ok` when the driver loads, device `index` exists and NVRTC compiles a kernel.
    pub(crate) fn check(index: usize) -> Result<(), String> {
        let count = quietly(cudarc::driver::CudaContext::device_count)
            .map_err(|_| {
                "the CUDA driver library (libcuda.so) could not be loaded: install the NVIDIA \
                 driver, or add its folder to LD_LIBRARY_PATH"
                    .to_string()
            })?
            .map_err(|e| format!("the CUDA driver found no usable GPU ({e:?})"))?;
        if index >= count.max(0) as usize {
            return Err(format!(
                "there is no device cuda:{index}: this machine has {count} CUDA device(s)"
            ));
        }
        quietly(|| cudarc::nvrtc::compile_ptx("extern \"C\" __global__ void cema_probe() {}"))
            .map_err(|_| {
                "NVRTC (libnvrtc.so, which compiles the CUDA kernels at run time) could not be \
                 loaded: install the CUDA toolkit's NVRTC, or add its folder to LD_LIBRARY_PATH"
                    .to_string()
            })?
            .map_err(|e| format!("NVRTC cannot compile a kernel ({e:?})"))?;
        Ok(())
    }

    /// `f()`, or `Err` if it panicked, with the panic message kept off stderr.
    fn quietly<T>(f: impl FnOnce() -> T + std::panic::UnwindSafe) -> Result<T, ()> {
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let r = std::panic::catch_unwind(f);
        std::panic::set_hook(hook);
        r.map_err(drop)
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda(_index: usize) -> std::result::Result<Device, String> {
    Err(
        "this build has no CUDA support; rebuild with `cargo build --release --features cuda`"
            .into(),
    )
}
