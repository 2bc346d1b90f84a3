//! The one description of a network: a list of operations in forward (topological) order, each
//! reading earlier values by index, with its weights named in the [`Store`] by PyTorch names.
//!
//! Every way of running a network is derived from this list and nothing else: burn's generic
//! forward and autodiff ([`crate::net`]), the BatchNorm-folded inference path ([`crate::folded`]),
//! the hand-written norm-affine backward ([`crate::affine_backward`]), multiply-accumulate counts
//! and shapes ([`Graph::shapes`]), and loading by name (the store). An architecture
//! ([`crate::Arch`]) is a function that emits one through a [`Builder`]; adding one touches
//! nothing else.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use crate::norm::NormLayer;
use crate::store::{Kind, Store};

/// A value: the output of node `ValueId` (node 0 is the input image batch).
pub type ValueId = usize;

/// How a convolution pads its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// The same number of zero pixels on every side (PyTorch's `padding=p`).
    Explicit(usize),
    /// TensorFlow's "SAME": output `⌈in/stride⌉`, the total padding split with the odd pixel at the
    /// bottom/right. Depends on the input size, so it is resolved per geometry.
    TfSame,
}

impl Padding {
    /// `(before, after)` padding along one axis of length `len`.
    pub fn resolve(self, len: usize, kernel: usize, stride: usize) -> (usize, usize) {
        match self {
            Padding::Explicit(p) => (p, p),
            Padding::TfSame => {
                let out = len.div_ceil(stride);
                let total = ((out - 1) * stride + kernel).saturating_sub(len);
                (total / 2, total - total / 2)
            }
        }
    }
}

/// An element-wise activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    Relu,
    Relu6,
    /// `x·σ(x)` (swish).
    Silu,
    /// `x·relu6(x + 3)/6`.
    HardSwish,
    /// `x·Φ(x)` with the exact normal CDF (PyTorch's `nn.GELU()` default, timm's ViT MLP).
    Gelu,
}

impl Act {
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Act::Relu => x.max(0.0),
            Act::Relu6 => x.clamp(0.0, 6.0),
            Act::Silu => x / (1.0 + (-x).exp()),
            Act::HardSwish => x * (x + 3.0).clamp(0.0, 6.0) / 6.0,
            Act::Gelu => 0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2)),
        }
    }

    /// The derivative at pre-activation `x` (0 at the kinks, as PyTorch).
    pub fn derivative(self, x: f32) -> f32 {
        match self {
            Act::Relu => (x > 0.0) as u8 as f32,
            Act::Relu6 => (x > 0.0 && x < 6.0) as u8 as f32,
            Act::Silu => {
                let s = 1.0 / (1.0 + (-x).exp());
                s * (1.0 + x * (1.0 - s))
            }
            Act::HardSwish => {
                if x < -3.0 {
                    0.0
                } else if x > 3.0 {
                    1.0
                } else {
                    (2.0 * x + 3.0) / 6.0
                }
            }
            Act::Gelu => {
                let cdf = 0.5 * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2));
                let pdf = (-0.5 * x * x).exp() * 0.398_942_3; // 1/√(2π)
                cdf + x * pdf
            }
        }
    }

    /// For the piecewise-linear activations, whether the derivative at the pre-activation is 1
    /// can be read from the output alone (`0 < y` for ReLU, `0 < y < 6` for ReLU6), so the
    /// backward needs no copy of the pre-activation.
    pub(crate) fn passes_from_output(self, y: f32) -> Option<bool> {
        match self {
            Act::Relu => Some(y > 0.0),
            Act::Relu6 => Some(y > 0.0 && y < 6.0),
            Act::Silu | Act::HardSwish | Act::Gelu => None,
        }
    }
}

/// One operation.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// The normalised NCHW image batch.
    Input {
        channels: usize,
    },
    /// A 2-D convolution; `weight` is `[cout, cin/groups, k, k]` in the store.
    Conv {
        weight: usize,
        bias: Option<usize>,
        kernel: usize,
        stride: usize,
        padding: Padding,
        groups: usize,
    },
    /// A normalization layer (index into [`crate::Net::norm_layers`]).
    Norm(usize),
    Act(Act),
    MaxPool {
        kernel: usize,
        stride: usize,
        padding: usize,
    },
    /// Average pooling, the padding counted in the divisor (PyTorch's `count_include_pad`).
    /// burn's generic path only: a graph with one runs there ([`crate::Model::hand_written_paths`]
    /// says so); no architecture uses it yet.
    AvgPool {
        kernel: usize,
        stride: usize,
        padding: usize,
    },
    /// Mean over the spatial positions: `[n, c, h, w]` → `[n, c]`.
    GlobalAvgPool,
    /// `inputs[0] + inputs[1]`, same shape.
    Add,
    /// `x · wᵀ + b` on `[n, features]`, or on every token of `[n, tokens, features]`; `weight`
    /// is `[out, in]`.
    Linear {
        weight: usize,
        bias: Option<usize>,
    },
    /// A ViT's patch grid as a token sequence: `[n, c, h, w]` → `[n, h·w, c]` (row-major
    /// positions, as timm's `flatten(2).transpose(1, 2)`).
    ToTokens,
    /// Prepends a learned `[1, 1, c]` token (timm's `cls_token`).
    ClassToken {
        token: usize,
    },
    /// Adds a learned `[1, tokens, c]` table (timm's `pos_embed`); the token count must match,
    /// which fixes the input resolution.
    PosEmbed {
        table: usize,
    },
    /// Multi-head self-attention with a fused `qkv` projection (`[3c, c]`, q then k then v, heads
    /// contiguous within each) and an output projection `proj` (`[c, c]`), as timm's `Attention`.
    Attention {
        qkv: usize,
        qkv_bias: Option<usize>,
        proj: usize,
        proj_bias: Option<usize>,
        heads: usize,
    },
    /// The first token of each sequence: `[n, tokens, c]` → `[n, c]` (timm's `global_pool='token'`).
    ClassPool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub op: Op,
    pub inputs: Vec<ValueId>,
}

/// The shape of one value for one input geometry (batch dimension left out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Spatial {
        c: usize,
        h: usize,
        w: usize,
    },
    Flat {
        c: usize,
    },
    /// A token sequence: `t` tokens of `c` channels.
    Tokens {
        t: usize,
        c: usize,
    },
}

impl Shape {
    pub fn channels(self) -> usize {
        match self {
            Shape::Spatial { c, .. } | Shape::Flat { c } | Shape::Tokens { c, .. } => c,
        }
    }
}

/// The network: nodes in forward order; the last node's value is the logits.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Graph {
    pub nodes: Vec<Node>,
}

impl Graph {
    pub fn output(&self) -> ValueId {
        self.nodes.len() - 1
    }

    /// How many nodes read each value (the output counts as read once, by the caller).
    pub(crate) fn uses(&self) -> Vec<usize> {
        let mut uses = vec![0; self.nodes.len()];
        for node in &self.nodes {
            for &i in &node.inputs {
                uses[i] += 1;
            }
        }
        uses[self.output()] += 1;
        uses
    }

    /// Every value's shape for `h × w` input images, with the multiply-accumulates of each node
    /// per image; an error names the first node whose inputs do not fit it.
    pub fn shapes(&self, store: &Store, h: usize, w: usize) -> Result<(Vec<Shape>, u64), String> {
        let mut shapes: Vec<Shape> = Vec::with_capacity(self.nodes.len());
        let mut macs = 0u64;
        for (i, node) in self.nodes.iter().enumerate() {
            let input = |k: usize| shapes[node.inputs[k]];
            let spatial = |k: usize| match input(k) {
                Shape::Spatial { c, h, w } => Ok((c, h, w)),
                _ => Err(format!("node {i} ({:?}) needs a spatial input", node.op)),
            };
            let tokens = |k: usize| match input(k) {
                Shape::Tokens { t, c } => Ok((t, c)),
                _ => Err(format!("node {i} ({:?}) needs a token sequence", node.op)),
            };
            let shape = match &node.op {
                Op::Input { channels } => Shape::Spatial { c: *channels, h, w },
                Op::Conv {
                    weight,
                    kernel,
                    stride,
                    padding,
                    groups,
                    ..
                } => {
                    let (c, ih, iw) = spatial(0)?;
                    let ws = store.shape(*weight);
                    if ws[1] * groups != c {
                        return Err(format!(
                            "{}: {} input channels, the weight expects {}",
                            store.name(*weight),
                            c,
                            ws[1] * groups
                        ));
                    }
                    let out = |len: usize| {
                        let (a, b) = padding.resolve(len, *kernel, *stride);
                        (len + a + b)
                            .checked_sub(*kernel)
                            .map(|v| v / stride + 1)
                            .ok_or_else(|| {
                                format!(
                                    "{}: a {kernel}×{kernel} kernel does not fit a {ih}×{iw} input",
                                    store.name(*weight)
                                )
                            })
                    };
                    let (oh, ow) = (out(ih)?, out(iw)?);
                    macs += (ws[0] * ws[1] * kernel * kernel * oh * ow) as u64;
                    Shape::Spatial {
                        c: ws[0],
                        h: oh,
                        w: ow,
                    }
                }
                Op::Norm(_) | Op::Act(_) => input(0),
                Op::MaxPool {
                    kernel,
                    stride,
                    padding,
                }
                | Op::AvgPool {
                    kernel,
                    stride,
                    padding,
                } => {
                    let (c, ih, iw) = spatial(0)?;
                    let out = |len: usize| (len + 2 * padding).saturating_sub(*kernel) / stride + 1;
                    Shape::Spatial {
                        c,
                        h: out(ih),
                        w: out(iw),
                    }
                }
                Op::GlobalAvgPool => Shape::Flat { c: spatial(0)?.0 },
                Op::Add => {
                    if input(0) != input(1) {
                        return Err(format!("node {i}: adding {:?} to {:?}", input(0), input(1)));
                    }
                    input(0)
                }
                Op::Linear { weight, .. } => {
                    let ws = store.shape(*weight);
                    let (t, c) = match input(0) {
                        Shape::Flat { c } => (None, c),
                        Shape::Tokens { t, c } => (Some(t), c),
                        Shape::Spatial { .. } => {
                            return Err(format!("{}: needs a flat input", store.name(*weight)))
                        }
                    };
                    if c != ws[1] {
                        return Err(format!(
                            "{}: {c} input features, the weight expects {}",
                            store.name(*weight),
                            ws[1]
                        ));
                    }
                    macs += (t.unwrap_or(1) * ws[0] * ws[1]) as u64;
                    match t {
                        Some(t) => Shape::Tokens { t, c: ws[0] },
                        None => Shape::Flat { c: ws[0] },
                    }
                }
                Op::ToTokens => {
                    let (c, h, w) = spatial(0)?;
                    Shape::Tokens { t: h * w, c }
                }
                Op::ClassToken { token } => {
                    let (t, c) = tokens(0)?;
                    if store.shape(*token) != [1, 1, c] {
                        return Err(format!(
                            "{}: shape {:?}, the tokens have {c} channels",
                            store.name(*token),
                            store.shape(*token)
                        ));
                    }
                    Shape::Tokens { t: t + 1, c }
                }
                Op::PosEmbed { table } => {
                    let (t, c) = tokens(0)?;
                    let ts = store.shape(*table);
                    if ts != [1, t, c] {
                        return Err(format!(
                            "{}: {} positions of {} channels, but a {h}×{w} input makes {t} \
                             tokens of {c}; the position table fixes the input resolution",
                            store.name(*table),
                            ts.get(1).copied().unwrap_or(0),
                            ts.get(2).copied().unwrap_or(0),
                        ));
                    }
                    input(0)
                }
                Op::Attention {
                    qkv, proj, heads, ..
                } => {
                    let (t, c) = tokens(0)?;
                    if store.shape(*qkv) != [3 * c, c] || store.shape(*proj) != [c, c] {
                        return Err(format!(
                            "{}: shape {:?} and {:?}, the tokens have {c} channels",
                            store.name(*qkv),
                            store.shape(*qkv),
                            store.shape(*proj)
                        ));
                    }
                    if c % heads != 0 {
                        return Err(format!(
                            "{}: {c} channels in {heads} heads",
                            store.name(*qkv)
                        ));
                    }
                    // The projections, then q·kᵀ and the weighted sum of v over all heads.
                    macs += (t * 4 * c * c + 2 * t * t * c) as u64;
                    input(0)
                }
                Op::ClassPool => Shape::Flat { c: tokens(0)?.1 },
            };
            shapes.push(shape);
        }
        Ok((shapes, macs))
    }
}

/// Emits a graph and its named, freshly initialised weights. Parameters are created (and the
/// initialisation RNG drawn) in call order, so an architecture's call order fixes both the store
/// order and what a seed produces.
pub(crate) struct Builder {
    pub graph: Graph,
    pub store: Store,
    pub norms: Vec<NormLayer>,
    channels: Vec<usize>,
    rng: ChaCha8Rng,
}

impl Builder {
    pub fn new(device: &burn::tensor::Device, seed: u64) -> Builder {
        Builder {
            graph: Graph::default(),
            store: Store::new(device.clone()),
            norms: Vec::new(),
            channels: Vec::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    fn node(&mut self, op: Op, inputs: Vec<ValueId>, channels: usize) -> ValueId {
        self.graph.nodes.push(Node { op, inputs });
        self.channels.push(channels);
        self.graph.nodes.len() - 1
    }

    pub fn channels(&self, x: ValueId) -> usize {
        self.channels[x]
    }

    pub fn input(&mut self, channels: usize) -> ValueId {
        assert!(self.graph.nodes.is_empty(), "the input is node 0");
        self.node(Op::Input { channels }, vec![], channels)
    }

    /// A convolution without bias, Kaiming-normal (fan-out, ReLU gain: torchvision's init).
    #[allow(clippy::too_many_arguments)]
    pub fn conv(
        &mut self,
        x: ValueId,
        name: &str,
        cout: usize,
        kernel: usize,
        stride: usize,
        padding: Padding,
        groups: usize,
    ) -> ValueId {
        let cin = self.channels[x] / groups;
        let std = (2.0 / (cout * kernel * kernel) as f32).sqrt();
        let normal = Normal::new(0.0f32, std).expect("finite std");
        let values: Vec<f32> = (0..cout * cin * kernel * kernel)
            .map(|_| normal.sample(&mut self.rng))
            .collect();
        let weight = self.store.push(
            format!("{name}.weight"),
            Kind::ConvWeight,
            vec![cout, cin, kernel, kernel],
            values,
        );
        let op = Op::Conv {
            weight,
            bias: None,
            kernel,
            stride,
            padding,
            groups,
        };
        self.node(op, vec![x], cout)
    }

    /// A convolution with a bias (a ViT's patch embedding): Kaiming-normal weight, zero bias.
    pub fn conv_with_bias(
        &mut self,
        x: ValueId,
        name: &str,
        cout: usize,
        kernel: usize,
        stride: usize,
    ) -> ValueId {
        let y = self.conv(x, name, cout, kernel, stride, Padding::Explicit(0), 1);
        let bias = self.store.push(
            format!("{name}.bias"),
            Kind::ConvBias,
            vec![cout],
            vec![0.0; cout],
        );
        if let Op::Conv { bias: b, .. } = &mut self.graph.nodes[y].op {
            *b = Some(bias);
        }
        y
    }

    /// A LayerNorm over the channels of each token (γ 1, β 0) with this `eps`.
    pub fn layer_norm(&mut self, x: ValueId, name: &str, eps: f64) -> ValueId {
        let c = self.channels[x];
        self.norms
            .push(NormLayer::layer_norm(&mut self.store, name, c, eps));
        let n = self.norms.len() - 1;
        self.node(Op::Norm(n), vec![x], c)
    }

    pub fn tokens(&mut self, x: ValueId) -> ValueId {
        self.unary(x, Op::ToTokens)
    }

    /// timm's initialisation of its token tables: normal, σ 0.02 (untruncated here; a trained
    /// checkpoint replaces it).
    fn embedding(&mut self, name: &str, shape: Vec<usize>) -> usize {
        let normal = Normal::new(0.0f32, 0.02).expect("finite std");
        let n = shape.iter().product();
        let values = (0..n).map(|_| normal.sample(&mut self.rng)).collect();
        self.store.push(name.into(), Kind::Embedding, shape, values)
    }

    pub fn class_token(&mut self, x: ValueId, name: &str) -> ValueId {
        let c = self.channels[x];
        let token = self.embedding(name, vec![1, 1, c]);
        self.unary(x, Op::ClassToken { token })
    }

    pub fn pos_embed(&mut self, x: ValueId, name: &str, tokens: usize) -> ValueId {
        let c = self.channels[x];
        let table = self.embedding(name, vec![1, tokens, c]);
        self.unary(x, Op::PosEmbed { table })
    }

    /// timm's `Attention` under `name` (`{name}.qkv`, `{name}.proj`, both with bias).
    pub fn attention(&mut self, x: ValueId, name: &str, heads: usize) -> ValueId {
        let c = self.channels[x];
        let (qkv, qkv_bias) = self.linear_params(&format!("{name}.qkv"), c, 3 * c);
        let (proj, proj_bias) = self.linear_params(&format!("{name}.proj"), c, c);
        let op = Op::Attention {
            qkv,
            qkv_bias: Some(qkv_bias),
            proj,
            proj_bias: Some(proj_bias),
            heads,
        };
        self.unary(x, op)
    }

    pub fn class_pool(&mut self, x: ValueId) -> ValueId {
        self.unary(x, Op::ClassPool)
    }

    /// A BatchNorm2d (γ 1, β 0, running mean 0, variance 1) with this `eps`.
    pub fn batch_norm(&mut self, x: ValueId, name: &str, eps: f64) -> ValueId {
        let c = self.channels[x];
        self.norms
            .push(NormLayer::batch_norm(&mut self.store, name, c, eps));
        let n = self.norms.len() - 1;
        self.node(Op::Norm(n), vec![x], c)
    }

    pub fn act(&mut self, x: ValueId, act: Act) -> ValueId {
        self.unary(x, Op::Act(act))
    }

    pub fn add(&mut self, a: ValueId, b: ValueId) -> ValueId {
        let c = self.channels[a];
        self.node(Op::Add, vec![a, b], c)
    }

    /// A node that keeps its input's channel count.
    fn unary(&mut self, x: ValueId, op: Op) -> ValueId {
        let c = self.channels[x];
        self.node(op, vec![x], c)
    }

    pub fn max_pool(
        &mut self,
        x: ValueId,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> ValueId {
        self.unary(
            x,
            Op::MaxPool {
                kernel,
                stride,
                padding,
            },
        )
    }

    // No architecture average-pools yet; the op is tested in net.rs.
    #[allow(dead_code)]
    pub fn avg_pool(
        &mut self,
        x: ValueId,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> ValueId {
        self.unary(
            x,
            Op::AvgPool {
                kernel,
                stride,
                padding,
            },
        )
    }

    pub fn global_avg_pool(&mut self, x: ValueId) -> ValueId {
        self.unary(x, Op::GlobalAvgPool)
    }

    /// PyTorch's `nn.Linear` default: U(−1/√fan_in, 1/√fan_in) for weight and bias.
    pub fn linear(&mut self, x: ValueId, name: &str, out: usize) -> ValueId {
        let (weight, bias) = self.linear_params(name, self.channels[x], out);
        let op = Op::Linear {
            weight,
            bias: Some(bias),
        };
        self.node(op, vec![x], out)
    }

    /// `{name}.weight` `[out, cin]` and `{name}.bias` `[out]`, initialised as [`Self::linear`].
    fn linear_params(&mut self, name: &str, cin: usize, out: usize) -> (usize, usize) {
        let bound = 1.0 / (cin as f32).sqrt();
        let w: Vec<f32> = (0..out * cin)
            .map(|_| self.rng.random_range(-bound..bound))
            .collect();
        let b: Vec<f32> = (0..out)
            .map(|_| self.rng.random_range(-bound..bound))
            .collect();
        let weight = self.store.push(
            format!("{name}.weight"),
            Kind::LinearWeight,
            vec![out, cin],
            w,
        );
        let bias = self
            .store
            .push(format!("{name}.bias"), Kind::LinearBias, vec![out], b);
        (weight, bias)
    }
}
