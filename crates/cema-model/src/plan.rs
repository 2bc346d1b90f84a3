//! A [`Graph`] compiled for the hand-written NHWC paths at one input size: the nodes fused into
//! units (a convolution with the BatchNorm after it, the residual added to it, and the
//! activation after that, are one pass over the output), every value's shape and the zero
//! border its buffer carries (the widest padding among its readers, at least 1 so a 3×3
//! convolution reads it without copies). The folded inference net ([`crate::folded`]) and the
//! norm-affine backward ([`crate::affine_backward`]) both run a plan; neither knows any
//! architecture.

use crate::graph::{Act, Graph, Op, Shape, ValueId};
use crate::nhwc::{DwConv, FConv, Geo, Kernel, Window};
use crate::norm::{NormKind, NormLayer};
use crate::store::Store;

/// What one unit computes.
#[derive(Debug, Clone)]
pub(crate) enum UnitKind {
    /// `act(norm(conv(inputs[0])) [+ inputs[1]])`.
    Conv {
        weight: usize,
        bias: Option<usize>,
        win: Window,
        depthwise: bool,
        norm: Option<usize>,
        act: Option<Act>,
    },
    MaxPool {
        win: Window,
    },
    GlobalAvgPool,
    Linear {
        weight: usize,
        bias: Option<usize>,
    },
    /// `act(inputs[0] + inputs[1])`.
    Add {
        act: Option<Act>,
    },
    Act(Act),
}

#[derive(Debug, Clone)]
pub(crate) struct Unit {
    pub kind: UnitKind,
    pub inputs: Vec<ValueId>,
    pub output: ValueId,
}

impl Unit {
    /// The residual added inside a convolution unit.
    pub fn residual(&self) -> Option<ValueId> {
        match self.kind {
            UnitKind::Conv { .. } => self.inputs.get(1).copied(),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub shapes: Vec<Shape>,
    /// Zero border of each spatial value's buffer.
    pub border: Vec<usize>,
    pub units: Vec<Unit>,
    /// How many units read each value (the output counts once, for the caller).
    pub uses: Vec<usize>,
    pub output: ValueId,
}

impl Plan {
    /// Compiles `graph` for `h × w` inputs. An error says which node the hand-written paths do
    /// not implement (the caller then takes burn's generic path).
    pub fn new(
        graph: &Graph,
        store: &Store,
        norms: &[NormLayer],
        h: usize,
        w: usize,
    ) -> Result<Plan, String> {
        let (shapes, _) = graph.shapes(store, h, w)?;
        let nodes = &graph.nodes;
        let mut consumers: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
        for (i, node) in nodes.iter().enumerate() {
            for &v in &node.inputs {
                consumers[v].push(i);
            }
        }
        // The single consumer of `v`, if `v` is read exactly once and is not the output.
        let only = |v: usize| match consumers[v].as_slice() {
            [c] if v != graph.output() => Some(*c),
            _ => None,
        };
        let mut fused = vec![false; nodes.len()];
        let mut units = Vec::new();
        for (i, node) in nodes.iter().enumerate() {
            if fused[i] {
                continue;
            }
            let (kind, inputs, mut last) = match &node.op {
                Op::Input { .. } => continue,
                Op::Conv {
                    weight,
                    bias,
                    kernel,
                    stride,
                    padding,
                    groups,
                } => {
                    let Shape::Spatial { c: cin, h, w } = shapes[node.inputs[0]] else {
                        unreachable!("checked by shapes")
                    };
                    let cout = shapes[i].channels();
                    let depthwise = *groups > 1;
                    if depthwise && !(*groups == cin && cout == cin) {
                        return Err(format!(
                            "{}: grouped convolution ({groups} groups, {cin}→{cout} channels) other than depthwise",
                            store.name(*weight)
                        ));
                    }
                    let (t, b) = padding.resolve(h, *kernel, *stride);
                    let (l, r) = padding.resolve(w, *kernel, *stride);
                    let win = Window {
                        k: *kernel,
                        stride: *stride,
                        pads: [t, b, l, r],
                    };
                    let mut last = i;
                    let mut norm = None;
                    let mut inputs = vec![node.inputs[0]];
                    if let Some(j) = only(last).filter(|&j| !fused[j]) {
                        if let Op::Norm(n) = nodes[j].op {
                            let layer = &norms[n];
                            if layer.kind != NormKind::BatchNorm2d
                                || layer.running_mean.is_none()
                                || layer.running_var.is_none()
                            {
                                return Err(format!("{}: not a BatchNorm2d", layer.name));
                            }
                            norm = Some(n);
                            fused[j] = true;
                            last = j;
                        }
                    }
                    // The residual: the add's other operand, computed before the add.
                    if let Some(j) = only(last).filter(|&j| !fused[j]) {
                        if nodes[j].op == Op::Add {
                            let other = nodes[j].inputs.iter().find(|&&v| v != last);
                            if let Some(&other) = other {
                                inputs.push(other);
                                fused[j] = true;
                                last = j;
                            }
                        }
                    }
                    let mut act = None;
                    if let Some(j) = only(last).filter(|&j| !fused[j]) {
                        if let Op::Act(a) = nodes[j].op {
                            act = Some(a);
                            fused[j] = true;
                            last = j;
                        }
                    }
                    let kind = UnitKind::Conv {
                        weight: *weight,
                        bias: *bias,
                        win,
                        depthwise,
                        norm,
                        act,
                    };
                    (kind, inputs, last)
                }
                Op::Norm(n) => {
                    return Err(format!(
                        "{}: a normalization layer not after a convolution",
                        norms[*n].name
                    ))
                }
                Op::Act(a) => (UnitKind::Act(*a), node.inputs.clone(), i),
                Op::MaxPool {
                    kernel,
                    stride,
                    padding,
                } => {
                    let win = Window {
                        k: *kernel,
                        stride: *stride,
                        pads: [*padding; 4],
                    };
                    (UnitKind::MaxPool { win }, node.inputs.clone(), i)
                }
                Op::AvgPool { .. } => {
                    return Err(format!(
                        "node {i}: average pooling (the hand-written paths have no kernel for it)"
                    ))
                }
                Op::GlobalAvgPool => (UnitKind::GlobalAvgPool, node.inputs.clone(), i),
                Op::ToTokens
                | Op::ClassToken { .. }
                | Op::PosEmbed { .. }
                | Op::Attention { .. }
                | Op::ClassPool => {
                    return Err(format!(
                        "node {i}: a transformer (the hand-written paths have no token kernels yet)"
                    ))
                }
                Op::Add => (UnitKind::Add { act: None }, node.inputs.clone(), i),
                Op::Linear { weight, bias } => {
                    let kind = UnitKind::Linear {
                        weight: *weight,
                        bias: *bias,
                    };
                    (kind, node.inputs.clone(), i)
                }
            };
            let mut kind = kind;
            if let UnitKind::Add { act } = &mut kind {
                if let Some(j) = only(last).filter(|&j| !fused[j]) {
                    if let Op::Act(a) = nodes[j].op {
                        *act = Some(a);
                        fused[j] = true;
                        last = j;
                    }
                }
            }
            units.push(Unit {
                kind,
                inputs,
                output: last,
            });
        }
        // A unit runs where its last node stood: a convolution that takes over an add runs after
        // the add's other operand.
        units.sort_by_key(|u| u.output);
        let mut border = vec![0; nodes.len()];
        let mut uses = vec![0; nodes.len()];
        for u in &units {
            for &v in &u.inputs {
                uses[v] += 1;
            }
            if let (UnitKind::Conv { win, .. }, Some(&x)) = (&u.kind, u.inputs.first()) {
                border[x] = border[x].max(win.border());
            }
        }
        uses[graph.output()] += 1;
        for (v, s) in shapes.iter().enumerate() {
            if matches!(s, Shape::Spatial { .. }) {
                border[v] = border[v].max(1);
            }
        }
        if !matches!(shapes[graph.output()], Shape::Flat { .. }) {
            return Err("the network does not end in a classifier".into());
        }
        Ok(Plan {
            shapes,
            border,
            units,
            uses,
            output: graph.output(),
        })
    }

    /// The geometry of spatial value `v` for `n` images.
    pub fn geo(&self, v: ValueId, n: usize) -> Geo {
        match self.shapes[v] {
            Shape::Spatial { h, w, .. } => Geo {
                n,
                h,
                w,
                pad: self.border[v],
            },
            Shape::Flat { .. } | Shape::Tokens { .. } => unreachable!("value {v} is not spatial"),
        }
    }

    /// Floats of value `v`'s buffer for `n` images.
    pub fn len(&self, v: ValueId, n: usize) -> usize {
        match self.shapes[v] {
            Shape::Spatial { c, .. } => self.geo(v, n).rows() * c,
            Shape::Flat { c } => n * c,
            Shape::Tokens { t, c } => n * t * c,
        }
    }

    pub fn channels(&self, v: ValueId) -> usize {
        self.shapes[v].channels()
    }
}

/// A convolution unit's kernel: with its BatchNorm multiplied in (`fold`, running statistics)
/// or raw (the convolution and its own bias only, what a batch-statistics pass needs).
pub(crate) fn conv_kernel(
    store: &Store,
    norms: &[NormLayer],
    unit: &UnitKind,
    fold: bool,
) -> Kernel {
    let UnitKind::Conv {
        weight,
        bias,
        win,
        depthwise,
        norm,
        ..
    } = unit
    else {
        unreachable!("a convolution unit")
    };
    let shape = store.shape(*weight);
    let cout = shape[0];
    let conv_bias = bias.map(|b| store.values(b));
    let (scale, shift): (Vec<f64>, Vec<f32>) = match norm.filter(|_| fold) {
        Some(n) => {
            let layer = &norms[n];
            let gamma = store.values(layer.weight);
            let beta = store.values(layer.bias);
            let mean = store.values(layer.running_mean.expect("checked by the plan"));
            let var = store.values(layer.running_var.expect("checked by the plan"));
            let scale: Vec<f64> = (0..cout)
                .map(|o| gamma[o] as f64 / (var[o] as f64 + layer.eps).sqrt())
                .collect();
            let shift = (0..cout)
                .map(|o| {
                    let from_bias = conv_bias.as_ref().map_or(0.0, |b| b[o] as f64 * scale[o]);
                    (beta[o] as f64 - mean[o] as f64 * scale[o] + from_bias) as f32
                })
                .collect();
            (scale, shift)
        }
        None => (
            vec![1.0; cout],
            conv_bias.unwrap_or_else(|| vec![0.0; cout]),
        ),
    };
    let w = store.values(*weight);
    if *depthwise {
        Kernel::Depthwise(DwConv::new(&w, shape, *win, &scale, shift))
    } else {
        Kernel::Dense(FConv::new(&w, shape, *win, &scale, shift))
    }
}
