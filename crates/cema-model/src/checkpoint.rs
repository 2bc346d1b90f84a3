//! Checkpoints: safetensors weights + a JSON model card beside them (`edge.safetensors` + `edge.json`).

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::arch::Arch;
use crate::error::{ModelError, Result};
use crate::resnet::ResNet;
use crate::store::Store;
use crate::tensors::{self, first_non_finite, HostTensor, NamedTensors};

/// Input geometry and normalisation: pixels are scaled to [0,1], then `(x − mean[c]) / std[c]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputSpec {
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

/// The model card: everything needed to use and reproduce a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelCard {
    pub name: String,
    /// "edge" or "foundation".
    #[serde(default)]
    pub role: String,
    pub architecture: Arch,
    pub input: InputSpec,
    pub classes: Vec<String>,
    #[serde(default)]
    pub dataset: String,
    #[serde(default)]
    pub clean_accuracy: Option<f64>,
    #[serde(default)]
    pub parameters: Option<usize>,
    /// sha256 of the weights file, checked on load when present.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Trainer, command, recipe, wall time: free-form, kept verbatim.
    #[serde(default)]
    pub training: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<serde_json::Value>,
}

/// Fashion-MNIST train-set pixel statistics (pixels scaled to [0, 1]); `tools/train_torch.py` uses
/// the same constants, so checkpoints from either trainer share one input spec.
pub const FASHION_MNIST_MEAN: f32 = 0.2860;
pub const FASHION_MNIST_STD: f32 = 0.3530;

impl ModelCard {
    /// A card for a new model on Fashion-MNIST (28×28×1, 10 classes); training fills in the rest.
    pub fn fashion_mnist(
        name: &str,
        role: &str,
        architecture: Arch,
        classes: Vec<String>,
    ) -> ModelCard {
        let input = InputSpec {
            height: 28,
            width: 28,
            channels: 1,
            mean: vec![FASHION_MNIST_MEAN],
            std: vec![FASHION_MNIST_STD],
        };
        ModelCard::new(name, role, architecture, input, classes, "fashion-mnist")
    }

    /// A card for a new model on any dataset; training fills in the rest.
    pub fn new(
        name: &str,
        role: &str,
        architecture: Arch,
        input: InputSpec,
        classes: Vec<String>,
        dataset: &str,
    ) -> ModelCard {
        ModelCard {
            name: name.into(),
            role: role.into(),
            architecture,
            input,
            classes,
            dataset: dataset.into(),
            clean_accuracy: None,
            parameters: None,
            sha256: None,
            training: serde_json::Value::Null,
            history: None,
        }
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        self.architecture.validate()?;
        let c = self.input.channels;
        if c != self.architecture.in_channels() {
            return Err(format!(
                "input.channels {} != architecture in_channels {}",
                c,
                self.architecture.in_channels()
            ));
        }
        if self.input.mean.len() != c || self.input.std.len() != c {
            return Err(format!("input.mean and input.std need {c} values each"));
        }
        if self.input.std.iter().any(|s| !(*s > 0.0 && s.is_finite())) {
            return Err("input.std must be positive and finite".into());
        }
        if !self.classes.is_empty() && self.classes.len() != self.architecture.num_classes() {
            return Err(format!(
                "{} class names for {} classes",
                self.classes.len(),
                self.architecture.num_classes()
            ));
        }
        Ok(())
    }
}

/// A loaded model: weights on a device plus its card.
#[derive(Debug, Clone)]
pub struct Model {
    pub net: ResNet,
    pub card: ModelCard,
    /// The BatchNorm-folded inference net ([`crate::FoldedNet`]) for eval-mode logits, with the
    /// weight-store generation and input spec it was folded from; `None` until first used.
    folded: Option<(u64, InputSpec, std::sync::Arc<crate::FoldedNet>)>,
    /// Eval-mode logits through the folded net (default) or burn's generic forward.
    fold_inference: bool,
    /// Norm-affine gradients through the hand-written pass (default) or burn's autodiff.
    native_backward: bool,
}

/// `models/edge.safetensors` → `models/edge.json`.
pub fn card_path(weights: &Path) -> PathBuf {
    weights.with_extension("json")
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
        path: path.into(),
        source,
    })?;
    Ok(sha256_hex(&bytes))
}

impl Model {
    /// A network and its card (the card is trusted to describe the network).
    pub fn new(net: ResNet, card: ModelCard) -> Model {
        Model {
            net,
            card,
            folded: None,
            fold_inference: true,
            native_backward: true,
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

    /// The folded net for the current weights and norm state, refolded if either has changed
    /// since the last call; `None` when the net cannot be folded (see [`ResNet::fold`]).
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
        let text = std::fs::read_to_string(&card_file).map_err(|source| ModelError::Io {
            path: card_file.clone(),
            source,
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
        let mut net = ResNet::new(&card.architecture, device, 0).map_err(ModelError::Arch)?;
        load_into(&mut net, tensors, source, false)?;
        Ok(Model::new(net, card))
    }

    /// A freshly initialised model (for training).
    pub fn init(card: ModelCard, device: &Device, seed: u64) -> Result<Model> {
        card.validate().map_err(|reason| ModelError::Card {
            path: "<new model>".into(),
            reason,
        })?;
        let net = ResNet::new(&card.architecture, device, seed).map_err(ModelError::Arch)?;
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
}

/// Write-then-rename, so a reader sees the old file or the new one, never half of one. The
/// temporary name is unique per process and call: two writers of the same path (tests, two
/// trainers) must not rename each other's half-written file away.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let tmp = path.with_extension(format!(
        "{}.{}-{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or(""),
        std::process::id(),
        CALLS.fetch_add(1, Ordering::Relaxed)
    ));
    let written = std::fs::write(&tmp, bytes)
        .map_err(|source| ModelError::Io {
            path: tmp.clone(),
            source,
        })
        .and_then(|()| {
            std::fs::rename(&tmp, path).map_err(|source| ModelError::Io {
                path: path.into(),
                source,
            })
        });
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Copies `tensors` into `net`. With `partial`, only names present are loaded (norm states);
/// otherwise every tensor of the architecture must be there and nothing else may be.
/// `t` may replace store entry `i`: same shape, finite values.
pub(crate) fn check_tensor(store: &Store, i: usize, t: &HostTensor, source: &str) -> Result<()> {
    if t.shape != store.shape(i) {
        return Err(ModelError::ShapeMismatch {
            source_name: source.into(),
            name: store.name(i).into(),
            expected: store.shape(i).to_vec(),
            found: t.shape.clone(),
        });
    }
    if let Some(index) = first_non_finite(t) {
        return Err(ModelError::NonFinite {
            source_name: source.into(),
            name: store.name(i).into(),
            index,
        });
    }
    Ok(())
}

pub(crate) fn load_into(
    net: &mut ResNet,
    tensors: &NamedTensors,
    source: &str,
    partial: bool,
) -> Result<()> {
    // Validate everything first: a rejected file must leave the model untouched.
    let store = net.store();
    let mut updates = Vec::new();
    for i in 0..store.len() {
        let name = store.name(i);
        match tensors.get(name) {
            None if partial => {}
            None => {
                return Err(ModelError::MissingTensor {
                    source_name: source.into(),
                    name: name.into(),
                    expected: store.shape(i).to_vec(),
                })
            }
            Some(t) => {
                check_tensor(store, i, t, source)?;
                updates.push((i, t.data.clone()));
            }
        }
    }
    for name in tensors.keys() {
        if store.index_of(name).is_none() && !tensors::is_ignored_key(name) {
            return Err(ModelError::UnexpectedTensor {
                source_name: source.into(),
                name: name.clone(),
            });
        }
    }
    let store = net.store_mut();
    for (i, data) in updates {
        store.set_values(i, data);
    }
    Ok(())
}
