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
//! (what an edge predicts with) can be folded; batch-statistics and TBR forwards, and every
//! gradient, stay on burn. [`crate::Model::logits`] uses this path and refolds whenever the
//! weights or norm state have changed; tests hold it to the generic forward.

use rayon::prelude::*;

use crate::checkpoint::InputSpec;
use crate::gemm::gemm_acc;
use crate::norm::{NormKind, NormLayer, BN_EPS};
use crate::resnet::{Conv, ResNet};
use crate::store::Store;

/// A convolution with its BatchNorm folded in: `w` is `[k·k·cin, cout]` (rows ordered ky, kx,
/// cin to match NHWC im2col rows), `b` the folded bias.
#[derive(Debug, Clone)]
struct FConv {
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    pad: usize,
    w: Vec<f32>,
    b: Vec<f32>,
}

impl FConv {
    fn fold(store: &Store, conv: &Conv, norm: &NormLayer) -> Option<FConv> {
        if norm.kind != NormKind::BatchNorm2d {
            return None;
        }
        let shape = store.shape(conv.weight);
        let (cout, cin, k) = (shape[0], shape[1], shape[2]);
        let w = store.values(conv.weight);
        let gamma = store.values(norm.weight);
        let beta = store.values(norm.bias);
        let mean = store.values(norm.running_mean?);
        let var = store.values(norm.running_var?);
        // f64 for the fold itself: the folded weights are used for thousands of images.
        let scale: Vec<f64> = (0..cout)
            .map(|o| gamma[o] as f64 / (var[o] as f64 + BN_EPS).sqrt())
            .collect();
        let b = (0..cout)
            .map(|o| (beta[o] as f64 - mean[o] as f64 * scale[o]) as f32)
            .collect();
        let mut fw = vec![0f32; k * k * cin * cout];
        for o in 0..cout {
            for i in 0..cin {
                for ky in 0..k {
                    for kx in 0..k {
                        let src = ((o * cin + i) * k + ky) * k + kx;
                        let row = (ky * k + kx) * cin + i;
                        fw[row * cout + o] = (w[src] as f64 * scale[o]) as f32;
                    }
                }
            }
        }
        Some(FConv {
            cin,
            cout,
            k,
            stride: conv.stride,
            pad: conv.padding,
            w: fw,
            b,
        })
    }

    fn out_hw(&self, h: usize, w: usize) -> (usize, usize) {
        let o = |s: usize| (s + 2 * self.pad - self.k) / self.stride + 1;
        (o(h), o(w))
    }

    /// `dst ← [dst +] x ⊛ w + b`, then ReLU if asked. `x` is NHWC `[n, h, w, cin]`; `dst`
    /// becomes `[n, ho, wo, cout]`; with `accumulate` it must already hold that many values
    /// (the residual branch). `col` is scratch for the im2col matrix.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        x: &[f32],
        (n, h, w): (usize, usize, usize),
        dst: &mut Vec<f32>,
        col: &mut Vec<f32>,
        accumulate: bool,
        relu: bool,
        threads: usize,
    ) -> (usize, usize) {
        let (ho, wo) = self.out_hw(h, w);
        let m = n * ho * wo;
        let kk = self.k * self.k * self.cin;
        if accumulate {
            debug_assert_eq!(dst.len(), m * self.cout);
            for row in dst.chunks_exact_mut(self.cout) {
                row.iter_mut().zip(&self.b).for_each(|(d, b)| *d += b);
            }
        } else {
            dst.clear();
            for _ in 0..m {
                dst.extend_from_slice(&self.b);
            }
        }
        let lhs: &[f32] = if self.k == 1 && self.stride == 1 && self.pad == 0 {
            x
        } else {
            self.im2col(x, (n, h, w), (ho, wo), col);
            col
        };
        gemm_acc(dst, lhs, &self.w, (m, kk, self.cout), threads);
        if relu {
            dst.iter_mut().for_each(|v| *v = v.max(0.0));
        }
        (ho, wo)
    }

    /// One row per output pixel: the k×k×cin input patch it sees, zeros where it overhangs.
    fn im2col(
        &self,
        x: &[f32],
        (n, h, w): (usize, usize, usize),
        (ho, wo): (usize, usize),
        col: &mut Vec<f32>,
    ) {
        let (k, c, s) = (self.k, self.cin, self.stride);
        let row_len = k * k * c;
        col.clear();
        col.resize(n * ho * wo * row_len, 0.0);
        for (r, row) in col.chunks_exact_mut(row_len).enumerate() {
            let img = r / (ho * wo);
            let (oy, ox) = ((r / wo) % ho, r % wo);
            for ky in 0..k {
                let iy = (oy * s + ky) as isize - self.pad as isize;
                if iy < 0 || iy >= h as isize {
                    continue;
                }
                for kx in 0..k {
                    let ix = (ox * s + kx) as isize - self.pad as isize;
                    if ix < 0 || ix >= w as isize {
                        continue;
                    }
                    let src = ((img * h + iy as usize) * w + ix as usize) * c;
                    let dst = (ky * k + kx) * c;
                    row[dst..dst + c].copy_from_slice(&x[src..src + c]);
                }
            }
        }
    }
}

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
    col: Vec<f32>,
}

/// Below this many multiply-adds a convolution is not worth splitting across threads.
const PAR_GEMM_MACS: usize = 1 << 20;

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
        Some(FoldedNet {
            input: input.clone(),
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
        let (h, w, c) = (spec.height, spec.width, spec.channels);
        let n = logits.len() / self.classes;
        // Exactly `to_input`'s arithmetic, so both paths see the same floats.
        let scale: Vec<f32> = spec.std.iter().map(|s| 1.0 / (255.0 * s)).collect();
        let shift: Vec<f32> = spec
            .mean
            .iter()
            .zip(&spec.std)
            .map(|(m, s)| m / s)
            .collect();
        s.x.clear();
        s.x.extend(
            pixels
                .iter()
                .enumerate()
                .map(|(i, &v)| v as f32 * scale[i % c] - shift[i % c]),
        );
        let par = |conv: &FConv, rows: usize| {
            if threads > 1 && rows * conv.k * conv.k * conv.cin * conv.cout >= PAR_GEMM_MACS {
                threads
            } else {
                1
            }
        };
        let (mut h, mut w) = (h, w);
        let (ho, wo) = self.stem.out_hw(h, w);
        let t = par(&self.stem, n * ho * wo);
        (h, w) = self
            .stem
            .run(&s.x, (n, h, w), &mut s.out, &mut s.col, false, true, t);
        std::mem::swap(&mut s.x, &mut s.out);
        if self.max_pool {
            (h, w) = max_pool_3x3_s2(&s.x, (n, h, w, self.stem.cout), &mut s.out);
            std::mem::swap(&mut s.x, &mut s.out);
        }
        let mut c = self.stem.cout;
        for block in &self.blocks {
            let last = block.layers.len() - 1;
            // The shortcut goes into `out` first; the last convolution accumulates onto it.
            match &block.downsample {
                Some(d) => {
                    let (ho, wo) = d.out_hw(h, w);
                    let t = par(d, n * ho * wo);
                    d.run(&s.x, (n, h, w), &mut s.out, &mut s.col, false, false, t);
                }
                None => {
                    s.out.clear();
                    s.out.extend_from_slice(&s.x);
                }
            }
            let (mut bh, mut bw) = (h, w);
            for (li, conv) in block.layers.iter().enumerate() {
                let (ho, wo) = conv.out_hw(bh, bw);
                let t = par(conv, n * ho * wo);
                // `t1` holds the previous layer's output; a middle layer writes `t2`, then swaps.
                let src: &[f32] = if li == 0 { &s.x } else { &s.t1 };
                (bh, bw) = if li == last {
                    conv.run(src, (n, bh, bw), &mut s.out, &mut s.col, true, true, t)
                } else if li == 0 {
                    conv.run(&s.x, (n, bh, bw), &mut s.t1, &mut s.col, false, true, t)
                } else {
                    let hw = conv.run(src, (n, bh, bw), &mut s.t2, &mut s.col, false, true, t);
                    std::mem::swap(&mut s.t1, &mut s.t2);
                    hw
                };
            }
            (h, w, c) = (bh, bw, block.layers[last].cout);
            std::mem::swap(&mut s.x, &mut s.out);
        }
        // Global average pool, then the classifier.
        let hw = h * w;
        for (img, out) in logits.chunks_exact_mut(self.classes).enumerate() {
            let mut pooled = vec![0f32; c];
            for px in s.x[img * hw * c..(img + 1) * hw * c].chunks_exact(c) {
                pooled.iter_mut().zip(px).for_each(|(p, v)| *p += v);
            }
            out.copy_from_slice(&self.fc_b);
            for (ci, p) in pooled.iter().enumerate() {
                let p = p / hw as f32;
                let row = &self.fc_w[ci * self.classes..(ci + 1) * self.classes];
                out.iter_mut().zip(row).for_each(|(o, w)| *o += p * w);
            }
        }
    }
}

/// torchvision's stem pool: 3×3, stride 2, padding 1 (padding never wins a max).
fn max_pool_3x3_s2(
    x: &[f32],
    (n, h, w, c): (usize, usize, usize, usize),
    dst: &mut Vec<f32>,
) -> (usize, usize) {
    let (ho, wo) = ((h + 2 - 3) / 2 + 1, (w + 2 - 3) / 2 + 1);
    dst.clear();
    dst.resize(n * ho * wo * c, f32::NEG_INFINITY);
    for (r, out) in dst.chunks_exact_mut(c).enumerate() {
        let img = r / (ho * wo);
        let (oy, ox) = ((r / wo) % ho, r % wo);
        for iy in (2 * oy).saturating_sub(1)..(2 * oy + 2).min(h) {
            for ix in (2 * ox).saturating_sub(1)..(2 * ox + 2).min(w) {
                let src = ((img * h + iy) * w + ix) * c;
                out.iter_mut()
                    .zip(&x[src..src + c])
                    .for_each(|(o, v)| *o = o.max(*v));
            }
        }
    }
    (ho, wo)
}
