//! Architecture descriptions: what to build, independent of any weights.

use serde::{Deserialize, Serialize};

/// A model architecture. Serialised into the model card (`"family"` tags the variant).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "family", rename_all = "snake_case")]
pub enum Arch {
    /// He et al. 2016's CIFAR ResNet (depth 6n+2): 3×3 stem, three stages of BasicBlocks with widths
    /// w, 2w, 4w, a 1×1 projection shortcut with its own BatchNorm where the shape changes.
    CifarResnet {
        depth: usize,
        width: usize,
        in_channels: usize,
        num_classes: usize,
    },
    /// torchvision's ImageNet ResNet layout (7×7 stem, max-pool, four stages), depth 18, 34 or 50.
    TorchvisionResnet {
        depth: usize,
        in_channels: usize,
        num_classes: usize,
    },
    /// EfficientNet-Lite0–4 (RGB input): depthwise-separable inverted residuals, ReLU6,
    /// TensorFlow "SAME" padding; Lite0 is the edge model of the ImageNet pair, Lite2 the cloud's.
    #[serde(rename = "efficientnet_lite")]
    EfficientNetLite { variant: usize, num_classes: usize },
    /// A Vision Transformer as timm's `VisionTransformer` (class token, learned position table,
    /// pre-norm blocks of fused-qkv attention and a GELU MLP, LayerNorm ε 1e-6, the class token
    /// into the head), by timm's parameter names. The position table fixes the input side.
    Vit {
        image_size: usize,
        patch: usize,
        in_channels: usize,
        /// Embedding width.
        dim: usize,
        /// Number of blocks.
        depth: usize,
        heads: usize,
        /// The MLP's hidden width.
        mlp_dim: usize,
        num_classes: usize,
    },
}

impl Arch {
    /// The edge model preset: ResNet-8, width 16 (about 78 k parameters).
    pub fn resnet8(in_channels: usize, num_classes: usize) -> Self {
        Arch::CifarResnet {
            depth: 8,
            width: 16,
            in_channels,
            num_classes,
        }
    }

    pub fn resnet18(num_classes: usize) -> Self {
        Arch::TorchvisionResnet {
            depth: 18,
            in_channels: 3,
            num_classes,
        }
    }

    pub fn resnet50(num_classes: usize) -> Self {
        Arch::TorchvisionResnet {
            depth: 50,
            in_channels: 3,
            num_classes,
        }
    }

    /// ViT-S/16 at 224 px (timm's `vit_small_patch16_224`).
    pub fn vit_s16(num_classes: usize) -> Self {
        Arch::Vit {
            image_size: 224,
            patch: 16,
            in_channels: 3,
            dim: 384,
            depth: 12,
            heads: 6,
            mlp_dim: 1536,
            num_classes,
        }
    }

    /// EfficientNet-Lite `variant` (0–4) with `num_classes` outputs.
    pub fn efficientnet_lite(variant: usize, num_classes: usize) -> Self {
        Arch::EfficientNetLite {
            variant,
            num_classes,
        }
    }

    pub fn in_channels(&self) -> usize {
        match self {
            Arch::CifarResnet { in_channels, .. } | Arch::TorchvisionResnet { in_channels, .. } => {
                *in_channels
            }
            Arch::EfficientNetLite { .. } => 3,
            Arch::Vit { in_channels, .. } => *in_channels,
        }
    }

    pub fn num_classes(&self) -> usize {
        match self {
            Arch::CifarResnet { num_classes, .. }
            | Arch::TorchvisionResnet { num_classes, .. }
            | Arch::EfficientNetLite { num_classes, .. }
            | Arch::Vit { num_classes, .. } => *num_classes,
        }
    }

    /// The input side the architecture was designed (and its published weights trained) for,
    /// where it has one.
    pub fn native_resolution(&self) -> Option<usize> {
        match self {
            Arch::EfficientNetLite { variant, .. } => {
                crate::efficientnet::coefficients(*variant).map(|c| c.2)
            }
            Arch::Vit { image_size, .. } => Some(*image_size),
            _ => None,
        }
    }

    /// Checks the numbers before anything is allocated.
    pub fn validate(&self) -> Result<(), String> {
        match *self {
            Arch::CifarResnet {
                depth,
                width,
                in_channels,
                num_classes,
            } => {
                if depth < 8 || (depth - 2) % 6 != 0 {
                    return Err(format!(
                        "cifar_resnet depth must be 6n+2 with n >= 1 (8, 14, 20, ...), got {depth}"
                    ));
                }
                if width == 0 || in_channels == 0 || num_classes == 0 {
                    return Err(
                        "cifar_resnet width, in_channels and num_classes must be positive".into(),
                    );
                }
            }
            Arch::TorchvisionResnet {
                depth,
                in_channels,
                num_classes,
            } => {
                if ![18, 34, 50].contains(&depth) {
                    return Err(format!(
                        "torchvision_resnet depth must be 18, 34 or 50, got {depth}"
                    ));
                }
                if in_channels == 0 || num_classes == 0 {
                    return Err(
                        "torchvision_resnet in_channels and num_classes must be positive".into(),
                    );
                }
            }
            Arch::EfficientNetLite {
                variant,
                num_classes,
            } => {
                if crate::efficientnet::coefficients(variant).is_none() {
                    return Err(format!(
                        "efficientnet_lite variant must be 0, 1, 2, 3 or 4, got {variant}"
                    ));
                }
                if num_classes == 0 {
                    return Err("efficientnet_lite num_classes must be positive".into());
                }
            }
            Arch::Vit {
                image_size,
                patch,
                in_channels,
                dim,
                depth,
                heads,
                mlp_dim,
                num_classes,
            } => {
                if [
                    image_size,
                    patch,
                    in_channels,
                    dim,
                    depth,
                    heads,
                    mlp_dim,
                    num_classes,
                ]
                .contains(&0)
                {
                    return Err("vit: every size must be positive".into());
                }
                if image_size % patch != 0 {
                    return Err(format!(
                        "vit: image_size {image_size} is not a multiple of the patch {patch}"
                    ));
                }
                if dim % heads != 0 {
                    return Err(format!("vit: dim {dim} does not split into {heads} heads"));
                }
            }
        }
        Ok(())
    }

    /// Emits this architecture's graph and initial weights.
    pub(crate) fn build(&self, b: &mut crate::graph::Builder) {
        match self {
            Arch::CifarResnet { .. } | Arch::TorchvisionResnet { .. } => {
                crate::resnet::build(self, b)
            }
            Arch::EfficientNetLite { .. } => crate::efficientnet::build(self, b),
            Arch::Vit { .. } => crate::vit::build(self, b),
        }
    }

    /// Multiply-accumulates of one forward pass at `height × width` (convolutions and the
    /// classifier), counted on the graph.
    pub fn macs(&self, height: usize, width: usize) -> u64 {
        let net = crate::Net::new(self, &crate::cpu(), 0).expect("valid arch");
        net.shapes(height, width).map_or(0, |(_, macs)| macs)
    }
}
