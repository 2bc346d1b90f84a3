//! Convolution kernels on channels-last activations inside a zero border, shared by the folded
//! inference net ([`crate::folded`]) and the hand-written adaptation backward pass
//! ([`crate::affine_backward`]).
//!
//! Layout: `n` images, each `(h + 2·pad) × (w + 2·pad)` rows of `c` floats (NHWC), the border zero.
//! A stride-1 3×3 convolution over such a buffer is three GEMMs whose left operands are
//! overlapping windows of the input (no im2col copy, see [`FConv::run`]); strided and odd-shaped
//! convolutions copy one contiguous `k·cin` run per kernel row into an im2col matrix. The inverse
//! of that copy, [`FConv::col2im_add`], is the input gradient of a strided convolution.

use crate::gemm::{gemm_acc, gemm_acc_lhs_stride};
use crate::norm::{NormKind, NormLayer, BN_EPS};
use crate::resnet::Conv;
use crate::store::Store;

/// A convolution over padded NHWC activations: `w` is `[k·k·cin, cout]` (rows ordered ky, kx,
/// cin to match NHWC im2col rows), `b` a bias added to every output pixel (the folded
/// BatchNorm's shift; zeros for a raw convolution).
#[derive(Debug, Clone)]
pub(crate) struct FConv {
    pub(crate) cin: usize,
    pub(crate) cout: usize,
    pub(crate) k: usize,
    pub(crate) stride: usize,
    pub(crate) pad: usize,
    w: Vec<f32>,
    b: Vec<f32>,
}

impl FConv {
    /// The convolution with its BatchNorm (running statistics) multiplied in.
    pub(crate) fn fold(store: &Store, conv: &Conv, norm: &NormLayer) -> Option<FConv> {
        if norm.kind != NormKind::BatchNorm2d {
            return None;
        }
        let gamma = store.values(norm.weight);
        let beta = store.values(norm.bias);
        let mean = store.values(norm.running_mean?);
        let var = store.values(norm.running_var?);
        // f64 for the fold itself: the folded weights are used for thousands of images.
        let scale: Vec<f64> = (0..gamma.len())
            .map(|o| gamma[o] as f64 / (var[o] as f64 + BN_EPS).sqrt())
            .collect();
        let b = (0..gamma.len())
            .map(|o| (beta[o] as f64 - mean[o] as f64 * scale[o]) as f32)
            .collect();
        Some(Self::with_scale(store, conv, &scale, b))
    }

    /// The convolution alone (no norm, no bias): what a batch-statistics forward needs.
    pub(crate) fn raw(store: &Store, conv: &Conv) -> FConv {
        let cout = store.shape(conv.weight)[0];
        Self::with_scale(store, conv, &vec![1.0; cout], vec![0.0; cout])
    }

    fn with_scale(store: &Store, conv: &Conv, scale: &[f64], b: Vec<f32>) -> FConv {
        let shape = store.shape(conv.weight);
        let (cout, cin, k) = (shape[0], shape[1], shape[2]);
        let w = store.values(conv.weight);
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
        FConv {
            cin,
            cout,
            k,
            stride: conv.stride,
            pad: conv.padding,
            w: fw,
            b,
        }
    }

    /// For a stride-1 convolution, the convolution that maps output gradients to input
    /// gradients: the kernel flipped in both axes, input and output channels swapped, padding
    /// `k − 1 − pad`. `None` for a strided one (that needs [`FConv::col2im_add`]).
    pub(crate) fn transposed(&self) -> Option<FConv> {
        if self.stride != 1 || self.pad + 1 > self.k {
            return None;
        }
        let (k, cin, cout) = (self.k, self.cin, self.cout);
        let mut w = vec![0f32; self.w.len()];
        for ky in 0..k {
            for kx in 0..k {
                let flipped = (k - 1 - ky) * k + (k - 1 - kx);
                for o in 0..cout {
                    for i in 0..cin {
                        w[((ky * k + kx) * cout + o) * cin + i] =
                            self.w[(flipped * cin + i) * cout + o];
                    }
                }
            }
        }
        Some(FConv {
            cin: cout,
            cout: cin,
            k,
            stride: 1,
            pad: k - 1 - self.pad,
            w,
            b: vec![0.0; cin],
        })
    }

    /// `w` transposed to `[cout, k·k·cin]`: output-pixel gradients times this are the gradients
    /// of the im2col rows, which [`FConv::col2im_add`] scatters back.
    pub(crate) fn weight_t(&self) -> Vec<f32> {
        let rows = self.k * self.k * self.cin;
        let mut t = vec![0f32; rows * self.cout];
        for r in 0..rows {
            for o in 0..self.cout {
                t[o * rows + r] = self.w[r * self.cout + o];
            }
        }
        t
    }

    pub(crate) fn out_hw(&self, h: usize, w: usize) -> (usize, usize) {
        let o = |s: usize| (s + 2 * self.pad - self.k) / self.stride + 1;
        (o(h), o(w))
    }

    /// The output geometry for input geometry `g` (always a border of 1).
    pub(crate) fn out_geo(&self, g: Geo) -> Geo {
        let (h, w) = self.out_hw(g.h, g.w);
        Geo {
            n: g.n,
            h,
            w,
            pad: 1,
        }
    }

    /// `dst ← [dst +] x ⊛ w + b`, then ReLU if asked. `x` is `g`'s images with `cin` channels;
    /// `dst` is the output images, `cout` channels, padded by 1 (`out_geo(g).rows() · cout`
    /// floats). With `accumulate` it must already hold exactly that (the residual branch).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn run(
        &self,
        x: &[f32],
        g: Geo,
        dst: &mut [f32],
        s: &mut ConvScratch,
        accumulate: bool,
        relu: bool,
        threads: usize,
    ) -> Geo {
        let out = self.out_geo(g);
        let (ho, wo) = (out.h, out.w);
        let cout = self.cout;
        assert_eq!(dst.len(), out.rows() * cout, "conv: output buffer size");
        let shifted = self.k == 3 && self.stride == 1 && self.pad == 1 && g.pad == 1;
        let pointwise = self.k == 1 && self.stride == 1 && self.pad == 0 && g.pad == 1;
        if (shifted && self.cin >= 4) || pointwise {
            // Same padded geometry in and out: every padded position gets a row.
            let rows = out.rows();
            if accumulate {
                for row in dst.chunks_exact_mut(cout) {
                    row.iter_mut().zip(&self.b).for_each(|(d, b)| *d += b);
                }
            } else {
                fill_rows(dst, &self.b);
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
            s.tmp.resize(m * cout, 0.0);
            fill_rows(&mut s.tmp, &self.b);
            let kk = self.k * self.k * self.cin;
            let par = threads_for(threads, m * kk * cout);
            gemm_acc(&mut s.tmp, &s.col, &self.w, (m, kk, cout), par);
            if !accumulate {
                dst.fill(0.0);
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

    /// [`FConv::run`] into a growable buffer, sized here unless accumulating.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn run_vec(
        &self,
        x: &[f32],
        g: Geo,
        dst: &mut Vec<f32>,
        s: &mut ConvScratch,
        accumulate: bool,
        relu: bool,
        threads: usize,
    ) -> Geo {
        if !accumulate {
            dst.resize(self.out_geo(g).rows() * self.cout, 0.0);
        }
        self.run(x, g, dst, s, accumulate, relu, threads)
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

    /// Input gradient of this convolution: `dx += col2im(dy · wᵀ)`, where `dy` is the output
    /// gradient in the padded output geometry (border zero), `w_t` is [`FConv::weight_t`], `g`
    /// the input geometry and `dx` its padded buffer. The border of `dx` receives the padding's
    /// gradient, which means nothing: it is zeroed on return.
    pub(crate) fn col2im_add(
        &self,
        dy: &[f32],
        w_t: &[f32],
        g: Geo,
        dx: &mut [f32],
        s: &mut ConvScratch,
    ) {
        let out = self.out_geo(g);
        let (ho, wo, cout) = (out.h, out.w, self.cout);
        let (k, c, st) = (self.k, self.cin, self.stride);
        let off = g.pad - self.pad;
        let m = g.n * ho * wo;
        // The interior output rows, packed.
        s.tmp.clear();
        for img in 0..g.n {
            for oy in 0..ho {
                let at = out.at(img, oy, 0) * cout;
                s.tmp.extend_from_slice(&dy[at..at + wo * cout]);
            }
        }
        let row_len = k * k * c;
        s.col.clear();
        s.col.resize(m * row_len, 0.0);
        gemm_acc(&mut s.col, &s.tmp, w_t, (m, cout, row_len), 1);
        for (r, row) in s.col.chunks_exact(row_len).enumerate() {
            let img = r / (ho * wo);
            let (oy, ox) = ((r / wo) % ho, r % wo);
            for ky in 0..k {
                let dst = g.row(img, oy * st + ky + off, ox * st + off) * c;
                dx[dst..dst + k * c]
                    .iter_mut()
                    .zip(&row[ky * k * c..(ky + 1) * k * c])
                    .for_each(|(d, v)| *d += v);
            }
        }
        finish(dx, g, c, false);
    }
}

/// The geometry of a group of activations: `n` images of `h×w` interior pixels, NHWC, inside a
/// zero border of `pad` pixels (so a 3×3 convolution needs no bounds checks and no copies).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geo {
    pub(crate) n: usize,
    pub(crate) h: usize,
    pub(crate) w: usize,
    pub(crate) pad: usize,
}

impl Geo {
    pub(crate) fn rows(&self) -> usize {
        self.n * (self.h + 2 * self.pad) * (self.w + 2 * self.pad)
    }

    /// Row index of padded position (`y`, `x`) of image `img` (`y`, `x` count the border).
    pub(crate) fn row(&self, img: usize, y: usize, x: usize) -> usize {
        let (hp, wp) = (self.h + 2 * self.pad, self.w + 2 * self.pad);
        (img * hp + y) * wp + x
    }

    /// Row index of interior pixel (`y`, `x`).
    pub(crate) fn at(&self, img: usize, y: usize, x: usize) -> usize {
        self.row(img, y + self.pad, x + self.pad)
    }
}

fn fill_rows(dst: &mut [f32], row: &[f32]) {
    for d in dst.chunks_exact_mut(row.len()) {
        d.copy_from_slice(row);
    }
}

pub(crate) fn threads_for(threads: usize, macs: usize) -> usize {
    if threads > 1 && macs >= PAR_GEMM_MACS {
        threads
    } else {
        1
    }
}

/// ReLU (if asked), then the border back to zero.
pub(crate) fn finish(dst: &mut [f32], g: Geo, c: usize, relu: bool) {
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

#[derive(Default)]
pub(crate) struct ConvScratch {
    col: Vec<f32>,
    tmp: Vec<f32>,
}

/// Below this many multiply-adds a convolution is not worth splitting across threads.
pub(crate) const PAR_GEMM_MACS: usize = 1 << 20;

/// torchvision's stem pool: 3×3, stride 2, padding 1, on a ReLU output with a border of 1. The
/// inputs are ≥ 0, so the zero border never changes a maximum and the windows need no clipping.
pub(crate) fn max_pool_3x3_s2(x: &[f32], g: Geo, c: usize, dst: &mut Vec<f32>) -> Geo {
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

/// u8 NHWC images → `(u8 · scale − shift)` per channel inside the zero border of `g`.
pub(crate) fn load_pixels(
    pixels: &[u8],
    (scale, shift): (&[f32], &[f32]),
    g: Geo,
    dst: &mut Vec<f32>,
) {
    let c = scale.len();
    dst.clear();
    dst.resize(g.rows() * c, 0.0);
    for (p, px) in pixels.chunks_exact(c).enumerate() {
        let (img, y, x) = (p / (g.h * g.w), (p / g.w) % g.h, p % g.w);
        let at = g.at(img, y, x) * c;
        for ch in 0..c {
            dst[at + ch] = px[ch] as f32 * scale[ch] - shift[ch];
        }
    }
}

/// Sum over image `img`'s interior pixels, per channel, into `acc` (`c` floats).
pub(crate) fn sum_interior(x: &[f32], g: Geo, c: usize, img: usize, acc: &mut [f32]) {
    acc.fill(0.0);
    for y in 0..g.h {
        let line = &x[g.at(img, y, 0) * c..g.at(img, y, g.w) * c];
        for px in line.chunks_exact(c) {
            acc.iter_mut().zip(px).for_each(|(a, v)| *a += v);
        }
    }
}

/// Images per task when a batch is split over threads: enough output rows to amortise packing
/// the weights, few enough that the im2col matrix stays in cache, and at least one task per
/// thread.
pub(crate) fn images_per_task(h: usize, w: usize, n: usize) -> usize {
    let group = (2048 / (h * w).max(1)).clamp(1, 16);
    group.min(n.div_ceil(rayon::current_num_threads()).max(1))
}
