//! SGD with momentum, exactly PyTorch's `torch.optim.SGD` semantics.
//!
//! Written here rather than taken from burn's optimizer because (a) burn's SGD defaults to
//! dampening 0.1 where PyTorch uses 0, and the paper's constants are PyTorch's; (b) cema's cloud keeps
//! one optimizer per edge session and persists it, so its state must be plain named tensors that we
//! can serialise (see [`Sgd::state`]); (c) it is a dozen lines over the parameter store.

use std::collections::BTreeMap;

use burn::tensor::Tensor;

use crate::store::{Kind, Store};
use crate::tensors::{HostTensor, NamedTensors};

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SgdConfig {
    pub lr: f64,
    pub momentum: f64,
    pub dampening: f64,
    /// Applied to convolution and linear weights only (not biases, not norm affine).
    pub weight_decay: f64,
    pub nesterov: bool,
}

impl SgdConfig {
    pub fn momentum(lr: f64, momentum: f64) -> Self {
        SgdConfig {
            lr,
            momentum,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Sgd {
    pub config: SgdConfig,
    buffers: BTreeMap<usize, Tensor<1>>,
}

impl Sgd {
    pub fn new(config: SgdConfig) -> Self {
        Sgd {
            config,
            buffers: BTreeMap::new(),
        }
    }

    /// One update of the parameters in `grads` (indices into `store`), at learning rate `lr`.
    pub fn step(&mut self, store: &mut Store, grads: Vec<(usize, Tensor<1>)>, lr: f64) {
        let c = self.config;
        for (i, g) in grads {
            let p = store.get1(i).without_autodiff();
            let mut g = g.without_autodiff();
            if c.weight_decay != 0.0
                && matches!(store.kind(i), Kind::ConvWeight | Kind::LinearWeight)
            {
                g = g + p.clone() * c.weight_decay;
            }
            if c.momentum != 0.0 {
                let buf = match self.buffers.remove(&i) {
                    None => g.clone(),
                    Some(b) => b * c.momentum + g.clone() * (1.0 - c.dampening),
                };
                g = if c.nesterov {
                    g + buf.clone() * c.momentum
                } else {
                    buf.clone()
                };
                self.buffers.insert(i, buf);
            }
            store.set(i, p - g * lr);
        }
    }

    /// [`Sgd::step`] with host gradients (what [`crate::Model::norm_affine_backward`] returns).
    pub fn step_host(&mut self, store: &mut Store, grads: Vec<(usize, Vec<f32>)>, lr: f64) {
        let device = store.device().clone();
        let grads = grads
            .into_iter()
            .map(|(i, g)| {
                let n = g.len();
                let t = Tensor::<1>::from_data(burn::tensor::TensorData::new(g, [n]), &device);
                (i, t)
            })
            .collect();
        self.step(store, grads, lr);
    }

    /// Momentum buffers by parameter name (for persistence).
    pub fn state(&self, store: &Store) -> NamedTensors {
        self.buffers
            .iter()
            .map(|(&i, b)| {
                (
                    store.name(i).to_string(),
                    HostTensor {
                        shape: store.shape(i).to_vec(),
                        data: crate::store::tensor_to_vec(b.clone()),
                    },
                )
            })
            .collect()
    }

    /// Restores buffers saved by [`Sgd::state`]; unknown names or wrong sizes are an error.
    pub fn load_state(&mut self, store: &Store, state: &NamedTensors) -> Result<(), String> {
        let mut buffers = BTreeMap::new();
        for (name, t) in state {
            let i = store
                .index_of(name)
                .ok_or_else(|| format!("optimizer state names unknown tensor `{name}`"))?;
            if t.shape != store.shape(i) {
                return Err(format!(
                    "optimizer state `{name}` has shape {:?}, expected {:?}",
                    t.shape,
                    store.shape(i)
                ));
            }
            let n = t.data.len();
            buffers.insert(
                i,
                Tensor::<1>::from_data(
                    burn::tensor::TensorData::new(t.data.clone(), [n]),
                    store.device(),
                ),
            );
        }
        self.buffers = buffers;
        Ok(())
    }
}
