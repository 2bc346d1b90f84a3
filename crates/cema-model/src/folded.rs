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
use crate::gemm::{gemm_acc, gemm_acc_lhs_stride};
use crate::input::pixel_affine;
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

    /// `dst ← [dst +] x ⊛ w + b`, then ReLU if asked. `x` is `g`'s images with `cin` channels;
    /// `dst` becomes the output images, `cout` channels, padded by 1. With `accumulate` it must
    /// already hold exactly that (the residual branch).
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        x: &[f32],
        g: Geo,
        dst: &mut Vec<f32>,
        s: &mut ConvScratch,
        accumulate: bool,
        relu: bool,
        threads: usize,
    ) -> Geo {
        let (ho, wo) = self.out_hw(g.h, g.w);
        let out = Geo {
            n: g.n,
            h: ho,
            w: wo,
            pad: 1,
        };
        let cout = self.cout;
        let shifted = self.k == 3 && self.stride == 1 && self.pad == 1 && g.pad == 1;
        let pointwise = self.k == 1 && self.stride == 1 && self.pad == 0 && g.pad == 1;
        if (shifted && self.cin >= 4) || pointwise {
            // Same padded geometry in and out: every padded position gets a row.
            let rows = out.rows();
            if accumulate {
                debug_assert_eq!(dst.len(), rows * cout);
                for row in dst.chunks_exact_mut(cout) {
                    row.iter_mut().zip(&self.b).for_each(|(d, b)| *d += b);
                }
            } else {
                fill_rows(dst, rows, &self.b);
            }
            let par = threads_for(threads, rows * self.k * self.k * self.cin * cout);
            if pointwise {
                gemm_acc(dst, x, &self.w, (rows, self.cin, cout), par);
            } else {
                // Output row r + wp + 1 reads input rows r + ky·wp + (0..3): for each ky one GEMM
                // whose lhs rows are overlapping 3·cin windows of the padded input. The rows that
                // land on the border are garbage and zeroed below.
                let wp = g.w + 2;
                let m = rows - 2 * wp - 2;
                let kc = 3 * self.cin;
                let d = &mut dst[(wp + 1) * cout..(wp + 1 + m) * cout];
                for ky in 0..3 {
                    let lhs = &x[ky * wp * self.cin..];
                    let rhs = &self.w[ky * kc * cout..(ky + 1) * kc * cout];
                    gemm_acc_lhs_stride(d, lhs, self.cin, rhs, (m, kc, cout), par);
                }
            }
        } else {
            self.im2col(x, g, (ho, wo), &mut s.col);
            let m = g.n * ho * wo;
            fill_rows(&mut s.tmp, m, &self.b);
            let kk = self.k * self.k * self.cin;
            let par = threads_for(threads, m * kk * cout);
            gemm_acc(&mut s.tmp, &s.col, &self.w, (m, kk, cout), par);
            if !accumulate {
                dst.clear();
                dst.resize(out.rows() * cout, 0.0);
            }
            for (r, src) in s.tmp.chunks_exact(cout).enumerate() {
                let at = out.at(r / (ho * wo), (r / wo) % ho, r % wo) * cout;
                let row = &mut dst[at..at + cout];
                if accumulate {
                    row.iter_mut().zip(src).for_each(|(d, v)| *d += v);
                } else {
                    row.copy_from_slice(src);
                }
            }
        }
        finish(dst, out, cout, relu);
        out
    }

    /// One row per output pixel: the k×k×cin patch it sees. The input's zero border (at least
    /// this convolution's padding) makes every patch row one contiguous k·cin copy.
    fn im2col(&self, x: &[f32], g: Geo, (ho, wo): (usize, usize), col: &mut Vec<f32>) {
        let (k, c, st) = (self.k, self.cin, self.stride);
        debug_assert!(g.pad >= self.pad);
        let off = g.pad - self.pad;
        let row_len = k * k * c;
        col.clear();
        col.resize(g.n * ho * wo * row_len, 0.0);
        for (r, row) in col.chunks_exact_mut(row_len).enumerate() {
            let img = r / (ho * wo);
            let (oy, ox) = ((r / wo) % ho, r % wo);
            for ky in 0..k {
                let src = g.row(img, oy * st + ky + off, ox * st + off) * c;
                row[ky * k * c..(ky + 1) * k * c].copy_from_slice(&x[src..src + k * c]);
            }
        }
    }
}

/// The geometry of a group of activations: `n` images of `h×w` interior pixels, NHWC, inside a
/// zero border of `pad` pixels (so a 3×3 convolution needs no bounds checks and no copies).
#[derive(Debug, Clone, Copy)]
struct Geo {
    n: usize,
    h: usize,
    w: usize,
    pad: usize,
}

impl Geo {
    fn rows(&self) -> usize {
        self.n * (self.h + 2 * self.pad) * (self.w + 2 * self.pad)
    }

    /// Row index of padded position (`y`, `x`) of image `img` (`y`, `x` count the border).
    fn row(&self, img: usize, y: usize, x: usize) -> usize {
        let (hp, wp) = (self.h + 2 * self.pad, self.w + 2 * self.pad);
        (img * hp + y) * wp + x
    }

    /// Row index of interior pixel (`y`, `x`).
    fn at(&self, img: usize, y: usize, x: usize) -> usize {
        self.row(img, y + self.pad, x + self.pad)
    }
}

fn fill_rows(dst: &mut Vec<f32>, rows: usize, row: &[f32]) {
    dst.clear();
    dst.reserve(rows * row.len());
    for _ in 0..rows {
        dst.extend_from_slice(row);
    }
}

fn threads_for(threads: usize, macs: usize) -> usize {
    if threads > 1 && macs >= PAR_GEMM_MACS {
        threads
    } else {
        1
    }
}

/// ReLU (if asked), then the border back to zero.
fn finish(dst: &mut [f32], g: Geo, c: usize, relu: bool) {
    if relu {
        dst.iter_mut().for_each(|v| *v = v.max(0.0));
    }
    let (hp, wp) = (g.h + 2 * g.pad, g.w + 2 * g.pad);
    for img in 0..g.n {
        for y in 0..hp {
            let line = &mut dst[g.row(img, y, 0) * c..g.row(img, y, wp) * c];
            if y < g.pad || y >= hp - g.pad {
                line.fill(0.0);
            } else {
                line[..g.pad * c].fill(0.0);
                line[(wp - g.pad) * c..].fill(0.0);
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

#[derive(Default)]
struct ConvScratch {
    col: Vec<f32>,
    tmp: Vec<f32>,
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
        let c = spec.channels;
        let mut g = Geo {
            n: logits.len() / self.classes,
            h: spec.height,
            w: spec.width,
            pad: self.stem.pad,
        };
        let (scale, shift) = (&self.pixel_scale, &self.pixel_shift);
        s.x.clear();
        s.x.resize(g.rows() * c, 0.0);
        for (p, px) in pixels.chunks_exact(c).enumerate() {
            let (img, y, x) = (p / (g.h * g.w), (p / g.w) % g.h, p % g.w);
            let at = g.at(img, y, x) * c;
            for ch in 0..c {
                s.x[at + ch] = px[ch] as f32 * scale[ch] - shift[ch];
            }
        }
        g = self
            .stem
            .run(&s.x, g, &mut s.out, &mut s.conv, false, true, threads);
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
                    d.run(&s.x, g, &mut s.out, &mut s.conv, false, false, threads);
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
                    conv.run(src, bg, &mut s.out, &mut s.conv, true, true, threads)
                } else if li == 0 {
                    conv.run(&s.x, bg, &mut s.t1, &mut s.conv, false, true, threads)
                } else {
                    let next = conv.run(src, bg, &mut s.t2, &mut s.conv, false, true, threads);
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
            pooled.fill(0.0);
            for y in 0..g.h {
                let line = &s.x[g.at(img, y, 0) * c..g.at(img, y, g.w) * c];
                for px in line.chunks_exact(c) {
                    pooled.iter_mut().zip(px).for_each(|(p, v)| *p += v);
                }
            }
            out.copy_from_slice(&self.fc_b);
            for (ci, p) in pooled.iter().enumerate() {
                let p = p / hw;
                let row = &self.fc_w[ci * self.classes..(ci + 1) * self.classes];
                out.iter_mut().zip(row).for_each(|(o, w)| *o += p * w);
            }
        }
    }
}

/// torchvision's stem pool: 3×3, stride 2, padding 1, on a ReLU output with a border of 1. The
/// inputs are ≥ 0, so the zero border never changes a maximum and the windows need no clipping.
fn max_pool_3x3_s2(x: &[f32], g: Geo, c: usize, dst: &mut Vec<f32>) -> Geo {
    debug_assert_eq!(g.pad, 1);
    let out = Geo {
        n: g.n,
        h: (g.h - 1) / 2 + 1,
        w: (g.w - 1) / 2 + 1,
        pad: 1,
    };
    dst.clear();
    dst.resize(out.rows() * c, 0.0);
    for img in 0..g.n {
        for oy in 0..out.h {
            for ox in 0..out.w {
                let at = out.at(img, oy, ox) * c;
                let o = &mut dst[at..at + c];
                for y in 2 * oy..2 * oy + 3 {
                    let src = g.row(img, y, 2 * ox) * c;
                    for v in x[src..src + 3 * c].chunks_exact(c) {
                        o.iter_mut().zip(v).for_each(|(o, v)| *o = o.max(*v));
                    }
                }
            }
        }
    }
    out
}
