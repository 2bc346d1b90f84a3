//! Named weights: one flat, ordered list of tensors keyed by their PyTorch state-dict names.
//!
//! Why flat: the adaptation code selects parameters by *kind* (norm affine only, or everything) and
//! ships them by *name* (safetensors); layer structs keep indices into this list, so switching a
//! subset to autodiff, reading its gradients and applying updates is one loop, with no per-layer code.

use burn::tensor::{Device, Tensor, TensorData};

/// What a tensor is, which decides who may change it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    ConvWeight,
    ConvBias,
    LinearWeight,
    LinearBias,
    /// A learned token or position table (a ViT's `cls_token`, `pos_embed`): frozen in
    /// adaptation, trained in source training.
    Embedding,
    /// Normalization scale γ (`*.weight` of a norm layer).
    NormWeight,
    /// Normalization shift β (`*.bias` of a norm layer).
    NormBias,
    RunningMean,
    RunningVar,
}

impl Kind {
    /// Norm affine parameters: the only weights CEMA adapts.
    pub fn is_norm_affine(self) -> bool {
        matches!(self, Kind::NormWeight | Kind::NormBias)
    }

    /// Running statistics: state, never trained by gradient.
    pub fn is_buffer(self) -> bool {
        matches!(self, Kind::RunningMean | Kind::RunningVar)
    }

    pub fn is_norm_state(self) -> bool {
        self.is_norm_affine() || self.is_buffer()
    }
}

/// Which parameters take gradients in a step. Everything else is a constant to autodiff, so frozen
/// convolutions cost no weight-gradient work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trainable {
    NormAffine,
    All,
}

impl Trainable {
    pub fn includes(self, kind: Kind) -> bool {
        match self {
            Trainable::NormAffine => kind.is_norm_affine(),
            Trainable::All => !kind.is_buffer(),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub name: String,
    pub kind: Kind,
    pub shape: Vec<usize>,
    /// Always stored flat; layers reshape on use (a metadata-only operation).
    pub value: Tensor<1>,
    /// As the store's, for this entry alone.
    pub generation: u64,
}

#[derive(Debug, Clone)]
pub struct Store {
    pub(crate) entries: Vec<Entry>,
    pub(crate) device: Device,
    /// Changes on every write, to a value no other store has had: caches derived from the
    /// weights (the folded inference net) compare it to know they are stale.
    generation: u64,
}

fn next_generation() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl Store {
    pub(crate) fn new(device: Device) -> Self {
        Store {
            entries: Vec::new(),
            device,
            generation: next_generation(),
        }
    }

    pub(crate) fn push(
        &mut self,
        name: String,
        kind: Kind,
        shape: Vec<usize>,
        values: Vec<f32>,
    ) -> usize {
        debug_assert_eq!(values.len(), shape.iter().product::<usize>());
        let n = values.len();
        let value = Tensor::<1>::from_data(TensorData::new(values, [n]), &self.device);
        self.generation = next_generation();
        self.entries.push(Entry {
            name,
            kind,
            shape,
            value,
            generation: self.generation,
        });
        self.entries.len() - 1
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Identifies this store's current contents (see the field).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Changes whenever tensor `i` is written (see [`Store::generation`]).
    pub(crate) fn entry_generation(&self, i: usize) -> u64 {
        self.entries[i].generation
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.name.as_str())
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.entries.iter().position(|e| e.name == name)
    }

    pub fn kind(&self, i: usize) -> Kind {
        self.entries[i].kind
    }

    pub fn name(&self, i: usize) -> &str {
        &self.entries[i].name
    }

    pub fn shape(&self, i: usize) -> &[usize] {
        &self.entries[i].shape
    }

    pub(crate) fn get1(&self, i: usize) -> Tensor<1> {
        self.entries[i].value.clone()
    }

    pub(crate) fn get2(&self, i: usize) -> Tensor<2> {
        let s = &self.entries[i].shape;
        self.entries[i].value.clone().reshape([s[0], s[1]])
    }

    pub(crate) fn get3(&self, i: usize) -> Tensor<3> {
        let s = &self.entries[i].shape;
        self.entries[i].value.clone().reshape([s[0], s[1], s[2]])
    }

    pub(crate) fn get4(&self, i: usize) -> Tensor<4> {
        let s = &self.entries[i].shape;
        self.entries[i]
            .value
            .clone()
            .reshape([s[0], s[1], s[2], s[3]])
    }

    pub(crate) fn set(&mut self, i: usize, value: Tensor<1>) {
        self.generation = next_generation();
        self.entries[i].generation = self.generation;
        self.entries[i].value = value;
    }

    /// Host copy of one tensor.
    pub fn values(&self, i: usize) -> Vec<f32> {
        tensor_to_vec(self.entries[i].value.clone())
    }

    /// Replaces one tensor's values (length must match).
    pub fn set_values(&mut self, i: usize, values: Vec<f32>) {
        assert_eq!(
            values.len(),
            self.entries[i].shape.iter().product::<usize>(),
            "{}",
            self.entries[i].name
        );
        let n = values.len();
        self.generation = next_generation();
        self.entries[i].generation = self.generation;
        self.entries[i].value = Tensor::<1>::from_data(TensorData::new(values, [n]), &self.device);
    }

    /// Number of trainable parameters (running statistics excluded), as PyTorch counts them.
    pub fn parameter_count(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| !e.kind.is_buffer())
            .map(|e| e.shape.iter().product::<usize>())
            .sum()
    }

    /// Marks the selected parameters as autodiff leaves; returns their indices.
    pub(crate) fn track(&mut self, which: Trainable) -> Vec<usize> {
        let mut ids = Vec::new();
        for (i, e) in self.entries.iter_mut().enumerate() {
            if which.includes(e.kind) {
                e.value = e.value.clone().without_autodiff().autodiff().require_grad();
                ids.push(i);
            }
        }
        ids
    }

    /// Drops every autodiff association (after a step, or if a step is abandoned).
    pub(crate) fn untrack(&mut self) {
        for e in &mut self.entries {
            e.value = e.value.clone().without_autodiff();
        }
    }
}

pub(crate) fn tensor_to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    let data = t.into_data();
    match data.as_slice::<f32>() {
        Ok(s) => s.to_vec(),
        Err(_) => data
            .convert::<f32>()
            .as_slice::<f32>()
            .expect("f32 after convert")
            .to_vec(),
    }
}
