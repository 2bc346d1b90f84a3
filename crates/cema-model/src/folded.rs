//! The inference path: a network with every BatchNorm folded into its convolution, run
//! channels-last (NHWC) with the bias, the residual and the activation fused into each
//! convolution.
//!
//! Why a separate path: in eval mode a BatchNorm is an affine map per channel, so it can be
//! multiplied into the preceding convolution's weights once per norm-state change (the edge
//! receives one every K batches) instead of being paid on every image. burn's generic forward
//! cannot do that, and it converts NCHW↔NHWC and allocates an im2col buffer inside every
//! convolution and a tensor per element-wise op. Here the activations stay NHWC, an im2col
//! matrix times the folded weights is one `gemm` call whose output rows are already the next
//! layer's NHWC input, and the buffers are reused across layers. Only `NormMode::Running`
//! (what an edge predicts with) can be folded; the batch-statistics and TBR forwards that
//! adaptation differentiates run on the same kernels ([`crate::nhwc`]) in
//! [`crate::affine_backward`]. [`crate::Model::logits`] uses this path and refolds whenever the
//! weights or norm state have changed; tests hold it to the generic forward.

use rayon::prelude::*;

use crate::checkpoint::InputSpec;
use crate::input::pixel_affine;
use crate::net::Net;
use crate::nhwc::{load_pixels, max_pool, reborder, sum_interior, ConvScratch, Kernel};
use crate::plan::{conv_kernel, Plan, UnitKind};

/// One unit, ready to run.
#[derive(Clone)]
enum Step {
    Conv(Kernel, Option<crate::graph::Act>),
    /// `[features, out]` weights and the bias.
    Linear(Vec<f32>, Vec<f32>),
    Other,
}

/// A network folded for eval-mode inference. Built by [`Net::fold`]; immutable.
#[derive(Clone)]
pub struct FoldedNet {
    input: InputSpec,
    /// `to_input`'s normalisation (`crate::input::pixel_affine`), computed once per fold.
    pixel_scale: Vec<f32>,
    pixel_shift: Vec<f32>,
    plan: Plan,
    steps: Vec<Step>,
    classes: usize,
    /// Multiply-adds of one image's forward.
    macs_per_image: u64,
}

impl std::fmt::Debug for FoldedNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FoldedNet")
            .field("units", &self.steps.len())
            .field("classes", &self.classes)
            .finish_non_exhaustive()
    }
}

/// Per-task buffers, reused across layers and images.
#[derive(Default)]
struct Scratch {
    free: Vec<Vec<f32>>,
    conv: ConvScratch,
}

thread_local! {
    /// Kept across calls: an edge predicts batch after batch, and fresh buffers of this size
    /// come from `mmap` with a page fault per 4 KiB on first touch.
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// Below this many multiply-adds in one call, the forward does not split its convolutions.
const PAR_NET_MACS: u64 = 1 << 25;

/// What one thread's scratch keeps between calls, at most.
const SCRATCH_KEEP_BYTES: usize = 256 << 20;

impl Scratch {
    /// Drops free buffers beyond [`SCRATCH_KEEP_BYTES`], largest first.
    fn trim(&mut self) {
        self.free.sort_by_key(|v| v.capacity());
        let mut held: usize = self.free.iter().map(|v| v.capacity() * 4).sum();
        while held > SCRATCH_KEEP_BYTES {
            let v = self.free.pop().expect("held > 0");
            held -= v.capacity() * 4;
        }
    }

    /// A buffer of `len` floats, contents unspecified.
    fn take(&mut self, len: usize) -> Vec<f32> {
        let best = (0..self.free.len())
            .filter(|&i| self.free[i].capacity() >= len)
            .min_by_key(|&i| self.free[i].capacity());
        let mut v = match best {
            Some(i) => self.free.swap_remove(i),
            None => self.free.pop().unwrap_or_default(),
        };
        v.resize(len, 0.0);
        v.truncate(len);
        v
    }
}

impl Net {
    /// This network with every BatchNorm folded into its convolution, for `input`-shaped images.
    /// `None` when the graph has an op the NHWC path does not implement, or a norm layer that
    /// cannot be folded (no running statistics, e.g. LayerNorm).
    pub fn fold(&self, input: &InputSpec) -> Option<FoldedNet> {
        let plan = Plan::new(
            &self.graph,
            &self.store,
            &self.norms,
            input.height,
            input.width,
        )
        .ok()?;
        let store = &self.store;
        let steps = plan
            .units
            .iter()
            .map(|u| match &u.kind {
                UnitKind::Conv { act, .. } => {
                    Step::Conv(conv_kernel(store, &self.norms, &u.kind, true), *act)
                }
                UnitKind::Linear { weight, bias } => {
                    let shape = store.shape(*weight);
                    let (out, feat) = (shape[0], shape[1]);
                    let w = store.values(*weight);
                    let mut wt = vec![0f32; feat * out];
                    for j in 0..out {
                        for c in 0..feat {
                            wt[c * out + j] = w[j * feat + c];
                        }
                    }
                    let b = bias.map_or_else(|| vec![0.0; out], |b| store.values(b));
                    Step::Linear(wt, b)
                }
                _ => Step::Other,
            })
            .collect();
        let (pixel_scale, pixel_shift) = pixel_affine(input);
        let classes = plan.channels(plan.output);
        let macs_per_image = self
            .shapes(input.height, input.width)
            .map_or(u64::MAX, |(_, macs)| macs);
        Some(FoldedNet {
            input: input.clone(),
            pixel_scale,
            pixel_shift,
            plan,
            steps,
            classes,
            macs_per_image,
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
            // A small forward runs on this thread alone: waking the pool for each of its
            // convolutions costs more than splitting them saves (measured: the edge's ResNet-8
            // at batch 1 ran at half the speed on 2 threads as on 1).
            let threads = if (n as u64).saturating_mul(self.macs_per_image) < PAR_NET_MACS {
                1
            } else {
                threads
            };
            SCRATCH.with_borrow_mut(|s| {
                for (px, out) in pixels
                    .chunks(group * per)
                    .zip(logits.chunks_mut(group * self.classes))
                {
                    self.forward_group(px, out, s, threads);
                }
                s.trim();
            });
        } else {
            // Spread the batch over the pool, at least one group per thread.
            let group = group.min(n.div_ceil(threads));
            pixels
                .par_chunks(group * per)
                .zip(logits.par_chunks_mut(group * self.classes))
                .for_each(|(px, out)| {
                    SCRATCH.with_borrow_mut(|s| {
                        self.forward_group(px, out, s, 1);
                        s.trim();
                    })
                });
        }
        logits
    }

    fn forward_group(&self, pixels: &[u8], logits: &mut [f32], s: &mut Scratch, threads: usize) {
        let plan = &self.plan;
        let n = logits.len() / self.classes;
        let mut uses = plan.uses.clone();
        let mut values: Vec<Option<Vec<f32>>> = vec![None; plan.shapes.len()];
        // At its size, not grown from empty: see `affine_backward`'s input.
        let mut x = s.take(plan.len(0, n));
        load_pixels(
            pixels,
            (&self.pixel_scale, &self.pixel_shift),
            plan.geo(0, n),
            &mut x,
        );
        values[0] = Some(x);
        for (unit, step) in plan.units.iter().zip(&self.steps) {
            let out_v = unit.output;
            let x_v = unit.inputs[0];
            let mut dst;
            {
                let x = values[x_v].as_deref().expect("computed before use");
                match (&unit.kind, step) {
                    (UnitKind::Conv { .. }, Step::Conv(kernel, act)) => {
                        let gd = plan.geo(out_v, n);
                        let residual = unit.residual();
                        dst = match residual {
                            // The residual's last reader writes over it in place.
                            Some(r) if uses[r] == 1 && plan.geo(r, n) == gd => {
                                values[r].take().expect("computed before use")
                            }
                            Some(r) => {
                                let mut d = s.take(plan.len(out_v, n));
                                let src = values[r].as_deref().expect("computed before use");
                                reborder(src, plan.geo(r, n), &mut d, gd, kernel.cout(), false);
                                d
                            }
                            None => s.take(plan.len(out_v, n)),
                        };
                        let x = values[x_v].as_deref().expect("computed before use");
                        kernel.run(
                            x,
                            plan.geo(x_v, n),
                            &mut dst,
                            gd.pad,
                            &mut s.conv,
                            residual.is_some(),
                            *act,
                            threads,
                        );
                    }
                    (UnitKind::MaxPool { win }, _) => {
                        dst = s.take(plan.len(out_v, n));
                        let c = plan.channels(x_v);
                        max_pool(x, plan.geo(x_v, n), c, *win, plan.geo(out_v, n), &mut dst);
                    }
                    (UnitKind::GlobalAvgPool, _) => {
                        let c = plan.channels(x_v);
                        let g = plan.geo(x_v, n);
                        let hw = (g.h * g.w) as f32;
                        dst = s.take(n * c);
                        for (img, p) in dst.chunks_exact_mut(c).enumerate() {
                            sum_interior(x, g, c, img, p);
                            p.iter_mut().for_each(|v| *v /= hw);
                        }
                    }
                    (UnitKind::Linear { .. }, Step::Linear(wt, b)) => {
                        let (feat, out) = (plan.channels(x_v), b.len());
                        dst = s.take(n * out);
                        for (row, xr) in dst.chunks_exact_mut(out).zip(x.chunks_exact(feat)) {
                            row.copy_from_slice(b);
                            for (ci, p) in xr.iter().enumerate() {
                                let w = &wt[ci * out..(ci + 1) * out];
                                row.iter_mut().zip(w).for_each(|(o, w)| *o += p * w);
                            }
                        }
                    }
                    (UnitKind::Add { act }, _) => {
                        let b_v = unit.inputs[1];
                        dst = s.take(plan.len(out_v, n));
                        let b = values[b_v].as_deref().expect("computed before use");
                        add_values(plan, (x, x_v), (b, b_v), out_v, n, &mut dst, *act);
                    }
                    (UnitKind::Act(a), _) => {
                        dst = s.take(x.len());
                        dst.iter_mut().zip(x).for_each(|(d, v)| *d = a.apply(*v));
                    }
                    _ => unreachable!("steps follow units"),
                }
            }
            for &v in &unit.inputs {
                uses[v] -= 1;
                if uses[v] == 0 {
                    if let Some(buf) = values[v].take() {
                        s.free.push(buf);
                    }
                }
            }
            values[out_v] = Some(dst);
        }
        let out = values[plan.output].take().expect("the output is computed");
        logits.copy_from_slice(&out);
        s.free.push(out);
        s.free.extend(values.into_iter().flatten());
    }
}

/// `dst ← act(a + b)` for two values of the same shape (any borders), in `out`'s geometry.
pub(crate) fn add_values(
    plan: &Plan,
    (a, a_v): (&[f32], usize),
    (b, b_v): (&[f32], usize),
    out: usize,
    n: usize,
    dst: &mut [f32],
    act: Option<crate::graph::Act>,
) {
    match plan.shapes[out] {
        crate::graph::Shape::Flat { .. } | crate::graph::Shape::Tokens { .. } => {
            dst.iter_mut()
                .zip(a.iter().zip(b))
                .for_each(|(d, (a, b))| *d = a + b);
        }
        crate::graph::Shape::Spatial { c, .. } => {
            let gd = plan.geo(out, n);
            reborder(a, plan.geo(a_v, n), dst, gd, c, false);
            reborder(b, plan.geo(b_v, n), dst, gd, c, true);
        }
    }
    if let Some(act) = act {
        dst.iter_mut().for_each(|v| *v = act.apply(*v));
    }
}
