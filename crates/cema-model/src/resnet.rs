//! ResNets (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016,
//! <https://arxiv.org/abs/1512.03385>): the CIFAR variant and torchvision's ImageNet layout.
//!
//! Tensor names are PyTorch's state-dict keys (`conv1.weight`, `layer1.0.bn1.running_mean`,
//! `layer2.0.downsample.0.weight`, `fc.bias`, ...), so one safetensors file loads in both.

use burn::tensor::activation::relu;
use burn::tensor::module::{adaptive_avg_pool2d, conv2d, max_pool2d};
use burn::tensor::ops::{ConvOptions, MaxPoolOptions};
use burn::tensor::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use crate::arch::{Arch, BlockKind};
use crate::norm::{NormLayer, NormMode};
use crate::store::{Kind, Store};

#[derive(Debug, Clone)]
pub(crate) struct Conv {
    pub(crate) weight: usize,
    pub(crate) stride: usize,
    pub(crate) padding: usize,
}

#[derive(Debug, Clone)]
pub(crate) struct Block {
    /// (conv, norm) pairs in order; ReLU after each but the last.
    pub(crate) layers: Vec<(Conv, usize)>,
    pub(crate) downsample: Option<(Conv, usize)>,
}

/// A ResNet: architecture, weights and norm layers.
#[derive(Debug, Clone)]
pub struct ResNet {
    arch: Arch,
    pub(crate) store: Store,
    pub(crate) norms: Vec<NormLayer>,
    pub(crate) stem: (Conv, usize),
    pub(crate) max_pool: bool,
    pub(crate) blocks: Vec<Block>,
    pub(crate) fc_weight: usize,
    pub(crate) fc_bias: usize,
    /// Momentum of running-statistics updates (PyTorch convention); 1.0 replaces them outright.
    pub(crate) stats_momentum: f32,
}

struct Builder<'a> {
    store: &'a mut Store,
    norms: Vec<NormLayer>,
    rng: ChaCha8Rng,
}

impl Builder<'_> {
    /// Kaiming-normal, fan-out, ReLU gain: torchvision's ResNet initialisation.
    fn conv(
        &mut self,
        name: &str,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        padding: usize,
    ) -> Conv {
        let std = (2.0 / (cout * k * k) as f32).sqrt();
        let normal = Normal::new(0.0f32, std).expect("finite std");
        let values: Vec<f32> = (0..cout * cin * k * k)
            .map(|_| normal.sample(&mut self.rng))
            .collect();
        let weight = self.store.push(
            format!("{name}.weight"),
            Kind::ConvWeight,
            vec![cout, cin, k, k],
            values,
        );
        Conv {
            weight,
            stride,
            padding,
        }
    }

    fn norm(&mut self, name: &str, channels: usize) -> usize {
        self.norms
            .push(NormLayer::batch_norm(self.store, name, channels));
        self.norms.len() - 1
    }
}

impl ResNet {
    /// A freshly initialised network (deterministic in `seed`).
    pub fn new(arch: &Arch, device: &Device, seed: u64) -> Result<Self, String> {
        arch.validate()?;
        let mut store = Store::new(device.clone());
        let mut b = Builder {
            store: &mut store,
            norms: Vec::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
        };
        let (stem, max_pool, mut cin) = match arch {
            Arch::CifarResnet {
                width, in_channels, ..
            } => {
                let c = b.conv("conv1", *in_channels, *width, 3, 1, 1);
                (c, false, *width)
            }
            Arch::TorchvisionResnet { in_channels, .. } => {
                let c = b.conv("conv1", *in_channels, 64, 7, 2, 3);
                (c, true, 64)
            }
        };
        let stem_norm = b.norm("bn1", cin);
        let kind = arch.block_kind();
        let expansion = if kind == BlockKind::Bottleneck { 4 } else { 1 };
        let mut blocks = Vec::new();
        for (si, stage) in arch.stages().iter().enumerate() {
            for bi in 0..stage.blocks {
                let p = format!("layer{}.{}", si + 1, bi);
                let stride = if bi == 0 { stage.stride } else { 1 };
                let cout = stage.width * expansion;
                let mut layers = Vec::new();
                match kind {
                    BlockKind::Basic => {
                        let c1 = b.conv(&format!("{p}.conv1"), cin, stage.width, 3, stride, 1);
                        let n1 = b.norm(&format!("{p}.bn1"), stage.width);
                        let c2 = b.conv(&format!("{p}.conv2"), stage.width, stage.width, 3, 1, 1);
                        let n2 = b.norm(&format!("{p}.bn2"), stage.width);
                        layers.push((c1, n1));
                        layers.push((c2, n2));
                    }
                    BlockKind::Bottleneck => {
                        // torchvision "v1.5": the stride sits on the 3×3 convolution.
                        let c1 = b.conv(&format!("{p}.conv1"), cin, stage.width, 1, 1, 0);
                        let n1 = b.norm(&format!("{p}.bn1"), stage.width);
                        let c2 = b.conv(
                            &format!("{p}.conv2"),
                            stage.width,
                            stage.width,
                            3,
                            stride,
                            1,
                        );
                        let n2 = b.norm(&format!("{p}.bn2"), stage.width);
                        let c3 = b.conv(&format!("{p}.conv3"), stage.width, cout, 1, 1, 0);
                        let n3 = b.norm(&format!("{p}.bn3"), cout);
                        layers.extend([(c1, n1), (c2, n2), (c3, n3)]);
                    }
                }
                let downsample = (stride != 1 || cin != cout).then(|| {
                    let c = b.conv(&format!("{p}.downsample.0"), cin, cout, 1, stride, 0);
                    let n = b.norm(&format!("{p}.downsample.1"), cout);
                    (c, n)
                });
                blocks.push(Block { layers, downsample });
                cin = cout;
            }
        }
        let classes = arch.num_classes();
        // PyTorch's nn.Linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias.
        let bound = 1.0 / (cin as f32).sqrt();
        let w: Vec<f32> = (0..classes * cin)
            .map(|_| b.rng.random_range(-bound..bound))
            .collect();
        let bias: Vec<f32> = (0..classes)
            .map(|_| b.rng.random_range(-bound..bound))
            .collect();
        let norms = std::mem::take(&mut b.norms);
        let fc_weight = store.push(
            "fc.weight".into(),
            Kind::LinearWeight,
            vec![classes, cin],
            w,
        );
        let fc_bias = store.push("fc.bias".into(), Kind::LinearBias, vec![classes], bias);
        Ok(ResNet {
            arch: arch.clone(),
            store,
            norms,
            stem: (stem, stem_norm),
            max_pool,
            blocks,
            fc_weight,
            fc_bias,
            stats_momentum: crate::norm::BN_MOMENTUM,
        })
    }

    pub fn arch(&self) -> &Arch {
        &self.arch
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

    fn conv(&self, x: Tensor<4>, c: &Conv) -> Tensor<4> {
        let opts = ConvOptions::new([c.stride; 2], [c.padding; 2], [1, 1], 1);
        conv2d(x, self.store.get4(c.weight), None, opts)
    }

    fn conv_norm(
        &mut self,
        x: Tensor<4>,
        (c, n): &(Conv, usize),
        mode: NormMode,
        update: bool,
    ) -> Tensor<4> {
        let y = self.conv(x, c);
        let layer = self.norms[*n].clone();
        let momentum = update.then_some(self.stats_momentum);
        layer.forward(&mut self.store, y, mode, momentum)
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
        let stem = self.stem.clone();
        let mut x = relu(self.conv_norm(x, &stem, mode, update_stats));
        if self.max_pool {
            let mut opts = MaxPoolOptions::new([3, 3]);
            opts.stride = [2, 2];
            opts.padding = [(1, 1), (1, 1)];
            x = max_pool2d(x, opts);
        }
        for bi in 0..self.blocks.len() {
            let block = self.blocks[bi].clone();
            let mut y = x.clone();
            let last = block.layers.len() - 1;
            for (li, layer) in block.layers.iter().enumerate() {
                y = self.conv_norm(y, layer, mode, update_stats);
                if li != last {
                    y = relu(y);
                }
            }
            let shortcut = match &block.downsample {
                Some(ds) => self.conv_norm(x, ds, mode, update_stats),
                None => x,
            };
            x = relu(y + shortcut);
        }
        let [n, c, _, _] = x.dims();
        let pooled: Tensor<2> = adaptive_avg_pool2d(x, [1, 1]).reshape([n, c]);
        let w = self.store.get2(self.fc_weight);
        let b = self.store.get1(self.fc_bias);
        pooled.matmul(w.transpose()) + b.unsqueeze_dim::<2>(0)
    }
}

/// Multiply-accumulates per image (convolutions + classifier), computed from the architecture alone.
pub(crate) fn count_macs(arch: &Arch, height: usize, width: usize) -> u64 {
    let device = Device::flex();
    let net = ResNet::new(arch, &device, 0).expect("valid arch");
    let out = |s: usize, k: usize, st: usize, p: usize| (s + 2 * p - k) / st + 1;
    let conv_macs = |c: &Conv, h: &mut usize, w: &mut usize| {
        let shape = net.store.shape(c.weight);
        let k = shape[2];
        *h = out(*h, k, c.stride, c.padding);
        *w = out(*w, k, c.stride, c.padding);
        (shape[0] * shape[1] * k * k * *h * *w) as u64
    };
    let (mut h, mut w) = (height, width);
    let mut total = conv_macs(&net.stem.0, &mut h, &mut w);
    if net.max_pool {
        h = out(h, 3, 2, 1);
        w = out(w, 3, 2, 1);
    }
    for block in &net.blocks {
        let (h0, w0) = (h, w);
        for (c, _) in &block.layers {
            total += conv_macs(c, &mut h, &mut w);
        }
        if let Some((c, _)) = &block.downsample {
            let (mut hd, mut wd) = (h0, w0);
            total += conv_macs(c, &mut hd, &mut wd);
        }
    }
    let fc = net.store.shape(net.fc_weight);
    total + (fc[0] * fc[1]) as u64
}
