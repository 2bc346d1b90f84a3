//! The norm state: every normalization layer's γ, β (and for BatchNorm its running mean and
//! variance), by PyTorch name. This is what the cloud sends an edge: a few KB of safetensors.

use cema_wire::WireTensor;

use crate::checkpoint::load_into;
use crate::error::{ModelError, Result};
use crate::model::Model;
use crate::store::Kind;
use crate::tensors::{HostTensor, NamedTensors};

/// A versioned norm state for one model.
#[derive(Debug, Clone, PartialEq)]
pub struct NormState {
    pub model_id: String,
    pub version: u64,
    pub tensors: NamedTensors,
}

impl NormState {
    /// The wire encoding (`cema_wire::encode_norm_state`): safetensors with the model id, the
    /// version and the format marker in the header metadata.
    pub fn to_bytes(&self) -> Vec<u8> {
        let tensors: Vec<(&str, WireTensor)> = self
            .tensors
            .iter()
            .map(|(n, t)| {
                let w = WireTensor {
                    shape: t.shape.clone(),
                    data: t.data.clone(),
                };
                (n.as_str(), w)
            })
            .collect();
        cema_wire::encode_norm_state(
            &self.model_id,
            self.version,
            tensors.iter().map(|(n, t)| (*n, t)),
        )
    }

    /// Parses bytes from [`NormState::to_bytes`]; `source` names them in errors. Validation
    /// against a model happens in [`Model::apply_norm_state`].
    pub fn from_bytes(bytes: &[u8], source: &str) -> Result<NormState> {
        let w = cema_wire::decode_norm_state(bytes).map_err(|e| ModelError::Safetensors {
            path: source.into(),
            reason: e.to_string(),
        })?;
        let tensors = w
            .tensors
            .into_iter()
            .map(|(n, t)| {
                let t = HostTensor {
                    shape: t.shape,
                    data: t.data,
                };
                (n, t)
            })
            .collect();
        Ok(NormState {
            model_id: w.model_id,
            version: w.version,
            tensors,
        })
    }

    /// Bytes of tensor payload (what a norm update costs on the wire, header aside).
    pub fn payload_bytes(&self) -> usize {
        self.tensors.values().map(|t| t.data.len() * 4).sum()
    }

    /// The compact form of running statistics ([`Model::norm_stats`]) for the `edge-stats`
    /// section of an upload: the fingerprint of the tensors' names and shapes (in name order),
    /// then every value as f32 little-endian in that order. Names travel only as the
    /// fingerprint, because an edge sends its statistics with every upload: for the shipped
    /// ResNet-8, 2.7 kB where safetensors takes 5.3 kB, half of it header.
    pub fn to_stats_bytes(&self) -> Vec<u8> {
        let layout = self.tensors.iter().map(|(n, t)| (n.as_str(), &t.shape[..]));
        let mut out = layout_fingerprint(layout).to_vec();
        for t in self.tensors.values() {
            out.extend(t.data.iter().flat_map(|v| v.to_le_bytes()));
        }
        out
    }
}

/// Bytes of the layout fingerprint heading [`NormState::to_stats_bytes`].
pub const STATS_FINGERPRINT_BYTES: usize = 8;

/// The first bytes of SHA-256 over every (name, shape) in order: two models agree on it when
/// their statistics have the same names and shapes.
fn layout_fingerprint<'a>(
    layout: impl Iterator<Item = (&'a str, &'a [usize])>,
) -> [u8; STATS_FINGERPRINT_BYTES] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for (name, shape) in layout {
        h.update(name.as_bytes());
        h.update([0]);
        for d in shape {
            h.update((*d as u64).to_le_bytes());
        }
        h.update([0xff]);
    }
    h.finalize()[..STATS_FINGERPRINT_BYTES]
        .try_into()
        .expect("8 bytes")
}

impl Model {
    /// Extracts the current norm state.
    pub fn norm_state(&self, model_id: &str, version: u64) -> NormState {
        self.norm_part(model_id, version, Kind::is_norm_state)
    }

    /// Extracts the running statistics alone (what an edge that tracks its own statistics sends
    /// with its uploads, issue #25): a [`NormState`] holding only `*.running_mean` and
    /// `*.running_var`. Empty for a model without running statistics (LayerNorm).
    pub fn norm_stats(&self, model_id: &str, version: u64) -> NormState {
        self.norm_part(model_id, version, Kind::is_buffer)
    }

    fn norm_part(&self, model_id: &str, version: u64, part: fn(Kind) -> bool) -> NormState {
        let s = self.net.store();
        let tensors = (0..s.len())
            .filter(|&i| part(s.kind(i)))
            .map(|i| {
                (
                    s.name(i).to_string(),
                    HostTensor {
                        shape: s.shape(i).to_vec(),
                        data: s.values(i),
                    },
                )
            })
            .collect();
        NormState {
            model_id: model_id.to_string(),
            version,
            tensors,
        }
    }

    /// Installs a norm state, all or nothing: every norm tensor of this model must be present with
    /// its shape and finite values, and no other tensor may be. On error the model is unchanged.
    pub fn apply_norm_state(&mut self, state: &NormState) -> Result<()> {
        self.check_norm_names(state)?;
        let source = format!("norm state {}@v{}", state.model_id, state.version);
        load_into(&mut self.net, &state.tensors, &source, true)
    }

    /// Every tensor of `state` has this model's shape and only finite values.
    fn check_norm_values(&self, state: &NormState, source: &str) -> Result<()> {
        let s = self.net.store();
        for (name, t) in &state.tensors {
            let i = s.index_of(name).expect("names checked");
            crate::checkpoint::check_tensor(s, i, t, source)?;
        }
        Ok(())
    }

    /// Exactly this model's norm tensors, no more, no fewer.
    fn check_norm_names(&self, state: &NormState) -> Result<()> {
        let source = format!("norm state {}@v{}", state.model_id, state.version);
        self.check_names(state, &source, Kind::is_norm_state)
    }

    /// Exactly this model's tensors of the kinds `part` selects, no more, no fewer.
    fn check_names(&self, state: &NormState, source: &str, part: fn(Kind) -> bool) -> Result<()> {
        let s = self.net.store();
        for i in 0..s.len() {
            if part(s.kind(i)) && !state.tensors.contains_key(s.name(i)) {
                return Err(ModelError::MissingTensor {
                    source_name: source.into(),
                    name: s.name(i).into(),
                    expected: s.shape(i).to_vec(),
                });
            }
        }
        for name in state.tensors.keys() {
            let ok = s.index_of(name).is_some_and(|i| part(s.kind(i)));
            if !ok {
                return Err(ModelError::UnexpectedTensor {
                    source_name: source.into(),
                    name: name.clone(),
                });
            }
        }
        Ok(())
    }

    /// [`apply_norm_state`](Self::apply_norm_state) that keeps this model's own running
    /// statistics: the state is validated in full (a bad update is rejected as a whole), but only
    /// its γ and β are installed.
    pub fn apply_norm_affine(&mut self, state: &NormState) -> Result<()> {
        self.apply_norm_part(state, Kind::is_norm_affine)
    }

    /// Installs running statistics from [`norm_stats`](Self::norm_stats)'s form: exactly this
    /// model's running means and variances, with their shapes, finite, variances ≥ 0 (γ and β
    /// stay). On error the model is unchanged.
    pub fn apply_norm_stats(&mut self, state: &NormState) -> Result<()> {
        self.check_norm_stats(state)?;
        let source = format!("norm statistics {}@v{}", state.model_id, state.version);
        load_into(&mut self.net, &state.tensors, &source, true)
    }

    /// Parses [`NormState::to_stats_bytes`] against this model's running statistics (the layout
    /// fingerprint must be theirs, the length their values') and checks the values as
    /// [`check_norm_stats`](Self::check_norm_stats) does; `model_id` and `version` label the
    /// result.
    pub fn norm_stats_from_bytes(
        &self,
        bytes: &[u8],
        model_id: &str,
        version: u64,
    ) -> Result<NormState> {
        let mut state = self.norm_stats(model_id, version);
        let layout = state
            .tensors
            .iter()
            .map(|(n, t)| (n.as_str(), &t.shape[..]));
        let expected = layout_fingerprint(layout);
        let values: usize = state.tensors.values().map(|t| t.data.len()).sum();
        let want = STATS_FINGERPRINT_BYTES + 4 * values;
        if bytes.len() != want {
            return Err(ModelError::Input(format!(
                "{} bytes of statistics, this model's running statistics take {want} ({values} \
                 values after an {STATS_FINGERPRINT_BYTES}-byte layout fingerprint)",
                bytes.len()
            )));
        }
        if bytes[..STATS_FINGERPRINT_BYTES] != expected {
            return Err(ModelError::Input(
                "statistics of another layout (their names or shapes are not this model's \
                 running statistics')"
                    .into(),
            ));
        }
        let mut at = STATS_FINGERPRINT_BYTES;
        for t in state.tensors.values_mut() {
            for v in t.data.iter_mut() {
                *v = f32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
                at += 4;
            }
        }
        self.check_norm_stats(&state)?;
        Ok(state)
    }

    /// The checks of [`apply_norm_stats`](Self::apply_norm_stats), changing nothing: what a
    /// cloud runs on an upload's statistics before it stores the upload.
    pub fn check_norm_stats(&self, state: &NormState) -> Result<()> {
        let source = format!("norm statistics {}@v{}", state.model_id, state.version);
        self.check_names(state, &source, Kind::is_buffer)?;
        self.check_norm_values(state, &source)?;
        let s = self.net.store();
        for (name, t) in &state.tensors {
            let i = s.index_of(name).expect("names checked");
            if s.kind(i) == Kind::RunningVar {
                if let Some(index) = t.data.iter().position(|&v| v < 0.0) {
                    return Err(ModelError::Input(format!(
                        "{source}: `{name}`[{index}] is a negative variance ({})",
                        t.data[index]
                    )));
                }
            }
        }
        Ok(())
    }

    fn apply_norm_part(&mut self, state: &NormState, part: fn(Kind) -> bool) -> Result<()> {
        self.check_norm_names(state)?;
        let source = format!("norm state {}@v{}", state.model_id, state.version);
        self.check_norm_values(state, &source)?;
        let s = self.net.store();
        let chosen: NamedTensors = state
            .tensors
            .iter()
            .filter(|(name, _)| s.index_of(name).is_some_and(|i| part(s.kind(i))))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        load_into(&mut self.net, &chosen, &source, true)
    }

    /// Names of the norm affine parameters (what gradients flow into during adaptation).
    pub fn norm_affine_names(&self) -> Vec<String> {
        let s = self.net.store();
        (0..s.len())
            .filter(|&i| matches!(s.kind(i), Kind::NormWeight | Kind::NormBias))
            .map(|i| s.name(i).into())
            .collect()
    }
}
