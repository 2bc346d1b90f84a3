//! The hand-written CPU path of token models (the ViT): the forward on host buffers with every
//! projection, every attention product and the patch embedding as one GEMM on the `gemm` crate's
//! kernels, and the backward to the LayerNorm γ/β (every other weight frozen, so only input
//! gradients flow: no weight-gradient GEMMs).
//!
//! It interprets the same [`Graph`] burn's generic forward runs, node by node, for graphs of the
//! form patch embedding → tokens → (class token, position table, LayerNorm, attention, linear,
//! activation, add)* → class pooling → linear; anything else is refused with a reason and runs on
//! burn. LayerNorm has no mode, so one pass serves eval, batch-statistics and TBR calls alike.

use std::sync::Arc;

use rayon::prelude::*;

use crate::affine_backward::{pool, HostBackward};
use crate::gemm::{gemm_view, View};
use crate::graph::{Act, Graph, Op, Padding, Shape, ValueId};
use crate::lanes;
use crate::norm::{NormKind, NormLayer};
use crate::store::Store;
use crate::{InputSpec, Net};

/// Host copies of a net's tensors for the token path, each refreshed only when its store entry
/// changed: an adaptation step rewrites the LayerNorm γ/β and nothing else, and copying the
/// frozen projections out of burn on every call cost more than a tenth of a ViT-S forward. Clones
/// share the frozen copies (`Arc`), as the cloud's per-session models share their weights.
#[derive(Clone, Default)]
pub(crate) struct HostWeights {
    entries: Vec<Option<(u64, Arc<Vec<f32>>)>>,
}

impl std::fmt::Debug for HostWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held = self.entries.iter().flatten().count();
        write!(f, "HostWeights({held} tensors)")
    }
}

impl HostWeights {
    /// Brings every copy up to date with `store`.
    pub(crate) fn sync(&mut self, store: &Store) {
        self.entries.resize(store.len(), None);
        for (i, e) in self.entries.iter_mut().enumerate() {
            let g = store.entry_generation(i);
            if e.as_ref().map(|(have, _)| *have) != Some(g) {
                *e = Some((g, Arc::new(store.values(i))));
            }
        }
    }
}

/// A store's shapes with the host copies of its values.
struct Weights<'a> {
    store: &'a Store,
    host: &'a HostWeights,
}

impl Weights<'_> {
    fn values(&self, i: usize) -> &[f32] {
        let (g, v) = self.host.entries[i].as_ref().expect("synced");
        debug_assert_eq!(*g, self.store.entry_generation(i), "synced");
        v
    }

    fn shape(&self, i: usize) -> &[usize] {
        self.store.shape(i)
    }
}

/// What the token pass needs, checked once per call: the shapes for this geometry.
pub(crate) struct TokenPlan {
    shapes: Vec<Shape>,
}

/// What the backward needs from the forward of one node.
enum Saved {
    None,
    /// A LayerNorm's normalised input `x̂` (`rows × c`) and `1/σ` per row.
    Norm {
        xhat: Vec<f32>,
        rstd: Vec<f32>,
    },
    /// An activation's input.
    Act(Vec<f32>),
    /// An attention layer's `qkv` projection (`rows × 3c`) and softmax weights
    /// (`n × heads × t × t`).
    Attention {
        qkv: Vec<f32>,
        probs: Vec<f32>,
    },
}

/// Rows per image above which a GEMM is split over the pool (smaller ones stay on the caller).
const PAR_ROWS: usize = 256;

/// Rows per block of a LayerNorm's passes (and of its γ/β gradient sums, added in block order).
const LN_ROWS: usize = 64;

impl Net {
    /// The token pass's plan for `spec`'s images, or why this graph does not run on it.
    pub(crate) fn token_plan(&self, spec: &InputSpec) -> Result<TokenPlan, String> {
        // Asked on every eval call of every model: a CNN is told apart before any shape work.
        if !self.graph.nodes.iter().any(|n| n.op == Op::ToTokens) {
            return Err("no token sequence: not a transformer".into());
        }
        let (shapes, _) = self.graph.shapes(&self.store, spec.height, spec.width)?;
        check(&self.graph, &self.norms, &shapes)?;
        Ok(TokenPlan { shapes })
    }

    /// Logits of `n` u8 images and, with `loss_fn`, the loss, and the gradients of every
    /// LayerNorm γ and β.
    pub(crate) fn token_pass<F>(
        &self,
        plan: &TokenPlan,
        host: &HostWeights,
        spec: &InputSpec,
        pixels: &[u8],
        n: usize,
        loss_fn: Option<F>,
    ) -> HostBackward
    where
        F: FnOnce(&[f32]) -> (f32, Vec<f32>),
    {
        let train = loss_fn.is_some();
        let graph = &self.graph;
        let store = &Weights {
            store: &self.store,
            host,
        };
        let len = |v: ValueId| n * elements(plan.shapes[v]);
        let mut uses = graph.uses();
        let mut values: Vec<Option<Vec<f32>>> = vec![None; graph.nodes.len()];
        let mut saved: Vec<Saved> = (0..graph.nodes.len()).map(|_| Saved::None).collect();
        let needs = grad_needed(graph);
        for (i, node) in graph.nodes.iter().enumerate() {
            let input = |k: usize| values[node.inputs[k]].as_deref().expect("computed");
            let out = match &node.op {
                Op::Input { .. } => continue,
                Op::Conv {
                    weight,
                    bias,
                    kernel,
                    ..
                } => patch_embed(store, *weight, *bias, *kernel, spec, pixels, n),
                Op::ToTokens => {
                    // The patch embedding already wrote its output in token order.
                    let v = node.inputs[0];
                    uses[v] -= 1;
                    values[i] = values[v].take();
                    continue;
                }
                Op::ClassToken { token } => {
                    let Shape::Tokens { t, c } = plan.shapes[i] else {
                        unreachable!()
                    };
                    let cls = store.values(*token);
                    let x = input(0);
                    let mut out = pool::take_dirty(len(i));
                    for (o, x) in out.chunks_exact_mut(t * c).zip(x.chunks_exact((t - 1) * c)) {
                        o[..c].copy_from_slice(cls);
                        o[c..].copy_from_slice(x);
                    }
                    out
                }
                Op::PosEmbed { table } => {
                    let table = store.values(*table);
                    let mut out = own(&mut values, &uses, node.inputs[0]);
                    for o in out.chunks_exact_mut(table.len()) {
                        o.iter_mut().zip(table).for_each(|(o, p)| *o += p);
                    }
                    out
                }
                Op::Norm(k) => {
                    let layer = &self.norms[*k];
                    let (out, xhat, rstd) = layer_norm(store, layer, input(0), train);
                    if train {
                        saved[i] = Saved::Norm { xhat, rstd };
                    }
                    out
                }
                Op::Act(a) => {
                    let x = input(0);
                    let mut out = pool::take_dirty(x.len());
                    let a = *a;
                    out.par_chunks_mut(4096)
                        .zip(x.par_chunks(4096))
                        .for_each(|(o, x)| match a {
                            Act::Gelu => lanes::gelu(o, x),
                            _ => o.iter_mut().zip(x).for_each(|(o, x)| *o = a.apply(*x)),
                        });
                    if train && needs[i] {
                        saved[i] = Saved::Act(own(&mut values, &uses, node.inputs[0]));
                    }
                    out
                }
                Op::Add => {
                    let (a, b) = (node.inputs[0], node.inputs[1]);
                    let mut out = own(&mut values, &uses, a);
                    let b = values[b].as_deref().expect("computed");
                    out.par_chunks_mut(4096)
                        .zip(b.par_chunks(4096))
                        .for_each(|(o, b)| lanes::add(o, b));
                    out
                }
                Op::Linear { weight, bias } => {
                    let rows = n * rows_per_image(plan.shapes[i]);
                    linear(store, *weight, *bias, input(0), rows)
                }
                Op::Attention {
                    qkv,
                    qkv_bias,
                    proj,
                    proj_bias,
                    heads,
                } => {
                    let Shape::Tokens { t, c } = plan.shapes[i] else {
                        unreachable!()
                    };
                    let qkv_out = linear(store, *qkv, *qkv_bias, input(0), n * t);
                    let (merged, probs) = attend(&qkv_out, n, t, c, *heads);
                    let out = linear(store, *proj, *proj_bias, &merged, n * t);
                    pool::give(merged);
                    if train && needs[i] {
                        saved[i] = Saved::Attention {
                            qkv: qkv_out,
                            probs,
                        };
                    } else {
                        pool::give(qkv_out);
                        pool::give(probs);
                    }
                    out
                }
                Op::ClassPool => {
                    let Shape::Tokens { t, c } = plan.shapes[node.inputs[0]] else {
                        unreachable!()
                    };
                    input(0)
                        .chunks_exact(t * c)
                        .flat_map(|x| x[..c].iter().copied())
                        .collect()
                }
                Op::MaxPool { .. } | Op::AvgPool { .. } | Op::GlobalAvgPool => {
                    unreachable!("refused by the plan")
                }
            };
            for &v in &node.inputs {
                uses[v] -= 1;
                if uses[v] == 0 {
                    if let Some(b) = values[v].take() {
                        pool::give(b);
                    }
                }
            }
            values[i] = Some(out);
        }
        let logits = values[graph.output()].take().expect("the logits");
        let Some(loss_fn) = loss_fn else {
            return HostBackward {
                loss: 0.0,
                logits,
                grads: Vec::new(),
            };
        };
        let (loss, dlogits) = loss_fn(&logits);
        assert_eq!(
            dlogits.len(),
            logits.len(),
            "the loss gradient has the logits' shape"
        );
        let grads = self.token_backward(plan, store, n, dlogits, &mut saved, &needs);
        HostBackward {
            loss,
            logits,
            grads,
        }
    }

    /// Walks the graph backwards from `∂loss/∂logits`, through the nodes after the first norm.
    fn token_backward(
        &self,
        plan: &TokenPlan,
        store: &Weights,
        n: usize,
        dlogits: Vec<f32>,
        saved: &mut [Saved],
        needs: &[bool],
    ) -> Vec<(usize, Vec<f32>)> {
        let graph = &self.graph;
        let mut grads: Vec<Option<Vec<f32>>> = vec![None; graph.nodes.len()];
        grads[graph.output()] = Some(dlogits);
        let mut out = Vec::new();
        // Adds `g` into the gradient of value `v`, if anything before it needs one.
        let give = |grads: &mut Vec<Option<Vec<f32>>>, v: ValueId, g: Vec<f32>| {
            if !needs[v] {
                return;
            }
            match &mut grads[v] {
                Some(acc) => {
                    acc.par_chunks_mut(4096)
                        .zip(g.par_chunks(4096))
                        .for_each(|(a, g)| lanes::add(a, g));
                    pool::give(g);
                }
                slot => *slot = Some(g),
            }
        };
        for i in (0..graph.nodes.len()).rev() {
            let Some(g) = grads[i].take() else { continue };
            let node = &graph.nodes[i];
            match &node.op {
                Op::Linear { weight, .. } => {
                    let rows = n * rows_per_image(plan.shapes[i]);
                    give(
                        &mut grads,
                        node.inputs[0],
                        linear_back(store, *weight, &g, rows),
                    );
                    pool::give(g);
                }
                Op::ClassPool => {
                    let Shape::Tokens { t, c } = plan.shapes[node.inputs[0]] else {
                        unreachable!()
                    };
                    let mut dx = pool::take(n * t * c);
                    for (d, g) in dx.chunks_exact_mut(t * c).zip(g.chunks_exact(c)) {
                        d[..c].copy_from_slice(g);
                    }
                    give(&mut grads, node.inputs[0], dx);
                }
                Op::Norm(k) => {
                    let layer = &self.norms[*k];
                    let Saved::Norm { xhat, rstd } = std::mem::replace(&mut saved[i], Saved::None)
                    else {
                        unreachable!("saved by the forward")
                    };
                    let gamma = store.values(layer.weight);
                    let c = gamma.len();
                    // Partial sums over fixed blocks of rows, added in block order: the same
                    // numbers at every thread count.
                    let partial: Vec<(Vec<f32>, Vec<f32>)> = g
                        .par_chunks(LN_ROWS * c)
                        .zip(xhat.par_chunks(LN_ROWS * c))
                        .map(|(g, x)| {
                            let (mut dg, mut db) = (vec![0f32; c], vec![0f32; c]);
                            lanes::affine_grads(&mut dg, &mut db, g, x);
                            (dg, db)
                        })
                        .collect();
                    let (mut dgamma, mut dbeta) = (vec![0f32; c], vec![0f32; c]);
                    for (dg, db) in &partial {
                        lanes::add(&mut dgamma, dg);
                        lanes::add(&mut dbeta, db);
                    }
                    out.push((layer.weight, dgamma));
                    out.push((layer.bias, dbeta));
                    if needs[node.inputs[0]] {
                        let mut dx = pool::take_dirty(g.len());
                        let block = LN_ROWS * c;
                        dx.par_chunks_mut(block)
                            .zip(g.par_chunks(block))
                            .zip(xhat.par_chunks(block))
                            .zip(rstd.par_chunks(LN_ROWS))
                            .for_each(|(((d, g), x), r)| lanes::layer_norm_back(d, g, x, r, gamma));
                        give(&mut grads, node.inputs[0], dx);
                    }
                    pool::give(g);
                    pool::give(xhat);
                }
                Op::Act(a) => {
                    let Saved::Act(x) = std::mem::replace(&mut saved[i], Saved::None) else {
                        unreachable!("saved by the forward")
                    };
                    let a = *a;
                    let mut dx = g;
                    dx.par_chunks_mut(4096)
                        .zip(x.par_chunks(4096))
                        .for_each(|(d, x)| match a {
                            Act::Gelu => lanes::gelu_back(d, x),
                            _ => d
                                .iter_mut()
                                .zip(x)
                                .for_each(|(d, x)| *d *= a.derivative(*x)),
                        });
                    give(&mut grads, node.inputs[0], dx);
                    pool::give(x);
                }
                Op::Add => {
                    let (a, b) = (node.inputs[0], node.inputs[1]);
                    if needs[b] {
                        let mut copy = pool::take_dirty(g.len());
                        copy.par_chunks_mut(4096)
                            .zip(g.par_chunks(4096))
                            .for_each(|(d, s)| d.copy_from_slice(s));
                        give(&mut grads, b, copy);
                    }
                    give(&mut grads, a, g);
                }
                Op::Attention {
                    qkv, proj, heads, ..
                } => {
                    let Shape::Tokens { t, c } = plan.shapes[i] else {
                        unreachable!()
                    };
                    let Saved::Attention { qkv: q, probs } =
                        std::mem::replace(&mut saved[i], Saved::None)
                    else {
                        unreachable!("saved by the forward")
                    };
                    let dmerged = linear_back(store, *proj, &g, n * t);
                    let dqkv = attend_back(&q, &probs, &dmerged, n, t, c, *heads);
                    give(
                        &mut grads,
                        node.inputs[0],
                        linear_back(store, *qkv, &dqkv, n * t),
                    );
                    for b in [g, q, probs, dmerged, dqkv] {
                        pool::give(b);
                    }
                }
                // Before the first norm nothing needs a gradient: these never receive one.
                Op::PosEmbed { .. } | Op::ClassToken { .. } | Op::ToTokens | Op::Conv { .. } => {}
                Op::Input { .. } | Op::MaxPool { .. } | Op::AvgPool { .. } | Op::GlobalAvgPool => {}
            }
        }
        out
    }
}

/// The graph is one this pass implements: a non-overlapping patch embedding straight from the
/// input into tokens, token and flat ops only after it, LayerNorms only.
fn check(graph: &Graph, norms: &[NormLayer], shapes: &[Shape]) -> Result<(), String> {
    let uses = graph.uses();
    let mut saw_tokens = false;
    for (i, node) in graph.nodes.iter().enumerate() {
        match &node.op {
            Op::Input { .. } => {}
            Op::Conv {
                kernel,
                stride,
                padding,
                groups,
                ..
            } => {
                let next = graph.nodes.get(i + 1).map(|n| (&n.op, n.inputs.as_slice()));
                let ok = node.inputs == [0]
                    && kernel == stride
                    && *padding == Padding::Explicit(0)
                    && *groups == 1
                    && uses[i] == 1
                    && next == Some((&Op::ToTokens, &[i][..]));
                if !ok {
                    return Err(format!(
                        "node {i}: the token path takes only a patch embedding (a convolution \
                         of the input with stride = kernel, no padding, into tokens)"
                    ));
                }
            }
            Op::ToTokens => saw_tokens = true,
            Op::Norm(k) if norms[*k].kind != NormKind::LayerNorm => {
                return Err(format!(
                    "{}: the token path implements LayerNorm only",
                    norms[*k].name
                ))
            }
            Op::MaxPool { .. } | Op::AvgPool { .. } | Op::GlobalAvgPool => {
                return Err(format!(
                    "node {i}: pooling of a spatial map in a token model"
                ))
            }
            _ => {}
        }
    }
    if !saw_tokens {
        return Err("no token sequence: not a transformer".into());
    }
    match shapes[graph.output()] {
        Shape::Flat { .. } => Ok(()),
        _ => Err("the output is not one vector per image".into()),
    }
}

/// Which values the backward must give a gradient: those computed from a norm's output.
fn grad_needed(graph: &Graph) -> Vec<bool> {
    let mut needs = vec![false; graph.nodes.len()];
    for (i, node) in graph.nodes.iter().enumerate() {
        needs[i] = matches!(node.op, Op::Norm(_)) || node.inputs.iter().any(|&v| needs[v]);
    }
    needs
}

/// Value `v` as a buffer of its own: taken when this is its last reader, else a copy.
fn own(values: &mut [Option<Vec<f32>>], uses: &[usize], v: ValueId) -> Vec<f32> {
    if uses[v] == 1 {
        values[v].take().expect("computed")
    } else {
        let src = values[v].as_deref().expect("computed");
        let mut out = pool::take_dirty(src.len());
        out.copy_from_slice(src);
        out
    }
}

/// Floats per image.
fn elements(shape: Shape) -> usize {
    match shape {
        Shape::Spatial { c, h, w } => c * h * w,
        Shape::Flat { c } => c,
        Shape::Tokens { t, c } => t * c,
    }
}

fn rows_per_image(shape: Shape) -> usize {
    match shape {
        Shape::Tokens { t, .. } => t,
        _ => 1,
    }
}

fn threads_for(rows: usize) -> usize {
    if rows >= PAR_ROWS {
        rayon::current_num_threads()
    } else {
        1
    }
}

/// The patch embedding: every patch of the normalised input (channel, row, column order, as the
/// convolution weight `[dim, c, p, p]` lays out its inputs) times the weight, plus the bias.
fn patch_embed(
    store: &Weights,
    weight: usize,
    bias: Option<usize>,
    p: usize,
    spec: &InputSpec,
    pixels: &[u8],
    n: usize,
) -> Vec<f32> {
    let (h, w, c) = (spec.height, spec.width, spec.channels);
    let (gh, gw) = (h / p, w / p);
    let k = c * p * p;
    let (scale, shift) = crate::input::pixel_affine(spec);
    let rows = n * gh * gw;
    let mut patches = pool::take_dirty(rows * k);
    patches.par_chunks_mut(k).enumerate().for_each(|(r, dst)| {
        let (img, cell) = (r / (gh * gw), r % (gh * gw));
        let (ti, tj) = (cell / gw, cell % gw);
        let src = &pixels[img * h * w * c..];
        for ch in 0..c {
            for di in 0..p {
                for dj in 0..p {
                    let px = src[((ti * p + di) * w + tj * p + dj) * c + ch];
                    dst[(ch * p + di) * p + dj] = px as f32 * scale[ch] - shift[ch];
                }
            }
        }
    });
    let wv = store.values(weight);
    let dim = wv.len() / k;
    let mut out = bias_rows(store, bias, rows, dim);
    let beta = if bias.is_some() { 1.0 } else { 0.0 };
    gemm_view(
        &mut out,
        dim,
        View::rows(&patches, rows, k, k),
        View::rows(wv, dim, k, k).t(),
        (beta, 1.0),
        threads_for(rows),
    );
    pool::give(patches);
    out
}

/// `rows × out` holding the bias in every row (zeros without one).
fn bias_rows(store: &Weights, bias: Option<usize>, rows: usize, out: usize) -> Vec<f32> {
    let mut v = pool::take_dirty(rows * out);
    match bias {
        Some(b) => {
            let b = store.values(b);
            v.chunks_exact_mut(out).for_each(|r| r.copy_from_slice(b));
        }
        None => v.fill(0.0),
    }
    v
}

/// `x · Wᵀ + b` for `rows` rows; `W` is `[out, in]`.
fn linear(store: &Weights, weight: usize, bias: Option<usize>, x: &[f32], rows: usize) -> Vec<f32> {
    let shape = store.shape(weight);
    let (o, k) = (shape[0], shape[1]);
    let w = store.values(weight);
    let mut out = bias_rows(store, bias, rows, o);
    let beta = if bias.is_some() { 1.0 } else { 0.0 };
    gemm_view(
        &mut out,
        o,
        View::rows(x, rows, k, k),
        View::rows(w, o, k, k).t(),
        (beta, 1.0),
        threads_for(rows),
    );
    out
}

/// The input gradient of [`linear`]: `g · W`.
fn linear_back(store: &Weights, weight: usize, g: &[f32], rows: usize) -> Vec<f32> {
    let shape = store.shape(weight);
    let (o, k) = (shape[0], shape[1]);
    let w = store.values(weight);
    let mut dx = pool::take_dirty(rows * k);
    gemm_view(
        &mut dx,
        k,
        View::rows(g, rows, o, o),
        View::rows(w, o, k, k),
        (0.0, 1.0),
        threads_for(rows),
    );
    dx
}

/// LayerNorm over each row of `c`: the output, and (when `keep`) `x̂` and `1/σ` per row.
fn layer_norm(
    store: &Weights,
    layer: &NormLayer,
    x: &[f32],
    keep: bool,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (gamma, beta) = (store.values(layer.weight), store.values(layer.bias));
    let c = gamma.len();
    let rows = x.len() / c;
    let mut out = pool::take_dirty(x.len());
    let mut xhat = if keep {
        pool::take_dirty(x.len())
    } else {
        Vec::new()
    };
    let mut rstd = vec![0f32; rows];
    let eps = layer.eps as f32;
    let block = LN_ROWS * c;
    if keep {
        out.par_chunks_mut(block)
            .zip(xhat.par_chunks_mut(block))
            .zip(rstd.par_chunks_mut(LN_ROWS))
            .zip(x.par_chunks(block))
            .for_each(|(((o, h), r), x)| lanes::layer_norm(o, h, r, x, gamma, beta, eps));
    } else {
        out.par_chunks_mut(block)
            .zip(rstd.par_chunks_mut(LN_ROWS))
            .zip(x.par_chunks(block))
            .for_each(|((o, r), x)| lanes::layer_norm(o, &mut [], r, x, gamma, beta, eps));
    }
    (out, xhat, rstd)
}

/// Multi-head attention on `qkv` (`n·t × 3c`: q, k, v, heads contiguous in each): the heads'
/// outputs side by side (`n·t × c`) and the softmax weights (`n × heads × t × t`).
fn attend(qkv: &[f32], n: usize, t: usize, c: usize, heads: usize) -> (Vec<f32>, Vec<f32>) {
    let d = c / heads;
    let scale = 1.0 / (d as f32).sqrt();
    let mut merged = pool::take_dirty(n * t * c);
    let mut probs = pool::take_dirty(n * heads * t * t);
    merged
        .par_chunks_mut(t * c)
        .zip(probs.par_chunks_mut(heads * t * t))
        .zip(qkv.par_chunks(t * 3 * c))
        .for_each(|((out, probs), qkv)| {
            for h in 0..heads {
                let p = &mut probs[h * t * t..(h + 1) * t * t];
                let q = View::rows(&qkv[h * d..], t, d, 3 * c);
                let k = View::rows(&qkv[c + h * d..], t, d, 3 * c);
                let v = View::rows(&qkv[2 * c + h * d..], t, d, 3 * c);
                gemm_view(p, t, q, k.t(), (0.0, scale), 1);
                lanes::softmax(p, t);
                gemm_view(
                    &mut out[h * d..],
                    c,
                    View::rows(p, t, t, t),
                    v,
                    (0.0, 1.0),
                    1,
                );
            }
        });
    (merged, probs)
}

/// The gradient of [`attend`] with respect to `qkv`, from that of its merged output.
fn attend_back(
    qkv: &[f32],
    probs: &[f32],
    dmerged: &[f32],
    n: usize,
    t: usize,
    c: usize,
    heads: usize,
) -> Vec<f32> {
    let d = c / heads;
    let scale = 1.0 / (d as f32).sqrt();
    let mut dqkv = pool::take_dirty(n * t * 3 * c);
    dqkv.par_chunks_mut(t * 3 * c)
        .zip(qkv.par_chunks(t * 3 * c))
        .zip(probs.par_chunks(heads * t * t))
        .zip(dmerged.par_chunks(t * c))
        .for_each(|(((dq, qkv), probs), dm)| {
            let mut ds = vec![0f32; t * t];
            for h in 0..heads {
                let p = View::rows(&probs[h * t * t..], t, t, t);
                let q = View::rows(&qkv[h * d..], t, d, 3 * c);
                let k = View::rows(&qkv[c + h * d..], t, d, 3 * c);
                let v = View::rows(&qkv[2 * c + h * d..], t, d, 3 * c);
                let dout = View::rows(&dm[h * d..], t, d, c);
                // dV = Pᵀ·dO; dP = dO·Vᵀ, then the softmax's Jacobian row by row.
                gemm_view(&mut dq[2 * c + h * d..], 3 * c, p.t(), dout, (0.0, 1.0), 1);
                gemm_view(&mut ds, t, dout, v.t(), (0.0, 1.0), 1);
                lanes::softmax_back(&mut ds, &probs[h * t * t..(h + 1) * t * t], t, scale);
                let dsv = View::rows(&ds, t, t, t);
                // dQ = dS·K, dK = dSᵀ·Q (the scale already in dS).
                gemm_view(&mut dq[h * d..], 3 * c, dsv, k, (0.0, 1.0), 1);
                gemm_view(&mut dq[c + h * d..], 3 * c, dsv.t(), q, (0.0, 1.0), 1);
            }
        });
    dqkv
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::{cpu, Arch, InputSpec, Model, ModelCard, NormMode};

    #[test]
    fn clones_share_the_frozen_host_copies_and_refresh_only_what_changed() {
        let arch = Arch::Vit {
            image_size: 8,
            patch: 4,
            in_channels: 3,
            dim: 8,
            depth: 1,
            heads: 2,
            mlp_dim: 16,
            num_classes: 3,
        };
        let input = InputSpec {
            height: 8,
            width: 8,
            channels: 3,
            mean: vec![0.5; 3],
            std: vec![0.5; 3],
        };
        let card = ModelCard::new("v", "foundation", arch, input, vec![], "test");
        let m = Model::init(card, &cpu(), 0).unwrap();
        let mut c = m.clone();
        let store = m.net().store();
        let (qkv, gamma) = (
            store.index_of("blocks.0.attn.qkv.weight").unwrap(),
            store.index_of("norm.weight").unwrap(),
        );
        let copy = |m: &Model, i: usize| m.host_weights.entries[i].as_ref().unwrap().1.clone();
        assert!(Arc::ptr_eq(&copy(&m, qkv), &copy(&c, qkv)));
        // The clone's γ changes: its next pass refreshes γ alone and still shares the rest.
        c.store_mut().set_values(gamma, vec![2.0; 8]);
        c.logits(&[7u8; 8 * 8 * 3], 1, NormMode::Running).unwrap();
        assert!(Arc::ptr_eq(&copy(&m, qkv), &copy(&c, qkv)));
        assert_eq!(*copy(&c, gamma), vec![2.0; 8]);
        assert_eq!(*copy(&m, gamma), vec![1.0; 8]);
    }
}
