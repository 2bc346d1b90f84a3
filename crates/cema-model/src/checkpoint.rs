//! Checkpoints: safetensors weights + a JSON model card beside them (`edge.safetensors` + `edge.json`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::arch::Arch;
use crate::error::{ModelError, Result};
use crate::net::Net;
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

/// TensorFlow's evaluation recipe for ImageNet models: the central `crop_fraction` of the shorter
/// side (a square), resized to the input size with a bicubic filter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preprocess {
    pub crop_fraction: f32,
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
    /// How a photograph of another size becomes an input (`cema predict`); absent for models of
    /// fixed-size datasets, whose images must already have the input size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preprocess: Option<Preprocess>,
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
            preprocess: None,
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
    net: &mut Net,
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
