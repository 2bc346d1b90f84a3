//! ResNets (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016,
//! <https://arxiv.org/abs/1512.03385>) as a [`Graph`](crate::graph::Graph): the CIFAR variant and
//! torchvision's ImageNet layout. The only place their structure is written.
//!
//! Tensor names are PyTorch's state-dict keys (`conv1.weight`, `layer1.0.bn1.running_mean`,
//! `layer2.0.downsample.0.weight`, `fc.bias`, ...), so one safetensors file loads in both.

use crate::arch::Arch;
use crate::graph::{Act, Builder, Padding, ValueId};
use crate::norm::BN_EPS;

/// How one residual block is built; the shared vocabulary of both families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlockKind {
    Basic,
    Bottleneck,
}

#[derive(Debug, Clone)]
struct StageSpec {
    blocks: usize,
    width: usize,
    stride: usize,
}

fn block_kind(arch: &Arch) -> BlockKind {
    match arch {
        Arch::TorchvisionResnet { depth: 50, .. } => BlockKind::Bottleneck,
        _ => BlockKind::Basic,
    }
}

fn stages(arch: &Arch) -> Vec<StageSpec> {
    match *arch {
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
        Arch::EfficientNetLite { .. } | Arch::Vit { .. } => unreachable!("a ResNet"),
    }
}

fn conv_bn(
    b: &mut Builder,
    x: ValueId,
    (conv, bn): (&str, &str),
    cout: usize,
    kernel: usize,
    stride: usize,
) -> ValueId {
    let y = b.conv(
        x,
        conv,
        cout,
        kernel,
        stride,
        Padding::Explicit(kernel / 2),
        1,
    );
    b.batch_norm(y, bn, BN_EPS)
}

/// Emits `arch` (a ResNet family) into `b`.
pub(crate) fn build(arch: &Arch, b: &mut Builder) {
    let x = b.input(arch.in_channels());
    let mut x = match arch {
        Arch::CifarResnet { width, .. } => {
            let y = conv_bn(b, x, ("conv1", "bn1"), *width, 3, 1);
            b.act(y, Act::Relu)
        }
        _ => {
            let y = conv_bn(b, x, ("conv1", "bn1"), 64, 7, 2);
            let y = b.act(y, Act::Relu);
            b.max_pool(y, 3, 2, 1)
        }
    };
    let kind = block_kind(arch);
    let expansion = if kind == BlockKind::Bottleneck { 4 } else { 1 };
    for (si, stage) in stages(arch).iter().enumerate() {
        for bi in 0..stage.blocks {
            let p = format!("layer{}.{}", si + 1, bi);
            let names = |layer: usize| [format!("{p}.conv{layer}"), format!("{p}.bn{layer}")];
            let [c1, n1] = names(1);
            let [c2, n2] = names(2);
            let [c3, n3] = names(3);
            let stride = if bi == 0 { stage.stride } else { 1 };
            let cin = b.channels(x);
            let cout = stage.width * expansion;
            // The main path, ReLU between its layers; the last layer's output is added to the
            // shortcut (node order = parameter order = PyTorch's module order).
            let main = match kind {
                BlockKind::Basic => {
                    let y = conv_bn(b, x, (&c1, &n1), stage.width, 3, stride);
                    let y = b.act(y, Act::Relu);
                    conv_bn(b, y, (&c2, &n2), stage.width, 3, 1)
                }
                BlockKind::Bottleneck => {
                    // torchvision "v1.5": the stride sits on the 3×3 convolution.
                    let y = conv_bn(b, x, (&c1, &n1), stage.width, 1, 1);
                    let y = b.act(y, Act::Relu);
                    let y = conv_bn(b, y, (&c2, &n2), stage.width, 3, stride);
                    let y = b.act(y, Act::Relu);
                    conv_bn(b, y, (&c3, &n3), cout, 1, 1)
                }
            };
            let shortcut = if stride != 1 || cin != cout {
                let (c, n) = (format!("{p}.downsample.0"), format!("{p}.downsample.1"));
                conv_bn(b, x, (&c, &n), cout, 1, stride)
            } else {
                x
            };
            let y = b.add(main, shortcut);
            x = b.act(y, Act::Relu);
        }
    }
    let x = b.global_avg_pool(x);
    b.linear(x, "fc", arch.num_classes());
}
