//! [`Model`]: a network and its card — what every other crate holds. Loading and saving,
//! logits and accuracy, and the weight store for optimisers live here; the norm-state API is in
//! [`crate::normstate`], the adaptation gradients in [`crate::affine_backward`].

use std::path::Path;

use crate::arch::Arch;
use crate::checkpoint::{
    card_path, load_into, sha256_file, sha256_hex, write_atomic, InputSpec, ModelCard,
};
use crate::error::{ModelError, Result};
use crate::input::{check_pixels, to_input};
use crate::labelled::Labelled;
use crate::net::{argmax_rows, Backward, Net};
use crate::norm::{NormLayer, NormMode};
use crate::store::{tensor_to_vec, Store, Trainable};
use crate::tensors::{self, HostTensor, NamedTensors};
use burn::tensor::{Device, Tensor};

/// A loaded model: weights on a device plus its card.
#[derive(Debug, Clone)]
pub struct Model {
    pub(crate) net: Net,
    pub card: ModelCard,
    /// The BatchNorm-folded inference net ([`crate::FoldedNet`]) for eval-mode logits, with the
    /// weight-store generation and input spec it was folded from; `None` until first used.
    folded: Option<(u64, InputSpec, std::sync::Arc<crate::FoldedNet>)>,
    /// Host copies of the weights for the token path (ViTs), refreshed per tensor on use.
    pub(crate) host_weights: crate::tokens::HostWeights,
    /// Eval-mode logits through the folded net (default) or burn's generic forward.
    fold_inference: bool,
    /// Norm-affine gradients through the hand-written pass (default) or burn's autodiff.
    native_backward: bool,
}

impl Model {
    /// A network and its card (the card is trusted to describe the network).
    pub(crate) fn new(net: Net, card: ModelCard) -> Model {
        let mut m = Model {
            net,
            card,
            folded: None,
            host_weights: Default::default(),
            fold_inference: true,
            native_backward: true,
        };
        // A token model's host copies are made once here, so every clone (a cloud session's
        // foundation) shares the frozen ones instead of copying them on first use.
        if m.on_cpu() && m.net.token_plan(&m.card.input).is_ok() {
            m.host_weights.sync(m.net.store());
        }
        m
    }

    /// The architecture the card names.
    pub fn arch(&self) -> &Arch {
        self.net.arch()
    }

    /// The network description, for inspection (shapes, MACs).
    pub fn net(&self) -> &Net {
        &self.net
    }

    pub fn device(&self) -> &Device {
        self.net.device()
    }

    /// Every weight and statistic by PyTorch name: what an optimiser steps.
    pub fn store(&self) -> &Store {
        self.net.store()
    }

    pub fn store_mut(&mut self) -> &mut Store {
        self.net.store_mut()
    }

    /// The normalization layers, in forward order.
    pub fn norm_layers(&self) -> &[NormLayer] {
        self.net.norm_layers()
    }

    /// Multiply-accumulates of one forward pass per image at the card's input size.
    pub fn macs(&self) -> Result<u64> {
        let i = &self.card.input;
        self.net
            .shapes(i.height, i.width)
            .map(|(_, macs)| macs)
            .map_err(|e| ModelError::Input(e.to_string()))
    }

    /// burn's generic forward on an NCHW batch of normalised images ([`Net::forward`]).
    pub fn forward(&mut self, x: Tensor<4>, mode: NormMode, update_stats: bool) -> Tensor<2> {
        self.net.forward(x, mode, update_stats)
    }

    /// burn's autodiff of the generic forward w.r.t. `which` ([`Net::backward`]).
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
        self.net.backward(x, mode, update_stats, which, loss_fn)
    }

    /// Whether this model's eval-mode logits and norm-affine gradients run on the hand-written
    /// CPU paths (the folded inference net and the native backward), or why not: then burn's
    /// generic forward and autodiff compute the same numbers, more slowly.
    pub fn hand_written_paths(&self) -> std::result::Result<(), String> {
        match self.net.token_plan(&self.card.input) {
            Ok(_) => Ok(()),
            Err(_) => self.net.hand_written_plan(&self.card.input).map(|_| ()),
        }
    }

    /// Chooses how eval-mode logits are computed: through the BatchNorm-folded net (`true`, the
    /// default) or burn's generic forward (`false`; for comparisons and debugging).
    pub fn set_fold_inference(&mut self, on: bool) {
        self.fold_inference = on;
    }

    pub(crate) fn fold_inference_enabled(&self) -> bool {
        self.fold_inference && self.on_cpu()
    }

    /// Chooses how [`Model::norm_affine_backward`] computes gradients: the hand-written pass
    /// (`true`, the default) or burn's autodiff of the generic forward (`false`).
    pub fn set_native_backward(&mut self, on: bool) {
        self.native_backward = on;
    }

    pub(crate) fn native_backward_enabled(&self) -> bool {
        self.native_backward && self.on_cpu()
    }

    /// The hand-written paths (folded inference, the adaptation backward) are CPU code: on
    /// another device (the `cuda` feature) the generic burn path keeps the work there.
    pub(crate) fn on_cpu(&self) -> bool {
        *self.net.device() == crate::cpu()
    }

    /// Drops the folded inference net (refolded on next use). A model whose weights change between
    /// uses, such as a cloud session's foundation, would otherwise hold a stale copy of every
    /// convolution between rounds: 4 MiB per session for the shipped foundation.
    pub fn release_folded(&mut self) {
        self.folded = None;
    }

    /// The folded net for the current weights and norm state, refolded if either has changed
    /// since the last call; `None` when the net cannot be folded (see [`Net::fold`]).
    pub fn folded(&mut self) -> Option<std::sync::Arc<crate::FoldedNet>> {
        let generation = self.net.store().generation();
        match &self.folded {
            Some((g, input, f)) if *g == generation && *input == self.card.input => Some(f.clone()),
            _ => {
                let f = std::sync::Arc::new(self.net.fold(&self.card.input)?);
                self.folded = Some((generation, self.card.input.clone(), f.clone()));
                Some(f)
            }
        }
    }

    /// Loads `<path>` (safetensors or .pth) and its card `<path>.json`, validating every tensor.
    pub fn load(path: &Path, device: &Device) -> Result<Model> {
        let card_file = card_path(path);
        let text = std::fs::read_to_string(&card_file).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound && path.exists() {
                ModelError::Card {
                    path: card_file.clone(),
                    reason: "no such file: a checkpoint needs its model card beside it; \
                             `cema import` writes one (docs/model-card.md)"
                        .into(),
                }
            } else {
                ModelError::Io {
                    path: card_file.clone(),
                    source,
                }
            }
        })?;
        let card: ModelCard = serde_json::from_str(&text).map_err(|e| ModelError::Card {
            path: card_file.clone(),
            reason: e.to_string(),
        })?;
        card.validate().map_err(|reason| ModelError::Card {
            path: card_file.clone(),
            reason,
        })?;
        if let Some(expected) = &card.sha256 {
            let found = sha256_file(path)?;
            if &found != expected {
                return Err(ModelError::Checksum {
                    source_name: path.display().to_string(),
                    expected: expected.clone(),
                    found,
                });
            }
        }
        let tensors = tensors::read_file(path)?;
        Self::from_tensors(card, &tensors, &path.display().to_string(), device)
    }

    /// Builds a model from a card and named tensors (strict: every tensor present, right shape,
    /// finite, nothing extra).
    pub fn from_tensors(
        card: ModelCard,
        tensors: &NamedTensors,
        source: &str,
        device: &Device,
    ) -> Result<Model> {
        let mut net = Net::new(&card.architecture, device, 0).map_err(ModelError::Arch)?;
        load_into(&mut net, tensors, source, false)?;
        input_fits(&net, &card, source)?;
        Ok(Model::new(net, card))
    }

    /// A freshly initialised model (for training).
    pub fn init(card: ModelCard, device: &Device, seed: u64) -> Result<Model> {
        card.validate().map_err(|reason| ModelError::Card {
            path: "<new model>".into(),
            reason,
        })?;
        let net = Net::new(&card.architecture, device, seed).map_err(ModelError::Arch)?;
        input_fits(&net, &card, "<new model>")?;
        Ok(Model::new(net, card))
    }

    /// All weights and statistics by PyTorch name.
    pub fn state_dict(&self) -> NamedTensors {
        let s = self.net.store();
        (0..s.len())
            .map(|i| {
                (
                    s.name(i).to_string(),
                    HostTensor {
                        shape: s.shape(i).to_vec(),
                        data: s.values(i),
                    },
                )
            })
            .collect()
    }

    /// Writes `<path>` (safetensors) and `<path>.json`; fills in `sha256` and `parameters`.
    pub fn save(&mut self, path: &Path) -> Result<()> {
        let bytes = tensors::to_safetensors(&self.state_dict(), None);
        self.card.sha256 = Some(sha256_hex(&bytes));
        self.card.parameters = Some(self.net.store().parameter_count());
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| ModelError::Io {
                path: dir.into(),
                source,
            })?;
        }
        write_atomic(path, &bytes)?;
        let card = serde_json::to_string_pretty(&self.card).expect("card serialises");
        write_atomic(&card_path(path), card.as_bytes())
    }
    /// Logits (row-major `n × classes`) for `n` u8 images, no gradient, no state change.
    ///
    /// Eval mode (`Running`) goes through the BatchNorm-folded net unless
    /// [`Model::set_fold_inference`] turned it off.
    pub fn logits(&mut self, pixels: &[u8], n: usize, mode: NormMode) -> Result<Vec<f32>> {
        if mode == NormMode::Running && self.fold_inference_enabled() {
            if let Some(logits) = self.token_forward(pixels, n)? {
                return Ok(logits);
            }
            check_pixels(&self.card.input, pixels, n)?;
            if let Some(f) = self.folded() {
                return Ok(f.logits(pixels, n));
            }
        }
        check_pixels(&self.card.input, pixels, n)?;
        if let Some(logits) = self.native_forward(pixels, n, mode, None) {
            return Ok(logits);
        }
        let x = to_input(&self.card.input, pixels, n, self.net.device())?;
        Ok(tensor_to_vec(self.net.forward(x, mode, false)))
    }

    /// Replaces the running statistics with those of these `n` images (see
    /// [`crate::Net::init_running_stats`]) and returns their batch-statistics logits.
    pub fn init_running_stats(&mut self, pixels: &[u8], n: usize) -> Result<Vec<f32>> {
        check_pixels(&self.card.input, pixels, n)?;
        if let Some(logits) = self.native_forward(pixels, n, NormMode::Batch, Some(1.0)) {
            return Ok(logits);
        }
        let x = to_input(&self.card.input, pixels, n, self.net.device())?;
        Ok(tensor_to_vec(self.net.init_running_stats(x)))
    }

    /// Logits from the running statistics, after which they track these `n` images with
    /// `momentum` (see [`crate::Net::forward_tracking`]).
    pub fn logits_tracking(&mut self, pixels: &[u8], n: usize, momentum: f32) -> Result<Vec<f32>> {
        check_pixels(&self.card.input, pixels, n)?;
        if let Some(logits) = self.native_forward(pixels, n, NormMode::Tbr, Some(momentum)) {
            return Ok(logits);
        }
        let x = to_input(&self.card.input, pixels, n, self.net.device())?;
        Ok(tensor_to_vec(self.net.forward_tracking(x, momentum)))
    }

    /// Predicted classes for `n` u8 images.
    pub fn predict(&mut self, pixels: &[u8], n: usize, mode: NormMode) -> Result<Vec<u32>> {
        let logits = self.logits(pixels, n, mode)?;
        Ok(argmax_rows(&logits, self.card.architecture.num_classes()))
    }

    /// Checks that images of `(height, width, channels)` fit this model's input.
    pub fn check_geometry(&self, (height, width, channels): (usize, usize, usize)) -> Result<()> {
        let i = &self.card.input;
        if (height, width, channels) != (i.height, i.width, i.channels) {
            return Err(ModelError::Input(format!(
                "images are {height}×{width}×{channels}, model {} expects {}×{}×{}",
                self.card.name, i.height, i.width, i.channels
            )));
        }
        Ok(())
    }

    /// Top-1 accuracy over `set` in batches of `batch` (batch statistics are per batch in `Batch`
    /// mode — the BN-adapt view; running statistics are never modified).
    pub fn accuracy(&mut self, set: Labelled<'_>, mode: NormMode, batch: usize) -> Result<f64> {
        self.check_geometry(set.geometry())?;
        let mut correct = 0usize;
        for start in (0..set.len()).step_by(batch.max(1)) {
            let n = batch.min(set.len() - start);
            let preds = self.predict(set.images(start..start + n), n, mode)?;
            correct += preds
                .iter()
                .zip(&set.labels()[start..start + n])
                .filter(|(p, y)| p == y)
                .count();
        }
        Ok(if set.is_empty() {
            0.0
        } else {
            correct as f64 / set.len() as f64
        })
    }
}

/// The card's input size runs through every layer (a ViT's position table, for one, fixes it).
fn input_fits(net: &Net, card: &ModelCard, source: &str) -> Result<()> {
    net.shapes(card.input.height, card.input.width)
        .map(|_| ())
        .map_err(|reason| ModelError::Card {
            path: source.into(),
            reason: format!(
                "a {}×{} input does not fit the architecture: {reason}",
                card.input.height, card.input.width
            ),
        })
}
