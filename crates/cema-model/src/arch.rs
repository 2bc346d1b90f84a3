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
}

/// How one residual block is built; the shared vocabulary of both families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BlockKind {
    Basic,
    Bottleneck,
}

#[derive(Debug, Clone)]
pub(crate) struct StageSpec {
    pub blocks: usize,
    pub width: usize,
    pub stride: usize,
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

    pub fn in_channels(&self) -> usize {
        match self {
            Arch::CifarResnet { in_channels, .. } | Arch::TorchvisionResnet { in_channels, .. } => {
                *in_channels
            }
        }
    }

    pub fn num_classes(&self) -> usize {
        match self {
            Arch::CifarResnet { num_classes, .. } | Arch::TorchvisionResnet { num_classes, .. } => {
                *num_classes
            }
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
        }
        Ok(())
    }

    pub(crate) fn block_kind(&self) -> BlockKind {
        match self {
            Arch::TorchvisionResnet { depth: 50, .. } => BlockKind::Bottleneck,
            _ => BlockKind::Basic,
        }
    }

    pub(crate) fn stages(&self) -> Vec<StageSpec> {
        match *self {
            Arch::CifarResnet { depth, width, .. } => {
                let n = (depth - 2) / 6;
                [(1, 1), (2, 2), (4, 2)]
                    .iter()
                    .enumerate()
                    .map(|(i, &(m, s))| StageSpec {
                        blocks: n,
                        width: width * m,
                        stride: if i == 0 { 1 } else { s },
                    })
                    .collect()
            }
            Arch::TorchvisionResnet { depth, .. } => {
                let counts = match depth {
                    18 => [2, 2, 2, 2],
                    _ => [3, 4, 6, 3],
                };
                counts
                    .iter()
                    .zip([64, 128, 256, 512])
                    .enumerate()
                    .map(|(i, (&blocks, width))| StageSpec {
                        blocks,
                        width,
                        stride: if i == 0 { 1 } else { 2 },
                    })
                    .collect()
            }
        }
    }

    /// Multiply-accumulates of one forward pass at `height × width` (convolutions and the classifier).
    pub fn macs(&self, height: usize, width: usize) -> u64 {
        crate::resnet::count_macs(self, height, width)
    }
}
