//! A network on a burn device: its [`Graph`], its weights and its norm layers, with burn's
//! generic forward (every device, every op) and autodiff w.r.t. any parameter set.

use burn::tensor::activation::{gelu, hard_swish, relu, relu6, silu, softmax};
use burn::tensor::module::{adaptive_avg_pool2d, avg_pool2d, conv2d, max_pool2d};
use burn::tensor::ops::{AvgPoolOptions, ConvOptions, MaxPoolOptions, PadMode};
use burn::tensor::{Device, Tensor, TensorData};

use crate::arch::Arch;
use crate::graph::{Act, Builder, Graph, Op, Shape};
use crate::norm::{NormLayer, NormMode};
use crate::store::{Store, Trainable};

/// A network: architecture, the graph it emits, weights and norm layers.
#[derive(Debug, Clone)]
pub struct Net {
    arch: Arch,
    pub(crate) graph: Graph,
    pub(crate) store: Store,
    pub(crate) norms: Vec<NormLayer>,
    /// Momentum of running-statistics updates (PyTorch convention); 1.0 replaces them outright.
    pub(crate) stats_momentum: f32,
}

/// Result of [`Net::backward`]: the loss value, the (detached) logits and the gradients.
pub struct Backward {
    pub loss: f32,
    pub logits: Tensor<2>,
    pub grads: Vec<(usize, Tensor<1>)>,
}

/// A value during the generic forward.
#[derive(Clone)]
enum Value {
    Spatial(Tensor<4>),
    Flat(Tensor<2>),
    Tokens(Tensor<3>),
}

impl Value {
    fn spatial(self) -> Tensor<4> {
        match self {
            Value::Spatial(t) => t,
            _ => unreachable!("shapes are checked when the graph is built"),
        }
    }

    fn tokens(self) -> Tensor<3> {
        match self {
            Value::Tokens(t) => t,
            _ => unreachable!("shapes are checked when the graph is built"),
        }
    }
}

impl Net {
    /// A freshly initialised network (deterministic in `seed`).
    pub fn new(arch: &Arch, device: &Device, seed: u64) -> Result<Self, String> {
        arch.validate()?;
        let mut b = Builder::new(device, seed);
        arch.build(&mut b);
        Ok(Net {
            arch: arch.clone(),
            graph: b.graph,
            store: b.store,
            norms: b.norms,
            stats_momentum: crate::norm::BN_MOMENTUM,
        })
    }

    pub fn arch(&self) -> &Arch {
        &self.arch
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    pub fn device(&self) -> &Device {
        self.store.device()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn store_mut(&mut self) -> &mut Store {
        &mut self.store
    }

    /// The normalization layers, in forward order.
    pub fn norm_layers(&self) -> &[NormLayer] {
        &self.norms
    }

    /// Every value's shape and the multiply-accumulates per image at `height × width`.
    pub fn shapes(&self, height: usize, width: usize) -> Result<(Vec<Shape>, u64), String> {
        self.graph.shapes(&self.store, height, width)
    }

    /// Replaces every running statistic with this batch's (a batch-statistics forward with
    /// momentum 1). The released CEMA code starts adaptation this way: source statistics are
    /// discarded in favour of the first test batch's, which is worth more than any amount of
    /// affine tuning under a strong shift. Returns the batch-statistics logits.
    pub fn init_running_stats(&mut self, x: Tensor<4>) -> Tensor<2> {
        let saved = self.stats_momentum;
        self.stats_momentum = 1.0;
        let out = self.forward(x, NormMode::Batch, true);
        self.stats_momentum = saved;
        out
    }

    /// Running-statistics logits, then the running statistics move toward this batch's with
    /// `momentum` (the TBR forward value, no gradient): a forward-only way for an edge to follow
    /// a drifting input distribution without ever predicting from batch statistics.
    pub fn forward_tracking(&mut self, x: Tensor<4>, momentum: f32) -> Tensor<2> {
        let saved = self.stats_momentum;
        self.stats_momentum = momentum;
        let out = self.forward(x, NormMode::Tbr, true);
        self.stats_momentum = saved;
        out
    }

    /// Logits for an NCHW batch of normalised images.
    ///
    /// `update_stats` lets `Batch`/`Tbr` mode move the running statistics (ignored for `Running`).
    pub fn forward(&mut self, x: Tensor<4>, mode: NormMode, update_stats: bool) -> Tensor<2> {
        let mut uses = self.graph.uses();
        let mut values: Vec<Option<Value>> = vec![None; self.graph.nodes.len()];
        let momentum = update_stats.then_some(self.stats_momentum);
        for i in 0..self.graph.nodes.len() {
            let node = self.graph.nodes[i].clone();
            // The last reader of a value takes it (no clone keeps a dead tensor alive).
            let mut take = |k: usize| {
                let v = node.inputs[k];
                uses[v] -= 1;
                if uses[v] == 0 {
                    values[v].take().expect("value computed before use")
                } else {
                    values[v].clone().expect("value computed before use")
                }
            };
            let out = match &node.op {
                Op::Input { .. } => Value::Spatial(x.clone()),
                Op::Conv {
                    weight,
                    bias,
                    kernel,
                    stride,
                    padding,
                    groups,
                } => {
                    let mut x = take(0).spatial();
                    let [_, _, h, w] = x.dims();
                    let (t, b) = padding.resolve(h, *kernel, *stride);
                    let (l, r) = padding.resolve(w, *kernel, *stride);
                    let sym = if t == b && l == r && t == l {
                        t
                    } else {
                        x = x.pad([(t, b), (l, r)], PadMode::Constant(0.0));
                        0
                    };
                    let opts = ConvOptions::new([*stride; 2], [sym; 2], [1, 1], *groups);
                    let bias = bias.map(|i| self.store.get1(i));
                    Value::Spatial(conv2d(x, self.store.get4(*weight), bias, opts))
                }
                Op::Norm(n) => {
                    let layer = self.norms[*n].clone();
                    match take(0) {
                        Value::Tokens(x) => Value::Tokens(layer.forward_tokens(&self.store, x)),
                        x => Value::Spatial(layer.forward(
                            &mut self.store,
                            x.spatial(),
                            mode,
                            momentum,
                        )),
                    }
                }
                Op::Act(a) => match take(0) {
                    Value::Spatial(t) => Value::Spatial(act(t, *a)),
                    Value::Flat(t) => Value::Flat(act(t, *a)),
                    Value::Tokens(t) => Value::Tokens(act(t, *a)),
                },
                Op::MaxPool {
                    kernel,
                    stride,
                    padding,
                } => {
                    let mut opts = MaxPoolOptions::new([*kernel; 2]);
                    opts.stride = [*stride; 2];
                    opts.padding = [(*padding, *padding); 2];
                    Value::Spatial(max_pool2d(take(0).spatial(), opts))
                }
                Op::AvgPool {
                    kernel,
                    stride,
                    padding,
                } => {
                    let mut opts = AvgPoolOptions::new([*kernel; 2]);
                    opts.stride = [*stride; 2];
                    opts.padding = [(*padding, *padding); 2];
                    opts.count_include_pad = true;
                    Value::Spatial(avg_pool2d(take(0).spatial(), opts))
                }
                Op::GlobalAvgPool => {
                    let x = take(0).spatial();
                    let [n, c, _, _] = x.dims();
                    Value::Flat(adaptive_avg_pool2d(x, [1, 1]).reshape([n, c]))
                }
                Op::Add => match (take(0), take(1)) {
                    (Value::Spatial(a), Value::Spatial(b)) => Value::Spatial(a + b),
                    (Value::Flat(a), Value::Flat(b)) => Value::Flat(a + b),
                    (Value::Tokens(a), Value::Tokens(b)) => Value::Tokens(a + b),
                    _ => unreachable!("shapes are checked when the graph is built"),
                },
                Op::Linear { weight, bias } => match take(0) {
                    Value::Flat(x) => Value::Flat(self.linear(x, *weight, *bias)),
                    Value::Tokens(x) => Value::Tokens(self.linear_tokens(x, *weight, *bias)),
                    Value::Spatial(_) => unreachable!("shapes are checked when the graph is built"),
                },
                Op::ToTokens => {
                    let x = take(0).spatial();
                    let [n, c, h, w] = x.dims();
                    Value::Tokens(x.reshape([n, c, h * w]).swap_dims(1, 2))
                }
                Op::ClassToken { token } => {
                    let x = take(0).tokens();
                    let [n, _, c] = x.dims();
                    let cls = self.store.get3(*token).expand([n, 1, c]);
                    Value::Tokens(Tensor::cat(vec![cls, x], 1))
                }
                Op::PosEmbed { table } => Value::Tokens(take(0).tokens() + self.store.get3(*table)),
                Op::Attention {
                    qkv,
                    qkv_bias,
                    proj,
                    proj_bias,
                    heads,
                } => {
                    let x = take(0).tokens();
                    Value::Tokens(self.attention(x, *qkv, *qkv_bias, *proj, *proj_bias, *heads))
                }
                Op::ClassPool => {
                    let x = take(0).tokens();
                    let [n, _, c] = x.dims();
                    Value::Flat(x.narrow(1, 0, 1).reshape([n, c]))
                }
            };
            values[i] = Some(out);
        }
        match values.pop().flatten() {
            Some(Value::Flat(logits)) => logits,
            _ => unreachable!("an architecture ends in a classifier"),
        }
    }

    fn linear(&self, x: Tensor<2>, weight: usize, bias: Option<usize>) -> Tensor<2> {
        let y = x.matmul(self.store.get2(weight).transpose());
        match bias {
            Some(b) => y + self.store.get1(b).unsqueeze_dim::<2>(0),
            None => y,
        }
    }

    /// [`Self::linear`] on every token of `[n, t, c]`.
    fn linear_tokens(&self, x: Tensor<3>, weight: usize, bias: Option<usize>) -> Tensor<3> {
        let [n, t, c] = x.dims();
        let y = self.linear(x.reshape([n * t, c]), weight, bias);
        let out = y.dims()[1];
        y.reshape([n, t, out])
    }

    /// timm's `Attention.forward`: q, k, v from one projection, `softmax(q·kᵀ/√d)·v` per head,
    /// the heads concatenated and projected.
    fn attention(
        &self,
        x: Tensor<3>,
        qkv: usize,
        qkv_bias: Option<usize>,
        proj: usize,
        proj_bias: Option<usize>,
        heads: usize,
    ) -> Tensor<3> {
        let [n, t, c] = x.dims();
        let d = c / heads;
        let qkv = self.linear_tokens(x, qkv, qkv_bias);
        // [n, t, 3c] → three [n, heads, t, d].
        let part = |k: usize| {
            qkv.clone()
                .narrow(2, k * c, c)
                .reshape([n, t, heads, d])
                .swap_dims(1, 2)
        };
        let (q, k, v) = (part(0), part(1), part(2));
        let scores = (q * (1.0 / (d as f64).sqrt())).matmul(k.swap_dims(2, 3));
        let mixed = softmax(scores, 3).matmul(v);
        let merged = mixed.swap_dims(1, 2).reshape([n, t, c]);
        self.linear_tokens(merged, proj, proj_bias)
    }

    /// Forward with `which` parameters tracked, `loss_fn(logits)` → scalar, backward.
    /// Every other weight is a constant to autodiff (no gradient work for frozen convolutions).
    pub fn backward<F>(
        &mut self,
        x: Tensor<4>,
        mode: NormMode,
        update_stats: bool,
        which: Trainable,
        loss_fn: F,
    ) -> Backward
    where
        F: FnOnce(Tensor<2>) -> Tensor<1>,
    {
        let ids = self.store.track(which);
        let logits = self.forward(x, mode, update_stats);
        let loss = loss_fn(logits.clone());
        let grads_all = loss.backward();
        let grads = ids
            .iter()
            .filter_map(|&i| self.store.get1(i).grad(&grads_all).map(|g| (i, g)))
            .collect();
        let loss_value = crate::store::tensor_to_vec(loss.clone().without_autodiff())[0];
        self.store.untrack();
        Backward {
            loss: loss_value,
            logits: logits.detach().without_autodiff(),
            grads,
        }
    }
}

fn act<const D: usize>(x: Tensor<D>, a: Act) -> Tensor<D> {
    match a {
        Act::Relu => relu(x),
        Act::Relu6 => relu6(x),
        Act::Silu => silu(x),
        Act::HardSwish => hard_swish(x),
        Act::Gelu => gelu(x),
    }
}

/// Softmax cross-entropy against integer labels, mean over the batch.
pub fn cross_entropy(logits: Tensor<2>, labels: &[u32]) -> Tensor<1> {
    let [n, c] = logits.dims();
    let mut onehot = vec![0f32; n * c];
    for (i, &y) in labels.iter().enumerate() {
        onehot[i * c + y as usize] = 1.0;
    }
    let onehot = Tensor::<2>::from_data(TensorData::new(onehot, [n, c]), &logits.device());
    let logp = burn::tensor::activation::log_softmax(logits, 1);
    (logp * onehot).sum().neg() / n as f32
}

/// Row-wise argmax of host logits.
pub fn argmax_rows(logits: &[f32], classes: usize) -> Vec<u32> {
    logits
        .chunks_exact(classes)
        .map(|row| {
            let mut best = 0;
            for (j, v) in row.iter().enumerate() {
                if *v > row[best] {
                    best = j;
                }
            }
            best as u32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Tensor, TensorData};

    use crate::graph::Builder;
    use crate::norm::NormMode;
    use crate::plan::Plan;

    #[test]
    fn average_pooling_counts_the_padding_and_runs_on_the_generic_path_only() {
        let device = crate::cpu();
        let mut b = Builder::new(&device, 0);
        let x = b.input(1);
        let x = b.avg_pool(x, 2, 2, 1);
        let x = b.global_avg_pool(x);
        b.linear(x, "fc", 1);
        let (graph, mut store) = (b.graph, b.store);
        store.set_values(0, vec![1.0]);
        store.set_values(1, vec![0.0]);
        // A 2×2 image of ones: every 2×2 window at padding 1 holds one pixel, so each of the
        // 2×2 outputs is 1/4 when the padding counts, 1 when it does not.
        let mut net = super::Net {
            arch: crate::Arch::resnet8(1, 1),
            graph,
            store,
            norms: Vec::new(),
            stats_momentum: crate::norm::BN_MOMENTUM,
        };
        let input = Tensor::<4>::from_data(TensorData::new(vec![1.0f32; 4], [1, 1, 2, 2]), &device);
        let out = crate::store::tensor_to_vec(net.forward(input, NormMode::Running, false));
        assert!((out[0] - 0.25).abs() < 1e-6, "{out:?}");
        let err = Plan::new(&net.graph, &net.store, &net.norms, 2, 2).unwrap_err();
        assert!(err.contains("average pooling"), "{err}");
    }
}
