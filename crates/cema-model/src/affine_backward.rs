//! The adaptation backward pass, by hand: gradients of a loss with respect to every
//! BatchNorm's γ and β, with the convolutions frozen, in batch-statistics, TBR or running mode.
//!
//! Why by hand: this is the work the cloud does thousands of times per session (SPEC §3 cloud
//! steps 1–2) and Tent/EATA do on every batch. burn's autodiff runs it in NCHW with an im2col
//! and a transposed convolution per layer and a tensor per element-wise op; measured, the cloud
//! round was 0.61× PyTorch. Only norm affine parameters are trained, so the backward pass needs
//! no weight gradient at all: per layer it is the BatchNorm backward (two per-channel sums and
//! one element-wise pass) and the input gradient of a frozen convolution, which for a stride-1
//! convolution is another convolution (flipped, transposed kernel) on the same padded NHWC
//! machinery as the inference path ([`crate::nhwc`]), and for a strided one a GEMM plus col2im.
//!
//! The BatchNorm backward, per channel over the `M = N·H·W` positions of the batch, with
//! `ẑ = (z − μ_B)/σ_B` the batch-normalised conv output and `g` the gradient at the norm's output:
//! - forward value `y = γ·(z − μ_f)/σ_f + β`, where `(μ_f, σ_f)` are the batch's statistics
//!   (`Batch`) or the running ones (`Tbr`, `Running`);
//! - `∂L/∂β = Σ g`, `∂L/∂γ = Σ g·(z − μ_f)/σ_f`;
//! - `∂L/∂z = (γ/σ_f)·(g − mean(g) − ẑ·mean(g·ẑ))` for `Batch` and `Tbr` (TBR's `r = sg(σ_B)/σ_run`
//!   turns batch norm's `γ/σ_B` into `γ/σ_run`), and `(γ/σ_f)·g` for `Running`.
//!
//! Tests hold every gradient, loss, logit and running-statistics update to burn's autodiff of
//! the generic forward ([`crate::ResNet::backward`]).

use rayon::prelude::*;

use crate::checkpoint::Model;
use crate::error::Result;
use crate::gemm::gemm_acc;
use crate::input::{check_pixels, pixel_affine, to_input};
use crate::nhwc::{
    finish, images_per_task, load_pixels, max_pool_3x3_s2, sum_interior, ConvScratch, FConv, Geo,
};
use crate::norm::{NormKind, NormMode, BN_EPS};
use crate::resnet::{Conv, ResNet};
use crate::store::{tensor_to_vec, Trainable};

/// The result of [`Model::norm_affine_backward`], on the host.
#[derive(Debug, Clone)]
pub struct HostBackward {
    pub loss: f32,
    /// The forward's logits, `n × classes` row-major (what the loss saw).
    pub logits: Vec<f32>,
    /// `(store index, gradient)` for every norm weight and bias.
    pub grads: Vec<(usize, Vec<f32>)>,
}

/// A frozen convolution and the BatchNorm after it.
struct Layer {
    conv: FConv,
    back: Back,
    norm: usize,
}

/// How a layer's input gradient is computed.
enum Back {
    /// Stride 1: a convolution of the output gradient.
    Conv(FConv),
    /// Strided: output gradient × `wᵀ` (this matrix), scattered back by col2im.
    Col2im(Vec<f32>),
    /// The stem: nothing upstream has parameters, so its input gradient is never needed.
    None,
}

impl Layer {
    fn new(net: &ResNet, (conv, norm): &(Conv, usize), need_input_grad: bool) -> Layer {
        let conv = FConv::raw(&net.store, conv);
        let back = if !need_input_grad {
            Back::None
        } else if let Some(t) = conv.transposed() {
            Back::Conv(t)
        } else {
            Back::Col2im(conv.weight_t())
        };
        Layer {
            conv,
            back,
            norm: *norm,
        }
    }
}

struct TBlock {
    layers: Vec<Layer>,
    downsample: Option<Layer>,
}

/// What the forward keeps of one layer for the backward.
struct Saved {
    /// The convolution's output (padded, border zero).
    z: Vec<f32>,
    out: Geo,
    input: Geo,
    stats: Stats,
}

/// A host loss: logits → (value, ∂value/∂logits).
type LossFn = fn(&[f32]) -> (f32, Vec<f32>);

/// A block's main-path layers, its shortcut's, and the ReLU outputs between its layers.
type SavedBlock = (Vec<Saved>, Option<Saved>, Vec<Vec<f32>>);

/// One BatchNorm's per-channel numbers for this batch.
struct Stats {
    mu_b: Vec<f32>,
    sigma_b: Vec<f32>,
    /// The statistics the forward value was normalised with.
    mu_f: Vec<f32>,
    sigma_f: Vec<f32>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    /// Positions per channel, `N·H·W`.
    count: usize,
}

/// Mode-dependent behaviour of the norm layers in one pass.
#[derive(Clone, Copy)]
struct Pass {
    mode: NormMode,
    /// Running-statistics momentum, when they move.
    momentum: Option<f32>,
}

impl ResNet {
    /// True when every norm layer is a BatchNorm with running statistics, which is what the
    /// hand-written pass implements.
    pub(crate) fn native_backward_supported(&self) -> bool {
        self.norms.iter().all(|l| {
            l.kind == NormKind::BatchNorm2d && l.running_mean.is_some() && l.running_var.is_some()
        })
    }

    /// The layers, with what their input gradients need when `backward`.
    fn layers(&self, backward: bool) -> (Layer, Vec<TBlock>) {
        let stem = Layer::new(self, &self.stem, false);
        let blocks = self
            .blocks
            .iter()
            .map(|b| TBlock {
                layers: b
                    .layers
                    .iter()
                    .map(|l| Layer::new(self, l, backward))
                    .collect(),
                downsample: b.downsample.as_ref().map(|d| Layer::new(self, d, backward)),
            })
            .collect();
        (stem, blocks)
    }

    /// The hand-written forward and backward (see the module doc); `pixels` are validated.
    /// With `loss_fn` `None`, a forward only (logits, and the running statistics moved when
    /// `momentum` is given): BN-adapt's predictions and an edge tracking its statistics.
    fn native_pass<F>(
        &mut self,
        spec: &crate::InputSpec,
        pixels: &[u8],
        n: usize,
        mode: NormMode,
        momentum: Option<f32>,
        loss_fn: Option<F>,
    ) -> HostBackward
    where
        F: FnOnce(&[f32]) -> (f32, Vec<f32>),
    {
        let pass = Pass {
            mode,
            momentum: momentum.filter(|_| mode != NormMode::Running),
        };
        let (stem, blocks) = self.layers(loss_fn.is_some());
        let group = images_per_task(spec.height, spec.width, n);

        // ---- forward ----
        let mut g = Geo {
            n,
            h: spec.height,
            w: spec.width,
            pad: stem.conv.pad,
        };
        let mut input = pool::take(0);
        let (scale, shift) = pixel_affine(spec);
        load_pixels(pixels, (&scale, &shift), g, &mut input);
        let mut stat_updates = Vec::new();
        let stem_saved = self.layer_forward(&stem, &input, g, pass, group, &mut stat_updates);
        pool::give(input);
        let mut stem_out = pool::take_dirty(stem_saved.z.len());
        bn_apply(&stem_saved, &mut stem_out, None, true, group);
        g = stem_saved.out;
        let pooled_geo = if self.max_pool {
            let mut p = pool::take(0);
            let pg = max_pool_3x3_s2(&stem_out, g, stem.conv.cout, &mut p);
            Some((g, pg, p))
        } else {
            None
        };
        if let Some((_, pg, _)) = &pooled_geo {
            g = *pg;
        }
        // Per block: the saved layers (main path), the shortcut's, the inner ReLU outputs, and
        // the block's output (the next block's input, and its ReLU mask in the backward).
        let mut saved_blocks: Vec<SavedBlock> = Vec::new();
        let mut outs: Vec<Vec<f32>> = Vec::with_capacity(blocks.len());
        for block in &blocks {
            let x: &[f32] = match (outs.last(), &pooled_geo) {
                (Some(o), _) => o,
                (None, Some((_, _, p))) => p,
                (None, None) => &stem_out,
            };
            let ds = block.downsample.as_ref().map(|d| {
                let s = self.layer_forward(d, x, g, pass, group, &mut stat_updates);
                let mut o = pool::take_dirty(s.z.len());
                bn_apply(&s, &mut o, None, false, group);
                (s, o)
            });
            let last = block.layers.len() - 1;
            let mut saved = Vec::with_capacity(block.layers.len());
            let mut acts: Vec<Vec<f32>> = Vec::with_capacity(last);
            let mut out = Vec::new();
            let mut bg = g;
            for (li, layer) in block.layers.iter().enumerate() {
                let src: &[f32] = if li == 0 { x } else { &acts[li - 1] };
                let s = self.layer_forward(layer, src, bg, pass, group, &mut stat_updates);
                bg = s.out;
                let mut a = pool::take_dirty(s.z.len());
                if li == last {
                    let residual = ds.as_ref().map_or(x, |(_, o)| o);
                    bn_apply(&s, &mut a, Some(residual), true, group);
                    out = a;
                } else {
                    bn_apply(&s, &mut a, None, true, group);
                    acts.push(a);
                }
                saved.push(s);
            }
            g = bg;
            let ds = ds.map(|(s, o)| {
                pool::give(o);
                s
            });
            outs.push(out);
            saved_blocks.push((saved, ds, acts));
        }
        let c = blocks
            .last()
            .map_or(stem.conv.cout, |b| b.layers[b.layers.len() - 1].conv.cout);
        let x: &[f32] = match (outs.last(), &pooled_geo) {
            (Some(o), _) => o,
            (None, Some((_, _, p))) => p,
            (None, None) => &stem_out,
        };
        let classes = self.store.shape(self.fc_weight)[0];
        let fc_w = self.store.values(self.fc_weight);
        let fc_b = self.store.values(self.fc_bias);
        let hw = (g.h * g.w) as f32;
        let mut pooled = vec![0f32; n * c];
        for (img, p) in pooled.chunks_exact_mut(c).enumerate() {
            sum_interior(x, g, c, img, p);
            p.iter_mut().for_each(|v| *v /= hw);
        }
        let mut logits = Vec::with_capacity(n * classes);
        for p in pooled.chunks_exact(c) {
            for j in 0..classes {
                let w = &fc_w[j * c..(j + 1) * c];
                logits.push(fc_b[j] + p.iter().zip(w).map(|(a, b)| a * b).sum::<f32>());
            }
        }
        for (i, v) in stat_updates {
            self.store.set_values(i, v);
        }

        let Some(loss_fn) = loss_fn else {
            for (saved, ds, acts) in saved_blocks {
                saved.into_iter().chain(ds).for_each(|s| pool::give(s.z));
                acts.into_iter().for_each(pool::give);
            }
            outs.into_iter().for_each(pool::give);
            if let Some((_, _, p)) = pooled_geo {
                pool::give(p);
            }
            pool::give(stem_out);
            pool::give(stem_saved.z);
            return HostBackward {
                loss: 0.0,
                logits,
                grads: Vec::new(),
            };
        };

        // ---- loss ----
        let (loss, g_logits) = loss_fn(&logits);
        assert_eq!(
            g_logits.len(),
            n * classes,
            "loss gradient must be n × classes"
        );

        // ---- backward ----
        let mut grads = Vec::new();
        let mut g_pooled = vec![0f32; n * c];
        gemm_acc(&mut g_pooled, &g_logits, &fc_w, (n, classes, c), 1);
        let mut ga = pool::take(g.rows() * c);
        for (img, gp) in g_pooled.chunks_exact(c).enumerate() {
            for y in 0..g.h {
                for xx in 0..g.w {
                    let at = g.at(img, y, xx) * c;
                    ga[at..at + c]
                        .iter_mut()
                        .zip(gp)
                        .for_each(|(d, v)| *d = v / hw);
                }
            }
        }
        for block in blocks.iter().rev() {
            let (saved, ds, acts) = saved_blocks.pop().expect("one entry per block");
            let out = outs.pop().expect("one output per block");
            relu_mask(&mut ga, &out, group);
            pool::give(out);
            let last = block.layers.len() - 1;
            // ∂L/∂(block input) starts as the shortcut's gradient: `ga` itself for an identity
            // shortcut (it is free once the last layer's norm has read it), else the downsample
            // convolution's input gradient.
            let mut gz = self.bn_backward(
                &block.layers[last],
                &saved[last],
                &ga,
                None,
                pass,
                group,
                &mut grads,
            );
            let in_geo = saved[0].input;
            let mut g_in = match (&ds, &block.downsample) {
                (Some(s), Some(layer)) => {
                    let gz_ds = self.bn_backward(layer, s, &ga, None, pass, group, &mut grads);
                    pool::give(ga);
                    let mut gi = pool::take(in_geo.rows() * layer.conv.cin);
                    input_grad(layer, &gz_ds, s, &mut gi, group);
                    pool::give(gz_ds);
                    gi
                }
                _ => ga,
            };
            for li in (0..=last).rev() {
                let layer = &block.layers[li];
                let s = &saved[li];
                if li == 0 {
                    input_grad(layer, &gz, s, &mut g_in, group);
                } else {
                    let mut gx = pool::take(s.input.rows() * layer.conv.cin);
                    input_grad(layer, &gz, s, &mut gx, group);
                    pool::give(gz);
                    let prev = &block.layers[li - 1];
                    // The ReLU between the two layers is applied inside the norm's backward.
                    gz = self.bn_backward(
                        prev,
                        &saved[li - 1],
                        &gx,
                        Some(&acts[li - 1]),
                        pass,
                        group,
                        &mut grads,
                    );
                    pool::give(gx);
                }
            }
            pool::give(gz);
            for s in saved.into_iter().chain(ds) {
                pool::give(s.z);
            }
            acts.into_iter().for_each(pool::give);
            ga = g_in;
        }
        // The stem: through the pool and the ReLU to its BatchNorm.
        if let Some((sg, pg, p)) = pooled_geo {
            pool::give(p);
            let gp = max_pool_backward(&stem_out, sg, pg, stem.conv.cout, &ga);
            pool::give(std::mem::replace(&mut ga, gp));
        }
        let unused = self.bn_backward(
            &stem,
            &stem_saved,
            &ga,
            Some(&stem_out),
            pass,
            group,
            &mut grads,
        );
        pool::give(unused);
        pool::give(ga);
        pool::give(stem_out);
        pool::give(stem_saved.z);
        grads.sort_by_key(|(i, _)| *i);
        HostBackward {
            loss,
            logits,
            grads,
        }
    }

    /// Convolution, batch statistics, and the statistics the forward normalises with; queues
    /// the running-statistics update when the pass moves them.
    fn layer_forward(
        &self,
        layer: &Layer,
        x: &[f32],
        g: Geo,
        pass: Pass,
        group: usize,
        updates: &mut Vec<(usize, Vec<f32>)>,
    ) -> Saved {
        let mut z = pool::take_dirty(layer.conv.out_geo(g).rows() * layer.conv.cout);
        let out = conv_batch(&layer.conv, x, g, &mut z, group);
        let c = layer.conv.cout;
        let norm = &self.norms[layer.norm];
        let (rm_i, rv_i) = (
            norm.running_mean.expect("batch norm"),
            norm.running_var.expect("batch norm"),
        );
        let (rm, rv) = (self.store.values(rm_i), self.store.values(rv_i));
        let (mu_b, var_b) = channel_stats(&z, out, c, group);
        let count = out.n * out.h * out.w;
        let sigma = |v: &[f32]| -> Vec<f32> {
            v.iter()
                .map(|v| (*v as f64 + BN_EPS).sqrt() as f32)
                .collect()
        };
        let sigma_b = sigma(&var_b);
        let (mu_f, sigma_f) = match pass.mode {
            NormMode::Batch => (mu_b.clone(), sigma_b.clone()),
            NormMode::Tbr | NormMode::Running => (rm.clone(), sigma(&rv)),
        };
        if let Some(m) = pass.momentum {
            let unbias = if count > 1 {
                count as f32 / (count as f32 - 1.0)
            } else {
                1.0
            };
            let new_rm = rm
                .iter()
                .zip(&mu_b)
                .map(|(r, b)| r * (1.0 - m) + b * m)
                .collect();
            let new_rv = rv
                .iter()
                .zip(&var_b)
                .map(|(r, b)| r * (1.0 - m) + b * (m * unbias))
                .collect();
            updates.push((rm_i, new_rm));
            updates.push((rv_i, new_rv));
        }
        Saved {
            z,
            out,
            input: g,
            stats: Stats {
                mu_b,
                sigma_b,
                mu_f,
                sigma_f,
                gamma: self.store.values(norm.weight),
                beta: self.store.values(norm.bias),
                count,
            },
        }
    }

    /// The BatchNorm backward for the gradient `gy` at its output — or, with `relu_out`, at the
    /// output of the ReLU after it (`gy` is then masked by `relu_out > 0` on the fly): pushes
    /// `∂L/∂γ`, `∂L/∂β` and returns `∂L/∂z` (padded, border zero).
    #[allow(clippy::too_many_arguments)]
    fn bn_backward(
        &self,
        layer: &Layer,
        s: &Saved,
        gy: &[f32],
        relu_out: Option<&[f32]>,
        pass: Pass,
        group: usize,
        grads: &mut Vec<(usize, Vec<f32>)>,
    ) -> Vec<f32> {
        let st = &s.stats;
        let c = st.gamma.len();
        let g = s.out;
        let inv_sb: Vec<f32> = st.sigma_b.iter().map(|v| 1.0 / v).collect();
        // Σ g and Σ g·ẑ per channel, over the interior.
        let sums = per_channel_sums(g, c, group, |img, acc| {
            let (s1, s2) = acc.split_at_mut(c);
            for y in 0..g.h {
                let (a, b) = (g.at(img, y, 0) * c, g.at(img, y, g.w) * c);
                let rows = gy[a..b].chunks_exact(c).zip(s.z[a..b].chunks_exact(c));
                let mut add = |gr: &[f32], zr: &[f32], keep: &dyn Fn(usize) -> bool| {
                    for ch in 0..c {
                        let gv = if keep(ch) { gr[ch] } else { 0.0 };
                        let zh = (zr[ch] - st.mu_b[ch]) * inv_sb[ch];
                        s1[ch] += gv;
                        s2[ch] += gv * zh;
                    }
                };
                match relu_out {
                    None => rows.for_each(|(gr, zr)| add(gr, zr, &|_| true)),
                    Some(r) => rows
                        .zip(r[a..b].chunks_exact(c))
                        .for_each(|((gr, zr), ar)| add(gr, zr, &|ch| ar[ch] > 0.0)),
                }
            }
        });
        let (s1, s2) = sums.split_at(c);
        let norm = &self.norms[layer.norm];
        let dgamma = (0..c)
            .map(|ch| {
                ((st.sigma_b[ch] as f64 * s2[ch] + (st.mu_b[ch] - st.mu_f[ch]) as f64 * s1[ch])
                    / st.sigma_f[ch] as f64) as f32
            })
            .collect();
        grads.push((norm.weight, dgamma));
        grads.push((norm.bias, s1.iter().map(|v| *v as f32).collect()));
        if matches!(layer.back, Back::None) && pass.mode != NormMode::Running {
            // The stem's ∂L/∂z is never used.
            return pool::take(0);
        }
        // ∂L/∂z = A·g + B·z + C per channel.
        let m = st.count as f64;
        let mut coef = vec![0f32; 3 * c];
        for ch in 0..c {
            let a = st.gamma[ch] as f64 / st.sigma_f[ch] as f64;
            let (b, cc) = if pass.mode == NormMode::Running {
                (0.0, 0.0)
            } else {
                let ib = 1.0 / st.sigma_b[ch] as f64;
                let b = -a * s2[ch] / m * ib;
                (b, -a * s1[ch] / m - b * st.mu_b[ch] as f64)
            };
            coef[ch] = a as f32;
            coef[c + ch] = b as f32;
            coef[2 * c + ch] = cc as f32;
        }
        let mut gz = pool::take_dirty(gy.len());
        let per = g.rows() / g.n * c;
        let empty: &[f32] = &[];
        gz.par_chunks_mut(group * per)
            .zip(gy.par_chunks(group * per))
            .zip(s.z.par_chunks(group * per))
            .enumerate()
            .for_each(|(k, ((d, gr), zr))| {
                let ar = relu_out.map_or(empty, |r| &r[k * group * per..][..d.len()]);
                let (ca, cb, cc) = (&coef[..c], &coef[c..2 * c], &coef[2 * c..]);
                for (p, ((d, gr), zr)) in d
                    .chunks_exact_mut(c)
                    .zip(gr.chunks_exact(c))
                    .zip(zr.chunks_exact(c))
                    .enumerate()
                {
                    if ar.is_empty() {
                        for ch in 0..c {
                            d[ch] = ca[ch] * gr[ch] + cb[ch] * zr[ch] + cc[ch];
                        }
                    } else {
                        // The ReLU mask: where the activation was cut, the incoming gradient is 0.
                        let ar = &ar[p * c..(p + 1) * c];
                        for ch in 0..c {
                            let gv = if ar[ch] > 0.0 { gr[ch] } else { 0.0 };
                            d[ch] = ca[ch] * gv + cb[ch] * zr[ch] + cc[ch];
                        }
                    }
                }
                let gg = Geo {
                    n: d.len() / per,
                    ..g
                };
                finish(d, gg, c, false);
            });
        gz
    }
}

/// `dst ← γ·(z − μ_f)/σ_f + β [+ residual]`, then ReLU if asked, border zero. `dst` must
/// already have `z`'s length.
fn bn_apply(s: &Saved, dst: &mut [f32], residual: Option<&[f32]>, relu: bool, group: usize) {
    let st = &s.stats;
    let c = st.gamma.len();
    let g = s.out;
    let a: Vec<f32> = (0..c).map(|ch| st.gamma[ch] / st.sigma_f[ch]).collect();
    assert_eq!(dst.len(), s.z.len(), "norm output buffer");
    let per = g.rows() / g.n * c;
    let empty: &[f32] = &[];
    dst.par_chunks_mut(group * per)
        .zip(s.z.par_chunks(group * per))
        .enumerate()
        .for_each(|(k, (d, zr))| {
            let res = residual.map_or(empty, |r| &r[k * group * per..][..d.len()]);
            for (p, (d, zr)) in d.chunks_exact_mut(c).zip(zr.chunks_exact(c)).enumerate() {
                for ch in 0..c {
                    d[ch] = (zr[ch] - st.mu_f[ch]) * a[ch] + st.beta[ch];
                }
                if !res.is_empty() {
                    d.iter_mut()
                        .zip(&res[p * c..(p + 1) * c])
                        .for_each(|(d, r)| *d += r);
                }
            }
            let gg = Geo {
                n: d.len() / per,
                ..g
            };
            finish(d, gg, c, relu);
        });
}

/// The convolution over the whole batch, image groups in parallel.
fn conv_batch(conv: &FConv, x: &[f32], g: Geo, dst: &mut Vec<f32>, group: usize) -> Geo {
    let out = conv.out_geo(g);
    dst.resize(out.rows() * conv.cout, 0.0);
    let (per_in, per_out) = (g.rows() / g.n * conv.cin, out.rows() / out.n * conv.cout);
    x.par_chunks(group * per_in)
        .zip(dst.par_chunks_mut(group * per_out))
        .for_each_init(ConvScratch::default, |s, (xc, dc)| {
            let gg = Geo {
                n: xc.len() / per_in,
                ..g
            };
            conv.run(xc, gg, dc, s, false, false, 1);
        });
    out
}

/// `dx += ∂L/∂x` of a layer's convolution, given `gz = ∂L/∂z`; `dx` in the input geometry.
fn input_grad(layer: &Layer, gz: &[f32], s: &Saved, dx: &mut [f32], group: usize) {
    let (g, out) = (s.input, s.out);
    let (per_in, per_out) = (
        g.rows() / g.n * layer.conv.cin,
        out.rows() / out.n * layer.conv.cout,
    );
    dx.par_chunks_mut(group * per_in)
        .zip(gz.par_chunks(group * per_out))
        .for_each_init(ConvScratch::default, |scr, (dc, gc)| {
            let gg = Geo {
                n: dc.len() / per_in,
                ..g
            };
            match &layer.back {
                Back::Conv(t) => {
                    let og = Geo { n: gg.n, ..out };
                    t.run(gc, og, dc, scr, true, false, 1);
                }
                Back::Col2im(w_t) => layer.conv.col2im_add(gc, w_t, gg, dc, scr),
                Back::None => unreachable!("the stem's input gradient is never computed"),
            }
        });
}

/// Per-channel sums of `f`'s two accumulators (`2·c` floats per image), f32 within an image,
/// f64 across images.
fn per_channel_sums<F>(g: Geo, c: usize, group: usize, f: F) -> Vec<f64>
where
    F: Fn(usize, &mut [f32]) + Sync,
{
    let starts: Vec<usize> = (0..g.n).step_by(group).collect();
    starts
        .par_iter()
        .map(|&first| {
            let mut total = vec![0f64; 2 * c];
            let mut acc = vec![0f32; 2 * c];
            for img in first..(first + group).min(g.n) {
                acc.fill(0.0);
                f(img, &mut acc);
                total
                    .iter_mut()
                    .zip(&acc)
                    .for_each(|(t, a)| *t += *a as f64);
            }
            total
        })
        .reduce(
            || vec![0f64; 2 * c],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                a
            },
        )
}

/// Batch mean and biased variance per channel over the interior, in one pass. The sums are
/// taken around one sample of the channel (the first pixel), a few standard deviations from the
/// mean at most, so `E[(z−k)²] − E[z−k]²` does not cancel catastrophically when |mean| ≫ std.
fn channel_stats(z: &[f32], g: Geo, c: usize, group: usize) -> (Vec<f32>, Vec<f32>) {
    let first = g.at(0, 0, 0) * c;
    let shift = &z[first..first + c];
    let sums = per_channel_sums(g, c, group, |img, acc| {
        let (s1, s2) = acc.split_at_mut(c);
        for y in 0..g.h {
            let line = &z[g.at(img, y, 0) * c..g.at(img, y, g.w) * c];
            for px in line.chunks_exact(c) {
                for ch in 0..c {
                    let d = px[ch] - shift[ch];
                    s1[ch] += d;
                    s2[ch] += d * d;
                }
            }
        }
    });
    let m = (g.n * g.h * g.w) as f64;
    let mut mean = Vec::with_capacity(c);
    let mut var = Vec::with_capacity(c);
    for ch in 0..c {
        let d = sums[ch] / m;
        mean.push((shift[ch] as f64 + d) as f32);
        var.push((sums[c + ch] / m - d * d).max(0.0) as f32);
    }
    (mean, var)
}

/// `g ← g · [a > 0]`: the ReLU's backward given its output `a`.
fn relu_mask(g: &mut [f32], a: &[f32], group: usize) {
    let chunk = (g.len() / 64).max(group * 1024);
    g.par_chunks_mut(chunk)
        .zip(a.par_chunks(chunk))
        .for_each(|(g, a)| {
            g.iter_mut().zip(a).for_each(|(g, a)| {
                if *a <= 0.0 {
                    *g = 0.0;
                }
            })
        });
}

/// The backward of [`max_pool_3x3_s2`]: each output's gradient goes to the first maximum of
/// its window (PyTorch's choice among ties).
fn max_pool_backward(x: &[f32], g: Geo, out: Geo, c: usize, gy: &[f32]) -> Vec<f32> {
    let mut gx = pool::take(g.rows() * c);
    for img in 0..g.n {
        for oy in 0..out.h {
            for ox in 0..out.w {
                let go = &gy[out.at(img, oy, ox) * c..][..c];
                for ch in 0..c {
                    let mut best = g.row(img, 2 * oy, 2 * ox);
                    for y in 2 * oy..2 * oy + 3 {
                        for xx in 2 * ox..2 * ox + 3 {
                            let r = g.row(img, y, xx);
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
    finish(&mut gx, g, c, false);
    gx
}

impl Model {
    /// Whether the hand-written pass serves `n` images of this model: enabled, on the CPU, every
    /// norm layer one it implements, and a non-empty batch.
    fn native_pass_applies(&self, n: usize) -> bool {
        self.native_backward_enabled() && self.net.native_backward_supported() && n > 0
    }

    /// Batch-statistics or TBR logits through the hand-written pass, the running statistics
    /// moving with `momentum` if given; `None` when that pass does not apply (disabled, another
    /// device, an unsupported norm layer, running mode, no images), so the caller takes burn's.
    pub(crate) fn native_forward(
        &mut self,
        pixels: &[u8],
        n: usize,
        mode: NormMode,
        momentum: Option<f32>,
    ) -> Option<Vec<f32>> {
        if !self.native_pass_applies(n) || mode == NormMode::Running {
            return None;
        }
        let spec = self.card.input.clone();
        let none: Option<LossFn> = None;
        Some(
            self.net
                .native_pass(&spec, pixels, n, mode, momentum, none)
                .logits,
        )
    }

    /// One forward in `mode` (running statistics move when `update_stats`, as in
    /// [`ResNet::forward`]), `loss_fn(logits) → (loss, ∂loss/∂logits)` on the host, and the
    /// gradients of every norm weight and bias; the convolutions and classifier are constants.
    ///
    /// Runs the hand-written pass of this module unless [`Model::set_native_backward`] turned
    /// it off or the net has a norm layer it does not implement; then burn's autodiff computes
    /// the same thing (the host gradient enters through `Σ logits · ∂loss/∂logits`).
    pub fn norm_affine_backward<F>(
        &mut self,
        pixels: &[u8],
        n: usize,
        mode: NormMode,
        update_stats: bool,
        loss_fn: F,
    ) -> Result<HostBackward>
    where
        F: FnOnce(&[f32]) -> (f32, Vec<f32>),
    {
        check_pixels(&self.card.input, pixels, n)?;
        if self.native_pass_applies(n) {
            let spec = self.card.input.clone();
            let momentum = update_stats.then_some(self.net.stats_momentum);
            return Ok(self
                .net
                .native_pass(&spec, pixels, n, mode, momentum, Some(loss_fn)));
        }
        let x = to_input(&self.card.input, pixels, n, self.net.device())?;
        let mut host_loss = 0f32;
        let out = self
            .net
            .backward(x, mode, update_stats, Trainable::NormAffine, |l| {
                let [rows, classes] = l.dims();
                let (loss, g) = loss_fn(&tensor_to_vec(l.clone().detach()));
                host_loss = loss;
                let g = burn::tensor::Tensor::<2>::from_data(
                    burn::tensor::TensorData::new(g, [rows, classes]),
                    &l.device(),
                );
                (l * g).sum()
            });
        Ok(HostBackward {
            loss: host_loss,
            logits: tensor_to_vec(out.logits),
            grads: out
                .grads
                .into_iter()
                .map(|(i, g)| (i, tensor_to_vec(g)))
                .collect(),
        })
    }
}

/// Buffers reused across steps, per thread. A step allocates a few hundred MB of activations;
/// fresh allocations of that size come from `mmap` and cost a page fault per 4 KiB on first
/// touch (15 % of a foundation step, measured with `perf`). A thread-local pool rather than one
/// per model: the cloud holds a foundation copy per edge session, and per-session pools would
/// keep one step's peak memory alive for every session.
mod pool {
    use std::cell::RefCell;

    /// What one thread keeps between steps, at most.
    const MAX_BYTES: usize = 1 << 30;

    thread_local! {
        static FREE: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
    }

    /// A zeroed buffer of `len` floats, reusing the smallest free one that is large enough.
    pub(super) fn take(len: usize) -> Vec<f32> {
        let mut v = reuse(len);
        v.clear();
        v.resize(len, 0.0);
        v
    }

    fn reuse(len: usize) -> Vec<f32> {
        FREE.with(|f| {
            let mut f = f.borrow_mut();
            let best = f
                .iter()
                .enumerate()
                .filter(|(_, v)| v.capacity() >= len)
                .min_by_key(|(_, v)| v.capacity())
                .map(|(i, _)| i);
            best.map(|i| f.swap_remove(i)).unwrap_or_default()
        })
    }

    /// A buffer of `len` floats whose content is unspecified (stale values from an earlier use):
    /// for outputs that are written in full.
    pub(super) fn take_dirty(len: usize) -> Vec<f32> {
        let mut v = reuse(len);
        v.truncate(len);
        v.resize(len, 0.0);
        v
    }

    pub(super) fn give(v: Vec<f32>) {
        if v.capacity() == 0 {
            return;
        }
        FREE.with(|f| {
            let mut f = f.borrow_mut();
            let held: usize = f.iter().map(|v| v.capacity() * 4).sum();
            if held + v.capacity() * 4 <= MAX_BYTES {
                f.push(v);
            }
        });
    }
}
