//! Convolution kernels on channels-last activations inside a zero border, shared by the folded
//! inference net ([`crate::folded`]) and the hand-written adaptation backward pass
//! ([`crate::affine_backward`]).
//!
//! Layout: `n` images, each `(h + 2·pad) × (w + 2·pad)` rows of `c` floats (NHWC), the border zero.
//! A stride-1 3×3 convolution over such a buffer is three GEMMs whose left operands are
//! overlapping windows of the input (no im2col copy, see [`FConv::run`]); strided and odd-shaped
//! convolutions copy one contiguous `k·cin` run per kernel row into an im2col matrix. The inverse
//! of that copy, [`FConv::col2im_add`], is the input gradient of a strided convolution.

use std::sync::OnceLock;

use crate::bf16::{PackedB, Precision};
use crate::gemm::{conv_bf16, gemm_acc, gemm_acc_lhs_stride, gemm_bf16, View};
use crate::graph::Act;
use crate::lanes;

/// A convolution's window: kernel side, stride and the padding on each side (top, bottom, left,
/// right), resolved for one input geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    pub(crate) k: usize,
    pub(crate) stride: usize,
    pub(crate) pads: [usize; 4],
}

impl Window {
    pub(crate) fn out_hw(&self, h: usize, w: usize) -> (usize, usize) {
        let [t, b, l, r] = self.pads;
        (
            (h + t + b - self.k) / self.stride + 1,
            (w + l + r - self.k) / self.stride + 1,
        )
    }

    /// The output geometry for input geometry `g`, inside a border of `border`.
    pub(crate) fn out_geo(&self, g: Geo, border: usize) -> Geo {
        let (h, w) = self.out_hw(g.h, g.w);
        Geo {
            n: g.n,
            h,
            w,
            pad: border,
        }
    }

    /// The border an input needs for this window's reads to stay inside its buffer.
    pub(crate) fn border(&self) -> usize {
        self.pads.into_iter().max().unwrap_or(0)
    }

    fn symmetric(&self) -> Option<usize> {
        let [t, b, l, r] = self.pads;
        (t == b && l == r && t == l).then_some(t)
    }

    /// Row offsets (y, x) of the window's top-left tap inside an input buffer with border `pad`.
    fn offsets(&self, pad: usize) -> (usize, usize) {
        debug_assert!(pad >= self.border());
        (pad - self.pads[0], pad - self.pads[2])
    }
}

/// A convolution over padded NHWC activations: `w` is `[k·k·cin, cout]` (rows ordered ky, kx,
/// cin to match NHWC im2col rows), `b` a bias added to every output pixel (the folded
/// BatchNorm's shift; zeros for a raw convolution).
#[derive(Debug, Clone)]
pub(crate) struct FConv {
    pub(crate) cin: usize,
    pub(crate) cout: usize,
    pub(crate) win: Window,
    w: Vec<f32>,
    b: Vec<f32>,
    /// `w` packed for the bf16 kernel, on first use under [`Precision::Bf16`].
    wb: OnceLock<PackedB>,
}

impl FConv {
    /// From PyTorch's `[cout, cin, k, k]` weights, output channel `o` scaled by `scale[o]` (a
    /// folded BatchNorm; f64 because the folded weights serve thousands of images), plus `b`.
    pub(crate) fn new(
        weight: &[f32],
        shape: &[usize],
        win: Window,
        scale: &[f64],
        b: Vec<f32>,
    ) -> FConv {
        let (cout, cin, k) = (shape[0], shape[1], shape[2]);
        let mut fw = vec![0f32; k * k * cin * cout];
        for o in 0..cout {
            for i in 0..cin {
                for ky in 0..k {
                    for kx in 0..k {
                        let src = ((o * cin + i) * k + ky) * k + kx;
                        let row = (ky * k + kx) * cin + i;
                        fw[row * cout + o] = (weight[src] as f64 * scale[o]) as f32;
                    }
                }
            }
        }
        FConv {
            cin,
            cout,
            win,
            w: fw,
            b,
            wb: OnceLock::new(),
        }
    }

    /// For a stride-1 convolution with the same padding on every side, the convolution that maps
    /// output gradients to input gradients: the kernel flipped in both axes, input and output
    /// channels swapped, padding `k − 1 − pad`. `None` otherwise (that needs
    /// [`FConv::col2im_add`]).
    pub(crate) fn transposed(&self) -> Option<FConv> {
        let k = self.win.k;
        let pad = self.win.symmetric()?;
        if self.win.stride != 1 || pad + 1 > k {
            return None;
        }
        let (cin, cout) = (self.cin, self.cout);
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
        let p = k - 1 - pad;
        Some(FConv {
            cin: cout,
            cout: cin,
            win: Window {
                k,
                stride: 1,
                pads: [p; 4],
            },
            w,
            b: vec![0.0; cin],
            wb: OnceLock::new(),
        })
    }

    /// `w` transposed to `[cout, k·k·cin]`: output-pixel gradients times this are the gradients
    /// of the im2col rows, which [`FConv::col2im_add`] scatters back.
    pub(crate) fn weight_t(&self) -> Vec<f32> {
        let rows = self.win.k * self.win.k * self.cin;
        let mut t = vec![0f32; rows * self.cout];
        for r in 0..rows {
            for o in 0..self.cout {
                t[o * rows + r] = self.w[r * self.cout + o];
            }
        }
        t
    }

    /// `dst ← act([dst +] x ⊛ w + b)`. `x` is `g`'s images with `cin` channels; `dst` is the
    /// output images, `cout` channels, inside a border of `border` (`win.out_geo(g, border)`).
    /// With `accumulate` it must already hold exactly that (the residual branch).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn run(
        &self,
        x: &[f32],
        g: Geo,
        dst: &mut [f32],
        border: usize,
        s: &mut ConvScratch,
        accumulate: bool,
        act: Option<Act>,
        threads: usize,
    ) -> Geo {
        let out = self.win.out_geo(g, border);
        let (ho, wo) = (out.h, out.w);
        let (k, cout) = (self.win.k, self.cout);
        assert_eq!(dst.len(), out.rows() * cout, "conv: output buffer size");
        let sym = self.win.symmetric();
        let shifted =
            k == 3 && self.win.stride == 1 && sym == Some(1) && g.pad == 1 && out.pad == 1;
        let pointwise = k == 1 && self.win.stride == 1 && sym == Some(0) && g.pad == out.pad;
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
            let par = threads_for(threads, rows * k * k * self.cin * cout);
            if pointwise && bf16() {
                let lhs = View::rows(x, rows, self.cin, self.cin);
                gemm_bf16(dst, cout, lhs, self.packed(), (1.0, 1.0), par);
            } else if pointwise {
                gemm_acc(dst, x, &self.w, (rows, self.cin, cout), par);
            } else {
                // Output row r + wp + 1 reads input rows r + ky·wp + (0..3): for each ky the lhs
                // rows are overlapping 3·cin windows of the padded input. The rows that land on
                // the border are garbage and zeroed below.
                let wp = g.w + 2;
                let m = rows - 2 * wp - 2;
                let kc = 3 * self.cin;
                let d = &mut dst[(wp + 1) * cout..(wp + 1 + m) * cout];
                if bf16() && self.cin.is_multiple_of(2) {
                    // The three kernel rows as three windows of one product (see `conv_bf16`).
                    let offs = [0, wp * self.cin, 2 * wp * self.cin];
                    let b = self.packed();
                    conv_bf16(d, cout, x, (m, self.cin), &offs, kc, b, (1.0, 1.0), par);
                } else {
                    // One GEMM per kernel row.
                    for ky in 0..3 {
                        let lhs = &x[ky * wp * self.cin..];
                        let rhs = &self.w[ky * kc * cout..(ky + 1) * kc * cout];
                        gemm_acc_lhs_stride(d, lhs, self.cin, rhs, (m, kc, cout), par);
                    }
                }
            }
        } else {
            self.im2col(x, g, (ho, wo), &mut s.col);
            let m = g.n * ho * wo;
            s.tmp.resize(m * cout, 0.0);
            fill_rows(&mut s.tmp, &self.b);
            let kk = k * k * self.cin;
            let par = threads_for(threads, m * kk * cout);
            if bf16() {
                let lhs = View::rows(&s.col, m, kk, kk);
                gemm_bf16(&mut s.tmp, cout, lhs, self.packed(), (1.0, 1.0), par);
            } else {
                gemm_acc(&mut s.tmp, &s.col, &self.w, (m, kk, cout), par);
            }
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
        finish(dst, out, cout, act);
        out
    }

    fn packed(&self) -> &PackedB {
        let rows = self.win.k * self.win.k * self.cin;
        self.wb
            .get_or_init(|| PackedB::new(View::rows(&self.w, rows, self.cout, self.cout)))
    }

    /// One row per output pixel: the k×k×cin patch it sees. The input's zero border (at least
    /// this convolution's padding) makes every patch row one contiguous k·cin copy.
    fn im2col(&self, x: &[f32], g: Geo, (ho, wo): (usize, usize), col: &mut Vec<f32>) {
        let (k, c, st) = (self.win.k, self.cin, self.win.stride);
        let (oy0, ox0) = self.win.offsets(g.pad);
        let row_len = k * k * c;
        col.clear();
        col.resize(g.n * ho * wo * row_len, 0.0);
        for (r, row) in col.chunks_exact_mut(row_len).enumerate() {
            let img = r / (ho * wo);
            let (oy, ox) = ((r / wo) % ho, r % wo);
            for ky in 0..k {
                let src = g.row(img, oy * st + ky + oy0, ox * st + ox0) * c;
                row[ky * k * c..(ky + 1) * k * c].copy_from_slice(&x[src..src + k * c]);
            }
        }
    }

    /// Input gradient of this convolution: `dx += col2im(dy · wᵀ)`, where `dy` is the output
    /// gradient in geometry `out` (border zero), `w_t` is [`FConv::weight_t`], `g` the input
    /// geometry and `dx` its padded buffer. The border of `dx` receives the padding's gradient,
    /// which means nothing: it is zeroed on return.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn col2im_add(
        &self,
        dy: &[f32],
        out: Geo,
        w_t: &[f32],
        g: Geo,
        dx: &mut [f32],
        s: &mut ConvScratch,
    ) {
        let (ho, wo, cout) = (out.h, out.w, self.cout);
        let (k, c, st) = (self.win.k, self.cin, self.win.stride);
        let (oy0, ox0) = self.win.offsets(g.pad);
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
                let dst = g.row(img, oy * st + ky + oy0, ox * st + ox0) * c;
                dx[dst..dst + k * c]
                    .iter_mut()
                    .zip(&row[ky * k * c..(ky + 1) * k * c])
                    .for_each(|(d, v)| *d += v);
            }
        }
        finish(dx, g, c, None);
    }
}

/// A depthwise convolution (one k×k filter per channel, `groups = channels`): `w` is `[k·k, c]`
/// (rows ordered ky, kx), `b` a per-channel bias. Vectorised over channels, which NHWC keeps
/// contiguous: a GEMM would have an inner dimension of k² and waste most of its work.
#[derive(Debug, Clone)]
pub(crate) struct DwConv {
    pub(crate) c: usize,
    pub(crate) win: Window,
    w: Vec<f32>,
    b: Vec<f32>,
}

impl DwConv {
    /// From PyTorch's `[c, 1, k, k]` weights, channel `o` scaled by `scale[o]`, plus `b`.
    pub(crate) fn new(
        weight: &[f32],
        shape: &[usize],
        win: Window,
        scale: &[f64],
        b: Vec<f32>,
    ) -> Self {
        let (c, k) = (shape[0], shape[2]);
        let mut w = vec![0f32; k * k * c];
        for o in 0..c {
            for t in 0..k * k {
                w[t * c + o] = (weight[o * k * k + t] as f64 * scale[o]) as f32;
            }
        }
        DwConv { c, win, w, b }
    }

    /// `dst ← act([dst +] x ⊛ w + b)`, as [`FConv::run`]. Output rows are split over `threads`
    /// when the work is large enough: a batch-1 inference has nothing else to run in parallel.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn run(
        &self,
        x: &[f32],
        g: Geo,
        dst: &mut [f32],
        border: usize,
        accumulate: bool,
        act: Option<Act>,
        threads: usize,
    ) -> Geo {
        let out = self.win.out_geo(g, border);
        let c = self.c;
        assert_eq!(
            dst.len(),
            out.rows() * c,
            "depthwise conv: output buffer size"
        );
        let row_len = (out.w + 2 * out.pad) * c;
        let rows = out.h + 2 * out.pad;
        let work = out.n * out.h * out.w * c * self.win.k * self.win.k;
        let line = |(r, d): (usize, &mut [f32])| {
            self.line(x, g, out, r / rows, r % rows, d, accumulate, act)
        };
        if threads_for(threads, work) > 1 {
            use rayon::prelude::*;
            dst.par_chunks_mut(row_len).enumerate().for_each(line);
        } else {
            dst.chunks_mut(row_len).enumerate().for_each(line);
        }
        out
    }

    /// Padded output row `y` of image `img` (`d`, border included).
    #[allow(clippy::too_many_arguments)]
    fn line(
        &self,
        x: &[f32],
        g: Geo,
        out: Geo,
        img: usize,
        y: usize,
        d: &mut [f32],
        accumulate: bool,
        act: Option<Act>,
    ) {
        let (k, st, c, pad) = (self.win.k, self.win.stride, self.c, out.pad);
        if y < pad || y >= pad + out.h {
            d.fill(0.0);
            return;
        }
        let oy = y - pad;
        let (oy0, ox0) = self.win.offsets(g.pad);
        d[..pad * c].fill(0.0);
        d[(pad + out.w) * c..].fill(0.0);
        for ox in 0..out.w {
            let o = &mut d[(pad + ox) * c..(pad + ox + 1) * c];
            if accumulate {
                o.iter_mut().zip(&self.b).for_each(|(o, b)| *o += b);
            } else {
                o.copy_from_slice(&self.b);
            }
            for ky in 0..k {
                let src = g.row(img, oy * st + ky + oy0, ox * st + ox0) * c;
                let xs = &x[src..src + k * c];
                let ws = &self.w[ky * k * c..(ky + 1) * k * c];
                for (xv, wv) in xs.chunks_exact(c).zip(ws.chunks_exact(c)) {
                    o.iter_mut()
                        .zip(xv.iter().zip(wv))
                        .for_each(|(o, (x, w))| *o += x * w);
                }
            }
            match act {
                None => {}
                Some(Act::Relu) => o.iter_mut().for_each(|v| *v = v.max(0.0)),
                Some(Act::Relu6) => o.iter_mut().for_each(|v| *v = v.clamp(0.0, 6.0)),
                Some(a) => o.iter_mut().for_each(|v| *v = a.apply(*v)),
            }
        }
    }

    /// `dx += ∂L/∂x` given the output gradient `dy` (geometry `out`); `dx` in geometry `g`.
    pub(crate) fn input_grad_add(&self, dy: &[f32], out: Geo, g: Geo, dx: &mut [f32]) {
        let (k, st, c) = (self.win.k, self.win.stride, self.c);
        let (oy0, ox0) = self.win.offsets(g.pad);
        for img in 0..g.n {
            for oy in 0..out.h {
                for ox in 0..out.w {
                    let at = out.at(img, oy, ox) * c;
                    let gy = &dy[at..at + c];
                    for ky in 0..k {
                        let dst = g.row(img, oy * st + ky + oy0, ox * st + ox0) * c;
                        let ws = &self.w[ky * k * c..(ky + 1) * k * c];
                        for (dv, wv) in dx[dst..dst + k * c]
                            .chunks_exact_mut(c)
                            .zip(ws.chunks_exact(c))
                        {
                            dv.iter_mut()
                                .zip(gy.iter().zip(wv))
                                .for_each(|(d, (g, w))| *d += g * w);
                        }
                    }
                }
            }
        }
        finish(dx, g, c, None);
    }
}

/// A convolution as the NHWC paths run it.
#[derive(Debug, Clone)]
pub(crate) enum Kernel {
    Dense(FConv),
    Depthwise(DwConv),
}

impl Kernel {
    pub(crate) fn cin(&self) -> usize {
        match self {
            Kernel::Dense(f) => f.cin,
            Kernel::Depthwise(d) => d.c,
        }
    }

    pub(crate) fn cout(&self) -> usize {
        match self {
            Kernel::Dense(f) => f.cout,
            Kernel::Depthwise(d) => d.c,
        }
    }

    pub(crate) fn win(&self) -> Window {
        match self {
            Kernel::Dense(f) => f.win,
            Kernel::Depthwise(d) => d.win,
        }
    }

    /// See [`FConv::run`].
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn run(
        &self,
        x: &[f32],
        g: Geo,
        dst: &mut [f32],
        border: usize,
        s: &mut ConvScratch,
        accumulate: bool,
        act: Option<Act>,
        threads: usize,
    ) -> Geo {
        match self {
            Kernel::Dense(f) => f.run(x, g, dst, border, s, accumulate, act, threads),
            Kernel::Depthwise(d) => d.run(x, g, dst, border, accumulate, act, threads),
        }
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

/// Whether the products run in bf16 ([`crate::set_precision`]).
fn bf16() -> bool {
    crate::bf16::precision() == Precision::Bf16
}

pub(crate) fn threads_for(threads: usize, macs: usize) -> usize {
    if threads > 1 && macs >= PAR_GEMM_MACS {
        threads
    } else {
        1
    }
}

/// The activation (if any), then the border back to zero.
pub(crate) fn finish(dst: &mut [f32], g: Geo, c: usize, act: Option<Act>) {
    match act {
        None => {}
        Some(Act::Relu) => lanes::relu(dst),
        Some(a) => lanes::map(dst, |v| a.apply(v)),
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

/// `dst ← src` (or `dst += src`), two buffers of the same images inside different borders.
pub(crate) fn reborder(src: &[f32], gs: Geo, dst: &mut [f32], gd: Geo, c: usize, add: bool) {
    debug_assert_eq!((gs.n, gs.h, gs.w), (gd.n, gd.h, gd.w));
    if gs == gd {
        if add {
            lanes::add(dst, src);
        } else {
            dst.copy_from_slice(src);
        }
        return;
    }
    if !add {
        dst.fill(0.0);
    }
    for img in 0..gs.n {
        for y in 0..gs.h {
            let s = &src[gs.at(img, y, 0) * c..gs.at(img, y, gs.w) * c];
            let d = &mut dst[gd.at(img, y, 0) * c..gd.at(img, y, gd.w) * c];
            if add {
                lanes::add(d, s);
            } else {
                d.copy_from_slice(s);
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

/// Max pooling (`k×k`, stride, symmetric padding that never wins a maximum, as PyTorch's):
/// each window is clipped to the interior. `out` is the output geometry.
pub(crate) fn max_pool(x: &[f32], g: Geo, c: usize, win: Window, out: Geo, dst: &mut [f32]) {
    assert_eq!(dst.len(), out.rows() * c, "max pool: output buffer size");
    dst.fill(0.0);
    for img in 0..g.n {
        for oy in 0..out.h {
            let (y0, y1) = window_range(oy, win, g.h);
            for ox in 0..out.w {
                let (x0, x1) = window_range(ox, win, g.w);
                let at = out.at(img, oy, ox) * c;
                let o = &mut dst[at..at + c];
                o.fill(f32::NEG_INFINITY);
                for y in y0..y1 {
                    let src = g.at(img, y, x0) * c;
                    for v in x[src..src + (x1 - x0) * c].chunks_exact(c) {
                        o.iter_mut().zip(v).for_each(|(o, v)| *o = o.max(*v));
                    }
                }
            }
        }
    }
}

/// The backward of [`max_pool`]: each output's gradient goes to the first maximum of its window
/// (PyTorch's choice among ties), accumulated into `gx` (input geometry `g`).
pub(crate) fn max_pool_backward(
    x: &[f32],
    g: Geo,
    c: usize,
    win: Window,
    out: Geo,
    gy: &[f32],
    gx: &mut [f32],
) {
    for img in 0..g.n {
        for oy in 0..out.h {
            let (y0, y1) = window_range(oy, win, g.h);
            for ox in 0..out.w {
                let (x0, x1) = window_range(ox, win, g.w);
                let go = &gy[out.at(img, oy, ox) * c..][..c];
                for ch in 0..c {
                    let mut best = g.at(img, y0, x0);
                    for y in y0..y1 {
                        for xx in x0..x1 {
                            let r = g.at(img, y, xx);
                            if x[r * c + ch] > x[best * c + ch] {
                                best = r;
                            }
                        }
                    }
                    gx[best * c + ch] += go[ch];
                }
            }
        }
    }
}

/// The interior positions `[start, end)` a pooling window at output position `o` covers.
fn window_range(o: usize, win: Window, len: usize) -> (usize, usize) {
    let start = (o * win.stride).saturating_sub(win.pads[0]);
    let end = (o * win.stride + win.k)
        .saturating_sub(win.pads[0])
        .min(len);
    (start, end)
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
