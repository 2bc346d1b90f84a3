//! The inference path: a ResNet with every BatchNorm folded into its convolution, run
//! channels-last (NHWC) with the bias, the residual and the ReLU fused into each convolution.
//!
//! Why a separate path: in eval mode a BatchNorm is an affine map per channel, so it can be
//! multiplied into the preceding convolution's weights once per norm-state change (the edge
//! receives one every K batches) instead of being paid on every image. burn's generic forward
//! cannot do that, and it converts NCHW↔NHWC and allocates an im2col buffer inside every
//! convolution and a tensor per element-wise op. Here the activations stay NHWC, an im2col
//! matrix times the folded weights is one `gemm` call whose output rows are already the next
//! layer's NHWC input, and the buffers are reused across layers. Only `NormMode::Running`
//! (what an edge predicts with) can be folded; the batch-statistics and TBR forwards that
//! adaptation differentiates run on the same kernels ([`crate::nhwc`]) in
//! [`crate::affine_backward`]. [`crate::Model::logits`] uses this path and refolds whenever the
//! weights or norm state have changed; tests hold it to the generic forward.

use rayon::prelude::*;

use crate::checkpoint::InputSpec;
use crate::input::pixel_affine;
use crate::nhwc::{load_pixels, max_pool_3x3_s2, sum_interior, ConvScratch, FConv, Geo};
use crate::resnet::{Conv, ResNet};

#[derive(Debug, Clone)]
struct FBlock {
    /// ReLU after each but the last, which accumulates onto the shortcut and then takes ReLU.
    layers: Vec<FConv>,
    downsample: Option<FConv>,
}

/// A ResNet folded for eval-mode inference. Built by [`ResNet::fold`]; immutable.
#[derive(Clone)]
pub struct FoldedNet {
    input: InputSpec,
    /// `to_input`'s normalisation (`crate::input::pixel_affine`), computed once per fold.
    pixel_scale: Vec<f32>,
    pixel_shift: Vec<f32>,
    stem: FConv,
    max_pool: bool,
    blocks: Vec<FBlock>,
    /// `[features, classes]`.
    fc_w: Vec<f32>,
    fc_b: Vec<f32>,
    classes: usize,
}

impl std::fmt::Debug for FoldedNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FoldedNet")
            .field("blocks", &self.blocks.len())
            .field("classes", &self.classes)
            .finish_non_exhaustive()
    }
}

/// Per-task buffers, reused across layers and images.
#[derive(Default)]
struct Scratch {
    x: Vec<f32>,
    t1: Vec<f32>,
    t2: Vec<f32>,
    out: Vec<f32>,
    conv: ConvScratch,
}

impl ResNet {
    /// This network with every BatchNorm folded into its convolution, for `input`-shaped images.
    /// `None` when a norm layer cannot be folded (no running statistics, e.g. LayerNorm).
    pub fn fold(&self, input: &InputSpec) -> Option<FoldedNet> {
        let store = &self.store;
        let fold = |(c, n): &(Conv, usize)| FConv::fold(store, c, &self.norms[*n]);
        let stem = fold(&self.stem)?;
        let mut blocks = Vec::with_capacity(self.blocks.len());
        for b in &self.blocks {
            blocks.push(FBlock {
                layers: b.layers.iter().map(fold).collect::<Option<_>>()?,
                downsample: match &b.downsample {
                    Some(d) => Some(fold(d)?),
                    None => None,
                },
            });
        }
        let shape = store.shape(self.fc_weight);
        let (classes, feat) = (shape[0], shape[1]);
        let w = store.values(self.fc_weight);
        let mut fc_w = vec![0f32; feat * classes];
        for j in 0..classes {
            for c in 0..feat {
                fc_w[c * classes + j] = w[j * feat + c];
            }
        }
        let (pixel_scale, pixel_shift) = pixel_affine(input);
        Some(FoldedNet {
            input: input.clone(),
            pixel_scale,
            pixel_shift,
            stem,
            max_pool: self.max_pool,
            blocks,
            fc_w,
            fc_b: store.values(self.fc_bias),
            classes,
        })
    }
}

impl FoldedNet {
    pub fn num_classes(&self) -> usize {
        self.classes
    }

    /// Logits (row-major `n × classes`) for `n` u8 NHWC images of the input geometry the net was
    /// folded for; `pixels.len()` must be `n·h·w·c` (the caller validates).
    pub fn logits(&self, pixels: &[u8], n: usize) -> Vec<f32> {
        let spec = &self.input;
        let per = spec.height * spec.width * spec.channels;
        assert_eq!(pixels.len(), n * per, "folded forward: pixel count");
        let mut logits = vec![0f32; n * self.classes];
        let threads = rayon::current_num_threads();
        // Images per GEMM: enough output rows to amortise packing the weights, few enough that
        // the im2col matrix stays in cache.
        let group = (2048 / (spec.height * spec.width)).clamp(1, 16);
        if n <= group || threads == 1 {
            let mut s = Scratch::default();
            for (px, out) in pixels
                .chunks(group * per)
                .zip(logits.chunks_mut(group * self.classes))
            {
                self.forward_group(px, out, &mut s, threads);
            }
        } else {
            // Spread the batch over the pool, at least one group per thread.
            let group = group.min(n.div_ceil(threads));
            pixels
                .par_chunks(group * per)
                .zip(logits.par_chunks_mut(group * self.classes))
                .for_each_init(Scratch::default, |s, (px, out)| {
                    self.forward_group(px, out, s, 1)
                });
        }
        logits
    }

    fn forward_group(&self, pixels: &[u8], logits: &mut [f32], s: &mut Scratch, threads: usize) {
        let spec = &self.input;
        let mut g = Geo {
            n: logits.len() / self.classes,
            h: spec.height,
            w: spec.width,
            pad: self.stem.pad,
        };
        load_pixels(pixels, (&self.pixel_scale, &self.pixel_shift), g, &mut s.x);
        g = self
            .stem
            .run_vec(&s.x, g, &mut s.out, &mut s.conv, false, true, threads);
        std::mem::swap(&mut s.x, &mut s.out);
        if self.max_pool {
            g = max_pool_3x3_s2(&s.x, g, self.stem.cout, &mut s.out);
            std::mem::swap(&mut s.x, &mut s.out);
        }
        let mut c = self.stem.cout;
        for block in &self.blocks {
            let last = block.layers.len() - 1;
            // The shortcut goes into `out` first; the last convolution accumulates onto it.
            match &block.downsample {
                Some(d) => {
                    d.run_vec(&s.x, g, &mut s.out, &mut s.conv, false, false, threads);
                }
                None => {
                    s.out.clear();
                    s.out.extend_from_slice(&s.x);
                }
            }
            let mut bg = g;
            for (li, conv) in block.layers.iter().enumerate() {
                // `t1` holds the previous layer's output; a middle layer writes `t2`, then swaps.
                let src: &[f32] = if li == 0 { &s.x } else { &s.t1 };
                bg = if li == last {
                    conv.run_vec(src, bg, &mut s.out, &mut s.conv, true, true, threads)
                } else if li == 0 {
                    conv.run_vec(&s.x, bg, &mut s.t1, &mut s.conv, false, true, threads)
                } else {
                    let next = conv.run_vec(src, bg, &mut s.t2, &mut s.conv, false, true, threads);
                    std::mem::swap(&mut s.t1, &mut s.t2);
                    next
                };
            }
            (g, c) = (bg, block.layers[last].cout);
            std::mem::swap(&mut s.x, &mut s.out);
        }
        // Global average pool over the interior, then the classifier.
        let hw = (g.h * g.w) as f32;
        let mut pooled = vec![0f32; c];
        for (img, out) in logits.chunks_exact_mut(self.classes).enumerate() {
            sum_interior(&s.x, g, c, img, &mut pooled);
            out.copy_from_slice(&self.fc_b);
            for (ci, p) in pooled.iter().enumerate() {
                let p = p / hw;
                let row = &self.fc_w[ci * self.classes..(ci + 1) * self.classes];
                out.iter_mut().zip(row).for_each(|(o, w)| *o += p * w);
            }
        }
    }
}
