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
//! machinery as the inference path ([`crate::nhwc`]), for a strided one a GEMM plus col2im,
//! and for a depthwise one a scatter of the same taps.
//!
//! The pass runs the network's [`Plan`] (its graph fused into units), so it serves every
//! architecture the graph describes; the units are walked forward, then backward in reverse,
//! gradients of values read twice (a residual's input) summed.
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
//! the generic forward ([`crate::Net::backward`]).

use rayon::prelude::*;

use crate::error::Result;
use crate::gemm::gemm_acc;
use crate::graph::{Act, ValueId};
use crate::input::{check_pixels, pixel_affine, to_input};
use crate::lanes;
use crate::model::Model;
use crate::net::Net;
use crate::nhwc::{
    finish, images_per_task, load_pixels, max_pool, max_pool_backward, reborder, sum_interior,
    ConvScratch, Geo, Kernel,
};
use crate::norm::NormMode;
use crate::plan::{conv_kernel, Plan, Unit, UnitKind};
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
    conv: Kernel,
    back: Back,
    norm: usize,
    act: Option<Act>,
}

/// How a layer's input gradient is computed.
enum Back {
    /// Stride 1, symmetric padding: a convolution of the output gradient.
    Conv(Kernel),
    /// Strided: output gradient × `wᵀ` (this matrix), scattered back by col2im.
    Col2im(Vec<f32>),
    /// Depthwise: each output's gradient scattered back through the same taps.
    Depthwise,
    /// The network's input: nothing upstream has parameters, so its gradient is never needed.
    None,
}

impl Layer {
    fn new(net: &Net, plan: &Plan, unit: &Unit, backward: bool) -> Layer {
        let UnitKind::Conv { norm, act, .. } = &unit.kind else {
            unreachable!("a convolution unit")
        };
        let conv = conv_kernel(&net.store, &net.norms, &unit.kind, false);
        let x = unit.inputs[0];
        let back = match &conv {
            _ if !backward || x == 0 => Back::None,
            Kernel::Depthwise(_) => Back::Depthwise,
            Kernel::Dense(f) => match f.transposed() {
                // The transposed convolution reads the output gradient's border.
                Some(t) if t.win.border() <= plan.border[unit.output] => {
                    Back::Conv(Kernel::Dense(t))
                }
                _ => Back::Col2im(f.weight_t()),
            },
        };
        Layer {
            conv,
            back,
            norm: norm.expect("the native pass needs a norm after every convolution"),
            act: *act,
        }
    }
}

/// What the forward keeps of one convolution unit for the backward.
struct Saved {
    /// The convolution's output (padded, border zero), for every image of the pass.
    z: Vec<f32>,
    out: Geo,
    input: Geo,
    /// One per [`Seg`] of the pass: each model normalises its own images.
    stats: Vec<Stats>,
}

/// One model's images in a pass: `[first, first + n)` of the batch. A pass over several models
/// that share their frozen weights runs every convolution once over all their images, while
/// each model's BatchNorms see only its own (ghost batch normalisation with a per-model affine).
#[derive(Debug, Clone, Copy)]
struct Seg {
    first: usize,
    n: usize,
}

impl Seg {
    /// The segment's part of a buffer in geometry `g` with `c` channels, and its geometry.
    fn part(self, g: Geo, c: usize) -> (std::ops::Range<usize>, Geo) {
        let per = g.rows() / g.n * c;
        (
            self.first * per..(self.first + self.n) * per,
            Geo { n: self.n, ..g },
        )
    }
}

/// A host loss: logits → (value, ∂value/∂logits).
type LossFn = fn(&[f32]) -> (f32, Vec<f32>);

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
    /// Whether the batch's own statistics are needed (not in an eval-mode forward).
    batch_stats: bool,
}

impl Net {
    /// The plan the hand-written pass runs for `spec`'s images, `None` when the graph has
    /// something it does not implement: a norm layer other than a BatchNorm with running
    /// statistics, a convolution without one, an op the plan does not know.
    pub(crate) fn native_plan(&self, spec: &crate::InputSpec) -> Option<Plan> {
        self.hand_written_plan(spec).ok()
    }

    /// [`Net::native_plan`], or why there is none.
    pub(crate) fn hand_written_plan(
        &self,
        spec: &crate::InputSpec,
    ) -> std::result::Result<Plan, String> {
        let plan = Plan::new(
            &self.graph,
            &self.store,
            &self.norms,
            spec.height,
            spec.width,
        )?;
        match plan.units.iter().find_map(|u| match u.kind {
            UnitKind::Conv {
                norm: None, weight, ..
            } => Some(weight),
            _ => None,
        }) {
            Some(w) => Err(format!(
                "{}: a convolution without a BatchNorm after it",
                self.store.name(w)
            )),
            None => Ok(plan),
        }
    }

    /// The hand-written forward and backward (see the module doc) of this net alone; `pixels`
    /// are validated. With `loss_fn` `None`, a forward only (logits, and the running statistics
    /// moved when `momentum` is given): BN-adapt's predictions and an edge tracking its statistics.
    #[allow(clippy::too_many_arguments)]
    fn native_pass<F>(
        &mut self,
        plan: &Plan,
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
        let mut out = native_pass_many(
            &mut [self],
            plan,
            spec,
            &[(pixels, n)],
            mode,
            momentum,
            loss_fn.map(|f| vec![f]),
        );
        out.pop().expect("one result per net")
    }
}

/// The hand-written pass over the images of several nets at once: `inputs[i]` are net `i`'s
/// (validated, none empty). The nets must share their frozen weights (the convolutions and the
/// head are read from `nets[0]`); each has its own norm state, and `loss_fns[i]` sees only net
/// `i`'s logits. Every convolution runs once over all the images; each BatchNorm normalises,
/// moves statistics and takes gradients per net. Returns one result per net, in order.
#[allow(clippy::too_many_arguments)]
fn native_pass_many<F>(
    nets: &mut [&mut Net],
    plan: &Plan,
    spec: &crate::InputSpec,
    inputs: &[(&[u8], usize)],
    mode: NormMode,
    momentum: Option<f32>,
    loss_fns: Option<Vec<F>>,
) -> Vec<HostBackward>
where
    F: FnOnce(&[f32]) -> (f32, Vec<f32>),
{
    assert_eq!(nets.len(), inputs.len(), "one input per net");
    let mut segs = Vec::with_capacity(inputs.len());
    let mut n = 0;
    for &(_, k) in inputs {
        segs.push(Seg { first: n, n: k });
        n += k;
    }
    let backward = loss_fns.is_some();
    let pass = Pass {
        mode,
        momentum: momentum.filter(|_| mode != NormMode::Running),
        // A forward in eval mode never looks at the batch's own statistics.
        batch_stats: backward || mode != NormMode::Running,
    };
    let ro: Vec<&Net> = nets.iter().map(|n| &**n).collect();
    let frozen = ro[0];
    let layers: Vec<Option<Layer>> = plan
        .units
        .iter()
        .map(|u| {
            matches!(u.kind, UnitKind::Conv { .. }).then(|| Layer::new(frozen, plan, u, backward))
        })
        .collect();
    let group = images_per_task(spec.height, spec.width, n);

    // ---- forward ----
    let mut values: Vec<Option<Vec<f32>>> = (0..plan.shapes.len()).map(|_| None).collect();
    // Taken at its size: a buffer taken empty and grown would go back to the pool larger than
    // it came out, and the pool would creep by one input every pass.
    let mut input = pool::take_dirty(plan.len(0, n));
    let (scale, shift) = pixel_affine(spec);
    match inputs {
        [(pixels, _)] => load_pixels(pixels, (&scale, &shift), plan.geo(0, n), &mut input),
        _ => {
            let all: Vec<u8> = inputs.iter().flat_map(|(p, _)| p.iter().copied()).collect();
            load_pixels(&all, (&scale, &shift), plan.geo(0, n), &mut input);
        }
    }
    values[0] = Some(input);
    let mut saved: Vec<Option<Saved>> = Vec::with_capacity(plan.units.len());
    let mut stat_updates = Vec::new();
    for (unit, layer) in plan.units.iter().zip(&layers) {
        let x_v = unit.inputs[0];
        let x = values[x_v].as_deref().expect("computed before use");
        let out_v = unit.output;
        let mut s = None;
        let out = match (&unit.kind, layer) {
            (UnitKind::Conv { .. }, Some(layer)) => {
                let sv = layer_forward(
                    &ro,
                    &segs,
                    layer,
                    x,
                    plan.geo(x_v, n),
                    plan.border[out_v],
                    pass,
                    group,
                    &mut stat_updates,
                );
                let mut a = pool::take_dirty(sv.z.len());
                let rebordered;
                let residual = match unit.residual() {
                    Some(r) if plan.geo(r, n) == sv.out => values[r].as_deref(),
                    Some(r) => {
                        let mut t = pool::take_dirty(sv.z.len());
                        let src = values[r].as_deref().expect("computed before use");
                        reborder(
                            src,
                            plan.geo(r, n),
                            &mut t,
                            sv.out,
                            layer.conv.cout(),
                            false,
                        );
                        rebordered = t;
                        Some(&rebordered[..])
                    }
                    None => None,
                };
                bn_apply(&sv, &segs, &mut a, residual, layer.act, group);
                s = Some(sv);
                a
            }
            (UnitKind::MaxPool { win }, _) => {
                let mut d = pool::take_dirty(plan.len(out_v, n));
                let c = plan.channels(x_v);
                max_pool(x, plan.geo(x_v, n), c, *win, plan.geo(out_v, n), &mut d);
                d
            }
            (UnitKind::GlobalAvgPool, _) => {
                let (c, g) = (plan.channels(x_v), plan.geo(x_v, n));
                let hw = (g.h * g.w) as f32;
                let mut pooled = vec![0f32; n * c];
                for (img, p) in pooled.chunks_exact_mut(c).enumerate() {
                    sum_interior(x, g, c, img, p);
                    p.iter_mut().for_each(|v| *v /= hw);
                }
                pooled
            }
            (UnitKind::Linear { weight, bias }, _) => {
                let c = plan.channels(x_v);
                let classes = plan.channels(out_v);
                let w = frozen.store.values(*weight);
                let b = bias.map_or_else(|| vec![0.0; classes], |b| frozen.store.values(b));
                let mut logits = Vec::with_capacity(n * classes);
                for p in x.chunks_exact(c) {
                    for j in 0..classes {
                        let w = &w[j * c..(j + 1) * c];
                        logits.push(b[j] + p.iter().zip(w).map(|(a, b)| a * b).sum::<f32>());
                    }
                }
                logits
            }
            (UnitKind::Add { act }, _) => {
                let b_v = unit.inputs[1];
                let b = values[b_v].as_deref().expect("computed before use");
                let mut d = pool::take_dirty(plan.len(out_v, n));
                crate::folded::add_values(plan, (x, x_v), (b, b_v), out_v, n, &mut d, *act);
                d
            }
            (UnitKind::Act(a), _) => x.iter().map(|v| a.apply(*v)).collect(),
            _ => unreachable!("a layer for every convolution unit"),
        };
        values[out_v] = Some(out);
        saved.push(s);
    }
    let classes = plan.channels(plan.output);
    let logits = values[plan.output].clone().expect("the output is computed");
    let seg_logits =
        |seg: &Seg| logits[seg.first * classes..(seg.first + seg.n) * classes].to_vec();
    let mut results: Vec<HostBackward> = segs
        .iter()
        .map(|seg| HostBackward {
            loss: 0.0,
            logits: seg_logits(seg),
            grads: Vec::new(),
        })
        .collect();

    if let Some(loss_fns) = loss_fns {
        // ---- loss ----
        let mut g_logits = Vec::with_capacity(n * classes);
        for (r, loss_fn) in results.iter_mut().zip(loss_fns) {
            let (loss, g) = loss_fn(&r.logits);
            assert_eq!(g.len(), r.logits.len(), "loss gradient must be n × classes");
            r.loss = loss;
            g_logits.extend_from_slice(&g);
        }

        // ---- backward ----
        let mut grads: Vec<Vec<(usize, Vec<f32>)>> = vec![Vec::new(); segs.len()];
        let mut g: Vec<Option<Vec<f32>>> = (0..plan.shapes.len()).map(|_| None).collect();
        g[plan.output] = Some(g_logits);
        for ((unit, layer), s) in plan.units.iter().zip(&layers).zip(saved).rev() {
            let x_v = unit.inputs[0];
            let out_v = unit.output;
            let Some(mut gout) = g[out_v].take() else {
                // Nothing downstream of this value reaches the loss.
                s.into_iter().for_each(|s| pool::give(s.z));
                continue;
            };
            let wants = |v: ValueId| v != 0;
            match (&unit.kind, layer, s) {
                (UnitKind::Conv { .. }, Some(layer), Some(s)) => {
                    let out = values[out_v].as_deref().expect("kept for the backward");
                    let residual = unit.residual();
                    // The activation's mask rides inside the norm's backward unless the gradient
                    // at its input is needed on its own (for the residual) or needs the
                    // pre-activation (smooth activations).
                    let mut mask = None;
                    if let Some(act) = layer.act {
                        let from_output = act.passes_from_output(0.0).is_some();
                        if residual.is_none() && from_output {
                            mask = Some((out, act));
                        } else if from_output {
                            act_mask(&mut gout, out, act, group);
                        } else {
                            let res = residual.map(|r| {
                                let v = values[r].as_deref().expect("kept for the backward");
                                (v, plan.geo(r, n))
                            });
                            let pre = pre_activation(&s, &segs, res);
                            act_grad(&mut gout, &pre, act);
                            pool::give(pre);
                        }
                    }
                    let gz =
                        bn_backward(&ro, &segs, layer, &s, &gout, mask, pass, group, &mut grads);
                    if let Some(r) = residual {
                        accumulate(&mut g, r, gout, s.out, plan, n);
                    } else {
                        pool::give(gout);
                    }
                    if !matches!(layer.back, Back::None) {
                        let dx = g[x_v].get_or_insert_with(|| pool::take(plan.len(x_v, n)));
                        input_grad(layer, &gz, &s, dx, group);
                    }
                    pool::give(gz);
                    pool::give(s.z);
                }
                (UnitKind::MaxPool { win }, _, _) if wants(x_v) => {
                    let x = values[x_v].as_deref().expect("kept for the backward");
                    let gx = g[x_v].get_or_insert_with(|| pool::take(plan.len(x_v, n)));
                    let c = plan.channels(x_v);
                    max_pool_backward(x, plan.geo(x_v, n), c, *win, plan.geo(out_v, n), &gout, gx);
                    pool::give(gout);
                }
                (UnitKind::GlobalAvgPool, _, _) if wants(x_v) => {
                    let (c, gg) = (plan.channels(x_v), plan.geo(x_v, n));
                    let hw = (gg.h * gg.w) as f32;
                    let gx = g[x_v].get_or_insert_with(|| pool::take(plan.len(x_v, n)));
                    for (img, gp) in gout.chunks_exact(c).enumerate() {
                        for y in 0..gg.h {
                            for xx in 0..gg.w {
                                let at = gg.at(img, y, xx) * c;
                                gx[at..at + c]
                                    .iter_mut()
                                    .zip(gp)
                                    .for_each(|(d, v)| *d += v / hw);
                            }
                        }
                    }
                }
                (UnitKind::Linear { weight, .. }, _, _) if wants(x_v) => {
                    let (c, classes) = (plan.channels(x_v), plan.channels(out_v));
                    let w = frozen.store.values(*weight);
                    let gx = g[x_v].get_or_insert_with(|| pool::take(plan.len(x_v, n)));
                    gemm_acc(gx, &gout, &w, (n, classes, c), 1);
                }
                (UnitKind::Add { act }, _, _) => {
                    if let Some(act) = act {
                        match act.passes_from_output(0.0) {
                            Some(_) => {
                                let out = values[out_v].as_deref().expect("kept");
                                act_mask(&mut gout, out, *act, group);
                            }
                            None => {
                                let mut pre = pool::take(gout.len());
                                let (a, b) = (unit.inputs[0], unit.inputs[1]);
                                let va = values[a].as_deref().expect("kept");
                                let vb = values[b].as_deref().expect("kept");
                                crate::folded::add_values(
                                    plan,
                                    (va, a),
                                    (vb, b),
                                    out_v,
                                    n,
                                    &mut pre,
                                    None,
                                );
                                act_grad(&mut gout, &pre, *act);
                                pool::give(pre);
                            }
                        }
                    }
                    let shape_geo =
                        matches!(plan.shapes[out_v], crate::graph::Shape::Spatial { .. })
                            .then(|| plan.geo(out_v, n));
                    let b_v = unit.inputs[1];
                    if wants(b_v) {
                        let copy = gout.clone();
                        accumulate_any(&mut g, b_v, copy, shape_geo, plan, n);
                    }
                    if wants(x_v) {
                        accumulate_any(&mut g, x_v, gout, shape_geo, plan, n);
                    }
                }
                (UnitKind::Act(a), _, _) if wants(x_v) => {
                    let x = values[x_v].as_deref().expect("kept for the backward");
                    act_grad(&mut gout, x, *a);
                    accumulate_any(&mut g, x_v, gout, None, plan, n);
                }
                _ => pool::give(gout),
            }
            if let Some(v) = values[out_v].take() {
                pool::give(v);
            }
        }
        g.into_iter().flatten().for_each(pool::give);
        for (r, mut grads) in results.iter_mut().zip(grads) {
            grads.sort_by_key(|(i, _)| *i);
            r.grads = grads;
        }
    } else {
        saved.into_iter().flatten().for_each(|s| pool::give(s.z));
    }
    values.into_iter().flatten().for_each(pool::give);
    drop(ro);
    for (k, i, v) in stat_updates {
        nets[k].store.set_values(i, v);
    }
    results
}

/// A convolution unit's pre-activation `γ·(z − μ_f)/σ_f + β [+ residual]`, for the backward
/// of an activation whose derivative the output does not tell.
fn pre_activation(s: &Saved, segs: &[Seg], residual: Option<(&[f32], Geo)>) -> Vec<f32> {
    let mut pre = pool::take_dirty(s.z.len());
    let group = s.out.n.max(1);
    match residual {
        Some((src, geo)) => {
            let mut t = pool::take_dirty(s.z.len());
            reborder(src, geo, &mut t, s.out, s.stats[0].gamma.len(), false);
            bn_apply(s, segs, &mut pre, Some(&t), None, group);
            pool::give(t);
        }
        None => bn_apply(s, segs, &mut pre, None, None, group),
    }
    pre
}

/// Convolution over every image, then per net its images' batch statistics and the statistics
/// its forward normalises with; queues `(net, tensor, values)` running-statistics updates when
/// the pass moves them.
#[allow(clippy::too_many_arguments)]
fn layer_forward(
    nets: &[&Net],
    segs: &[Seg],
    layer: &Layer,
    x: &[f32],
    g: Geo,
    border: usize,
    pass: Pass,
    group: usize,
    updates: &mut Vec<(usize, usize, Vec<f32>)>,
) -> Saved {
    let c = layer.conv.cout();
    let mut z = pool::take_dirty(layer.conv.win().out_geo(g, border).rows() * c);
    let out = conv_batch(&layer.conv, x, g, border, &mut z, group);
    let stats = segs
        .iter()
        .zip(nets)
        .enumerate()
        .map(|(k, (seg, net))| {
            let (range, og) = seg.part(out, c);
            let norm = &net.norms[layer.norm];
            let (rm_i, rv_i) = (
                norm.running_mean.expect("batch norm"),
                norm.running_var.expect("batch norm"),
            );
            let (rm, rv) = (net.store.values(rm_i), net.store.values(rv_i));
            let (mu_b, var_b) = if pass.batch_stats {
                channel_stats(&z[range], og, c, group)
            } else {
                (rm.clone(), rv.clone())
            };
            let count = og.n * og.h * og.w;
            let sigma = |v: &[f32]| -> Vec<f32> {
                v.iter()
                    .map(|v| (*v as f64 + norm.eps).sqrt() as f32)
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
                updates.push((k, rm_i, new_rm));
                updates.push((k, rv_i, new_rv));
            }
            Stats {
                mu_b,
                sigma_b,
                mu_f,
                sigma_f,
                gamma: net.store.values(norm.weight),
                beta: net.store.values(norm.bias),
                count,
            }
        })
        .collect();
    Saved {
        z,
        out,
        input: g,
        stats,
    }
}

/// The BatchNorm backward for the gradient `gy` at its output — or, with `mask`, at the
/// output `y` of the piecewise-linear activation after it (`gy` is then masked where that
/// activation's slope is 0, on the fly): pushes each net's `∂L/∂γ`, `∂L/∂β` and returns
/// `∂L/∂z` (padded, border zero; empty when the layer's input needs no gradient).
#[allow(clippy::too_many_arguments)]
fn bn_backward(
    nets: &[&Net],
    segs: &[Seg],
    layer: &Layer,
    s: &Saved,
    gy: &[f32],
    mask: Option<(&[f32], Act)>,
    pass: Pass,
    group: usize,
    grads: &mut [Vec<(usize, Vec<f32>)>],
) -> Vec<f32> {
    let wants_dz = !matches!(layer.back, Back::None);
    let mut gz = if wants_dz {
        pool::take_dirty(gy.len())
    } else {
        Vec::new()
    };
    for (k, (seg, st)) in segs.iter().zip(&s.stats).enumerate() {
        let c = st.gamma.len();
        let (range, g) = seg.part(s.out, c);
        let (z, gy) = (&s.z[range.clone()], &gy[range.clone()]);
        let y = mask.map(|(y, act)| (&y[range.clone()], act));
        let inv_sb: Vec<f32> = st.sigma_b.iter().map(|v| 1.0 / v).collect();
        // Σ g and Σ g·ẑ per channel, over the interior.
        let sums = match y {
            None => masked_sums(st, z, g, gy, gy, &inv_sb, group, |_| true),
            Some((r, Act::Relu)) => masked_sums(st, z, g, gy, r, &inv_sb, group, |y| y > 0.0),
            Some((r, Act::Relu6)) => {
                masked_sums(st, z, g, gy, r, &inv_sb, group, |y| y > 0.0 && y < 6.0)
            }
            Some((r, act)) => masked_sums(st, z, g, gy, r, &inv_sb, group, move |y| {
                act.passes_from_output(y).unwrap_or(true)
            }),
        };
        let (s1, s2) = sums.split_at(c);
        let norm = &nets[k].norms[layer.norm];
        let dgamma = (0..c)
            .map(|ch| {
                ((st.sigma_b[ch] as f64 * s2[ch] + (st.mu_b[ch] - st.mu_f[ch]) as f64 * s1[ch])
                    / st.sigma_f[ch] as f64) as f32
            })
            .collect();
        grads[k].push((norm.weight, dgamma));
        grads[k].push((norm.bias, s1.iter().map(|v| *v as f32).collect()));
        if !wants_dz {
            continue;
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
        let d = &mut gz[range];
        match y {
            None => masked_dz(d, z, g, gy, gy, &coef, group, |_| true),
            Some((r, Act::Relu)) => masked_dz(d, z, g, gy, r, &coef, group, |y| y > 0.0),
            Some((r, Act::Relu6)) => {
                masked_dz(d, z, g, gy, r, &coef, group, |y| y > 0.0 && y < 6.0)
            }
            Some((r, act)) => masked_dz(d, z, g, gy, r, &coef, group, move |y| {
                act.passes_from_output(y).unwrap_or(true)
            }),
        }
    }
    gz
}

/// `Σ g` and `Σ g·ẑ` per channel over the interior of geometry `g` (one net's images: `z`, `gy`
/// and `y` are its part of the batch), `g` zeroed where `keep(y)` is false for the activation
/// output `y` at the same position (`y` = `gy` itself when there is no mask). Generic over
/// `keep` so each activation's test compiles into the loop, vectorised.
#[allow(clippy::too_many_arguments)]
fn masked_sums<K>(
    st: &Stats,
    z: &[f32],
    g: Geo,
    gy: &[f32],
    y: &[f32],
    inv_sb: &[f32],
    group: usize,
    keep: K,
) -> Vec<f64>
where
    K: Fn(f32) -> bool + Sync,
{
    let c = st.gamma.len();
    per_channel_sums(g, c, group, |img, acc| {
        let (s1, s2) = acc.split_at_mut(c);
        for row in 0..g.h {
            let (a, b) = (g.at(img, row, 0) * c, g.at(img, row, g.w) * c);
            lanes::masked_sums(
                s1,
                s2,
                &gy[a..b],
                &z[a..b],
                &y[a..b],
                &st.mu_b,
                inv_sb,
                &keep,
            );
        }
    })
}

/// `gz ← A·g + B·z + C` per channel (`coef` = A, B, C, `c` each) over geometry `g`, `g` masked
/// as in [`masked_sums`]; border zero.
#[allow(clippy::too_many_arguments)]
fn masked_dz<K>(
    gz: &mut [f32],
    z: &[f32],
    g: Geo,
    gy: &[f32],
    y: &[f32],
    coef: &[f32],
    group: usize,
    keep: K,
) where
    K: Fn(f32) -> bool + Sync,
{
    let c = coef.len() / 3;
    let per = g.rows() / g.n * c;
    let (ca, cb, cc) = (&coef[..c], &coef[c..2 * c], &coef[2 * c..]);
    gz.par_chunks_mut(group * per)
        .zip(gy.par_chunks(group * per))
        .zip(z.par_chunks(group * per))
        .zip(y.par_chunks(group * per))
        .for_each(|(((d, gr), zr), yr)| {
            // The mask: where the activation was flat, the incoming gradient is 0.
            lanes::masked_dz(d, gr, zr, yr, ca, cb, cc, &keep);
            let gg = Geo {
                n: d.len() / per,
                ..g
            };
            finish(d, gg, c, None);
        });
}

/// `g[v] += grad` (taking `grad` over when `g[v]` is empty and the geometries agree), where
/// `grad` is in geometry `from` and `g[v]` in `v`'s.
fn accumulate(
    g: &mut [Option<Vec<f32>>],
    v: ValueId,
    grad: Vec<f32>,
    from: Geo,
    plan: &Plan,
    n: usize,
) {
    let to = plan.geo(v, n);
    let c = plan.channels(v);
    match &mut g[v] {
        None if from == to => g[v] = Some(grad),
        None => {
            let mut d = pool::take(plan.len(v, n));
            reborder(&grad, from, &mut d, to, c, false);
            pool::give(grad);
            g[v] = Some(d);
        }
        Some(d) => {
            reborder(&grad, from, d, to, c, true);
            pool::give(grad);
        }
    }
}

/// [`accumulate`] for a spatial (`Some(geometry)`) or flat (`None`) value.
fn accumulate_any(
    g: &mut [Option<Vec<f32>>],
    v: ValueId,
    grad: Vec<f32>,
    from: Option<Geo>,
    plan: &Plan,
    n: usize,
) {
    match from {
        Some(from) => accumulate(g, v, grad, from, plan, n),
        None => match &mut g[v] {
            None => g[v] = Some(grad),
            Some(d) => {
                d.iter_mut().zip(&grad).for_each(|(d, v)| *d += v);
                pool::give(grad);
            }
        },
    }
}

/// `dst ← act(γ·(z − μ_f)/σ_f + β [+ residual])`, each net's images with its own numbers,
/// border zero. `dst` and `residual` must already have `z`'s length and geometry.
fn bn_apply(
    s: &Saved,
    segs: &[Seg],
    dst: &mut [f32],
    residual: Option<&[f32]>,
    act: Option<Act>,
    group: usize,
) {
    assert_eq!(dst.len(), s.z.len(), "norm output buffer");
    for (seg, st) in segs.iter().zip(&s.stats) {
        let c = st.gamma.len();
        let (range, g) = seg.part(s.out, c);
        let (dst, z) = (&mut dst[range.clone()], &s.z[range.clone()]);
        let residual = residual.map(|r| &r[range]);
        let a: Vec<f32> = (0..c).map(|ch| st.gamma[ch] / st.sigma_f[ch]).collect();
        let per = g.rows() / g.n * c;
        dst.par_chunks_mut(group * per)
            .zip(z.par_chunks(group * per))
            .enumerate()
            .for_each(|(k, (d, zr))| {
                let res = residual.map(|r| &r[k * group * per..][..d.len()]);
                let (mu, beta) = (&st.mu_f, &st.beta);
                // The activation inside the pass; `finish` then only zeroes the border.
                match act {
                    None => lanes::affine_act(d, zr, mu, &a, beta, res, |v| v),
                    Some(Act::Relu) => lanes::affine_act(d, zr, mu, &a, beta, res, |v| v.max(0.0)),
                    Some(Act::Relu6) => {
                        lanes::affine_act(d, zr, mu, &a, beta, res, |v| v.clamp(0.0, 6.0))
                    }
                    Some(f) => lanes::affine_act(d, zr, mu, &a, beta, res, |v| f.apply(v)),
                }
                let gg = Geo {
                    n: d.len() / per,
                    ..g
                };
                finish(d, gg, c, None);
            });
    }
}

/// The convolution over the whole batch, image groups in parallel.
fn conv_batch(
    conv: &Kernel,
    x: &[f32],
    g: Geo,
    border: usize,
    dst: &mut Vec<f32>,
    group: usize,
) -> Geo {
    let out = conv.win().out_geo(g, border);
    dst.resize(out.rows() * conv.cout(), 0.0);
    let (per_in, per_out) = (
        g.rows() / g.n * conv.cin(),
        out.rows() / out.n * conv.cout(),
    );
    x.par_chunks(group * per_in)
        .zip(dst.par_chunks_mut(group * per_out))
        .for_each_init(ConvScratch::default, |s, (xc, dc)| {
            let gg = Geo {
                n: xc.len() / per_in,
                ..g
            };
            conv.run(xc, gg, dc, border, s, false, None, 1);
        });
    out
}

/// `dx += ∂L/∂x` of a layer's convolution, given `gz = ∂L/∂z`; `dx` in the input geometry.
fn input_grad(layer: &Layer, gz: &[f32], s: &Saved, dx: &mut [f32], group: usize) {
    let (g, out) = (s.input, s.out);
    let (per_in, per_out) = (
        g.rows() / g.n * layer.conv.cin(),
        out.rows() / out.n * layer.conv.cout(),
    );
    dx.par_chunks_mut(group * per_in)
        .zip(gz.par_chunks(group * per_out))
        .for_each_init(ConvScratch::default, |scr, (dc, gc)| {
            let gg = Geo {
                n: dc.len() / per_in,
                ..g
            };
            let og = Geo { n: gg.n, ..out };
            match (&layer.back, &layer.conv) {
                (Back::Conv(t), _) => {
                    t.run(gc, og, dc, gg.pad, scr, true, None, 1);
                }
                (Back::Col2im(w_t), Kernel::Dense(f)) => f.col2im_add(gc, og, w_t, gg, dc, scr),
                (Back::Depthwise, Kernel::Depthwise(d)) => d.input_grad_add(gc, og, gg, dc),
                _ => unreachable!("the network input's gradient is never computed"),
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
            lanes::shifted_sums(s1, s2, line, shift);
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

/// `g ← g · act'`, read from the activation's output `y` (piecewise-linear activations).
fn act_mask(g: &mut [f32], y: &[f32], act: Act, group: usize) {
    let chunk = (g.len() / 64).max(group * 1024);
    g.par_chunks_mut(chunk)
        .zip(y.par_chunks(chunk))
        .for_each(|(g, y)| match act {
            Act::Relu => lanes::mask(g, y, |y| y > 0.0),
            Act::Relu6 => lanes::mask(g, y, |y| y > 0.0 && y < 6.0),
            _ => lanes::mask(g, y, |y| act.passes_from_output(y) == Some(true)),
        });
}

/// `g ← g · act'(pre)`, from the pre-activation.
fn act_grad(g: &mut [f32], pre: &[f32], act: Act) {
    g.iter_mut()
        .zip(pre)
        .for_each(|(g, x)| *g *= act.derivative(*x));
}

impl Model {
    /// The plan of the hand-written pass when it serves `n` images of this model: enabled, on
    /// the CPU, every op and norm layer one it implements, and a non-empty batch.
    /// Logits through the token path ([`crate::tokens`]) when this is a token model on the CPU;
    /// `None` for any other model.
    pub(crate) fn token_forward(&mut self, pixels: &[u8], n: usize) -> Result<Option<Vec<f32>>> {
        if !self.on_cpu() || n == 0 {
            return Ok(None);
        }
        let Ok(plan) = self.net.token_plan(&self.card.input) else {
            return Ok(None);
        };
        check_pixels(&self.card.input, pixels, n)?;
        self.host_weights.sync(self.net.store());
        let none: Option<LossFn> = None;
        let out = self
            .net
            .token_pass(&plan, &self.host_weights, &self.card.input, pixels, n, none);
        Ok(Some(out.logits))
    }

    fn native_pass_plan(&self, n: usize) -> Option<Plan> {
        if !self.native_backward_enabled() || n == 0 {
            return None;
        }
        self.net.native_plan(&self.card.input)
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
        if mode == NormMode::Running {
            return None;
        }
        if self.native_backward_enabled() {
            // A token model's LayerNorms have neither modes nor statistics to move.
            if let Ok(Some(logits)) = self.token_forward(pixels, n) {
                return Some(logits);
            }
        }
        let plan = self.native_pass_plan(n)?;
        let spec = self.card.input.clone();
        let none: Option<LossFn> = None;
        Some(
            self.net
                .native_pass(&plan, &spec, pixels, n, mode, momentum, none)
                .logits,
        )
    }

    /// One forward in `mode` (running statistics move when `update_stats`, as in
    /// [`Net::forward`]), `loss_fn(logits) → (loss, ∂loss/∂logits)` on the host, and the
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
        if self.native_backward_enabled() && n > 0 {
            if let Ok(plan) = self.net.token_plan(&self.card.input) {
                self.host_weights.sync(self.net.store());
                let spec = &self.card.input;
                return Ok(self.net.token_pass(
                    &plan,
                    &self.host_weights,
                    spec,
                    pixels,
                    n,
                    Some(loss_fn),
                ));
            }
        }
        if let Some(plan) = self.native_pass_plan(n) {
            let spec = self.card.input.clone();
            let momentum = update_stats.then_some(self.net.stats_momentum);
            return Ok(self.net.native_pass(
                &plan,
                &spec,
                pixels,
                n,
                mode,
                momentum,
                Some(loss_fn),
            ));
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
/// Activation memory one batched pass may hold, bytes. A pass keeps every layer's output for its
/// backward; past about a single session's round the buffers outgrow the pass's buffer pool and
/// the caches. Measured on 2 cores (`cema speed --workload cloud_round_s16`, 16 sessions): all 16
/// in one pass ran at 0.44× the rate of one session at a time, passes of at most 256 MiB at 1.02×.
const PASS_BYTES: usize = 256 << 20;

/// Consecutive runs of `inputs` whose activations fit [`PASS_BYTES`] together (at least one
/// model per run).
fn pass_chunks(plan: &Plan, inputs: &[(&[u8], usize)]) -> Vec<std::ops::Range<usize>> {
    // Each value once, and each convolution's output twice (before and after its norm).
    let per_image: usize = (0..plan.shapes.len()).map(|v| 2 * 4 * plan.len(v, 1)).sum();
    let budget = PASS_BYTES;
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, (_, n)) in inputs.iter().enumerate() {
        let b = n * per_image;
        if i > start && bytes + b > budget {
            out.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += b;
    }
    if start < inputs.len() {
        out.push(start..inputs.len());
    }
    out
}

/// Several models' passes as one: see [`Model::norm_affine_backward_many`].
impl Model {
    /// Whether `self` and `other` hold the very same frozen weights (every tensor but the norm
    /// state written by the same load or update: a clone of one model, norm state aside), so one
    /// pass can run both models' images through the shared convolutions.
    pub fn shares_frozen_weights(&self, other: &Model) -> bool {
        let (a, b) = (self.net.store(), other.net.store());
        self.card.architecture == other.card.architecture
            && self.card.input == other.card.input
            && a.len() == b.len()
            && (0..a.len()).all(|i| {
                a.kind(i).is_norm_state() || a.entry_generation(i) == b.entry_generation(i)
            })
    }

    /// Whether [`Model::norm_affine_backward_many`] and [`Model::logits_many`] run `models`
    /// through one batched pass (rather than one pass each, which gives the same numbers): the
    /// hand-written BatchNorm CNN pass (not the ViT token path, not burn's generic path, e.g.
    /// on a GPU), at least two models, all sharing `models[0]`'s frozen weights.
    pub fn batches(models: &[&mut Model]) -> bool {
        let Some((first, rest)) = models.split_first() else {
            return false;
        };
        !rest.is_empty()
            && first.native_backward_enabled()
            && first.net.token_plan(&first.card.input).is_err()
            && first.net.native_plan(&first.card.input).is_some()
            && rest
                .iter()
                .all(|m| m.native_backward_enabled() && first.shares_frozen_weights(m))
    }

    /// [`Model::norm_affine_backward`] for several models at once: `inputs[i]` are model `i`'s
    /// images and `loss_fns[i]` its loss. When [`Model::batches`] says so, one pass: every
    /// convolution runs once over all the images, while each model normalises its own images
    /// with its own statistics and γ/β (ghost batch normalisation with a per-model affine) and
    /// gets its own gradients and statistics updates. Otherwise one pass per model. Either way
    /// the result is, within float rounding, that of calling each model on its own.
    pub fn norm_affine_backward_many<F>(
        models: &mut [&mut Model],
        inputs: &[(&[u8], usize)],
        mode: NormMode,
        update_stats: bool,
        loss_fns: Vec<F>,
    ) -> Result<Vec<HostBackward>>
    where
        F: FnOnce(&[f32]) -> (f32, Vec<f32>),
    {
        Self::check_many(models, inputs, loss_fns.len())?;
        if Self::batches(models) && inputs.iter().all(|(_, n)| *n > 0) {
            let plan = models[0]
                .net
                .native_plan(&models[0].card.input)
                .expect("checked by Model::batches");
            let spec = models[0].card.input.clone();
            let momentum = update_stats.then_some(models[0].net.stats_momentum);
            let mut nets: Vec<&mut Net> = models.iter_mut().map(|m| &mut m.net).collect();
            let mut losses = loss_fns.into_iter();
            let mut out = Vec::with_capacity(inputs.len());
            for r in pass_chunks(&plan, inputs) {
                let fns: Vec<F> = losses.by_ref().take(r.len()).collect();
                out.extend(native_pass_many(
                    &mut nets[r.clone()],
                    &plan,
                    &spec,
                    &inputs[r],
                    mode,
                    momentum,
                    Some(fns),
                ));
            }
            return Ok(out);
        }
        models
            .iter_mut()
            .zip(inputs)
            .zip(loss_fns)
            .map(|((m, (pixels, n)), f)| m.norm_affine_backward(pixels, *n, mode, update_stats, f))
            .collect()
    }

    /// [`Model::logits`] for several models at once, batched as in
    /// [`Model::norm_affine_backward_many`] except in eval mode (`Running`) with folding on:
    /// each model's BatchNorm-folded net then beats one unfolded pass over all (measured on 2
    /// cores: the cloud round with its teachers' logits batched ran at 0.90× the rate of one
    /// session at a time, with only the backward passes batched at 1.01–1.02×).
    pub fn logits_many(
        models: &mut [&mut Model],
        inputs: &[(&[u8], usize)],
        mode: NormMode,
    ) -> Result<Vec<Vec<f32>>> {
        Self::check_many(models, inputs, inputs.len())?;
        let folds = mode == NormMode::Running && models.iter().all(|m| m.fold_inference_enabled());
        if !folds && Self::batches(models) && inputs.iter().all(|(_, n)| *n > 0) {
            let plan = models[0]
                .net
                .native_plan(&models[0].card.input)
                .expect("checked by Model::batches");
            let spec = models[0].card.input.clone();
            let mut nets: Vec<&mut Net> = models.iter_mut().map(|m| &mut m.net).collect();
            let mut out = Vec::with_capacity(inputs.len());
            for r in pass_chunks(&plan, inputs) {
                let none: Option<Vec<LossFn>> = None;
                let chunk = &mut nets[r.clone()];
                let o = native_pass_many(chunk, &plan, &spec, &inputs[r], mode, None, none);
                out.extend(o.into_iter().map(|o| o.logits));
            }
            return Ok(out);
        }
        models
            .iter_mut()
            .zip(inputs)
            .map(|(m, (pixels, n))| m.logits(pixels, *n, mode))
            .collect()
    }

    fn check_many(models: &[&mut Model], inputs: &[(&[u8], usize)], losses: usize) -> Result<()> {
        if models.len() != inputs.len() || losses != inputs.len() {
            return Err(crate::ModelError::Input(format!(
                "{} models, {} inputs and {losses} losses: one of each per model",
                models.len(),
                inputs.len()
            )));
        }
        for (m, (pixels, n)) in models.iter().zip(inputs) {
            check_pixels(&m.card.input, pixels, *n)?;
        }
        Ok(())
    }
}

pub(crate) mod pool {
    use std::cell::RefCell;

    /// What one thread keeps between steps, at most.
    const MAX_BYTES: usize = 4 << 30;

    thread_local! {
        static FREE: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
    }

    /// A zeroed buffer of `len` floats, reusing the smallest free one that is large enough.
    pub(crate) fn take(len: usize) -> Vec<f32> {
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
    pub(crate) fn take_dirty(len: usize) -> Vec<f32> {
        let mut v = reuse(len);
        v.truncate(len);
        v.resize(len, 0.0);
        v
    }

    pub(crate) fn give(v: Vec<f32>) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_are_cut_where_the_activations_outgrow_the_budget() {
        let arch = crate::Arch::CifarResnet {
            depth: 8,
            width: 8,
            in_channels: 1,
            num_classes: 10,
        };
        let card = crate::ModelCard::fashion_mnist("t", "edge", arch, vec![]);
        let net = Net::new(&card.architecture, &crate::cpu(), 0).unwrap();
        let plan = net.native_plan(&card.input).unwrap();
        let per_image: usize = (0..plan.shapes.len()).map(|v| 8 * plan.len(v, 1)).sum();
        let half = PASS_BYTES / per_image / 2;
        let px: Vec<u8> = Vec::new();
        let inputs = |ns: &[usize]| ns.iter().map(|&n| (&px[..], n)).collect::<Vec<_>>();
        // Two halves fit; a third does not; one model alone over the budget still runs.
        assert_eq!(
            pass_chunks(&plan, &inputs(&[half, half, half])),
            vec![0..2, 2..3]
        );
        assert_eq!(
            pass_chunks(&plan, &inputs(&[3 * half, 1, 1])),
            vec![0..1, 1..3]
        );
        assert_eq!(pass_chunks(&plan, &inputs(&[1, 1, 1, 1])), vec![0..4]);
    }
}
