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
}

impl Model {
    /// Extracts the current norm state.
    pub fn norm_state(&self, model_id: &str, version: u64) -> NormState {
        let s = self.net.store();
        let tensors = (0..s.len())
            .filter(|&i| s.kind(i).is_norm_state())
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
        let s = self.net.store();
        for i in 0..s.len() {
            if s.kind(i).is_norm_state() && !state.tensors.contains_key(s.name(i)) {
                return Err(ModelError::MissingTensor {
                    source_name: source,
                    name: s.name(i).into(),
                    expected: s.shape(i).to_vec(),
                });
            }
        }
        for name in state.tensors.keys() {
            let ok = s.index_of(name).is_some_and(|i| s.kind(i).is_norm_state());
            if !ok {
                return Err(ModelError::UnexpectedTensor {
                    source_name: source,
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

    /// Installs only the running statistics of `state` (γ and β stay), validated in full.
    pub fn apply_norm_stats(&mut self, state: &NormState) -> Result<()> {
        self.apply_norm_part(state, Kind::is_buffer)
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
